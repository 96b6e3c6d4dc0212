//! The plan: the validated model of a scenario that every world runs — pods placed on
//! nodes, the registry and compiled mesh config, workloads, faults, config steps and
//! expectations, all defaults applied. It is plain data: building it is the section
//! modules' job, running it `crate::world`'s. Each section's own types live in its
//! module and are re-exported by `scenario`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use mesh::config::Finding;
use mesh::control::StoredResource;
use mesh::registry::Registry;
use mesh::snapshot::Snapshot;

use super::ca::CaPlan;
use super::control::ConfigStep;
use super::expectations::Expectation;
use super::faults::Fault;
use super::istio::Suppress;
use super::services::{PlannedPod, ProxyCost};
use super::workloads::Workload;

/// The seed of a scenario that names none.
pub(super) const DEFAULT_SEED: u64 = 1;

#[derive(Debug)]
pub struct Plan {
    pub file: String,
    pub name: String,
    pub description: String,
    pub seed: u64,
    pub duration: Duration,
    pub nodes: Vec<String>,
    pub latency_min: Duration,
    pub latency_max: Duration,
    pub tick: Duration,
    pub pods: Vec<PlannedPod>,
    pub registry: Registry,
    pub snapshot: Snapshot,
    /// The Istio resources the control plane starts with, in order, with their documents.
    pub resources: Vec<StoredResource>,
    /// Per service FQDN, the services its workloads call: each proxy's egress scope.
    pub egress: BTreeMap<String, BTreeSet<String>>,
    /// Config changes, in time order.
    pub config_steps: Vec<ConfigStep>,
    /// The scenario's `suppress` rules: error findings they name do not block a change.
    pub suppress: Arc<Vec<Suppress>>,
    /// How long after a pod goes down or comes back its endpoint is withdrawn or published
    /// (`control_plane.readiness_delay`).
    pub readiness_delay: Duration,
    pub workloads: Vec<Workload>,
    pub faults: Vec<Fault>,
    pub expectations: Vec<Expectation>,
    pub ca: CaPlan,
    /// Write every request's spans into the results.
    pub spans: bool,
    /// Whether pods run sidecars (`mesh: istio`, the default).
    pub mesh: bool,
    /// The sidecars' processing time.
    pub proxy_cost: ProxyCost,
    /// The same scenario with `mesh: none`, when an expectation compares against it.
    pub baseline: Option<Arc<Plan>>,
    /// Warnings found while loading (errors stop loading).
    pub warnings: Vec<Finding>,
}

impl Plan {
    /// Whether some expectation looks at what the destination apps received, so the run
    /// must keep every receipt (path, headers, pod), not only count them.
    pub fn needs_receipts(&self) -> bool {
        self.expectations.iter().any(|e| matches!(e, Expectation::Count { filter, .. } if filter.on_receipts()))
    }

    /// Whether the run needs its no-mesh baseline (a `latency_overhead` expectation).
    pub fn needs_baseline(&self) -> bool {
        self.mesh && self.expectations.iter().any(|e| matches!(e, Expectation::LatencyOverhead(_)))
    }
}
