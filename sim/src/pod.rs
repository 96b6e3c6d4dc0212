//! Pod assembly, the same in every world: one function ([`Pods::start`]) turns a pod of
//! the [`Plan`] into its running tasks — the app model, and for a pod with a sidecar the
//! sidecar's inbound and outbound listeners, its outlier timer, its control-plane client
//! and its certificate agent (or the fixed material of a `bad_identity`) — given a [`Seam`]: the
//! world's sockets, clock, TLS randomness and proxy cost model.
//!
//! The simulator's seam is turmoil's (`crate::world`), real mode's is loopback sockets
//! and the system clock (`crate::real`). Nothing here names either: what a pod *is*
//! lives here once, and a world only says how its pods reach the network.
//!
//! Not here: when pods start and stop (the world's driver, on the fault schedule and
//! scale steps), the control plane and the CA themselves (`crate::world`, `crate::real`).

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh::ca::Authority;
use mesh::ca::agent::{Agent, AgentConfig, REQUEST_TIMEOUT};
use mesh::ca::service::{CA_PORT, CaAddress, CaServer};
use mesh::control;
use mesh::identity::IdentitySink;
use mesh::identity::{DEFAULT_TRUST_DOMAIN, IdentityStore, SpiffeId};
use mesh::net::{Clock, Net};
use mesh::proxy::control_client::{self, ClientConfig};
use mesh::proxy::metrics::Series;
use mesh::proxy::tls::SidecarTls;
use mesh::proxy::{ProcessingCost, Sidecar, SidecarConfig};
use mesh::registry::AppProtocol;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rustls::crypto::CryptoProvider;
use tokio::task::JoinHandle;

use crate::app::App;
use crate::bad_identity::{BadIdentity, Issuers, Material};
use crate::driver::Command;
use crate::net::Faults;
use crate::recorder::Recorder;
use crate::scenario::{ISTIOD, Plan};
use crate::seed::sub_seed;

/// A pod's sockets in some world: the seam's [`Net`], plus the one thing only a pod's app
/// does — a connection captured to its own sidecar (iptables' REDIRECT).
pub trait PodNet: Net {
    /// A connection the pod's app opens to `original_dst` (a service's ClusterIP:port),
    /// captured to its sidecar's outbound listener on `listener_port`: the sidecar learns
    /// `original_dst` from [`Net::original_dst`].
    fn connect_captured(
        &self,
        listener_port: u16,
        original_dst: SocketAddr,
    ) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

/// How a world's pods reach the network, tell time and draw TLS randomness.
pub trait Seam: Send + Sync + 'static {
    type Net: PodNet;
    /// The sockets of pod `pod` (an index into `Plan::pods`).
    fn net(&self, pod: usize) -> Self::Net;
    /// A clock, made where the caller runs (in the simulator, inside its host).
    fn clock(&self) -> Arc<dyn Clock>;
    /// The TLS provider of pod `pod`'s sidecar (seeded in the simulator, the OS's in real mode).
    fn tls_provider(&self, pod: usize) -> Arc<CryptoProvider>;
    /// The processing time pod `pod`'s sidecar spends on top of its real work (the
    /// simulator's cost model); `None` in a real world.
    fn cost(&self, pod: usize) -> Option<Arc<dyn ProcessingCost>>;
    /// Binding `port` for pod `pod` failed: a bug in the simulator (every pod port is its
    /// own), an operating error in a real world (another process holds the port).
    fn bind_failed(&self, pod: usize, port: u16, error: io::Error);
}

/// What every pod of one run shares, in any world.
pub struct Pods {
    pub plan: Arc<Plan>,
    pub seed: u64,
    pub faults: Arc<Faults>,
    pub recorder: Arc<Recorder>,
    /// The material of each pod with a bad identity (`None`: no certificate).
    pub bad: Arc<BTreeMap<usize, Option<Material>>>,
    /// The mesh CA (its trust bundle and root changes reach the agents).
    pub ca: Arc<CaServer>,
}

/// A started pod: its tasks (aborted when it crashes), its sidecar if it has one, and the
/// identity store its certificate agent fills (when it runs one).
pub struct RunningPod<N: Net> {
    pub tasks: Vec<JoinHandle<()>>,
    pub sidecar: Option<Arc<Sidecar<N>>>,
    pub agent_store: Option<Arc<IdentityStore>>,
}

/// Sidecars shared between a pod set and its readers (the boot wait).
pub type SharedSidecars<N> = Arc<Mutex<BTreeMap<usize, Arc<Sidecar<N>>>>>;
/// Every sidecar a run started, restarts included.
pub type StartedSidecars<N> = Arc<Mutex<Vec<Arc<Sidecar<N>>>>>;

/// The pods one place runs (a simulated node, or a real world's process), started,
/// crashed and restarted on the driver's commands.
pub struct PodSet<S: Seam> {
    pods: Arc<Pods>,
    seam: Arc<S>,
    /// Tasks of running pods, and the aborted tasks of crashed ones.
    tasks: BTreeMap<usize, Vec<JoinHandle<()>>>,
    aborted: BTreeMap<usize, Vec<JoinHandle<()>>>,
    /// The sidecars of running pods.
    pub sidecars: SharedSidecars<S::Net>,
    /// Every sidecar ever started, restarts included (metrics are read at the end).
    started: StartedSidecars<S::Net>,
    /// The identity stores of running pods whose agent asks the CA for a certificate.
    pub agent_stores: BTreeMap<usize, Arc<IdentityStore>>,
}

impl<S: Seam> PodSet<S> {
    pub fn new(pods: Arc<Pods>, seam: Arc<S>, started: StartedSidecars<S::Net>) -> PodSet<S> {
        PodSet {
            pods,
            seam,
            tasks: BTreeMap::new(),
            aborted: BTreeMap::new(),
            sidecars: Arc::new(Mutex::new(BTreeMap::new())),
            started,
            agent_stores: BTreeMap::new(),
        }
    }

    /// Starts pod `pod` (which is not running).
    pub fn start(&mut self, pod: usize) {
        let running = self.pods.start(&self.seam, pod);
        if let Some(sidecar) = running.sidecar {
            self.started.lock().expect("started lock").push(sidecar.clone());
            self.sidecars.lock().expect("sidecars lock").insert(pod, sidecar);
        }
        if let Some(store) = running.agent_store {
            self.agent_stores.insert(pod, store);
        }
        assert!(self.tasks.insert(pod, running.tasks).is_none(), "pod {pod} started twice");
    }

    /// Carries out `command`. The driver sends a pod's commands in order and only on a
    /// change, so they alternate; a crash of a pod that is down, or a restart of one that
    /// is up, is nothing to do.
    pub async fn handle(&mut self, command: Command) {
        match command {
            Command::Crash(pod) => {
                let Some(running) = self.tasks.remove(&pod) else { return };
                for t in &running {
                    t.abort();
                }
                self.aborted.entry(pod).or_default().extend(running);
                self.sidecars.lock().expect("sidecars lock").remove(&pod);
                self.agent_stores.remove(&pod);
            }
            Command::Restart(pod) => {
                if self.tasks.contains_key(&pod) {
                    return;
                }
                // An aborted task drops its listeners, freeing their ports, only when the
                // runtime next polls it: wait for that before binding them again.
                for t in self.aborted.remove(&pod).unwrap_or_default() {
                    let _ = t.await;
                }
                self.start(pod);
            }
        }
    }
}

/// Each pod's series, the instances of a restarted pod summed per label set.
pub fn pod_metrics<N: Net>(sidecars: &[Arc<Sidecar<N>>]) -> BTreeMap<String, Vec<Series>> {
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

/// A pod's bootstrap credential (its service-account token), from the run's seed.
pub fn token(seed: u64, pod: usize) -> String {
    format!("sa-token-{:016x}", sub_seed(seed, "sa_token", pod as u64))
}

/// The SPIFFE identity of pod `pod`: its namespace and service account.
pub fn identity(plan: &Plan, pod: usize) -> SpiffeId {
    let p = &plan.pods[pod];
    let sa = &plan.registry.pods[&p.name].service_account;
    SpiffeId::new(&p.namespace, sa)
}

/// The material of each sidecar pod with a bad identity, made at Unix time `now`; the
/// mesh CA trusts the federated mesh's root when a pod belongs to it.
pub fn bad_identities(
    plan: &Plan,
    seed: u64,
    mesh: &mut Authority,
    now: Duration,
) -> BTreeMap<usize, Option<Material>> {
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

impl Pods {
    /// Starts pod `pod` on `seam`: its app, and its sidecar with everything a sidecar
    /// runs. Call it where the pod's tasks are to run (in the simulator, inside the
    /// pod's node).
    pub fn start<S: Seam>(&self, seam: &Arc<S>, pod: usize) -> RunningPod<S::Net> {
        let app = self.start_app(seam, pod);
        if !self.plan.pods[pod].sidecar {
            return RunningPod { tasks: vec![app], sidecar: None, agent_store: None };
        }
        let mut running = self.start_sidecar(seam, pod);
        running.tasks.insert(0, app);
        running
    }

    /// Starts pod `pod`'s app alone (its task).
    pub fn start_app<S: Seam>(&self, seam: &Arc<S>, pod: usize) -> JoinHandle<()> {
        let p = &self.plan.pods[pod];
        let app = Arc::new(App {
            pod,
            name: p.name.clone(),
            model: p.app.clone(),
            faults: self.faults.clone(),
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(sub_seed(self.seed, "app", pod as u64))),
            recorder: Some(self.recorder.clone()),
        });
        let (app_net, app_port, tcp) = (seam.net(pod), p.app_port, p.protocol == AppProtocol::Tcp);
        let s = seam.clone();
        tokio::spawn(async move {
            let Some(listener) = bind(&*s, pod, app_net, app_port).await else { return };
            let _ = if tcp { app.serve_tcp(listener).await } else { app.serve(listener).await };
        })
    }

    /// Starts pod `pod`'s sidecar alone: its listeners, outlier timer, control-plane
    /// client and certificate agent (the pod must have a sidecar).
    pub fn start_sidecar<S: Seam>(&self, seam: &Arc<S>, pod: usize) -> RunningPod<S::Net> {
        let p = &self.plan.pods[pod];
        assert!(p.sidecar, "pod {} has no sidecar", p.name);
        let net = seam.net(pod);
        let clock = seam.clock();
        // A (re)started sidecar has no certificate until its agent gets one.
        let store =
            Arc::new(IdentityStore::new(identity(&self.plan, pod), DEFAULT_TRUST_DOMAIN, seam.tls_provider(pod)));
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
                bootstrap_rate_limit: p.bootstrap_rate_limit.clone(),
                tls: Some(Arc::new(tls)),
                cost: seam.cost(pod),
            },
            net.clone(),
            clock.clone(),
            self.recorder.clone(),
        )
        .expect("the rate limit was validated with the scenario");
        let (n2, n3) = (net.clone(), net.clone());
        let (in_port, out_port) = (p.inbound_port, p.outbound_port);
        let (s1, s2, s3) = (sidecar.clone(), sidecar.clone(), sidecar.clone());
        let (seam1, seam2) = (seam.clone(), seam.clone());
        let client = ClientConfig {
            host: ISTIOD.to_string(),
            port: control::PORT,
            seed: sub_seed(self.seed, "control_client", pod as u64),
        };
        let mut tasks = vec![
            tokio::spawn(control_client::run(s2, client)),
            tokio::spawn(async move {
                let Some(listener) = bind(&*seam1, pod, n2, in_port).await else { return };
                let _ = s1.run_inbound(listener).await;
            }),
            tokio::spawn(async move {
                let Some(listener) = bind(&*seam2, pod, n3, out_port).await else { return };
                let _ = s3.run_outbound(listener).await;
            }),
            tokio::spawn(sidecar.clone().run_outlier_timer()),
        ];
        if let Some(material) = self.bad.get(&pod) {
            let sink: &dyn IdentitySink = &*store;
            sink.set_trust_bundle(self.ca.trust_bundle()).expect("the mesh roots are valid anchors");
            if let Some((chain, key)) = material {
                sink.install(chain.clone(), key.clone()).expect("a bad identity's material installs");
            }
            return RunningPod { tasks, sidecar: Some(sidecar), agent_store: None };
        }
        let agent = Agent::new(
            AgentConfig {
                pod: p.name.clone(),
                id: identity(&self.plan, pod),
                token: token(self.seed, pod),
                ca: CaAddress { host: ISTIOD.to_string(), port: CA_PORT, timeout: REQUEST_TIMEOUT },
                ttl: self.plan.ca.workload_cert_ttl,
                seed: sub_seed(self.seed, "cert_agent", pod as u64),
            },
            net,
            clock,
            store.clone(),
            self.recorder.clone(),
            self.ca.roots_changed(),
        );
        tasks.push(tokio::spawn(agent.run()));
        RunningPod { tasks, sidecar: Some(sidecar), agent_store: Some(store) }
    }
}

/// Binds `port` on every interface of the pod. Every pod port is unique to its pod, and
/// a restarted pod binds only after its old tasks, which held the old listeners, have
/// finished: a failure is the seam's to report.
async fn bind<S: Seam + ?Sized>(seam: &S, pod: usize, net: S::Net, port: u16) -> Option<<S::Net as Net>::Listener> {
    match net.bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))).await {
        Ok(l) => Some(l),
        Err(e) => {
            seam.bind_failed(pod, port, e);
            None
        }
    }
}
