//! Real mode: a client sidecar and a server sidecar on loopback sockets (`TokioNet`)
//! exchange workload metadata and pass the trace context on to the app, and each serves
//! its Istio metrics on an admin port in the Prometheus text format.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use mesh::net::{Clock, Listener, Net, SystemClock, TokioNet};
use mesh::proxy::pool::{Pool, server_builder};
use mesh::proxy::telemetry::{MemoryTelemetry, Telemetry};
use mesh::proxy::tracing::SpanKind;
use mesh::proxy::{Sidecar, SidecarConfig};
use mesh::registry::{Pod, Registry, Service};
use mesh::snapshot::{Snapshot, compile};

async fn bind() -> (<TokioNet as Net>::Listener, u16) {
    let l = TokioNet.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await.expect("bind");
    let port = l.local_addr().expect("local addr").port();
    (l, port)
}

/// An app that answers 200 with the request headers it received, one `name: value` a line.
async fn echo_app(mut l: <TokioNet as Net>::Listener) {
    loop {
        let Ok((stream, _)) = l.accept().await else { return };
        tokio::spawn(async move {
            let svc = service_fn(|req: Request<hyper::body::Incoming>| async move {
                let seen: String =
                    req.headers().iter().map(|(k, v)| format!("{}: {}\n", k, v.to_str().unwrap_or("?"))).collect();
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(seen))))
            });
            let _ = server_builder().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

fn config(pod: &str, workload: &str, service: &str, app: &str, app_port: u16) -> SidecarConfig {
    SidecarConfig {
        pod: pod.into(),
        workload: workload.into(),
        namespace: "default".into(),
        service: service.into(),
        labels: BTreeMap::from([("app".into(), app.into()), ("version".into(), "v1".into())]),
        app_port,
        seed: 1,
        rate_limit: None,
        tls: None,
        cost: None,
    }
}

fn snapshot(inbound_port: u16) -> Arc<Snapshot> {
    let mut registry = Registry::default();
    registry.add_service(Service::http("backend", "default", 80));
    registry.add_pod(Pod {
        name: "backend-v1-0".into(),
        namespace: "default".into(),
        service: "backend".into(),
        labels: BTreeMap::from([("app".into(), "backend".into())]),
        service_account: "backend".into(),
        host: "127.0.0.1".into(),
        inbound_port,
        sidecar: true,
    });
    let (snapshot, findings) = compile(&registry, &[]);
    assert!(!findings.has_errors(), "{findings:?}");
    Arc::new(snapshot)
}

/// The lines of `text` starting with `prefix`.
fn lines<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(prefix)).collect()
}

/// The value of header `name` in an echoed header list.
fn seen<'a>(echo: &'a str, name: &str) -> Option<&'a str> {
    echo.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(": ")))
}

async fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> Response<Bytes> {
    let mut req = Request::get(path).header(header::HOST, "backend");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::new())).expect("request");
    Pool::new(TokioNet).send("127.0.0.1", port, Duration::from_secs(5), req).await.expect("response")
}

#[test]
fn sidecars_exchange_metadata_propagate_traces_and_serve_prometheus_metrics() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let client_log = Arc::new(MemoryTelemetry::default());
    let server_log = Arc::new(MemoryTelemetry::default());
    let (c, s) = (client_log.clone(), server_log.clone());
    rt.block_on(async move {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
        let (app_l, app_port) = bind().await;
        let (in_l, in_port) = bind().await;
        let (server_admin_l, server_admin) = bind().await;
        let (out_l, out_port) = bind().await;
        let (client_admin_l, client_admin) = bind().await;
        let server_sink: Arc<dyn Telemetry> = s;
        let client_sink: Arc<dyn Telemetry> = c;
        let server = Sidecar::new(
            config("backend-v1-0", "backend-v1", "backend.default.svc.cluster.local", "backend", app_port),
            TokioNet,
            clock.clone(),
            server_sink,
            Arc::new(Snapshot::default()),
        )
        .expect("no rate limit");
        let client = Sidecar::new(
            config("frontend-v1-0", "frontend-v1", "frontend.default.svc.cluster.local", "frontend", 1),
            TokioNet,
            clock,
            client_sink,
            snapshot(in_port),
        )
        .expect("no rate limit");
        tokio::spawn(echo_app(app_l));
        tokio::spawn(server.clone().run_inbound(in_l));
        tokio::spawn(server.run_admin(server_admin_l));
        tokio::spawn(client.clone().run_outbound(out_l));
        tokio::spawn(client.run_admin(client_admin_l));

        // No id, no trace context: the client's sidecar makes both up.
        let first = get(out_port, "/hello", &[]).await;
        assert_eq!(first.status(), 200);
        assert!(first.headers().get("x-envoy-peer-metadata").is_none(), "stripped before the client app");
        let echo = std::str::from_utf8(first.body()).expect("text").to_string();
        let id = seen(&echo, "x-request-id").expect("the app got an x-request-id");
        assert_eq!(id.len(), 36, "a UUID: {id}");
        assert_eq!(id.as_bytes()[14], b'4', "version 4: {id}");
        let tp = seen(&echo, "traceparent").expect("the app got a traceparent");
        let trace = tp.split('-').nth(1).expect("trace id");
        assert_eq!(seen(&echo, "x-b3-traceid"), Some(trace), "B3 names the same trace");
        assert!(seen(&echo, "x-envoy-peer-metadata").is_none(), "stripped before the server app:\n{echo}");

        // An id and a W3C context from the app: kept, and the trace continues.
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let second =
            get(out_port, "/hello", &[("x-request-id", "abc"), ("traceparent", parent), ("tracestate", "k=v")]).await;
        let echo = std::str::from_utf8(second.body()).expect("text").to_string();
        assert_eq!(seen(&echo, "x-request-id"), Some("abc"));
        assert_eq!(seen(&echo, "tracestate"), Some("k=v"));
        let tp = seen(&echo, "traceparent").expect("traceparent");
        assert!(tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{tp}");
        assert!(!tp.contains("00f067aa0ba902b7"), "each hop has its own span: {tp}");

        let scrape = get(client_admin, "/stats/prometheus", &[]).await;
        assert_eq!(scrape.status(), 200);
        assert!(scrape.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
        let text = std::str::from_utf8(scrape.body()).expect("text").to_string();
        let counters = lines(&text, "istio_requests_total{");
        assert_eq!(counters.len(), 1, "{text}");
        let c = counters[0];
        for want in [
            "reporter=\"source\"",
            "source_workload=\"frontend-v1\"",
            "destination_workload=\"backend-v1\"",
            "destination_app=\"backend\"",
            "destination_service=\"backend.default.svc.cluster.local\"",
            "response_code=\"200\"",
            "response_flags=\"-\"",
            "connection_security_policy=\"unknown\"",
        ] {
            assert!(c.contains(want), "{want} in {c}");
        }
        assert!(c.ends_with("} 2"), "{c}");
        assert_eq!(lines(&text, "istio_request_duration_milliseconds_bucket{").len(), 20, "{text}");
        assert_eq!(lines(&text, "istio_request_duration_milliseconds_count{").len(), 1, "{text}");

        let text = String::from_utf8(get(server_admin, "/stats/prometheus", &[]).await.body().to_vec()).unwrap();
        let counters = lines(&text, "istio_requests_total{");
        assert_eq!(counters.len(), 1, "{text}");
        for want in [
            "reporter=\"destination\"",
            "source_workload=\"frontend-v1\"",
            "source_app=\"frontend\"",
            "destination_workload=\"backend-v1\"",
            "connection_security_policy=\"none\"",
        ] {
            assert!(counters[0].contains(want), "{want} in {}", counters[0]);
        }
        assert!(counters[0].ends_with("} 2"), "{}", counters[0]);
        assert_eq!(get(server_admin, "/stats", &[]).await.status(), 404);
    });

    // The spans link up: outbound → try → inbound, for both requests.
    let client_spans = client_log.spans.lock().unwrap().clone();
    let server_spans = server_log.spans.lock().unwrap().clone();
    let kinds = |v: &[mesh::proxy::tracing::OwnedSpan], k| v.iter().filter(|s| s.kind == k).count();
    assert_eq!((kinds(&client_spans, SpanKind::Outbound), kinds(&client_spans, SpanKind::Try)), (2, 2));
    assert_eq!(kinds(&server_spans, SpanKind::Inbound), 2);
    for inbound in &server_spans {
        let t = client_spans.iter().find(|s| Some(s.span_id) == inbound.parent).expect("its try");
        assert_eq!((t.kind, t.trace_id), (SpanKind::Try, inbound.trace_id));
        let o = client_spans.iter().find(|s| Some(s.span_id) == t.parent).expect("its outbound span");
        assert_eq!(o.kind, SpanKind::Outbound);
    }
    let continued = client_spans.iter().find(|s| s.kind == SpanKind::Outbound && s.parent.is_some()).expect("one");
    assert_eq!((continued.trace_id, continued.parent), (0x4bf92f3577b34da6a3ce929d0e0e4736, Some(0x00f067aa0ba902b7)));
}
