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

/// Sends one HTTP/1.1 request and returns the whole response (the connection closes).
fn request(to: SocketAddr, host: &str, path: &str, request_id: &str) -> String {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5)).expect("connect to envoy");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\nx-request-id: {request_id}\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read the response");
    out
}

/// Starts Envoy on the static bootstrap of `t`, waiting (bounded) until `listen` accepts.
/// `None`: no Envoy binary here (the caller skips).
fn start(t: &super::Translation, dir: &std::path::Path, listen: SocketAddr) -> Option<Running> {
    let envoy = match crate::find_envoy(None) {
        Ok(e) => e,
        Err(why) => {
            println!("SKIPPED: live Envoy test: {why}");
            return None;
        }
    };
    let config = dir.join("bootstrap.pb");
    std::fs::write(&config, prost::Message::encode_to_vec(&super::static_bootstrap(&t.resources, "a-0")))
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
    let Some(envoy) = start(&t, &dir, p.outbound) else { return };

    let teapot = request(p.outbound, "b", "/teapot/pot", "live-1");
    assert!(teapot.starts_with("HTTP/1.1 418"), "{teapot}");
    assert!(teapot.ends_with("short and stout"), "{teapot}");
    let moved = request(p.outbound, "b.default:80", "/moved", "live-2");
    assert!(moved.starts_with("HTTP/1.1 302"), "{moved}");
    assert!(moved.contains("location: http://elsewhere/new"), "{moved}");
    let no_route = request(p.outbound, "nowhere", "/", "live-3");
    assert!(no_route.starts_with("HTTP/1.1 404"), "{no_route}");

    let lines = log_lines(&p.access_log, 3);
    assert_eq!(lines.len(), 3, "{lines:?}");
    let fields = |id: &str| lines.iter().find(|l| l["request_id"] == id).cloned().expect("a line per request");
    let l = fields("live-1");
    assert_eq!((l["direction"].as_str(), l["status"].as_i64()), (Some("outbound"), Some(418)), "{l}");
    assert_eq!(l["route"], "default/b/2", "{l}");
    let l = fields("live-3");
    assert_eq!((l["status"].as_i64(), l["flags"].as_str()), (Some(404), Some("NR")), "{l}");
    drop(envoy);
}

/// A plaintext HTTP/1.1 server answering `200 <name>` to every request, each on its own
/// connection; what it received goes to the channel, with the caller's address.
fn serve(name: &'static str) -> (SocketAddr, std::sync::mpsc::Receiver<(SocketAddr, String)>) {
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
                write!(conn, "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{name}", name.len());
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
    let Some(envoy) = start(&t, &dir, p.outbound) else { return };

    let out = request(p.outbound, "b", "/x", "fwd-1");
    assert!(out.starts_with("HTTP/1.1 200") && out.ends_with("peer"), "{out}");
    let (from, head) = peer_rx.recv_timeout(Duration::from_secs(10)).expect("the peer got the request");
    assert_eq!(from.ip(), p.source, "upstream connections leave from the placement's source address");
    assert!(head.starts_with("GET /x HTTP/1.1"), "{head}");
    assert!(head.to_ascii_lowercase().contains("x-request-id: fwd-1"), "the caller's request id is kept: {head}");

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
}
