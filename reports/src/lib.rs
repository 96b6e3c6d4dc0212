//! Reports: a run's results JSON rendered as one self-contained HTML page (inline SVG
//! charts, no scripts, no fetches: it opens from disk) and as a Markdown summary for CI
//! logs and pull requests; several runs rendered as one comparison page (overlays, a
//! table of differences, the latency-tax and capacity layouts). It reads results only
//! through [`model`] and never runs a simulation.

pub mod analyze;
pub mod chart;
pub mod figures;
pub mod html;
pub mod markdown;
pub mod model;

use std::path::{Path, PathBuf};

pub use model::Run;

/// Where the report of `results` goes: beside it, `.json` replaced by `.html` and `.md`.
pub fn paths_for(results: &Path) -> (PathBuf, PathBuf) {
    (results.with_extension("html"), results.with_extension("md"))
}

/// Renders `run` as its HTML page and Markdown summary beside `results`; returns both paths.
pub fn write(run: &Run, results: &Path) -> Result<(PathBuf, PathBuf), String> {
    let (html, md) = paths_for(results);
    std::fs::write(&html, html::run_page(run)).map_err(|e| format!("cannot write {}: {e}", html.display()))?;
    std::fs::write(&md, markdown::summary(run)).map_err(|e| format!("cannot write {}: {e}", md.display()))?;
    Ok((html, md))
}

/// Labels for compared runs: each file's name without `.json`, made unique.
pub fn labels(files: &[PathBuf]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for f in files {
        let stem = f.file_stem().map_or_else(|| f.display().to_string(), |s| s.to_string_lossy().into_owned());
        let mut label = stem.clone();
        let mut n = 2;
        while out.contains(&label) {
            label = format!("{stem} ({n})");
            n += 1;
        }
        out.push(label);
    }
    out
}
