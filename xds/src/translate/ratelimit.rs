//! The inbound local rate limit an EnvoyFilter installs, as Envoy's
//! `envoy.filters.http.local_ratelimit` on the inbound connection manager after RBAC:
//! one token bucket for the proxy, its enabled and enforced shares, its status and
//! response headers.
//!
//! The filter selected is the first of the snapshot's EnvoyFilter rate limits whose
//! namespace (or the root namespace) and selector match this pod, as meshsim's scenario
//! loader picks it; meshsim runs one per proxy, so any further one is noted untranslated.
//!
//! Sources: [Istio: local rate limiting](https://istio.io/latest/docs/tasks/policy-enforcement/rate-limit/#local-rate-limit);
//! Envoy's [local rate limit filter](https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/local_rate_limit_filter).

use mesh::config::ratelimit::{Denominator, FractionalPercent as MeshFraction, LocalRateLimitConfig, error_status};
use mesh::snapshot::Snapshot;

use crate::pb::envoy::config::core::v3 as core;
use crate::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use crate::pb::envoy::r#type::v3::{FractionalPercent, HttpStatus, TokenBucket, fractional_percent};

use super::{Placement, duration};

pub(super) const LOCAL_RATE_LIMIT_FILTER: &str = "envoy.filters.http.local_ratelimit";

/// The rate limit of the pod at `p`, if an EnvoyFilter selects it.
pub(super) fn inbound(snapshot: &Snapshot, p: &Placement, untranslated: &mut Vec<String>) -> Option<LocalRateLimit> {
    let mut selected = snapshot.inbound_rate_limits_for(&p.namespace, &p.labels);
    let Some(first) = selected.next() else {
        return p.rate_limit.as_ref().map(local_rate_limit);
    };
    for other in selected {
        untranslated.push(format!(
            "{}: it selects pod {} too, but {} already rate-limits it and meshsim runs one local rate limit per proxy",
            other.resource, p.pod, first.resource
        ));
    }
    Some(local_rate_limit(&first.filter.config))
}

fn fraction(f: MeshFraction) -> core::RuntimeFractionalPercent {
    let denominator = match f.denominator {
        Denominator::Hundred => fractional_percent::DenominatorType::Hundred,
        Denominator::TenThousand => fractional_percent::DenominatorType::TenThousand,
        Denominator::Million => fractional_percent::DenominatorType::Million,
    };
    core::RuntimeFractionalPercent {
        default_value: Some(FractionalPercent { numerator: f.numerator, denominator: denominator as i32 }),
        runtime_key: String::new(),
    }
}

fn local_rate_limit(c: &LocalRateLimitConfig) -> LocalRateLimit {
    let status = error_status(c.status).map_or(429, |s| i32::from(s.as_u16()));
    LocalRateLimit {
        stat_prefix: "http_local_rate_limiter".to_string(),
        status: Some(HttpStatus { code: status }),
        token_bucket: Some(TokenBucket {
            max_tokens: c.max_tokens,
            tokens_per_fill: c.tokens_per_fill.and_then(super::u32v),
            fill_interval: Some(duration(c.fill_interval)),
        }),
        filter_enabled: Some(fraction(c.filter_enabled)),
        filter_enforced: Some(fraction(c.filter_enforced)),
        response_headers_to_add: c
            .response_headers_to_add
            .iter()
            .map(|(k, v)| core::HeaderValueOption {
                header: Some(core::HeaderValue {
                    key: k.as_str().to_string(),
                    value: String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    ..Default::default()
                }),
                append_action: core::header_value_option::HeaderAppendAction::AppendIfExistsOrAdd as i32,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}
