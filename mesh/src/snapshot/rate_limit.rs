//! Inbound local rate limits: the EnvoyFilters that install Envoy's local rate limit
//! filter, kept with their namespace and selector so each sidecar finds its own
//! ([Istio: local rate limiting](https://istio.io/latest/docs/tasks/policy-enforcement/rate-limit/#local-rate-limit)).
//!
//! Not here: reading the filter out of the EnvoyFilter (`config::envoy_filter`), the token
//! bucket (`proxy::ratelimit`).

use std::collections::BTreeMap;

use super::{Compiler, Snapshot};
use crate::config::Pos;
use crate::config::envoy_filter::{self, EnvoyFilterSpec};
use crate::config::istio::Resource;
use crate::config::ratelimit::LocalRateLimitConfig;
use crate::proxy::authz;

/// An EnvoyFilter's local rate limit and the workloads it selects.
#[derive(Clone, Debug)]
pub struct InboundRateLimitFilter {
    /// `EnvoyFilter ns/name`, for messages.
    pub resource: String,
    pub pos: Pos,
    pub namespace: String,
    pub filter: envoy_filter::InboundRateLimit,
}

/// Whether `f` applies to a workload: same namespace or the root namespace, and a
/// selector (if any) whose labels the workload all has.
fn selects(f: &InboundRateLimitFilter, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
    (f.namespace == namespace || f.namespace == authz::ROOT_NAMESPACE)
        && f.filter.selector.as_ref().is_none_or(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

impl Snapshot {
    /// The EnvoyFilter rate limits that apply to a workload (see [`selects`]), in
    /// resource order.
    pub fn inbound_rate_limits_for<'s>(
        &'s self,
        namespace: &'s str,
        labels: &'s BTreeMap<String, String>,
    ) -> impl Iterator<Item = &'s InboundRateLimitFilter> + 's {
        self.inbound_rate_limits.iter().filter(move |f| selects(f, namespace, labels))
    }

    /// The inbound local rate limit an EnvoyFilter installs in the sidecar of a workload
    /// in `namespace` with `labels`: the first filter selecting it. meshsim runs one local
    /// rate limit per proxy (a scenario whose filters select one pod twice is rejected).
    pub fn inbound_rate_limit_for(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Option<&LocalRateLimitConfig> {
        self.inbound_rate_limits.iter().find(|f| selects(f, namespace, labels)).map(|f| &f.filter.config)
    }
}

impl Compiler<'_> {
    /// The local rate limit `ef` installs, if any (its findings recorded).
    pub(super) fn envoy_filter(
        &mut self,
        file: &str,
        r: &Resource,
        ef: &EnvoyFilterSpec,
        what: &str,
    ) -> Option<InboundRateLimitFilter> {
        let mut found = Vec::new();
        let filter = envoy_filter::compile(file, ef, &mut found);
        self.findings.0.extend(found);
        Some(InboundRateLimitFilter {
            resource: what.to_string(),
            pos: Pos::of(file, &r.kind),
            namespace: r.namespace().to_string(),
            filter: filter?,
        })
    }
}

#[cfg(test)]
mod tests;
