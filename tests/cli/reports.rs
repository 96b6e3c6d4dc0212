//! Reports of real runs, read back the way a person's browser would get them: the HTML
//! page is parsed, its charts' SVG series mapped back to data through the chart's
//! `data-plot` calibration, and compared with what the run recorded. And the CLI:
//! `run` writes the report beside the results, `report` re-renders and compares.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use crate::util::{Scratch, meshsim};

/// outlier-ejection.yaml with its own seed, as results JSON read back by the reports crate.
fn outlier_run() -> &'static reports::Run {
    static RUN: OnceLock<reports::Run> = OnceLock::new();
    RUN.get_or_init(|| {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/outlier-ejection.yaml");
        let plan = Arc::new(sim::scenario::load(&file).unwrap_or_else(|e| panic!("does not load:\n{e}")));
        let out = sim::world::run(plan.clone(), plan.seed).expect("the run completes");
        let results = sim::results::build(&plan, plan.seed, &out);
        reports::Run::parse(&serde_json::to_string(&results).expect("results serialize")).expect("results read back")
    })
}

/// The text of the `<figure id="ID">` element of a page.
fn figure<'a>(page: &'a str, id: &str) -> &'a str {
    let start = page.find(&format!("<figure id=\"{id}\">")).unwrap_or_else(|| panic!("no figure {id}"));
    let end = page[start..].find("</figure>").expect("figure closes") + start;
    &page[start..end]
}

/// The value of attribute `name` in the tag that starts at `tag`.
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let end = tag.find('>').unwrap_or(tag.len());
    let i = tag[..end].find(&format!(" {name}=\""))? + name.len() + 3;
    Some(&tag[i..i + tag[i..].find('"')?])
}

/// Pixel → data mapping of a chart, from its `data-plot` calibration.
struct Plot {
    px: [f64; 4],
    data: [f64; 4],
}

impl Plot {
    fn of(svg: &str) -> Plot {
        let root = &svg[svg.find("<svg ").expect("an svg")..];
        let v: Vec<f64> =
            attr(root, "data-plot").expect("calibrated").split(' ').map(|x| x.parse().expect("number")).collect();
        Plot { px: [v[0], v[1], v[2], v[3]], data: [v[4], v[5], v[6], v[7]] }
    }

    fn to_data(&self, (x, y): (f64, f64)) -> (f64, f64) {
        let [px0, py0, px1, py1] = self.px;
        let [x0, y0, x1, y1] = self.data;
        (x0 + (x - px0) / (px1 - px0) * (x1 - x0), y0 + (y - py0) / (py1 - py0) * (y1 - y0))
    }

    /// The data points of the polyline tagged `data-series="name"`.
    fn series(&self, svg: &str, name: &str) -> Vec<(f64, f64)> {
        let i = svg.find(&format!("data-series=\"{name}\"")).unwrap_or_else(|| panic!("no series {name}"));
        let tag = &svg[svg[..i].rfind('<').expect("tag start")..];
        attr(tag, "points")
            .expect("a polyline")
            .split_whitespace()
            .map(|p| {
                let (x, y) = p.split_once(',').expect("x,y");
                self.to_data((x.parse().expect("x"), y.parse().expect("y")))
            })
            .collect()
    }

    /// Data x range of the rect tagged `data-window="tag"`.
    fn window(&self, svg: &str, tag: &str) -> (f64, f64) {
        let i = svg.find(&format!("data-window=\"{tag}\"")).unwrap_or_else(|| panic!("no window {tag}"));
        let rect = &svg[svg[..i].rfind('<').expect("tag start")..];
        let x: f64 = attr(rect, "x").expect("x").parse().expect("x");
        let w: f64 = attr(rect, "width").expect("width").parse().expect("width");
        (self.to_data((x, 0.0)).0, self.to_data((x + w, 0.0)).0)
    }
}

#[test]
fn ejected_instance_series_drops_to_zero_inside_its_ejection_window() {
    let run = outlier_run();
    let at = |kind: &str| {
        run.events
            .iter()
            .find(|e| e.kind == kind && e.detail.contains("reviews-v1-2"))
            .map(|e| e.at_ms / 1e3)
            .unwrap_or_else(|| panic!("the run has a {kind} event for reviews-v1-2"))
    };
    let (ejected, readmitted) = (at("ejected"), at("readmitted"));
    let page = reports::html::run_page(run);
    let svg = figure(&page, "traffic");
    let plot = Plot::of(svg);
    let points = plot.series(svg, "reviews-v1-2");
    assert!(points.len() >= 50, "one point per second of the 50 s run: {}", points.len());
    // Point k is second k, drawn at its middle (to within a pixel).
    let pixel = (plot.data[2] - plot.data[0]) / (plot.px[2] - plot.px[0]);
    for (k, (x, _)) in points.iter().enumerate() {
        assert!((x - (k as f64 + 0.5)).abs() <= pixel, "point {k} at x {x}");
    }
    let whole_seconds_inside = ejected.ceil() as usize..readmitted.floor() as usize;
    assert!(whole_seconds_inside.len() >= 3, "{ejected}..{readmitted}");
    for k in whole_seconds_inside {
        assert!(points[k].1.abs() < 0.5, "second {k} is inside the ejection: {} rps drawn", points[k].1);
    }
    // Before the fault it served its tenth of 200 rps.
    for (k, p) in points.iter().enumerate().take(9).skip(1) {
        assert!(p.1 > 5.0, "second {k} before the fault: {} rps drawn", p.1);
    }
    // The first ejection window is shaded where it happened.
    let (from, to) = plot.window(svg, "E1");
    assert!((from - ejected).abs() <= pixel && (to - readmitted).abs() <= pixel, "E1 drawn over {from}..{to}");
    assert!(svg.contains(">\nE1\n</text>"), "the window is labelled in the chart");
    // The fault window starts at 10 s and lasts to the end.
    let (from, to) = plot.window(svg, "F1");
    assert!((from - 10.0).abs() <= pixel && (to - 50.0).abs() <= pixel, "F1 drawn over {from}..{to}");
}

#[test]
fn latency_spectrum_reaches_the_recorded_maximum_and_the_table_states_it() {
    let run = outlier_run();
    let page = reports::html::run_page(run);
    let svg = figure(&page, "latency");
    let plot = Plot::of(svg);
    let points = plot.series(svg, "browse → reviews");
    let max = run.workloads[0].latency_ms.as_ref().expect("latencies").max;
    let last = points.last().expect("points");
    // 10,000 requests support 4 nines: the spectrum ends there, at the maximum.
    assert!((last.0 - (run.requests.len() as f64).log10()).abs() < 0.02, "ends at {} nines", last.0);
    let tolerance = (plot.data[3] - plot.data[1]) / (plot.px[1] - plot.px[3]).abs();
    assert!((last.1 - max).abs() <= tolerance + 0.01, "ends at {} ms, max {max} ms", last.1);
    assert!(points.windows(2).all(|p| p[1].1 >= p[0].1 - tolerance), "a spectrum never falls");
    let table = &page[page.find("<h2>Latency</h2>").expect("latency section")..];
    assert!(table.contains(&reports::html::ms(max)), "the table states the maximum");
    for label in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"] {
        assert!(svg.contains(&format!(">\n{label}\n</text>")), "axis tick {label}");
    }
}

#[test]
fn report_page_states_every_expectation_with_its_verdict_and_the_repro() {
    let run = outlier_run();
    let page = reports::html::run_page(run);
    assert!(page.contains(&format!("<code>meshsim run {} --seed 1</code>", run.file)));
    for c in &run.expectations {
        let row = format!(
            "<td class=\"{}\">{}</td><td>{}</td>",
            if c.pass { "pass" } else { "fail" },
            if c.pass { "PASS" } else { "FAIL" },
            reports::chart::esc(&c.expectation)
        );
        assert!(page.contains(&row), "row for {}", c.expectation);
    }
    for fetch in ["<script", " src=", " href=", "<link", "url(", "@import"] {
        assert!(!page.contains(fetch), "self-contained: the page has {fetch}");
    }
}

const SMALL: &str = "\
name: small
duration: 2s
services:
  - name: client
    pods:
      - name: v1
  - name: server
    pods:
      - name: v1
        replicas: 2
workload:
  - name: calls
    from: client
    to: server
    rate: 100
";

#[test]
fn run_writes_the_report_beside_the_results_and_report_renders_it_again() {
    let scratch = Scratch::new("run-report");
    let file = scratch.write("small.yaml", SMALL);
    let out = scratch.dir.join("out");
    let ran = meshsim([OsStr::new("run"), file.as_os_str(), OsStr::new("--out"), out.as_os_str()]);
    assert_eq!(ran.code, Some(0), "{}", ran.dump());
    let html = out.join("small-seed1.html");
    let md = out.join("small-seed1.md");
    assert!(ran.stdout.contains(&format!("report: {}", html.display())), "{}", ran.dump());
    let page = std::fs::read_to_string(&html).expect("the report is written");
    assert!(page.contains("<figure id=\"traffic\">") && page.contains("data-series=\"server-v1-0\""));
    let first_md = std::fs::read_to_string(&md).expect("the summary is written");
    std::fs::remove_file(&html).expect("remove");
    let again = meshsim([OsStr::new("report"), out.join("small-seed1.json").as_os_str()]);
    assert_eq!(again.code, Some(0), "{}", again.dump());
    assert_eq!(std::fs::read_to_string(&html).expect("rendered again"), page, "re-rendering gives the same page");
    assert_eq!(std::fs::read_to_string(&md).expect("summary"), first_md);
}

#[test]
fn report_compare_overlays_runs_and_tabulates_their_differences() {
    let scratch = Scratch::new("report-compare");
    let file = scratch.write("small.yaml", SMALL);
    let out = scratch.dir.join("out");
    for seed in ["1", "2"] {
        let ran = meshsim([
            OsStr::new("run"),
            file.as_os_str(),
            OsStr::new("--seed"),
            OsStr::new(seed),
            OsStr::new("--out"),
            out.as_os_str(),
            OsStr::new("--no-report"),
        ]);
        assert_eq!(ran.code, Some(0), "{}", ran.dump());
    }
    assert!(!out.join("small-seed1.html").exists(), "--no-report writes no report");
    let target = scratch.dir.join("cmp.html");
    let ran = meshsim([
        OsStr::new("report"),
        OsStr::new("--compare"),
        out.join("small-seed1.json").as_os_str(),
        out.join("small-seed2.json").as_os_str(),
        OsStr::new("--out"),
        target.as_os_str(),
    ]);
    assert_eq!(ran.code, Some(0), "{}", ran.dump());
    let page = std::fs::read_to_string(&target).expect("comparison written");
    let svg = figure(&page, "latency");
    assert!(svg.contains("data-series=\"small-seed1\"") && svg.contains("data-series=\"small-seed2\""));
    assert!(page.contains("<th>Δ vs small-seed1</th>"), "a table of differences");
    let tax = figure(&page, "latency-tax");
    assert!(tax.contains("data-bar=\"small-seed2/p99\""), "added latency relative to the first run");
}

#[test]
fn report_of_a_file_that_is_not_results_is_invalid_input() {
    let scratch = Scratch::new("report-bad");
    let bad = scratch.write("bad.json", "{\"scenario\": 5}");
    let ran = meshsim([OsStr::new("report"), bad.as_os_str()]);
    ran.assert_no_panic();
    assert_eq!(ran.code, Some(2), "{}", ran.dump());
    assert!(ran.stderr.contains(&bad.display().to_string()) && ran.stderr.contains("not a meshsim results file"));
    let missing = scratch.dir.join("missing.json");
    let ran = meshsim([OsStr::new("report"), missing.as_os_str()]);
    assert_eq!(ran.code, Some(2), "{}", ran.dump());
}
