//! HTTP/1.1 connection pool over the `Net` seam, one idle list per upstream address.
//!
//! Owns: connecting (with the cluster's connect timeout), the hyper handshake, keeping
//! idle connections (at most [`MAX_IDLE_PER_ENDPOINT`] each) and reusing them. Does not
//! own limits on concurrency (circuit breaking) or retries.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::{TokioIo, TokioTimer};

use super::local_reply::ConnectFailure;
use crate::net::Net;

/// Bound on idle connections kept per upstream address.
pub const MAX_IDLE_PER_ENDPOINT: usize = 256;

/// How forwarding to an upstream failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    Connect(ConnectFailure),
    /// The connection closed or reset before the full response arrived.
    Reset,
}

type Sender = SendRequest<Full<Bytes>>;

pub struct Pool<N: Net> {
    net: N,
    idle: Mutex<BTreeMap<(String, u16), Vec<Sender>>>,
}

impl<N: Net> Pool<N> {
    pub fn new(net: N) -> Self {
        Pool { net, idle: Mutex::new(BTreeMap::new()) }
    }

    fn checkout(&self, key: &(String, u16)) -> Option<Sender> {
        let mut idle = self.idle.lock().expect("pool lock");
        let list = idle.get_mut(key)?;
        while let Some(s) = list.pop() {
            if s.is_ready() {
                return Some(s);
            }
        }
        None
    }

    fn checkin(&self, key: (String, u16), sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().expect("pool lock");
        let list = idle.entry(key).or_default();
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            list.push(sender);
        }
    }

    async fn connect(&self, host: &str, port: u16, timeout: Duration) -> Result<Sender, UpstreamError> {
        let attempt = async {
            let addr = self.net.resolve(host, port).await?;
            let stream = self.net.connect(addr).await?;
            let (sender, conn) =
                http1::Builder::new().handshake(TokioIo::new(stream)).await.map_err(std::io::Error::other)?;
            tokio::spawn(async move {
                // The connection ends when either side closes; errors surface on requests.
                let _ = conn.await;
            });
            Ok::<_, std::io::Error>(sender)
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(_)) => Err(UpstreamError::Connect(ConnectFailure::Refused)),
            Err(_) => Err(UpstreamError::Connect(ConnectFailure::Timeout)),
        }
    }

    /// Sends `req` to `host:port` on a pooled or new connection and reads the whole
    /// response. A request that a reused connection could not even start is sent once
    /// more on a new connection (the peer closed it while idle).
    pub async fn send(
        &self,
        host: &str,
        port: u16,
        connect_timeout: Duration,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<Bytes>, UpstreamError> {
        let key = (host.to_string(), port);
        let mut req = req;
        if let Some(mut sender) = self.checkout(&key) {
            match sender.try_send_request(req).await {
                Ok(resp) => return self.finish(key, sender, resp).await,
                Err(mut e) => match e.take_message() {
                    Some(r) => req = r,
                    None => return Err(UpstreamError::Reset),
                },
            }
        }
        let mut sender = self.connect(host, port, connect_timeout).await?;
        match sender.send_request(req).await {
            Ok(resp) => self.finish(key, sender, resp).await,
            Err(_) => Err(UpstreamError::Reset),
        }
    }

    async fn finish(
        &self,
        key: (String, u16),
        sender: Sender,
        resp: Response<hyper::body::Incoming>,
    ) -> Result<Response<Bytes>, UpstreamError> {
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|_| UpstreamError::Reset)?.to_bytes();
        self.checkin(key, sender);
        Ok(Response::from_parts(parts, body))
    }
}

/// A hyper HTTP/1.1 server builder set up for both worlds: tokio's timer (simulated in
/// sim) and no `Date` header (it would read the real clock).
pub fn server_builder() -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new()).auto_date_header(false).keep_alive(true);
    b
}
