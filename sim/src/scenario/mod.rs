//! The scenario file: what to simulate and what must hold. Parsing is strict (unknown
//! fields are errors) and positions are kept, so every mistake is reported as
//! `file:line:column: error [code] field: rule`. [`load`] turns a file into a [`Plan`]:
//! validated, defaults applied, pods placed on nodes, ports assigned, mesh config
//! compiled. The plan is all the world needs; nothing here runs anything.
//!
//! The loader is one module per section of the file, each owning that section's
//! shapes (serde), its checks and its part of the plan: `services` (services, pod groups,
//! apps, placement), `istio` (Istio resources and `suppress`), `workloads`, `control`
//! (config steps), `faults`, `ca` and `expectations`. `format` is the file's top level,
//! `plan` the whole validated model, `builder` what the sections share. This module
//! reads the file and drives the sections in order: each may refer to what the ones
//! before it built.

mod builder;
mod ca;
mod control;
mod expectations;
mod faults;
mod format;
mod istio;
mod plan;
mod services;
mod workloads;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mesh::config::diag::code;
use mesh::config::{Finding, Findings, Pos};

pub use self::ca::CaPlan;
pub use self::control::{ConfigChange, ConfigStep, TERMINATION_DRAIN};
pub use self::expectations::{CountFilter, Expectation, HeaderFilter, LatencyBound, Window};
pub use self::faults::{Fault, FaultKind, ISTIOD, RootStep};
pub use self::istio::{Suppress, suppressed};
pub use self::plan::Plan;
pub use self::services::{AppModel, Latency, PlannedPod, ProxyCost};
pub use self::workloads::{Arrivals, TcpWorkload, Workload};

use self::builder::{Builder, dur};
use self::control::DEFAULT_READINESS_DELAY;
use self::expectations::Scope;
use self::format::ScenarioFile;
use self::plan::DEFAULT_SEED;
use self::services::Placement;

/// Why a scenario could not be loaded.
#[derive(Debug)]
pub struct LoadError {
    pub findings: Vec<Finding>,
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for x in &self.findings {
            writeln!(f, "{x}")?;
        }
        Ok(())
    }
}

/// Reads, parses and validates a scenario file.
pub fn load(path: &Path) -> Result<Plan, LoadError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        let mut f = Finding::error(Pos::file(&file), code::SCENARIO, "", format!("cannot read the scenario: {e}"));
        f.unparsable = true;
        LoadError { findings: vec![f] }
    })?;
    load_str(&file, &text, path.parent().unwrap_or(Path::new(".")))
}

/// Parses and validates scenario text; `base` is where relative `istio_files` live.
pub fn load_str(file: &str, text: &str, base: &Path) -> Result<Plan, LoadError> {
    let mut plan = build(file, text, base, false)?;
    if plan.needs_baseline() {
        // The same text again, every pod without its sidecar; its findings are the
        // scenario's own, already reported.
        plan.baseline = Some(Arc::new(build(file, text, base, true)?));
    }
    Ok(plan)
}

fn build(file: &str, text: &str, base: &Path, baseline: bool) -> Result<Plan, LoadError> {
    let def: ScenarioFile = serde_saphyr::from_str(text)
        .map_err(|e| LoadError { findings: vec![mesh::config::diag::from_yaml_error(file, text, &e)] })?;
    let mut b = Builder { file: file.to_string(), findings: Findings::default(), baseline };
    // The same text as plain documents: what the control plane pushes of each resource.
    let generic: serde_json::Value = serde_saphyr::from_str(text).unwrap_or_default();
    let plan = b.plan(def, &generic, base);
    let findings = b.findings.sorted();
    if findings.iter().any(|f| f.level == mesh::config::Level::Error) {
        return Err(LoadError { findings });
    }
    let mut plan = plan.expect("a plan exists when there are no errors");
    plan.warnings = if baseline { Vec::new() } else { findings };
    Ok(plan)
}

impl Builder {
    /// The sections in order; each may refer to what the ones before it built.
    fn plan(&mut self, def: ScenarioFile, generic: &serde_json::Value, base: &Path) -> Option<Plan> {
        let suppress = self.suppress_rules(&def.suppress);
        let duration = def.duration.value.0;
        if duration.is_zero() {
            self.err(&def.duration, "duration", "duration must be greater than 0");
        }
        // What is checked against the run's end is checked only when the duration is valid:
        // one mistake, one error.
        let run_end = (!duration.is_zero()).then_some(duration);
        if def.name.value.trim().is_empty() {
            self.err(&def.name, "name", "name cannot be empty");
        }
        let tick = dur(&def.network.tick, Duration::from_millis(1));
        if let Some(t) = &def.network.tick
            && (t.value.0 < Duration::from_micros(100) || t.value.0 > Duration::from_secs(1))
        {
            self.err(t, "network.tick", "tick must be between 100us and 1s");
        }
        let mesh = match &def.mesh {
            _ if self.baseline => false,
            None => true,
            Some(m) if m.value == "istio" => true,
            Some(m) if m.value == "none" => false,
            Some(m) => {
                self.err(m, "mesh", format!("mesh {:?} is not one of istio, none", m.value));
                true
            }
        };
        let proxy_cost = self.proxy_cost(&def.proxy_cost);
        let latency_min = dur(&def.network.latency, Duration::from_millis(1));
        let latency_max = latency_min + dur(&def.network.jitter, Duration::ZERO);
        let scaled_max = control::scaled_max(&def.config);
        let placed = self.services(&def.services, &def.nodes, &scaled_max, mesh);
        let (sources, snapshot) =
            self.istio_resources(def.istio, &def.istio_files, generic, base, &placed.registry, &suppress);
        let mut rate_limits_reported = BTreeSet::new();
        self.envoy_filter_rate_limits(&snapshot, &placed.pods, &mut rate_limits_reported);
        let (workloads, workload_names) = self.workloads(&def.workload, &placed, duration, run_end);
        let egress = workloads::egress(&placed, &workloads);
        let suppress = Arc::new(suppress);
        let mut config_steps = self.config_steps(
            &def.config,
            generic,
            base,
            &placed,
            &sources,
            &suppress,
            run_end,
            &mut rate_limits_reported,
        );
        self.plan_scaling(&mut config_steps, &def.config, &placed.deployments, &workloads);
        let faults = self.faults(&def.faults, &placed, duration, run_end);
        let ca = self.ca(def.ca.as_ref());
        let scope = Scope {
            placed: &placed,
            snapshot: &snapshot,
            workloads: &workloads,
            workload_names: &workload_names,
            mesh,
            run_end,
        };
        let expectations = self.expectations(&def.expect, &scope);
        let Placement { registry, pods, nodes, .. } = placed;

        Some(Plan {
            file: self.file.clone(),
            name: def.name.value,
            description: def.description,
            seed: def.seed.unwrap_or(DEFAULT_SEED),
            duration,
            nodes,
            latency_min,
            latency_max,
            tick,
            pods,
            registry,
            snapshot,
            resources: sources,
            egress,
            config_steps,
            suppress,
            readiness_delay: dur(&def.control_plane.readiness_delay, DEFAULT_READINESS_DELAY),
            workloads,
            faults,
            expectations,
            ca,
            spans: def.spans,
            mesh,
            proxy_cost,
            baseline: None,
            warnings: Vec::new(),
        })
    }
}

/// Small scenarios for the section modules' tests.
#[cfg(test)]
mod testing {
    use std::path::Path;

    use super::{Plan, load_str};

    /// Two services and a workload between them; a test appends the section it checks.
    pub(super) const BASE: &str = "\
name: t
duration: 10s
services:
  - name: frontend
    pods:
      - name: v1
  - name: backend
    pods:
      - name: v1
        replicas: 3
workload:
  - name: browse
    from: frontend
    to: backend
    rate: 10
";

    /// The plan of `text`, which must load.
    pub(super) fn plan(text: &str) -> Plan {
        load_str("t.yaml", text, Path::new(".")).unwrap_or_else(|e| panic!("does not load:\n{e}"))
    }

    /// What loading `text` reports, one `file:line:col: error [code] field: rule` a line.
    pub(super) fn errors(text: &str) -> String {
        match load_str("t.yaml", text, Path::new(".")) {
            Ok(_) => panic!("loads, but should not:\n{text}"),
            Err(e) => e.to_string(),
        }
    }
}
