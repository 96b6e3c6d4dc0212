//! The control plane and its proxies on real loopback sockets (the tokio `Net`): istiod's
//! config service pushes each sidecar its view, the sidecars ACK it and route by it, a
//! change moves the traffic, a config Envoy would refuse is NACKed while the last good
//! one keeps serving, and after the control plane restarts the proxies reconnect and
//! resync. The same code runs in the simulator in every control-plane scenario.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::Full;
use mesh::control::store::{self, Store};
use mesh::control::{ControlEvent, ControlEventKind, ControlEvents, ControlPlane};
use mesh::net::{Clock, Listener, Net, SystemClock, TokioNet};
use mesh::proxy::control_client::{self, ClientConfig};
use mesh::proxy::pool::Pool;
use mesh::proxy::telemetry::MemoryTelemetry;
use mesh::proxy::{Sidecar, SidecarConfig};
use mesh::registry::{Pod, Registry, Service};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sim::app::{App, POD_HEADER};
use sim::net::Faults;
use sim::scenario::{AppModel, Latency};
use tokio::sync::Notify;

/// A bound on every wait, so a broken push fails the test instead of hanging it.
const WAIT: Duration = Duration::from_secs(10);

/// The control plane's events, and a wake-up for whoever waits on one.
#[derive(Default)]
struct Seen {
    events: Mutex<Vec<ControlEvent>>,
    arrived: Notify,
}

impl ControlEvents for Seen {
    fn control_event(&self, e: ControlEvent) {
        self.events.lock().expect("events").push(e);
        self.arrived.notify_waiters();
    }
}

impl Seen {
    fn count(&self, f: impl Fn(&ControlEvent) -> bool) -> usize {
        self.events.lock().expect("events").iter().filter(|e| f(e)).count()
    }

    /// Waits until `n` events match `f`; the last of them.
    async fn until(&self, n: usize, f: impl Fn(&ControlEvent) -> bool) -> ControlEvent {
        let wait = async {
            loop {
                let arrived = self.arrived.notified();
                let found: Vec<ControlEvent> =
                    self.events.lock().expect("events").iter().filter(|e| f(e)).cloned().collect();
                if found.len() >= n {
                    return found[n - 1].clone();
                }
                arrived.await;
            }
        };
        match tokio::time::timeout(WAIT, wait).await {
            Ok(e) => e,
            Err(_) => panic!("fewer than {n} such events: {:?}", self.events.lock().expect("events")),
        }
    }
}

fn acked(pod: &'static str, version: u64) -> impl Fn(&ControlEvent) -> bool {
    move |e| e.proxy == pod && e.kind == ControlEventKind::Acked && e.version == version
}

fn resources(text: &str) -> Vec<store::StoredResource> {
    store::parse("test.yaml", text).expect("valid resources")
}

const SUBSETS: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend}
spec:
  host: backend
  subsets:
    - {name: v1, labels: {version: v1}}
    - {name: v2, labels: {version: v2}}
";

fn route_to(subset: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: backend}}
spec:
  hosts: [backend]
  http:
    - route:
        - destination: {{host: backend, subset: {subset}}}
"
    )
}

/// The same subsets with a consistent-hash ring Envoy refuses (Istio accepts it).
const HUGE_RING: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend}
spec:
  host: backend
  trafficPolicy:
    loadBalancer:
      consistentHash: {httpHeaderName: x-user, ringHash: {minimumRingSize: 10000000}}
  subsets:
    - {name: v1, labels: {version: v1}}
    - {name: v2, labels: {version: v2}}
";

async fn listen(port: u16) -> <TokioNet as Net>::Listener {
    TokioNet.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await.expect("bind on loopback")
}

fn sidecar(pod: &str, service: &str, app_port: u16, seed: u64) -> Arc<Sidecar<TokioNet>> {
    let cfg = SidecarConfig {
        pod: pod.into(),
        workload: pod.rsplit_once('-').map_or(pod, |(w, _)| w).into(),
        namespace: "default".into(),
        service: format!("{service}.default.svc.cluster.local"),
        labels: BTreeMap::new(),
        app_port,
        seed,
        rate_limit: None,
        tls: None,
        cost: None,
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    Sidecar::awaiting_config(cfg, TokioNet, clock, Arc::new(MemoryTelemetry::default())).expect("no rate limit")
}

/// A backend pod: app and inbound sidecar on loopback, its sidecar fed by the control
/// plane at `cp_port`.
async fn backend(name: &'static str, seed: u64, inbound: <TokioNet as Net>::Listener, cp_port: u16) {
    let app_l = listen(0).await;
    let app_port = app_l.local_addr().expect("addr").port();
    let app = Arc::new(App {
        pod: 0,
        name: name.into(),
        model: AppModel {
            latency: Latency::Constant(Duration::from_millis(1)),
            error_rate_ppm: 0,
            error_status: 500,
            fail_attempts: None,
            response_headers: Vec::new(),
        },
        faults: Faults::new(1, BTreeMap::new()),
        rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
        recorder: None,
    });
    let s = sidecar(name, "backend", app_port, seed);
    tokio::spawn(control_client::run(s.clone(), ClientConfig { host: "127.0.0.1".into(), port: cp_port, seed }));
    tokio::spawn(async move {
        let _ = app.serve(app_l).await;
    });
    tokio::spawn(async move {
        let _ = s.run_inbound(inbound).await;
    });
}

/// Sends `n` requests to `backend` through the frontend's outbound port; the pods that
/// served them, with counts.
async fn serving(out_port: u16, n: usize) -> BTreeMap<String, usize> {
    let pool = Pool::new(TokioNet);
    let mut by_pod = BTreeMap::new();
    for i in 0..n {
        let req = Request::get("/")
            .header(header::HOST, "backend")
            .header("x-request-id", i.to_string())
            .body(Full::new(Bytes::new()))
            .expect("request");
        let resp = pool.send("127.0.0.1", out_port, WAIT, req).await.expect("a response");
        assert_eq!(resp.status(), 200, "request {i}: {resp:?}");
        let pod = resp.headers().get(POD_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("?").to_string();
        *by_pod.entry(pod).or_insert(0) += 1;
    }
    by_pod
}

#[tokio::test]
async fn proxies_on_loopback_follow_pushes_nack_what_envoy_refuses_and_resync_after_a_control_plane_restart() {
    // Pods first, so the registry knows their real inbound ports.
    let (in_v1, in_v2) = (listen(0).await, listen(0).await);
    let port = |l: &<TokioNet as Net>::Listener| l.local_addr().expect("addr").port();
    let mut registry = Registry::default();
    for s in ["frontend", "backend"] {
        registry.add_service(Service::http(s, "default", 80));
    }
    let pods = [
        ("frontend-0", "frontend", "v1", 1),
        ("backend-v1-0", "backend", "v1", port(&in_v1)),
        ("backend-v2-0", "backend", "v2", port(&in_v2)),
    ];
    for (name, service, version, inbound_port) in pods {
        registry.add_pod(Pod {
            name: name.into(),
            namespace: "default".into(),
            service: service.into(),
            labels: BTreeMap::from([("app".into(), service.into()), ("version".into(), version.into())]),
            service_account: service.into(),
            host: "127.0.0.1".into(),
            inbound_port,
            sidecar: true,
        });
    }
    let fqdn = |s: &str| format!("{s}.default.svc.cluster.local");
    let egress = BTreeMap::from([(fqdn("frontend"), BTreeSet::from([fqdn("backend")]))]);
    let initial = resources(&format!("{SUBSETS}---\n{}", route_to("v1")));
    let store = Arc::new(Store::new(registry, initial, egress, Box::new(|_| false)).expect("valid config"));

    let seen = Arc::new(Seen::default());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    let cp_listener = listen(0).await;
    let cp_port = port(&cp_listener);
    let cp = ControlPlane::new(store.clone(), clock.clone(), seen.clone());
    let control_plane = tokio::spawn(cp.clone().serve(cp_listener));

    backend("backend-v1-0", 11, in_v1, cp_port).await;
    backend("backend-v2-0", 12, in_v2, cp_port).await;
    let frontend = sidecar("frontend-0", "frontend", 1, 13);
    assert!(!frontend.is_ready(), "no config before the first push");
    let out = listen(0).await;
    let out_port = port(&out);
    tokio::spawn(control_client::run(
        frontend.clone(),
        ClientConfig { host: "127.0.0.1".into(), port: cp_port, seed: 13 },
    ));
    tokio::spawn(frontend.clone().run_outbound(out));

    // Version 1, pushed on connect: everything to v1.
    seen.until(1, acked("frontend-0", 1)).await;
    for pod in ["backend-v1-0", "backend-v2-0"] {
        seen.until(1, acked(pod, 1)).await;
    }
    assert!(frontend.is_ready());
    assert_eq!(serving(out_port, 20).await, BTreeMap::from([("backend-v1-0".to_string(), 20)]));

    // Version 2 moves the route to v2.
    assert_eq!(store.apply(resources(&route_to("v2"))).expect("valid").version, 2);
    seen.until(1, acked("frontend-0", 2)).await;
    assert_eq!(serving(out_port, 20).await, BTreeMap::from([("backend-v2-0".to_string(), 20)]));

    // Version 3 has a ring Envoy refuses: NACKed, and version 2 keeps serving.
    assert_eq!(store.apply(resources(HUGE_RING)).expect("Istio accepts it").version, 3);
    let nack = seen.until(1, |e| e.proxy == "frontend-0" && matches!(e.kind, ControlEventKind::Nacked { .. })).await;
    assert_eq!(nack.version, 3);
    assert!(
        matches!(&nack.kind, ControlEventKind::Nacked { reason } if reason.contains("MinimumRingSize")),
        "{nack:?}"
    );
    assert_eq!(serving(out_port, 20).await, BTreeMap::from([("backend-v2-0".to_string(), 20)]));

    // The control plane goes away: the proxies keep serving their last good config.
    control_plane.abort();
    let _ = control_plane.await;
    assert_eq!(serving(out_port, 10).await, BTreeMap::from([("backend-v2-0".to_string(), 10)]));

    // Meanwhile the config is fixed and routed back to v1; the control plane returns on
    // its port and every proxy reconnects, gets the whole view (resync) and ACKs it.
    assert_eq!(store.apply(resources(&format!("{SUBSETS}---\n{}", route_to("v1")))).expect("valid").version, 4);
    let restarted = tokio::spawn(cp.serve(listen(cp_port).await));
    let connected = |pod: &'static str| move |e: &ControlEvent| e.proxy == pod && e.kind == ControlEventKind::Connected;
    for pod in ["frontend-0", "backend-v1-0", "backend-v2-0"] {
        seen.until(2, connected(pod)).await;
        seen.until(1, acked(pod, 4)).await;
    }
    assert_eq!(serving(out_port, 20).await, BTreeMap::from([("backend-v1-0".to_string(), 20)]));
    assert_eq!(seen.count(|e| matches!(e.kind, ControlEventKind::Nacked { .. }) && e.version != 3), 0);
    restarted.abort();
}
