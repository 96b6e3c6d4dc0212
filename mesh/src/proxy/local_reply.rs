//! Replies the proxy makes itself, with Envoy's exact status, body and response flag
//! ([Envoy's response flags](https://www.envoyproxy.io/docs/envoy/latest/configuration/observability/access_log/usage#config-access-log-format-response-flags),
//! [local replies](https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/local_reply)).

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;

/// Envoy response flags meshsim produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Flag {
    /// No route configured.
    NoRoute,
    /// No cluster (route points at a missing subset).
    NoCluster,
    /// No healthy upstream host.
    NoHealthyUpstream,
    /// Upstream connection failure.
    UpstreamConnectionFailure,
    /// Upstream connection terminated before the response headers.
    UpstreamConnectionTermination,
    /// Upstream request timeout.
    UpstreamRequestTimeout,
    /// Upstream overflow: a circuit breaker refused the request.
    UpstreamOverflow,
    /// Upstream retry limit exceeded.
    UpstreamRetryLimitExceeded,
    /// The fault filter delayed the request.
    DelayInjected,
    /// The fault filter aborted the request.
    FaultInjected,
    /// The local rate limit answered the request.
    RateLimited,
}

impl Flag {
    /// Every flag (metrics keep a request's flags as a bit set over this list).
    pub const ALL: [Flag; 11] = [
        Flag::NoRoute,
        Flag::NoCluster,
        Flag::NoHealthyUpstream,
        Flag::UpstreamConnectionFailure,
        Flag::UpstreamConnectionTermination,
        Flag::UpstreamRequestTimeout,
        Flag::UpstreamOverflow,
        Flag::UpstreamRetryLimitExceeded,
        Flag::DelayInjected,
        Flag::FaultInjected,
        Flag::RateLimited,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Flag::NoRoute => "NR",
            Flag::NoCluster => "NC",
            Flag::NoHealthyUpstream => "UH",
            Flag::UpstreamConnectionFailure => "UF",
            Flag::UpstreamConnectionTermination => "UC",
            Flag::UpstreamRequestTimeout => "UT",
            Flag::UpstreamOverflow => "UO",
            Flag::UpstreamRetryLimitExceeded => "URX",
            Flag::DelayInjected => "DI",
            Flag::FaultInjected => "FI",
            Flag::RateLimited => "RL",
        }
    }

    /// Envoy's order when it prints several flags.
    fn rank(self) -> u8 {
        match self {
            Flag::NoHealthyUpstream => 0,
            Flag::UpstreamRequestTimeout => 1,
            Flag::UpstreamConnectionFailure => 2,
            Flag::UpstreamConnectionTermination => 3,
            Flag::UpstreamOverflow => 4,
            Flag::NoRoute => 5,
            Flag::DelayInjected => 6,
            Flag::FaultInjected => 7,
            Flag::RateLimited => 8,
            Flag::UpstreamRetryLimitExceeded => 9,
            Flag::NoCluster => 10,
        }
    }
}

/// Flags as an access log prints them: Envoy's order, comma-joined; `-` when none.
pub fn flags_string(flags: &[Flag]) -> std::borrow::Cow<'static, str> {
    match flags {
        [] => return "-".into(),
        [one] => return one.as_str().into(),
        _ => {}
    }
    let mut f = flags.to_vec();
    f.sort_by_key(|f| f.rank());
    f.dedup();
    f.iter().map(|f| f.as_str()).collect::<Vec<_>>().join(",").into()
}

/// Why an upstream connection failed, in Envoy's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectFailure {
    Refused,
    Timeout,
    /// The TLS handshake failed, or the peer refused our certificate.
    Tls(super::tls::TlsFailure),
}

pub const BODY_NO_HEALTHY_UPSTREAM: &str = "no healthy upstream";
pub const BODY_TIMEOUT: &str = "upstream request timeout";

/// How Envoy's reset bodies start (`router.cc`, `onUpstreamAbort`).
const RESET_PREFIX: &str = "upstream connect error or disconnect/reset before headers. ";

/// Envoy words a TLS failure `… reset reason: remote connection failure, transport
/// failure reason: TLS_error:|<BoringSSL code and text>:TLS_error_end`; meshsim puts its
/// failure name where BoringSSL's text would be.
pub fn connect_failure_body(reason: ConnectFailure) -> String {
    let reason = match reason {
        ConnectFailure::Refused => "remote connection failure",
        ConnectFailure::Timeout => "connection timeout",
        ConnectFailure::Tls(t) => {
            return format!(
                "{RESET_PREFIX}reset reason: remote connection failure, transport failure reason: TLS_error: {t}"
            );
        }
    };
    format!("{RESET_PREFIX}reset reason: {reason}")
}

/// A reset body as Envoy words it when the failed try was a retry: `… before headers.
/// retried and the latest reset reason: …`. Other bodies are returned unchanged.
pub fn after_retries(body: &str) -> String {
    match body.strip_prefix(RESET_PREFIX) {
        Some(rest) => format!("{RESET_PREFIX}retried and the latest {rest}"),
        None => body.to_string(),
    }
}

pub const BODY_FAULT_ABORT: &str = "fault filter abort";

pub const BODY_OVERFLOW: &str = "upstream connect error or disconnect/reset before headers. reset reason: overflow";

pub const BODY_CONNECTION_TERMINATION: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: connection termination";

/// A local reply: status + flag + body, with `content-type: text/plain` when non-empty.
pub fn reply(status: StatusCode, body: impl Into<Bytes>, server: &'static str) -> Response<Full<Bytes>> {
    let body = body.into();
    let mut resp = Response::new(Full::new(body.clone()));
    *resp.status_mut() = status;
    if !body.is_empty() {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    resp.headers_mut().insert(http::header::SERVER, HeaderValue::from_static(server));
    resp
}

/// The status and body Envoy answers with for `flag`.
pub fn for_flag(flag: Flag, connect: Option<ConnectFailure>) -> (StatusCode, String) {
    match flag {
        Flag::NoRoute => (StatusCode::NOT_FOUND, String::new()),
        Flag::NoCluster => (StatusCode::SERVICE_UNAVAILABLE, String::new()),
        Flag::NoHealthyUpstream => (StatusCode::SERVICE_UNAVAILABLE, BODY_NO_HEALTHY_UPSTREAM.into()),
        Flag::UpstreamConnectionFailure => {
            (StatusCode::SERVICE_UNAVAILABLE, connect_failure_body(connect.unwrap_or(ConnectFailure::Refused)))
        }
        Flag::UpstreamConnectionTermination => (StatusCode::SERVICE_UNAVAILABLE, BODY_CONNECTION_TERMINATION.into()),
        Flag::UpstreamRequestTimeout => (StatusCode::GATEWAY_TIMEOUT, BODY_TIMEOUT.into()),
        Flag::UpstreamOverflow => (StatusCode::SERVICE_UNAVAILABLE, BODY_OVERFLOW.into()),
        Flag::FaultInjected => (StatusCode::SERVICE_UNAVAILABLE, BODY_FAULT_ABORT.into()),
        Flag::RateLimited => (StatusCode::TOO_MANY_REQUESTS, super::ratelimit::RATE_LIMITED_BODY.into()),
        Flag::DelayInjected | Flag::UpstreamRetryLimitExceeded => {
            unreachable!("{flag:?} decorates another reply; it has no local reply of its own")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_flag_in_declaration_order() {
        for (i, f) in Flag::ALL.iter().enumerate() {
            assert_eq!(*f as usize, i, "{f:?}");
        }
        let strings: std::collections::BTreeSet<&str> = Flag::ALL.iter().map(|f| f.as_str()).collect();
        assert_eq!(strings.len(), Flag::ALL.len(), "no flag twice");
    }

    #[test]
    fn after_retries_names_the_latest_reset_reason() {
        assert_eq!(
            after_retries(&connect_failure_body(ConnectFailure::Refused)),
            "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: remote connection failure"
        );
        assert_eq!(
            after_retries(BODY_CONNECTION_TERMINATION),
            "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: connection termination"
        );
        assert_eq!(after_retries(BODY_TIMEOUT), BODY_TIMEOUT, "not a reset body");
    }
}
