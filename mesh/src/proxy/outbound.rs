//! The outbound path, one layer per function in reading order: route → fault → mirror
//! → timeout → retry → balance → pool. Each layer's policy lives in its own module; this
//! file only strings them together; every path ends in [`Sidecar::finish`] (access log,
//! metrics, span), and every upstream try records its own span.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use super::hash::HashInput;
use super::local_reply::{self, Flag};
use super::metrics::PEER_METADATA;
use super::pool::UpstreamError;
use super::retry::{Decision, Outcome, RetryState};
use super::route_match::{MatchInput, route_matches};
use super::telemetry::Direction;
use super::tracing::{Span, SpanKind};
use super::{Exchange, Reply, Sidecar, Target, strip_hop_by_hop};
use crate::net::Net;
use crate::registry::qualify;
use crate::snapshot::{Action, Cluster, Redirect, Route, WeightedCluster};

/// How the router's last try ended.
enum Tried {
    Response(Response<Bytes>),
    /// The try failed; `retried`: it was a retry (Envoy's `is_retry_`).
    Failed {
        error: UpstreamError,
        retried: bool,
    },
    PerTryTimeout,
    /// The route timeout expired: it bounds every try and backoff together.
    RouteTimeout,
    NoHealthyUpstream,
}

impl<N: Net> Sidecar<N> {
    /// `peer`: the app's address (`useSourceIp` hashes its IP); `local`: the listener's
    /// (with `peer`, it names the connection a generated hash cookie is made from).
    pub(super) async fn outbound(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Reply {
        let (mut parts, body) = req.into_parts();
        let mut ex = self.begin(Direction::Outbound, &mut parts.headers);
        self.spend(Direction::Outbound).await;
        let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
            return self.finish(&ex, local_reply::reply(StatusCode::BAD_REQUEST, "", "envoy"), &[], Target::default());
        };
        ex.request_bytes = body.len() as u64;
        let ex = ex;
        let done = |reply: Reply, flags: &[Flag], to: Target<'_>| self.finish(&ex, reply, flags, to);
        let uri = parts.uri.clone();
        let host = parts.headers.get(header::HOST).cloned();
        let authority = host
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .or_else(|| uri.authority().map(|a| a.as_str()))
            .unwrap_or_default();
        let snapshot = self.snapshot();
        let fqdn = qualify(authority, &self.cfg.namespace);

        // Route: the first rule whose match list accepts the request.
        let (path, query) = (uri.path(), uri.query());
        let method = parts.method.clone();
        let input = MatchInput {
            method: method.as_str(),
            path,
            query,
            authority,
            scheme: "http",
            headers: &parts.headers,
            port: snapshot.ports.get(&fqdn).copied().unwrap_or(0),
            source_labels: &self.cfg.labels,
            source_namespace: &self.cfg.namespace,
        };
        let route = snapshot.routes.get(&fqdn).and_then(|rs| rs.iter().find(|r| route_matches(&r.matches, &input)));
        let Some(route) = route else {
            return done(
                self.local(Flag::NoRoute, None, "envoy"),
                &[Flag::NoRoute],
                Target { service: &fqdn, ..Target::default() },
            );
        };
        let matched_prefix =
            route.matches.iter().find(|m| m.matches(&input)).and_then(|m| m.uri_prefix()).map(str::to_string);
        let to = Target { route: &route.name, service: &fqdn, ..Target::default() };
        let clusters = match &route.action {
            Action::Redirect(rd) => {
                return done(redirect(rd, authority, path, query), &[], to);
            }
            Action::Direct { status, body } => {
                let mut reply =
                    local_reply::reply(StatusCode::from_u16(*status).unwrap_or(StatusCode::OK), body.clone(), "envoy");
                route.response_headers.apply(reply.headers_mut());
                return done(reply, &[], to);
            }
            Action::Forward(clusters) => clusters,
        };
        let weights: Vec<u32> = clusters.iter().map(|c| c.weight).collect();
        let picked = super::weighted::pick(&weights, self.draw()).map(|i| &clusters[i]);
        let Some((wc, cluster)) = picked.and_then(|wc| snapshot.clusters.get(&wc.cluster).map(|c| (wc, c.clone())))
        else {
            return done(self.local(Flag::NoCluster, None, "envoy"), &[Flag::NoCluster], to);
        };
        let to = Target { cluster: &cluster.name, service: &cluster.service, ..to };

        // Request edits: destination headers, route headers, rewrite.
        wc.request_headers.apply(&mut parts.headers);
        route.request_headers.apply(&mut parts.headers);
        if let Some(rw) = &route.rewrite {
            if let Some(uri) = &rw.uri {
                let new_path = match &matched_prefix {
                    Some(p) if path.starts_with(p.as_str()) => format!("{uri}{}", &path[p.len()..]),
                    _ => uri.clone(),
                };
                let pq = match query {
                    Some(q) => format!("{new_path}?{q}"),
                    None => new_path,
                };
                if let Ok(u) = pq.parse() {
                    parts.uri = u;
                }
            }
            if let Some(a) = &rw.authority
                && let Ok(v) = HeaderValue::from_str(a)
            {
                parts.headers.insert(header::HOST, v);
            }
        }
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
        parts.headers.insert(PEER_METADATA, self.metadata.clone());

        // Fault: delay, then abort; both before the router's timers start.
        let mut flags = Vec::new();
        if let Some(f) = &route.fault {
            let injected = f.decide((self.draw() % 1_000_000) as u32, (self.draw() % 1_000_000) as u32);
            if let Some(d) = injected.delay {
                flags.push(Flag::DelayInjected);
                tokio::time::sleep(d).await;
            }
            if let Some(status) = injected.abort {
                flags.push(Flag::FaultInjected);
                let mut reply = local_reply::reply(
                    StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                    local_reply::BODY_FAULT_ABORT,
                    "envoy",
                );
                route.response_headers.apply(reply.headers_mut());
                return done(reply, &flags, to);
            }
        }

        // Mirror: a fire-and-forget copy with `-shadow` on the host.
        if let Some(m) = &route.mirror
            && (self.draw() % 1_000_000) < u64::from(m.per_million)
            && let Some(mc) = snapshot.clusters.get(&m.cluster).cloned()
        {
            let mut shadow = Request::from_parts(parts.clone(), Full::new(body.clone()));
            if let Ok(v) = HeaderValue::from_str(&shadow_host(authority)) {
                shadow.headers_mut().insert(header::HOST, v);
            }
            let me = self.clone();
            tokio::spawn(async move { me.shadow(&mc, shadow).await });
        }

        // Router, bounded by the route timeout (which covers every try and backoff).
        // A hash cookie the request lacks is made up (and handed back on the response).
        let mut set_cookie = None;
        let hash = cluster.hash.as_ref().and_then(|h| {
            h.policy.hash(&HashInput { headers: &parts.headers, query, source_ip: Some(peer.ip()) }).or_else(|| {
                let generated = h.policy.generate_cookie(peer, local)?;
                set_cookie = HeaderValue::from_str(&generated.set_cookie).ok();
                Some(generated.hash)
            })
        });
        let deadline = route.timeout.map(|t| self.clock.now() + t);
        let (tried, host, mut router_flags) =
            self.route_tries(&ex, &cluster, route, &parts, body, hash, deadline).await;
        flags.append(&mut router_flags);
        let upstream = host.map(|h| cluster.endpoints[h].pod.as_str());
        let to = Target { upstream, ..to };
        let reply = match tried {
            Tried::Response(resp) => {
                let (mut rp, body) = resp.into_parts();
                strip_hop_by_hop(&mut rp.headers);
                apply_response_headers(wc, route, &mut rp.headers);
                let ms = self.clock.now().saturating_sub(ex.start).as_millis();
                rp.headers.insert("x-envoy-upstream-service-time", HeaderValue::from(ms as u64));
                rp.headers.insert(header::SERVER, HeaderValue::from_static("envoy"));
                if let Some(c) = set_cookie {
                    rp.headers.append(header::SET_COOKIE, c);
                }
                return done(Response::from_parts(rp, Full::new(body)), &flags, to);
            }
            Tried::Failed { error, retried } => {
                let (flag, why) = Self::failure_flag(error);
                if retried { self.local_after_retries(flag, why, "envoy") } else { self.local(flag, why, "envoy") }
            }
            Tried::PerTryTimeout | Tried::RouteTimeout => self.local(Flag::UpstreamRequestTimeout, None, "envoy"),
            Tried::NoHealthyUpstream => self.local(Flag::NoHealthyUpstream, None, "envoy"),
        };
        done(reply, &flags, to)
    }

    /// Retry → balance → pool: tries the request until it succeeds, fails in a way the
    /// policy does not retry, or runs out of retries. Returns the last try's result, the
    /// host it went to and the flags it earned.
    #[allow(clippy::too_many_arguments)]
    async fn route_tries(
        &self,
        ex: &Exchange,
        cluster: &Arc<Cluster>,
        route: &Route,
        parts: &http::request::Parts,
        body: Bytes,
        hash: Option<u64>,
        deadline: Option<Duration>,
    ) -> (Tried, Option<usize>, Vec<Flag>) {
        let pool = self.cluster_pool(cluster);
        let mut state = RetryState::new(route.retry.as_ref());
        let mut _permit = None;
        let timed_out = |host| (Tried::RouteTimeout, host, vec![Flag::UpstreamRequestTimeout]);
        loop {
            let remaining = deadline.map(|d| d.saturating_sub(self.clock.now()));
            if remaining.is_some_and(|r| r.is_zero()) {
                return timed_out(None);
            }
            let Some(host) = state.pick_host(|| self.choose_host(cluster, hash)) else {
                return (Tried::NoHealthyUpstream, None, vec![Flag::NoHealthyUpstream]);
            };
            let in_flight = InFlight::start(self, cluster, host);
            let attempt = state.start_attempt(host);
            let mut req = Request::from_parts(parts.clone(), Full::new(body.clone()));
            req.headers_mut().insert("x-envoy-attempt-count", HeaderValue::from(attempt));
            let span = ex.trace.child(&mut *self.rng.lock().expect("rng lock"));
            span.inject(req.headers_mut());
            let try_start = self.clock.now();
            let record_try = |status: Option<u16>| {
                self.telemetry.span(&Span {
                    proxy: &self.cfg.pod,
                    kind: SpanKind::Try,
                    request_id: ex.request_id.to_str().ok(),
                    trace_id: span.trace_id,
                    span_id: span.span_id,
                    parent: span.parent,
                    start: try_start,
                    duration: self.clock.now().saturating_sub(try_start),
                    status,
                    attempt,
                })
            };
            let ep = &cluster.endpoints[host];
            let send = pool.send(&ep.host, ep.port, cluster.connect_timeout, req);
            // This try ends at the per-try timeout or the route deadline, whichever is first.
            let per_try = state.per_try_timeout();
            let limit = match (per_try, remaining) {
                (Some(p), Some(r)) => Some(p.min(r)),
                (p, r) => p.or(r),
            };
            let result = match limit {
                Some(l) => tokio::time::timeout(l, send).await.map_err(|_| ()),
                None => Ok(send.await),
            };
            let retried = attempt > 1;
            let failed = |error| Tried::Failed { error, retried };
            let (tried, outcome, outlier_status) = match result {
                // The route deadline came first: the whole request times out (Envoy
                // reports a timeout to outlier detection, as a 504).
                Err(()) if per_try.is_none_or(|p| remaining.is_some_and(|r| r <= p)) => {
                    in_flight.finish(Some(504));
                    record_try(None);
                    return timed_out(Some(host));
                }
                Err(()) => (Tried::PerTryTimeout, Outcome::PerTryTimeout, Some(504)),
                Ok(Ok(resp)) => {
                    let status = resp.status().as_u16();
                    let outcome = Outcome::response(status, resp.headers());
                    (Tried::Response(resp), outcome, Some(status))
                }
                Ok(Err(e @ UpstreamError::Connect(_))) => (failed(e), Outcome::ConnectFailure, Some(503)),
                Ok(Err(e @ UpstreamError::Reset)) => (failed(e), Outcome::Reset, Some(503)),
                Ok(Err(e @ UpstreamError::Overflow(_))) => (failed(e), Outcome::Overflow, None),
            };
            in_flight.finish(outlier_status);
            record_try(match &tried {
                Tried::Response(r) => Some(r.status().as_u16()),
                _ => None,
            });
            _permit = None;
            let failure_flag = match &tried {
                Tried::Failed { error, .. } => Some(Self::failure_flag(*error).0),
                Tried::PerTryTimeout => Some(Flag::UpstreamRequestTimeout),
                _ => None,
            };
            let decision = {
                let mut rng = self.rng.lock().expect("rng lock");
                state.on_outcome(&outcome, &mut *rng)
            };
            let mut flags: Vec<Flag> = failure_flag.into_iter().collect();
            match decision {
                Decision::Done => return (tried, Some(host), flags),
                Decision::Exhausted => {
                    flags.push(Flag::UpstreamRetryLimitExceeded);
                    return (tried, Some(host), flags);
                }
                Decision::Retry { backoff } => {
                    // The retry circuit breaker (maxRetries or the retry budget).
                    let Some(permit) = pool.try_retry() else {
                        flags.push(Flag::UpstreamOverflow);
                        return (tried, Some(host), flags);
                    };
                    _permit = Some(permit);
                    let left = deadline.map(|d| d.saturating_sub(self.clock.now()));
                    if left.is_some_and(|l| l <= backoff) {
                        if let Some(l) = left {
                            tokio::time::sleep(l).await;
                        }
                        return timed_out(Some(host));
                    }
                    tokio::time::sleep(backoff).await;
                }
            }
        }
    }

    /// Sends a mirrored request and drops the answer.
    async fn shadow(&self, cluster: &Arc<Cluster>, req: Request<Full<Bytes>>) {
        let Some(host) = self.choose_host(cluster, None) else { return };
        let _in_flight = InFlight::start(self, cluster, host);
        let ep = &cluster.endpoints[host];
        let pool = self.cluster_pool(cluster);
        let _ = pool.send(&ep.host, ep.port, cluster.connect_timeout, req).await;
    }
}

/// A request in flight to one host: counted active (for LEAST_REQUEST) until finished
/// or dropped. A dropped try (the downstream went away) reports nothing to outlier
/// detection.
struct InFlight<'a, N: Net> {
    sidecar: &'a Sidecar<N>,
    cluster: &'a Arc<Cluster>,
    host: usize,
    done: bool,
}

impl<'a, N: Net> InFlight<'a, N> {
    fn start(sidecar: &'a Sidecar<N>, cluster: &'a Arc<Cluster>, host: usize) -> Self {
        sidecar.commit_host(cluster, host);
        InFlight { sidecar, cluster, host, done: false }
    }

    /// Ends the try; `status` feeds outlier detection.
    fn finish(mut self, status: Option<u16>) {
        self.done = true;
        self.sidecar.release_host(self.cluster, self.host, status);
    }
}

impl<N: Net> Drop for InFlight<'_, N> {
    fn drop(&mut self) {
        if !self.done {
            self.sidecar.release_host(self.cluster, self.host, None);
        }
    }
}

/// Destination-level response edits, then route-level ones.
fn apply_response_headers(wc: &WeightedCluster, route: &Route, h: &mut http::HeaderMap) {
    wc.response_headers.apply(h);
    route.response_headers.apply(h);
}

/// The Host of a mirrored request: Envoy puts `-shadow` after the host name, before any
/// port (`reviews:9080` ⇒ `reviews-shadow:9080`).
fn shadow_host(authority: &str) -> String {
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{host}-shadow:{port}")
        }
        _ => format!("{authority}-shadow"),
    }
}

/// Envoy's redirect: scheme, host, port and path each replaced when configured.
fn redirect(rd: &Redirect, authority: &str, path: &str, query: Option<&str>) -> Reply {
    let scheme = rd.scheme.as_deref().unwrap_or("http");
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => (h, Some(p)),
        _ => (authority, None),
    };
    let host = rd.authority.as_deref().unwrap_or(host);
    let port = rd.port.map(|p| p.to_string()).or(port.map(str::to_string));
    // Envoy's path_redirect: a query in it replaces the request's; without one, the
    // request's query is kept (Istio never sets strip_query).
    let path = match (&rd.uri, query) {
        (Some(u), _) if u.contains('?') => u.clone(),
        (Some(u), Some(q)) => format!("{u}?{q}"),
        (Some(u), None) => u.clone(),
        (None, Some(q)) => format!("{path}?{q}"),
        (None, None) => path.to_string(),
    };
    let location = match port {
        Some(p) => format!("{scheme}://{host}:{p}{path}"),
        None => format!("{scheme}://{host}{path}"),
    };
    let mut reply =
        local_reply::reply(StatusCode::from_u16(rd.code).unwrap_or(StatusCode::MOVED_PERMANENTLY), "", "envoy");
    if let Ok(v) = HeaderValue::from_str(&location) {
        reply.headers_mut().insert(header::LOCATION, v);
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::{Redirect, redirect, shadow_host};

    fn location(rd: &Redirect, authority: &str, path: &str, query: Option<&str>) -> String {
        let reply = redirect(rd, authority, path, query);
        reply.headers()["location"].to_str().unwrap().to_string()
    }

    #[test]
    fn redirect_keeps_the_query_unless_its_uri_has_one() {
        let rd = Redirect { uri: Some("/v2".into()), authority: None, port: None, scheme: None, code: 301 };
        assert_eq!(location(&rd, "ratings", "/v1", Some("id=7")), "http://ratings/v2?id=7");
        assert_eq!(location(&rd, "ratings:9080", "/v1", None), "http://ratings:9080/v2");
        let rd = Redirect { uri: Some("/v2?x=1".into()), ..rd };
        assert_eq!(location(&rd, "ratings", "/v1", Some("id=7")), "http://ratings/v2?x=1");
        let rd = Redirect {
            uri: None,
            authority: Some("new".into()),
            port: Some(8080),
            scheme: Some("https".into()),
            code: 302,
        };
        assert_eq!(location(&rd, "ratings", "/v1", Some("id=7")), "https://new:8080/v1?id=7");
    }

    #[test]
    fn shadow_suffix_goes_before_the_port() {
        assert_eq!(shadow_host("reviews"), "reviews-shadow");
        assert_eq!(shadow_host("reviews:9080"), "reviews-shadow:9080");
        assert_eq!(shadow_host("reviews.prod.svc.cluster.local:80"), "reviews.prod.svc.cluster.local-shadow:80");
    }
}
