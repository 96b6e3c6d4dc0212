//! TCP services: the outbound filter chains on the original destination, the inbound
//! TCP proxy with network RBAC.

use std::net::{Ipv4Addr, SocketAddr};

use mesh::registry::{AppProtocol, Registry, Service};

use super::tests::{envoy_validate, placement, pod, registry, snapshot_with};
use crate::pb::envoy::config::listener::v3::{Listener, filter};
use crate::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};

/// `registry()` with TCP services `db` (ClusterIP 10.0.0.9) and `db2` (none) on 5432.
pub(super) fn with_tcp() -> Registry {
    let mut r = registry();
    for (name, ip) in [("db", Some(Ipv4Addr::new(10, 0, 0, 9))), ("db2", None)] {
        r.add_service(Service { protocol: AppProtocol::Tcp, cluster_ip: ip, ..Service::http(name, "default", 5432) });
        r.add_pod(pod(&format!("{name}-0"), name, &[]));
    }
    r
}

pub(super) const SPLIT: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: db}\nspec:\n  hosts: [db]\n  tcp:\n  - match: [{sourceLabels: {app: nobody}}]\n    route: [{destination: {host: db2}}]\n  - match: [{port: 5432, sourceLabels: {app: a}}]\n    route:\n    - {destination: {host: db}, weight: 80}\n    - {destination: {host: db2}, weight: 20}\n";

fn tcp_proxy_of(f: &crate::pb::envoy::config::listener::v3::Filter) -> TcpProxy {
    assert_eq!(f.name, "envoy.filters.network.tcp_proxy");
    match &f.config_type {
        Some(filter::ConfigType::TypedConfig(a)) => prost::Message::decode(a.value.as_slice()).expect("decodes"),
        other => panic!("not a typed config: {other:?}"),
    }
}

fn listener<'t>(t: &'t super::Translation, name: &str) -> &'t Listener {
    t.resources.listeners.iter().find(|l| l.name == name).expect("listener")
}

#[test]
fn a_tcp_service_gets_an_outbound_chain_on_its_vip_with_the_route_that_applies_to_this_proxy() {
    let mut p = placement();
    p.peers.extend(["db-0", "db2-0"].map(|n| (n.to_string(), SocketAddr::from(([127, 0, 0, 5], 15006)))));
    let t = super::translate(&snapshot_with(&with_tcp(), SPLIT), &p);
    let out = listener(&t, "outbound");
    assert_eq!(out.listener_filters[0].name, "envoy.filters.listener.proxy_protocol");
    let names: Vec<&str> = out.filter_chains.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["db.default.svc.cluster.local:5432", "http"], "the HTTP chain is the fallback");
    let m = out.filter_chains[0].filter_chain_match.as_ref().unwrap();
    assert_eq!(
        (m.prefix_ranges[0].address_prefix.as_str(), m.prefix_ranges[0].prefix_len.map(|v| v.value)),
        ("10.0.0.9", Some(32))
    );
    assert_eq!(m.destination_port.map(|v| v.value), Some(5432));
    let proxy = tcp_proxy_of(&out.filter_chains[0].filters[0]);
    let Some(tcp_proxy::ClusterSpecifier::WeightedClusters(w)) = proxy.cluster_specifier else { panic!("weighted") };
    let w: Vec<(&str, u32)> = w.clusters.iter().map(|c| (c.name.as_str(), c.weight)).collect();
    assert_eq!(
        w,
        [("outbound|5432||db.default.svc.cluster.local", 80), ("outbound|5432||db2.default.svc.cluster.local", 20)]
    );
    assert!(
        t.untranslated.iter().any(|u| u.contains("db2.default.svc.cluster.local: it has no ClusterIP")),
        "{:?}",
        t.untranslated
    );
    assert!(!t.untranslated.iter().any(|u| u.contains("PROXY")), "the capture sends the header: {:?}", t.untranslated);
    let vhosts: Vec<&str> = t.resources.routes[0].virtual_hosts.iter().map(|v| v.name.as_str()).collect();
    assert!(!vhosts.iter().any(|v| v.starts_with("db")), "no HTTP virtual host for a TCP service: {vhosts:?}");
}

#[test]
fn a_tcp_services_pod_proxies_inbound_bytes_after_network_rbac_with_tcp_semantics() {
    let yaml = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: db}\nspec:\n  selector: {matchLabels: {app: db}}\n  rules:\n  - from: [{source: {principals: [cluster.local/ns/default/sa/a]}}]\n  - to: [{operation: {paths: [/x]}}]\n";
    let snap = snapshot_with(&with_tcp(), yaml);
    let mut p = placement();
    p.pod = "db-0".into();
    p.service = "db.default.svc.cluster.local".into();
    p.labels = [("app".to_string(), "db".to_string())].into();
    p.peers.extend(["db-0", "db2-0"].map(|n| (n.to_string(), SocketAddr::from(([127, 0, 0, 5], 15006)))));
    let t = super::translate(&snap, &p);
    let inbound = listener(&t, "inbound");
    let filters: Vec<&str> = inbound.filter_chains[0].filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(filters, ["envoy.filters.network.rbac", "envoy.filters.network.tcp_proxy"]);
    let rbac = super::rbac::network_filters(&snap.authz["db-0"]);
    let policies: Vec<&str> = rbac[0].rules.as_ref().unwrap().policies.keys().map(String::as_str).collect();
    assert_eq!(policies, ["ns[default]-policy[db]-rule[0]"], "the ALLOW rule on paths cannot apply to TCP");
    let proxy = tcp_proxy_of(inbound.filter_chains[0].filters.last().unwrap());
    assert_eq!(proxy.cluster_specifier, Some(tcp_proxy::ClusterSpecifier::Cluster("inbound|8080||".into())));
    if let Some(result) = envoy_validate("tcp", &super::static_bootstrap(&t.resources, "db-0")) {
        result.unwrap();
    }
}

#[test]
fn envoy_accepts_the_outbound_tcp_chains() {
    let mut p = placement();
    p.peers.extend(["db-0", "db2-0"].map(|n| (n.to_string(), SocketAddr::from(([127, 0, 0, 5], 15006)))));
    let t = super::translate(&snapshot_with(&with_tcp(), SPLIT), &p);
    if let Some(result) = envoy_validate("tcp-outbound", &super::static_bootstrap(&t.resources, "a-0")) {
        result.unwrap();
    }
}
