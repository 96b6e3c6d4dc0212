//! Plain HTTP/1.1 over the `Net` seam, for the mesh's own services and their clients
//! (the CA and its agents, the sidecar's listeners, the apps): hyper's server set up the
//! same way in every world ([`server_builder`]), and a keep-alive client ([`Client`]).
//!
//! Not here: anything a sidecar adds on the data path — circuit breakers, pending queues,
//! idle timeouts, mutual TLS (`proxy::pool`), retries by policy (`proxy::retry`). A
//! [`Client`] has no limits: it serves a few sequential requests to a known service.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::{TokioIo, TokioTimer};

use crate::net::Net;

/// Bound on idle connections a [`Client`] keeps per address.
const MAX_IDLE_PER_ADDRESS: usize = 256;

/// A hyper HTTP/1.1 server builder set up for both worlds: tokio's timer (simulated in
/// sim), no `Date` header (it would read the real clock), and no header read timeout:
/// hyper's default (30s) also closes keep-alive connections idle that long, racing the
/// client's next request on them (Envoy's `request_headers_timeout` is off by default).
pub fn server_builder() -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    // `writev(false)`: one write per message, also over TLS (rustls makes a record of
    // each vectored slice, and each record would be its own segment).
    b.timer(TokioTimer::new()).auto_date_header(false).keep_alive(true).header_read_timeout(None).writev(false);
    b
}

/// Why a [`Client`] request got no response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// The address did not resolve, the connection was refused, or the HTTP handshake
    /// failed.
    Refused,
    /// No connection within the connect timeout.
    ConnectTimeout,
    /// The connection closed before the whole response arrived.
    Reset,
}

type Sender = SendRequest<Full<Bytes>>;

/// An HTTP/1.1 client over a [`Net`]: one request per connection at a time, idle
/// connections kept per address and reused (the most recently used first).
pub struct Client<N: Net> {
    net: N,
    idle: Mutex<BTreeMap<(String, u16), Vec<Sender>>>,
}

impl<N: Net> Client<N> {
    pub fn new(net: N) -> Self {
        Client { net, idle: Mutex::new(BTreeMap::new()) }
    }

    /// A ready idle connection to `key`, dropping the ones that closed meanwhile.
    fn take_idle(&self, key: &(String, u16)) -> Option<Sender> {
        let mut idle = self.idle.lock().expect("client lock");
        let conns = idle.get_mut(key)?;
        while let Some(c) = conns.pop() {
            if c.is_ready() {
                return Some(c);
            }
        }
        None
    }

    fn put_idle(&self, key: (String, u16), sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().expect("client lock");
        let conns = idle.entry(key).or_default();
        if conns.len() < MAX_IDLE_PER_ADDRESS {
            conns.push(sender);
        }
    }

    async fn connect(&self, host: &str, port: u16, timeout: Duration) -> Result<Sender, SendError> {
        let attempt = async {
            let addr = self.net.resolve(host, port).await.map_err(|_| SendError::Refused)?;
            let stream = self.net.connect(addr).await.map_err(|_| SendError::Refused)?;
            let (sender, conn) =
                http1::Builder::new().handshake(TokioIo::new(stream)).await.map_err(|_| SendError::Refused)?;
            // The connection ends when either side closes; errors surface on requests.
            tokio::spawn(conn);
            Ok(sender)
        };
        tokio::time::timeout(timeout, attempt).await.unwrap_or(Err(SendError::ConnectTimeout))
    }

    /// Sends `req` to `host:port` and reads the whole response. A request that a reused
    /// connection could not even start is sent once more (the peer closed it while idle).
    pub async fn send(
        &self,
        host: &str,
        port: u16,
        connect_timeout: Duration,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<Bytes>, SendError> {
        let key = (host.to_string(), port);
        let mut req = req;
        for _ in 0..2 {
            let mut sender = match self.take_idle(&key) {
                Some(s) => s,
                None => self.connect(host, port, connect_timeout).await?,
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let (parts, body) = resp.into_parts();
                    let body = body.collect().await.map_err(|_| SendError::Reset)?.to_bytes();
                    self.put_idle(key, sender);
                    return Ok(Response::from_parts(parts, body));
                }
                Err(mut e) => match e.take_message() {
                    Some(r) => req = r,
                    None => return Err(SendError::Reset),
                },
            }
        }
        Err(SendError::Reset)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::net::{Ipv4Addr, SocketAddr};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use hyper::service::service_fn;

    use super::*;
    use crate::net::{Listener, TokioNet};

    /// Serves `200 <connection number>` on loopback; returns the port. Connection `n`
    /// (from 1) closes after answering when `close_after` says so.
    async fn server(close_after: fn(u32) -> bool) -> u16 {
        let mut l = TokioNet.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await.unwrap();
        let port = l.local_addr().unwrap().port();
        let conns = Arc::new(AtomicU32::new(0));
        tokio::spawn(async move {
            loop {
                let (stream, _) = l.accept().await.unwrap();
                let n = conns.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::spawn(async move {
                    let svc = service_fn(move |_req: Request<hyper::body::Incoming>| async move {
                        let mut r = Response::new(Full::new(Bytes::from(n.to_string())));
                        if close_after(n) {
                            r.headers_mut().insert(http::header::CONNECTION, "close".parse().unwrap());
                        }
                        Ok::<_, Infallible>(r)
                    });
                    let _ = server_builder().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        port
    }

    fn get() -> Request<Full<Bytes>> {
        Request::get("/").header(http::header::HOST, "test").body(Full::new(Bytes::new())).unwrap()
    }

    const WAIT: Duration = Duration::from_secs(5);

    async fn body(c: &Client<TokioNet>, port: u16) -> String {
        let resp = tokio::time::timeout(WAIT, c.send("127.0.0.1", port, WAIT, get())).await.expect("bounded");
        String::from_utf8(resp.expect("a response").into_body().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn sequential_requests_reuse_one_connection() {
        let port = server(|_| false).await;
        let c = Client::new(TokioNet);
        for _ in 0..3 {
            assert_eq!(body(&c, port).await, "1");
        }
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_replaced() {
        let port = server(|_| true).await;
        let c = Client::new(TokioNet);
        assert_eq!(body(&c, port).await, "1");
        assert_eq!(body(&c, port).await, "2");
    }

    #[tokio::test]
    async fn a_port_nobody_listens_on_is_refused() {
        let l = TokioNet.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await.unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let c = Client::new(TokioNet);
        let r = tokio::time::timeout(WAIT, c.send("127.0.0.1", port, WAIT, get())).await.expect("bounded");
        assert_eq!(r.unwrap_err(), SendError::Refused);
    }
}
