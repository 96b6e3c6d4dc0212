//! Workload identity: SPIFFE IDs (`spiffe://<trustDomain>/ns/<namespace>/sa/<account>`,
//! MESH_SEMANTICS 1), the only identity a workload certificate carries. Not here: issuing
//! certificates (the CA), TLS itself.

use std::fmt;
use std::str::FromStr;

/// The trust domain when none is configured.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// A workload's SPIFFE ID as Istio writes it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

impl SpiffeId {
    /// The identity of service account `sa` in namespace `ns`, in the default trust domain.
    pub fn new(ns: &str, sa: &str) -> SpiffeId {
        SpiffeId::in_domain(DEFAULT_TRUST_DOMAIN, ns, sa)
    }

    pub fn in_domain(trust_domain: &str, ns: &str, sa: &str) -> SpiffeId {
        SpiffeId { trust_domain: trust_domain.into(), namespace: ns.into(), service_account: sa.into() }
    }

    /// The AuthorizationPolicy principal: the ID without `spiffe://`
    /// (`cluster.local/ns/default/sa/sleep`).
    pub fn principal(&self) -> String {
        format!("{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.service_account)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}", self.principal())
    }
}

impl FromStr for SpiffeId {
    type Err = String;
    /// Parses `spiffe://<td>/ns/<ns>/sa/<sa>`; any other shape is an error naming it.
    fn from_str(s: &str) -> Result<SpiffeId, String> {
        let bad =
            || format!("{s:?} is not a SPIFFE ID of the form spiffe://<trust domain>/ns/<namespace>/sa/<account>");
        let rest = s.strip_prefix("spiffe://").ok_or_else(bad)?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] if !td.is_empty() && !ns.is_empty() && !sa.is_empty() => {
                Ok(SpiffeId::in_domain(td, ns, sa))
            }
            _ => Err(bad()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_id_prints_and_parses_as_istio_writes_it() {
        let id = SpiffeId::new("default", "sleep");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/sleep");
        assert_eq!(id.principal(), "cluster.local/ns/default/sa/sleep");
        assert_eq!("spiffe://cluster.local/ns/default/sa/sleep".parse::<SpiffeId>(), Ok(id));
        let other: SpiffeId = "spiffe://evil.example/ns/prod/sa/api".parse().unwrap();
        assert_eq!(other.trust_domain, "evil.example");
    }

    #[test]
    fn malformed_spiffe_ids_are_refused() {
        for bad in [
            "cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/a",
            "spiffe://cluster.local/ns//sa/b",
            "spiffe:///ns/a/sa/b",
            "spiffe://td/namespace/a/sa/b",
            "spiffe://td/ns/a/sa/b/extra",
        ] {
            assert!(bad.parse::<SpiffeId>().is_err(), "{bad} parsed");
        }
    }
}
