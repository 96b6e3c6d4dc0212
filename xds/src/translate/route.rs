//! The outbound route configuration: one virtual host per HTTP service (`fqdn:port`,
//! with the domains Istio generates for this proxy's namespace), its routes in order,
//! one Envoy route per match entry, with the match, the action (cluster, weighted
//! clusters, redirect, direct response), timeout, retries, header edits, rewrite,
//! mirror, consistent-hash policy and per-route fault.
//!
//! Sources: Istio `pilot/pkg/networking/core/route/route.go` (`BuildSidecarVirtualHostWrapper`,
//! `TranslateRoute`, `TranslateRouteMatch`, `translateHeaderMatch`, `translateFault`,
//! `generateVirtualHostDomains`), `route/retry/retry.go` (`ConvertPolicy`); Envoy's
//! [route components](https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto).
//!
//! Where meshsim's sidecar and Istio differ, this follows meshsim's sidecar: a route's
//! Envoy name is the meshsim route's name (Istio appends a match entry's name); a single
//! destination with its own header operations becomes a one-entry `weighted_clusters`,
//! so its edits run before the route's as meshsim runs them.
//!
//! Not here: the clusters routed to (`cluster`).

use std::time::Duration;

use mesh::proxy::hash::HashPolicy;
use mesh::proxy::headers::HeaderOps;
use mesh::proxy::retry::{DEFAULT_BACKOFF_BASE, RetryPolicy};
use mesh::proxy::route_match::{Cond, MESH_GATEWAY, Matcher, PathMatch, RouteMatch};
use mesh::snapshot::{Action, Route, Snapshot, WeightedCluster};

use crate::pb::envoy::config::core::v3 as core;
use crate::pb::envoy::config::route::v3 as rt;
use crate::pb::envoy::extensions::filters::common::fault::v3::{FaultDelay, fault_delay};
use crate::pb::envoy::extensions::filters::http::fault::v3::{FaultAbort, HttpFault, fault_abort};
use crate::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use crate::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher, string_matcher};
use crate::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent};

use super::listener::FAULT_FILTER;
use super::{OUTBOUND_ROUTE_CONFIG, Placement, duration};

/// Istio's `DefaultMaxDirectResponseBodySizeBytes` (Envoy's default is 4 KiB).
const MAX_DIRECT_RESPONSE_BODY_BYTES: u32 = 1024 * 1024;
/// Istio's `HostSelectionRetryMaxAttempts`.
const HOST_SELECTION_RETRY_MAX_ATTEMPTS: i64 = 5;
const PREVIOUS_HOSTS: &str = "envoy.retry_host_predicates.previous_hosts";
const DOMAIN_SUFFIX: &str = "svc.cluster.local";

/// The `outbound` route configuration of the proxy at `p`.
pub(super) fn outbound(snapshot: &Snapshot, p: &Placement, untranslated: &mut Vec<String>) -> rt::RouteConfiguration {
    let mut virtual_hosts = Vec::new();
    for (fqdn, routes) in &snapshot.routes {
        if snapshot.tcp_services.contains(fqdn) {
            continue;
        }
        let Some(&port) = snapshot.ports.get(fqdn) else {
            untranslated.push(format!("routes of {fqdn}: the snapshot has no port for it, so no virtual host"));
            continue;
        };
        let routes = routes.iter().flat_map(|r| translate_route(snapshot, r, port, p, untranslated)).collect();
        virtual_hosts.push(rt::VirtualHost {
            name: format!("{fqdn}:{port}"),
            domains: domains(fqdn, port, &p.namespace),
            routes,
            // Istio sets it: each try carries `x-envoy-attempt-count`, as meshsim's do.
            include_request_attempt_count: true,
            ..Default::default()
        });
    }
    rt::RouteConfiguration {
        name: OUTBOUND_ROUTE_CONFIG.to_string(),
        virtual_hosts,
        // Routes may name clusters that do not exist (a missing subset): Envoy answers
        // them 503 NC instead of rejecting the configuration, as under Istio.
        validate_clusters: super::boolv(false),
        max_direct_response_body_size_bytes: super::u32v(MAX_DIRECT_RESPONSE_BODY_BYTES),
        // One listener serves every service port here (Istio has one per port): meshsim's
        // sidecar picks the service by the host alone, whatever port `Host` names.
        ignore_port_in_host_matching: true,
        ..Default::default()
    }
}

/// Istio's `generateVirtualHostDomains` for a Kubernetes service seen from `namespace`:
/// the FQDN, and its shorter forms the namespace's DNS search path resolves (the bare
/// name only from the service's own namespace), each also with `:port`.
pub(super) fn domains(fqdn: &str, port: u16, namespace: &str) -> Vec<String> {
    let mut names = vec![fqdn.to_string()];
    if let Some(name_ns) = fqdn.strip_suffix(&format!(".{DOMAIN_SUFFIX}"))
        && let Some((name, ns)) = name_ns.split_once('.')
    {
        if ns == namespace {
            names.push(name.to_string());
        }
        names.push(name_ns.to_string());
        names.push(format!("{name_ns}.svc"));
    }
    names.iter().flat_map(|n| [n.clone(), format!("{n}:{port}")]).collect()
}

/// One meshsim route as Envoy routes: one per match entry that applies to this proxy
/// (Istio drops entries for other ports, other source workloads and other gateways at
/// build time), or one matching everything. A route whose every entry is dropped has
/// none.
fn translate_route(
    snapshot: &Snapshot,
    r: &Route,
    port: u16,
    p: &Placement,
    untranslated: &mut Vec<String>,
) -> Vec<rt::Route> {
    let Some(action) = action(snapshot, r, untranslated) else { return Vec::new() };
    let template = rt::Route {
        name: r.name.clone(),
        action: Some(action),
        request_headers_to_add: header_values(&r.request_headers),
        request_headers_to_remove: removed(&r.request_headers),
        response_headers_to_add: header_values(&r.response_headers),
        response_headers_to_remove: removed(&r.response_headers),
        typed_per_filter_config: r
            .fault
            .as_ref()
            .map(|f| (FAULT_FILTER.to_string(), crate::any(&fault(f))))
            .into_iter()
            .collect(),
        ..Default::default()
    };
    let matches: Vec<rt::RouteMatch> = if r.matches.is_empty() {
        vec![prefix_match("/")]
    } else {
        r.matches.iter().filter_map(|m| route_match(m, port, p)).collect()
    };
    matches.into_iter().map(|m| rt::Route { r#match: Some(m), ..template.clone() }).collect()
}

fn prefix_match(prefix: &str) -> rt::RouteMatch {
    rt::RouteMatch {
        path_specifier: Some(rt::route_match::PathSpecifier::Prefix(prefix.to_string())),
        ..Default::default()
    }
}

/// Istio's `TranslateRouteMatch`, or `None` when the entry cannot match for this proxy
/// (its port, source labels, source namespace or gateways are not this proxy's; or it
/// asks for a JWT claim, which no request has here).
fn route_match(m: &RouteMatch, port: u16, p: &Placement) -> Option<rt::RouteMatch> {
    let applies = if m.gateways.is_empty() {
        m.source_labels.iter().all(|(k, v)| p.labels.get(k).map_or("", String::as_str) == v)
            && m.source_namespace.as_deref().is_none_or(|ns| ns == p.namespace)
    } else {
        m.gateways.iter().any(|g| g == MESH_GATEWAY)
    };
    if !applies || m.port.is_some_and(|mp| mp != u32::from(port)) {
        return None;
    }
    let path_specifier = match &m.path {
        PathMatch::Exact(e) => rt::route_match::PathSpecifier::Path(e.clone()),
        PathMatch::Prefix(x) => rt::route_match::PathSpecifier::Prefix(x.clone()),
        PathMatch::Regex(re) => rt::route_match::PathSpecifier::SafeRegex(regex(re.pattern())),
    };
    let mut headers = Vec::new();
    for c in &m.conds {
        match c {
            // No request carries a claim: the inverted condition always holds, the other never.
            Cond::Claim { invert: true } => {}
            Cond::Claim { invert: false } => return None,
            Cond::Header { name, matcher, invert, missing_as_empty } => headers.push(rt::HeaderMatcher {
                name: name.clone(),
                header_match_specifier: Some(match string_match(matcher) {
                    Some(sm) => rt::header_matcher::HeaderMatchSpecifier::StringMatch(sm),
                    None => rt::header_matcher::HeaderMatchSpecifier::PresentMatch(true),
                }),
                invert_match: *invert,
                treat_missing_header_as_empty: *missing_as_empty,
            }),
        }
    }
    let query_parameters = m
        .query_params
        .iter()
        .map(|(name, matcher)| rt::QueryParameterMatcher {
            name: name.clone(),
            query_parameter_match_specifier: Some(match string_match(matcher) {
                Some(sm) => rt::query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(sm),
                None => rt::query_parameter_matcher::QueryParameterMatchSpecifier::PresentMatch(true),
            }),
        })
        .collect();
    Some(rt::RouteMatch {
        path_specifier: Some(path_specifier),
        case_sensitive: if m.ignore_uri_case { super::boolv(false) } else { None },
        headers,
        query_parameters,
        ..Default::default()
    })
}

/// The pattern as the VirtualService wrote it: meshsim anchors it (`^(?:…)$`) for a
/// full match, which Envoy's `safe_regex` always is.
fn regex(s: &str) -> RegexMatcher {
    let raw = s.strip_prefix("^(?:").and_then(|r| r.strip_suffix("\n)$").or_else(|| r.strip_suffix(")$"))).unwrap_or(s);
    RegexMatcher { regex: raw.to_string(), ..Default::default() }
}

/// A value matcher as Envoy's `StringMatcher`; `None` for a presence check.
fn string_match(m: &Matcher) -> Option<StringMatcher> {
    let pattern = match m {
        Matcher::Present => return None,
        Matcher::Exact(e) => string_matcher::MatchPattern::Exact(e.clone()),
        Matcher::Prefix(x) => string_matcher::MatchPattern::Prefix(x.clone()),
        Matcher::Regex(re) => string_matcher::MatchPattern::SafeRegex(regex(re.pattern())),
    };
    Some(StringMatcher { match_pattern: Some(pattern), ignore_case: false })
}

/// The route's action; `None` (and a note) when it has no destination left.
fn action(snapshot: &Snapshot, r: &Route, untranslated: &mut Vec<String>) -> Option<rt::route::Action> {
    match &r.action {
        Action::Redirect(rd) => Some(rt::route::Action::Redirect(rt::RedirectAction {
            host_redirect: rd.authority.clone().unwrap_or_default(),
            port_redirect: rd.port.unwrap_or(0),
            path_rewrite_specifier: rd.uri.clone().map(rt::redirect_action::PathRewriteSpecifier::PathRedirect),
            scheme_rewrite_specifier: rd
                .scheme
                .clone()
                .map(rt::redirect_action::SchemeRewriteSpecifier::SchemeRedirect),
            response_code: redirect_code(rd.code) as i32,
            ..Default::default()
        })),
        Action::Direct { status, body } => Some(rt::route::Action::DirectResponse(rt::DirectResponseAction {
            status: u32::from(*status),
            body: (!body.is_empty()).then(|| core::DataSource {
                specifier: Some(core::data_source::Specifier::InlineString(body.clone())),
                ..Default::default()
            }),
            ..Default::default()
        })),
        Action::Forward(clusters) if clusters.is_empty() => {
            untranslated.push(format!(
                "route {}: it forwards to no destination (every one was invalid or weighed 0), so it is left out",
                r.name
            ));
            None
        }
        Action::Forward(clusters) => Some(rt::route::Action::Route(route_action(snapshot, r, clusters, untranslated))),
    }
}

fn redirect_code(code: u16) -> rt::redirect_action::RedirectResponseCode {
    use rt::redirect_action::RedirectResponseCode as C;
    match code {
        302 => C::Found,
        303 => C::SeeOther,
        307 => C::TemporaryRedirect,
        308 => C::PermanentRedirect,
        _ => C::MovedPermanently,
    }
}

fn route_action(
    snapshot: &Snapshot,
    r: &Route,
    clusters: &[WeightedCluster],
    untranslated: &mut Vec<String>,
) -> rt::RouteAction {
    let cluster_specifier = match clusters {
        [one] if one.request_headers.is_empty() && one.response_headers.is_empty() => {
            rt::route_action::ClusterSpecifier::Cluster(one.cluster.clone())
        }
        _ => rt::route_action::ClusterSpecifier::WeightedClusters(rt::WeightedCluster {
            clusters: clusters
                .iter()
                .map(|c| rt::weighted_cluster::ClusterWeight {
                    name: c.cluster.clone(),
                    weight: super::u32v(c.weight),
                    request_headers_to_add: header_values(&c.request_headers),
                    request_headers_to_remove: removed(&c.request_headers),
                    response_headers_to_add: header_values(&c.response_headers),
                    response_headers_to_remove: removed(&c.response_headers),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
    };
    let rewrite = r.rewrite.as_ref();
    rt::RouteAction {
        cluster_specifier: Some(cluster_specifier),
        // No timeout is Istio's explicit 0s (Envoy's own default is 15s).
        timeout: Some(duration(r.timeout.unwrap_or(Duration::ZERO))),
        retry_policy: r.retry.as_ref().map(retry_policy),
        prefix_rewrite: rewrite.and_then(|rw| rw.uri.clone()).unwrap_or_default(),
        host_rewrite_specifier: rewrite
            .and_then(|rw| rw.authority.clone())
            .map(rt::route_action::HostRewriteSpecifier::HostRewriteLiteral),
        request_mirror_policies: r
            .mirror
            .iter()
            .map(|m| rt::route_action::RequestMirrorPolicy {
                cluster: m.cluster.clone(),
                runtime_fraction: Some(core::RuntimeFractionalPercent {
                    default_value: Some(per_million(m.per_million)),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
        hash_policy: hash_policy(snapshot, r, clusters, untranslated),
        ..Default::default()
    }
}

/// The consistent-hash policy of the route's destinations (a route has one: Envoy's
/// `hash_policy` is per route, Istio takes it from the destinations' DestinationRules).
fn hash_policy(
    snapshot: &Snapshot,
    r: &Route,
    clusters: &[WeightedCluster],
    untranslated: &mut Vec<String>,
) -> Vec<rt::route_action::HashPolicy> {
    let mut policies: Vec<&HashPolicy> = clusters
        .iter()
        .filter_map(|c| snapshot.clusters.get(&c.cluster))
        .filter_map(|c| c.hash.as_ref().map(|h| &h.policy))
        .collect();
    policies.dedup();
    if policies.len() > 1 {
        untranslated.push(format!(
            "route {}: its destinations hash on different request properties, but an Envoy route has one hash policy: it hashes on the first",
            r.name
        ));
    }
    let Some(policy) = policies.first() else { return Vec::new() };
    use rt::route_action::hash_policy as hp;
    let specifier = match policy {
        HashPolicy::Header(name) => {
            hp::PolicySpecifier::Header(hp::Header { header_name: name.as_str().to_string(), ..Default::default() })
        }
        HashPolicy::Cookie { name, path, ttl } => hp::PolicySpecifier::Cookie(hp::Cookie {
            name: name.clone(),
            path: path.clone(),
            ttl: ttl.map(duration),
            ..Default::default()
        }),
        HashPolicy::SourceIp => hp::PolicySpecifier::ConnectionProperties(hp::ConnectionProperties { source_ip: true }),
        HashPolicy::QueryParameter(q) => hp::PolicySpecifier::QueryParameter(hp::QueryParameter { name: q.clone() }),
    };
    vec![rt::route_action::HashPolicy { policy_specifier: Some(specifier), terminal: false }]
}

/// Istio's `ConvertPolicy` output, from meshsim's policy (which already merged Istio's
/// defaults).
pub(super) fn retry_policy(rp: &RetryPolicy) -> rt::RetryPolicy {
    let retry_on: Vec<&str> = rp.retry_on.iter().map(|c| c.as_str()).collect();
    rt::RetryPolicy {
        retry_on: retry_on.join(","),
        num_retries: super::u32v(rp.num_retries),
        per_try_timeout: rp.per_try_timeout.map(duration),
        retry_host_predicate: if rp.retry_ignore_previous_hosts {
            vec![rt::retry_policy::RetryHostPredicate {
                name: PREVIOUS_HOSTS.to_string(),
                config_type: Some(rt::retry_policy::retry_host_predicate::ConfigType::TypedConfig(crate::any(
                    &PreviousHostsPredicate::default(),
                ))),
            }]
        } else {
            Vec::new()
        },
        host_selection_retry_max_attempts: HOST_SELECTION_RETRY_MAX_ATTEMPTS,
        retriable_status_codes: rp.retriable_status_codes.iter().map(|&c| u32::from(c)).collect(),
        retry_back_off: (rp.backoff_base != DEFAULT_BACKOFF_BASE).then(|| rt::retry_policy::RetryBackOff {
            base_interval: Some(duration(rp.backoff_base)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn per_million(ppm: u32) -> FractionalPercent {
    FractionalPercent { numerator: ppm, denominator: fractional_percent::DenominatorType::Million as i32 }
}

/// Istio's `translateFault`: a fixed delay and an HTTP abort, each with its share.
fn fault(f: &mesh::proxy::fault::FaultPolicy) -> HttpFault {
    HttpFault {
        delay: f.delay.map(|(d, ppm)| FaultDelay {
            fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(duration(d))),
            percentage: Some(per_million(ppm)),
        }),
        abort: f.abort.map(|(status, ppm)| FaultAbort {
            error_type: Some(fault_abort::ErrorType::HttpStatus(u32::from(status))),
            percentage: Some(per_million(ppm)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `set`s (overwriting) and `add`s (appending), as Istio writes them. Envoy applies one
/// level's overwrites before its appends (`HeaderParser::evaluateHeaders`), and so does
/// meshsim's sidecar: an `add` and a `set` of one header leave both values.
fn header_values(ops: &HeaderOps) -> Vec<core::HeaderValueOption> {
    use core::header_value_option::HeaderAppendAction as A;
    let one = |name: &str, value: &[u8], action: A| core::HeaderValueOption {
        header: Some(core::HeaderValue {
            key: name.to_string(),
            value: String::from_utf8_lossy(value).into_owned(),
            ..Default::default()
        }),
        append_action: action as i32,
        ..Default::default()
    };
    let sets = ops.set.iter().map(|(n, v)| one(n.as_str(), v.as_bytes(), A::OverwriteIfExistsOrAdd));
    sets.chain(ops.add.iter().map(|(n, v)| one(n.as_str(), v.as_bytes(), A::AppendIfExistsOrAdd))).collect()
}

fn removed(ops: &HeaderOps) -> Vec<String> {
    ops.remove.iter().map(|n| n.as_str().to_string()).collect()
}
