//! Authorization: each AuthorizationPolicy compiled and validated
//! (`proxy::authz::compile`), then the policies of each pod chosen once here rather than
//! per request, as Istio's
//! [AuthorizationPolicy](https://istio.io/latest/docs/reference/config/security/authorization-policy/)
//! selects them.
//!
//! Not here: evaluating a request against them (`proxy::authz`).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::Compiler;
use crate::config::istio::{AuthorizationPolicySpec, Resource};
use crate::proxy::authz;
use crate::registry::{Registry, qualify};

impl Compiler<'_> {
    /// `ap` compiled, if it is valid enough to enforce (its findings recorded).
    pub(super) fn authorization_policy(
        &mut self,
        file: &str,
        r: &Resource,
        ap: &AuthorizationPolicySpec,
    ) -> Option<Arc<authz::Policy>> {
        let (policy, findings) = authz::compile(file, r, ap);
        self.findings.0.extend(findings);
        policy.map(Arc::new)
    }
}

/// The policies of each pod that has any, by pod name (absent: every request is allowed).
pub(super) fn per_pod(registry: &Registry, policies: &[Arc<authz::Policy>]) -> BTreeMap<String, Arc<authz::Workload>> {
    let mut out = BTreeMap::new();
    for pod in registry.pods.values() {
        let port = registry.services.get(&qualify(&pod.service, &pod.namespace)).map_or(0, |s| s.port);
        if let Some(w) = authz::Workload::select(policies, &pod.namespace, &pod.labels, port) {
            out.insert(pod.name.clone(), Arc::new(w));
        }
    }
    out
}

#[cfg(test)]
mod tests;
