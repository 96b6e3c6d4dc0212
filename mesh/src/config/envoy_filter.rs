//! `EnvoyFilter` (`networking.istio.io/v1alpha3`) as far as meshsim runs it: Envoy's local
//! rate limit filter (`envoy.filters.http.local_ratelimit`) inserted into the inbound HTTP
//! filter chain of the selected workloads — the shape Istio's documentation gives for local
//! rate limiting, since Istio has no CRD for it
//! ([Istio: local rate limiting](https://istio.io/latest/docs/tasks/policy-enforcement/rate-limit/#local-rate-limit)).
//!
//! This module owns the resource's model and turning such a patch into a
//! [`LocalRateLimitConfig`], with a finding for every part it cannot run. It does not own
//! which pods a filter applies to (the caller matches `workloadSelector`) nor the filter's
//! runtime (`crate::proxy::ratelimit`).
//!
//! Accepted patch: `applyTo: HTTP_FILTER`, `match.context: SIDECAR_INBOUND`, `patch.operation`
//! one of `INSERT_BEFORE`, `INSERT_FIRST`, `INSERT_AFTER`, `ADD` (position in the chain does
//! not matter: it is the only HTTP filter meshsim models on the inbound side),
//! `patch.value.name: envoy.filters.http.local_ratelimit`, and `typed_config` either the
//! `LocalRateLimit` message itself (`"@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit`)
//! or wrapped in a `TypedStruct` (`udpa.type.v1` or `xds.type.v3`, with `type_url` and
//! `value`). `match.listener` (e.g. the filter-chain filter name) is accepted unchecked: a
//! sidecar's inbound listener has one HTTP chain. Every other patch is reported as not
//! simulated.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_saphyr::Spanned;

use super::diag::{Finding, Pos, code};
use super::duration::parse_duration;
use super::istio::NotSimulated;
use super::ratelimit::{Denominator, FractionalPercent, LocalRateLimitConfig};

pub const LOCAL_RATE_LIMIT_FILTER: &str = "envoy.filters.http.local_ratelimit";
const LOCAL_RATE_LIMIT_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";
const TYPED_STRUCTS: [&str; 2] =
    ["type.googleapis.com/udpa.type.v1.TypedStruct", "type.googleapis.com/xds.type.v3.TypedStruct"];

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EnvoyFilterSpec {
    pub workload_selector: Option<Spanned<WorkloadSelector>>,
    #[serde(default)]
    pub config_patches: Vec<ConfigPatch>,
    pub priority: Option<i32>,
    pub target_refs: NotSimulated,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadSelector {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConfigPatch {
    pub apply_to: Option<Spanned<String>>,
    #[serde(rename = "match")]
    pub match_: Option<PatchMatch>,
    pub patch: Option<Spanned<Patch>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PatchMatch {
    pub context: Option<Spanned<String>>,
    pub listener: Option<IgnoredAny>,
    pub proxy: NotSimulated,
    pub route_configuration: NotSimulated,
    pub cluster: NotSimulated,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Patch {
    pub operation: Option<Spanned<String>>,
    /// Envoy config as a free-form struct (its schema depends on what is patched).
    pub value: Option<Spanned<serde_json::Value>>,
    pub filter_class: NotSimulated,
}

/// Envoy's `LocalRateLimit` message, in its proto-JSON field names.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LocalRateLimitProto {
    stat_prefix: String,
    token_bucket: Option<TokenBucketProto>,
    filter_enabled: Option<RuntimeFraction>,
    filter_enforced: Option<RuntimeFraction>,
    status: Option<StatusProto>,
    #[serde(default)]
    response_headers_to_add: Vec<HeaderValueOption>,
    #[serde(default)]
    local_rate_limit_per_downstream_connection: bool,
    descriptors: Option<serde_json::Value>,
    stage: Option<serde_json::Value>,
    request_headers_to_add_when_not_enforced: Option<serde_json::Value>,
    enable_x_ratelimit_headers: Option<serde_json::Value>,
    vh_rate_limits: Option<serde_json::Value>,
    always_consume_default_token_bucket: Option<serde_json::Value>,
    rate_limited_as_resource_exhausted: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBucketProto {
    max_tokens: u32,
    tokens_per_fill: Option<u32>,
    fill_interval: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuntimeFraction {
    runtime_key: Option<String>,
    default_value: Option<FractionProto>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FractionProto {
    #[serde(default)]
    numerator: u32,
    denominator: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusProto {
    code: serde_json::Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderValueOption {
    header: HeaderProto,
    append: Option<bool>,
    append_action: Option<String>,
    keep_empty_value: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderProto {
    key: String,
    value: String,
}

/// What one EnvoyFilter resource asks the sidecars it selects to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboundRateLimit {
    /// `workloadSelector.labels`; `None` = every workload of the namespace (or of the mesh
    /// for the root namespace).
    pub selector: Option<BTreeMap<String, String>>,
    pub config: LocalRateLimitConfig,
}

/// Reads `spec`: the local rate limit it installs, if any, and findings (errors for a
/// broken rate-limit patch, warnings for every patch meshsim does not run).
pub fn compile(file: &str, spec: &EnvoyFilterSpec, findings: &mut Vec<Finding>) -> Option<InboundRateLimit> {
    let mut found: Option<LocalRateLimitConfig> = None;
    if let Some(t) = &spec.target_refs {
        findings.push(not_simulated(Pos::of(file, t), "spec.targetRefs", "targetRefs (waypoints and gateways)"));
    }
    for (i, p) in spec.config_patches.iter().enumerate() {
        let at = format!("spec.configPatches[{i}]");
        let Some(patch) = &p.patch else {
            let pos = p.apply_to.as_ref().map(|a| Pos::of(file, a)).unwrap_or_else(|| Pos::file(file));
            findings.push(Finding::error(pos, code::SCHEMA, format!("{at}.patch"), "patch is required"));
            continue;
        };
        let value = patch.value.value.as_ref().map(|v| &v.value);
        let name = value.and_then(|v| v.get("name")).and_then(|n| n.as_str()).unwrap_or("");
        let apply_to = p.apply_to.as_ref().map(|a| a.value.as_str()).unwrap_or("");
        let context = p.match_.as_ref().and_then(|m| m.context.as_ref()).map(|c| c.value.as_str()).unwrap_or("ANY");
        let operation = patch.value.operation.as_ref().map(|o| o.value.as_str()).unwrap_or("");
        let runs = apply_to == "HTTP_FILTER"
            && context == "SIDECAR_INBOUND"
            && name == LOCAL_RATE_LIMIT_FILTER
            && ["INSERT_BEFORE", "INSERT_FIRST", "INSERT_AFTER", "ADD"].contains(&operation);
        if !runs {
            findings.push(not_simulated(
                Pos::of(file, patch),
                &at,
                &format!(
                    "this patch (applyTo {apply_to:?}, context {context:?}, operation {operation:?}, filter {name:?}); meshsim runs only {LOCAL_RATE_LIMIT_FILTER} inserted as an HTTP_FILTER on SIDECAR_INBOUND"
                ),
            ));
            continue;
        }
        if let Some(m) = &p.match_ {
            for (field, v) in
                [("proxy", &m.proxy), ("routeConfiguration", &m.route_configuration), ("cluster", &m.cluster)]
            {
                if let Some(v) = v {
                    findings.push(not_simulated(
                        Pos::of(file, v),
                        &format!("{at}.match.{field}"),
                        &format!("match.{field}"),
                    ));
                }
            }
        }
        let pos = Pos::of(file, patch.value.value.as_ref().expect("a named filter has a value"));
        let field = format!("{at}.patch.value.typed_config");
        match local_rate_limit(value.and_then(|v| v.get("typed_config"))) {
            Ok((cfg, ignored)) => {
                for f in ignored {
                    findings.push(not_simulated(pos.clone(), &format!("{field}.{f}"), f));
                }
                if found.is_some() {
                    findings.push(Finding::error(pos, code::SCENARIO, field, "a second local rate limit patch in one EnvoyFilter: meshsim runs one local rate limit per proxy"));
                } else {
                    found = Some(cfg);
                }
            }
            Err(e) => findings.push(Finding::error(pos, code::SCHEMA, field, e)),
        }
    }
    let selector = spec.workload_selector.as_ref().map(|s| s.value.labels.clone());
    found.map(|config| InboundRateLimit { selector, config })
}

fn not_simulated(pos: Pos, field: &str, what: &str) -> Finding {
    Finding::warning(pos, code::NOT_SIMULATED, field, format!("{what} is not simulated by meshsim: it is ignored"))
}

/// The `typed_config` of a local rate limit filter into meshsim's config, checked by the
/// filter's own rules; also the names of set fields meshsim ignores.
fn local_rate_limit(typed: Option<&serde_json::Value>) -> Result<(LocalRateLimitConfig, Vec<&'static str>), String> {
    let typed = typed.ok_or("typed_config is required for envoy.filters.http.local_ratelimit")?;
    let ty = typed.get("@type").and_then(|t| t.as_str()).unwrap_or("");
    let message = if ty == LOCAL_RATE_LIMIT_TYPE {
        let mut m = typed.clone();
        m.as_object_mut().expect("has @type").remove("@type");
        m
    } else if TYPED_STRUCTS.contains(&ty) {
        let url = typed.get("type_url").and_then(|t| t.as_str()).unwrap_or("");
        if url != LOCAL_RATE_LIMIT_TYPE {
            return Err(format!("TypedStruct type_url {url:?} is not {LOCAL_RATE_LIMIT_TYPE}"));
        }
        typed.get("value").cloned().unwrap_or_default()
    } else {
        return Err(format!("@type {ty:?} is neither {LOCAL_RATE_LIMIT_TYPE} nor a TypedStruct wrapping it"));
    };
    let m: LocalRateLimitProto = serde_json::from_value(message).map_err(|e| format!("LocalRateLimit: {e}"))?;
    if m.stat_prefix.is_empty() {
        return Err("stat_prefix: value length must be at least 1 characters".into());
    }
    let bucket = m
        .token_bucket
        .ok_or("token_bucket is required (meshsim runs the filter-wide bucket; descriptors alone are not simulated)")?;
    let fill_interval =
        parse_duration(&bucket.fill_interval).map_err(|e| format!("token_bucket.fill_interval: {e}"))?;
    let status = match &m.status {
        None => None,
        Some(s) => {
            let code = s.code.as_u64().or_else(|| s.code.as_str().and_then(status_code_name)).ok_or_else(|| {
                format!(
                    "status.code {}: expected an HTTP status number or a StatusCode name like TooManyRequests",
                    s.code
                )
            })?;
            Some(u16::try_from(code).map_err(|_| format!("status.code {code} is not an HTTP status"))?)
        }
    };
    let mut headers = Vec::new();
    for h in &m.response_headers_to_add {
        let (Ok(k), Ok(v)) =
            (http::HeaderName::try_from(h.header.key.as_str()), http::HeaderValue::try_from(h.header.value.as_str()))
        else {
            return Err(format!("response_headers_to_add: invalid header {}: {}", h.header.key, h.header.value));
        };
        let _ = (h.append, &h.append_action, h.keep_empty_value);
        headers.push((k, v));
    }
    let cfg = LocalRateLimitConfig {
        max_tokens: bucket.max_tokens,
        tokens_per_fill: bucket.tokens_per_fill,
        fill_interval,
        status,
        filter_enabled: fraction(m.filter_enabled.as_ref(), "filter_enabled")?,
        filter_enforced: fraction(m.filter_enforced.as_ref(), "filter_enforced")?,
        response_headers_to_add: headers,
    };
    cfg.validate()?;
    let mut ignored = Vec::new();
    if m.local_rate_limit_per_downstream_connection {
        ignored.push("local_rate_limit_per_downstream_connection");
    }
    for (set, name) in [
        (m.descriptors.is_some(), "descriptors"),
        (m.stage.is_some(), "stage"),
        (m.request_headers_to_add_when_not_enforced.is_some(), "request_headers_to_add_when_not_enforced"),
        (m.enable_x_ratelimit_headers.is_some(), "enable_x_ratelimit_headers"),
        (m.vh_rate_limits.is_some(), "vh_rate_limits"),
        (m.always_consume_default_token_bucket.is_some(), "always_consume_default_token_bucket"),
        (m.rate_limited_as_resource_exhausted.is_some(), "rate_limited_as_resource_exhausted"),
    ] {
        if set {
            ignored.push(name);
        }
    }
    let _ = m.filter_enabled.as_ref().map(|f| &f.runtime_key);
    Ok((cfg, ignored))
}

/// A runtime fraction's default value; absent ⇒ 0% (Envoy's default: the filter is then off).
fn fraction(f: Option<&RuntimeFraction>, field: &str) -> Result<FractionalPercent, String> {
    let Some(v) = f.and_then(|f| f.default_value.as_ref()) else {
        return Ok(FractionalPercent::ZERO);
    };
    let denominator = match v.denominator.as_deref().unwrap_or("HUNDRED") {
        "HUNDRED" => Denominator::Hundred,
        "TEN_THOUSAND" => Denominator::TenThousand,
        "MILLION" => Denominator::Million,
        other => {
            return Err(format!(
                "{field}.default_value.denominator {other:?} is not one of HUNDRED, TEN_THOUSAND, MILLION"
            ));
        }
    };
    Ok(FractionalPercent { numerator: v.numerator, denominator })
}

/// Envoy's `envoy.type.v3.StatusCode` enum names meshsim accepts for `status.code`.
fn status_code_name(name: &str) -> Option<u64> {
    Some(match name {
        "TooManyRequests" => 429,
        "ServiceUnavailable" => 503,
        "Forbidden" => 403,
        "BadRequest" => 400,
        "InternalServerError" => 500,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::istio::Spec;
    use crate::config::parse_resources;

    /// The local rate limit EnvoyFilter of Istio's documentation (TypedStruct form).
    const DOCS: &str = r#"apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata:
  name: filter-local-ratelimit-svc
  namespace: default
spec:
  workloadSelector:
    labels:
      app: productpage
  configPatches:
    - applyTo: HTTP_FILTER
      match:
        context: SIDECAR_INBOUND
        listener:
          filterChain:
            filter:
              name: "envoy.filters.network.http_connection_manager"
      patch:
        operation: INSERT_BEFORE
        value:
          name: envoy.filters.http.local_ratelimit
          typed_config:
            "@type": type.googleapis.com/udpa.type.v1.TypedStruct
            type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
            value:
              stat_prefix: http_local_rate_limiter
              token_bucket:
                max_tokens: 10
                tokens_per_fill: 10
                fill_interval: 60s
              filter_enabled:
                runtime_key: local_rate_limit_enabled
                default_value:
                  numerator: 100
                  denominator: HUNDRED
              filter_enforced:
                runtime_key: local_rate_limit_enforced
                default_value:
                  numerator: 100
                  denominator: HUNDRED
              response_headers_to_add:
                - append: false
                  header:
                    key: x-local-rate-limit
                    value: 'true'
"#;

    fn spec(text: &str) -> EnvoyFilterSpec {
        let rs = parse_resources("f.yaml", text).expect("parses");
        match &rs[0].spec {
            Spec::EnvoyFilter(s) => (**s).clone(),
            other => panic!("not an EnvoyFilter: {other:?}"),
        }
    }

    fn run(text: &str) -> (Option<InboundRateLimit>, Vec<Finding>) {
        let mut findings = Vec::new();
        let r = compile("f.yaml", &spec(text), &mut findings);
        (r, findings)
    }

    #[test]
    fn istio_docs_local_rate_limit_compiles_to_the_filter_config() {
        let (r, findings) = run(DOCS);
        assert!(findings.is_empty(), "{findings:?}");
        let r = r.expect("a rate limit");
        assert_eq!(r.selector, Some(BTreeMap::from([("app".to_string(), "productpage".to_string())])));
        assert_eq!(r.config.max_tokens, 10);
        assert_eq!(r.config.tokens_per_fill, Some(10));
        assert_eq!(r.config.fill_interval, std::time::Duration::from_secs(60));
        assert_eq!(r.config.filter_enabled, FractionalPercent::ALL);
        assert_eq!(r.config.filter_enforced, FractionalPercent::ALL);
        assert_eq!(r.config.status, None);
        assert_eq!(r.config.response_headers_to_add.len(), 1);
        assert_eq!(r.config.response_headers_to_add[0].0.as_str(), "x-local-rate-limit");
    }

    #[test]
    fn direct_typed_config_and_status_and_unset_fractions() {
        let direct = r#"apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: rl}
spec:
  configPatches:
    - applyTo: HTTP_FILTER
      match: {context: SIDECAR_INBOUND}
      patch:
        operation: INSERT_FIRST
        value:
          name: envoy.filters.http.local_ratelimit
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
            stat_prefix: rl
            status: {code: TooManyRequests}
            token_bucket: {max_tokens: 4, fill_interval: 1s}
"#;
        let (r, findings) = run(direct);
        assert!(findings.is_empty(), "{findings:?}");
        let r = r.expect("a rate limit");
        assert_eq!(r.selector, None);
        assert_eq!(r.config.status, Some(429));
        // Envoy's defaults: both fractions 0% when unset (the filter does nothing).
        assert_eq!(r.config.filter_enabled, FractionalPercent::ZERO);
        assert_eq!(r.config.filter_enforced, FractionalPercent::ZERO);
        assert_eq!(r.config.tokens_per_fill, None);
    }

    #[test]
    fn broken_rate_limit_patches_are_errors_naming_the_rule() {
        let short = DOCS.replace("fill_interval: 60s", "fill_interval: 10ms");
        let (r, findings) = run(&short);
        assert!(r.is_none());
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].field, "spec.configPatches[0].patch.value.typed_config");
        assert!(findings[0].message.contains("50ms"), "{}", findings[0].message);

        let unknown =
            DOCS.replace("stat_prefix: http_local_rate_limiter", "stat_prefix: x\n              max_token: 3");
        let (_, findings) = run(&unknown);
        assert!(findings[0].message.contains("unknown field `max_token`"), "{}", findings[0].message);

        let no_bucket = DOCS.replace("token_bucket:", "not_a_bucket:");
        let (_, findings) = run(&no_bucket);
        assert_eq!(findings[0].level, crate::config::Level::Error);
    }

    #[test]
    fn other_patches_are_warned_about_not_ignored_silently() {
        let outbound = DOCS.replace("SIDECAR_INBOUND", "SIDECAR_OUTBOUND");
        let (r, findings) = run(&outbound);
        assert!(r.is_none());
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].code, code::NOT_SIMULATED);
        assert_eq!(findings[0].field, "spec.configPatches[0]");
        assert!(findings[0].message.contains("SIDECAR_OUTBOUND"), "{}", findings[0].message);
        let lua = DOCS.replace("name: envoy.filters.http.local_ratelimit", "name: envoy.filters.http.lua");
        let (r, findings) = run(&lua);
        assert!(r.is_none());
        assert!(findings[0].message.contains("envoy.filters.http.lua"));
    }
}
