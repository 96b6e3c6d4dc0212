//! Outlier detection for one cluster as seen by one client proxy, exactly as Envoy runs
//! it for Istio ([Envoy's outlier detection](https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/outlier)):
//! consecutive 5xx and gateway-error counters that
//! trigger inline, the `maxEjectionPercent` rule, an interval sweep that readmits hosts
//! after `min(base × backoff, max)` and decays the backoff of healthy hosts.
//!
//! Pure: time is passed in. [`Detector::advance`] replays every interval tick up to
//! `now`, so the state at any instant is the same whoever calls it and when: the
//! sidecar's outlier timer at each [`Detector::next_tick`], or a request before it.
//! Which host a request goes to (panic mode included) is the balancer's and the
//! cluster's business.

use std::time::Duration;

use crate::snapshot::OutlierConfig;

/// One host's ejection state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostState {
    /// Receiving traffic. `since` = last readmission, if any.
    Active { since: Option<Duration> },
    /// Ejected at `at`; readmitted at the first tick after `at + for_`.
    Ejected { at: Duration, for_: Duration },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Consecutive5xx,
    ConsecutiveGatewayFailure,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Consecutive5xx => "consecutive_5xx",
            Reason::ConsecutiveGatewayFailure => "consecutive_gateway_failure",
        }
    }
}

/// A state change worth an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    Ejected {
        host: usize,
        at: Duration,
        reason: Reason,
        for_: Duration,
    },
    /// A trigger fired but `maxEjectionPercent` forbade the ejection.
    Overflow {
        host: usize,
        at: Duration,
        reason: Reason,
    },
    Readmitted {
        host: usize,
        at: Duration,
    },
}

#[derive(Clone, Debug)]
struct Host {
    state: HostState,
    c5xx: u32,
    cgw: u32,
    /// Envoy's ejection-time backoff multiplier.
    backoff: u32,
}

#[derive(Clone, Debug)]
pub struct Detector {
    cfg: OutlierConfig,
    hosts: Vec<Host>,
    next_tick: Duration,
}

impl Detector {
    /// A detector for `n` hosts whose interval timer starts at `now`.
    pub fn new(cfg: OutlierConfig, n: usize, now: Duration) -> Detector {
        assert!(cfg.interval > Duration::ZERO, "interval must be positive");
        let host = Host { state: HostState::Active { since: None }, c5xx: 0, cgw: 0, backoff: 0 };
        Detector { cfg, hosts: vec![host; n], next_tick: now + cfg.interval }
    }

    /// This detector carried over to a new host list (an endpoint update):
    /// `old_of_new[i]` is new host `i`'s index in this detector, `None` for a new host,
    /// which starts fresh. Hosts keep their counters, ejections and backoff, as Envoy's
    /// hosts do across an EDS update; the sweep timer goes on.
    pub fn remap(&self, old_of_new: &[Option<usize>]) -> Detector {
        let fresh = Host { state: HostState::Active { since: None }, c5xx: 0, cgw: 0, backoff: 0 };
        let hosts = old_of_new.iter().map(|o| o.map_or_else(|| fresh.clone(), |j| self.hosts[j].clone())).collect();
        Detector { cfg: self.cfg, hosts, next_tick: self.next_tick }
    }

    pub fn is_ejected(&self, host: usize) -> bool {
        matches!(self.hosts[host].state, HostState::Ejected { .. })
    }

    pub fn ejected_count(&self) -> usize {
        self.hosts.iter().filter(|h| matches!(h.state, HostState::Ejected { .. })).count()
    }

    pub fn state(&self, host: usize) -> HostState {
        self.hosts[host].state
    }

    /// When the next interval sweep is due.
    pub fn next_tick(&self) -> Duration {
        self.next_tick
    }

    /// Runs every interval sweep due at or before `now`, in order.
    pub fn advance(&mut self, now: Duration, out: &mut Vec<Transition>) {
        while self.next_tick <= now {
            let tick = self.next_tick;
            self.sweep(tick, out);
            self.next_tick = tick + self.cfg.interval;
            // Idle and nothing left to decay: jump to the last tick not after `now`.
            if self.hosts.iter().all(|h| h.backoff == 0 && matches!(h.state, HostState::Active { .. }))
                && self.next_tick <= now
            {
                let skipped = (now - self.next_tick).as_nanos() / self.cfg.interval.as_nanos();
                self.next_tick += self.cfg.interval * u32::try_from(skipped).unwrap_or(u32::MAX);
            }
        }
    }

    fn sweep(&mut self, now: Duration, out: &mut Vec<Transition>) {
        let interval = self.cfg.interval;
        for (i, h) in self.hosts.iter_mut().enumerate() {
            match h.state {
                HostState::Ejected { at, for_ } => {
                    if now - at >= for_ {
                        h.state = HostState::Active { since: Some(now) };
                        h.c5xx = 0;
                        h.cgw = 0;
                        out.push(Transition::Readmitted { host: i, at: now });
                    }
                }
                HostState::Active { since } => {
                    if h.backoff > 0 && since.is_none_or(|s| now - s >= interval) {
                        h.backoff -= 1;
                    }
                }
            }
        }
    }

    /// Records one response from `host` (connect failures as 503, timeouts as 504, as
    /// Envoy's unsplit mode does). Call [`Detector::advance`] first.
    pub fn record(&mut self, host: usize, status: u16, now: Duration, out: &mut Vec<Transition>) {
        let h = &mut self.hosts[host];
        if (500..600).contains(&status) {
            let gateway = matches!(status, 502..=504);
            if gateway {
                h.cgw += 1;
            } else {
                h.cgw = 0;
            }
            h.c5xx += 1;
            if gateway && self.cfg.consecutive_gateway == Some(h.cgw) {
                self.trigger(host, Reason::ConsecutiveGatewayFailure, now, out);
            }
            if self.cfg.consecutive_5xx == Some(self.hosts[host].c5xx) {
                self.trigger(host, Reason::Consecutive5xx, now, out);
            }
        } else {
            h.c5xx = 0;
            h.cgw = 0;
        }
    }

    fn trigger(&mut self, host: usize, reason: Reason, now: Duration, out: &mut Vec<Transition>) {
        if self.is_ejected(host) {
            return;
        }
        if may_eject(self.ejected_count(), self.hosts.len(), self.cfg.max_ejection_percent) {
            let cfg = self.cfg;
            let h = &mut self.hosts[host];
            if u128::from(h.backoff) * cfg.base_ejection_time.as_nanos()
                < cfg.max_ejection_time.as_nanos() + cfg.base_ejection_time.as_nanos()
            {
                h.backoff += 1;
            }
            let for_ = (cfg.base_ejection_time * h.backoff).min(cfg.max_ejection_time);
            h.state = HostState::Ejected { at: now, for_ };
            out.push(Transition::Ejected { host, at: now, reason, for_ });
        } else {
            out.push(Transition::Overflow { host, at: now, reason });
        }
        let h = &mut self.hosts[host];
        match reason {
            Reason::Consecutive5xx => h.c5xx = 0,
            Reason::ConsecutiveGatewayFailure => h.cgw = 0,
        }
    }

    /// Hosts that may receive traffic. Ejected hosts are excluded unless the healthy
    /// share falls below the panic threshold, when every host is a candidate again.
    pub fn candidates(&self, out: &mut Vec<usize>) {
        out.clear();
        out.extend((0..self.hosts.len()).filter(|&i| !self.is_ejected(i)));
        if in_panic(out.len(), self.hosts.len(), self.cfg.panic_threshold_percent) {
            out.clear();
            out.extend(0..self.hosts.len());
        }
    }
}

/// Envoy: ejection allowed iff `100 × (ejected + 1) / total ≤ maxEjectionPercent`.
pub fn may_eject(ejected: usize, total: usize, max_ejection_percent: u32) -> bool {
    total > 0 && 100.0 * (ejected as f64 + 1.0) / total as f64 <= f64::from(max_ejection_percent)
}

/// Envoy's healthy panic: `healthy / total × 100 < threshold`.
pub fn in_panic(healthy: usize, total: usize, threshold_percent: u32) -> bool {
    total > 0 && 100.0 * (healthy as f64) / (total as f64) < f64::from(threshold_percent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg() -> OutlierConfig {
        OutlierConfig {
            consecutive_5xx: Some(5),
            consecutive_gateway: None,
            interval: Duration::from_secs(1),
            base_ejection_time: Duration::from_secs(5),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 100,
            panic_threshold_percent: 0,
        }
    }
    fn s(x: f64) -> Duration {
        Duration::from_secs_f64(x)
    }
    fn feed(d: &mut Detector, host: usize, status: u16, at: Duration) -> Vec<Transition> {
        let mut out = Vec::new();
        d.advance(at, &mut out);
        d.record(host, status, at, &mut out);
        out
    }

    #[test]
    fn ejects_host_at_its_5th_consecutive_5xx() {
        let mut d = Detector::new(cfg(), 10, Duration::ZERO);
        for i in 0..4 {
            assert!(feed(&mut d, 3, 500, s(10.0 + i as f64 * 0.01)).is_empty());
        }
        let t = feed(&mut d, 3, 500, s(10.05));
        assert_eq!(t, [Transition::Ejected { host: 3, at: s(10.05), reason: Reason::Consecutive5xx, for_: s(5.0) }]);
        assert!(d.is_ejected(3));
    }

    #[test]
    fn remap_keeps_the_state_of_hosts_that_stay_and_starts_new_ones_fresh() {
        let mut d = Detector::new(cfg(), 3, Duration::ZERO);
        for i in 0..5 {
            feed(&mut d, 2, 500, s(0.1 + i as f64 * 0.01));
        }
        feed(&mut d, 1, 500, s(0.2));
        assert!(d.is_ejected(2));
        // Host 0 leaves; hosts 2 and 1 become 0 and 1; a new host joins as 2.
        let mut r = d.remap(&[Some(2), Some(1), None]);
        assert!(r.is_ejected(0), "the ejected host stays ejected");
        assert!(!r.is_ejected(1) && !r.is_ejected(2));
        for i in 0..3 {
            assert!(feed(&mut r, 1, 500, s(0.3 + i as f64 * 0.01)).is_empty());
        }
        let t = feed(&mut r, 1, 500, s(0.4));
        assert!(matches!(t[..], [Transition::Ejected { host: 1, .. }]), "host 1 kept its first 500: {t:?}");
        let mut out = Vec::new();
        r.advance(s(6.0), &mut out);
        assert!(out.contains(&Transition::Readmitted { host: 0, at: s(6.0) }), "the sweep timer went on: {out:?}");
    }

    #[test]
    fn non_5xx_resets_the_count() {
        let mut d = Detector::new(cfg(), 10, Duration::ZERO);
        for _ in 0..4 {
            feed(&mut d, 0, 503, s(0.1));
        }
        feed(&mut d, 0, 404, s(0.1));
        for _ in 0..4 {
            assert!(feed(&mut d, 0, 500, s(0.2)).is_empty());
        }
        assert!(!d.is_ejected(0));
    }

    #[test]
    fn a_500_resets_only_the_gateway_counter() {
        let c = OutlierConfig { consecutive_5xx: Some(4), consecutive_gateway: Some(3), ..cfg() };
        let mut d = Detector::new(c, 10, Duration::ZERO);
        feed(&mut d, 0, 503, s(0.1));
        feed(&mut d, 0, 503, s(0.1));
        feed(&mut d, 0, 500, s(0.1)); // cgw back to 0, c5xx = 3
        let t = feed(&mut d, 0, 503, s(0.1)); // c5xx = 4 fires; cgw = 1
        assert!(matches!(t[..], [Transition::Ejected { reason: Reason::Consecutive5xx, .. }]), "{t:?}");
    }

    #[test]
    fn gateway_errors_eject_at_their_threshold() {
        let c = OutlierConfig { consecutive_5xx: None, consecutive_gateway: Some(2), ..cfg() };
        let mut d = Detector::new(c, 10, Duration::ZERO);
        feed(&mut d, 1, 504, s(0.1));
        let t = feed(&mut d, 1, 502, s(0.2));
        assert!(matches!(t[..], [Transition::Ejected { reason: Reason::ConsecutiveGatewayFailure, .. }]), "{t:?}");
    }

    #[test]
    fn readmits_at_the_first_tick_after_the_ejection_time() {
        let mut d = Detector::new(cfg(), 10, Duration::ZERO);
        for _ in 0..5 {
            feed(&mut d, 2, 500, s(10.3));
        }
        let mut out = Vec::new();
        d.advance(s(15.9), &mut out);
        assert!(out.is_empty() && d.is_ejected(2), "ejected 5 s at 10.3: tick 15 is too early");
        d.advance(s(16.0), &mut out);
        assert_eq!(out, [Transition::Readmitted { host: 2, at: s(16.0) }]);
    }

    #[test]
    fn re_ejection_within_an_interval_doubles_the_time() {
        let mut d = Detector::new(cfg(), 10, Duration::ZERO);
        for _ in 0..5 {
            feed(&mut d, 2, 500, s(10.3));
        }
        let mut out = Vec::new();
        d.advance(s(16.0), &mut out);
        for _ in 0..4 {
            feed(&mut d, 2, 500, s(16.5));
        }
        let t = feed(&mut d, 2, 500, s(16.6));
        assert_eq!(t, [Transition::Ejected { host: 2, at: s(16.6), reason: Reason::Consecutive5xx, for_: s(10.0) }]);
    }

    #[test]
    fn healthy_ticks_decay_the_backoff() {
        let mut d = Detector::new(cfg(), 10, Duration::ZERO);
        for _ in 0..5 {
            feed(&mut d, 2, 500, s(10.3));
        }
        let mut out = Vec::new();
        d.advance(s(16.0), &mut out); // readmitted, backoff 1
        d.advance(s(17.0), &mut out); // one interval healthy: backoff 0
        for _ in 0..5 {
            feed(&mut d, 2, 500, s(17.5));
        }
        assert_eq!(d.state(2), HostState::Ejected { at: s(17.5), for_: s(5.0) });
    }

    #[test]
    fn default_max_ejection_percent_never_ejects_in_small_clusters() {
        let c = OutlierConfig { max_ejection_percent: 10, ..cfg() };
        let mut d = Detector::new(c, 3, Duration::ZERO);
        let mut all = Vec::new();
        for _ in 0..20 {
            all.extend(feed(&mut d, 0, 500, s(1.0)));
        }
        assert!(!d.is_ejected(0));
        assert_eq!(all.len(), 4, "a trigger every 5th error, all overflowing: {all:?}");
        assert!(all.iter().all(|t| matches!(t, Transition::Overflow { .. })));
    }

    #[test]
    fn fifty_percent_allows_one_of_three_but_not_two() {
        let c = OutlierConfig { max_ejection_percent: 50, ..cfg() };
        let mut d = Detector::new(c, 3, Duration::ZERO);
        for _ in 0..5 {
            feed(&mut d, 0, 500, s(1.0));
            feed(&mut d, 1, 500, s(1.0));
        }
        assert!(d.is_ejected(0));
        assert!(!d.is_ejected(1));
    }

    #[test]
    fn all_ejected_without_panic_leaves_no_candidates_and_panic_restores_them() {
        for (threshold, expect) in [(0, 0), (50, 2)] {
            let c = OutlierConfig { panic_threshold_percent: threshold, ..cfg() };
            let mut d = Detector::new(c, 2, Duration::ZERO);
            for _ in 0..5 {
                feed(&mut d, 0, 500, s(1.0));
                feed(&mut d, 1, 500, s(1.0));
            }
            let mut cands = Vec::new();
            d.candidates(&mut cands);
            assert_eq!(cands.len(), expect, "threshold {threshold}");
        }
    }

    #[test]
    fn ejection_time_is_capped_at_max_ejection_time() {
        let c = OutlierConfig { base_ejection_time: s(100.0), max_ejection_time: s(300.0), ..cfg() };
        let mut d = Detector::new(c, 10, Duration::ZERO);
        let mut t = 0.0;
        let mut times = Vec::new();
        for _ in 0..6 {
            for _ in 0..5 {
                for tr in feed(&mut d, 0, 500, s(t)) {
                    if let Transition::Ejected { for_, .. } = tr {
                        times.push(for_);
                    }
                }
            }
            // Step tick by tick until readmitted, then fail again at once (no decay).
            let mut out = Vec::new();
            while d.is_ejected(0) {
                t += 1.0;
                d.advance(s(t), &mut out);
            }
        }
        assert_eq!(times, [s(100.0), s(200.0), s(300.0), s(300.0), s(300.0), s(300.0)]);
    }

    proptest! {
        #[test]
        fn ejection_percent_rule_holds(ejected in 0usize..20, total in 1usize..20, pct in 0u32..=100) {
            let ok = may_eject(ejected, total, pct);
            prop_assert_eq!(ok, (ejected + 1) * 100 <= pct as usize * total);
        }

        #[test]
        fn never_ejects_more_than_allowed(
            statuses in proptest::collection::vec((0usize..6, prop_oneof![Just(200u16), Just(500), Just(503)]), 0..300),
            pct in 1u32..=100,
        ) {
            let c = OutlierConfig { max_ejection_percent: pct, consecutive_5xx: Some(2), ..cfg() };
            let mut d = Detector::new(c, 6, Duration::ZERO);
            for (k, (host, status)) in statuses.into_iter().enumerate() {
                let mut out = Vec::new();
                let now = Duration::from_millis(k as u64 * 50);
                d.advance(now, &mut out);
                d.record(host, status, now, &mut out);
                prop_assert!(d.ejected_count() * 100 <= pct as usize * 6 || d.ejected_count() == 0);
            }
        }
    }
}
