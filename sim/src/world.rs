//! The world: builds a turmoil simulation from a [`Plan`] and runs it.
//!
//! Hosts are nodes (`node-0`, …); each node runs its pods (app + sidecar) and the
//! workload generator for requests whose source pod it holds. The driver loop steps
//! the simulation (network, then hosts, as turmoil does) and fires the fault schedule
//! between steps, so every fault happens at a tick boundary and is the same on every
//! run. A pod without a sidecar runs only its app.
//!
//! The host `istiod` runs the control plane (see [`istiod`]): every sidecar connects to
//! it through the seam and runs only what it pushes. The world boots for
//! [`BOOT`](crate::net::BOOT) of simulated time before the scenario's clock starts, so
//! every sidecar has ACKed its first config (and holds its first certificate) before
//! traffic and faults begin. A crash of `istiod` stops both of its services.
//!
//! The same host runs the mesh CA ([`CaServer`] on [`CA_PORT`]); every sidecar pod runs
//! a certificate agent that asks it for the pod's certificate over the seam, with the pod's
//! bootstrap credential, renews it, and installs each chain and trust bundle into the
//! sidecar's identity store, which mTLS reads per handshake (its TLS randomness seeded,
//! `crypto`). A pod with a `bad_identity` runs no agent: its material is made once
//! (`bad_identity`). The CA's outage and root rotation steps are faults.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use mesh::ca::service::{CA_PORT, CaServer};
use mesh::control::{self, ControlPlane, Store};
use mesh::net::{Clock, Net, SystemClock};
use mesh::proxy::metrics::Series;
use mesh::proxy::{ProcessingCost, Sidecar};
use rustls::crypto::CryptoProvider;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::cost::SidecarCost;
use crate::crypto::seeded_provider;
use crate::driver::{Command, Context, Driver, Effects, Prepared, prepare};
use crate::net::{BOOT, Faults, Local, SimClock, SimNet};
use crate::pod::{PodSet, Pods, Seam, pod_metrics};
use crate::recorder::{Event, Record, Recorder};
use crate::scenario::{ISTIOD, Plan};
use crate::seed::sub_seed;
use crate::workload::{Generator, Planned};

/// How far past its duration a run may go to let in-flight requests finish.
pub const DRAIN_SLACK: Duration = Duration::from_secs(5);
/// Fixed simulated epoch (2027-01-15T08:00:00Z): certificates and logs never see the real date.
pub const EPOCH_SECS: u64 = 1_800_000_000;

#[derive(Debug)]
pub struct RunOutput {
    pub records: Vec<Record>,
    pub events: Vec<Event>,
    pub issued: usize,
    /// Each pod's metric series at the end (summed over the pod's restarts, as a
    /// Prometheus `increase` over them would).
    pub metrics: BTreeMap<String, Vec<Series>>,
    /// Simulated time when the run stopped.
    pub sim_elapsed: Duration,
    /// Wall time the simulation took.
    pub wall: Duration,
    /// The run of the plan's no-mesh baseline, when it has one.
    pub baseline: Option<Box<RunOutput>>,
    /// Where it ran.
    pub target: crate::target::Target,
    /// What the envoy target adds: the Envoy version, each proxy's config.
    pub envoy: Option<crate::envoy::EnvoyInfo>,
}

#[derive(Debug)]
pub enum RunError {
    /// turmoil reported an error (a host's software failed).
    Sim(String),
    /// A real world could not be set up or booted (an address in use, a boot that did not
    /// finish): an operating error, not the mesh's.
    Setup(String),
    /// Requests without an outcome: the "nothing lost" invariant broke.
    Lost { missing: Vec<u64> },
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Sim(e) => write!(f, "simulation failed: {e}"),
            RunError::Setup(e) => write!(f, "real mode: {e}"),
            RunError::Lost { missing } => write!(
                f,
                "{} request(s) have no recorded outcome (first ids: {:?}): every issued request must end in exactly one outcome",
                missing.len(),
                &missing[..missing.len().min(10)]
            ),
        }
    }
}

struct Node {
    pods: Vec<usize>,
    plan: Arc<Plan>,
    /// What every pod shares, and how this world's pods reach the network.
    pods_: Arc<Pods>,
    seam: Arc<SimSeam>,
    generator: Arc<Generator<SimSeam>>,
    commands: Mutex<Option<mpsc::UnboundedReceiver<Command>>>,
    /// Every sidecar started on any node, with its pod (metrics are read at the end).
    started: Arc<Mutex<Vec<Arc<Sidecar<SimNet>>>>>,
}

/// The simulator's seam: turmoil sockets with the pod-level fault table, simulated time,
/// seeded TLS randomness and the proxy cost model.
pub struct SimSeam {
    plan: Arc<Plan>,
    seed: u64,
    faults: Arc<Faults>,
    local: Arc<Local>,
}

impl Seam for SimSeam {
    type Net = SimNet;
    fn net(&self, pod: usize) -> SimNet {
        SimNet::new(pod, self.plan.pods[pod].node, self.faults.clone(), self.local.clone())
    }
    fn clock(&self) -> Arc<dyn Clock> {
        Arc::new(SimClock::new())
    }
    fn tls_provider(&self, pod: usize) -> Arc<CryptoProvider> {
        seeded_provider(sub_seed(self.seed, "tls", pod as u64))
    }
    fn cost(&self, pod: usize) -> Option<Arc<dyn ProcessingCost>> {
        Some(Arc::new(SidecarCost::new(self.plan.proxy_cost.clone(), sub_seed(self.seed, "proxy_cost", pod as u64))))
    }
    fn bind_failed(&self, _pod: usize, port: u16, error: std::io::Error) {
        panic!("bug: pod port {port} is not free when its pod starts: {error}")
    }
}

impl Node {
    async fn run(self: Arc<Self>) -> turmoil::Result {
        let mut set = PodSet::new(self.pods_.clone(), self.seam.clone(), self.started.clone());
        // Pods that only a scale step starts wait for its restart command.
        for &pod in self.pods.iter().filter(|&&p| self.plan.pods[p].running_at_start) {
            set.start(pod);
        }
        tokio::spawn(self.generator.clone().run(crate::net::scenario_start()));
        let Some(mut rx) = self.commands.lock().expect("commands lock").take() else {
            return Ok(());
        };
        while let Some(cmd) = rx.recv().await {
            set.handle(cmd).await;
        }
        std::future::pending().await
    }
}

/// Binds `port`. Every pod port is unique to its pod, and a restarted pod binds only after
/// its old tasks, which held the old listeners, have finished: the port is free.
async fn bind(net: SimNet, port: u16) -> <SimNet as Net>::Listener {
    match net.bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))).await {
        Ok(l) => l,
        Err(e) => panic!("bug: pod port {port} is not free when its pod starts: {e}"),
    }
}

/// What the control-plane host runs: the control plane and the CA.
struct Istiod {
    store: Arc<Store>,
    ca: Arc<CaServer>,
    /// Its index in the fault table (after the pods).
    index: usize,
    faults: Arc<Faults>,
    local: Arc<Local>,
    recorder: Arc<Recorder>,
    /// Crash and restart of istiod (its index), like a node's for its pods.
    commands: Mutex<Option<mpsc::UnboundedReceiver<Command>>>,
}

impl Istiod {
    /// istiod's services, started (again) as a fresh process; they share the store, as
    /// istiod's state lives in the Kubernetes API server.
    fn start(&self) -> JoinHandle<()> {
        // Not a node: its "node" index is the one after the nodes'.
        let net = SimNet::new(self.index, self.local.node_count(), self.faults.clone(), self.local.clone());
        let cp = ControlPlane::new(self.store.clone(), Arc::new(SimClock::new()), self.recorder.clone());
        let ca = self.ca.clone();
        tokio::spawn(async move {
            let (push, csr) = (bind(net.clone(), control::PORT).await, bind(net, CA_PORT).await);
            let _ = tokio::join!(cp.serve(push), ca.serve(csr, Arc::new(SimClock::new())));
        })
    }

    async fn run(self: Arc<Self>) -> turmoil::Result {
        let Some(mut rx) = self.commands.lock().expect("commands lock").take() else {
            drop(self.start());
            return Ok(());
        };
        crate::driver::obey(&mut rx, || self.start()).await;
        std::future::pending().await
    }
}

/// Adds the host `istiod`: the control plane serving `store` on [`control::PORT`] and
/// the CA `ca` on [`CA_PORT`]. Its
/// IP is known to the seam, so partitions and crashes can name it (fault-table index
/// `index`, after the pods'). Returns where its crash and restart commands go.
fn istiod(
    sim: &mut turmoil::Sim<'_>,
    store: Arc<Store>,
    ca: &Arc<CaServer>,
    index: usize,
    faults: &Arc<Faults>,
    local: &Arc<Local>,
    recorder: &Arc<Recorder>,
) -> mpsc::UnboundedSender<Command> {
    let (tx, rx) = mpsc::unbounded_channel();
    let host = Arc::new(Istiod {
        store,
        ca: ca.clone(),
        index,
        faults: faults.clone(),
        local: local.clone(),
        recorder: recorder.clone(),
        commands: Mutex::new(Some(rx)),
    });
    sim.host(ISTIOD, move || host.clone().run());
    tx
}

/// Runs `plan` with `seed` to completion, after its no-mesh baseline (same seed) when
/// it has one.
pub fn run(plan: Arc<Plan>, seed: u64) -> Result<RunOutput, RunError> {
    let baseline = match &plan.baseline {
        Some(b) => Some(Box::new(run_world(b.clone(), seed)?)),
        None => None,
    };
    let mut out = run_world(plan, seed)?;
    out.baseline = baseline;
    Ok(out)
}

fn run_world(plan: Arc<Plan>, seed: u64) -> Result<RunOutput, RunError> {
    let wall = SystemClock::new();
    let Prepared { requests, recorder, faults, ca, bad, store, hard_stop } =
        prepare(&plan, seed, Duration::from_secs(EPOCH_SECS));
    let issued = requests.len();
    let istiod_index = plan.pods.len();
    let local = Arc::new(Local::default());

    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(UNIX_EPOCH + Duration::from_secs(EPOCH_SECS))
        .simulation_duration(BOOT + hard_stop + Duration::from_secs(1))
        .tick_duration(plan.tick)
        .min_message_latency(plan.latency_min)
        .max_message_latency(plan.latency_max)
        .tcp_capacity(4096)
        .build();

    let in_flight = Arc::new((0..plan.workloads.len()).map(|_| AtomicU32::new(0)).collect::<Vec<_>>());
    let started = Arc::new(Mutex::new(Vec::new()));
    let seam = Arc::new(SimSeam { plan: plan.clone(), seed, faults: faults.clone(), local: local.clone() });
    let pods = Arc::new(Pods {
        plan: plan.clone(),
        seed,
        faults: faults.clone(),
        recorder: recorder.clone(),
        bad,
        ca: ca.clone(),
    });
    let mut senders = Vec::new();
    for (n, name) in plan.nodes.iter().enumerate() {
        let mine: Vec<usize> = (0..plan.pods.len()).filter(|&p| plan.pods[p].node == n).collect();
        let requests: Vec<Planned> = requests.iter().copied().filter(|r| plan.pods[r.source].node == n).collect();
        let (tx, rx) = mpsc::unbounded_channel();
        senders.push(tx);
        let node = Arc::new(Node {
            pods: mine,
            plan: plan.clone(),
            pods_: pods.clone(),
            seam: seam.clone(),
            generator: Arc::new(Generator {
                plan: plan.clone(),
                requests,
                seam: seam.clone(),
                faults: faults.clone(),
                recorder: recorder.clone(),
                in_flight: in_flight.clone(),
            }),
            commands: Mutex::new(Some(rx)),
            started: started.clone(),
        });
        sim.host(name.as_str(), move || node.clone().run());
    }

    // Commands for the pods of node n go to senders[n]; istiod's come last.
    senders.push(istiod(&mut sim, store.clone(), &ca, istiod_index, &faults, &local, &recorder));
    let mut ips: Vec<_> = plan.nodes.iter().map(|n| sim.lookup(n.as_str())).collect();
    local.set_istiod(sim.lookup(ISTIOD), istiod_index);
    ips.push(sim.lookup(ISTIOD));
    local.set_node_ips(ips);

    let mut driver = Driver::new(&plan);
    loop {
        let elapsed = sim.elapsed();
        let now = elapsed.saturating_sub(BOOT);
        if elapsed >= BOOT {
            let effects = SimEffects { plan: &plan, sim: &sim, nodes: &senders };
            driver.advance(
                now,
                &Context { plan: &plan, faults: &faults, recorder: &recorder, store: &store, ca: &ca },
                &effects,
            );
        }
        if (now >= plan.duration && recorder.is_complete()) || now >= hard_stop {
            break;
        }
        sim.step().map_err(|e| RunError::Sim(e.to_string()))?;
    }
    let sim_elapsed = sim.elapsed().saturating_sub(BOOT);
    let (records, events) = recorder.finish().map_err(|l| RunError::Lost { missing: l.missing })?;
    let metrics = pod_metrics(&started.lock().expect("started lock"));
    Ok(RunOutput {
        records,
        events,
        issued,
        metrics,
        sim_elapsed,
        wall: wall.now(),
        baseline: None,
        target: crate::target::Target::Sim,
        envoy: None,
    })
}

/// The driver's effects in the simulator: commands go to the nodes' hosts, link latency
/// is turmoil's.
struct SimEffects<'a> {
    plan: &'a Plan,
    sim: &'a turmoil::Sim<'a>,
    nodes: &'a [mpsc::UnboundedSender<Command>],
}

impl Effects for SimEffects<'_> {
    fn command(&self, node: usize, command: Command) {
        // A node's receiver lives as long as the simulation.
        let _ = self.nodes[node].send(command);
    }
    fn link_latency(&self, from: usize, to: usize, latency: Option<Duration>) {
        let (a, b) = (self.plan.nodes[from].as_str(), self.plan.nodes[to].as_str());
        match latency {
            Some(l) => self.sim.set_link_latency(a, b, l),
            None => {
                self.sim.set_link_latency(a, b, self.plan.latency_min);
                self.sim.set_link_max_message_latency(a, b, self.plan.latency_max);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::recorder::Outcome;

    /// Each workload's statuses, in send order.
    fn statuses(plan: &Plan, out: &RunOutput) -> BTreeMap<String, Vec<u16>> {
        let mut records: Vec<&Record> = out.records.iter().collect();
        records.sort_by_key(|r| (r.workload, r.intended));
        let mut by = BTreeMap::new();
        for r in records {
            let Outcome::Response { status, .. } = r.outcome else { panic!("no response: {:?}", r.outcome) };
            by.entry(plan.workloads[r.workload].name.clone()).or_insert_with(Vec::new).push(status);
        }
        by
    }

    /// Issue 11: the EnvoyFilter's rate limit reaches the sidecar with the pushed config,
    /// not frozen into the sidecar's plan when the scenario loads.
    #[test]
    fn an_envoy_filter_rate_limit_applied_mid_run_limits_from_its_push_on() {
        let text = "\
name: t
duration: 5s
services:
  - name: frontend
    pods: [{name: v1}]
  - name: api
    pods: [{name: v1}]
workload:
  - {name: before, from: frontend, to: api, rate: 100, arrivals: constant, start: 1s, stop: 1.055s}
  - {name: after, from: frontend, to: api, rate: 100, arrivals: constant, start: 3s, stop: 3.055s}
config:
  - at: 2s
    apply:
      - apiVersion: networking.istio.io/v1alpha3
        kind: EnvoyFilter
        metadata: {name: rl, namespace: default}
        spec:
          workloadSelector: {labels: {app: api}}
          configPatches:
            - applyTo: HTTP_FILTER
              match: {context: SIDECAR_INBOUND}
              patch:
                operation: INSERT_BEFORE
                value:
                  name: envoy.filters.http.local_ratelimit
                  typed_config:
                    \"@type\": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
                    stat_prefix: http_local_rate_limiter
                    token_bucket: {max_tokens: 2, tokens_per_fill: 2, fill_interval: 60s}
                    filter_enabled: {default_value: {numerator: 100, denominator: HUNDRED}}
                    filter_enforced: {default_value: {numerator: 100, denominator: HUNDRED}}
";
        let plan = Arc::new(
            crate::scenario::load_str("t.yaml", text, Path::new(".")).unwrap_or_else(|e| panic!("does not load:\n{e}")),
        );
        let out = run(plan.clone(), 1).expect("the run completes");
        let by = statuses(&plan, &out);
        assert_eq!(by["before"], [200; 6], "no limit before the push");
        assert_eq!(by["after"], [200, 200, 429, 429, 429, 429], "a full bucket of 2 from the push on");
        let limited = out.records.iter().filter(|r| r.body.as_deref() == Some("local_rate_limited")).count();
        assert_eq!(limited, 4);
    }
}
