//! The control plane (istiod's config half): a network service that holds the config
//! store ([`store`]: Istio resources, the service registry with pod readiness), computes
//! each proxy's view ([`view`]: only what that proxy needs) and pushes it over the
//! `Net` seam, versioned, recording every proxy's ACK or NACK.
//!
//! Not here: the proxy's side of the protocol (`crate::proxy::control_client`),
//! certificates (the CA), and where changes come from (a scenario's steps, the world's
//! view of pod readiness): callers change the [`Store`] and the control plane pushes.
//!
//! # The push protocol
//!
//! One TCP stream per proxy, opened by the proxy. Each message is a frame: a 4-byte
//! big-endian length, then that many bytes of JSON ([`wire`]; at most
//! [`wire::MAX_FRAME_BYTES`]).
//!
//! 1. The proxy sends `{"type":"hello","pod":…,"namespace":…}`. A control plane that
//!    does not know the pod closes the stream.
//! 2. The control plane sends `{"type":"push","version":V,"config":{…}}`: the full view
//!    at the current version.
//! 3. The proxy answers every push with `{"type":"ack","version":V}` once it runs V, or
//!    `{"type":"nack","version":V,"reason":…}` when it cannot apply it: it then keeps
//!    its last good config.
//! 4. On every change of the store (coalesced over [`DEBOUNCE`], as istiod's debounce
//!    does) the control plane pushes the new version. `config` is `null` when the
//!    proxy's view equals the last one it ACKed on this stream: only the version moves.
//! 5. After [`KEEPALIVE`] without sending anything the control plane sends
//!    `{"type":"ping"}`; a proxy that hears nothing for longer than its idle timeout
//!    drops the stream, reconnects and starts at 1 (a full push: resync).

pub mod store;
pub mod view;
pub mod wire;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::net::{Clock, Listener};
pub use store::{Store, StoredResource};
use view::View;
use wire::{ToControl, ToProxy};

/// Changes arriving this close together go out as one push (istiod's
/// `PILOT_DEBOUNCE_AFTER`).
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// Idle time after which the control plane pings a proxy.
pub const KEEPALIVE: Duration = Duration::from_secs(10);
/// How long a new stream may take to say hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// istiod's plaintext xDS port.
pub const PORT: u16 = 15010;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlEventKind {
    /// The store moved to `version` (reported by whoever changed it; `proxy` is empty).
    Changed {
        what: String,
    },
    Connected,
    Disconnected,
    Acked,
    Nacked {
        reason: String,
    },
}

/// Something the control plane saw of one proxy. `version`: the version pushed or
/// answered (for `Connected` and `Disconnected`, the last version the proxy ACKed on
/// that stream, 0 if none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlEvent {
    pub at: Duration,
    pub proxy: String,
    pub version: u64,
    pub kind: ControlEventKind,
}

/// Where the control plane reports.
pub trait ControlEvents: Send + Sync + 'static {
    fn control_event(&self, event: ControlEvent);
}

pub struct ControlPlane {
    store: Arc<Store>,
    clock: Arc<dyn Clock>,
    events: Arc<dyn ControlEvents>,
}

/// A task that is aborted when this handle is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The body of a push frame (the view's JSON is encoded once per view).
fn push_frame(version: u64, view: Option<&View>) -> Vec<u8> {
    let config = view.map_or("null", |v| v.json.as_str());
    format!(r#"{{"type":"push","version":{version},"config":{config}}}"#).into_bytes()
}

impl ControlPlane {
    pub fn new(store: Arc<Store>, clock: Arc<dyn Clock>, events: Arc<dyn ControlEvents>) -> Arc<ControlPlane> {
        Arc::new(ControlPlane { store, clock, events })
    }

    fn event(&self, proxy: &str, version: u64, kind: ControlEventKind) {
        self.events.control_event(ControlEvent { at: self.clock.now(), proxy: proxy.to_string(), version, kind });
    }

    /// Serves proxies on `listener` until it fails. Dropping the future ends every
    /// connection it accepted.
    pub async fn serve<L: Listener>(self: Arc<Self>, mut listener: L) -> io::Result<()> {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                biased;
                Some(_) = connections.join_next() => {}
                accepted = listener.accept() => {
                    let (stream, _) = accepted?;
                    connections.spawn(self.clone().connection(stream));
                }
            }
        }
    }

    async fn connection<S: crate::net::Stream>(self: Arc<Self>, stream: S) {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let Ok(Ok(ToControl::Hello { pod, .. })) = tokio::time::timeout(HELLO_TIMEOUT, wire::read(&mut rd)).await
        else {
            return;
        };
        if self.store.view_of(&pod).is_none() {
            return;
        }
        // Reading is not cancel-safe: a task reads whole frames and hands them over.
        let (tx, mut answers) = mpsc::channel::<ToControl>(16);
        // Aborted when this connection ends or is dropped (istiod going away), so the
        // stream closes and the proxy sees it at once.
        let _reader = AbortOnDrop(tokio::spawn(async move {
            while let Ok(msg) = wire::read::<_, ToControl>(&mut rd).await {
                if tx.send(msg).await.is_err() {
                    break;
                }
            }
        }));
        let mut changes = self.store.subscribe();
        changes.mark_unchanged();
        // The view the proxy last ACKed on this stream, and the pushes awaiting an answer.
        let mut acked: Option<(u64, Arc<View>)> = None;
        let mut pending: Vec<(u64, Arc<View>)> = Vec::new();
        let mut push = true;
        self.event(&pod, 0, ControlEventKind::Connected);
        loop {
            if push {
                push = false;
                let Some((version, view)) = self.store.view_of(&pod) else { break };
                let same = acked.as_ref().is_some_and(|(_, a)| Arc::ptr_eq(a, &view) || a.config == view.config);
                let frame = push_frame(version, (!same).then_some(&*view));
                if wire::write_raw(&mut wr, &frame).await.is_err() {
                    break;
                }
                // A bounded backlog: a proxy that never answers keeps only its latest pushes.
                if pending.len() >= 16 {
                    pending.remove(0);
                }
                pending.push((version, view));
            }
            tokio::select! {
                biased;
                msg = answers.recv() => match msg {
                    None => break,
                    Some(ToControl::Ack { version }) => {
                        if let Some(i) = pending.iter().position(|(v, _)| *v == version) {
                            acked = Some(pending.remove(i));
                            pending.retain(|(v, _)| *v > version);
                        }
                        self.event(&pod, version, ControlEventKind::Acked);
                    }
                    Some(ToControl::Nack { version, reason }) => {
                        pending.retain(|(v, _)| *v > version);
                        self.event(&pod, version, ControlEventKind::Nacked { reason });
                    }
                    Some(ToControl::Hello { .. }) => break,
                },
                changed = changes.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    tokio::time::sleep(DEBOUNCE).await;
                    changes.mark_unchanged();
                    push = true;
                }
                _ = tokio::time::sleep(KEEPALIVE) => {
                    let ping = serde_json::to_vec(&ToProxy::Ping).expect("ping serializes");
                    if wire::write_raw(&mut wr, &ping).await.is_err() {
                        break;
                    }
                }
            }
        }
        self.event(&pod, acked.map_or(0, |(v, _)| v), ControlEventKind::Disconnected);
    }
}
