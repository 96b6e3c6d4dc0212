//! The HTML pages: one run, or several compared. Self-contained: inline CSS and SVG,
//! no scripts, no external fonts or images, so a page opens from disk anywhere.

use std::fmt::Write as _;

use crate::analyze;
use crate::chart::esc;
use crate::figures::{self, Capacity, Figure};
use crate::model::Run;

/// Most events listed in a page's event table; the rest are counted.
pub const EVENT_ROWS: usize = 200;
/// Most windows listed under the traffic chart.
pub const WINDOW_ROWS: usize = 100;

const STYLE: &str = "
body { font-family: system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; color: #222; margin: 0 auto;
       max-width: 1040px; padding: 16px 24px 48px; line-height: 1.45; }
h1 { font-size: 26px; margin: 8px 0; } h2 { font-size: 20px; margin: 32px 0 8px; border-bottom: 1px solid #ddd; }
.badge { display: inline-block; padding: 2px 10px; border-radius: 4px; font-size: 16px; font-weight: bold;
         vertical-align: middle; color: #fff; }
.pass { background: #117733; } .fail { background: #882255; } .na { background: #777777; }
td.pass, td.fail, td.na { color: #fff; font-weight: bold; text-align: center; }
table { border-collapse: collapse; margin: 8px 0; font-size: 14px; }
th, td { border: 1px solid #ddd; padding: 4px 8px; vertical-align: top; }
th { background: #f4f4f4; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td:not(.pass):not(.fail):not(.na) { background: #fafafa; }
code { background: #f4f4f4; padding: 1px 4px; border-radius: 3px; }
figure { margin: 12px 0; } svg { max-width: 100%; height: auto; }
.note { color: #555; font-size: 13px; margin: 2px 0; } .meta td:first-child { font-weight: bold; }
";

fn head(title: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        esc(title)
    )
}

fn figure(s: &mut String, f: &Figure) {
    let _ = writeln!(s, "<figure id=\"{}\">\n{}", esc(&f.id), f.svg);
    for n in &f.notes {
        let _ = writeln!(s, "<p class=\"note\">{}</p>", esc(n));
    }
    let _ = writeln!(s, "</figure>");
}

fn badge(pass: bool) -> &'static str {
    if pass { "<span class=\"badge pass\">PASS</span>" } else { "<span class=\"badge fail\">FAIL</span>" }
}

/// `1.234` ms, with precision for small values.
pub fn ms(v: f64) -> String {
    if v >= 1000.0 { format!("{:.3} s", v / 1e3) } else { format!("{v:.3} ms") }
}

fn latency_row(s: &mut String, name: &str, to: &str, run: &Run, w: usize) {
    let wl = &run.workloads[w];
    let l = analyze::table_latencies(run, w);
    let cell = |f: fn(&crate::model::Latencies) -> f64| l.as_ref().map_or("–".into(), |l| ms(f(l)));
    let _ = writeln!(
        s,
        "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{:.3}%</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
        esc(name),
        esc(to),
        wl.requests,
        100.0 * wl.success_rate,
        cell(|l| l.p50),
        cell(|l| l.p90),
        cell(|l| l.p99),
        cell(|l| l.p999),
        cell(|l| l.max)
    );
}

const LATENCY_HEAD: &str = "<tr><th>workload</th><th>to</th><th>requests</th><th>2xx</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr>";

/// The report of one run.
pub fn run_page(run: &Run) -> String {
    let mut s = head(&format!("meshsim report: {} (seed {})", run.scenario, run.seed));
    let _ = writeln!(s, "<h1>{} {}</h1>", esc(&run.scenario), badge(run.passed));
    let _ = writeln!(s, "<table class=\"meta\">");
    let _ = writeln!(s, "<tr><td>scenario file</td><td><code>{}</code></td></tr>", esc(&run.file));
    let _ = writeln!(s, "<tr><td>seed</td><td>{}</td></tr>", run.seed);
    let _ = writeln!(s, "<tr><td>repro</td><td><code>{}</code></td></tr>", esc(&run.repro()));
    let _ = writeln!(
        s,
        "<tr><td>simulated</td><td>{} s (stopped at {} s); {} requests issued, {} recorded</td></tr>",
        chart_num(run.duration_s()),
        chart_num(run.sim_elapsed_ms as f64 / 1e3),
        run.issued,
        run.recorded
    );
    let pods: usize = run.placement.values().map(Vec::len).sum();
    let _ = writeln!(s, "<tr><td>topology</td><td>{pods} pods on {} nodes</td></tr>", run.placement.len());
    if run.baseline.is_some() {
        let _ = writeln!(
            s,
            "<tr><td>baseline</td><td>the same scenario and seed without the mesh (<code>mesh: none</code>)</td></tr>"
        );
    }
    let _ = writeln!(s, "</table>");
    for w in &run.warnings {
        let _ = writeln!(s, "<p class=\"note\">warning: {}</p>", esc(w));
    }

    let _ = writeln!(s, "<h2>Expectations</h2>");
    if run.expectations.is_empty() {
        let _ = writeln!(s, "<p>The scenario states no expectations.</p>");
    } else {
        let _ = writeln!(s, "<table><tr><th>result</th><th>expectation</th><th>expected</th><th>observed</th></tr>");
        for (i, c) in run.expectations.iter().enumerate() {
            let (class, word) = if run.not_checkable.contains(&i) {
                ("na", "N/A")
            } else if c.pass {
                ("pass", "PASS")
            } else {
                ("fail", "FAIL")
            };
            let _ = writeln!(
                s,
                "<tr><td class=\"{class}\">{word}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&c.expectation),
                esc(&c.expected),
                esc(&c.observed)
            );
        }
        let _ = writeln!(s, "</table>");
    }

    let _ = writeln!(s, "<h2>Latency</h2>");
    let mut spectra: Vec<(String, Vec<f64>)> = Vec::new();
    for (i, w) in run.workloads.iter().enumerate() {
        spectra.push((format!("{} → {}", w.name, w.to), analyze::latencies_ms(run, i)));
        if let Some(b) = &run.baseline
            && i < b.workloads.len()
        {
            spectra.push((format!("{} (no mesh)", w.name), analyze::latencies_ms(b, i)));
        }
    }
    figure(&mut s, &figures::spectrum("latency", "Latency by percentile", &spectra));
    let _ = writeln!(s, "<table>{LATENCY_HEAD}");
    for (i, w) in run.workloads.iter().enumerate() {
        latency_row(&mut s, &w.name, &w.to, run, i);
        if let Some(b) = &run.baseline
            && i < b.workloads.len()
        {
            latency_row(&mut s, &format!("{} (no mesh)", w.name), &w.to, b, i);
        }
    }
    let _ = writeln!(s, "</table>");
    if let Some(b) = &run.baseline {
        let configs: Vec<(String, [f64; 5])> = run
            .workloads
            .iter()
            .enumerate()
            .filter(|(i, _)| *i < b.workloads.len())
            .map(|(i, w)| {
                (w.name.clone(), figures::added(&analyze::latencies_ms(run, i), &analyze::latencies_ms(b, i)))
            })
            .collect();
        figure(&mut s, &figures::latency_tax("Latency tax: the mesh minus no mesh, same seed", &configs));
    }

    let _ = writeln!(s, "<h2>Traffic</h2>");
    figure(&mut s, &figures::traffic(run));
    windows_table(&mut s, run);

    if let Some(f) = figures::canary(run) {
        let _ = writeln!(s, "<h2>Canary split</h2>");
        figure(&mut s, &f);
        let _ = writeln!(
            s,
            "<table><tr><th>workload</th><th>served by</th><th>configured</th><th>observed</th><th>tolerance</th><th>result</th></tr>"
        );
        for sh in analyze::shares(run) {
            let (class, word) = if sh.pass { ("pass", "PASS") } else { ("fail", "FAIL") };
            let _ = writeln!(
                s,
                "<tr><td>{}</td><td>{}</td><td class=\"num\">{:.2}%</td><td class=\"num\">{:.2}%</td><td class=\"num\">± {:.2} pp</td><td class=\"{class}\">{word}</td></tr>",
                esc(&sh.workload),
                esc(&sh.what),
                100.0 * sh.expected,
                100.0 * sh.observed,
                100.0 * sh.tolerance
            );
        }
        let _ = writeln!(s, "</table>");
    }

    let _ = writeln!(s, "<h2>Success rate and outcomes</h2>");
    let rates: Vec<(String, Vec<Option<f64>>)> =
        run.workloads.iter().map(|w| (w.name.clone(), analyze::success_per_second(w))).collect();
    figure(&mut s, &figures::success("success", "Success rate over time", &rates));
    figure(&mut s, &figures::outcomes(run));

    let _ = writeln!(s, "<h2>Events</h2>");
    match figures::timeline(run) {
        Some(f) => {
            figure(&mut s, &f);
            events_table(&mut s, run);
        }
        None => {
            let _ = writeln!(s, "<p>No events: no faults, ejections or other changes during the run.</p>");
        }
    }
    let _ = writeln!(s, "<p class=\"note\">Rendered by meshsim from the run's results JSON.</p>\n</body>\n</html>");
    s
}

fn chart_num(v: f64) -> String {
    crate::chart::num(&v)
}

fn windows_table(s: &mut String, run: &Run) {
    let windows = analyze::windows(run);
    if windows.is_empty() {
        return;
    }
    let _ = writeln!(s, "<table><tr><th>tag</th><th>window</th><th>from (s)</th><th>to (s)</th></tr>");
    for w in windows.iter().take(WINDOW_ROWS) {
        let _ = writeln!(
            s,
            "<tr><td>{}</td><td>{}</td><td class=\"num\">{:.3}</td><td class=\"num\">{}</td></tr>",
            esc(&w.tag),
            esc(&w.label),
            w.start_s,
            w.end_s.map_or("end of run".into(), |e| format!("{e:.3}"))
        );
    }
    let _ = writeln!(s, "</table>");
    if windows.len() > WINDOW_ROWS {
        let _ = writeln!(
            s,
            "<p class=\"note\">… and {} more windows in the results file.</p>",
            windows.len() - WINDOW_ROWS
        );
    }
}

fn events_table(s: &mut String, run: &Run) {
    let _ = writeln!(s, "<table><tr><th>time (s)</th><th>kind</th><th>detail</th></tr>");
    for e in run.events.iter().take(EVENT_ROWS) {
        let mut detail = esc(&e.detail);
        for (k, v) in &e.extra {
            let _ = write!(detail, " <code>{}={}</code>", esc(k), esc(&v.to_string()));
        }
        let _ = writeln!(
            s,
            "<tr><td class=\"num\">{:.3}</td><td>{}</td><td>{detail}</td></tr>",
            e.at_ms / 1e3,
            esc(&e.kind)
        );
    }
    let _ = writeln!(s, "</table>");
    if run.events.len() > EVENT_ROWS {
        let _ = writeln!(
            s,
            "<p class=\"note\">… and {} more events in the results file.</p>",
            run.events.len() - EVENT_ROWS
        );
    }
}

/// Every sent request's latency (ms) of a run, sorted.
fn all_latencies(run: &Run) -> Vec<f64> {
    let mut v: Vec<f64> = run.requests.iter().filter(|r| r.was_sent()).map(|r| r.latency_us as f64 / 1e3).collect();
    v.sort_by(f64::total_cmp);
    v
}

/// Success per second over every workload of a run.
fn overall_success(run: &Run) -> Vec<Option<f64>> {
    let n = analyze::seconds(run);
    let (mut req, mut ok) = (vec![0u64; n], vec![0u64; n]);
    for w in &run.workloads {
        for sec in &w.series {
            if let Some(t) = usize::try_from(sec.t).ok().filter(|t| *t < n) {
                req[t] += sec.requests;
                ok[t] += sec.success;
            }
        }
    }
    req.iter().zip(&ok).map(|(r, o)| (*r > 0).then(|| *o as f64 / *r as f64)).collect()
}

/// Several runs of a scenario (other configs, seeds or loads) on one page: overlays, a
/// table of differences, the latency tax and, when the offered loads differ, capacity.
pub fn compare_page(runs: &[(String, Run)]) -> String {
    let mut s = head("meshsim comparison");
    let _ = writeln!(s, "<h1>Comparison of {} runs</h1>", runs.len());
    let _ = writeln!(
        s,
        "<table><tr><th>run</th><th>scenario</th><th>seed</th><th>result</th><th>requests</th><th>simulated</th><th>repro</th></tr>"
    );
    for (label, r) in runs {
        let _ = writeln!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td class=\"num\">{}</td><td class=\"num\">{} s</td><td><code>{}</code></td></tr>",
            esc(label),
            esc(&r.scenario),
            r.seed,
            if r.passed { "pass" } else { "fail" },
            if r.passed { "PASS" } else { "FAIL" },
            r.issued,
            chart_num(r.duration_s()),
            esc(&r.repro())
        );
    }
    let _ = writeln!(s, "</table>");

    let _ = writeln!(s, "<h2>Differences</h2>");
    differences(&mut s, runs);

    let _ = writeln!(s, "<h2>Latency</h2>");
    let mut spectra = Vec::new();
    for (label, r) in runs {
        for (i, w) in r.workloads.iter().enumerate() {
            let name = if r.workloads.len() == 1 { label.clone() } else { format!("{label}: {}", w.name) };
            spectra.push((name, analyze::latencies_ms(r, i)));
        }
    }
    figure(&mut s, &figures::spectrum("latency", "Latency by percentile, overlaid", &spectra));

    let _ = writeln!(s, "<h2>Latency tax</h2>");
    let with_baseline: Vec<(String, [f64; 5])> = runs
        .iter()
        .filter_map(|(l, r)| {
            r.baseline.as_ref().map(|b| (l.clone(), figures::added(&all_latencies(r), &all_latencies(b))))
        })
        .collect();
    if !with_baseline.is_empty() {
        figure(
            &mut s,
            &figures::latency_tax("Latency tax per configuration: each run minus its no-mesh baseline", &with_baseline),
        );
    } else if runs.len() > 1 {
        let first = all_latencies(&runs[0].1);
        let vs_first: Vec<(String, [f64; 5])> =
            runs[1..].iter().map(|(l, r)| (l.clone(), figures::added(&all_latencies(r), &first))).collect();
        let title = format!("Added latency per configuration, relative to {}", runs[0].0);
        figure(&mut s, &figures::latency_tax(&title, &vs_first));
    }

    let _ = writeln!(s, "<h2>Success rate</h2>");
    let rates: Vec<(String, Vec<Option<f64>>)> = runs.iter().map(|(l, r)| (l.clone(), overall_success(r))).collect();
    figure(&mut s, &figures::success("success", "Success rate over time, overlaid", &rates));

    let caps: Vec<Capacity> = runs
        .iter()
        .map(|(_, r)| {
            let secs = r.duration_s().max(1e-9);
            let ok: u64 = r.workloads.iter().map(|w| w.success).sum();
            Capacity {
                offered_rps: r.issued as f64 / secs,
                achieved_rps: ok as f64 / secs,
                p99_ms: analyze::quantile(&all_latencies(r), 0.99),
            }
        })
        .collect();
    let lo = caps.iter().map(|c| c.offered_rps).fold(f64::INFINITY, f64::min);
    let hi = caps.iter().map(|c| c.offered_rps).fold(0.0, f64::max);
    if caps.len() > 1 && hi > lo * 1.05 {
        let _ = writeln!(s, "<h2>Capacity</h2>");
        let (a, b) = figures::capacity(&caps);
        figure(&mut s, &a);
        figure(&mut s, &b);
    }
    let _ = writeln!(s, "<p class=\"note\">Rendered by meshsim from the runs' results JSON.</p>\n</body>\n</html>");
    s
}

fn differences(s: &mut String, runs: &[(String, Run)]) {
    let Some((_, first)) = runs.first() else { return };
    let _ = write!(s, "<table><tr><th>workload</th><th>metric</th>");
    for (i, (l, _)) in runs.iter().enumerate() {
        let _ = write!(s, "<th>{}</th>", esc(l));
        if i > 0 {
            let _ = write!(s, "<th>Δ vs {}</th>", esc(&runs[0].0));
        }
    }
    let _ = writeln!(s, "</tr>");
    type Metric = (&'static str, fn(&Run, usize) -> Option<f64>, fn(f64) -> String);
    let metrics: [Metric; 7] = [
        ("requests", |r, w| Some(r.workloads[w].requests as f64), |v| format!("{v:.0}")),
        ("2xx", |r, w| Some(100.0 * r.workloads[w].success_rate), |v| format!("{v:.3}%")),
        ("p50", |r, w| analyze::table_latencies(r, w).map(|l| l.p50), ms),
        ("p90", |r, w| analyze::table_latencies(r, w).map(|l| l.p90), ms),
        ("p99", |r, w| analyze::table_latencies(r, w).map(|l| l.p99), ms),
        ("p99.9", |r, w| analyze::table_latencies(r, w).map(|l| l.p999), ms),
        ("max", |r, w| analyze::table_latencies(r, w).map(|l| l.max), ms),
    ];
    for (wi, w) in first.workloads.iter().enumerate() {
        for (name, get, fmt) in &metrics {
            let _ = write!(s, "<tr><td>{}</td><td>{name}</td>", esc(&w.name));
            let base = get(first, wi);
            for (i, (_, r)) in runs.iter().enumerate() {
                let idx = r.workloads.iter().position(|x| x.name == w.name);
                let v = idx.and_then(|j| get(r, j));
                let _ = write!(s, "<td class=\"num\">{}</td>", v.map_or("–".into(), fmt));
                if i > 0 {
                    let d = match (v, base) {
                        (Some(v), Some(b)) => {
                            let sign = if v - b >= 0.0 { "+" } else { "−" };
                            format!("{sign}{}", fmt((v - b).abs()))
                        }
                        _ => "–".into(),
                    };
                    let _ = write!(s, "<td class=\"num\">{d}</td>");
                }
            }
            let _ = writeln!(s, "</tr>");
        }
    }
    let _ = writeln!(s, "</table>");
}
