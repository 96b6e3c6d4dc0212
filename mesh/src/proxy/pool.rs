//! HTTP/1.1 connection pool of one cluster, over the `Net` seam, held to the cluster's
//! circuit breakers (see `circuit_breaker`, which owns the counters and verdicts).
//!
//! Owns: connecting (with the cluster's connect timeout), the hyper handshake, idle
//! connections per endpoint (reused, expired after the idle timeout, retired after
//! `maxRequestsPerConnection` requests or `maxConnectionDuration`), the pending queue
//! when `maxConnections` is reached (a freed connection goes to the first waiter of its
//! host, a freed slot to the first waiter of any host), the cluster's connection-pool
//! settings ([`Limits`]), and originating mutual TLS to the endpoints that get it
//! ([`PoolTls`]; the handshake is `tls`'s). Does not own which endpoint to call or
//! whether to retry (`cluster_choice`, `retry`).

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

use super::circuit_breaker::Breakers;
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

struct State {
    hosts: BTreeMap<(String, u16), HostConns>,
    /// The cluster's counters; its connections are the hosts' `open` summed.
    breakers: Breakers,
}

impl State {
    fn new(limits: Limits) -> State {
        State { hosts: BTreeMap::new(), breakers: Breakers::new(limits) }
    }

    /// `n` connections to `key` closed (or were never made).
    fn closed(&mut self, key: &(String, u16), n: u32) {
        if let Some(h) = self.hosts.get_mut(key) {
            assert!(n <= h.open, "closed {n} connections to {key:?} of {} open", h.open);
            h.open -= n;
        }
        self.breakers.connections_closed(n);
        self.check();
    }

    fn opened(&mut self, key: &(String, u16)) {
        self.hosts.entry(key.clone()).or_default().open += 1;
        self.breakers.connection_opened();
        self.check();
    }

    /// The cluster's connection count is its hosts' counts summed.
    fn check(&self) {
        debug_assert_eq!(
            self.hosts.values().map(|h| u64::from(h.open)).sum::<u64>(),
            u64::from(self.breakers.connections()),
            "the cluster's connections are its hosts' connections"
        );
    }
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

/// Counts a request in flight until dropped.
struct Active<'a>(&'a Mutex<State>);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.lock().expect("pool lock").breakers.end_request();
    }
}

/// Counts a request as pending until dropped: until connected or handed a connection,
/// or abandoned (a dropped future drops this guard).
struct Pending<'a>(&'a Mutex<State>);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.lock().expect("pool lock").breakers.end_pending();
    }
}

/// A retry in flight, counted against `maxRetries` / the retry budget until dropped.
pub struct RetryPermit<'a>(&'a Mutex<State>);

impl Drop for RetryPermit<'_> {
    fn drop(&mut self) {
        self.0.lock().expect("pool lock").breakers.end_retry();
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
        if !s.breakers.has_connection_slot() {
            return None;
        }
        s.opened(&key);
        drop(s);
        Some(TcpSlot { pool: self.clone(), key })
    }

    /// A pool without limits and without idle expiry (an app's client, the inbound side).
    pub fn new(net: N) -> Self {
        let limits = Limits::default();
        Pool { net, limits, clock: None, tls: None, state: Mutex::new(State::new(limits)) }
    }

    pub fn with_limits(net: N, limits: Limits, clock: Arc<dyn Clock>) -> Self {
        Pool { net, limits, clock: Some(clock), tls: None, state: Mutex::new(State::new(limits)) }
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

    /// Requests in flight and requests waiting for a connection.
    #[cfg(test)]
    fn load(&self) -> (u32, u32) {
        self.lock().breakers.load()
    }

    /// Asks the retry circuit breaker for one more concurrent retry; `None` = overflow.
    pub fn try_retry(&self) -> Option<RetryPermit<'_>> {
        self.lock().breakers.admit_retry().then(|| RetryPermit(&self.state))
    }

    /// Whether `conn` may carry another request.
    fn reusable(&self, conn: &Conn, now: Duration) -> bool {
        !conn.sender.is_closed()
            && (self.limits.max_requests_per_connection == 0 || conn.requests < self.limits.max_requests_per_connection)
            && self.limits.max_connection_duration.is_none_or(|d| now.saturating_sub(conn.created) < d)
    }

    /// Drops expired idle connections of every host.
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
        s.breakers.connections_closed(closed);
        s.check();
    }

    /// A connection to `key` closed (or was never made): its slot may go to a request
    /// waiting on any host.
    fn closed(&self, s: &mut State, key: &(String, u16)) {
        s.closed(key, 1);
        while s.breakers.has_connection_slot() {
            let Some((waiting, h)) = s.hosts.iter_mut().find(|(_, h)| !h.waiters.is_empty()) else { return };
            let w = h.waiters.pop_front().expect("non-empty");
            let waiting = waiting.clone();
            s.opened(&waiting);
            if w.send(Grant::Connect).is_err() {
                // That waiter gave up; try the next.
                s.closed(&waiting, 1);
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
            let host_open = h.open - stale;
            s.closed(key, stale);
            if let Some(c) = ready {
                return Ok(c);
            }
            // No ready connection: the request becomes pending (Envoy's `newStreamImpl`
            // checks `max_pending_requests` before anything else), whether it then opens a
            // connection or waits for one.
            s.breakers.admit_pending().map_err(UpstreamError::Overflow)?;
            if s.breakers.may_connect(host_open) {
                s.opened(key);
                None
            } else {
                let (tx, rx) = oneshot::channel();
                s.hosts.get_mut(key).expect("entry made above").waiters.push_back(tx);
                Some(rx)
            }
        };
        // Pending until connected or handed a connection (or abandoned: a dropped future
        // drops this guard and `rx`).
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
        self.lock().breakers.admit_request().map_err(UpstreamError::Overflow)?;
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
    use std::net::{Ipv4Addr, SocketAddr};

    use super::*;
    use crate::proxy::test_net::{MemNet, PausedClock, always, upstream};

    fn get() -> Request<Full<Bytes>> {
        Request::get("/").body(Full::new(Bytes::new())).expect("request")
    }

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::new(10, 0, 0, last), 80))
    }

    const CONNECT: Duration = Duration::from_secs(1);
    /// Every wait in these tests ends by then (paused time: a hang fails at once).
    const BOUND: Duration = Duration::from_secs(30);

    fn pool<N: Net>(net: N, limits: Limits) -> Arc<Pool<N>> {
        Arc::new(Pool::with_limits(net, limits, PausedClock::shared()))
    }

    /// Polls the runtime until `cond` holds, at most [`BOUND`] of (paused) time.
    async fn until(what: &str, mut cond: impl FnMut() -> bool) {
        let wait = async {
            while !cond() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        tokio::time::timeout(BOUND, wait).await.unwrap_or_else(|_| panic!("timed out waiting for {what}"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_host_without_connections_gets_one_even_at_max_connections() {
        let net = MemNet::default();
        upstream(&net, addr(1), always(200, Duration::ZERO)).await;
        upstream(&net, addr(2), always(200, Duration::ZERO)).await;
        let limits = Limits { max_connections: 1, max_pending_requests: 1, ..Limits::default() };
        let pool = pool(net, limits);
        pool.send("10.0.0.1", 80, CONNECT, get()).await.expect("first host");
        // The cluster's one connection is idle on host a. A request for host b must not
        // queue behind it forever: Envoy opens a connection to a host that has none.
        let to_b = tokio::time::timeout(BOUND, pool.send("10.0.0.2", 80, CONNECT, get()));
        to_b.await.expect("host b is not starved").expect("second host");
        assert_eq!(pool.load(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_opening_a_connection_is_pending() {
        // Envoy counts a request as pending from the moment no ready connection can take
        // it: with one pending slot, a second request arriving while the first one's
        // connection is being opened overflows even though maxConnections allows another.
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let net = MemNet::gated(gate.clone());
        upstream(&net, addr(1), always(200, Duration::ZERO)).await;
        let limits = Limits { max_connections: 10, max_pending_requests: 1, ..Limits::default() };
        let pool = pool(net, limits);
        let first = tokio::spawn({
            let pool = pool.clone();
            async move { pool.send("10.0.0.1", 80, CONNECT, get()).await.map(|r| r.status()) }
        });
        until("the first request to be in flight", || pool.load().0 == 1).await;
        assert_eq!(pool.load(), (1, 1), "the first request waits for its connection: active and pending");
        let second = pool.send("10.0.0.1", 80, CONNECT, get()).await;
        assert_eq!(second.err(), Some(UpstreamError::Overflow(Overflow::Pending)));
        gate.add_permits(1);
        let first = tokio::time::timeout(BOUND, first).await.expect("the first request ends");
        assert!(first.expect("task").is_ok());
        // Connected and idle now: reused without the pending check.
        pool.send("10.0.0.1", 80, CONNECT, get()).await.expect("reuses the idle connection");
        assert_eq!(pool.load(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_host_with_a_busy_connection_queues_then_overflows() {
        let net = MemNet::default();
        let received = upstream(&net, addr(1), always(200, Duration::from_millis(300))).await;
        let limits = Limits { max_connections: 1, max_pending_requests: 1, ..Limits::default() };
        let pool = pool(net, limits);
        let send = |pool: &Arc<Pool<MemNet>>| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.send("10.0.0.1", 80, CONNECT, get()).await.map(|r| r.status()) })
        };
        let first = send(&pool);
        until("the first request to reach the upstream", || received.count() == 1).await;
        let queued = send(&pool);
        until("the second request to queue", || pool.load() == (2, 1)).await;
        let third = pool.send("10.0.0.1", 80, CONNECT, get()).await;
        assert_eq!(third.err(), Some(UpstreamError::Overflow(Overflow::Pending)));
        let (first, queued) =
            tokio::time::timeout(BOUND, async { (first.await, queued.await) }).await.expect("both end");
        assert!(first.expect("task").is_ok());
        assert!(queued.expect("task").is_ok(), "the queued request gets the connection");
        assert_eq!(received.count(), 2, "both went over the one connection");
        assert_eq!(pool.lock().breakers.connections(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connect_to_a_host_nobody_listens_on_fails_and_frees_its_slot() {
        let pool = pool(MemNet::default(), Limits { max_connections: 1, ..Limits::default() });
        let err = pool.send("10.0.0.9", 80, CONNECT, get()).await.err();
        assert_eq!(err, Some(UpstreamError::Connect(ConnectFailure::Refused)));
        assert_eq!(pool.lock().breakers.connections(), 0);
        assert_eq!(pool.load(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_beyond_max_requests_overflows_without_connecting() {
        let net = MemNet::default();
        let received = upstream(&net, addr(1), always(200, Duration::from_millis(100))).await;
        let pool = pool(net, Limits { max_requests: 1, ..Limits::default() });
        let first = tokio::spawn({
            let pool = pool.clone();
            async move { pool.send("10.0.0.1", 80, CONNECT, get()).await.map(|r| r.status()) }
        });
        until("the first request to reach the upstream", || received.count() == 1).await;
        let second = pool.send("10.0.0.1", 80, CONNECT, get()).await;
        assert_eq!(second.err(), Some(UpstreamError::Overflow(Overflow::Requests)));
        assert!(tokio::time::timeout(BOUND, first).await.expect("ends").expect("task").is_ok());
        assert_eq!(received.count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_past_the_idle_timeout_is_closed_not_reused() {
        let net = MemNet::default();
        let received = upstream(&net, addr(1), always(200, Duration::ZERO)).await;
        let limits = Limits { idle_timeout: Duration::from_secs(10), ..Limits::default() };
        let pool = pool(net, limits);
        pool.send("10.0.0.1", 80, CONNECT, get()).await.expect("first");
        tokio::time::sleep(Duration::from_secs(9)).await;
        pool.send("10.0.0.1", 80, CONNECT, get()).await.expect("second");
        assert_eq!(received.connections(), 1, "idle 9 s of 10: reused");
        tokio::time::sleep(Duration::from_secs(11)).await;
        pool.send("10.0.0.1", 80, CONNECT, get()).await.expect("third");
        assert_eq!(received.connections(), 2, "idle 11 s of 10: a new connection");
        // The expired one was closed before the new one opened.
        assert_eq!(pool.lock().breakers.connections(), 1);
    }
}
