//! App behaviour models: what a pod's application does with a request. Each pod's app
//! is a real hyper HTTP/1.1 server on loopback behind its sidecar; it waits a latency
//! drawn from its distribution, answers an error at its configured rate (or as a fault
//! says), and names itself in the `x-meshsim-pod` response header.
//!
//! The app of a TCP service is an echo server ([`App::serve_tcp`]): per connection it
//! waits one latency from its distribution when the first bytes arrive, then writes back
//! every byte it reads and closes its side when the client has closed its own. At its
//! error rate (`error_rate_ppm`, or an `app_errors` fault's rate; the status does not
//! apply) it drops the connection instead, unanswered.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use mesh::net::{Listener, Stream};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp, LogNormal};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::net::Faults;
use crate::recorder::{Receipt, Recorder};
use crate::scenario::{AppModel, Latency};

/// The response header naming the serving pod.
pub const POD_HEADER: &str = "x-meshsim-pod";

/// Draws one latency from `l`.
pub fn sample(l: &Latency, rng: &mut impl Rng) -> Duration {
    match *l {
        Latency::Constant(d) => d,
        Latency::Uniform(a, b) => {
            if a == b {
                a
            } else {
                Duration::from_nanos(rng.random_range(a.as_nanos() as u64..=b.as_nanos() as u64))
            }
        }
        Latency::Exponential(mean) => {
            let exp = Exp::new(1.0 / mean.as_secs_f64().max(1e-9)).expect("positive rate");
            Duration::from_secs_f64(exp.sample(rng).min(3600.0))
        }
        Latency::LogNormal { median, p99 } => {
            // p99 = median · exp(2.326·σ)
            let mu = median.as_secs_f64().ln();
            let sigma = ((p99.as_secs_f64() / median.as_secs_f64()).ln() / 2.326_347_874).max(0.0);
            let ln = LogNormal::new(mu, sigma).expect("finite parameters");
            Duration::from_secs_f64(ln.sample(rng).min(3600.0))
        }
    }
}

pub struct App {
    pub pod: usize,
    pub name: String,
    pub model: AppModel,
    pub faults: Arc<Faults>,
    pub rng: Mutex<ChaCha8Rng>,
    /// Told of every request received (by `x-request-id`), when recording a run.
    pub recorder: Option<Arc<Recorder>>,
}

impl App {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        let attempt = req
            .headers()
            .get("x-envoy-attempt-count")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(1);
        if let (Some(r), Some(id)) = (&self.recorder, id) {
            r.app_received(id, || Receipt {
                pod: self.name.clone(),
                path: req.uri().path_and_query().map_or_else(|| req.uri().path().to_string(), |p| p.to_string()),
                headers: req
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                    .collect(),
            });
        }
        // Drain the request body like a real app would.
        let _ = req.into_body().collect().await;
        let (delay, status) = {
            let mut rng = self.rng.lock().expect("app rng lock");
            let delay = sample(&self.model.latency, &mut *rng);
            let (status, ppm) =
                self.faults.app_errors(self.pod).unwrap_or((self.model.error_status, self.model.error_rate_ppm));
            let error = ppm > 0 && rng.random_range(0..1_000_000u32) < ppm;
            let status = match self.model.fail_attempts {
                Some((count, fail)) if attempt <= count => fail,
                _ if error => status,
                _ => 200,
            };
            (delay, status)
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")));
        *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        for (k, v) in &self.model.response_headers {
            resp.headers_mut().append(k.clone(), v.clone());
        }
        resp.headers_mut().insert(POD_HEADER, self.name.parse().expect("pod names are header-safe"));
        resp
    }

    /// Serves on `listener` (of either world) until the task is aborted.
    pub async fn serve<L: Listener>(self: Arc<Self>, mut listener: L) -> std::io::Result<()> {
        loop {
            let (stream, _) = listener.accept().await?;
            let me = self.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let me = me.clone();
                    async move { Ok::<_, Infallible>(me.handle(req).await) }
                });
                let _ = mesh::proxy::pool::server_builder().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    }
}

impl App {
    /// One TCP connection: latency at the first bytes, then an echo until the client
    /// closes (or a reset at the error rate).
    async fn echo<S: Stream>(self: Arc<Self>, mut stream: S) {
        let mut buf = vec![0u8; 16 * 1024];
        let Ok(n) = stream.read(&mut buf).await else { return };
        if n == 0 {
            return;
        }
        let (delay, reset) = {
            let mut rng = self.rng.lock().expect("app rng lock");
            let delay = sample(&self.model.latency, &mut *rng);
            let ppm = self.faults.app_errors(self.pod).map_or(self.model.error_rate_ppm, |(_, ppm)| ppm);
            (delay, ppm > 0 && rng.random_range(0..1_000_000u32) < ppm)
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if reset {
            return;
        }
        let mut n = n;
        loop {
            if stream.write_all(&buf[..n]).await.is_err() {
                return;
            }
            n = match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(k) => k,
            };
        }
        let _ = stream.shutdown().await;
    }

    /// Serves TCP echo on `listener` (of either world) until the task is aborted.
    pub async fn serve_tcp<L: Listener>(self: Arc<Self>, mut listener: L) -> std::io::Result<()> {
        loop {
            let (stream, _) = listener.accept().await?;
            tokio::spawn(self.clone().echo(stream));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn lognormal_hits_its_median_and_p99() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let l = Latency::LogNormal { median: Duration::from_millis(10), p99: Duration::from_millis(100) };
        let mut xs: Vec<Duration> = (0..20_000).map(|_| sample(&l, &mut rng)).collect();
        xs.sort();
        let p50 = xs[10_000].as_secs_f64() * 1e3;
        let p99 = xs[19_800].as_secs_f64() * 1e3;
        assert!((p50 - 10.0).abs() < 0.6, "p50 {p50}");
        assert!((p99 - 100.0).abs() < 12.0, "p99 {p99}");
    }

    #[test]
    fn uniform_stays_in_its_range() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let l = Latency::Uniform(Duration::from_millis(2), Duration::from_millis(4));
        for _ in 0..1000 {
            let d = sample(&l, &mut rng);
            assert!(d >= Duration::from_millis(2) && d <= Duration::from_millis(4));
        }
    }
}
