//! What one proxy runs: routes per destination service and clusters of endpoints with
//! their policies, compiled from the registry and Istio resources the way istiod
//! translates them for Envoy. Compilation is also validation: every rule broken becomes
//! a [`Finding`], and a snapshot with error findings must never reach a proxy.
//!
//! Not here: the runtime state of clusters (load, ejections) — see `proxy`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde_saphyr::Spanned;

use crate::config::diag::code;
use crate::config::istio::{
    DestinationRuleSpec, NotSimulated, OutlierDetection, Resource, SimpleLb, Spec, TrafficPolicy, VirtualServiceSpec,
};
use crate::config::{Finding, Findings, Pos};
use crate::registry::{Registry, qualify};

/// Envoy's connect timeout as Istio's mesh config sets it.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LbPolicy {
    /// Power of two choices on active requests (Envoy's default, Istio's default).
    LeastRequest,
    RoundRobin,
    Random,
}

/// Outlier detection with Istio's defaults applied (MESH_SEMANTICS 3.3).
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
}

#[derive(Clone, Debug)]
pub struct Cluster {
    /// Istio's name: `outbound|<port>|<subset>|<fqdn>`.
    pub name: String,
    pub service: String,
    pub subset: Option<String>,
    pub endpoints: Vec<Endpoint>,
    pub lb: LbPolicy,
    pub outlier: Option<OutlierConfig>,
    pub connect_timeout: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightedCluster {
    pub cluster: String,
    pub weight: u32,
}

#[derive(Clone, Debug)]
pub struct Route {
    /// `<vs namespace>/<vs name>/<route index or name>` or `default` without a VirtualService.
    pub name: String,
    pub clusters: Vec<WeightedCluster>,
    /// Route timeout covering the whole request; `None` = disabled (Istio's default).
    pub timeout: Option<Duration>,
}

#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Ordered routes (first match wins) per destination service FQDN.
    pub routes: BTreeMap<String, Vec<Route>>,
    pub clusters: BTreeMap<String, Arc<Cluster>>,
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
    let mut c = Compiler { registry, findings: Findings::default() };
    let mut drs: BTreeMap<String, (&str, &Resource, &DestinationRuleSpec)> = BTreeMap::new();
    let mut vss: BTreeMap<String, (&str, &Resource, &VirtualServiceSpec)> = BTreeMap::new();
    for s in resources {
        let r = s.resource;
        c.check_header(s.file, r);
        let what = format!("{} {}/{}", r.kind.value, r.namespace(), r.name());
        match &r.spec {
            Spec::DestinationRule(dr) => {
                let host = qualify(&dr.host.value, r.namespace());
                if !registry.services.contains_key(&host) {
                    c.error(
                        s.file,
                        &dr.host,
                        code::NOT_FOUND,
                        "spec.host",
                        format!(
                            "Referenced host not found: {:?} (no service of that name in the scenario)",
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
                c.not_simulated(s.file, "spec.tcp", &vs.tcp);
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
            Spec::Unsupported => {
                c.error(
                    s.file,
                    &r.kind,
                    code::SCHEMA,
                    "kind",
                    format!(
                        "kind {:?} is not supported: meshsim simulates VirtualService and DestinationRule",
                        r.kind.value
                    ),
                );
            }
        }
    }

    let mut snap = Snapshot::default();
    // Clusters: one per service, one per DR subset.
    for (fqdn, svc) in &registry.services {
        let dr = drs.get(fqdn).map(|(_, _, dr)| *dr);
        let top = dr.and_then(|d| d.traffic_policy.as_ref());
        let all = BTreeMap::new();
        let base = c.cluster(fqdn, svc.port, None, &all, top, None);
        snap.clusters.insert(base.name.clone(), Arc::new(base));
        for subset in dr.map(|d| d.subsets.as_slice()).unwrap_or(&[]) {
            let cl = c.cluster(
                fqdn,
                svc.port,
                Some(&subset.name.value),
                &subset.labels,
                top,
                subset.traffic_policy.as_ref(),
            );
            if cl.endpoints.is_empty() {
                let (file, r, _) = drs[fqdn];
                c.warning(
                    file,
                    &subset.name,
                    "IST0173",
                    "spec.subsets.name",
                    format!(
                        "DestinationRule {}/{} subset {:?} selects no pods of {fqdn}: traffic to it would get 503 UH",
                        r.namespace(),
                        r.name(),
                        subset.name.value
                    ),
                );
            }
            snap.clusters.insert(cl.name.clone(), Arc::new(cl));
        }
        // Routes: the VirtualService's, or one default route to the whole service.
        let routes = match vss.get(fqdn) {
            Some((file, r, vs)) => c.routes(file, r, vs, &drs),
            None => vec![Route {
                name: "default".into(),
                clusters: vec![WeightedCluster { cluster: cluster_name(svc.port, None, fqdn), weight: 1 }],
                timeout: None,
            }],
        };
        snap.routes.insert(fqdn.clone(), routes);
    }
    (snap, c.findings)
}

struct Compiler<'a> {
    registry: &'a Registry,
    findings: Findings,
}

impl Compiler<'_> {
    fn error<T>(&mut self, file: &str, at: &Spanned<T>, code: &'static str, field: &str, msg: String) {
        self.findings.push(Finding::error(Pos::of(file, at), code, field, msg));
    }
    fn warning<T>(&mut self, file: &str, at: &Spanned<T>, code: &'static str, field: &str, msg: String) {
        self.findings.push(Finding::warning(Pos::of(file, at), code, field, msg));
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
        const GROUPS: [&str; 3] =
            ["networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"];
        if !matches!(r.spec, Spec::Unsupported) && !GROUPS.contains(&r.api_version.value.as_str()) {
            self.error(
                file,
                &r.api_version,
                code::SCHEMA,
                "apiVersion",
                format!("apiVersion {:?} is not one of {}", r.api_version.value, GROUPS.join(", ")),
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
        if let Some(d) = d
            && d.value.0 < Duration::from_millis(1)
        {
            self.error(file, d, code::SCHEMA, field, "duration must be greater than 1ms".into());
        }
    }

    fn check_policy(&mut self, file: &str, at: &str, p: &TrafficPolicy) {
        if let Some(lb) = &p.load_balancer {
            self.not_simulated(file, &format!("{at}.loadBalancer.consistentHash"), &lb.value.consistent_hash);
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
            self.not_simulated(file, &format!("{at}.connectionPool.http"), &pool.value.http);
            if let Some(tcp) = &pool.value.tcp {
                self.check_duration(file, &format!("{at}.connectionPool.tcp.connectTimeout"), &tcp.connect_timeout);
                self.not_simulated(file, &format!("{at}.connectionPool.tcp.maxConnections"), &tcp.max_connections);
                self.not_simulated(file, &format!("{at}.connectionPool.tcp.tcpKeepalive"), &tcp.tcp_keepalive);
                self.not_simulated(
                    file,
                    &format!("{at}.connectionPool.tcp.maxConnectionDuration"),
                    &tcp.max_connection_duration,
                );
                self.not_simulated(file, &format!("{at}.connectionPool.tcp.idleTimeout"), &tcp.idle_timeout);
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
        self.not_simulated(file, &format!("{at}.tls"), &p.tls);
        self.not_simulated(file, &format!("{at}.portLevelSettings"), &p.port_level_settings);
        self.not_simulated(file, &format!("{at}.tunnel"), &p.tunnel);
        self.not_simulated(file, &format!("{at}.proxyProtocol"), &p.proxy_protocol);
        self.not_simulated(file, &format!("{at}.retryBudget"), &p.retry_budget);
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

    fn cluster(
        &mut self,
        fqdn: &str,
        port: u16,
        subset: Option<&str>,
        labels: &BTreeMap<String, String>,
        top: Option<&TrafficPolicy>,
        own: Option<&TrafficPolicy>,
    ) -> Cluster {
        // A subset's policy replaces whole blocks of the top-level policy; no field merge.
        let lb = own.and_then(|p| p.load_balancer.as_ref()).or(top.and_then(|p| p.load_balancer.as_ref()));
        let pool = own.and_then(|p| p.connection_pool.as_ref()).or(top.and_then(|p| p.connection_pool.as_ref()));
        let od = own.and_then(|p| p.outlier_detection.as_ref()).or(top.and_then(|p| p.outlier_detection.as_ref()));
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
        let endpoints = self
            .registry
            .pods_of(fqdn, labels)
            .map(|p| Endpoint { pod: p.name.clone(), host: p.host.clone(), port: p.inbound_port })
            .collect();
        Cluster {
            name: cluster_name(port, subset, fqdn),
            service: fqdn.to_string(),
            subset: subset.map(str::to_string),
            endpoints,
            lb,
            outlier: od.map(|o| OutlierConfig::from_istio(&o.value)),
            connect_timeout,
        }
    }

    fn routes(
        &mut self,
        file: &str,
        r: &Resource,
        vs: &VirtualServiceSpec,
        drs: &BTreeMap<String, (&str, &Resource, &DestinationRuleSpec)>,
    ) -> Vec<Route> {
        let mut out = Vec::new();
        for (i, http) in vs.http.iter().enumerate() {
            let at = format!("spec.http[{i}]");
            for (field, v) in [
                ("match", &http.match_),
                ("redirect", &http.redirect),
                ("directResponse", &http.direct_response),
                ("delegate", &http.delegate),
                ("rewrite", &http.rewrite),
                ("retries", &http.retries),
                ("fault", &http.fault),
                ("mirror", &http.mirror),
                ("mirrors", &http.mirrors),
                ("mirrorPercentage", &http.mirror_percentage),
                ("mirrorPercent", &http.mirror_percent),
                ("corsPolicy", &http.cors_policy),
                ("headers", &http.headers),
            ] {
                self.not_simulated(file, &format!("{at}.{field}"), v);
            }
            self.check_duration(file, &format!("{at}.timeout"), &http.timeout);
            let mut clusters = Vec::new();
            let mut total: i64 = 0;
            for (j, d) in http.route.iter().enumerate() {
                let dat = format!("{at}.route[{j}]");
                self.not_simulated(file, &format!("{dat}.headers"), &d.headers);
                let weight = d.weight.as_ref().map(|w| w.value).unwrap_or(0);
                if let Some(w) = &d.weight
                    && w.value < 0
                {
                    self.error(file, w, code::SCHEMA, &format!("{dat}.weight"), format!("weight {} < 0", w.value));
                }
                if weight > i64::from(u32::MAX) {
                    self.error(
                        file,
                        d.weight.as_ref().expect("weight set"),
                        code::SCHEMA,
                        &format!("{dat}.weight"),
                        format!("weight {weight} is larger than {}", u32::MAX),
                    );
                }
                total = total.saturating_add(weight.max(0));
                let host = qualify(&d.destination.host.value, r.namespace());
                let Some(svc) = self.registry.services.get(&host) else {
                    self.error(
                        file,
                        &d.destination.host,
                        code::NOT_FOUND,
                        &format!("{dat}.destination.host"),
                        format!("Referenced host not found: {:?}", d.destination.host.value),
                    );
                    continue;
                };
                if let Some(subset) = &d.destination.subset {
                    let known = drs
                        .get(&host)
                        .is_some_and(|(_, _, dr)| dr.subsets.iter().any(|s| s.name.value == subset.value));
                    if !known {
                        self.error(
                            file,
                            subset,
                            code::NOT_FOUND,
                            &format!("{dat}.destination.subset"),
                            format!(
                                "Referenced host+subset in destinationrule not found: \"{}+{}\"",
                                d.destination.host.value, subset.value
                            ),
                        );
                    }
                }
                clusters.push(WeightedCluster {
                    cluster: cluster_name(svc.port, d.destination.subset.as_ref().map(|s| s.value.as_str()), &host),
                    weight: weight.clamp(0, i64::from(u32::MAX)) as u32,
                });
            }
            if http.route.is_empty() {
                self.findings.push(Finding::error(
                    Pos::of(file, &r.kind),
                    code::SCHEMA,
                    at.clone(),
                    "HTTP route or redirect is required",
                ));
            }
            if http.route.len() > 1 && total == 0 {
                let w = http.route[0].weight.as_ref();
                let pos = w.map(|w| Pos::of(file, w)).unwrap_or_else(|| Pos::of(file, &http.route[0].destination.host));
                self.findings.push(Finding::error(
                    pos,
                    code::SCHEMA,
                    format!("{at}.route"),
                    "total destination weight = 0",
                ));
            }
            // Istio: one destination gets all traffic whatever its weight; weight-0 entries drop.
            if clusters.len() == 1 {
                clusters[0].weight = 1;
            } else {
                clusters.retain(|c| c.weight > 0);
            }
            out.push(Route {
                name: http.name.clone().unwrap_or_else(|| format!("{}/{}/{i}", r.namespace(), r.name())),
                clusters,
                timeout: http.timeout.as_ref().map(|t| t.value.0),
            });
        }
        out
    }
}
