//! The recorder: one outcome slot per request the workload will issue, filled exactly
//! once; the source sidecars' access-log flags and every sidecar's spans joined by
//! request id; outlier, certificate and fault events. It checks "nothing lost" itself:
//! [`Recorder::finish`] fails when any slot is
//! empty, and filling a slot twice is a broken invariant (a panic).

use std::sync::Mutex;
use std::time::Duration;

use mesh::ca::agent::{CertEvent, CertEvents};
use mesh::control::{ControlEvent, ControlEventKind, ControlEvents};
use mesh::identity::SpiffeId;
use mesh::proxy::telemetry::{AccessLog, Direction, OutlierEvent, OutlierKind, SecurityEvent, Telemetry};
use mesh::proxy::tls::ConnectionSecurity;
use mesh::proxy::tracing::{OwnedSpan, Span};

/// What the client app saw for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A response. `pod` = the serving pod named by the app's response header, if any.
    Response { status: u16, pod: Option<String> },
    /// A TCP connection that got every byte it sent back, intact, and closed.
    Echoed { bytes: u64 },
    /// No response: `client_timeout`, `in_flight_limit`, `connect_error`, `reset`; for a
    /// TCP connection also `closed_early` (fewer bytes came back) and `corrupted`.
    Error(&'static str),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub workload: usize,
    pub source: usize,
    /// Intended send time (open loop): latency is measured from here.
    pub intended: Duration,
    pub latency: Duration,
    pub outcome: Outcome,
    /// Envoy response flags logged by the source sidecar (`-` = none); empty when the
    /// request never reached it.
    pub flags: String,
    /// The connection security the destination sidecar logged (its last receipt);
    /// `None` when no destination sidecar handled the request.
    pub connection_security: Option<ConnectionSecurity>,
    /// How many times a destination app received this request (tries that got through,
    /// and mirrored copies: they carry the same `x-request-id`).
    pub upstream_attempts: u32,
    /// The response's headers, name (lower case) and value, except
    /// [`crate::workload::UNRECORDED_RESPONSE_HEADERS`].
    pub headers: Vec<(String, String)>,
    /// The response body, kept for non-2xx responses only.
    pub body: Option<String>,
    /// What the destination apps received, one entry per receipt in arrival order; kept
    /// only when an expectation needs it ([`crate::scenario::Plan::needs_receipts`]).
    pub receipts: Vec<Receipt>,
    /// The spans every sidecar recorded for this request, in the order they ended
    /// (`request_id` left empty: it is this record's).
    pub spans: Vec<OwnedSpan>,
}

/// One try (or mirrored copy) of a request as a destination app received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The receiving pod.
    pub pod: String,
    /// Path and query.
    pub path: String,
    /// Every header, name (lower case) and value, in order.
    pub headers: Vec<(String, String)>,
}

/// A world event on the timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub at: Duration,
    pub kind: String,
    pub detail: String,
    /// For outlier events: (proxy pod, ejected pod, kind).
    pub outlier: Option<OutlierEvent>,
    /// For the control plane's events: which proxy, which version, what happened.
    pub control: Option<ControlEvent>,
}

#[derive(Default)]
struct Inner {
    records: Vec<Option<Record>>,
    flags: Vec<String>,
    security: Vec<Option<ConnectionSecurity>>,
    attempts: Vec<u32>,
    /// Per request, when receipts are kept.
    receipts: Option<Vec<Vec<Receipt>>>,
    spans: Vec<Vec<OwnedSpan>>,
    events: Vec<Event>,
    filled: usize,
}

pub struct Recorder {
    inner: Mutex<Inner>,
}

/// Why a run's records are incomplete.
#[derive(Debug)]
pub struct Lost {
    pub missing: Vec<u64>,
}

impl Recorder {
    /// A recorder for exactly `issued` requests, ids `0..issued`. `receipts`: keep what
    /// the destination apps received (else only count it).
    pub fn new(issued: usize, receipts: bool) -> Recorder {
        Recorder {
            inner: Mutex::new(Inner {
                records: vec![None; issued],
                flags: vec![String::new(); issued],
                security: vec![None; issued],
                attempts: vec![0; issued],
                receipts: receipts.then(|| vec![Vec::new(); issued]),
                spans: vec![Vec::new(); issued],
                events: Vec::new(),
                filled: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("recorder lock")
    }

    pub fn record(&self, id: u64, record: Record) {
        let mut g = self.lock();
        let slot = &mut g.records[id as usize];
        assert!(slot.is_none(), "request {id} recorded twice: {slot:?} then {record:?}");
        *slot = Some(record);
        g.filled += 1;
    }

    /// A destination app received request `id` (once per try that reached it, and once
    /// per mirrored copy). `receipt` is called only when receipts are kept.
    pub fn app_received(&self, id: u64, receipt: impl FnOnce() -> Receipt) {
        let mut g = self.lock();
        if let Some(n) = g.attempts.get_mut(id as usize) {
            *n += 1;
        }
        if let Some(r) = g.receipts.as_mut().and_then(|r| r.get_mut(id as usize)) {
            r.push(receipt());
        }
    }

    pub fn is_complete(&self) -> bool {
        let g = self.lock();
        g.filled == g.records.len()
    }

    pub fn event(&self, at: Duration, kind: &str, detail: String) {
        self.lock().events.push(Event { at, kind: kind.to_string(), detail, outlier: None, control: None });
    }

    /// All records (with flags joined) and events in time order, or the ids never recorded.
    pub fn finish(&self) -> Result<(Vec<Record>, Vec<Event>), Lost> {
        let mut g = self.lock();
        let missing: Vec<u64> =
            g.records.iter().enumerate().filter(|(_, r)| r.is_none()).map(|(i, _)| i as u64).collect();
        if !missing.is_empty() {
            return Err(Lost { missing });
        }
        let flags = std::mem::take(&mut g.flags);
        let mut security = std::mem::take(&mut g.security).into_iter();
        let attempts = std::mem::take(&mut g.attempts);
        let mut receipts = g.receipts.take().map(Vec::into_iter);
        let spans = std::mem::take(&mut g.spans);
        let records = std::mem::take(&mut g.records)
            .into_iter()
            .zip(flags)
            .zip(attempts)
            .zip(spans)
            .map(|(((r, f), a), spans)| {
                let mut r = r.expect("checked above");
                r.flags = f;
                r.connection_security = security.next().flatten();
                r.upstream_attempts = a;
                r.spans = spans;
                r.receipts = receipts.as_mut().and_then(Iterator::next).unwrap_or_default();
                r
            })
            .collect();
        let mut events = std::mem::take(&mut g.events);
        events.sort_by(|a, b| (a.at, &a.kind, &a.detail).cmp(&(b.at, &b.kind, &b.detail)));
        Ok((records, events))
    }
}

impl Telemetry for Recorder {
    /// The source side's flags and the destination side's connection security are
    /// joined to the records.
    fn access_log(&self, entry: &AccessLog<'_>) {
        let Some(id) = entry.request_id.and_then(|s| s.parse::<usize>().ok()) else {
            return;
        };
        let mut g = self.lock();
        match entry.direction {
            Direction::Outbound => {
                if let Some(slot) = g.flags.get_mut(id) {
                    *slot = entry.flags.to_string();
                }
            }
            Direction::Inbound => {
                if let (Some(slot), Some(peer)) = (g.security.get_mut(id), entry.peer) {
                    *slot = Some(peer.security);
                }
            }
        }
    }

    fn security_event(&self, e: SecurityEvent) {
        let detail = format!("{} refused a connection from {}: {}", e.proxy, e.peer.ip(), e.reason);
        self.lock().events.push(Event {
            at: e.at,
            kind: "connection_refused".into(),
            detail,
            outlier: None,
            control: None,
        });
    }

    fn span(&self, span: &Span<'_>) {
        let Some(id) = span.request_id.and_then(|s| s.parse::<usize>().ok()) else {
            return;
        };
        let owned = Span { request_id: None, ..*span }.to_owned();
        if let Some(slot) = self.lock().spans.get_mut(id) {
            slot.push(owned);
        }
    }

    fn outlier_event(&self, e: OutlierEvent) {
        let (kind, detail) = match e.kind {
            OutlierKind::Ejected { reason, for_ } => (
                "ejected",
                format!("{} ejected {} from {} ({}; for {:?})", e.proxy, e.pod, e.cluster, reason.as_str(), for_),
            ),
            OutlierKind::Overflow { reason } => (
                "ejection_overflow",
                format!(
                    "{} would eject {} from {} ({}) but maxEjectionPercent forbids it",
                    e.proxy,
                    e.pod,
                    e.cluster,
                    reason.as_str()
                ),
            ),
            OutlierKind::Readmitted => ("readmitted", format!("{} readmitted {} to {}", e.proxy, e.pod, e.cluster)),
        };
        let at = e.at;
        self.lock().events.push(Event { at, kind: kind.to_string(), detail, outlier: Some(e), control: None });
    }
}

impl ControlEvents for Recorder {
    fn control_event(&self, e: ControlEvent) {
        let (kind, detail) = match &e.kind {
            ControlEventKind::Changed { what } => ("config_version", format!("version {}: {what}", e.version)),
            ControlEventKind::Connected => ("config_connected", format!("{} connected to istiod", e.proxy)),
            ControlEventKind::Disconnected => (
                "config_disconnected",
                format!("{} disconnected from istiod (last ACK: version {})", e.proxy, e.version),
            ),
            ControlEventKind::Acked => ("config_acked", format!("{} ACKed version {}", e.proxy, e.version)),
            ControlEventKind::Nacked { reason } => {
                ("config_nacked", format!("{} NACKed version {}: {reason}", e.proxy, e.version))
            }
        };
        let at = e.at;
        self.lock().events.push(Event { at, kind: kind.to_string(), detail, outlier: None, control: Some(e) });
    }
}

/// The event kind of a certificate event named as in scenarios (`issued`, …).
pub fn cert_event_kind(name: &str) -> String {
    match name {
        "ca_unreachable" => name.to_string(),
        _ => format!("cert_{name}"),
    }
}

/// The pod a certificate event is about: its detail starts with the pod's name.
pub fn event_pod(e: &Event) -> Option<&str> {
    let pod_event = e.kind.starts_with("cert_") || e.kind == "ca_unreachable";
    if pod_event { e.detail.split(' ').next() } else { None }
}

impl CertEvents for Recorder {
    fn cert_event(&self, pod: &str, id: &SpiffeId, at: Duration, event: &CertEvent) {
        let secs = |t: Duration| t.as_secs();
        let (name, detail) = match event {
            CertEvent::Issued { not_after } => ("issued", format!("{pod} {id} valid until unix {}", secs(*not_after))),
            CertEvent::Renewed { not_after } => {
                ("renewed", format!("{pod} {id} valid until unix {}", secs(*not_after)))
            }
            CertEvent::CaUnreachable { error } => ("ca_unreachable", format!("{pod} {id}: {error}")),
            CertEvent::Expired => ("expired", format!("{pod} {id} certificate expired")),
        };
        self.lock().events.push(Event { at, kind: cert_event_kind(name), detail, outlier: None, control: None });
    }
}
