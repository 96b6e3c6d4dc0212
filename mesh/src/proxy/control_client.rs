//! The sidecar's control-plane client: connects to the control plane through the `Net`
//! seam, says hello, applies every pushed view it can and answers each push with an ACK
//! or a NACK (protocol: `crate::control`). When the stream breaks or goes silent it
//! keeps serving on its last good config and reconnects after a jittered exponential
//! backoff from its own seeded RNG; a new stream starts with a full push (resync).
//!
//! A proxy refuses (NACKs) a view it cannot run, keeping its last good config. Besides
//! a view that does not parse, that is a cluster Envoy's own config validation
//! rejects although Istio's validation accepts it: a consistent-hash ring whose
//! `minimumRingSize` exceeds Envoy's `maximum_ring_size` (8,388,608), or a maglev
//! `tableSize` above 5,000,011; or a local rate limit whose token bucket Envoy refuses.
//! Not here: what a config does (the sidecar) or what the
//! control plane makes of a NACK (it records it).

use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::Sidecar;
use super::hash::{Maglev, RingHash};
use crate::control::view::ProxyConfig;
use crate::control::wire::{self, ToControl, ToProxy};
use crate::net::Net;
use crate::snapshot::{HashTable, Snapshot};

/// Where the control plane listens and how to reach it.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Host name, resolved through the `Net` seam.
    pub host: String,
    pub port: u16,
    /// Seed of the backoff jitter.
    pub seed: u64,
}

/// Giving up on one connection attempt.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Silence after which the stream counts as lost (the control plane pings every
/// `control::KEEPALIVE`).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(25);
/// First reconnect backoff, doubled per failed attempt up to [`MAX_BACKOFF`].
pub const BASE_BACKOFF: Duration = Duration::from_millis(500);
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The wait before reconnect attempt `failures` (1 = the first after a loss): half the
/// exponential step plus a uniform draw of the other half (`draw` in [0, 1)).
pub fn backoff(failures: u32, draw: f64) -> Duration {
    let step = BASE_BACKOFF.saturating_mul(1 << failures.saturating_sub(1).min(16)).min(MAX_BACKOFF);
    step / 2 + step.mul_f64(draw.clamp(0.0, 1.0) / 2.0)
}

/// Turns a pushed view into a snapshot, or the reason the proxy refuses it.
pub fn build(config: &ProxyConfig) -> Result<Snapshot, String> {
    let snap = config.compile()?;
    for f in &snap.inbound_rate_limits {
        f.filter.config.validate().map_err(|e| format!("{}: local rate limit: {e}", f.resource))?;
    }
    for c in snap.clusters.values() {
        match c.hash.as_ref().map(|h| h.table) {
            Some(HashTable::Ring { min_ring_size }) if min_ring_size > RingHash::MAX_RING_SIZE => {
                return Err(format!(
                    "cluster {}: Proto constraint validation failed (RingHashLbConfigValidationError.MinimumRingSize: value must be less than or equal to {})",
                    c.name,
                    RingHash::MAX_RING_SIZE
                ));
            }
            Some(HashTable::Maglev { table_size }) if table_size > Maglev::MAX_TABLE_SIZE => {
                return Err(format!(
                    "cluster {}: Proto constraint validation failed (MaglevLbConfigValidationError.TableSize: value must be less than or equal to {})",
                    c.name,
                    Maglev::MAX_TABLE_SIZE
                ));
            }
            _ => {}
        }
    }
    Ok(snap)
}

/// Runs the client for `sidecar` forever.
pub async fn run<N: Net>(sidecar: Arc<Sidecar<N>>, cfg: ClientConfig) {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    // The last view applied, so an unchanged push (no config) can be ACKed.
    let mut applied: Option<ProxyConfig> = None;
    let mut failures = 0u32;
    loop {
        if session(&sidecar, &cfg, &mut applied).await {
            failures = 0;
        }
        failures += 1;
        tokio::time::sleep(backoff(failures, rng.random::<f64>())).await;
    }
}

/// One stream, until it breaks. Returns whether a push arrived on it.
async fn session<N: Net>(sidecar: &Sidecar<N>, cfg: &ClientConfig, applied: &mut Option<ProxyConfig>) -> bool {
    let Ok(addr) = sidecar.net.resolve(&cfg.host, cfg.port).await else { return false };
    let Ok(Ok(mut stream)) = tokio::time::timeout(CONNECT_TIMEOUT, sidecar.net.connect(addr)).await else {
        return false;
    };
    let hello = ToControl::Hello { pod: sidecar.pod().to_string(), namespace: sidecar.namespace().to_string() };
    if wire::write(&mut stream, &hello).await.is_err() {
        return false;
    }
    let mut pushed = false;
    loop {
        let msg = match tokio::time::timeout(IDLE_TIMEOUT, wire::read::<_, ToProxy>(&mut stream)).await {
            Ok(Ok(m)) => m,
            _ => return pushed,
        };
        let ToProxy::Push { version, config } = msg else { continue };
        pushed = true;
        let answer = match config {
            None if applied.is_some() => ToControl::Ack { version },
            None => ToControl::Nack { version, reason: "no config to keep: the first push must carry one".into() },
            Some(c) => match build(&c) {
                Ok(snap) => {
                    sidecar.apply(snap);
                    *applied = Some(c);
                    ToControl::Ack { version }
                }
                Err(reason) => ToControl::Nack { version, reason },
            },
        };
        if wire::write(&mut stream, &answer).await.is_err() {
            return pushed;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        assert_eq!(backoff(1, 0.0), Duration::from_millis(250));
        assert_eq!(backoff(1, 0.999_999), Duration::from_millis(500) - Duration::from_nanos(250));
        assert_eq!(backoff(3, 0.0), Duration::from_secs(1));
        assert_eq!(backoff(30, 0.0), MAX_BACKOFF / 2);
        assert!(backoff(30, 0.999) <= MAX_BACKOFF);
    }
}
