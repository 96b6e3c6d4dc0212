//! AuthorizationPolicy as Envoy's RBAC HTTP filters on the inbound side: the DENY
//! policies in one filter with action DENY, then the ALLOW policies in one with action
//! ALLOW, one Envoy policy per Istio rule (`ns[<ns>]-policy[<name>]-rule[<i>]`), as
//! Istio's authorization builder lays them out.
//!
//! A rule matches iff one of its `from` sources, one of its `to` operations and every
//! `when` condition match: each becomes an OR of ANDs on the principal side (sources,
//! source conditions) or the permission side (operations, request conditions); values of
//! one field OR; `not*` fields are negations. Strings: exact, `abc*` prefix, `*abc`
//! suffix, `*` non-empty.
//!
//! Sources: Istio `pilot/pkg/security/authz/builder/builder.go` and
//! `pilot/pkg/security/authz/model/{model,generator,permission,principal}.go`; Envoy's
//! [RBAC filter](https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/rbac_filter)
//! and [RBAC policy](https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/rbac/v3/rbac.proto).
//!
//! Where it follows meshsim's sidecar rather than Istio: `ipBlocks` and `remoteIpBlocks`
//! both match the connection's source (`direct_remote_ip`; meshsim reads no
//! X-Forwarded-For); `ports` compare with the workload's service port, which every
//! inbound request has here (one inbound listener), so a port field is decided when the
//! filter is built; hosts match with or without a `:port`, ignoring case.
//!
//! Not here: choosing the policies of a pod (`mesh::snapshot`), the rest of the inbound
//! connection manager (`listener`).

use mesh::proxy::authz::{Action, All, Cidr, Field, Matcher, Policy, Rule, StrMatch, Workload};

use crate::pb::envoy::config::core::v3::CidrRange;
use crate::pb::envoy::config::rbac::v3 as rbac;
use crate::pb::envoy::config::route::v3::{HeaderMatcher, header_matcher};
use crate::pb::envoy::extensions::filters::http::rbac::v3::Rbac;
use crate::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use crate::pb::envoy::r#type::matcher::v3::{PathMatcher, RegexMatcher, StringMatcher, path_matcher, string_matcher};

pub(super) const RBAC_FILTER: &str = "envoy.filters.http.rbac";
pub(super) const NETWORK_RBAC_FILTER: &str = "envoy.filters.network.rbac";

/// The RBAC filters for `w`: DENY first (if any DENY policy), then ALLOW (if any).
pub(super) fn filters(w: &Workload) -> Vec<Rbac> {
    let mut out = Vec::new();
    for (action, policies) in [(rbac::rbac::Action::Deny, &w.deny), (rbac::rbac::Action::Allow, &w.allow)] {
        if policies.is_empty() {
            continue;
        }
        let mut map = Vec::new();
        for p in policies {
            debug_assert_eq!(p.action == Action::Deny, action == rbac::rbac::Action::Deny);
            for (i, rule) in p.rules.iter().enumerate() {
                map.push((policy_name(p, i), policy(rule, w.port)));
            }
        }
        out.push(Rbac {
            rules: Some(rbac::Rbac {
                action: action as i32,
                policies: map.into_iter().collect(),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    out
}

/// The network RBAC filters of a TCP inbound side: HTTP-only fields (hosts, methods,
/// paths, request headers, request principals and claims) cannot be seen on a
/// connection, so an ALLOW rule using one is left out and a DENY rule drops them (a
/// broader deny), as Istio's builder does for TCP filter chains and meshsim's
/// `decide_tcp`.
pub(super) fn network_filters(w: &Workload) -> Vec<NetworkRbac> {
    let tcp_rule = |rule: &Rule, deny: bool| -> Option<Rule> {
        let keep = |all: &All| All(all.0.iter().filter(|f| !http_only(&f.matcher)).cloned().collect());
        if deny {
            Some(Rule {
                from: rule.from.iter().map(keep).collect(),
                to: rule.to.iter().map(keep).collect(),
                when: keep(&rule.when),
            })
        } else {
            let uses_http =
                rule.from.iter().chain(&rule.to).chain([&rule.when]).any(|a| a.0.iter().any(|f| http_only(&f.matcher)));
            (!uses_http).then(|| rule.clone())
        }
    };
    let mut out = Vec::new();
    for (action, policies) in [(rbac::rbac::Action::Deny, &w.deny), (rbac::rbac::Action::Allow, &w.allow)] {
        if policies.is_empty() {
            continue;
        }
        let deny = action == rbac::rbac::Action::Deny;
        let mut map = Vec::new();
        for p in policies {
            for (i, rule) in p.rules.iter().enumerate() {
                if let Some(r) = tcp_rule(rule, deny) {
                    map.push((policy_name(p, i), policy(&r, w.port)));
                }
            }
        }
        out.push(NetworkRbac {
            rules: Some(rbac::Rbac {
                action: action as i32,
                policies: map.into_iter().collect(),
                ..Default::default()
            }),
            stat_prefix: "tcp.".to_string(),
            ..Default::default()
        });
    }
    out
}

/// Whether only an HTTP request has the attribute.
fn http_only(m: &Matcher) -> bool {
    match m {
        Matcher::Host(_) | Matcher::Method(_) | Matcher::Path(_) | Matcher::Header(..) => true,
        Matcher::Absent { http_only } => *http_only,
        Matcher::Principal(_)
        | Matcher::Namespace(_)
        | Matcher::ServiceAccount(_)
        | Matcher::SourceIp(_)
        | Matcher::Port(_) => false,
    }
}

/// Istio's policy name: `ns[<ns>]-policy[<name>]-rule[<i>]`.
fn policy_name(p: &Policy, rule: usize) -> String {
    let name = p.name.split_once('/').map_or(p.name.as_str(), |(_, n)| n);
    format!("ns[{}]-policy[{name}]-rule[{rule}]", p.namespace)
}

fn policy(rule: &Rule, port: u16) -> rbac::Policy {
    // Permission side: one of the operations, and the request conditions.
    let mut perms = Vec::new();
    if !rule.to.is_empty() {
        perms.push(or_perms(rule.to.iter().map(|op| and_perms(op, port)).collect()));
    }
    let (source_when, request_when): (Vec<&Field>, Vec<&Field>) =
        rule.when.0.iter().partition(|f| principal_side(&f.matcher));
    perms.extend(request_when.iter().map(|f| permission_field(f, port)));
    // Principal side: one of the sources, and the source conditions.
    let mut ids = Vec::new();
    if !rule.from.is_empty() {
        ids.push(or_ids(rule.from.iter().map(and_ids).collect()));
    }
    ids.extend(source_when.iter().map(|f| principal_field(f)));
    rbac::Policy { permissions: vec![and_perms_of(perms)], principals: vec![and_ids_of(ids)], ..Default::default() }
}

/// Whether a field is about the peer (principal side) rather than the request.
fn principal_side(m: &Matcher) -> bool {
    matches!(m, Matcher::Principal(_) | Matcher::Namespace(_) | Matcher::ServiceAccount(_) | Matcher::SourceIp(_))
}

fn and_perms(fields: &All, port: u16) -> rbac::Permission {
    and_perms_of(fields.0.iter().map(|f| permission_field(f, port)).collect())
}

fn and_ids(fields: &All) -> rbac::Principal {
    and_ids_of(fields.0.iter().map(principal_field).collect())
}

fn perm(rule: rbac::permission::Rule) -> rbac::Permission {
    rbac::Permission { rule: Some(rule) }
}

fn id(identifier: rbac::principal::Identifier) -> rbac::Principal {
    rbac::Principal { identifier: Some(identifier) }
}

/// All of `rules`; none: any.
fn and_perms_of(mut rules: Vec<rbac::Permission>) -> rbac::Permission {
    match rules.len() {
        0 => perm(rbac::permission::Rule::Any(true)),
        1 => rules.remove(0),
        _ => perm(rbac::permission::Rule::AndRules(rbac::permission::Set { rules })),
    }
}

/// One of `rules`; none: nothing.
fn or_perms(mut rules: Vec<rbac::Permission>) -> rbac::Permission {
    match rules.len() {
        0 => never_perm(),
        1 => rules.remove(0),
        _ => perm(rbac::permission::Rule::OrRules(rbac::permission::Set { rules })),
    }
}

fn and_ids_of(mut ids: Vec<rbac::Principal>) -> rbac::Principal {
    match ids.len() {
        0 => id(rbac::principal::Identifier::Any(true)),
        1 => ids.remove(0),
        _ => id(rbac::principal::Identifier::AndIds(rbac::principal::Set { ids })),
    }
}

fn or_ids(mut ids: Vec<rbac::Principal>) -> rbac::Principal {
    match ids.len() {
        0 => never_id(),
        1 => ids.remove(0),
        _ => id(rbac::principal::Identifier::OrIds(rbac::principal::Set { ids })),
    }
}

fn never_perm() -> rbac::Permission {
    perm(rbac::permission::Rule::NotRule(Box::new(perm(rbac::permission::Rule::Any(true)))))
}

fn never_id() -> rbac::Principal {
    id(rbac::principal::Identifier::NotId(Box::new(id(rbac::principal::Identifier::Any(true)))))
}

fn not_perm(p: rbac::Permission) -> rbac::Permission {
    perm(rbac::permission::Rule::NotRule(Box::new(p)))
}

fn not_id(p: rbac::Principal) -> rbac::Principal {
    id(rbac::principal::Identifier::NotId(Box::new(p)))
}

/// A request-side field (a peer-side one in a `to`/`when` is placed by `policy`).
fn permission_field(f: &Field, port: u16) -> rbac::Permission {
    use rbac::permission::Rule as R;
    let values = match &f.matcher {
        Matcher::Host(v) => or_perms(v.iter().map(|m| perm(R::Header(header(":authority", host(m))))).collect()),
        Matcher::Method(v) => or_perms(v.iter().map(|m| perm(R::Header(header(":method", string(m))))).collect()),
        Matcher::Path(v) => or_perms(
            v.iter()
                .map(|m| perm(R::UrlPath(PathMatcher { rule: Some(path_matcher::Rule::Path(string(m))) })))
                .collect(),
        ),
        Matcher::Header(name, v) => {
            or_perms(v.iter().map(|m| perm(R::Header(header(name.as_str(), string(m))))).collect())
        }
        // Every inbound request comes in on the workload's port.
        Matcher::Port(v) if v.contains(&port) => perm(R::Any(true)),
        Matcher::Port(_) | Matcher::Absent { .. } => never_perm(),
        // A peer-side field in a request list: as a principal it is not expressible in a
        // permission; `policy` never puts one here.
        Matcher::Principal(_) | Matcher::Namespace(_) | Matcher::ServiceAccount(_) | Matcher::SourceIp(_) => {
            unreachable!("peer-side fields are principals")
        }
    };
    if f.negated { not_perm(values) } else { values }
}

fn principal_field(f: &Field) -> rbac::Principal {
    use rbac::principal::Identifier as I;
    let authenticated =
        |sm: StringMatcher| id(I::Authenticated(rbac::principal::Authenticated { principal_name: Some(sm) }));
    let values = match &f.matcher {
        Matcher::Principal(v) => or_ids(v.iter().map(|m| authenticated(principal(m))).collect()),
        Matcher::Namespace(v) => or_ids(v.iter().map(|m| authenticated(namespace(m))).collect()),
        Matcher::ServiceAccount(v) => or_ids(
            v.iter()
                .map(|suffix| authenticated(pattern(string_matcher::MatchPattern::Suffix(suffix.clone()))))
                .collect(),
        ),
        Matcher::SourceIp(v) => or_ids(v.iter().map(|c| id(I::DirectRemoteIp(cidr(c)))).collect()),
        Matcher::Absent { .. } => never_id(),
        // Request-side fields in a source list do not occur (sources hold peer fields).
        Matcher::Host(_) | Matcher::Method(_) | Matcher::Path(_) | Matcher::Header(..) | Matcher::Port(_) => {
            unreachable!("request-side fields are permissions")
        }
    };
    if f.negated { not_id(values) } else { values }
}

fn pattern(p: string_matcher::MatchPattern) -> StringMatcher {
    StringMatcher { match_pattern: Some(p), ignore_case: false }
}

fn regex(re: String) -> StringMatcher {
    pattern(string_matcher::MatchPattern::SafeRegex(RegexMatcher { regex: re, ..Default::default() }))
}

/// Istio's string rule; `*` is a non-empty value.
fn string(m: &StrMatch) -> StringMatcher {
    use string_matcher::MatchPattern as P;
    match m {
        StrMatch::Exact(e) => pattern(P::Exact(e.clone())),
        StrMatch::Prefix(x) => pattern(P::Prefix(x.clone())),
        StrMatch::Suffix(x) => pattern(P::Suffix(x.clone())),
        StrMatch::Present => regex(".+".to_string()),
    }
}

/// A principal (`<td>/ns/<ns>/sa/<sa>`) against the certificate's URI SAN
/// (`spiffe://…`), as Istio's `StringMatcherWithPrefix(v, "spiffe://")`.
fn principal(m: &StrMatch) -> StringMatcher {
    use string_matcher::MatchPattern as P;
    match m {
        StrMatch::Exact(e) => pattern(P::Exact(format!("spiffe://{e}"))),
        StrMatch::Prefix(x) => pattern(P::Prefix(format!("spiffe://{x}"))),
        StrMatch::Suffix(x) => pattern(P::Suffix(x.clone())),
        StrMatch::Present => regex("spiffe://.+".to_string()),
    }
}

/// The namespace segment of the SAN `spiffe://<td>/ns/<ns>/sa/<sa>`.
fn namespace(m: &StrMatch) -> StringMatcher {
    let ns = match m {
        StrMatch::Exact(e) => quote(e),
        StrMatch::Prefix(x) => format!("{}[^/]*", quote(x)),
        StrMatch::Suffix(x) => format!("[^/]*{}", quote(x)),
        StrMatch::Present => "[^/]+".to_string(),
    };
    regex(format!("spiffe://[^/]*/ns/{ns}/.*"))
}

/// A host pattern (lower-cased) against `:authority`, ignoring case, with or without a
/// `:port`.
fn host(m: &StrMatch) -> StringMatcher {
    const PORT: &str = "(:[0-9]+)?";
    match m {
        StrMatch::Exact(e) => regex(format!("(?i){}{PORT}", quote(e))),
        StrMatch::Prefix(x) => regex(format!("(?i){}.*", quote(x))),
        StrMatch::Suffix(x) => regex(format!("(?i).*{}{PORT}", quote(x))),
        StrMatch::Present => regex(".+".to_string()),
    }
}

fn header(name: &str, sm: StringMatcher) -> HeaderMatcher {
    HeaderMatcher {
        name: name.to_string(),
        header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(sm)),
        ..Default::default()
    }
}

fn cidr(c: &Cidr) -> CidrRange {
    CidrRange { address_prefix: c.net.to_string(), prefix_len: super::u32v(u32::from(c.len)) }
}

/// `s` with RE2's metacharacters escaped.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        if "\\.+*?()|[]{}^$".contains(ch) {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}
