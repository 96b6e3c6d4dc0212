//! One proxy's view as Envoy resources, the way istiod generates them for a sidecar.
//!
//! Input: the [`Snapshot`] the proxy's view compiles to (the same one meshsim's own
//! sidecar runs) and the proxy's [`Placement`] (where its listeners are, how it reaches
//! its peers). Output: [`Resources`] — what the ADS server pushes.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use mesh::snapshot::Snapshot;

use crate::pb::envoy::config::cluster::v3::Cluster;
use crate::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use crate::pb::envoy::config::listener::v3::Listener;
use crate::pb::envoy::config::route::v3::RouteConfiguration;
use crate::pb::envoy::extensions::transport_sockets::tls::v3::Secret;

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
}

/// PEM material of a workload identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub cert_chain: String,
    pub private_key: String,
    pub trust_bundle: String,
}

/// The access log's JSON keys and the Envoy command operator each logs.
pub const ACCESS_LOG_FIELDS: &[(&str, &str)] = &[
    ("direction", "%XDS_LISTENER_NAME%"),
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

/// `snapshot` as Envoy resources for the proxy at `placement`.
pub fn translate(snapshot: &Snapshot, placement: &Placement) -> Translation {
    let _ = (snapshot, placement);
    Translation::default()
}
