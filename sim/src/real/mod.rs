//! Real mode: the scenario's mesh on real loopback sockets, in real time, with real TLS.
//!
//! The same pods as in the simulator ([`crate::pod`]), the same control plane and CA,
//! the same workload generator, driver ([`crate::driver`]) and recorder — only the seam
//! differs: [`RealSeam`] gives every pod its own loopback address (see [`net`]), the
//! system clock, ring's OS-backed TLS provider and no proxy cost model (the sidecar
//! spends what it really spends). Components are tasks of one multi-threaded tokio
//! runtime (two workers, as Istio's sidecars default to two); the run owns it and ends
//! every task with it.
//!
//! A run boots first: istiod and every pod start, and the scenario's clock starts once
//! every sidecar has its first config and certificate (bounded by [`BOOT_LIMIT`]). Then
//! the workload sends at its intended times and the driver fires faults and control
//! steps when they are due, to the same end as in the simulator: the scenario's duration
//! with every request recorded, or its hard stop.
//!
//! Faults on real connections: app errors, partitions (istiod included), link latency,
//! crashes and restarts (of pods and istiod), CA outages and root rotation, and every
//! control step. Not applied: `network.jitter` (real mode's links have the fixed
//! `network.latency`) and `network.tick` (the simulator's step).

pub mod net;
pub mod process;

use std::io;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh::ca::service::{CA_PORT, CaServer};
use mesh::control::{self, ControlPlane, Store};
use mesh::net::{Clock, Net, SystemClock};
use mesh::proxy::ProcessingCost;
use mesh::proxy::tls::os_provider;
use rustls::crypto::CryptoProvider;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::driver::{Command, Context, Driver, Effects, Prepared, prepare};
use crate::pod::{PodSet, Pods, Seam, pod_metrics};
use crate::recorder::Recorder;
use crate::scenario::Plan;
use crate::workload::Generator;
use crate::world::{RunError, RunOutput};
use net::{Addrs, RealClock, RealNet, Shared};

/// How long a real run's boot may take: every sidecar configured and holding its
/// certificate.
pub const BOOT_LIMIT: Duration = Duration::from_secs(30);
/// How often the driver looks at the clock when nothing is due (progress, the end).
const POLL: Duration = Duration::from_millis(20);

/// How far a real run has got, told about once a second.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// The scenario's clock.
    pub at: Duration,
    pub duration: Duration,
    /// Requests whose intended send time has come.
    pub sent: usize,
    pub issued: usize,
}

/// Real mode's seam: the run's loopback slice, the system clock, the OS's TLS provider.
pub struct RealSeam {
    shared: Arc<Shared>,
    clock: Arc<RealClock>,
    /// Operating errors the pods met (a port another process holds).
    errors: Mutex<Vec<String>>,
}

impl RealSeam {
    pub fn new(shared: Arc<Shared>, clock: Arc<RealClock>) -> RealSeam {
        RealSeam { shared, clock, errors: Mutex::new(Vec::new()) }
    }
}

impl Seam for RealSeam {
    type Net = RealNet;
    fn net(&self, pod: usize) -> RealNet {
        RealNet::new(pod, self.shared.clone())
    }
    fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }
    fn tls_provider(&self, _pod: usize) -> Arc<CryptoProvider> {
        os_provider()
    }
    fn cost(&self, _pod: usize) -> Option<Arc<dyn ProcessingCost>> {
        None
    }
    fn bind_failed(&self, pod: usize, port: u16, error: io::Error) {
        self.errors.lock().expect("errors lock").push(format!("pod {pod}: port {port}: {error}"));
    }
}

/// The driver's effects in real time (real and envoy): pod commands go to the run's pod
/// set (or istiod's task), link latency to the seam.
pub(crate) struct RealEffects {
    pub pods: mpsc::UnboundedSender<Command>,
    pub istiod: mpsc::UnboundedSender<Command>,
    pub nodes: usize,
    pub shared: Arc<Shared>,
}

impl Effects for RealEffects {
    fn command(&self, node: usize, command: Command) {
        // Both receivers live as long as the run.
        let _ = if node == self.nodes { self.istiod.send(command) } else { self.pods.send(command) };
    }
    fn link_latency(&self, from: usize, to: usize, latency: Option<Duration>) {
        self.shared.set_link_latency(from, to, latency);
    }
}

/// Runs `plan` with `seed` on real sockets, after its no-mesh baseline when it has one;
/// `progress` hears about once a second how far it got.
pub fn run(plan: Arc<Plan>, seed: u64, progress: &(dyn Fn(Progress) + Sync)) -> Result<RunOutput, RunError> {
    let baseline = match &plan.baseline {
        Some(b) => Some(Box::new(run_once(b.clone(), seed, progress)?)),
        None => None,
    };
    let mut out = run_once(plan, seed, progress)?;
    out.baseline = baseline;
    Ok(out)
}

fn run_once(plan: Arc<Plan>, seed: u64, progress: &(dyn Fn(Progress) + Sync)) -> Result<RunOutput, RunError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| RunError::Setup(format!("cannot start the runtime: {e}")))?;
    let out = runtime.block_on(run_world(plan, seed, progress));
    // Ends every task the run started (pods, istiod, the generator), closing their sockets.
    runtime.shutdown_timeout(Duration::from_secs(2));
    out
}

/// istiod's services on its own address; a crash ends them, a restart starts them anew
/// on the same store (istiod's state lives in the API server).
async fn istiod(
    net: RealNet,
    store: Arc<Store>,
    ca: Arc<CaServer>,
    clock: Arc<RealClock>,
    recorder: Arc<Recorder>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    errors: Arc<Mutex<Vec<String>>>,
) {
    let start = || -> JoinHandle<()> {
        let (net, store, ca, clock, recorder, errors) =
            (net.clone(), store.clone(), ca.clone(), clock.clone(), recorder.clone(), errors.clone());
        tokio::spawn(async move {
            let addr = |port| std::net::SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, port));
            let (push, csr) = match (net.bind(addr(control::PORT)).await, net.bind(addr(CA_PORT)).await) {
                (Ok(p), Ok(c)) => (p, c),
                (Err(e), _) | (_, Err(e)) => {
                    errors.lock().expect("errors lock").push(format!("istiod: {e}"));
                    return;
                }
            };
            let cp = ControlPlane::new(store, clock.clone(), recorder);
            let _ = tokio::join!(cp.serve(push), ca.serve(csr, clock));
        })
    };
    crate::driver::obey(&mut commands, start).await;
}

async fn run_world(plan: Arc<Plan>, seed: u64, progress: &(dyn Fn(Progress) + Sync)) -> Result<RunOutput, RunError> {
    let wall = SystemClock::new();
    let clock = Arc::new(RealClock::new());
    let Prepared { requests, recorder, faults, ca, bad, store, hard_stop } = prepare(&plan, seed, clock.unix_time());
    let issued = requests.len();
    let intended: Vec<Duration> = requests.iter().map(|r| r.intended).collect();
    let addrs = Addrs::reserve(plan.pods.len()).map_err(|e| RunError::Setup(e.to_string()))?;
    let node_of = plan.pods.iter().map(|p| p.node).collect();
    let shared = Shared::new(addrs, faults.clone(), node_of, plan.latency_min);
    let seam = Arc::new(RealSeam::new(shared.clone(), clock.clone()));
    let istiod_errors = Arc::new(Mutex::new(Vec::new()));
    let (istiod_tx, istiod_rx) = mpsc::unbounded_channel();
    tokio::spawn(istiod(
        RealNet::new(shared.istiod, shared.clone()),
        store.clone(),
        ca.clone(),
        clock.clone(),
        recorder.clone(),
        istiod_rx,
        istiod_errors.clone(),
    ));
    let pods = Arc::new(Pods {
        plan: plan.clone(),
        seed,
        faults: faults.clone(),
        recorder: recorder.clone(),
        bad,
        ca: ca.clone(),
    });
    let started = Arc::new(Mutex::new(Vec::new()));
    let mut set = PodSet::new(pods, seam.clone(), started.clone());
    for pod in (0..plan.pods.len()).filter(|&p| plan.pods[p].running_at_start) {
        set.start(pod);
    }

    boot(&set, &seam, &istiod_errors).await?;
    let (pods_tx, mut pods_rx) = mpsc::unbounded_channel::<Command>();
    tokio::spawn(async move {
        while let Some(cmd) = pods_rx.recv().await {
            set.handle(cmd).await;
        }
    });

    clock.start();
    start_generator(&plan, requests, &seam, &faults, &recorder);

    let effects = RealEffects { pods: pods_tx, istiod: istiod_tx, nodes: plan.nodes.len(), shared: shared.clone() };
    let ctx = Context { plan: &plan, faults: &faults, recorder: &recorder, store: &store, ca: &ca };
    drive(&ctx, &clock, &effects, &intended, hard_stop, progress, || {
        seam.errors.lock().expect("errors lock").first().cloned()
    })
    .await?;
    let sim_elapsed = clock.now();
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
        target: crate::target::Target::Real,
        envoy: None,
    })
}

/// Starts a real run's workload generator: `requests` sent at their intended times
/// from the pods of `seam`, each outcome to `recorder`.
pub(crate) fn start_generator(
    plan: &Arc<Plan>,
    requests: Vec<crate::workload::Planned>,
    seam: &Arc<RealSeam>,
    faults: &Arc<crate::net::Faults>,
    recorder: &Arc<Recorder>,
) {
    let in_flight = Arc::new((0..plan.workloads.len()).map(|_| AtomicU32::new(0)).collect::<Vec<_>>());
    let generator = Arc::new(Generator {
        plan: plan.clone(),
        requests,
        seam: seam.clone(),
        faults: faults.clone(),
        recorder: recorder.clone(),
        in_flight,
    });
    tokio::spawn(generator.run(async {}));
}

/// A real run's main loop, from the scenario's clock start to its end (the duration with
/// every request recorded, or the hard stop): fires faults and control steps when they
/// are due, tells `progress` about once a second, and calls `tick` every poll — an
/// operating error it returns ends the run.
pub(crate) async fn drive(
    ctx: &Context<'_>,
    clock: &RealClock,
    effects: &impl Effects,
    intended: &[Duration],
    hard_stop: Duration,
    progress: &(dyn Fn(Progress) + Sync),
    mut tick: impl FnMut() -> Option<String>,
) -> Result<(), RunError> {
    let plan = ctx.plan;
    let mut driver = Driver::new(plan);
    let mut told = Duration::ZERO;
    loop {
        let now = clock.now();
        driver.advance(now, ctx, effects);
        if now >= told + Duration::from_secs(1) || told.is_zero() {
            told = now.max(Duration::from_millis(1));
            let sent = intended.partition_point(|&t| t <= now);
            progress(Progress { at: now, duration: plan.duration, sent, issued: intended.len() });
        }
        if (now >= plan.duration && ctx.recorder.is_complete()) || now >= hard_stop {
            return Ok(());
        }
        if let Some(e) = tick() {
            return Err(RunError::Setup(e));
        }
        let next = driver.next_due(plan).map_or(POLL, |due| due.saturating_sub(now)).min(POLL);
        tokio::time::sleep(next).await;
    }
}

/// Waits until every running sidecar has applied its first config and every agent has
/// its first certificate, within [`BOOT_LIMIT`].
async fn boot(set: &PodSet<RealSeam>, seam: &RealSeam, istiod: &Mutex<Vec<String>>) -> Result<(), RunError> {
    let certs = first_certificates(set.agent_stores.values().cloned().collect());
    let configs = async {
        loop {
            let sidecars: Vec<_> = set.sidecars.lock().expect("sidecars lock").values().cloned().collect();
            if sidecars.iter().all(|s| s.is_ready()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let errors = async {
        loop {
            let first = seam.errors.lock().expect("errors lock").first().cloned();
            if let Some(e) = first.or_else(|| istiod.lock().expect("errors lock").first().cloned()) {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::select! {
        e = errors => Err(RunError::Setup(e)),
        r = tokio::time::timeout(BOOT_LIMIT, async { tokio::join!(certs, configs) }) => match r {
            Ok(_) => Ok(()),
            Err(_) => {
                let waiting: Vec<String> = set
                    .sidecars
                    .lock()
                    .expect("sidecars lock")
                    .values()
                    .filter(|s| !s.is_ready())
                    .map(|s| s.pod().to_string())
                    .collect();
                Err(RunError::Setup(format!(
                    "boot did not finish within {BOOT_LIMIT:?}: sidecars without config: [{}]",
                    waiting.join(", ")
                )))
            }
        },
    }
}

/// Every store's first certificate.
async fn first_certificates(stores: Vec<Arc<mesh::identity::IdentityStore>>) {
    for s in stores {
        s.certificate_installed().await;
    }
}
