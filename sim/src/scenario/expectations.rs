//! The `expect` section: what must hold after the run — shares, ejections, success
//! rates, latencies, counts, certificate and control-plane events, metrics, traces,
//! the mesh's latency overhead, convergence — resolved against the workloads, pods and
//! the compiled config. It owns [`Expectation`] and its filters; checking is
//! `crate::expect`'s.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use mesh::config::IstioDuration;
use mesh::config::diag::code;
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
    pub latency: Option<Spanned<LatencyBoundDef>>,
    pub count: Option<Spanned<CountDef>>,
    pub certs: Option<Spanned<CertsDef>>,
    /// `name{label="value",...} op number` over every sidecar's metric series.
    pub metric: Option<Spanned<String>>,
    /// `complete`: every request's trace tree is complete.
    pub traces: Option<Spanned<String>>,
    /// The mesh's latency tax at a percentile: this run minus the same scenario and seed
    /// with `mesh: none`.
    pub latency_overhead: Option<Spanned<LatencyBoundDef>>,
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

/// A workload's latency at a percentile, bounded: the shape of `latency` and
/// `latency_overhead`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyBoundDef {
    pub workload: Spanned<String>,
    pub window: Option<Spanned<Vec<IstioDuration>>>,
    /// e.g. 50, 99, 99.9
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

/// A workload's latency at `percentile` in `window`, with its bounds (`latency`, and the
/// with-minus-without difference of `latency_overhead`).
#[derive(Clone, Debug, PartialEq)]
pub struct LatencyBound {
    pub workload: usize,
    pub window: Window,
    pub percentile: f64,
    pub at_most: Option<Duration>,
    pub at_least: Option<Duration>,
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
    Latency(LatencyBound),
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
    LatencyOverhead(LatencyBound),
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

impl ExpectDef {
    /// Each kind an entry may give, named as the scenario writes it, and whether it does.
    fn kinds(&self) -> [(&'static str, bool); 12] {
        [
            ("share", self.share.is_some()),
            ("ejection", self.ejection.is_some()),
            ("never_ejected", self.never_ejected.is_some()),
            ("success_rate", self.success_rate.is_some()),
            ("latency", self.latency.is_some()),
            ("count", self.count.is_some()),
            ("certs", self.certs.is_some()),
            ("metric", self.metric.is_some()),
            ("traces", self.traces.is_some()),
            ("latency_overhead", self.latency_overhead.is_some()),
            ("converged", self.converged.is_some()),
            ("events", self.events.is_some()),
        ]
    }
}

impl Builder {
    /// Every entry checked; an entry that gives other than exactly one kind is an error
    /// (its kinds are still checked, so each mistake in it is reported).
    pub(super) fn expectations(&mut self, defs: &[ExpectDef], cx: &Scope<'_>) -> Vec<Expectation> {
        let mut expectations = Vec::new();
        for (ei, e) in defs.iter().enumerate() {
            let f = format!("expect[{ei}]");
            let got = self.expectation(e, &f, cx);
            let kinds = e.kinds();
            let given = kinds.iter().filter(|(_, given)| *given).count();
            if given == 1 {
                expectations.extend(got);
            } else {
                let names: Vec<&str> = kinds.iter().map(|(name, _)| *name).collect();
                self.err_in_file(
                    code::SCENARIO,
                    f,
                    format!("an expectation has exactly one of {} (found {given})", names.join(", ")),
                );
            }
        }
        expectations
    }

    /// The kinds entry `e` (at field `f`) gives, each checked.
    fn expectation(&mut self, e: &ExpectDef, f: &str, cx: &Scope<'_>) -> Vec<Expectation> {
        let mut got = Vec::new();
        if let Some(x) = &e.share {
            got.extend(self.share(x, &format!("{f}.share"), cx));
        }
        if let Some(x) = &e.ejection {
            got.extend(self.ejection(x, &format!("{f}.ejection"), cx));
        }
        if let Some(x) = &e.never_ejected {
            self.pods(std::slice::from_ref(&x.value.pod), &cx.placed.pod_index, &format!("{f}.never_ejected.pod"));
            got.push(Expectation::NeverEjected { pod: x.value.pod.value.clone() });
        }
        if let Some(x) = &e.success_rate {
            got.extend(self.success_rate(x, &format!("{f}.success_rate"), cx));
        }
        if let Some(x) = &e.latency {
            got.extend(self.latency_bound(x, &format!("{f}.latency"), cx).map(Expectation::Latency));
        }
        if let Some(x) = &e.count {
            got.extend(self.count(x, &format!("{f}.count"), cx));
        }
        if let Some(x) = &e.certs {
            got.push(self.certs(x, &format!("{f}.certs"), cx));
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
            let field = format!("{f}.latency_overhead");
            let bound = self.latency_bound(x, &field, cx);
            if !cx.mesh && !self.baseline {
                self.err(x, &field, "with mesh: none there is no mesh overhead to measure");
            }
            got.extend(bound.map(Expectation::LatencyOverhead));
        }
        if let Some(x) = &e.converged {
            let v = &x.value;
            if v.within.value.0.is_zero() {
                self.err(&v.within, &format!("{f}.converged.within"), "within must be greater than 0");
            }
            got.push(Expectation::Converged { after: v.after.value.0, within: v.within.value.0 });
        }
        if let Some(x) = &e.events {
            got.push(self.events(x, &format!("{f}.events"), cx));
        }
        got
    }

    fn share(&mut self, s: &Spanned<ShareDef>, f: &str, cx: &Scope<'_>) -> Option<Expectation> {
        let v = &s.value;
        let (w, window) = self.workload_window(&v.workload, &v.window, f, cx);
        if !(0.0..=1.0).contains(&v.expected.value) {
            self.err(&v.expected, &format!("{f}.expected"), "expected share must be between 0 and 1");
        }
        if let Some(t) = &v.tolerance
            && !(t.value > 0.0 && t.value <= 1.0)
        {
            self.err(t, &format!("{f}.tolerance"), "tolerance must be in (0, 1]");
        }
        let dest = w.and_then(|w| cx.workloads.get(w)).map(|w: &Workload| w.to_fqdn.clone()).unwrap_or_default();
        let (members, what) = match (&v.subset, &v.pod) {
            (Some(sub), None) => {
                let port = cx.placed.registry.services.get(&dest).map(|s| s.port).unwrap_or(0);
                let name = snapshot::cluster_name(port, Some(&sub.value), &dest);
                match cx.snapshot.clusters.get(&name) {
                    Some(c) => (c.endpoints.iter().map(|e| e.pod.clone()).collect(), format!("subset {}", sub.value)),
                    None => {
                        self.not_found(
                            sub,
                            &format!("{f}.subset"),
                            format!("Referenced host+subset in destinationrule not found: \"{dest}+{}\"", sub.value),
                        );
                        (BTreeSet::new(), String::new())
                    }
                }
            }
            (None, Some(p)) => {
                self.pods(std::slice::from_ref(p), &cx.placed.pod_index, &format!("{f}.pod"));
                ([p.value.clone()].into(), format!("pod {}", p.value))
            }
            _ => {
                self.err(s, f, "a share expectation names exactly one of `subset` or `pod`");
                (BTreeSet::new(), String::new())
            }
        };
        Some(Expectation::Share {
            workload: w?,
            pods: members,
            what,
            window,
            expected: v.expected.value,
            tolerance: v.tolerance.as_ref().map(|t| t.value),
        })
    }

    fn ejection(&mut self, x: &Spanned<EjectionDef>, f: &str, cx: &Scope<'_>) -> Option<Expectation> {
        let v = &x.value;
        self.pods(std::slice::from_ref(&v.pod), &cx.placed.pod_index, &format!("{f}.pod"));
        if let Some(b) = &v.by {
            self.pods(std::slice::from_ref(b), &cx.placed.pod_index, &format!("{f}.by"));
        }
        if v.nth.value == 0 {
            self.err(&v.nth, &format!("{f}.nth"), "nth counts from 1");
        }
        let at = self.range(&v.at, &format!("{f}.at"));
        let lasting = v.lasting.as_ref().and_then(|l| self.range(l, &format!("{f}.lasting")));
        Some(Expectation::Ejection {
            pod: v.pod.value.clone(),
            by: v.by.as_ref().map(|b| b.value.clone()),
            nth: v.nth.value,
            at: at?,
            lasting,
        })
    }

    fn success_rate(&mut self, x: &Spanned<SuccessRateDef>, f: &str, cx: &Scope<'_>) -> Option<Expectation> {
        let v = &x.value;
        let (w, window) = self.workload_window(&v.workload, &v.window, f, cx);
        for b in [&v.at_least, &v.at_most].into_iter().flatten() {
            if !(0.0..=1.0).contains(&b.value) {
                self.err(b, f, "a success rate bound is between 0 and 1");
            }
        }
        self.bounded(x, f, &v.at_least, &v.at_most);
        Some(Expectation::SuccessRate {
            workload: w?,
            window,
            at_least: v.at_least.as_ref().map(|b| b.value),
            at_most: v.at_most.as_ref().map(|b| b.value),
        })
    }

    /// A `latency` or `latency_overhead` entry: the same shape, checked the same way.
    fn latency_bound(&mut self, x: &Spanned<LatencyBoundDef>, f: &str, cx: &Scope<'_>) -> Option<LatencyBound> {
        let v = &x.value;
        let (w, window) = self.workload_window(&v.workload, &v.window, f, cx);
        if !(v.percentile.value > 0.0 && v.percentile.value <= 100.0) {
            self.err(&v.percentile, &format!("{f}.percentile"), "percentile must be in (0, 100]");
        }
        self.bounded(x, f, &v.at_least, &v.at_most);
        Some(LatencyBound {
            workload: w?,
            window,
            percentile: v.percentile.value,
            at_most: v.at_most.as_ref().map(|d| d.value.0),
            at_least: v.at_least.as_ref().map(|d| d.value.0),
        })
    }

    fn count(&mut self, x: &Spanned<CountDef>, f: &str, cx: &Scope<'_>) -> Option<Expectation> {
        let v = &x.value;
        let (w, window) = self.workload_window(&v.workload, &v.window, f, cx);
        if let Some(p) = &v.pod {
            self.pods(std::slice::from_ref(p), &cx.placed.pod_index, &format!("{f}.pod"));
        }
        if let Some(p) = &v.received_by {
            self.pods(std::slice::from_ref(p), &cx.placed.pod_index, &format!("{f}.received_by"));
        }
        let connection_security = v.connection_security.as_ref().and_then(|c| match c.value.as_str() {
            "mutual_tls" => Some(ConnectionSecurity::MutualTls),
            "none" => Some(ConnectionSecurity::None),
            other => {
                self.err(c, &format!("{f}.connection_security"), format!("{other:?} is not `mutual_tls` or `none`"));
                None
            }
        });
        let header = v.header.as_ref().and_then(|h| self.header_filter(h, &format!("{f}.header")));
        let upstream_header =
            v.upstream_header.as_ref().and_then(|h| self.header_filter(h, &format!("{f}.upstream_header")));
        self.bounded(x, f, &v.at_least, &v.at_most);
        Some(Expectation::Count {
            workload: w?,
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
        })
    }

    fn certs(&mut self, x: &Spanned<CertsDef>, f: &str, cx: &Scope<'_>) -> Expectation {
        let v = &x.value;
        let pods = match &v.pod {
            Some(p) => {
                self.pods(std::slice::from_ref(p), &cx.placed.pod_index, &format!("{f}.pod"));
                vec![p.value.clone()]
            }
            None => cx.placed.pods.iter().map(|p| p.name.clone()).collect(),
        };
        if !CERT_EVENTS.contains(&v.event.value.as_str()) {
            self.err(
                &v.event,
                &format!("{f}.event"),
                format!("{:?} is not a certificate event: {}", v.event.value, CERT_EVENTS.join(", ")),
            );
        }
        let window = self.window(&v.window, &format!("{f}.window"), cx.run_end);
        self.bounded(x, f, &v.at_least, &v.at_most);
        Expectation::Certs { pods, event: v.event.value.clone(), window, at_least: v.at_least, at_most: v.at_most }
    }

    fn events(&mut self, x: &Spanned<EventsDef>, f: &str, cx: &Scope<'_>) -> Expectation {
        let v = &x.value;
        if !EVENT_KINDS.contains(&v.kind.value.as_str()) {
            self.err(
                &v.kind,
                &format!("{f}.kind"),
                format!("unknown event kind {:?} (one of {})", v.kind.value, EVENT_KINDS.join(", ")),
            );
        }
        self.bounded(x, f, &v.at_least, &v.at_most);
        let window = self.window(&v.window, &format!("{f}.window"), cx.run_end);
        Expectation::Events {
            kind: v.kind.value.clone(),
            window,
            detail: v.detail.clone(),
            at_least: v.at_least,
            at_most: v.at_most,
        }
    }

    /// The workload an entry at `f` names (`None`: not defined, reported) and its window.
    fn workload_window(
        &mut self,
        workload: &Spanned<String>,
        window: &Option<Spanned<Vec<IstioDuration>>>,
        f: &str,
        cx: &Scope<'_>,
    ) -> (Option<usize>, Window) {
        let found = cx.workload_names.get(&workload.value).copied();
        if found.is_none() {
            self.not_found(workload, &format!("{f}.workload"), format!("workload {:?} is not defined", workload.value));
        }
        (found, self.window(window, &format!("{f}.window"), cx.run_end))
    }

    /// A bound expectation gives `at_least`, `at_most` or both.
    fn bounded<T, L, M>(&mut self, x: &Spanned<T>, f: &str, at_least: &Option<L>, at_most: &Option<M>) {
        if at_least.is_none() && at_most.is_none() {
            self.err(x, f, "give at_least and/or at_most");
        }
    }

    /// `run_end`: the run's duration, `None` when it is invalid (already reported).
    fn window(&mut self, w: &Option<Spanned<Vec<IstioDuration>>>, field: &str, run_end: Option<Duration>) -> Window {
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

    fn header_filter(&mut self, h: &Spanned<String>, field: &str) -> Option<HeaderFilter> {
        match HeaderFilter::parse(&h.value) {
            Ok(x) => Some(x),
            Err(e) => {
                self.err(h, field, e);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{BASE, errors, plan};
    use super::*;

    #[test]
    fn latency_and_latency_overhead_read_the_same_shape() {
        let text = format!(
            "{BASE}expect:\n  - latency: {{workload: browse, window: [1s, 9s], percentile: 99, at_most: 5ms}}\n  - latency_overhead: {{workload: browse, window: [1s, 9s], percentile: 99, at_most: 5ms}}\n"
        );
        let p = plan(&text);
        let bound = LatencyBound {
            workload: 0,
            window: Window::Between(Duration::from_secs(1), Duration::from_secs(9)),
            percentile: 99.0,
            at_most: Some(Duration::from_millis(5)),
            at_least: None,
        };
        assert_eq!(p.expectations, [Expectation::Latency(bound.clone()), Expectation::LatencyOverhead(bound)]);
        assert!(p.baseline.is_some(), "a latency overhead needs the no-mesh baseline");
    }

    #[test]
    fn every_bounded_kind_needs_a_bound() {
        for entry in [
            "success_rate: {workload: browse}",
            "latency: {workload: browse, percentile: 50}",
            "count: {workload: browse}",
            "certs: {event: issued}",
            "events: {kind: scale}",
        ] {
            let kind = entry.split(':').next().expect("a kind");
            assert_eq!(
                errors(&format!("{BASE}expect:\n  - {entry}\n")),
                format!(
                    "t.yaml:17:{}: error [MSIM0002] expect[0].{kind}: give at_least and/or at_most\n",
                    7 + kind.len()
                ),
            );
        }
    }

    #[test]
    fn a_window_past_the_run_end_is_refused() {
        assert_eq!(
            errors(&format!(
                "{BASE}expect:\n  - success_rate: {{workload: browse, window: [11s, 12s], at_least: 1}}\n"
            )),
            "t.yaml:17:46: error [MSIM0002] expect[0].success_rate.window: window starts at 11s, after the run ends (10s)\n"
        );
    }

    #[test]
    fn an_entry_with_two_kinds_is_refused_naming_every_kind() {
        assert_eq!(
            errors(&format!("{BASE}expect:\n  - {{traces: complete, never_ejected: {{pod: backend-v1-0}}}}\n")),
            "t.yaml: error [MSIM0002] expect[0]: an expectation has exactly one of share, ejection, never_ejected, success_rate, latency, count, certs, metric, traces, latency_overhead, converged, events (found 2)\n"
        );
    }

    #[test]
    fn an_unknown_workload_is_not_found() {
        assert_eq!(
            errors(&format!("{BASE}expect:\n  - success_rate: {{workload: buy, at_least: 1}}\n")),
            "t.yaml:17:30: error [IST0101] expect[0].success_rate.workload: workload \"buy\" is not defined\n"
        );
    }
}
