//! The `expect` section: what must hold after the run — shares, ejections, success
//! rates, latencies, counts, certificate and control-plane events, metrics, traces,
//! the mesh's latency overhead, convergence — resolved against the workloads, pods and
//! the compiled config. It owns [`Expectation`] and its filters; checking is
//! `crate::expect`'s.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use mesh::config::diag::code;
use mesh::config::{Finding, IstioDuration, Pos};
use mesh::proxy::tls::ConnectionSecurity;
use mesh::snapshot::{self, Snapshot};
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::builder::{Builder, Dur, one};
use super::services::Placement;
use super::workloads::Workload;
use crate::metric_query::MetricQuery;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectDef {
    pub share: Option<Spanned<ShareDef>>,
    pub ejection: Option<Spanned<EjectionDef>>,
    pub never_ejected: Option<Spanned<NeverEjectedDef>>,
    pub success_rate: Option<Spanned<SuccessRateDef>>,
    pub latency: Option<Spanned<LatencyExpectDef>>,
    pub count: Option<Spanned<CountDef>>,
    pub certs: Option<Spanned<CertsDef>>,
    /// `name{label="value",...} op number` over every sidecar's metric series.
    pub metric: Option<Spanned<String>>,
    /// `complete`: every request's trace tree is complete.
    pub traces: Option<Spanned<String>>,
    pub latency_overhead: Option<Spanned<LatencyOverheadDef>>,
    pub converged: Option<Spanned<ConvergedDef>>,
    pub events: Option<Spanned<EventsDef>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvergedDef {
    /// The first config version created at or after this time…
    pub after: Dur,
    /// …is ACKed by every connected proxy within this long of its creation.
    pub within: Dur,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsDef {
    pub kind: Spanned<String>,
    pub window: Option<Spanned<Vec<IstioDuration>>>,
    /// Only events whose detail contains this text.
    pub detail: Option<String>,
    pub at_least: Option<u64>,
    pub at_most: Option<u64>,
}

/// Counts certificate lifecycle events of sidecar agents.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertsDef {
    /// One pod; absent = every pod, each on its own.
    pub pod: Option<Spanned<String>>,
    /// `issued`, `renewed`, `ca_unreachable` or `expired`.
    pub event: Spanned<String>,
    pub window: Option<Spanned<Vec<IstioDuration>>>,
    pub at_least: Option<u64>,
    pub at_most: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareDef {
    pub workload: Spanned<String>,
    /// A DestinationRule subset of the workload's destination service…
    pub subset: Option<Spanned<String>>,
    /// …or one pod.
    pub pod: Option<Spanned<String>>,
    pub window: Option<Spanned<Vec<IstioDuration>>>,
    pub expected: Spanned<f64>,
    /// Absolute tolerance; absent = 4.5 binomial standard deviations.
    pub tolerance: Option<Spanned<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EjectionDef {
    pub pod: Spanned<String>,
    /// The client sidecar (pod) whose outlier detector is checked; absent = the first that ejected it.
    pub by: Option<Spanned<String>>,
    /// Which ejection of this pod, from 1.
    #[serde(default = "one")]
    pub nth: Spanned<u32>,
    /// `[from, to]`: the ejection happens in this interval.
    pub at: Spanned<Vec<IstioDuration>>,
    /// `[min, max]`: time until readmission.
    pub lasting: Option<Spanned<Vec<IstioDuration>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NeverEjectedDef {
    pub pod: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuccessRateDef {
    pub workload: Spanned<String>,
    pub window: Option<Spanned<Vec<IstioDuration>>>,
    pub at_least: Option<Spanned<f64>>,
    pub at_most: Option<Spanned<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyExpectDef {
    pub workload: Spanned<String>,
    pub window: Option<Spanned<Vec<IstioDuration>>>,
    /// e.g. 50, 99, 99.9
    pub percentile: Spanned<f64>,
    pub at_most: Option<Dur>,
    pub at_least: Option<Dur>,
}

/// The mesh's latency tax at a percentile: this run minus the same scenario and seed
/// with `mesh: none`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyOverheadDef {
    pub workload: Spanned<String>,
    pub window: Option<Spanned<Vec<IstioDuration>>>,
    pub percentile: Spanned<f64>,
    pub at_most: Option<Dur>,
    pub at_least: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountDef {
    pub workload: Spanned<String>,
    pub window: Option<Spanned<Vec<IstioDuration>>>,
    pub status: Option<u16>,
    /// Envoy response flag as recorded by the source sidecar, e.g. `UH`, `UF`, `-`.
    pub flag: Option<String>,
    /// Client-side error name, e.g. `client_timeout`.
    pub error: Option<String>,
    /// Served by this pod.
    pub pod: Option<Spanned<String>>,
    /// The connection security the destination sidecar saw: `mutual_tls` or `none`.
    pub connection_security: Option<Spanned<String>>,
    /// Requests the destination apps received exactly this many times (retries, mirrors).
    pub upstream_attempts: Option<u32>,
    /// Responses carrying this header: `name`, or `name: value` for that exact value.
    pub header: Option<Spanned<String>>,
    /// Responses with exactly this body.
    pub body: Option<String>,
    /// Requests a destination app received with this path (and query).
    pub upstream_path: Option<String>,
    /// Requests a destination app received with this header: `name` or `name: value`.
    pub upstream_header: Option<Spanned<String>>,
    /// Requests this pod's app received (as a destination: tried, retried or mirrored).
    pub received_by: Option<Spanned<String>>,
    pub at_least: Option<u64>,
    pub at_most: Option<u64>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Window {
    All,
    Between(Duration, Duration),
}

impl Window {
    pub fn contains(&self, t: Duration) -> bool {
        match self {
            Window::All => true,
            Window::Between(a, b) => *a <= t && t < *b,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Expectation {
    Share {
        workload: usize,
        pods: BTreeSet<String>,
        what: String,
        window: Window,
        expected: f64,
        tolerance: Option<f64>,
    },
    Ejection {
        pod: String,
        by: Option<String>,
        nth: u32,
        at: (Duration, Duration),
        lasting: Option<(Duration, Duration)>,
    },
    NeverEjected {
        pod: String,
    },
    SuccessRate {
        workload: usize,
        window: Window,
        at_least: Option<f64>,
        at_most: Option<f64>,
    },
    Latency {
        workload: usize,
        window: Window,
        percentile: f64,
        at_most: Option<Duration>,
        at_least: Option<Duration>,
    },
    Count {
        workload: usize,
        window: Window,
        filter: Box<CountFilter>,
        at_least: Option<u64>,
        at_most: Option<u64>,
    },
    /// Certificate events (`CERT_EVENTS`) of each pod in `pods`.
    Certs {
        pods: Vec<String>,
        event: String,
        window: Window,
        at_least: Option<u64>,
        at_most: Option<u64>,
    },
    Metric(MetricQuery),
    TracesComplete,
    /// Percentile latency with the mesh minus without it (same scenario and seed).
    LatencyOverhead {
        workload: usize,
        window: Window,
        percentile: f64,
        at_most: Option<Duration>,
        at_least: Option<Duration>,
    },
    /// Every proxy connected when the first version created at or after `after` appeared
    /// ACKed it (or a later one) within `within`.
    Converged {
        after: Duration,
        within: Duration,
    },
    /// The number of events of `kind` (whose detail contains `detail`) in `window`.
    Events {
        kind: String,
        window: Window,
        detail: Option<String>,
        at_least: Option<u64>,
        at_most: Option<u64>,
    },
}

/// A certificate agent event, as `certs` expectations and the event log name it.
const CERT_EVENTS: [&str; 4] = ["issued", "renewed", "ca_unreachable", "expired"];

/// Event kinds an `events` expectation may count.
const EVENT_KINDS: &[&str] = &[
    "config_version",
    "config_rejected",
    "config_connected",
    "config_disconnected",
    "config_acked",
    "config_nacked",
    "ejected",
    "ejection_overflow",
    "readmitted",
    "fault_start",
    "fault_end",
    "scale",
];

/// Which requests a count expectation counts; every condition set must hold.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CountFilter {
    pub status: Option<u16>,
    pub flag: Option<String>,
    pub error: Option<String>,
    pub pod: Option<String>,
    pub connection_security: Option<ConnectionSecurity>,
    pub upstream_attempts: Option<u32>,
    /// Response header: name (lower case) and, if given, the exact value.
    pub header: Option<HeaderFilter>,
    pub body: Option<String>,
    /// Conditions on one receipt (a try a destination app received): all given must hold
    /// for the same receipt.
    pub upstream_path: Option<String>,
    pub upstream_header: Option<HeaderFilter>,
    pub received_by: Option<String>,
}

impl CountFilter {
    /// Whether the filter looks at what destination apps received (see [`Plan::needs_receipts`]).
    pub fn on_receipts(&self) -> bool {
        self.upstream_path.is_some() || self.upstream_header.is_some() || self.received_by.is_some()
    }
}

/// `name` or `name: value`, as count expectations write a header condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderFilter {
    /// Lower case.
    pub name: String,
    pub value: Option<String>,
}

impl HeaderFilter {
    /// Parses `name` or `name: value` (a header name cannot contain `:`).
    pub fn parse(s: &str) -> Result<HeaderFilter, String> {
        let (name, value) = match s.split_once(':') {
            Some((n, v)) => (n.trim(), Some(v.trim().to_string())),
            None => (s.trim(), None),
        };
        http::HeaderName::try_from(name)
            .map_err(|_| format!("{name:?} is not a valid header name (write `name` or `name: value`)"))?;
        Ok(HeaderFilter { name: name.to_ascii_lowercase(), value })
    }

    /// Whether some header of `headers` (name, value) matches.
    pub fn matches(&self, headers: &[(String, String)]) -> bool {
        headers.iter().any(|(n, v)| *n == self.name && self.value.as_ref().is_none_or(|want| want == v))
    }
}

impl std::fmt::Display for HeaderFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{}: {v}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// What expectations refer to: the placement, the compiled config and the workloads.
pub(super) struct Scope<'a> {
    pub(super) placed: &'a Placement,
    pub(super) snapshot: &'a Snapshot,
    pub(super) workloads: &'a [Workload],
    pub(super) workload_names: &'a BTreeMap<String, usize>,
    pub(super) mesh: bool,
    /// The run's duration, `None` when it is invalid (already reported).
    pub(super) run_end: Option<Duration>,
}

impl Builder {
    pub(super) fn expectations(&mut self, defs: &[ExpectDef], cx: &Scope<'_>) -> Vec<Expectation> {
        let mut expectations = Vec::new();
        for (ei, e) in defs.iter().enumerate() {
            let f = format!("expect[{ei}]");
            let mut got = Vec::new();
            if let Some(s) = &e.share {
                let v = &s.value;
                let w = self.workload(&v.workload, &cx.workload_names, &format!("{f}.share.workload"));
                let window = self.window(&v.window, &format!("{f}.share.window"), cx.run_end);
                if !(0.0..=1.0).contains(&v.expected.value) {
                    self.err(&v.expected, &format!("{f}.share.expected"), "expected share must be between 0 and 1");
                }
                if let Some(t) = &v.tolerance
                    && !(t.value > 0.0 && t.value <= 1.0)
                {
                    self.err(t, &format!("{f}.share.tolerance"), "tolerance must be in (0, 1]");
                }
                let dest =
                    w.and_then(|w| cx.workloads.get(w)).map(|w: &Workload| w.to_fqdn.clone()).unwrap_or_default();
                let (members, what) = match (&v.subset, &v.pod) {
                    (Some(sub), None) => {
                        let port = cx.placed.registry.services.get(&dest).map(|s| s.port).unwrap_or(0);
                        let name = snapshot::cluster_name(port, Some(&sub.value), &dest);
                        match cx.snapshot.clusters.get(&name) {
                            Some(c) => {
                                (c.endpoints.iter().map(|e| e.pod.clone()).collect(), format!("subset {}", sub.value))
                            }
                            None => {
                                self.not_found(
                                    sub,
                                    &format!("{f}.share.subset"),
                                    format!(
                                        "Referenced host+subset in destinationrule not found: \"{dest}+{}\"",
                                        sub.value
                                    ),
                                );
                                (BTreeSet::new(), String::new())
                            }
                        }
                    }
                    (None, Some(p)) => {
                        self.pods(std::slice::from_ref(p), &cx.placed.pod_index, &format!("{f}.share.pod"));
                        ([p.value.clone()].into(), format!("pod {}", p.value))
                    }
                    _ => {
                        self.err(
                            s,
                            &format!("{f}.share"),
                            "a share expectation names exactly one of `subset` or `pod`",
                        );
                        (BTreeSet::new(), String::new())
                    }
                };
                if let Some(w) = w {
                    got.push(Expectation::Share {
                        workload: w,
                        pods: members,
                        what,
                        window,
                        expected: v.expected.value,
                        tolerance: v.tolerance.as_ref().map(|t| t.value),
                    });
                }
            }
            if let Some(x) = &e.ejection {
                let v = &x.value;
                self.pods(std::slice::from_ref(&v.pod), &cx.placed.pod_index, &format!("{f}.ejection.pod"));
                if let Some(b) = &v.by {
                    self.pods(std::slice::from_ref(b), &cx.placed.pod_index, &format!("{f}.ejection.by"));
                }
                if v.nth.value == 0 {
                    self.err(&v.nth, &format!("{f}.ejection.nth"), "nth counts from 1");
                }
                let at = self.range(&v.at, &format!("{f}.ejection.at"));
                let lasting = v.lasting.as_ref().and_then(|l| self.range(l, &format!("{f}.ejection.lasting")));
                if let Some(at) = at {
                    got.push(Expectation::Ejection {
                        pod: v.pod.value.clone(),
                        by: v.by.as_ref().map(|b| b.value.clone()),
                        nth: v.nth.value,
                        at,
                        lasting,
                    });
                }
            }
            if let Some(x) = &e.never_ejected {
                self.pods(std::slice::from_ref(&x.value.pod), &cx.placed.pod_index, &format!("{f}.never_ejected.pod"));
                got.push(Expectation::NeverEjected { pod: x.value.pod.value.clone() });
            }
            if let Some(x) = &e.success_rate {
                let v = &x.value;
                let w = self.workload(&v.workload, &cx.workload_names, &format!("{f}.success_rate.workload"));
                let window = self.window(&v.window, &format!("{f}.success_rate.window"), cx.run_end);
                for b in [&v.at_least, &v.at_most].into_iter().flatten() {
                    if !(0.0..=1.0).contains(&b.value) {
                        self.err(b, &format!("{f}.success_rate"), "a success rate bound is between 0 and 1");
                    }
                }
                if v.at_least.is_none() && v.at_most.is_none() {
                    self.err(x, &format!("{f}.success_rate"), "give at_least and/or at_most");
                }
                if let Some(w) = w {
                    got.push(Expectation::SuccessRate {
                        workload: w,
                        window,
                        at_least: v.at_least.as_ref().map(|b| b.value),
                        at_most: v.at_most.as_ref().map(|b| b.value),
                    });
                }
            }
            if let Some(x) = &e.latency {
                let v = &x.value;
                let w = self.workload(&v.workload, &cx.workload_names, &format!("{f}.latency.workload"));
                let window = self.window(&v.window, &format!("{f}.latency.window"), cx.run_end);
                if !(v.percentile.value > 0.0 && v.percentile.value <= 100.0) {
                    self.err(&v.percentile, &format!("{f}.latency.percentile"), "percentile must be in (0, 100]");
                }
                if v.at_least.is_none() && v.at_most.is_none() {
                    self.err(x, &format!("{f}.latency"), "give at_least and/or at_most");
                }
                if let Some(w) = w {
                    got.push(Expectation::Latency {
                        workload: w,
                        window,
                        percentile: v.percentile.value,
                        at_most: v.at_most.as_ref().map(|d| d.value.0),
                        at_least: v.at_least.as_ref().map(|d| d.value.0),
                    });
                }
            }
            if let Some(x) = &e.count {
                let v = &x.value;
                let w = self.workload(&v.workload, &cx.workload_names, &format!("{f}.count.workload"));
                let window = self.window(&v.window, &format!("{f}.count.window"), cx.run_end);
                if let Some(p) = &v.pod {
                    self.pods(std::slice::from_ref(p), &cx.placed.pod_index, &format!("{f}.count.pod"));
                }
                if let Some(p) = &v.received_by {
                    self.pods(std::slice::from_ref(p), &cx.placed.pod_index, &format!("{f}.count.received_by"));
                }
                let connection_security = v.connection_security.as_ref().and_then(|c| match c.value.as_str() {
                    "mutual_tls" => Some(ConnectionSecurity::MutualTls),
                    "none" => Some(ConnectionSecurity::None),
                    other => {
                        self.err(
                            c,
                            &format!("{f}.count.connection_security"),
                            format!("{other:?} is not `mutual_tls` or `none`"),
                        );
                        None
                    }
                });
                let header = v.header.as_ref().and_then(|h| self.header_filter(h, &format!("{f}.count.header")));
                let upstream_header = v
                    .upstream_header
                    .as_ref()
                    .and_then(|h| self.header_filter(h, &format!("{f}.count.upstream_header")));
                if v.at_least.is_none() && v.at_most.is_none() {
                    self.err(x, &format!("{f}.count"), "give at_least and/or at_most");
                }
                if let Some(w) = w {
                    got.push(Expectation::Count {
                        workload: w,
                        window,
                        filter: Box::new(CountFilter {
                            status: v.status,
                            flag: v.flag.clone(),
                            error: v.error.clone(),
                            pod: v.pod.as_ref().map(|p| p.value.clone()),
                            connection_security,
                            upstream_attempts: v.upstream_attempts,
                            header,
                            body: v.body.clone(),
                            upstream_path: v.upstream_path.clone(),
                            upstream_header,
                            received_by: v.received_by.as_ref().map(|p| p.value.clone()),
                        }),
                        at_least: v.at_least,
                        at_most: v.at_most,
                    });
                }
            }
            if let Some(x) = &e.certs {
                let v = &x.value;
                let pods_ = match &v.pod {
                    Some(p) => {
                        self.pods(std::slice::from_ref(p), &cx.placed.pod_index, &format!("{f}.certs.pod"));
                        vec![p.value.clone()]
                    }
                    None => cx.placed.pods.iter().map(|p| p.name.clone()).collect(),
                };
                if !CERT_EVENTS.contains(&v.event.value.as_str()) {
                    self.err(
                        &v.event,
                        &format!("{f}.certs.event"),
                        format!("{:?} is not a certificate event: {}", v.event.value, CERT_EVENTS.join(", ")),
                    );
                }
                let window = self.window(&v.window, &format!("{f}.certs.window"), cx.run_end);
                if v.at_least.is_none() && v.at_most.is_none() {
                    self.err(x, &format!("{f}.certs"), "give at_least and/or at_most");
                }
                got.push(Expectation::Certs {
                    pods: pods_,
                    event: v.event.value.clone(),
                    window,
                    at_least: v.at_least,
                    at_most: v.at_most,
                });
            }
            if let Some(m) = &e.metric {
                match MetricQuery::parse(&m.value) {
                    Ok(q) => got.push(Expectation::Metric(q)),
                    Err(msg) => self.err(m, &format!("{f}.metric"), msg),
                }
            }
            if let Some(t) = &e.traces {
                if t.value == "complete" {
                    got.push(Expectation::TracesComplete);
                } else {
                    self.err(
                        t,
                        &format!("{f}.traces"),
                        format!("traces: {:?} is not known (write `traces: complete`)", t.value),
                    );
                }
            }
            if let Some(x) = &e.latency_overhead {
                let v = &x.value;
                let w = self.workload(&v.workload, &cx.workload_names, &format!("{f}.latency_overhead.workload"));
                let window = self.window(&v.window, &format!("{f}.latency_overhead.window"), cx.run_end);
                if !(v.percentile.value > 0.0 && v.percentile.value <= 100.0) {
                    self.err(
                        &v.percentile,
                        &format!("{f}.latency_overhead.percentile"),
                        "percentile must be in (0, 100]",
                    );
                }
                if v.at_least.is_none() && v.at_most.is_none() {
                    self.err(x, &format!("{f}.latency_overhead"), "give at_least and/or at_most");
                }
                if !cx.mesh && !self.baseline {
                    self.err(
                        x,
                        &format!("{f}.latency_overhead"),
                        "with mesh: none there is no mesh overhead to measure",
                    );
                }
                if let Some(w) = w {
                    got.push(Expectation::LatencyOverhead {
                        workload: w,
                        window,
                        percentile: v.percentile.value,
                        at_most: v.at_most.as_ref().map(|d| d.value.0),
                        at_least: v.at_least.as_ref().map(|d| d.value.0),
                    });
                }
            }
            if let Some(x) = &e.converged {
                let v = &x.value;
                if v.within.value.0.is_zero() {
                    self.err(&v.within, &format!("{f}.converged.within"), "within must be greater than 0");
                }
                got.push(Expectation::Converged { after: v.after.value.0, within: v.within.value.0 });
            }
            if let Some(x) = &e.events {
                let v = &x.value;
                if !EVENT_KINDS.contains(&v.kind.value.as_str()) {
                    self.err(
                        &v.kind,
                        &format!("{f}.events.kind"),
                        format!("unknown event kind {:?} (one of {})", v.kind.value, EVENT_KINDS.join(", ")),
                    );
                }
                if v.at_least.is_none() && v.at_most.is_none() {
                    self.err(x, &format!("{f}.events"), "give at_least and/or at_most");
                }
                let window = self.window(&v.window, &format!("{f}.events.window"), cx.run_end);
                got.push(Expectation::Events {
                    kind: v.kind.value.clone(),
                    window,
                    detail: v.detail.clone(),
                    at_least: v.at_least,
                    at_most: v.at_most,
                });
            }
            let kinds = [
                e.converged.is_some(),
                e.events.is_some(),
                e.share.is_some(),
                e.ejection.is_some(),
                e.never_ejected.is_some(),
                e.success_rate.is_some(),
                e.latency.is_some(),
                e.count.is_some(),
                e.certs.is_some(),
                e.metric.is_some(),
                e.traces.is_some(),
                e.latency_overhead.is_some(),
            ]
            .iter()
            .filter(|&&k| k)
            .count();
            if kinds != 1 {
                self.findings.push(Finding::error(Pos::file(&self.file), code::SCENARIO, f, format!(
                    "an expectation has exactly one of share, ejection, never_ejected, success_rate, latency, count, certs, metric, traces, latency_overhead, converged, events (found {kinds})"
                )));
            } else {
                expectations.extend(got);
            }
        }
        expectations
    }

    /// `run_end`: the run's duration, `None` when it is invalid (already reported).
    pub(super) fn window(
        &mut self,
        w: &Option<Spanned<Vec<IstioDuration>>>,
        field: &str,
        run_end: Option<Duration>,
    ) -> Window {
        match w {
            None => Window::All,
            Some(s) => match self.range(s, field) {
                Some((a, b)) => {
                    if let Some(duration) = run_end
                        && a > duration
                    {
                        self.err(s, field, format!("window starts at {a:?}, after the run ends ({duration:?})"));
                    }
                    Window::Between(a, b)
                }
                None => Window::All,
            },
        }
    }

    pub(super) fn workload(
        &mut self,
        name: &Spanned<String>,
        names: &BTreeMap<String, usize>,
        field: &str,
    ) -> Option<usize> {
        let found = names.get(&name.value).copied();
        if found.is_none() {
            self.not_found(name, field, format!("workload {:?} is not defined", name.value));
        }
        found
    }

    pub(super) fn header_filter(&mut self, h: &Spanned<String>, field: &str) -> Option<HeaderFilter> {
        match HeaderFilter::parse(&h.value) {
            Ok(x) => Some(x),
            Err(e) => {
                self.err(h, field, e);
                None
            }
        }
    }
}
