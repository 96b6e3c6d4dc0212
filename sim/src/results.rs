//! Run results: the JSON document a run writes (byte-identical for the same scenario
//! and seed: no wall-clock values, ordered maps only) and the summary printed for a
//! person. Wall-clock figures are printed, never stored. Telemetry goes in as each
//! pod's metric series and a trace summary; every request's spans only when the
//! scenario asks (`spans: true`: a few hundred bytes per request).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::expect::{self, Check, is_success, was_sent};
use crate::recorder::{Outcome, Record};
use crate::scenario::Plan;
use crate::world::RunOutput;
use mesh::proxy::metrics::{BUCKETS, Series};
use mesh::proxy::tracing::OwnedSpan;

#[derive(Debug, Serialize)]
pub struct Results {
    pub scenario: String,
    pub file: String,
    pub seed: u64,
    /// Where it ran: `sim`, `real` (see `crate::target`).
    pub target: &'static str,
    pub duration_ms: u64,
    pub sim_elapsed_ms: u64,
    /// Node → pods placed on it.
    pub placement: BTreeMap<String, Vec<String>>,
    /// Service FQDN → its ClusterIP, port and protocol.
    pub services: BTreeMap<String, ServiceOut>,
    pub issued: usize,
    pub recorded: usize,
    pub workloads: Vec<WorkloadResults>,
    pub events: Vec<EventOut>,
    pub metrics: MetricsOut,
    pub traces: crate::traces::Summary,
    pub expectations: Vec<Check>,
    /// Indices of `expectations` the target cannot check (neither passed nor failed:
    /// each one's `observed` says why).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_checkable: Vec<usize>,
    pub passed: bool,
    pub warnings: Vec<String>,
    pub requests: Vec<RequestOut>,
    /// The same scenario and seed with `mesh: none` (its expectations are not checked),
    /// when an expectation compared against it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Box<Results>>,
    /// On the envoy target: the Envoy version, what the translation to xDS could not
    /// express, and each proxy's config as its Envoy reported it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub envoy: Option<crate::envoy::EnvoyInfo>,
}

#[derive(Debug, Serialize)]
pub struct ServiceOut {
    pub cluster_ip: Option<std::net::Ipv4Addr>,
    pub port: u16,
    pub app_protocol: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Latencies {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

#[derive(Debug, Serialize)]
pub struct Second {
    pub t: u64,
    pub requests: u64,
    pub success: u64,
    /// Responses per serving pod in this second.
    pub pods: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
pub struct WorkloadResults {
    pub name: String,
    pub to: String,
    pub requests: u64,
    pub success: u64,
    pub success_rate: f64,
    pub statuses: BTreeMap<String, u64>,
    pub flags: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    /// Milliseconds, over requests actually sent, from the intended send time.
    pub latency_ms: Option<Latencies>,
    /// Responses per serving pod.
    pub pods: BTreeMap<String, u64>,
    pub series: Vec<Second>,
}

#[derive(Debug, Serialize)]
pub struct EventOut {
    pub at_ms: f64,
    pub kind: String,
    pub detail: String,
}

/// Every sidecar's Istio metrics at the end of the run.
#[derive(Debug, Serialize)]
pub struct MetricsOut {
    /// Upper bounds of the histogram buckets (each series lists cumulative counts for
    /// these, then `+Inf`).
    pub buckets_le: Vec<f64>,
    /// Pod → its sidecar's series.
    pub pods: BTreeMap<String, Vec<Series>>,
}

#[derive(Debug, Serialize)]
pub struct SpanOut {
    pub kind: &'static str,
    pub proxy: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent: Option<String>,
    pub start_us: u64,
    pub duration_us: u64,
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "is_zero")]
    pub attempt: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl SpanOut {
    fn of(s: &OwnedSpan) -> SpanOut {
        SpanOut {
            kind: s.kind.as_str(),
            proxy: s.proxy.clone(),
            trace_id: format!("{:032x}", s.trace_id),
            span_id: format!("{:016x}", s.span_id),
            parent: s.parent.map(|p| format!("{p:016x}")),
            start_us: s.start.as_micros() as u64,
            duration_us: s.duration.as_micros() as u64,
            status: s.status,
            attempt: s.attempt,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct RequestOut {
    pub id: usize,
    pub workload: usize,
    pub source: String,
    pub intended_us: u64,
    pub latency_us: u64,
    pub status: Option<u16>,
    pub error: Option<&'static str>,
    pub pod: Option<String>,
    pub flags: String,
    /// `mutual_tls` or `none` as the destination sidecar saw the connection.
    pub connection_security: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub spans: Vec<SpanOut>,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn latencies(records: &[&Record]) -> Option<Latencies> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds");
    for r in records.iter().filter(|r| was_sent(r)) {
        h.saturating_record(r.latency.as_micros().max(1) as u64);
    }
    if h.is_empty() {
        return None;
    }
    let q = |p: f64| h.value_at_quantile(p) as f64 / 1e3;
    Some(Latencies { p50: q(0.5), p90: q(0.9), p99: q(0.99), p999: q(0.999), max: h.max() as f64 / 1e3 })
}

pub fn build(plan: &Plan, seed: u64, out: &RunOutput) -> Results {
    let base = out.baseline.as_deref();
    let checks = expect::check(plan, &out.records, &out.events, &out.metrics, base.map(|b| b.records.as_slice()));
    let mut checks = checks;
    let mut r = build_unchecked(plan, seed, out);
    for (i, (c, e)) in checks.iter_mut().zip(&plan.expectations).enumerate() {
        if let Some(reason) = crate::target::not_checkable(e, out.target) {
            c.observed = format!("not checkable on {}: {reason}", out.target.name());
            c.pass = false;
            r.not_checkable.push(i);
        }
    }
    r.passed = checks.iter().enumerate().all(|(i, c)| c.pass || r.not_checkable.contains(&i));
    r.expectations = checks;
    if let (Some(p), Some(b)) = (plan.baseline.as_deref(), base) {
        r.baseline = Some(Box::new(build_unchecked(p, seed, b)));
    }
    r
}

/// Everything but the expectations.
fn build_unchecked(plan: &Plan, seed: u64, out: &RunOutput) -> Results {
    let mut placement: BTreeMap<String, Vec<String>> = plan.nodes.iter().map(|n| (n.clone(), vec![])).collect();
    for p in &plan.pods {
        placement.get_mut(&plan.nodes[p.node]).expect("node exists").push(p.name.clone());
    }
    let workloads = plan
        .workloads
        .iter()
        .enumerate()
        .map(|(wi, w)| {
            let mine: Vec<&Record> = out.records.iter().filter(|r| r.workload == wi).collect();
            let mut res = WorkloadResults {
                name: w.name.clone(),
                to: w.to.clone(),
                requests: mine.len() as u64,
                success: mine.iter().filter(|r| is_success(r)).count() as u64,
                success_rate: 0.0,
                statuses: BTreeMap::new(),
                flags: BTreeMap::new(),
                errors: BTreeMap::new(),
                latency_ms: latencies(&mine),
                pods: BTreeMap::new(),
                series: Vec::new(),
            };
            res.success_rate = if res.requests == 0 { 0.0 } else { res.success as f64 / res.requests as f64 };
            let seconds = plan.duration.as_secs_f64().ceil() as u64;
            let mut series: Vec<Second> =
                (0..seconds).map(|t| Second { t, requests: 0, success: 0, pods: BTreeMap::new() }).collect();
            for r in &mine {
                let s = series.get_mut(r.intended.as_secs() as usize);
                match &r.outcome {
                    Outcome::Response { status, pod } => {
                        *res.statuses.entry(status.to_string()).or_default() += 1;
                        if let Some(p) = pod {
                            *res.pods.entry(p.clone()).or_default() += 1;
                        }
                        if let Some(s) = s {
                            s.requests += 1;
                            s.success += u64::from(is_success(r));
                            if let Some(p) = pod {
                                *s.pods.entry(p.clone()).or_default() += 1;
                            }
                        }
                    }
                    Outcome::Echoed { .. } => {
                        *res.statuses.entry("echoed".to_string()).or_default() += 1;
                        if let Some(s) = s {
                            s.requests += 1;
                            s.success += 1;
                        }
                    }
                    Outcome::Error(e) => {
                        *res.errors.entry(e.to_string()).or_default() += 1;
                        if let Some(s) = s {
                            s.requests += 1;
                        }
                    }
                }
                if !r.flags.is_empty() {
                    *res.flags.entry(r.flags.clone()).or_default() += 1;
                }
            }
            res.series = series;
            res
        })
        .collect();
    Results {
        scenario: plan.name.clone(),
        file: plan.file.clone(),
        seed,
        target: out.target.name(),
        duration_ms: plan.duration.as_millis() as u64,
        sim_elapsed_ms: out.sim_elapsed.as_millis() as u64,
        placement,
        services: plan
            .registry
            .services
            .iter()
            .map(|(fqdn, s)| {
                let out = ServiceOut { cluster_ip: s.cluster_ip, port: s.port, app_protocol: s.protocol.as_str() };
                (fqdn.clone(), out)
            })
            .collect(),
        issued: out.issued,
        recorded: out.records.len(),
        workloads,
        events: out
            .events
            .iter()
            .map(|e| EventOut { at_ms: ms(e.at), kind: e.kind.clone(), detail: e.detail.clone() })
            .collect(),
        metrics: MetricsOut { buckets_le: BUCKETS.to_vec(), pods: out.metrics.clone() },
        traces: crate::traces::Summary::of(plan, &out.records),
        not_checkable: Vec::new(),
        passed: true,
        expectations: Vec::new(),
        warnings: plan.warnings.iter().map(|w| w.to_string()).collect(),
        requests: out
            .records
            .iter()
            .enumerate()
            .map(|(id, r)| {
                let (status, error, pod) = match &r.outcome {
                    Outcome::Response { status, pod } => (Some(*status), None, pod.clone()),
                    Outcome::Echoed { .. } => (None, None, None),
                    Outcome::Error(e) => (None, Some(*e), None),
                };
                RequestOut {
                    id,
                    workload: r.workload,
                    source: plan.pods[r.source].name.clone(),
                    intended_us: r.intended.as_micros() as u64,
                    latency_us: r.latency.as_micros() as u64,
                    status,
                    error,
                    pod,
                    flags: r.flags.clone(),
                    connection_security: r.connection_security.map(|c| c.as_str()),
                    spans: if plan.spans { r.spans.iter().map(SpanOut::of).collect() } else { Vec::new() },
                }
            })
            .collect(),
        baseline: None,
        envoy: out.envoy.clone(),
    }
}

/// Most pods listed per workload in the summary; the rest are summed.
const SUMMARY_PODS: usize = 12;
/// Most timeline lines in the summary; the rest are counted.
const SUMMARY_EVENTS: usize = 30;

/// The human summary (no wall-clock values: the caller adds those).
pub fn summary(r: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "scenario {} (seed {}), {} {}, {} requests issued, {} recorded",
        r.scenario,
        r.seed,
        fmt_ms(r.duration_ms as f64),
        if r.target == "sim" { "simulated" } else { "in real time on loopback" },
        r.issued,
        r.recorded
    );
    if let Some(e) = &r.envoy {
        let _ = writeln!(s, "sidecars: Envoy {} (--concurrency {}), configured over xDS", e.version, e.concurrency);
        for (proxy, lines) in &e.untranslated {
            for l in lines {
                let _ = writeln!(s, "  not translated for {proxy}: {l}");
            }
        }
        if let Some(first) = e.unreadable_log_lines.first() {
            let n = e.unreadable_log_lines.len();
            let _ = writeln!(s, "  {n} Envoy log line(s) could not be read, the first: {first}");
        }
    }
    let placement: Vec<String> = r
        .placement
        .iter()
        .map(|(node, pods)| match pods.len() {
            0..=4 => format!("{node}: {}", pods.join(" ")),
            n => format!("{node}: {} … ({n} pods)", pods[..3].join(" ")),
        })
        .collect();
    let _ = writeln!(s, "placement {}", placement.join("; "));
    let line = |s: &mut String, what: &str, l: &Latencies| {
        let _ = writeln!(
            s,
            "  {what:<8} p50 {}  p99 {}  p99.9 {}  max {}",
            fmt_ms(l.p50),
            fmt_ms(l.p99),
            fmt_ms(l.p999),
            fmt_ms(l.max)
        );
    };
    for (i, w) in r.workloads.iter().enumerate() {
        let _ = writeln!(s, "\n{} -> {}: {} requests, {:.2}% 2xx", w.name, w.to, w.requests, 100.0 * w.success_rate);
        if let Some(l) = &w.latency_ms {
            line(&mut s, "latency", l);
        }
        if let Some(l) = r.baseline.as_ref().and_then(|b| b.workloads.get(i)).and_then(|b| b.latency_ms.as_ref()) {
            line(&mut s, "no mesh", l);
        }
        let counts =
            |m: &BTreeMap<String, u64>| m.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ");
        let _ = writeln!(s, "  statuses {}", counts(&w.statuses));
        if w.flags.keys().any(|f| f != "-") {
            let _ = writeln!(s, "  flags    {}", counts(&w.flags));
        }
        if !w.errors.is_empty() {
            let _ = writeln!(s, "  errors   {}", counts(&w.errors));
        }
        let total: u64 = w.pods.values().sum();
        if total > 0 {
            let mut pods: Vec<(&String, &u64)> = w.pods.iter().collect();
            pods.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            let shown: Vec<String> = pods
                .iter()
                .take(SUMMARY_PODS)
                .map(|(p, n)| format!("{p} {:.2}%", 100.0 * **n as f64 / total as f64))
                .collect();
            let _ = write!(s, "  shares   {}", shown.join(", "));
            if pods.len() > SUMMARY_PODS {
                let rest: u64 = pods[SUMMARY_PODS..].iter().map(|(_, n)| **n).sum();
                let _ =
                    write!(s, ", {} more pods {:.2}%", pods.len() - SUMMARY_PODS, 100.0 * rest as f64 / total as f64);
            }
            let _ = writeln!(s);
        }
    }
    if !r.events.is_empty() {
        let _ = writeln!(s, "\ntimeline");
        // Refused ejections repeat at every trigger: show the first of each and count them.
        let mut overflow_seen = BTreeMap::new();
        let mut shown = 0;
        for e in &r.events {
            if e.kind == "ejection_overflow" {
                let n = overflow_seen.entry(e.detail.clone()).or_insert(0u64);
                *n += 1;
                if *n > 1 {
                    continue;
                }
            }
            if shown < SUMMARY_EVENTS {
                let _ = writeln!(s, "  {:>10}  {:<18} {}", fmt_ms(e.at_ms), e.kind, e.detail);
            }
            shown += 1;
        }
        if shown > SUMMARY_EVENTS {
            let _ = writeln!(s, "  … {} more events in the results file", shown - SUMMARY_EVENTS);
        }
        for (detail, n) in overflow_seen.iter().filter(|(_, n)| **n > 1) {
            let _ = writeln!(s, "  ({n}× {detail})");
        }
    }
    if !r.expectations.is_empty() {
        let _ = writeln!(s, "\nexpectations");
        for (i, c) in r.expectations.iter().enumerate() {
            let _ = writeln!(
                s,
                "  {} {}: expected {}, observed {}",
                if r.not_checkable.contains(&i) {
                    "N/A "
                } else if c.pass {
                    "PASS"
                } else {
                    "FAIL"
                },
                c.expectation,
                c.expected,
                c.observed
            );
        }
    }
    s
}

fn fmt_ms(v: f64) -> String {
    if v >= 1000.0 { format!("{:.3}s", v / 1e3) } else { format!("{v:.3}ms") }
}
