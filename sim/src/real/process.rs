//! Real mode's components as processes of their own: `meshsim control` (istiod: the
//! control plane and the CA), `meshsim app` (one pod's app) and `meshsim sidecar` (one
//! pod's sidecar, with its control-plane client and certificate agent), each started by
//! hand or by an orchestrator with the scenario file and the run's loopback slice
//! (`--slice B`: every address is `127.B.x.y`, see [`super::net`]).
//!
//! The processes agree without talking about it first: the scenario fixes every pod's
//! address and ports, and its seed fixes the CA's bootstrap credentials (each pod's
//! service-account token), so a sidecar started anywhere on the machine finds istiod,
//! proves who it is, gets its certificate and its config, and serves.
//!
//! Not here: workloads, faults and expectations — a run of those is `meshsim run
//! --target real`, whose components are tasks of one process.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh::ca::service::{CA_PORT, CaServer};
use mesh::control::{self, ControlPlane};
use mesh::net::{Clock, Net};
use mesh::proxy::ProcessingCost;
use mesh::proxy::tls::os_provider;
use rustls::crypto::CryptoProvider;

use super::net::{Addrs, RealClock, RealNet, Shared};
use crate::driver::{Prepared, prepare};
use crate::pod::{Pods, Seam};
use crate::scenario::Plan;

/// Which component a process runs.
#[derive(Clone, Debug)]
pub enum Component {
    Control,
    App(String),
    Sidecar(String),
}

/// The seam of one component process: the slice's addresses, no faults.
struct ProcessSeam {
    shared: Arc<Shared>,
    clock: Arc<RealClock>,
    errors: Mutex<Vec<String>>,
}

impl Seam for ProcessSeam {
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

/// Every pod's addresses in slice `slice`, one line each: what an orchestrator (or a
/// person) needs to reach them.
pub fn addresses(plan: &Plan, slice: u8) -> Vec<String> {
    let addrs = Addrs::fixed(slice, plan.pods.len());
    let mut out =
        vec![format!("istiod {}:{} (config) {}:{CA_PORT} (CA)", addrs.istiod(), control::PORT, addrs.istiod())];
    for (i, p) in plan.pods.iter().enumerate() {
        let ip = addrs.pod(i);
        let sidecar = if p.sidecar {
            format!(" inbound {ip}:{} outbound {ip}:{}", p.inbound_port, p.outbound_port)
        } else {
            String::new()
        };
        out.push(format!("pod {} app {ip}:{}{sidecar}", p.name, p.app_port));
    }
    out
}

/// Runs `component` of `plan` in slice `slice` for `length` (or until killed), printing
/// `ready` through `say` once it serves (a sidecar: once configured and certified).
pub fn run(
    plan: Arc<Plan>,
    component: Component,
    slice: u8,
    length: Option<Duration>,
    say: &(dyn Fn(String) + Sync),
) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let out = runtime.block_on(async {
        let work = serve(plan, component, slice, say);
        match length {
            Some(l) => tokio::time::timeout(l, work).await.unwrap_or(Ok(())),
            None => work.await,
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    out
}

/// Whether `component` names something `plan` has: the pod, and for a sidecar a pod with
/// one (invalid input otherwise).
pub fn check(plan: &Plan, component: &Component) -> Result<(), String> {
    match component {
        Component::Control => Ok(()),
        Component::App(name) => pod_index(plan, name).map(|_| ()),
        Component::Sidecar(name) => match plan.pods[pod_index(plan, name)?].sidecar {
            true => Ok(()),
            false => Err(format!("pod {name:?} has no sidecar (sidecar: false)")),
        },
    }
}

fn pod_index(plan: &Plan, name: &str) -> Result<usize, String> {
    plan.pods.iter().position(|p| p.name == name).ok_or_else(|| {
        let names: Vec<&str> = plan.pods.iter().map(|p| p.name.as_str()).collect();
        format!("no pod {name:?} in the scenario (its pods: {})", names.join(", "))
    })
}

async fn serve(plan: Arc<Plan>, component: Component, slice: u8, say: &(dyn Fn(String) + Sync)) -> Result<(), String> {
    let clock = Arc::new(RealClock::new());
    clock.start();
    let Prepared { recorder, faults, ca, bad, store, .. } = prepare(&plan, plan.seed, clock.unix_time());
    let node_of = plan.pods.iter().map(|p| p.node).collect();
    let shared = Shared::new(Addrs::fixed(slice, plan.pods.len()), faults.clone(), node_of, Duration::ZERO);
    match component {
        Component::Control => {
            serve_control(RealNet::new(shared.istiod, shared.clone()), store, ca, clock, recorder, say).await
        }
        Component::App(name) => {
            let pod = pod_index(&plan, &name)?;
            let seam = Arc::new(ProcessSeam { shared, clock, errors: Mutex::new(Vec::new()) });
            let pods = Pods { plan: plan.clone(), seed: plan.seed, faults, recorder, bad, ca };
            let task = pods.start_app(&seam, pod);
            // Give the bind its turn: a port another process holds is an error now.
            tokio::time::sleep(Duration::from_millis(50)).await;
            if let Some(e) = seam.errors.lock().expect("errors lock").first() {
                return Err(e.clone());
            }
            say(format!("ready: app of {name}"));
            let _ = task.await;
            Ok(())
        }
        Component::Sidecar(name) => {
            let pod = pod_index(&plan, &name)?;
            let seam = Arc::new(ProcessSeam { shared, clock, errors: Mutex::new(Vec::new()) });
            let pods = Pods { plan: plan.clone(), seed: plan.seed, faults, recorder, bad, ca };
            let running = pods.start_sidecar(&seam, pod);
            let sidecar = running.sidecar.expect("a sidecar pod runs a sidecar");
            let ready = async {
                if let Some(store) = &running.agent_store {
                    store.certificate_installed().await;
                }
                while !sidecar.is_ready() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            };
            if tokio::time::timeout(super::BOOT_LIMIT, ready).await.is_err() {
                return Err(format!(
                    "sidecar of {name} got no config and certificate from istiod at {} within {:?}",
                    seam.shared.addrs.istiod(),
                    super::BOOT_LIMIT
                ));
            }
            if let Some(e) = seam.errors.lock().expect("errors lock").first() {
                return Err(e.clone());
            }
            say(format!("ready: sidecar of {name}"));
            for t in running.tasks {
                let _ = t.await;
            }
            Ok(())
        }
    }
}

async fn serve_control(
    net: RealNet,
    store: Arc<mesh::control::Store>,
    ca: Arc<CaServer>,
    clock: Arc<RealClock>,
    recorder: Arc<crate::recorder::Recorder>,
    say: &(dyn Fn(String) + Sync),
) -> Result<(), String> {
    let addr = |port| std::net::SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, port));
    let push = net.bind(addr(control::PORT)).await.map_err(|e| format!("istiod: {e}"))?;
    let csr = net.bind(addr(CA_PORT)).await.map_err(|e| format!("istiod: {e}"))?;
    say("ready: istiod".to_string());
    let cp = ControlPlane::new(store, clock.clone(), recorder);
    let _ = tokio::join!(cp.serve(push), ca.serve(csr, clock));
    Ok(())
}
