//! Clusters and their endpoints: every outbound cluster of the snapshot as an EDS cluster
//! over ADS with its load balancing, circuit breakers, connection pool, outlier
//! detection and source address, and its `ClusterLoadAssignment`; plus the inbound
//! cluster to the app (static).
//!
//! Sources: Istio `pilot/pkg/networking/core/cluster.go`, `cluster_builder.go`
//! (`applyConnectionPool`, `applyOutlierDetection`, `applyLoadBalancer`,
//! `buildInboundCluster`); Envoy's [cluster](https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/cluster/v3/cluster.proto),
//! [circuit breakers](https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/cluster/v3/circuit_breaker.proto)
//! and [outlier detection](https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/cluster/v3/outlier_detection.proto).
//!
//! Upstreams speak HTTP/1.1, set explicitly: meshsim's apps and relays, and meshsim's
//! sidecars between themselves, speak HTTP/1.1 only.
//!
//! Not here: which cluster a request goes to (`route`), mTLS to the endpoints (`tls`).

use std::time::Duration;

use mesh::proxy::pool::Limits;
use mesh::snapshot::{Cluster as MeshCluster, DEFAULT_CONNECT_TIMEOUT, HashTable, LbPolicy, OutlierConfig, Snapshot};

use crate::pb::envoy::config::cluster::v3::{self as cl, Cluster};
use crate::pb::envoy::config::core::v3 as core;
use crate::pb::envoy::config::endpoint::v3::{self as ep, ClusterLoadAssignment};
use crate::pb::envoy::extensions::upstreams::http::v3::{HttpProtocolOptions, http_protocol_options};
use crate::pb::envoy::r#type::v3::Percent;

use super::{Placement, duration, u32v, u64v};

pub(super) const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// The outbound clusters and their load assignments.
pub(super) fn outbound(
    snapshot: &Snapshot,
    p: &Placement,
    untranslated: &mut Vec<String>,
) -> (Vec<Cluster>, Vec<ClusterLoadAssignment>) {
    let mut clusters = Vec::new();
    let mut assignments = Vec::new();
    for c in snapshot.clusters.values() {
        let mut envoy = cluster(c, p);
        if c.endpoints.iter().any(|e| e.mtls) {
            if p.identity.is_some() {
                super::tls::auto_mtls(&mut envoy, c);
            } else {
                untranslated.push(format!(
                    "mTLS to the endpoints of cluster {}: the placement has no identity (certificate), so they are called in plaintext",
                    c.name
                ));
            }
        }
        clusters.push(envoy);
        assignments.push(load_assignment(c, p, untranslated));
    }
    (clusters, assignments)
}

fn cluster(c: &MeshCluster, p: &Placement) -> Cluster {
    let (lb_policy, lb_config) = match (&c.hash, c.lb) {
        (Some(h), _) => match h.table {
            HashTable::Ring { min_ring_size } => (
                cl::cluster::LbPolicy::RingHash,
                Some(cl::cluster::LbConfig::RingHashLbConfig(cl::cluster::RingHashLbConfig {
                    minimum_ring_size: u64v(min_ring_size),
                    ..Default::default()
                })),
            ),
            HashTable::Maglev { table_size } => (
                cl::cluster::LbPolicy::Maglev,
                Some(cl::cluster::LbConfig::MaglevLbConfig(cl::cluster::MaglevLbConfig {
                    table_size: u64v(table_size),
                })),
            ),
        },
        (None, LbPolicy::LeastRequest) => (cl::cluster::LbPolicy::LeastRequest, None),
        (None, LbPolicy::RoundRobin) => (cl::cluster::LbPolicy::RoundRobin, None),
        (None, LbPolicy::Random) => (cl::cluster::LbPolicy::Random, None),
    };
    Cluster {
        name: c.name.clone(),
        cluster_discovery_type: Some(cl::cluster::ClusterDiscoveryType::Type(cl::cluster::DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(cl::cluster::EdsClusterConfig {
            eds_config: Some(super::ads()),
            service_name: c.name.clone(),
        }),
        connect_timeout: Some(duration(c.connect_timeout)),
        lb_policy: lb_policy as i32,
        lb_config,
        circuit_breakers: Some(circuit_breakers(&c.limits)),
        typed_extension_protocol_options: [(HTTP_PROTOCOL_OPTIONS.to_string(), crate::any(&http1(&c.limits)))]
            .into_iter()
            .collect(),
        outlier_detection: c.outlier.as_ref().map(outlier_detection),
        // Istio: `minHealthPercent` is the panic threshold, 0 unless set, once outlier
        // detection is on.
        common_lb_config: c.outlier.as_ref().map(|o| cl::cluster::CommonLbConfig {
            healthy_panic_threshold: Some(Percent { value: f64::from(o.panic_threshold_percent) }),
            ..Default::default()
        }),
        upstream_bind_config: Some(core::BindConfig { source_address: Some(source_address(p)), ..Default::default() }),
        ..Default::default()
    }
}

/// Every upstream connection leaves from the pod's own address (the relays in front of
/// the peers identify the caller by it).
fn source_address(p: &Placement) -> core::SocketAddress {
    core::SocketAddress {
        address: p.source.to_string(),
        port_specifier: Some(core::socket_address::PortSpecifier::PortValue(0)),
        ..Default::default()
    }
}

/// Istio writes every threshold (2^32−1 where unset) and tracks what remains.
fn circuit_breakers(l: &Limits) -> cl::CircuitBreakers {
    cl::CircuitBreakers {
        thresholds: vec![cl::circuit_breakers::Thresholds {
            priority: core::RoutingPriority::Default as i32,
            max_connections: u32v(l.max_connections),
            max_pending_requests: u32v(l.max_pending_requests),
            max_requests: u32v(l.max_requests),
            max_retries: u32v(l.max_retries),
            retry_budget: l.retry_budget.map(|b| cl::circuit_breakers::thresholds::RetryBudget {
                budget_percent: Some(Percent { value: b.percent }),
                min_retry_concurrency: u32v(b.min_concurrency),
                ..Default::default()
            }),
            track_remaining: true,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// HTTP/1.1 to the upstream, with the pool's connection lifetimes.
fn http1(l: &Limits) -> HttpProtocolOptions {
    HttpProtocolOptions {
        common_http_protocol_options: Some(core::HttpProtocolOptions {
            idle_timeout: Some(duration(l.idle_timeout)),
            max_requests_per_connection: if l.max_requests_per_connection > 0 {
                u32v(l.max_requests_per_connection)
            } else {
                None
            },
            max_connection_duration: l.max_connection_duration.map(duration),
            ..Default::default()
        }),
        upstream_protocol_options: Some(http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
            http_protocol_options::ExplicitHttpConfig {
                protocol_config: Some(
                    http_protocol_options::explicit_http_config::ProtocolConfig::HttpProtocolOptions(
                        core::Http1ProtocolOptions::default(),
                    ),
                ),
            },
        )),
        ..Default::default()
    }
}

/// Istio's `applyOutlierDetection` over meshsim's config (Istio's defaults already
/// applied): success-rate detection off, a detector's enforcement 100% when on, 0% off.
fn outlier_detection(o: &OutlierConfig) -> cl::OutlierDetection {
    let enforcing = |on: Option<u32>| u32v(if on.is_some() { 100 } else { 0 });
    cl::OutlierDetection {
        consecutive_5xx: u32v(o.consecutive_5xx.unwrap_or(0)),
        enforcing_consecutive_5xx: enforcing(o.consecutive_5xx),
        consecutive_gateway_failure: o.consecutive_gateway.and_then(u32v),
        enforcing_consecutive_gateway_failure: enforcing(o.consecutive_gateway),
        enforcing_success_rate: u32v(0),
        interval: Some(duration(o.interval)),
        base_ejection_time: Some(duration(o.base_ejection_time)),
        max_ejection_time: Some(duration(o.max_ejection_time)),
        max_ejection_percent: u32v(o.max_ejection_percent),
        ..Default::default()
    }
}

/// The cluster's endpoints at their pods' inbound addresses; an endpoint whose pod has
/// no address in the placement is left out (and noted).
fn load_assignment(c: &MeshCluster, p: &Placement, untranslated: &mut Vec<String>) -> ClusterLoadAssignment {
    let mut lb_endpoints = Vec::new();
    for e in &c.endpoints {
        let Some(addr) = p.peers.get(&e.pod) else {
            untranslated.push(format!(
                "endpoint {} of cluster {}: the placement has no address for pod {}, so it is left out",
                e.pod, c.name, e.pod
            ));
            continue;
        };
        lb_endpoints.push(ep::LbEndpoint {
            host_identifier: Some(ep::lb_endpoint::HostIdentifier::Endpoint(ep::Endpoint {
                address: Some(super::address(addr.ip(), addr.port())),
                ..Default::default()
            })),
            metadata: super::tls::endpoint_metadata(e.mtls),
            ..Default::default()
        });
    }
    ClusterLoadAssignment {
        cluster_name: c.name.clone(),
        endpoints: vec![ep::LocalityLbEndpoints { lb_endpoints, ..Default::default() }],
        ..Default::default()
    }
}

/// The inbound cluster `inbound|<port>||`: the app, static.
pub(super) fn inbound(p: &Placement) -> Cluster {
    let name = super::inbound_cluster_name(p);
    let app = ep::LbEndpoint {
        host_identifier: Some(ep::lb_endpoint::HostIdentifier::Endpoint(ep::Endpoint {
            address: Some(super::address(p.app.ip(), p.app.port())),
            ..Default::default()
        })),
        ..Default::default()
    };
    Cluster {
        name: name.clone(),
        cluster_discovery_type: Some(cl::cluster::ClusterDiscoveryType::Type(
            cl::cluster::DiscoveryType::Static as i32,
        )),
        connect_timeout: Some(duration(DEFAULT_CONNECT_TIMEOUT)),
        lb_policy: cl::cluster::LbPolicy::RoundRobin as i32,
        // Istio's defaults on every cluster (2^32−1), not Envoy's 1024 per threshold.
        circuit_breakers: Some(circuit_breakers(&Limits::default())),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name,
            endpoints: vec![ep::LocalityLbEndpoints { lb_endpoints: vec![app], ..Default::default() }],
            ..Default::default()
        }),
        typed_extension_protocol_options: [(
            HTTP_PROTOCOL_OPTIONS.to_string(),
            crate::any(&http1(&Limits { idle_timeout: Duration::from_secs(3600), ..Limits::default() })),
        )]
        .into_iter()
        .collect(),
        ..Default::default()
    }
}
