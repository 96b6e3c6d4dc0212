use crate::config::Level;
use crate::snapshot::tests::compile_yaml;

const AP: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n";

#[test]
fn only_selected_pods_get_policies() {
    let (snap, findings) = compile_yaml(&format!(
        "{AP}metadata: {{name: deny-v1}}\nspec:\n  selector: {{matchLabels: {{version: v1}}}}\n  action: DENY\n  rules: [{{to: [{{operation: {{methods: [DELETE]}}}}]}}]\n---\n{AP}metadata: {{name: allow-b}}\nspec:\n  selector: {{matchLabels: {{app: b}}}}\n  rules: [{{}}]\n"
    ));
    assert!(findings.0.iter().all(|f| f.level != Level::Error), "{:?}", findings.0);
    assert_eq!(snap.authz.keys().map(String::as_str).collect::<Vec<_>>(), ["b-0", "b-1"]);
    let (b0, b1) = (&snap.authz["b-0"], &snap.authz["b-1"]);
    assert_eq!((b0.deny.len(), b0.allow.len(), b1.deny.len(), b1.allow.len()), (1, 1, 0, 1));
    assert_eq!((b0.deny[0].name.as_str(), b0.port), ("default/deny-v1", 80));
}

#[test]
fn a_namespace_wide_policy_applies_to_every_pod_of_the_namespace() {
    let (snap, _) = compile_yaml(&format!("{AP}metadata: {{name: allow-nothing}}\nspec: {{}}\n"));
    assert_eq!(snap.authz.keys().map(String::as_str).collect::<Vec<_>>(), ["a-0", "b-0", "b-1"]);
}

#[test]
fn an_invalid_policy_is_reported_against_its_resource() {
    let (_, findings) = compile_yaml(&format!("{AP}metadata: {{name: bad}}\nspec: {{action: AUDIT}}\n"));
    let f = findings.0.iter().find(|f| f.level == Level::Warning || f.level == Level::Error).expect("a finding");
    assert_eq!(f.resource.as_deref(), Some("AuthorizationPolicy default/bad"));
}
