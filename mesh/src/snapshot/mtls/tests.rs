use crate::config::Level;
use crate::config::istio::MtlsMode;
use crate::registry::Pod;
use crate::snapshot::tests::{compile_with, compile_yaml, pod, registry};

const PA: &str = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n";

#[test]
fn without_peer_authentication_every_sidecar_is_permissive_and_pods_without_one_are_absent() {
    let mut r = registry();
    r.add_pod(Pod { sidecar: false, ..pod("a-1", "a", &[]) });
    let (snap, _) = compile_with(&r, "");
    assert_eq!(snap.inbound_mtls.keys().map(String::as_str).collect::<Vec<_>>(), ["a-0", "b-0", "b-1"]);
    assert!(snap.inbound_mtls.values().all(|m| *m == MtlsMode::Permissive));
}

#[test]
fn a_workload_policy_overrides_the_namespace_policy_for_its_pods_only() {
    let (snap, findings) = compile_yaml(&format!(
        "{PA}metadata: {{name: ns}}\nspec: {{mtls: {{mode: STRICT}}}}\n---\n{PA}metadata: {{name: b1}}\nspec:\n  selector: {{matchLabels: {{version: v1}}}}\n  mtls: {{mode: DISABLE}}\n"
    ));
    assert!(findings.0.is_empty(), "{:?}", findings.0);
    let modes: Vec<(&str, MtlsMode)> = snap.inbound_mtls.iter().map(|(p, m)| (p.as_str(), *m)).collect();
    assert_eq!(modes, [("a-0", MtlsMode::Strict), ("b-0", MtlsMode::Disable), ("b-1", MtlsMode::Strict)]);
}

#[test]
fn a_disabled_sidecar_gets_plaintext_from_its_clients() {
    let (snap, _) = compile_yaml(&format!(
        "{PA}metadata: {{name: b1}}\nspec:\n  selector: {{matchLabels: {{version: v1}}}}\n  mtls: {{mode: DISABLE}}\n"
    ));
    let c = &snap.clusters["outbound|80||b.default.svc.cluster.local"];
    let mtls: Vec<(&str, bool)> = c.endpoints.iter().map(|e| (e.pod.as_str(), e.mtls)).collect();
    assert_eq!(mtls, [("b-0", false), ("b-1", true)]);
}

#[test]
fn port_level_mtls_needs_a_selector() {
    let (_, findings) = compile_yaml(&format!(
        "{PA}metadata: {{name: ns}}\nspec:\n  mtls: {{mode: STRICT}}\n  portLevelMtls:\n    8080: {{mode: DISABLE}}\n"
    ));
    let errors: Vec<&str> = findings.0.iter().filter(|f| f.level == Level::Error).map(|f| f.message.as_str()).collect();
    assert_eq!(errors, ["mesh/namespace peer authentication cannot have port level mTLS"]);
}
