//! Real mode, TCP: a client sidecar and a server sidecar on loopback sockets proxy a TCP
//! service's connection end to end (capture → tcp_proxy → the server's inbound → an echo
//! app), and each serves Istio's four TCP counters on `/stats/prometheus`.
//!
//! `TokioNet` reads no `SO_ORIGINAL_DST` (a loopback sidecar has no iptables in front of
//! it), so the client's `Net` here plays iptables' REDIRECT: every connection accepted on
//! the outbound listener was going to the service's ClusterIP.

use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use mesh::net::{Clock, Listener, Net, SystemClock, TokioNet};
use mesh::proxy::pool::Pool;
use mesh::proxy::telemetry::{MemoryTelemetry, Telemetry};
use mesh::proxy::{Sidecar, SidecarConfig};
use mesh::registry::{AppProtocol, Pod, Registry, Service};
use mesh::snapshot::{Snapshot, compile};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The service's ClusterIP:port.
const VIP: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1)), 5432);

/// Real sockets, with every connection accepted on `outbound` captured for [`VIP`].
#[derive(Clone)]
struct Captured {
    outbound: u16,
}

impl Net for Captured {
    type Stream = <TokioNet as Net>::Stream;
    type Listener = <TokioNet as Net>::Listener;
    async fn bind(&self, addr: SocketAddr) -> io::Result<Self::Listener> {
        TokioNet.bind(addr).await
    }
    async fn connect(&self, addr: SocketAddr) -> io::Result<Self::Stream> {
        TokioNet.connect(addr).await
    }
    async fn resolve(&self, host: &str, port: u16) -> io::Result<SocketAddr> {
        TokioNet.resolve(host, port).await
    }
    fn original_dst(&self, local: SocketAddr, _peer: SocketAddr) -> Option<SocketAddr> {
        (local.port() == self.outbound).then_some(VIP)
    }
}

async fn bind() -> (<TokioNet as Net>::Listener, u16) {
    let l = TokioNet.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await.expect("bind");
    let port = l.local_addr().expect("local addr").port();
    (l, port)
}

/// Echoes each connection's bytes and closes after the client does.
async fn echo_app(mut l: <TokioNet as Net>::Listener) {
    loop {
        let Ok((mut stream, _)) = l.accept().await else { return };
        tokio::spawn(async move {
            let mut got = Vec::new();
            if stream.read_to_end(&mut got).await.is_ok() {
                let _ = stream.write_all(&got).await;
                let _ = stream.shutdown().await;
            }
        });
    }
}

fn config(pod: &str, workload: &str, service: &str, app: &str, app_port: u16) -> SidecarConfig {
    SidecarConfig {
        pod: pod.into(),
        workload: workload.into(),
        namespace: "default".into(),
        service: service.into(),
        labels: BTreeMap::from([("app".into(), app.into())]),
        app_port,
        seed: 1,
        rate_limit: None,
        tls: None,
        cost: None,
    }
}

fn snapshot(inbound_port: u16) -> Arc<Snapshot> {
    let mut registry = Registry::default();
    registry.add_service(Service::http("client", "default", 80));
    registry.add_service(Service {
        protocol: AppProtocol::Tcp,
        cluster_ip: Some(Ipv4Addr::new(10, 96, 0, 1)),
        ..Service::http("db", "default", VIP.port())
    });
    registry.add_pod(Pod {
        name: "db-v1-0".into(),
        namespace: "default".into(),
        service: "db".into(),
        labels: BTreeMap::from([("app".into(), "db".into())]),
        service_account: "db".into(),
        host: "127.0.0.1".into(),
        inbound_port,
        sidecar: true,
    });
    let (snapshot, findings) = compile(&registry, &[]);
    assert!(!findings.has_errors(), "{findings:?}");
    Arc::new(snapshot)
}

async fn scrape(port: u16) -> String {
    let req = Request::get("/stats/prometheus").body(Full::new(Bytes::new())).expect("request");
    let resp = Pool::new(TokioNet).send("127.0.0.1", port, Duration::from_secs(5), req).await.expect("scrape");
    String::from_utf8(resp.body().to_vec()).expect("text")
}

/// The one line of `text` for `metric`.
fn line<'a>(text: &'a str, metric: &str) -> &'a str {
    let found: Vec<&str> = text.lines().filter(|l| l.starts_with(&format!("{metric}{{"))).collect();
    assert_eq!(found.len(), 1, "{metric} in\n{text}");
    found[0]
}

#[test]
fn tcp_connections_through_two_real_sidecars_are_echoed_and_counted_on_prometheus() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
        let (app_l, app_port) = bind().await;
        let (in_l, in_port) = bind().await;
        let (server_admin_l, server_admin) = bind().await;
        let (out_l, out_port) = bind().await;
        let (client_admin_l, client_admin) = bind().await;
        let sink = || -> Arc<dyn Telemetry> { Arc::new(MemoryTelemetry::default()) };
        let server = Sidecar::new(
            config("db-v1-0", "db-v1", "db.default.svc.cluster.local", "db", app_port),
            TokioNet,
            clock.clone(),
            sink(),
            snapshot(in_port),
        )
        .expect("no rate limit");
        let client = Sidecar::new(
            config("client-v1-0", "client-v1", "client.default.svc.cluster.local", "client", 1),
            Captured { outbound: out_port },
            clock,
            sink(),
            snapshot(in_port),
        )
        .expect("no rate limit");
        tokio::spawn(echo_app(app_l));
        tokio::spawn(server.clone().run_inbound(in_l));
        tokio::spawn(server.run_admin(server_admin_l));
        tokio::spawn(client.clone().run_outbound(out_l));
        tokio::spawn(client.run_admin(client_admin_l));

        for payload in [&b"hello"[..], &b"world!"[..]] {
            let mut conn = TokioNet.connect(SocketAddr::from((Ipv4Addr::LOCALHOST, out_port))).await.expect("connect");
            conn.write_all(payload).await.expect("send");
            conn.shutdown().await.expect("half-close");
            let mut back = Vec::new();
            conn.read_to_end(&mut back).await.expect("echo");
            assert_eq!(back, payload);
        }

        let text = scrape(client_admin).await;
        assert!(text.contains("# TYPE istio_tcp_connections_opened_total counter"), "{text}");
        let opened = line(&text, "istio_tcp_connections_opened_total");
        for want in [
            "reporter=\"source\"",
            "source_workload=\"client-v1\"",
            "destination_service=\"db.default.svc.cluster.local\"",
            "request_protocol=\"tcp\"",
            "response_flags=\"-\"",
            "connection_security_policy=\"unknown\"",
        ] {
            assert!(opened.contains(want), "{want} in {opened}");
        }
        assert!(!opened.contains("response_code"), "{opened}");
        assert!(opened.ends_with("} 2"), "{opened}");
        assert!(line(&text, "istio_tcp_connections_closed_total").ends_with("} 2"), "{text}");
        assert!(line(&text, "istio_tcp_received_bytes_total").ends_with("} 11"), "{text}");
        assert!(line(&text, "istio_tcp_sent_bytes_total").ends_with("} 11"), "{text}");

        let text = scrape(server_admin).await;
        let closed = line(&text, "istio_tcp_connections_closed_total");
        for want in
            ["reporter=\"destination\"", "destination_workload=\"db-v1\"", "connection_security_policy=\"none\""]
        {
            assert!(closed.contains(want), "{want} in {closed}");
        }
        assert!(closed.ends_with("} 2"), "{closed}");
        assert!(line(&text, "istio_tcp_sent_bytes_total").ends_with("} 11"), "{text}");
    });
}
