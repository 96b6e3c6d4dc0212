//! The proxy cost model: the processing time a simulated sidecar spends, so that the
//! simulated mesh pays a latency tax at all (real sockets in turmoil cost nothing).
//! Each request pays one draw at each sidecar it crosses (outbound at the caller, inbound
//! at the callee, each retry again), and an accepted mTLS connection pays one handshake
//! draw before its first request. Draws come from a per-sidecar RNG seeded from the run.
//! It does not model CPU contention: costs do not grow with load.

use std::sync::Mutex;
use std::time::Duration;

use mesh::proxy::ProcessingCost;
use mesh::proxy::telemetry::Direction;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::app::sample;
use crate::scenario::{Latency, ProxyCost};

/// One sidecar's draws.
#[derive(Debug)]
pub struct SidecarCost {
    cost: ProxyCost,
    rng: Mutex<ChaCha8Rng>,
}

impl SidecarCost {
    pub fn new(cost: ProxyCost, seed: u64) -> SidecarCost {
        SidecarCost { cost, rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)) }
    }

    fn draw(&self, l: &Latency) -> Duration {
        sample(l, &mut *self.rng.lock().expect("cost rng lock"))
    }
}

impl ProcessingCost for SidecarCost {
    fn request(&self, dir: Direction) -> Duration {
        match dir {
            Direction::Outbound => self.draw(&self.cost.outbound),
            Direction::Inbound => self.draw(&self.cost.inbound),
        }
    }

    fn tls_handshake(&self) -> Duration {
        self.draw(&self.cost.tls_handshake)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default model's two hops together match Istio's published p90 tax (2.65 ms)
    /// within 10%.
    #[test]
    fn default_two_hop_p90_is_close_to_istios_published_figure() {
        let c = SidecarCost::new(ProxyCost::default(), 7);
        let mut sums: Vec<Duration> =
            (0..20_000).map(|_| c.request(Direction::Outbound) + c.request(Direction::Inbound)).collect();
        sums.sort();
        let p90 = sums[sums.len() * 9 / 10].as_secs_f64() * 1e3;
        assert!((p90 - 2.65).abs() < 0.265, "p90 of two hops = {p90:.3} ms");
    }

    #[test]
    fn same_seed_same_draws() {
        let a = SidecarCost::new(ProxyCost::default(), 3);
        let b = SidecarCost::new(ProxyCost::default(), 3);
        for _ in 0..100 {
            assert_eq!(a.request(Direction::Inbound), b.request(Direction::Inbound));
            assert_eq!(a.tls_handshake(), b.tls_handshake());
        }
    }
}
