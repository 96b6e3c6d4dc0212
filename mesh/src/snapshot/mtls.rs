//! The inbound mTLS mode of each sidecar, from PeerAuthentication (mesh, namespace and
//! workload policies, port-level modes), as Istio's
//! [PeerAuthentication](https://istio.io/latest/docs/reference/config/security/peer_authentication/)
//! defines it; and its validation.
//!
//! Not here: choosing among the policies (`proxy::peer_authn::resolve`), whether a client
//! originates mTLS (`cluster`'s auto-mTLS), the handshake (`proxy::tls`).

use std::collections::BTreeMap;

use super::Compiler;
use crate::config::diag::code;
use crate::config::istio::{MtlsMode, PeerAuthenticationSpec, Resource};
use crate::proxy::peer_authn;
use crate::registry::Registry;

/// The mode of each sidecar's inbound side on its service port (pod name → mode; never
/// `Unset`); pods without a sidecar are absent.
pub(super) fn inbound_modes(
    registry: &Registry,
    peer_authns: &[(&Resource, &PeerAuthenticationSpec)],
) -> BTreeMap<String, MtlsMode> {
    let policies: Vec<peer_authn::Policy<'_>> = peer_authns
        .iter()
        .map(|(r, spec)| peer_authn::Policy {
            namespace: r.namespace(),
            name: r.name(),
            created: r.metadata.creation_timestamp.as_deref(),
            spec,
        })
        .collect();
    let mut out = BTreeMap::new();
    for pod in registry.pods.values().filter(|p| p.sidecar) {
        let port = registry.services.values().find(|s| s.name == pod.service && s.namespace == pod.namespace);
        let port = port.map(|s| s.port).unwrap_or(0);
        out.insert(pod.name.clone(), peer_authn::resolve(&policies, &pod.namespace, &pod.labels, port));
    }
    out
}

impl Compiler<'_> {
    /// Istio's PeerAuthentication validation.
    pub(super) fn check_peer_authentication(&mut self, file: &str, pa: &PeerAuthenticationSpec) {
        let selects = pa.selector.as_ref().is_some_and(|s| !s.value.match_labels.is_empty());
        if let Some(levels) = &pa.port_level_mtls {
            if !selects {
                self.error(
                    file,
                    levels,
                    code::SCHEMA,
                    "spec.portLevelMtls",
                    "mesh/namespace peer authentication cannot have port level mTLS".into(),
                );
            }
            for port in levels.value.keys() {
                if !(1..=65535).contains(port) {
                    self.error(
                        file,
                        levels,
                        code::SCHEMA,
                        &format!("spec.portLevelMtls[{port}]"),
                        format!("port {port} must be in range 1..65535"),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
