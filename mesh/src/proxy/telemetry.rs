//! What a proxy reports to the world outside it: one access-log entry per request it
//! handles, a span per hop (`tracing`) and an event per outlier-detection transition.
//! The sink is a trait so the simulator can record into its run results and real mode
//! can keep them in memory. Metrics are not reported here: each sidecar keeps its own
//! (`metrics`) and serves them.

use std::sync::Mutex;
use std::time::Duration;

use super::outlier::Reason;
use super::tls::Peer;
use super::tracing::{OwnedSpan, Span};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Direction {
    Outbound,
    Inbound,
}

/// One request as a proxy saw it (Envoy's access log, reduced). Borrowed: a sink keeps
/// what it needs ([`AccessLog::to_owned`] for all of it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccessLog<'a> {
    /// The pod whose sidecar logged this.
    pub proxy: &'a str,
    pub direction: Direction,
    pub request_id: Option<&'a str>,
    /// Route name (outbound) or `inbound`.
    pub route: &'a str,
    /// Cluster name, empty when no cluster was chosen.
    pub cluster: &'a str,
    /// The pod the request was sent to, if one was picked.
    pub upstream_pod: Option<&'a str>,
    /// Inbound: the downstream connection's security and verified identity.
    pub peer: Option<&'a Peer>,
    pub status: u16,
    /// Envoy response flags, comma-joined; `-` when none.
    pub flags: &'a str,
    pub start: Duration,
    pub duration: Duration,
}

/// An [`AccessLog`] that owns its strings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedAccessLog {
    pub proxy: String,
    pub direction: Direction,
    pub request_id: Option<String>,
    pub route: String,
    pub cluster: String,
    pub upstream_pod: Option<String>,
    pub peer: Option<Peer>,
    pub status: u16,
    pub flags: String,
    pub start: Duration,
    pub duration: Duration,
}

impl AccessLog<'_> {
    pub fn to_owned(&self) -> OwnedAccessLog {
        OwnedAccessLog {
            proxy: self.proxy.to_string(),
            direction: self.direction,
            request_id: self.request_id.map(str::to_string),
            route: self.route.to_string(),
            cluster: self.cluster.to_string(),
            upstream_pod: self.upstream_pod.map(str::to_string),
            peer: self.peer.cloned(),
            status: self.status,
            flags: self.flags.to_string(),
            start: self.start,
            duration: self.duration,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutlierKind {
    Ejected {
        reason: Reason,
        for_: Duration,
    },
    /// A trigger fired but `maxEjectionPercent` did not allow the ejection.
    Overflow {
        reason: Reason,
    },
    Readmitted,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutlierEvent {
    pub proxy: String,
    pub cluster: String,
    pub pod: String,
    pub at: Duration,
    pub kind: OutlierKind,
}

/// An inbound connection the sidecar refused for its security (a failed mTLS handshake,
/// plaintext into STRICT); `reason` is a [`super::tls::TlsFailure`] name,
/// `plaintext_in_strict` or `no_tls_identity`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecurityEvent {
    pub proxy: String,
    pub at: Duration,
    pub peer: std::net::SocketAddr,
    pub reason: String,
}

pub trait Telemetry: Send + Sync + 'static {
    /// Whether access-log entries of this direction are wanted (building one costs).
    fn wants_access_log(&self, _dir: Direction) -> bool {
        true
    }
    fn access_log(&self, entry: &AccessLog<'_>);
    fn outlier_event(&self, event: OutlierEvent);
    /// A refused inbound connection (ignored unless a sink wants it).
    fn security_event(&self, _event: SecurityEvent) {}
    /// A finished span; the default drops it.
    fn span(&self, _span: &Span<'_>) {}
}

/// Keeps everything in memory, in arrival order.
#[derive(Debug, Default)]
pub struct MemoryTelemetry {
    pub logs: Mutex<Vec<OwnedAccessLog>>,
    pub events: Mutex<Vec<OutlierEvent>>,
    pub spans: Mutex<Vec<OwnedSpan>>,
}

impl Telemetry for MemoryTelemetry {
    fn access_log(&self, entry: &AccessLog<'_>) {
        self.logs.lock().expect("telemetry lock").push(entry.to_owned());
    }
    fn outlier_event(&self, event: OutlierEvent) {
        self.events.lock().expect("telemetry lock").push(event);
    }
    fn span(&self, span: &Span<'_>) {
        self.spans.lock().expect("telemetry lock").push(span.to_owned());
    }
}
