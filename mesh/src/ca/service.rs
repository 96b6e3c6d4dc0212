//! The CA as a network service over the `Net` seam (istiod's CA on the control-plane host
//! in sim, a listener in real mode), and the client a sidecar's agent calls it with.
//!
//! Protocol: HTTP/1.1 `POST` [`CSR_PATH`] with `authorization: Bearer <token>` and a JSON
//! body `{"csr": PEM, "validity_duration": seconds}` (the fields of Istio's
//! `IstioCertificateRequest`); the answer is `{"cert_chain": [PEM, …], "trust_bundle":
//! [PEM, …]}` (leaf first; the roots to trust). The token is the pod's bootstrap credential
//! (Kubernetes' service-account token): [`Credentials`] maps it to the identity it proves,
//! as a TokenReview would. Refusals: 401 unknown credential, 403 identity mismatch, 400
//! anything else wrong with the request; the body says why. Istio speaks gRPC over TLS
//! here; meshsim uses plain HTTP/1.1 (see the README). Not here: the signing itself
//! (`authority`) and when to ask (`agent`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{Authority, CaError, Der, Issued};
use crate::http::{Client, SendError, server_builder};
use crate::identity::SpiffeId;
use crate::net::{Clock, Listener, Net};

/// The CA's request path (Istio's gRPC method name).
pub const CSR_PATH: &str = "/istio.v1.auth.IstioCertificateService/CreateCertificate";
/// istiod's port for XDS and certificates.
pub const CA_PORT: u16 = 15012;
/// Largest request body the CA reads.
const MAX_BODY: usize = 64 * 1024;

#[derive(Serialize, Deserialize)]
struct CsrRequest {
    csr: String,
    /// Seconds; 0 = the CA's default.
    validity_duration: u64,
}

#[derive(Serialize, Deserialize)]
struct CsrResponse {
    cert_chain: Vec<String>,
    trust_bundle: Vec<String>,
}

/// Bootstrap credentials the CA accepts: token → the identity it proves.
#[derive(Debug, Default)]
pub struct Credentials(Mutex<BTreeMap<String, SpiffeId>>);

impl Credentials {
    pub fn insert(&self, token: String, id: SpiffeId) {
        self.0.lock().expect("credentials lock").insert(token, id);
    }

    /// The identity `token` proves, if it is known.
    pub fn review(&self, token: &str) -> Option<SpiffeId> {
        self.0.lock().expect("credentials lock").get(token).cloned()
    }
}

fn pem_of(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der.to_vec()))
}

fn der_of(label: &str, text: &str) -> Result<Der, String> {
    let p = pem::parse(text).map_err(|e| format!("not PEM: {e}"))?;
    if p.tag() != label {
        return Err(format!("expected a {label} PEM block, found {}", p.tag()));
    }
    Ok(p.into_contents())
}

/// The CA server: the authority, the credentials it accepts and whether it is up.
pub struct CaServer {
    authority: Mutex<Authority>,
    credentials: Credentials,
    up: AtomicBool,
    /// Bumped whenever the trust bundle or the signing root changes (what istiod pushes).
    roots_version: watch::Sender<u64>,
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, body: String, json: bool) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let ct = if json { "application/json" } else { "text/plain" };
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(ct));
    r
}

impl CaServer {
    pub fn new(authority: Authority) -> Arc<CaServer> {
        Arc::new(CaServer {
            authority: Mutex::new(authority),
            credentials: Credentials::default(),
            up: AtomicBool::new(true),
            roots_version: watch::Sender::new(0),
        })
    }

    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// Takes the CA down (`false`: every connection is closed without an answer, as if the
    /// process were gone) or brings it back.
    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    /// Changes the authority (a root rotation step) and tells every agent watching
    /// [`CaServer::roots_changed`].
    pub fn rotate<T>(&self, step: impl FnOnce(&mut Authority) -> Result<T, CaError>) -> Result<T, CaError> {
        let out = step(&mut self.authority.lock().expect("authority lock"))?;
        self.roots_version.send_modify(|v| *v += 1);
        Ok(out)
    }

    /// Signs a workload CSR for `caller` without the network hop: for a sidecar whose
    /// agent runs in the same process as the CA (the envoy target plays istio-agent for
    /// each Envoy and serves it the certificate over SDS).
    pub fn sign(&self, csr: &[u8], caller: &SpiffeId, ttl: Option<Duration>, now: Duration) -> Result<Issued, CaError> {
        self.authority.lock().expect("authority lock").sign_csr(csr, caller, ttl, now)
    }

    /// Changes whenever the roots change: the agents' cue to fetch a new chain and bundle
    /// (istiod pushes the new bundle over XDS; meshsim models that push in process).
    pub fn roots_changed(&self) -> watch::Receiver<u64> {
        self.roots_version.subscribe()
    }

    /// The trust bundle now.
    pub fn trust_bundle(&self) -> Vec<Der> {
        self.authority.lock().expect("authority lock").trust_bundle().to_vec()
    }

    /// Serves `listener` until it fails; certificates start at `clock`'s Unix time.
    pub async fn serve<L: Listener>(self: Arc<Self>, mut listener: L, clock: Arc<dyn Clock>) -> std::io::Result<()> {
        loop {
            let (stream, _) = listener.accept().await?;
            if !self.is_up() {
                drop(stream);
                continue;
            }
            let me = self.clone();
            let clock = clock.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (me, now) = (me.clone(), clock.unix_time());
                    async move {
                        if !me.is_up() {
                            // An error from the service closes the connection unanswered.
                            return Err("CA is down");
                        }
                        Ok::<_, &str>(me.handle(req, now).await)
                    }
                });
                let _ = server_builder().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    }

    async fn handle(&self, req: Request<hyper::body::Incoming>, now: Duration) -> Reply {
        if req.method() != http::Method::POST || req.uri().path() != CSR_PATH {
            return reply(
                StatusCode::NOT_FOUND,
                format!("no such endpoint: {} {}", req.method(), req.uri().path()),
                false,
            );
        }
        let token = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_string);
        let Some(caller) = token.as_deref().and_then(|t| self.credentials.review(t)) else {
            return reply(StatusCode::UNAUTHORIZED, "unknown or missing bootstrap credential".into(), false);
        };
        let body = match http_body_util::Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return reply(StatusCode::BAD_REQUEST, format!("request body: {e}"), false),
        };
        let parsed: CsrRequest = match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return reply(StatusCode::BAD_REQUEST, format!("request body: {e}"), false),
        };
        let csr = match der_of("CERTIFICATE REQUEST", &parsed.csr) {
            Ok(d) => d,
            Err(e) => return reply(StatusCode::BAD_REQUEST, format!("csr: {e}"), false),
        };
        let ttl = (parsed.validity_duration > 0).then(|| Duration::from_secs(parsed.validity_duration));
        let mut authority = self.authority.lock().expect("authority lock");
        match authority.sign_csr(&csr, &caller, ttl, now) {
            Ok(issued) => {
                let body = CsrResponse {
                    cert_chain: issued.chain.iter().map(|d| pem_of("CERTIFICATE", d)).collect(),
                    trust_bundle: authority.trust_bundle().iter().map(|d| pem_of("CERTIFICATE", d)).collect(),
                };
                reply(StatusCode::OK, serde_json::to_string(&body).expect("strings serialize"), true)
            }
            Err(e @ CaError::IdentityMismatch { .. }) => reply(StatusCode::FORBIDDEN, e.to_string(), false),
            Err(e) => reply(StatusCode::BAD_REQUEST, e.to_string(), false),
        }
    }
}

/// A chain and bundle the CA returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Granted {
    /// Leaf first.
    pub chain: Vec<Der>,
    pub trust_bundle: Vec<Der>,
}

/// Why a CSR did not come back signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FetchError {
    /// No answer: connect failed, the connection was reset, or the request timed out.
    Unreachable(String),
    /// The CA answered with a refusal.
    Refused { status: u16, message: String },
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Unreachable(why) => write!(f, "CA unreachable: {why}"),
            FetchError::Refused { status, message } => write!(f, "CA refused the request ({status}): {message}"),
        }
    }
}

/// Where a CA is and how long to wait for it.
#[derive(Clone, Debug)]
pub struct CaAddress {
    pub host: String,
    pub port: u16,
    /// Bounds connect and answer together.
    pub timeout: Duration,
}

/// Sends `csr` (DER) to the CA at `to` with bootstrap credential `token`, asking for `ttl`
/// (`None` = the CA's default).
pub async fn request_certificate<N: Net>(
    client: &Client<N>,
    to: &CaAddress,
    token: &str,
    csr: &[u8],
    ttl: Option<Duration>,
) -> Result<Granted, FetchError> {
    let body = CsrRequest {
        csr: pem_of("CERTIFICATE REQUEST", csr),
        validity_duration: ttl.map(|t| t.as_secs()).unwrap_or(0),
    };
    let req = Request::post(CSR_PATH)
        .header(header::HOST, format!("{}:{}", to.host, to.port))
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(serde_json::to_string(&body).expect("strings serialize"))))
        .expect("a valid request");
    let resp = match tokio::time::timeout(to.timeout, client.send(&to.host, to.port, to.timeout, req)).await {
        Err(_) => return Err(FetchError::Unreachable(format!("no answer within {:?}", to.timeout))),
        Ok(Err(SendError::Refused)) => return Err(FetchError::Unreachable("connection refused".into())),
        Ok(Err(SendError::ConnectTimeout)) => return Err(FetchError::Unreachable("connect timeout".into())),
        Ok(Err(SendError::Reset)) => {
            return Err(FetchError::Unreachable("connection closed before the answer".into()));
        }
        Ok(Ok(r)) => r,
    };
    let text = String::from_utf8_lossy(resp.body()).into_owned();
    if resp.status() != StatusCode::OK {
        return Err(FetchError::Refused { status: resp.status().as_u16(), message: text });
    }
    let bad = |e: String| FetchError::Refused { status: 200, message: format!("unreadable answer: {e}") };
    let parsed: CsrResponse = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let ders = |v: &[String]| v.iter().map(|p| der_of("CERTIFICATE", p)).collect::<Result<Vec<_>, _>>();
    let chain = ders(&parsed.cert_chain).map_err(bad)?;
    let trust_bundle = ders(&parsed.trust_bundle).map_err(bad)?;
    if chain.is_empty() || trust_bundle.is_empty() {
        return Err(bad("empty chain or bundle".into()));
    }
    Ok(Granted { chain, trust_bundle })
}

#[cfg(test)]
mod tests;
