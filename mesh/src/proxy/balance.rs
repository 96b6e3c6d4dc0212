//! Load balancers over a cluster's candidate hosts: LEAST_REQUEST (power of two choices,
//! Envoy's and Istio's default), ROUND_ROBIN and RANDOM. Pure: the caller passes the
//! candidates, their active request counts and a seeded RNG. Which hosts are candidates
//! (ejections, panic mode) is decided by `outlier` and the cluster, not here.

use rand::Rng;

use crate::snapshot::LbPolicy;

/// Balancer state that outlives one pick.
#[derive(Debug, Default)]
pub struct Balancer {
    rr_next: usize,
}

impl Balancer {
    /// Picks one of `candidates` (indices into the cluster's host list); `active[i]` is
    /// host i's in-flight request count. Panics if `candidates` is empty.
    pub fn pick(&mut self, policy: LbPolicy, candidates: &[usize], active: &[u32], rng: &mut impl Rng) -> usize {
        assert!(!candidates.is_empty(), "pick needs at least one candidate");
        match policy {
            LbPolicy::Random => candidates[rng.random_range(0..candidates.len())],
            LbPolicy::RoundRobin => {
                let host = candidates[self.rr_next % candidates.len()];
                self.rr_next = self.rr_next.wrapping_add(1);
                host
            }
            LbPolicy::LeastRequest => {
                // Envoy: choice_count = 2 draws with replacement; the first wins ties.
                let first = candidates[rng.random_range(0..candidates.len())];
                let second = candidates[rng.random_range(0..candidates.len())];
                if active[second] < active[first] { second } else { first }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{prop_assert, prop_assert_eq, proptest};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn round_robin_cycles_through_candidates() {
        let mut b = Balancer::default();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let picks: Vec<usize> = (0..6).map(|_| b.pick(LbPolicy::RoundRobin, &[0, 2, 5], &[0; 6], &mut rng)).collect();
        assert_eq!(picks, [0, 2, 5, 0, 2, 5]);
    }

    #[test]
    fn least_request_avoids_the_busiest_host() {
        // With two hosts, p2c picks the busy one only when both draws land on it: 1/4.
        let mut b = Balancer::default();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let n = 4000;
        let busy = (0..n).filter(|_| b.pick(LbPolicy::LeastRequest, &[0, 1], &[9, 0], &mut rng) == 0).count();
        let share = busy as f64 / n as f64;
        assert!((share - 0.25).abs() < 0.03, "busy host share {share}");
    }

    proptest! {
        #[test]
        fn every_policy_picks_a_candidate(seed: u64, cands in proptest::collection::btree_set(0usize..8, 1..8), active in proptest::collection::vec(0u32..10, 8)) {
            let cands: Vec<usize> = cands.into_iter().collect();
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut b = Balancer::default();
            for p in [LbPolicy::LeastRequest, LbPolicy::RoundRobin, LbPolicy::Random] {
                prop_assert!(cands.contains(&b.pick(p, &cands, &active, &mut rng)));
            }
        }

        #[test]
        fn p2c_never_picks_a_host_busier_than_both_draws(seed: u64, active in proptest::collection::vec(0u32..10, 2..8)) {
            // The pick is never the unique busiest host unless it was drawn twice, so with
            // all others idle it is picked at most at rate 1/n^2; check the local rule instead:
            let cands: Vec<usize> = (0..active.len()).collect();
            let mut r1 = ChaCha8Rng::seed_from_u64(seed);
            let mut r2 = ChaCha8Rng::seed_from_u64(seed);
            let a = cands[r2.random_range(0..cands.len())];
            let b2 = cands[r2.random_range(0..cands.len())];
            let got = Balancer::default().pick(LbPolicy::LeastRequest, &cands, &active, &mut r1);
            prop_assert_eq!(active[got], active[a].min(active[b2]));
        }
    }
}
