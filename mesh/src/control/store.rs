//! The control plane's config store: the Istio resources (in the order they were first
//! applied, which decides which of two VirtualServices for one host wins, as Istio's
//! creation time does), the service registry with each pod's readiness, the services'
//! egress scopes, and the version that moves on every accepted change.
//!
//! Every change is validated with the snapshot compiler against the whole registry
//! before it is accepted: a change with an error finding is rejected and changes
//! nothing, so invalid config never reaches a proxy. Not here: computing one proxy's
//! view ([`super::view`]) or pushing it ([`super::ControlPlane`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use super::view::{self, View};
use crate::config::istio::{Resource, Spec};
use crate::config::{Finding, Findings, Pos};
use crate::registry::{Registry, qualify};
use crate::snapshot::{self, Snapshot, Sourced};

/// A resource as the store keeps it: where it came from, its parsed form (for
/// validation) and its document as written (what proxies receive).
#[derive(Clone, Debug)]
pub struct StoredResource {
    pub file: String,
    pub resource: Resource,
    pub doc: serde_json::Value,
}

/// Identifies a resource: kind, namespace, name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ResourceKey {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

impl StoredResource {
    pub fn key(&self) -> ResourceKey {
        ResourceKey {
            kind: self.resource.kind.value.clone(),
            namespace: self.resource.namespace().to_string(),
            name: self.resource.name().to_string(),
        }
    }

    /// FQDNs of the hosts the resource configures (a DestinationRule's host, a
    /// VirtualService's hosts); `None` for a resource that selects workloads instead
    /// (AuthorizationPolicy, EnvoyFilter, PeerAuthentication).
    pub fn hosts(&self) -> Option<Vec<String>> {
        let ns = self.resource.namespace();
        match &self.resource.spec {
            Spec::DestinationRule(dr) => Some(vec![qualify(&dr.host.value, ns)]),
            Spec::VirtualService(vs) => Some(vs.hosts.iter().map(|h| qualify(&h.value, ns)).collect()),
            Spec::AuthorizationPolicy(_) | Spec::EnvoyFilter(_) | Spec::PeerAuthentication(_) => None,
            Spec::Unsupported => Some(Vec::new()),
        }
    }
}

/// Parses a multi-document YAML text of Istio resources into stored resources (each
/// with its document as written).
pub fn parse(file: &str, text: &str) -> Result<Vec<StoredResource>, Box<Finding>> {
    let resources = crate::config::parse_resources(file, text)?;
    let docs: Vec<Option<serde_json::Value>> = serde_saphyr::from_multiple(text)
        .map_err(|e| Box::new(crate::config::diag::from_yaml_error(file, text, &e)))?;
    let docs: Vec<serde_json::Value> = docs.into_iter().flatten().filter(|d| !d.is_null()).collect();
    if docs.len() != resources.len() {
        return Err(Box::new(Finding::error(
            Pos::file(file),
            crate::config::diag::code::SCHEMA,
            "",
            "the resources cannot be read as plain documents (keys must be strings)",
        )));
    }
    Ok(resources
        .into_iter()
        .zip(docs)
        .map(|(resource, doc)| StoredResource { file: file.to_string(), resource, doc })
        .collect())
}

/// One accepted change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// The version the change created.
    pub version: u64,
}

struct State {
    version: u64,
    resources: Vec<StoredResource>,
    registry: Registry,
    /// Pods whose endpoints are published (Kubernetes' ready endpoints).
    ready: BTreeSet<String>,
    /// Service FQDN → the services its proxies call; a service without an entry sees all.
    egress: BTreeMap<String, BTreeSet<String>>,
    /// The whole mesh compiled at `version` (validation, and the routes a view follows).
    compiled: Arc<Snapshot>,
    /// Views computed at `version`, per pod.
    views: BTreeMap<String, Arc<View>>,
}

/// The store, shared by whoever changes config (an API server's clients) and the
/// control plane that watches it.
pub struct Store {
    suppressed: Suppressed,
    state: Mutex<State>,
    changes: watch::Sender<u64>,
}

/// Which error findings do not block a change (`istioctl analyze --suppress` rules: the
/// analyzer flags them, the cluster accepts the resource).
pub type Suppressed = Box<dyn Fn(&Finding) -> bool + Send + Sync>;

/// Compiles `resources` against `registry`: the snapshot, or every finding when one is an
/// error that is not `suppressed`.
fn validate(
    registry: &Registry,
    resources: &[StoredResource],
    suppressed: &Suppressed,
) -> Result<(Snapshot, Findings), Findings> {
    let sourced: Vec<Sourced<'_>> =
        resources.iter().map(|r| Sourced { file: &r.file, resource: &r.resource }).collect();
    let (snap, findings) = snapshot::compile(registry, &sourced);
    let blocking = findings.0.iter().any(|f| f.level == crate::config::Level::Error && !suppressed(f));
    if blocking { Err(findings) } else { Ok((snap, findings)) }
}

impl Store {
    /// A store at version 1 with every pod of `registry` ready. Fails when the resources
    /// do not validate.
    pub fn new(
        registry: Registry,
        resources: Vec<StoredResource>,
        egress: BTreeMap<String, BTreeSet<String>>,
        suppressed: Suppressed,
    ) -> Result<Store, Findings> {
        let (compiled, _) = validate(&registry, &resources, &suppressed)?;
        let ready = registry.pods.keys().cloned().collect();
        Ok(Store {
            suppressed,
            state: Mutex::new(State {
                version: 1,
                resources,
                registry,
                ready,
                egress,
                compiled: Arc::new(compiled),
                views: BTreeMap::new(),
            }),
            changes: watch::channel(1).0,
        })
    }

    /// The same store with the endpoints of `pods` not published yet (pods that start
    /// later), still at version 1.
    pub fn without_endpoints<'a>(self, pods: impl IntoIterator<Item = &'a str>) -> Store {
        {
            let mut s = self.lock();
            for p in pods {
                s.ready.remove(p);
            }
        }
        self
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("store lock")
    }

    pub fn version(&self) -> u64 {
        self.lock().version
    }

    /// The whole mesh compiled at the current version.
    pub fn compiled(&self) -> Arc<Snapshot> {
        self.lock().compiled.clone()
    }

    /// Wakes on every new version.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Commits a new state: next version, cleared views, watchers woken.
    fn commit(&self, s: &mut State, compiled: Option<Snapshot>) -> Accepted {
        s.version += 1;
        if let Some(c) = compiled {
            s.compiled = Arc::new(c);
        }
        s.views.clear();
        self.changes.send_replace(s.version);
        Accepted { version: s.version }
    }

    /// Creates or replaces resources (a replaced one keeps its place in the order).
    /// Rejected, changing nothing, when the result does not validate.
    pub fn apply(&self, resources: Vec<StoredResource>) -> Result<Accepted, Findings> {
        let mut s = self.lock();
        let mut next = s.resources.clone();
        for r in resources {
            let key = r.key();
            match next.iter_mut().find(|x| x.key() == key) {
                Some(slot) => *slot = r,
                None => next.push(r),
            }
        }
        let (compiled, _) = validate(&s.registry, &next, &self.suppressed)?;
        s.resources = next;
        Ok(self.commit(&mut s, Some(compiled)))
    }

    /// Deletes resources. Rejected when one does not exist or the rest does not validate.
    pub fn delete(&self, keys: &[(ResourceKey, Pos)]) -> Result<Accepted, Findings> {
        let mut s = self.lock();
        let mut next = s.resources.clone();
        let mut findings = Findings::default();
        for (key, pos) in keys {
            match next.iter().position(|x| x.key() == *key) {
                Some(i) => {
                    next.remove(i);
                }
                None => findings.push(Finding::error(
                    pos.clone(),
                    crate::config::diag::code::NOT_FOUND,
                    "delete",
                    format!("{key} does not exist at this point of the run"),
                )),
            }
        }
        if findings.has_errors() {
            return Err(findings);
        }
        let (compiled, _) = validate(&s.registry, &next, &self.suppressed)?;
        s.resources = next;
        Ok(self.commit(&mut s, Some(compiled)))
    }

    /// Publishes (`true`) or withdraws a pod's endpoint. `None` when nothing changes.
    pub fn set_ready(&self, pod: &str, ready: bool) -> Option<Accepted> {
        let mut s = self.lock();
        let changed = if ready { s.ready.insert(pod.to_string()) } else { s.ready.remove(pod) };
        changed.then(|| self.commit(&mut s, None))
    }

    #[cfg(test)]
    fn resources_len(&self) -> usize {
        self.lock().resources.len()
    }

    /// The current version and the view of the proxy of `pod`; `None` for a pod the
    /// registry does not know.
    pub fn view_of(&self, pod: &str) -> Option<(u64, Arc<View>)> {
        let mut s = self.lock();
        let p = s.registry.pods.get(pod)?;
        let service = s.registry.services.values().find(|sv| sv.name == p.service && sv.namespace == p.namespace)?;
        let fqdn = service.fqdn();
        let own = p.clone();
        if let Some(v) = s.views.get(pod) {
            return Some((s.version, v.clone()));
        }
        let v = Arc::new(view::compute(&s.registry, &s.ready, &s.resources, &s.compiled, s.egress.get(&fqdn), &own));
        s.views.insert(pod.to_string(), v.clone());
        Some((s.version, v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::view::ProxyConfig;
    use crate::registry::{Pod, Service};

    fn registry() -> Registry {
        let mut r = Registry::default();
        for s in ["a", "b", "c", "d"] {
            r.add_service(Service::http(s, "default", 80));
        }
        for (i, (svc, n)) in [("a", 0), ("b", 0), ("b", 1), ("c", 0), ("d", 0)].into_iter().enumerate() {
            r.add_pod(Pod {
                name: format!("{svc}-{n}"),
                namespace: "default".into(),
                service: svc.into(),
                labels: BTreeMap::new(),
                service_account: svc.into(),
                host: "node-0".into(),
                inbound_port: 10_001 + 3 * i as u16,
                sidecar: true,
            });
        }
        r
    }

    /// b routes to c; d has a DestinationRule.
    const CONFIG: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: b}
spec:
  hosts: [b]
  http:
  - route:
    - destination: {host: c}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: d}
spec:
  host: d
";

    fn fqdn(s: &str) -> String {
        format!("{s}.default.svc.cluster.local")
    }

    #[test]
    fn a_pushed_peer_authentication_with_port_level_mtls_compiles_at_the_proxy() {
        let pa = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: a}
spec:
  selector: {matchLabels: {app: a}}
  mtls: {mode: STRICT}
  portLevelMtls:
    8080: {mode: DISABLE}
";
        let store =
            Store::new(registry(), parse("pa.yaml", pa).unwrap(), BTreeMap::new(), Box::new(|_| false)).unwrap();
        let (_, view) = store.view_of("b-0").unwrap();
        assert_eq!(view.config.resources.len(), 1, "every PeerAuthentication is in every view");
        let pushed: ProxyConfig = serde_json::from_str(&view.json).unwrap();
        pushed.compile().expect("the JSON form of the port keys parses");
    }

    #[test]
    fn a_pod_that_starts_later_has_no_endpoint_until_published() {
        let egress = BTreeMap::from([(fqdn("a"), BTreeSet::from([fqdn("b")]))]);
        let store = Store::new(registry(), parse("x.yaml", CONFIG).unwrap(), egress, Box::new(|_| false))
            .unwrap()
            .without_endpoints(["b-1"]);
        let endpoints = |store: &Store| -> Vec<String> {
            store.view_of("a-0").unwrap().1.config.endpoints.iter().map(|p| p.name.clone()).collect()
        };
        assert_eq!(store.version(), 1, "the store starts that way: no version for it");
        assert!(!endpoints(&store).contains(&"b-1".to_string()));
        assert_eq!(store.set_ready("b-1", true), Some(Accepted { version: 2 }));
        assert!(endpoints(&store).contains(&"b-1".to_string()));
    }

    #[test]
    fn a_view_holds_the_egress_services_where_their_routes_lead_and_ready_endpoints_only() {
        let egress = BTreeMap::from([(fqdn("a"), BTreeSet::from([fqdn("b")]))]);
        let store = Store::new(registry(), parse("x.yaml", CONFIG).unwrap(), egress, Box::new(|_| false)).unwrap();
        assert_eq!(store.set_ready("b-1", false), Some(Accepted { version: 2 }));
        assert_eq!(store.set_ready("b-1", false), None, "no change, no version");
        let (version, view) = store.view_of("a-0").unwrap();
        assert_eq!(version, 2);
        let services: Vec<&str> = view.config.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(services, ["b", "c", "a"], "c is where b's route leads, a is its own; d is trimmed");
        let pods: Vec<&str> = view.config.endpoints.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(pods, ["a-0", "b-0", "c-0"], "its own pod, and b-1 is not ready");
        assert_eq!(view.config.resources.len(), 1, "d's DestinationRule is trimmed");
        let snap = view.config.compile().unwrap();
        assert!(snap.routes.contains_key(&fqdn("b")) && !snap.routes.contains_key(&fqdn("d")));
        let (_, all) = store.view_of("d-0").unwrap();
        assert_eq!(all.config.services.len(), 4, "a service without an egress scope sees every service");
        assert!(store.view_of("nobody").is_none());
    }

    #[test]
    fn an_invalid_change_is_rejected_and_changes_nothing() {
        let store =
            Store::new(registry(), parse("x.yaml", CONFIG).unwrap(), BTreeMap::new(), Box::new(|_| false)).unwrap();
        let before = store.view_of("a-0").unwrap().1;
        let bad = parse("bad.yaml", &CONFIG.replace("{host: c}", "{host: c, subset: nope}")).unwrap();
        let err = store.apply(bad).unwrap_err();
        assert!(err.0.iter().any(|f| f.code == "IST0101" && f.pos.file == "bad.yaml"), "{err:?}");
        assert_eq!(store.version(), 1);
        assert!(Arc::ptr_eq(&before, &store.view_of("a-0").unwrap().1), "the views are untouched");
        let missing = ResourceKey { kind: "VirtualService".into(), namespace: "default".into(), name: "zz".into() };
        assert!(store.delete(&[(missing, Pos::file("x.yaml"))]).is_err());
        let good = parse("good.yaml", &CONFIG.replace("{host: c}", "{host: d}")).unwrap();
        assert_eq!(store.apply(good).unwrap(), Accepted { version: 2 });
        assert_eq!(store.resources_len(), 2, "replaced in place, not added");
    }
}
