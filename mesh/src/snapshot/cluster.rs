//! Clusters: one per service and one per DestinationRule subset, with the endpoints they
//! select and the policies a DestinationRule gives them (load balancing, consistent
//! hashing, outlier detection, connection pool limits, client TLS), as Istio's
//! [DestinationRule](https://istio.io/latest/docs/reference/config/networking/destination-rule/)
//! defines them; and the rule's validation.
//!
//! Not here: which cluster a request goes to (`route`), the clusters' runtime state
//! (load, ejections, connections: `proxy`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_saphyr::Spanned;

use super::{Compiler, cluster_name};
use crate::config::diag::code;
use crate::config::istio::{
    ClientTlsMode, ConnectionPoolSettings, ConsistentHash, DestinationRuleSpec, MtlsMode, OutlierDetection, Resource,
    SimpleLb, TrafficPolicy,
};
use crate::identity::SpiffeId;
use crate::proxy::hash::HashPolicy;
use crate::proxy::pool::{self, Limits};
use crate::registry::qualify;

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
const DEFAULT_MAGLEV_TABLE_SIZE: u64 = 65537;

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

/// The DestinationRule in effect for each host (FQDN), with the file it came from.
pub(super) type DestinationRules<'a> = BTreeMap<String, (&'a str, &'a Resource, &'a DestinationRuleSpec)>;

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

impl Compiler<'_> {
    /// Checks `dr` and makes it the rule of its host, unless the host is not a service
    /// (IST0174) or already has one (the first wins, as in Istio).
    pub(super) fn destination_rule<'r>(
        &mut self,
        file: &'r str,
        r: &'r Resource,
        dr: &'r DestinationRuleSpec,
        what: &str,
        drs: &mut DestinationRules<'r>,
    ) {
        let host = qualify(&dr.host.value, r.namespace());
        if !self.registry.services.contains_key(&host) {
            self.warning(
                file,
                &dr.host,
                "IST0174",
                "spec.host",
                format!("DestinationRule for non-existent service registry host {:?}: it has no effect", dr.host.value),
            );
            return;
        }
        if let Some((f, prev, _)) = drs.get(&host) {
            self.warning(file, &dr.host, "MSIM0003", "spec.host", format!(
                "{what} is ignored: {host} already has DestinationRule {}/{} ({f}); Istio, too, uses only one per host",
                prev.namespace(), prev.name()
            ));
            return;
        }
        self.check_destination_rule(file, dr);
        drs.insert(host, (file, r, dr));
    }

    /// The clusters of service `fqdn`: the whole service, then each subset of its
    /// DestinationRule (a subset selecting no pod is IST0173).
    pub(super) fn service_clusters(
        &mut self,
        fqdn: &str,
        port: u16,
        drs: &DestinationRules<'_>,
        inbound_mtls: &BTreeMap<String, MtlsMode>,
    ) -> Vec<Cluster> {
        let dr = drs.get(fqdn).map(|(_, _, dr)| *dr);
        let top = dr.and_then(|d| d.traffic_policy.as_ref());
        let all = BTreeMap::new();
        let mut out = vec![self.cluster(fqdn, port, None, &all, top, None, inbound_mtls)];
        for (si, subset) in dr.map(|d| d.subsets.as_slice()).unwrap_or(&[]).iter().enumerate() {
            let cl = self.cluster(
                fqdn,
                port,
                Some(&subset.name.value),
                &subset.labels,
                top,
                subset.traffic_policy.as_ref(),
                inbound_mtls,
            );
            if cl.endpoints.is_empty() {
                let (file, r, _) = drs[fqdn];
                let from = self.findings.0.len();
                self.warning(
                    file,
                    &subset.name,
                    "IST0173",
                    &format!("spec.subsets[{si}].name"),
                    format!(
                        "Subset {:?} in DestinationRule doesn't select any pods of {fqdn}: traffic to it may lead to 503 UH",
                        subset.name.value
                    ),
                );
                self.tag(from, Some(format!("DestinationRule {}/{}", r.namespace(), r.name())));
            }
            out.push(cl);
        }
        out
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
}

#[cfg(test)]
mod tests;
