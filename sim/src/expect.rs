//! Checking a run against its expectations. Each check reports what was expected, what
//! was observed and whether it held; the observations come from the client side's
//! records (status, serving pod from the app's own header, latency from the intended
//! send time), the proxies' outlier events, their metric series and their spans.

use std::collections::BTreeMap;
use std::time::Duration;

use mesh::control::ControlEventKind;
use mesh::proxy::metrics::Series;
use mesh::proxy::telemetry::OutlierKind;
use serde::Serialize;

use crate::recorder::{Event, Outcome, Record};
use crate::scenario::{CountFilter, Expectation, LatencyBound, Plan, Window};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Check {
    pub expectation: String,
    pub expected: String,
    pub observed: String,
    pub pass: bool,
}

fn win(w: &Window) -> String {
    match w {
        Window::All => "whole run".into(),
        Window::Between(a, b) => format!("[{}, {})", secs(*a), secs(*b)),
    }
}

fn secs(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

/// Whether the request was actually sent (it has a latency worth measuring).
pub fn was_sent(r: &Record) -> bool {
    !matches!(r.outcome, Outcome::Error("in_flight_limit") | Outcome::Error("source_down"))
}

pub fn is_success(r: &Record) -> bool {
    match r.outcome {
        Outcome::Response { status, .. } => (200..300).contains(&status),
        Outcome::Echoed { .. } => true,
        Outcome::Error(_) => false,
    }
}

/// The value at `percentile` (0–100] of `values` (sorted in place), nearest rank.
pub fn percentile(values: &mut [Duration], p: f64) -> Option<Duration> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    Some(values[rank.clamp(1, values.len()) - 1])
}

/// Default share tolerance: 4.5 binomial standard deviations (a false alarm about once
/// in 150,000 checks), and never below one request's worth.
pub fn binomial_tolerance(p: f64, n: usize) -> f64 {
    let n = n.max(1) as f64;
    (4.5 * (p * (1.0 - p) / n).sqrt()).max(1.0 / n)
}

/// Whether `r` passes every condition of `cf`.
fn counts(cf: &CountFilter, r: &Record) -> bool {
    let (st, pd, err) = match &r.outcome {
        Outcome::Response { status, pod } => (Some(*status), pod.as_deref(), None),
        Outcome::Echoed { .. } => (None, None, None),
        Outcome::Error(e) => (None, None, Some(*e)),
    };
    cf.status.is_none_or(|s| st == Some(s))
        && cf.flag.as_ref().is_none_or(|f| r.flags.split(',').any(|x| x == f))
        && cf.error.as_ref().is_none_or(|e| err == Some(e.as_str()))
        && cf.pod.as_ref().is_none_or(|p| pd == Some(p.as_str()))
        && cf.connection_security.is_none_or(|c| r.connection_security == Some(c))
        && cf.upstream_attempts.is_none_or(|a| r.upstream_attempts == a)
        && cf.header.as_ref().is_none_or(|h| h.matches(&r.headers))
        && cf.body.as_ref().is_none_or(|b| r.body.as_deref() == Some(b.as_str()))
        && (!cf.on_receipts()
            || r.receipts.iter().any(|x| {
                cf.received_by.as_ref().is_none_or(|p| *p == x.pod)
                    && cf.upstream_path.as_ref().is_none_or(|p| *p == x.path)
                    && cf.upstream_header.as_ref().is_none_or(|h| h.matches(&x.headers))
            }))
}

/// Every expectation of `plan` checked against a run's records, events and each pod's
/// metric series.
/// `baseline`: the records of the same scenario and seed without the mesh, when the plan
/// needs them ([`Plan::needs_baseline`]).
pub fn check(
    plan: &Plan,
    records: &[Record],
    events: &[Event],
    metrics: &BTreeMap<String, Vec<Series>>,
    baseline: Option<&[Record]>,
) -> Vec<Check> {
    plan.expectations
        .iter()
        .map(|e| match e {
            Expectation::LatencyOverhead(LatencyBound { workload, window, percentile: p, at_most, at_least }) => {
                let at = |records: &[Record]| {
                    let mut lat: Vec<Duration> =
                        in_window(records, *workload, window).filter(|r| was_sent(r)).map(|r| r.latency).collect();
                    percentile(&mut lat, *p)
                };
                let ms = |d: Duration| format!("{:.3}ms", d.as_secs_f64() * 1e3);
                let expectation = format!(
                    "p{p} latency overhead of {} in {} (against mesh: none, same seed)",
                    plan.workloads[*workload].name,
                    win(window)
                );
                let mut bounds = Vec::new();
                if let Some(l) = at_least {
                    bounds.push(format!(">= +{}", ms(*l)));
                }
                if let Some(m) = at_most {
                    bounds.push(format!("<= +{}", ms(*m)));
                }
                let expected = bounds.join(" and ");
                match (at(records), baseline.and_then(at)) {
                    (Some(with), Some(without)) => {
                        let added = with.as_secs_f64() - without.as_secs_f64();
                        Check {
                            expectation,
                            expected,
                            observed: format!(
                                "{}{:.3}ms ({} with the mesh, {} without)",
                                if added < 0.0 { "-" } else { "+" },
                                added.abs() * 1e3,
                                ms(with),
                                ms(without)
                            ),
                            pass: at_most.is_none_or(|m| added <= m.as_secs_f64())
                                && at_least.is_none_or(|l| added >= l.as_secs_f64()),
                        }
                    }
                    (with, _) => Check {
                        expectation,
                        expected,
                        observed: format!(
                            "no requests {}",
                            if with.is_none() { "with the mesh" } else { "in the no-mesh baseline" }
                        ),
                        pass: false,
                    },
                }
            }
            Expectation::Metric(q) => {
                let (value, series) = q.eval(metrics);
                Check {
                    expectation: format!("metric sum({q}) over every sidecar"),
                    expected: format!("{} {}", q.cmp.as_str(), q.bound),
                    observed: format!("{value} ({series} series)"),
                    pass: q.cmp.holds(value, q.bound),
                }
            }
            Expectation::TracesComplete => {
                let summary = crate::traces::Summary::of(plan, records);
                Check {
                    expectation: "every request has a complete trace tree (a span at both sidecars, one per try)"
                        .into(),
                    expected: "all complete".into(),
                    observed: summary.describe(),
                    pass: summary.checked > 0 && summary.incomplete == 0,
                }
            }
            _ => check_one(plan, records, events, e),
        })
        .collect()
}

fn in_window<'a>(records: &'a [Record], workload: usize, w: &'a Window) -> impl Iterator<Item = &'a Record> + 'a {
    records.iter().filter(move |r| r.workload == workload && w.contains(r.intended))
}

/// Every proxy connected when the first version created at or after `after` appeared
/// must ACK it (or a later one) within `within`.
fn converged(events: &[Event], after: Duration, within: Duration) -> Check {
    let expectation =
        format!("every connected proxy ACKs the first config version created at or after {}", secs(after));
    let expected = format!("within {}", secs(within));
    let change = events
        .iter()
        .filter_map(|e| e.control.as_ref())
        .find(|c| c.at >= after && matches!(c.kind, ControlEventKind::Changed { .. }));
    let Some(change) = change else {
        return Check { expectation, expected, observed: "no version was created".into(), pass: false };
    };
    let (t0, version) = (change.at, change.version);
    // Proxies whose stream was up when the version appeared.
    let mut connected: BTreeMap<&str, bool> = BTreeMap::new();
    for c in events.iter().filter_map(|e| e.control.as_ref()).filter(|c| c.at <= t0) {
        match c.kind {
            ControlEventKind::Connected => {
                connected.insert(&c.proxy, true);
            }
            ControlEventKind::Disconnected => {
                connected.insert(&c.proxy, false);
            }
            _ => {}
        }
    }
    let proxies: Vec<&str> = connected.into_iter().filter(|(_, up)| *up).map(|(p, _)| p).collect();
    let mut slowest = Duration::ZERO;
    let mut late = Vec::new();
    for p in &proxies {
        let ack = events
            .iter()
            .filter_map(|e| e.control.as_ref())
            .find(|c| c.proxy == *p && c.at >= t0 && c.version >= version && matches!(c.kind, ControlEventKind::Acked));
        match ack {
            Some(a) if a.at - t0 <= within => slowest = slowest.max(a.at - t0),
            _ => late.push(*p),
        }
    }
    let observed = if late.is_empty() {
        format!("version {version} (at {}): {} proxies, slowest ACK after {}", secs(t0), proxies.len(), secs(slowest))
    } else {
        format!(
            "version {version} (at {}): {} of {} proxies late, first: {}",
            secs(t0),
            late.len(),
            proxies.len(),
            late[..late.len().min(5)].join(", ")
        )
    };
    Check { expectation, expected, observed, pass: !proxies.is_empty() && late.is_empty() }
}

/// `>= l and <= m`, as count-like expectations print their bounds.
fn bounds(at_least: Option<u64>, at_most: Option<u64>) -> String {
    let mut b = Vec::new();
    if let Some(l) = at_least {
        b.push(format!(">= {l}"));
    }
    if let Some(m) = at_most {
        b.push(format!("<= {m}"));
    }
    b.join(" and ")
}

fn check_one(plan: &Plan, records: &[Record], events: &[Event], e: &Expectation) -> Check {
    match e {
        Expectation::Converged { after, within } => converged(events, *after, *within),
        Expectation::Events { kind, window, detail, at_least, at_most } => {
            let n = events
                .iter()
                .filter(|e| {
                    e.kind == *kind
                        && window.contains(e.at)
                        && detail.as_ref().is_none_or(|d| e.detail.contains(d.as_str()))
                })
                .count() as u64;
            let what = detail.as_ref().map(|d| format!(" mentioning {d:?}")).unwrap_or_default();
            Check {
                expectation: format!("{kind} events{what} in {}", win(window)),
                expected: bounds(*at_least, *at_most),
                observed: n.to_string(),
                pass: at_least.is_none_or(|l| n >= l) && at_most.is_none_or(|m| n <= m),
            }
        }
        Expectation::Share { workload, pods, what, window, expected, tolerance } => {
            let name = &plan.workloads[*workload].name;
            let (mut n, mut hit) = (0usize, 0usize);
            for r in in_window(records, *workload, window) {
                if let Outcome::Response { pod: Some(p), .. } = &r.outcome {
                    n += 1;
                    hit += usize::from(pods.contains(p));
                }
            }
            let tol = tolerance.unwrap_or_else(|| binomial_tolerance(*expected, n));
            let observed = if n == 0 { 0.0 } else { hit as f64 / n as f64 };
            Check {
                expectation: format!("share of {name} served by {what} in {}", win(window)),
                expected: format!("{expected:.4} ± {tol:.4}"),
                observed: format!("{observed:.4} ({hit} of {n})"),
                pass: n > 0 && (observed - expected).abs() <= tol,
            }
        }
        Expectation::Ejection { pod, by, nth, at, lasting } => {
            let ejections = |proxy: &str| -> Vec<&Event> {
                events
                    .iter()
                    .filter(|ev| {
                        ev.outlier.as_ref().is_some_and(|o| {
                            o.pod == *pod && o.proxy == proxy && matches!(o.kind, OutlierKind::Ejected { .. })
                        })
                    })
                    .collect()
            };
            let proxy = by.clone().or_else(|| {
                events.iter().find_map(|ev| {
                    ev.outlier
                        .as_ref()
                        .filter(|o| o.pod == *pod && matches!(o.kind, OutlierKind::Ejected { .. }))
                        .map(|o| o.proxy.clone())
                })
            });
            let mut expected = format!("ejection #{nth} of {pod} in [{}, {}]", secs(at.0), secs(at.1));
            if let Some((a, b)) = lasting {
                expected += &format!(", readmitted after [{}, {}]", secs(*a), secs(*b));
            }
            let expectation = format!("{pod} ejected by {}", proxy.as_deref().unwrap_or("any client"));
            let Some(proxy) = proxy else {
                return Check { expectation, expected, observed: "never ejected".into(), pass: false };
            };
            let ej = ejections(&proxy);
            let Some(ev) = ej.get(*nth as usize - 1) else {
                return Check {
                    expectation,
                    expected,
                    observed: format!("{} ejection(s) by {proxy}", ej.len()),
                    pass: false,
                };
            };
            let mut pass = at.0 <= ev.at && ev.at <= at.1;
            let mut observed = format!("ejection #{nth} at {}", secs(ev.at));
            if let Some((a, b)) = lasting {
                let back = events.iter().find(|x| {
                    x.at >= ev.at
                        && x.outlier
                            .as_ref()
                            .is_some_and(|o| o.pod == *pod && o.proxy == proxy && o.kind == OutlierKind::Readmitted)
                });
                match back {
                    Some(x) => {
                        let d = x.at - ev.at;
                        observed += &format!(", readmitted after {}", secs(d));
                        pass &= *a <= d && d <= *b;
                    }
                    None => {
                        observed += ", never readmitted";
                        pass = false;
                    }
                }
            }
            Check { expectation, expected, observed, pass }
        }
        Expectation::NeverEjected { pod } => {
            let n = events
                .iter()
                .filter(|ev| {
                    ev.outlier.as_ref().is_some_and(|o| o.pod == *pod && matches!(o.kind, OutlierKind::Ejected { .. }))
                })
                .count();
            let overflows = events
                .iter()
                .filter(|ev| {
                    ev.outlier.as_ref().is_some_and(|o| o.pod == *pod && matches!(o.kind, OutlierKind::Overflow { .. }))
                })
                .count();
            Check {
                expectation: format!("{pod} never ejected"),
                expected: "0 ejections".into(),
                observed: format!("{n} ejection(s), {overflows} trigger(s) refused by maxEjectionPercent"),
                pass: n == 0,
            }
        }
        Expectation::SuccessRate { workload, window, at_least, at_most } => {
            let (mut n, mut ok) = (0usize, 0usize);
            for r in in_window(records, *workload, window) {
                n += 1;
                ok += usize::from(is_success(r));
            }
            let rate = if n == 0 { 0.0 } else { ok as f64 / n as f64 };
            let mut expected = Vec::new();
            let mut pass = n > 0;
            if let Some(l) = at_least {
                expected.push(format!(">= {l}"));
                pass &= rate >= *l;
            }
            if let Some(m) = at_most {
                expected.push(format!("<= {m}"));
                pass &= rate <= *m;
            }
            Check {
                expectation: format!("success rate (2xx) of {} in {}", plan.workloads[*workload].name, win(window)),
                expected: expected.join(" and "),
                observed: format!("{rate:.5} ({ok} of {n})"),
                pass,
            }
        }
        Expectation::Latency(LatencyBound { workload, window, percentile: p, at_most, at_least }) => {
            let mut lat: Vec<Duration> =
                in_window(records, *workload, window).filter(|r| was_sent(r)).map(|r| r.latency).collect();
            let n = lat.len();
            let got = percentile(&mut lat, *p);
            let ms = |d: &Duration| format!("{:.3}ms", d.as_secs_f64() * 1e3);
            let mut expected = Vec::new();
            if let Some(l) = at_least {
                expected.push(format!(">= {}", ms(l)));
            }
            if let Some(m) = at_most {
                expected.push(format!("<= {}", ms(m)));
            }
            Check {
                expectation: format!("p{p} latency of {} in {}", plan.workloads[*workload].name, win(window)),
                expected: expected.join(" and "),
                observed: match got {
                    Some(d) => format!("{} over {n} requests", ms(&d)),
                    None => "no requests".into(),
                },
                pass: got.is_some_and(|d| at_most.is_none_or(|m| d <= m) && at_least.is_none_or(|l| d >= l)),
            }
        }
        Expectation::Metric(_) | Expectation::TracesComplete | Expectation::LatencyOverhead(_) => {
            unreachable!("checked in `check`")
        }
        Expectation::Count { workload, window, filter: cf, at_least, at_most } => {
            let n = in_window(records, *workload, window).filter(|r| counts(cf, r)).count() as u64;
            let mut what = Vec::new();
            if let Some(s) = cf.status {
                what.push(format!("status {s}"));
            }
            if let Some(f) = &cf.flag {
                what.push(format!("flag {f}"));
            }
            if let Some(e) = &cf.error {
                what.push(format!("error {e}"));
            }
            if let Some(p) = &cf.pod {
                what.push(format!("served by {p}"));
            }
            if let Some(c) = cf.connection_security {
                what.push(format!("connection security {}", c.as_str()));
            }
            if let Some(a) = cf.upstream_attempts {
                what.push(format!("{a} upstream attempt(s)"));
            }
            if let Some(h) = &cf.header {
                what.push(format!("header {h}"));
            }
            if let Some(b) = &cf.body {
                what.push(format!("body {b:?}"));
            }
            if cf.on_receipts() {
                let mut got = Vec::new();
                if let Some(p) = &cf.received_by {
                    got.push(format!("by {p}"));
                }
                if let Some(p) = &cf.upstream_path {
                    got.push(format!("path {p:?}"));
                }
                if let Some(h) = &cf.upstream_header {
                    got.push(format!("header {h}"));
                }
                what.push(format!("received {}", got.join(" with ")));
            }
            let mut expected = Vec::new();
            let mut pass = true;
            if let Some(l) = at_least {
                expected.push(format!(">= {l}"));
                pass &= n >= *l;
            }
            if let Some(m) = at_most {
                expected.push(format!("<= {m}"));
                pass &= n <= *m;
            }
            Check {
                expectation: format!(
                    "requests of {} with {} in {}",
                    plan.workloads[*workload].name,
                    if what.is_empty() { "any outcome".into() } else { what.join(", ") },
                    win(window)
                ),
                expected: expected.join(" and "),
                observed: n.to_string(),
                pass,
            }
        }
        Expectation::Certs { pods, event, window, at_least, at_most } => {
            let kind = crate::recorder::cert_event_kind(event);
            let counts: Vec<(&str, u64)> = pods
                .iter()
                .map(|p| {
                    let n = events
                        .iter()
                        .filter(|e| e.kind == kind && window.contains(e.at) && crate::recorder::event_pod(e) == Some(p))
                        .count() as u64;
                    (p.as_str(), n)
                })
                .collect();
            let ok = |n: u64| at_least.is_none_or(|l| n >= l) && at_most.is_none_or(|m| n <= m);
            let mut expected = Vec::new();
            if let Some(l) = at_least {
                expected.push(format!(">= {l}"));
            }
            if let Some(m) = at_most {
                expected.push(format!("<= {m}"));
            }
            let failing: Vec<String> =
                counts.iter().filter(|(_, n)| !ok(*n)).map(|(p, n)| format!("{p}: {n}")).collect();
            let observed = if failing.is_empty() {
                let (lo, hi) = (counts.iter().map(|c| c.1).min(), counts.iter().map(|c| c.1).max());
                format!("{} to {} per pod", lo.unwrap_or(0), hi.unwrap_or(0))
            } else {
                failing.join(", ")
            };
            let who = if pods.len() == 1 { pods[0].clone() } else { "each pod".into() };
            Check {
                expectation: format!("{kind} events of {who} in {}", win(window)),
                expected: expected.join(" and "),
                observed,
                pass: failing.is_empty() && !counts.is_empty(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentile() {
        let mut v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&mut v, 50.0), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&mut v, 99.0), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&mut v, 100.0), Some(Duration::from_millis(100)));
        assert_eq!(percentile(&mut [], 50.0), None);
    }

    #[test]
    fn binomial_tolerance_shrinks_with_n() {
        let t1 = binomial_tolerance(0.05, 1000);
        let t2 = binomial_tolerance(0.05, 100_000);
        assert!(t1 > t2);
        assert!((t2 - 4.5 * (0.05f64 * 0.95 / 100_000.0).sqrt()).abs() < 1e-12);
    }

    use crate::recorder::Receipt;
    use crate::scenario::HeaderFilter;

    fn pair(n: &str, v: &str) -> (String, String) {
        (n.to_string(), v.to_string())
    }

    #[test]
    fn header_conditions_name_or_name_and_value() {
        let h = HeaderFilter::parse("X-Tier: gold").unwrap();
        assert_eq!(h, HeaderFilter { name: "x-tier".into(), value: Some("gold".into()) });
        assert!(h.matches(&[pair("x-a", "1"), pair("x-tier", "bronze"), pair("x-tier", "gold")]));
        assert!(!h.matches(&[pair("x-tier", "bronze")]));
        let any = HeaderFilter::parse("x-tier").unwrap();
        assert!(any.value.is_none() && any.matches(&[pair("x-tier", "")]));
        assert!(HeaderFilter::parse("end user: x").unwrap_err().contains("\"end user\""));
        assert!(HeaderFilter::parse("").is_err());
    }

    #[test]
    fn receipt_conditions_hold_for_one_receipt() {
        let receipt = |pod: &str, path: &str, h: &[(&str, &str)]| Receipt {
            pod: pod.into(),
            path: path.into(),
            headers: h.iter().map(|(n, v)| pair(n, v)).collect(),
        };
        let r = Record {
            workload: 0,
            source: 0,
            intended: Duration::ZERO,
            latency: Duration::ZERO,
            outcome: Outcome::Response { status: 200, pod: Some("a-0".into()) },
            flags: "-".into(),
            connection_security: None,
            upstream_attempts: 2,
            headers: vec![pair("x-cache", "miss")],
            body: None,
            receipts: vec![receipt("a-0", "/x", &[("host", "a")]), receipt("b-0", "/y", &[("host", "a-shadow")])],
            spans: Vec::new(),
        };
        let f = |cf: CountFilter| counts(&cf, &r);
        assert!(f(CountFilter { received_by: Some("b-0".into()), ..Default::default() }));
        assert!(f(CountFilter {
            received_by: Some("b-0".into()),
            upstream_header: HeaderFilter::parse("host: a-shadow").ok(),
            ..Default::default()
        }));
        // Each condition holds for some receipt, but not all for the same one.
        assert!(!f(CountFilter {
            received_by: Some("b-0".into()),
            upstream_path: Some("/x".into()),
            ..Default::default()
        }));
        assert!(f(CountFilter { header: HeaderFilter::parse("x-cache: miss").ok(), ..Default::default() }));
        assert!(!f(CountFilter { header: HeaderFilter::parse("x-cache: hit").ok(), ..Default::default() }));
        assert!(f(CountFilter { upstream_attempts: Some(2), pod: Some("a-0".into()), ..Default::default() }));
    }
}
