//! The report's charts, each from a run (or runs) to an SVG string: latency spectrum,
//! traffic per instance with windows, canary split, success rate, outcomes, timeline,
//! latency tax, capacity. Choosing what to draw (top-N, aggregates, notes) happens here;
//! the drawing itself is [`crate::chart`].

use std::collections::BTreeMap;

use crate::analyze::{self, WindowKind};
use crate::chart::{self, Bars, Frame, GREY, Line, Mark, Shade, ShadeKey, Span};
use crate::model::Run;

/// Most instances drawn one by one in the traffic chart; the rest are drawn as their mean.
pub const TOP_INSTANCES: usize = 8;
/// Most outcomes drawn one by one; the rest are summed.
pub const TOP_OUTCOMES: usize = 8;
/// Most lines in an overlay chart.
pub const MAX_LINES: usize = 9;

/// A chart and what a reader should know about what it leaves out.
pub struct Figure {
    pub id: String,
    pub svg: String,
    pub notes: Vec<String>,
}

fn nice_max(v: f64) -> f64 {
    if v <= 0.0 { 1.0 } else { v * 1.08 }
}

fn spectrum_label(v: &f64) -> String {
    let i = v.round();
    if (v - i).abs() > 1e-6 {
        return String::new();
    }
    match i as i64 {
        0 => "0%".into(),
        1 => "90%".into(),
        k => format!("99.{}%", "9".repeat(k as usize - 2)).replace("99.%", "99%"),
    }
}

/// Percentile spectrum: latency (ms) against the percentile on a log axis (0 → 99.999%).
pub fn spectrum(id: &str, title: &str, series: &[(String, Vec<f64>)]) -> Figure {
    let mut notes = Vec::new();
    if series.len() > MAX_LINES {
        notes.push(format!("{} of {} series drawn.", MAX_LINES, series.len()));
    }
    let lines: Vec<Line> = series
        .iter()
        .take(MAX_LINES)
        .enumerate()
        .map(|(i, (name, v))| Line {
            name: name.clone(),
            points: analyze::spectrum(v),
            colour: chart::colour(i),
            width: 2,
        })
        .collect();
    let ymax = lines.iter().flat_map(|l| l.points.iter().map(|p| p.1)).fold(0.0, f64::max);
    let frame = Frame {
        title,
        x_desc: "percentile (log scale of 1/(1-p))",
        y_desc: "latency (ms)",
        x: 0.0..analyze::SPECTRUM_NINES,
        y: 0.0..nice_max(ymax),
        x_fmt: &spectrum_label,
        y_fmt: &chart::num,
        x_labels: 11,
        y_labels: 8,
        y_label_width: 70,
    };
    notes.push(
        "Each point is the latency that this share of requests stayed under, measured from the intended send time."
            .into(),
    );
    Figure { id: id.into(), svg: chart::lines(&frame, &lines, &[], &[]), notes }
}

fn shade_colour(k: WindowKind) -> plotters::style::RGBColor {
    match k {
        WindowKind::Fault => chart::FAULT_SHADE,
        WindowKind::Ejection => chart::EJECTION_SHADE,
        WindowKind::Other => chart::OTHER_SHADE,
    }
}

/// The window tags drawn in a chart (so many windows, and labels stay apart) and the key.
fn shades(run: &Run, windows: &[analyze::Window]) -> (Vec<Shade>, Vec<ShadeKey>) {
    let end = run.duration_s().max(analyze::seconds(run) as f64);
    let s = windows
        .iter()
        .map(|w| Shade {
            from: w.start_s,
            to: w.end_s.unwrap_or(end),
            tag: w.tag.clone(),
            colour: shade_colour(w.kind),
        })
        .collect();
    let mut keys = Vec::new();
    for (k, name) in [
        (WindowKind::Fault, "F: fault window"),
        (WindowKind::Ejection, "E: ejection window"),
        (WindowKind::Other, "W: other window"),
    ] {
        if windows.iter().any(|w| w.kind == k) {
            keys.push(ShadeKey { name: name.into(), colour: shade_colour(k) });
        }
    }
    (s, keys)
}

/// Responses per second per serving instance, with fault and ejection windows shaded.
pub fn traffic(run: &Run) -> Figure {
    let series = analyze::per_instance(run);
    let windows = analyze::windows(run);
    let picked = analyze::pick_instances(&series, &windows, TOP_INSTANCES);
    let mut lines: Vec<Line> = picked
        .iter()
        .enumerate()
        .map(|(i, p)| Line {
            name: p.clone(),
            points: series[p].iter().enumerate().map(|(t, c)| (t as f64 + 0.5, *c as f64)).collect(),
            colour: chart::colour(i),
            width: 2,
        })
        .collect();
    let mut notes = Vec::new();
    let rest: Vec<&Vec<u64>> = series.iter().filter(|(p, _)| !picked.contains(p)).map(|(_, v)| v).collect();
    if !rest.is_empty() {
        let n = analyze::seconds(run);
        let mean: Vec<(f64, f64)> = (0..n)
            .map(|t| (t as f64 + 0.5, rest.iter().map(|v| v[t] as f64).sum::<f64>() / rest.len() as f64))
            .collect();
        lines.push(Line { name: format!("mean of {} others", rest.len()), points: mean, colour: GREY, width: 2 });
        notes.push(format!(
            "{} of {} instances drawn: those a window is about, then the busiest; the other {} as their mean per second.",
            picked.len(),
            series.len(),
            rest.len()
        ));
    }
    let ymax = lines.iter().flat_map(|l| l.points.iter().map(|p| p.1)).fold(0.0, f64::max);
    let (shades, keys) = shades(run, &windows);
    let frame = Frame {
        title: "Requests per second per destination instance",
        x_desc: "simulated time (s), by intended send time",
        y_desc: "responses per second",
        x: 0.0..analyze::seconds(run).max(1) as f64,
        y: 0.0..nice_max(ymax),
        x_fmt: &chart::num,
        y_fmt: &chart::num,
        x_labels: 12,
        y_labels: 8,
        y_label_width: 60,
    };
    Figure { id: "traffic".into(), svg: chart::lines(&frame, &lines, &shades, &keys), notes }
}

/// Observed share minus configured weight per share expectation, with its tolerance band.
pub fn canary(run: &Run) -> Option<Figure> {
    let shares = analyze::shares(run);
    if shares.is_empty() {
        return None;
    }
    let pp = |v: f64| 100.0 * v;
    let lim = shares.iter().map(|s| pp(s.tolerance).max(pp((s.observed - s.expected).abs()))).fold(0.0, f64::max) * 1.3;
    let b = Bars {
        groups: shares.iter().map(|s| format!("{} (configured {:.1}%)", s.what, pp(s.expected))).collect(),
        series: vec![(
            "observed − configured".into(),
            chart::colour(0),
            shares.iter().map(|s| pp(s.observed - s.expected)).collect(),
        )],
        bands: shares.iter().map(|s| Some((-pp(s.tolerance), pp(s.tolerance)))).collect(),
        band_name: "tolerance band".into(),
    };
    let frame = Frame {
        title: "Canary split: observed share minus configured weight",
        x_desc: "share expectation",
        y_desc: "difference (percentage points)",
        x: 0.0..1.0,
        y: -lim.max(0.01)..lim.max(0.01),
        x_fmt: &chart::num,
        y_fmt: &chart::num,
        x_labels: 2,
        y_labels: 9,
        y_label_width: 60,
    };
    Some(Figure { id: "canary".into(), svg: chart::bars(&frame, &b), notes: Vec::new() })
}

/// Success rate (2xx, %) per second, one line per named series.
pub fn success(id: &str, title: &str, series: &[(String, Vec<Option<f64>>)]) -> Figure {
    let lines: Vec<Line> = series
        .iter()
        .take(MAX_LINES)
        .enumerate()
        .map(|(i, (name, v))| Line {
            name: name.clone(),
            points: v.iter().enumerate().filter_map(|(t, r)| r.map(|r| (t as f64 + 0.5, 100.0 * r))).collect(),
            colour: chart::colour(i),
            width: 2,
        })
        .collect();
    let low = lines.iter().flat_map(|l| l.points.iter().map(|p| p.1)).fold(100.0, f64::min);
    let floor = if low >= 99.0 { 98.0 } else { (low / 10.0).floor() * 10.0 };
    let n = series.iter().map(|(_, v)| v.len()).max().unwrap_or(1).max(1);
    let frame = Frame {
        title,
        x_desc: "simulated time (s), by intended send time",
        y_desc: "success rate (2xx, %)",
        x: 0.0..n as f64,
        y: floor..100.5,
        x_fmt: &chart::num,
        y_fmt: &chart::num,
        x_labels: 12,
        y_labels: 8,
        y_label_width: 60,
    };
    let mut notes = Vec::new();
    if floor > 0.0 {
        notes.push(format!("The y axis starts at {floor:.0}%."));
    }
    Figure { id: id.into(), svg: chart::lines(&frame, &lines, &[], &[]), notes }
}

/// Requests per second by outcome (status and response flags, or client error).
pub fn outcomes(run: &Run) -> Figure {
    let by = analyze::outcomes_per_second(run, TOP_OUTCOMES);
    let lines: Vec<Line> = by
        .iter()
        .enumerate()
        .map(|(i, (name, v))| Line {
            name: name.clone(),
            points: v.iter().enumerate().map(|(t, c)| (t as f64 + 0.5, *c as f64)).collect(),
            colour: chart::colour(i),
            width: 2,
        })
        .collect();
    let ymax = lines.iter().flat_map(|l| l.points.iter().map(|p| p.1)).fold(0.0, f64::max);
    let windows = analyze::windows(run);
    let (shades, keys) = shades(run, &windows);
    let frame = Frame {
        title: "Response codes and flags over time",
        x_desc: "simulated time (s), by intended send time",
        y_desc: "requests per second",
        x: 0.0..analyze::seconds(run).max(1) as f64,
        y: 0.0..nice_max(ymax),
        x_fmt: &chart::num,
        y_fmt: &chart::num,
        x_labels: 12,
        y_labels: 8,
        y_label_width: 60,
    };
    Figure { id: "outcomes".into(), svg: chart::lines(&frame, &lines, &shades, &keys), notes: Vec::new() }
}

/// The lane an event kind belongs to: windows' two ends share one.
pub fn lane_of(kind: &str) -> &str {
    match kind {
        "ejected" | "readmitted" => "ejection",
        k => k.strip_suffix("_start").or_else(|| k.strip_suffix("_end")).unwrap_or(k),
    }
}

/// Every event as a tick in its kind's lane, windows as bars.
pub fn timeline(run: &Run) -> Option<Figure> {
    if run.events.is_empty() {
        return None;
    }
    let mut lanes: Vec<String> = Vec::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    for e in &run.events {
        let l = lane_of(&e.kind).to_string();
        if !index.contains_key(&l) {
            index.insert(l.clone(), lanes.len());
            lanes.push(l);
        }
    }
    let marks: Vec<Mark> =
        run.events.iter().map(|e| Mark { lane: index[lane_of(&e.kind)], t: e.at_ms / 1e3 }).collect();
    let end = run.duration_s().max(analyze::seconds(run) as f64);
    let spans: Vec<Span> = analyze::windows(run)
        .iter()
        .filter_map(|w| {
            let lane = index.get(&w.lane)?;
            Some(Span { lane: *lane, from: w.start_s, to: w.end_s.unwrap_or(end), colour: shade_colour(w.kind) })
        })
        .collect();
    let x_end = run.events.iter().map(|e| e.at_ms / 1e3).fold(end, f64::max);
    Some(Figure {
        id: "timeline".into(),
        svg: chart::timeline("Event timeline", 0.0..x_end.max(1.0), &lanes, &marks, &spans),
        notes: Vec::new(),
    })
}

/// The percentiles of the latency-tax layout.
pub const TAX_PERCENTILES: [(&str, f64); 5] =
    [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999), ("max", 1.0)];

/// Added latency per percentile per configuration, as grouped bars.
pub fn latency_tax(title: &str, configs: &[(String, [f64; 5])]) -> Figure {
    let lo = configs.iter().flat_map(|c| c.1).fold(0.0, f64::min);
    let hi = configs.iter().flat_map(|c| c.1).fold(0.0, f64::max);
    let b = Bars {
        groups: TAX_PERCENTILES.iter().map(|p| p.0.to_string()).collect(),
        series: configs
            .iter()
            .take(MAX_LINES)
            .enumerate()
            .map(|(i, (n, v))| (n.clone(), chart::colour(i), v.to_vec()))
            .collect(),
        bands: Vec::new(),
        band_name: String::new(),
    };
    let frame = Frame {
        title,
        x_desc: "percentile",
        y_desc: "added latency (ms)",
        x: 0.0..1.0,
        y: (lo * 1.1).min(0.0)..nice_max(hi),
        x_fmt: &chart::num,
        y_fmt: &chart::num,
        x_labels: 2,
        y_labels: 8,
        y_label_width: 60,
    };
    Figure { id: "latency-tax".into(), svg: chart::bars(&frame, &b), notes: Vec::new() }
}

/// Added latency of sorted `with` over sorted `without` at each [`TAX_PERCENTILES`].
pub fn added(with: &[f64], without: &[f64]) -> [f64; 5] {
    TAX_PERCENTILES.map(|(_, q)| analyze::quantile(with, q) - analyze::quantile(without, q))
}

/// One configuration of a capacity curve.
pub struct Capacity {
    pub offered_rps: f64,
    pub achieved_rps: f64,
    pub p99_ms: f64,
}

/// Offered load against achieved throughput, and against p99 latency.
pub fn capacity(points: &[Capacity]) -> (Figure, Figure) {
    let mut pts: Vec<&Capacity> = points.iter().collect();
    pts.sort_by(|a, b| a.offered_rps.total_cmp(&b.offered_rps));
    let xmax = nice_max(pts.iter().map(|p| p.offered_rps).fold(0.0, f64::max));
    let ymax = nice_max(pts.iter().map(|p| p.achieved_rps.max(p.offered_rps)).fold(0.0, f64::max));
    let tput = vec![
        Line { name: "offered = achieved".into(), points: vec![(0.0, 0.0), (xmax, xmax)], colour: GREY, width: 1 },
        Line {
            name: "achieved (2xx per second)".into(),
            points: pts.iter().map(|p| (p.offered_rps, p.achieved_rps)).collect(),
            colour: chart::colour(0),
            width: 3,
        },
    ];
    let f1 = Frame {
        title: "Capacity: offered load vs achieved throughput",
        x_desc: "offered load (requests per second)",
        y_desc: "achieved throughput (2xx per second)",
        x: 0.0..xmax,
        y: 0.0..ymax,
        x_fmt: &chart::num,
        y_fmt: &chart::num,
        x_labels: 10,
        y_labels: 8,
        y_label_width: 70,
    };
    let p99 = vec![Line {
        name: "p99 latency".into(),
        points: pts.iter().map(|p| (p.offered_rps, p.p99_ms)).collect(),
        colour: chart::colour(1),
        width: 3,
    }];
    let f2 = Frame {
        title: "Capacity: offered load vs p99 latency",
        x_desc: "offered load (requests per second)",
        y_desc: "p99 latency (ms)",
        x: 0.0..xmax,
        y: 0.0..nice_max(pts.iter().map(|p| p.p99_ms).fold(0.0, f64::max)),
        x_fmt: &chart::num,
        y_fmt: &chart::num,
        x_labels: 10,
        y_labels: 8,
        y_label_width: 70,
    };
    (
        Figure { id: "capacity-throughput".into(), svg: chart::lines(&f1, &tput, &[], &[]), notes: Vec::new() },
        Figure { id: "capacity-p99".into(), svg: chart::lines(&f2, &p99, &[], &[]), notes: Vec::new() },
    )
}
