//! Helpers the per-resource tests share, and the tests of the walk itself.

use std::collections::BTreeMap;

use super::*;
use crate::config::{Level, parse_resources};
use crate::registry::{Pod, Service};

/// `<name>.default.svc.cluster.local`.
pub(super) fn fqdn(name: &str) -> String {
    format!("{name}.default.svc.cluster.local")
}

/// A sidecar pod of `service` in `default` with `labels` (`app` is always the service).
pub(super) fn pod(name: &str, service: &str, labels: &[(&str, &str)]) -> Pod {
    let mut l: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    l.insert("app".into(), service.into());
    Pod {
        name: name.into(),
        namespace: "default".into(),
        service: service.into(),
        labels: l,
        service_account: service.into(),
        host: format!("node-{name}"),
        inbound_port: 15006,
        sidecar: true,
    }
}

/// HTTP services `a` and `b` on port 80 in `default`: pod `a-0`, and pods `b-0`
/// (`version: v1`) and `b-1` (`version: v2`).
pub(super) fn registry() -> Registry {
    let mut r = Registry::default();
    r.add_service(Service::http("a", "default", 80));
    r.add_service(Service::http("b", "default", 80));
    r.add_pod(pod("a-0", "a", &[]));
    r.add_pod(pod("b-0", "b", &[("version", "v1")]));
    r.add_pod(pod("b-1", "b", &[("version", "v2")]));
    r
}

/// Compiles the resources of one YAML text (file `mesh.yaml`) against `registry`.
pub(super) fn compile_with(registry: &Registry, yaml: &str) -> (Snapshot, Findings) {
    let resources = parse_resources("mesh.yaml", yaml).expect("valid YAML");
    let sourced: Vec<Sourced<'_>> = resources.iter().map(|r| Sourced { file: "mesh.yaml", resource: r }).collect();
    super::compile(registry, &sourced)
}

pub(super) fn compile_yaml(yaml: &str) -> (Snapshot, Findings) {
    compile_with(&registry(), yaml)
}

/// The codes of the findings at `level`, in order.
pub(super) fn codes(findings: &Findings, level: Level) -> Vec<&'static str> {
    findings.0.iter().filter(|f| f.level == level).map(|f| f.code).collect()
}

#[test]
fn no_resources_give_every_service_its_port_routes_and_cluster_and_no_findings() {
    let (snap, findings) = compile_yaml("");
    assert!(findings.0.is_empty(), "{:?}", findings.0);
    assert_eq!(snap.ports, BTreeMap::from([(fqdn("a"), 80), (fqdn("b"), 80)]));
    assert_eq!(snap.routes.keys().cloned().collect::<Vec<_>>(), [fqdn("a"), fqdn("b")]);
    assert_eq!(
        snap.clusters.keys().cloned().collect::<Vec<_>>(),
        [cluster_name(80, None, &fqdn("a")), cluster_name(80, None, &fqdn("b"))]
    );
    assert!(snap.authz.is_empty() && snap.inbound_rate_limits.is_empty() && snap.tcp_services.is_empty());
}

#[test]
fn an_unsupported_kind_is_an_error_naming_the_resource() {
    let (_, findings) =
        compile_yaml("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec: {}\n");
    let f = &findings.0[0];
    assert_eq!((f.level, f.field.as_str()), (Level::Error, "kind"));
    assert!(f.message.starts_with("kind \"Gateway\" is not supported"), "{}", f.message);
    assert_eq!(f.resource.as_deref(), Some("Gateway default/gw"));
}

#[test]
fn a_wrong_api_group_and_a_missing_name_are_errors() {
    let (_, findings) =
        compile_yaml("apiVersion: security.istio.io/v1\nkind: VirtualService\nmetadata: {}\nspec: {hosts: [a]}\n");
    let fields: Vec<&str> = findings.0.iter().filter(|f| f.level == Level::Error).map(|f| f.field.as_str()).collect();
    assert_eq!(fields, ["apiVersion", "metadata.name"]);
}

#[test]
fn cluster_names_follow_istio() {
    assert_eq!(cluster_name(80, None, "a.default.svc.cluster.local"), "outbound|80||a.default.svc.cluster.local");
    assert_eq!(cluster_name(9080, Some("v1"), "r.ns.svc.cluster.local"), "outbound|9080|v1|r.ns.svc.cluster.local");
}
