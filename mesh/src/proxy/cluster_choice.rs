//! Cluster choice: which host of a cluster one request (or one try of it) goes to, and
//! the per-host state that choice reads and feeds — Envoy's load-balancer context as
//! its router uses it (`chooseHost`, then the host's active-request count and the
//! outlier detector's result callbacks).
//!
//! Owns, per cluster of one proxy ([`HostChoice`]): the hosts' in-flight counts (what
//! LEAST_REQUEST compares), the outlier detector (asked for candidates, fed each try's
//! result), the consistent-hash table over the current candidates (rebuilt when they
//! change), the round-robin cursor; carrying that state over a changed config of the
//! cluster; translating host indices for a request that started on an older config.
//! [`InFlight`] is one try's claim on a host, from commit to release.
//!
//! Does not own the algorithms (`balance`, `hash`, `outlier`: pure functions this module
//! calls), the connections (`pool`), nor whether to try again (`retry`).

use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;

use super::Sidecar;
use super::balance::Balancer;
use super::hash::{Maglev, RingHash};
use super::outlier::{Detector, Transition};
use crate::net::Net;
use crate::snapshot::{Cluster, HashTable};

/// A consistent-hash table built over one set of candidate hosts.
enum HashTableRt {
    Ring(RingHash),
    Maglev(Maglev),
}

/// The index in `to` of endpoint `i` of `from` (the same pod at the same address).
pub(super) fn translate(from: &Cluster, to: &Cluster, i: usize) -> Option<usize> {
    let ep = &from.endpoints[i];
    to.endpoints.iter().position(|e| e == ep)
}

/// The host-choice state of one cluster in one proxy. Host indices are into
/// [`HostChoice::cfg`]'s endpoints; a request holding an older config of the cluster
/// passes that config, and its indices are translated.
pub(super) struct HostChoice {
    cfg: Arc<Cluster>,
    /// Tries in flight per host (committed, not yet released).
    active: Vec<u32>,
    balancer: Balancer,
    detector: Option<Detector>,
    /// The hash table and the candidates it was built over.
    hash: Option<(Vec<usize>, HashTableRt)>,
}

impl HostChoice {
    /// Fresh state for `cfg`; the outlier interval timer starts at `now`.
    pub(super) fn new(cfg: Arc<Cluster>, now: Duration) -> Self {
        HostChoice {
            active: vec![0; cfg.endpoints.len()],
            balancer: Balancer::default(),
            detector: cfg.outlier.map(|o| Detector::new(o, cfg.endpoints.len(), now)),
            hash: None,
            cfg,
        }
    }

    /// The config this state is for.
    pub(super) fn cfg(&self) -> &Arc<Cluster> {
        &self.cfg
    }

    /// This state carried over to a changed config of the same cluster: hosts that stay
    /// keep their in-flight count and outlier state (unless the outlier settings
    /// changed, which restarts detection at `now`); the hash table is rebuilt on first
    /// use; the round-robin cursor goes on.
    pub(super) fn carry(self, cfg: Arc<Cluster>, now: Duration) -> Self {
        let old_of_new: Vec<Option<usize>> = (0..cfg.endpoints.len()).map(|i| translate(&cfg, &self.cfg, i)).collect();
        let active = old_of_new.iter().map(|o| o.map_or(0, |j| self.active[j])).collect();
        let detector = match (&self.detector, cfg.outlier) {
            (Some(d), Some(o)) if self.cfg.outlier == Some(o) => Some(d.remap(&old_of_new)),
            (_, o) => o.map(|o| Detector::new(o, cfg.endpoints.len(), now)),
        };
        HostChoice { cfg, active, balancer: self.balancer, detector, hash: None }
    }

    /// When this cluster's next outlier sweep is due (`None`: no outlier detection).
    pub(super) fn next_sweep(&self) -> Option<Duration> {
        self.detector.as_ref().map(Detector::next_tick)
    }

    /// Runs the outlier sweeps due by `now` (readmissions, backoff decay).
    pub(super) fn sweep(&mut self, now: Duration, out: &mut Vec<Transition>) {
        if let Some(d) = self.detector.as_mut() {
            d.advance(now, out);
        }
    }

    /// Chooses a host of `cluster` (the config the request holds) without committing to
    /// it: the outlier detector's candidates, then the consistent hash of `hash` (`None`:
    /// a random key from `rng`, as Envoy does) or the LB policy. `None` = no healthy
    /// upstream (every candidate is unknown to the request's config).
    pub(super) fn choose(
        &mut self,
        cluster: &Arc<Cluster>,
        hash: Option<u64>,
        now: Duration,
        rng: &mut impl RngCore,
        out: &mut Vec<Transition>,
    ) -> Option<usize> {
        let mut candidates = Vec::with_capacity(self.cfg.endpoints.len());
        match self.detector.as_mut() {
            Some(d) => {
                d.advance(now, out);
                d.candidates(&mut candidates);
            }
            None => candidates.extend(0..self.cfg.endpoints.len()),
        }
        // A request on an older config of the cluster picks among hosts it knows.
        let stale = !Arc::ptr_eq(&self.cfg, cluster);
        if stale {
            candidates.retain(|&i| translate(&self.cfg, cluster, i).is_some());
        }
        if candidates.is_empty() {
            return None;
        }
        let picked = match &self.cfg.hash {
            Some(h) => {
                if self.hash.as_ref().is_none_or(|(built_for, _)| *built_for != candidates) {
                    let keys: Vec<String> = candidates
                        .iter()
                        .map(|&i| format!("{}:{}", self.cfg.endpoints[i].host, self.cfg.endpoints[i].port))
                        .collect();
                    let table = match h.table {
                        HashTable::Ring { min_ring_size } => RingHash::new(&keys, min_ring_size).map(HashTableRt::Ring),
                        HashTable::Maglev { table_size } => Maglev::new(&keys, table_size).map(HashTableRt::Maglev),
                    }
                    .expect("hash table sizes are validated and endpoint keys are unique");
                    self.hash = Some((candidates.clone(), table));
                }
                let (_, table) = self.hash.as_ref().expect("built above");
                let key = hash.unwrap_or_else(|| rng.next_u64());
                let i = match table {
                    HashTableRt::Ring(r) => r.pick(key),
                    HashTableRt::Maglev(m) => m.pick(key),
                };
                candidates[i]
            }
            None => self.balancer.pick(self.cfg.lb, &candidates, &self.active, rng),
        };
        debug_assert!(candidates.contains(&picked), "the choice is a candidate");
        if stale { translate(&self.cfg, cluster, picked) } else { Some(picked) }
    }

    /// This state's index of `host` of `cluster` (`None`: the host left the cluster).
    fn own_index(&self, cluster: &Arc<Cluster>, host: usize) -> Option<usize> {
        if Arc::ptr_eq(&self.cfg, cluster) { Some(host) } else { translate(cluster, &self.cfg, host) }
    }

    /// Counts a try to `host` of `cluster` as in flight.
    pub(super) fn commit(&mut self, cluster: &Arc<Cluster>, host: usize) {
        if let Some(h) = self.own_index(cluster, host) {
            self.active[h] = self.active[h].checked_add(1).expect("in-flight count overflows u32");
        }
    }

    /// Ends a try to `host` of `cluster`: no longer in flight; `status` (if any) feeds
    /// outlier detection (connect failures count as 503, timeouts as 504).
    pub(super) fn release(
        &mut self,
        cluster: &Arc<Cluster>,
        host: usize,
        status: Option<u16>,
        now: Duration,
        out: &mut Vec<Transition>,
    ) {
        let Some(host) = self.own_index(cluster, host) else { return };
        // Saturating: a try committed on a config whose state was replaced (not
        // carried) is not counted in this one.
        self.active[host] = self.active[host].saturating_sub(1);
        if let (Some(d), Some(status)) = (self.detector.as_mut(), status) {
            d.advance(now, out);
            d.record(host, status, now, out);
            assert!(d.ejected_count() <= self.cfg.endpoints.len(), "more hosts ejected than exist");
        }
    }
}

impl<N: Net> Sidecar<N> {
    /// Chooses a host of `cluster` without committing to it (see
    /// [`HostChoice::choose`]); emits the outlier transitions that came due.
    pub(super) fn choose_host(&self, cluster: &Arc<Cluster>, hash: Option<u64>) -> Option<usize> {
        let now = self.clock.now();
        self.with_cluster(cluster, |rt| {
            let mut out = Vec::new();
            let picked = {
                let mut rng = self.rng.lock().expect("rng lock");
                rt.choice.choose(cluster, hash, now, &mut *rng, &mut out)
            };
            self.emit(&cluster.name, rt.choice.cfg(), &out);
            picked
        })
    }

    /// Counts a request to `host` as in flight.
    pub(super) fn commit_host(&self, cluster: &Arc<Cluster>, host: usize) {
        self.with_cluster(cluster, |rt| rt.choice.commit(cluster, host));
    }

    /// Ends a request to `host` (see [`HostChoice::release`]).
    pub(super) fn release_host(&self, cluster: &Arc<Cluster>, host: usize, status: Option<u16>) {
        let now = self.clock.now();
        self.with_cluster(cluster, |rt| {
            let mut out = Vec::new();
            rt.choice.release(cluster, host, status, now, &mut out);
            self.emit(&cluster.name, rt.choice.cfg(), &out);
        });
    }
}

/// One try's claim on a host: counted in flight (for LEAST_REQUEST) from
/// [`InFlight::start`] until finished or dropped. A dropped try (the downstream went
/// away) reports nothing to outlier detection.
pub(super) struct InFlight<'a, N: Net> {
    sidecar: &'a Sidecar<N>,
    cluster: &'a Arc<Cluster>,
    host: usize,
    done: bool,
}

impl<'a, N: Net> InFlight<'a, N> {
    pub(super) fn start(sidecar: &'a Sidecar<N>, cluster: &'a Arc<Cluster>, host: usize) -> Self {
        sidecar.commit_host(cluster, host);
        InFlight { sidecar, cluster, host, done: false }
    }

    /// Ends the try; `status` feeds outlier detection.
    pub(super) fn finish(mut self, status: Option<u16>) {
        self.done = true;
        self.sidecar.release_host(self.cluster, self.host, status);
    }
}

impl<N: Net> Drop for InFlight<'_, N> {
    fn drop(&mut self) {
        if !self.done {
            self.sidecar.release_host(self.cluster, self.host, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::proxy::hash::HashPolicy;
    use crate::proxy::outlier::Transition;
    use crate::proxy::pool::Limits;
    use crate::snapshot::{Endpoint, HashLb, LbPolicy, OutlierConfig};

    const S: Duration = Duration::from_secs(1);

    fn endpoint(i: u8) -> Endpoint {
        Endpoint { pod: format!("p-{i}"), host: format!("10.0.0.{i}"), port: 80, mtls: false }
    }

    fn cluster(hosts: &[u8], lb: LbPolicy) -> Arc<Cluster> {
        Arc::new(Cluster {
            name: "c".into(),
            service: "svc".into(),
            subset: None,
            endpoints: hosts.iter().map(|&i| endpoint(i)).collect(),
            lb,
            hash: None,
            outlier: None,
            connect_timeout: S,
            limits: Limits::default(),
            peer_identities: Vec::new(),
        })
    }

    fn with_outlier(c: &Arc<Cluster>) -> Arc<Cluster> {
        let outlier = OutlierConfig {
            consecutive_5xx: Some(2),
            consecutive_gateway: None,
            interval: S,
            base_ejection_time: 5 * S,
            max_ejection_time: 300 * S,
            max_ejection_percent: 100,
            panic_threshold_percent: 0,
        };
        Arc::new(Cluster { outlier: Some(outlier), ..(**c).clone() })
    }

    fn rng() -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(1)
    }

    /// Choices of `n` requests at `now`, each committed and released with `status`.
    fn choices(ch: &mut HostChoice, c: &Arc<Cluster>, n: usize, now: Duration) -> Vec<Option<usize>> {
        let mut rng = rng();
        (0..n).map(|_| ch.choose(c, None, now, &mut rng, &mut Vec::new())).collect()
    }

    fn fail(ch: &mut HostChoice, c: &Arc<Cluster>, host: usize, times: usize, now: Duration) -> Vec<Transition> {
        let mut out = Vec::new();
        for _ in 0..times {
            ch.commit(c, host);
            ch.release(c, host, Some(503), now, &mut out);
        }
        out
    }

    #[test]
    fn an_ejected_host_is_not_chosen_until_the_sweep_readmits_it() {
        let c = with_outlier(&cluster(&[1, 2], LbPolicy::RoundRobin));
        let mut ch = HostChoice::new(c.clone(), Duration::ZERO);
        let out = fail(&mut ch, &c, 0, 2, S / 2);
        assert!(matches!(out[..], [Transition::Ejected { host: 0, .. }]));
        assert!(choices(&mut ch, &c, 4, S).iter().all(|&h| h == Some(1)));
        let mut out = Vec::new();
        ch.sweep(6 * S, &mut out);
        assert!(matches!(out[..], [Transition::Readmitted { host: 0, .. }]));
        assert!(choices(&mut ch, &c, 4, 6 * S).contains(&Some(0)));
    }

    #[test]
    fn with_every_host_ejected_and_no_panic_threshold_there_is_no_healthy_upstream() {
        let c = with_outlier(&cluster(&[1], LbPolicy::RoundRobin));
        let mut ch = HostChoice::new(c.clone(), Duration::ZERO);
        fail(&mut ch, &c, 0, 2, S / 2);
        assert_eq!(choices(&mut ch, &c, 1, S), [None]);
    }

    #[test]
    fn least_request_avoids_a_host_with_tries_in_flight() {
        let c = cluster(&[1, 2], LbPolicy::LeastRequest);
        let mut ch = HostChoice::new(c.clone(), Duration::ZERO);
        for _ in 0..3 {
            ch.commit(&c, 0);
        }
        let picks = choices(&mut ch, &c, 400, Duration::ZERO);
        let busy = picks.iter().filter(|&&h| h == Some(0)).count();
        // Power of two choices picks the busy host only when both draws land on it.
        assert!((60..140).contains(&busy), "busy host picked {busy} of 400");
        for _ in 0..3 {
            ch.release(&c, 0, None, Duration::ZERO, &mut Vec::new());
        }
        assert_eq!(ch.active, [0, 0]);
    }

    #[test]
    fn a_request_on_an_older_config_gets_only_hosts_it_knows_in_its_own_numbering() {
        let old = cluster(&[1, 2], LbPolicy::RoundRobin);
        let new = cluster(&[3, 2], LbPolicy::RoundRobin);
        let ch = HostChoice::new(old.clone(), Duration::ZERO);
        let mut ch = ch.carry(new.clone(), Duration::ZERO);
        // Host 10.0.0.2 is index 1 in both; 10.0.0.3 is unknown to the old config.
        assert!(choices(&mut ch, &old, 4, Duration::ZERO).iter().all(|&h| h == Some(1)));
        assert!(choices(&mut ch, &new, 4, Duration::ZERO).contains(&Some(0)));
    }

    #[test]
    fn carrying_keeps_in_flight_counts_and_ejections_of_hosts_that_stay() {
        let old = with_outlier(&cluster(&[1, 2], LbPolicy::RoundRobin));
        let mut ch = HostChoice::new(old.clone(), Duration::ZERO);
        ch.commit(&old, 1);
        fail(&mut ch, &old, 0, 2, S / 2);
        // 10.0.0.1 (ejected) and 10.0.0.2 (one in flight) swap places; 10.0.0.4 joins.
        let new = with_outlier(&cluster(&[2, 1, 4], LbPolicy::RoundRobin));
        let mut ch = ch.carry(new.clone(), S);
        assert_eq!(ch.active, [1, 0, 0]);
        let picks = choices(&mut ch, &new, 6, S);
        assert!(!picks.contains(&Some(1)), "the ejected host stays ejected: {picks:?}");
        // The try committed on the old config ends on the new one's host.
        ch.release(&old, 1, Some(200), S, &mut Vec::new());
        assert_eq!(ch.active, [0, 0, 0]);
    }

    #[test]
    fn a_hash_key_always_lands_on_the_same_host_while_the_candidates_stay() {
        let hash = HashLb {
            policy: HashPolicy::Header(http::HeaderName::from_static("x-user")),
            table: HashTable::Ring { min_ring_size: 1024 },
        };
        let c = Arc::new(Cluster { hash: Some(hash), ..(*cluster(&[1, 2, 3, 4], LbPolicy::RoundRobin)).clone() });
        let mut ch = HostChoice::new(c.clone(), Duration::ZERO);
        let mut rng = rng();
        for key in [1u64, 99, 12345] {
            let first = ch.choose(&c, Some(key), Duration::ZERO, &mut rng, &mut Vec::new());
            for _ in 0..5 {
                assert_eq!(ch.choose(&c, Some(key), Duration::ZERO, &mut rng, &mut Vec::new()), first);
            }
        }
    }
}
