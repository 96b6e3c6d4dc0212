//! The Markdown summary of a run, for CI logs and pull requests: the verdict, the repro
//! command, every expectation, latency per workload (and its no-mesh baseline), the
//! windows and a count of events per kind. Deterministic: the same results give the same text.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::analyze;
use crate::html::ms;
use crate::model::Run;

/// Most windows listed; the rest are counted.
pub const WINDOW_ROWS: usize = 20;

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

pub fn summary(run: &Run) -> String {
    let mut s = String::new();
    let verdict = if run.passed { "PASS" } else { "FAIL" };
    let _ = writeln!(s, "### meshsim: {} — {verdict}\n", cell(&run.scenario));
    let _ = writeln!(
        s,
        "`{}` · {} s simulated · {} requests issued, {} recorded\n",
        run.repro(),
        crate::chart::num(&run.duration_s()),
        run.issued,
        run.recorded
    );
    if !run.expectations.is_empty() {
        let _ = writeln!(s, "| result | expectation | expected | observed |\n|---|---|---|---|");
        for (i, c) in run.expectations.iter().enumerate() {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                if run.not_checkable.contains(&i) {
                    "N/A"
                } else if c.pass {
                    "PASS"
                } else {
                    "**FAIL**"
                },
                cell(&c.expectation),
                cell(&c.expected),
                cell(&c.observed)
            );
        }
        let _ = writeln!(s);
    }
    if !run.workloads.is_empty() {
        let _ = writeln!(
            s,
            "| workload | to | requests | 2xx | p50 | p90 | p99 | p99.9 | max |\n|---|---|---:|---:|---:|---:|---:|---:|---:|"
        );
        let row = |s: &mut String, name: &str, r: &Run, i: usize| {
            let w = &r.workloads[i];
            let l = analyze::table_latencies(r, i);
            let c = |f: fn(&crate::model::Latencies) -> f64| l.as_ref().map_or("–".into(), |l| ms(f(l)));
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.3}% | {} | {} | {} | {} | {} |",
                cell(name),
                cell(&w.to),
                w.requests,
                100.0 * w.success_rate,
                c(|l| l.p50),
                c(|l| l.p90),
                c(|l| l.p99),
                c(|l| l.p999),
                c(|l| l.max)
            );
        };
        for (i, w) in run.workloads.iter().enumerate() {
            row(&mut s, &w.name, run, i);
            if let Some(b) = &run.baseline
                && i < b.workloads.len()
            {
                row(&mut s, &format!("{} (no mesh)", w.name), b, i);
            }
        }
        let _ = writeln!(s);
    }
    let windows = analyze::windows(run);
    if !windows.is_empty() {
        let _ = writeln!(s, "| window | what | from | to |\n|---|---|---:|---:|");
        for w in windows.iter().take(WINDOW_ROWS) {
            let _ = writeln!(
                s,
                "| {} | {} | {:.3} s | {} |",
                w.tag,
                cell(&w.label),
                w.start_s,
                w.end_s.map_or("end".into(), |e| format!("{e:.3} s"))
            );
        }
        if windows.len() > WINDOW_ROWS {
            let _ = writeln!(s, "\n… and {} more windows.", windows.len() - WINDOW_ROWS);
        }
        let _ = writeln!(s);
    }
    if !run.events.is_empty() {
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        for e in &run.events {
            *kinds.entry(&e.kind).or_default() += 1;
        }
        let list: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
        let _ = writeln!(s, "Events: {}.", list.join(", "));
    }
    s
}
