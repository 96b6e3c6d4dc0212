//! What the charts show, computed from a [`Run`]: latency spectra, per-second series,
//! the fault and ejection windows paired from the event timeline, the instances worth
//! drawing when there are too many. Pure functions over the results; no drawing here.

use std::collections::BTreeMap;

use crate::model::{Latencies, Run, Workload};

/// The highest percentile a spectrum reaches: 99.999% (x = 5).
pub const SPECTRUM_NINES: f64 = 5.0;

/// x of a percentile on the spectrum axis: the number of nines, `log10(1 / (1 - q))`.
pub fn nines(q: f64) -> f64 {
    (1.0 / (1.0 - q).max(1e-12)).log10()
}

/// The percentile (0–100) at spectrum x.
pub fn percentile_at(x: f64) -> f64 {
    100.0 * (1.0 - 10f64.powf(-x))
}

/// Latencies (ms) of the sent requests of workload `w`, sorted.
pub fn latencies_ms(run: &Run, w: usize) -> Vec<f64> {
    let mut v: Vec<f64> =
        run.requests.iter().filter(|r| r.workload == w && r.was_sent()).map(|r| r.latency_us as f64 / 1e3).collect();
    v.sort_by(f64::total_cmp);
    v
}

/// Nearest-rank value at quantile `q` of sorted `v`.
pub fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let rank = (q * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// HdrHistogram-style percentile spectrum of sorted latencies: (nines, ms) points from the
/// median-less 0th percentile up to the last percentile the sample supports (at most
/// 99.999%), ending at the maximum.
pub fn spectrum(sorted: &[f64]) -> Vec<(f64, f64)> {
    if sorted.is_empty() {
        return Vec::new();
    }
    let top = (sorted.len() as f64).log10().min(SPECTRUM_NINES);
    let steps = 100;
    let mut pts: Vec<(f64, f64)> = (0..steps)
        .map(|i| top * i as f64 / steps as f64)
        .map(|x| (x, quantile(sorted, 1.0 - 10f64.powf(-x))))
        .collect();
    pts.push((top, *sorted.last().expect("not empty")));
    pts
}

/// p50/p90/p99/p99.9/max of workload `w`: as the results file states them, else computed.
pub fn table_latencies(run: &Run, w: usize) -> Option<Latencies> {
    if let Some(l) = run.workloads.get(w).and_then(|x| x.latency_ms.clone()) {
        return Some(l);
    }
    let v = latencies_ms(run, w);
    (!v.is_empty()).then(|| Latencies {
        p50: quantile(&v, 0.5),
        p90: quantile(&v, 0.9),
        p99: quantile(&v, 0.99),
        p999: quantile(&v, 0.999),
        max: *v.last().expect("not empty"),
    })
}

/// What a shaded window on the time axis stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum WindowKind {
    /// A fault from the scenario's schedule (`fault_start` … `fault_end`).
    Fault,
    /// An outlier ejection (`ejected` … `readmitted`), per client proxy.
    Ejection,
    /// Any other `X_start` … `X_end` pair.
    Other,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    pub kind: WindowKind,
    /// `F1`, `E2`, `W3`: short enough to label in the chart; [`Window::label`] says the rest.
    pub tag: String,
    pub start_s: f64,
    /// `None`: still open when the run ended.
    pub end_s: Option<f64>,
    pub label: String,
    /// The timeline lane it belongs to: the event kind without `_start`/`_end`, or `ejection`.
    pub lane: String,
    /// The instance the window is about (the ejected pod), if one.
    pub pod: Option<String>,
}

/// `(proxy, pod)` of an `ejected` / `readmitted` event's detail:
/// `P ejected Q from C (…)`, `P readmitted Q to C`.
fn outlier_subject(detail: &str, verb: &str) -> Option<(String, String)> {
    let mut words = detail.split_whitespace();
    let proxy = words.next()?;
    (words.next()? == verb).then_some(())?;
    Some((proxy.to_string(), words.next()?.to_string()))
}

/// Windows from the event timeline, in start order, tagged `F1…` (faults), `E1…`
/// (ejections), `W1…` (other pairs).
pub fn windows(run: &Run) -> Vec<Window> {
    let mut open: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
    let mut out: Vec<Window> = Vec::new();
    for e in &run.events {
        let t = e.at_ms / 1e3;
        if let Some(base) = e.kind.strip_suffix("_start") {
            let kind = if base == "fault" { WindowKind::Fault } else { WindowKind::Other };
            let label = if kind == WindowKind::Fault { e.detail.clone() } else { format!("{base}: {}", e.detail) };
            open.entry((base.to_string(), e.detail.clone())).or_default().push(out.len());
            out.push(Window {
                kind,
                tag: String::new(),
                start_s: t,
                end_s: None,
                label,
                lane: base.to_string(),
                pod: None,
            });
        } else if let Some(base) = e.kind.strip_suffix("_end") {
            if let Some(i) = open.get_mut(&(base.to_string(), e.detail.clone())).and_then(|v| v.pop()) {
                out[i].end_s = Some(t);
            }
        } else if e.kind == "ejected" {
            if let Some((proxy, pod)) = outlier_subject(&e.detail, "ejected") {
                open.entry(("ejected".into(), format!("{proxy} {pod}"))).or_default().push(out.len());
                out.push(Window {
                    kind: WindowKind::Ejection,
                    tag: String::new(),
                    start_s: t,
                    end_s: None,
                    label: format!("{pod} ejected by {proxy}"),
                    lane: "ejection".into(),
                    pod: Some(pod),
                });
            }
        } else if e.kind == "readmitted"
            && let Some((proxy, pod)) = outlier_subject(&e.detail, "readmitted")
            && let Some(i) = open.get_mut(&("ejected".into(), format!("{proxy} {pod}"))).and_then(|v| v.pop())
        {
            out[i].end_s = Some(t);
        }
    }
    let mut counts = BTreeMap::new();
    for w in &mut out {
        let n = counts.entry(w.kind).or_insert(0);
        *n += 1;
        let letter = match w.kind {
            WindowKind::Fault => 'F',
            WindowKind::Ejection => 'E',
            WindowKind::Other => 'W',
        };
        w.tag = format!("{letter}{n}");
    }
    out
}

/// Seconds on the run's time axis.
pub fn seconds(run: &Run) -> usize {
    let from_series = run.workloads.iter().map(|w| w.series.len()).max().unwrap_or(0);
    from_series.max(run.duration_ms.div_ceil(1000) as usize)
}

/// Responses per second per serving instance, over every workload.
pub fn per_instance(run: &Run) -> BTreeMap<String, Vec<u64>> {
    let n = seconds(run);
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for w in &run.workloads {
        for s in &w.series {
            for (pod, c) in &s.pods {
                out.entry(pod.clone()).or_insert_with(|| vec![0; n])[s.t as usize] += c;
            }
        }
    }
    out
}

/// The instances to draw one by one (at most `max`): those a window is about first,
/// then the busiest. The rest are drawn as their mean.
pub fn pick_instances(series: &BTreeMap<String, Vec<u64>>, windows: &[Window], max: usize) -> Vec<String> {
    let mut picked: Vec<String> = Vec::new();
    for w in windows {
        if let Some(p) = &w.pod
            && series.contains_key(p)
            && !picked.contains(p)
            && picked.len() < max
        {
            picked.push(p.clone());
        }
    }
    let mut by_total: Vec<(&String, u64)> = series.iter().map(|(p, v)| (p, v.iter().sum())).collect();
    by_total.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    for (p, _) in by_total {
        if picked.len() >= max {
            break;
        }
        if !picked.contains(p) {
            picked.push(p.clone());
        }
    }
    picked
}

/// Success rate (2xx share, 0–1) per second of one workload; `None` for seconds without requests.
pub fn success_per_second(w: &Workload) -> Vec<Option<f64>> {
    w.series.iter().map(|s| (s.requests > 0).then(|| s.success as f64 / s.requests as f64)).collect()
}

/// Requests per second by outcome (`200`, `503 UF`, `client_timeout`), over every workload;
/// the `max` most frequent outcomes by name, the rest summed under `other`.
pub fn outcomes_per_second(run: &Run, max: usize) -> Vec<(String, Vec<u64>)> {
    let n = seconds(run);
    let mut all: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for r in &run.requests {
        let t = (r.intended_us / 1_000_000) as usize;
        if t < n {
            all.entry(r.outcome()).or_insert_with(|| vec![0; n])[t] += 1;
        }
    }
    let mut by_total: Vec<(String, Vec<u64>)> = all.into_iter().collect();
    by_total.sort_by(|a, b| b.1.iter().sum::<u64>().cmp(&a.1.iter().sum::<u64>()).then(a.0.cmp(&b.0)));
    if by_total.len() > max {
        let rest = by_total.split_off(max - 1);
        let mut other = vec![0; n];
        for (_, v) in &rest {
            for (o, x) in other.iter_mut().zip(v) {
                *o += x;
            }
        }
        by_total.push((format!("other ({} outcomes)", rest.len()), other));
    }
    by_total
}

/// A share expectation's numbers, read back from its check text.
#[derive(Clone, Debug, PartialEq)]
pub struct Share {
    /// What is shared: `subset v2`, `reviews-v1-0`.
    pub what: String,
    pub workload: String,
    pub expected: f64,
    pub tolerance: f64,
    pub observed: f64,
    pub pass: bool,
}

/// The share expectations of a run (`share of W served by X in …`, expected `E ± T`,
/// observed `O (hit of n)`).
pub fn shares(run: &Run) -> Vec<Share> {
    run.expectations
        .iter()
        .filter_map(|c| {
            let rest = c.expectation.strip_prefix("share of ")?;
            let (workload, rest) = rest.split_once(" served by ")?;
            let what = rest.rsplit_once(" in ").map_or(rest, |(w, _)| w);
            let (e, t) = c.expected.split_once(" ± ")?;
            let o = c.observed.split_whitespace().next()?;
            Some(Share {
                what: what.to_string(),
                workload: workload.to_string(),
                expected: e.trim().parse().ok()?,
                tolerance: t.trim().parse().ok()?,
                observed: o.parse().ok()?,
                pass: c.pass,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Check, Event};

    fn ev(at_ms: f64, kind: &str, detail: &str) -> Event {
        Event { at_ms, kind: kind.into(), detail: detail.into(), ..Default::default() }
    }

    #[test]
    fn windows_pair_starts_with_ends_and_ejections_with_readmissions() {
        let run = Run {
            duration_ms: 30_000,
            events: vec![
                ev(10_000.0, "fault_start", "app_errors a-0 status 500 rate 1000000 ppm"),
                ev(10_250.0, "ejected", "c-0 ejected a-0 from outbound|80||a (consecutive_5xx; for 5s)"),
                ev(15_300.0, "readmitted", "c-0 readmitted a-0 to outbound|80||a"),
                ev(16_000.0, "ejected", "c-0 ejected a-0 from outbound|80||a (consecutive_5xx; for 10s)"),
                ev(20_000.0, "fault_end", "app_errors a-0 status 500 rate 1000000 ppm"),
                ev(21_000.0, "cert_rotation_start", "ca"),
            ],
            ..Default::default()
        };
        let w = windows(&run);
        let summary: Vec<(&str, f64, Option<f64>, Option<&str>)> =
            w.iter().map(|w| (w.tag.as_str(), w.start_s, w.end_s, w.pod.as_deref())).collect();
        assert_eq!(
            summary,
            vec![
                ("F1", 10.0, Some(20.0), None),
                ("E1", 10.25, Some(15.3), Some("a-0")),
                ("E2", 16.0, None, Some("a-0")),
                ("W1", 21.0, None, None),
            ]
        );
        assert_eq!(w[1].label, "a-0 ejected by c-0");
        assert_eq!(w[3].label, "cert_rotation: ca");
    }

    #[test]
    fn spectrum_runs_from_the_minimum_to_the_maximum() {
        let v: Vec<f64> = (1..=1000).map(f64::from).collect();
        let s = spectrum(&v);
        assert_eq!(s.first(), Some(&(0.0, 1.0)));
        assert_eq!(s.last(), Some(&(3.0, 1000.0)));
        // x = 1 is the 90th percentile, x = 2 the 99th.
        let at = |x: f64| s.iter().find(|p| (p.0 - x).abs() < 1e-9).map(|p| p.1);
        assert_eq!(at(1.02), Some(quantile(&v, 1.0 - 10f64.powf(-1.02))));
        assert!((percentile_at(2.0) - 99.0).abs() < 1e-9 && (nines(0.999) - 3.0).abs() < 1e-9);
        assert!(s.windows(2).all(|p| p[0].1 <= p[1].1), "a spectrum never falls");
    }

    #[test]
    fn shares_are_read_back_from_their_checks() {
        let run = Run {
            expectations: vec![Check {
                expectation: "share of browse served by subset v2 in whole run".into(),
                expected: "0.0500 ± 0.0063".into(),
                observed: "0.0512 (1229 of 24000)".into(),
                pass: true,
            }],
            ..Default::default()
        };
        assert_eq!(
            shares(&run),
            vec![Share {
                what: "subset v2".into(),
                workload: "browse".into(),
                expected: 0.05,
                tolerance: 0.0063,
                observed: 0.0512,
                pass: true
            }]
        );
    }

    #[test]
    fn instances_named_by_a_window_are_drawn_before_busier_ones() {
        let series: BTreeMap<String, Vec<u64>> =
            [("a", vec![5, 5]), ("b", vec![9, 9]), ("c", vec![1, 0]), ("d", vec![7, 7])]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
        let w = Window {
            kind: WindowKind::Ejection,
            tag: "E1".into(),
            start_s: 0.0,
            end_s: None,
            label: String::new(),
            lane: "ejection".into(),
            pod: Some("c".into()),
        };
        assert_eq!(pick_instances(&series, &[w], 3), vec!["c", "b", "d"]);
    }
}
