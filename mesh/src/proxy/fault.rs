//! HTTP fault injection (Envoy's fault filter as Istio configures it, [Istio's
//! reference](https://istio.io/latest/docs/reference/config/networking/virtual-service/#HTTPFaultInjection)): an optional fixed delay and an optional abort, each with its own percentage.
//! A missing percentage means 0% — the fault never fires. Istio converts a percentage
//! to parts per million (`value × 10,000`); each request draws independently for the
//! delay, then for the abort. Pure: the caller passes the random draws.

use std::time::Duration;

use crate::config::istio::{HttpFaultInjection, Percent};

/// Parts per million, Envoy's `FractionalPercent` with denominator MILLION.
pub fn per_million(p: Option<&Percent>, deprecated_percent: Option<u32>) -> u32 {
    match (p, deprecated_percent) {
        (Some(p), _) => (p.value.clamp(0.0, 100.0) * 10_000.0).round() as u32,
        (None, Some(pct)) => pct.min(100) * 10_000,
        (None, None) => 0,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultPolicy {
    pub delay: Option<(Duration, u32)>,
    pub abort: Option<(u16, u32)>,
}

/// What the fault filter does to one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Injected {
    pub delay: Option<Duration>,
    pub abort: Option<u16>,
}

impl FaultPolicy {
    pub fn from_istio(f: &HttpFaultInjection) -> FaultPolicy {
        FaultPolicy {
            delay: f.delay.as_ref().and_then(|d| {
                let d = &d.value;
                d.fixed_delay.as_ref().map(|fd| (fd.value.0, per_million(d.percentage.as_ref(), d.percent)))
            }),
            abort: f.abort.as_ref().and_then(|a| {
                let a = &a.value;
                a.http_status.as_ref().map(|s| (s.value.clamp(0, 999) as u16, per_million(a.percentage.as_ref(), None)))
            }),
        }
    }

    /// Decides one request from two independent uniform draws in `0..1_000_000`.
    pub fn decide(&self, delay_draw: u32, abort_draw: u32) -> Injected {
        Injected {
            delay: self.delay.and_then(|(d, ppm)| (delay_draw < ppm).then_some(d)),
            abort: self.abort.and_then(|(s, ppm)| (abort_draw < ppm).then_some(s)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pct(v: f64) -> Option<Percent> {
        Some(Percent { value: v })
    }

    #[test]
    fn missing_percentage_never_fires() {
        assert_eq!(per_million(None, None), 0);
        let f = FaultPolicy { delay: Some((Duration::from_secs(2), 0)), abort: Some((503, 0)) };
        assert_eq!(f.decide(0, 0), Injected::default());
    }

    #[test]
    fn percentage_becomes_parts_per_million() {
        assert_eq!(per_million(pct(50.0).as_ref(), None), 500_000);
        assert_eq!(per_million(pct(0.1).as_ref(), None), 1_000);
        assert_eq!(per_million(pct(100.0).as_ref(), None), 1_000_000);
        assert_eq!(per_million(None, Some(30)), 300_000);
    }

    #[test]
    fn hundred_percent_always_fires_and_both_can_fire_together() {
        let f = FaultPolicy { delay: Some((Duration::from_secs(2), 1_000_000)), abort: Some((503, 1_000_000)) };
        assert_eq!(f.decide(999_999, 999_999), Injected { delay: Some(Duration::from_secs(2)), abort: Some(503) });
    }

    proptest! {
        #[test]
        fn fires_iff_the_draw_is_below_the_rate(ppm in 0u32..=1_000_000, d in 0u32..1_000_000, a in 0u32..1_000_000) {
            let f = FaultPolicy { delay: Some((Duration::from_millis(5), ppm)), abort: Some((500, ppm)) };
            let got = f.decide(d, a);
            prop_assert_eq!(got.delay.is_some(), d < ppm);
            prop_assert_eq!(got.abort.is_some(), a < ppm);
        }
    }
}
