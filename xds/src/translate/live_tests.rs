//! One real Envoy run on a static bootstrap of a translation: requests through the
//! outbound listener, answered by the routes themselves, and the access log lines they
//! leave. Skipped (with a message) without an Envoy binary; every wait is bounded and
//! the Envoy is stopped at the end.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::tests::{RICH, placement, snapshot};

/// A port free on 127.0.0.1 just now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// Stops the Envoy this test started, however the test ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends one HTTP/1.1 request and returns the whole response.
fn request(to: SocketAddr, host: &str, path: &str, request_id: &str) -> String {
    send(to, &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nx-request-id: {request_id}\r\n\r\n"))
}

/// Sends `head` (a request without a body) on a new connection and reads one response:
/// its head, then `content-length` bytes of body (Envoy delays its close by up to a
/// second, so reading to the end would wait for that).
fn send(to: SocketAddr, head: &str) -> String {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5)).expect("connect to envoy");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
    s.write_all(head.as_bytes()).expect("send");
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    while !out.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).expect("read the response head");
        assert_eq!(n, 1, "the connection closed inside the response head: {:?}", String::from_utf8_lossy(&out));
        out.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let length = text
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
        .map_or(0, |v| v.parse::<usize>().expect("a length"));
    let mut body = vec![0u8; length];
    s.read_exact(&mut body).expect("read the body");
    text + &String::from_utf8_lossy(&body)
}

/// Starts Envoy on the static bootstrap of `t`, waiting (bounded) until `listen` accepts.
/// `None`: no Envoy binary here (the caller skips).
fn start(t: &super::Translation, node: &str, dir: &std::path::Path, listen: SocketAddr) -> Option<Running> {
    let envoy = match crate::find_envoy(None) {
        Ok(e) => e,
        Err(why) => {
            println!("SKIPPED: live Envoy test: {why}");
            return None;
        }
    };
    std::fs::create_dir_all(dir).expect("config dir");
    let config = dir.join("bootstrap.pb");
    std::fs::write(&config, prost::Message::encode_to_vec(&super::static_bootstrap(&t.resources, node)))
        .expect("write bootstrap");
    let child = Command::new(envoy)
        .args(["--disable-hot-restart", "--concurrency", "1", "-l", "error", "--file-flush-interval-msec", "50", "-c"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start envoy");
    let mut envoy = Running(child);
    // Up when the listener accepts: at most 200 tries, 50ms apart.
    for _ in 0..200 {
        if let Some(status) = envoy.0.try_wait().expect("poll envoy") {
            panic!("envoy exited early: {status}");
        }
        if TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_ok() {
            return Some(envoy);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("envoy's listener {listen} did not come up in 10s");
}

/// The access log's lines once there are `n` (flushed every 50ms: at most 200 looks).
fn log_lines(path: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    let mut lines = Vec::new();
    for _ in 0..200 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        lines = text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON line")).collect();
        if lines.len() >= n {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    lines
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("xds-live-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[test]
fn envoy_answers_from_the_translated_routes_and_logs_them() {
    let dir = temp_dir("routes");
    let mut p = placement();
    p.outbound = SocketAddr::from(([127, 0, 0, 1], free_port()));
    p.inbound = SocketAddr::from(([127, 0, 0, 1], free_port()));
    p.access_log = dir.join("access.log");
    let t = super::translate(&snapshot(RICH), &p);
    let Some(envoy) = start(&t, "a-0", &dir, p.outbound) else { return };

    let teapot = request(p.outbound, "b", "/teapot/pot", "live-1");
    assert!(teapot.starts_with("HTTP/1.1 418"), "{teapot}");
    assert!(teapot.ends_with("short and stout"), "{teapot}");
    let moved = request(p.outbound, "b.default:80", "/moved", "live-2");
    assert!(moved.starts_with("HTTP/1.1 302"), "{moved}");
    assert!(moved.contains("location: http://elsewhere/new"), "{moved}");
    let other_port = request(p.outbound, "b:8080", "/teapot/pot", "live-4");
    assert!(other_port.starts_with("HTTP/1.1 418"), "the port in Host does not pick the service: {other_port}");
    let no_route = request(p.outbound, "nowhere", "/", "live-3");
    assert!(no_route.starts_with("HTTP/1.1 404"), "{no_route}");

    let lines = log_lines(&p.access_log, 4);
    assert_eq!(lines.len(), 4, "{lines:?}");
    let fields = |id: &str| lines.iter().find(|l| l["request_id"] == id).cloned().expect("a line per request");
    let l = fields("live-1");
    assert_eq!((l["direction"].as_str(), l["status"].as_i64()), (Some("outbound"), Some(418)), "{l}");
    assert_eq!(l["route"], "default/b/2", "{l}");
    let l = fields("live-3");
    assert_eq!((l["status"].as_i64(), l["flags"].as_str()), (Some(404), Some("NR")), "{l}");
    drop(envoy);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A plaintext HTTP/1.1 server answering `200 <name>` to every request, each on its own
/// connection; what it received goes to the channel, with the caller's address.
fn serve(name: &'static str) -> (SocketAddr, std::sync::mpsc::Receiver<(SocketAddr, String)>) {
    serve_status(name, "200 OK")
}

/// As [`serve`], answering `status` (`503 Service Unavailable`).
fn serve_status(
    name: &'static str,
    status: &'static str,
) -> (SocketAddr, std::sync::mpsc::Receiver<(SocketAddr, String)>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let peer = conn.peer_addr().expect("peer");
            conn.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            let _ =
                write!(conn, "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{name}", name.len());
            if tx.send((peer, String::from_utf8_lossy(&head).into_owned())).is_err() {
                return;
            }
        }
    });
    (addr, rx)
}

#[test]
fn envoy_forwards_outbound_to_a_peer_from_the_source_address_and_inbound_to_the_app() {
    let dir = temp_dir("forward");
    let (peer, peer_rx) = serve("peer");
    let (app, app_rx) = serve("app");
    let mut p = placement();
    p.outbound = SocketAddr::from(([127, 0, 0, 1], free_port()));
    p.inbound = SocketAddr::from(([127, 0, 0, 1], free_port()));
    p.app = app;
    // Not the address Envoy would pick by itself (127.0.0.1): the bind config must set it.
    p.source = std::net::IpAddr::from([127, 0, 0, 9]);
    p.peers = ["a-0", "b-0", "b-1"].into_iter().map(|n| (n.to_string(), peer)).collect();
    p.access_log = dir.join("access.log");
    // Plaintext between sidecars, so the fake peer can read the request.
    let mesh_wide_disable = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: DISABLE}}\n";
    let t = super::translate(&snapshot(mesh_wide_disable), &p);
    assert!(t.untranslated.is_empty(), "{:?}", t.untranslated);
    let Some(envoy) = start(&t, "a-0", &dir, p.outbound) else { return };

    let out = request(p.outbound, "b", "/x", "fwd-1");
    assert!(out.starts_with("HTTP/1.1 200") && out.ends_with("peer"), "{out}");
    let (from, head) = peer_rx.recv_timeout(Duration::from_secs(10)).expect("the peer got the request");
    assert_eq!(from.ip(), p.source, "upstream connections leave from the placement's source address");
    assert!(head.starts_with("GET /x HTTP/1.1"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("x-request-id: fwd-1"), "the caller's request id is kept: {head}");
    assert!(lower.contains("x-envoy-attempt-count: 1"), "{head}");

    let inb = request(p.inbound, "a", "/y", "fwd-2");
    assert!(inb.starts_with("HTTP/1.1 200") && inb.ends_with("app"), "{inb}");
    assert!(inb.to_ascii_lowercase().contains("server: istio-envoy"), "{inb}");
    app_rx.recv_timeout(Duration::from_secs(10)).expect("the app got the request");

    let lines = log_lines(&p.access_log, 2);
    let line = |id: &str| lines.iter().find(|l| l["request_id"] == id).cloned().expect("a line per request");
    let l = line("fwd-1");
    assert_eq!(l["direction"], "outbound", "{l}");
    assert_eq!(l["cluster"], "outbound|80||b.default.svc.cluster.local", "{l}");
    assert_eq!(l["upstream_host"], peer.to_string(), "{l}");
    let l = line("fwd-2");
    assert_eq!((l["direction"].as_str(), l["route"].as_str()), (Some("inbound"), Some("inbound")), "{l}");
    assert_eq!(l["cluster"], format!("inbound|{}||", app.port()), "{l}");
    drop(envoy);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two Envoys under STRICT mTLS: `a-0` calling service `b`, whose only reachable
/// sidecar (`b-0`, in front of a fake app) presents `b_identity`. Runs `check` with
/// both running.
fn two_envoys(name: &str, b_identity: &str, check: impl FnOnce(&Pair)) {
    let dir = temp_dir(name);
    let (app, app_rx) = serve("app-b");
    let ids = super::tests::identities(&["spiffe://cluster.local/ns/default/sa/a", b_identity]);
    let strict = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n";
    let snap = snapshot(strict);
    let b_inbound = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut a = placement();
    a.outbound = SocketAddr::from(([127, 0, 0, 1], free_port()));
    a.inbound = SocketAddr::from(([127, 0, 0, 1], free_port()));
    a.peers = ["a-0", "b-0", "b-1"]
        .into_iter()
        .map(|n| (n.to_string(), if n == "a-0" { a.inbound } else { b_inbound }))
        .collect();
    a.access_log = dir.join("a.log");
    a.identity = Some(ids[0].clone());
    let mut b = a.clone();
    b.pod = "b-0".into();
    b.labels = [("app", "b"), ("version", "v1")].into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    b.service = "b.default.svc.cluster.local".into();
    b.outbound = SocketAddr::from(([127, 0, 0, 1], free_port()));
    b.inbound = b_inbound;
    b.app = app;
    b.access_log = dir.join("b.log");
    b.identity = Some(ids[1].clone());
    let (ta, tb) = (super::translate(&snap, &a), super::translate(&snap, &b));
    assert!(ta.untranslated.is_empty() && tb.untranslated.is_empty(), "{:?} {:?}", ta.untranslated, tb.untranslated);
    let Some(envoy_b) = start(&tb, "b-0", &dir.join("b"), b.inbound) else { return };
    let Some(envoy_a) = start(&ta, "a-0", &dir.join("a"), a.outbound) else { return };
    check(&Pair { a, b, app: app_rx });
    drop((envoy_a, envoy_b));
    let _ = std::fs::remove_dir_all(&dir);
}

struct Pair {
    a: super::Placement,
    b: super::Placement,
    app: std::sync::mpsc::Receiver<(SocketAddr, String)>,
}

#[test]
fn two_envoys_speak_istio_mtls_with_spiffe_checks_and_strict_refuses_plaintext() {
    two_envoys("mtls", "spiffe://cluster.local/ns/default/sa/b", |p| {
        let resp = request(p.a.outbound, "b", "/hello", "mtls-1");
        assert!(resp.starts_with("HTTP/1.1 200") && resp.ends_with("app-b"), "{resp}");
        p.app.recv_timeout(Duration::from_secs(10)).expect("b's app got the request");
        let lines = log_lines(&p.b.access_log, 1);
        let l = lines.iter().find(|l| l["request_id"] == "mtls-1").expect("b logged the request");
        assert_eq!(l["direction"], "inbound", "{l}");
        assert_eq!(l["peer_san"], "spiffe://cluster.local/ns/default/sa/a", "b saw a's verified identity: {l}");
        assert_eq!(l["tls"], "TLSv1.3", "{l}");

        // STRICT: a plaintext request to b's inbound side gets no HTTP answer.
        let mut s = TcpStream::connect_timeout(&p.b.inbound, Duration::from_secs(5)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
        write!(s, "GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n").expect("send");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        assert!(!String::from_utf8_lossy(&out).starts_with("HTTP/1.1"), "STRICT answered plaintext: {out:?}");
    });
}

#[test]
fn a_server_presenting_another_identity_is_refused() {
    two_envoys("impostor", "spiffe://cluster.local/ns/default/sa/impostor", |p| {
        let resp = request(p.a.outbound, "b", "/hello", "impostor-1");
        assert!(resp.starts_with("HTTP/1.1 503"), "the SAN check refuses sa/impostor: {resp}");
        assert!(p.app.try_recv().is_err(), "nothing reached b's app");
        let lines = log_lines(&p.a.access_log, 1);
        let l = lines.iter().find(|l| l["request_id"] == "impostor-1").expect("a logged the request");
        assert_eq!((l["status"].as_i64(), l["flags"].as_str()), (Some(503), Some("URX,UF")), "{l}");
    });
}

/// A TCP server echoing what it reads, one connection at a time.
fn echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            conn.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
            let mut buf = [0u8; 1024];
            while let Ok(n) = conn.read(&mut buf) {
                if n == 0 || conn.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    });
    addr
}

#[test]
fn a_tcp_connection_with_a_proxy_header_reaches_its_service_and_http_still_works() {
    let dir = temp_dir("tcp");
    let db = echo();
    let mut p = placement();
    p.outbound = SocketAddr::from(([127, 0, 0, 1], free_port()));
    p.inbound = SocketAddr::from(([127, 0, 0, 1], free_port()));
    p.peers.extend(["db-0", "db2-0"].map(|n| (n.to_string(), db)));
    p.access_log = dir.join("access.log");
    let disable = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: DISABLE}}\n";
    let t = super::translate(&super::tests::snapshot_with(&super::tcp_tests::with_tcp(), disable), &p);
    let Some(envoy) = start(&t, "a-0", &dir, p.outbound) else { return };

    // What a capture would send: the original destination, the service's ClusterIP:port.
    let mut s = TcpStream::connect_timeout(&p.outbound, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
    s.write_all(b"PROXY TCP4 127.0.0.1 10.0.0.9 40000 5432\r\nping over tcp").expect("send");
    let mut got = [0u8; 13];
    s.read_exact(&mut got).expect("the echo comes back through envoy");
    assert_eq!(&got, b"ping over tcp");
    drop(s);

    let no_route = request(p.outbound, "nowhere", "/", "tcp-http-1");
    assert!(no_route.starts_with("HTTP/1.1 404"), "HTTP without a PROXY header still works: {no_route}");
    drop(envoy);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Routes that answer themselves, each with its own status, so the status names the
/// route Envoy chose.
const MATCHES: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: b}
spec:
  hosts: [b]
  http:
  - match: [{uri: {exact: /exact}, ignoreUriCase: true}]
    directResponse: {status: 201}
  - match: [{uri: {prefix: /pre}, headers: {x-a: {exact: one}}}]
    directResponse: {status: 202}
  - match: [{uri: {regex: "/re/[0-9]+"}}, {queryParams: {q: {exact: "1"}}}]
    directResponse: {status: 203}
  - match: [{headers: {x-b: {prefix: pp}}, withoutHeaders: {x-c: {exact: "no"}}}]
    directResponse: {status: 204}
  - match: [{queryParams: {flag: {}}}, {method: {exact: POST}}]
    directResponse: {status: 205}
  - match: [{headers: {x-d: {regex: "a.c"}}}]
    directResponse: {status: 206}
  - match: [{withoutHeaders: {x-e: {}}, uri: {prefix: /noe}}]
    directResponse: {status: 207}
  - match: [{authority: {prefix: b.default}}]
    directResponse: {status: 208}
"#;

#[test]
fn envoy_picks_the_route_meshsim_picks_on_a_grid_of_requests() {
    use mesh::proxy::route_match::{MatchInput, route_matches};
    let dir = temp_dir("matches");
    let mut p = placement();
    p.outbound = SocketAddr::from(([127, 0, 0, 1], free_port()));
    p.inbound = SocketAddr::from(([127, 0, 0, 1], free_port()));
    p.access_log = dir.join("access.log");
    let snap = snapshot(MATCHES);
    let t = super::translate(&snap, &p);
    let Some(envoy) = start(&t, "a-0", &dir, p.outbound) else { return };
    let routes = &snap.routes["b.default.svc.cluster.local"];

    let paths = ["/exact", "/EXACT", "/exactly", "/pre", "/prefix", "/re/12", "/re/x", "/noe", "/other"];
    let header_sets: [&[(&str, &str)]; 7] = [
        &[],
        &[("x-a", "one")],
        &[("x-b", "ppx")],
        &[("x-b", "ppx"), ("x-c", "no")],
        &[("x-d", "abc")],
        &[("x-e", "1")],
        &[("x-c", "yes")],
    ];
    let queries = [None, Some("q=1"), Some("flag"), Some("flag=x"), Some("q=2")];
    let mut checked = 0;
    for path in paths {
        for headers in header_sets {
            for query in queries {
                for method in ["GET", "POST"] {
                    for host in ["b", "b.default.svc.cluster.local:80"] {
                        let mut map = http::HeaderMap::new();
                        for (k, v) in headers {
                            map.insert(*k, v.parse().unwrap());
                        }
                        let input = MatchInput {
                            method,
                            path,
                            query,
                            authority: host,
                            scheme: "http",
                            headers: &map,
                            port: 80,
                            source_labels: &p.labels,
                            source_namespace: &p.namespace,
                        };
                        let want = routes
                            .iter()
                            .find(|r| route_matches(&r.matches, &input))
                            .map(|r| match r.action {
                                mesh::snapshot::Action::Direct { status, .. } => status,
                                _ => panic!("every route answers itself"),
                            })
                            .unwrap_or(404);
                        let target = match query {
                            Some(q) => format!("{path}?{q}"),
                            None => path.to_string(),
                        };
                        let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
                        let out =
                            send(p.outbound, &format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n"));
                        let got: u16 = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("{out}"));
                        assert_eq!(got, want, "{method} {host} {target} {headers:?}");
                        checked += 1;
                    }
                }
            }
        }
    }
    assert_eq!(checked, 9 * 7 * 5 * 2 * 2);
    drop(envoy);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn envoy_rbac_decides_like_meshsim_for_plaintext_peers() {
    use mesh::proxy::authz;
    let dir = temp_dir("rbac");
    let (app, _app_rx) = serve("app");
    let mut p = placement();
    p.outbound = SocketAddr::from(([127, 0, 0, 1], free_port()));
    p.inbound = SocketAddr::from(([127, 0, 0, 1], free_port()));
    p.app = app;
    p.access_log = dir.join("access.log");
    let disable = "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: DISABLE}}\n";
    let snap = snapshot(&format!("{}{disable}", super::rbac_tests::grid_policies()));
    let workload = snap.authz["a-0"].clone();
    let t = super::translate(&snap, &p);
    let Some(envoy) = start(&t, "a-0", &dir, p.inbound) else { return };
    let peer = authz::Peer { principal: None, ip: p.inbound.ip() };
    let (mut checked, mut denied) = (0, 0);
    for method in ["GET", "POST", "DELETE"] {
        for path in ["/api/v1", "/health", "/admin/x", "/other"] {
            for host in ["a.default.svc.cluster.local", "A.default.svc.cluster.local:80", "www.example.com:80", "a"] {
                for token in [None, Some("secret-1"), Some("nope")] {
                    let mut headers = http::HeaderMap::new();
                    let mut extra = String::new();
                    if let Some(tk) = token {
                        headers.insert("x-token", tk.parse().unwrap());
                        extra = format!("x-token: {tk}\r\n");
                    }
                    let want = workload.decide(&peer, &authz::Request { method, path, host, headers: &headers });
                    let out = send(p.inbound, &format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n"));
                    let got = match out.get(9..12) {
                        Some("403") => authz::Decision::Deny,
                        Some("200") => authz::Decision::Allow,
                        _ => panic!("{out}"),
                    };
                    assert_eq!(got, want, "{method} {host}{path} token {token:?}: {out}");
                    if got == authz::Decision::Deny {
                        assert!(out.ends_with("RBAC: access denied"), "{out}");
                        denied += 1;
                    }
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 3 * 4 * 4 * 3);
    assert!(denied > 0 && denied < checked, "both decisions occur: {denied} of {checked} denied");
    drop(envoy);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn envoy_enforces_the_envoy_filter_local_rate_limit_on_the_inbound_side() {
    let dir = temp_dir("ratelimit");
    let (app, _app_rx) = serve("app");
    let mut p = placement();
    p.outbound = SocketAddr::from(([127, 0, 0, 1], free_port()));
    p.inbound = SocketAddr::from(([127, 0, 0, 1], free_port()));
    p.app = app;
    p.access_log = dir.join("access.log");
    let disable = "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: DISABLE}}\n";
    let t = super::translate(&snapshot(&format!("{}{disable}", super::rbac_tests::rate_limit_filter(3))), &p);
    assert!(t.untranslated.is_empty(), "{:?}", t.untranslated);
    let Some(envoy) = start(&t, "a-0", &dir, p.inbound) else { return };
    let statuses: Vec<String> = (0..5)
        .map(|i| request(p.inbound, "a", "/", &format!("rl-{i}")))
        .map(|r| {
            assert!(!r.starts_with("HTTP/1.1 429") || r.ends_with("local_rate_limited"), "{r}");
            r.get(9..12).unwrap_or_default().to_string()
        })
        .collect();
    assert_eq!(statuses, ["200", "200", "200", "429", "429"], "3 tokens, none refilled within a minute");
    drop(envoy);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn envoy_retries_a_503_on_the_other_host_as_the_route_says() {
    let dir = temp_dir("retry");
    let (bad, bad_rx) = serve_status("bad", "503 Service Unavailable");
    let (good, _good_rx) = serve("good");
    let mut p = placement();
    p.outbound = SocketAddr::from(([127, 0, 0, 1], free_port()));
    p.inbound = SocketAddr::from(([127, 0, 0, 1], free_port()));
    p.peers = [("a-0", p.inbound), ("b-0", bad), ("b-1", good)].into_iter().map(|(n, a)| (n.to_string(), a)).collect();
    p.access_log = dir.join("access.log");
    let yaml = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: b}\nspec:\n  hosts: [b]\n  http:\n  - route: [{destination: {host: b}}]\n    retries: {attempts: 2, retryOn: \"503\"}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: b}\nspec:\n  host: b\n  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}\n---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: DISABLE}}\n";
    let t = super::translate(&snapshot(yaml), &p);
    assert!(t.untranslated.is_empty(), "{:?}", t.untranslated);
    let Some(envoy) = start(&t, "a-0", &dir, p.outbound) else { return };
    for i in 0..4 {
        let r = request(p.outbound, "b", "/", &format!("retry-{i}"));
        assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("good"), "every request ends on the good host: {r}");
    }
    bad_rx.recv_timeout(Duration::from_secs(5)).expect("round robin sent some first try to the 503 host");
    let lines = log_lines(&p.access_log, 4);
    let attempts: Vec<i64> = lines.iter().map(|l| l["attempts"].as_i64().expect("attempts")).collect();
    assert!(attempts.iter().all(|&a| a == 1 || a == 2), "{attempts:?}");
    assert!(attempts.contains(&2), "a 503 was retried, on the other host: {attempts:?}");
    drop(envoy);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn envoy_ejects_a_host_after_its_consecutive_5xx_as_the_destination_rule_says() {
    let dir = temp_dir("outlier");
    let (bad, _bad_rx) = serve_status("bad", "503 Service Unavailable");
    let (good, _good_rx) = serve("good");
    let mut p = placement();
    p.outbound = SocketAddr::from(([127, 0, 0, 1], free_port()));
    p.inbound = SocketAddr::from(([127, 0, 0, 1], free_port()));
    p.peers = [("a-0", p.inbound), ("b-0", bad), ("b-1", good)].into_iter().map(|(n, a)| (n.to_string(), a)).collect();
    p.access_log = dir.join("access.log");
    let yaml = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: b}\nspec:\n  hosts: [b]\n  http:\n  - route: [{destination: {host: b}}]\n    retries: {attempts: 0}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: b}\nspec:\n  host: b\n  trafficPolicy:\n    loadBalancer: {simple: ROUND_ROBIN}\n    outlierDetection: {consecutive5xxErrors: 1, interval: 10s, baseEjectionTime: 60s, maxEjectionPercent: 100}\n---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: DISABLE}}\n";
    let t = super::translate(&snapshot(yaml), &p);
    assert!(t.untranslated.is_empty(), "{:?}", t.untranslated);
    let Some(envoy) = start(&t, "a-0", &dir, p.outbound) else { return };
    let statuses: Vec<String> = (0..6)
        .map(|i| request(p.outbound, "b", "/", &format!("od-{i}")).get(9..12).unwrap_or_default().to_string())
        .collect();
    // Round robin reaches the bad host within two requests; its first 503 ejects it.
    assert_eq!(statuses.iter().filter(|s| *s == "503").count(), 1, "{statuses:?}");
    assert!(statuses[..2].contains(&"503".to_string()), "{statuses:?}");
    drop(envoy);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn header_edits_run_destination_first_then_route_and_a_fault_aborts() {
    let dir = temp_dir("headers");
    let (peer, peer_rx) = serve("peer");
    let mut p = placement();
    p.outbound = SocketAddr::from(([127, 0, 0, 1], free_port()));
    p.inbound = SocketAddr::from(([127, 0, 0, 1], free_port()));
    p.peers = ["a-0", "b-0", "b-1"].into_iter().map(|n| (n.to_string(), peer)).collect();
    p.access_log = dir.join("access.log");
    let yaml = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: b}
spec:
  hosts: [b]
  http:
  - match: [{uri: {prefix: /fault}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: b}}]
  - route:
    - destination: {host: b}
      headers: {request: {add: {x-both: dest}, set: {x-dest: d}}}
    headers:
      request: {add: {x-r: "1"}, set: {x-r: "2"}, remove: [x-both, x-gone]}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: DISABLE}}
"#;
    let t = super::translate(&snapshot(yaml), &p);
    assert!(t.untranslated.is_empty(), "{:?}", t.untranslated);
    let Some(envoy) = start(&t, "a-0", &dir, p.outbound) else { return };

    let aborted = request(p.outbound, "b", "/fault", "hdr-1");
    assert!(aborted.starts_with("HTTP/1.1 418") && aborted.ends_with("fault filter abort"), "{aborted}");
    let r = send(p.outbound, "GET /x HTTP/1.1\r\nHost: b\r\nx-gone: 1\r\nx-both: caller\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let (_, head) = peer_rx.recv_timeout(Duration::from_secs(10)).expect("the peer got the request");
    let headers: Vec<(String, String)> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let values = |name: &str| headers.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect::<Vec<_>>();
    // As meshsim's sidecar: destination (remove, set, add), then route (remove, set, add).
    assert_eq!(values("x-dest"), ["d"], "{head}");
    assert!(values("x-both").is_empty(), "the route's remove runs after the destination's add: {head}");
    assert!(values("x-gone").is_empty(), "{head}");
    assert_eq!(values("x-r"), ["2", "1"], "Envoy overwrites, then appends: both values: {head}");
    drop(envoy);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn rewrites_replace_the_matched_prefix_or_the_exact_path_and_the_authority() {
    let dir = temp_dir("rewrite");
    let (peer, peer_rx) = serve("peer");
    let mut p = placement();
    p.outbound = SocketAddr::from(([127, 0, 0, 1], free_port()));
    p.inbound = SocketAddr::from(([127, 0, 0, 1], free_port()));
    p.peers = ["a-0", "b-0", "b-1"].into_iter().map(|n| (n.to_string(), peer)).collect();
    p.access_log = dir.join("access.log");
    let yaml = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: b}
spec:
  hosts: [b]
  http:
  - match: [{uri: {prefix: /old}}, {uri: {exact: /exact}}]
    rewrite: {uri: /new, authority: b-new}
    route: [{destination: {host: b}}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: DISABLE}}
"#;
    let t = super::translate(&snapshot(yaml), &p);
    let Some(envoy) = start(&t, "a-0", &dir, p.outbound) else { return };
    for (path, want_line) in [("/old/x?q=1", "GET /new/x?q=1 HTTP/1.1"), ("/exact", "GET /new HTTP/1.1")] {
        let r = request(p.outbound, "b", path, "rw");
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        let (_, head) = peer_rx.recv_timeout(Duration::from_secs(10)).expect("the peer got the request");
        assert_eq!(head.lines().next(), Some(want_line), "{head}");
        assert!(head.to_ascii_lowercase().contains("host: b-new\r\n"), "{head}");
    }
    drop(envoy);
    let _ = std::fs::remove_dir_all(&dir);
}
