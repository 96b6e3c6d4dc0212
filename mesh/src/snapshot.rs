//! What one proxy runs: routes per destination service and clusters of endpoints with
//! their policies, compiled from the registry and Istio resources the way istiod
//! translates them for Envoy. Compilation is also validation: every rule broken becomes
//! a [`Finding`], and a snapshot with error findings must never reach a proxy.
//!
//! Not here: the runtime state of clusters (load, ejections) — see `proxy`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_saphyr::Spanned;

use crate::config::diag::code;
use crate::config::istio::{
    ClientTlsMode, ConnectionPoolSettings, ConsistentHash, DestinationRuleSpec, Headers, MtlsMode, NotSimulated,
    OutlierDetection, PeerAuthenticationSpec, Resource, SimpleLb, Spec, TrafficPolicy, VirtualServiceSpec,
};
use crate::config::{Finding, Findings, Pos};
use crate::identity::SpiffeId;
use crate::proxy::authz;
use crate::proxy::fault::{FaultPolicy, per_million};
use crate::proxy::hash::HashPolicy;
use crate::proxy::headers::HeaderOps;
use crate::proxy::peer_authn;
use crate::proxy::pool::{self, Limits};
use crate::proxy::retry::RetryPolicy;
use crate::proxy::route_match::RouteMatch;
use crate::registry::{AppProtocol, Registry, qualify};

/// Envoy's connect timeout as Istio's mesh config sets it.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LbPolicy {
    /// Power of two choices on active requests (Envoy's default, Istio's default).
    LeastRequest,
    RoundRobin,
    Random,
}

/// Outlier detection with Istio's defaults applied ([`OutlierDetection`](https://istio.io/latest/docs/reference/config/networking/destination-rule/#OutlierDetection)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutlierConfig {
    /// `None` = consecutive-5xx detection off (configured as 0).
    pub consecutive_5xx: Option<u32>,
    /// `None` = off (the default).
    pub consecutive_gateway: Option<u32>,
    pub interval: Duration,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    pub max_ejection_percent: u32,
    /// Envoy's healthy panic threshold, from `minHealthPercent`.
    pub panic_threshold_percent: u32,
}

impl OutlierConfig {
    pub fn from_istio(od: &OutlierDetection) -> OutlierConfig {
        let c5xx = od.consecutive_5xx_errors.as_ref().map(|v| v.value).unwrap_or(5);
        let cgw = od.consecutive_gateway_errors.as_ref().map(|v| v.value).unwrap_or(0);
        let base = od.base_ejection_time.as_ref().map(|d| d.value.0).unwrap_or(Duration::from_secs(30));
        let max_pct = od.max_ejection_percent.as_ref().map(|v| v.value).unwrap_or(0);
        OutlierConfig {
            consecutive_5xx: (c5xx > 0).then_some(c5xx),
            consecutive_gateway: (cgw > 0).then_some(cgw),
            interval: od.interval.as_ref().map(|d| d.value.0).unwrap_or(Duration::from_secs(10)),
            base_ejection_time: base,
            max_ejection_time: base.max(Duration::from_secs(300)),
            max_ejection_percent: if max_pct > 0 { max_pct as u32 } else { 10 },
            panic_threshold_percent: od.min_health_percent.as_ref().map(|v| v.value.max(0) as u32).unwrap_or(0),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub pod: String,
    pub host: String,
    pub port: u16,
    /// Originate Istio mutual TLS to this endpoint (auto-mTLS or the DestinationRule's
    /// `tls.mode`).
    pub mtls: bool,
}

/// Consistent-hash load balancing of a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HashLb {
    pub policy: HashPolicy,
    pub table: HashTable,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashTable {
    Ring { min_ring_size: u64 },
    Maglev { table_size: u64 },
}

/// Envoy's ring-hash default minimum ring size and maglev's default table size.
pub const DEFAULT_MIN_RING_SIZE: u64 = 1024;
pub const DEFAULT_MAGLEV_TABLE_SIZE: u64 = 65537;

#[derive(Clone, Debug, PartialEq)]
pub struct Cluster {
    /// Istio's name: `outbound|<port>|<subset>|<fqdn>`.
    pub name: String,
    pub service: String,
    pub subset: Option<String>,
    pub endpoints: Vec<Endpoint>,
    pub lb: LbPolicy,
    /// Consistent hashing replaces `lb` when set.
    pub hash: Option<HashLb>,
    pub outlier: Option<OutlierConfig>,
    pub connect_timeout: Duration,
    pub limits: Limits,
    /// The identities the destination may present over mTLS: the service accounts of
    /// the service's pods (Istio's subject alt names check).
    pub peer_identities: Vec<SpiffeId>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightedCluster {
    pub cluster: String,
    pub weight: u32,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
}

/// What a route does with a matched request.
#[derive(Clone, Debug)]
pub enum Action {
    /// Send it to one of these clusters (Envoy's weighted pick).
    Forward(Vec<WeightedCluster>),
    /// Answer with a redirect.
    Redirect(Redirect),
    /// Answer with this status and body.
    Direct { status: u16, body: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirect {
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub port: Option<u32>,
    pub scheme: Option<String>,
    /// 301 unless set.
    pub code: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rewrite {
    pub uri: Option<String>,
    pub authority: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mirror {
    pub cluster: String,
    pub per_million: u32,
}

#[derive(Clone, Debug)]
pub struct Route {
    /// `<vs namespace>/<vs name>/<route index or name>` or `default` without a VirtualService.
    pub name: String,
    /// Any entry matching selects the route; empty = every request.
    pub matches: Vec<RouteMatch>,
    pub action: Action,
    /// Route timeout covering the whole request, retries and backoff included; `None` =
    /// disabled (Istio's default).
    pub timeout: Option<Duration>,
    /// `None` = retries disabled (`attempts: 0`).
    pub retry: Option<RetryPolicy>,
    pub fault: Option<FaultPolicy>,
    pub mirror: Option<Mirror>,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    pub rewrite: Option<Rewrite>,
}

#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Ordered routes (first match wins) per destination service FQDN.
    pub routes: BTreeMap<String, Vec<Route>>,
    /// Service port per destination service FQDN.
    pub ports: BTreeMap<String, u16>,
    pub clusters: BTreeMap<String, Arc<Cluster>>,
    /// The AuthorizationPolicies of each pod that has any, by pod name (absent: every
    /// request is allowed).
    pub authz: BTreeMap<String, Arc<authz::Workload>>,
    /// Inbound local rate limits from EnvoyFilters, in resource order.
    pub inbound_rate_limits: Vec<InboundRateLimitFilter>,
    /// The PeerAuthentication mode of each sidecar's inbound side (pod name → mode on its
    /// service port; never `Unset`). Pods without a sidecar are absent.
    pub inbound_mtls: BTreeMap<String, MtlsMode>,
    /// FQDNs of the TCP services (`appProtocol: tcp`): their sidecars proxy bytes, not
    /// HTTP.
    pub tcp_services: BTreeSet<String>,
    /// `ClusterIP:port` of each TCP service → its FQDN: the outbound listener's filter
    /// chain match on a captured connection's original destination.
    pub tcp_vips: BTreeMap<SocketAddr, String>,
    /// A TCP service's VirtualService `tcp` routes, in order (first match wins; none
    /// matching, or none at all: the service's own cluster).
    pub tcp_routes: BTreeMap<String, Vec<TcpRouteRule>>,
}

/// One VirtualService `tcp` route, compiled.
#[derive(Clone, Debug, PartialEq)]
pub struct TcpRouteRule {
    /// Any entry; none = every connection.
    pub matches: Vec<L4Match>,
    /// Weighted clusters (weight-0 entries dropped; a lone one gets all).
    pub clusters: Vec<(String, u32)>,
}

/// One `match` entry of a TCP route: every field given must hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct L4Match {
    pub port: Option<u16>,
    pub source_labels: BTreeMap<String, String>,
    pub source_namespace: Option<String>,
}

impl L4Match {
    /// Whether a connection to service port `port` from a workload with `labels` in
    /// `namespace` matches.
    pub fn matches(&self, port: u16, labels: &BTreeMap<String, String>, namespace: &str) -> bool {
        self.port.is_none_or(|p| p == port)
            && self.source_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.source_namespace.as_deref().is_none_or(|n| n == namespace)
    }
}

impl TcpRouteRule {
    pub fn matches(&self, port: u16, labels: &BTreeMap<String, String>, namespace: &str) -> bool {
        self.matches.is_empty() || self.matches.iter().any(|m| m.matches(port, labels, namespace))
    }
}

/// An EnvoyFilter's local rate limit and the workloads it selects.
#[derive(Clone, Debug)]
pub struct InboundRateLimitFilter {
    /// `EnvoyFilter ns/name`, for messages.
    pub resource: String,
    pub pos: Pos,
    pub namespace: String,
    pub filter: crate::config::envoy_filter::InboundRateLimit,
}

impl Snapshot {
    /// The EnvoyFilter rate limits that apply to a workload: same namespace or the root
    /// namespace, and a selector (if any) whose labels the workload all has.
    pub fn inbound_rate_limits_for<'s>(
        &'s self,
        namespace: &'s str,
        labels: &'s BTreeMap<String, String>,
    ) -> impl Iterator<Item = &'s InboundRateLimitFilter> + 's {
        self.inbound_rate_limits.iter().filter(move |f| {
            (f.namespace == namespace || f.namespace == authz::ROOT_NAMESPACE)
                && f.filter.selector.as_ref().is_none_or(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
        })
    }
}

pub fn cluster_name(port: u16, subset: Option<&str>, fqdn: &str) -> String {
    format!("outbound|{port}|{}|{fqdn}", subset.unwrap_or(""))
}

/// A resource together with the file it came from.
pub struct Sourced<'a> {
    pub file: &'a str,
    pub resource: &'a Resource,
}

/// Compiles (and so validates) the mesh config for sidecars.
pub fn compile(registry: &Registry, resources: &[Sourced<'_>]) -> (Snapshot, Findings) {
    let mut c = Compiler { registry, findings: Findings::default(), current: None };
    let mut drs: BTreeMap<String, (&str, &Resource, &DestinationRuleSpec)> = BTreeMap::new();
    let mut vss: BTreeMap<String, (&str, &Resource, &VirtualServiceSpec)> = BTreeMap::new();
    let mut authz_policies: Vec<Arc<authz::Policy>> = Vec::new();
    let mut peer_authns: Vec<(&Resource, &PeerAuthenticationSpec)> = Vec::new();
    let mut tagged = 0;
    let mut rate_limits = Vec::new();
    for s in resources {
        let r = s.resource;
        // Findings of the previous resource are about it (the loop body may `continue`).
        tagged = c.tag(tagged, None);
        let what = format!("{} {}/{}", r.kind.value, r.namespace(), r.name());
        c.current = Some(what.clone());
        c.check_header(s.file, r);
        match &r.spec {
            Spec::DestinationRule(dr) => {
                let host = qualify(&dr.host.value, r.namespace());
                if !registry.services.contains_key(&host) {
                    c.warning(
                        s.file,
                        &dr.host,
                        "IST0174",
                        "spec.host",
                        format!(
                            "DestinationRule for non-existent service registry host {:?}: it has no effect",
                            dr.host.value
                        ),
                    );
                    continue;
                }
                if let Some((f, prev, _)) = drs.get(&host) {
                    c.warning(s.file, &dr.host, "MSIM0003", "spec.host", format!(
                        "{what} is ignored: {host} already has DestinationRule {}/{} ({f}); Istio, too, uses only one per host",
                        prev.namespace(), prev.name()
                    ));
                    continue;
                }
                c.check_destination_rule(s.file, dr);
                drs.insert(host, (s.file, r, dr));
            }
            Spec::VirtualService(vs) => {
                if vs.hosts.is_empty() {
                    c.findings.push(Finding::error(
                        Pos::of(s.file, &r.kind),
                        code::SCHEMA,
                        "spec.hosts",
                        "virtual service must have at least one host",
                    ));
                }
                if !vs.gateways.is_empty() && !vs.gateways.iter().any(|g| g.value == "mesh") {
                    c.warning(s.file, &vs.gateways[0], code::NOT_SIMULATED, "spec.gateways", format!(
                        "{what} binds only to gateways, which meshsim does not simulate: it has no effect on sidecars (add `mesh` to apply it to them)"
                    ));
                    continue;
                }
                c.not_simulated(s.file, "spec.tls", &vs.tls);
                c.not_simulated(s.file, "spec.exportTo", &vs.export_to);
                for h in &vs.hosts {
                    let host = qualify(&h.value, r.namespace());
                    if h.value.contains('*') || !registry.services.contains_key(&host) {
                        c.warning(
                            s.file,
                            h,
                            code::NOT_FOUND,
                            "spec.hosts",
                            format!(
                                "host {:?} is not a service of the scenario: the rules for it have no effect",
                                h.value
                            ),
                        );
                        continue;
                    }
                    let tcp_host = registry.services[&host].protocol == AppProtocol::Tcp;
                    if !vs.tcp.is_empty() && !tcp_host {
                        c.warning(
                            s.file,
                            h,
                            code::NOT_SIMULATED,
                            "spec.tcp",
                            format!(
                                "{what}: {host} is an http service, so its `tcp` routes do not apply (meshsim services have one port): they are ignored"
                            ),
                        );
                    }
                    if !vs.http.is_empty() && tcp_host {
                        c.warning(
                            s.file,
                            h,
                            code::NOT_SIMULATED,
                            "spec.http",
                            format!(
                                "{what}: {host} is a tcp service (app_protocol: tcp), so its `http` routes do not apply (Istio builds no HTTP route for a TCP port): connections go to the whole service"
                            ),
                        );
                        if vs.tcp.is_empty() {
                            continue;
                        }
                    }
                    if let Some((f, prev, _)) = vss.get(&host) {
                        c.warning(
                            s.file,
                            h,
                            "MSIM0003",
                            "spec.hosts",
                            format!(
                                "{what} is ignored for {host}: VirtualService {}/{} ({f}) already routes it",
                                prev.namespace(),
                                prev.name()
                            ),
                        );
                        continue;
                    }
                    vss.insert(host, (s.file, r, vs));
                }
            }
            Spec::AuthorizationPolicy(ap) => {
                let (policy, findings) = authz::compile(s.file, r, ap);
                c.findings.0.extend(findings);
                authz_policies.extend(policy.map(Arc::new));
            }
            Spec::EnvoyFilter(ef) => {
                let mut found = Vec::new();
                let filter = crate::config::envoy_filter::compile(s.file, ef, &mut found);
                c.findings.0.extend(found);
                if let Some(filter) = filter {
                    rate_limits.push(InboundRateLimitFilter {
                        resource: what.clone(),
                        pos: Pos::of(s.file, &r.kind),
                        namespace: r.namespace().to_string(),
                        filter,
                    });
                }
            }
            Spec::PeerAuthentication(pa) => {
                c.check_peer_authentication(s.file, pa);
                peer_authns.push((r, pa));
            }
            Spec::Unsupported => {
                c.error(
                    s.file,
                    &r.kind,
                    code::SCHEMA,
                    "kind",
                    format!(
                        "kind {:?} is not supported: meshsim simulates VirtualService, DestinationRule, AuthorizationPolicy, PeerAuthentication and the local rate limit of EnvoyFilter",
                        r.kind.value
                    ),
                );
            }
        }
    }

    c.tag(tagged, None);
    c.current = None;
    let mut snap = Snapshot { inbound_rate_limits: rate_limits, ..Snapshot::default() };
    let peer_policies: Vec<peer_authn::Policy<'_>> = peer_authns
        .iter()
        .map(|(r, spec)| peer_authn::Policy {
            namespace: r.namespace(),
            name: r.name(),
            created: r.metadata.creation_timestamp.as_deref(),
            spec,
        })
        .collect();
    for pod in registry.pods.values().filter(|p| p.sidecar) {
        let port = registry.services.values().find(|s| s.name == pod.service && s.namespace == pod.namespace);
        let port = port.map(|s| s.port).unwrap_or(0);
        snap.inbound_mtls
            .insert(pod.name.clone(), peer_authn::resolve(&peer_policies, &pod.namespace, &pod.labels, port));
    }
    // Clusters: one per service, one per DR subset.
    for (fqdn, svc) in &registry.services {
        let dr = drs.get(fqdn).map(|(_, _, dr)| *dr);
        let top = dr.and_then(|d| d.traffic_policy.as_ref());
        let all = BTreeMap::new();
        let base = c.cluster(fqdn, svc.port, None, &all, top, None, &snap.inbound_mtls);
        snap.clusters.insert(base.name.clone(), Arc::new(base));
        for (si, subset) in dr.map(|d| d.subsets.as_slice()).unwrap_or(&[]).iter().enumerate() {
            let cl = c.cluster(
                fqdn,
                svc.port,
                Some(&subset.name.value),
                &subset.labels,
                top,
                subset.traffic_policy.as_ref(),
                &snap.inbound_mtls,
            );
            if cl.endpoints.is_empty() {
                let (file, r, _) = drs[fqdn];
                let from = c.findings.0.len();
                c.warning(
                    file,
                    &subset.name,
                    "IST0173",
                    &format!("spec.subsets[{si}].name"),
                    format!(
                        "Subset {:?} in DestinationRule doesn't select any pods of {fqdn}: traffic to it may lead to 503 UH",
                        subset.name.value
                    ),
                );
                c.tag(from, Some(format!("DestinationRule {}/{}", r.namespace(), r.name())));
            }
            snap.clusters.insert(cl.name.clone(), Arc::new(cl));
        }
        // Routes: the VirtualService's, or one default route to the whole service.
        let routes = match vss.get(fqdn) {
            Some((file, r, vs)) => {
                let from = c.findings.0.len();
                let routes = c.routes(file, r, vs, &drs, &snap.clusters);
                c.tag(from, Some(format!("VirtualService {}/{}", r.namespace(), r.name())));
                routes
            }
            None => {
                let cluster = cluster_name(svc.port, None, fqdn);
                let hashed = snap.clusters.get(&cluster).is_some_and(|c| c.hash.is_some());
                vec![Route {
                    name: "default".into(),
                    matches: Vec::new(),
                    action: Action::Forward(vec![WeightedCluster {
                        cluster,
                        weight: 1,
                        request_headers: HeaderOps::default(),
                        response_headers: HeaderOps::default(),
                    }]),
                    timeout: None,
                    retry: RetryPolicy::from_istio(None, hashed),
                    fault: None,
                    mirror: None,
                    request_headers: HeaderOps::default(),
                    response_headers: HeaderOps::default(),
                    rewrite: None,
                }]
            }
        };
        snap.routes.insert(fqdn.clone(), routes);
        snap.ports.insert(fqdn.clone(), svc.port);
        if svc.protocol == AppProtocol::Tcp
            && let Some((file, r, vs)) = vss.get(fqdn)
            && !vs.tcp.is_empty()
        {
            let from = c.findings.0.len();
            let rules = c.tcp_routes(file, r, vs, &drs);
            c.tag(from, Some(format!("VirtualService {}/{}", r.namespace(), r.name())));
            snap.tcp_routes.insert(fqdn.clone(), rules);
        }
        if svc.protocol == AppProtocol::Tcp {
            snap.tcp_services.insert(fqdn.clone());
            if let Some(ip) = svc.cluster_ip {
                snap.tcp_vips.insert(SocketAddr::from((ip, svc.port)), fqdn.clone());
            }
        }
    }
    // Authorization: each pod's policies, chosen once here rather than per request.
    for pod in registry.pods.values() {
        let port = registry.services.get(&qualify(&pod.service, &pod.namespace)).map_or(0, |s| s.port);
        if let Some(w) = authz::Workload::select(&authz_policies, &pod.namespace, &pod.labels, port) {
            snap.authz.insert(pod.name.clone(), Arc::new(w));
        }
    }
    (snap, c.findings)
}

fn is_prime(n: u64) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d))
}

/// Istio's translation of `consistentHash` (ring hash unless maglev is asked for).
fn compile_hash(c: &ConsistentHash) -> Option<HashLb> {
    let policy = if let Some(h) = &c.http_header_name {
        HashPolicy::Header(http::HeaderName::try_from(h.to_ascii_lowercase()).ok()?)
    } else if let Some(k) = &c.http_cookie {
        HashPolicy::Cookie { name: k.name.clone(), path: k.path.clone().unwrap_or_default(), ttl: k.ttl.map(|t| t.0) }
    } else if c.use_source_ip == Some(true) {
        HashPolicy::SourceIp
    } else if let Some(q) = &c.http_query_parameter_name {
        HashPolicy::QueryParameter(q.clone())
    } else {
        return None;
    };
    let table = match &c.maglev {
        Some(m) => {
            HashTable::Maglev { table_size: m.table_size.as_ref().map_or(DEFAULT_MAGLEV_TABLE_SIZE, |t| t.value) }
        }
        None => HashTable::Ring {
            min_ring_size: c
                .ring_hash
                .as_ref()
                .and_then(|r| r.minimum_ring_size)
                .or(c.minimum_ring_size)
                .filter(|&n| n > 0)
                .unwrap_or(DEFAULT_MIN_RING_SIZE),
        },
    };
    Some(HashLb { policy, table })
}

/// Circuit-breaker thresholds as Istio writes them: every threshold set, values <= 0
/// meaning unset (2^32−1).
fn limits(pool: Option<&ConnectionPoolSettings>, budget: Option<&crate::config::istio::RetryBudget>) -> Limits {
    let cap = |v: Option<i64>| v.filter(|&v| v > 0).map(|v| v.min(i64::from(u32::MAX)) as u32);
    let tcp = pool.and_then(|p| p.tcp.as_ref());
    let http = pool.and_then(|p| p.http.as_ref());
    let d = Limits::default();
    Limits {
        max_connections: cap(tcp.and_then(|t| t.max_connections)).unwrap_or(d.max_connections),
        max_pending_requests: cap(http.and_then(|h| h.http1_max_pending_requests)).unwrap_or(d.max_pending_requests),
        max_requests: cap(http.and_then(|h| h.http2_max_requests)).unwrap_or(d.max_requests),
        max_requests_per_connection: cap(http.and_then(|h| h.max_requests_per_connection)).unwrap_or(0),
        idle_timeout: http
            .and_then(|h| h.idle_timeout.as_ref())
            .or(tcp.and_then(|t| t.idle_timeout.as_ref()))
            .map(|d| d.value.0)
            .unwrap_or(d.idle_timeout),
        max_connection_duration: tcp.and_then(|t| t.max_connection_duration.as_ref()).map(|d| d.value.0),
        max_retries: cap(http.and_then(|h| h.max_retries)).unwrap_or(d.max_retries),
        retry_budget: budget.map(|b| pool::RetryBudget {
            percent: b.percent.as_ref().map(|p| p.value.value).unwrap_or(20.0),
            min_concurrency: b.min_retry_concurrency.unwrap_or(3),
        }),
    }
}

struct Compiler<'a> {
    registry: &'a Registry,
    findings: Findings,
    /// The resource being checked, named in its findings.
    current: Option<String>,
}

impl Compiler<'_> {
    /// Names `resource` (or the current one) in findings from index `from` on that name
    /// none yet; returns the new end.
    fn tag(&mut self, from: usize, resource: Option<String>) -> usize {
        let name = resource.or_else(|| self.current.clone());
        for f in &mut self.findings.0[from..] {
            if f.resource.is_none() {
                f.resource.clone_from(&name);
            }
        }
        self.findings.0.len()
    }

    fn error<T>(&mut self, file: &str, at: &Spanned<T>, code: &'static str, field: &str, msg: String) {
        self.findings.push(Finding::error(Pos::of(file, at), code, field, msg));
    }
    fn warning<T>(&mut self, file: &str, at: &Spanned<T>, code: &'static str, field: &str, msg: String) {
        self.findings.push(Finding::warning(Pos::of(file, at), code, field, msg));
    }
    /// The `weight` of route destination `at` (absent: 0); a negative one is the
    /// webhook's error.
    fn route_weight(&mut self, file: &str, at: &str, weight: Option<&Spanned<i64>>) -> i64 {
        let Some(w) = weight else { return 0 };
        if w.value < 0 {
            self.error(file, w, code::SCHEMA, &format!("{at}.weight"), format!("weight {} < 0", w.value));
        }
        w.value
    }
    fn not_simulated(&mut self, file: &str, field: &str, value: &NotSimulated) {
        if let Some(v) = value {
            self.warning(
                file,
                v,
                code::NOT_SIMULATED,
                field,
                format!("`{field}` is an Istio field meshsim does not simulate yet: it is ignored"),
            );
        }
    }

    fn check_header(&mut self, file: &str, r: &Resource) {
        const NETWORKING: &[&str] =
            &["networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"];
        const SECURITY: &[&str] = &["security.istio.io/v1", "security.istio.io/v1beta1"];
        let groups = match r.spec {
            Spec::AuthorizationPolicy(_) | Spec::PeerAuthentication(_) => SECURITY,
            _ => NETWORKING,
        };
        if !matches!(r.spec, Spec::Unsupported) && !groups.contains(&r.api_version.value.as_str()) {
            self.error(
                file,
                &r.api_version,
                code::SCHEMA,
                "apiVersion",
                format!("apiVersion {:?} is not one of {}", r.api_version.value, groups.join(", ")),
            );
        }
        match &r.metadata.name {
            Some(n) if !n.value.is_empty() => {}
            _ => self.findings.push(Finding::error(
                Pos::of(file, &r.kind),
                code::SCHEMA,
                "metadata.name",
                "metadata.name is required",
            )),
        }
    }

    fn check_duration(&mut self, file: &str, field: &str, d: &Option<Spanned<crate::config::IstioDuration>>) {
        if let Some(d) = d {
            if d.value.0 < Duration::from_millis(1) {
                self.error(file, d, code::SCHEMA, field, "duration must be greater than 1ms".into());
            } else if d.value.0.subsec_nanos() % 1_000_000 != 0 {
                self.error(file, d, code::SCHEMA, field, "only durations to ms precision are supported".into());
            }
        }
    }

    fn check_policy(&mut self, file: &str, at: &str, p: &TrafficPolicy) {
        if let Some(lb) = &p.load_balancer {
            if let Some(ch) = &lb.value.consistent_hash {
                self.check_consistent_hash(file, &format!("{at}.loadBalancer.consistentHash"), ch);
                if lb.value.simple.is_some() {
                    self.error(
                        file,
                        ch,
                        code::SCHEMA,
                        &format!("{at}.loadBalancer"),
                        "only one of simple or consistentHash can be set".into(),
                    );
                }
            }
            self.not_simulated(file, &format!("{at}.loadBalancer.localityLbSetting"), &lb.value.locality_lb_setting);
            self.not_simulated(file, &format!("{at}.loadBalancer.warmupDurationSecs"), &lb.value.warmup_duration_secs);
            self.not_simulated(file, &format!("{at}.loadBalancer.warmup"), &lb.value.warmup);
            if let Some(s) = &lb.value.simple
                && s.value == SimpleLb::Passthrough
            {
                self.warning(
                    file,
                    s,
                    code::NOT_SIMULATED,
                    &format!("{at}.loadBalancer.simple"),
                    "PASSTHROUGH is not simulated: meshsim balances with LEAST_REQUEST instead".into(),
                );
            }
        }
        if let Some(pool) = &p.connection_pool {
            let empty = pool.value.tcp.is_none() && pool.value.http.is_none();
            if empty {
                self.error(
                    file,
                    pool,
                    code::SCHEMA,
                    &format!("{at}.connectionPool"),
                    "connection pool must have at least one field".into(),
                );
            }
            if let Some(tcp) = &pool.value.tcp {
                let f = format!("{at}.connectionPool.tcp");
                self.check_duration(file, &format!("{f}.connectTimeout"), &tcp.connect_timeout);
                self.check_duration(file, &format!("{f}.maxConnectionDuration"), &tcp.max_connection_duration);
                self.check_duration(file, &format!("{f}.idleTimeout"), &tcp.idle_timeout);
                self.not_simulated(file, &format!("{f}.tcpKeepalive"), &tcp.tcp_keepalive);
            }
            if let Some(http) = &pool.value.http {
                let f = format!("{at}.connectionPool.http");
                self.check_duration(file, &format!("{f}.idleTimeout"), &http.idle_timeout);
                self.not_simulated(file, &format!("{f}.h2UpgradePolicy"), &http.h2_upgrade_policy);
                self.not_simulated(file, &format!("{f}.useClientProtocol"), &http.use_client_protocol);
                self.not_simulated(file, &format!("{f}.maxConcurrentStreams"), &http.max_concurrent_streams);
            }
        }
        if let Some(od) = &p.outlier_detection {
            let o = &od.value;
            let f = format!("{at}.outlierDetection");
            self.check_duration(file, &format!("{f}.interval"), &o.interval);
            self.check_duration(file, &format!("{f}.baseEjectionTime"), &o.base_ejection_time);
            if let Some(v) = &o.max_ejection_percent
                && !(0..=100).contains(&v.value)
            {
                self.error(
                    file,
                    v,
                    code::SCHEMA,
                    &format!("{f}.maxEjectionPercent"),
                    "max ejection percent must be in range [0..100]".into(),
                );
            }
            if let Some(v) = &o.min_health_percent
                && !(0..=100).contains(&v.value)
            {
                self.error(
                    file,
                    v,
                    code::SCHEMA,
                    &format!("{f}.minHealthPercent"),
                    "min health percent must be in range [0..100]".into(),
                );
            }
            self.not_simulated(
                file,
                &format!("{f}.splitExternalLocalOriginErrors"),
                &o.split_external_local_origin_errors,
            );
            self.not_simulated(
                file,
                &format!("{f}.consecutiveLocalOriginFailures"),
                &o.consecutive_local_origin_failures,
            );
            self.not_simulated(file, &format!("{f}.consecutiveErrors"), &o.consecutive_errors);
        }
        if let Some(tls) = &p.tls {
            let t = &tls.value;
            let f = format!("{at}.tls");
            if let Some(m) = &t.mode
                && matches!(m.value, ClientTlsMode::Simple | ClientTlsMode::Mutual)
            {
                self.warning(
                    file,
                    m,
                    code::NOT_SIMULATED,
                    &format!("{f}.mode"),
                    "SIMPLE and MUTUAL TLS with user certificates are not simulated: meshsim applies auto-mTLS instead"
                        .into(),
                );
            }
            for (name, v) in [
                ("clientCertificate", &t.client_certificate),
                ("privateKey", &t.private_key),
                ("caCertificates", &t.ca_certificates),
                ("credentialName", &t.credential_name),
                ("subjectAltNames", &t.subject_alt_names),
                ("sni", &t.sni),
                ("insecureSkipVerify", &t.insecure_skip_verify),
                ("caCrl", &t.ca_crl),
            ] {
                self.not_simulated(file, &format!("{f}.{name}"), v);
            }
        }
        self.not_simulated(file, &format!("{at}.portLevelSettings"), &p.port_level_settings);
        self.not_simulated(file, &format!("{at}.tunnel"), &p.tunnel);
        self.not_simulated(file, &format!("{at}.proxyProtocol"), &p.proxy_protocol);
        if let Some(rb) = &p.retry_budget
            && let Some(pct) = &rb.value.percent
            && !(0.0..=100.0).contains(&pct.value.value)
        {
            self.error(
                file,
                pct,
                code::SCHEMA,
                &format!("{at}.retryBudget.percent"),
                format!("percentage {} is out of range 0..100", pct.value.value),
            );
        }
    }

    fn check_consistent_hash(&mut self, file: &str, at: &str, ch: &Spanned<ConsistentHash>) {
        let c = &ch.value;
        let keys = [
            c.http_header_name.is_some(),
            c.http_cookie.is_some(),
            c.use_source_ip.is_some(),
            c.http_query_parameter_name.is_some(),
        ]
        .into_iter()
        .filter(|&k| k)
        .count();
        if keys != 1 {
            self.error(
                file,
                ch,
                code::SCHEMA,
                at,
                "consistentHash needs exactly one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName"
                    .into(),
            );
        }
        if c.ring_hash.is_some() && c.maglev.is_some() {
            self.error(file, ch, code::SCHEMA, at, "only one of ringHash or maglev can be set".into());
        }
        if let Some(size) = c.maglev.as_ref().and_then(|m| m.table_size.as_ref())
            && !is_prime(size.value)
        {
            self.error(
                file,
                size,
                code::SCHEMA,
                &format!("{at}.maglev.tableSize"),
                format!("table size {} must be a prime number", size.value),
            );
        }
        if c.minimum_ring_size.is_some() {
            self.warning(
                file,
                ch,
                "IST0002",
                &format!("{at}.minimumRingSize"),
                "minimumRingSize is deprecated: use ringHash.minimumRingSize".into(),
            );
        }
        self.not_simulated(file, &format!("{at}.localityLbSetting"), &c.locality_lb_setting);
        if let Some(cookie) = &c.http_cookie {
            self.not_simulated(file, &format!("{at}.httpCookie.attributes"), &cookie.attributes);
        }
    }

    /// Istio's PeerAuthentication validation.
    fn check_peer_authentication(&mut self, file: &str, pa: &PeerAuthenticationSpec) {
        let selects = pa.selector.as_ref().is_some_and(|s| !s.value.match_labels.is_empty());
        if let Some(levels) = &pa.port_level_mtls {
            if !selects {
                self.error(
                    file,
                    levels,
                    code::SCHEMA,
                    "spec.portLevelMtls",
                    "mesh/namespace peer authentication cannot have port level mTLS".into(),
                );
            }
            for port in levels.value.keys() {
                if !(1..=65535).contains(port) {
                    self.error(
                        file,
                        levels,
                        code::SCHEMA,
                        &format!("spec.portLevelMtls[{port}]"),
                        format!("port {port} must be in range 1..65535"),
                    );
                }
            }
        }
    }

    fn check_destination_rule(&mut self, file: &str, dr: &DestinationRuleSpec) {
        self.not_simulated(file, "spec.exportTo", &dr.export_to);
        self.not_simulated(file, "spec.workloadSelector", &dr.workload_selector);
        if let Some(p) = &dr.traffic_policy {
            self.check_policy(file, "spec.trafficPolicy", p);
        }
        let mut seen = BTreeSet::new();
        for (i, s) in dr.subsets.iter().enumerate() {
            if s.name.value.is_empty() {
                self.error(
                    file,
                    &s.name,
                    code::SCHEMA,
                    &format!("spec.subsets[{i}].name"),
                    "subset name cannot be empty".into(),
                );
            } else if !seen.insert(s.name.value.as_str()) {
                self.error(
                    file,
                    &s.name,
                    code::SCHEMA,
                    &format!("spec.subsets[{i}].name"),
                    format!("duplicate subset names: {}", s.name.value),
                );
            }
            if let Some(p) = &s.traffic_policy {
                self.check_policy(file, &format!("spec.subsets[{i}].trafficPolicy"), p);
            }
        }
    }

    #[allow(clippy::too_many_arguments)] // one cluster's whole inputs: its subset, both policy levels, peers' modes
    fn cluster(
        &mut self,
        fqdn: &str,
        port: u16,
        subset: Option<&str>,
        labels: &BTreeMap<String, String>,
        top: Option<&TrafficPolicy>,
        own: Option<&TrafficPolicy>,
        inbound_mtls: &BTreeMap<String, MtlsMode>,
    ) -> Cluster {
        // A subset's policy replaces whole blocks of the top-level policy; no field merge.
        let lb = own.and_then(|p| p.load_balancer.as_ref()).or(top.and_then(|p| p.load_balancer.as_ref()));
        let pool = own.and_then(|p| p.connection_pool.as_ref()).or(top.and_then(|p| p.connection_pool.as_ref()));
        let od = own.and_then(|p| p.outlier_detection.as_ref()).or(top.and_then(|p| p.outlier_detection.as_ref()));
        let budget = own.and_then(|p| p.retry_budget.as_ref()).or(top.and_then(|p| p.retry_budget.as_ref()));
        let hash = lb.and_then(|l| l.value.consistent_hash.as_ref()).and_then(|ch| compile_hash(&ch.value));
        let lb = match lb.and_then(|l| l.value.simple.as_ref()).map(|s| s.value) {
            Some(SimpleLb::RoundRobin) => LbPolicy::RoundRobin,
            Some(SimpleLb::Random) => LbPolicy::Random,
            _ => LbPolicy::LeastRequest,
        };
        let connect_timeout = pool
            .and_then(|p| p.value.tcp.as_ref())
            .and_then(|t| t.connect_timeout.as_ref())
            .map(|d| d.value.0)
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let tls = own.and_then(|p| p.tls.as_ref()).or(top.and_then(|p| p.tls.as_ref()));
        let tls_mode = tls.and_then(|t| t.value.mode.as_ref()).map(|m| m.value);
        // Auto-mTLS: mutual TLS iff the endpoint has a sidecar whose inbound side is not
        // DISABLE; a DestinationRule's DISABLE or ISTIO_MUTUAL overrides.
        let mtls = |p: &crate::registry::Pod| match tls_mode {
            Some(ClientTlsMode::Disable) => false,
            Some(ClientTlsMode::IstioMutual) => true,
            _ => inbound_mtls.get(&p.name).is_some_and(|m| *m != MtlsMode::Disable),
        };
        let mut peer_identities = BTreeSet::new();
        let endpoints = self
            .registry
            .pods_of(fqdn, labels)
            .map(|p| {
                peer_identities.insert(SpiffeId::new(&p.namespace, &p.service_account));
                Endpoint { pod: p.name.clone(), host: p.host.clone(), port: p.inbound_port, mtls: mtls(p) }
            })
            .collect();
        Cluster {
            name: cluster_name(port, subset, fqdn),
            service: fqdn.to_string(),
            subset: subset.map(str::to_string),
            endpoints,
            lb,
            hash,
            outlier: od.map(|o| OutlierConfig::from_istio(&o.value)),
            connect_timeout,
            limits: limits(pool.map(|p| &p.value), budget.map(|b| &b.value)),
            peer_identities: peer_identities.into_iter().collect(),
        }
    }

    fn header_ops(
        &mut self,
        file: &str,
        at: &str,
        pos: &Spanned<String>,
        h: Option<&Headers>,
    ) -> (HeaderOps, HeaderOps) {
        let mut compile = |which: &str, ops: Option<&crate::config::istio::HeaderOperations>| match ops {
            None => HeaderOps::default(),
            Some(o) => HeaderOps::compile(o).unwrap_or_else(|e| {
                self.findings.push(Finding::error(
                    Pos::of(file, pos),
                    code::SCHEMA,
                    format!("{at}.headers.{which}"),
                    e,
                ));
                HeaderOps::default()
            }),
        };
        let req = compile("request", h.and_then(|h| h.request.as_ref()));
        let resp = compile("response", h.and_then(|h| h.response.as_ref()));
        (req, resp)
    }

    /// A destination's cluster, checking that its host and subset exist (IST0101).
    fn destination(
        &mut self,
        file: &str,
        at: &str,
        ns: &str,
        d: &crate::config::istio::Destination,
        drs: &BTreeMap<String, (&str, &Resource, &DestinationRuleSpec)>,
        what: &str,
    ) -> Option<String> {
        let host = qualify(&d.host.value, ns);
        let Some(svc) = self.registry.services.get(&host) else {
            self.error(
                file,
                &d.host,
                code::NOT_FOUND,
                &format!("{at}.host"),
                format!("Referenced {what} not found: {:?}", d.host.value),
            );
            return None;
        };
        let port = svc.port;
        if let Some(subset) = &d.subset {
            let known =
                drs.get(&host).is_some_and(|(_, _, dr)| dr.subsets.iter().any(|s| s.name.value == subset.value));
            if !known {
                self.error(
                    file,
                    subset,
                    code::NOT_FOUND,
                    &format!("{at}.subset"),
                    format!(
                        "Referenced host+subset in destinationrule not found: \"{}+{}\"",
                        d.host.value, subset.value
                    ),
                );
            }
        }
        Some(cluster_name(port, d.subset.as_ref().map(|s| s.value.as_str()), &host))
    }

    /// A TCP service's `tcp` routes: matches (port, source labels and namespace) and
    /// weighted destinations, validated as Istio does the HTTP ones' weights and hosts.
    fn tcp_routes(
        &mut self,
        file: &str,
        r: &Resource,
        vs: &VirtualServiceSpec,
        drs: &BTreeMap<String, (&str, &Resource, &DestinationRuleSpec)>,
    ) -> Vec<TcpRouteRule> {
        let mut out = Vec::new();
        for (i, tcp) in vs.tcp.iter().enumerate() {
            let at = format!("spec.tcp[{i}]");
            let mut matches = Vec::new();
            for (j, m) in tcp.match_.iter().enumerate() {
                let mat = format!("{at}.match[{j}]");
                self.not_simulated(file, &format!("{mat}.destinationSubnets"), &m.value.destination_subnets);
                self.not_simulated(file, &format!("{mat}.gateways"), &m.value.gateways);
                let port = m.value.port.as_ref().and_then(|p| {
                    let ok = u16::try_from(p.value).ok().filter(|&p| p > 0);
                    if ok.is_none() {
                        self.error(
                            file,
                            p,
                            code::SCHEMA,
                            &format!("{mat}.port"),
                            format!("port number {} must be in the range 1..65535", p.value),
                        );
                    }
                    ok
                });
                matches.push(L4Match {
                    port,
                    source_labels: m.value.source_labels.clone(),
                    source_namespace: m.value.source_namespace.clone(),
                });
            }
            if tcp.route.is_empty() {
                self.findings.push(Finding::error(
                    Pos::of(file, &r.kind),
                    code::SCHEMA,
                    at.clone(),
                    "TCP route is required",
                ));
            }
            let mut clusters = Vec::new();
            let mut total: i64 = 0;
            for (j, d) in tcp.route.iter().enumerate() {
                let dat = format!("{at}.route[{j}]");
                let weight = self.route_weight(file, &dat, d.weight.as_ref());
                total = total.saturating_add(weight.max(0));
                let host = qualify(&d.destination.host.value, r.namespace());
                if self.registry.services.get(&host).is_some_and(|s| s.protocol != AppProtocol::Tcp) {
                    self.error(
                        file,
                        &d.destination.host,
                        code::NOT_SIMULATED,
                        &format!("{dat}.destination.host"),
                        format!("{host} is an http service: meshsim proxies a tcp route's connections only to a tcp service (app_protocol: tcp)"),
                    );
                }
                if let Some(cluster) =
                    self.destination(file, &format!("{dat}.destination"), r.namespace(), &d.destination, drs, "host")
                {
                    clusters.push((cluster, weight.clamp(0, i64::from(u32::MAX)) as u32));
                }
            }
            if tcp.route.len() > 1 && total == 0 {
                let pos =
                    tcp.route[0].weight.as_ref().map(|w| Pos::of(file, w)).unwrap_or_else(|| Pos::of(file, &r.kind));
                self.findings.push(Finding::error(
                    pos,
                    code::SCHEMA,
                    format!("{at}.route"),
                    "total destination weight = 0",
                ));
            }
            if clusters.len() == 1 {
                clusters[0].1 = 1;
            } else {
                clusters.retain(|c| c.1 > 0);
            }
            out.push(TcpRouteRule { matches, clusters });
        }
        out
    }

    fn routes(
        &mut self,
        file: &str,
        r: &Resource,
        vs: &VirtualServiceSpec,
        drs: &BTreeMap<String, (&str, &Resource, &DestinationRuleSpec)>,
        clusters: &BTreeMap<String, Arc<Cluster>>,
    ) -> Vec<Route> {
        let mut out = Vec::new();
        // For IST0130/IST0131: the first catch-all route, and the match entries seen so far.
        let mut catch_all: Option<usize> = None;
        let mut seen_matches: Vec<(usize, usize, String)> = Vec::new();
        for (i, http) in vs.http.iter().enumerate() {
            let at = format!("spec.http[{i}]");
            let anchor = http.route.first().map(|d| d.destination.host.clone()).unwrap_or_else(|| r.kind.clone());
            self.not_simulated(file, &format!("{at}.delegate"), &http.delegate);
            self.not_simulated(file, &format!("{at}.mirrors"), &http.mirrors);
            self.not_simulated(file, &format!("{at}.corsPolicy"), &http.cors_policy);
            self.check_duration(file, &format!("{at}.timeout"), &http.timeout);

            // Matches, with the analyzer's reachability checks.
            let mut matches = Vec::new();
            for (j, m) in http.match_.iter().enumerate() {
                let mat = format!("{at}.match[{j}]");
                self.findings.0.extend(crate::config::route_match::validate(m, file, &mat));
                let Ok(c) = RouteMatch::compile(&m.value) else { continue };
                // The compiled form carries no source positions: equal means the same match.
                let key = format!("{c:?}");
                if catch_all.is_none()
                    && let Some((ei, ej, _)) = seen_matches.iter().find(|(_, _, k)| *k == key)
                {
                    self.findings.push(Finding::warning(
                        Pos::of(file, m),
                        "IST0131",
                        mat.clone(),
                        format!("VirtualService rule #{i} match #{j} is not used (same as rule #{ei} match #{ej})."),
                    ));
                }
                seen_matches.push((i, j, key));
                matches.push(c);
            }
            if let Some(k) = catch_all {
                self.findings.push(Finding::warning(
                    Pos::of(file, &anchor),
                    "IST0130",
                    at.clone(),
                    format!(
                        "VirtualService rule #{i} not used (rule #{k} has no match and takes every request; only the last rule can have no matches)."
                    ),
                ));
            } else if http.match_.is_empty() {
                catch_all = Some(i);
            }

            // Action: exactly one of route, redirect, directResponse.
            let kinds = [!http.route.is_empty(), http.redirect.is_some(), http.direct_response.is_some()];
            if kinds[0] && kinds[1] {
                self.findings.push(Finding::error(
                    Pos::of(file, &anchor),
                    code::SCHEMA,
                    at.clone(),
                    "HTTP route cannot contain both route and redirect",
                ));
            }
            if kinds[0] && kinds[2] {
                self.findings.push(Finding::error(
                    Pos::of(file, &anchor),
                    code::SCHEMA,
                    at.clone(),
                    "HTTP route cannot contain both route and direct response",
                ));
            }
            if kinds[1] && kinds[2] {
                self.findings.push(Finding::error(
                    Pos::of(file, &anchor),
                    code::SCHEMA,
                    at.clone(),
                    "HTTP route cannot contain both redirect and direct response",
                ));
            }
            if !kinds.iter().any(|&k| k) {
                self.findings.push(Finding::error(
                    Pos::of(file, &anchor),
                    code::SCHEMA,
                    at.clone(),
                    "HTTP route, redirect or direct response is required",
                ));
            }

            let action = if let Some(rd) = &http.redirect {
                let code_ = rd.value.redirect_code.as_ref().map(|c| c.value).unwrap_or(301);
                if let Some(c) = &rd.value.redirect_code
                    && !matches!(c.value, 301 | 302 | 303 | 307 | 308)
                {
                    self.error(
                        file,
                        c,
                        code::SCHEMA,
                        &format!("{at}.redirect.redirectCode"),
                        format!("{} is not a valid redirect code, must be 301, 302, 303, 307, or 308", c.value),
                    );
                }
                self.not_simulated(file, &format!("{at}.redirect.derivePort"), &rd.value.derive_port);
                Action::Redirect(Redirect {
                    uri: rd.value.uri.clone(),
                    authority: rd.value.authority.clone(),
                    port: rd.value.port,
                    scheme: rd.value.scheme.clone(),
                    code: code_ as u16,
                })
            } else if let Some(dr) = &http.direct_response {
                let st = dr.value.status.value;
                if !(200..=599).contains(&st) {
                    self.error(
                        file,
                        &dr.value.status,
                        code::SCHEMA,
                        &format!("{at}.directResponse.status"),
                        format!("directResponse status {st} is not in range 200-599"),
                    );
                }
                if let Some(b) = &dr.value.body {
                    self.not_simulated(file, &format!("{at}.directResponse.body.bytes"), &b.bytes);
                }
                Action::Direct {
                    status: st as u16,
                    body: dr.value.body.as_ref().and_then(|b| b.string.clone()).unwrap_or_default(),
                }
            } else {
                let mut weighted = Vec::new();
                let mut total: i64 = 0;
                for (j, d) in http.route.iter().enumerate() {
                    let dat = format!("{at}.route[{j}]");
                    let weight = self.route_weight(file, &dat, d.weight.as_ref());
                    total = total.saturating_add(weight.max(0));
                    let (rq, rs) = self.header_ops(file, &dat, &d.destination.host, d.headers.as_ref());
                    if let Some(cluster) = self.destination(
                        file,
                        &format!("{dat}.destination"),
                        r.namespace(),
                        &d.destination,
                        drs,
                        "host",
                    ) {
                        weighted.push(WeightedCluster {
                            cluster,
                            weight: weight.clamp(0, i64::from(u32::MAX)) as u32,
                            request_headers: rq,
                            response_headers: rs,
                        });
                    }
                }
                if http.route.len() > 1 && total == 0 {
                    let pos = http.route[0]
                        .weight
                        .as_ref()
                        .map(|w| Pos::of(file, w))
                        .unwrap_or_else(|| Pos::of(file, &anchor));
                    self.findings.push(Finding::error(
                        pos,
                        code::SCHEMA,
                        format!("{at}.route"),
                        "total destination weight = 0",
                    ));
                }
                // Istio: one destination gets all traffic whatever its weight; weight-0 entries drop.
                if weighted.len() == 1 {
                    weighted[0].weight = 1;
                } else {
                    weighted.retain(|c| c.weight > 0);
                }
                Action::Forward(weighted)
            };

            if let Some(rt) = &http.retries {
                self.findings.0.extend(crate::config::retry::validate(rt, file, &format!("{at}.retries")));
            }
            let hashed = matches!(&action, Action::Forward(w) if w.iter().any(|c| clusters.get(&c.cluster).is_some_and(|c| c.hash.is_some())));
            let retry = RetryPolicy::from_istio(http.retries.as_ref().map(|r| &r.value), hashed);

            let fault = http.fault.as_ref().map(|f| {
                let fat = format!("{at}.fault");
                if f.value.delay.is_none() && f.value.abort.is_none() {
                    self.error(
                        file,
                        f,
                        code::SCHEMA,
                        &fat,
                        "HTTP fault injection must have an abort and/or a delay".into(),
                    );
                }
                if let Some(d) = &f.value.delay {
                    self.not_simulated(file, &format!("{fat}.delay.exponentialDelay"), &d.value.exponential_delay);
                    match &d.value.fixed_delay {
                        None => self.error(
                            file,
                            d,
                            code::SCHEMA,
                            &format!("{fat}.delay"),
                            "delay must have a fixedDelay".into(),
                        ),
                        Some(fd) => self.check_duration(file, &format!("{fat}.delay.fixedDelay"), &Some(fd.clone())),
                    }
                    self.check_percent(file, d, &format!("{fat}.delay.percentage"), d.value.percentage.as_ref());
                }
                if let Some(ab) = &f.value.abort {
                    self.not_simulated(file, &format!("{fat}.abort.grpcStatus"), &ab.value.grpc_status);
                    self.not_simulated(file, &format!("{fat}.abort.http2Error"), &ab.value.http2_error);
                    match &ab.value.http_status {
                        Some(st) if !(200..=599).contains(&st.value) => self.error(
                            file,
                            st,
                            code::SCHEMA,
                            &format!("{fat}.abort.httpStatus"),
                            format!("HTTP status {} is not in range 200-599", st.value),
                        ),
                        Some(_) => {}
                        None if ab.value.grpc_status.is_none() && ab.value.http2_error.is_none() => self.error(
                            file,
                            ab,
                            code::SCHEMA,
                            &format!("{fat}.abort"),
                            "abort must have an httpStatus".into(),
                        ),
                        None => {}
                    }
                    self.check_percent(file, ab, &format!("{fat}.abort.percentage"), ab.value.percentage.as_ref());
                }
                FaultPolicy::from_istio(&f.value)
            });

            let mirror = http.mirror.as_ref().and_then(|m| {
                let cluster =
                    self.destination(file, &format!("{at}.mirror"), r.namespace(), &m.value, drs, "mirror host")?;
                if let Some(p) = &http.mirror_percentage {
                    self.check_percent(file, p, &format!("{at}.mirrorPercentage"), Some(&p.value));
                }
                // mirrorPercentage defaults to 100% when omitted (0 disables).
                let ppm = match (&http.mirror_percentage, &http.mirror_percent) {
                    (None, None) => 1_000_000,
                    (p, d) => per_million(p.as_ref().map(|p| &p.value), d.as_ref().map(|d| d.value)),
                };
                Some(Mirror { cluster, per_million: ppm })
            });
            if http.mirror.is_none() && (http.mirror_percentage.is_some() || http.mirror_percent.is_some()) {
                self.findings.push(Finding::warning(
                    Pos::of(file, &anchor),
                    code::SCHEMA,
                    format!("{at}.mirrorPercentage"),
                    "mirrorPercentage without mirror has no effect",
                ));
            }
            let rewrite = http.rewrite.as_ref().map(|rw| {
                self.not_simulated(file, &format!("{at}.rewrite.uriRegexRewrite"), &rw.value.uri_regex_rewrite);
                Rewrite { uri: rw.value.uri.clone(), authority: rw.value.authority.clone() }
            });
            let (request_headers, response_headers) = self.header_ops(file, &at, &anchor, http.headers.as_ref());
            out.push(Route {
                name: http.name.clone().unwrap_or_else(|| format!("{}/{}/{i}", r.namespace(), r.name())),
                matches,
                action,
                timeout: http.timeout.as_ref().map(|t| t.value.0),
                retry,
                fault,
                mirror,
                request_headers,
                response_headers,
                rewrite,
            });
        }
        out
    }

    fn check_percent<T>(
        &mut self,
        file: &str,
        at: &Spanned<T>,
        field: &str,
        p: Option<&crate::config::istio::Percent>,
    ) {
        if let Some(p) = p
            && !(0.0..=100.0).contains(&p.value)
        {
            self.error(file, at, code::SCHEMA, field, format!("percentage {} is out of range 0..100", p.value));
        }
    }
}
