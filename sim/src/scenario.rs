//! The scenario file: what to simulate and what must hold. Parsing is strict (unknown
//! fields are errors) and positions are kept, so every mistake is reported as
//! `file:line:column: error [code] field: rule`. [`load`] turns a file into a [`Plan`]:
//! validated, defaults applied, pods placed on nodes, ports assigned, mesh config
//! compiled. The plan is all the world needs; nothing here runs anything.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mesh::config::diag::code;
use mesh::config::istio::Resource;
use mesh::config::ratelimit::{Denominator, FractionalPercent, LocalRateLimitConfig};
use mesh::config::{Finding, Findings, IstioDuration, Pos};
use mesh::control::StoredResource;
use mesh::control::store::{ResourceKey, Store};
use mesh::proxy::ratelimit::LocalRateLimit;
use mesh::proxy::tls::ConnectionSecurity;
use mesh::registry::{AppProtocol, Pod, Registry, Service, qualify};
use mesh::snapshot::{self, Snapshot, Sourced};
use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::bad_identity::BadIdentity;
use crate::cost::ProxyCost;
use crate::metric_query::MetricQuery;

type Dur = Spanned<IstioDuration>;

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

/// How the simulated Kubernetes and control plane behave.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlPlaneDef {
    /// How long after a pod goes down or comes back its endpoint is withdrawn or
    /// published (kubelet + EndpointSlice controller).
    pub readiness_delay: Option<Dur>,
}

/// One config change: exactly one of `apply`, `apply_file`, `delete`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigStepDef {
    pub at: Dur,
    /// Resources to create or replace, written inline.
    pub apply: Option<Vec<Resource>>,
    /// A file of resources to create or replace, relative to the scenario.
    pub apply_file: Option<Spanned<String>>,
    /// Resources to delete.
    pub delete: Option<Vec<DeleteDef>>,
    /// A pod group (`kubectl scale deployment/<service>-<group>`) to a replica count.
    pub scale: Option<Spanned<ScaleDef>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleDef {
    /// `<service>-<group>`: the pods `<service>-<group>-<index>`.
    pub deployment: Spanned<String>,
    pub replicas: Spanned<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteDef {
    pub kind: Spanned<String>,
    pub name: String,
    pub namespace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyCostDef {
    pub outbound: Option<LatencyDef>,
    pub inbound: Option<LatencyDef>,
    pub tls_handshake: Option<LatencyDef>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaDef {
    /// The lifetime agents ask for (Istio's `SECRET_TTL`); default 24h.
    pub workload_cert_ttl: Option<Dur>,
    /// The CA's limit (Istio's `MAX_WORKLOAD_CERT_TTL`); default 90 days (2160h).
    pub max_workload_cert_ttl: Option<Dur>,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceDef {
    pub name: Spanned<String>,
    pub namespace: Option<Spanned<String>>,
    pub port: Option<Spanned<u16>>,
    /// What the port speaks (Kubernetes' `appProtocol`): `http` (the default) or `tcp`.
    pub app_protocol: Option<Spanned<String>>,
    pub service_account: Option<String>,
    pub pods: Vec<PodGroupDef>,
    /// A local rate limit on every pod's inbound sidecar (Envoy's `local_ratelimit`).
    pub rate_limit: Option<Spanned<RateLimitDef>>,
}

/// Envoy's local rate limit as a scenario writes it. Unlike Envoy's proto (0% by
/// default), `enabled_percent` and `enforced_percent` default to 100.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitDef {
    pub max_tokens: u32,
    pub tokens_per_fill: Option<u32>,
    pub fill_interval: IstioDuration,
    pub status: Option<u16>,
    pub enabled_percent: Option<f64>,
    pub enforced_percent: Option<f64>,
    #[serde(default)]
    pub response_headers_to_add: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodGroupDef {
    /// Pods are named `<service>-<name>-<index>`.
    pub name: Spanned<String>,
    #[serde(default = "one")]
    pub replicas: Spanned<u32>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub app: AppDef,
    /// The pods' Kubernetes service account (default: the service's, else `default`).
    pub service_account: Option<Spanned<String>>,
    /// Whether the pods run a sidecar (default true). Without one a pod is outside the
    /// mesh: its workload connects straight to a destination pod, in plaintext.
    pub sidecar: Option<Spanned<bool>>,
    /// A bad identity for the pods' sidecars: `foreign_ca`, `expired`,
    /// `wrong_trust_domain` or `no_certificate`.
    pub bad_identity: Option<Spanned<String>>,
}

fn one() -> Spanned<u32> {
    Spanned::new(1, serde_saphyr::Location::UNKNOWN, serde_saphyr::Location::UNKNOWN)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppDef {
    #[serde(default)]
    pub latency: LatencyDef,
    /// Share of requests answered with `error_status`, in parts per million.
    pub error_rate_ppm: Option<Spanned<u32>>,
    pub error_status: Option<Spanned<u16>>,
    /// Answer `status` while the request's `x-envoy-attempt-count` is at most `count`.
    pub fail_attempts: Option<Spanned<FailAttemptsDef>>,
    /// Headers the app adds to every response.
    pub response_headers: Option<Spanned<BTreeMap<String, String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailAttemptsDef {
    pub count: u32,
    pub status: u16,
}

/// Exactly one of the fields; none = 1 ms constant.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyDef {
    pub constant: Option<Dur>,
    /// `[min, max]`, uniform.
    pub uniform: Option<Spanned<Vec<IstioDuration>>>,
    /// Exponential with this mean.
    pub exponential: Option<Dur>,
    pub lognormal: Option<Spanned<LogNormalDef>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogNormalDef {
    pub median: IstioDuration,
    pub p99: IstioDuration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadDef {
    pub name: Option<Spanned<String>>,
    /// Source service (its pods take turns) or one pod.
    pub from: Spanned<String>,
    /// Destination as the app writes it in the Host header (a service name).
    pub to: Spanned<String>,
    pub path: Option<String>,
    /// HTTP method; absent = GET.
    pub method: Option<Spanned<String>>,
    /// Extra request headers.
    pub headers: Option<Spanned<BTreeMap<String, String>>>,
    /// Requests per second.
    pub rate: Spanned<f64>,
    pub arrivals: Option<Spanned<String>>,
    pub start: Option<Dur>,
    pub stop: Option<Dur>,
    pub max_in_flight: Option<Spanned<u32>>,
    /// Client-side timeout: the app gives up and records `client_timeout`.
    pub timeout: Option<Dur>,
    /// To a TCP service: the bytes each connection sends (and expects echoed back);
    /// default [`DEFAULT_TCP_BYTES`], at most [`MAX_TCP_BYTES`].
    pub bytes: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultDef {
    pub at: Dur,
    /// How long the fault lasts; absent = until the end.
    #[serde(rename = "for")]
    pub for_: Option<Dur>,
    pub app_errors: Option<Spanned<AppErrorsDef>>,
    pub partition: Option<Spanned<PartitionDef>>,
    pub link_latency: Option<Spanned<LinkLatencyDef>>,
    pub crash: Option<Spanned<CrashDef>>,
    /// istiod's CA does not answer (for the fault's window).
    pub ca_outage: Option<Spanned<CaOutageDef>>,
    /// A root rotation step: `add_root`, `sign_with_new_root`, `remove_old_roots`.
    pub ca_root: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaOutageDef {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppErrorsDef {
    pub pods: Vec<Spanned<String>>,
    #[serde(default = "status_500")]
    pub status: u16,
    #[serde(default = "million")]
    pub rate_ppm: u32,
}
fn status_500() -> u16 {
    500
}
fn million() -> u32 {
    1_000_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionDef {
    /// Pods or services on one side.
    pub from: Vec<Spanned<String>>,
    /// Pods or services on the other side.
    pub to: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkLatencyDef {
    /// Node names (`node-0`, …) on one side.
    pub from: Vec<Spanned<String>>,
    pub to: Vec<Spanned<String>>,
    pub latency: IstioDuration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrashDef {
    pub pods: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectDef {
    pub share: Option<Spanned<ShareDef>>,
    pub ejection: Option<Spanned<EjectionDef>>,
    pub never_ejected: Option<Spanned<NeverEjectedDef>>,
    pub success_rate: Option<Spanned<SuccessRateDef>>,
    pub latency: Option<Spanned<LatencyExpectDef>>,
    pub count: Option<Spanned<CountDef>>,
    pub certs: Option<Spanned<CertsDef>>,
    /// `name{label="value",...} op number` over every sidecar's metric series.
    pub metric: Option<Spanned<String>>,
    /// `complete`: every request's trace tree is complete.
    pub traces: Option<Spanned<String>>,
    pub latency_overhead: Option<Spanned<LatencyOverheadDef>>,
    pub converged: Option<Spanned<ConvergedDef>>,
    pub events: Option<Spanned<EventsDef>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvergedDef {
    /// The first config version created at or after this time…
    pub after: Dur,
    /// …is ACKed by every connected proxy within this long of its creation.
    pub within: Dur,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsDef {
    pub kind: Spanned<String>,
    pub window: Option<Spanned<Vec<IstioDuration>>>,
    /// Only events whose detail contains this text.
    pub detail: Option<String>,
    pub at_least: Option<u64>,
    pub at_most: Option<u64>,
}

/// Counts certificate lifecycle events of sidecar agents.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertsDef {
    /// One pod; absent = every pod, each on its own.
    pub pod: Option<Spanned<String>>,
    /// `issued`, `renewed`, `ca_unreachable` or `expired`.
    pub event: Spanned<String>,
    pub window: Option<Spanned<Vec<IstioDuration>>>,
    pub at_least: Option<u64>,
    pub at_most: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareDef {
    pub workload: Spanned<String>,
    /// A DestinationRule subset of the workload's destination service…
    pub subset: Option<Spanned<String>>,
    /// …or one pod.
    pub pod: Option<Spanned<String>>,
    pub window: Option<Spanned<Vec<IstioDuration>>>,
    pub expected: Spanned<f64>,
    /// Absolute tolerance; absent = 4.5 binomial standard deviations.
    pub tolerance: Option<Spanned<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EjectionDef {
    pub pod: Spanned<String>,
    /// The client sidecar (pod) whose outlier detector is checked; absent = the first that ejected it.
    pub by: Option<Spanned<String>>,
    /// Which ejection of this pod, from 1.
    #[serde(default = "one")]
    pub nth: Spanned<u32>,
    /// `[from, to]`: the ejection happens in this interval.
    pub at: Spanned<Vec<IstioDuration>>,
    /// `[min, max]`: time until readmission.
    pub lasting: Option<Spanned<Vec<IstioDuration>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NeverEjectedDef {
    pub pod: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuccessRateDef {
    pub workload: Spanned<String>,
    pub window: Option<Spanned<Vec<IstioDuration>>>,
    pub at_least: Option<Spanned<f64>>,
    pub at_most: Option<Spanned<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyExpectDef {
    pub workload: Spanned<String>,
    pub window: Option<Spanned<Vec<IstioDuration>>>,
    /// e.g. 50, 99, 99.9
    pub percentile: Spanned<f64>,
    pub at_most: Option<Dur>,
    pub at_least: Option<Dur>,
}

/// The mesh's latency tax at a percentile: this run minus the same scenario and seed
/// with `mesh: none`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyOverheadDef {
    pub workload: Spanned<String>,
    pub window: Option<Spanned<Vec<IstioDuration>>>,
    pub percentile: Spanned<f64>,
    pub at_most: Option<Dur>,
    pub at_least: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountDef {
    pub workload: Spanned<String>,
    pub window: Option<Spanned<Vec<IstioDuration>>>,
    pub status: Option<u16>,
    /// Envoy response flag as recorded by the source sidecar, e.g. `UH`, `UF`, `-`.
    pub flag: Option<String>,
    /// Client-side error name, e.g. `client_timeout`.
    pub error: Option<String>,
    /// Served by this pod.
    pub pod: Option<Spanned<String>>,
    /// The connection security the destination sidecar saw: `mutual_tls` or `none`.
    pub connection_security: Option<Spanned<String>>,
    /// Requests the destination apps received exactly this many times (retries, mirrors).
    pub upstream_attempts: Option<u32>,
    /// Responses carrying this header: `name`, or `name: value` for that exact value.
    pub header: Option<Spanned<String>>,
    /// Responses with exactly this body.
    pub body: Option<String>,
    /// Requests a destination app received with this path (and query).
    pub upstream_path: Option<String>,
    /// Requests a destination app received with this header: `name` or `name: value`.
    pub upstream_header: Option<Spanned<String>>,
    /// Requests this pod's app received (as a destination: tried, retried or mirrored).
    pub received_by: Option<Spanned<String>>,
    pub at_least: Option<u64>,
    pub at_most: Option<u64>,
}

// ------------------------------------------------------------------ the plan

#[derive(Clone, Debug, PartialEq)]
pub enum Latency {
    Constant(Duration),
    Uniform(Duration, Duration),
    Exponential(Duration),
    /// Log-normal from median and p99.
    LogNormal {
        median: Duration,
        p99: Duration,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct AppModel {
    pub latency: Latency,
    pub error_rate_ppm: u32,
    pub error_status: u16,
    /// `(count, status)`: fail tries 1..=count with `status`.
    pub fail_attempts: Option<(u32, u16)>,
    /// Added to every response.
    pub response_headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

#[derive(Clone, Debug)]
pub struct PlannedPod {
    pub name: String,
    pub service: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub node: usize,
    pub app_port: u16,
    pub inbound_port: u16,
    pub outbound_port: u16,
    pub app: AppModel,
    /// The inbound local rate limit of the pod's sidecar.
    pub rate_limit: Option<LocalRateLimitConfig>,
    pub service_account: String,
    /// Whether the pod runs a sidecar.
    pub sidecar: bool,
    /// A bad identity its sidecar holds instead of a mesh certificate.
    pub bad_identity: Option<BadIdentity>,
    /// False for a pod only a later `scale` step starts: at first it neither runs nor
    /// has a published endpoint.
    pub running_at_start: bool,
    /// What its service's port speaks: the app is an HTTP server or a TCP echo server.
    pub protocol: AppProtocol,
}

impl PlannedPod {
    /// The pod's workload (its Deployment): the name without the replica index.
    pub fn workload(&self) -> &str {
        self.name.rsplit_once('-').map_or(&self.name, |(w, _)| w)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrivals {
    Constant,
    Poisson,
}

#[derive(Clone, Debug)]
pub struct Workload {
    pub name: String,
    /// Indices into `Plan::pods` of the pods that send.
    pub sources: Vec<usize>,
    /// The Host header.
    pub to: String,
    /// FQDN of the destination service (as seen from the source namespace).
    pub to_fqdn: String,
    pub path: String,
    pub method: http::Method,
    /// Extra request headers, after `Host` and `x-request-id`.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub rate: f64,
    pub arrivals: Arrivals,
    pub start: Duration,
    pub stop: Duration,
    pub max_in_flight: u32,
    pub timeout: Duration,
    /// A workload over a TCP service: each arrival is one connection.
    pub tcp: Option<TcpWorkload>,
}

/// What one connection of a TCP workload does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpWorkload {
    /// Bytes sent, and expected back.
    pub bytes: u32,
    /// The destination service's `ClusterIP:port`.
    pub vip: SocketAddr,
}

#[derive(Clone, Debug, PartialEq)]
pub enum FaultKind {
    AppErrors {
        pods: Vec<usize>,
        status: u16,
        rate_ppm: u32,
    },
    Partition {
        from: Vec<usize>,
        to: Vec<usize>,
    },
    LinkLatency {
        from: Vec<usize>,
        to: Vec<usize>,
        latency: Duration,
    },
    Crash {
        pods: Vec<usize>,
    },
    /// istiod's CA closes every connection unanswered.
    CaOutage,
    /// One root rotation step (instant).
    CaRoot(RootStep),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootStep {
    /// A new root joins the trust bundle; the old one keeps signing.
    AddRoot,
    /// The new root signs; workloads are re-issued from it.
    SignWithNewRoot,
    /// Only the newest root stays in the trust bundle.
    RemoveOldRoots,
}

impl RootStep {
    pub const NAMES: [(&str, RootStep); 3] = [
        ("add_root", RootStep::AddRoot),
        ("sign_with_new_root", RootStep::SignWithNewRoot),
        ("remove_old_roots", RootStep::RemoveOldRoots),
    ];

    pub fn name(self) -> &'static str {
        Self::NAMES.iter().find(|(_, s)| *s == self).expect("every step is named").0
    }
}

/// A certificate agent event, as `certs` expectations and the event log name it.
pub const CERT_EVENTS: [&str; 4] = ["issued", "renewed", "ca_unreachable", "expired"];

/// The CA settings of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct CaPlan {
    /// What agents ask for; `None` = the CA's default (24h).
    pub workload_cert_ttl: Option<Duration>,
    pub max_workload_cert_ttl: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Fault {
    pub at: Duration,
    /// End of the fault; `None` = lasts to the end of the run.
    pub until: Option<Duration>,
    pub kind: FaultKind,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Window {
    All,
    Between(Duration, Duration),
}

impl Window {
    pub fn contains(&self, t: Duration) -> bool {
        match self {
            Window::All => true,
            Window::Between(a, b) => *a <= t && t < *b,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Expectation {
    Share {
        workload: usize,
        pods: BTreeSet<String>,
        what: String,
        window: Window,
        expected: f64,
        tolerance: Option<f64>,
    },
    Ejection {
        pod: String,
        by: Option<String>,
        nth: u32,
        at: (Duration, Duration),
        lasting: Option<(Duration, Duration)>,
    },
    NeverEjected {
        pod: String,
    },
    SuccessRate {
        workload: usize,
        window: Window,
        at_least: Option<f64>,
        at_most: Option<f64>,
    },
    Latency {
        workload: usize,
        window: Window,
        percentile: f64,
        at_most: Option<Duration>,
        at_least: Option<Duration>,
    },
    Count {
        workload: usize,
        window: Window,
        filter: Box<CountFilter>,
        at_least: Option<u64>,
        at_most: Option<u64>,
    },
    /// Certificate events (`CERT_EVENTS`) of each pod in `pods`.
    Certs {
        pods: Vec<String>,
        event: String,
        window: Window,
        at_least: Option<u64>,
        at_most: Option<u64>,
    },
    Metric(MetricQuery),
    TracesComplete,
    /// Percentile latency with the mesh minus without it (same scenario and seed).
    LatencyOverhead {
        workload: usize,
        window: Window,
        percentile: f64,
        at_most: Option<Duration>,
        at_least: Option<Duration>,
    },
    /// Every proxy connected when the first version created at or after `after` appeared
    /// ACKed it (or a later one) within `within`.
    Converged {
        after: Duration,
        within: Duration,
    },
    /// The number of events of `kind` (whose detail contains `detail`) in `window`.
    Events {
        kind: String,
        window: Window,
        detail: Option<String>,
        at_least: Option<u64>,
        at_most: Option<u64>,
    },
}

/// Event kinds an `events` expectation may count.
pub const EVENT_KINDS: &[&str] = &[
    "config_version",
    "config_rejected",
    "config_connected",
    "config_disconnected",
    "config_acked",
    "config_nacked",
    "ejected",
    "ejection_overflow",
    "readmitted",
    "fault_start",
    "fault_end",
    "scale",
];

/// A change to the control plane's store.
#[derive(Clone, Debug)]
pub enum ConfigChange {
    Apply(Vec<StoredResource>),
    Delete(Vec<(ResourceKey, Pos)>),
    /// A deployment scaled to `replicas`: the pods (indices into `Plan::pods`) to start and
    /// to stop, worked out from the steps before it.
    Scale {
        deployment: String,
        replicas: u32,
        start: Vec<usize>,
        stop: Vec<usize>,
    },
}

#[derive(Clone, Debug)]
pub struct ConfigStep {
    pub at: Duration,
    pub change: ConfigChange,
}

/// Istio's default: how long the registry takes to learn that a pod went down or came back.
pub const DEFAULT_READINESS_DELAY: Duration = Duration::from_secs(1);

/// How long a pod removed by a scale-down keeps running after its endpoint is withdrawn
/// (Istio's `terminationDrainDuration` default): callers stop sending to it first.
pub const TERMINATION_DRAIN: Duration = Duration::from_secs(5);

/// Which requests a count expectation counts; every condition set must hold.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CountFilter {
    pub status: Option<u16>,
    pub flag: Option<String>,
    pub error: Option<String>,
    pub pod: Option<String>,
    pub connection_security: Option<ConnectionSecurity>,
    pub upstream_attempts: Option<u32>,
    /// Response header: name (lower case) and, if given, the exact value.
    pub header: Option<HeaderFilter>,
    pub body: Option<String>,
    /// Conditions on one receipt (a try a destination app received): all given must hold
    /// for the same receipt.
    pub upstream_path: Option<String>,
    pub upstream_header: Option<HeaderFilter>,
    pub received_by: Option<String>,
}

impl CountFilter {
    /// Whether the filter looks at what destination apps received (see [`Plan::needs_receipts`]).
    pub fn on_receipts(&self) -> bool {
        self.upstream_path.is_some() || self.upstream_header.is_some() || self.received_by.is_some()
    }
}

/// `name` or `name: value`, as count expectations write a header condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderFilter {
    /// Lower case.
    pub name: String,
    pub value: Option<String>,
}

impl HeaderFilter {
    /// Parses `name` or `name: value` (a header name cannot contain `:`).
    pub fn parse(s: &str) -> Result<HeaderFilter, String> {
        let (name, value) = match s.split_once(':') {
            Some((n, v)) => (n.trim(), Some(v.trim().to_string())),
            None => (s.trim(), None),
        };
        http::HeaderName::try_from(name)
            .map_err(|_| format!("{name:?} is not a valid header name (write `name` or `name: value`)"))?;
        Ok(HeaderFilter { name: name.to_ascii_lowercase(), value })
    }

    /// Whether some header of `headers` (name, value) matches.
    pub fn matches(&self, headers: &[(String, String)]) -> bool {
        headers.iter().any(|(n, v)| *n == self.name && self.value.as_ref().is_none_or(|want| want == v))
    }
}

impl std::fmt::Display for HeaderFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{}: {v}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

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
    /// See [`ControlPlaneDef::readiness_delay`].
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
        self.mesh && self.expectations.iter().any(|e| matches!(e, Expectation::LatencyOverhead { .. }))
    }
}

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

pub const DEFAULT_SEED: u64 = 1;
/// Request headers a workload sets itself (or that belong to the connection).
pub const RESERVED_REQUEST_HEADERS: &[&str] =
    &["host", "x-request-id", "content-length", "transfer-encoding", "connection", "keep-alive", "te", "upgrade"];
/// Response headers an app sets itself (or that belong to the connection).
pub const RESERVED_RESPONSE_HEADERS: &[&str] =
    &["x-meshsim-pod", "content-length", "transfer-encoding", "connection", "keep-alive", "te", "upgrade"];
pub const FIRST_PORT: u16 = 10_000;
/// Bytes a TCP workload's connection sends when the scenario does not say.
pub const DEFAULT_TCP_BYTES: u32 = 1024;
/// The most bytes one TCP workload connection may send.
pub const MAX_TCP_BYTES: u32 = 1 << 20;

/// The ClusterIP of the service declared `index`-th (from 0): `10.96.0.0/16` as a
/// Kubernetes service CIDR, skipping the network address (`10.96.0.1`, `10.96.0.2`, …).
pub fn cluster_ip(index: usize) -> Ipv4Addr {
    let n = u32::try_from(index + 1).expect("a scenario has few services");
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + n)
}
/// The control plane's host: faults may name it (`crash`, `partition`).
pub const ISTIOD: &str = "istiod";
pub const MAX_PODS: usize = 5_000;

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

struct Builder {
    file: String,
    findings: Findings,
    /// Building the no-mesh baseline of a scenario: `mesh: none` whatever it says.
    baseline: bool,
}

/// One `istioctl analyze --suppress` rule: findings with this code about a resource of this
/// kind whose `name.namespace` matches the pattern are dropped.
#[derive(Debug, PartialEq, Eq)]
pub struct Suppress {
    code: String,
    kind: String,
    name: String,
}

impl Suppress {
    fn parse(rule: &str) -> Option<Suppress> {
        let (code, resource) = rule.split_once('=')?;
        let (kind, name) = resource.trim().split_once(' ')?;
        let (code, kind, name) = (code.trim(), kind.trim(), name.trim());
        (!code.is_empty() && !kind.is_empty() && !name.is_empty() && !name.contains(' ')).then(|| Suppress {
            code: code.into(),
            kind: kind.into(),
            name: name.into(),
        })
    }

    /// Whether `f` is about a resource this rule names (findings record `Kind ns/name`).
    pub fn matches(&self, f: &Finding) -> bool {
        let Some((kind, ns_name)) = f.resource.as_deref().and_then(|r| r.split_once(' ')) else {
            return false;
        };
        let Some((ns, name)) = ns_name.split_once('/') else {
            return false;
        };
        glob(&self.code, f.code) && kind == self.kind && glob(&self.name, &format!("{name}.{ns}"))
    }
}

/// The store's view of `rules`: the error findings they name do not block a change.
pub fn suppressed(rules: &Arc<Vec<Suppress>>) -> mesh::control::store::Suppressed {
    let rules = rules.clone();
    Box::new(move |f| rules.iter().any(|r| r.matches(f)))
}

/// `pattern` with `*` matching any run of characters, against the whole of `text`.
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let mut parts: Vec<&str> = parts.collect();
    let Some(last) = parts.pop() else {
        return rest.is_empty();
    };
    for p in parts {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

fn dur(d: &Option<Dur>, default: Duration) -> Duration {
    d.as_ref().map(|d| d.value.0).unwrap_or(default)
}

impl Builder {
    fn err<T>(&mut self, at: &Spanned<T>, field: &str, msg: impl Into<String>) {
        self.findings.push(Finding::error(Pos::of(&self.file, at), code::SCENARIO, field, msg));
    }
    fn not_found<T>(&mut self, at: &Spanned<T>, field: &str, msg: impl Into<String>) {
        self.findings.push(Finding::error(Pos::of(&self.file, at), code::NOT_FOUND, field, msg));
    }

    /// `run_end`: the run's duration, `None` when it is invalid (already reported).
    fn window(&mut self, w: &Option<Spanned<Vec<IstioDuration>>>, field: &str, run_end: Option<Duration>) -> Window {
        match w {
            None => Window::All,
            Some(s) => match self.range(s, field) {
                Some((a, b)) => {
                    if let Some(duration) = run_end
                        && a > duration
                    {
                        self.err(s, field, format!("window starts at {a:?}, after the run ends ({duration:?})"));
                    }
                    Window::Between(a, b)
                }
                None => Window::All,
            },
        }
    }

    fn range(&mut self, s: &Spanned<Vec<IstioDuration>>, field: &str) -> Option<(Duration, Duration)> {
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

        // Services and pods.
        let mut registry = Registry::default();
        let mut pods: Vec<PlannedPod> = Vec::new();
        let mut service_pods: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        // Deployment (`<service>-<group>`) → its pods in index order and its replicas at start.
        let mut deployments: BTreeMap<String, (Vec<usize>, u32)> = BTreeMap::new();
        // The most replicas any scale step asks of a deployment: its pods are planned up front.
        let mut scaled_max: BTreeMap<&str, u32> = BTreeMap::new();
        for sc in def.config.iter().filter_map(|c| c.scale.as_ref()) {
            let m = scaled_max.entry(sc.value.deployment.value.as_str()).or_default();
            *m = (*m).max(sc.value.replicas.value);
        }
        if def.services.is_empty() {
            self.findings.push(Finding::error(
                Pos::file(&self.file),
                code::SCENARIO,
                "services",
                "a scenario needs at least one service",
            ));
        }
        for (si, s) in def.services.iter().enumerate() {
            let f = format!("services[{si}]");
            if !is_dns_label(&s.name.value) {
                self.err(
                    &s.name,
                    &format!("{f}.name"),
                    format!("{:?} is not a DNS label (lower-case letters, digits, '-')", s.name.value),
                );
            }
            if service_pods.contains_key(&s.name.value) {
                self.err(&s.name, &format!("{f}.name"), format!("service {:?} is defined twice", s.name.value));
                continue;
            }
            let namespace = s.namespace.as_ref().map(|n| n.value.clone()).unwrap_or_else(|| "default".into());
            let port = s.port.as_ref().map(|p| p.value).unwrap_or(80);
            if let Some(p) = &s.port
                && p.value == 0
            {
                self.err(p, &format!("{f}.port"), "port must be between 1 and 65535");
            }
            let protocol = match &s.app_protocol {
                None => AppProtocol::Http,
                Some(p) if p.value == "http" => AppProtocol::Http,
                Some(p) if p.value == "tcp" => AppProtocol::Tcp,
                Some(p) => {
                    self.err(
                        p,
                        &format!("{f}.app_protocol"),
                        format!("app_protocol {:?} is not one of http, tcp", p.value),
                    );
                    AppProtocol::Http
                }
            };
            registry.add_service(Service {
                name: s.name.value.clone(),
                namespace: namespace.clone(),
                port,
                protocol,
                cluster_ip: Some(cluster_ip(si)),
            });
            let mut mine = Vec::new();
            if protocol == AppProtocol::Tcp
                && let Some(r) = &s.rate_limit
            {
                self.err(
                    r,
                    &format!("{f}.rate_limit"),
                    "the local rate limit is an HTTP filter (Envoy's local_ratelimit): a tcp service cannot have one",
                );
            }
            let rate_limit = s.rate_limit.as_ref().and_then(|r| self.rate_limit(r, &f));
            let mut groups = BTreeSet::new();
            if s.pods.is_empty() {
                self.err(&s.name, &format!("{f}.pods"), "a service needs at least one pod group");
            }
            for (gi, g) in s.pods.iter().enumerate() {
                let gf = format!("{f}.pods[{gi}]");
                if !is_dns_label(&g.name.value) {
                    self.err(&g.name, &format!("{gf}.name"), format!("{:?} is not a DNS label", g.name.value));
                }
                if !groups.insert(g.name.value.clone()) {
                    self.err(&g.name, &format!("{gf}.name"), format!("pod group {:?} is defined twice", g.name.value));
                }
                if g.replicas.value == 0 {
                    self.err(&g.replicas, &format!("{gf}.replicas"), "replicas must be at least 1");
                }
                let app = self.app(&g.app, &gf);
                if protocol == AppProtocol::Tcp {
                    self.http_only_app_fields(&g.app, &gf);
                }
                let sidecar = mesh && g.sidecar.as_ref().is_none_or(|s| s.value);
                let service_account = match (&g.service_account, &s.service_account) {
                    (Some(sa), _) => {
                        if !is_dns_subdomain(&sa.value) {
                            self.err(
                                sa,
                                &format!("{gf}.service_account"),
                                format!("{:?} is not a valid service account name (a DNS subdomain)", sa.value),
                            );
                        }
                        sa.value.clone()
                    }
                    (None, Some(sa)) => sa.clone(),
                    (None, None) => "default".to_string(),
                };
                let bad_identity = g.bad_identity.as_ref().and_then(|b| {
                    let parsed = BadIdentity::parse(&b.value);
                    if parsed.is_none() {
                        self.err(
                            b,
                            &format!("{gf}.bad_identity"),
                            format!("{:?} is not one of {}", b.value, BadIdentity::NAMES.join(", ")),
                        );
                    } else if !sidecar && !self.baseline {
                        self.err(b, &format!("{gf}.bad_identity"), "a pod without a sidecar has no identity to spoil");
                    }
                    parsed
                });
                let mut labels = g.labels.clone();
                labels.entry("app".into()).or_insert_with(|| s.name.value.clone());
                let deployment = format!("{}-{}", s.name.value, g.name.value);
                let planned =
                    scaled_max.get(deployment.as_str()).map_or(g.replicas.value, |&m| m.max(g.replicas.value));
                let mut group_pods = Vec::new();
                for i in 0..planned {
                    if pods.len() >= MAX_PODS {
                        self.err(
                            &g.replicas,
                            &format!("{gf}.replicas"),
                            format!("a scenario may have at most {MAX_PODS} pods"),
                        );
                        break;
                    }
                    let k = pods.len() as u16;
                    mine.push(pods.len());
                    group_pods.push(pods.len());
                    pods.push(PlannedPod {
                        name: format!("{}-{}-{i}", s.name.value, g.name.value),
                        service: s.name.value.clone(),
                        namespace: namespace.clone(),
                        labels: labels.clone(),
                        node: 0,
                        app_port: FIRST_PORT + 3 * k,
                        inbound_port: FIRST_PORT + 3 * k + 1,
                        outbound_port: FIRST_PORT + 3 * k + 2,
                        app: app.clone(),
                        rate_limit: rate_limit.clone(),
                        service_account: service_account.clone(),
                        sidecar,
                        bad_identity,
                        running_at_start: i < g.replicas.value,
                        protocol,
                    });
                }
                deployments.insert(deployment, (group_pods, g.replicas.value));
            }
            service_pods.insert(s.name.value.clone(), mine);
        }
        // Nodes: pods are dealt round-robin, in declaration order.
        let node_count = match &def.nodes {
            Some(n) if n.value == 0 || n.value > 64 => {
                self.err(n, "nodes", "nodes must be between 1 and 64 (turmoil cost grows with hosts²)");
                1
            }
            Some(n) => n.value as usize,
            None => pods.len().clamp(1, 4),
        };
        let nodes: Vec<String> = (0..node_count).map(|i| format!("node-{i}")).collect();
        let mut pod_index = BTreeMap::new();
        for (i, p) in pods.iter_mut().enumerate() {
            p.node = i % node_count;
            pod_index.insert(p.name.clone(), i);
        }
        for p in &pods {
            registry.add_pod(Pod {
                name: p.name.clone(),
                namespace: p.namespace.clone(),
                service: p.service.clone(),
                labels: p.labels.clone(),
                service_account: p.service_account.clone(),
                host: nodes[p.node].clone(),
                inbound_port: if p.sidecar { p.inbound_port } else { p.app_port },
                sidecar: p.sidecar,
            });
        }

        // Istio resources: inline, then files.
        let inline_docs = generic.get("istio").and_then(|v| v.as_array()).cloned().unwrap_or_default();
        if inline_docs.len() != def.istio.len() {
            self.findings.push(Finding::error(
                Pos::file(&self.file),
                code::SCHEMA,
                "istio",
                "the inline resources cannot be read as plain documents (keys must be strings)",
            ));
        }
        let mut sources: Vec<StoredResource> = def
            .istio
            .into_iter()
            .zip(inline_docs)
            .map(|(resource, doc)| StoredResource { file: self.file.clone(), resource, doc })
            .collect();
        for f in &def.istio_files {
            if let Some(rs) = self.istio_file(base, f, "istio_files") {
                sources.extend(rs);
            }
        }
        let sourced: Vec<Sourced<'_>> =
            sources.iter().map(|r| Sourced { file: &r.file, resource: &r.resource }).collect();
        let (snapshot, cfg_findings) = snapshot::compile(&registry, &sourced);
        self.findings.0.extend(cfg_findings.0.into_iter().filter(|f| !suppress.iter().any(|r| r.matches(f))));
        self.envoy_filter_rate_limits(&snapshot, &mut pods);

        // Workloads.
        let mut workloads = Vec::new();
        let mut workload_names = BTreeMap::new();
        for (wi, w) in def.workload.iter().enumerate() {
            let f = format!("workload[{wi}]");
            let sources: Vec<usize> = if let Some(ps) = service_pods.get(&w.from.value) {
                ps.clone()
            } else if let Some(&p) = pod_index.get(&w.from.value) {
                vec![p]
            } else {
                self.not_found(
                    &w.from,
                    &format!("{f}.from"),
                    format!("{:?} is neither a service nor a pod of the scenario", w.from.value),
                );
                vec![]
            };
            let ns = sources.first().map(|&p| pods[p].namespace.clone()).unwrap_or_else(|| "default".into());
            let to_fqdn = qualify(&w.to.value, &ns);
            if !registry.services.contains_key(&to_fqdn) {
                self.not_found(&w.to, &format!("{f}.to"), format!("{:?} is not a service of the scenario", w.to.value));
            }
            if !(w.rate.value.is_finite() && w.rate.value > 0.0) {
                self.err(
                    &w.rate,
                    &format!("{f}.rate"),
                    format!("rate must be greater than 0 requests per second (got {})", w.rate.value),
                );
            } else if w.rate.value > 100_000.0 {
                self.err(&w.rate, &format!("{f}.rate"), "rate must be at most 100000 requests per second");
            }
            let arrivals = match w.arrivals.as_ref().map(|a| a.value.as_str()) {
                None | Some("poisson") => Arrivals::Poisson,
                Some("constant") => Arrivals::Constant,
                Some(other) => {
                    let at = w.arrivals.as_ref().expect("set");
                    self.err(
                        at,
                        &format!("{f}.arrivals"),
                        format!("arrivals must be `constant` or `poisson`, not {other:?}"),
                    );
                    Arrivals::Poisson
                }
            };
            let start = dur(&w.start, Duration::ZERO);
            let stop = dur(&w.stop, duration);
            if stop <= start && (w.stop.is_some() || run_end.is_some()) {
                let at =
                    w.stop.as_ref().map(|s| Pos::of(&self.file, s)).unwrap_or_else(|| Pos::of(&self.file, &w.from));
                self.findings.push(Finding::error(
                    at,
                    code::SCENARIO,
                    format!("{f}.stop"),
                    format!("workload stops ({stop:?}) before it starts ({start:?})"),
                ));
            }
            if let Some(m) = &w.max_in_flight
                && m.value == 0
            {
                self.err(m, &format!("{f}.max_in_flight"), "max_in_flight must be at least 1");
            }
            if let Some(t) = &w.timeout
                && t.value.0.is_zero()
            {
                self.err(t, &format!("{f}.timeout"), "timeout must be greater than 0");
            }
            let name =
                w.name.as_ref().map(|n| n.value.clone()).unwrap_or_else(|| format!("{}->{}", w.from.value, w.to.value));
            if workload_names.insert(name.clone(), wi).is_some() {
                let at =
                    w.name.as_ref().map(|n| Pos::of(&self.file, n)).unwrap_or_else(|| Pos::of(&self.file, &w.from));
                self.findings.push(Finding::error(
                    at,
                    code::SCENARIO,
                    format!("{f}.name"),
                    format!("workload name {name:?} is used twice"),
                ));
            }
            let method = match &w.method {
                None => http::Method::GET,
                Some(m) => match http::Method::from_bytes(m.value.as_bytes()) {
                    Ok(x) if x == http::Method::CONNECT => {
                        self.err(m, &format!("{f}.method"), "CONNECT is not supported (a workload sends to a path)");
                        x
                    }
                    Ok(x) => x,
                    Err(_) => {
                        self.err(
                            m,
                            &format!("{f}.method"),
                            format!("{:?} is not a valid HTTP method (an HTTP token, like GET or POST)", m.value),
                        );
                        http::Method::GET
                    }
                },
            };
            let headers = match &w.headers {
                None => Vec::new(),
                Some(h) => self.headers(h, &format!("{f}.headers"), RESERVED_REQUEST_HEADERS),
            };
            let path = w.path.clone().unwrap_or_else(|| "/".into());
            if !path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err() {
                let at =
                    w.name.as_ref().map(|n| Pos::of(&self.file, n)).unwrap_or_else(|| Pos::of(&self.file, &w.from));
                self.findings.push(Finding::error(
                    at,
                    code::SCENARIO,
                    format!("{f}.path"),
                    format!("{path:?} is not a request path (it starts with `/`; a query may follow `?`)"),
                ));
            }
            let tcp = self.tcp_workload(w, &f, registry.services.get(&to_fqdn));
            workloads.push(Workload {
                name,
                sources,
                to: w.to.value.clone(),
                to_fqdn,
                path,
                method,
                headers,
                rate: w.rate.value,
                arrivals,
                start,
                stop: stop.min(duration),
                max_in_flight: w.max_in_flight.as_ref().map(|m| m.value).unwrap_or(10_000),
                timeout: dur(&w.timeout, Duration::from_secs(30)),
                tcp,
            });
        }

        // Each service's egress scope: the services its pods' workloads call.
        let mut egress: BTreeMap<String, BTreeSet<String>> =
            registry.services.keys().map(|fqdn| (fqdn.clone(), BTreeSet::new())).collect();
        for w in &workloads {
            for &p in &w.sources {
                let fqdn = qualify(&pods[p].service, &pods[p].namespace);
                egress.entry(fqdn).or_default().insert(w.to_fqdn.clone());
            }
        }

        let suppress = Arc::new(suppress);
        let mut config_steps = self.config_steps(&def.config, generic, base, &registry, &sources, &suppress, run_end);
        self.plan_scaling(&mut config_steps, &def.config, &deployments, &workloads);

        // Faults.
        let mut faults = Vec::new();
        let mut root_steps = Vec::new();
        for (fi, fd) in def.faults.iter().enumerate() {
            let f = format!("faults[{fi}]");
            let at = fd.at.value.0;
            if run_end.is_some_and(|end| at >= end) {
                self.err(
                    &fd.at,
                    &format!("{f}.at"),
                    format!("fault starts at {at:?}, not before the run ends ({duration:?})"),
                );
            }
            let until = fd.for_.as_ref().map(|d| {
                if d.value.0.is_zero() {
                    self.err(
                        d,
                        &format!("{f}.for"),
                        "a fault must last more than 0s (omit `for` to last until the end)",
                    );
                }
                at + d.value.0
            });
            let mut kinds = Vec::new();
            if let Some(a) = &fd.app_errors {
                let pods_ = self.pods(&a.value.pods, &pod_index, &format!("{f}.app_errors.pods"));
                if !(100..=599).contains(&a.value.status) {
                    self.err(
                        a,
                        &format!("{f}.app_errors.status"),
                        format!("HTTP status {} is not in range 100-599", a.value.status),
                    );
                }
                if a.value.rate_ppm > 1_000_000 {
                    self.err(a, &format!("{f}.app_errors.rate_ppm"), "rate_ppm must be at most 1000000");
                }
                kinds.push(FaultKind::AppErrors { pods: pods_, status: a.value.status, rate_ppm: a.value.rate_ppm });
            }
            if let Some(p) = &fd.partition {
                let from = self.members(&p.value.from, &pod_index, &service_pods, &format!("{f}.partition.from"));
                let to = self.members(&p.value.to, &pod_index, &service_pods, &format!("{f}.partition.to"));
                kinds.push(FaultKind::Partition { from, to });
            }
            if let Some(l) = &fd.link_latency {
                let from = self.nodes(&l.value.from, &nodes, &format!("{f}.link_latency.from"));
                let to = self.nodes(&l.value.to, &nodes, &format!("{f}.link_latency.to"));
                kinds.push(FaultKind::LinkLatency { from, to, latency: l.value.latency.0 });
            }
            if let Some(c) = &fd.crash {
                // istiod can crash too: its index comes after the pods'.
                let mut with_istiod = pod_index.clone();
                with_istiod.insert(ISTIOD.to_string(), pod_index.len());
                let pods_ = self.pods(&c.value.pods, &with_istiod, &format!("{f}.crash.pods"));
                kinds.push(FaultKind::Crash { pods: pods_ });
            }
            if fd.ca_outage.is_some() {
                kinds.push(FaultKind::CaOutage);
            }
            // A fault kind given but invalid (already reported) still counts as given.
            let mut invalid_kinds = 0;
            if let Some(r) = &fd.ca_root {
                match RootStep::NAMES.iter().find(|(n, _)| *n == r.value) {
                    Some(&(_, step)) => {
                        kinds.push(FaultKind::CaRoot(step));
                        root_steps.push((at, step, fi, r));
                    }
                    None => {
                        invalid_kinds += 1;
                        self.err(
                            r,
                            &format!("{f}.ca_root"),
                            format!(
                                "{:?} is not a root rotation step: add_root, sign_with_new_root, remove_old_roots",
                                r.value
                            ),
                        )
                    }
                }
                if let Some(d) = &fd.for_ {
                    self.err(d, &format!("{f}.for"), "a root rotation step is instant: remove `for`");
                }
            }
            match kinds.len() + invalid_kinds {
                1 if invalid_kinds == 1 => {}
                1 => faults.push(Fault { at, until, kind: kinds.pop().expect("one") }),
                0 => self.err(&fd.at, &f, "a fault needs one of app_errors, partition, link_latency, crash, ca_outage, ca_root"),
                _ => self.err(&fd.at, &f, "a fault has exactly one of app_errors, partition, link_latency, crash, ca_outage, ca_root: split it into several entries"),
            }
        }

        // Root rotation steps must come, in time, in an order the CA can follow.
        root_steps.sort_by_key(|s| s.0);
        let mut added = false;
        for (_, step, fi, r) in root_steps {
            let field = format!("faults[{fi}].ca_root");
            match step {
                RootStep::AddRoot if added => {
                    self.err(r, &field, "add_root again before sign_with_new_root: one new root at a time")
                }
                RootStep::AddRoot => added = true,
                RootStep::SignWithNewRoot if !added => {
                    self.err(r, &field, "sign_with_new_root needs an add_root before it")
                }
                RootStep::SignWithNewRoot => added = false,
                RootStep::RemoveOldRoots => {}
            }
        }

        // The CA.
        let ca_def = def.ca.as_ref().map(|c| &c.value);
        let max_workload_cert_ttl = ca_def
            .and_then(|c| c.max_workload_cert_ttl.as_ref())
            .map(|d| d.value.0)
            .unwrap_or(mesh::ca::authority::MAX_TTL);
        let workload_cert_ttl = ca_def.and_then(|c| c.workload_cert_ttl.as_ref()).map(|d| d.value.0);
        if let Some(c) = ca_def {
            if let Some(t) = &c.workload_cert_ttl {
                if t.value.0 < Duration::from_secs(60) {
                    self.err(t, "ca.workload_cert_ttl", "a workload certificate must live at least 1m");
                } else if t.value.0 > max_workload_cert_ttl {
                    self.err(
                        t,
                        "ca.workload_cert_ttl",
                        format!(
                            "workload_cert_ttl {} is greater than max_workload_cert_ttl {}: the CA would refuse every request",
                            mesh::ca::format_duration(t.value.0),
                            mesh::ca::format_duration(max_workload_cert_ttl)
                        ),
                    );
                }
            }
            if let Some(m) = &c.max_workload_cert_ttl
                && m.value.0 < Duration::from_secs(60)
            {
                self.err(m, "ca.max_workload_cert_ttl", "max_workload_cert_ttl must be at least 1m");
            }
        }
        let ca = CaPlan { workload_cert_ttl, max_workload_cert_ttl };

        // Expectations.
        let mut expectations = Vec::new();
        for (ei, e) in def.expect.iter().enumerate() {
            let f = format!("expect[{ei}]");
            let mut got = Vec::new();
            if let Some(s) = &e.share {
                let v = &s.value;
                let w = self.workload(&v.workload, &workload_names, &format!("{f}.share.workload"));
                let window = self.window(&v.window, &format!("{f}.share.window"), run_end);
                if !(0.0..=1.0).contains(&v.expected.value) {
                    self.err(&v.expected, &format!("{f}.share.expected"), "expected share must be between 0 and 1");
                }
                if let Some(t) = &v.tolerance
                    && !(t.value > 0.0 && t.value <= 1.0)
                {
                    self.err(t, &format!("{f}.share.tolerance"), "tolerance must be in (0, 1]");
                }
                let dest = w.and_then(|w| workloads.get(w)).map(|w: &Workload| w.to_fqdn.clone()).unwrap_or_default();
                let (members, what) = match (&v.subset, &v.pod) {
                    (Some(sub), None) => {
                        let port = registry.services.get(&dest).map(|s| s.port).unwrap_or(0);
                        let name = snapshot::cluster_name(port, Some(&sub.value), &dest);
                        match snapshot.clusters.get(&name) {
                            Some(c) => {
                                (c.endpoints.iter().map(|e| e.pod.clone()).collect(), format!("subset {}", sub.value))
                            }
                            None => {
                                self.not_found(
                                    sub,
                                    &format!("{f}.share.subset"),
                                    format!(
                                        "Referenced host+subset in destinationrule not found: \"{dest}+{}\"",
                                        sub.value
                                    ),
                                );
                                (BTreeSet::new(), String::new())
                            }
                        }
                    }
                    (None, Some(p)) => {
                        self.pods(std::slice::from_ref(p), &pod_index, &format!("{f}.share.pod"));
                        ([p.value.clone()].into(), format!("pod {}", p.value))
                    }
                    _ => {
                        self.err(
                            s,
                            &format!("{f}.share"),
                            "a share expectation names exactly one of `subset` or `pod`",
                        );
                        (BTreeSet::new(), String::new())
                    }
                };
                if let Some(w) = w {
                    got.push(Expectation::Share {
                        workload: w,
                        pods: members,
                        what,
                        window,
                        expected: v.expected.value,
                        tolerance: v.tolerance.as_ref().map(|t| t.value),
                    });
                }
            }
            if let Some(x) = &e.ejection {
                let v = &x.value;
                self.pods(std::slice::from_ref(&v.pod), &pod_index, &format!("{f}.ejection.pod"));
                if let Some(b) = &v.by {
                    self.pods(std::slice::from_ref(b), &pod_index, &format!("{f}.ejection.by"));
                }
                if v.nth.value == 0 {
                    self.err(&v.nth, &format!("{f}.ejection.nth"), "nth counts from 1");
                }
                let at = self.range(&v.at, &format!("{f}.ejection.at"));
                let lasting = v.lasting.as_ref().and_then(|l| self.range(l, &format!("{f}.ejection.lasting")));
                if let Some(at) = at {
                    got.push(Expectation::Ejection {
                        pod: v.pod.value.clone(),
                        by: v.by.as_ref().map(|b| b.value.clone()),
                        nth: v.nth.value,
                        at,
                        lasting,
                    });
                }
            }
            if let Some(x) = &e.never_ejected {
                self.pods(std::slice::from_ref(&x.value.pod), &pod_index, &format!("{f}.never_ejected.pod"));
                got.push(Expectation::NeverEjected { pod: x.value.pod.value.clone() });
            }
            if let Some(x) = &e.success_rate {
                let v = &x.value;
                let w = self.workload(&v.workload, &workload_names, &format!("{f}.success_rate.workload"));
                let window = self.window(&v.window, &format!("{f}.success_rate.window"), run_end);
                for b in [&v.at_least, &v.at_most].into_iter().flatten() {
                    if !(0.0..=1.0).contains(&b.value) {
                        self.err(b, &format!("{f}.success_rate"), "a success rate bound is between 0 and 1");
                    }
                }
                if v.at_least.is_none() && v.at_most.is_none() {
                    self.err(x, &format!("{f}.success_rate"), "give at_least and/or at_most");
                }
                if let Some(w) = w {
                    got.push(Expectation::SuccessRate {
                        workload: w,
                        window,
                        at_least: v.at_least.as_ref().map(|b| b.value),
                        at_most: v.at_most.as_ref().map(|b| b.value),
                    });
                }
            }
            if let Some(x) = &e.latency {
                let v = &x.value;
                let w = self.workload(&v.workload, &workload_names, &format!("{f}.latency.workload"));
                let window = self.window(&v.window, &format!("{f}.latency.window"), run_end);
                if !(v.percentile.value > 0.0 && v.percentile.value <= 100.0) {
                    self.err(&v.percentile, &format!("{f}.latency.percentile"), "percentile must be in (0, 100]");
                }
                if v.at_least.is_none() && v.at_most.is_none() {
                    self.err(x, &format!("{f}.latency"), "give at_least and/or at_most");
                }
                if let Some(w) = w {
                    got.push(Expectation::Latency {
                        workload: w,
                        window,
                        percentile: v.percentile.value,
                        at_most: v.at_most.as_ref().map(|d| d.value.0),
                        at_least: v.at_least.as_ref().map(|d| d.value.0),
                    });
                }
            }
            if let Some(x) = &e.count {
                let v = &x.value;
                let w = self.workload(&v.workload, &workload_names, &format!("{f}.count.workload"));
                let window = self.window(&v.window, &format!("{f}.count.window"), run_end);
                if let Some(p) = &v.pod {
                    self.pods(std::slice::from_ref(p), &pod_index, &format!("{f}.count.pod"));
                }
                if let Some(p) = &v.received_by {
                    self.pods(std::slice::from_ref(p), &pod_index, &format!("{f}.count.received_by"));
                }
                let connection_security = v.connection_security.as_ref().and_then(|c| match c.value.as_str() {
                    "mutual_tls" => Some(ConnectionSecurity::MutualTls),
                    "none" => Some(ConnectionSecurity::None),
                    other => {
                        self.err(
                            c,
                            &format!("{f}.count.connection_security"),
                            format!("{other:?} is not `mutual_tls` or `none`"),
                        );
                        None
                    }
                });
                let header = v.header.as_ref().and_then(|h| self.header_filter(h, &format!("{f}.count.header")));
                let upstream_header = v
                    .upstream_header
                    .as_ref()
                    .and_then(|h| self.header_filter(h, &format!("{f}.count.upstream_header")));
                if v.at_least.is_none() && v.at_most.is_none() {
                    self.err(x, &format!("{f}.count"), "give at_least and/or at_most");
                }
                if let Some(w) = w {
                    got.push(Expectation::Count {
                        workload: w,
                        window,
                        filter: Box::new(CountFilter {
                            status: v.status,
                            flag: v.flag.clone(),
                            error: v.error.clone(),
                            pod: v.pod.as_ref().map(|p| p.value.clone()),
                            connection_security,
                            upstream_attempts: v.upstream_attempts,
                            header,
                            body: v.body.clone(),
                            upstream_path: v.upstream_path.clone(),
                            upstream_header,
                            received_by: v.received_by.as_ref().map(|p| p.value.clone()),
                        }),
                        at_least: v.at_least,
                        at_most: v.at_most,
                    });
                }
            }
            if let Some(x) = &e.certs {
                let v = &x.value;
                let pods_ = match &v.pod {
                    Some(p) => {
                        self.pods(std::slice::from_ref(p), &pod_index, &format!("{f}.certs.pod"));
                        vec![p.value.clone()]
                    }
                    None => pods.iter().map(|p| p.name.clone()).collect(),
                };
                if !CERT_EVENTS.contains(&v.event.value.as_str()) {
                    self.err(
                        &v.event,
                        &format!("{f}.certs.event"),
                        format!("{:?} is not a certificate event: {}", v.event.value, CERT_EVENTS.join(", ")),
                    );
                }
                let window = self.window(&v.window, &format!("{f}.certs.window"), run_end);
                if v.at_least.is_none() && v.at_most.is_none() {
                    self.err(x, &format!("{f}.certs"), "give at_least and/or at_most");
                }
                got.push(Expectation::Certs {
                    pods: pods_,
                    event: v.event.value.clone(),
                    window,
                    at_least: v.at_least,
                    at_most: v.at_most,
                });
            }
            if let Some(m) = &e.metric {
                match MetricQuery::parse(&m.value) {
                    Ok(q) => got.push(Expectation::Metric(q)),
                    Err(msg) => self.err(m, &format!("{f}.metric"), msg),
                }
            }
            if let Some(t) = &e.traces {
                if t.value == "complete" {
                    got.push(Expectation::TracesComplete);
                } else {
                    self.err(
                        t,
                        &format!("{f}.traces"),
                        format!("traces: {:?} is not known (write `traces: complete`)", t.value),
                    );
                }
            }
            if let Some(x) = &e.latency_overhead {
                let v = &x.value;
                let w = self.workload(&v.workload, &workload_names, &format!("{f}.latency_overhead.workload"));
                let window = self.window(&v.window, &format!("{f}.latency_overhead.window"), run_end);
                if !(v.percentile.value > 0.0 && v.percentile.value <= 100.0) {
                    self.err(
                        &v.percentile,
                        &format!("{f}.latency_overhead.percentile"),
                        "percentile must be in (0, 100]",
                    );
                }
                if v.at_least.is_none() && v.at_most.is_none() {
                    self.err(x, &format!("{f}.latency_overhead"), "give at_least and/or at_most");
                }
                if !mesh && !self.baseline {
                    self.err(
                        x,
                        &format!("{f}.latency_overhead"),
                        "with mesh: none there is no mesh overhead to measure",
                    );
                }
                if let Some(w) = w {
                    got.push(Expectation::LatencyOverhead {
                        workload: w,
                        window,
                        percentile: v.percentile.value,
                        at_most: v.at_most.as_ref().map(|d| d.value.0),
                        at_least: v.at_least.as_ref().map(|d| d.value.0),
                    });
                }
            }
            if let Some(x) = &e.converged {
                let v = &x.value;
                if v.within.value.0.is_zero() {
                    self.err(&v.within, &format!("{f}.converged.within"), "within must be greater than 0");
                }
                got.push(Expectation::Converged { after: v.after.value.0, within: v.within.value.0 });
            }
            if let Some(x) = &e.events {
                let v = &x.value;
                if !EVENT_KINDS.contains(&v.kind.value.as_str()) {
                    self.err(
                        &v.kind,
                        &format!("{f}.events.kind"),
                        format!("unknown event kind {:?} (one of {})", v.kind.value, EVENT_KINDS.join(", ")),
                    );
                }
                if v.at_least.is_none() && v.at_most.is_none() {
                    self.err(x, &format!("{f}.events"), "give at_least and/or at_most");
                }
                let window = self.window(&v.window, &format!("{f}.events.window"), run_end);
                got.push(Expectation::Events {
                    kind: v.kind.value.clone(),
                    window,
                    detail: v.detail.clone(),
                    at_least: v.at_least,
                    at_most: v.at_most,
                });
            }
            let kinds = [
                e.converged.is_some(),
                e.events.is_some(),
                e.share.is_some(),
                e.ejection.is_some(),
                e.never_ejected.is_some(),
                e.success_rate.is_some(),
                e.latency.is_some(),
                e.count.is_some(),
                e.certs.is_some(),
                e.metric.is_some(),
                e.traces.is_some(),
                e.latency_overhead.is_some(),
            ]
            .iter()
            .filter(|&&k| k)
            .count();
            if kinds != 1 {
                self.findings.push(Finding::error(Pos::file(&self.file), code::SCENARIO, f, format!(
                    "an expectation has exactly one of share, ejection, never_ejected, success_rate, latency, count, certs, metric, traces, latency_overhead, converged, events (found {kinds})"
                )));
            } else {
                expectations.extend(got);
            }
        }

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

    /// The config steps, checked: each applies to the config as the steps before it left
    /// it, and must validate there (as the control plane will check it during the run).
    #[allow(clippy::too_many_arguments)]
    fn config_steps(
        &mut self,
        defs: &[ConfigStepDef],
        generic: &serde_json::Value,
        base: &Path,
        registry: &Registry,
        initial: &[StoredResource],
        suppress: &Arc<Vec<Suppress>>,
        run_end: Option<Duration>,
    ) -> Vec<ConfigStep> {
        let mut steps = Vec::new();
        for (i, d) in defs.iter().enumerate() {
            let f = format!("config[{i}]");
            let at = d.at.value.0;
            if run_end.is_some_and(|end| at >= end) {
                self.err(&d.at, &format!("{f}.at"), "a config step must happen before the run ends");
            }
            let mut changes = Vec::new();
            if let Some(rs) = &d.apply {
                let docs = generic
                    .get("config")
                    .and_then(|c| c.get(i))
                    .and_then(|c| c.get("apply"))
                    .and_then(|a| a.as_array())
                    .cloned()
                    .unwrap_or_default();
                if docs.len() != rs.len() {
                    self.err(&d.at, &format!("{f}.apply"), "the resources cannot be read as plain documents");
                }
                let stored = rs
                    .iter()
                    .cloned()
                    .zip(docs)
                    .map(|(resource, doc)| StoredResource { file: self.file.clone(), resource, doc })
                    .collect();
                changes.push(ConfigChange::Apply(stored));
            }
            if let Some(file) = &d.apply_file
                && let Some(rs) = self.istio_file(base, file, &format!("{f}.apply_file"))
            {
                changes.push(ConfigChange::Apply(rs));
            }
            if let Some(dels) = &d.delete {
                let keys = dels
                    .iter()
                    .map(|x| {
                        let key = ResourceKey {
                            kind: x.kind.value.clone(),
                            namespace: x.namespace.clone().unwrap_or_else(|| "default".into()),
                            name: x.name.clone(),
                        };
                        (key, Pos::of(&self.file, &x.kind))
                    })
                    .collect();
                changes.push(ConfigChange::Delete(keys));
            }
            if let Some(sc) = &d.scale {
                let (deployment, replicas) = (sc.value.deployment.value.clone(), sc.value.replicas.value);
                changes.push(ConfigChange::Scale { deployment, replicas, start: Vec::new(), stop: Vec::new() });
            }
            let given = [d.apply.is_some(), d.apply_file.is_some(), d.delete.is_some(), d.scale.is_some()];
            if given.iter().filter(|&&x| x).count() != 1 {
                self.err(&d.at, &f, "a config step has exactly one of apply, apply_file, delete, scale");
            }
            if let Some(change) = changes.pop() {
                steps.push(ConfigStep { at, change });
            }
        }
        steps.sort_by_key(|s| s.at);
        // Replay the steps on a store holding the initial config (when that is valid).
        if let Ok(store) = Store::new(registry.clone(), initial.to_vec(), BTreeMap::new(), suppressed(suppress)) {
            for s in &steps {
                let result = match &s.change {
                    ConfigChange::Apply(rs) => store.apply(rs.clone()),
                    ConfigChange::Delete(keys) => store.delete(keys),
                    ConfigChange::Scale { .. } => continue,
                };
                if let Err(findings) = result {
                    self.findings.0.extend(
                        findings.0.into_iter().filter(|f| {
                            f.level == mesh::config::Level::Error && !suppress.iter().any(|r| r.matches(f))
                        }),
                    );
                }
            }
        }
        steps
    }

    /// Checks each `scale` step and works out, in time order, which pods it starts (the
    /// next indices up) and stops (the highest running ones, as a StatefulSet would).
    fn plan_scaling(
        &mut self,
        steps: &mut [ConfigStep],
        defs: &[ConfigStepDef],
        deployments: &BTreeMap<String, (Vec<usize>, u32)>,
        workloads: &[Workload],
    ) {
        for (i, d) in defs.iter().enumerate() {
            let Some(sc) = &d.scale else { continue };
            let f = format!("config[{i}].scale");
            let name = &sc.value.deployment;
            match deployments.get(&name.value) {
                None => {
                    let known: Vec<&str> = deployments.keys().map(String::as_str).collect();
                    self.err(
                        name,
                        &format!("{f}.deployment"),
                        format!(
                            "no deployment {:?} (pod groups are <service>-<group>: {})",
                            name.value,
                            known.join(", ")
                        ),
                    );
                }
                Some((pods, _)) if workloads.iter().any(|w| w.sources.iter().any(|p| pods.contains(p))) => self.err(
                    name,
                    &format!("{f}.deployment"),
                    format!(
                        "{:?} sends a workload's requests: only deployments that no workload sends from can scale",
                        name.value
                    ),
                ),
                Some(_) => {}
            }
            if sc.value.replicas.value > 100 {
                self.err(&sc.value.replicas, &format!("{f}.replicas"), "replicas must be at most 100");
            }
        }
        let mut running: BTreeMap<&str, u32> = deployments.iter().map(|(k, (_, r))| (k.as_str(), *r)).collect();
        for step in steps.iter_mut() {
            let ConfigChange::Scale { deployment, replicas, start, stop } = &mut step.change else { continue };
            let (Some((pods, _)), Some(now)) =
                (deployments.get(deployment.as_str()), running.get_mut(deployment.as_str()))
            else {
                continue;
            };
            let (from, to) = (*now as usize, (*replicas as usize).min(pods.len()));
            if to > from {
                start.extend(&pods[from..to]);
            } else {
                stop.extend(pods[to..from].iter().rev());
            }
            *now = to as u32;
        }
    }

    /// Reads and parses a file of Istio resources named relative to the scenario.
    fn istio_file(&mut self, base: &Path, f: &Spanned<String>, field: &str) -> Option<Vec<StoredResource>> {
        let path: PathBuf = base.join(&f.value);
        let shown = path.display().to_string();
        match std::fs::read_to_string(&path) {
            Ok(text) => match mesh::control::store::parse(&shown, &text) {
                Ok(rs) => Some(rs),
                Err(e) => {
                    self.findings.push(*e);
                    None
                }
            },
            Err(e) => {
                self.not_found(f, field, format!("cannot read {shown}: {e}"));
                None
            }
        }
    }

    fn proxy_cost(&mut self, p: &ProxyCostDef) -> ProxyCost {
        let d = ProxyCost::default();
        let mut get = |l: &Option<LatencyDef>, f: &str, default: Latency| match l {
            Some(l) => self.latency(l, f, default),
            None => default,
        };
        ProxyCost {
            outbound: get(&p.outbound, "proxy_cost.outbound", d.outbound),
            inbound: get(&p.inbound, "proxy_cost.inbound", d.inbound),
            tls_handshake: get(&p.tls_handshake, "proxy_cost.tls_handshake", d.tls_handshake),
        }
    }

    /// The latency distribution written at field `f`; `default` when none is given.
    fn latency(&mut self, l: &LatencyDef, f: &str, default: Latency) -> Latency {
        let set = [l.constant.is_some(), l.uniform.is_some(), l.exponential.is_some(), l.lognormal.is_some()]
            .iter()
            .filter(|&&x| x)
            .count();
        let latency = if let Some(c) = &l.constant {
            Latency::Constant(c.value.0)
        } else if let Some(u) = &l.uniform {
            match self.range(u, &format!("{f}.uniform")) {
                Some((a, b)) => Latency::Uniform(a, b),
                None => Latency::Constant(Duration::ZERO),
            }
        } else if let Some(e) = &l.exponential {
            Latency::Exponential(e.value.0)
        } else if let Some(n) = &l.lognormal {
            if n.value.p99 < n.value.median || n.value.median.0.is_zero() {
                self.err(n, &format!("{f}.lognormal"), "lognormal needs 0 < median <= p99");
            }
            Latency::LogNormal { median: n.value.median.0, p99: n.value.p99.0 }
        } else {
            default
        };
        if set > 1 {
            self.findings.push(Finding::error(
                Pos::file(&self.file),
                code::SCENARIO,
                f,
                "latency has exactly one of constant, uniform, exponential, lognormal",
            ));
        }
        latency
    }

    /// A pod group of a TCP service: its app is an echo server, so the fields that shape
    /// HTTP responses are errors (`error_rate_ppm` stays: a connection reset).
    fn http_only_app_fields(&mut self, a: &AppDef, f: &str) {
        let why = "applies to HTTP responses: the app of a tcp service echoes bytes (only latency and error_rate_ppm, a reset, apply)";
        if let Some(x) = &a.error_status {
            self.err(x, &format!("{f}.app.error_status"), why);
        }
        if let Some(x) = &a.fail_attempts {
            self.err(x, &format!("{f}.app.fail_attempts"), why);
        }
        if let Some(x) = &a.response_headers {
            self.err(x, &format!("{f}.app.response_headers"), why);
        }
    }

    /// The TCP side of a workload: `Some` when it calls a TCP service (its HTTP-only
    /// fields are then errors), and `bytes` is an error on an HTTP workload.
    fn tcp_workload(&mut self, w: &WorkloadDef, f: &str, to: Option<&Service>) -> Option<TcpWorkload> {
        let Some(svc) = to.filter(|s| s.protocol == AppProtocol::Tcp) else {
            if let Some(b) = &w.bytes {
                self.err(
                    b,
                    &format!("{f}.bytes"),
                    "bytes applies to a workload over a tcp service (app_protocol: tcp)",
                );
            }
            return None;
        };
        let why = |field: &str| {
            format!("{field} is HTTP-only: {} is a tcp service, a workload opens connections to it", svc.name)
        };
        if let Some(m) = &w.method {
            self.err(m, &format!("{f}.method"), why("method"));
        }
        if let Some(h) = &w.headers {
            self.err(h, &format!("{f}.headers"), why("headers"));
        }
        if w.path.is_some() {
            self.err(&w.to, &format!("{f}.path"), why("path"));
        }
        let bytes = w.bytes.as_ref().map_or(DEFAULT_TCP_BYTES, |b| b.value);
        if let Some(b) = &w.bytes
            && !(1..=MAX_TCP_BYTES).contains(&b.value)
        {
            self.err(b, &format!("{f}.bytes"), format!("bytes must be between 1 and {MAX_TCP_BYTES}"));
        }
        let vip = SocketAddr::from((svc.cluster_ip.expect("every scenario service has a ClusterIP"), svc.port));
        Some(TcpWorkload { bytes, vip })
    }

    fn app(&mut self, a: &AppDef, f: &str) -> AppModel {
        let latency =
            self.latency(&a.latency, &format!("{f}.app.latency"), Latency::Constant(Duration::from_millis(1)));
        if let Some(r) = &a.error_rate_ppm
            && r.value > 1_000_000
        {
            self.err(r, &format!("{f}.app.error_rate_ppm"), "error_rate_ppm must be at most 1000000");
        }
        if let Some(s) = &a.error_status
            && !(100..=599).contains(&s.value)
        {
            self.err(s, &format!("{f}.app.error_status"), format!("HTTP status {} is not in range 100-599", s.value));
        }
        AppModel {
            latency,
            error_rate_ppm: a.error_rate_ppm.as_ref().map(|r| r.value).unwrap_or(0),
            error_status: a.error_status.as_ref().map(|s| s.value).unwrap_or(500),
            fail_attempts: a.fail_attempts.as_ref().map(|fa| {
                if !(100..=599).contains(&fa.value.status) {
                    self.err(
                        fa,
                        &format!("{f}.app.fail_attempts.status"),
                        format!("HTTP status {} is not in range 100-599", fa.value.status),
                    );
                }
                (fa.value.count, fa.value.status)
            }),
            response_headers: match &a.response_headers {
                None => Vec::new(),
                Some(h) => self.headers(h, &format!("{f}.app.response_headers"), RESERVED_RESPONSE_HEADERS),
            },
        }
    }

    /// Header names and values checked and lower-cased; `reserved` names are refused
    /// (meshsim sets them itself).
    fn headers(
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

    fn header_filter(&mut self, h: &Spanned<String>, field: &str) -> Option<HeaderFilter> {
        match HeaderFilter::parse(&h.value) {
            Ok(x) => Some(x),
            Err(e) => {
                self.err(h, field, e);
                None
            }
        }
    }

    /// The `suppress` rules, each checked for istioctl's `CODE=Kind name.namespace` form.
    fn suppress_rules(&mut self, raw: &[Spanned<String>]) -> Vec<Suppress> {
        let mut out = Vec::new();
        for (i, r) in raw.iter().enumerate() {
            match Suppress::parse(&r.value) {
                Some(s) => out.push(s),
                None => self.err(r, &format!("suppress[{i}]"), format!(
                    "{:?} is not a suppression rule: write CODE=Kind name.namespace (istioctl analyze --suppress), e.g. \"IST0101=VirtualService reviews.default\"",
                    r.value
                )),
            }
        }
        out
    }

    /// Gives each pod the local rate limit an EnvoyFilter selects it for. meshsim runs one
    /// local rate limit per proxy: a pod selected by two, or by one and its service's
    /// `rate_limit`, is an error (reported once per filter).
    fn envoy_filter_rate_limits(&mut self, snapshot: &mesh::snapshot::Snapshot, pods: &mut [PlannedPod]) {
        let mut reported = BTreeSet::new();
        for p in pods.iter_mut() {
            let mut filters = snapshot.inbound_rate_limits_for(&p.namespace, &p.labels);
            let Some(first) = filters.next() else { continue };
            let clash = match (filters.next(), &p.rate_limit) {
                (Some(second), _) => Some((second, format!("{} also selects it", first.resource))),
                (None, Some(_)) => Some((first, format!("its service {:?} has a `rate_limit` too", p.service))),
                (None, None) => None,
            };
            match clash {
                Some((at, why)) => {
                    if reported.insert(at.resource.clone()) {
                        self.findings.push(Finding::error(
                            at.pos.clone(),
                            code::SCENARIO,
                            "spec.configPatches",
                            format!(
                                "{} selects pod {}, but {why}: meshsim runs one local rate limit per proxy",
                                at.resource, p.name
                            ),
                        ));
                    }
                }
                None => p.rate_limit = Some(first.filter.config.clone()),
            }
        }
    }

    /// The scenario's rate-limit form into Envoy's filter config, checked by its rules.
    fn rate_limit(&mut self, r: &Spanned<RateLimitDef>, f: &str) -> Option<LocalRateLimitConfig> {
        let d = &r.value;
        let pct = |p: Option<f64>| FractionalPercent {
            numerator: (p.unwrap_or(100.0).clamp(0.0, 100.0) * 10_000.0).round() as u32,
            denominator: Denominator::Million,
        };
        for (name, p) in [("enabled_percent", d.enabled_percent), ("enforced_percent", d.enforced_percent)] {
            if let Some(p) = p
                && !(0.0..=100.0).contains(&p)
            {
                self.err(r, &format!("{f}.rate_limit.{name}"), format!("percentage {p} is out of range 0..100"));
            }
        }
        let mut headers = Vec::new();
        for (k, v) in &d.response_headers_to_add {
            match (http::HeaderName::try_from(k.as_str()), http::HeaderValue::try_from(v.as_str())) {
                (Ok(k), Ok(v)) => headers.push((k, v)),
                _ => {
                    self.err(r, &format!("{f}.rate_limit.response_headers_to_add"), format!("invalid header {k}: {v}"))
                }
            }
        }
        let cfg = LocalRateLimitConfig {
            max_tokens: d.max_tokens,
            tokens_per_fill: d.tokens_per_fill,
            fill_interval: d.fill_interval.0,
            status: d.status,
            filter_enabled: pct(d.enabled_percent),
            filter_enforced: pct(d.enforced_percent),
            response_headers_to_add: headers,
        };
        match LocalRateLimit::new(cfg.clone(), Duration::ZERO) {
            Ok(_) => Some(cfg),
            Err(e) => {
                self.err(r, &format!("{f}.rate_limit"), e);
                None
            }
        }
    }

    /// Indices of the pods `names` lists. A pod listed twice is an error rather than
    /// silently deduplicated: it is most likely a typo for another pod.
    fn pods(&mut self, names: &[Spanned<String>], index: &BTreeMap<String, usize>, field: &str) -> Vec<usize> {
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

    fn members(
        &mut self,
        names: &[Spanned<String>],
        index: &BTreeMap<String, usize>,
        services: &BTreeMap<String, Vec<usize>>,
        field: &str,
    ) -> Vec<usize> {
        let mut out = BTreeSet::new();
        for n in names {
            if let Some(ps) = services.get(&n.value) {
                out.extend(ps.iter().copied());
            } else if n.value == ISTIOD {
                out.insert(index.len());
            } else if let Some(&i) = index.get(&n.value) {
                out.insert(i);
            } else {
                self.not_found(n, field, format!("{:?} is neither a service nor a pod of the scenario", n.value));
            }
        }
        out.into_iter().collect()
    }

    fn nodes(&mut self, names: &[Spanned<String>], nodes: &[String], field: &str) -> Vec<usize> {
        let mut out = Vec::new();
        for n in names {
            match nodes.iter().position(|x| *x == n.value) {
                Some(i) => out.push(i),
                None => self.not_found(
                    n,
                    field,
                    format!("node {:?} does not exist (nodes are node-0 … node-{})", n.value, nodes.len() - 1),
                ),
            }
        }
        out
    }

    fn workload(&mut self, name: &Spanned<String>, names: &BTreeMap<String, usize>, field: &str) -> Option<usize> {
        let found = names.get(&name.value).copied();
        if found.is_none() {
            self.not_found(name, field, format!("workload {:?} is not defined", name.value));
        }
        found
    }
}

/// A Kubernetes object name (DNS-1123 subdomain): labels joined by dots.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    #[test]
    fn cluster_ips_count_up_from_10_96_0_1() {
        use std::net::Ipv4Addr;
        assert_eq!(super::cluster_ip(0), Ipv4Addr::new(10, 96, 0, 1));
        assert_eq!(super::cluster_ip(254), Ipv4Addr::new(10, 96, 0, 255));
        assert_eq!(super::cluster_ip(255), Ipv4Addr::new(10, 96, 1, 0));
    }

    use super::*;

    fn finding(code: &'static str, resource: &str) -> Finding {
        let mut f = Finding::error(Pos::file("x.yaml"), code, "spec", "m");
        f.resource = Some(resource.to_string());
        f
    }

    #[test]
    fn glob_star_matches_any_run() {
        assert!(glob("reviews.default", "reviews.default"));
        assert!(!glob("reviews.default", "reviews.defaults"));
        assert!(glob("*.default", "reviews.default"));
        assert!(glob("rev*.*", "reviews.default"));
        assert!(glob("*", ""));
        assert!(!glob("a*b", "ab-c"));
        assert!(glob("a*b*b", "abb"));
        assert!(!glob("a*bb*b", "abb"));
    }

    #[test]
    fn suppress_rules_name_code_kind_and_name_dot_namespace() {
        let r = Suppress::parse("IST0101=VirtualService reviews.default").expect("valid");
        assert!(r.matches(&finding("IST0101", "VirtualService default/reviews")));
        assert!(!r.matches(&finding("IST0130", "VirtualService default/reviews")));
        assert!(!r.matches(&finding("IST0101", "DestinationRule default/reviews")));
        assert!(!r.matches(&finding("IST0101", "VirtualService prod/reviews")));
        let any_ns = Suppress::parse("IST0101=VirtualService reviews.*").expect("valid");
        assert!(any_ns.matches(&finding("IST0101", "VirtualService prod/reviews")));
        // A finding about no resource (a scenario field) is never suppressed.
        let mut f = finding("IST0101", "x");
        f.resource = None;
        assert!(!any_ns.matches(&f));
    }

    #[test]
    fn malformed_suppress_rules_are_refused() {
        for bad in ["IST0101", "IST0101=VirtualService", "=VirtualService a.b", "IST0101=VirtualService a b"] {
            assert_eq!(Suppress::parse(bad), None, "{bad}");
        }
    }
}
