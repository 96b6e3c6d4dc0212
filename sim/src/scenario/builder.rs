//! The loader's workbench: the [`Builder`] that every section module extends with its
//! own `impl` block (it holds the file name, the findings so far and whether the no-mesh
//! baseline is being built), and the checks several sections share: ranges of
//! durations, pod names, header maps. It owns no section and no plan type.

use std::collections::BTreeMap;
use std::time::Duration;

use mesh::config::diag::code;
use mesh::config::{Finding, Findings, IstioDuration, Pos};
use serde_saphyr::Spanned;

/// A duration as a scenario writes it, with its position.
pub(super) type Dur = Spanned<IstioDuration>;

/// `d`, or `default` when the field is absent.
pub(super) fn dur(d: &Option<Dur>, default: Duration) -> Duration {
    d.as_ref().map(|d| d.value.0).unwrap_or(default)
}

/// The default of a count that defaults to 1 (`replicas`, `nth`).
pub(super) fn one() -> Spanned<u32> {
    Spanned::new(1, serde_saphyr::Location::UNKNOWN, serde_saphyr::Location::UNKNOWN)
}

/// Turns a parsed scenario into a plan, collecting every finding on the way.
pub(super) struct Builder {
    pub(super) file: String,
    pub(super) findings: Findings,
    /// Building the no-mesh baseline of a scenario: `mesh: none` whatever it says.
    pub(super) baseline: bool,
}

impl Builder {
    pub(super) fn err<T>(&mut self, at: &Spanned<T>, field: &str, msg: impl Into<String>) {
        self.findings.push(Finding::error(Pos::of(&self.file, at), code::SCENARIO, field, msg));
    }
    pub(super) fn not_found<T>(&mut self, at: &Spanned<T>, field: &str, msg: impl Into<String>) {
        self.findings.push(Finding::error(Pos::of(&self.file, at), code::NOT_FOUND, field, msg));
    }

    /// An error about the file as a whole, for a field without a position of its own.
    pub(super) fn err_in_file(&mut self, code: &'static str, field: impl Into<String>, msg: impl Into<String>) {
        self.findings.push(Finding::error(Pos::file(&self.file), code, field, msg));
    }

    pub(super) fn range(&mut self, s: &Spanned<Vec<IstioDuration>>, field: &str) -> Option<(Duration, Duration)> {
        match s.value.as_slice() {
            [a, b] if a.0 <= b.0 => Some((a.0, b.0)),
            [a, b] => {
                self.err(s, field, format!("range [{a}, {b}] ends before it starts"));
                None
            }
            _ => {
                self.err(s, field, "expected a range of two durations, like [10s, 20s]");
                None
            }
        }
    }

    /// Header names and values checked and lower-cased; `reserved` names are refused
    /// (meshsim sets them itself).
    pub(super) fn headers(
        &mut self,
        h: &Spanned<BTreeMap<String, String>>,
        field: &str,
        reserved: &[&str],
    ) -> Vec<(http::HeaderName, http::HeaderValue)> {
        let mut out = Vec::new();
        for (k, v) in &h.value {
            let Ok(name) = http::HeaderName::try_from(k.as_str()) else {
                self.err(h, field, format!("{k:?} is not a valid header name (letters, digits and !#$%&'*+-.^_`|~)"));
                continue;
            };
            if reserved.contains(&name.as_str()) {
                self.err(h, field, format!("header {:?} is set by meshsim itself and cannot be given", name.as_str()));
                continue;
            }
            let Ok(value) = http::HeaderValue::try_from(v.as_str()) else {
                self.err(
                    h,
                    field,
                    format!("header {k}: {v:?} is not a valid header value (visible ASCII, spaces, tabs)"),
                );
                continue;
            };
            out.push((name, value));
        }
        out
    }

    /// Indices of the pods `names` lists. A pod listed twice is an error rather than
    /// silently deduplicated: it is most likely a typo for another pod.
    pub(super) fn pods(
        &mut self,
        names: &[Spanned<String>],
        index: &BTreeMap<String, usize>,
        field: &str,
    ) -> Vec<usize> {
        let mut out = Vec::new();
        for n in names {
            match index.get(&n.value) {
                Some(i) if out.contains(i) => self.err(n, field, format!("pod {:?} is listed twice", n.value)),
                Some(&i) => out.push(i),
                None => self.not_found(
                    n,
                    field,
                    format!("pod {:?} is not in the scenario (pods are named <service>-<group>-<index>)", n.value),
                ),
            }
        }
        out
    }
}
