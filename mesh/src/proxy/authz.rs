//! AuthorizationPolicy ([Istio's reference](https://istio.io/latest/docs/reference/config/security/authorization-policy/)): Istio's webhook validation of
//! `security.istio.io/v1` policies with its messages, their compilation into matchers,
//! the choice of the policies that apply to one workload, and the decision a server
//! sidecar makes for each request: any matching DENY policy denies; otherwise, when ALLOW
//! policies select the workload, one of them must match.
//!
//! Rule semantics, as Istio translates them for Envoy's RBAC filter: a rule matches iff
//! one of its `from` entries, one of its `to` entries and every `when` condition match
//! (an absent section matches everything, so `rules: [{}]` allows all and `spec: {}`,
//! having no rule, allows nothing). Inside a source or operation the fields AND, the
//! values of one field OR, and `not*` fields hold when no value matches. Strings match
//! exactly, or `abc*` as a prefix, `*abc` as a suffix, `*` as any non-empty value; hosts
//! ignore case. Principals and namespaces come from the peer's mTLS certificate: a
//! plaintext peer has none, so they never match it (and `notPrincipals` always does).
//!
//! What meshsim does not have, and how it is evaluated (each use is a validation
//! warning): no JWT (no RequestAuthentication), so `requestPrincipals` and
//! `request.auth.*` never match; no destination IP or SNI, so those conditions never
//! match; `remoteIpBlocks` and `remote.ip` see the connection's peer address (no
//! X-Forwarded-For); paths are not normalized. CUSTOM (external authorization) is out of
//! scope and rejected; AUDIT and `istio.io/dry-run` policies never decide, as in Istio,
//! and meshsim records no audit or shadow result. Policies attached with `targetRef(s)`
//! apply to gateways and waypoints, never to sidecars.
//!
//! Pure. Not here: the resource model (`config::istio`), running compilation over all
//! resources (`snapshot`), the 403 local reply and where the peer's identity comes from
//! (`inbound`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderName};
use serde_saphyr::Spanned;

use crate::config::diag::code;
use crate::config::istio::{AuthorizationAction, AuthorizationPolicySpec, Condition, Operation, Resource, Source};
use crate::config::{Finding, Pos};

/// Policies in this namespace apply mesh-wide (Istio's default root namespace).
pub const ROOT_NAMESPACE: &str = "istio-system";
/// The body of Envoy's RBAC denial (status 403, no response flag).
pub const DENIED_BODY: &str = "RBAC: access denied";
/// The annotation that makes a policy shadow-evaluated only.
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

// ---------------------------------------------------------------- request side

/// The peer of an inbound connection as the server sidecar knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The verified mTLS identity (`cluster.local/ns/<ns>/sa/<sa>`, the client
    /// certificate's SPIFFE URI SAN without `spiffe://`); `None` for a plaintext peer.
    pub principal: Option<String>,
    /// The connection's source address. In the simulator a pod's address is its node's:
    /// pods of one node share it.
    pub ip: IpAddr,
}

/// The parts of an HTTP request policies look at.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The path without the query.
    pub path: &'a str,
    /// The authority (`Host`).
    pub host: &'a str,
    pub headers: &'a HeaderMap,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Answer 403 [`DENIED_BODY`].
    Deny,
}

// ---------------------------------------------------------------- matchers

/// Istio's string rule: exact, `abc*` prefix, `*abc` suffix, `*` presence (non-empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StrMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Present,
}

impl StrMatch {
    fn parse(v: &str) -> StrMatch {
        if v == "*" {
            StrMatch::Present
        } else if let Some(s) = v.strip_prefix('*') {
            StrMatch::Suffix(s.to_string())
        } else if let Some(p) = v.strip_suffix('*') {
            StrMatch::Prefix(p.to_string())
        } else {
            StrMatch::Exact(v.to_string())
        }
    }

    fn lowercase(v: &str) -> StrMatch {
        StrMatch::parse(&v.to_ascii_lowercase())
    }

    fn matches(&self, s: &str) -> bool {
        match self {
            StrMatch::Exact(e) => s == e,
            StrMatch::Prefix(p) => s.starts_with(p.as_str()),
            StrMatch::Suffix(x) => s.ends_with(x.as_str()),
            StrMatch::Present => !s.is_empty(),
        }
    }
}

/// An IP address block; a single address is a full-length block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub net: IpAddr,
    pub len: u8,
}

impl Cidr {
    /// Parses `10.1.2.3` or `10.1.0.0/16` with the webhook's messages.
    fn parse(v: &str) -> Result<Cidr, String> {
        match v.split_once('/') {
            None => v.parse::<IpAddr>().map(Cidr::host).map_err(|_| format!("bad IP address ({v})")),
            Some((ip, len)) => {
                let ip: IpAddr = ip.parse().map_err(|_| format!("bad CIDR range ({v}): invalid IP address {ip:?}"))?;
                let max = if ip.is_ipv4() { 32 } else { 128 };
                match len.parse::<u8>() {
                    Ok(l) if l <= max => Ok(Cidr { net: ip, len: l }),
                    _ => Err(format!("bad CIDR range ({v}): prefix length out of range")),
                }
            }
        }
    }

    fn host(ip: IpAddr) -> Cidr {
        Cidr { net: ip, len: if ip.is_ipv4() { 32 } else { 128 } }
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), self.len),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), self.len),
            _ => false,
        }
    }
}

/// Whether the first `bits` bits of `a` and `b` are equal.
fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let (whole, rest) = ((bits / 8) as usize, bits % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        a[whole] & mask == b[whole] & mask
    }
}

/// One attribute with the values that make it match.
#[derive(Clone, Debug)]
pub enum Matcher {
    /// The peer's mTLS principal.
    Principal(Vec<StrMatch>),
    /// The namespace in the peer's principal.
    Namespace(Vec<StrMatch>),
    /// `/ns/<ns>/sa/<sa>` suffixes of the peer's principal.
    ServiceAccount(Vec<String>),
    /// The connection's source address (`ipBlocks`, `remoteIpBlocks`, `source.ip`, `remote.ip`).
    SourceIp(Vec<Cidr>),
    /// Lower-cased patterns against the lower-cased authority, with or without its port.
    Host(Vec<StrMatch>),
    /// The workload port the request came in on.
    Port(Vec<u16>),
    Method(Vec<StrMatch>),
    Path(Vec<StrMatch>),
    /// A request header's values, comma-joined as Envoy sees several.
    Header(HeaderName, Vec<StrMatch>),
    /// An attribute meshsim never has (JWT principal and claims, destination IP, SNI);
    /// `http_only`: one only an HTTP request has (JWT principal and claims).
    Absent {
        http_only: bool,
    },
}

struct Ctx<'a> {
    peer: &'a Peer,
    req: &'a Request<'a>,
    port: u16,
}

/// The namespace of a principal `<trust domain>/ns/<ns>/sa/<sa>`.
fn namespace_of(principal: &str) -> Option<&str> {
    let (_, rest) = principal.split_once("/ns/")?;
    Some(rest.split_once('/').map_or(rest, |(ns, _)| ns))
}

impl Matcher {
    fn any(&self, cx: &Ctx<'_>) -> bool {
        let principal = cx.peer.principal.as_deref();
        match self {
            Matcher::Principal(v) => principal.is_some_and(|p| v.iter().any(|m| m.matches(p))),
            Matcher::Namespace(v) => principal.and_then(namespace_of).is_some_and(|ns| v.iter().any(|m| m.matches(ns))),
            Matcher::ServiceAccount(v) => principal.is_some_and(|p| v.iter().any(|s| p.ends_with(s.as_str()))),
            Matcher::SourceIp(v) => v.iter().any(|c| c.contains(cx.peer.ip)),
            Matcher::Host(v) => {
                let host = cx.req.host.to_ascii_lowercase();
                let bare = match host.rsplit_once(':') {
                    Some((h, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => Some(h),
                    _ => None,
                };
                v.iter().any(|m| m.matches(&host) || bare.is_some_and(|b| m.matches(b)))
            }
            Matcher::Port(v) => v.contains(&cx.port),
            Matcher::Method(v) => v.iter().any(|m| m.matches(cx.req.method)),
            Matcher::Path(v) => v.iter().any(|m| m.matches(cx.req.path)),
            Matcher::Header(name, v) => {
                let mut values = cx.req.headers.get_all(name).iter().filter_map(|h| h.to_str().ok()).peekable();
                if values.peek().is_none() {
                    return false;
                }
                let joined = values.collect::<Vec<_>>().join(",");
                v.iter().any(|m| m.matches(&joined))
            }
            Matcher::Absent { .. } => false,
        }
    }

    /// Whether the attribute exists only on HTTP requests, so a TCP connection cannot
    /// be matched against it (Istio's builder for TCP filter chains).
    fn http_only(&self) -> bool {
        match self {
            Matcher::Host(_) | Matcher::Method(_) | Matcher::Path(_) | Matcher::Header(..) => true,
            Matcher::Absent { http_only } => *http_only,
            Matcher::Principal(_)
            | Matcher::Namespace(_)
            | Matcher::ServiceAccount(_)
            | Matcher::SourceIp(_)
            | Matcher::Port(_) => false,
        }
    }
}

/// A matcher, or its negation (`not*`, `notValues`).
#[derive(Clone, Debug)]
pub struct Field {
    pub matcher: Matcher,
    pub negated: bool,
}

impl Field {
    fn holds(&self, cx: &Ctx<'_>) -> bool {
        self.matcher.any(cx) != self.negated
    }
}

/// Every field must hold: one source, one operation or one condition.
#[derive(Clone, Debug, Default)]
pub struct All(pub Vec<Field>);

impl All {
    fn holds(&self, cx: &Ctx<'_>) -> bool {
        self.0.iter().all(|f| f.holds(cx))
    }

    /// Holds on a TCP connection with its HTTP-only fields taken out.
    fn holds_without_http(&self, cx: &Ctx<'_>) -> bool {
        self.0.iter().filter(|f| !f.matcher.http_only()).all(|f| f.holds(cx))
    }

    fn uses_http(&self) -> bool {
        self.0.iter().any(|f| f.matcher.http_only())
    }
}

#[derive(Clone, Debug, Default)]
pub struct Rule {
    /// Any entry; empty = every source.
    pub from: Vec<All>,
    /// Any entry; empty = every operation.
    pub to: Vec<All>,
    pub when: All,
}

impl Rule {
    fn matches(&self, cx: &Ctx<'_>) -> bool {
        (self.from.is_empty() || self.from.iter().any(|s| s.holds(cx)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.holds(cx)))
            && self.when.holds(cx)
    }

    fn uses_http(&self) -> bool {
        self.from.iter().chain(&self.to).any(All::uses_http) || self.when.uses_http()
    }

    /// A DENY rule on a TCP connection: its HTTP-only fields are taken out, so they
    /// count as matching (a broader deny).
    fn matches_tcp_deny(&self, cx: &Ctx<'_>) -> bool {
        (self.from.is_empty() || self.from.iter().any(|s| s.holds_without_http(cx)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.holds_without_http(cx)))
            && self.when.holds_without_http(cx)
    }

    /// An ALLOW rule on a TCP connection: a rule with an HTTP-only field is dropped.
    fn matches_tcp_allow(&self, cx: &Ctx<'_>) -> bool {
        !self.uses_http() && self.matches(cx)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
}

/// One enforced policy, compiled.
#[derive(Clone, Debug)]
pub struct Policy {
    /// `<namespace>/<name>`.
    pub name: String,
    pub namespace: String,
    /// `None`: every workload of the namespace (of the mesh, in the root namespace).
    pub selector: Option<BTreeMap<String, String>>,
    pub action: Action,
    /// No rule: the policy never matches (an ALLOW policy without rules allows nothing).
    pub rules: Vec<Rule>,
}

impl Policy {
    /// Whether the policy applies to a workload in `namespace` with `labels`.
    pub fn selects(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        (self.namespace == namespace || self.namespace == ROOT_NAMESPACE)
            && self.selector.as_ref().is_none_or(|s| s.iter().all(|(k, v)| labels.get(k) == Some(v)))
    }

    fn matches(&self, cx: &Ctx<'_>) -> bool {
        self.rules.iter().any(|r| r.matches(cx))
    }
}

/// The policies that apply to one workload, split by action, and the port it serves.
#[derive(Clone, Debug)]
pub struct Workload {
    /// The workload port `ports` and `destination.port` compare with.
    pub port: u16,
    pub deny: Vec<Arc<Policy>>,
    pub allow: Vec<Arc<Policy>>,
}

impl Workload {
    /// The policies of `all` that select a workload; `None` when none does (every
    /// request is allowed).
    pub fn select(
        all: &[Arc<Policy>],
        namespace: &str,
        labels: &BTreeMap<String, String>,
        port: u16,
    ) -> Option<Workload> {
        let mine: Vec<&Arc<Policy>> = all.iter().filter(|p| p.selects(namespace, labels)).collect();
        if mine.is_empty() {
            return None;
        }
        let of = |a: Action| mine.iter().filter(|p| p.action == a).map(|p| Arc::clone(p)).collect();
        Some(Workload { port, deny: of(Action::Deny), allow: of(Action::Allow) })
    }

    /// DENY first, then ALLOW: steps 2–5 of the evaluation order in Istio's reference
    /// (<https://istio.io/latest/docs/reference/config/security/authorization-policy/>).
    pub fn decide(&self, peer: &Peer, req: &Request<'_>) -> Decision {
        let cx = Ctx { peer, req, port: self.port };
        if self.deny.iter().any(|p| p.matches(&cx)) {
            return Decision::Deny;
        }
        if self.allow.is_empty() || self.allow.iter().any(|p| p.matches(&cx)) {
            Decision::Allow
        } else {
            Decision::Deny
        }
    }

    /// The decision for a TCP connection ([Istio: TCP traffic](https://istio.io/latest/docs/tasks/security/authorization/authz-tcp/)): HTTP-only fields
    /// (hosts, methods, paths, request principals, request headers and claims) cannot be
    /// evaluated, so an ALLOW rule using one is dropped and a DENY rule treats them as
    /// matching. Deny ⇒ the connection is closed.
    pub fn decide_tcp(&self, peer: &Peer) -> Decision {
        let headers = HeaderMap::new();
        let req = Request { method: "", path: "", host: "", headers: &headers };
        let cx = Ctx { peer, req: &req, port: self.port };
        if self.deny.iter().any(|p| p.rules.iter().any(|r| r.matches_tcp_deny(&cx))) {
            return Decision::Deny;
        }
        if self.allow.is_empty() || self.allow.iter().any(|p| p.rules.iter().any(|r| r.matches_tcp_allow(&cx))) {
            Decision::Allow
        } else {
            Decision::Deny
        }
    }
}

// ---------------------------------------------------------------- validation + compilation

/// Attribute keys of `when` conditions, as Istio's `ValidateAttribute` knows them.
enum Key {
    Header(HeaderName),
    SourceIp,
    RemoteIp,
    SourceNamespace,
    SourcePrincipal,
    DestinationPort,
    /// Known to Istio, never present in meshsim; the text says why; whether only HTTP
    /// requests have it.
    Absent(&'static str, bool),
}

/// Whether `key` has the form `a[b]` (Istio's `validateMapKey`).
fn map_key(key: &str) -> Result<&str, String> {
    match key.find('[') {
        Some(open) if key.ends_with(']') && open > 0 && open < key.len() - 2 => Ok(&key[open + 1..key.len() - 1]),
        _ => Err(format!("bad key ({key}): should have format a[b]")),
    }
}

const NO_JWT: &str = "meshsim simulates no RequestAuthentication, so requests carry no JWT";

fn parse_key(key: &str) -> Result<Key, String> {
    Ok(match key {
        k if k.starts_with("request.headers") => {
            let name = map_key(k)?;
            Key::Header(
                HeaderName::try_from(name.to_ascii_lowercase())
                    .map_err(|_| format!("bad key ({k}): {name:?} is not a header name"))?,
            )
        }
        "source.ip" => Key::SourceIp,
        "remote.ip" => Key::RemoteIp,
        "source.namespace" => Key::SourceNamespace,
        "source.principal" => Key::SourcePrincipal,
        "destination.port" => Key::DestinationPort,
        "request.auth.principal" | "request.auth.audiences" | "request.auth.presenter" => Key::Absent(NO_JWT, true),
        k if k.starts_with("request.auth.claims") => {
            map_key(k)?;
            Key::Absent(NO_JWT, true)
        }
        "destination.ip" => Key::Absent("meshsim does not give a sidecar its destination IP", false),
        "connection.sni" => Key::Absent("meshsim does not pass the TLS server name to policies", false),
        k if k.starts_with("experimental.envoy.filters.") => {
            map_key(k)?;
            Key::Absent("meshsim runs no Envoy filter metadata", false)
        }
        "destination.namespace" => return Err(format!("attribute {key} is replaced by the metadata.namespace")),
        k if k.starts_with("destination.labels") => {
            return Err(format!("attribute {k} is replaced by the workload selector"));
        }
        "destination.name" | "destination.user" => {
            return Err(format!("deprecated attribute {key}: only supported in v1alpha1"));
        }
        _ => return Err(format!("unknown attribute: {key}")),
    })
}

fn parse_port(v: &str) -> Result<u16, String> {
    match v.parse::<u64>() {
        Ok(p) if p <= 65535 => Ok(p as u16),
        Ok(_) => Err(format!("bad port ({v}): <nil>")),
        Err(_) => Err(format!("bad port ({v}): strconv.ParseUint: parsing {v:?}: invalid syntax")),
    }
}

/// Istio's path templates (`{*}`, `{**}`).
fn is_path_template(v: &str) -> bool {
    v.contains("{*}") || v.contains("{**}")
}

/// Validates one policy the way Istio's webhook does, and compiles it. `None`: it never
/// decides for a sidecar (CUSTOM, AUDIT, dry-run, attached with `targetRef`), or it is
/// invalid (then the findings hold an error).
pub fn compile(file: &str, r: &Resource, spec: &AuthorizationPolicySpec) -> (Option<Policy>, Vec<Finding>) {
    let mut c = Checker { file, out: Vec::new() };
    let action = spec.action.as_ref().map(|a| a.value).unwrap_or_default();
    let kind = &r.kind;

    // Where it applies.
    let targeted = spec.target_ref.is_some() || !spec.target_refs.is_empty();
    let set = [spec.selector.is_some(), spec.target_ref.is_some(), !spec.target_refs.is_empty()];
    if set.iter().filter(|&&s| s).count() > 1 {
        c.error_at(Pos::of(file, kind), "spec", "only one of targetRefs or workloadSelector can be set".into());
    }
    if let Some(sel) = &spec.selector {
        for (k, v) in &sel.value.match_labels {
            if k.is_empty() {
                c.error(
                    sel,
                    "spec.selector.matchLabels",
                    format!("empty key is not supported in selector: \"{k}={v}\""),
                );
            }
            if k.contains('*') || v.contains('*') {
                c.error(
                    sel,
                    "spec.selector.matchLabels",
                    format!("wildcard is not supported in selector: \"{k}={v}\""),
                );
            }
        }
        if sel.value.match_labels.is_empty() {
            c.warning_code(sel, code::SCHEMA, "spec.selector", "workload selector specified without labels".into());
        }
    }
    let refs = spec.target_ref.iter().map(|t| ("spec.targetRef".to_string(), t));
    let refs = refs.chain(spec.target_refs.iter().enumerate().map(|(i, t)| (format!("spec.targetRefs[{i}]"), t)));
    for (at, t) in refs {
        if t.value.name.as_deref().unwrap_or("").is_empty() {
            c.error(t, &at, "targetRef name must be set".into());
        }
        if t.value.namespace.as_deref().is_some_and(|n| !n.is_empty()) {
            c.error(t, &at, "targetRef namespace must not be set; cross namespace referencing is not supported".into());
        }
        c.warning(
            t,
            &at,
            "a policy with targetRef applies to the targeted gateway or waypoint, never to sidecars: it has no effect in meshsim".into(),
        );
    }

    // The action.
    let action_pos = spec.action.as_ref().map_or_else(|| Pos::of(file, kind), |a| Pos::of(file, a));
    match action {
        AuthorizationAction::Custom => {
            if spec.rules.is_empty() {
                c.error_at(action_pos.clone(), "spec.rules", "CUSTOM action without `rules` is meaningless as it will never be triggered, add an empty rule `{}` if you want it be triggered for every request".into());
            } else if spec.provider.as_ref().and_then(|p| p.value.name.as_deref()).unwrap_or("").is_empty() {
                c.error_at(action_pos.clone(), "spec.provider.name", "`provider.name` must not be empty".into());
            }
            c.out.push(Finding::error(
                action_pos.clone(),
                code::NOT_SIMULATED,
                "spec.action",
                "CUSTOM (external authorization through a provider) is out of meshsim's scope: it cannot be simulated; use ALLOW or DENY",
            ));
        }
        AuthorizationAction::Deny if spec.rules.is_empty() => {
            c.error_at(action_pos.clone(), "spec.rules", "DENY action without `rules` is meaningless as it will never be triggered, add an empty rule `{}` if you want it be triggered for every request".into());
        }
        AuthorizationAction::Audit => c.out.push(Finding::warning(
            action_pos.clone(),
            code::NOT_SIMULATED,
            "spec.action",
            "AUDIT policies only mark requests for an audit log, which meshsim does not keep: the policy has no effect",
        )),
        _ => {}
    }
    if let Some(p) = &spec.provider
        && action != AuthorizationAction::Custom
    {
        c.error(
            p,
            "spec.provider",
            format!("`provider` must not be with non CUSTOM action, found {}", action.as_str()),
        );
    }
    let dry_run = r.metadata.annotations.get(DRY_RUN_ANNOTATION).is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if dry_run {
        let pos = r.metadata.name.as_ref().map_or_else(|| Pos::of(file, kind), |n| Pos::of(file, n));
        c.out.push(Finding::warning(
            pos,
            code::NOT_SIMULATED,
            format!("metadata.annotations[{DRY_RUN_ANNOTATION}]"),
            "a dry-run policy is only shadow-evaluated, and meshsim records no shadow result: the policy has no effect",
        ));
    }

    // The rules.
    let mut rules = Vec::new();
    for (i, rule) in spec.rules.iter().enumerate() {
        rules.push(c.rule(i, rule, action));
    }

    let errors = c.out.iter().any(|f| f.level == crate::config::Level::Error);
    let enforced = matches!(action, AuthorizationAction::Allow | AuthorizationAction::Deny) && !dry_run && !targeted;
    let policy = (!errors && enforced).then(|| Policy {
        name: format!("{}/{}", r.namespace(), r.name()),
        namespace: r.namespace().to_string(),
        selector: spec.selector.as_ref().map(|s| s.value.match_labels.clone()),
        action: if action == AuthorizationAction::Deny { Action::Deny } else { Action::Allow },
        rules,
    });
    (policy, c.out)
}

struct Checker<'a> {
    file: &'a str,
    out: Vec<Finding>,
}

impl Checker<'_> {
    fn error<T>(&mut self, at: &Spanned<T>, field: &str, msg: String) {
        self.out.push(Finding::error(Pos::of(self.file, at), code::SCHEMA, field, msg));
    }
    fn error_at(&mut self, pos: Pos, field: &str, msg: String) {
        self.out.push(Finding::error(pos, code::SCHEMA, field, msg));
    }
    /// A meshsim difference ([`code::NOT_SIMULATED`]).
    fn warning<T>(&mut self, at: &Spanned<T>, field: &str, msg: String) {
        self.warning_code(at, code::NOT_SIMULATED, field, msg);
    }
    fn warning_code<T>(&mut self, at: &Spanned<T>, code: &'static str, field: &str, msg: String) {
        self.out.push(Finding::warning(Pos::of(self.file, at), code, field, msg));
    }

    /// `CheckEmptyValues`: the first empty value of a list is an error.
    fn no_empty(&mut self, values: &[Spanned<String>], at: &str, name: &str) -> bool {
        match values.iter().position(|v| v.value.is_empty()) {
            Some(j) => {
                self.error(&values[j], &format!("{at}[{j}]"), format!("empty value not allowed, found in {name}"));
                false
            }
            None => true,
        }
    }

    fn strings(&mut self, values: &[Spanned<String>], at: &str, name: &str, lower: bool) -> Vec<StrMatch> {
        self.no_empty(values, at, name);
        values.iter().map(|v| if lower { StrMatch::lowercase(&v.value) } else { StrMatch::parse(&v.value) }).collect()
    }

    fn cidrs(&mut self, values: &[Spanned<String>], at: &str, name: &str) -> Vec<Cidr> {
        self.no_empty(values, at, name);
        let mut out = Vec::new();
        for (j, v) in values.iter().enumerate() {
            match Cidr::parse(&v.value) {
                Ok(c) => out.push(c),
                // An empty value is reported once, as empty.
                Err(_) if v.value.is_empty() => {}
                Err(e) => self.error(v, &format!("{at}[{j}]"), e),
            }
        }
        out
    }

    fn ports(&mut self, values: &[Spanned<String>], at: &str, name: &str) -> Vec<u16> {
        self.no_empty(values, at, name);
        let mut out = Vec::new();
        for (j, v) in values.iter().enumerate() {
            match parse_port(&v.value) {
                Ok(p) => out.push(p),
                // An empty value is reported once, as empty.
                Err(_) if v.value.is_empty() => {}
                Err(e) => self.error(v, &format!("{at}[{j}]"), e),
            }
        }
        out
    }

    fn rule(
        &mut self,
        i: usize,
        rule: &Spanned<crate::config::istio::AuthorizationRule>,
        action: AuthorizationAction,
    ) -> Rule {
        let at = format!("spec.rules[{i}]");
        let r = &rule.value;
        let mut out = Rule::default();
        // For the webhook's TCP warning on DENY rules.
        let (mut from_exists, mut to_exists, mut tcp_from, mut tcp_to) = (false, false, false, false);
        if let Some(from) = &r.from {
            if from.is_empty() {
                self.error(rule, &format!("{at}.from"), format!("`from` must not be empty, found at rule {i}"));
            }
            for (j, f) in from.iter().enumerate() {
                let fat = format!("{at}.from[{j}].source");
                let Some(src) = &f.value.source else {
                    self.error(f, &fat, format!("`from.source` must not be nil, found at rule {i}"));
                    continue;
                };
                from_exists = true;
                let (fields, tcp) = self.source(i, &fat, src);
                tcp_from |= tcp;
                out.from.push(fields);
            }
        }
        if let Some(to) = &r.to {
            if to.is_empty() {
                self.error(rule, &format!("{at}.to"), format!("`to` must not be empty, found at rule {i}"));
            }
            for (j, t) in to.iter().enumerate() {
                let tat = format!("{at}.to[{j}].operation");
                let Some(op) = &t.value.operation else {
                    self.error(t, &tat, format!("`to.operation` must not be nil, found at rule {i}"));
                    continue;
                };
                to_exists = true;
                let o = &op.value;
                tcp_to |= !o.ports.is_empty() || !o.not_ports.is_empty();
                out.to.push(self.operation(i, &tat, op));
            }
        }
        for (j, w) in r.when.iter().enumerate() {
            if let Some(f) = self.condition(&format!("{at}.when[{j}]"), w) {
                out.when.0.extend(f);
            }
        }
        if action == AuthorizationAction::Deny && ((from_exists && !to_exists && !tcp_from) || (to_exists && !tcp_to)) {
            self.warning_code(rule, code::SCHEMA, &at, "configured AuthorizationPolicy will deny all traffic to TCP ports under its scope due to the use of only HTTP attributes in a DENY rule; it is recommended to explicitly specify the port".into());
        }
        out
    }

    /// One `from[].source`; also whether it holds TCP attributes (for the DENY warning).
    fn source(&mut self, i: usize, at: &str, src: &Spanned<Source>) -> (All, bool) {
        let s = &src.value;
        let lists = [
            &s.principals,
            &s.not_principals,
            &s.request_principals,
            &s.not_request_principals,
            &s.namespaces,
            &s.not_namespaces,
            &s.service_accounts,
            &s.not_service_accounts,
            &s.ip_blocks,
            &s.not_ip_blocks,
            &s.remote_ip_blocks,
            &s.not_remote_ip_blocks,
        ];
        if lists.iter().all(|l| l.is_empty()) {
            self.error(src, at, format!("`from.source` must not be empty, found at rule {i}"));
        }
        let identity = [&s.principals, &s.not_principals, &s.namespaces, &s.not_namespaces];
        if identity.iter().any(|l| !l.is_empty())
            && !(s.service_accounts.is_empty() && s.not_service_accounts.is_empty())
        {
            self.error(src, at, format!("cannot set serviceAccounts with namespaces or principals, found at rule {i}"));
        }
        let tcp = lists.iter().enumerate().any(|(k, l)| !matches!(k, 2 | 3) && !l.is_empty());
        let mut all = Vec::new();
        let mut push = |m: Matcher, negated: bool, present: bool| {
            if present {
                all.push(Field { matcher: m, negated });
            }
        };
        for (values, name, key, negated) in [
            (&s.principals, "Principals", "principals", false),
            (&s.not_principals, "NotPrincipals", "notPrincipals", true),
        ] {
            let m = self.strings(values, &format!("{at}.{key}"), name, false);
            push(Matcher::Principal(m), negated, !values.is_empty());
        }
        for (values, name, key, negated) in [
            (&s.request_principals, "RequestPrincipals", "requestPrincipals", false),
            (&s.not_request_principals, "NotRequestPrincipals", "notRequestPrincipals", true),
        ] {
            if !values.is_empty() {
                let f = format!("{at}.{key}");
                self.no_empty(values, &f, name);
                let effect = if negated { "it always matches" } else { "it never matches" };
                self.warning(&values[0], &f, format!("{NO_JWT}: {effect}"));
            }
            push(Matcher::Absent { http_only: true }, negated, !values.is_empty());
        }
        for (values, name, key, negated) in [
            (&s.namespaces, "Namespaces", "namespaces", false),
            (&s.not_namespaces, "NotNamespaces", "notNamespaces", true),
        ] {
            let m = self.strings(values, &format!("{at}.{key}"), name, false);
            push(Matcher::Namespace(m), negated, !values.is_empty());
        }
        for (values, name, key, negated) in [
            (&s.service_accounts, "ServiceAccounts", "serviceAccounts", false),
            (&s.not_service_accounts, "NotServiceAccounts", "notServiceAccounts", true),
        ] {
            let mut suffixes = Vec::new();
            for (j, v) in values.iter().enumerate() {
                match v.value.split_once('/') {
                    Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() && !sa.contains('/') => {
                        suffixes.push(format!("/ns/{ns}/sa/{sa}"));
                    }
                    _ => self.error(
                        v,
                        &format!("{at}.{key}[{j}]"),
                        format!("service account must be <namespace>/<name>, found {:?} in {name}", v.value),
                    ),
                }
            }
            push(Matcher::ServiceAccount(suffixes), negated, !values.is_empty());
        }
        for (values, name, key, negated, remote) in [
            (&s.ip_blocks, "IpBlocks", "ipBlocks", false, false),
            (&s.not_ip_blocks, "NotIpBlocks", "notIpBlocks", true, false),
            (&s.remote_ip_blocks, "RemoteIpBlocks", "remoteIpBlocks", false, true),
            (&s.not_remote_ip_blocks, "NotRemoteIpBlocks", "notRemoteIpBlocks", true, true),
        ] {
            let f = format!("{at}.{key}");
            if remote && !values.is_empty() {
                self.warning(
                    &values[0],
                    &f,
                    "matched against the connection's source address: meshsim reads no X-Forwarded-For".into(),
                );
            }
            let m = self.cidrs(values, &f, name);
            push(Matcher::SourceIp(m), negated, !values.is_empty());
        }
        (All(all), tcp)
    }

    fn operation(&mut self, i: usize, at: &str, op: &Spanned<Operation>) -> All {
        let o = &op.value;
        let lists =
            [&o.hosts, &o.not_hosts, &o.ports, &o.not_ports, &o.methods, &o.not_methods, &o.paths, &o.not_paths];
        if lists.iter().all(|l| l.is_empty()) {
            self.error(op, at, format!("`to.operation` must not be empty, found at rule {i}"));
        }
        let mut all = Vec::new();
        for (values, name, key, negated) in
            [(&o.hosts, "Hosts", "hosts", false), (&o.not_hosts, "NotHosts", "notHosts", true)]
        {
            let m = self.strings(values, &format!("{at}.{key}"), name, true);
            if !values.is_empty() {
                all.push(Field { matcher: Matcher::Host(m), negated });
            }
        }
        for (values, name, key, negated) in
            [(&o.ports, "Ports", "ports", false), (&o.not_ports, "NotPorts", "notPorts", true)]
        {
            let m = self.ports(values, &format!("{at}.{key}"), name);
            if !values.is_empty() {
                all.push(Field { matcher: Matcher::Port(m), negated });
            }
        }
        for (values, name, key, negated) in
            [(&o.methods, "Methods", "methods", false), (&o.not_methods, "NotMethods", "notMethods", true)]
        {
            let m = self.strings(values, &format!("{at}.{key}"), name, false);
            if !values.is_empty() {
                all.push(Field { matcher: Matcher::Method(m), negated });
            }
        }
        for (values, name, key, negated) in
            [(&o.paths, "Paths", "paths", false), (&o.not_paths, "NotPaths", "notPaths", true)]
        {
            let f = format!("{at}.{key}");
            let m = self.strings(values, &f, name, false);
            if let Some((j, v)) = values.iter().enumerate().find(|(_, v)| is_path_template(&v.value)) {
                self.warning(
                    v,
                    &format!("{f}[{j}]"),
                    "path templates ({*}, {**}) are not simulated: meshsim matches the text as written".into(),
                );
            }
            if !values.is_empty() {
                all.push(Field { matcher: Matcher::Path(m), negated });
            }
        }
        All(all)
    }

    /// One `when` entry: a field for `values`, one for `notValues`; `None` when invalid.
    fn condition(&mut self, at: &str, w: &Spanned<Condition>) -> Option<Vec<Field>> {
        let k = &w.value.key;
        if k.value.is_empty() {
            self.error(k, &format!("{at}.key"), "`key` must not be empty".into());
            return None;
        }
        if w.value.values.is_empty() && w.value.not_values.is_empty() {
            self.error(w, at, format!("at least one of `values` or `notValues` must be set for key {}", k.value));
            return None;
        }
        let key = match parse_key(&k.value) {
            Ok(key) => key,
            Err(e) => {
                self.error(k, &format!("{at}.key"), format!("invalid `value` for `key` {}: {e}", k.value));
                return None;
            }
        };
        if let Key::Absent(why, _) = &key {
            self.warning(k, &format!("{at}.key"), format!("{why}: `values` never match, `notValues` always match"));
        }
        if matches!(key, Key::RemoteIp) {
            self.warning(
                k,
                &format!("{at}.key"),
                "matched against the connection's source address: meshsim reads no X-Forwarded-For".into(),
            );
        }
        let mut out = Vec::new();
        for (values, kind, field, negated) in
            [(&w.value.values, "value", "values", false), (&w.value.not_values, "notValue", "notValues", true)]
        {
            if values.is_empty() {
                continue;
            }
            let f = format!("{at}.{field}");
            if let Some(j) = values.iter().position(|v| v.value.is_empty()) {
                self.error(
                    &values[j],
                    &format!("{f}[{j}]"),
                    format!("invalid `{kind}` for `key` {}: empty value not allowed, found in {}", k.value, k.value),
                );
                return None;
            }
            let errs_before = self.out.len();
            let matcher = match &key {
                Key::Header(name) => {
                    Matcher::Header(name.clone(), values.iter().map(|v| StrMatch::parse(&v.value)).collect())
                }
                Key::SourceIp | Key::RemoteIp => {
                    let mut cidrs = Vec::new();
                    for (j, v) in values.iter().enumerate() {
                        match Cidr::parse(&v.value) {
                            Ok(c) => cidrs.push(c),
                            Err(e) => self.error(
                                v,
                                &format!("{f}[{j}]"),
                                format!("invalid `{kind}` for `key` {}: {e}", k.value),
                            ),
                        }
                    }
                    Matcher::SourceIp(cidrs)
                }
                Key::SourceNamespace => Matcher::Namespace(values.iter().map(|v| StrMatch::parse(&v.value)).collect()),
                Key::SourcePrincipal => Matcher::Principal(values.iter().map(|v| StrMatch::parse(&v.value)).collect()),
                Key::DestinationPort => {
                    let mut ports = Vec::new();
                    for (j, v) in values.iter().enumerate() {
                        match parse_port(&v.value) {
                            Ok(p) => ports.push(p),
                            Err(e) => self.error(
                                v,
                                &format!("{f}[{j}]"),
                                format!("invalid `{kind}` for `key` {}: {e}", k.value),
                            ),
                        }
                    }
                    Matcher::Port(ports)
                }
                Key::Absent(_, http_only) => Matcher::Absent { http_only: *http_only },
            };
            if self.out[errs_before..].iter().any(|f| f.level == crate::config::Level::Error) {
                return None;
            }
            out.push(Field { matcher, negated });
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use proptest::prelude::*;

    use super::*;
    use crate::config::{Level, parse_resources};

    /// Compiles one policy written as YAML under `spec:` (indented by 2), in namespace `ns`.
    fn compiled(ns: &str, spec: &str) -> (Option<Policy>, Vec<Finding>) {
        let text = format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: {ns}}}\nspec:\n{spec}"
        );
        let res = parse_resources("p.yaml", &text).unwrap_or_else(|e| panic!("{e}"));
        let crate::config::istio::Spec::AuthorizationPolicy(spec) = &res[0].spec else { panic!("not a policy") };
        compile("p.yaml", &res[0], spec)
    }

    fn policy(spec: &str) -> Arc<Policy> {
        let (p, findings) = compiled("default", spec);
        let errors: Vec<_> = findings.iter().filter(|f| f.level == Level::Error).collect();
        assert!(errors.is_empty(), "{errors:?}");
        Arc::new(p.expect("an enforced policy"))
    }

    fn errors(spec: &str) -> Vec<String> {
        let (p, findings) = compiled("default", spec);
        let errors: Vec<String> = findings
            .iter()
            .filter(|f| f.level == Level::Error)
            .map(|f| format!("{}: {}", f.field, f.message))
            .collect();
        assert!(p.is_none() || errors.is_empty(), "an invalid policy is not compiled");
        errors
    }

    fn warnings(spec: &str) -> Vec<String> {
        let (_, findings) = compiled("default", spec);
        findings.iter().filter(|f| f.level == Level::Warning).map(|f| format!("{}: {}", f.field, f.message)).collect()
    }

    /// The workload `app: web` in `default`, serving port 8080, under `policies`.
    fn workload(policies: &[Arc<Policy>]) -> Workload {
        let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
        Workload::select(policies, "default", &labels, 8080).expect("some policy selects it")
    }

    struct Req {
        method: &'static str,
        path: String,
        host: &'static str,
        headers: HeaderMap,
        principal: Option<&'static str>,
        ip: [u8; 4],
    }

    fn get(path: &str) -> Req {
        Req {
            method: "GET",
            path: path.to_string(),
            host: "web",
            headers: HeaderMap::new(),
            principal: None,
            ip: [192, 168, 0, 1],
        }
    }

    impl Req {
        fn from(mut self, principal: &'static str) -> Req {
            self.principal = Some(principal);
            self
        }
        fn header(mut self, k: &'static str, v: &'static str) -> Req {
            self.headers.append(k, v.parse().expect("header value"));
            self
        }
        fn decide(&self, w: &Workload) -> Decision {
            let peer = Peer { principal: self.principal.map(str::to_string), ip: IpAddr::V4(Ipv4Addr::from(self.ip)) };
            let req = Request { method: self.method, path: &self.path, host: self.host, headers: &self.headers };
            w.decide(&peer, &req)
        }
    }

    use Decision::{Allow, Deny};

    /// Decisions of `reqs` under one ALLOW policy with `rule` (one rules[] entry, YAML).
    fn allow_rule(rule: &str) -> Workload {
        workload(&[policy(&format!("  rules:\n  - {rule}\n"))])
    }

    fn tcp(w: &Workload, principal: Option<&str>) -> Decision {
        w.decide_tcp(&Peer { principal: principal.map(str::to_string), ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)) })
    }

    #[test]
    fn tcp_allow_rule_with_an_http_only_field_is_dropped() {
        let client = Some("cluster.local/ns/default/sa/client");
        let w = allow_rule(
            "{from: [{source: {principals: [\"cluster.local/ns/default/sa/client\"]}}], to: [{operation: {methods: [GET]}}]}",
        );
        assert_eq!(get("/").from("cluster.local/ns/default/sa/client").decide(&w), Allow, "HTTP evaluates it");
        assert_eq!(tcp(&w, client), Deny, "TCP drops the rule: nothing allows");
        let w = allow_rule("{from: [{source: {principals: [\"cluster.local/ns/default/sa/client\"]}}]}");
        assert_eq!(
            (tcp(&w, client), tcp(&w, Some("cluster.local/ns/default/sa/x")), tcp(&w, None)),
            (Allow, Deny, Deny)
        );
        let w = allow_rule("{when: [{key: \"request.headers[x-user]\", values: [a]}]}");
        assert_eq!(tcp(&w, client), Deny, "a request.* condition is HTTP-only too");
        let w = allow_rule("{to: [{operation: {ports: [\"8080\"]}}]}");
        assert_eq!(tcp(&w, None), Allow, "ports are not HTTP-only");
    }

    #[test]
    fn tcp_deny_rule_treats_http_only_fields_as_matching() {
        let deny = policy("  action: DENY\n  rules:\n  - to: [{operation: {paths: [/admin]}}]\n");
        let w = workload(&[deny]);
        assert_eq!(get("/data").decide(&w), Allow, "HTTP: only /admin is denied");
        assert_eq!(tcp(&w, None), Deny, "TCP: the path cannot be checked, so the rule matches");
        let deny = policy(
            "  action: DENY\n  rules:\n  - from: [{source: {principals: [\"cluster.local/ns/default/sa/bad\"]}}]\n    to: [{operation: {methods: [POST]}}]\n",
        );
        let w = workload(&[deny]);
        assert_eq!(tcp(&w, Some("cluster.local/ns/default/sa/bad")), Deny);
        assert_eq!(tcp(&w, Some("cluster.local/ns/default/sa/good")), Allow, "the non-HTTP fields still apply");
        let nothing = policy("  {}\n");
        assert_eq!(tcp(&workload(&[nothing]), None), Deny, "allow-nothing closes TCP connections");
    }

    #[test]
    fn string_rules_exact_prefix_suffix_presence() {
        assert!(StrMatch::parse("abc").matches("abc") && !StrMatch::parse("abc").matches("abcd"));
        assert!(StrMatch::parse("abc*").matches("abc") && StrMatch::parse("abc*").matches("abcd"));
        assert!(!StrMatch::parse("abc*").matches("xabc"));
        assert!(StrMatch::parse("*abc").matches("xabc") && !StrMatch::parse("*abc").matches("abcd"));
        assert!(StrMatch::parse("*").matches("x") && !StrMatch::parse("*").matches(""));
    }

    #[test]
    fn cidr_blocks_and_single_addresses() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.255.3".parse().unwrap()) && !c.contains("10.2.0.1".parse().unwrap()));
        let one = Cidr::parse("10.1.2.3").unwrap();
        assert!(one.contains("10.1.2.3".parse().unwrap()) && !one.contains("10.1.2.4".parse().unwrap()));
        assert!(Cidr::parse("10.1.2.3/20").unwrap().contains("10.1.15.1".parse().unwrap()), "host bits ignored");
        assert!(!Cidr::parse("::/0").unwrap().contains("10.0.0.1".parse().unwrap()), "families differ");
        assert_eq!(Cidr::parse("10.0.0.0/33").unwrap_err(), "bad CIDR range (10.0.0.0/33): prefix length out of range");
        assert_eq!(Cidr::parse("10.0.0").unwrap_err(), "bad IP address (10.0.0)");
    }

    #[test]
    fn no_policy_selects_the_workload_so_everything_is_allowed() {
        let other = policy("  selector: {matchLabels: {app: db}}\n");
        let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
        assert!(Workload::select(&[other], "default", &labels, 80).is_none());
    }

    #[test]
    fn allow_nothing_denies_every_request() {
        let w = workload(&[policy("  {}\n")]);
        assert_eq!(get("/").decide(&w), Deny);
        assert_eq!(get("/").from("cluster.local/ns/default/sa/x").decide(&w), Deny);
    }

    #[test]
    fn allow_all_with_an_empty_rule() {
        let w = workload(&[policy("  rules: [{}]\n")]);
        assert_eq!(get("/anything").decide(&w), Allow);
    }

    #[test]
    fn allow_paths_prefix() {
        let w = allow_rule("to: [{operation: {paths: [\"/info*\"]}}]");
        assert_eq!(get("/info/x").decide(&w), Allow);
        assert_eq!(get("/info").decide(&w), Allow);
        assert_eq!(get("/data").decide(&w), Deny);
    }

    #[test]
    fn paths_suffix_and_not_paths() {
        let w = allow_rule("to: [{operation: {paths: [\"*.png\"], notPaths: [\"/private*\"]}}]");
        assert_eq!(get("/img/a.png").decide(&w), Allow);
        assert_eq!(get("/private/a.png").decide(&w), Deny);
        assert_eq!(get("/img/a.jpg").decide(&w), Deny);
    }

    #[test]
    fn deny_is_evaluated_before_allow() {
        let deny = policy("  action: DENY\n  rules:\n  - to: [{operation: {paths: [\"/admin*\"]}}]\n");
        let allow = policy("  rules: [{}]\n");
        let w = workload(&[allow, deny]);
        assert_eq!(get("/admin/x").decide(&w), Deny);
        assert_eq!(get("/x").decide(&w), Allow);
    }

    #[test]
    fn deny_alone_allows_what_it_does_not_match() {
        let w = workload(&[policy("  action: DENY\n  rules:\n  - to: [{operation: {methods: [DELETE]}}]\n")]);
        assert_eq!(get("/").decide(&w), Allow);
        assert_eq!(Req { method: "DELETE", ..get("/") }.decide(&w), Deny);
    }

    #[test]
    fn any_allow_policy_matching_allows() {
        let a = policy("  rules:\n  - to: [{operation: {paths: [/a]}}]\n");
        let b = policy("  rules:\n  - to: [{operation: {paths: [/b]}}]\n");
        let w = workload(&[a, b]);
        assert_eq!((get("/a").decide(&w), get("/b").decide(&w), get("/c").decide(&w)), (Allow, Allow, Deny));
    }

    #[test]
    fn principals_need_an_mtls_peer() {
        let w = allow_rule("from: [{source: {principals: [cluster.local/ns/a/sa/x]}}]");
        assert_eq!(get("/").from("cluster.local/ns/a/sa/x").decide(&w), Allow);
        assert_eq!(get("/").from("cluster.local/ns/a/sa/y").decide(&w), Deny);
        assert_eq!(get("/").decide(&w), Deny, "plaintext");
        let any = allow_rule("from: [{source: {principals: [\"*\"]}}]");
        assert_eq!(get("/").from("cluster.local/ns/a/sa/y").decide(&any), Allow);
        assert_eq!(get("/").decide(&any), Deny, "`*` requires mTLS");
    }

    #[test]
    fn not_principals_match_a_plaintext_peer() {
        let w = allow_rule("from: [{source: {notPrincipals: [cluster.local/ns/a/sa/x]}}]");
        assert_eq!(get("/").from("cluster.local/ns/a/sa/x").decide(&w), Deny);
        assert_eq!(get("/").from("cluster.local/ns/b/sa/x").decide(&w), Allow);
        assert_eq!(get("/").decide(&w), Allow);
    }

    #[test]
    fn namespaces_and_not_namespaces_come_from_the_principal() {
        let w = allow_rule("from: [{source: {namespaces: [\"prod*\"], notNamespaces: [prod-old]}}]");
        assert_eq!(get("/").from("cluster.local/ns/prod/sa/x").decide(&w), Allow);
        assert_eq!(get("/").from("cluster.local/ns/prod-eu/sa/x").decide(&w), Allow);
        assert_eq!(get("/").from("cluster.local/ns/prod-old/sa/x").decide(&w), Deny);
        assert_eq!(get("/").from("cluster.local/ns/dev/sa/prod").decide(&w), Deny);
        assert_eq!(get("/").decide(&w), Deny, "plaintext has no namespace");
    }

    #[test]
    fn service_accounts_name_namespace_and_account() {
        let w = allow_rule("from: [{source: {serviceAccounts: [a/x]}}]");
        assert_eq!(get("/").from("cluster.local/ns/a/sa/x").decide(&w), Allow);
        assert_eq!(get("/").from("cluster.local/ns/b/sa/x").decide(&w), Deny);
        assert_eq!(get("/").decide(&w), Deny);
    }

    #[test]
    fn ip_blocks_and_not_ip_blocks() {
        let w = allow_rule("from: [{source: {ipBlocks: [192.168.0.0/24], notIpBlocks: [192.168.0.2]}}]");
        assert_eq!(get("/").decide(&w), Allow);
        assert_eq!(Req { ip: [192, 168, 0, 2], ..get("/") }.decide(&w), Deny);
        assert_eq!(Req { ip: [192, 168, 1, 1], ..get("/") }.decide(&w), Deny);
    }

    #[test]
    fn hosts_ignore_case_and_port() {
        let w = allow_rule("to: [{operation: {hosts: [Web.Example.com, \"*.internal\"]}}]");
        assert_eq!(Req { host: "web.example.COM", ..get("/") }.decide(&w), Allow);
        assert_eq!(Req { host: "web.example.com:8080", ..get("/") }.decide(&w), Allow);
        assert_eq!(Req { host: "db.internal", ..get("/") }.decide(&w), Allow);
        assert_eq!(Req { host: "web", ..get("/") }.decide(&w), Deny);
    }

    #[test]
    fn ports_are_the_workload_port() {
        let w = allow_rule("to: [{operation: {ports: [\"8080\"]}}]");
        assert_eq!(get("/").decide(&w), Allow);
        let w = allow_rule("to: [{operation: {notPorts: [\"8080\"]}}]");
        assert_eq!(get("/").decide(&w), Deny);
    }

    #[test]
    fn methods_and_not_methods() {
        let w = allow_rule("to: [{operation: {methods: [GET, HEAD]}}]");
        assert_eq!((get("/").decide(&w), Req { method: "POST", ..get("/") }.decide(&w)), (Allow, Deny));
        let w = allow_rule("to: [{operation: {notMethods: [POST]}}]");
        assert_eq!((get("/").decide(&w), Req { method: "POST", ..get("/") }.decide(&w)), (Allow, Deny));
    }

    #[test]
    fn fields_of_one_operation_and_entries_or() {
        let w = allow_rule("to: [{operation: {methods: [POST], paths: [/a]}}, {operation: {paths: [/b]}}]");
        assert_eq!(Req { method: "POST", ..get("/a") }.decide(&w), Allow);
        assert_eq!(get("/a").decide(&w), Deny, "fields AND");
        assert_eq!(get("/b").decide(&w), Allow, "entries OR");
    }

    #[test]
    fn from_to_and_when_all_must_match() {
        let w = allow_rule(
            "{from: [{source: {ipBlocks: [192.168.0.1]}}], to: [{operation: {paths: [/a]}}], when: [{key: \"request.headers[x-user]\", values: [alice]}]}",
        );
        assert_eq!(get("/a").header("x-user", "alice").decide(&w), Allow);
        assert_eq!(get("/a").decide(&w), Deny);
        assert_eq!(get("/b").header("x-user", "alice").decide(&w), Deny);
        assert_eq!(Req { ip: [10, 0, 0, 1], ..get("/a").header("x-user", "alice") }.decide(&w), Deny);
    }

    #[test]
    fn when_header_values_and_not_values() {
        let w = allow_rule("when: [{key: \"request.headers[X-Version]\", values: [\"v*\"], notValues: [v0]}]");
        assert_eq!(get("/").header("x-version", "v2").decide(&w), Allow);
        assert_eq!(get("/").header("x-version", "v0").decide(&w), Deny);
        assert_eq!(get("/").decide(&w), Deny, "an absent header matches no value");
        let w = allow_rule("when: [{key: \"request.headers[x-debug]\", notValues: [\"*\"]}]");
        assert_eq!(get("/").decide(&w), Allow, "absent: no value matches");
        assert_eq!(get("/").header("x-debug", "1").decide(&w), Deny);
    }

    #[test]
    fn when_source_and_destination_attributes() {
        let w = allow_rule("when: [{key: source.ip, values: [192.168.0.0/30]}]");
        assert_eq!((get("/").decide(&w), Req { ip: [192, 168, 0, 9], ..get("/") }.decide(&w)), (Allow, Deny));
        let w = allow_rule("when: [{key: source.namespace, values: [a]}]");
        assert_eq!(get("/").from("cluster.local/ns/a/sa/x").decide(&w), Allow);
        assert_eq!(get("/").decide(&w), Deny);
        let w = allow_rule("when: [{key: source.principal, values: [\"*/sa/x\"]}]");
        assert_eq!(get("/").from("cluster.local/ns/a/sa/x").decide(&w), Allow);
        assert_eq!(get("/").from("cluster.local/ns/a/sa/y").decide(&w), Deny);
        let w = allow_rule("when: [{key: destination.port, values: [\"8080\"]}]");
        assert_eq!(get("/").decide(&w), Allow);
        let w = allow_rule("when: [{key: destination.port, values: [\"9090\"]}]");
        assert_eq!(get("/").decide(&w), Deny);
    }

    #[test]
    fn without_jwt_request_principals_never_match() {
        let w = allow_rule("from: [{source: {requestPrincipals: [\"*\"]}}]");
        assert_eq!(get("/").from("cluster.local/ns/a/sa/x").decide(&w), Deny);
        let w = allow_rule("from: [{source: {notRequestPrincipals: [\"*\"]}}]");
        assert_eq!(get("/").decide(&w), Allow);
        let w = allow_rule("when: [{key: \"request.auth.claims[iss]\", values: [x]}]");
        assert_eq!(get("/").decide(&w), Deny);
    }

    #[test]
    fn selection_by_namespace_root_namespace_and_labels() {
        let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
        let (mesh, _) = compiled(ROOT_NAMESPACE, "  {}\n");
        let mesh = mesh.unwrap();
        assert!(mesh.selects("default", &labels) && mesh.selects("prod", &labels), "root namespace: mesh-wide");
        let (other, _) = compiled("prod", "  {}\n");
        let other = other.unwrap();
        assert!(!other.selects("default", &labels) && other.selects("prod", &labels));
        let (sel, _) = compiled("default", "  selector: {matchLabels: {app: web, version: v1}}\n");
        let sel = sel.unwrap();
        let mut v1 = labels.clone();
        assert!(!sel.selects("default", &labels), "every selector label must be present");
        v1.insert("version".into(), "v1".into());
        assert!(sel.selects("default", &v1));
    }

    #[test]
    fn validation_rejects_deny_and_custom_without_rules() {
        assert_eq!(
            errors("  action: DENY\n"),
            [
                "spec.rules: DENY action without `rules` is meaningless as it will never be triggered, add an empty rule `{}` if you want it be triggered for every request"
            ]
        );
        let custom = errors("  action: CUSTOM\n");
        assert!(custom[0].starts_with("spec.rules: CUSTOM action without `rules` is meaningless"), "{custom:?}");
        assert!(custom[1].contains("CUSTOM (external authorization through a provider) is out of meshsim's scope"));
    }

    #[test]
    fn validation_rejects_custom_even_with_rules_and_a_provider() {
        let e = errors("  action: CUSTOM\n  provider: {name: ext}\n  rules: [{}]\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("spec.action: CUSTOM"), "{e:?}");
    }

    #[test]
    fn validation_rules_of_the_webhook() {
        let cases: &[(&str, &str)] = &[
            (
                "  selector: {matchLabels: {app: web}}\n  targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: gw}\n",
                "spec: only one of targetRefs or workloadSelector can be set",
            ),
            (
                "  rules:\n  - from: [{source: {principals: [a], serviceAccounts: [ns/sa]}}]\n",
                "spec.rules[0].from[0].source: cannot set serviceAccounts with namespaces or principals, found at rule 0",
            ),
            ("  rules:\n  - from: []\n", "spec.rules[0].from: `from` must not be empty, found at rule 0"),
            (
                "  rules:\n  - from: [{}]\n",
                "spec.rules[0].from[0].source: `from.source` must not be nil, found at rule 0",
            ),
            (
                "  rules:\n  - from: [{source: {}}]\n",
                "spec.rules[0].from[0].source: `from.source` must not be empty, found at rule 0",
            ),
            (
                "  rules:\n  - to: [{operation: {}}]\n",
                "spec.rules[0].to[0].operation: `to.operation` must not be empty, found at rule 0",
            ),
            (
                "  rules:\n  - to: [{operation: {paths: [\"\"]}}]\n",
                "spec.rules[0].to[0].operation.paths[0]: empty value not allowed, found in Paths",
            ),
            (
                "  rules:\n  - to: [{operation: {ports: [\"70000\"]}}]\n",
                "spec.rules[0].to[0].operation.ports[0]: bad port (70000): <nil>",
            ),
            (
                "  rules:\n  - from: [{source: {ipBlocks: [10.0.0.0/40]}}]\n",
                "spec.rules[0].from[0].source.ipBlocks[0]: bad CIDR range (10.0.0.0/40): prefix length out of range",
            ),
            (
                "  rules:\n  - when: [{key: request.headers}]\n",
                "spec.rules[0].when[0]: at least one of `values` or `notValues` must be set for key request.headers",
            ),
            (
                "  rules:\n  - when: [{key: request.headers, values: [a]}]\n",
                "spec.rules[0].when[0].key: invalid `value` for `key` request.headers: bad key (request.headers): should have format a[b]",
            ),
            (
                "  rules:\n  - when: [{key: destination.namespace, values: [a]}]\n",
                "spec.rules[0].when[0].key: invalid `value` for `key` destination.namespace: attribute destination.namespace is replaced by the metadata.namespace",
            ),
            (
                "  rules:\n  - when: [{key: source.foo, values: [a]}]\n",
                "spec.rules[0].when[0].key: invalid `value` for `key` source.foo: unknown attribute: source.foo",
            ),
            (
                "  rules:\n  - when: [{key: source.ip, values: [not-an-ip]}]\n",
                "spec.rules[0].when[0].values[0]: invalid `value` for `key` source.ip: bad IP address (not-an-ip)",
            ),
            (
                "  provider: {name: x}\n  rules: [{}]\n",
                "spec.provider: `provider` must not be with non CUSTOM action, found ALLOW",
            ),
            (
                "  selector: {matchLabels: {app: \"*\"}}\n",
                "spec.selector.matchLabels: wildcard is not supported in selector: \"app=*\"",
            ),
        ];
        for (spec, want) in cases {
            assert_eq!(errors(spec), [*want], "for\n{spec}");
        }
    }

    #[test]
    fn policies_that_never_decide_for_a_sidecar_are_warned_about_and_not_enforced() {
        for (spec, warning) in [
            ("  action: AUDIT\n  rules: [{}]\n", "spec.action: AUDIT policies only mark requests"),
            (
                "  targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: gw}\n",
                "spec.targetRef: a policy with targetRef",
            ),
        ] {
            let (p, _) = compiled("default", spec);
            assert!(p.is_none(), "{spec}");
            let w = warnings(spec);
            assert!(w.iter().any(|w| w.starts_with(warning)), "{w:?}");
        }
        let text = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  annotations: {istio.io/dry-run: \"true\"}\nspec: {}\n";
        let res = parse_resources("p.yaml", text).unwrap();
        let crate::config::istio::Spec::AuthorizationPolicy(spec) = &res[0].spec else { panic!() };
        let (p, findings) = compile("p.yaml", &res[0], spec);
        assert!(p.is_none());
        assert!(findings[0].field.contains("istio.io/dry-run"), "{findings:?}");
    }

    #[test]
    fn unsimulated_attributes_are_warned_about_naming_the_field() {
        let w = warnings("  rules:\n  - from: [{source: {requestPrincipals: [\"*\"]}}]\n");
        assert!(
            w[0].starts_with(
                "spec.rules[0].from[0].source.requestPrincipals: meshsim simulates no RequestAuthentication"
            ),
            "{w:?}"
        );
        let w = warnings("  rules:\n  - from: [{source: {remoteIpBlocks: [10.0.0.0/8]}}]\n");
        assert!(
            w[0].starts_with(
                "spec.rules[0].from[0].source.remoteIpBlocks: matched against the connection's source address"
            ),
            "{w:?}"
        );
        let w = warnings("  rules:\n  - when: [{key: connection.sni, values: [x]}]\n");
        assert!(w[0].starts_with("spec.rules[0].when[0].key: meshsim does not pass the TLS server name"), "{w:?}");
    }

    #[test]
    fn deny_with_only_http_attributes_gets_the_webhook_tcp_warning() {
        let w = warnings("  action: DENY\n  rules:\n  - to: [{operation: {paths: [/a]}}]\n");
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("spec.rules[0]: configured AuthorizationPolicy will deny all traffic to TCP ports"));
        assert!(
            warnings("  action: DENY\n  rules:\n  - to: [{operation: {ports: [\"80\"], paths: [/a]}}]\n").is_empty()
        );
    }

    proptest! {
        #[test]
        fn prefix_and_suffix_rules_agree_with_str(p in "[a-c/]{1,4}", s in "[a-c/]{0,6}") {
            prop_assert_eq!(StrMatch::parse(&format!("{p}*")).matches(&s), s.starts_with(&p));
            prop_assert_eq!(StrMatch::parse(&format!("*{p}")).matches(&s), s.ends_with(&p));
        }

        #[test]
        fn cidr_contains_agrees_with_a_mask(net in any::<u32>(), ip in any::<u32>(), len in 0u8..=32) {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            let c = Cidr { net: IpAddr::V4(Ipv4Addr::from(net)), len };
            prop_assert_eq!(c.contains(IpAddr::V4(Ipv4Addr::from(ip))), net & mask == ip & mask);
        }

        #[test]
        fn a_not_field_is_the_complement_of_its_field(path in "/[a-c]{0,3}", pattern in "/[a-c]{0,2}\\*?") {
            let yes = allow_rule(&format!("to: [{{operation: {{paths: [\"{pattern}\"]}}}}]"));
            let no = allow_rule(&format!("to: [{{operation: {{notPaths: [\"{pattern}\"]}}}}]"));
            let r = get(&path);
            prop_assert_ne!(r.decide(&yes), r.decide(&no));
        }

        #[test]
        fn a_matching_deny_wins_over_any_allow(path in "/[a-c]{0,3}", allow_paths in proptest::collection::vec("/[a-c]{0,2}\\*?", 0..3)) {
            let allow = if allow_paths.is_empty() {
                policy("  rules: [{}]\n")
            } else {
                policy(&format!("  rules:\n  - to: [{{operation: {{paths: {allow_paths:?}}}}}]\n"))
            };
            let deny = policy("  action: DENY\n  rules: [{}]\n");
            let r = get(&path);
            prop_assert_eq!(r.decide(&workload(&[allow, deny])), Deny);
        }
    }
}
