//! The Markdown summary against a golden file, and the HTML page of the same results:
//! a results file with fields and an event kind this reader has never seen still renders,
//! and the new kind gets its own lane on the timeline. `UPDATE_GOLDEN=1 cargo test -p
//! reports` rewrites the golden file after an intended change (review the diff).

use std::path::Path;

fn data(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

fn run() -> reports::Run {
    reports::Run::load(&data("results.json")).expect("the fixture reads")
}

#[test]
fn markdown_summary_matches_the_golden_file() {
    let got = reports::markdown::summary(&run());
    let golden = data("summary.md");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &got).expect("golden written");
    }
    let want = std::fs::read_to_string(&golden).expect("golden file exists (UPDATE_GOLDEN=1 writes it)");
    assert_eq!(got, want, "the summary changed; if intended, rerun with UPDATE_GOLDEN=1 and review the diff");
}

#[test]
fn unknown_event_kinds_get_their_own_timeline_lane_and_table_row() {
    let page = reports::html::run_page(&run());
    let start = page.find("<figure id=\"timeline\">").expect("a timeline");
    let timeline = &page[start..start + page[start..].find("</figure>").expect("closes")];
    for lane in ["fault", "ejection", "cert_issued"] {
        assert!(timeline.contains(&format!(">\n{lane}\n</text>")), "lane {lane} is labelled");
    }
    assert!(page.contains("<td>cert_issued</td>"), "listed in the event table");
    assert!(page.contains("<code>serial=&quot;0a1b&quot;</code>"), "its extra fields are shown");
}

#[test]
fn canary_chart_draws_observed_minus_configured_with_its_band() {
    let page = reports::html::run_page(&run());
    let start = page.find("<figure id=\"canary\">").expect("a canary chart");
    let svg = &page[start..];
    assert!(svg.contains("data-bar=\"observed − configured/subset v1 (configured 50.0%)\""));
    assert!(svg.contains(">\ntolerance band\n</text>"));
}

#[test]
fn outcomes_chart_has_a_series_per_status() {
    let page = reports::html::run_page(&run());
    let start = page.find("<figure id=\"outcomes\">").expect("an outcomes chart");
    let svg = &page[start..start + page[start..].find("</figure>").expect("closes")];
    assert!(svg.contains("data-series=\"200\"") && svg.contains("data-series=\"500\""));
}
