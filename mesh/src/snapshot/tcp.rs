//! TCP routes: a TCP service's VirtualService `tcp` section (matches on port, source
//! labels and namespace; weighted destinations), as Istio's
//! [TCPRoute](https://istio.io/latest/docs/reference/config/networking/virtual-service/#TCPRoute)
//! defines it, validated as Istio does the HTTP routes' weights and hosts.
//!
//! Not here: proxying the bytes (`proxy::tcp`), HTTP routes (`route`).

use std::collections::BTreeMap;

use super::Compiler;
use super::cluster::DestinationRules;
use crate::config::diag::code;
use crate::config::istio::{Resource, VirtualServiceSpec};
use crate::config::{Finding, Pos};
use crate::registry::{AppProtocol, qualify};

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

impl Compiler<'_> {
    /// A TCP service's `tcp` routes: matches (port, source labels and namespace) and
    /// weighted destinations, validated as Istio does the HTTP ones' weights and hosts.
    pub(super) fn tcp_routes(
        &mut self,
        file: &str,
        r: &Resource,
        vs: &VirtualServiceSpec,
        drs: &DestinationRules<'_>,
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
}

#[cfg(test)]
mod tests;
