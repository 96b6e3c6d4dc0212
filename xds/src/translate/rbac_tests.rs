//! The RBAC translation checked against meshsim's own decisions: a small evaluator of
//! the generated Envoy policies (Envoy's RBAC semantics for the matchers the
//! translation uses) decides a grid of requests, and must agree with
//! `authz::Workload::decide` on every one.

use std::net::IpAddr;

use http::HeaderMap;
use mesh::proxy::authz::{self, Decision};

use super::tests::{placement, snapshot};
use crate::pb::envoy::config::rbac::v3 as rbac;
use crate::pb::envoy::config::route::v3::{HeaderMatcher, header_matcher};
use crate::pb::envoy::extensions::filters::http::rbac::v3::Rbac;
use crate::pb::envoy::r#type::matcher::v3::{StringMatcher, path_matcher, string_matcher};

struct Req<'a> {
    principal: Option<&'a str>,
    ip: IpAddr,
    method: &'a str,
    path: &'a str,
    host: &'a str,
    headers: HeaderMap,
}

fn string_matches(m: &StringMatcher, v: &str) -> bool {
    use string_matcher::MatchPattern as P;
    let (v, fold) = if m.ignore_case { (v.to_ascii_lowercase(), true) } else { (v.to_string(), false) };
    let f = |s: &str| if fold { s.to_ascii_lowercase() } else { s.to_string() };
    match m.match_pattern.as_ref().expect("a pattern") {
        P::Exact(e) => v == f(e),
        P::Prefix(x) => v.starts_with(&f(x)),
        P::Suffix(x) => v.ends_with(&f(x)),
        P::Contains(x) => v.contains(&f(x)),
        P::SafeRegex(re) => regex::Regex::new(&format!("^(?:{})$", re.regex)).expect("RE2 regex").is_match(&v),
        P::Custom(_) => panic!("custom matcher"),
    }
}

fn header_matches(h: &HeaderMatcher, r: &Req<'_>) -> bool {
    let value = match h.name.as_str() {
        ":method" => Some(r.method.to_string()),
        ":authority" => Some(r.host.to_string()),
        ":path" => Some(r.path.to_string()),
        name => {
            let values: Vec<&str> = r.headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
            (!values.is_empty()).then(|| values.join(","))
        }
    };
    let hit = match (&h.header_match_specifier, value) {
        (Some(header_matcher::HeaderMatchSpecifier::StringMatch(sm)), Some(v)) => string_matches(sm, &v),
        (Some(header_matcher::HeaderMatchSpecifier::PresentMatch(p)), v) => v.is_some() == *p,
        (_, None) => false,
        (other, _) => panic!("unexpected header matcher {other:?}"),
    };
    hit != h.invert_match
}

fn permission(p: &rbac::Permission, r: &Req<'_>) -> bool {
    use rbac::permission::Rule as R;
    match p.rule.as_ref().expect("a rule") {
        R::AndRules(s) => s.rules.iter().all(|p| permission(p, r)),
        R::OrRules(s) => s.rules.iter().any(|p| permission(p, r)),
        R::Any(a) => *a,
        R::NotRule(p) => !permission(p, r),
        R::Header(h) => header_matches(h, r),
        R::UrlPath(pm) => match pm.rule.as_ref().expect("a path rule") {
            path_matcher::Rule::Path(sm) => string_matches(sm, r.path),
        },
        other => panic!("unexpected permission {other:?}"),
    }
}

fn cidr_contains(c: &crate::pb::envoy::config::core::v3::CidrRange, ip: IpAddr) -> bool {
    let net: IpAddr = c.address_prefix.parse().expect("an address");
    let len = c.prefix_len.map_or(0, |v| v.value);
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(n) & mask == u32::from(a) & mask
        }
        _ => panic!("IPv4 only here"),
    }
}

fn principal(p: &rbac::Principal, r: &Req<'_>) -> bool {
    use rbac::principal::Identifier as I;
    match p.identifier.as_ref().expect("an identifier") {
        I::AndIds(s) => s.ids.iter().all(|p| principal(p, r)),
        I::OrIds(s) => s.ids.iter().any(|p| principal(p, r)),
        I::Any(a) => *a,
        I::NotId(p) => !principal(p, r),
        // The peer certificate's URI SAN; no certificate, no match.
        I::Authenticated(a) => r.principal.is_some_and(|p| {
            let san = format!("spiffe://{p}");
            a.principal_name.as_ref().is_none_or(|m| string_matches(m, &san))
        }),
        I::DirectRemoteIp(c) => cidr_contains(c, r.ip),
        other => panic!("unexpected principal {other:?}"),
    }
}

/// Envoy's RBAC filters in order: a DENY filter denies on a match, an ALLOW filter
/// denies unless one matches.
fn envoy_decides(filters: &[Rbac], r: &Req<'_>) -> Decision {
    for f in filters {
        let rules = f.rules.as_ref().expect("rules");
        let matched = rules
            .policies
            .values()
            .any(|p| p.permissions.iter().any(|x| permission(x, r)) && p.principals.iter().any(|x| principal(x, r)));
        let deny = rules.action == rbac::rbac::Action::Deny as i32;
        if matched == deny {
            return Decision::Deny;
        }
    }
    Decision::Allow
}

const AP: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n";

/// The policies the grids decide with: a DENY and an ALLOW policy for `a-0` using
/// paths, methods, notMethods, hosts, ports, principals, namespaces, notNamespaces,
/// serviceAccounts, ipBlocks and `when` on a request header and the source namespace.
pub(super) fn grid_policies() -> String {
    format!(
        r#"{AP}metadata: {{name: deny-admin}}
spec:
  selector: {{matchLabels: {{app: a}}}}
  action: DENY
  rules:
  - to: [{{operation: {{paths: ["/admin*"], notMethods: [GET]}}}}]
  - from: [{{source: {{notNamespaces: [default, "trusted*"]}}}}]
    to: [{{operation: {{hosts: [a.default.svc.cluster.local]}}}}]
---
{AP}metadata: {{name: allow-some}}
spec:
  selector: {{matchLabels: {{app: a}}}}
  rules:
  - from:
    - source: {{principals: [cluster.local/ns/default/sa/b]}}
    - source: {{ipBlocks: [10.9.0.0/16]}}
    to: [{{operation: {{methods: [GET, POST], paths: ["/api/*", /health]}}}}]
  - when:
    - key: "request.headers[x-token]"
      values: ["secret*"]
    - key: source.namespace
      notValues: [evil]
  - from: [{{source: {{serviceAccounts: [other/c]}}}}]
    to: [{{operation: {{ports: ["80"], hosts: ["*.example.com"]}}}}]
  - to: [{{operation: {{ports: ["9999"]}}}}]
"#
    )
}

#[test]
fn generated_rbac_decides_like_meshsim_on_a_grid_of_requests() {
    let policies = grid_policies();
    let snap = snapshot(&policies);
    let workload = snap.authz.get("a-0").expect("a-0 has policies");
    let t = super::translate(&snap, &placement());
    assert!(t.untranslated.is_empty(), "{:?}", t.untranslated);
    let filters = super::rbac::filters(workload);
    assert_eq!(filters.len(), 2, "one DENY filter, one ALLOW filter");
    assert_eq!(filters[0].rules.as_ref().unwrap().action, rbac::rbac::Action::Deny as i32);
    let names: std::collections::BTreeSet<&str> =
        filters[1].rules.as_ref().unwrap().policies.keys().map(String::as_str).collect();
    assert!(names.contains("ns[default]-policy[allow-some]-rule[0]"), "{names:?}");

    let principals = [
        None,
        Some("cluster.local/ns/default/sa/b"),
        Some("cluster.local/ns/evil/sa/x"),
        Some("cluster.local/ns/trusted-1/sa/x"),
        Some("cluster.local/ns/other/sa/c"),
    ];
    let ips: [IpAddr; 2] = ["10.9.1.2".parse().unwrap(), "192.168.0.1".parse().unwrap()];
    let methods = ["GET", "POST", "DELETE"];
    let paths = ["/api/v1", "/health", "/admin/x", "/other"];
    let hosts = ["a.default.svc.cluster.local", "A.default.svc.cluster.local:80", "www.example.com:80", "a"];
    let tokens = [None, Some("secret-1"), Some("nope")];
    let mut checked = 0;
    for p in principals {
        for ip in ips {
            for method in methods {
                for path in paths {
                    for host in hosts {
                        for token in tokens {
                            let mut headers = HeaderMap::new();
                            if let Some(tk) = token {
                                headers.insert("x-token", tk.parse().unwrap());
                            }
                            let r = Req { principal: p, ip, method, path, host, headers };
                            let want = workload.decide(
                                &authz::Peer { principal: p.map(str::to_string), ip },
                                &authz::Request { method, path, host, headers: &r.headers },
                            );
                            let got = envoy_decides(&filters, &r);
                            assert_eq!(got, want, "principal {p:?} ip {ip} {method} {host}{path} token {token:?}");
                            checked += 1;
                        }
                    }
                }
            }
        }
    }
    assert_eq!(checked, 5 * 2 * 3 * 4 * 4 * 3);
}

/// An EnvoyFilter giving `a-0` a local rate limit of `max_tokens`, one more a minute,
/// enabled and enforced for every request.
pub(super) fn rate_limit_filter(max_tokens: u32) -> String {
    format!(
        "apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {{name: rl}}\nspec:\n  workloadSelector: {{labels: {{app: a}}}}\n  configPatches:\n  - applyTo: HTTP_FILTER\n    match: {{context: SIDECAR_INBOUND, listener: {{filterChain: {{filter: {{name: envoy.filters.network.http_connection_manager}}}}}}}}\n    patch:\n      operation: INSERT_BEFORE\n      value:\n        name: envoy.filters.http.local_ratelimit\n        typed_config:\n          \"@type\": type.googleapis.com/udpa.type.v1.TypedStruct\n          type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit\n          value:\n            stat_prefix: http_local_rate_limiter\n            token_bucket: {{max_tokens: {max_tokens}, tokens_per_fill: 1, fill_interval: 60s}}\n            filter_enabled: {{runtime_key: e, default_value: {{numerator: 100, denominator: HUNDRED}}}}\n            filter_enforced: {{runtime_key: f, default_value: {{numerator: 100, denominator: HUNDRED}}}}\n"
    )
}

#[test]
fn rbac_then_local_rate_limit_run_before_the_router_and_envoy_accepts_them() {
    let yaml = format!(
        "{AP}metadata: {{name: allow-b}}\nspec:\n  selector: {{matchLabels: {{app: a}}}}\n  rules: [{{from: [{{source: {{principals: [cluster.local/ns/default/sa/b]}}}}]}}]\n---\n{}",
        rate_limit_filter(10)
    );
    let snap = snapshot(&yaml);
    assert_eq!(snap.inbound_rate_limits.len(), 1, "the EnvoyFilter compiles to a rate limit");
    let t = super::translate(&snap, &placement());
    assert!(t.untranslated.is_empty(), "{:?}", t.untranslated);
    let inbound = t.resources.listeners.iter().find(|l| l.name == "inbound").unwrap();
    let hcm = super::tests::hcm_of(&inbound.filter_chains[0]);
    let names: Vec<&str> = hcm.http_filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["envoy.filters.http.rbac", "envoy.filters.http.local_ratelimit", "envoy.filters.http.router"]);
    let b = super::static_bootstrap(&t.resources, "a-0");
    if let Some(result) = super::tests::envoy_validate("rbac-ratelimit", &b) {
        result.unwrap();
    }
}
