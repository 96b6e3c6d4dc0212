//! The sidecar proxy. An outbound listener takes the app's plain HTTP/1.1 requests (the
//! destination named by the Host header, as a captured call would be) and runs them down
//! the stack, in reading order (see `outbound`):
//!
//! route (first matching VirtualService rule; redirect / direct response / weighted
//! cluster; header edits and rewrites) → fault (delay, abort) → mirror → timeout (the
//! route timeout covers every try and backoff) → retry (policy, backoff, retry circuit
//! breaker) → balance (outlier-aware candidates; LB policy or consistent hash) → pool
//! (circuit breakers, connect over the `Net` seam) → the peer's sidecar.
//!
//! A connection the app made to a TCP service's ClusterIP (its original destination,
//! `Net::original_dst`) takes the TCP proxy instead (see `tcp`), as does every inbound
//! connection of a pod serving a TCP service.
//!
//! An inbound listener runs the pod's PeerAuthentication mode (see `tls`: mTLS, plaintext
//! or both, sniffed on the same port), applies AuthorizationPolicy, then the local rate
//! limit, and forwards to the local app (see `inbound`). An admin listener serves the
//! sidecar's metrics (`/stats/prometheus`). An outlier timer runs each cluster's interval
//! sweep on time ([`Sidecar::run_outlier_timer`]), so readmissions happen (and are
//! reported) whether or not requests arrive. Each policy is its own module; this one owns
//! the sidecar's state: the config snapshot, the metrics and, per cluster, hosts' load,
//! the outlier detector, the hash table and the connection pool; and what every request
//! does first and last (its id, trace context and peer metadata; its access log,
//! metrics and span).
//!
//! Config arrives either once, in-process ([`Sidecar::new`]), or from the control plane
//! ([`Sidecar::awaiting_config`] and `control_client`). A sidecar waiting for its first
//! config is not ready: its outbound listener is bound but accepts nothing, so an app's
//! connections wait in the accept queue until the config is applied (as Istio's
//! `holdApplicationUntilProxyStarts` holds the app back). [`Sidecar::apply`] swaps the
//! snapshot and carries each cluster's runtime state over (see there).

pub mod authz;
pub mod balance;
mod circuit_breaker;
mod cluster_choice;
pub mod control_client;
pub mod fault;
pub mod hash;
pub mod headers;
mod inbound;
pub mod local_reply;
pub mod metrics;
mod outbound;
pub mod outlier;
pub mod peer_authn;
pub mod pool;
pub mod ratelimit;
pub mod retry;
pub mod route_match;
pub mod tcp;
pub mod telemetry;
#[cfg(test)]
mod test_net;
pub mod tls;
pub mod tracing;
pub mod weighted;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::istio::MtlsMode;
use crate::config::ratelimit::LocalRateLimitConfig;
use crate::identity::SpiffeId;
use crate::net::{Clock, Listener, Net};
use crate::snapshot::{Cluster, Snapshot};
use cluster_choice::HostChoice;
use local_reply::Flag;
use metrics::{HttpRequest, Metrics, PEER_METADATA, PeerId, Reporter, Security, Series, Workload};
use outlier::Transition;
use pool::{Pool, PoolTls, UpstreamError};
use ratelimit::LocalRateLimit;
use telemetry::{AccessLog, Direction, OutlierEvent, OutlierKind, SecurityEvent, Telemetry};
use tls::{Peer, SidecarTls};
use tracing::{Context, REQUEST_ID, Span, SpanKind};

/// Who this sidecar serves.
#[derive(Clone, Debug)]
pub struct SidecarConfig {
    pub pod: String,
    /// The pod's workload (its Deployment), as Istio's `*_workload` labels name it.
    pub workload: String,
    pub namespace: String,
    /// FQDN of the service the pod serves (`destination_service` of its inbound
    /// requests); empty when none.
    pub service: String,
    /// The pod's labels (VirtualService `sourceLabels` match on them).
    pub labels: BTreeMap<String, String>,
    /// Where the local app listens (on loopback).
    pub app_port: u16,
    /// Seed of this proxy's RNG (weighted picks, load balancing, faults, backoff).
    pub seed: u64,
    /// An inbound local rate limit (Envoy's `local_ratelimit` filter) of the sidecar's
    /// own bootstrap config, not the control plane's (a scenario's service `rate_limit`);
    /// one that an EnvoyFilter in the pushed config selects the pod for takes its place
    /// (see [`Sidecar::apply`]).
    pub bootstrap_rate_limit: Option<LocalRateLimitConfig>,
    /// The sidecar's identity and TLS; `None` = it can neither originate nor accept mTLS.
    pub tls: Option<Arc<SidecarTls>>,
    /// Processing time to spend on top of the real work (a simulated sidecar's cost
    /// model); `None` for a real sidecar.
    pub cost: Option<Arc<dyn ProcessingCost>>,
}

/// Processing time a sidecar spends per request and per accepted mTLS handshake. A
/// simulator plugs in a model, so that a simulated mesh pays a latency tax; a real
/// sidecar has no such hook set and spends what it spends.
pub trait ProcessingCost: std::fmt::Debug + Send + Sync + 'static {
    /// Time spent on one request going `dir`, before it is handled (each upstream try
    /// crosses the destination's inbound again).
    fn request(&self, dir: Direction) -> Duration;
    /// Time one accepted mTLS handshake costs, before the connection's first request.
    fn tls_handshake(&self) -> Duration;
}

/// Runtime state of one cluster in one proxy: how its hosts are chosen and its
/// connection pool.
struct ClusterRt<N: Net> {
    choice: HostChoice,
    pool: Arc<Pool<N>>,
}

impl<N: Net> ClusterRt<N> {
    fn new(pool: Pool<N>, cfg: Arc<Cluster>, now: Duration) -> Self {
        ClusterRt { choice: HostChoice::new(cfg, now), pool: Arc::new(pool) }
    }

    fn cfg(&self) -> &Arc<Cluster> {
        self.choice.cfg()
    }

    /// This state carried over to a changed config of the same cluster: the host choice
    /// carries host by host (see `HostChoice::carry`); the pool stays unless its limits
    /// or its TLS origination changed (it is keyed by address; `new_pool` makes a fresh
    /// one).
    fn carry(self, cfg: Arc<Cluster>, new_pool: impl FnOnce(&Cluster) -> Pool<N>, now: Duration) -> Self {
        let tls = |c: &Cluster| -> (Vec<(String, u16)>, Vec<SpiffeId>) {
            let mtls = c.endpoints.iter().filter(|e| e.mtls).map(|e| (e.host.clone(), e.port)).collect();
            (mtls, c.peer_identities.clone())
        };
        let old = self.cfg();
        let pool = if old.limits == cfg.limits && tls(old) == tls(&cfg) { self.pool } else { Arc::new(new_pool(&cfg)) };
        ClusterRt { choice: self.choice.carry(cfg, now), pool }
    }
}

pub struct Sidecar<N: Net> {
    cfg: SidecarConfig,
    net: N,
    clock: Arc<dyn Clock>,
    telemetry: Arc<dyn Telemetry>,
    snapshot: Mutex<Arc<Snapshot>>,
    /// Whether a config has been applied.
    ready: tokio::sync::watch::Sender<bool>,
    clusters: Mutex<BTreeMap<String, ClusterRt<N>>>,
    /// A cluster's runtime state was created or replaced: the outlier timer re-reads
    /// when the next sweep is due.
    clusters_changed: tokio::sync::Notify,
    rng: Mutex<ChaCha8Rng>,
    /// Connections to the local app.
    app_pool: Pool<N>,
    /// The inbound local rate limit in effect, and the config it runs.
    rate_limit: Mutex<Option<(LocalRateLimitConfig, LocalRateLimit)>>,
    metrics: Mutex<Metrics>,
    /// This sidecar's workload metadata, as sent to peers.
    metadata: HeaderValue,
}

type Reply = Response<Full<Bytes>>;

/// One request as a sidecar handles it, from its first byte to its reply: what every
/// path through `outbound` and `inbound` needs when it ends.
struct Exchange {
    dir: Direction,
    start: Duration,
    /// `x-request-id`, generated when the request came without one.
    request_id: HeaderValue,
    /// This hop's span (a child of the context the request came with, if any).
    trace: Context,
    request_bytes: u64,
    /// The peer that sent the request (inbound; outbound learns it from the response).
    peer: PeerId,
}

/// Where a logged request was going, as far as it got.
#[derive(Clone, Copy, Default)]
struct Target<'a> {
    route: &'a str,
    cluster: &'a str,
    upstream: Option<&'a str>,
    /// The downstream peer (inbound).
    peer: Option<&'a Peer>,
    /// FQDN of the destination service (`destination_service`), empty when unknown.
    service: &'a str,
}

/// How long an inbound TLS handshake waits for the sidecar's first certificate (a
/// client's default connect timeout, so its own timeout ends the wait first).
pub const INBOUND_CERT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

const HOP_BY_HOP: [HeaderName; 5] =
    [header::CONNECTION, HeaderName::from_static("keep-alive"), header::TRANSFER_ENCODING, header::TE, header::UPGRADE];

/// The flag of a failed upstream exchange, and why a connect failed.
fn failure_flag(e: UpstreamError) -> (Flag, Option<local_reply::ConnectFailure>) {
    match e {
        UpstreamError::Connect(why) => (Flag::UpstreamConnectionFailure, Some(why)),
        UpstreamError::Reset => (Flag::UpstreamConnectionTermination, None),
        UpstreamError::Overflow(_) => (Flag::UpstreamOverflow, None),
    }
}

/// The inbound local rate limit the sidecar `cfg` runs with `snapshot`: the one an
/// EnvoyFilter selects it for, else its bootstrap one.
fn rate_limit_of<'a>(cfg: &'a SidecarConfig, snapshot: &'a Snapshot) -> Option<&'a LocalRateLimitConfig> {
    snapshot.inbound_rate_limit_for(&cfg.namespace, &cfg.labels).or(cfg.bootstrap_rate_limit.as_ref())
}

/// Removes hop-by-hop headers. Scans the (few) names first: removing by name hashes,
/// and most messages carry none.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    if !h.keys().any(|k| HOP_BY_HOP.contains(k)) {
        return;
    }
    for name in &HOP_BY_HOP {
        h.remove(name);
    }
}

impl<N: Net> Sidecar<N> {
    /// A sidecar running `snapshot` from the start (config in-process); fails when its
    /// rate-limit config is invalid.
    pub fn new(
        cfg: SidecarConfig,
        net: N,
        clock: Arc<dyn Clock>,
        telemetry: Arc<dyn Telemetry>,
        snapshot: Arc<Snapshot>,
    ) -> Result<Arc<Self>, String> {
        Self::build(cfg, net, clock, telemetry, snapshot, true)
    }

    /// A sidecar that is not ready until a config is [applied](Sidecar::apply) (by its
    /// control-plane client); fails when its rate-limit config is invalid.
    pub fn awaiting_config(
        cfg: SidecarConfig,
        net: N,
        clock: Arc<dyn Clock>,
        telemetry: Arc<dyn Telemetry>,
    ) -> Result<Arc<Self>, String> {
        Self::build(cfg, net, clock, telemetry, Arc::new(Snapshot::default()), false)
    }

    fn build(
        cfg: SidecarConfig,
        net: N,
        clock: Arc<dyn Clock>,
        telemetry: Arc<dyn Telemetry>,
        snapshot: Arc<Snapshot>,
        ready: bool,
    ) -> Result<Arc<Self>, String> {
        let rate_limit = match rate_limit_of(&cfg, &snapshot) {
            Some(c) => Some((c.clone(), LocalRateLimit::new(c.clone(), clock.now())?)),
            None => None,
        };
        let me = Workload::from_pod(&cfg.workload, &cfg.namespace, &cfg.labels);
        Ok(Arc::new(Sidecar {
            metadata: me.to_header(),
            metrics: Mutex::new(Metrics::new(me)),
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(cfg.seed)),
            cfg,
            app_pool: Pool::new(net.clone()),
            net,
            clock,
            telemetry,
            snapshot: Mutex::new(snapshot),
            ready: tokio::sync::watch::channel(ready).0,
            clusters: Mutex::new(BTreeMap::new()),
            clusters_changed: tokio::sync::Notify::new(),
            rate_limit: Mutex::new(rate_limit),
        }))
    }

    pub fn pod(&self) -> &str {
        &self.cfg.pod
    }

    pub fn namespace(&self) -> &str {
        &self.cfg.namespace
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Runs `snapshot` from now on. The inbound local rate limit is the one its
    /// EnvoyFilters select this pod for (else the bootstrap one): a bucket whose config
    /// did not change goes on, a changed or new one starts full now, as Envoy's filter
    /// does with a new listener config. Clusters whose config did not change keep their
    /// runtime state as it is (the same `Arc`, so requests in flight see no change);
    /// changed ones carry it over host by host (see `ClusterRt::carry`), after the
    /// outlier sweeps due by now ran on the old config; removed ones lose it. Requests
    /// in flight finish on the cluster config they started with.
    pub fn apply(&self, mut snapshot: Snapshot) {
        let now = self.clock.now();
        let mut clusters = self.clusters.lock().expect("clusters lock");
        self.sweep(&mut clusters, now);
        let old = self.snapshot();
        for (name, c) in snapshot.clusters.iter_mut() {
            if let Some(prev) = old.clusters.get(name)
                && **prev == **c
            {
                *c = prev.clone();
            }
        }
        let mut next = BTreeMap::new();
        for (name, rt) in std::mem::take(&mut *clusters) {
            let Some(cfg) = snapshot.clusters.get(&name) else { continue };
            let rt =
                if Arc::ptr_eq(rt.cfg(), cfg) { rt } else { rt.carry(cfg.clone(), |c| self.cluster_pool_new(c), now) };
            next.insert(name, rt);
        }
        // The timer wakes only for clusters that detect outliers.
        if next.values().any(|rt| rt.choice.next_sweep().is_some()) {
            self.clusters_changed.notify_one();
        }
        *clusters = next;
        drop(clusters);
        let wanted = rate_limit_of(&self.cfg, &snapshot);
        let mut rate_limit = self.rate_limit.lock().expect("rate limit lock");
        if rate_limit.as_ref().map(|(c, _)| c) != wanted {
            *rate_limit = wanted.map(|c| {
                let rl =
                    LocalRateLimit::new(c.clone(), now).expect("control_client::build refuses an invalid rate limit");
                (c.clone(), rl)
            });
        }
        drop(rate_limit);
        *self.snapshot.lock().expect("snapshot lock") = Arc::new(snapshot);
        self.ready.send_replace(true);
    }

    /// Runs the outlier detectors' interval timers, as Envoy arms one per cluster: at
    /// each cluster's next tick its sweep runs (readmissions, backoff decay) and its
    /// transitions are reported, whether or not a request arrives. A cluster's timer
    /// starts with its runtime state (its first request) and restarts when its outlier
    /// settings change. Runs until its task is aborted, with the pod's other tasks.
    pub async fn run_outlier_timer(self: Arc<Self>) {
        loop {
            let next = {
                let clusters = self.clusters.lock().expect("clusters lock");
                clusters.values().filter_map(|rt| rt.choice.next_sweep()).min()
            };
            // A permit stored by a change made since `next` was read ends the wait at once.
            let changed = self.clusters_changed.notified();
            match next {
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep(at.saturating_sub(self.clock.now())) => {}
                        () = changed => {}
                    }
                }
                None => changed.await,
            }
            let now = self.clock.now();
            self.sweep(&mut self.clusters.lock().expect("clusters lock"), now);
        }
    }

    /// Serves the outbound listener, once a config is applied, until it fails.
    pub async fn run_outbound(self: Arc<Self>, listener: N::Listener) -> std::io::Result<()> {
        let mut ready = self.ready.subscribe();
        // The sender lives in `self`, so waiting cannot fail.
        let _ = ready.wait_for(|r| *r).await;
        self.serve(listener, Direction::Outbound).await
    }

    /// Serves the inbound listener until it fails.
    pub async fn run_inbound(self: Arc<Self>, listener: N::Listener) -> std::io::Result<()> {
        self.serve(listener, Direction::Inbound).await
    }

    /// Serves the admin listener until it fails: `GET /stats/prometheus` answers this
    /// sidecar's metrics in the Prometheus text format; anything else is 404.
    pub async fn run_admin(self: Arc<Self>, mut listener: N::Listener) -> std::io::Result<()> {
        loop {
            let (stream, _) = listener.accept().await?;
            let me = self.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let me = me.clone();
                    async move { Ok::<_, Infallible>(me.admin(req.method(), req.uri().path())) }
                });
                let _ = pool::server_builder().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    }

    fn admin(&self, method: &http::Method, path: &str) -> Reply {
        if method != http::Method::GET || path != "/stats/prometheus" {
            return local_reply::reply(http::StatusCode::NOT_FOUND, "", "envoy");
        }
        let text = metrics::encode_prometheus(&self.metrics()).expect("writing to a String cannot fail");
        let mut reply = local_reply::reply(http::StatusCode::OK, text, "envoy");
        reply.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(metrics::PROMETHEUS_CONTENT_TYPE));
        reply
    }

    /// This sidecar's metric series, in order.
    pub fn metrics(&self) -> Vec<Series> {
        self.metrics.lock().expect("metrics lock").series()
    }

    async fn serve(self: Arc<Self>, mut listener: N::Listener, dir: Direction) -> std::io::Result<()> {
        let local = listener.local_addr()?;
        loop {
            let (stream, addr) = listener.accept().await?;
            let me = self.clone();
            tokio::spawn(async move {
                match dir {
                    Direction::Outbound => match me.captured_tcp(local, addr) {
                        Some(fqdn) => me.tcp_outbound(stream, fqdn).await,
                        None => me.serve_http(stream, dir, addr, local, Peer::PLAINTEXT).await,
                    },
                    Direction::Inbound => me.serve_inbound(stream, addr, local).await,
                }
            });
        }
    }

    /// The TCP service a connection accepted on the outbound listener `local` from `peer`
    /// was captured for: its original destination is that service's `ClusterIP:port`.
    fn captured_tcp(&self, local: std::net::SocketAddr, peer: std::net::SocketAddr) -> Option<String> {
        let dst = self.net.original_dst(local, peer)?;
        self.snapshot().tcp_vips.get(&dst).cloned()
    }

    /// One inbound connection past PeerAuthentication: the TCP proxy when the pod's
    /// service is a TCP service, else HTTP.
    async fn serve_inbound_as<S: crate::net::Stream>(
        self: Arc<Self>,
        stream: S,
        addr: std::net::SocketAddr,
        local: std::net::SocketAddr,
        peer: Peer,
    ) {
        if self.snapshot().tcp_services.contains(&self.cfg.service) {
            self.tcp_inbound(stream, addr, peer).await
        } else {
            self.serve_http(stream, Direction::Inbound, addr, local, peer).await
        }
    }

    /// One inbound connection under the pod's PeerAuthentication mode: STRICT takes only
    /// mTLS with a mesh-issued client certificate and resets plaintext; PERMISSIVE sniffs
    /// the first byte and serves both; DISABLE serves plaintext only.
    async fn serve_inbound(
        self: Arc<Self>,
        stream: N::Stream,
        addr: std::net::SocketAddr,
        local: std::net::SocketAddr,
    ) {
        let mode = self.snapshot().inbound_mtls.get(&self.cfg.pod).copied().unwrap_or(MtlsMode::Permissive);
        if mode == MtlsMode::Disable {
            return self.serve_inbound_as(stream, addr, local, Peer::PLAINTEXT).await;
        }
        let Ok((stream, is_tls)) = tls::sniff(stream).await else { return };
        let refuse = |reason: &str| {
            self.telemetry.security_event(SecurityEvent {
                proxy: self.cfg.pod.clone(),
                at: self.clock.now(),
                peer: addr,
                reason: reason.to_string(),
            });
        };
        match (&self.cfg.tls, is_tls) {
            (Some(t), true) => {
                // A sidecar without its first certificate holds the handshake until it has
                // one (Envoy's listener waits for its SDS secret), at most INBOUND_CERT_WAIT.
                if let Err(f) = t.await_certificate(INBOUND_CERT_WAIT).await {
                    return refuse(f.as_str());
                }
                match t.accept(stream).await {
                    Ok((stream, peer)) => {
                        if let Some(c) = &self.cfg.cost {
                            tokio::time::sleep(c.tls_handshake()).await;
                        }
                        self.serve_inbound_as(stream, addr, local, peer).await
                    }
                    Err(f) => refuse(f.as_str()),
                }
            }
            (None, true) => refuse("no_tls_identity"),
            (_, false) if mode == MtlsMode::Strict => refuse("plaintext_in_strict"),
            (_, false) => self.serve_inbound_as(stream, addr, local, Peer::PLAINTEXT).await,
        }
    }

    /// Serves HTTP/1.1 on one connection until it closes. `addr`: the peer's address;
    /// `local`: the listener's.
    async fn serve_http<S: crate::net::Stream>(
        self: Arc<Self>,
        stream: S,
        dir: Direction,
        addr: std::net::SocketAddr,
        local: std::net::SocketAddr,
        peer: Peer,
    ) {
        let peer = Arc::new(peer);
        let svc = service_fn(move |req| {
            let me = self.clone();
            let peer = peer.clone();
            async move {
                Ok::<_, Infallible>(match dir {
                    Direction::Outbound => me.outbound(req, addr, local).await,
                    Direction::Inbound => me.inbound(req, addr, &peer).await,
                })
            }
        });
        // A failed connection only ends that connection; its requests are logged.
        let _ = pool::server_builder().serve_connection(TokioIo::new(stream), svc).await;
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.lock().expect("snapshot lock").clone()
    }

    /// A uniform draw from this proxy's RNG.
    fn draw(&self) -> u64 {
        self.rng.lock().expect("rng lock").next_u64()
    }

    /// Runs the outlier sweeps of every cluster due by `now` and reports their
    /// transitions.
    fn sweep(&self, clusters: &mut BTreeMap<String, ClusterRt<N>>, now: Duration) {
        for (name, rt) in clusters.iter_mut() {
            let mut out = Vec::new();
            rt.choice.sweep(now, &mut out);
            self.emit(name, rt.cfg(), &out);
        }
    }

    fn emit(&self, cluster: &str, cfg: &Cluster, transitions: &[Transition]) {
        for t in transitions {
            let (host, at, kind) = match *t {
                Transition::Ejected { host, at, reason, for_ } => (host, at, OutlierKind::Ejected { reason, for_ }),
                Transition::Overflow { host, at, reason } => (host, at, OutlierKind::Overflow { reason }),
                Transition::Readmitted { host, at } => (host, at, OutlierKind::Readmitted),
            };
            self.telemetry.outlier_event(OutlierEvent {
                proxy: self.cfg.pod.clone(),
                cluster: cluster.to_string(),
                pod: cfg.endpoints[host].pod.clone(),
                at,
                kind,
            });
        }
    }

    /// What a request does first: its `x-request-id` (made up when absent), its span
    /// (the child of the context it came with), and, inbound, the peer's metadata, which
    /// the app does not see.
    fn begin(&self, dir: Direction, headers: &mut HeaderMap) -> Exchange {
        let start = self.clock.now();
        let mut rng = self.rng.lock().expect("rng lock");
        let request_id = match headers.get(REQUEST_ID) {
            Some(v) => v.clone(),
            None => {
                let v = HeaderValue::try_from(tracing::uuid_v4(&mut *rng)).expect("a UUID is header-safe");
                headers.insert(REQUEST_ID, v.clone());
                v
            }
        };
        let trace = Context::start(tracing::extract(headers), &mut *rng);
        drop(rng);
        trace.inject(headers);
        let peer = match dir {
            Direction::Outbound => PeerId::UNKNOWN,
            Direction::Inbound => {
                let peer =
                    self.metrics.lock().expect("metrics lock").peer(headers.get(PEER_METADATA).map(|v| v.as_bytes()));
                headers.remove(PEER_METADATA);
                peer
            }
        };
        Exchange { dir, start, request_id, trace, request_bytes: 0, peer }
    }

    /// Spends the cost model's processing time for one request going `dir` (none for a
    /// real sidecar). Inside the request's span, as Envoy's own work is.
    async fn spend(&self, dir: Direction) {
        if let Some(c) = &self.cfg.cost {
            tokio::time::sleep(c.request(dir)).await;
        }
    }

    /// What a request does last: exchange metadata on the reply, then its access log,
    /// metrics and span. Returns the reply.
    fn finish(&self, ex: &Exchange, mut reply: Reply, flags: &[Flag], to: Target<'_>) -> Reply {
        let now = self.clock.now();
        let status = reply.status().as_u16();
        // The principals are the two ends of the mTLS connection the request crossed (the
        // downstream one inbound, the upstream one outbound): the verified peer and this
        // sidecar's own identity; `unknown` over plaintext and for local replies.
        let own = self.cfg.tls.as_ref().map(|t| t.id());
        let (reporter, peer, security, service, principals) = match ex.dir {
            Direction::Outbound => {
                let peer = reply.headers_mut().remove(PEER_METADATA);
                let peer = self.metrics.lock().expect("metrics lock").peer(peer.as_ref().map(|v| v.as_bytes()));
                let upstream = reply.extensions_mut().remove::<tls::UpstreamPeer>();
                let principals = match upstream {
                    Some(tls::UpstreamPeer(server)) => [own.cloned(), Some(server)],
                    None => [None, None],
                };
                (Reporter::Source, peer, Security::Unknown, to.service, principals)
            }
            Direction::Inbound => {
                reply.headers_mut().insert(PEER_METADATA, self.metadata.clone());
                let mtls_peer = to.peer.filter(|p| p.security == tls::ConnectionSecurity::MutualTls);
                let security = if mtls_peer.is_some() { Security::MutualTls } else { Security::None };
                let principals = match mtls_peer {
                    Some(p) => [p.identity.clone(), own.cloned()],
                    None => [None, None],
                };
                (Reporter::Destination, ex.peer, security, self.cfg.service.as_str(), principals)
            }
        };
        let request_id = ex.request_id.to_str().ok();
        let duration = now.saturating_sub(ex.start);
        if self.telemetry.wants_access_log(ex.dir) {
            let Target { route, cluster, upstream, peer, .. } = to;
            let flags = local_reply::flags_string(flags);
            self.telemetry.access_log(&AccessLog {
                proxy: &self.cfg.pod,
                direction: ex.dir,
                request_id,
                route,
                cluster,
                upstream_pod: upstream,
                peer,
                status,
                flags: &flags,
                start: ex.start,
                duration,
            });
        }
        self.metrics.lock().expect("metrics lock").record_http(&HttpRequest {
            reporter,
            peer,
            service,
            code: status,
            flags,
            security,
            principals: [principals[0].as_deref(), principals[1].as_deref()],
            duration,
            request_bytes: ex.request_bytes,
            response_bytes: hyper::body::Body::size_hint(reply.body()).exact().unwrap_or(0),
        });
        self.telemetry.span(&Span {
            proxy: &self.cfg.pod,
            kind: match ex.dir {
                Direction::Outbound => SpanKind::Outbound,
                Direction::Inbound => SpanKind::Inbound,
            },
            request_id,
            trace_id: ex.trace.trace_id,
            span_id: ex.trace.span_id,
            parent: ex.trace.parent,
            start: ex.start,
            duration,
            status: Some(status),
            attempt: 0,
        });
        reply
    }

    fn local(&self, flag: Flag, connect: Option<local_reply::ConnectFailure>, server: &'static str) -> Reply {
        let (status, body) = local_reply::for_flag(flag, connect);
        self.local_body(flag, status, body, server)
    }

    /// The local reply to a request whose last (failed) try was a retry: Envoy says
    /// `… before headers. retried and the latest reset reason: …`.
    fn local_after_retries(
        &self,
        flag: Flag,
        connect: Option<local_reply::ConnectFailure>,
        server: &'static str,
    ) -> Reply {
        let (status, body) = local_reply::for_flag(flag, connect);
        self.local_body(flag, status, local_reply::after_retries(&body), server)
    }

    fn local_body(&self, flag: Flag, status: http::StatusCode, body: String, server: &'static str) -> Reply {
        let mut reply = local_reply::reply(status, body, server);
        if flag == Flag::UpstreamOverflow {
            reply.headers_mut().insert("x-envoy-overloaded", HeaderValue::from_static("true"));
        }
        reply
    }

    /// Runs `f` on the runtime state of `cluster`, creating it on first use (the outlier
    /// interval timer starts then) from the current snapshot's config of that cluster.
    /// The state's config may be newer than `cluster` (a request that started before
    /// [`Sidecar::apply`]): host indices then go through `cluster_choice::translate`.
    fn with_cluster<T>(&self, cluster: &Arc<Cluster>, f: impl FnOnce(&mut ClusterRt<N>) -> T) -> T {
        let mut clusters = self.clusters.lock().expect("clusters lock");
        if !clusters.contains_key(&cluster.name) {
            let cfg = self.snapshot().clusters.get(&cluster.name).cloned().unwrap_or_else(|| cluster.clone());
            let rt = ClusterRt::new(self.cluster_pool_new(&cfg), cfg, self.clock.now());
            if rt.choice.next_sweep().is_some() {
                self.clusters_changed.notify_one();
            }
            clusters.insert(cluster.name.clone(), rt);
        }
        f(clusters.get_mut(&cluster.name).expect("inserted above"))
    }

    /// A new pool for `cluster`, originating mTLS to the endpoints that get it.
    fn cluster_pool_new(&self, cluster: &Cluster) -> Pool<N> {
        let pool = Pool::with_limits(self.net.clone(), cluster.limits, self.clock.clone());
        let mtls: std::collections::BTreeSet<(String, u16)> =
            cluster.endpoints.iter().filter(|e| e.mtls).map(|e| (e.host.clone(), e.port)).collect();
        match &self.cfg.tls {
            Some(t) if !mtls.is_empty() => match t.connector(&cluster.peer_identities) {
                Ok(connector) => pool.with_tls(PoolTls { sidecar: t.clone(), connector, endpoints: mtls }),
                Err(e) => panic!("bug: the TLS client config of {} does not build: {e}", cluster.name),
            },
            _ => pool,
        }
    }

    fn cluster_pool(&self, cluster: &Arc<Cluster>) -> Arc<Pool<N>> {
        self.with_cluster(cluster, |rt| rt.pool.clone())
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::proxy::telemetry::MemoryTelemetry;
    use crate::proxy::test_net::{MemNet, PausedClock};
    use crate::snapshot::{Endpoint, LbPolicy, OutlierConfig};

    const MS: Duration = Duration::from_millis(1);
    const S: Duration = Duration::from_secs(1);

    /// A sidecar whose one cluster ejects a host at its 2nd consecutive 5xx, for 5 s.
    fn sidecar() -> (Arc<Sidecar<MemNet>>, Arc<Cluster>, Arc<MemoryTelemetry>) {
        let outlier = OutlierConfig {
            consecutive_5xx: Some(2),
            consecutive_gateway: None,
            interval: S,
            base_ejection_time: 5 * S,
            max_ejection_time: 300 * S,
            max_ejection_percent: 100,
            panic_threshold_percent: 0,
        };
        let endpoint = |i: u8| Endpoint { pod: format!("p-{i}"), host: format!("10.0.0.{i}"), port: 80, mtls: false };
        let cluster = Arc::new(Cluster {
            name: "c".into(),
            service: "svc".into(),
            subset: None,
            endpoints: vec![endpoint(1), endpoint(2)],
            lb: LbPolicy::RoundRobin,
            hash: None,
            outlier: Some(outlier),
            connect_timeout: S,
            limits: pool::Limits::default(),
            peer_identities: Vec::new(),
        });
        let snapshot = Snapshot { clusters: [("c".to_string(), cluster.clone())].into(), ..Snapshot::default() };
        let cfg = SidecarConfig {
            pod: "client-0".into(),
            workload: "client".into(),
            namespace: "default".into(),
            service: String::new(),
            labels: BTreeMap::new(),
            app_port: 8080,
            seed: 1,
            bootstrap_rate_limit: None,
            tls: None,
            cost: None,
        };
        let telemetry = Arc::new(MemoryTelemetry::default());
        let sc = Sidecar::new(cfg, MemNet::default(), PausedClock::shared(), telemetry.clone(), Arc::new(snapshot))
            .expect("no rate limit");
        (sc, cluster, telemetry)
    }

    fn eject_host_0(sc: &Sidecar<MemNet>, c: &Arc<Cluster>) {
        for _ in 0..2 {
            sc.commit_host(c, 0);
            sc.release_host(c, 0, Some(503));
        }
    }

    fn kinds(t: &MemoryTelemetry) -> Vec<(String, Duration)> {
        let events = t.events.lock().expect("events lock");
        events
            .iter()
            .map(|e| {
                let kind = match e.kind {
                    OutlierKind::Ejected { .. } => "Ejected",
                    OutlierKind::Overflow { .. } => "Overflow",
                    OutlierKind::Readmitted => "Readmitted",
                };
                (kind.to_string(), e.at)
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn the_outlier_timer_readmits_at_the_sweep_tick_without_any_request() {
        let (sc, c, telemetry) = sidecar();
        let timer = tokio::spawn(sc.clone().run_outlier_timer());
        tokio::time::sleep(500 * MS).await;
        eject_host_0(&sc, &c);
        assert_eq!(kinds(&telemetry), [("Ejected".to_string(), 500 * MS)]);
        // The cluster's state (and its 1 s interval timer) started with the first try at
        // 0.5 s, which ejected the host for 5 s: the sweep at 5.5 s readmits it, with no
        // request to replay it.
        tokio::time::sleep(4900 * MS).await;
        assert_eq!(kinds(&telemetry).len(), 1, "not yet readmitted at 5.4 s");
        tokio::time::sleep(200 * MS).await;
        assert_eq!(kinds(&telemetry), [("Ejected".to_string(), 500 * MS), ("Readmitted".to_string(), 5500 * MS)]);
        tokio::time::sleep(10 * S).await;
        assert_eq!(kinds(&telemetry).len(), 2, "a sweep is reported once");
        timer.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_config_change_runs_the_sweeps_due_on_the_old_config_first() {
        let (sc, c, telemetry) = sidecar();
        tokio::time::sleep(500 * MS).await;
        eject_host_0(&sc, &c);
        // No timer runs: at 5.6 s the sweep due at 5.5 s has not run when host 0 leaves
        // the cluster. Applying the change runs it first, so the readmission is reported.
        tokio::time::sleep(5100 * MS).await;
        let mut shrunk = (*c).clone();
        shrunk.endpoints.remove(0);
        sc.apply(Snapshot { clusters: [("c".to_string(), Arc::new(shrunk))].into(), ..Snapshot::default() });
        assert_eq!(kinds(&telemetry), [("Ejected".to_string(), 500 * MS), ("Readmitted".to_string(), 5500 * MS)]);
    }
}
