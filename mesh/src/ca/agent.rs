//! The certificate agent in each sidecar (Istio's `pilot-agent` secret manager): asks the CA
//! for a certificate at start, renews it at `expiry − ratio×lifetime` with ratio 0.5 ± up to
//! 0.01 drawn from its seeded RNG (Istio's `SECRET_GRACE_PERIOD_RATIO`, see
//! [Istio's PKI](https://istio.io/latest/docs/concepts/security/#pki)), retries with
//! jittered, capped exponential backoff while the CA does not answer, fetches again when
//! the CA's roots change, and installs every new chain, key and trust bundle into an
//! [`IdentitySink`] (the sidecar's identity store: new handshakes use it, established and
//! pooled connections keep theirs). Its lifecycle is the enum [`CertState`]; the async
//! driver ([`Agent::run`]) only sleeps, calls the CA (over a plain [`Client`]) and feeds
//! the results in. Not here: issuing (`authority`), the wire protocol (`service`), HTTP
//! itself (`crate::http`).

use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::watch;

use super::service::{CaAddress, FetchError, Granted, request_certificate};
use super::{authority, keys};
use crate::http::Client;
use crate::identity::{IdentitySink, SpiffeId};
use crate::net::{Clock, Net};

/// Istio's `SECRET_GRACE_PERIOD_RATIO`, in parts per million of the lifetime.
pub const GRACE_RATIO_PPM: u64 = 500_000;
/// The largest jitter added to or taken from the ratio (0.01).
pub const GRACE_JITTER_PPM: u64 = 10_000;
/// The first retry waits about this long; each failure doubles it up to [`BACKOFF_MAX`].
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long one CSR may wait for the CA.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A certificate's validity (Unix time, whole seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: Duration,
    pub not_after: Duration,
}

/// Where the agent's certificate is in its life. Times are Unix times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertState {
    /// No certificate yet; the next request goes out at `retry_at` (`failures` so far).
    Requesting { failures: u32, retry_at: Duration },
    /// A valid certificate, renewed at `renew_at`.
    Valid { cert: Validity, renew_at: Duration },
    /// Renewal is due and the current certificate still serves; next try at `retry_at`.
    Renewing { cert: Validity, failures: u32, retry_at: Duration },
    /// The certificate expired before a renewal came back; next try at `retry_at`.
    Expired { failures: u32, retry_at: Duration },
}

/// What a transition tells the world.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertEvent {
    /// A certificate where there was none (at start, or after expiry).
    Issued { not_after: Duration },
    /// A certificate replaced one that was still valid.
    Renewed { not_after: Duration },
    /// The first failed request of a run of failures (the rest retry quietly).
    CaUnreachable { error: String },
    /// The certificate's lifetime ended with no replacement.
    Expired,
}

/// When to renew a certificate: `not_after − ratio × lifetime`, ratio = 0.5 + `jitter_ppm`
/// millionths (clamped to [0, 1]); never before `not_before`.
pub fn renew_at(cert: Validity, jitter_ppm: i64) -> Duration {
    let ratio = (GRACE_RATIO_PPM as i64 + jitter_ppm).clamp(0, 1_000_000) as u128;
    let lifetime = cert.not_after.saturating_sub(cert.not_before);
    let grace = Duration::from_nanos((lifetime.as_nanos() * ratio / 1_000_000) as u64);
    cert.not_after.saturating_sub(grace).max(cert.not_before)
}

/// The wait before retry number `failures` (1 = after the first failure): half of
/// `min(max, base × 2^(failures−1))` plus a uniform draw over the other half.
pub fn backoff(failures: u32, draw_ppm: u64) -> Duration {
    let full = BACKOFF_BASE.saturating_mul(1u32 << failures.saturating_sub(1).min(16)).min(BACKOFF_MAX);
    let half = full / 2;
    half + Duration::from_nanos((half.as_nanos() * u128::from(draw_ppm.min(1_000_000)) / 1_000_000) as u64)
}

impl CertState {
    /// At start: ask at once.
    pub fn start(now: Duration) -> CertState {
        CertState::Requesting { failures: 0, retry_at: now }
    }

    /// When something next happens if nothing comes in: a request, or expiry.
    pub fn next_at(&self) -> Duration {
        match *self {
            CertState::Requesting { retry_at, .. } | CertState::Expired { retry_at, .. } => retry_at,
            CertState::Valid { renew_at, .. } => renew_at,
            CertState::Renewing { cert, retry_at, .. } => retry_at.min(cert.not_after),
        }
    }

    /// Whether a request to the CA is due at `now`.
    pub fn wants_request(&self, now: Duration) -> bool {
        match *self {
            CertState::Requesting { retry_at, .. }
            | CertState::Renewing { retry_at, .. }
            | CertState::Expired { retry_at, .. } => now >= retry_at,
            CertState::Valid { .. } => false,
        }
    }

    /// Time passes: a due renewal starts; a certificate past its end expires.
    pub fn on_time(self, now: Duration) -> (CertState, Option<CertEvent>) {
        match self {
            CertState::Valid { cert, renew_at } if now >= renew_at => {
                CertState::Renewing { cert, failures: 0, retry_at: renew_at }.on_time(now)
            }
            CertState::Renewing { cert, failures, retry_at } if now >= cert.not_after => {
                (CertState::Expired { failures, retry_at }, Some(CertEvent::Expired))
            }
            other => (other, None),
        }
    }

    /// The CA's roots changed: fetch a new chain and bundle now.
    pub fn on_roots_changed(self, now: Duration) -> CertState {
        match self {
            CertState::Valid { cert, .. } => CertState::Renewing { cert, failures: 0, retry_at: now },
            CertState::Requesting { failures, .. } => CertState::Requesting { failures, retry_at: now },
            CertState::Renewing { cert, failures, .. } => CertState::Renewing { cert, failures, retry_at: now },
            CertState::Expired { failures, .. } => CertState::Expired { failures, retry_at: now },
        }
    }

    /// A new certificate arrived; it is renewed at `renew_at`.
    pub fn on_issued(self, cert: Validity, renew_at: Duration) -> (CertState, CertEvent) {
        let event = match self {
            CertState::Valid { .. } | CertState::Renewing { .. } => CertEvent::Renewed { not_after: cert.not_after },
            CertState::Requesting { .. } | CertState::Expired { .. } => CertEvent::Issued { not_after: cert.not_after },
        };
        (CertState::Valid { cert, renew_at }, event)
    }

    /// A request failed at `now`; the next one waits `wait` (from [`backoff`] with the
    /// new failure count). The first failure of a run is reported.
    pub fn on_failure(self, now: Duration, wait: Duration, error: &str) -> (CertState, Option<CertEvent>) {
        let retry_at = now + wait;
        let (next, failures) = match self {
            CertState::Requesting { failures, .. } => {
                (CertState::Requesting { failures: failures + 1, retry_at }, failures)
            }
            CertState::Valid { cert, .. } => (CertState::Renewing { cert, failures: 1, retry_at }, 0),
            CertState::Renewing { cert, failures, .. } => {
                (CertState::Renewing { cert, failures: failures + 1, retry_at }, failures)
            }
            CertState::Expired { failures, .. } => (CertState::Expired { failures: failures + 1, retry_at }, failures),
        };
        let event = (failures == 0).then(|| CertEvent::CaUnreachable { error: error.to_string() });
        (next, event)
    }

    /// Failures in the current run.
    pub fn failures(&self) -> u32 {
        match *self {
            CertState::Requesting { failures, .. }
            | CertState::Renewing { failures, .. }
            | CertState::Expired { failures, .. } => failures,
            CertState::Valid { .. } => 0,
        }
    }
}

/// Where the agent reports its lifecycle events (the sidecar's telemetry).
pub trait CertEvents: Send + Sync + 'static {
    /// `at`: the `Clock::now` time of the event.
    fn cert_event(&self, pod: &str, id: &SpiffeId, at: Duration, event: &CertEvent);
}

/// What an agent needs to know.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The pod it serves (names its events).
    pub pod: String,
    pub id: SpiffeId,
    /// The pod's bootstrap credential.
    pub token: String,
    pub ca: CaAddress,
    /// The TTL to ask for; `None` = the CA's default.
    pub ttl: Option<Duration>,
    /// Seeds keys, jitter and backoff draws.
    pub seed: u64,
}

pub struct Agent<N: Net> {
    cfg: AgentConfig,
    client: Client<N>,
    clock: Arc<dyn Clock>,
    sink: Arc<dyn IdentitySink>,
    events: Arc<dyn CertEvents>,
    roots: watch::Receiver<u64>,
    rng: ChaCha8Rng,
}

impl<N: Net> Agent<N> {
    /// `roots`: changes when the CA's roots change ([`super::service::CaServer::roots_changed`]).
    pub fn new(
        cfg: AgentConfig,
        net: N,
        clock: Arc<dyn Clock>,
        sink: Arc<dyn IdentitySink>,
        events: Arc<dyn CertEvents>,
        roots: watch::Receiver<u64>,
    ) -> Agent<N> {
        Agent { rng: ChaCha8Rng::seed_from_u64(cfg.seed), cfg, client: Client::new(net), clock, sink, events, roots }
    }

    fn emit(&self, event: &CertEvent) {
        self.events.cert_event(&self.cfg.pod, &self.cfg.id, self.clock.now(), event);
    }

    /// One CSR with a fresh key; installs the answer.
    async fn fetch(&mut self) -> Result<Validity, FetchError> {
        let key = keys::ed25519_key(&mut self.rng);
        let csr = keys::csr_der(&self.cfg.id, &key);
        let Granted { chain, trust_bundle } =
            request_certificate(&self.client, &self.cfg.ca, &self.cfg.token, &csr, self.cfg.ttl).await?;
        let bad = |e: String| FetchError::Refused { status: 200, message: e };
        let leaf = chain.first().ok_or_else(|| bad("empty chain".into()))?;
        let not_after = authority::not_after(leaf).map_err(bad)?;
        let not_before = authority::not_before(leaf).map_err(bad)?;
        // The bundle first: a peer's new chain may already need the new root.
        self.sink.set_trust_bundle(trust_bundle).map_err(bad)?;
        self.sink.install(chain, key.serialize_der()).map_err(bad)?;
        Ok(Validity { not_before, not_after })
    }

    /// Runs the lifecycle forever.
    pub async fn run(mut self) {
        let mut state = CertState::start(self.clock.unix_time());
        loop {
            let now = self.clock.unix_time();
            let (next, event) = state.on_time(now);
            state = next;
            if let Some(e) = event {
                self.emit(&e);
            }
            if state.wants_request(now) {
                match self.fetch().await {
                    Ok(cert) => {
                        let jitter = self.rng.random_range(-(GRACE_JITTER_PPM as i64)..=GRACE_JITTER_PPM as i64);
                        let (next, event) = state.on_issued(cert, renew_at(cert, jitter));
                        state = next;
                        self.emit(&event);
                    }
                    Err(e) => {
                        let wait = backoff(state.failures() + 1, self.rng.random_range(0..=1_000_000));
                        let (next, event) = state.on_failure(self.clock.unix_time(), wait, &e.to_string());
                        state = next;
                        if let Some(e) = event {
                            self.emit(&e);
                        }
                    }
                }
                continue;
            }
            let wait = state.next_at().saturating_sub(now);
            tokio::select! {
                biased;
                changed = self.roots.changed() => {
                    if changed.is_ok() {
                        state = state.on_roots_changed(self.clock.unix_time());
                    } else {
                        // The CA is gone for good: only time moves the lifecycle now.
                        tokio::time::sleep(wait).await;
                    }
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests;
