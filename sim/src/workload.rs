//! The workload generator: open-loop traffic. Every request's intended send time is
//! fixed before the run from the seed (constant or Poisson arrivals), so latency is
//! measured from the intended time and a slow mesh cannot slow the offered load
//! (no coordinated omission). Requests leave a source pod's app through its sidecar's
//! outbound listener with the destination in the Host header, as a captured call does. A
//! pod without a sidecar calls a destination pod directly (its inbound port, plaintext),
//! taking the service's pods in turn by request id.
//!
//! A workload over a TCP service opens one connection per arrival: to the service's
//! `ClusterIP:port`, captured to the source pod's sidecar (see
//! `SimNet::connect_captured`), or straight to a pod without a sidecar. It sends its
//! `bytes` (printable ASCII, a pattern derived from the request id), half-closes, and
//! reads until the server closes. The outcome is `Echoed` only if exactly the bytes sent came back;
//! otherwise `connect_error`, `reset`, `closed_early` (a prefix, or nothing, came back)
//! or `corrupted`; `client_timeout` past the workload's timeout. Its latency runs from
//! the intended start to that close.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::Full;
use mesh::proxy::pool::{Pool, UpstreamError};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp};

use crate::app::POD_HEADER;
use crate::net::Faults;
use crate::pod::{PodNet, Seam};
use crate::recorder::{Outcome, Record, Recorder};
use crate::scenario::{Arrivals, Plan, TcpWorkload, Workload};
use crate::seed::sub_seed;

/// Response headers a record does not keep: the same on (nearly) every response, or
/// shown elsewhere (the serving pod).
pub const UNRECORDED_RESPONSE_HEADERS: &[&str] =
    &[POD_HEADER, "x-envoy-upstream-service-time", "content-length", "content-type", "server", "date"];

/// One request the workload will issue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Planned {
    /// Also its `x-request-id`.
    pub id: u64,
    pub workload: usize,
    /// Index of the source pod.
    pub source: usize,
    pub intended: Duration,
}

/// Intended send times of one workload, from its own RNG.
pub fn arrivals(w: &Workload, seed: u64) -> Vec<Duration> {
    let start = w.start.as_secs_f64();
    let stop = w.stop.as_secs_f64();
    match w.arrivals {
        Arrivals::Constant => {
            (0u64..).map(|k| start + k as f64 / w.rate).take_while(|&t| t < stop).map(Duration::from_secs_f64).collect()
        }
        Arrivals::Poisson => {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let exp = Exp::new(w.rate).expect("rate > 0 is validated");
            let mut out = Vec::new();
            let mut t = start + exp.sample(&mut rng);
            while t < stop {
                out.push(Duration::from_secs_f64(t));
                t += exp.sample(&mut rng);
            }
            out
        }
    }
}

/// Every request of the run, in intended-time order; ids are their positions.
pub fn schedule(plan: &Plan, seed: u64) -> Vec<Planned> {
    let mut all = Vec::new();
    for (wi, w) in plan.workloads.iter().enumerate() {
        for (k, t) in arrivals(w, sub_seed(seed, "arrivals", wi as u64)).into_iter().enumerate() {
            all.push((t, wi, k));
        }
    }
    all.sort();
    all.into_iter()
        .enumerate()
        .map(|(id, (t, wi, k))| {
            let w = &plan.workloads[wi];
            Planned { id: id as u64, workload: wi, source: w.sources[k % w.sources.len()], intended: t }
        })
        .collect()
}

/// The record of request `r` ending at `now` with `outcome`; the recorder joins flags and
/// what the apps received later.
fn ended(r: &Planned, now: Duration, outcome: Outcome) -> Record {
    Record {
        workload: r.workload,
        source: r.source,
        intended: r.intended,
        latency: now.saturating_sub(r.intended),
        outcome,
        flags: String::new(),
        connection_security: None,
        upstream_attempts: 0,
        headers: Vec::new(),
        body: None,
        receipts: Vec::new(),
        spans: Vec::new(),
    }
}

/// What a generator needs: the requests it issues (in intended-time order), and the
/// world's seam its source pods' apps send through.
pub struct Generator<S: Seam> {
    pub plan: Arc<Plan>,
    pub requests: Vec<Planned>,
    pub seam: Arc<S>,
    pub faults: Arc<Faults>,
    pub recorder: Arc<Recorder>,
    /// In-flight count per workload (shared by every node's generator).
    pub in_flight: Arc<Vec<AtomicU32>>,
}

impl<S: Seam> Generator<S> {
    /// Issues every request at its intended time on the scenario's clock, once `start`
    /// (the scenario's clock starting) has completed.
    pub async fn run(self: Arc<Self>, start: impl std::future::Future<Output = ()>) {
        start.await;
        let clock = self.seam.clock();
        let pools: Vec<Arc<Pool<S::Net>>> =
            (0..self.plan.pods.len()).map(|p| Arc::new(Pool::new(self.seam.net(p)))).collect();
        // Per workload: the destination pods a pod without a sidecar calls, (host, port).
        let direct: Arc<Vec<Vec<(String, u16)>>> = Arc::new(
            self.plan
                .workloads
                .iter()
                .map(|w| {
                    let all = std::collections::BTreeMap::new();
                    self.plan.registry.pods_of(&w.to_fqdn, &all).map(|p| (p.host.clone(), p.inbound_port)).collect()
                })
                .collect(),
        );
        let nets: Arc<Vec<S::Net>> = Arc::new((0..self.plan.pods.len()).map(|p| self.seam.net(p)).collect());
        for i in 0..self.requests.len() {
            let r = self.requests[i];
            let now = clock.now();
            if r.intended > now {
                tokio::time::sleep(r.intended - now).await;
            }
            let w = &self.plan.workloads[r.workload];
            let record = |outcome| ended(&r, clock.now(), outcome);
            if self.faults.is_crashed(r.source) {
                self.recorder.record(r.id, record(Outcome::Error("source_down")));
                continue;
            }
            let counter = &self.in_flight[r.workload];
            if counter.load(Ordering::SeqCst) >= w.max_in_flight {
                self.recorder.record(r.id, record(Outcome::Error("in_flight_limit")));
                continue;
            }
            counter.fetch_add(1, Ordering::SeqCst);
            let me = self.clone();
            let pool = pools[r.source].clone();
            let direct = direct.clone();
            let nets = nets.clone();
            let clock = clock.clone();
            tokio::spawn(async move {
                let w = &me.plan.workloads[r.workload];
                if let Some(t) = w.tcp {
                    let via = if me.plan.pods[r.source].sidecar {
                        Via::Captured(me.plan.pods[r.source].outbound_port, t)
                    } else {
                        let pods = &direct[r.workload];
                        let (h, p) = &pods[r.id as usize % pods.len()];
                        Via::Direct(h.clone(), *p)
                    };
                    let exchange = tcp_exchange(&nets[r.source], via, r.id, t.bytes);
                    let outcome =
                        tokio::time::timeout(w.timeout, exchange).await.unwrap_or(Outcome::Error("client_timeout"));
                    me.in_flight[r.workload].fetch_sub(1, Ordering::SeqCst);
                    me.recorder.record(r.id, ended(&r, clock.now(), outcome));
                    return;
                }
                let port = me.plan.pods[r.source].outbound_port;
                let mut req = Request::builder()
                    .method(w.method.clone())
                    .uri(w.path.as_str())
                    .header(header::HOST, w.to.as_str())
                    .header("x-request-id", r.id.to_string())
                    .body(Full::new(Bytes::new()))
                    .expect("method and path are validated");
                for (k, v) in &w.headers {
                    req.headers_mut().append(k.clone(), v.clone());
                }
                let (host, port) = if me.plan.pods[r.source].sidecar {
                    ("127.0.0.1", port)
                } else {
                    let pods = &direct[r.workload];
                    let (h, p) = &pods[r.id as usize % pods.len()];
                    (h.as_str(), *p)
                };
                let send = pool.send(host, port, Duration::from_secs(1), req);
                let mut headers = Vec::new();
                let mut body = None;
                let outcome = match tokio::time::timeout(w.timeout, send).await {
                    Ok(Ok(resp)) => {
                        headers = resp
                            .headers()
                            .iter()
                            .filter(|(k, _)| !UNRECORDED_RESPONSE_HEADERS.contains(&k.as_str()))
                            .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                            .collect();
                        if !resp.status().is_success() {
                            body = Some(String::from_utf8_lossy(resp.body()).into_owned());
                        }
                        Outcome::Response {
                            status: resp.status().as_u16(),
                            pod: resp.headers().get(POD_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string),
                        }
                    }
                    Ok(Err(UpstreamError::Connect(_))) => Outcome::Error("connect_error"),
                    Ok(Err(UpstreamError::Reset)) => Outcome::Error("reset"),
                    Ok(Err(UpstreamError::Overflow(_))) => unreachable!("the app's own pool has no limits"),
                    Err(_) => Outcome::Error("client_timeout"),
                };
                me.in_flight[r.workload].fetch_sub(1, Ordering::SeqCst);
                me.recorder.record(r.id, Record { headers, body, ..ended(&r, clock.now(), outcome) });
            });
        }
    }
}

/// Where a TCP workload's connection goes.
enum Via {
    /// To the service's ClusterIP:port, captured to the sidecar's outbound port.
    Captured(u16, TcpWorkload),
    /// Straight to a pod (host, port): a client without a sidecar.
    Direct(String, u16),
}

/// The bytes connection `id` sends: printable ASCII in a pattern that differs from one
/// connection to the next, so a crossed stream shows. Never a first byte 0x16: a
/// PERMISSIVE sidecar would take the connection for TLS (its sniffer reads one byte).
fn payload(id: u64, bytes: u32) -> Vec<u8> {
    (0..bytes).map(|i| b' ' + (id.wrapping_mul(31).wrapping_add(u64::from(i)) % 95) as u8).collect()
}

/// One TCP connection of a workload: send, half-close, read the echo to the end.
async fn tcp_exchange<N: PodNet>(net: &N, via: Via, id: u64, bytes: u32) -> Outcome {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let connect = async {
        match via {
            Via::Captured(port, t) => net.connect_captured(port, t.vip).await,
            Via::Direct(host, port) => net.connect(net.resolve(&host, port).await?).await,
        }
    };
    let stream = match tokio::time::timeout(Duration::from_secs(1), connect).await {
        Ok(Ok(s)) => s,
        _ => return Outcome::Error("connect_error"),
    };
    let sent = payload(id, bytes);
    let (mut rd, mut wr) = tokio::io::split(stream);
    let send = async {
        wr.write_all(&sent).await?;
        wr.shutdown().await
    };
    let recv = async {
        let mut got = Vec::with_capacity(sent.len());
        rd.read_to_end(&mut got).await.map(|_| got)
    };
    let (_, got) = tokio::join!(send, recv);
    match got {
        Ok(got) if got == sent => Outcome::Echoed { bytes: u64::from(bytes) },
        Ok(got) if sent.starts_with(&got) => Outcome::Error("closed_early"),
        Ok(_) => Outcome::Error("corrupted"),
        Err(_) => Outcome::Error("reset"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(rate: f64, arrivals: Arrivals) -> Workload {
        Workload {
            name: "w".into(),
            sources: vec![0],
            to: "x".into(),
            to_fqdn: "x.default.svc.cluster.local".into(),
            path: "/".into(),
            method: http::Method::GET,
            headers: Vec::new(),
            rate,
            arrivals,
            start: Duration::from_secs(1),
            stop: Duration::from_secs(11),
            max_in_flight: 10,
            timeout: Duration::from_secs(1),
            tcp: None,
        }
    }

    #[test]
    fn constant_arrivals_are_evenly_spaced_from_start() {
        let a = arrivals(&w(100.0, Arrivals::Constant), 1);
        assert_eq!(a.len(), 1000);
        assert_eq!(a[0], Duration::from_secs(1));
        assert!((a[1] - a[0]).as_secs_f64() - 0.01 < 1e-9);
        assert!(*a.last().unwrap() < Duration::from_secs(11));
    }

    #[test]
    fn poisson_arrivals_average_the_rate_and_follow_the_seed() {
        let a = arrivals(&w(1000.0, Arrivals::Poisson), 7);
        let n = a.len() as f64;
        // 10 s at 1000/s: 10,000 ± 4.5σ (σ = 100).
        assert!((n - 10_000.0).abs() < 450.0, "{n}");
        assert_eq!(a, arrivals(&w(1000.0, Arrivals::Poisson), 7));
        assert_ne!(a, arrivals(&w(1000.0, Arrivals::Poisson), 8));
    }
}
