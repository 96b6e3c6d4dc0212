//! The scenario file's top level, as serde reads it: one field per section, strict
//! (unknown fields are errors) and with positions kept. Each section's own shapes live
//! in its module, next to the code that checks them; the run-wide settings (`network`)
//! live here.

use mesh::config::istio::Resource;
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::builder::Dur;
use super::ca::CaDef;
use super::control::{ConfigStepDef, ControlPlaneDef};
use super::expectations::ExpectDef;
use super::faults::FaultDef;
use super::services::{ProxyCostDef, ServiceDef};
use super::workloads::WorkloadDef;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    pub name: Spanned<String>,
    #[serde(default)]
    pub description: String,
    pub seed: Option<u64>,
    pub duration: Dur,
    pub nodes: Option<Spanned<u32>>,
    #[serde(default)]
    pub network: NetworkDef,
    /// `istio` (the default: pods run sidecars) or `none` (every pod without one: apps
    /// call each other directly).
    pub mesh: Option<Spanned<String>>,
    /// The sidecars' processing time ([`crate::cost`]); absent fields keep the defaults.
    #[serde(default)]
    pub proxy_cost: ProxyCostDef,
    pub services: Vec<ServiceDef>,
    /// Istio resources written inline, exactly as in a cluster.
    #[serde(default)]
    pub istio: Vec<Resource>,
    /// Files of Istio resources (multi-document YAML), relative to the scenario file.
    #[serde(default)]
    pub istio_files: Vec<Spanned<String>>,
    #[serde(default)]
    pub workload: Vec<WorkloadDef>,
    #[serde(default)]
    pub faults: Vec<FaultDef>,
    #[serde(default)]
    pub expect: Vec<ExpectDef>,
    /// Analyzer findings to drop, as `istioctl analyze --suppress` writes them:
    /// `CODE=Kind name.namespace` (`*` matches any run of characters).
    #[serde(default)]
    pub suppress: Vec<Spanned<String>>,
    /// The mesh CA (istiod's) and the workload certificates it issues.
    pub ca: Option<Spanned<CaDef>>,
    /// Write every request's spans into the results (else only the trace summary).
    #[serde(default)]
    pub spans: bool,
    /// Config changes during the run, applied to the control plane's store.
    #[serde(default)]
    pub config: Vec<ConfigStepDef>,
    #[serde(default)]
    pub control_plane: ControlPlaneDef,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkDef {
    /// One-way latency between nodes: the minimum.
    pub latency: Option<Dur>,
    /// Extra latency on top, up to this much (turmoil's exponential curve).
    pub jitter: Option<Dur>,
    /// Simulation step.
    pub tick: Option<Dur>,
}
