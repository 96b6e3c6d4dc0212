//! Services and placement: the `services` section (services, their pod groups, the apps
//! the pods run, a service's local rate limit) and the sidecars' `proxy_cost`, into
//! pods placed on nodes with their ports, their service's ClusterIP and the registry
//! the control plane serves. It owns the pod's model ([`PlannedPod`], [`AppModel`],
//! [`Latency`], [`ProxyCost`]); it does not run an app or draw a cost (`crate::app`,
//! `crate::cost`) and does not read Istio resources (`istio`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use mesh::config::IstioDuration;
use mesh::config::diag::code;
use mesh::config::ratelimit::{Denominator, FractionalPercent, LocalRateLimitConfig};
use mesh::proxy::ratelimit::LocalRateLimit;
use mesh::registry::{AppProtocol, Pod, Registry, Service};
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::builder::{Builder, Dur, one};
use crate::bad_identity::BadIdentity;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceDef {
    pub name: Spanned<String>,
    pub namespace: Option<Spanned<String>>,
    pub port: Option<Spanned<u16>>,
    /// What the port speaks (Kubernetes' `appProtocol`): `http` (the default) or `tcp`.
    pub app_protocol: Option<Spanned<String>>,
    pub service_account: Option<String>,
    pub pods: Vec<PodGroupDef>,
    /// A local rate limit on every pod's inbound sidecar (Envoy's `local_ratelimit`).
    pub rate_limit: Option<Spanned<RateLimitDef>>,
}

/// Envoy's local rate limit as a scenario writes it. Unlike Envoy's proto (0% by
/// default), `enabled_percent` and `enforced_percent` default to 100.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitDef {
    pub max_tokens: u32,
    pub tokens_per_fill: Option<u32>,
    pub fill_interval: IstioDuration,
    pub status: Option<u16>,
    pub enabled_percent: Option<f64>,
    pub enforced_percent: Option<f64>,
    #[serde(default)]
    pub response_headers_to_add: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodGroupDef {
    /// Pods are named `<service>-<name>-<index>`.
    pub name: Spanned<String>,
    #[serde(default = "one")]
    pub replicas: Spanned<u32>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub app: AppDef,
    /// The pods' Kubernetes service account (default: the service's, else `default`).
    pub service_account: Option<Spanned<String>>,
    /// Whether the pods run a sidecar (default true). Without one a pod is outside the
    /// mesh: its workload connects straight to a destination pod, in plaintext.
    pub sidecar: Option<Spanned<bool>>,
    /// A bad identity for the pods' sidecars: `foreign_ca`, `expired`,
    /// `wrong_trust_domain` or `no_certificate`.
    pub bad_identity: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppDef {
    #[serde(default)]
    pub latency: LatencyDef,
    /// Share of requests answered with `error_status`, in parts per million.
    pub error_rate_ppm: Option<Spanned<u32>>,
    pub error_status: Option<Spanned<u16>>,
    /// Answer `status` while the request's `x-envoy-attempt-count` is at most `count`.
    pub fail_attempts: Option<Spanned<FailAttemptsDef>>,
    /// Headers the app adds to every response.
    pub response_headers: Option<Spanned<BTreeMap<String, String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailAttemptsDef {
    pub count: u32,
    pub status: u16,
}

/// Exactly one of the fields; none = 1 ms constant.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyDef {
    pub constant: Option<Dur>,
    /// `[min, max]`, uniform.
    pub uniform: Option<Spanned<Vec<IstioDuration>>>,
    /// Exponential with this mean.
    pub exponential: Option<Dur>,
    pub lognormal: Option<Spanned<LogNormalDef>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogNormalDef {
    pub median: IstioDuration,
    pub p99: IstioDuration,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyCostDef {
    pub outbound: Option<LatencyDef>,
    pub inbound: Option<LatencyDef>,
    pub tls_handshake: Option<LatencyDef>,
}

/// A latency distribution: an app's answer time, a sidecar's processing cost.
#[derive(Clone, Debug, PartialEq)]
pub enum Latency {
    Constant(Duration),
    Uniform(Duration, Duration),
    Exponential(Duration),
    /// Log-normal from median and p99.
    LogNormal {
        median: Duration,
        p99: Duration,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct AppModel {
    pub latency: Latency,
    pub error_rate_ppm: u32,
    pub error_status: u16,
    /// `(count, status)`: fail tries 1..=count with `status`.
    pub fail_attempts: Option<(u32, u16)>,
    /// Added to every response.
    pub response_headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

#[derive(Clone, Debug)]
pub struct PlannedPod {
    pub name: String,
    pub service: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub node: usize,
    pub app_port: u16,
    pub inbound_port: u16,
    pub outbound_port: u16,
    pub app: AppModel,
    /// The inbound local rate limit its service's `rate_limit` gives the pod's sidecar
    /// (in the sidecar's bootstrap config). An EnvoyFilter's reaches the sidecar with the
    /// control plane's config, not through the plan.
    pub bootstrap_rate_limit: Option<LocalRateLimitConfig>,
    pub service_account: String,
    /// Whether the pod runs a sidecar.
    pub sidecar: bool,
    /// A bad identity its sidecar holds instead of a mesh certificate.
    pub bad_identity: Option<BadIdentity>,
    /// False for a pod only a later `scale` step starts: at first it neither runs nor
    /// has a published endpoint.
    pub running_at_start: bool,
    /// What its service's port speaks: the app is an HTTP server or a TCP echo server.
    pub protocol: AppProtocol,
}

impl PlannedPod {
    /// The pod's workload (its Deployment): the name without the replica index.
    pub fn workload(&self) -> &str {
        self.name.rsplit_once('-').map_or(&self.name, |(w, _)| w)
    }
}

/// The three distributions of a scenario's `proxy_cost`.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyCost {
    pub outbound: Latency,
    pub inbound: Latency,
    pub tls_handshake: Latency,
}

impl Default for ProxyCost {
    /// Istio's published figure for its sidecars (1.9–1.14, 1000 rps over 16
    /// connections, telemetry on): the two proxies of a call add 2.65 ms to the p90
    /// latency. Split evenly over the two hops as a log-normal with median 0.7 ms and
    /// p99 2.8 ms, the sum of the two draws has a p90 of about 2.6 ms. A TLS 1.3
    /// handshake (ECDHE + signature checks on both ends) costs a median 1 ms, p99 3 ms.
    fn default() -> ProxyCost {
        let ms = |m: f64| Duration::from_secs_f64(m / 1e3);
        ProxyCost {
            outbound: Latency::LogNormal { median: ms(0.7), p99: ms(2.8) },
            inbound: Latency::LogNormal { median: ms(0.7), p99: ms(2.8) },
            tls_handshake: Latency::LogNormal { median: ms(1.0), p99: ms(3.0) },
        }
    }
}

/// Response headers an app sets itself (or that belong to the connection).
pub(super) const RESERVED_RESPONSE_HEADERS: &[&str] =
    &["x-meshsim-pod", "content-length", "transfer-encoding", "connection", "keep-alive", "te", "upgrade"];
/// The first pod's app port; each pod takes three ports (app, inbound, outbound).
const FIRST_PORT: u16 = 10_000;
const MAX_PODS: usize = 5_000;

/// The ClusterIP of the service declared `index`-th (from 0): `10.96.0.0/16` as a
/// Kubernetes service CIDR, skipping the network address (`10.96.0.1`, `10.96.0.2`, …).
fn cluster_ip(index: usize) -> Ipv4Addr {
    let n = u32::try_from(index + 1).expect("a scenario has few services");
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + n)
}

/// The pods and where they are: what every later section refers to by name.
pub(super) struct Placement {
    pub(super) registry: Registry,
    pub(super) pods: Vec<PlannedPod>,
    pub(super) nodes: Vec<String>,
    /// Service name → its pods (indices into `pods`).
    pub(super) service_pods: BTreeMap<String, Vec<usize>>,
    /// Pod name → its index.
    pub(super) pod_index: BTreeMap<String, usize>,
    /// Deployment (`<service>-<group>`) → its pods in index order and its replicas at start.
    pub(super) deployments: BTreeMap<String, (Vec<usize>, u32)>,
}

/// What the pod groups of one service share.
struct GroupOf<'a> {
    def: &'a ServiceDef,
    namespace: String,
    protocol: AppProtocol,
    rate_limit: Option<LocalRateLimitConfig>,
    mesh: bool,
    scaled_max: &'a BTreeMap<&'a str, u32>,
}

impl Builder {
    /// The services and their pods, placed on `node_count` nodes (default: one per pod,
    /// 1 to 4). `scaled_max`: the most replicas a scale step asks of a deployment, whose
    /// pods are all planned up front.
    pub(super) fn services(
        &mut self,
        defs: &[ServiceDef],
        node_count: &Option<Spanned<u32>>,
        scaled_max: &BTreeMap<&str, u32>,
        mesh: bool,
    ) -> Placement {
        let mut registry = Registry::default();
        let mut pods: Vec<PlannedPod> = Vec::new();
        let mut service_pods: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        // Deployment (`<service>-<group>`) → its pods in index order and its replicas at start.
        let mut deployments: BTreeMap<String, (Vec<usize>, u32)> = BTreeMap::new();
        if defs.is_empty() {
            self.err_in_file(code::SCENARIO, "services", "a scenario needs at least one service");
        }
        for (si, s) in defs.iter().enumerate() {
            let f = format!("services[{si}]");
            if !is_dns_label(&s.name.value) {
                self.err(
                    &s.name,
                    &format!("{f}.name"),
                    format!("{:?} is not a DNS label (lower-case letters, digits, '-')", s.name.value),
                );
            }
            if service_pods.contains_key(&s.name.value) {
                self.err(&s.name, &format!("{f}.name"), format!("service {:?} is defined twice", s.name.value));
                continue;
            }
            let namespace = s.namespace.as_ref().map(|n| n.value.clone()).unwrap_or_else(|| "default".into());
            let port = s.port.as_ref().map(|p| p.value).unwrap_or(80);
            if let Some(p) = &s.port
                && p.value == 0
            {
                self.err(p, &format!("{f}.port"), "port must be between 1 and 65535");
            }
            let protocol = match &s.app_protocol {
                None => AppProtocol::Http,
                Some(p) if p.value == "http" => AppProtocol::Http,
                Some(p) if p.value == "tcp" => AppProtocol::Tcp,
                Some(p) => {
                    self.err(
                        p,
                        &format!("{f}.app_protocol"),
                        format!("app_protocol {:?} is not one of http, tcp", p.value),
                    );
                    AppProtocol::Http
                }
            };
            registry.add_service(Service {
                name: s.name.value.clone(),
                namespace: namespace.clone(),
                port,
                protocol,
                cluster_ip: Some(cluster_ip(si)),
            });
            let mut mine = Vec::new();
            if protocol == AppProtocol::Tcp
                && let Some(r) = &s.rate_limit
            {
                self.err(
                    r,
                    &format!("{f}.rate_limit"),
                    "the local rate limit is an HTTP filter (Envoy's local_ratelimit): a tcp service cannot have one",
                );
            }
            let rate_limit = s.rate_limit.as_ref().and_then(|r| self.rate_limit(r, &f));
            let svc = GroupOf { def: s, namespace, protocol, rate_limit, mesh, scaled_max };
            let mut groups = BTreeSet::new();
            if s.pods.is_empty() {
                self.err(&s.name, &format!("{f}.pods"), "a service needs at least one pod group");
            }
            for (gi, g) in s.pods.iter().enumerate() {
                let gf = format!("{f}.pods[{gi}]");
                if !is_dns_label(&g.name.value) {
                    self.err(&g.name, &format!("{gf}.name"), format!("{:?} is not a DNS label", g.name.value));
                }
                if !groups.insert(g.name.value.clone()) {
                    self.err(&g.name, &format!("{gf}.name"), format!("pod group {:?} is defined twice", g.name.value));
                }
                if g.replicas.value == 0 {
                    self.err(&g.replicas, &format!("{gf}.replicas"), "replicas must be at least 1");
                }
                let (deployment, group_pods) = self.pod_group(g, &gf, &svc, &mut pods);
                mine.extend(&group_pods);
                deployments.insert(deployment, (group_pods, g.replicas.value));
            }
            service_pods.insert(s.name.value.clone(), mine);
        }
        let (nodes, pod_index) = self.place(&mut pods, node_count, &mut registry);
        Placement { registry, pods, nodes, service_pods, pod_index, deployments }
    }

    /// The pods of group `g` (at field `gf`) of a service, planned up to the most replicas
    /// a scale step asks for: its deployment's name and the pods' indices.
    fn pod_group(
        &mut self,
        g: &PodGroupDef,
        gf: &str,
        svc: &GroupOf<'_>,
        pods: &mut Vec<PlannedPod>,
    ) -> (String, Vec<usize>) {
        let app = self.app(&g.app, gf);
        if svc.protocol == AppProtocol::Tcp {
            self.http_only_app_fields(&g.app, gf);
        }
        let sidecar = svc.mesh && g.sidecar.as_ref().is_none_or(|s| s.value);
        let service_account = match (&g.service_account, &svc.def.service_account) {
            (Some(sa), _) => {
                if !is_dns_subdomain(&sa.value) {
                    self.err(
                        sa,
                        &format!("{gf}.service_account"),
                        format!("{:?} is not a valid service account name (a DNS subdomain)", sa.value),
                    );
                }
                sa.value.clone()
            }
            (None, Some(sa)) => sa.clone(),
            (None, None) => "default".to_string(),
        };
        let bad_identity = g.bad_identity.as_ref().and_then(|b| {
            let parsed = BadIdentity::parse(&b.value);
            if parsed.is_none() {
                self.err(
                    b,
                    &format!("{gf}.bad_identity"),
                    format!("{:?} is not one of {}", b.value, BadIdentity::NAMES.join(", ")),
                );
            } else if !sidecar && !self.baseline {
                self.err(b, &format!("{gf}.bad_identity"), "a pod without a sidecar has no identity to spoil");
            }
            parsed
        });
        let mut labels = g.labels.clone();
        labels.entry("app".into()).or_insert_with(|| svc.def.name.value.clone());
        let deployment = format!("{}-{}", svc.def.name.value, g.name.value);
        let planned = svc.scaled_max.get(deployment.as_str()).map_or(g.replicas.value, |&m| m.max(g.replicas.value));
        let mut group_pods = Vec::new();
        for i in 0..planned {
            if pods.len() >= MAX_PODS {
                self.err(
                    &g.replicas,
                    &format!("{gf}.replicas"),
                    format!("a scenario may have at most {MAX_PODS} pods"),
                );
                break;
            }
            let k = pods.len() as u16;
            group_pods.push(pods.len());
            pods.push(PlannedPod {
                name: format!("{}-{}-{i}", svc.def.name.value, g.name.value),
                service: svc.def.name.value.clone(),
                namespace: svc.namespace.clone(),
                labels: labels.clone(),
                node: 0,
                app_port: FIRST_PORT + 3 * k,
                inbound_port: FIRST_PORT + 3 * k + 1,
                outbound_port: FIRST_PORT + 3 * k + 2,
                app: app.clone(),
                bootstrap_rate_limit: svc.rate_limit.clone(),
                service_account: service_account.clone(),
                sidecar,
                bad_identity,
                running_at_start: i < g.replicas.value,
                protocol: svc.protocol,
            });
        }
        (deployment, group_pods)
    }

    /// Deals the pods round-robin over the nodes, in declaration order, and registers
    /// them: the node names and each pod's index by name.
    fn place(
        &mut self,
        pods: &mut [PlannedPod],
        node_count: &Option<Spanned<u32>>,
        registry: &mut Registry,
    ) -> (Vec<String>, BTreeMap<String, usize>) {
        let node_count = match node_count {
            Some(n) if n.value == 0 || n.value > 64 => {
                self.err(n, "nodes", "nodes must be between 1 and 64 (turmoil cost grows with hosts²)");
                1
            }
            Some(n) => n.value as usize,
            None => pods.len().clamp(1, 4),
        };
        let nodes: Vec<String> = (0..node_count).map(|i| format!("node-{i}")).collect();
        let mut pod_index = BTreeMap::new();
        for (i, p) in pods.iter_mut().enumerate() {
            p.node = i % node_count;
            pod_index.insert(p.name.clone(), i);
        }
        for p in pods.iter() {
            registry.add_pod(Pod {
                name: p.name.clone(),
                namespace: p.namespace.clone(),
                service: p.service.clone(),
                labels: p.labels.clone(),
                service_account: p.service_account.clone(),
                host: nodes[p.node].clone(),
                inbound_port: if p.sidecar { p.inbound_port } else { p.app_port },
                sidecar: p.sidecar,
            });
        }
        (nodes, pod_index)
    }

    pub(super) fn proxy_cost(&mut self, p: &ProxyCostDef) -> ProxyCost {
        let d = ProxyCost::default();
        let mut get = |l: &Option<LatencyDef>, f: &str, default: Latency| match l {
            Some(l) => self.latency(l, f, default),
            None => default,
        };
        ProxyCost {
            outbound: get(&p.outbound, "proxy_cost.outbound", d.outbound),
            inbound: get(&p.inbound, "proxy_cost.inbound", d.inbound),
            tls_handshake: get(&p.tls_handshake, "proxy_cost.tls_handshake", d.tls_handshake),
        }
    }

    /// The latency distribution written at field `f`; `default` when none is given.
    fn latency(&mut self, l: &LatencyDef, f: &str, default: Latency) -> Latency {
        let set = [l.constant.is_some(), l.uniform.is_some(), l.exponential.is_some(), l.lognormal.is_some()]
            .iter()
            .filter(|&&x| x)
            .count();
        let latency = if let Some(c) = &l.constant {
            Latency::Constant(c.value.0)
        } else if let Some(u) = &l.uniform {
            match self.range(u, &format!("{f}.uniform")) {
                Some((a, b)) => Latency::Uniform(a, b),
                None => Latency::Constant(Duration::ZERO),
            }
        } else if let Some(e) = &l.exponential {
            Latency::Exponential(e.value.0)
        } else if let Some(n) = &l.lognormal {
            if n.value.p99 < n.value.median || n.value.median.0.is_zero() {
                self.err(n, &format!("{f}.lognormal"), "lognormal needs 0 < median <= p99");
            }
            Latency::LogNormal { median: n.value.median.0, p99: n.value.p99.0 }
        } else {
            default
        };
        if set > 1 {
            self.err_in_file(code::SCENARIO, f, "latency has exactly one of constant, uniform, exponential, lognormal");
        }
        latency
    }

    /// A pod group of a TCP service: its app is an echo server, so the fields that shape
    /// HTTP responses are errors (`error_rate_ppm` stays: a connection reset).
    fn http_only_app_fields(&mut self, a: &AppDef, f: &str) {
        let why = "applies to HTTP responses: the app of a tcp service echoes bytes (only latency and error_rate_ppm, a reset, apply)";
        if let Some(x) = &a.error_status {
            self.err(x, &format!("{f}.app.error_status"), why);
        }
        if let Some(x) = &a.fail_attempts {
            self.err(x, &format!("{f}.app.fail_attempts"), why);
        }
        if let Some(x) = &a.response_headers {
            self.err(x, &format!("{f}.app.response_headers"), why);
        }
    }

    fn app(&mut self, a: &AppDef, f: &str) -> AppModel {
        let latency =
            self.latency(&a.latency, &format!("{f}.app.latency"), Latency::Constant(Duration::from_millis(1)));
        if let Some(r) = &a.error_rate_ppm
            && r.value > 1_000_000
        {
            self.err(r, &format!("{f}.app.error_rate_ppm"), "error_rate_ppm must be at most 1000000");
        }
        if let Some(s) = &a.error_status
            && !(100..=599).contains(&s.value)
        {
            self.err(s, &format!("{f}.app.error_status"), format!("HTTP status {} is not in range 100-599", s.value));
        }
        AppModel {
            latency,
            error_rate_ppm: a.error_rate_ppm.as_ref().map(|r| r.value).unwrap_or(0),
            error_status: a.error_status.as_ref().map(|s| s.value).unwrap_or(500),
            fail_attempts: a.fail_attempts.as_ref().map(|fa| {
                if !(100..=599).contains(&fa.value.status) {
                    self.err(
                        fa,
                        &format!("{f}.app.fail_attempts.status"),
                        format!("HTTP status {} is not in range 100-599", fa.value.status),
                    );
                }
                (fa.value.count, fa.value.status)
            }),
            response_headers: match &a.response_headers {
                None => Vec::new(),
                Some(h) => self.headers(h, &format!("{f}.app.response_headers"), RESERVED_RESPONSE_HEADERS),
            },
        }
    }

    /// The scenario's rate-limit form into Envoy's filter config, checked by its rules.
    fn rate_limit(&mut self, r: &Spanned<RateLimitDef>, f: &str) -> Option<LocalRateLimitConfig> {
        let d = &r.value;
        let pct = |p: Option<f64>| FractionalPercent {
            numerator: (p.unwrap_or(100.0).clamp(0.0, 100.0) * 10_000.0).round() as u32,
            denominator: Denominator::Million,
        };
        for (name, p) in [("enabled_percent", d.enabled_percent), ("enforced_percent", d.enforced_percent)] {
            if let Some(p) = p
                && !(0.0..=100.0).contains(&p)
            {
                self.err(r, &format!("{f}.rate_limit.{name}"), format!("percentage {p} is out of range 0..100"));
            }
        }
        let mut headers = Vec::new();
        for (k, v) in &d.response_headers_to_add {
            match (http::HeaderName::try_from(k.as_str()), http::HeaderValue::try_from(v.as_str())) {
                (Ok(k), Ok(v)) => headers.push((k, v)),
                _ => {
                    self.err(r, &format!("{f}.rate_limit.response_headers_to_add"), format!("invalid header {k}: {v}"))
                }
            }
        }
        let cfg = LocalRateLimitConfig {
            max_tokens: d.max_tokens,
            tokens_per_fill: d.tokens_per_fill,
            fill_interval: d.fill_interval.0,
            status: d.status,
            filter_enabled: pct(d.enabled_percent),
            filter_enforced: pct(d.enforced_percent),
            response_headers_to_add: headers,
        };
        match LocalRateLimit::new(cfg.clone(), Duration::ZERO) {
            Ok(_) => Some(cfg),
            Err(e) => {
                self.err(r, &format!("{f}.rate_limit"), e);
                None
            }
        }
    }
}

/// A Kubernetes object name (DNS-1123 subdomain): labels joined by dots.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::super::testing::{BASE, errors, plan};
    use super::*;

    #[test]
    fn pods_are_dealt_round_robin_over_the_nodes_with_three_ports_each() {
        let p = plan(&format!("nodes: 2\n{BASE}"));
        let placed: Vec<(&str, usize, u16, u16, u16)> =
            p.pods.iter().map(|p| (p.name.as_str(), p.node, p.app_port, p.inbound_port, p.outbound_port)).collect();
        assert_eq!(
            placed,
            [
                ("frontend-v1-0", 0, 10_000, 10_001, 10_002),
                ("backend-v1-0", 1, 10_003, 10_004, 10_005),
                ("backend-v1-1", 0, 10_006, 10_007, 10_008),
                ("backend-v1-2", 1, 10_009, 10_010, 10_011),
            ]
        );
        assert_eq!(p.nodes, ["node-0", "node-1"]);
    }

    #[test]
    fn without_nodes_there_is_one_per_pod_up_to_four() {
        assert_eq!(plan(BASE).nodes.len(), 4);
        let one_pod = BASE.replace("        replicas: 3\n", "").replace("from: frontend", "from: backend");
        assert_eq!(plan(&one_pod).nodes.len(), 2);
    }

    #[test]
    fn a_pod_group_gets_its_service_label_account_and_default_app() {
        let p = plan(BASE);
        let b = &p.pods[1];
        assert_eq!(b.labels.get("app").map(String::as_str), Some("backend"));
        assert_eq!((b.service_account.as_str(), b.sidecar, b.running_at_start), ("default", true, true));
        assert_eq!(b.app.latency, Latency::Constant(Duration::from_millis(1)));
        assert_eq!((b.app.error_rate_ppm, b.app.error_status, b.app.fail_attempts), (0, 500, None));
    }

    #[test]
    fn a_service_defined_twice_is_reported_at_its_second_name() {
        let text = BASE.replace("workload:", "  - name: backend\n    pods:\n      - name: v2\nworkload:");
        assert_eq!(
            errors(&text),
            "t.yaml:11:11: error [MSIM0002] services[2].name: service \"backend\" is defined twice\n"
        );
    }

    #[test]
    fn two_latency_distributions_at_once_are_refused() {
        let text = BASE.replace("        replicas: 3\n", "        app: {latency: {constant: 1ms, exponential: 2ms}}\n");
        assert!(
            errors(&text).contains(
                "services[1].pods[0].app.latency: latency has exactly one of constant, uniform, exponential, lognormal"
            ),
            "{}",
            errors(&text)
        );
    }

    #[test]
    fn cluster_ips_count_up_from_10_96_0_1() {
        assert_eq!(cluster_ip(0), Ipv4Addr::new(10, 96, 0, 1));
        assert_eq!(cluster_ip(254), Ipv4Addr::new(10, 96, 0, 255));
        assert_eq!(cluster_ip(255), Ipv4Addr::new(10, 96, 1, 0));
    }
}
