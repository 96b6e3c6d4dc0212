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

use mesh::ca::agent::{Agent, AgentConfig, IdentitySink, REQUEST_TIMEOUT};
use mesh::ca::authority::DEFAULT_TTL;
use mesh::ca::service::{CA_PORT, CaAddress, CaServer};
use mesh::ca::{Authority, CaOptions};
use mesh::control::{self, ControlEvent, ControlEventKind, ControlEvents, ControlPlane, Store};
use mesh::identity::{DEFAULT_TRUST_DOMAIN, IdentityStore, SpiffeId};
use mesh::net::{Clock, Net, SystemClock};
use mesh::proxy::control_client::{self, ClientConfig};
use mesh::proxy::metrics::Series;
use mesh::proxy::tls::SidecarTls;
use mesh::proxy::{Sidecar, SidecarConfig};
use mesh::registry::AppProtocol;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::app::App;
use crate::bad_identity::{BadIdentity, Issuers, Material};
use crate::cost::SidecarCost;
use crate::crypto::seeded_provider;
use crate::net::{BOOT, Faults, Local, SimClock, SimNet};
use crate::recorder::{Event, Record, Recorder};
use crate::scenario::{ConfigChange, ConfigStep, FaultKind, ISTIOD, Plan, RootStep, TERMINATION_DRAIN};
use crate::seed::sub_seed;
use crate::workload::{Generator, Planned, schedule};

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
}

#[derive(Debug)]
pub enum RunError {
    /// turmoil reported an error (a host's software failed).
    Sim(String),
    /// Requests without an outcome: the "nothing lost" invariant broke.
    Lost { missing: Vec<u64> },
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Sim(e) => write!(f, "simulation failed: {e}"),
            RunError::Lost { missing } => write!(
                f,
                "{} request(s) have no recorded outcome (first ids: {:?}): every issued request must end in exactly one outcome",
                missing.len(),
                &missing[..missing.len().min(10)]
            ),
        }
    }
}

/// What a node does to one of its pods. The driver sends a pod's commands in order and only
/// on a change (see [`Faults::crash`]), so they alternate; the node still treats a crash of
/// a pod that is down, or a restart of one that is up, as nothing to do.
enum Command {
    Crash(usize),
    Restart(usize),
}

struct Node {
    pods: Vec<usize>,
    /// The material of each pod with a bad identity (`None`: no certificate).
    bad: Arc<BTreeMap<usize, Option<Material>>>,
    plan: Arc<Plan>,
    seed: u64,
    faults: Arc<Faults>,
    local: Arc<Local>,
    recorder: Arc<Recorder>,
    generator: Arc<Generator>,
    commands: Mutex<Option<mpsc::UnboundedReceiver<Command>>>,
    ca: Arc<CaServer>,
    /// Every sidecar started on any node, with its pod (metrics are read at the end).
    started: Arc<Mutex<Vec<Arc<Sidecar<SimNet>>>>>,
}

/// A pod's bootstrap credential (its service-account token), from the run's seed.
fn token(seed: u64, pod: usize) -> String {
    format!("sa-token-{:016x}", sub_seed(seed, "sa_token", pod as u64))
}

impl Node {
    fn start_pod(&self, pod: usize, sidecars: &mut BTreeMap<usize, Arc<Sidecar<SimNet>>>) -> Vec<JoinHandle<()>> {
        let p = &self.plan.pods[pod];
        let net = SimNet::new(pod, p.node, self.faults.clone(), self.local.clone());
        let app = Arc::new(App {
            pod,
            name: p.name.clone(),
            model: p.app.clone(),
            faults: self.faults.clone(),
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(sub_seed(self.seed, "app", pod as u64))),
            recorder: Some(self.recorder.clone()),
        });
        let (app_net, app_port, tcp) = (net.clone(), p.app_port, p.protocol == AppProtocol::Tcp);
        let app_task = tokio::spawn(async move {
            let listener = bind(app_net, app_port).await;
            let _ = if tcp { app.serve_tcp(listener).await } else { app.serve(listener).await };
        });
        if !p.sidecar {
            return vec![app_task];
        }
        let clock = Arc::new(SimClock::new());
        // A (re)started sidecar has no certificate until its agent gets one.
        let store = Arc::new(IdentityStore::new(
            self.identity(pod),
            DEFAULT_TRUST_DOMAIN,
            seeded_provider(sub_seed(self.seed, "tls", pod as u64)),
        ));
        let tls = SidecarTls::new(store.clone(), clock.clone()).expect("the TLS config builds");
        let sidecar = Sidecar::awaiting_config(
            SidecarConfig {
                pod: p.name.clone(),
                workload: p.workload().to_string(),
                namespace: p.namespace.clone(),
                service: format!("{}.{}.{}", p.service, p.namespace, mesh::registry::DOMAIN_SUFFIX),
                labels: p.labels.clone(),
                app_port: p.app_port,
                seed: sub_seed(self.seed, "sidecar", pod as u64),
                rate_limit: p.rate_limit.clone(),
                tls: Some(Arc::new(tls)),
                cost: Some(Arc::new(SidecarCost::new(
                    self.plan.proxy_cost.clone(),
                    sub_seed(self.seed, "proxy_cost", pod as u64),
                ))),
            },
            net.clone(),
            clock,
            self.recorder.clone(),
        )
        .expect("the rate limit was validated with the scenario");
        self.started.lock().expect("started lock").push(sidecar.clone());
        sidecars.insert(pod, sidecar.clone());
        let (n2, n3) = (net.clone(), net.clone());
        let (in_port, out_port) = (p.inbound_port, p.outbound_port);
        let (s1, s2) = (sidecar.clone(), sidecar.clone());
        let client = ClientConfig {
            host: ISTIOD.to_string(),
            port: control::PORT,
            seed: sub_seed(self.seed, "control_client", pod as u64),
        };
        let mut tasks = vec![
            app_task,
            tokio::spawn(control_client::run(s2, client)),
            tokio::spawn(async move {
                let _ = s1.run_inbound(bind(n2, in_port).await).await;
            }),
            tokio::spawn(async move {
                let _ = sidecar.run_outbound(bind(n3, out_port).await).await;
            }),
        ];
        if let Some(material) = self.bad.get(&pod) {
            let sink: &dyn IdentitySink = &*store;
            sink.set_trust_bundle(self.ca.trust_bundle()).expect("the mesh roots are valid anchors");
            if let Some((chain, key)) = material {
                sink.install(chain.clone(), key.clone()).expect("a bad identity's material installs");
            }
            return tasks;
        }
        let agent = Agent::new(
            AgentConfig {
                pod: p.name.clone(),
                id: self.identity(pod),
                token: token(self.seed, pod),
                ca: CaAddress { host: ISTIOD.to_string(), port: CA_PORT, timeout: REQUEST_TIMEOUT },
                ttl: self.plan.ca.workload_cert_ttl,
                seed: sub_seed(self.seed, "cert_agent", pod as u64),
            },
            net,
            Arc::new(SimClock::new()),
            store,
            self.recorder.clone(),
            self.ca.roots_changed(),
        );
        tasks.push(tokio::spawn(agent.run()));
        tasks
    }

    fn identity(&self, pod: usize) -> SpiffeId {
        identity(&self.plan, pod)
    }

    async fn run(self: Arc<Self>) -> turmoil::Result {
        let mut sidecars = BTreeMap::new();
        // Tasks of running pods, and the aborted tasks of crashed ones.
        let mut tasks: BTreeMap<usize, Vec<JoinHandle<()>>> = BTreeMap::new();
        let mut aborted: BTreeMap<usize, Vec<JoinHandle<()>>> = BTreeMap::new();
        // Pods that only a scale step starts wait for its restart command.
        for &pod in self.pods.iter().filter(|&&p| self.plan.pods[p].running_at_start) {
            let t = self.start_pod(pod, &mut sidecars);
            tasks.insert(pod, t);
        }
        let sidecars = Arc::new(Mutex::new(sidecars));
        // Envoy's outlier sweep runs on a timer: replay due sweeps every 100 ms so
        // readmissions are recorded even without traffic.
        let sweeper = sidecars.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let all: Vec<_> = sweeper.lock().expect("sidecars lock").values().cloned().collect();
                for s in all {
                    s.advance();
                }
            }
        });
        tokio::spawn(self.generator.clone().run());
        let Some(mut rx) = self.commands.lock().expect("commands lock").take() else {
            return Ok(());
        };
        while let Some(cmd) = rx.recv().await {
            match cmd {
                Command::Crash(pod) => {
                    let Some(running) = tasks.remove(&pod) else { continue };
                    for t in &running {
                        t.abort();
                    }
                    aborted.entry(pod).or_default().extend(running);
                    sidecars.lock().expect("sidecars lock").remove(&pod);
                }
                Command::Restart(pod) => {
                    if tasks.contains_key(&pod) {
                        continue;
                    }
                    // An aborted task drops its listeners, freeing their ports, only when the
                    // runtime next polls it: wait for that before binding them again.
                    for t in aborted.remove(&pod).unwrap_or_default() {
                        let _ = t.await;
                    }
                    let mut map = sidecars.lock().expect("sidecars lock").clone();
                    let t = self.start_pod(pod, &mut map);
                    *sidecars.lock().expect("sidecars lock") = map;
                    tasks.insert(pod, t);
                }
            }
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

/// The material of each sidecar pod with a bad identity, made at the epoch; the mesh CA
/// trusts the federated mesh's root when a pod belongs to it.
fn bad_identities(plan: &Plan, seed: u64, mesh: &mut Authority) -> BTreeMap<usize, Option<Material>> {
    let now = Duration::from_secs(EPOCH_SECS);
    let mut issuers = Issuers::new(seed, now);
    let mut out = BTreeMap::new();
    for (i, p) in plan.pods.iter().enumerate() {
        let Some(bad) = p.bad_identity.filter(|_| p.sidecar) else { continue };
        let key_seed = sub_seed(seed, "bad_identity_key", i as u64);
        out.insert(i, issuers.issue(mesh, &identity(plan, i), bad, key_seed, now));
    }
    if plan.pods.iter().any(|p| p.bad_identity == Some(BadIdentity::WrongTrustDomain)) {
        mesh.federate(issuers.federated_root());
    }
    out
}

fn identity(plan: &Plan, pod: usize) -> SpiffeId {
    let p = &plan.pods[pod];
    let sa = &plan.registry.pods[&p.name].service_account;
    SpiffeId::new(&p.namespace, sa)
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
        let mut running = Some(self.start());
        let Some(mut rx) = self.commands.lock().expect("commands lock").take() else {
            return Ok(());
        };
        while let Some(cmd) = rx.recv().await {
            match cmd {
                Command::Crash(_) => {
                    if let Some(t) = running.take() {
                        t.abort();
                        // Its listener and connections go away once the runtime polls it.
                        let _ = t.await;
                    }
                }
                Command::Restart(_) => {
                    if running.is_none() {
                        running = Some(self.start());
                    }
                }
            }
        }
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

/// A fault boundary on the driver's timeline.
#[derive(Clone, Copy, Debug)]
struct Action {
    at: Duration,
    fault: usize,
    start: bool,
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
    let requests = schedule(&plan, seed);
    let issued = requests.len();
    let recorder = Arc::new(Recorder::new(issued, plan.needs_receipts()));
    let mut port_owner = BTreeMap::new();
    for (i, p) in plan.pods.iter().enumerate() {
        for port in [p.app_port, p.inbound_port, p.outbound_port] {
            port_owner.insert(port, i);
        }
    }
    // The fault table's last entry is istiod.
    let istiod_index = plan.pods.len();
    let faults = Faults::new(plan.pods.len() + 1, port_owner);
    let options =
        CaOptions { default_ttl: DEFAULT_TTL, max_ttl: plan.ca.max_workload_cert_ttl, ..CaOptions::default() };
    let mut authority = Authority::self_signed(options, sub_seed(seed, "ca", 0), Duration::from_secs(EPOCH_SECS));
    let bad = Arc::new(bad_identities(&plan, seed, &mut authority));
    let ca = CaServer::new(authority);
    for i in 0..plan.pods.len() {
        ca.credentials().insert(token(seed, i), identity(&plan, i));
    }
    let local = Arc::new(Local::default());
    let store = Arc::new(
        Store::new(
            plan.registry.clone(),
            plan.resources.clone(),
            plan.egress.clone(),
            crate::scenario::suppressed(&plan.suppress),
        )
        .expect("the scenario's config was validated when it loaded")
        .without_endpoints(plan.pods.iter().filter(|p| !p.running_at_start).map(|p| p.name.as_str())),
    );
    let max_timeout = plan.workloads.iter().map(|w| w.timeout).max().unwrap_or_default();
    let hard_stop = plan.duration + max_timeout + DRAIN_SLACK;

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
    let mut senders = Vec::new();
    for (n, name) in plan.nodes.iter().enumerate() {
        let pods: Vec<usize> = (0..plan.pods.len()).filter(|&p| plan.pods[p].node == n).collect();
        let mine: Vec<Planned> = requests.iter().copied().filter(|r| plan.pods[r.source].node == n).collect();
        let (tx, rx) = mpsc::unbounded_channel();
        senders.push(tx);
        let node = Arc::new(Node {
            pods,
            bad: bad.clone(),
            plan: plan.clone(),
            seed,
            faults: faults.clone(),
            local: local.clone(),
            recorder: recorder.clone(),
            generator: Arc::new(Generator {
                plan: plan.clone(),
                requests: mine,
                faults: faults.clone(),
                local: local.clone(),
                recorder: recorder.clone(),
                in_flight: in_flight.clone(),
            }),
            commands: Mutex::new(Some(rx)),
            ca: ca.clone(),
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

    let mut actions: Vec<Action> = Vec::new();
    for (i, f) in plan.faults.iter().enumerate() {
        actions.push(Action { at: f.at, fault: i, start: true });
        if let Some(until) = f.until {
            actions.push(Action { at: until, fault: i, start: false });
        }
    }
    actions.sort_by_key(|a| (a.at, !a.start, a.fault));
    let mut next = 0;
    let mut next_step = 0;
    // Readiness changes the registry has yet to learn: (due, order) → (pod, ready).
    let mut readiness: BTreeMap<(Duration, usize), (usize, bool)> = BTreeMap::new();
    let mut learned = 0usize;
    let mut changed = Vec::new();
    // Pods scaled down, to stop once drained: (due, pod).
    let mut draining: BTreeMap<(Duration, usize), ()> = BTreeMap::new();
    loop {
        let elapsed = sim.elapsed();
        let now = elapsed.saturating_sub(BOOT);
        while elapsed >= BOOT && next < actions.len() && actions[next].at <= now {
            apply(&plan, &sim, &faults, &recorder, &senders, &ca, actions[next], now, &mut changed);
            next += 1;
        }
        for (pod, ready) in changed.drain(..) {
            learned += 1;
            readiness.insert((now + plan.readiness_delay, learned), (pod, ready));
        }
        while elapsed >= BOOT && next_step < plan.config_steps.len() && plan.config_steps[next_step].at <= now {
            let step = &plan.config_steps[next_step];
            if let ConfigChange::Scale { deployment, replicas, start, stop } = &step.change {
                let verb = if stop.is_empty() { "start" } else { "stop" };
                let pods = if stop.is_empty() { start } else { stop };
                let detail = format!("{deployment} to {replicas} replicas: {verb} {}", names(&plan, pods));
                recorder.event(now, "scale", detail);
                for &p in start {
                    let _ = senders[plan.pods[p].node].send(Command::Restart(p));
                    changed.push((p, true));
                }
                // A pod being deleted leaves the endpoints at once; it stops after draining.
                for &p in stop {
                    publish(&store, &recorder, &plan.pods[p].name, false, now);
                    draining.insert((now + TERMINATION_DRAIN, p), ());
                }
            } else {
                apply_step(&store, &recorder, step, now);
            }
            next_step += 1;
        }
        for (pod, ready) in changed.drain(..) {
            learned += 1;
            readiness.insert((now + plan.readiness_delay, learned), (pod, ready));
        }
        while let Some(e) = draining.first_entry()
            && e.key().0 <= now
        {
            let (_, pod) = *e.key();
            e.remove();
            let _ = senders[plan.pods[pod].node].send(Command::Crash(pod));
        }
        while let Some(e) = readiness.first_entry()
            && e.key().0 <= now
        {
            let (pod, ready) = e.remove();
            publish(&store, &recorder, &plan.pods[pod].name, ready, now);
        }
        if (now >= plan.duration && recorder.is_complete()) || now >= hard_stop {
            break;
        }
        sim.step().map_err(|e| RunError::Sim(e.to_string()))?;
    }
    let sim_elapsed = sim.elapsed().saturating_sub(BOOT);
    let (records, events) = recorder.finish().map_err(|l| RunError::Lost { missing: l.missing })?;
    let metrics = pod_metrics(&started.lock().expect("started lock"));
    Ok(RunOutput { records, events, issued, metrics, sim_elapsed, wall: wall.now(), baseline: None })
}

/// Each pod's series, the instances of a restarted pod summed per label set.
fn pod_metrics(sidecars: &[Arc<Sidecar<SimNet>>]) -> BTreeMap<String, Vec<Series>> {
    let mut pods: BTreeMap<String, BTreeMap<BTreeMap<&'static str, String>, Series>> = BTreeMap::new();
    for s in sidecars {
        let mine = pods.entry(s.pod().to_string()).or_default();
        for series in s.metrics() {
            match mine.get_mut(&series.labels) {
                Some(x) => x.add(&series),
                None => {
                    mine.insert(series.labels.clone(), series);
                }
            }
        }
    }
    pods.into_iter().map(|(pod, series)| (pod, series.into_values().collect())).collect()
}

/// Publishes (`ready`) or withdraws the endpoint of `pod` in the registry; a change is a
/// new version, recorded.
fn publish(store: &Store, recorder: &Recorder, pod: &str, ready: bool, now: Duration) {
    if let Some(acc) = store.set_ready(pod, ready) {
        let what = if ready { "published" } else { "withdrawn" };
        recorder.control_event(ControlEvent {
            at: now,
            proxy: String::new(),
            version: acc.version,
            kind: ControlEventKind::Changed { what: format!("endpoint of {pod} {what}") },
        });
    }
}

/// Applies a config step to the store (as `kubectl apply` / `delete` would to the API
/// server); the control plane pushes what follows.
fn apply_step(store: &Store, recorder: &Recorder, step: &ConfigStep, now: Duration) {
    let (result, what) = match &step.change {
        ConfigChange::Apply(rs) => {
            let keys: Vec<String> = rs.iter().map(|r| r.key().to_string()).collect();
            (store.apply(rs.clone()), format!("apply {}", keys.join(", ")))
        }
        ConfigChange::Delete(keys) => {
            let names: Vec<String> = keys.iter().map(|(k, _)| k.to_string()).collect();
            (store.delete(keys), format!("delete {}", names.join(", ")))
        }
        ConfigChange::Scale { .. } => unreachable!("the driver runs scale steps itself"),
    };
    match result {
        Ok(acc) => recorder.control_event(ControlEvent {
            at: now,
            proxy: String::new(),
            version: acc.version,
            kind: ControlEventKind::Changed { what },
        }),
        Err(findings) => {
            let why: Vec<String> = findings.0.iter().map(|f| f.to_string()).collect();
            recorder.event(now, "config_rejected", format!("{what}: {}", why.join("; ")));
        }
    }
}

fn names(plan: &Plan, pods: &[usize]) -> String {
    pods.iter().map(|&p| plan.pods.get(p).map_or(ISTIOD, |x| x.name.as_str())).collect::<Vec<_>>().join(",")
}

/// Starts or ends a fault. Pods that go down or come back are added to `changed` (the
/// registry learns it after the readiness delay).
#[allow(clippy::too_many_arguments)]
fn apply(
    plan: &Plan,
    sim: &turmoil::Sim<'_>,
    faults: &Faults,
    recorder: &Recorder,
    nodes: &[mpsc::UnboundedSender<Command>],
    ca: &CaServer,
    a: Action,
    now: Duration,
    changed: &mut Vec<(usize, bool)>,
) {
    let f = &plan.faults[a.fault];
    let verb = if a.start { "start" } else { "end" };
    match &f.kind {
        FaultKind::AppErrors { pods, status, rate_ppm } => {
            for &p in pods {
                faults.set_app_errors(p, a.fault, a.start.then_some((*status, *rate_ppm)));
            }
            recorder.event(
                now,
                &format!("fault_{verb}"),
                format!("app_errors {} status {status} rate {rate_ppm} ppm", names(plan, pods)),
            );
        }
        FaultKind::Partition { from, to } => {
            if a.start {
                faults.partition(from, to);
            } else {
                faults.heal(from, to);
            }
            recorder.event(
                now,
                &format!("fault_{verb}"),
                format!("partition [{}] <-> [{}]", names(plan, from), names(plan, to)),
            );
        }
        FaultKind::LinkLatency { from, to, latency } => {
            for &x in from {
                for &y in to {
                    if x == y {
                        continue;
                    }
                    let (a_, b_) = (plan.nodes[x].as_str(), plan.nodes[y].as_str());
                    if a.start {
                        sim.set_link_latency(a_, b_, *latency);
                    } else {
                        sim.set_link_latency(a_, b_, plan.latency_min);
                        sim.set_link_max_message_latency(a_, b_, plan.latency_max);
                    }
                }
            }
            let nodes_ = |v: &[usize]| v.iter().map(|&n| plan.nodes[n].as_str()).collect::<Vec<_>>().join(",");
            recorder.event(
                now,
                &format!("fault_{verb}"),
                format!("link_latency [{}] <-> [{}] {latency:?}", nodes_(from), nodes_(to)),
            );
        }
        FaultKind::Crash { pods } => {
            // Crash windows of one pod may overlap or touch: the pod is down while any
            // is active, so only the first start stops it and only the last end restarts it.
            for &p in pods {
                let cmd = if a.start {
                    faults.crash(p).then_some(Command::Crash(p))
                } else {
                    faults.recover(p).then_some(Command::Restart(p))
                };
                if let Some(cmd) = cmd {
                    // The node's receiver lives as long as the simulation.
                    let _ = nodes[plan.pods.get(p).map_or(plan.nodes.len(), |x| x.node)].send(cmd);
                    if p < plan.pods.len() {
                        changed.push((p, !a.start));
                    }
                }
            }
            recorder.event(now, &format!("fault_{verb}"), format!("crash {}", names(plan, pods)));
        }
        FaultKind::CaOutage => {
            ca.set_up(!a.start);
            recorder.event(now, &format!("fault_{verb}"), format!("ca_outage {ISTIOD}"));
        }
        FaultKind::CaRoot(step) => {
            let unix = Duration::from_secs(EPOCH_SECS) + now;
            ca.rotate(|auth| match step {
                RootStep::AddRoot => auth.add_root(unix),
                RootStep::SignWithNewRoot => auth.sign_with_new_root(),
                RootStep::RemoveOldRoots => {
                    auth.remove_old_roots();
                    Ok(())
                }
            })
            .expect("the scenario's root rotation steps were validated in order");
            recorder.event(
                now,
                "ca_root",
                format!("{} (trust bundle: {} root(s))", step.name(), ca.trust_bundle().len()),
            );
        }
    }
}
