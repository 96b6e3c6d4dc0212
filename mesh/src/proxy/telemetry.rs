//! What a proxy reports: one access-log entry per request it handles and an event per
//! outlier-detection transition. The sink is a trait so the simulator can record into
//! its run results and real mode can keep them in memory.

use std::sync::Mutex;
use std::time::Duration;

use super::outlier::Reason;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Direction {
    Outbound,
    Inbound,
}

/// One request as a proxy saw it (Envoy's access log, reduced).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessLog {
    /// The pod whose sidecar logged this.
    pub proxy: String,
    pub direction: Direction,
    pub request_id: Option<String>,
    /// Route name (outbound) or `inbound`.
    pub route: String,
    /// Cluster name, empty when no cluster was chosen.
    pub cluster: String,
    /// The pod the request was sent to, if one was picked.
    pub upstream_pod: Option<String>,
    pub status: u16,
    /// Envoy response flags, comma-joined; `-` when none.
    pub flags: String,
    pub start: Duration,
    pub duration: Duration,
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

pub trait Telemetry: Send + Sync + 'static {
    fn access_log(&self, entry: AccessLog);
    fn outlier_event(&self, event: OutlierEvent);
}

/// Keeps everything in memory, in arrival order.
#[derive(Debug, Default)]
pub struct MemoryTelemetry {
    pub logs: Mutex<Vec<AccessLog>>,
    pub events: Mutex<Vec<OutlierEvent>>,
}

impl Telemetry for MemoryTelemetry {
    fn access_log(&self, entry: AccessLog) {
        self.logs.lock().expect("telemetry lock").push(entry);
    }
    fn outlier_event(&self, event: OutlierEvent) {
        self.events.lock().expect("telemetry lock").push(event);
    }
}
