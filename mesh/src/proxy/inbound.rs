//! The inbound path: authorization (AuthorizationPolicy), local rate limit, then forward
//! to the local app. A denied request never reaches the app. The connection's peer (its
//! security and verified identity, see `tls`) comes with every request. Every path ends
//! in [`Sidecar::finish`] (access log, metrics, span).

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use super::authz::{self, DENIED_BODY};
use super::local_reply::{self, Flag};
use super::ratelimit::{Decision, RATE_LIMITED_BODY};
use super::telemetry::Direction;
use super::tls::Peer;
use super::{Reply, Sidecar, Target, failure_flag, strip_hop_by_hop};
use crate::net::Net;

impl<N: Net> Sidecar<N> {
    pub(super) async fn inbound(self: Arc<Self>, req: Request<Incoming>, addr: SocketAddr, peer: &Peer) -> Reply {
        let (mut parts, body) = req.into_parts();
        let mut ex = self.begin(Direction::Inbound, &mut parts.headers);
        self.spend(Direction::Inbound).await;
        let cluster = format!("inbound|{}||", self.cfg.app_port);
        let to = Target {
            route: "inbound",
            cluster: &cluster,
            upstream: None,
            peer: Some(peer),
            service: &self.cfg.service,
        };
        let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
            return self.finish(&ex, local_reply::reply(StatusCode::BAD_REQUEST, "", "istio-envoy"), &[], to);
        };
        ex.request_bytes = body.len() as u64;

        // Authorization (Envoy's RBAC filter runs before the rate limit). A plaintext peer
        // has no principal; an mTLS peer's is its verified SPIFFE ID.
        if let Some(policies) = self.snapshot().authz.get(&self.cfg.pod) {
            let host = parts.headers.get(header::HOST).and_then(|h| h.to_str().ok());
            let request = authz::Request {
                method: parts.method.as_str(),
                path: parts.uri.path(),
                host: host.or(parts.uri.authority().map(|a| a.as_str())).unwrap_or(""),
                headers: &parts.headers,
            };
            let source = authz::Peer { principal: peer.principal().map(str::to_string), ip: addr.ip() };
            if policies.decide(&source, &request) == authz::Decision::Deny {
                return self.finish(
                    &ex,
                    local_reply::reply(StatusCode::FORBIDDEN, DENIED_BODY, "istio-envoy"),
                    &[],
                    to,
                );
            }
        }

        // Local rate limit: one bucket for this proxy (the one its current config selects).
        let limited = {
            let mut rl = self.rate_limit.lock().expect("rate limit lock");
            rl.as_mut().and_then(|(_, rl)| {
                let mut rng = self.rng.lock().expect("rng lock");
                match rl.decide(self.clock.now(), &mut *rng) {
                    Decision::Limited { enforced: true } => Some((rl.status(), rl.response_headers_to_add().to_vec())),
                    _ => None,
                }
            })
        };
        if let Some((status, headers)) = limited {
            let mut reply = local_reply::reply(status, RATE_LIMITED_BODY, "istio-envoy");
            for (k, v) in headers {
                reply.headers_mut().append(k, v);
            }
            return self.finish(&ex, reply, &[Flag::RateLimited], to);
        }

        strip_hop_by_hop(&mut parts.headers);
        let app = Request::from_parts(parts, Full::new(body));
        let result =
            self.app_pool.send("127.0.0.1", self.cfg.app_port, crate::snapshot::DEFAULT_CONNECT_TIMEOUT, app).await;
        let to = Target { upstream: Some(&self.cfg.pod), ..to };
        match result {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                parts.headers.insert(header::SERVER, HeaderValue::from_static("istio-envoy"));
                self.finish(&ex, Response::from_parts(parts, Full::new(body)), &[], to)
            }
            Err(e) => {
                let (flag, why) = failure_flag(e);
                self.finish(&ex, self.local(flag, why, "istio-envoy"), &[flag], to)
            }
        }
    }
}
