//! What one proxy runs: routes per destination service and clusters of endpoints with
//! their policies, compiled from the registry and Istio resources the way istiod
//! translates them for Envoy. Compilation is also validation: every rule broken becomes
//! a [`Finding`], and a snapshot with error findings must never reach a proxy.
//!
//! The [`Snapshot`] is plain data (routes, clusters, endpoints and policies as values),
//! read by the sidecar and by anything else that wants a proxy's view. One module per
//! resource it compiles: `cluster` (DestinationRule), `route` (VirtualService `http`),
//! `tcp` (VirtualService `tcp`), `mtls` (PeerAuthentication), `authorization`
//! (AuthorizationPolicy) and `rate_limit` (EnvoyFilter). This module walks the resources
//! once, in order, and assembles the result; it owns the checks every kind shares (the
//! header, durations, percentages, fields not simulated).
//!
//! Not here: the runtime state of clusters (load, ejections) — see `proxy`.

mod authorization;
mod cluster;
mod mtls;
mod rate_limit;
mod route;
mod tcp;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_saphyr::Spanned;

pub use cluster::{
    Cluster, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MIN_RING_SIZE, Endpoint, HashLb, HashTable, LbPolicy, OutlierConfig,
};
pub use rate_limit::InboundRateLimitFilter;
pub use route::{Action, Mirror, Redirect, Rewrite, Route, WeightedCluster};
pub use tcp::{L4Match, TcpRouteRule};

use crate::config::diag::code;
use crate::config::istio::{MtlsMode, NotSimulated, Resource, Spec};
use crate::config::{Finding, Findings, Pos};
use crate::proxy::authz;
use crate::registry::{AppProtocol, Registry};

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
    let mut drs = cluster::DestinationRules::new();
    let mut vss = route::VirtualServices::new();
    let mut authz_policies = Vec::new();
    let mut peer_authns = Vec::new();
    let mut tagged = 0;
    let mut rate_limits = Vec::new();
    for s in resources {
        let r = s.resource;
        // Findings of the previous resource are about it.
        tagged = c.tag(tagged, None);
        let what = format!("{} {}/{}", r.kind.value, r.namespace(), r.name());
        c.current = Some(what.clone());
        c.check_header(s.file, r);
        match &r.spec {
            Spec::DestinationRule(dr) => c.destination_rule(s.file, r, dr, &what, &mut drs),
            Spec::VirtualService(vs) => c.virtual_service(s.file, r, vs, &what, &mut vss),
            Spec::AuthorizationPolicy(ap) => authz_policies.extend(c.authorization_policy(s.file, r, ap)),
            Spec::EnvoyFilter(ef) => rate_limits.extend(c.envoy_filter(s.file, r, ef, &what)),
            Spec::PeerAuthentication(pa) => {
                c.check_peer_authentication(s.file, pa);
                peer_authns.push((r, &**pa));
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
    snap.inbound_mtls = mtls::inbound_modes(registry, &peer_authns);
    // Per service, in name order: its clusters, then its routes. A route's view of the
    // clusters (is a destination hashed?) is of the clusters compiled so far.
    for (fqdn, svc) in &registry.services {
        for cl in c.service_clusters(fqdn, svc.port, &drs, &snap.inbound_mtls) {
            snap.clusters.insert(cl.name.clone(), Arc::new(cl));
        }
        let routes = c.service_routes(fqdn, svc.port, vss.get(fqdn), &drs, &snap.clusters);
        snap.routes.insert(fqdn.clone(), routes);
        snap.ports.insert(fqdn.clone(), svc.port);
        if svc.protocol == AppProtocol::Tcp {
            if let Some((file, r, vs)) = vss.get(fqdn)
                && !vs.tcp.is_empty()
            {
                let from = c.findings.0.len();
                let rules = c.tcp_routes(file, r, vs, &drs);
                c.tag(from, Some(format!("VirtualService {}/{}", r.namespace(), r.name())));
                snap.tcp_routes.insert(fqdn.clone(), rules);
            }
            snap.tcp_services.insert(fqdn.clone());
            if let Some(ip) = svc.cluster_ip {
                snap.tcp_vips.insert(SocketAddr::from((ip, svc.port)), fqdn.clone());
            }
        }
    }
    snap.authz = authorization::per_pod(registry, &authz_policies);
    (snap, c.findings)
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

#[cfg(test)]
mod tests;
