//! TCP services (`appProtocol: tcp`): Envoy's `envoy.filters.network.tcp_proxy`, as in
//! Istio's filter chains for a TCP port.
//!
//! Outbound: one filter chain per TCP service on the outbound listener, matching the
//! connection's original destination (the service's `ClusterIP:port`), proxying to the
//! clusters of the first VirtualService `tcp` route that applies to this proxy (routes
//! match on port, source labels and source namespace only, so the choice is made here,
//! as istiod makes it), else to the service's own cluster. Envoy learns the original
//! destination from a PROXY protocol header (`envoy.filters.listener.proxy_protocol`,
//! optional, so the app's HTTP requests keep working without one): the capture in front
//! of the outbound listener must send it, since meshsim's own capture tells its sidecar
//! out of band.
//!
//! Inbound, when this pod's service is a TCP one: AuthorizationPolicy with TCP semantics
//! (network RBAC, `rbac`), then the bytes to the app.
//!
//! Not translated: Istio's in-band TCP metadata exchange over mTLS, which meshsim's
//! sidecars speak between themselves and upstream Envoy has not (only Istio's build
//! does): Envoys peer with Envoys without it.
//!
//! Sources: Istio `pilot/pkg/networking/core/listener.go` (`buildSidecarOutboundTCPListenerOpts`),
//! `networking/core/tcproute.go`; Envoy's [TCP proxy](https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/network/tcp_proxy/v3/tcp_proxy.proto)
//! and [PROXY protocol listener filter](https://www.envoyproxy.io/docs/envoy/latest/configuration/listeners/listener_filters/proxy_protocol).

use std::net::IpAddr;

use mesh::snapshot::{Snapshot, cluster_name};

use crate::pb::envoy::config::core::v3::CidrRange;
use crate::pb::envoy::config::listener::v3::{Filter, FilterChain, FilterChainMatch, ListenerFilter, listener_filter};
use crate::pb::envoy::extensions::filters::listener::proxy_protocol::v3::ProxyProtocol;
use crate::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};

use super::listener::{access_log, network_filter};
use super::{Placement, rbac};

const TCP_PROXY_FILTER: &str = "envoy.filters.network.tcp_proxy";
const PROXY_PROTOCOL: &str = "envoy.filters.listener.proxy_protocol";

/// The outbound listener's filter chains of the TCP services, and the listener filter
/// that restores the original destination they match on (none without TCP services).
pub(super) fn outbound(
    snapshot: &Snapshot,
    p: &Placement,
    untranslated: &mut Vec<String>,
) -> (Vec<ListenerFilter>, Vec<FilterChain>) {
    let mut chains = Vec::new();
    for fqdn in &snapshot.tcp_services {
        if !snapshot.tcp_vips.values().any(|f| f == fqdn) {
            untranslated.push(format!(
                "TCP service {fqdn}: it has no ClusterIP, so no outbound filter chain can match its connections"
            ));
        }
    }
    for (vip, fqdn) in &snapshot.tcp_vips {
        let port = vip.port();
        let rule = snapshot
            .tcp_routes
            .get(fqdn)
            .and_then(|rules| rules.iter().find(|r| r.matches(port, &p.labels, &p.namespace)));
        let clusters = match rule {
            Some(r) => r.clusters.clone(),
            None => vec![(cluster_name(port, None, fqdn), 1)],
        };
        let specifier = match &clusters[..] {
            [] => {
                untranslated.push(format!(
                    "TCP service {fqdn}: its matching `tcp` route has no destination, so its connections are not proxied"
                ));
                continue;
            }
            [(one, _)] => tcp_proxy::ClusterSpecifier::Cluster(one.clone()),
            many => tcp_proxy::ClusterSpecifier::WeightedClusters(tcp_proxy::WeightedCluster {
                clusters: many
                    .iter()
                    .map(|(name, weight)| tcp_proxy::weighted_cluster::ClusterWeight {
                        name: name.clone(),
                        weight: *weight,
                        ..Default::default()
                    })
                    .collect(),
            }),
        };
        let host_len = if vip.ip().is_ipv4() { 32 } else { 128 };
        chains.push(FilterChain {
            name: format!("{fqdn}:{port}"),
            filter_chain_match: Some(FilterChainMatch {
                prefix_ranges: vec![cidr(vip.ip(), host_len)],
                destination_port: super::u32v(u32::from(port)),
                ..Default::default()
            }),
            filters: vec![network_filter(TCP_PROXY_FILTER, &proxy(&format!("outbound|{port}||{fqdn}"), specifier, p))],
            ..Default::default()
        });
    }
    if chains.is_empty() {
        return (Vec::new(), chains);
    }
    let proxy_protocol = ListenerFilter {
        name: PROXY_PROTOCOL.to_string(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(crate::any(&ProxyProtocol {
            allow_requests_without_proxy_protocol: true,
            ..Default::default()
        }))),
        ..Default::default()
    };
    (vec![proxy_protocol], chains)
}

/// The inbound filters of a TCP service's pod: network RBAC, then the bytes to the app.
pub(super) fn inbound_filters(snapshot: &Snapshot, p: &Placement) -> Vec<Filter> {
    let mut filters: Vec<Filter> = snapshot
        .authz
        .get(&p.pod)
        .map(|w| rbac::network_filters(w))
        .unwrap_or_default()
        .iter()
        .map(|f| network_filter(rbac::NETWORK_RBAC_FILTER, f))
        .collect();
    let cluster = super::inbound_cluster_name(p);
    filters.push(network_filter(
        TCP_PROXY_FILTER,
        &proxy(&cluster, tcp_proxy::ClusterSpecifier::Cluster(cluster.clone()), p),
    ));
    filters
}

fn proxy(stat_prefix: &str, specifier: tcp_proxy::ClusterSpecifier, p: &Placement) -> TcpProxy {
    TcpProxy {
        stat_prefix: stat_prefix.to_string(),
        cluster_specifier: Some(specifier),
        access_log: vec![access_log(p)],
        ..Default::default()
    }
}

fn cidr(ip: IpAddr, len: u32) -> CidrRange {
    CidrRange { address_prefix: ip.to_string(), prefix_len: super::u32v(len) }
}
