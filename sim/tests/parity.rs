//! Parity: the same request path — client → sidecar (outbound) → sidecar (inbound) →
//! app — runs over real loopback sockets (tokio) and inside the simulator (turmoil),
//! with the same code above the `Net`/`Clock` seam, and gives the same outcome. The
//! sidecar-to-sidecar hop is mutual TLS in both worlds, with certificates from the mesh
//! CA installed through the agent's sink: real mode over the OS-backed provider
//! (`mesh::proxy::tls::real_mode`), the simulator over its seeded one.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::Full;
use mesh::ca::{Authority, CaOptions, keys};
use mesh::identity::IdentitySink;
use mesh::identity::{DEFAULT_TRUST_DOMAIN, IdentityStore, SpiffeId};
use mesh::net::{Clock, Listener, Net, SystemClock, TokioNet};
use mesh::proxy::pool::Pool;
use mesh::proxy::telemetry::{MemoryTelemetry, Telemetry};
use mesh::proxy::tls::{self, SidecarTls};
use mesh::proxy::{Sidecar, SidecarConfig};
use mesh::registry::{Pod, Registry, Service};
use mesh::snapshot::{Snapshot, compile};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sim::app::{App, POD_HEADER};
use sim::net::{Faults, Local, SimClock, SimNet};
use sim::scenario::{AppModel, Latency};

/// What the client saw, plus what both sidecars logged.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    status: u16,
    pod: Option<String>,
    server: Option<String>,
    body: Bytes,
    flags: Vec<String>,
    /// The client identity the server's sidecar verified.
    principal: Option<String>,
}

/// The server's and the client's identities.
fn ids() -> (SpiffeId, SpiffeId) {
    (SpiffeId::new("default", "backend"), SpiffeId::new("default", "frontend"))
}

/// Certificates from one mesh CA, issued at Unix time `now`, installed into each store.
fn provision(now: Duration, stores: [&IdentityStore; 2]) {
    let mut ca = Authority::self_signed(CaOptions::default(), 7, now);
    for (i, store) in stores.into_iter().enumerate() {
        let key = keys::ed25519_key(&mut ChaCha8Rng::seed_from_u64(i as u64));
        let issued = ca.sign_csr(&keys::csr_der(store.id(), &key), store.id(), None, now).expect("issued");
        let sink: &dyn IdentitySink = store;
        sink.set_trust_bundle(ca.trust_bundle().to_vec()).expect("bundle");
        sink.install(issued.chain, key.serialize_der()).expect("installed");
    }
}

/// Ports to bind: 0 in real mode (the OS picks), fixed in sim (ports name pods there).
struct Ports {
    /// Loopback in real mode; all interfaces of the simulated node in sim.
    ip: Ipv4Addr,
    app: u16,
    inbound: u16,
    outbound: u16,
}

async fn bind<N: Net>(net: &N, ip: Ipv4Addr, port: u16) -> (N::Listener, u16) {
    let l = net.bind(SocketAddr::from((ip, port))).await.expect("bind");
    let port = l.local_addr().expect("local addr").port();
    (l, port)
}

fn registry(host: &str, inbound_port: u16) -> Registry {
    let mut registry = Registry::default();
    registry.add_service(Service::http("backend", "default", 80));
    registry.add_pod(Pod {
        name: "backend-v1-0".into(),
        namespace: "default".into(),
        service: "backend".into(),
        labels: BTreeMap::from([("app".into(), "backend".into())]),
        service_account: "backend".into(),
        host: host.into(),
        inbound_port,
        sidecar: true,
    });
    registry
}

fn snapshot(host: &str, inbound_port: u16) -> Arc<Snapshot> {
    let (snapshot, findings) = compile(&registry(host, inbound_port), &[]);
    assert!(!findings.has_errors(), "{findings:?}");
    Arc::new(snapshot)
}

/// The server pod: app + sidecar inbound. Returns the inbound port.
async fn server<N: Net>(
    net: N,
    ports: &Ports,
    clock: Arc<dyn Clock>,
    sink: Arc<dyn Telemetry>,
    tls: Arc<SidecarTls>,
) -> u16 {
    let (app_l, app_port) = bind(&net, ports.ip, ports.app).await;
    let (in_l, in_port) = bind(&net, ports.ip, ports.inbound).await;
    let app = Arc::new(App {
        pod: 0,
        name: "backend-v1-0".into(),
        model: AppModel {
            latency: Latency::Constant(Duration::from_millis(2)),
            error_rate_ppm: 0,
            error_status: 500,
            fail_attempts: None,
            response_headers: Vec::new(),
        },
        faults: Faults::new(1, BTreeMap::new()),
        rng: Mutex::new(ChaCha8Rng::seed_from_u64(1)),
        recorder: None,
    });
    let cfg = SidecarConfig {
        pod: "backend-v1-0".into(),
        workload: "backend-v1".into(),
        namespace: "default".into(),
        service: "backend.default.svc.cluster.local".into(),
        labels: BTreeMap::new(),
        app_port,
        seed: 1,
        rate_limit: None,
        tls: Some(tls),
        cost: None,
    };
    // The inbound side does not route: its snapshot is never consulted.
    let sidecar = Sidecar::new(cfg, net, clock, sink, Arc::new(Snapshot::default())).expect("no rate limit");
    tokio::spawn(async move {
        let _ = app.serve(app_l).await;
    });
    tokio::spawn(async move {
        let _ = sidecar.run_inbound(in_l).await;
    });
    in_port
}

/// The client pod: its app sends one request through its sidecar's outbound listener.
async fn client<N: Net>(
    net: N,
    server_host: &str,
    in_port: u16,
    ports: &Ports,
    clock: Arc<dyn Clock>,
    sink: Arc<dyn Telemetry>,
    tls: Arc<SidecarTls>,
) -> Response<Bytes> {
    let (out_l, out_port) = bind(&net, ports.ip, ports.outbound).await;
    let cfg = SidecarConfig {
        pod: "frontend-v1-0".into(),
        workload: "frontend-v1".into(),
        namespace: "default".into(),
        service: "frontend.default.svc.cluster.local".into(),
        labels: BTreeMap::new(),
        app_port: 1,
        seed: 2,
        rate_limit: None,
        tls: Some(tls),
        cost: None,
    };
    let sidecar = Sidecar::new(cfg, net.clone(), clock, sink, snapshot(server_host, in_port)).expect("no rate limit");
    let task = tokio::spawn(async move {
        let _ = sidecar.run_outbound(out_l).await;
    });
    let req = Request::get("/hello")
        .header(header::HOST, "backend")
        .header("x-request-id", "7")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = Pool::new(net).send("127.0.0.1", out_port, Duration::from_secs(1), req).await.expect("response");
    task.abort();
    resp
}

fn seen(resp: Response<Bytes>, telemetry: &MemoryTelemetry) -> Seen {
    let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let mut flags: Vec<String> = telemetry
        .logs
        .lock()
        .expect("logs")
        .iter()
        .map(|l| format!("{:?} {} {} {}", l.direction, l.proxy, l.status, l.flags))
        .collect();
    flags.sort();
    let principal =
        telemetry.logs.lock().expect("logs").iter().find_map(|l| l.peer.as_ref()?.principal().map(str::to_string));
    Seen {
        status: resp.status().as_u16(),
        pod: header(POD_HEADER),
        server: header("server"),
        body: resp.body().clone(),
        flags,
        principal,
    }
}

fn real() -> Seen {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let telemetry = Arc::new(MemoryTelemetry::default());
    let sink: Arc<dyn Telemetry> = telemetry.clone();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    let ports = Ports { ip: Ipv4Addr::LOCALHOST, app: 0, inbound: 0, outbound: 0 };
    let (server_id, client_id) = ids();
    let server_tls = Arc::new(tls::real_mode(server_id, DEFAULT_TRUST_DOMAIN).expect("server TLS"));
    let client_tls = Arc::new(tls::real_mode(client_id, DEFAULT_TRUST_DOMAIN).expect("client TLS"));
    provision(clock.unix_time().saturating_sub(Duration::from_secs(60)), [server_tls.store(), client_tls.store()]);
    let resp = rt.block_on(async {
        let in_port = server(TokioNet, &ports, clock.clone(), sink.clone(), server_tls).await;
        client(TokioNet, "127.0.0.1", in_port, &ports, clock, sink, client_tls).await
    });
    seen(resp, &telemetry)
}

/// Server pod on node-1, client pod on node-0: the sidecar-to-sidecar hop crosses
/// turmoil's simulated network.
fn simulated() -> Seen {
    let epoch = Duration::from_secs(1_800_000_000);
    let mut sim = turmoil::Builder::new().rng_seed(1).epoch(std::time::UNIX_EPOCH + epoch).build();
    let (server_id, client_id) = ids();
    let store = |id: SpiffeId, seed: u64| {
        Arc::new(IdentityStore::new(id, DEFAULT_TRUST_DOMAIN, sim::crypto::seeded_provider(seed)))
    };
    let (server_store, client_store) = (store(server_id, 1), store(client_id, 2));
    provision(epoch, [&server_store, &client_store]);
    // A SimClock exists only inside a host: each side builds its TLS there.
    let sim_tls = |store: Arc<IdentityStore>| {
        let clock: Arc<dyn Clock> = Arc::new(SimClock::new());
        (Arc::new(SidecarTls::new(store, clock.clone()).expect("TLS")), clock)
    };
    let telemetry = Arc::new(MemoryTelemetry::default());
    let faults = Faults::new(2, BTreeMap::new());
    let local = Arc::new(Local::default());
    let ports = Ports { ip: Ipv4Addr::UNSPECIFIED, app: 10_000, inbound: 10_001, outbound: 10_005 };
    let (f, l, t) = (faults.clone(), local.clone(), telemetry.clone());
    sim.host("node-1", move || {
        let (f, l, t, store) = (f.clone(), l.clone(), t.clone(), server_store.clone());
        async move {
            let ports = Ports { ip: Ipv4Addr::UNSPECIFIED, app: 10_000, inbound: 10_001, outbound: 10_002 };
            let (tls, clock) = sim_tls(store);
            server(SimNet::new(0, 1, f, l), &ports, clock, t, tls).await;
            std::future::pending::<()>().await;
            Ok(())
        }
    });
    let out = Arc::new(Mutex::new(None));
    let (o, t, l) = (out.clone(), telemetry.clone(), local.clone());
    sim.client("node-0", async move {
        let (tls, clock) = sim_tls(client_store);
        let resp = client(SimNet::new(1, 0, faults, l), "node-1", 10_001, &ports, clock, t, tls).await;
        *o.lock().expect("out") = Some(resp);
        Ok(())
    });
    local.set_node_ips(vec![sim.lookup("node-0"), sim.lookup("node-1")]);
    sim.run().expect("simulation");
    let resp = out.lock().expect("out").take().expect("the sim client finished");
    seen(resp, &telemetry)
}

#[test]
fn same_request_path_gives_the_same_outcome_on_loopback_and_in_sim() {
    let (r, s) = (real(), simulated());
    assert_eq!(r.status, 200, "real: {r:?}");
    assert_eq!(r.pod.as_deref(), Some("backend-v1-0"));
    assert_eq!(r.server.as_deref(), Some("envoy"), "outbound sidecar sets server: envoy");
    assert_eq!(r.flags, ["Inbound backend-v1-0 200 -", "Outbound frontend-v1-0 200 -"], "both sidecars logged it");
    assert_eq!(r.principal.as_deref(), Some("cluster.local/ns/default/sa/frontend"), "the hop was mTLS");
    assert_eq!(r, s);
}
