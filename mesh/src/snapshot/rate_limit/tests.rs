use std::collections::BTreeMap;

use crate::snapshot::tests::compile_yaml;

/// An EnvoyFilter installing a local rate limit of `max` tokens, in `namespace`,
/// selecting `selector` (YAML of `workloadSelector`, or empty for none).
fn filter(name: &str, namespace: &str, selector: &str, max: u32) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  {selector}
  configPatches:
  - applyTo: HTTP_FILTER
    match: {{context: SIDECAR_INBOUND}}
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.local_ratelimit
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
          stat_prefix: http_local_rate_limiter
          token_bucket: {{max_tokens: {max}, tokens_per_fill: 1, fill_interval: 1s}}
"#
    )
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn a_workload_gets_the_filters_of_its_namespace_and_the_root_namespace_that_select_it() {
    let yaml = [
        filter("only-b", "default", "workloadSelector: {labels: {app: b}}", 1),
        filter("whole-ns", "default", "", 2),
        filter("mesh", "istio-system", "", 3),
        filter("elsewhere", "other", "", 4),
    ]
    .join("---\n");
    let (snap, findings) = compile_yaml(&yaml);
    assert!(findings.0.iter().all(|f| f.level != crate::config::Level::Error), "{:?}", findings.0);
    assert_eq!(snap.inbound_rate_limits.len(), 4);
    let max = |ns: &str, l: &BTreeMap<String, String>| -> Vec<u32> {
        snap.inbound_rate_limits_for(ns, l).map(|f| f.filter.config.max_tokens).collect()
    };
    assert_eq!(max("default", &labels(&[("app", "b")])), [1, 2, 3]);
    assert_eq!(max("default", &labels(&[("app", "a")])), [2, 3]);
    assert_eq!(max("other", &labels(&[("app", "b")])), [3, 4]);
    // A sidecar runs the first that selects it.
    let one = |ns: &str, l: &BTreeMap<String, String>| snap.inbound_rate_limit_for(ns, l).map(|c| c.max_tokens);
    assert_eq!(one("default", &labels(&[("app", "b")])), Some(1));
    assert_eq!(one("default", &labels(&[("app", "a")])), Some(2));
    assert_eq!(one("other", &labels(&[])), Some(3));
}

#[test]
fn a_workload_no_filter_selects_has_no_rate_limit() {
    let (snap, _) = compile_yaml(&filter("only-b", "default", "workloadSelector: {labels: {app: b}}", 1));
    assert_eq!(snap.inbound_rate_limit_for("default", &labels(&[("app", "a")])), None);
    assert_eq!(snap.inbound_rate_limit_for("other", &labels(&[("app", "b")])), None);
}

#[test]
fn a_filter_names_its_resource_and_position() {
    let (snap, _) = compile_yaml(&filter("rl", "default", "", 5));
    let f = &snap.inbound_rate_limits[0];
    assert_eq!((f.resource.as_str(), f.namespace.as_str(), f.pos.line), ("EnvoyFilter default/rl", "default", 2));
}

#[test]
fn an_envoy_filter_without_a_rate_limit_adds_nothing() {
    let lua = filter("lua", "default", "", 1)
        .replace("name: envoy.filters.http.local_ratelimit", "name: envoy.filters.http.lua");
    let (snap, findings) = compile_yaml(&lua);
    assert!(snap.inbound_rate_limits.is_empty());
    assert!(!findings.0.is_empty(), "the patch meshsim does not run is reported");
}
