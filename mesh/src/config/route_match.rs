//! Istio's `HTTPMatchRequest` as a VirtualService's YAML writes it, and its webhook
//! validation with Istio's messages.
//!
//! Not here: matching requests (the compiled matcher `proxy::route_match` builds from
//! this model), choosing the route, VirtualService-level `hosts`/`gateways`.
//!
//! Sources: Istio's [VirtualService reference](https://istio.io/latest/docs/reference/config/networking/virtual-service/#HTTPMatchRequest)
//! and `pkg/config/validation/virtualservice.go` (`validateHTTPRouteMatchRequest`).

use std::collections::BTreeMap;
use std::sync::LazyLock;

use regex::Regex;
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::diag::code;
use super::istio::NotSimulated;
use super::{Finding, Pos};

/// Istio rejects longer regexes (an approximation of Envoy's RE2 program size limit).
const REGEX_MAX_LEN: usize = 1024;
/// Header names under this prefix are JWT claim conditions (RequestAuthentication).
pub(crate) const JWT_CLAIM_PREFIX: &str = "@request.auth.claims";

/// Istio's `StringMatch`: at most one of `exact`, `prefix`, `regex` (a protobuf oneof);
/// none (`{}`) means "present" for headers and query parameters, "any" for `uri`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StringMatch {
    pub exact: Option<String>,
    pub prefix: Option<String>,
    /// RE2 syntax, matched against the whole value.
    pub regex: Option<String>,
}

/// One entry of `HTTPRoute.match` as Istio's YAML writes it. Map values are `None` when
/// the YAML value is null.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpMatchRequest {
    /// Appended to the route's name (`<route>.<name>`) by Istio.
    pub name: Option<String>,
    pub uri: Option<Spanned<StringMatch>>,
    pub scheme: Option<Spanned<StringMatch>>,
    pub method: Option<Spanned<StringMatch>>,
    pub authority: Option<Spanned<StringMatch>>,
    #[serde(default)]
    pub headers: BTreeMap<String, Option<Spanned<StringMatch>>>,
    #[serde(default)]
    pub without_headers: BTreeMap<String, Option<Spanned<StringMatch>>>,
    #[serde(default)]
    pub query_params: BTreeMap<String, Option<Spanned<StringMatch>>>,
    #[serde(default)]
    pub ignore_uri_case: bool,
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    /// The destination port the request must have been sent to; 0 = any.
    pub port: Option<Spanned<u32>>,
    /// When set, replaces `sourceLabels`/`sourceNamespace`: a sidecar applies the entry
    /// only if the list holds `mesh`.
    #[serde(default)]
    pub gateways: Vec<Spanned<String>>,
    pub source_namespace: Option<Spanned<String>>,
    /// Only names statistics: not simulated.
    pub stat_prefix: NotSimulated,
}

// ---------------------------------------------------------------- validation

/// Checks one `match` entry (at field path `at`, e.g. `spec.http[0].match[1]`) the way
/// Istio's webhook does (`validateHTTPRouteMatchRequest`), with its messages; errors are
/// [`code::SCHEMA`]. Also rejects a `StringMatch` with more than one kind (the CRD schema
/// does), and warns ([`code::NOT_SIMULATED`]) about `statPrefix` and JWT claim headers.
pub fn validate(m: &Spanned<HttpMatchRequest>, file: &str, at: &str) -> Vec<Finding> {
    let mut v = Checker { file, out: Vec::new() };
    let r = &m.value;
    for (name, sm) in &r.headers {
        let field = format!("{at}.headers.{name}");
        let pos = sm.as_ref().map_or_else(|| Pos::of(file, m), |s| Pos::of(file, s));
        if sm.is_none() {
            v.error(&pos, &field, format!("header match {name} cannot be null"));
        }
        v.header_name(&pos, &field, name);
        if let Some(sm) = sm {
            v.string_match(sm, &field, "headers", false);
        }
    }
    for (name, sm) in &r.without_headers {
        let field = format!("{at}.withoutHeaders.{name}");
        let pos = sm.as_ref().map_or_else(|| Pos::of(file, m), |s| Pos::of(file, s));
        v.header_name(&pos, &field, name);
        // `*` is not RE2: Istio turns it into a presence check.
        if let Some(sm) = sm
            && sm.value.regex.as_deref() != Some("*")
        {
            v.string_match(sm, &field, "withoutHeaders", false);
        }
    }
    // Envoy allows an empty path prefix; scheme, method and authority need a non-empty one.
    if let Some(sm) = &r.uri {
        v.string_match(sm, &format!("{at}.uri"), "uri", true);
    }
    for (key, sm) in [("scheme", &r.scheme), ("method", &r.method), ("authority", &r.authority)] {
        if let Some(sm) = sm {
            v.string_match(sm, &format!("{at}.{key}"), key, false);
        }
    }
    for (name, sm) in &r.query_params {
        if let Some(sm) = sm {
            v.string_match(sm, &format!("{at}.queryParams.{name}"), "queryParams", false);
        }
    }
    if let Some(p) = &r.port
        && p.value > 65535
    {
        v.error(
            &Pos::of(file, p),
            &format!("{at}.port"),
            format!("port number {} must be in the range 1..65535", p.value),
        );
    }
    for (key, value) in &r.source_labels {
        let field = format!("{at}.sourceLabels.{key}");
        if let Some(msg) = tag_key_error(key) {
            v.error(&Pos::of(file, m), &field, msg);
        }
        if !LABEL_VALUE.is_match(value) {
            v.error(&Pos::of(file, m), &field, format!("invalid tag value: {value:?}"));
        }
    }
    v.gateways(&r.gateways, &format!("{at}.gateways"));
    if let Some(ns) = &r.source_namespace
        && !ns.value.is_empty()
        && !is_dns1123_label(&ns.value)
    {
        v.error(
            &Pos::of(file, ns),
            &format!("{at}.sourceNamespace"),
            format!("sourceNamespace match {} is invalid", ns.value),
        );
    }
    if let Some(sp) = &r.stat_prefix {
        let field = format!("{at}.statPrefix");
        let msg = format!("`{field}` is an Istio field meshsim does not simulate yet: it is ignored");
        v.out.push(Finding::warning(Pos::of(file, sp), code::NOT_SIMULATED, field, msg));
    }
    for (kind, map) in [("headers", &r.headers), ("withoutHeaders", &r.without_headers)] {
        for (name, sm) in map.iter().filter(|(name, _)| name.starts_with(JWT_CLAIM_PREFIX)) {
            let pos = sm.as_ref().map_or_else(|| Pos::of(file, m), |s| Pos::of(file, s));
            let msg = "JWT claims are not simulated (no RequestAuthentication): no request carries this claim";
            v.out.push(Finding::warning(pos, code::NOT_SIMULATED, format!("{at}.{kind}.{name}"), msg));
        }
    }
    v.out
}

struct Checker<'a> {
    file: &'a str,
    out: Vec<Finding>,
}

impl Checker<'_> {
    fn error(&mut self, pos: &Pos, field: &str, message: impl Into<String>) {
        self.out.push(Finding::error(pos.clone(), code::SCHEMA, field, message));
    }

    /// Istio's `validateStringMatch` (`allow_empty_prefix`: `validateStringMatchRegexp`,
    /// used for `uri`). `word` is the word Istio quotes in its messages.
    fn string_match(&mut self, sm: &Spanned<StringMatch>, field: &str, word: &str, allow_empty_prefix: bool) {
        let pos = Pos::of(self.file, sm);
        let s = &sm.value;
        if [&s.exact, &s.prefix, &s.regex].iter().filter(|k| k.is_some()).count() > 1 {
            self.error(&pos, field, "at most one of exact, prefix or regex may be set");
        }
        if s.prefix.as_deref() == Some("") && !allow_empty_prefix {
            self.error(&pos, field, format!("{word:?}: prefix string match should not be empty"));
        }
        if let Some(re) = &s.regex
            && let Some(why) = regex_error(re)
        {
            self.error(&pos, field, format!("{word:?}: {why}"));
        }
    }

    /// Istio's `ValidateHTTPHeaderNameOrJwtClaimRoute`. (Upper case is allowed: Envoy
    /// lowercases matcher names.)
    fn header_name(&mut self, pos: &Pos, field: &str, name: &str) {
        const PSEUDO: [&str; 5] = [":method", ":scheme", ":authority", ":path", ":status"];
        if name.is_empty() {
            self.error(pos, field, "header name cannot be empty");
        } else if !(name.starts_with(JWT_CLAIM_PREFIX) || PSEUDO.contains(&name) || is_token(name)) {
            self.error(pos, field, format!("header name {name} is not a valid header name"));
        }
    }

    /// Istio's `validateGatewayNames` (which stops at the first name without a `/`).
    fn gateways(&mut self, gateways: &[Spanned<String>], field: &str) {
        for g in gateways {
            let pos = Pos::of(self.file, g);
            let Some((ns, name)) = g.value.split_once('/') else {
                if g.value.contains('.') {
                    let parts: Vec<&str> = g.value.split('.').collect();
                    let msg = format!(
                        "using legacy gatewayName format {:?}; prefer the <namespace>/<name> format: {:?}",
                        g.value,
                        format!("{}/{}", parts[1], parts[0])
                    );
                    self.out.push(Finding::warning(pos.clone(), code::SCHEMA, field, msg));
                }
                if let Some(msg) = fqdn_error(&g.value) {
                    self.error(&pos, field, msg);
                }
                return;
            };
            if ns.is_empty() || name.is_empty() {
                self.error(&pos, field, "config namespace and gateway name cannot be empty");
            }
            if !is_dns1123_label(ns) {
                self.error(&pos, field, format!("invalid value for namespace: {ns:?}"));
            }
            if !is_dns1123_label(name) {
                self.error(&pos, field, format!("invalid value for gateway name: {name:?}"));
            }
        }
    }
}

/// Istio's `validateStringRegexp` message (after the quoted field word), or `None`.
/// Go's parser error text differs from the `regex` crate's; the frame is Istio's.
fn regex_error(re: &str) -> Option<String> {
    if re.is_empty() {
        return Some("regex string match should not be empty".into());
    }
    if re.len() > REGEX_MAX_LEN {
        return Some(format!("regex is too large, max length allowed is {REGEX_MAX_LEN}"));
    }
    let err = full_match_regex(re).err()?;
    let why = match &err {
        regex::Error::Syntax(text) => {
            text.lines().rev().find_map(|l| l.strip_prefix("error: ")).unwrap_or(text.trim()).to_string()
        }
        regex::Error::CompiledTooBig(limit) => format!("expression too large (compiled size over {limit} bytes)"),
        other => other.to_string(),
    };
    Some(format!(
        "error parsing regexp: {why}: `{re}`; Istio uses RE2 style regex-based match (https://github.com/google/re2/wiki/Syntax)"
    ))
}

/// An RE2 full match: the pattern must compile on its own (so `a)|(b` cannot escape the
/// anchoring group), then is anchored at both ends.
pub(crate) fn full_match_regex(re: &str) -> Result<Regex, regex::Error> {
    Regex::new(re)?;
    // A pattern ending in an `(?x)` comment would swallow `)$`; a newline ends the comment.
    Regex::new(&format!("^(?:{re})$")).or_else(|_| Regex::new(&format!("^(?:{re}\n)$")))
}

/// RFC 7230 token (Istio's `validHeaderNameRegex`).
fn is_token(name: &str) -> bool {
    name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

const DNS1123_LABEL: &str = "[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?";
const QUALIFIED_NAME: &str = "(?:[A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
static DNS1123: LazyLock<Regex> = LazyLock::new(|| Regex::new(&format!("^{DNS1123_LABEL}$")).expect("valid"));
static TAG_KEY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!("^({DNS1123_LABEL}(?:\\.{DNS1123_LABEL})*/)?({QUALIFIED_NAME})$")).expect("valid")
});
static LABEL_VALUE: LazyLock<Regex> = LazyLock::new(|| Regex::new(&format!("^({QUALIFIED_NAME})?$")).expect("valid"));

/// Istio's `labels.IsDNS1123Label`.
fn is_dns1123_label(s: &str) -> bool {
    s.len() <= 63 && DNS1123.is_match(s)
}

/// Istio's `validateTagKey` message, if `key` is not a valid label key.
fn tag_key_error(key: &str) -> Option<String> {
    let Some(c) = TAG_KEY.captures(key) else {
        return Some(format!("invalid tag key: {key:?}"));
    };
    if c.get(1).is_some_and(|p| p.len() - 1 > 253) {
        return Some(format!("invalid tag key: {key:?} (DNS prefix is too long)"));
    }
    if c.get(2).is_some_and(|n| n.len() > 63) {
        return Some(format!("invalid tag key: {key:?} (name is too long)"));
    }
    None
}

/// Istio's `agent.ValidateFQDN` message, if `fqdn` is not a valid domain name.
fn fqdn_error(fqdn: &str) -> Option<String> {
    if fqdn.len() > 255 {
        return Some(format!("domain name {fqdn:?} too long (max 255)"));
    }
    if fqdn.is_empty() {
        return Some("empty domain name not allowed".into());
    }
    let labels: Vec<&str> = fqdn.split('.').collect();
    let tld = labels[labels.len() - 1];
    if tld.parse::<i64>().is_ok() {
        return Some(format!("domain name {fqdn:?} invalid (top level domain {tld:?} cannot be all-numeric)"));
    }
    let last = labels.len() - 1;
    labels
        .iter()
        .enumerate()
        .find(|&(i, l)| (i != last || !l.is_empty()) && !is_dns1123_label(l))
        .map(|(_, l)| format!("domain name {fqdn:?} invalid (label {l:?} invalid)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Spanned<HttpMatchRequest> {
        serde_saphyr::from_str(yaml).expect("valid HttpMatchRequest YAML")
    }

    fn messages(yaml: &str) -> Vec<String> {
        validate(&parse(yaml), "vs.yaml", "spec.http[0].match[0]").into_iter().map(|f| f.message).collect()
    }

    #[test]
    fn parses_istio_yaml_with_positions_and_null_values() {
        let m = parse(
            "name: v2\nuri: {prefix: /v2}\nheaders:\n  end-user: {exact: jason}\n  x-null:\nignoreUriCase: true\n",
        );
        assert_eq!(m.value.uri.as_ref().unwrap().referenced.line(), 2);
        assert_eq!(m.value.headers["end-user"].as_ref().unwrap().value.exact.as_deref(), Some("jason"));
        assert!(m.value.headers["x-null"].is_none());
        assert!(m.value.ignore_uri_case);
    }

    #[test]
    fn unknown_fields_are_parse_errors() {
        assert!(serde_saphyr::from_str::<HttpMatchRequest>("url: {prefix: /}\n").is_err());
        assert!(serde_saphyr::from_str::<HttpMatchRequest>("uri: {suffix: /}\n").is_err());
    }

    #[test]
    fn empty_or_oversized_regex_is_an_error() {
        assert_eq!(messages("method: {regex: \"\"}\n"), ["\"method\": regex string match should not be empty"]);
        let long = format!("uri: {{regex: \"{}\"}}\n", "a".repeat(REGEX_MAX_LEN + 1));
        assert_eq!(messages(&long), ["\"uri\": regex is too large, max length allowed is 1024"]);
    }

    #[test]
    fn empty_prefix_is_an_error_except_for_uri() {
        assert_eq!(
            messages("headers: {x-a: {prefix: \"\"}}\n"),
            ["\"headers\": prefix string match should not be empty"]
        );
        assert_eq!(messages("authority: {prefix: \"\"}\n"), ["\"authority\": prefix string match should not be empty"]);
        assert_eq!(
            messages("queryParams: {q: {prefix: \"\"}}\n"),
            ["\"queryParams\": prefix string match should not be empty"]
        );
        assert!(messages("uri: {prefix: \"\"}\n").is_empty());
    }

    #[test]
    fn null_header_match_and_bad_header_names_are_errors() {
        assert_eq!(messages("headers: {x-a: }\n"), ["header match x-a cannot be null"]);
        assert_eq!(messages("headers: {\"x a\": {}}\n"), ["header name x a is not a valid header name"]);
        assert_eq!(messages("withoutHeaders: {\"\": {}}\n"), ["header name cannot be empty"]);
        assert!(messages("headers: {X-Upper: {}, \":authority\": {}}\n").is_empty());
    }

    #[test]
    fn more_than_one_kind_is_an_error() {
        assert_eq!(messages("uri: {exact: /a, prefix: /a}\n"), ["at most one of exact, prefix or regex may be set"]);
    }

    #[test]
    fn port_labels_namespace_and_gateways_are_checked() {
        assert_eq!(messages("port: 70000\n"), ["port number 70000 must be in the range 1..65535"]);
        assert_eq!(messages("sourceLabels: {\"-bad\": ok}\n"), ["invalid tag key: \"-bad\""]);
        assert_eq!(messages("sourceLabels: {app: \"bad value\"}\n"), ["invalid tag value: \"bad value\""]);
        assert_eq!(messages("sourceNamespace: Bad_NS\n"), ["sourceNamespace match Bad_NS is invalid"]);
        assert_eq!(messages("gateways: [\"ns/\"]\n")[0], "config namespace and gateway name cannot be empty");
        assert_eq!(messages("gateways: [\"ns/gw_1\"]\n"), ["invalid value for gateway name: \"gw_1\""]);
        assert_eq!(
            messages("gateways: [\"1.2\"]\n").last().unwrap(),
            "domain name \"1.2\" invalid (top level domain \"2\" cannot be all-numeric)"
        );
        assert!(
            messages("gateways: [mesh, istio-system/ingress]\nsourceLabels: {app.kubernetes.io/name: x}\n").is_empty()
        );
    }

    #[test]
    fn legacy_gateway_names_warn_with_the_recommended_form() {
        let f = validate(&parse("gateways: [ingress.istio-system]\n"), "vs.yaml", "m");
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].level, crate::config::Level::Warning);
        assert!(f[0].message.ends_with("prefer the <namespace>/<name> format: \"istio-system/ingress\""));
    }

    #[test]
    fn stat_prefix_is_a_not_simulated_warning() {
        let f = validate(&parse("statPrefix: foo\n"), "vs.yaml", "spec.http[0].match[0]");
        assert_eq!(
            (f.len(), f[0].code, f[0].field.as_str()),
            (1, code::NOT_SIMULATED, "spec.http[0].match[0].statPrefix")
        );
    }

    #[test]
    fn findings_point_at_the_offending_value() {
        let f = validate(&parse("uri: {prefix: /}\nheaders:\n  x-a: {regex: \"[\"}\n"), "vs.yaml", "m");
        assert_eq!((f[0].field.as_str(), f[0].pos.line), ("m.headers.x-a", 3));
    }
}
