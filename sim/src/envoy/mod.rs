//! The envoy target: the scenario's mesh with real Envoy processes as the sidecars,
//! configured over xDS by meshsim's control plane.
//!
//! Everything but the sidecars is real mode's ([`crate::real`]): the loopback slice,
//! the system clock, the app models, the workload generator, the driver and its fault
//! schedule, the control plane's store. Each pod with a sidecar runs one Envoy
//! (`--concurrency 2` by default, Istio's), started with a bootstrap that points it at
//! the run's ADS server ([`xds::ads`]); the server translates each proxy's view of the
//! store ([`xds::translate`]) and pushes it again on every change, recording ACKs and
//! NACKs as meshsim's control plane does.
//!
//! Where things are, for pod `i` (addresses of [`crate::real::net::Addrs`]):
//! - its app on the pod's address, at its app port; the app's outbound requests go to
//!   the Envoy's outbound listener on the pod's address at its outbound port (meshsim's
//!   capture of outbound traffic);
//! - the Envoy's inbound listener and admin on its own address ([`Addrs::envoy`]),
//!   behind a fault relay ([`relay`]) on the pod's address at its inbound port, which
//!   is what other pods' clusters name as the pod's endpoint;
//! - the ADS server on a hidden address behind a relay on istiod's.
//!
//! Read back from Envoy ([`logs`]): response flags, upstream host and connection
//! security from its access log, ejections and readmissions from its outlier event
//! log. Not available from a plain Envoy: Istio's standard metrics (they need Istio's
//! stats extension) and spans; expectations on them are not checkable here
//! ([`crate::target::not_checkable`]).

pub mod logs;
pub mod process;
pub mod relay;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh::ca::service::CaServer;
use mesh::control::Store;
use mesh::net::{Clock, SystemClock};
use mesh::snapshot::Snapshot;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use xds::translate::{Placement, Resources};

use crate::driver::{Command, Context, Prepared, prepare};
use crate::pod::Pods;
use crate::real::net::{Addrs, ENVOY_MAX_PODS, RealClock, Shared};
use crate::real::{BOOT_LIMIT, Progress, RealEffects, RealSeam, drive, start_generator};
use crate::recorder::Recorder;
use crate::scenario::Plan;
use crate::world::{RunError, RunOutput};

/// An Envoy's admin port, on its own address.
pub const ADMIN_PORT: u16 = 15_000;
/// The ADS port on istiod's address (istiod's plaintext xDS port).
pub const ADS_PORT: u16 = 15_010;

/// How to run Envoy.
#[derive(Clone, Debug)]
pub struct Options {
    pub binary: PathBuf,
    /// Worker threads per Envoy.
    pub concurrency: u32,
}

/// What an envoy run adds to its output.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct EnvoyInfo {
    /// The Envoy release (`envoy --version`).
    pub version: String,
    /// Worker threads per Envoy.
    pub concurrency: u32,
    /// Each proxy's config as its Envoy reports it (admin `/config_dump`), read after boot.
    pub config_dumps: BTreeMap<String, serde_json::Value>,
    /// What the translation could not express, per proxy.
    pub untranslated: BTreeMap<String, Vec<String>>,
    /// Log lines meshsim could not read (at most [`MAX_BAD_LINES`]): each a sign that an
    /// access or outlier event was lost to the records.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreadable_log_lines: Vec<String>,
}

/// The most unreadable log lines a run keeps.
pub const MAX_BAD_LINES: usize = 20;

/// Runs `plan` with `seed` with Envoy sidecars, after its no-mesh baseline (on real
/// sockets: it has no sidecars) when it has one.
pub fn run(
    plan: Arc<Plan>,
    seed: u64,
    options: &Options,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<RunOutput, RunError> {
    let version = process::version(&options.binary).map_err(RunError::Setup)?;
    if plan.pods.len() > ENVOY_MAX_PODS {
        return Err(RunError::Setup(format!("the envoy target runs at most {ENVOY_MAX_PODS} pods")));
    }
    let baseline = match &plan.baseline {
        Some(b) => Some(Box::new(crate::real::run(b.clone(), seed, progress)?)),
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| RunError::Setup(format!("cannot start the runtime: {e}")))?;
    let out = runtime.block_on(run_world(plan, seed, options, version, progress));
    runtime.shutdown_timeout(Duration::from_secs(2));
    let mut out = out?;
    out.baseline = baseline;
    Ok(out)
}

/// A proxy's config at one store version: the snapshot and its Envoy resources.
type Translated = (u64, Arc<Snapshot>, Arc<Resources>);

/// The translated config of each proxy, as the ADS server serves it.
struct Views {
    store: Arc<Store>,
    placements: BTreeMap<String, Placement>,
    /// Per proxy: the store version it was translated at, the snapshot and resources.
    cache: Mutex<BTreeMap<String, Translated>>,
    untranslated: Mutex<BTreeMap<String, Vec<String>>>,
}

impl Views {
    fn current(&self, node: &str) -> Option<Translated> {
        let placement = self.placements.get(node)?;
        let (version, view) = self.store.view_of(node)?;
        if let Some(hit) = self.cache.lock().expect("views lock").get(node).filter(|c| c.0 == version) {
            return Some(hit.clone());
        }
        let snapshot = match view.config.compile() {
            Ok(s) => s,
            Err(e) => {
                let mut u = self.untranslated.lock().expect("views lock");
                let mine = u.entry(node.to_string()).or_default();
                if !mine.contains(&e) {
                    mine.push(e);
                }
                return None;
            }
        };
        let t = xds::translate::translate(&snapshot, placement);
        if !t.untranslated.is_empty() {
            let mut u = self.untranslated.lock().expect("views lock");
            let mine = u.entry(node.to_string()).or_default();
            for line in t.untranslated {
                if !mine.contains(&line) {
                    mine.push(line);
                }
            }
        }
        let entry = (version, Arc::new(snapshot), Arc::new(t.resources));
        self.cache.lock().expect("views lock").insert(node.to_string(), entry.clone());
        Some(entry)
    }
}

impl xds::ads::Source for Views {
    fn resources(&self, node: &str) -> Option<(u64, Arc<Resources>)> {
        self.current(node).map(|(v, _, r)| (v, r))
    }
    fn changes(&self) -> watch::Receiver<u64> {
        self.store.subscribe()
    }
}

/// One sidecar pod's Envoy: how to start it and where its admin listens.
struct Sidecar {
    launch: process::Launch,
    admin: SocketAddr,
}

/// The pods of an envoy run: apps (meshsim's), Envoys and relays, started, crashed and
/// restarted on the driver's commands.
struct EnvoyPods {
    pods: Arc<Pods>,
    seam: Arc<RealSeam>,
    shared: Arc<Shared>,
    sidecars: BTreeMap<usize, Sidecar>,
    running: BTreeMap<usize, Running>,
    errors: Arc<Mutex<Vec<String>>>,
}

struct Running {
    tasks: Vec<JoinHandle<()>>,
    envoy: Option<tokio::process::Child>,
}

impl EnvoyPods {
    fn start(&mut self, pod: usize) {
        let mut tasks = vec![self.pods.start_app(&self.seam, pod)];
        let mut envoy = None;
        if let Some(s) = self.sidecars.get(&pod) {
            let p = &self.pods.plan.pods[pod];
            let listen = SocketAddr::from((self.shared.addrs.pod(pod), p.inbound_port));
            let hidden = SocketAddr::from((self.shared.addrs.envoy(pod), p.inbound_port));
            let (shared, errors) = (self.shared.clone(), self.errors.clone());
            tasks.push(tokio::spawn(async move {
                if let Err(e) = relay::relay(shared, pod, listen, hidden).await {
                    errors.lock().expect("errors lock").push(format!("relay {listen}: {e}"));
                }
            }));
            match process::spawn(&s.launch) {
                Ok(child) => envoy = Some(child),
                Err(e) => self.errors.lock().expect("errors lock").push(format!("{}: {e}", s.launch.binary.display())),
            }
        }
        self.running.insert(pod, Running { tasks, envoy });
    }

    async fn stop(&mut self, pod: usize) {
        let Some(mut r) = self.running.remove(&pod) else { return };
        if let Some(child) = &mut r.envoy {
            let _ = child.kill().await;
        }
        for t in &r.tasks {
            t.abort();
        }
        // The aborted tasks drop their listeners when next polled: wait, so a restart
        // can bind the ports again.
        for t in r.tasks {
            let _ = t.await;
        }
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Crash(pod) => self.stop(pod).await,
            Command::Restart(pod) => {
                if !self.running.contains_key(&pod) {
                    self.start(pod);
                }
            }
        }
    }

    /// Whether every running Envoy answers `/ready` with 200.
    async fn all_ready(&self) -> bool {
        for (pod, s) in &self.sidecars {
            let Some(r) = self.running.get(pod) else { continue };
            if r.envoy.is_none() {
                continue;
            }
            if !matches!(process::admin_get(s.admin, "/ready").await, Ok((200, _))) {
                return false;
            }
        }
        true
    }
}

/// istiod's ADS server (behind its relay); a crash ends it and its streams, a restart
/// serves again from the same store.
async fn istiod(
    shared: Arc<Shared>,
    views: Arc<Views>,
    recorder: Arc<Recorder>,
    clock: Arc<RealClock>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    errors: Arc<Mutex<Vec<String>>>,
) {
    let start = || -> JoinHandle<()> {
        let (shared, views, recorder, clock, errors) =
            (shared.clone(), views.clone(), recorder.clone(), clock.clone(), errors.clone());
        tokio::spawn(async move {
            let listen = SocketAddr::from((shared.addrs.istiod(), ADS_PORT));
            let hidden = SocketAddr::from((shared.addrs.istiod_hidden(), ADS_PORT));
            let listener = match ads_listener(hidden).await {
                Ok(l) => l,
                Err(e) => {
                    errors.lock().expect("errors lock").push(format!("istiod: cannot bind {hidden}: {e}"));
                    return;
                }
            };
            let istiod = shared.istiod;
            let server = xds::ads::serve(listener, views, recorder, clock);
            let r = tokio::select! {
                r = server => r.map_err(|e| e.to_string()),
                r = relay::relay(shared, istiod, listen, hidden) => r.map_err(|e| e.to_string()),
            };
            if let Err(e) = r {
                errors.lock().expect("errors lock").push(format!("istiod: {e}"));
            }
        })
    };
    crate::driver::obey(&mut commands, start).await;
}

#[allow(clippy::disallowed_types, clippy::disallowed_methods)] // the ADS server's listener: a real one
async fn ads_listener(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Pod `pod`'s workload certificate, as istio-agent gets one for its Envoy: a fresh
/// P-256 key (Envoy loads RSA and ECDSA keys, not meshsim's Ed25519 ones), a CSR for
/// the pod's SPIFFE ID, signed by the mesh CA for the scenario's workload TTL.
fn issue(plan: &Plan, pod: usize, ca: &CaServer, now: Duration) -> Result<xds::translate::Identity, RunError> {
    let id = crate::pod::identity(plan, pod);
    let fail = |e: String| RunError::Setup(format!("certificate for {}: {e}", plan.pods[pod].name));
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| fail(e.to_string()))?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let uri = id.to_string().try_into().map_err(|e: rcgen::Error| fail(e.to_string()))?;
    params.subject_alt_names = vec![rcgen::SanType::URI(uri)];
    let csr = params.serialize_request(&key).map_err(|e| fail(e.to_string()))?;
    let issued = ca.sign(csr.der(), &id, plan.ca.workload_cert_ttl, now).map_err(|e| fail(e.to_string()))?;
    let pem_of = |der: &[u8]| pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()));
    Ok(xds::translate::Identity {
        cert_chain: issued.chain.iter().map(|d| pem_of(d)).collect(),
        private_key: key.serialize_pem(),
        trust_bundle: ca.trust_bundle().iter().map(|d| pem_of(d)).collect(),
    })
}

/// A per-run folder for bootstraps and logs.
fn work_dir(addrs: &Addrs) -> Result<PathBuf, RunError> {
    let dir = std::env::temp_dir().join(format!("meshsim-envoy-{}-{}", std::process::id(), addrs.istiod()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| RunError::Setup(format!("cannot create {}: {e}", dir.display())))?;
    Ok(dir)
}

async fn run_world(
    plan: Arc<Plan>,
    seed: u64,
    options: &Options,
    version: String,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<RunOutput, RunError> {
    let wall = SystemClock::new();
    let clock = Arc::new(RealClock::new());
    let Prepared { requests, recorder, faults, ca, bad, store, hard_stop } = prepare(&plan, seed, clock.unix_time());
    let issued = requests.len();
    let intended: Vec<Duration> = requests.iter().map(|r| r.intended).collect();
    let addrs = Addrs::reserve(plan.pods.len()).map_err(|e| RunError::Setup(e.to_string()))?;
    let dir = work_dir(&addrs)?;
    let node_of = plan.pods.iter().map(|p| p.node).collect();
    let shared = Shared::new(addrs, faults.clone(), node_of, plan.latency_min);
    shared.send_proxy_protocol();
    let seam = Arc::new(RealSeam::new(shared.clone(), clock.clone()));
    let errors = Arc::new(Mutex::new(Vec::new()));

    // Where every pod's inbound side is, as its peers dial it.
    let peers: BTreeMap<String, SocketAddr> = plan
        .pods
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let port = if p.sidecar { p.inbound_port } else { p.app_port };
            (p.name.clone(), SocketAddr::from((shared.addrs.pod(i), port)))
        })
        .collect();
    let mut placements = BTreeMap::new();
    let mut no_identity = Vec::new();
    let mut sidecars = BTreeMap::new();
    let mut tailer_files = Vec::new();
    for (i, p) in plan.pods.iter().enumerate().filter(|(_, p)| p.sidecar) {
        let (ip, envoy_ip) = (shared.addrs.pod(i), shared.addrs.envoy(i));
        let access_log = dir.join(format!("{}.access.log", p.name));
        let outlier_log = dir.join(format!("{}.outlier.log", p.name));
        let service = format!("{}.{}.{}", p.service, p.namespace, mesh::registry::DOMAIN_SUFFIX);
        placements.insert(
            p.name.clone(),
            Placement {
                pod: p.name.clone(),
                namespace: p.namespace.clone(),
                labels: p.labels.clone(),
                service: service.clone(),
                outbound: SocketAddr::from((ip, p.outbound_port)),
                inbound: SocketAddr::from((envoy_ip, p.inbound_port)),
                app: SocketAddr::from((ip, p.app_port)),
                source: IpAddr::V4(ip),
                peers: peers.clone(),
                access_log: access_log.clone(),
                rate_limit: p.bootstrap_rate_limit.clone(),
                identity: match p.bad_identity {
                    None => Some(issue(&plan, i, &ca, clock.unix_time())?),
                    Some(_) => {
                        no_identity.push(p.name.clone());
                        None
                    }
                },
            },
        );
        let admin = SocketAddr::from((envoy_ip, ADMIN_PORT));
        let bootstrap = xds::bootstrap::Bootstrap {
            node: p.name.clone(),
            cluster: service,
            admin,
            control_plane: SocketAddr::from((shared.addrs.istiod(), ADS_PORT)),
            source: IpAddr::V4(ip),
            outlier_log: outlier_log.clone(),
        };
        let path = dir.join(format!("{}.bootstrap.json", p.name));
        std::fs::write(&path, bootstrap.to_json().to_string())
            .map_err(|e| RunError::Setup(format!("cannot write {}: {e}", path.display())))?;
        let launch = process::Launch {
            binary: options.binary.clone(),
            bootstrap: path,
            concurrency: options.concurrency,
            log: dir.join(format!("{}.envoy.log", p.name)),
        };
        sidecars.insert(i, Sidecar { launch, admin });
        tailer_files.push((p.name.clone(), access_log, outlier_log));
    }
    let views = Arc::new(Views {
        store: store.clone(),
        placements,
        cache: Mutex::new(BTreeMap::new()),
        untranslated: Mutex::new(BTreeMap::new()),
    });

    let (istiod_tx, istiod_rx) = mpsc::unbounded_channel();
    tokio::spawn(istiod(shared.clone(), views.clone(), recorder.clone(), clock.clone(), istiod_rx, errors.clone()));
    let pods = Arc::new(Pods {
        plan: plan.clone(),
        seed,
        faults: faults.clone(),
        recorder: recorder.clone(),
        bad,
        ca: ca.clone(),
    });
    let mut set = EnvoyPods {
        pods,
        seam: seam.clone(),
        shared: shared.clone(),
        sidecars,
        running: BTreeMap::new(),
        errors: errors.clone(),
    };
    for pod in (0..plan.pods.len()).filter(|&p| plan.pods[p].running_at_start) {
        set.start(pod);
    }

    // Boot: every Envoy ready (its first config applied), within the limit.
    let boot = async {
        loop {
            if let Some(e) = errors.lock().expect("errors lock").first() {
                return Err(RunError::Setup(e.clone()));
            }
            if set.all_ready().await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    match tokio::time::timeout(BOOT_LIMIT, boot).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(RunError::Setup(format!(
                "boot did not finish within {BOOT_LIMIT:?}: Envoys not ready (their logs: {})",
                dir.display()
            )));
        }
    }
    let mut config_dumps = BTreeMap::new();
    for (pod, s) in &set.sidecars {
        if let Ok((200, body)) = process::admin_get(s.admin, "/config_dump?include_eds").await {
            let value = serde_json::from_str(&dechunk(&body)).unwrap_or(serde_json::Value::String(body));
            config_dumps.insert(plan.pods[*pod].name.clone(), value);
        }
    }

    let (pods_tx, mut pods_rx) = mpsc::unbounded_channel::<Command>();
    let pod_set = tokio::spawn(async move {
        while let Some(cmd) = pods_rx.recv().await {
            set.handle(cmd).await;
        }
        // The run is over: end every Envoy.
        let all: Vec<usize> = set.running.keys().copied().collect();
        for pod in all {
            set.stop(pod).await;
        }
    });

    clock.start();
    let epoch = clock.unix_time().saturating_sub(clock.now());
    let pods_by_addr = peers.iter().map(|(name, addr)| (*addr, name.clone())).collect();
    let views2 = views.clone();
    let ejection_time: Arc<logs::EjectionTime> = Arc::new(move |proxy: &str, cluster: &str, n: u32| {
        let outlier = views2.current(proxy).and_then(|(_, s, _)| s.clusters.get(cluster).and_then(|c| c.outlier));
        outlier.map_or(Duration::ZERO, |o| {
            (o.base_ejection_time * n.max(1)).min(o.base_ejection_time.max(o.max_ejection_time))
        })
    });
    let mut tailer = logs::Tailer::new(pods_by_addr, recorder.clone(), epoch, ejection_time);
    for (pod, access, outlier) in tailer_files {
        tailer.follow(&pod, logs::Kind::Access, access);
        tailer.follow(&pod, logs::Kind::Outlier, outlier);
    }

    start_generator(&plan, requests, &seam, &faults, &recorder);

    let effects = RealEffects { pods: pods_tx, istiod: istiod_tx, nodes: plan.nodes.len(), shared: shared.clone() };
    let ctx = Context { plan: &plan, faults: &faults, recorder: &recorder, store: &store, ca: &ca };
    drive(&ctx, &clock, &effects, &intended, hard_stop, progress, || {
        tailer.poll();
        errors.lock().expect("errors lock").first().cloned()
    })
    .await?;
    let sim_elapsed = clock.now();
    // Envoy flushes its logs every FLUSH_INTERVAL: read until they are quiet.
    for _ in 0..50 {
        tokio::time::sleep(process::FLUSH_INTERVAL * 2).await;
        if tailer.poll() == 0 {
            break;
        }
    }
    drop(effects);
    let _ = pod_set.await;
    let (records, events) = recorder.finish().map_err(|l| RunError::Lost { missing: l.missing })?;
    let untranslated = views.untranslated.lock().expect("views lock").clone();
    // `MESHSIM_KEEP_ENVOY_DIR=1` keeps the bootstraps and logs for inspection.
    if std::env::var_os("MESHSIM_KEEP_ENVOY_DIR").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("envoy files kept in {}", dir.display());
    }
    Ok(RunOutput {
        records,
        events,
        issued,
        metrics: BTreeMap::new(),
        sim_elapsed,
        wall: wall.now(),
        baseline: None,
        target: crate::target::Target::Envoy,
        envoy: Some(EnvoyInfo {
            version,
            concurrency: options.concurrency,
            config_dumps,
            untranslated,
            unreadable_log_lines: tailer.bad_lines.iter().take(MAX_BAD_LINES).cloned().collect(),
        }),
    })
}

/// The body of a chunked HTTP/1.1 response without its chunk framing (a plain body is
/// returned as it is).
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((size, after)) = rest.split_once("\r\n") else { return body.to_string() };
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { return body.to_string() };
        if n == 0 {
            return out;
        }
        if after.len() < n {
            return body.to_string();
        }
        out.push_str(&after[..n]);
        rest = after[n..].strip_prefix("\r\n").unwrap_or(&after[n..]);
    }
}
