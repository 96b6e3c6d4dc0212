//! The configuration of Envoy's local rate limit filter
//! (`envoy.filters.http.local_ratelimit`) as meshsim models it, and the filter's own
//! config rules (Envoy rejects a config that breaks them).
//!
//! Not here: reading it out of an EnvoyFilter (`config::envoy_filter`), the token bucket
//! and per-request decisions (`proxy::ratelimit`).
//!
//! Source: Envoy's [local rate limit filter](https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/local_rate_limit_filter)
//! and its `LocalRateLimit` and `FractionalPercent` protos.

use std::time::Duration;

use http::StatusCode;
use http::header::{HeaderName, HeaderValue};

/// Envoy rejects shorter fill intervals.
const MIN_FILL_INTERVAL: Duration = Duration::from_millis(50);

/// Envoy's `FractionalPercent` denominators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denominator {
    Hundred,
    TenThousand,
    Million,
}

impl Denominator {
    pub fn value(self) -> u64 {
        match self {
            Denominator::Hundred => 100,
            Denominator::TenThousand => 10_000,
            Denominator::Million => 1_000_000,
        }
    }
}

/// A runtime fraction (`filter_enabled`, `filter_enforced`): a request is in when
/// `random % denominator < numerator`, Envoy's `evaluateFractionalPercent`. An absent
/// field is [`FractionalPercent::ZERO`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FractionalPercent {
    pub numerator: u32,
    pub denominator: Denominator,
}

impl Default for FractionalPercent {
    fn default() -> Self {
        Self::ZERO
    }
}

impl FractionalPercent {
    pub const ZERO: Self = Self { numerator: 0, denominator: Denominator::Hundred };
    pub const ALL: Self = Self { numerator: 100, denominator: Denominator::Hundred };
}

/// The filter's config as far as meshsim models it (Envoy's `LocalRateLimit` proto).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalRateLimitConfig {
    pub max_tokens: u32,
    /// `None` (unset) means 1.
    pub tokens_per_fill: Option<u32>,
    pub fill_interval: Duration,
    /// `status.code`; `None` means 429, and so does any code below 400.
    pub status: Option<u16>,
    /// Unset means 0%: the filter does nothing.
    pub filter_enabled: FractionalPercent,
    /// Unset means 0%: limited requests are only counted.
    pub filter_enforced: FractionalPercent,
    /// Added to the local reply of an enforced limit.
    pub response_headers_to_add: Vec<(HeaderName, HeaderValue)>,
}

impl LocalRateLimitConfig {
    /// Envoy's rules for the filter's config: the token bucket's ([`check_bucket`], unset
    /// `tokens_per_fill` meaning 1) and a real status code ([`error_status`]).
    pub fn validate(&self) -> Result<(), String> {
        check_bucket(self.max_tokens, self.tokens_per_fill.unwrap_or(1), self.fill_interval)?;
        error_status(self.status).map(|_| ())
    }
}

/// Envoy's token bucket rules: `max_tokens > 0`, `tokens_per_fill > 0` (its config
/// default is 1), `fill_interval >= 50ms`.
pub fn check_bucket(max_tokens: u32, tokens_per_fill: u32, fill_interval: Duration) -> Result<(), String> {
    if max_tokens == 0 {
        return Err("token_bucket.max_tokens must be greater than 0".to_string());
    }
    if tokens_per_fill == 0 {
        return Err("token_bucket.tokens_per_fill must be greater than 0 (unset means 1)".to_string());
    }
    if fill_interval < MIN_FILL_INTERVAL {
        return Err(format!("token_bucket.fill_interval must be >= 50ms (got {fill_interval:?})"));
    }
    Ok(())
}

/// The reply status for `status.code`: Envoy's `toErrorCode` keeps codes >= 400 and
/// turns anything lower (and an unset code) into 429.
pub fn error_status(code: Option<u16>) -> Result<StatusCode, String> {
    match code {
        Some(c) if c >= 400 => {
            StatusCode::from_u16(c).map_err(|_| format!("status.code {c} is not an HTTP status code"))
        }
        _ => Ok(StatusCode::TOO_MANY_REQUESTS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max: u32, per_fill: Option<u32>, interval: Duration) -> LocalRateLimitConfig {
        LocalRateLimitConfig {
            max_tokens: max,
            tokens_per_fill: per_fill,
            fill_interval: interval,
            status: None,
            filter_enabled: FractionalPercent::ALL,
            filter_enforced: FractionalPercent::ALL,
            response_headers_to_add: vec![],
        }
    }

    #[test]
    fn status_below_400_becomes_429() {
        assert_eq!(error_status(None).unwrap(), StatusCode::TOO_MANY_REQUESTS);
        for low in [0, 200, 302, 399] {
            assert_eq!(error_status(Some(low)).unwrap(), StatusCode::TOO_MANY_REQUESTS, "{low}");
        }
        assert_eq!(error_status(Some(400)).unwrap(), StatusCode::BAD_REQUEST);
        assert_eq!(error_status(Some(503)).unwrap(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(error_status(Some(1000)).unwrap_err().contains("status.code 1000"));
    }

    #[test]
    fn validate_applies_the_bucket_rules_and_the_status_rule() {
        let min = MIN_FILL_INTERVAL;
        assert_eq!(config(1, None, min).validate(), Ok(()), "unset tokens_per_fill means 1");
        assert!(config(1, Some(0), min).validate().unwrap_err().contains("tokens_per_fill"));
        assert!(config(0, Some(1), min).validate().unwrap_err().contains("max_tokens"));
        let short = min - Duration::from_millis(1);
        assert!(config(1, Some(1), short).validate().unwrap_err().contains(">= 50ms"));
        let bad_status = LocalRateLimitConfig { status: Some(1000), ..config(1, None, min) };
        assert!(bad_status.validate().unwrap_err().contains("status.code 1000"));
    }
}
