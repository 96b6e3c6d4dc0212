use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};

use crate::config::Level;
use crate::registry::{AppProtocol, Registry, Service};
use crate::snapshot::tests::{compile_with, fqdn, pod, registry};
use crate::snapshot::{L4Match, TcpRouteRule, cluster_name};

/// The test registry plus TCP services `db` (ClusterIP 10.0.0.9, port 5432) and `db2`.
fn with_tcp() -> Registry {
    let mut r = registry();
    for (name, ip) in [("db", Some(Ipv4Addr::new(10, 0, 0, 9))), ("db2", None)] {
        r.add_service(Service { protocol: AppProtocol::Tcp, cluster_ip: ip, ..Service::http(name, "default", 5432) });
        r.add_pod(pod(&format!("{name}-0"), name, &[]));
    }
    r
}

const VS: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: db}\n";

#[test]
fn tcp_services_are_listed_with_their_cluster_ips() {
    let (snap, findings) = compile_with(&with_tcp(), "");
    assert!(findings.0.is_empty());
    assert_eq!(snap.tcp_services.iter().cloned().collect::<Vec<_>>(), [fqdn("db"), fqdn("db2")]);
    assert_eq!(snap.tcp_vips, BTreeMap::from([(SocketAddr::from(([10, 0, 0, 9], 5432)), fqdn("db"))]));
    assert!(snap.tcp_routes.is_empty(), "no VirtualService: the whole service");
}

#[test]
fn tcp_routes_keep_their_matches_and_weights() {
    let (snap, findings) = compile_with(
        &with_tcp(),
        &format!(
            "{VS}spec:\n  hosts: [db]\n  tcp:\n  - match: [{{port: 5432, sourceLabels: {{app: a}}}}]\n    route:\n    - {{destination: {{host: db}}, weight: 80}}\n    - {{destination: {{host: db2}}, weight: 20}}\n"
        ),
    );
    assert!(findings.0.is_empty(), "{:?}", findings.0);
    let rule = TcpRouteRule {
        matches: vec![L4Match {
            port: Some(5432),
            source_labels: BTreeMap::from([("app".into(), "a".into())]),
            source_namespace: None,
        }],
        clusters: vec![(cluster_name(5432, None, &fqdn("db")), 80), (cluster_name(5432, None, &fqdn("db2")), 20)],
    };
    assert_eq!(snap.tcp_routes[&fqdn("db")], std::slice::from_ref(&rule));
    let from_a = BTreeMap::from([("app".to_string(), "a".to_string())]);
    assert!(rule.matches(5432, &from_a, "default"));
    assert!(!rule.matches(5432, &BTreeMap::new(), "default"));
}

#[test]
fn a_tcp_route_to_an_http_service_is_an_error() {
    let (_, findings) = compile_with(
        &with_tcp(),
        &format!("{VS}spec:\n  hosts: [db]\n  tcp:\n  - route: [{{destination: {{host: a}}}}]\n"),
    );
    let f = findings.0.iter().find(|f| f.level == Level::Error).expect("an error");
    assert_eq!(f.field, "spec.tcp[0].route[0].destination.host");
}

#[test]
fn http_routes_for_a_tcp_service_are_ignored_with_a_warning() {
    let (snap, findings) = compile_with(
        &with_tcp(),
        &format!("{VS}spec:\n  hosts: [db]\n  http:\n  - route: [{{destination: {{host: db2}}}}]\n"),
    );
    assert_eq!(
        findings.0.iter().map(|f| (f.level, f.field.as_str())).collect::<Vec<_>>(),
        [(Level::Warning, "spec.http")]
    );
    assert_eq!(snap.routes[&fqdn("db")][0].name, "default");
}
