//! Istio's `HTTPRetry` as a VirtualService's YAML writes it, the `retryOn` words Istio
//! accepts, and its webhook validation with Istio's messages.
//!
//! Not here: the translation into Envoy's retry policy and the per-request retry
//! decisions (`proxy::retry`).
//!
//! Sources: Istio's [HTTPRetry reference](https://istio.io/latest/docs/reference/config/networking/virtual-service/#HTTPRetry),
//! `pkg/config/validation` (`validateHTTPRetry`) and Envoy's
//! [`x-envoy-retry-on`](https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/router_filter#x-envoy-retry-on) words.

use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::diag::code;
use super::{Finding, IstioDuration, Pos};

/// `HTTPRoute.retries` as Istio's YAML writes it.
///
/// `attempts` absent reads as 0, as protobuf does: retries disabled.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRetry {
    pub attempts: Option<Spanned<i32>>,
    pub per_try_timeout: Option<Spanned<IstioDuration>>,
    pub retry_on: Option<Spanned<String>>,
    /// Not simulated (meshsim has one locality): `true` is a warning.
    pub retry_remote_localities: Option<Spanned<bool>>,
    /// Absent = true (Envoy's `previous_hosts` predicate).
    pub retry_ignore_previous_hosts: Option<Spanned<bool>>,
    /// Backoff base interval; absent = Envoy's 25ms.
    pub backoff: Option<Spanned<IstioDuration>>,
}

impl HttpRetry {
    pub(crate) fn attempts(&self) -> i32 {
        self.attempts.as_ref().map_or(0, |a| a.value)
    }
    pub(crate) fn retry_on(&self) -> &str {
        self.retry_on.as_ref().map_or("", |r| r.value.as_str())
    }
}

/// Checks `retries` (at field path `at`, e.g. `spec.http[0].retries`) the way Istio's
/// webhook does (`validateHTTPRetry`), with its exact messages; errors are
/// [`code::SCHEMA`]. Also warns about `retryRemoteLocalities: true`, which is not
/// simulated ([`code::NOT_SIMULATED`]).
pub fn validate(retry: &Spanned<HttpRetry>, file: &str, at: &str) -> Vec<Finding> {
    let r = &retry.value;
    let mut out = Vec::new();
    let attempts_pos = r.attempts.as_ref().map_or_else(|| Pos::of(file, retry), |a| Pos::of(file, a));
    if r.attempts() < 0 {
        out.push(Finding::error(
            attempts_pos.clone(),
            code::SCHEMA,
            format!("{at}.attempts"),
            "attempts cannot be negative",
        ));
    }
    // Istio checks these three only; `backoff` and `retryIgnorePreviousHosts` may be set.
    if r.attempts() == 0
        && (r.per_try_timeout.is_some() || !r.retry_on().is_empty() || r.retry_remote_localities.is_some())
    {
        out.push(Finding::error(
            attempts_pos,
            code::SCHEMA,
            format!("{at}.attempts"),
            "http retry policy configured when attempts are set to 0 (disabled)",
        ));
    }
    if let Some(d) = &r.per_try_timeout {
        check_duration(file, &format!("{at}.perTryTimeout"), d, &mut out);
    }
    if let Some(on) = &r.retry_on
        && !on.value.is_empty()
    {
        // Istio splits without trimming: `5xx, reset` has the invalid policy " reset".
        for policy in on.value.split(',') {
            if status_code(policy).is_none() && Condition::parse(policy).is_none() {
                out.push(Finding::error(
                    Pos::of(file, on),
                    code::SCHEMA,
                    format!("{at}.retryOn"),
                    format!("{policy:?} is not a valid retryOn policy"),
                ));
            }
        }
    }
    if let Some(d) = &r.backoff {
        check_duration(file, &format!("{at}.backoff"), d, &mut out);
    }
    if let Some(v) = &r.retry_remote_localities
        && v.value
    {
        let field = format!("{at}.retryRemoteLocalities");
        out.push(Finding::warning(
            Pos::of(file, v),
            code::NOT_SIMULATED,
            field.clone(),
            format!("`{field}` is an Istio field meshsim does not simulate yet: it is ignored"),
        ));
    }
    out
}

/// Istio's `agent.ValidateDuration`.
fn check_duration(file: &str, field: &str, d: &Spanned<IstioDuration>, out: &mut Vec<Finding>) {
    let v = d.value.0;
    let message = if v < Duration::from_millis(1) {
        "duration must be greater than 1ms"
    } else if !v.subsec_nanos().is_multiple_of(1_000_000) {
        "only durations to ms precision are supported"
    } else {
        return;
    };
    out.push(Finding::error(Pos::of(file, d), code::SCHEMA, field, message));
}

/// The status code `token` is for Istio: Go's `strconv.Atoi` accepts it and
/// `http.StatusText` knows the code (so `599` and `306` are not codes).
pub(crate) fn status_code(token: &str) -> Option<u16> {
    let code = u16::try_from(token.parse::<i64>().ok()?).ok()?;
    GO_STATUS_CODES.contains(&code).then_some(code)
}

/// The codes Go's `net/http.StatusText` names.
const GO_STATUS_CODES: [u16; 62] = [
    100, 101, 102, 103, 200, 201, 202, 203, 204, 205, 206, 207, 208, 226, 300, 301, 302, 303, 304, 305, 307, 308, 400,
    401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417, 418, 421, 422, 423, 424, 425,
    426, 428, 429, 431, 451, 500, 501, 502, 503, 504, 505, 506, 507, 508, 510, 511,
];

/// One `retryOn` condition (Envoy's `x-envoy-retry-on` and `x-envoy-retry-grpc-on` words,
/// the list Istio's webhook accepts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Condition {
    /// `5xx`: any 5xx response, and every reset (connect failure, reset, per-try timeout).
    FiveXx,
    /// `gateway-error`: 502, 503, 504 responses, and every reset, as `5xx`.
    GatewayError,
    /// `reset`: every reset (connect failure, reset, refused stream, per-try timeout).
    Reset,
    /// `reset-before-request`: a reset before any request byte went upstream.
    ResetBeforeRequest,
    /// `connect-failure`: the connection could not be made (refused or timed out).
    ConnectFailure,
    /// `retriable-4xx`: 409 responses.
    Retriable4xx,
    /// `refused-stream`: the upstream refused the stream (HTTP/2 REFUSED_STREAM).
    RefusedStream,
    /// `retriable-status-codes`: responses whose status is in the policy's list.
    RetriableStatusCodes,
    /// `retriable-headers`: Istio cannot configure the header list, so never matches.
    RetriableHeaders,
    /// `envoy-ratelimited`: responses carrying `x-envoy-ratelimited`.
    EnvoyRateLimited,
    /// `http3-post-connect-failure`: meshsim speaks no HTTP/3, so never matches.
    Http3PostConnectFailure,
    /// gRPC `cancelled` (grpc-status 1 in the response headers).
    Cancelled,
    /// gRPC `deadline-exceeded` (4).
    DeadlineExceeded,
    /// gRPC `internal` (13).
    Internal,
    /// gRPC `resource-exhausted` (8).
    ResourceExhausted,
    /// gRPC `unavailable` (14).
    Unavailable,
}

impl Condition {
    pub const ALL: [Condition; 16] = [
        Condition::FiveXx,
        Condition::GatewayError,
        Condition::Reset,
        Condition::ResetBeforeRequest,
        Condition::ConnectFailure,
        Condition::Retriable4xx,
        Condition::RefusedStream,
        Condition::RetriableStatusCodes,
        Condition::RetriableHeaders,
        Condition::EnvoyRateLimited,
        Condition::Http3PostConnectFailure,
        Condition::Cancelled,
        Condition::DeadlineExceeded,
        Condition::Internal,
        Condition::ResourceExhausted,
        Condition::Unavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Condition::FiveXx => "5xx",
            Condition::GatewayError => "gateway-error",
            Condition::Reset => "reset",
            Condition::ResetBeforeRequest => "reset-before-request",
            Condition::ConnectFailure => "connect-failure",
            Condition::Retriable4xx => "retriable-4xx",
            Condition::RefusedStream => "refused-stream",
            Condition::RetriableStatusCodes => "retriable-status-codes",
            Condition::RetriableHeaders => "retriable-headers",
            Condition::EnvoyRateLimited => "envoy-ratelimited",
            Condition::Http3PostConnectFailure => "http3-post-connect-failure",
            Condition::Cancelled => "cancelled",
            Condition::DeadlineExceeded => "deadline-exceeded",
            Condition::Internal => "internal",
            Condition::ResourceExhausted => "resource-exhausted",
            Condition::Unavailable => "unavailable",
        }
    }

    /// The condition spelled exactly `token` (case-sensitive, no trimming).
    pub fn parse(token: &str) -> Option<Condition> {
        Condition::ALL.into_iter().find(|c| c.as_str() == token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Spanned<HttpRetry> {
        serde_saphyr::from_str(yaml).expect("valid HttpRetry YAML")
    }

    fn messages(yaml: &str) -> Vec<String> {
        validate(&parse(yaml), "vs.yaml", "spec.http[0].retries").into_iter().map(|f| f.message).collect()
    }

    #[test]
    fn parses_istio_yaml_with_positions() {
        let r = parse("attempts: 3\nperTryTimeout: 2s\nretryOn: 5xx,reset\nbackoff: 50ms\n");
        assert_eq!(r.value.attempts.as_ref().unwrap().value, 3);
        assert_eq!(r.value.per_try_timeout.as_ref().unwrap().value.0, Duration::from_secs(2));
        assert_eq!(r.value.retry_on.as_ref().unwrap().referenced.line(), 3);
    }

    #[test]
    fn unknown_field_is_a_parse_error() {
        assert!(serde_saphyr::from_str::<HttpRetry>("attempts: 2\nretries: 3\n").is_err());
    }

    #[test]
    fn negative_attempts_parse_then_fail_validation() {
        assert_eq!(messages("attempts: -1\n"), ["attempts cannot be negative"]);
    }

    #[test]
    fn zero_attempts_with_other_fields_is_an_error() {
        let msg = "http retry policy configured when attempts are set to 0 (disabled)";
        assert_eq!(messages("attempts: 0\nretryOn: 5xx\n"), [msg]);
        assert_eq!(messages("perTryTimeout: 1s\n"), [msg], "absent attempts reads as 0");
        assert_eq!(messages("attempts: 0\nretryRemoteLocalities: false\n"), [msg]);
        assert!(messages("attempts: 0\n").is_empty());
        assert!(messages("attempts: 0\nbackoff: 10ms\nretryIgnorePreviousHosts: false\n").is_empty());
    }

    #[test]
    fn unknown_retry_on_words_are_errors_with_istio_wording() {
        assert_eq!(messages("attempts: 1\nretryOn: 5xx,foo\n"), [r#""foo" is not a valid retryOn policy"#]);
        assert_eq!(messages("attempts: 1\nretryOn: 5xx, reset\n"), [r#"" reset" is not a valid retryOn policy"#]);
        assert_eq!(messages("attempts: 1\nretryOn: 599\n"), [r#""599" is not a valid retryOn policy"#]);
        assert_eq!(messages("attempts: 1\nretryOn: \"5xx,\"\n"), [r#""" is not a valid retryOn policy"#]);
    }

    #[test]
    fn every_documented_word_and_status_codes_are_valid() {
        for c in Condition::ALL {
            assert!(messages(&format!("attempts: 1\nretryOn: {}\n", c.as_str())).is_empty(), "{c:?}");
        }
        assert!(messages("attempts: 1\nretryOn: 503,409,425,418\n").is_empty());
    }

    #[test]
    fn durations_under_1ms_or_finer_than_ms_are_errors() {
        assert_eq!(messages("attempts: 1\nperTryTimeout: 500us\n"), ["duration must be greater than 1ms"]);
        assert_eq!(messages("attempts: 1\nbackoff: 0s\n"), ["duration must be greater than 1ms"]);
        assert_eq!(messages("attempts: 1\nbackoff: 1500us\n"), ["only durations to ms precision are supported"]);
        assert!(messages("attempts: 1\nbackoff: 1ms\nperTryTimeout: 1s\n").is_empty());
    }

    #[test]
    fn findings_name_the_field_and_line() {
        let f = validate(&parse("attempts: 2\nretryOn: bogus\n"), "vs.yaml", "spec.http[0].retries");
        assert_eq!(f.len(), 1);
        assert_eq!((f[0].field.as_str(), f[0].pos.line), ("spec.http[0].retries.retryOn", 2));
        assert_eq!(f[0].code, code::SCHEMA);
    }

    #[test]
    fn retry_remote_localities_true_is_a_not_simulated_warning() {
        let f = validate(&parse("attempts: 2\nretryRemoteLocalities: true\n"), "vs.yaml", "r");
        assert_eq!(f.len(), 1);
        assert_eq!((f[0].level, f[0].code), (crate::config::Level::Warning, code::NOT_SIMULATED));
        assert!(validate(&parse("attempts: 2\nretryRemoteLocalities: false\n"), "vs.yaml", "r").is_empty());
    }
}
