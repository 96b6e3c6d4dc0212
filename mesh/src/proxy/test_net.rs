//! Test seams for the proxy's layers: an in-memory [`MemNet`] (tokio duplex streams, no
//! sockets), a [`PausedClock`] on tokio's timer (so `#[tokio::test(start_paused = true)]`
//! moves it), and a scripted upstream HTTP server. Test-only; owns no proxy behaviour.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::DuplexStream;
use tokio::sync::{Semaphore, mpsc};

use super::pool::server_builder;
use crate::net::{Clock, Listener, Net};

/// Bytes a duplex stream buffers each way.
const DUPLEX_BYTES: usize = 64 * 1024;

type AcceptQueue = mpsc::UnboundedSender<(DuplexStream, SocketAddr)>;

/// Sockets in memory: `bind` registers an address, `connect` hands the listener one end
/// of a duplex stream. A connect to an address nobody bound is refused. Host names
/// resolve only when they are IP literals. With a gate, each connect waits for a permit.
#[derive(Clone, Default)]
pub(crate) struct MemNet {
    listeners: Arc<Mutex<BTreeMap<SocketAddr, AcceptQueue>>>,
    next_client_port: Arc<Mutex<u16>>,
    gate: Option<Arc<Semaphore>>,
}

impl MemNet {
    /// A net whose connects each wait for a permit of `gate`.
    pub(crate) fn gated(gate: Arc<Semaphore>) -> MemNet {
        MemNet { gate: Some(gate), ..MemNet::default() }
    }
}

pub(crate) struct MemListener {
    addr: SocketAddr,
    accepted: mpsc::UnboundedReceiver<(DuplexStream, SocketAddr)>,
}

impl Listener for MemListener {
    type Stream = DuplexStream;
    async fn accept(&mut self) -> io::Result<(DuplexStream, SocketAddr)> {
        self.accepted.recv().await.ok_or_else(|| io::Error::from(io::ErrorKind::ConnectionAborted))
    }
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

impl Net for MemNet {
    type Stream = DuplexStream;
    type Listener = MemListener;
    async fn bind(&self, addr: SocketAddr) -> io::Result<MemListener> {
        let (tx, accepted) = mpsc::unbounded_channel();
        let mut listeners = self.listeners.lock().expect("listeners lock");
        if listeners.contains_key(&addr) {
            return Err(io::ErrorKind::AddrInUse.into());
        }
        listeners.insert(addr, tx);
        Ok(MemListener { addr, accepted })
    }
    async fn connect(&self, addr: SocketAddr) -> io::Result<DuplexStream> {
        if let Some(gate) = &self.gate {
            gate.acquire().await.expect("the gate stays open").forget();
        }
        let client = {
            let mut port = self.next_client_port.lock().expect("port lock");
            *port = port.wrapping_add(1);
            SocketAddr::from((Ipv4Addr::new(127, 0, 0, 1), 40_000u16.wrapping_add(*port)))
        };
        let (near, far) = tokio::io::duplex(DUPLEX_BYTES);
        let listeners = self.listeners.lock().expect("listeners lock");
        let queue = listeners.get(&addr).ok_or_else(|| io::Error::from(io::ErrorKind::ConnectionRefused))?;
        queue.send((far, client)).map_err(|_| io::Error::from(io::ErrorKind::ConnectionRefused))?;
        Ok(near)
    }
    async fn resolve(&self, host: &str, port: u16) -> io::Result<SocketAddr> {
        let ip: IpAddr = host.parse().map_err(|_| io::Error::from(io::ErrorKind::NotFound))?;
        Ok(SocketAddr::new(ip, port))
    }
}

/// Time on tokio's clock since the clock was made: paused tests move it by sleeping.
pub(crate) struct PausedClock(tokio::time::Instant);

impl PausedClock {
    #[allow(clippy::disallowed_methods)] // a test seam: tokio's (paused) clock is the world's
    pub(crate) fn shared() -> Arc<dyn Clock> {
        Arc::new(PausedClock(tokio::time::Instant::now()))
    }
}

impl Clock for PausedClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
    fn unix_time(&self) -> Duration {
        Duration::from_secs(1_800_000_000) + self.now()
    }
}

/// What a scripted upstream does with its `n`th request (0-based): answer this status
/// after this delay.
pub(crate) type Script = Arc<dyn Fn(usize) -> (u16, Duration) + Send + Sync>;

/// A scripted upstream's record of the requests it received, in arrival order, and of
/// the connections it accepted.
#[derive(Clone, Default)]
pub(crate) struct Received(Arc<Mutex<Vec<http::request::Parts>>>, Arc<Mutex<usize>>);

impl Received {
    pub(crate) fn connections(&self) -> usize {
        *self.1.lock().expect("connections lock")
    }

    pub(crate) fn count(&self) -> usize {
        self.0.lock().expect("received lock").len()
    }

    pub(crate) fn header(&self, n: usize, name: &str) -> Option<String> {
        let all = self.0.lock().expect("received lock");
        all.get(n)?.headers.get(name).map(|v| v.to_str().expect("ASCII header").to_string())
    }

    pub(crate) fn uri(&self, n: usize) -> String {
        self.0.lock().expect("received lock")[n].uri.to_string()
    }
}

/// Serves HTTP/1.1 at `addr` on `net`, answering each request as `script` says.
pub(crate) async fn upstream(net: &MemNet, addr: SocketAddr, script: Script) -> Received {
    let mut listener = net.bind(addr).await.expect("the test binds each address once");
    let received = Received::default();
    let log = received.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            *log.1.lock().expect("connections lock") += 1;
            let (script, log) = (script.clone(), log.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (script, log) = (script.clone(), log.clone());
                    async move {
                        let n = {
                            let mut all = log.0.lock().expect("received lock");
                            all.push(req.into_parts().0);
                            all.len() - 1
                        };
                        let (status, delay) = script(n);
                        tokio::time::sleep(delay).await;
                        let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")));
                        *resp.status_mut() = StatusCode::from_u16(status).expect("a valid status");
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = server_builder().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    received
}

/// An upstream that answers every request `status` after `delay`.
pub(crate) fn always(status: u16, delay: Duration) -> Script {
    Arc::new(move |_| (status, delay))
}
