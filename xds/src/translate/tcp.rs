//! TCP services: on the outbound listener, one filter chain per TCP service
//! (`ClusterIP:port`) with a TCP proxy to its cluster, or to the weighted clusters of
//! the first `tcp` route whose match holds for this proxy — as Istio builds one outbound
//! listener per TCP service VIP and port. The destination a chain matches on is the
//! connection's original destination, which meshsim's capture hands Envoy in a PROXY
//! protocol header (read by `envoy.filters.listener.proxy_protocol`, which lets the
//! app's plain HTTP connections through without one). Inbound, a TCP service's pod
//! proxies bytes to its app instead of HTTP.
//!
//! A `tcp` route's match on source labels or namespace is about this proxy, so it is
//! decided here, once, as istiod decides it per proxy.
//!
//! Sources: Istio `pilot/pkg/networking/core/listener.go` (`buildSidecarOutboundTCPListenerOptsForPortOrUDS`)
//! and `tcp_route.go`; Envoy's [TCP proxy](https://www.envoyproxy.io/docs/envoy/latest/configuration/listeners/network_filters/tcp_proxy_filter)
//! and [PROXY protocol](https://www.envoyproxy.io/docs/envoy/latest/configuration/listeners/listener_filters/proxy_protocol)
//! filters.

use mesh::snapshot::{Snapshot, cluster_name};

use super::listener::{access_log, network_filter};
use super::{Placement, u32v};
use crate::pb::envoy::config::core::v3 as core;
use crate::pb::envoy::config::listener::v3::{FilterChain, FilterChainMatch, ListenerFilter, listener_filter};
use crate::pb::envoy::extensions::filters::listener::proxy_protocol::v3::ProxyProtocol;
use crate::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};

pub(super) const TCP_PROXY_FILTER: &str = "envoy.filters.network.tcp_proxy";
const PROXY_PROTOCOL_FILTER: &str = "envoy.filters.listener.proxy_protocol";

/// The outbound listener's PROXY protocol filter (optional: HTTP connections come
/// without a header).
pub(super) fn proxy_protocol() -> ListenerFilter {
    let config = ProxyProtocol { allow_requests_without_proxy_protocol: true, ..Default::default() };
    ListenerFilter {
        name: PROXY_PROTOCOL_FILTER.to_string(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(crate::any(&config))),
        ..Default::default()
    }
}

fn proxy_to(stat_prefix: String, target: tcp_proxy::ClusterSpecifier, p: &Placement) -> TcpProxy {
    TcpProxy { stat_prefix, cluster_specifier: Some(target), access_log: vec![access_log(p)], ..Default::default() }
}

/// One chain per TCP service, matching its `ClusterIP:port`.
pub(super) fn outbound_chains(snapshot: &Snapshot, p: &Placement) -> Vec<FilterChain> {
    let mut chains = Vec::new();
    for (vip, fqdn) in &snapshot.tcp_vips {
        let port = vip.port();
        let rule = snapshot
            .tcp_routes
            .get(fqdn)
            .and_then(|rules| rules.iter().find(|r| r.matches(port, &p.labels, &p.namespace)));
        let target = match rule {
            Some(rule) if rule.clusters.len() > 1 => {
                tcp_proxy::ClusterSpecifier::WeightedClusters(tcp_proxy::WeightedCluster {
                    clusters: rule
                        .clusters
                        .iter()
                        .map(|(name, weight)| tcp_proxy::weighted_cluster::ClusterWeight {
                            name: name.clone(),
                            weight: *weight,
                            ..Default::default()
                        })
                        .collect(),
                })
            }
            Some(rule) if !rule.clusters.is_empty() => tcp_proxy::ClusterSpecifier::Cluster(rule.clusters[0].0.clone()),
            _ => tcp_proxy::ClusterSpecifier::Cluster(cluster_name(port, None, fqdn)),
        };
        let filter = network_filter(TCP_PROXY_FILTER, &proxy_to(format!("outbound|{port}||{fqdn}"), target, p));
        chains.push(FilterChain {
            name: format!("{}_{port}", vip.ip()),
            filter_chain_match: Some(FilterChainMatch {
                destination_port: u32v(u32::from(port)),
                prefix_ranges: vec![core::CidrRange { address_prefix: vip.ip().to_string(), prefix_len: u32v(32) }],
                ..Default::default()
            }),
            filters: vec![filter],
            ..Default::default()
        });
    }
    chains
}

/// Whether this proxy's own service is a TCP service (its inbound side proxies bytes).
pub(super) fn is_tcp(snapshot: &Snapshot, p: &Placement) -> bool {
    snapshot.tcp_services.contains(&p.service)
}

/// The inbound TCP proxy to the app.
pub(super) fn inbound_filter(p: &Placement) -> crate::pb::envoy::config::listener::v3::Filter {
    let cluster = super::inbound_cluster_name(p);
    network_filter(TCP_PROXY_FILTER, &proxy_to(cluster.clone(), tcp_proxy::ClusterSpecifier::Cluster(cluster), p))
}
