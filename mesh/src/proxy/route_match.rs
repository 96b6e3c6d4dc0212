//! VirtualService request matching: the compiled matcher a sidecar runs on each request
//! with Envoy's semantics, built from Istio's `HTTPMatchRequest` (the model and its
//! webhook validation are `config::route_match`).
//!
//! Within one `HTTPMatchRequest` every condition must hold; a route's `match` list
//! accepts a request if any entry does, and an empty list accepts everything
//! ([`route_matches`]). Paths, methods, authorities, schemes and values are
//! case-sensitive (`ignoreUriCase` relaxes `uri` exact and prefix only); header names are
//! not. `prefix` is a raw string prefix: `/v2` accepts `/v2example`. Regexes are RE2
//! full matches (run with the `regex` crate, anchored at both ends).
//!
//! The compiled matcher is plain data a second reader (a translator to Envoy's route
//! config) can walk: every field is public, and a regex keeps the pattern as written
//! ([`SafeRegex::pattern`], Envoy's `safe_regex.regex`) beside the compiled form.
//!
//! Pure. This module does not own choosing the route (the first `http[]` entry whose list
//! accepts), VirtualService-level `hosts`/`gateways`, rewrites, or JWT claims: no
//! RequestAuthentication is simulated, so a `@request.auth.claims…` header condition sees
//! no claim (it never holds in `headers`, always holds in `withoutHeaders`).
//!
//! Sources: Istio `pilot/pkg/networking/core/route/route.go` (`TranslateRouteMatch`,
//! `translateHeaderMatch`, `translateQueryParamMatch`, `sourceMatchHTTP`,
//! `TranslateRoute`); Envoy `HeaderUtility::matchHeaders`,
//! `ConfigUtility::QueryParameterMatcher::matches` and the route path matchers.

use std::borrow::Cow;
use std::collections::BTreeMap;

use http::HeaderMap;
use regex::Regex;
use serde_saphyr::Spanned;

use crate::config::route_match::{HttpMatchRequest, JWT_CLAIM_PREFIX, StringMatch, full_match_regex};

/// The gateway name a sidecar's routes are built for.
pub const MESH_GATEWAY: &str = "mesh";

// ---------------------------------------------------------------- compiled matcher

/// What one request offers to matching.
#[derive(Clone, Copy, Debug)]
pub struct MatchInput<'a> {
    pub method: &'a str,
    /// The path, without the query string.
    pub path: &'a str,
    /// The query string, without `?`.
    pub query: Option<&'a str>,
    /// `:authority`: the Host header as sent (`reviews:9080` if the client wrote a port).
    pub authority: &'a str,
    pub scheme: &'a str,
    pub headers: &'a HeaderMap,
    /// The port the request was sent to (the outbound listener's service port).
    pub port: u16,
    /// Labels of the workload this sidecar serves.
    pub source_labels: &'a BTreeMap<String, String>,
    pub source_namespace: &'a str,
}

/// An RE2 pattern, matched against a whole value (Envoy's `safe_regex` with Google
/// RE2, which matches the whole string).
#[derive(Clone, Debug)]
pub struct SafeRegex {
    /// The pattern as the VirtualService wrote it.
    pattern: String,
    /// `pattern`, anchored at both ends.
    full: Regex,
}

impl SafeRegex {
    fn new(pattern: &str) -> Result<SafeRegex, String> {
        let full = full_match_regex(pattern).map_err(|e| e.to_string())?;
        Ok(SafeRegex { pattern: pattern.to_string(), full })
    }

    /// The pattern as written (what Envoy's `safe_regex.regex` carries).
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// Whether the pattern matches all of `value`.
    pub fn is_match(&self, value: &str) -> bool {
        self.full.is_match(value)
    }
}

/// A value matcher (Envoy's `StringMatcher`, or `present_match`).
#[derive(Clone, Debug)]
pub enum Matcher {
    Present,
    Exact(String),
    Prefix(String),
    Regex(SafeRegex),
}

impl Matcher {
    /// Istio's `translateHeaderMatch`/`translateQueryParamMatch`: no kind, or regex `*`,
    /// is a presence check.
    fn compile(sm: Option<&StringMatch>) -> Result<Matcher, String> {
        let Some(sm) = sm else { return Ok(Matcher::Present) };
        Ok(match (&sm.exact, &sm.prefix, &sm.regex) {
            (Some(e), _, _) => Matcher::Exact(e.clone()),
            (None, Some(p), _) => Matcher::Prefix(p.clone()),
            (None, None, Some(r)) if r == "*" => Matcher::Present,
            (None, None, Some(r)) => Matcher::Regex(SafeRegex::new(r)?),
            (None, None, None) => Matcher::Present,
        })
    }

    fn matches(&self, value: &str) -> bool {
        match self {
            Matcher::Present => true,
            Matcher::Exact(e) => value == e,
            Matcher::Prefix(p) => value.starts_with(p.as_str()),
            Matcher::Regex(r) => r.is_match(value),
        }
    }
}

/// Envoy's route path specifier.
#[derive(Clone, Debug)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
    Regex(SafeRegex),
}

/// One header condition (Envoy `HeaderMatcher`, or a JWT claim's metadata matcher).
#[derive(Clone, Debug)]
pub enum Cond {
    Header {
        /// Lower case; pseudo-headers (`:method`, `:authority`, `:scheme`, `:path`) too.
        name: String,
        matcher: Matcher,
        invert: bool,
        /// Envoy's `treat_missing_header_as_empty`, which Istio sets on `withoutHeaders`
        /// conditions that are not presence checks.
        missing_as_empty: bool,
    },
    /// No claim is ever present: holds only when inverted.
    Claim { invert: bool },
}

/// One compiled `HTTPMatchRequest` ([`RouteMatch::compile`] builds it).
#[derive(Clone, Debug)]
pub struct RouteMatch {
    pub name: Option<String>,
    pub path: PathMatch,
    pub ignore_uri_case: bool,
    /// Header conditions: `headers`, then `withoutHeaders` (inverted), then `method`,
    /// `authority` and `scheme` as pseudo-headers.
    pub conds: Vec<Cond>,
    pub query_params: Vec<(String, Matcher)>,
    /// `None` = any port.
    pub port: Option<u32>,
    pub source_labels: BTreeMap<String, String>,
    pub source_namespace: Option<String>,
    pub gateways: Vec<String>,
}

impl RouteMatch {
    /// Istio's `TranslateRouteMatch`. Fails only on a regex `config::route_match::validate` reports.
    pub fn compile(m: &HttpMatchRequest) -> Result<RouteMatch, String> {
        let value = |s: &Option<Spanned<StringMatch>>| s.as_ref().map(|s| s.value.clone());
        let path = match value(&m.uri).unwrap_or_default() {
            StringMatch { exact: Some(e), .. } => PathMatch::Exact(e),
            StringMatch { prefix: Some(p), .. } => PathMatch::Prefix(p),
            StringMatch { regex: Some(r), .. } => PathMatch::Regex(SafeRegex::new(&r)?),
            _ => PathMatch::Prefix("/".into()),
        };
        let mut conds = Vec::new();
        for (invert, map) in [(false, &m.headers), (true, &m.without_headers)] {
            for (name, sm) in map {
                if name.starts_with(JWT_CLAIM_PREFIX) {
                    conds.push(Cond::Claim { invert });
                    continue;
                }
                let matcher = Matcher::compile(sm.as_ref().map(|s| &s.value))?;
                let missing_as_empty = invert && !matches!(matcher, Matcher::Present);
                conds.push(Cond::Header { name: name.to_ascii_lowercase(), matcher, invert, missing_as_empty });
            }
        }
        for (name, sm) in [(":method", &m.method), (":authority", &m.authority), (":scheme", &m.scheme)] {
            if let Some(sm) = value(sm) {
                let matcher = Matcher::compile(Some(&sm))?;
                conds.push(Cond::Header { name: name.into(), matcher, invert: false, missing_as_empty: false });
            }
        }
        let query_params = m
            .query_params
            .iter()
            .map(|(name, sm)| Ok((name.clone(), Matcher::compile(sm.as_ref().map(|s| &s.value))?)))
            .collect::<Result<_, String>>()?;
        Ok(RouteMatch {
            name: m.name.clone(),
            path,
            ignore_uri_case: m.ignore_uri_case,
            conds,
            query_params,
            port: m.port.as_ref().map(|p| p.value).filter(|&p| p != 0),
            source_labels: m.source_labels.clone(),
            source_namespace: m.source_namespace.as_ref().map(|n| n.value.clone()).filter(|n| !n.is_empty()),
            gateways: m.gateways.iter().map(|g| g.value.clone()).collect(),
        })
    }

    /// The `uri` prefix of this entry, if it matches by prefix (what `rewrite.uri` replaces).
    pub fn uri_prefix(&self) -> Option<&str> {
        match &self.path {
            PathMatch::Prefix(p) => Some(p),
            _ => None,
        }
    }

    /// Whether every condition of this entry holds for `req`.
    pub fn matches(&self, req: &MatchInput<'_>) -> bool {
        self.source_matches(req)
            && self.port.is_none_or(|p| p == u32::from(req.port))
            && self.path_matches(req.path)
            && self.conds.iter().all(|c| cond_matches(c, req))
            && self
                .query_params
                .iter()
                .all(|(name, m)| first_query_value(req.query, name).is_some_and(|v| m.matches(v)))
    }

    /// Istio's `sourceMatchHTTP` (applied when routes are built for this sidecar).
    fn source_matches(&self, req: &MatchInput<'_>) -> bool {
        if !self.gateways.is_empty() {
            return self.gateways.iter().any(|g| g == MESH_GATEWAY);
        }
        // Go's `labels.SubsetOf`: a missing label reads as "".
        self.source_labels.iter().all(|(k, v)| req.source_labels.get(k).map_or("", String::as_str) == v)
            && self.source_namespace.as_deref().is_none_or(|ns| ns == req.source_namespace)
    }

    fn path_matches(&self, path: &str) -> bool {
        let (p, want) = (path.as_bytes(), self.ignore_uri_case);
        match &self.path {
            PathMatch::Exact(e) if want => p.eq_ignore_ascii_case(e.as_bytes()),
            PathMatch::Exact(e) => path == e,
            PathMatch::Prefix(x) if want => p.len() >= x.len() && p[..x.len()].eq_ignore_ascii_case(x.as_bytes()),
            PathMatch::Prefix(x) => path.starts_with(x.as_str()),
            // Envoy ignores `case_sensitive` for regex paths.
            PathMatch::Regex(r) => r.is_match(path),
        }
    }
}

/// A route's `match` list: any entry accepts; no entry accepts everything.
pub fn route_matches(entries: &[RouteMatch], req: &MatchInput<'_>) -> bool {
    entries.is_empty() || entries.iter().any(|m| m.matches(req))
}

/// Envoy's `HeaderUtility::matchHeaders` for one condition.
fn cond_matches(cond: &Cond, req: &MatchInput<'_>) -> bool {
    let Cond::Header { name, matcher, invert, missing_as_empty } = cond else {
        return matches!(cond, Cond::Claim { invert: true });
    };
    match header_value(req, name) {
        Some(v) => matcher.matches(&v) != *invert,
        None if *missing_as_empty => matcher.matches("") != *invert,
        None => *invert && matches!(matcher, Matcher::Present),
    }
}

/// A header's value as Envoy's matchers see it: pseudo-headers from the request line,
/// several values joined with `,`.
fn header_value<'a>(req: &MatchInput<'a>, name: &str) -> Option<Cow<'a, str>> {
    match name {
        ":method" => Some(Cow::Borrowed(req.method)),
        ":authority" => Some(Cow::Borrowed(req.authority)),
        ":scheme" => Some(Cow::Borrowed(req.scheme)),
        ":path" => Some(match req.query {
            Some(q) => Cow::Owned(format!("{}?{q}", req.path)),
            None => Cow::Borrowed(req.path),
        }),
        _ if name.starts_with(':') => None,
        _ => {
            let values: Vec<Cow<'a, str>> =
                req.headers.get_all(name).iter().map(|v| String::from_utf8_lossy(v.as_bytes())).collect();
            match values.len() {
                0 => None,
                1 => values.into_iter().next(),
                _ => Some(Cow::Owned(values.join(","))),
            }
        }
    }
}

/// Envoy's `QueryParamsMulti::parseQueryString(..).getFirstValue(name)`: `&`-separated,
/// split at the first `=`, not percent-decoded; a bare `key` has the value "".
fn first_query_value<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|param| match param.split_once('=') {
        Some((k, v)) => (k == name).then_some(v),
        None => (param == name).then_some(""),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::diag::code;
    use crate::config::route_match::validate;
    use http::HeaderValue;
    use proptest::prelude::*;

    fn parse(yaml: &str) -> Spanned<HttpMatchRequest> {
        serde_saphyr::from_str(yaml).expect("valid HttpMatchRequest YAML")
    }

    fn compile(yaml: &str) -> RouteMatch {
        let m = parse(yaml);
        let errors: Vec<_> =
            validate(&m, "vs.yaml", "m").into_iter().filter(|f| f.level == crate::config::Level::Error).collect();
        assert!(errors.is_empty(), "{errors:?}");
        RouteMatch::compile(&m.value).expect("compiles")
    }

    fn messages(yaml: &str) -> Vec<String> {
        validate(&parse(yaml), "vs.yaml", "spec.http[0].match[0]").into_iter().map(|f| f.message).collect()
    }

    /// A test request; `target` is `path?query`.
    struct Req {
        method: &'static str,
        target: &'static str,
        authority: &'static str,
        scheme: &'static str,
        headers: HeaderMap,
        port: u16,
        labels: BTreeMap<String, String>,
        namespace: &'static str,
    }

    fn req(target: &'static str) -> Req {
        Req {
            method: "GET",
            target,
            authority: "reviews",
            scheme: "http",
            headers: HeaderMap::new(),
            port: 9080,
            labels: BTreeMap::from([("app".into(), "productpage".into())]),
            namespace: "default",
        }
    }

    impl Req {
        fn header(mut self, name: &'static str, value: &'static str) -> Req {
            self.headers.append(name, HeaderValue::from_static(value));
            self
        }
        fn input(&self) -> MatchInput<'_> {
            let (path, query) = match self.target.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (self.target, None),
            };
            MatchInput {
                method: self.method,
                path,
                query,
                authority: self.authority,
                scheme: self.scheme,
                headers: &self.headers,
                port: self.port,
                source_labels: &self.labels,
                source_namespace: self.namespace,
            }
        }
    }

    fn hits(yaml: &str, r: &Req) -> bool {
        compile(yaml).matches(&r.input())
    }

    // ------------------------------------------------ model

    // ------------------------------------------------ uri

    #[test]
    fn uri_prefix_is_a_raw_string_prefix() {
        let m = "uri: {prefix: /v2}\n";
        assert!(hits(m, &req("/v2")) && hits(m, &req("/v2/x")) && hits(m, &req("/v2example")));
        assert!(!hits(m, &req("/v1/v2")) && !hits(m, &req("/V2")));
    }

    #[test]
    fn uri_exact_ignores_the_query_string() {
        let m = "uri: {exact: /login}\n";
        assert!(hits(m, &req("/login")) && hits(m, &req("/login?next=/")));
        assert!(!hits(m, &req("/login/")) && !hits(m, &req("/Login")));
    }

    #[test]
    fn uri_regex_is_a_full_match() {
        let m = "uri: {regex: \"/users/[0-9]+\"}\n";
        assert!(hits(m, &req("/users/42")) && hits(m, &req("/users/42?x=1")));
        assert!(!hits(m, &req("/users/42/posts")) && !hits(m, &req("/api/users/42")));
    }

    #[test]
    fn absent_or_empty_uri_accepts_every_path() {
        assert!(hits("{}\n", &req("/anything")));
        assert!(hits("uri: {}\n", &req("/anything")));
        assert!(hits("uri: {prefix: \"\"}\n", &req("/anything")), "an empty uri prefix is allowed");
    }

    #[test]
    fn ignore_uri_case_relaxes_exact_and_prefix_but_not_regex() {
        assert!(hits("uri: {exact: /Login}\nignoreUriCase: true\n", &req("/LOGIN")));
        assert!(hits("uri: {prefix: /API}\nignoreUriCase: true\n", &req("/api/v1")));
        assert!(!hits("uri: {regex: /api}\nignoreUriCase: true\n", &req("/API")));
    }

    // ------------------------------------------------ method, authority, scheme

    #[test]
    fn method_matches_case_sensitively_by_each_kind() {
        let post = Req { method: "POST", ..req("/") };
        assert!(hits("method: {exact: POST}\n", &post) && !hits("method: {exact: post}\n", &post));
        assert!(hits("method: {prefix: PO}\n", &post) && hits("method: {regex: \"P(OST|UT)\"}\n", &post));
        assert!(!hits("method: {regex: P}\n", &post), "regex must match the whole method");
        assert!(hits("method: {}\n", &post), "no kind: the method is present");
    }

    #[test]
    fn authority_is_the_host_as_sent_port_included() {
        let r = Req { authority: "reviews:9080", ..req("/") };
        assert!(!hits("authority: {exact: reviews}\n", &r));
        assert!(hits("authority: {prefix: reviews}\n", &r));
        assert!(hits("authority: {regex: \"reviews(:[0-9]+)?\"}\n", &r));
    }

    #[test]
    fn scheme_matches_the_request_scheme() {
        assert!(hits("scheme: {exact: http}\n", &req("/")));
        assert!(!hits("scheme: {exact: https}\n", &req("/")));
    }

    // ------------------------------------------------ headers

    #[test]
    fn header_values_are_case_sensitive_names_are_not() {
        let r = req("/").header("end-user", "jason");
        assert!(hits("headers: {end-user: {exact: jason}}\n", &r));
        assert!(hits("headers: {End-User: {exact: jason}}\n", &r));
        assert!(!hits("headers: {end-user: {exact: Jason}}\n", &r));
    }

    #[test]
    fn header_prefix_and_full_regex() {
        let r = req("/").header("user-agent", "curl/8.5.0");
        assert!(hits("headers: {user-agent: {prefix: curl/}}\n", &r));
        assert!(hits("headers: {user-agent: {regex: \"curl/.*\"}}\n", &r));
        assert!(!hits("headers: {user-agent: {regex: curl}}\n", &r));
    }

    #[test]
    fn empty_header_match_means_present() {
        assert!(hits("headers: {x-canary: {}}\n", &req("/").header("x-canary", "")));
        assert!(!hits("headers: {x-canary: {}}\n", &req("/")));
    }

    #[test]
    fn a_missing_header_fails_every_kind() {
        for kind in ["exact: \"\"", "prefix: a", "regex: \".*\""] {
            assert!(!hits(&format!("headers: {{x-a: {{{kind}}}}}\n"), &req("/")), "{kind}");
        }
    }

    #[test]
    fn repeated_headers_are_joined_with_commas() {
        let r = req("/").header("x-tag", "a").header("x-tag", "b");
        assert!(hits("headers: {x-tag: {exact: \"a,b\"}}\n", &r));
        assert!(!hits("headers: {x-tag: {exact: a}}\n", &r));
    }

    #[test]
    fn pseudo_header_names_read_the_request_line() {
        let r = req("/a?b=c");
        assert!(hits("headers: {\":path\": {exact: \"/a?b=c\"}}\n", &r));
        assert!(hits("headers: {\":method\": {exact: GET}}\n", &r));
    }

    #[test]
    fn without_headers_exact_holds_when_the_header_is_missing_or_differs() {
        let m = "withoutHeaders: {end-user: {exact: jason}}\n";
        assert!(hits(m, &req("/")));
        assert!(hits(m, &req("/").header("end-user", "mary")));
        assert!(!hits(m, &req("/").header("end-user", "jason")));
        // Istio sets treat_missing_header_as_empty: a missing header reads as "".
        assert!(!hits("withoutHeaders: {x-a: {exact: \"\"}}\n", &req("/")));
    }

    #[test]
    fn without_headers_presence_holds_only_when_absent() {
        for m in [
            "withoutHeaders: {x-debug: {}}\n",
            "withoutHeaders: {x-debug: {regex: \"*\"}}\n",
            "withoutHeaders: {x-debug: }\n",
        ] {
            assert!(hits(m, &req("/")), "{m}");
            assert!(!hits(m, &req("/").header("x-debug", "1")), "{m}");
        }
    }

    #[test]
    fn jwt_claims_never_match_and_are_never_excluded() {
        assert!(!hits("headers: {\"@request.auth.claims.group\": {exact: admin}}\n", &req("/")));
        assert!(hits("withoutHeaders: {\"@request.auth.claims.group\": {exact: admin}}\n", &req("/")));
        let f = validate(&parse("headers: {\"@request.auth.claims.group\": {exact: admin}}\n"), "vs.yaml", "m");
        assert_eq!((f.len(), f[0].code, f[0].level), (1, code::NOT_SIMULATED, crate::config::Level::Warning));
    }

    // ------------------------------------------------ query parameters

    #[test]
    fn query_params_match_the_first_value_by_each_kind() {
        let r = req("/p?id=42&mode=dark&id=7&flag");
        assert!(hits("queryParams: {id: {exact: \"42\"}}\n", &r));
        assert!(!hits("queryParams: {id: {exact: \"7\"}}\n", &r), "only the first value counts");
        assert!(hits("queryParams: {id: {regex: \"[0-9]+\"}}\n", &r));
        assert!(hits("queryParams: {mode: {prefix: da}}\n", &r), "Istio translates prefix too");
        assert!(hits("queryParams: {flag: {exact: \"\"}}\n", &r), "a bare key has the empty value");
        assert!(hits("queryParams: {mode: {}}\n", &r), "no kind: present");
        assert!(!hits("queryParams: {absent: {}}\n", &r));
        assert!(!hits("queryParams: {id: {exact: \"42\"}}\n", &req("/p")));
    }

    #[test]
    fn query_values_are_not_percent_decoded() {
        let r = req("/p?q=a%20b");
        assert!(hits("queryParams: {q: {exact: \"a%20b\"}}\n", &r));
        assert!(!hits("queryParams: {q: {exact: \"a b\"}}\n", &r));
    }

    // ------------------------------------------------ source, port, gateways

    #[test]
    fn source_labels_must_be_a_subset_of_the_workload_labels() {
        assert!(hits("sourceLabels: {app: productpage}\n", &req("/")));
        assert!(!hits("sourceLabels: {app: reviews}\n", &req("/")));
        assert!(!hits("sourceLabels: {app: productpage, version: v1}\n", &req("/")));
        assert!(hits("sourceLabels: {version: \"\"}\n", &req("/")), "Go reads a missing label as \"\"");
    }

    #[test]
    fn source_namespace_must_equal_the_workload_namespace() {
        assert!(hits("sourceNamespace: default\n", &req("/")));
        assert!(!hits("sourceNamespace: prod\n", &req("/")));
    }

    #[test]
    fn port_must_equal_the_destination_port() {
        assert!(hits("port: 9080\n", &req("/")));
        assert!(!hits("port: 8080\n", &req("/")));
        assert!(hits("port: 0\n", &req("/")), "0 means any port");
    }

    #[test]
    fn gateways_replace_source_checks_and_sidecars_are_mesh() {
        assert!(hits("gateways: [mesh]\nsourceLabels: {app: other}\n", &req("/")));
        assert!(!hits("gateways: [istio-system/ingress]\n", &req("/")));
    }

    // ------------------------------------------------ AND inside, OR across

    #[test]
    fn conditions_inside_one_entry_all_hold() {
        let m = "uri: {prefix: /api}\nmethod: {exact: GET}\nheaders: {x-v: {exact: \"2\"}}\n";
        assert!(hits(m, &req("/api/x").header("x-v", "2")));
        assert!(!hits(m, &req("/api/x").header("x-v", "1")));
        assert!(!hits(m, &req("/web").header("x-v", "2")));
    }

    #[test]
    fn entries_of_a_route_are_alternatives_and_none_means_all() {
        let entries = [compile("uri: {exact: /a}\n"), compile("headers: {x-b: {}}\n")];
        assert!(route_matches(&entries, &req("/a").input()));
        assert!(route_matches(&entries, &req("/z").header("x-b", "1").input()));
        assert!(!route_matches(&entries, &req("/z").input()));
        assert!(route_matches(&[], &req("/z").input()));
        assert_eq!(compile("name: v2\n").name.as_deref(), Some("v2"));
    }

    #[test]
    fn a_compiled_regex_keeps_its_pattern_as_written() {
        let m = compile("uri: {regex: \"/users/[0-9]+\"}\nheaders: {x-v: {regex: \"v[12]\"}}\n");
        assert!(matches!(&m.path, PathMatch::Regex(r) if r.pattern() == "/users/[0-9]+"), "{:?}", m.path);
        assert!(
            matches!(&m.conds[..], [Cond::Header { matcher: Matcher::Regex(r), .. }] if r.pattern() == "v[12]"),
            "{:?}",
            m.conds
        );
    }

    // ------------------------------------------------ validation

    #[test]
    fn invalid_regex_is_an_error_in_istio_words() {
        let m = messages("uri: {regex: \"(a\"}\n");
        assert_eq!(m.len(), 1);
        assert!(m[0].starts_with("\"uri\": error parsing regexp: "), "{}", m[0]);
        assert!(
            m[0].ends_with("`(a`; Istio uses RE2 style regex-based match (https://github.com/google/re2/wiki/Syntax)")
        );
        assert!(RouteMatch::compile(&parse("uri: {regex: \"(a\"}\n").value).is_err());
        assert_eq!(messages("headers: {x-a: {regex: \"*\"}}\n").len(), 1, "* is not a regex in headers");
    }

    #[test]
    fn a_regex_cannot_break_out_of_its_anchors() {
        assert_eq!(messages("uri: {regex: \"a)|(b\"}\n").len(), 1);
        let m = compile("uri: {regex: \"(?x) /a  # a comment\"}\n");
        assert!(m.matches(&req("/a").input()) && !m.matches(&req("/ab").input()));
    }

    proptest! {
        #[test]
        fn prefix_matching_is_str_starts_with(path in "/[a-zA-Z0-9/._-]{0,12}", prefix in "/[a-zA-Z0-9/._-]{0,4}") {
            let m = RouteMatch::compile(&HttpMatchRequest {
                uri: Some(Spanned::new(StringMatch { prefix: Some(prefix.clone()), ..StringMatch::default() }, serde_saphyr::Location::UNKNOWN, serde_saphyr::Location::UNKNOWN)),
                ..HttpMatchRequest::default()
            }).unwrap();
            let r = Req { target: "", ..req("") };
            let input = MatchInput { path: &path, ..r.input() };
            prop_assert_eq!(m.matches(&input), path.starts_with(&prefix));
        }

        #[test]
        fn an_escaped_regex_fully_matches_only_its_text(text in "[ -~]{0,16}", extra in "[a-z]{1,3}") {
            let re = full_match_regex(&regex::escape(&text)).unwrap();
            prop_assert!(re.is_match(&text));
            let longer = format!("{text}{extra}");
            prop_assert!(!re.is_match(&longer));
        }

        #[test]
        fn without_headers_is_the_negation_of_headers_for_exact(value in "[a-z]{0,3}", want in "[a-z]{0,3}", present: bool) {
            let yes = compile(&format!("headers: {{x-a: {{exact: \"{want}\"}}}}\n"));
            let no = compile(&format!("withoutHeaders: {{x-a: {{exact: \"{want}\"}}}}\n"));
            let mut h = HeaderMap::new();
            if present {
                h.insert("x-a", HeaderValue::from_str(&value).unwrap());
            }
            let r = req("/");
            let input = MatchInput { headers: &h, ..r.input() };
            if present || !want.is_empty() {
                prop_assert_eq!(no.matches(&input), !yes.matches(&input));
            }
        }
    }
}
