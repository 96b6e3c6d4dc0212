//! One proxy's view as Envoy resources, the way istiod generates them for a sidecar.
//!
//! Input: the [`Snapshot`] the proxy's view compiles to (the same one meshsim's own
//! sidecar runs) and the proxy's [`Placement`] (where its listeners are, how it reaches
//! its peers). Output: [`Resources`] — what the ADS server pushes — and the parts of the
//! view the resources cannot express ([`Translation::untranslated`]).
//!
//! One module per resource kind: `listener` (the `outbound` and `inbound` listeners and
//! their HTTP connection managers), `route` (the `outbound` route configuration),
//! `cluster` (clusters and their endpoints), `tls` (secrets, auto-mTLS, the inbound
//! side's PeerAuthentication mode), `rbac` (AuthorizationPolicy), `ratelimit` (the
//! EnvoyFilter local rate limit) and `tcp` (TCP services). [`static_bootstrap`] folds a
//! translation into one bootstrap with every resource inline, for `envoy --mode
//! validate` and for runs without a control plane.
//!
//! The resources are deterministic as values, not as bytes: the generated types keep
//! protobuf maps (`Struct` fields, RBAC policies, per-filter configs) in `HashMap`s, so
//! two encodings of one translation may order map entries differently. Compare resources
//! as values (or decoded), not by their encoded bytes.
//!
//! Where meshsim's sidecar and Istio's generated config differ, the translation follows
//! meshsim's sidecar (it is what the conformance harness compares against), and says so
//! where it does.
//!
//! Not here: the bootstrap an Envoy starts with (`crate::bootstrap`), pushing the
//! resources (`crate::ads`).

mod cluster;
mod listener;
mod ratelimit;
mod rbac;
mod route;
mod static_bootstrap;
mod tcp;
pub mod tls;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use mesh::snapshot::Snapshot;

use crate::pb::envoy::config::cluster::v3::Cluster;
use crate::pb::envoy::config::core::v3 as core;
use crate::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use crate::pb::envoy::config::listener::v3::Listener;
use crate::pb::envoy::config::route::v3::RouteConfiguration;
use crate::pb::envoy::extensions::transport_sockets::tls::v3::Secret;

pub use static_bootstrap::static_bootstrap;

/// Where one Envoy sidecar sits in the world, and how it reaches the others.
#[derive(Clone, Debug)]
pub struct Placement {
    /// The proxy's pod (Envoy's node id), namespace, labels and service FQDN.
    pub pod: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub service: String,
    /// The outbound HTTP listener's address: the pod's app sends every request here,
    /// with the destination service in `Host` (meshsim's capture of outbound traffic).
    pub outbound: SocketAddr,
    /// The inbound listener's address (its peers reach it through a relay).
    pub inbound: SocketAddr,
    /// The pod's app.
    pub app: SocketAddr,
    /// The source address of every upstream connection this Envoy opens, so the relays
    /// in front of its peers know which pod called.
    pub source: IpAddr,
    /// Each pod's inbound address as its peers dial it, by pod name.
    pub peers: BTreeMap<String, SocketAddr>,
    /// The access log file (JSON lines, [`ACCESS_LOG_FIELDS`]).
    pub access_log: PathBuf,
    /// This proxy's mTLS material, served over SDS; `None`: no certificate (plaintext only).
    pub identity: Option<Identity>,
    /// The pod's own inbound local rate limit (a scenario's `services[].rate_limit`),
    /// when no EnvoyFilter selects it.
    pub rate_limit: Option<mesh::config::ratelimit::LocalRateLimitConfig>,
}

/// PEM material of a workload identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub cert_chain: String,
    pub private_key: String,
    pub trust_bundle: String,
}

/// The access log's JSON keys and the Envoy command operator each logs
/// ([command operators](https://www.envoyproxy.io/docs/envoy/latest/configuration/observability/access_log/usage#command-operators)).
/// `direction` is the listener's name, `outbound` or `inbound`: Envoy 1.40 knows
/// `%LISTENER_NAME%` and rejects `%XDS_LISTENER_NAME%`.
pub const ACCESS_LOG_FIELDS: &[(&str, &str)] = &[
    ("direction", "%LISTENER_NAME%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("status", "%RESPONSE_CODE%"),
    ("flags", "%RESPONSE_FLAGS%"),
    ("route", "%ROUTE_NAME%"),
    ("cluster", "%UPSTREAM_CLUSTER%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("attempts", "%UPSTREAM_REQUEST_ATTEMPT_COUNT%"),
    ("peer_san", "%DOWNSTREAM_PEER_URI_SAN%"),
    ("tls", "%DOWNSTREAM_TLS_VERSION%"),
    ("start", "%START_TIME(%s.%3f)%"),
    ("duration", "%DURATION%"),
];

/// What the ADS server pushes to one proxy.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resources {
    pub listeners: Vec<Listener>,
    pub routes: Vec<RouteConfiguration>,
    pub clusters: Vec<Cluster>,
    pub endpoints: Vec<ClusterLoadAssignment>,
    pub secrets: Vec<Secret>,
}

/// A translation and what in the view it could not express.
#[derive(Clone, Debug, Default)]
pub struct Translation {
    pub resources: Resources,
    /// Parts of the view not translated (each says what and why); empty when the
    /// resources express all of it.
    pub untranslated: Vec<String>,
}

/// The outbound listener's name (what `%LISTENER_NAME%` logs for outbound requests).
pub const OUTBOUND_LISTENER: &str = "outbound";
/// The inbound listener's name.
pub const INBOUND_LISTENER: &str = "inbound";
/// The outbound route configuration's name (RDS).
pub const OUTBOUND_ROUTE_CONFIG: &str = "outbound";

/// `snapshot` as Envoy resources for the proxy at `placement`.
pub fn translate(snapshot: &Snapshot, placement: &Placement) -> Translation {
    let mut untranslated = Vec::new();
    let routes = vec![route::outbound(snapshot, placement, &mut untranslated)];
    let (mut clusters, endpoints) = cluster::outbound(snapshot, placement, &mut untranslated);
    clusters.push(cluster::inbound(placement));
    let (tcp_listener_filters, tcp_chains) = tcp::outbound(snapshot, placement, &mut untranslated);
    let outbound = listener::outbound(placement, tcp_listener_filters, tcp_chains);
    let inbound_filters = if snapshot.tcp_services.contains(&placement.service) {
        if placement.rate_limit.is_some()
            || snapshot.inbound_rate_limits_for(&placement.namespace, &placement.labels).next().is_some()
        {
            untranslated.push(format!(
                "local rate limit of {}: its service is a TCP one, and the rate limit is an HTTP filter",
                placement.pod
            ));
        }
        tcp::inbound_filters(snapshot, placement)
    } else {
        vec![listener::network_filter(listener::HCM_FILTER, &inbound_manager(snapshot, placement, &mut untranslated))]
    };
    let (listener_filters, chains) = tls::inbound_chains(snapshot, placement, inbound_filters, &mut untranslated);
    let listeners = vec![outbound, listener::inbound(placement, listener_filters, chains)];
    let secrets = placement.identity.as_ref().map(tls::secrets).unwrap_or_default();
    Translation { resources: Resources { listeners, routes, clusters, endpoints, secrets }, untranslated }
}

/// The inbound HTTP connection manager: RBAC (DENY, then ALLOW), the local rate limit,
/// the router.
fn inbound_manager(
    snapshot: &Snapshot,
    placement: &Placement,
    untranslated: &mut Vec<String>,
) -> crate::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager {
    let mut http_filters: Vec<_> = snapshot
        .authz
        .get(&placement.pod)
        .map(|w| rbac::filters(w))
        .unwrap_or_default()
        .iter()
        .map(|f| listener::http_filter(rbac::RBAC_FILTER, f))
        .collect();
    if let Some(rl) = ratelimit::inbound(snapshot, placement, untranslated) {
        http_filters.push(listener::http_filter(ratelimit::LOCAL_RATE_LIMIT_FILTER, &rl));
    }
    listener::inbound_manager(placement, http_filters)
}

/// The inbound cluster's name: Istio's `inbound|<port>||`, on the app's port.
pub fn inbound_cluster_name(placement: &Placement) -> String {
    format!("inbound|{}||", placement.app.port())
}

/// A protobuf duration.
pub(crate) fn duration(d: std::time::Duration) -> crate::pb::google::protobuf::Duration {
    crate::pb::google::protobuf::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).expect("nanos < 1e9"),
    }
}

/// Protobuf wrapper values.
pub(crate) fn u32v(value: u32) -> Option<crate::pb::google::protobuf::UInt32Value> {
    Some(crate::pb::google::protobuf::UInt32Value { value })
}
pub(crate) fn u64v(value: u64) -> Option<crate::pb::google::protobuf::UInt64Value> {
    Some(crate::pb::google::protobuf::UInt64Value { value })
}
pub(crate) fn boolv(value: bool) -> Option<crate::pb::google::protobuf::BoolValue> {
    Some(crate::pb::google::protobuf::BoolValue { value })
}

/// The config source of every dynamic resource: ADS, v3 (Istio's `ads: {}`).
pub(crate) fn ads() -> core::ConfigSource {
    core::ConfigSource {
        config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(core::AggregatedConfigSource {})),
        resource_api_version: core::ApiVersion::V3 as i32,
        ..Default::default()
    }
}

/// An Envoy socket address.
pub(crate) fn address(ip: IpAddr, port: u16) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: ip.to_string(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

#[cfg(test)]
mod live_tests;
#[cfg(test)]
mod rbac_tests;
#[cfg(test)]
mod tcp_tests;
#[cfg(test)]
mod tests;
