//! HTTP/1.1 connection pool of one cluster, over the `Net` seam, with Envoy's circuit
//! breakers as Istio configures them (MESH_SEMANTICS 3.2): limits are per client proxy
//! per cluster, all endpoints together.
//!
//! Owns: connecting (with the cluster's connect timeout), the hyper handshake, idle
//! connections per endpoint (reused, expired after the idle timeout, retired after
//! `maxRequestsPerConnection` requests or `maxConnectionDuration`), the pending queue
//! when `maxConnections` is reached, and the overflow verdicts (`max_requests`,
//! `max_pending_requests`, `max_retries` / retry budget), and originating mutual TLS to
//! the endpoints that get it ([`PoolTls`]; the handshake is `tls`'s). Does not own which
//! endpoint to call or whether to retry (`balance`, `retry`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;
use tokio_rustls::TlsConnector;

use super::local_reply::ConnectFailure;
use super::tls::{self, TlsFailure};
pub use crate::http::server_builder;
use crate::net::{Clock, Net};

/// Bound on idle connections kept per upstream address.
pub const MAX_IDLE_PER_ENDPOINT: usize = 256;

/// Which circuit breaker overflowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// `http2MaxRequests` (Envoy `max_requests`).
    Requests,
    /// `http1MaxPendingRequests` while `maxConnections` is reached.
    Pending,
}

/// How forwarding to an upstream failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    Connect(ConnectFailure),
    /// The connection closed or reset before the full response arrived.
    Reset,
    /// A circuit breaker refused the request: Envoy's 503 UO.
    Overflow(Overflow),
}

/// Circuit-breaker thresholds and connection lifetimes of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    /// 0 = unlimited.
    pub max_requests_per_connection: u32,
    pub idle_timeout: Duration,
    pub max_connection_duration: Option<Duration>,
    /// Concurrent retries (`maxRetries`), unless a retry budget replaces it.
    pub max_retries: u32,
    pub retry_budget: Option<RetryBudget>,
}

/// `trafficPolicy.retryBudget`: allowed concurrent retries =
/// max(min_concurrency, percent% × (active + pending)).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    pub percent: f64,
    pub min_concurrency: u32,
}

impl Eq for RetryBudget {}

impl Default for Limits {
    /// Istio writes every threshold: 2^32−1 where unset; idle timeout 1 h.
    fn default() -> Self {
        Limits {
            max_connections: u32::MAX,
            max_pending_requests: u32::MAX,
            max_requests: u32::MAX,
            max_requests_per_connection: 0,
            idle_timeout: Duration::from_secs(3600),
            max_connection_duration: None,
            max_retries: u32::MAX,
            retry_budget: None,
        }
    }
}

type Sender = SendRequest<Full<Bytes>>;

struct Conn {
    sender: Sender,
    /// The server's verified identity on an mTLS connection.
    peer: Option<Arc<str>>,
    requests: u32,
    created: Duration,
    idle_since: Duration,
}

/// What a waiting request is handed.
enum Grant {
    Conn(Conn),
    /// Permission to open a connection (already counted in `open`).
    Connect,
}

#[derive(Default)]
struct HostConns {
    idle: Vec<Conn>,
    waiters: VecDeque<oneshot::Sender<Grant>>,
    /// Connections to this host open or being opened (idle ones included).
    open: u32,
}

#[derive(Default)]
struct State {
    hosts: BTreeMap<(String, u16), HostConns>,
    /// Connections open or being opened, all hosts together (`maxConnections` counts these).
    open: u32,
    pending: u32,
    active: u32,
    retries: u32,
}

/// Mutual TLS towards some endpoints of a cluster.
pub struct PoolTls {
    /// The sidecar's TLS: a connection first waits for its certificate.
    pub sidecar: Arc<tls::SidecarTls>,
    pub connector: TlsConnector,
    /// `(host, port)` of the endpoints that get mTLS; the others get plaintext.
    pub endpoints: BTreeSet<(String, u16)>,
}

pub struct Pool<N: Net> {
    net: N,
    limits: Limits,
    clock: Option<Arc<dyn Clock>>,
    tls: Option<PoolTls>,
    state: Mutex<State>,
}

/// Counts a request as active until dropped.
struct Active<'a>(&'a Mutex<State>);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.lock().expect("pool lock").active -= 1;
    }
}

/// A retry in flight, counted against `maxRetries` / the retry budget until dropped.
pub struct RetryPermit<'a>(&'a Mutex<State>);

impl Drop for RetryPermit<'_> {
    fn drop(&mut self) {
        self.0.lock().expect("pool lock").retries -= 1;
    }
}

/// One TCP-proxied upstream connection, counted against the cluster's `maxConnections`
/// (as Envoy's `tcp_proxy` counts its connections in the cluster's pool) until dropped.
pub struct TcpSlot<N: Net> {
    pool: Arc<Pool<N>>,
    key: (String, u16),
}

impl<N: Net> Drop for TcpSlot<N> {
    fn drop(&mut self) {
        let mut s = self.pool.lock();
        self.pool.closed(&mut s, &self.key);
    }
}

impl<N: Net> Pool<N> {
    /// A slot for one TCP connection to `key`; `None` when the cluster's connections are
    /// at `maxConnections` (Envoy's `upstream_cx_overflow`: the connection is closed,
    /// flag `UO`). A freed slot may go to an HTTP request waiting for a connection.
    pub fn try_tcp_connection(self: &Arc<Self>, key: (String, u16)) -> Option<TcpSlot<N>> {
        let mut s = self.lock();
        if s.open >= self.limits.max_connections {
            return None;
        }
        s.open += 1;
        s.hosts.entry(key.clone()).or_default().open += 1;
        drop(s);
        Some(TcpSlot { pool: self.clone(), key })
    }

    /// A pool without limits and without idle expiry (an app's client, the inbound side).
    pub fn new(net: N) -> Self {
        Pool { net, limits: Limits::default(), clock: None, tls: None, state: Mutex::new(State::default()) }
    }

    pub fn with_limits(net: N, limits: Limits, clock: Arc<dyn Clock>) -> Self {
        Pool { net, limits, clock: Some(clock), tls: None, state: Mutex::new(State::default()) }
    }

    /// Originates mutual TLS to the endpoints `tls` names.
    pub fn with_tls(self, tls: PoolTls) -> Self {
        Pool { tls: Some(tls), ..self }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("pool lock")
    }

    fn now(&self) -> Duration {
        self.clock.as_ref().map(|c| c.now()).unwrap_or_default()
    }

    /// Requests in flight plus requests waiting for a connection.
    pub fn load(&self) -> (u32, u32) {
        let s = self.lock();
        (s.active, s.pending)
    }

    /// Asks the retry circuit breaker for one more concurrent retry; `None` = overflow.
    pub fn try_retry(&self) -> Option<RetryPermit<'_>> {
        let mut s = self.lock();
        let allowed = match self.limits.retry_budget {
            Some(b) => {
                let share = (b.percent / 100.0 * f64::from(s.active + s.pending)).floor() as u32;
                share.max(b.min_concurrency)
            }
            None => self.limits.max_retries,
        };
        if s.retries >= allowed {
            return None;
        }
        s.retries += 1;
        Some(RetryPermit(&self.state))
    }

    /// Whether `conn` may carry another request.
    fn reusable(&self, conn: &Conn, now: Duration) -> bool {
        !conn.sender.is_closed()
            && (self.limits.max_requests_per_connection == 0 || conn.requests < self.limits.max_requests_per_connection)
            && self.limits.max_connection_duration.is_none_or(|d| now.saturating_sub(conn.created) < d)
    }

    /// Drops expired idle connections of every host; returns how many were closed.
    fn expire(&self, s: &mut State, now: Duration) {
        let timeout = self.limits.idle_timeout;
        let mut closed = 0;
        for h in s.hosts.values_mut() {
            let before = h.idle.len();
            h.idle.retain(|c| !c.sender.is_closed() && now.saturating_sub(c.idle_since) < timeout);
            let n = (before - h.idle.len()) as u32;
            h.open -= n;
            closed += n;
        }
        s.open -= closed;
    }

    /// A connection to `key` closed (or was never made): its slot may go to a request
    /// waiting on any host.
    fn closed(&self, s: &mut State, key: &(String, u16)) {
        s.open -= 1;
        if let Some(h) = s.hosts.get_mut(key) {
            h.open -= 1;
        }
        while s.open < self.limits.max_connections {
            let Some(h) = s.hosts.values_mut().find(|h| !h.waiters.is_empty()) else { return };
            let w = h.waiters.pop_front().expect("non-empty");
            h.open += 1;
            s.open += 1;
            if w.send(Grant::Connect).is_err() {
                // That waiter gave up; try the next.
                h.open -= 1;
                s.open -= 1;
            }
        }
    }

    /// Puts a connection back: to a waiter of the same host first, else idle.
    fn release(&self, key: &(String, u16), mut conn: Conn) {
        let now = self.now();
        let mut s = self.lock();
        if !self.reusable(&conn, now) {
            drop(conn);
            self.closed(&mut s, key);
            return;
        }
        conn.idle_since = now;
        let h = s.hosts.entry(key.clone()).or_default();
        while let Some(w) = h.waiters.pop_front() {
            match w.send(Grant::Conn(conn)) {
                Ok(()) => return,
                Err(Grant::Conn(c)) => conn = c,
                Err(Grant::Connect) => unreachable!("sent a connection"),
            }
        }
        if h.idle.len() < MAX_IDLE_PER_ENDPOINT {
            h.idle.push(conn);
        } else {
            drop(conn);
            self.closed(&mut s, key);
        }
    }

    async fn connect(&self, key: &(String, u16), timeout: Duration) -> Result<Conn, UpstreamError> {
        let (host, port) = (key.0.as_str(), key.1);
        let refused = |_| UpstreamError::Connect(ConnectFailure::Refused);
        let tls = self.tls.as_ref().filter(|t| t.endpoints.contains(key));
        // Without a certificate of its own the sidecar waits for its first one (as Envoy's
        // cluster waits for its SDS secret), at most the connect timeout; then the
        // connection gets its own connect timeout.
        if let Some(t) = tls
            && let Err(f) = t.sidecar.await_certificate(timeout).await
        {
            self.closed(&mut self.lock(), key);
            return Err(UpstreamError::Connect(ConnectFailure::Tls(f)));
        }
        let attempt = async {
            let addr = self.net.resolve(host, port).await.map_err(refused)?;
            let stream = self.net.connect(addr).await.map_err(refused)?;
            // The connection ends when either side closes; errors surface on requests.
            let (sender, peer) = match tls {
                Some(t) => {
                    let stream = tls::connect(&t.connector, host, stream)
                        .await
                        .map_err(|f| UpstreamError::Connect(ConnectFailure::Tls(f)))?;
                    let peer = tls::server_identity(&stream);
                    // One write per message: rustls makes a record of each vectored
                    // slice, and each record would be its own segment.
                    let (sender, conn) = http1::Builder::new()
                        .writev(false)
                        .handshake(TokioIo::new(stream))
                        .await
                        .map_err(|e| refused_h(&e))?;
                    tokio::spawn(conn);
                    (sender, peer)
                }
                None => {
                    let (sender, conn) =
                        http1::Builder::new().handshake(TokioIo::new(stream)).await.map_err(|e| refused_h(&e))?;
                    tokio::spawn(conn);
                    (sender, None)
                }
            };
            Ok::<_, UpstreamError>((sender, peer))
        };
        let result = match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok((sender, peer))) => {
                let now = self.now();
                return Ok(Conn { sender, peer, requests: 0, created: now, idle_since: now });
            }
            Ok(Err(e)) => e,
            Err(_) => UpstreamError::Connect(ConnectFailure::Timeout),
        };
        self.closed(&mut self.lock(), key);
        Err(result)
    }

    /// A connection to `key`: idle, new, or — at `maxConnections` — after waiting in
    /// the pending queue. Without an idle connection the request counts as pending until
    /// it has one (also while its own connection is being opened), and overflows when
    /// `http1MaxPendingRequests` are pending already. A host with no connection at all gets a new one even at
    /// `maxConnections` (Envoy's `tryCreateNewConnection`: "if we are at the connection
    /// circuit-breaker limit due to other upstreams having too many open connections, and
    /// this upstream has no connections, always create one, to prevent pending streams
    /// being queued to this upstream with no way to be processed").
    async fn acquire(&self, key: &(String, u16), connect_timeout: Duration) -> Result<Conn, UpstreamError> {
        let rx = {
            let now = self.now();
            let mut s = self.lock();
            if self.clock.is_some() {
                self.expire(&mut s, now);
            }
            let h = s.hosts.entry(key.clone()).or_default();
            let mut stale = 0;
            let mut ready = None;
            while let Some(c) = h.idle.pop() {
                if c.sender.is_ready() {
                    ready = Some(c);
                    break;
                }
                stale += 1;
            }
            h.open -= stale;
            let host_open = h.open;
            s.open -= stale;
            if let Some(c) = ready {
                return Ok(c);
            }
            // No ready connection: the request becomes pending (Envoy's `newStreamImpl`
            // checks `max_pending_requests` before anything else), whether it then opens a
            // connection or waits for one.
            if s.pending >= self.limits.max_pending_requests {
                return Err(UpstreamError::Overflow(Overflow::Pending));
            }
            s.pending += 1;
            if s.open < self.limits.max_connections || host_open == 0 {
                s.open += 1;
                s.hosts.get_mut(key).expect("entry made above").open += 1;
                None
            } else {
                let (tx, rx) = oneshot::channel();
                s.hosts.get_mut(key).expect("entry made above").waiters.push_back(tx);
                Some(rx)
            }
        };
        // Pending until connected or handed a connection (or abandoned: a dropped future
        // drops this guard and `rx`).
        struct Pending<'a>(&'a Mutex<State>);
        impl Drop for Pending<'_> {
            fn drop(&mut self) {
                self.0.lock().expect("pool lock").pending -= 1;
            }
        }
        let _pending = Pending(&self.state);
        let Some(rx) = rx else {
            return self.connect(key, connect_timeout).await;
        };
        match rx.await {
            Ok(Grant::Conn(c)) => Ok(c),
            Ok(Grant::Connect) => self.connect(key, connect_timeout).await,
            Err(_) => Err(UpstreamError::Reset),
        }
    }

    /// Sends `req` to `host:port` and reads the whole response. A request that a reused
    /// connection could not even start is sent once more (the peer closed it while idle).
    pub async fn send(
        &self,
        host: &str,
        port: u16,
        connect_timeout: Duration,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<Bytes>, UpstreamError> {
        {
            let mut s = self.lock();
            if s.active >= self.limits.max_requests {
                return Err(UpstreamError::Overflow(Overflow::Requests));
            }
            s.active += 1;
        }
        let _active = Active(&self.state);
        let key = (host.to_string(), port);
        let mut req = req;
        for _ in 0..2 {
            let mut conn = self.acquire(&key, connect_timeout).await?;
            conn.requests += 1;
            match conn.sender.try_send_request(req).await {
                Ok(resp) => {
                    let (mut parts, body) = resp.into_parts();
                    if let Some(p) = &conn.peer {
                        parts.extensions.insert(tls::UpstreamPeer(p.clone()));
                    }
                    let body = body.collect().await.map(|b| b.to_bytes());
                    let Ok(body) = body else {
                        self.closed(&mut self.lock(), &key);
                        return Err(UpstreamError::Reset);
                    };
                    self.release(&key, conn);
                    return Ok(Response::from_parts(parts, body));
                }
                Err(mut e) => {
                    self.closed(&mut self.lock(), &key);
                    // The peer refused our certificate: its alert arrives on the first
                    // request (a TLS 1.3 client finishes its handshake first).
                    if let Some(f) = TlsFailure::find(e.error()) {
                        return Err(UpstreamError::Connect(ConnectFailure::Tls(f)));
                    }
                    match e.take_message() {
                        Some(r) => req = r,
                        None => return Err(UpstreamError::Reset),
                    }
                }
            }
        }
        Err(UpstreamError::Reset)
    }
}

/// hyper's handshake failed: the connection is gone before HTTP could start (a TLS
/// reason when there is one).
fn refused_h(e: &hyper::Error) -> UpstreamError {
    UpstreamError::Connect(TlsFailure::find(e).map_or(ConnectFailure::Refused, ConnectFailure::Tls))
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::net::{Ipv4Addr, SocketAddr};

    use hyper::service::service_fn;

    use super::*;
    use crate::net::{Listener, SystemClock, TokioNet};

    /// An HTTP/1.1 server on loopback answering 200 after `delay`; returns its port.
    async fn server(delay: Duration) -> u16 {
        let mut listener = TokioNet.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await.expect("bind");
        let port = listener.local_addr().expect("local addr").port();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let svc = service_fn(move |_req| async move {
                        tokio::time::sleep(delay).await;
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    });
                    let _ = server_builder().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        port
    }

    fn get() -> Request<Full<Bytes>> {
        Request::get("/").body(Full::new(Bytes::new())).expect("request")
    }

    const CONNECT: Duration = Duration::from_secs(1);

    #[tokio::test]
    async fn a_host_without_connections_gets_one_even_at_max_connections() {
        let (a, b) = (server(Duration::ZERO).await, server(Duration::ZERO).await);
        let limits = Limits { max_connections: 1, max_pending_requests: 1, ..Limits::default() };
        let pool = Pool::with_limits(TokioNet, limits, Arc::new(SystemClock::new()));
        pool.send("127.0.0.1", a, CONNECT, get()).await.expect("first host");
        // The cluster's one connection is idle on host a. A request for host b must not
        // queue behind it forever: Envoy opens a connection to a host that has none.
        let to_b = tokio::time::timeout(Duration::from_secs(5), pool.send("127.0.0.1", b, CONNECT, get()));
        to_b.await.expect("host b is not starved").expect("second host");
        assert_eq!(pool.load(), (0, 0));
    }

    /// Loopback sockets whose connects wait until the test opens the gate.
    #[derive(Clone)]
    struct GatedNet(Arc<tokio::sync::Semaphore>);

    impl Net for GatedNet {
        type Stream = <TokioNet as Net>::Stream;
        type Listener = <TokioNet as Net>::Listener;
        async fn bind(&self, addr: SocketAddr) -> std::io::Result<Self::Listener> {
            TokioNet.bind(addr).await
        }
        async fn connect(&self, addr: SocketAddr) -> std::io::Result<Self::Stream> {
            self.0.acquire().await.expect("gate open").forget();
            TokioNet.connect(addr).await
        }
        async fn resolve(&self, host: &str, port: u16) -> std::io::Result<SocketAddr> {
            TokioNet.resolve(host, port).await
        }
    }

    #[tokio::test]
    async fn a_request_opening_a_connection_is_pending() {
        // Envoy counts a request as pending from the moment no ready connection can take
        // it: with one pending slot, a second request arriving while the first one's
        // connection is being opened overflows even though maxConnections allows another.
        let port = server(Duration::ZERO).await;
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let limits = Limits { max_connections: 10, max_pending_requests: 1, ..Limits::default() };
        let pool = Arc::new(Pool::with_limits(GatedNet(gate.clone()), limits, Arc::new(SystemClock::new())));
        let first = tokio::spawn({
            let pool = pool.clone();
            async move { pool.send("127.0.0.1", port, CONNECT, get()).await.map(|r| r.status()) }
        });
        while pool.load().0 == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(pool.load(), (1, 1), "the first request waits for its connection: active and pending");
        let second = pool.send("127.0.0.1", port, CONNECT, get()).await;
        assert_eq!(second.err(), Some(UpstreamError::Overflow(Overflow::Pending)));
        gate.add_permits(1);
        assert!(first.await.expect("task").is_ok());
        // Connected and idle now: reused without the pending check.
        pool.send("127.0.0.1", port, CONNECT, get()).await.expect("reuses the idle connection");
        assert_eq!(pool.load(), (0, 0));
    }

    #[tokio::test]
    async fn a_host_with_a_busy_connection_queues_then_overflows() {
        let slow = server(Duration::from_millis(300)).await;
        let limits = Limits { max_connections: 1, max_pending_requests: 1, ..Limits::default() };
        let pool = Arc::new(Pool::with_limits(TokioNet, limits, Arc::new(SystemClock::new())));
        let first = tokio::spawn({
            let pool = pool.clone();
            async move { pool.send("127.0.0.1", slow, CONNECT, get()).await.map(|r| r.status()) }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let queued = tokio::spawn({
            let pool = pool.clone();
            async move { pool.send("127.0.0.1", slow, CONNECT, get()).await.map(|r| r.status()) }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(pool.load(), (2, 1), "one active on the connection, one pending");
        let third = pool.send("127.0.0.1", slow, CONNECT, get()).await;
        assert_eq!(third.err(), Some(UpstreamError::Overflow(Overflow::Pending)));
        assert!(first.await.expect("task").is_ok());
        assert!(queued.await.expect("task").is_ok(), "the queued request gets the connection");
    }
}
