//! The sidecar proxy. An outbound listener takes the app's plain HTTP/1.1 requests (the
//! destination named by the Host header, as a captured call would be) and sends them
//! down the stack, in reading order:
//!
//! route (VirtualService → weighted cluster) → timeout → balance (outlier-aware
//! candidates, LB policy) → pool (connect over the `Net` seam) → the peer's sidecar.
//!
//! An inbound listener forwards what peers send to the local app. Each concern is its
//! own module; this one wires them and owns the per-cluster runtime state.

pub mod balance;
pub mod hash;
pub mod local_reply;
pub mod outlier;
pub mod pool;
pub mod ratelimit;
pub mod retry;
pub mod route_match;
pub mod telemetry;
pub mod weighted;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::net::{Clock, Listener, Net};
use crate::registry::qualify;
use crate::snapshot::{Cluster, Snapshot};
use balance::Balancer;
use local_reply::Flag;
use outlier::{Detector, Transition};
use pool::{Pool, UpstreamError};
use telemetry::{AccessLog, Direction, OutlierEvent, OutlierKind, Telemetry};

/// Who this sidecar serves.
#[derive(Clone, Debug)]
pub struct SidecarConfig {
    pub pod: String,
    pub namespace: String,
    /// Where the local app listens (on loopback).
    pub app_port: u16,
    /// Seed of this proxy's RNG (weighted picks, load balancing).
    pub seed: u64,
}

/// Runtime state of one cluster in one proxy.
struct ClusterRt {
    cfg: Arc<Cluster>,
    active: Vec<u32>,
    balancer: Balancer,
    detector: Option<Detector>,
}

pub struct Sidecar<N: Net> {
    cfg: SidecarConfig,
    clock: Arc<dyn Clock>,
    telemetry: Arc<dyn Telemetry>,
    snapshot: Mutex<Arc<Snapshot>>,
    clusters: Mutex<BTreeMap<String, ClusterRt>>,
    rng: Mutex<ChaCha8Rng>,
    pool: Pool<N>,
}

type Reply = Response<Full<Bytes>>;

/// Where a logged request was going, as far as it got.
#[derive(Clone, Copy, Default)]
struct Target<'a> {
    route: &'a str,
    cluster: &'a str,
    upstream: Option<&'a str>,
}

/// Why forwarding produced no upstream response.
enum Failure {
    Upstream(UpstreamError),
    /// The route timeout expired (it covers the whole upstream exchange).
    Timeout,
}

const HOP_BY_HOP: [HeaderName; 5] =
    [header::CONNECTION, HeaderName::from_static("keep-alive"), header::TRANSFER_ENCODING, header::TE, header::UPGRADE];

fn strip_hop_by_hop(h: &mut HeaderMap) {
    for name in &HOP_BY_HOP {
        h.remove(name);
    }
}

impl<N: Net> Sidecar<N> {
    pub fn new(
        cfg: SidecarConfig,
        net: N,
        clock: Arc<dyn Clock>,
        telemetry: Arc<dyn Telemetry>,
        snapshot: Arc<Snapshot>,
    ) -> Arc<Self> {
        Arc::new(Sidecar {
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(cfg.seed)),
            cfg,
            clock,
            telemetry,
            snapshot: Mutex::new(snapshot),
            clusters: Mutex::new(BTreeMap::new()),
            pool: Pool::new(net),
        })
    }

    pub fn pod(&self) -> &str {
        &self.cfg.pod
    }

    /// Serves the outbound listener until it fails.
    pub async fn run_outbound(self: Arc<Self>, listener: N::Listener) -> std::io::Result<()> {
        self.serve(listener, Direction::Outbound).await
    }

    /// Serves the inbound listener until it fails.
    pub async fn run_inbound(self: Arc<Self>, listener: N::Listener) -> std::io::Result<()> {
        self.serve(listener, Direction::Inbound).await
    }

    async fn serve(self: Arc<Self>, mut listener: N::Listener, dir: Direction) -> std::io::Result<()> {
        loop {
            let (stream, _peer) = listener.accept().await?;
            let me = self.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let me = me.clone();
                    async move {
                        Ok::<_, Infallible>(match dir {
                            Direction::Outbound => me.outbound(req).await,
                            Direction::Inbound => me.inbound(req).await,
                        })
                    }
                });
                // A failed connection only ends that connection; its requests are logged.
                let _ = pool::server_builder().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    }

    /// Replays due outlier sweeps of every cluster up to now (so readmissions show up
    /// even when no request arrives).
    pub fn advance(&self) {
        let now = self.clock.now();
        let mut clusters = self.clusters.lock().expect("clusters lock");
        for (name, rt) in clusters.iter_mut() {
            let mut out = Vec::new();
            if let Some(d) = rt.detector.as_mut() {
                d.advance(now, &mut out);
            }
            self.emit(name, &rt.cfg, &out);
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

    fn log(
        &self,
        dir: Direction,
        req_id: Option<String>,
        to: Target<'_>,
        status: u16,
        flags: &[Flag],
        start: Duration,
    ) {
        let Target { route, cluster, upstream } = to;
        let flags = if flags.is_empty() {
            "-".to_string()
        } else {
            flags.iter().map(|f| f.as_str()).collect::<Vec<_>>().join(",")
        };
        self.telemetry.access_log(AccessLog {
            proxy: self.cfg.pod.clone(),
            direction: dir,
            request_id: req_id,
            route: route.to_string(),
            cluster: cluster.to_string(),
            upstream_pod: upstream.map(str::to_string),
            status,
            flags,
            start,
            duration: self.clock.now().saturating_sub(start),
        });
    }

    fn local(&self, flag: Flag, connect: Option<local_reply::ConnectFailure>, server: &'static str) -> Reply {
        let (status, body) = local_reply::for_flag(flag, connect);
        let mut reply = local_reply::reply(status, body, server);
        if flag == Flag::UpstreamOverflow {
            reply.headers_mut().insert("x-envoy-overloaded", HeaderValue::from_static("true"));
        }
        reply
    }

    /// The local reply for a failed upstream exchange, its status and flags.
    fn upstream_failure(&self, e: UpstreamError, server: &'static str) -> (Reply, u16, Vec<Flag>) {
        let (flag, why) = match e {
            UpstreamError::Connect(why) => (Flag::UpstreamConnectionFailure, Some(why)),
            UpstreamError::Reset => (Flag::UpstreamConnectionTermination, None),
            UpstreamError::Overflow(_) => (Flag::UpstreamOverflow, None),
        };
        let reply = self.local(flag, why, server);
        let status = reply.status().as_u16();
        (reply, status, vec![flag])
    }

    /// Picks a host of `cluster`, counting it active. `None` = no healthy upstream.
    fn pick_host(&self, cluster: &Arc<Cluster>) -> Option<usize> {
        let now = self.clock.now();
        let mut clusters = self.clusters.lock().expect("clusters lock");
        let rt = clusters.entry(cluster.name.clone()).or_insert_with(|| ClusterRt {
            cfg: cluster.clone(),
            active: vec![0; cluster.endpoints.len()],
            balancer: Balancer::default(),
            detector: cluster.outlier.map(|o| Detector::new(o, cluster.endpoints.len(), now)),
        });
        let mut candidates = Vec::with_capacity(rt.cfg.endpoints.len());
        match rt.detector.as_mut() {
            Some(d) => {
                let mut out = Vec::new();
                d.advance(now, &mut out);
                self.emit(&cluster.name, &rt.cfg, &out);
                d.candidates(&mut candidates);
            }
            None => candidates.extend(0..rt.cfg.endpoints.len()),
        }
        if candidates.is_empty() {
            return None;
        }
        let mut rng = self.rng.lock().expect("rng lock");
        let host = rt.balancer.pick(rt.cfg.lb, &candidates, &rt.active, &mut *rng);
        rt.active[host] += 1;
        Some(host)
    }

    /// Ends a request to `host`: no longer active; the result feeds outlier detection.
    fn release_host(&self, cluster: &str, host: usize, status: u16) {
        let now = self.clock.now();
        let mut clusters = self.clusters.lock().expect("clusters lock");
        let rt = clusters.get_mut(cluster).expect("picked cluster has runtime state");
        rt.active[host] -= 1;
        if let Some(d) = rt.detector.as_mut() {
            let mut out = Vec::new();
            d.advance(now, &mut out);
            d.record(host, status, now, &mut out);
            self.emit(cluster, &rt.cfg, &out);
        }
    }

    async fn outbound(self: Arc<Self>, req: Request<Incoming>) -> Reply {
        let start = self.clock.now();
        let (mut parts, body) = req.into_parts();
        let req_id = parts.headers.get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_string);
        let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
            self.log(Direction::Outbound, req_id, Target::default(), 400, &[], start);
            return local_reply::reply(StatusCode::BAD_REQUEST, "", "envoy");
        };
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .or_else(|| parts.uri.authority().map(|a| a.to_string()))
            .unwrap_or_default();
        let snapshot = self.snapshot.lock().expect("snapshot lock").clone();
        let fqdn = qualify(&host, &self.cfg.namespace);
        // Route: first match wins (every route matches until `match` is simulated).
        let Some(route) = snapshot.routes.get(&fqdn).and_then(|r| r.first()) else {
            self.log(Direction::Outbound, req_id, Target::default(), 404, &[Flag::NoRoute], start);
            return self.local(Flag::NoRoute, None, "envoy");
        };
        let weights: Vec<u32> = route.clusters.iter().map(|c| c.weight).collect();
        let random = self.rng.lock().expect("rng lock").next_u64();
        let cluster = weighted::pick(&weights, random).and_then(|i| snapshot.clusters.get(&route.clusters[i].cluster));
        let Some(cluster) = cluster.cloned() else {
            self.log(
                Direction::Outbound,
                req_id,
                Target { route: &route.name, ..Target::default() },
                503,
                &[Flag::NoCluster],
                start,
            );
            return self.local(Flag::NoCluster, None, "envoy");
        };
        let Some(host_idx) = self.pick_host(&cluster) else {
            let to = Target { route: &route.name, cluster: &cluster.name, upstream: None };
            self.log(Direction::Outbound, req_id, to, 503, &[Flag::NoHealthyUpstream], start);
            return self.local(Flag::NoHealthyUpstream, None, "envoy");
        };
        let ep = &cluster.endpoints[host_idx];
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
        let upstream_req = Request::from_parts(parts, Full::new(body));
        let send = self.pool.send(&ep.host, ep.port, cluster.connect_timeout, upstream_req);
        let result = match route.timeout {
            Some(t) => match tokio::time::timeout(t, send).await {
                Ok(r) => r.map_err(Failure::Upstream),
                Err(_) => Err(Failure::Timeout),
            },
            None => send.await.map_err(Failure::Upstream),
        };
        let (reply, status, flags) = match result {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                let ms = self.clock.now().saturating_sub(start).as_millis();
                parts.headers.insert("x-envoy-upstream-service-time", HeaderValue::from(ms as u64));
                parts.headers.insert(header::SERVER, HeaderValue::from_static("envoy"));
                (Response::from_parts(parts, Full::new(body)), status, vec![])
            }
            Err(Failure::Timeout) => {
                (self.local(Flag::UpstreamRequestTimeout, None, "envoy"), 504, vec![Flag::UpstreamRequestTimeout])
            }
            Err(Failure::Upstream(e)) => self.upstream_failure(e, "envoy"),
        };
        self.release_host(&cluster.name, host_idx, status);
        let to = Target { route: &route.name, cluster: &cluster.name, upstream: Some(&ep.pod) };
        self.log(Direction::Outbound, req_id, to, status, &flags, start);
        reply
    }

    async fn inbound(self: Arc<Self>, req: Request<Incoming>) -> Reply {
        let start = self.clock.now();
        let (mut parts, body) = req.into_parts();
        let req_id = parts.headers.get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_string);
        let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
            self.log(Direction::Inbound, req_id, Target { route: "inbound", ..Target::default() }, 400, &[], start);
            return local_reply::reply(StatusCode::BAD_REQUEST, "", "istio-envoy");
        };
        strip_hop_by_hop(&mut parts.headers);
        let app = Request::from_parts(parts, Full::new(body));
        let cluster = format!("inbound|{}||", self.cfg.app_port);
        let result =
            self.pool.send("127.0.0.1", self.cfg.app_port, crate::snapshot::DEFAULT_CONNECT_TIMEOUT, app).await;
        let (reply, status, flags) = match result {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                parts.headers.insert(header::SERVER, HeaderValue::from_static("istio-envoy"));
                (Response::from_parts(parts, Full::new(body)), status, vec![])
            }
            Err(e) => self.upstream_failure(e, "istio-envoy"),
        };
        let to = Target { route: "inbound", cluster: &cluster, upstream: Some(&self.cfg.pod) };
        self.log(Direction::Inbound, req_id, to, status, &flags, start);
        reply
    }
}
