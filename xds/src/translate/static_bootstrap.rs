//! A translation folded into one static bootstrap: listeners and clusters inline, each
//! route configuration inlined into the connection manager that names it, each load
//! assignment into its cluster (made static), each secret into `static_resources`.
//! For `envoy --mode validate`, and for running Envoy without a control plane.

use prost::Message;

use crate::pb::envoy::config::bootstrap::v3::{Bootstrap, bootstrap};
use crate::pb::envoy::config::cluster::v3::{Cluster, cluster};
use crate::pb::envoy::config::core::v3 as core;
use crate::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use crate::pb::envoy::config::listener::v3::{Listener, filter};
use crate::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier,
};

use super::Resources;
use super::listener::HCM_FILTER;

/// `resources` as one bootstrap for node `node_id` (also its cluster), nothing dynamic.
pub fn static_bootstrap(resources: &Resources, node_id: &str) -> Bootstrap {
    let listeners = resources.listeners.iter().map(|l| inline_routes(l, resources)).collect();
    let clusters = resources.clusters.iter().map(|c| inline_endpoints(c, &resources.endpoints)).collect();
    Bootstrap {
        node: Some(core::Node { id: node_id.to_string(), cluster: node_id.to_string(), ..Default::default() }),
        static_resources: Some(bootstrap::StaticResources { listeners, clusters, secrets: resources.secrets.clone() }),
        ..Default::default()
    }
}

/// `l` with every RDS reference replaced by the route configuration it names (an
/// unknown name gets an empty configuration of that name).
fn inline_routes(l: &Listener, resources: &Resources) -> Listener {
    let mut l = super::tls::static_secrets_in_listener(l);
    for chain in &mut l.filter_chains {
        for f in &mut chain.filters {
            let Some(filter::ConfigType::TypedConfig(any)) = &mut f.config_type else { continue };
            if f.name != HCM_FILTER {
                continue;
            }
            let mut hcm = HttpConnectionManager::decode(any.value.as_slice()).expect("the translation's own HCM");
            if let Some(RouteSpecifier::Rds(rds)) = &hcm.route_specifier {
                let config =
                    resources.routes.iter().find(|r| r.name == rds.route_config_name).cloned().unwrap_or_else(|| {
                        crate::pb::envoy::config::route::v3::RouteConfiguration {
                            name: rds.route_config_name.clone(),
                            ..Default::default()
                        }
                    });
                hcm.route_specifier = Some(RouteSpecifier::RouteConfig(config));
            }
            *any = crate::any(&hcm);
        }
    }
    l
}

/// `c` as a static cluster when it is an EDS one, with its load assignment inline.
fn inline_endpoints(c: &Cluster, endpoints: &[ClusterLoadAssignment]) -> Cluster {
    let mut c = super::tls::static_secrets_in_cluster(c);
    let eds = cluster::DiscoveryType::Eds as i32;
    if c.cluster_discovery_type == Some(cluster::ClusterDiscoveryType::Type(eds)) {
        let service = c.eds_cluster_config.take().map(|e| e.service_name).filter(|s| !s.is_empty());
        let service = service.unwrap_or_else(|| c.name.clone());
        c.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Static as i32));
        c.load_assignment = Some(
            endpoints
                .iter()
                .find(|e| e.cluster_name == service)
                .cloned()
                .map(|e| ClusterLoadAssignment { cluster_name: c.name.clone(), ..e })
                .unwrap_or_else(|| ClusterLoadAssignment { cluster_name: c.name.clone(), ..Default::default() }),
        );
    }
    c
}
