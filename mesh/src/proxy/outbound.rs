//! The outbound path, one layer per function, in reading order: route (the first
//! matching rule, then a redirect, a direct response or a weighted destination) →
//! request edits (destination and route headers, rewrite) → fault (delay, abort) →
//! mirror → timeout (the route deadline over every try and backoff, [`Deadline`]) →
//! retry (the policy's tries, the retry circuit breaker) → cluster choice (see
//! `cluster_choice`) → pool (see `pool`). [`Sidecar::outbound`] strings them together;
//! each layer's policy lives in its own module. Every path ends in [`Sidecar::finish`]
//! (access log, metrics, span), and every upstream try records its own span and feeds
//! outlier detection ([`outlier_status`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use super::cluster_choice::InFlight;
use super::hash::HashInput;
use super::local_reply::{self, Flag};
use super::metrics::PEER_METADATA;
use super::pool::{Pool, UpstreamError};
use super::retry::{Decision, Outcome, RetryState};
use super::route_match::{MatchInput, route_matches};
use super::telemetry::Direction;
use super::tracing::{Span, SpanKind};
use super::{Exchange, Reply, Sidecar, Target, failure_flag, strip_hop_by_hop};
use crate::net::Net;
use crate::registry::qualify;
use crate::snapshot::{Action, Cluster, Redirect, Route, Snapshot, WeightedCluster};

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

/// What the router did: the last try's result, the host it went to, the flags it earned.
struct Routed {
    tried: Tried,
    host: Option<usize>,
    flags: Vec<Flag>,
}

impl Routed {
    fn timed_out(host: Option<usize>) -> Routed {
        Routed { tried: Tried::RouteTimeout, host, flags: vec![Flag::UpstreamRequestTimeout] }
    }
}

/// What a route's action makes of a request.
enum Destination<'s> {
    /// Forward it to this weighted destination's cluster.
    Forward(&'s WeightedCluster, Arc<Cluster>),
    /// The route answers it (a redirect, a direct response), or names no cluster (NC).
    Answered(Box<Reply>, &'static [Flag]),
}

/// How one try ended, as the retry layer sees it.
enum TryEnd {
    /// The try ended on its own or at its per-try timeout.
    Ended { tried: Tried, outcome: Outcome },
    /// The route deadline came first: the whole request times out.
    RouteTimeout,
}

/// The request line as the route layer reads it (cloned out of the request, which the
/// later layers edit).
struct RequestLine {
    uri: http::Uri,
    host: Option<HeaderValue>,
}

impl RequestLine {
    fn of(parts: &Parts) -> RequestLine {
        RequestLine { uri: parts.uri.clone(), host: parts.headers.get(header::HOST).cloned() }
    }

    /// The Host header, else the URI's authority.
    fn authority(&self) -> &str {
        self.host
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .or_else(|| self.uri.authority().map(|a| a.as_str()))
            .unwrap_or_default()
    }
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
        let line = RequestLine::of(&parts);
        let authority = line.authority();
        let snapshot = self.snapshot();
        let fqdn = qualify(authority, &self.cfg.namespace);

        let Some((route, matched_prefix)) = self.route(&snapshot, &parts, &line, &fqdn) else {
            let to = Target { service: &fqdn, ..Target::default() };
            return done(self.local(Flag::NoRoute, None, "envoy"), &[Flag::NoRoute], to);
        };
        let to = Target { route: &route.name, service: &fqdn, ..Target::default() };
        let (wc, cluster) = match self.destination(&snapshot, route, &line) {
            Destination::Forward(wc, cluster) => (wc, cluster),
            Destination::Answered(reply, flags) => return done(*reply, flags, to),
        };
        let to = Target { cluster: &cluster.name, service: &cluster.service, ..to };
        edit_request(&mut parts, wc, route, matched_prefix.as_deref(), &self.metadata);
        let mut flags = Vec::new();
        if let Some(reply) = self.fault(route, &mut flags).await {
            return done(reply, &flags, to);
        }
        self.mirror(&snapshot, route, &parts, &body, authority);
        let (hash, set_cookie) = request_hash(&cluster, &parts.headers, line.uri.query(), peer, local);
        let deadline = Deadline::start(self.clock.now(), route.timeout);
        let routed = self.tries(&ex, &cluster, route, &parts, body, hash, deadline).await;
        flags.extend(routed.flags);
        let upstream = routed.host.map(|h| cluster.endpoints[h].pod.as_str());
        let to = Target { upstream, ..to };
        let reply = match routed.tried {
            Tried::Response(resp) => {
                let reply = self.upstream_reply(resp, wc, route, &ex, set_cookie);
                return done(reply, &flags, to);
            }
            Tried::Failed { error, retried } => {
                let (flag, why) = failure_flag(error);
                if retried { self.local_after_retries(flag, why, "envoy") } else { self.local(flag, why, "envoy") }
            }
            Tried::PerTryTimeout | Tried::RouteTimeout => self.local(Flag::UpstreamRequestTimeout, None, "envoy"),
            Tried::NoHealthyUpstream => self.local(Flag::NoHealthyUpstream, None, "envoy"),
        };
        done(reply, &flags, to)
    }

    /// Route: the first rule for `fqdn` whose match list accepts the request, and the
    /// URI prefix it matched on (a prefix rewrite replaces it). `None`: no route (NR).
    fn route<'s>(
        &self,
        snapshot: &'s Snapshot,
        parts: &Parts,
        line: &RequestLine,
        fqdn: &str,
    ) -> Option<(&'s Route, Option<String>)> {
        let input = MatchInput {
            method: parts.method.as_str(),
            path: line.uri.path(),
            query: line.uri.query(),
            authority: line.authority(),
            scheme: "http",
            headers: &parts.headers,
            port: snapshot.ports.get(fqdn).copied().unwrap_or(0),
            source_labels: &self.cfg.labels,
            source_namespace: &self.cfg.namespace,
        };
        let route = snapshot.routes.get(fqdn)?.iter().find(|r| route_matches(&r.matches, &input))?;
        let matched_prefix =
            route.matches.iter().find(|m| m.matches(&input)).and_then(|m| m.uri_prefix()).map(str::to_string);
        Some((route, matched_prefix))
    }

    /// The route's action: a weighted destination and its cluster (Envoy's weighted
    /// pick), or the reply the route answers itself (a redirect, a direct response; no
    /// cluster: NC).
    fn destination<'s>(&self, snapshot: &Snapshot, route: &'s Route, line: &RequestLine) -> Destination<'s> {
        let clusters = match &route.action {
            Action::Redirect(rd) => {
                let reply = redirect(rd, line.authority(), line.uri.path(), line.uri.query());
                return Destination::Answered(Box::new(reply), &[]);
            }
            Action::Direct { status, body } => {
                let mut reply =
                    local_reply::reply(StatusCode::from_u16(*status).unwrap_or(StatusCode::OK), body.clone(), "envoy");
                route.response_headers.apply(reply.headers_mut());
                return Destination::Answered(Box::new(reply), &[]);
            }
            Action::Forward(clusters) => clusters,
        };
        let weights: Vec<u32> = clusters.iter().map(|c| c.weight).collect();
        let picked = super::weighted::pick(&weights, self.draw()).map(|i| &clusters[i]);
        match picked.and_then(|wc| snapshot.clusters.get(&wc.cluster).map(|c| (wc, c.clone()))) {
            Some((wc, cluster)) => Destination::Forward(wc, cluster),
            None => Destination::Answered(Box::new(self.local(Flag::NoCluster, None, "envoy")), &[Flag::NoCluster]),
        }
    }

    /// Fault: the route's delay, then its abort; both before the router's timers start.
    /// Draws twice from the proxy's RNG when the route has a fault (the delay's draw, then
    /// the abort's). `Some`: the abort's reply.
    async fn fault(&self, route: &Route, flags: &mut Vec<Flag>) -> Option<Reply> {
        let f = route.fault.as_ref()?;
        let injected = f.decide((self.draw() % 1_000_000) as u32, (self.draw() % 1_000_000) as u32);
        if let Some(d) = injected.delay {
            flags.push(Flag::DelayInjected);
            tokio::time::sleep(d).await;
        }
        let status = injected.abort?;
        flags.push(Flag::FaultInjected);
        let mut reply = local_reply::reply(
            StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            local_reply::BODY_FAULT_ABORT,
            "envoy",
        );
        route.response_headers.apply(reply.headers_mut());
        Some(reply)
    }

    /// Mirror: a fire-and-forget copy to the route's mirror cluster, `-shadow` on the
    /// host, for the route's share of requests (one draw when the route mirrors).
    fn mirror(self: &Arc<Self>, snapshot: &Snapshot, route: &Route, parts: &Parts, body: &Bytes, authority: &str) {
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
    }

    /// Retry: tries the request until it succeeds, fails in a way the policy does not
    /// retry, runs out of retries (URX) or of retry circuit breaker (UO), or `deadline`
    /// passes. Each try goes to a host the cluster choice picks (avoiding previous ones
    /// as the policy says) and waits its backoff after.
    #[allow(clippy::too_many_arguments)]
    async fn tries(
        &self,
        ex: &Exchange,
        cluster: &Arc<Cluster>,
        route: &Route,
        parts: &Parts,
        body: Bytes,
        hash: Option<u64>,
        deadline: Deadline,
    ) -> Routed {
        let pool = self.cluster_pool(cluster);
        let mut state = RetryState::new(route.retry.as_ref());
        let mut _permit = None;
        loop {
            if deadline.expired(self.clock.now()) {
                return Routed::timed_out(None);
            }
            let Some(host) = state.pick_host(|| self.choose_host(cluster, hash)) else {
                return Routed { tried: Tried::NoHealthyUpstream, host: None, flags: vec![Flag::NoHealthyUpstream] };
            };
            let attempt = state.start_attempt(host);
            let per_try = state.per_try_timeout();
            let try_ = self.try_once(ex, cluster, &pool, host, attempt, parts, &body, per_try, deadline);
            let (tried, outcome) = match try_.await {
                TryEnd::Ended { tried, outcome } => (tried, outcome),
                TryEnd::RouteTimeout => return Routed::timed_out(Some(host)),
            };
            _permit = None;
            let mut flags: Vec<Flag> = try_flag(&tried).into_iter().collect();
            let decision = {
                let mut rng = self.rng.lock().expect("rng lock");
                state.on_outcome(&outcome, &mut *rng)
            };
            match decision {
                Decision::Done => return Routed { tried, host: Some(host), flags },
                Decision::Exhausted => {
                    flags.push(Flag::UpstreamRetryLimitExceeded);
                    return Routed { tried, host: Some(host), flags };
                }
                Decision::Retry { backoff } => {
                    // The retry circuit breaker (maxRetries or the retry budget).
                    let Some(permit) = pool.try_retry() else {
                        flags.push(Flag::UpstreamOverflow);
                        return Routed { tried, host: Some(host), flags };
                    };
                    _permit = Some(permit);
                    if let Some(left) = deadline.cuts(backoff, self.clock.now()) {
                        tokio::time::sleep(left).await;
                        return Routed::timed_out(Some(host));
                    }
                    tokio::time::sleep(backoff).await;
                }
            }
        }
    }

    /// One try to `host`, through the pool, bounded by the per-try timeout and the route
    /// deadline, whichever is first: its own span, its `x-envoy-attempt-count`, its host
    /// counted in flight, and its result fed to outlier detection.
    #[allow(clippy::too_many_arguments)]
    async fn try_once(
        &self,
        ex: &Exchange,
        cluster: &Arc<Cluster>,
        pool: &Pool<N>,
        host: usize,
        attempt: u32,
        parts: &Parts,
        body: &Bytes,
        per_try: Option<Duration>,
        deadline: Deadline,
    ) -> TryEnd {
        let in_flight = InFlight::start(self, cluster, host);
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
        let bound = deadline.bound_try(per_try, self.clock.now());
        let result = match bound {
            Some((limit, _)) => tokio::time::timeout(limit, send).await.map_err(|_| ()),
            None => Ok(send.await),
        };
        let result = match (result, bound) {
            (Ok(r), _) => Some(r),
            (Err(()), Some((_, Expiry::Route))) => {
                // Envoy reports a route timeout to outlier detection, as a 504.
                in_flight.finish(Some(504));
                record_try(None);
                return TryEnd::RouteTimeout;
            }
            (Err(()), _) => None,
        };
        let (tried, outcome) = classify(result, attempt > 1);
        in_flight.finish(outlier_status(&tried));
        record_try(match &tried {
            Tried::Response(r) => Some(r.status().as_u16()),
            _ => None,
        });
        TryEnd::Ended { tried, outcome }
    }

    /// The reply from an upstream response: hop-by-hop headers out, destination then
    /// route response edits, Envoy's `x-envoy-upstream-service-time` and `server`, and a
    /// generated hash cookie.
    fn upstream_reply(
        &self,
        resp: Response<Bytes>,
        wc: &WeightedCluster,
        route: &Route,
        ex: &Exchange,
        set_cookie: Option<HeaderValue>,
    ) -> Reply {
        let (mut rp, body) = resp.into_parts();
        strip_hop_by_hop(&mut rp.headers);
        apply_response_headers(wc, route, &mut rp.headers);
        let ms = self.clock.now().saturating_sub(ex.start).as_millis();
        rp.headers.insert("x-envoy-upstream-service-time", HeaderValue::from(ms as u64));
        rp.headers.insert(header::SERVER, HeaderValue::from_static("envoy"));
        if let Some(c) = set_cookie {
            rp.headers.append(header::SET_COOKIE, c);
        }
        Response::from_parts(rp, Full::new(body))
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

/// Request edits: the destination's header operations, then the route's, then its
/// rewrite (a prefix rewrite replaces `matched_prefix`, a full one the whole path; the
/// query stays; `authority` replaces the Host); hop-by-hop headers out,
/// `x-forwarded-proto` and this proxy's peer metadata in.
fn edit_request(
    parts: &mut Parts,
    wc: &WeightedCluster,
    route: &Route,
    matched_prefix: Option<&str>,
    metadata: &HeaderValue,
) {
    wc.request_headers.apply(&mut parts.headers);
    route.request_headers.apply(&mut parts.headers);
    if let Some(rw) = &route.rewrite {
        if let Some(uri) = &rw.uri {
            let path = parts.uri.path();
            let new_path = match matched_prefix {
                Some(p) if path.starts_with(p) => format!("{uri}{}", &path[p.len()..]),
                _ => uri.clone(),
            };
            let pq = match parts.uri.query() {
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
    parts.headers.insert(PEER_METADATA, metadata.clone());
}

/// The request's consistent-hash key for `cluster`, if it hashes; a hash cookie the
/// request lacks is made up from the connection (`peer`, `local`) and its `set-cookie`
/// returned, to go on the response.
fn request_hash(
    cluster: &Cluster,
    headers: &HeaderMap,
    query: Option<&str>,
    peer: SocketAddr,
    local: SocketAddr,
) -> (Option<u64>, Option<HeaderValue>) {
    let mut set_cookie = None;
    let hash = cluster.hash.as_ref().and_then(|h| {
        h.policy.hash(&HashInput { headers, query, source_ip: Some(peer.ip()) }).or_else(|| {
            let generated = h.policy.generate_cookie(peer, local)?;
            set_cookie = HeaderValue::from_str(&generated.set_cookie).ok();
            Some(generated.hash)
        })
    });
    (hash, set_cookie)
}

/// Which timer bounds a try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expiry {
    PerTry,
    Route,
}

/// The route timeout (Istio's `http.timeout`, Envoy's route `timeout`): one deadline,
/// on the proxy's clock, over every try and backoff of a request. `None`: disabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Deadline(Option<Duration>);

impl Deadline {
    fn start(now: Duration, timeout: Option<Duration>) -> Deadline {
        Deadline(timeout.map(|t| now + t))
    }

    fn remaining(self, now: Duration) -> Option<Duration> {
        self.0.map(|d| d.saturating_sub(now))
    }

    /// Whether no time is left for another try.
    fn expired(self, now: Duration) -> bool {
        self.remaining(now).is_some_and(|r| r.is_zero())
    }

    /// What bounds a try starting at `now`: the per-try timeout or the time left,
    /// whichever is first (the route deadline on a tie). `None`: unbounded.
    fn bound_try(self, per_try: Option<Duration>, now: Duration) -> Option<(Duration, Expiry)> {
        match (per_try, self.remaining(now)) {
            (Some(p), Some(r)) if r <= p => Some((r, Expiry::Route)),
            (Some(p), _) => Some((p, Expiry::PerTry)),
            (None, Some(r)) => Some((r, Expiry::Route)),
            (None, None) => None,
        }
    }

    /// `Some(left)`: the deadline comes before a wait of `wait` from `now` ends (or as it
    /// ends), after `left`.
    fn cuts(self, wait: Duration, now: Duration) -> Option<Duration> {
        self.remaining(now).filter(|&left| left <= wait)
    }
}

/// The outcome of a try's exchange with the pool (`None`: its per-try timeout fired),
/// as the router reports it (`retried`: the try was a retry) and as the retry policy
/// judges it.
fn classify(result: Option<Result<Response<Bytes>, UpstreamError>>, retried: bool) -> (Tried, Outcome) {
    let failed = |error| Tried::Failed { error, retried };
    match result {
        None => (Tried::PerTryTimeout, Outcome::PerTryTimeout),
        Some(Ok(resp)) => {
            let outcome = Outcome::response(resp.status().as_u16(), resp.headers());
            (Tried::Response(resp), outcome)
        }
        Some(Err(e @ UpstreamError::Connect(_))) => (failed(e), Outcome::ConnectFailure),
        Some(Err(e @ UpstreamError::Reset)) => (failed(e), Outcome::Reset),
        Some(Err(e @ UpstreamError::Overflow(_))) => (failed(e), Outcome::Overflow),
    }
}

/// What a finished try tells outlier detection (Envoy's unsplit mode): the response's
/// status; a timeout as 504; a connect failure or reset as 503; nothing for a circuit
/// breaker's overflow (the host was never reached).
fn outlier_status(tried: &Tried) -> Option<u16> {
    match tried {
        Tried::Response(r) => Some(r.status().as_u16()),
        Tried::PerTryTimeout | Tried::RouteTimeout => Some(504),
        Tried::Failed { error: UpstreamError::Connect(_) | UpstreamError::Reset, .. } => Some(503),
        Tried::Failed { error: UpstreamError::Overflow(_), .. } | Tried::NoHealthyUpstream => None,
    }
}

/// The response flag of a failed try (none for a response).
fn try_flag(tried: &Tried) -> Option<Flag> {
    match tried {
        Tried::Failed { error, .. } => Some(failure_flag(*error).0),
        Tried::PerTryTimeout => Some(Flag::UpstreamRequestTimeout),
        _ => None,
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

#[cfg(test)]
mod layer_tests {
    //! Each layer alone, against an in-memory `Net` and paused time.

    use std::collections::BTreeMap;
    use std::net::{Ipv4Addr, SocketAddr};

    use super::*;
    use crate::config::retry::Condition;
    use crate::proxy::SidecarConfig;
    use crate::proxy::fault::FaultPolicy;
    use crate::proxy::headers::HeaderOps;
    use crate::proxy::pool::Limits;
    use crate::proxy::retry::RetryPolicy;
    use crate::proxy::telemetry::MemoryTelemetry;
    use crate::proxy::test_net::{MemNet, PausedClock, Received, Script, always, upstream};
    use crate::snapshot::{Endpoint, LbPolicy, Mirror, Rewrite};

    const BOUND: Duration = Duration::from_secs(60);
    const MS: Duration = Duration::from_millis(1);

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::new(10, 0, 0, last), 80))
    }

    fn cluster(name: &str, hosts: &[u8], limits: Limits) -> Arc<Cluster> {
        Arc::new(Cluster {
            name: name.to_string(),
            service: format!("{name}.default.svc.cluster.local"),
            subset: None,
            endpoints: hosts
                .iter()
                .map(|&h| Endpoint { pod: format!("{name}-{h}"), host: format!("10.0.0.{h}"), port: 80, mtls: false })
                .collect(),
            lb: LbPolicy::RoundRobin,
            hash: None,
            outlier: None,
            connect_timeout: Duration::from_secs(1),
            limits,
            peer_identities: Vec::new(),
        })
    }

    fn route(to: &str) -> Route {
        Route {
            name: "r".to_string(),
            matches: Vec::new(),
            action: Action::Forward(vec![WeightedCluster {
                cluster: to.to_string(),
                weight: 100,
                request_headers: HeaderOps::default(),
                response_headers: HeaderOps::default(),
            }]),
            timeout: None,
            retry: None,
            fault: None,
            mirror: None,
            request_headers: HeaderOps::default(),
            response_headers: HeaderOps::default(),
            rewrite: None,
        }
    }

    fn retry_on_5xx(num_retries: u32) -> RetryPolicy {
        RetryPolicy {
            num_retries,
            retry_on: [Condition::FiveXx].into(),
            retry_ignore_previous_hosts: false,
            ..RetryPolicy::default()
        }
    }

    fn sidecar(net: MemNet, clusters: &[&Arc<Cluster>]) -> (Arc<Sidecar<MemNet>>, Arc<MemoryTelemetry>) {
        let snapshot = Snapshot {
            clusters: clusters.iter().map(|c| (c.name.clone(), Arc::clone(c))).collect(),
            ..Snapshot::default()
        };
        let cfg = SidecarConfig {
            pod: "client-0".into(),
            workload: "client".into(),
            namespace: "default".into(),
            service: String::new(),
            labels: BTreeMap::new(),
            app_port: 8080,
            seed: 7,
            bootstrap_rate_limit: None,
            tls: None,
            cost: None,
        };
        let telemetry = Arc::new(MemoryTelemetry::default());
        let sc = Sidecar::new(cfg, net, PausedClock::shared(), telemetry.clone(), Arc::new(snapshot))
            .expect("no rate limit");
        (sc, telemetry)
    }

    fn parts(uri: &str) -> Parts {
        Request::get(uri).header(header::HOST, "svc").body(()).expect("request").into_parts().0
    }

    /// Retry → cluster choice → pool for one request, as the router runs them.
    async fn route_tries(sc: &Sidecar<MemNet>, cluster: &Arc<Cluster>, route: &Route) -> Routed {
        let mut p = parts("/");
        let ex = sc.begin(Direction::Outbound, &mut p.headers);
        let deadline = Deadline::start(sc.clock.now(), route.timeout);
        let tries = sc.tries(&ex, cluster, route, &p, Bytes::new(), None, deadline);
        tokio::time::timeout(BOUND, tries).await.expect("the router ends")
    }

    fn status(r: &Routed) -> Option<u16> {
        match &r.tried {
            Tried::Response(resp) => Some(resp.status().as_u16()),
            _ => None,
        }
    }

    fn script(answers: &'static [(u16, u64)]) -> Script {
        Arc::new(move |n| {
            let (s, ms) = answers[n.min(answers.len() - 1)];
            (s, Duration::from_millis(ms))
        })
    }

    async fn one_upstream(answers: Script) -> (MemNet, Received) {
        let net = MemNet::default();
        let received = upstream(&net, addr(1), answers).await;
        (net, received)
    }

    // ------------------------------------------------------------------ retry

    #[tokio::test(start_paused = true)]
    async fn retries_on_503_once_per_try() {
        let (net, received) = one_upstream(script(&[(503, 0), (503, 0), (200, 0)])).await;
        let c = cluster("svc", &[1], Limits::default());
        let (sc, _) = sidecar(net, &[&c]);
        let r = Route { retry: Some(retry_on_5xx(2)), ..route("svc") };
        let routed = route_tries(&sc, &c, &r).await;
        assert_eq!(status(&routed), Some(200));
        assert!(routed.flags.is_empty());
        assert_eq!(received.count(), 3, "two retries, one request each");
        let attempts: Vec<_> = (0..3).map(|n| received.header(n, "x-envoy-attempt-count")).collect();
        assert_eq!(attempts, [Some("1".into()), Some("2".into()), Some("3".into())]);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_retry_policy_a_503_is_the_answer_after_one_try() {
        let (net, received) = one_upstream(always(503, Duration::ZERO)).await;
        let c = cluster("svc", &[1], Limits::default());
        let (sc, _) = sidecar(net, &[&c]);
        let routed = route_tries(&sc, &c, &route("svc")).await;
        assert_eq!((status(&routed), received.count()), (Some(503), 1));
        assert!(routed.flags.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn exhausted_retries_answer_the_last_503_flagged_urx() {
        let (net, received) = one_upstream(always(503, Duration::ZERO)).await;
        let c = cluster("svc", &[1], Limits::default());
        let (sc, _) = sidecar(net, &[&c]);
        let r = Route { retry: Some(retry_on_5xx(2)), ..route("svc") };
        let routed = route_tries(&sc, &c, &r).await;
        assert_eq!(status(&routed), Some(503));
        assert_eq!(routed.flags, [Flag::UpstreamRetryLimitExceeded]);
        assert_eq!(received.count(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_the_retry_circuit_breaker_refuses_ends_flagged_uo() {
        let (net, received) = one_upstream(always(503, Duration::ZERO)).await;
        let c = cluster("svc", &[1], Limits { max_retries: 0, ..Limits::default() });
        let (sc, _) = sidecar(net, &[&c]);
        let r = Route { retry: Some(retry_on_5xx(2)), ..route("svc") };
        let routed = route_tries(&sc, &c, &r).await;
        assert_eq!(status(&routed), Some(503));
        assert_eq!(routed.flags, [Flag::UpstreamOverflow]);
        assert_eq!(received.count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connect_failure_is_retried_on_another_host() {
        // Host 2 has no listener; round robin sends the first try there.
        let net = MemNet::default();
        let received = upstream(&net, addr(1), always(200, Duration::ZERO)).await;
        let c = cluster("svc", &[2, 1], Limits::default());
        let (sc, _) = sidecar(net, &[&c]);
        let r = Route { retry: Some(retry_on_5xx(1)), ..route("svc") };
        let routed = route_tries(&sc, &c, &r).await;
        assert_eq!((status(&routed), routed.host), (Some(200), Some(1)));
        assert_eq!(received.count(), 1);
    }

    // ---------------------------------------------------------------- timeout

    #[tokio::test(start_paused = true)]
    async fn the_route_timeout_bounds_every_try_and_backoff_together() {
        // Each try would take 300 ms; per-try timeouts of 200 ms and backoffs fit three
        // tries in 500 ms at most: the route deadline ends the request at exactly 500 ms.
        let (net, _) = one_upstream(always(200, Duration::from_millis(300))).await;
        let c = cluster("svc", &[1], Limits::default());
        let (sc, _) = sidecar(net, &[&c]);
        let policy = RetryPolicy { per_try_timeout: Some(Duration::from_millis(200)), ..retry_on_5xx(5) };
        let r = Route { timeout: Some(Duration::from_millis(500)), retry: Some(policy), ..route("svc") };
        let start = sc.clock.now();
        let routed = route_tries(&sc, &c, &r).await;
        assert!(matches!(routed.tried, Tried::RouteTimeout));
        assert_eq!(routed.flags, [Flag::UpstreamRequestTimeout]);
        assert_eq!(sc.clock.now() - start, Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_per_try_timeout_is_retried_and_the_next_try_answers() {
        let (net, received) = one_upstream(script(&[(200, 300), (200, 10)])).await;
        let c = cluster("svc", &[1], Limits::default());
        let (sc, _) = sidecar(net, &[&c]);
        let policy = RetryPolicy { per_try_timeout: Some(Duration::from_millis(100)), ..retry_on_5xx(1) };
        let r = Route { retry: Some(policy), ..route("svc") };
        let routed = route_tries(&sc, &c, &r).await;
        assert_eq!(status(&routed), Some(200));
        assert_eq!(received.count(), 2);
    }

    #[test]
    fn a_try_is_bounded_by_the_per_try_timeout_or_the_deadline_whichever_is_first() {
        let d = Deadline::start(Duration::ZERO, Some(500 * MS));
        assert_eq!(d.bound_try(Some(200 * MS), 100 * MS), Some((200 * MS, Expiry::PerTry)));
        assert_eq!(d.bound_try(Some(200 * MS), 400 * MS), Some((100 * MS, Expiry::Route)));
        assert_eq!(d.bound_try(Some(100 * MS), 400 * MS), Some((100 * MS, Expiry::Route)), "a tie is the route's");
        assert_eq!(d.bound_try(None, 100 * MS), Some((400 * MS, Expiry::Route)));
        let none = Deadline::start(Duration::ZERO, None);
        assert_eq!(none.bound_try(Some(200 * MS), 100 * MS), Some((200 * MS, Expiry::PerTry)));
        assert_eq!(none.bound_try(None, 100 * MS), None);
    }

    #[test]
    fn a_backoff_reaching_past_the_deadline_is_cut_to_it() {
        let d = Deadline::start(Duration::ZERO, Some(500 * MS));
        assert_eq!(d.cuts(25 * MS, 400 * MS), None);
        assert_eq!(d.cuts(150 * MS, 400 * MS), Some(100 * MS));
        assert_eq!(d.cuts(100 * MS, 400 * MS), Some(100 * MS));
        assert!(!d.expired(499 * MS) && d.expired(500 * MS));
        assert_eq!(Deadline::start(Duration::ZERO, None).cuts(Duration::MAX, Duration::MAX), None);
    }

    // ---------------------------------------------------------- outlier feed

    #[test]
    fn every_try_that_reached_a_host_feeds_outlier_detection() {
        let resp = |s: u16| Tried::Response(Response::builder().status(s).body(Bytes::new()).unwrap());
        assert_eq!(outlier_status(&resp(500)), Some(500));
        assert_eq!(outlier_status(&resp(200)), Some(200));
        assert_eq!(outlier_status(&Tried::PerTryTimeout), Some(504));
        let failed = |error| Tried::Failed { error, retried: false };
        assert_eq!(outlier_status(&failed(UpstreamError::Reset)), Some(503));
        let refused = UpstreamError::Connect(local_reply::ConnectFailure::Refused);
        assert_eq!(outlier_status(&failed(refused)), Some(503));
        let overflow = UpstreamError::Overflow(crate::proxy::pool::Overflow::Pending);
        assert_eq!(outlier_status(&failed(overflow)), None, "an overflow never reached the host");
    }

    #[tokio::test(start_paused = true)]
    async fn five_consecutive_503s_eject_the_host_and_the_next_request_has_no_healthy_upstream() {
        let (net, received) = one_upstream(always(503, Duration::ZERO)).await;
        let outlier = crate::snapshot::OutlierConfig {
            consecutive_5xx: Some(5),
            consecutive_gateway: None,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 100,
            panic_threshold_percent: 0,
        };
        let c = Arc::new(Cluster { outlier: Some(outlier), ..(*cluster("svc", &[1], Limits::default())).clone() });
        let (sc, telemetry) = sidecar(net, &[&c]);
        for _ in 0..5 {
            assert_eq!(status(&route_tries(&sc, &c, &route("svc")).await), Some(503));
        }
        assert_eq!(telemetry.events.lock().unwrap().len(), 1, "ejected at the fifth");
        let routed = route_tries(&sc, &c, &route("svc")).await;
        assert!(matches!(routed.tried, Tried::NoHealthyUpstream));
        assert_eq!(routed.flags, [Flag::NoHealthyUpstream]);
        assert_eq!(received.count(), 5);
    }

    // ----------------------------------------------------------------- fault

    #[tokio::test(start_paused = true)]
    async fn a_certain_abort_answers_its_status_with_the_route_response_headers() {
        let (sc, _) = sidecar(MemNet::default(), &[]);
        let fault = FaultPolicy { delay: None, abort: Some((418, 1_000_000)) };
        let mut response_headers = HeaderOps::default();
        response_headers.set.push((header::HeaderName::from_static("x-r"), HeaderValue::from_static("1")));
        let r = Route { fault: Some(fault), response_headers, ..route("svc") };
        let mut flags = Vec::new();
        let reply = sc.fault(&r, &mut flags).await.expect("aborted");
        assert_eq!(reply.status(), 418);
        assert_eq!(reply.headers()["x-r"], "1");
        assert_eq!(flags, [Flag::FaultInjected]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_certain_delay_waits_exactly_its_duration_then_lets_the_request_on() {
        let (sc, _) = sidecar(MemNet::default(), &[]);
        let fault = FaultPolicy { delay: Some((Duration::from_secs(2), 1_000_000)), abort: Some((503, 0)) };
        let r = Route { fault: Some(fault), ..route("svc") };
        let (mut flags, start) = (Vec::new(), sc.clock.now());
        assert!(sc.fault(&r, &mut flags).await.is_none(), "a 0% abort never fires");
        assert_eq!(sc.clock.now() - start, Duration::from_secs(2));
        assert_eq!(flags, [Flag::DelayInjected]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_route_without_a_fault_neither_waits_nor_flags() {
        let (sc, _) = sidecar(MemNet::default(), &[]);
        let (mut flags, start) = (Vec::new(), sc.clock.now());
        assert!(sc.fault(&route("svc"), &mut flags).await.is_none());
        assert_eq!((sc.clock.now(), flags.len()), (start, 0));
    }

    // ---------------------------------------------------------------- mirror

    #[tokio::test(start_paused = true)]
    async fn a_mirrored_request_reaches_the_mirror_cluster_with_a_shadow_host() {
        let net = MemNet::default();
        let mirrored = upstream(&net, addr(9), always(500, Duration::ZERO)).await;
        let m = cluster("mirror", &[9], Limits::default());
        let (sc, _) = sidecar(net, &[&m]);
        let r = Route { mirror: Some(Mirror { cluster: "mirror".into(), per_million: 1_000_000 }), ..route("svc") };
        let p = parts("/a?b=1");
        sc.mirror(&sc.snapshot(), &r, &p, &Bytes::new(), "reviews:9080");
        let arrived = async {
            while mirrored.count() == 0 {
                tokio::time::sleep(MS).await;
            }
        };
        tokio::time::timeout(BOUND, arrived).await.expect("the shadow arrives");
        assert_eq!(mirrored.header(0, "host").as_deref(), Some("reviews-shadow:9080"));
        assert_eq!(mirrored.uri(0), "/a?b=1");
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_share_mirror_sends_nothing() {
        let net = MemNet::default();
        let mirrored = upstream(&net, addr(9), always(200, Duration::ZERO)).await;
        let m = cluster("mirror", &[9], Limits::default());
        let (sc, _) = sidecar(net, &[&m]);
        let r = Route { mirror: Some(Mirror { cluster: "mirror".into(), per_million: 0 }), ..route("svc") };
        sc.mirror(&sc.snapshot(), &r, &parts("/"), &Bytes::new(), "reviews");
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(mirrored.count(), 0);
    }

    // -------------------------------------------------------- request edits

    fn forward(r: &Route) -> &WeightedCluster {
        match &r.action {
            Action::Forward(wcs) => &wcs[0],
            _ => unreachable!("the test route forwards"),
        }
    }

    #[test]
    fn a_prefix_rewrite_replaces_only_the_matched_prefix_and_keeps_the_query() {
        let r = Route { rewrite: Some(Rewrite { uri: Some("/v2".into()), authority: None }), ..route("svc") };
        let mut p = parts("/v1/items?id=7");
        edit_request(&mut p, forward(&r), &r, Some("/v1"), &HeaderValue::from_static("m"));
        assert_eq!(p.uri.to_string(), "/v2/items?id=7");
        let mut p = parts("/other?id=7");
        edit_request(&mut p, forward(&r), &r, None, &HeaderValue::from_static("m"));
        assert_eq!(p.uri.to_string(), "/v2?id=7", "without a matched prefix the whole path is replaced");
    }

    #[test]
    fn an_authority_rewrite_replaces_the_host() {
        let r = Route { rewrite: Some(Rewrite { uri: None, authority: Some("new-host".into()) }), ..route("svc") };
        let mut p = parts("/");
        edit_request(&mut p, forward(&r), &r, None, &HeaderValue::from_static("m"));
        assert_eq!(p.headers[header::HOST], "new-host");
    }

    #[test]
    fn route_header_edits_run_after_the_destinations_and_hop_by_hop_headers_go() {
        let set = |v: &'static str| {
            let mut ops = HeaderOps::default();
            ops.set.push((header::HeaderName::from_static("x-who"), HeaderValue::from_static(v)));
            ops
        };
        let mut r = Route { request_headers: set("route"), ..route("svc") };
        if let Action::Forward(wcs) = &mut r.action {
            wcs[0].request_headers = set("destination");
        }
        let mut p = parts("/");
        p.headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        edit_request(&mut p, forward(&r), &r, None, &HeaderValue::from_static("meta"));
        assert_eq!(p.headers["x-who"], "route");
        assert!(p.headers.get(header::CONNECTION).is_none());
        assert_eq!(p.headers["x-forwarded-proto"], "http");
        assert_eq!(p.headers[PEER_METADATA], "meta");
    }
}
