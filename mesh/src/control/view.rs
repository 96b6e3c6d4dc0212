//! One proxy's view of the mesh: the part of the config store its sidecar needs, as
//! the control plane pushes it ([`ProxyConfig`]), and how the sidecar turns it into
//! the snapshot it runs ([`ProxyConfig::compile`]).
//!
//! What is trimmed, per proxy (all proxies of one service share one view):
//! - services outside the proxy's scope, with their endpoints and the VirtualServices
//!   and DestinationRules of their hosts. The scope is the service's egress hosts (what
//!   an Istio `Sidecar` resource's `egress.hosts` lists; without one, every service),
//!   closed over where their routes lead: a VirtualService's route and mirror
//!   destinations (and its `tcp` routes' destinations) join the scope, so their clusters
//!   exist;
//! - endpoints of pods that are not ready (crashed, restarting, scaled in);
//! - resource kinds meshsim does not simulate.
//!
//! Not trimmed: the proxy's own pod and service (its AuthorizationPolicies, EnvoyFilters and
//! PeerAuthentications select it by its labels) and every AuthorizationPolicy,
//! EnvoyFilter and PeerAuthentication (a caller's auto-mTLS follows the mode of the
//! endpoints it calls).
//!
//! Unlike Envoy's xDS (compiled clusters and routes), the view carries the Istio
//! resources as written plus the registry slice, and the sidecar compiles them with the
//! same compiler the control plane validated them with. Not here: validation of a
//! change (`super::store`) or the decision to refuse a view (the proxy's client).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::store::StoredResource;
use crate::config::Resource;
use crate::registry::{Pod, Registry, Service};
use crate::snapshot::{self, Action, Snapshot, Sourced};

/// A resource on the wire: the file it came from and its document as written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireResource {
    pub file: String,
    pub doc: serde_json::Value,
}

/// What one proxy receives.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Services in the proxy's scope.
    pub services: Vec<Service>,
    /// Their ready pods.
    pub endpoints: Vec<Pod>,
    /// Istio resources configuring them, in store order.
    pub resources: Vec<WireResource>,
}

/// A computed view and its encoding (shared by every proxy of a service).
#[derive(Debug)]
pub struct View {
    pub config: ProxyConfig,
    /// `config` as JSON, encoded once.
    pub json: String,
}

/// Services reachable from `egress` (all services when `None`), following the compiled
/// routes' destinations and mirrors.
fn scope(compiled: &Snapshot, registry: &Registry, egress: Option<&BTreeSet<String>>) -> BTreeSet<String> {
    let mut todo: Vec<String> = match egress {
        Some(e) => e.iter().cloned().collect(),
        None => registry.services.keys().cloned().collect(),
    };
    let mut seen = BTreeSet::new();
    while let Some(host) = todo.pop() {
        if !registry.services.contains_key(&host) || !seen.insert(host.clone()) {
            continue;
        }
        for rule in compiled.tcp_routes.get(&host).into_iter().flatten() {
            for (c, _) in &rule.clusters {
                if let Some(c) = compiled.clusters.get(c) {
                    todo.push(c.service.clone());
                }
            }
        }
        for route in compiled.routes.get(&host).into_iter().flatten() {
            let mut clusters: Vec<&str> = route.mirror.iter().map(|m| m.cluster.as_str()).collect();
            if let Action::Forward(wcs) = &route.action {
                clusters.extend(wcs.iter().map(|wc| wc.cluster.as_str()));
            }
            for c in clusters {
                if let Some(c) = compiled.clusters.get(c) {
                    todo.push(c.service.clone());
                }
            }
        }
    }
    seen
}

/// The view of a proxy whose service calls `egress`.
pub fn compute(
    registry: &Registry,
    ready: &BTreeSet<String>,
    resources: &[StoredResource],
    compiled: &Snapshot,
    egress: Option<&BTreeSet<String>>,
    own: &Pod,
) -> View {
    let scope = scope(compiled, registry, egress);
    let mut services: Vec<Service> = scope.iter().filter_map(|h| registry.services.get(h).cloned()).collect();
    let endpoints = registry
        .pods
        .values()
        .filter(|p| {
            p.name == own.name
                || (ready.contains(&p.name)
                    && services.iter().any(|s| s.name == p.service && s.namespace == p.namespace))
        })
        .cloned()
        .collect();
    // Its own service too (its port is the one port-level PeerAuthentication names).
    let mine = |s: &Service| s.name == own.service && s.namespace == own.namespace;
    if !services.iter().any(mine) {
        services.extend(registry.services.values().find(|s| mine(s)).cloned());
    }
    let resources = resources
        .iter()
        .filter(|r| r.hosts().is_none_or(|hosts| hosts.iter().any(|h| scope.contains(h))))
        .map(|r| WireResource { file: r.file.clone(), doc: r.doc.clone() })
        .collect();
    let config = ProxyConfig { services, endpoints, resources };
    let json = serde_json::to_string(&config).expect("a view serializes");
    View { config, json }
}

impl ProxyConfig {
    /// Compiles the view into the snapshot a sidecar runs; the error says why it cannot
    /// (a resource that does not parse). Findings are the control plane's business: it
    /// validated the config before pushing it.
    pub fn compile(&self) -> Result<Snapshot, String> {
        let mut registry = Registry::default();
        for s in &self.services {
            registry.add_service(s.clone());
        }
        for p in &self.endpoints {
            registry.add_pod(p.clone());
        }
        let mut parsed: Vec<(String, Resource)> = Vec::with_capacity(self.resources.len());
        for r in &self.resources {
            let resource: Resource = serde_json::from_value(r.doc.clone())
                .map_err(|e| format!("{}: resource does not parse: {e}", r.file))?;
            parsed.push((r.file.clone(), resource));
        }
        let sourced: Vec<Sourced<'_>> = parsed.iter().map(|(f, r)| Sourced { file: f, resource: r }).collect();
        Ok(snapshot::compile(&registry, &sourced).0)
    }
}
