//! PeerAuthentication resolution ([Istio's
//! reference](https://istio.io/latest/docs/reference/config/security/peer_authentication/)): which mTLS mode a workload's
//! inbound side runs on one port.
//!
//! Tiers: mesh (root namespace `istio-system`, no selector), namespace (the workload's
//! namespace, no selector), workload (the workload's namespace, a selector matching its
//! labels; selector policies in the root namespace are ignored). Per tier the oldest
//! policy (creationTimestamp, then name and namespace, as istiod sorts) is the only one
//! used. Applied mesh → namespace → workload, `UNSET` inheriting the tier above; a
//! port-level mode of the workload policy overrides on its port; nothing at all means
//! PERMISSIVE. Owns only this decision: validation is in `snapshot`, the runtime in
//! `proxy::tls`.

use std::collections::BTreeMap;

use crate::config::istio::{MtlsMode, PeerAuthenticationSpec};

/// Istio's root namespace: mesh-wide policies live there.
pub const ROOT_NAMESPACE: &str = "istio-system";

/// One PeerAuthentication as resolution sees it.
#[derive(Clone, Copy, Debug)]
pub struct Policy<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    /// `metadata.creationTimestamp` (RFC 3339); absent sorts first.
    pub created: Option<&'a str>,
    pub spec: &'a PeerAuthenticationSpec,
}

impl Policy<'_> {
    /// Whether the policy has a (non-empty) selector.
    fn selects(&self) -> bool {
        self.spec.selector.as_ref().is_some_and(|s| !s.value.match_labels.is_empty())
    }

    fn mode(&self) -> MtlsMode {
        self.spec.mtls.as_ref().map(|m| m.value.mode()).unwrap_or(MtlsMode::Unset)
    }

    fn age_key(&self) -> (Option<&str>, &str, &str) {
        (self.created, self.name, self.namespace)
    }
}

/// The oldest of `policies` that `keep` keeps.
fn oldest<'p, 'a>(policies: &'p [Policy<'a>], keep: impl Fn(&Policy<'a>) -> bool) -> Option<&'p Policy<'a>> {
    policies.iter().filter(|p| keep(p)).min_by(|a, b| a.age_key().cmp(&b.age_key()))
}

/// The effective mode (never `Unset`) of a workload in `namespace` with `labels` on
/// workload port `port`.
pub fn resolve(policies: &[Policy<'_>], namespace: &str, labels: &BTreeMap<String, String>, port: u16) -> MtlsMode {
    let mut mode = MtlsMode::Permissive;
    let mut apply = |m: MtlsMode| {
        if m != MtlsMode::Unset {
            mode = m;
        }
    };
    if let Some(p) = oldest(policies, |p| p.namespace == ROOT_NAMESPACE && !p.selects()) {
        apply(p.mode());
    }
    if let Some(p) = oldest(policies, |p| p.namespace == namespace && !p.selects()) {
        apply(p.mode());
    }
    let workload = oldest(policies, |p| {
        p.namespace == namespace
            && namespace != ROOT_NAMESPACE
            && p.spec.selector.as_ref().is_some_and(|s| !s.value.match_labels.is_empty() && s.value.matches(labels))
    });
    if let Some(p) = workload {
        apply(p.mode());
        if let Some(levels) = &p.spec.port_level_mtls
            && let Some(m) = levels.value.get(&u32::from(port))
        {
            apply(m.mode());
        }
    }
    mode
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::istio::{PeerMtls, WorkloadSelector};
    use serde_saphyr::{Location, Spanned};

    fn s<T>(v: T) -> Spanned<T> {
        Spanned::new(v, Location::UNKNOWN, Location::UNKNOWN)
    }

    fn spec(mode: MtlsMode, selector: &[(&str, &str)], ports: &[(u32, MtlsMode)]) -> PeerAuthenticationSpec {
        PeerAuthenticationSpec {
            selector: (!selector.is_empty()).then(|| {
                s(WorkloadSelector {
                    match_labels: selector.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                })
            }),
            mtls: Some(s(PeerMtls { mode: Some(s(mode)) })),
            port_level_mtls: (!ports.is_empty())
                .then(|| s(ports.iter().map(|&(p, m)| (p, PeerMtls { mode: Some(s(m)) })).collect())),
        }
    }

    fn labels(app: &str) -> BTreeMap<String, String> {
        [("app".to_string(), app.to_string())].into()
    }

    fn p<'a>(ns: &'a str, name: &'a str, created: &'a str, spec: &'a PeerAuthenticationSpec) -> Policy<'a> {
        Policy { namespace: ns, name, created: Some(created), spec }
    }

    #[test]
    fn nothing_at_all_is_permissive() {
        assert_eq!(resolve(&[], "default", &labels("web"), 80), MtlsMode::Permissive);
    }

    #[test]
    fn mesh_then_namespace_then_workload_with_unset_inheriting() {
        let mesh = spec(MtlsMode::Strict, &[], &[]);
        let ns_unset = spec(MtlsMode::Unset, &[], &[]);
        let wl_disable = spec(MtlsMode::Disable, &[("app", "web")], &[]);
        let t = "2024-01-01T00:00:00Z";
        let all = [p(ROOT_NAMESPACE, "m", t, &mesh), p("default", "n", t, &ns_unset)];
        assert_eq!(resolve(&all, "default", &labels("web"), 80), MtlsMode::Strict, "UNSET inherits mesh");
        let all =
            [p(ROOT_NAMESPACE, "m", t, &mesh), p("default", "n", t, &ns_unset), p("default", "w", t, &wl_disable)];
        assert_eq!(resolve(&all, "default", &labels("web"), 80), MtlsMode::Disable, "workload beats namespace");
        assert_eq!(resolve(&all, "default", &labels("api"), 80), MtlsMode::Strict, "selector does not match");
        assert_eq!(resolve(&all, "other", &labels("web"), 80), MtlsMode::Strict, "another namespace");
    }

    #[test]
    fn the_oldest_policy_of_a_tier_governs() {
        let strict = spec(MtlsMode::Strict, &[], &[]);
        let disable = spec(MtlsMode::Disable, &[], &[]);
        let all =
            [p("default", "b", "2024-02-01T00:00:00Z", &disable), p("default", "a", "2024-03-01T00:00:00Z", &strict)];
        assert_eq!(resolve(&all, "default", &labels("web"), 80), MtlsMode::Disable);
        let all =
            [p("default", "b", "2024-02-01T00:00:00Z", &disable), p("default", "a", "2024-01-01T00:00:00Z", &strict)];
        assert_eq!(resolve(&all, "default", &labels("web"), 80), MtlsMode::Strict);
        let all =
            [p("default", "b", "2024-01-01T00:00:00Z", &disable), p("default", "a", "2024-01-01T00:00:00Z", &strict)];
        assert_eq!(resolve(&all, "default", &labels("web"), 80), MtlsMode::Strict, "same time: by name");
    }

    #[test]
    fn port_level_mode_overrides_only_its_port_and_unset_inherits() {
        let wl = spec(MtlsMode::Strict, &[("app", "web")], &[(8080, MtlsMode::Disable), (9090, MtlsMode::Unset)]);
        let t = "2024-01-01T00:00:00Z";
        let all = [p("default", "w", t, &wl)];
        assert_eq!(resolve(&all, "default", &labels("web"), 8080), MtlsMode::Disable);
        assert_eq!(resolve(&all, "default", &labels("web"), 9090), MtlsMode::Strict);
        assert_eq!(resolve(&all, "default", &labels("web"), 80), MtlsMode::Strict);
    }

    #[test]
    fn selector_policies_in_the_root_namespace_are_ignored() {
        let wl = spec(MtlsMode::Strict, &[("app", "web")], &[]);
        let all = [p(ROOT_NAMESPACE, "w", "2024-01-01T00:00:00Z", &wl)];
        assert_eq!(resolve(&all, "default", &labels("web"), 80), MtlsMode::Permissive);
        assert_eq!(resolve(&all, ROOT_NAMESPACE, &labels("web"), 80), MtlsMode::Permissive);
    }
}
