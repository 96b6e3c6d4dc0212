//! Retries: the translation of Istio's `HTTPRetry` (its model and webhook validation are
//! `config::retry`) into Envoy's route retry policy, and Envoy's per-request retry
//! decisions (which outcome is retried, jittered backoff, which hosts
//! to avoid, when retries ran out).
//!
//! Pure: no I/O, no clock, randomness only from the RNG passed in. This module does not
//! own sending attempts, timers (per-try timeout, backoff sleep, the route timeout that
//! bounds every try and backoff), host picking (the caller's balancer; [`RetryState`]
//! only says which picks to reject), outlier detection, or the retry circuit breaker
//! (`connectionPool.http.maxRetries` / `retryBudget`: the cluster's pool grants each
//! retry, see `pool::Pool::try_retry`).
//!
//! Sources: Istio `pilot/pkg/networking/core/route/retry/retry.go` (`ConvertPolicy`,
//! `parseRetryOn`); Envoy
//! `source/common/router/retry_state_impl.cc` (`wouldRetryFromHeaders`,
//! `wouldRetryFromReset`, `shouldRetry`), `router.cc` (`maybeRetryReset`,
//! `onPerTryTimeoutCommon`) and `upstream/load_balancer_impl.cc` (`chooseHost`).

use std::collections::BTreeSet;
use std::time::Duration;

use http::HeaderMap;
use rand::RngCore;

use crate::config::retry::{Condition, HttpRetry, status_code};

impl Condition {
    /// The gRPC status code this condition retries, if it is a gRPC condition.
    fn grpc_status(self) -> Option<u32> {
        match self {
            Condition::Cancelled => Some(1),
            Condition::DeadlineExceeded => Some(4),
            Condition::ResourceExhausted => Some(8),
            Condition::Internal => Some(13),
            Condition::Unavailable => Some(14),
            _ => None,
        }
    }
}

/// Istio's default `retryOn` (no status codes: 503 is not retried).
pub const DEFAULT_RETRY_ON: &str = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";
/// Istio's default number of retries (3 tries in all).
pub const DEFAULT_NUM_RETRIES: u32 = 2;
/// Envoy's default backoff base interval.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(25);
/// Istio's `HostSelectionRetryMaxAttempts`: re-picks allowed when a pick hits a tried host.
pub const HOST_SELECTION_RETRY_MAX_ATTEMPTS: u32 = 5;
/// Envoy caps a backoff at this many base intervals (its default `max_interval`).
pub const BACKOFF_CAP_FACTOR: u64 = 10;

/// A route's retry policy, as Envoy runs it after Istio's translation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first try.
    pub num_retries: u32,
    pub retry_on: BTreeSet<Condition>,
    /// Used by [`Condition::RetriableStatusCodes`].
    pub retriable_status_codes: BTreeSet<u16>,
    /// `None` = each try may run until the route timeout.
    pub per_try_timeout: Option<Duration>,
    pub backoff_base: Duration,
    /// Envoy's `previous_hosts` predicate: a retry avoids hosts already tried.
    pub retry_ignore_previous_hosts: bool,
    pub host_selection_retry_max_attempts: u32,
}

impl Default for RetryPolicy {
    /// The mesh default (Istio's `DefaultPolicy`): applies to routes without `retries`
    /// and to services without a VirtualService.
    fn default() -> RetryPolicy {
        let (retry_on, retriable_status_codes) = parse_retry_on(DEFAULT_RETRY_ON);
        RetryPolicy {
            num_retries: DEFAULT_NUM_RETRIES,
            retry_on,
            retriable_status_codes,
            per_try_timeout: None,
            backoff_base: DEFAULT_BACKOFF_BASE,
            retry_ignore_previous_hosts: true,
            host_selection_retry_max_attempts: HOST_SELECTION_RETRY_MAX_ATTEMPTS,
        }
    }
}

impl RetryPolicy {
    /// Istio's `ConvertPolicy`: no `retries` ⇒ the mesh default; `attempts` ≤ 0 ⇒ `None`
    /// (retries disabled); else the default overridden field by field. `consistent_hash`:
    /// the destination's DestinationRule hashes, so the default does not avoid previous
    /// hosts (an explicit `retryIgnorePreviousHosts` still wins). Total: invalid input
    /// (reported by `config::retry::validate`) is translated as Istio would, unknown words dropped as
    /// Envoy drops them.
    pub fn from_istio(retry: Option<&HttpRetry>, consistent_hash: bool) -> Option<RetryPolicy> {
        let mut out = RetryPolicy { retry_ignore_previous_hosts: !consistent_hash, ..RetryPolicy::default() };
        let Some(r) = retry else {
            return Some(out);
        };
        let attempts = u32::try_from(r.attempts()).ok().filter(|&a| a > 0)?;
        out.num_retries = attempts;
        if !r.retry_on().is_empty() {
            (out.retry_on, out.retriable_status_codes) = parse_retry_on(r.retry_on());
        }
        if let Some(t) = &r.per_try_timeout {
            out.per_try_timeout = Some(t.value.0);
        }
        if let Some(b) = &r.retry_ignore_previous_hosts {
            out.retry_ignore_previous_hosts = b.value;
        }
        if let Some(b) = &r.backoff {
            out.backoff_base = b.value.0;
        }
        Some(out)
    }

    /// Whether Envoy would retry after `outcome` (retries left permitting).
    pub fn would_retry(&self, outcome: &Outcome) -> bool {
        self.verdict(outcome, outcome.sent_request()) != Verdict::No
    }

    fn has(&self, c: Condition) -> bool {
        self.retry_on.contains(&c)
    }

    /// Envoy's `wouldRetryFromHeaders` / `wouldRetryFromReset`. `request_started`: some
    /// request byte went upstream on this or an earlier reset try (`upstream_request_started_`).
    fn verdict(&self, outcome: &Outcome, request_started: bool) -> Verdict {
        use Condition as C;
        match *outcome {
            Outcome::Response { status, grpc_status, rate_limited } => {
                // A rate-limited answer from an upstream Envoy is retried only on request.
                if rate_limited {
                    return if self.has(C::EnvoyRateLimited) { Verdict::WithBackoff } else { Verdict::No };
                }
                let listed = self.has(C::RetriableStatusCodes) && self.retriable_status_codes.contains(&status);
                // 425 Too Early is retried at once (requests are never early data here).
                if listed && status == 425 {
                    return Verdict::Immediately;
                }
                let grpc = grpc_status.is_some_and(|g| self.retry_on.iter().any(|c| c.grpc_status() == Some(g)));
                let retry = (self.has(C::FiveXx) && (500..600).contains(&status))
                    || (self.has(C::GatewayError) && (502..=504).contains(&status))
                    || (self.has(C::Retriable4xx) && status == 409)
                    || listed
                    || grpc;
                if retry { Verdict::WithBackoff } else { Verdict::No }
            }
            // Circuit-breaker overflow is cluster-wide: never retried.
            Outcome::Overflow => Verdict::No,
            _ => {
                let retry = (*outcome == Outcome::ConnectFailure && self.has(C::ConnectFailure))
                    || (self.has(C::ResetBeforeRequest) && !request_started)
                    || self.has(C::Reset)
                    // "we count an upstream reset as a 5xx" (per-try timeouts included).
                    || self.has(C::FiveXx)
                    || self.has(C::GatewayError)
                    || (*outcome == Outcome::RefusedStream && self.has(C::RefusedStream));
                if retry { Verdict::WithBackoff } else { Verdict::No }
            }
        }
    }
}

/// Istio's `parseRetryOn` followed by Envoy's parse of the result: a comma list, trimmed,
/// empty parts skipped; parts that are HTTP status codes become retriable status codes
/// (and add `retriable-status-codes`); unknown words are dropped.
fn parse_retry_on(text: &str) -> (BTreeSet<Condition>, BTreeSet<u16>) {
    let mut conditions = BTreeSet::new();
    let mut codes = BTreeSet::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some(code) = status_code(part) {
            codes.insert(code);
        } else if let Some(c) = Condition::parse(part) {
            conditions.insert(c);
        }
    }
    if !codes.is_empty() {
        conditions.insert(Condition::RetriableStatusCodes);
    }
    (conditions, codes)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    No,
    WithBackoff,
    /// Envoy's `RetryImmediately`: no backoff drawn.
    Immediately,
}

// ---------------------------------------------------------------- outcomes

/// How one try ended, as the retry logic sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Response headers arrived. `grpc_status`: the `grpc-status` response header;
    /// `rate_limited`: the response carries `x-envoy-ratelimited`.
    Response { status: u16, grpc_status: Option<u32>, rate_limited: bool },
    /// The connection could not be made (refused or connect timeout); nothing was sent.
    ConnectFailure,
    /// The upstream reset or closed the stream after the request was sent, before
    /// response headers.
    Reset,
    /// The upstream refused the stream (HTTP/2 REFUSED_STREAM).
    RefusedStream,
    /// The per-try timeout expired (Envoy resets the try: a local reset).
    PerTryTimeout,
    /// A circuit breaker refused the try (flag UO).
    Overflow,
}

impl Outcome {
    /// A response outcome from its status and headers.
    pub fn response(status: u16, headers: &HeaderMap) -> Outcome {
        let grpc_status = headers.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        Outcome::Response { status, grpc_status, rate_limited: headers.contains_key("x-envoy-ratelimited") }
    }

    /// Whether request bytes went upstream (Envoy's `first_upstream_tx_byte_sent`).
    fn sent_request(&self) -> bool {
        !matches!(self, Outcome::ConnectFailure | Outcome::Overflow)
    }
}

// ---------------------------------------------------------------- backoff

fn base_ms(base: Duration) -> u64 {
    // Envoy keeps milliseconds; a base under 1ms is rounded up to 1ms.
    u64::try_from(base.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// The exclusive upper bound of retry `n`'s (1-based) uniform draw: `(2^n − 1) · base`,
/// saturating. The draw is then capped at `BACKOFF_CAP_FACTOR · base`.
pub fn backoff_bound(n: u32, base: Duration) -> Duration {
    assert!(n >= 1, "retries are numbered from 1");
    let factor = 1u64.checked_shl(n).map_or(u64::MAX, |p| p - 1);
    Duration::from_millis(factor.saturating_mul(base_ms(base)))
}

/// Envoy's fully jittered exponential backoff before retry `n` (1-based):
/// `min(U[0, (2^n − 1)·base), 10·base)`, in whole milliseconds.
///
/// This is the algorithm Envoy documents ([`x-envoy-max-retries`](https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/router_filter#x-envoy-max-retries)): 0–24ms,
/// 0–74ms, 0–174ms, then capped at 250ms for the 25ms default. Envoy's current
/// `JitteredExponentialBackOffStrategy` draws from `[0, base·2^(n−1))` with the interval
/// itself capped instead (0–24, 0–49, 0–99, 0–199, 0–249ms).
pub fn backoff(n: u32, base: Duration, rng: &mut impl RngCore) -> Duration {
    let bound = u64::try_from(backoff_bound(n, base).as_millis()).unwrap_or(u64::MAX);
    let cap = base_ms(base).saturating_mul(BACKOFF_CAP_FACTOR);
    Duration::from_millis((rng.next_u64() % bound).min(cap))
}

// ---------------------------------------------------------------- per-request state

/// Where one request is in its tries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Ready to start a try: the first, or a retry once its backoff has passed.
    Ready,
    /// A try is in flight; [`RetryState::on_outcome`] ends it.
    InFlight,
    /// Finished: the last outcome is the answer (success, a failure the policy does not
    /// retry, or no policy at all).
    Done,
    /// Finished: the last outcome was retryable but no retries were left. The answer is
    /// that outcome, flagged URX.
    Exhausted,
}

/// What the caller does after a try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Answer with this outcome.
    Done,
    /// Wait `backoff`, then start another try.
    Retry { backoff: Duration },
    /// Answer with this outcome and flag URX (retry limit exceeded).
    Exhausted,
}

/// One request's retry state: tries started, retries left, hosts tried.
#[derive(Clone, Debug)]
pub struct RetryState<'p> {
    policy: Option<&'p RetryPolicy>,
    phase: Phase,
    attempts: u32,
    retries_remaining: u32,
    backoffs_drawn: u32,
    tried: BTreeSet<usize>,
    request_started: bool,
}

impl<'p> RetryState<'p> {
    /// State for a request on a route whose policy is `policy` (`None`: retries disabled).
    pub fn new(policy: Option<&'p RetryPolicy>) -> RetryState<'p> {
        RetryState {
            retries_remaining: policy.map_or(0, |p| p.num_retries),
            policy,
            phase: Phase::Ready,
            attempts: 0,
            backoffs_drawn: 0,
            tried: BTreeSet::new(),
            request_started: false,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Tries started so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    pub fn retries_remaining(&self) -> u32 {
        self.retries_remaining
    }

    /// The timeout of each try, if the policy sets one.
    pub fn per_try_timeout(&self) -> Option<Duration> {
        self.policy.as_ref().and_then(|p| p.per_try_timeout)
    }

    /// Whether a pick of `host` should be rejected: `retryIgnorePreviousHosts` is on and
    /// `host` was tried already.
    pub fn should_avoid(&self, host: usize) -> bool {
        self.policy.as_ref().is_some_and(|p| p.retry_ignore_previous_hosts) && self.tried.contains(&host)
    }

    /// Envoy's `chooseHost` loop: calls `pick` (which must not commit to the host) until
    /// it returns a host not to avoid, at most `1 + host_selection_retry_max_attempts`
    /// times; then the last pick stands. `None` (no healthy host) ends the loop.
    pub fn pick_host(&self, mut pick: impl FnMut() -> Option<usize>) -> Option<usize> {
        let re_picks = self.policy.as_ref().map_or(0, |p| p.host_selection_retry_max_attempts);
        let mut host = pick()?;
        for _ in 0..re_picks {
            if !self.should_avoid(host) {
                break;
            }
            host = pick()?;
        }
        Some(host)
    }

    /// Starts a try on `host`. Returns its number (1-based): `x-envoy-attempt-count`.
    pub fn start_attempt(&mut self, host: usize) -> u32 {
        assert_eq!(self.phase, Phase::Ready, "a try starts only when the state is ready");
        self.phase = Phase::InFlight;
        self.attempts += 1;
        self.tried.insert(host);
        self.attempts
    }

    /// Ends the try in flight with `outcome`: Envoy's `shouldRetry`. A retry draws its
    /// backoff from `rng`.
    pub fn on_outcome(&mut self, outcome: &Outcome, rng: &mut impl RngCore) -> Decision {
        assert_eq!(self.phase, Phase::InFlight, "an outcome needs a try in flight");
        if !matches!(outcome, Outcome::Response { .. }) {
            // Envoy updates this only on the reset path (`maybeRetryReset`).
            self.request_started |= outcome.sent_request();
        }
        let verdict = self.policy.as_ref().map_or(Verdict::No, |p| p.verdict(outcome, self.request_started));
        if verdict == Verdict::No {
            self.phase = Phase::Done;
            return Decision::Done;
        }
        if self.retries_remaining == 0 {
            self.phase = Phase::Exhausted;
            return Decision::Exhausted;
        }
        self.retries_remaining -= 1;
        self.phase = Phase::Ready;
        let backoff = match verdict {
            Verdict::WithBackoff => {
                self.backoffs_drawn += 1;
                let base = self.policy.as_ref().expect("a retry verdict needs a policy").backoff_base;
                backoff(self.backoffs_drawn, base, rng)
            }
            _ => Duration::ZERO,
        };
        Decision::Retry { backoff }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use serde_saphyr::Spanned;

    fn parse(yaml: &str) -> Spanned<HttpRetry> {
        serde_saphyr::from_str(yaml).expect("valid HttpRetry YAML")
    }

    fn policy(yaml: &str) -> Option<RetryPolicy> {
        RetryPolicy::from_istio(Some(&parse(yaml).value), false)
    }

    fn resp(status: u16) -> Outcome {
        Outcome::Response { status, grpc_status: None, rate_limited: false }
    }

    fn grpc(code: u32) -> Outcome {
        Outcome::Response { status: 200, grpc_status: Some(code), rate_limited: false }
    }

    fn rng() -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(7)
    }

    /// Runs one request: `outcomes[i]` is try i's outcome. Returns (tries, last decision).
    fn run(p: Option<&RetryPolicy>, outcomes: &[Outcome]) -> (u32, Decision) {
        let mut s = RetryState::new(p);
        let mut rng = rng();
        for (i, o) in outcomes.iter().enumerate() {
            assert_eq!(s.start_attempt(i), i as u32 + 1);
            match s.on_outcome(o, &mut rng) {
                Decision::Retry { .. } => continue,
                d => return (s.attempts(), d),
            }
        }
        panic!("the request wanted more tries than the test scripted");
    }

    // ------------------------------------------------ translation

    #[test]
    fn mesh_default_retries_connect_failures_but_not_503() {
        let p = RetryPolicy::from_istio(None, false).unwrap();
        assert_eq!(p, RetryPolicy::default());
        assert_eq!(p.num_retries, 2);
        assert!(p.retriable_status_codes.is_empty());
        assert!(p.retry_on.contains(&Condition::RetriableStatusCodes));
        assert_eq!((p.backoff_base, p.per_try_timeout), (Duration::from_millis(25), None));
        assert!(p.retry_ignore_previous_hosts);
        assert_eq!(p.host_selection_retry_max_attempts, 5);
        assert!(!p.would_retry(&resp(503)));
        assert!(p.would_retry(&Outcome::ConnectFailure));
    }

    #[test]
    fn attempts_zero_or_absent_disables_retries() {
        assert_eq!(policy("attempts: 0\n"), None);
        assert_eq!(policy("backoff: 10ms\n"), None);
        assert_eq!(policy("attempts: -3\n"), None);
    }

    #[test]
    fn retries_override_the_default_field_by_field() {
        let p = policy("attempts: 4\nperTryTimeout: 2s\nbackoff: 100ms\nretryIgnorePreviousHosts: false\n").unwrap();
        assert_eq!(p.num_retries, 4);
        assert_eq!(p.retry_on, RetryPolicy::default().retry_on, "no retryOn keeps the default words");
        assert_eq!(p.per_try_timeout, Some(Duration::from_secs(2)));
        assert_eq!(p.backoff_base, Duration::from_millis(100));
        assert!(!p.retry_ignore_previous_hosts);
    }

    #[test]
    fn retry_on_status_codes_become_retriable_codes_and_add_the_word() {
        let p = policy("attempts: 1\nretryOn: 503,gateway-error, 429\n").unwrap();
        assert_eq!(p.retriable_status_codes, BTreeSet::from([429, 503]));
        assert_eq!(
            p.retry_on,
            BTreeSet::from([Condition::GatewayError, Condition::RetriableStatusCodes]),
            "Istio trims parts when translating"
        );
        let p = policy("attempts: 1\nretryOn: 5xx\n").unwrap();
        assert_eq!(p.retry_on, BTreeSet::from([Condition::FiveXx]));
        assert!(p.retriable_status_codes.is_empty());
    }

    #[test]
    fn status_code_tokens_follow_go_status_text() {
        assert_eq!(["503", "418", "+503", "0503"].map(status_code), [Some(503), Some(418), Some(503), Some(503)]);
        assert!(
            ["599", "306", "0", "5xx", " 503", "-503", "99999999999999999999"].iter().all(|t| status_code(t).is_none())
        );
        assert_eq!(parse_retry_on("+503,unknown").1, BTreeSet::from([503]));
        assert_eq!(parse_retry_on("+503,unknown").0, BTreeSet::from([Condition::RetriableStatusCodes]));
    }

    #[test]
    fn consistent_hash_drops_previous_hosts_unless_asked() {
        assert!(!RetryPolicy::from_istio(None, true).unwrap().retry_ignore_previous_hosts);
        let r = parse("attempts: 1\nretryIgnorePreviousHosts: true\n");
        assert!(RetryPolicy::from_istio(Some(&r.value), true).unwrap().retry_ignore_previous_hosts);
    }

    // ------------------------------------------------ decisions per retryOn word

    fn only(word: &str) -> RetryPolicy {
        policy(&format!("attempts: 1\nretryOn: {word}\n")).unwrap()
    }

    const RESETS: [Outcome; 4] =
        [Outcome::ConnectFailure, Outcome::Reset, Outcome::RefusedStream, Outcome::PerTryTimeout];

    #[test]
    fn five_xx_retries_every_5xx_and_every_reset() {
        let p = only("5xx");
        assert!([500, 503, 504, 599].iter().all(|&s| p.would_retry(&resp(s))));
        assert!(![200, 404, 409, 429].iter().any(|&s| p.would_retry(&resp(s))));
        assert!(RESETS.iter().all(|o| p.would_retry(o)));
    }

    #[test]
    fn gateway_error_retries_502_to_504_and_every_reset() {
        let p = only("gateway-error");
        assert!([502, 503, 504].iter().all(|&s| p.would_retry(&resp(s))));
        assert!(![500, 501, 505].iter().any(|&s| p.would_retry(&resp(s))));
        assert!(RESETS.iter().all(|o| p.would_retry(o)));
    }

    #[test]
    fn reset_retries_resets_and_timeouts_but_no_response() {
        let p = only("reset");
        assert!(RESETS.iter().all(|o| p.would_retry(o)));
        assert!(!p.would_retry(&resp(503)));
    }

    #[test]
    fn reset_before_request_retries_only_what_sent_nothing() {
        let p = only("reset-before-request");
        assert!(p.would_retry(&Outcome::ConnectFailure));
        assert!(![Outcome::Reset, Outcome::RefusedStream, Outcome::PerTryTimeout].iter().any(|o| p.would_retry(o)));
    }

    #[test]
    fn reset_before_request_stops_once_a_try_sent_bytes() {
        // Envoy's `upstream_request_started_` is sticky: a reset after sending spoils it.
        let p = policy("attempts: 5\nretryOn: reset-before-request,refused-stream\n").unwrap();
        let (tries, d) = run(Some(&p), &[Outcome::ConnectFailure, Outcome::RefusedStream, Outcome::ConnectFailure]);
        assert_eq!((tries, d), (3, Decision::Done));
    }

    #[test]
    fn connect_failure_retries_only_connect_failures() {
        let p = only("connect-failure");
        assert!(p.would_retry(&Outcome::ConnectFailure));
        assert!(![Outcome::Reset, Outcome::RefusedStream, Outcome::PerTryTimeout].iter().any(|o| p.would_retry(o)));
        assert!(!p.would_retry(&resp(503)));
    }

    #[test]
    fn retriable_4xx_is_409_only() {
        let p = only("retriable-4xx");
        assert!(p.would_retry(&resp(409)));
        assert!(![400, 404, 429, 503].iter().any(|&s| p.would_retry(&resp(s))));
    }

    #[test]
    fn refused_stream_retries_refused_streams_only() {
        let p = only("refused-stream");
        assert!(p.would_retry(&Outcome::RefusedStream));
        assert!(![Outcome::ConnectFailure, Outcome::Reset, Outcome::PerTryTimeout].iter().any(|o| p.would_retry(o)));
    }

    #[test]
    fn retriable_status_codes_retries_listed_codes_only() {
        let p = only("retriable-status-codes,429");
        assert!(p.would_retry(&resp(429)));
        assert!(!p.would_retry(&resp(503)));
        assert!(!only("retriable-status-codes").would_retry(&resp(503)), "no codes listed");
    }

    #[test]
    fn too_early_is_retried_without_backoff() {
        let p = only("425");
        let mut s = RetryState::new(Some(&p));
        s.start_attempt(0);
        assert_eq!(s.on_outcome(&resp(425), &mut rng()), Decision::Retry { backoff: Duration::ZERO });
    }

    #[test]
    fn rate_limited_responses_need_envoy_ratelimited() {
        let limited = Outcome::Response { status: 429, grpc_status: None, rate_limited: true };
        assert!(only("envoy-ratelimited").would_retry(&limited));
        assert!(!only("429").would_retry(&limited), "x-envoy-ratelimited overrides status codes");
        assert!(!only("envoy-ratelimited").would_retry(&resp(429)));
    }

    #[test]
    fn retriable_headers_and_http3_never_match_here() {
        for word in ["retriable-headers", "http3-post-connect-failure"] {
            let p = only(word);
            assert!(![resp(503), resp(409)].iter().chain(RESETS.iter()).any(|o| p.would_retry(o)), "{word}");
        }
    }

    #[test]
    fn grpc_words_match_the_grpc_status_header() {
        for (word, code) in [
            ("cancelled", 1),
            ("deadline-exceeded", 4),
            ("resource-exhausted", 8),
            ("internal", 13),
            ("unavailable", 14),
        ] {
            let p = only(word);
            assert!(p.would_retry(&grpc(code)), "{word}");
            assert!(!p.would_retry(&grpc(2)), "{word} vs UNKNOWN");
            assert!(!p.would_retry(&resp(503)), "{word} ignores HTTP status");
        }
    }

    #[test]
    fn outcome_reads_grpc_status_and_ratelimited_headers() {
        let mut h = HeaderMap::new();
        h.insert("grpc-status", HeaderValue::from_static("14"));
        assert_eq!(Outcome::response(200, &h), grpc(14));
        h.insert("x-envoy-ratelimited", HeaderValue::from_static("true"));
        assert!(matches!(Outcome::response(429, &h), Outcome::Response { rate_limited: true, .. }));
        assert_eq!(Outcome::response(503, &HeaderMap::new()), resp(503));
    }

    #[test]
    fn per_try_timeout_is_retried_only_by_5xx_gateway_error_and_reset() {
        let retried: Vec<&str> = Condition::ALL
            .iter()
            .filter(|c| only(c.as_str()).would_retry(&Outcome::PerTryTimeout))
            .map(|c| c.as_str())
            .collect();
        assert_eq!(retried, ["5xx", "gateway-error", "reset"]);
    }

    #[test]
    fn connect_failure_is_retried_by_every_reset_word() {
        let retried: Vec<&str> = Condition::ALL
            .iter()
            .filter(|c| only(c.as_str()).would_retry(&Outcome::ConnectFailure))
            .map(|c| c.as_str())
            .collect();
        assert_eq!(retried, ["5xx", "gateway-error", "reset", "reset-before-request", "connect-failure"]);
    }

    #[test]
    fn overflow_is_never_retried() {
        for c in Condition::ALL {
            assert!(!only(c.as_str()).would_retry(&Outcome::Overflow), "{c:?}");
        }
    }

    // ------------------------------------------------ Istio's and Envoy's documented retry behaviour

    #[test]
    fn retry_on_5xx_attempts_2_turns_503_503_200_into_200_after_3_tries() {
        let p = policy("attempts: 2\nretryOn: 5xx\n").unwrap();
        assert_eq!(run(Some(&p), &[resp(503), resp(503), resp(200)]), (3, Decision::Done));
    }

    #[test]
    fn default_policy_does_not_retry_503() {
        assert_eq!(run(Some(&RetryPolicy::default()), &[resp(503)]), (1, Decision::Done));
    }

    #[test]
    fn per_try_timeout_without_retry_on_is_a_single_attempt() {
        let p = policy("attempts: 3\nperTryTimeout: 1s\n").unwrap();
        assert_eq!(RetryState::new(Some(&p)).per_try_timeout(), Some(Duration::from_secs(1)));
        assert_eq!(run(Some(&p), &[Outcome::PerTryTimeout]), (1, Decision::Done));
    }

    #[test]
    fn default_policy_retries_a_refused_connection_on_another_host() {
        let p = RetryPolicy::default();
        let mut s = RetryState::new(Some(&p));
        let mut rng = rng();
        s.start_attempt(0);
        assert!(matches!(s.on_outcome(&Outcome::ConnectFailure, &mut rng), Decision::Retry { .. }));
        assert!(s.should_avoid(0) && !s.should_avoid(1));
        let mut picks = [0, 0, 1].into_iter();
        let host = s.pick_host(|| picks.next()).unwrap();
        assert_eq!(host, 1);
        assert_eq!(s.start_attempt(host), 2);
        assert_eq!(s.on_outcome(&resp(200), &mut rng), Decision::Done);
    }

    #[test]
    fn retryable_failure_past_the_limit_is_exhausted() {
        let p = policy("attempts: 2\nretryOn: 5xx\n").unwrap();
        assert_eq!(run(Some(&p), &[resp(503), resp(503), resp(503)]), (3, Decision::Exhausted));
    }

    #[test]
    fn no_policy_means_one_try_and_no_urx() {
        assert_eq!(run(None, &[Outcome::ConnectFailure]), (1, Decision::Done));
    }

    // ------------------------------------------------ state machine transitions

    #[test]
    fn ready_to_in_flight_on_start() {
        let p = RetryPolicy::default();
        let mut s = RetryState::new(Some(&p));
        assert_eq!(s.phase(), Phase::Ready);
        s.start_attempt(3);
        assert_eq!((s.phase(), s.attempts()), (Phase::InFlight, 1));
    }

    #[test]
    fn in_flight_to_ready_on_retry() {
        let p = RetryPolicy::default();
        let mut s = RetryState::new(Some(&p));
        s.start_attempt(0);
        assert!(matches!(s.on_outcome(&Outcome::ConnectFailure, &mut rng()), Decision::Retry { .. }));
        assert_eq!((s.phase(), s.retries_remaining()), (Phase::Ready, 1));
    }

    #[test]
    fn in_flight_to_done_on_final_outcome() {
        let p = RetryPolicy::default();
        let mut s = RetryState::new(Some(&p));
        s.start_attempt(0);
        s.on_outcome(&resp(200), &mut rng());
        assert_eq!(s.phase(), Phase::Done);
    }

    #[test]
    fn in_flight_to_exhausted_when_no_retry_is_left() {
        let p = RetryPolicy { num_retries: 0, ..RetryPolicy::default() };
        let mut s = RetryState::new(Some(&p));
        s.start_attempt(0);
        assert_eq!(s.on_outcome(&Outcome::ConnectFailure, &mut rng()), Decision::Exhausted);
        assert_eq!(s.phase(), Phase::Exhausted);
    }

    #[test]
    #[should_panic(expected = "a try starts only when the state is ready")]
    fn starting_a_try_while_one_is_in_flight_panics() {
        let mut s = RetryState::new(None);
        s.start_attempt(0);
        s.start_attempt(0);
    }

    #[test]
    #[should_panic(expected = "an outcome needs a try in flight")]
    fn an_outcome_without_a_try_panics() {
        RetryState::new(None).on_outcome(&resp(200), &mut rng());
    }

    // ------------------------------------------------ host selection

    #[test]
    fn pick_host_gives_up_after_five_re_picks_and_keeps_the_last() {
        let p = RetryPolicy::default();
        let mut s = RetryState::new(Some(&p));
        s.start_attempt(0);
        s.on_outcome(&Outcome::ConnectFailure, &mut rng());
        let mut calls = 0;
        assert_eq!(
            s.pick_host(|| {
                calls += 1;
                Some(0)
            }),
            Some(0)
        );
        assert_eq!(calls, 6, "one pick plus host_selection_retry_max_attempts re-picks");
    }

    #[test]
    fn previous_hosts_off_keeps_the_first_pick() {
        let p = RetryPolicy { retry_ignore_previous_hosts: false, ..RetryPolicy::default() };
        let mut s = RetryState::new(Some(&p));
        s.start_attempt(0);
        assert!(!s.should_avoid(0));
        let mut calls = 0;
        s.pick_host(|| {
            calls += 1;
            Some(0)
        });
        assert_eq!(calls, 1);
    }

    #[test]
    fn pick_host_stops_when_no_host_is_healthy() {
        let p = RetryPolicy::default();
        let s = RetryState::new(Some(&p));
        assert_eq!(s.pick_host(|| None), None);
    }

    // ------------------------------------------------ backoff

    #[test]
    fn default_backoff_ranges_are_0_24_then_0_74_then_0_174_then_capped_at_250ms() {
        let base = DEFAULT_BACKOFF_BASE;
        let ms = |d: Duration| d.as_millis();
        assert_eq!([1, 2, 3, 4].map(|n| ms(backoff_bound(n, base))), [25, 75, 175, 375]);
        let mut rng = rng();
        for (n, max) in [(1, 24), (2, 74), (3, 174), (4, 250), (10, 250)] {
            let draws: Vec<u128> = (0..2000).map(|_| ms(backoff(n, base, &mut rng))).collect();
            assert_eq!(draws.iter().max(), Some(&max), "retry {n}");
            if n <= 3 {
                assert_eq!(draws.iter().min(), Some(&0), "retry {n}");
            }
        }
    }

    #[test]
    fn backoff_grows_with_each_retry_of_a_request() {
        let p = policy("attempts: 3\nretryOn: 5xx\nbackoff: 1s\n").unwrap();
        let mut s = RetryState::new(Some(&p));
        let mut rng = rng();
        let mut bounds = Vec::new();
        for n in 1..=3 {
            s.start_attempt(0);
            let Decision::Retry { backoff } = s.on_outcome(&resp(500), &mut rng) else { panic!("retry {n}") };
            assert!(backoff < backoff_bound(n, p.backoff_base) && backoff <= Duration::from_secs(10));
            bounds.push(backoff_bound(n, p.backoff_base));
        }
        assert_eq!(bounds, [1, 3, 7].map(Duration::from_secs));
    }

    #[test]
    fn sub_millisecond_base_rounds_up_to_1ms() {
        assert_eq!(backoff_bound(1, Duration::from_micros(10)), Duration::from_millis(1));
        assert_eq!(backoff_bound(64, Duration::from_millis(25)), Duration::from_millis(u64::MAX));
    }

    proptest! {
        #[test]
        fn a_draw_is_below_its_bound_and_within_the_cap(seed: u64, n in 1u32..80, base_ms in 1u64..5000) {
            let base = Duration::from_millis(base_ms);
            let d = backoff(n, base, &mut ChaCha8Rng::seed_from_u64(seed));
            prop_assert!(d < backoff_bound(n, base));
            prop_assert!(d <= base * BACKOFF_CAP_FACTOR as u32);
        }

        #[test]
        fn tries_never_exceed_one_plus_retries(attempts in 1u32..6, fails in proptest::collection::vec(any::<bool>(), 1..10)) {
            let p = RetryPolicy { num_retries: attempts, retry_on: BTreeSet::from([Condition::FiveXx]), ..RetryPolicy::default() };
            let mut s = RetryState::new(Some(&p));
            let mut rng = rng();
            let mut decision = Decision::Done;
            for fail in fails.iter().copied().chain(std::iter::repeat(true)) {
                s.start_attempt(0);
                decision = s.on_outcome(&resp(if fail { 503 } else { 200 }), &mut rng);
                if !matches!(decision, Decision::Retry { .. }) { break; }
            }
            prop_assert!(s.attempts() <= attempts + 1);
            prop_assert_eq!(decision == Decision::Exhausted, s.attempts() == attempts + 1 && s.retries_remaining() == 0 && s.phase() == Phase::Exhausted);
        }
    }
}
