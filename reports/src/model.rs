//! Reading a run's results JSON (written by `sim::results`). The reader is tolerant on
//! purpose: every field has a default and unknown fields are ignored, so results written
//! by a newer or older meshsim still render; event fields this reader does not know are
//! kept in [`Event::extra`] and shown as they are. It owns no rendering.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// One run's results.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Run {
    pub scenario: String,
    pub file: String,
    pub seed: u64,
    /// Where it ran (`sim`, `real`); empty in results older than targets (the simulator).
    pub target: String,
    pub duration_ms: u64,
    pub sim_elapsed_ms: u64,
    /// Node → pods placed on it.
    pub placement: BTreeMap<String, Vec<String>>,
    pub issued: u64,
    pub recorded: u64,
    pub workloads: Vec<Workload>,
    pub events: Vec<Event>,
    pub expectations: Vec<Check>,
    /// Indices of `expectations` the target could not check (neither passed nor failed).
    pub not_checkable: Vec<usize>,
    pub passed: bool,
    pub warnings: Vec<String>,
    pub requests: Vec<Request>,
    /// The same scenario and seed without the mesh (`mesh: none`), when the run has one.
    pub baseline: Option<Box<Run>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Latencies {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Second {
    pub t: u64,
    pub requests: u64,
    pub success: u64,
    /// Responses per serving pod in this second.
    pub pods: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Workload {
    pub name: String,
    pub to: String,
    pub requests: u64,
    pub success: u64,
    pub success_rate: f64,
    pub statuses: BTreeMap<String, u64>,
    pub flags: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    /// Milliseconds.
    pub latency_ms: Option<Latencies>,
    pub pods: BTreeMap<String, u64>,
    pub series: Vec<Second>,
}

/// A timeline event. Kinds are open-ended: a kind this reader has never heard of still
/// shows on the timeline under its own name.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Event {
    pub at_ms: f64,
    pub kind: String,
    pub detail: String,
    /// Any other fields the writer added.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Check {
    pub expectation: String,
    pub expected: String,
    pub observed: String,
    pub pass: bool,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Request {
    pub workload: usize,
    pub intended_us: u64,
    pub latency_us: u64,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub pod: Option<String>,
    pub flags: String,
}

impl Request {
    /// Whether the request was actually sent (the generator refused none of it), so its
    /// latency means something. Matches `sim::expect::was_sent`.
    pub fn was_sent(&self) -> bool {
        !matches!(self.error.as_deref(), Some("in_flight_limit" | "source_down"))
    }

    /// What the caller got, as one label: `200`, `503 UF`, `client_timeout`.
    pub fn outcome(&self) -> String {
        match (self.status, &self.error) {
            (Some(s), _) if self.flags.is_empty() || self.flags == "-" => s.to_string(),
            (Some(s), _) => format!("{s} {}", self.flags),
            (None, Some(e)) => e.clone(),
            (None, None) => "unknown".into(),
        }
    }
}

impl Run {
    pub fn parse(text: &str) -> Result<Run, String> {
        serde_json::from_str(text).map_err(|e| format!("not a meshsim results file: {e}"))
    }

    pub fn load(path: &Path) -> Result<Run, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Run::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The one-line command that reproduces the run.
    pub fn repro(&self) -> String {
        match self.target.as_str() {
            "" | "sim" => format!("meshsim run {} --seed {}", self.file, self.seed),
            t => format!("meshsim run {} --seed {} --target {t}", self.file, self.seed),
        }
    }

    pub fn duration_s(&self) -> f64 {
        self.duration_ms as f64 / 1e3
    }
}
