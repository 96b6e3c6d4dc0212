//! Workload identity: SPIFFE IDs and each sidecar's [`IdentityStore`] (its certificate
//! chain and key, and the mesh trust bundle), swappable at any time.
//!
//! Owns: the SPIFFE ID format (`spiffe://<trustDomain>/ns/<namespace>/sa/<account>`, as
//! [Istio's security concepts](https://istio.io/latest/docs/concepts/security/#istio-identity)
//! write it), reading a certificate's URI SANs and validity, and the store that
//! TLS reads on every handshake. A store is written by the sidecar's CA agent through
//! [`IdentitySink`] (the trait any certificate source writes to) and read by
//! `proxy::tls`; because TLS configs look the material up per handshake, a swap never
//! touches established or pooled connections.
//! Not here: issuing certificates (`ca`), TLS itself (`proxy::tls`).

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

/// A DER-encoded certificate.
pub type Der = Vec<u8>;

/// Where a certificate agent installs what it gets: a chain (leaf first) with its PKCS#8
/// key, and the trust bundle. Both are whole replacements.
pub trait IdentitySink: Send + Sync + 'static {
    fn install(&self, chain: Vec<Der>, key_pkcs8: Vec<u8>) -> Result<(), String>;
    fn set_trust_bundle(&self, roots: Vec<Der>) -> Result<(), String>;
}

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

/// The URI SANs of a DER certificate that start with `spiffe://`, in order; empty when
/// it has none or does not parse.
pub fn spiffe_uris(cert: &[u8]) -> Vec<String> {
    let Ok((_, c)) = x509_parser::parse_x509_certificate(cert) else { return Vec::new() };
    let Ok(Some(san)) = c.subject_alternative_name() else { return Vec::new() };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) if u.starts_with("spiffe://") => Some(u.to_string()),
            _ => None,
        })
        .collect()
}

/// A certificate's validity period as times since the Unix epoch, if it parses.
pub fn validity(cert: &[u8]) -> Option<(Duration, Duration)> {
    let (_, c) = x509_parser::parse_x509_certificate(cert).ok()?;
    let v = c.validity();
    let t = |x: &x509_parser::time::ASN1Time| Duration::from_secs(x.timestamp().max(0) as u64);
    Some((t(&v.not_before), t(&v.not_after)))
}

/// What a store holds at one moment.
#[derive(Debug)]
pub struct Material {
    /// The workload certificate chain (leaf first) and its key; `None` until provisioned.
    pub cert: Option<Arc<CertifiedKey>>,
    /// The leaf's validity (since the Unix epoch), when there is a leaf.
    pub validity: Option<(Duration, Duration)>,
    /// The mesh trust bundle: roots a peer's chain must end in.
    pub roots: Arc<RootCertStore>,
}

/// One sidecar's identity material. Readers take [`IdentityStore::current`] (cheap: an
/// `Arc` clone) per handshake; writers replace the whole material at once.
pub struct IdentityStore {
    id: SpiffeId,
    trust_domain: String,
    provider: Arc<CryptoProvider>,
    material: RwLock<Arc<Material>>,
    /// Whether a certificate was ever installed (waiters: [`IdentityStore::certificate_installed`]).
    installed: watch::Sender<bool>,
}

impl fmt::Debug for IdentityStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityStore").field("id", &self.id).field("trust_domain", &self.trust_domain).finish()
    }
}

impl IdentityStore {
    /// An empty store for the workload `id`, accepting peers of `trust_domain` (the
    /// mesh's), loading keys with `provider` (the sidecar's TLS provider).
    pub fn new(id: SpiffeId, trust_domain: &str, provider: Arc<CryptoProvider>) -> IdentityStore {
        IdentityStore {
            id,
            trust_domain: trust_domain.into(),
            provider,
            material: RwLock::new(Arc::new(Material {
                cert: None,
                validity: None,
                roots: Arc::new(RootCertStore::empty()),
            })),
            installed: watch::Sender::new(false),
        }
    }

    /// Who this workload is meant to be (the certificate in the store may say otherwise
    /// when a scenario gives a pod a bad identity).
    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    /// The mesh trust domain peers must belong to.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn provider(&self) -> &Arc<CryptoProvider> {
        &self.provider
    }

    /// The material now.
    pub fn current(&self) -> Arc<Material> {
        self.material.read().expect("identity lock").clone()
    }

    /// Installs a new workload certificate chain (leaf first) and its private key. New
    /// handshakes use it; established connections keep theirs.
    pub fn install(&self, chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<(), String> {
        let leaf = chain.first().ok_or("an empty certificate chain")?;
        let validity = validity(leaf).ok_or("the leaf certificate does not parse")?;
        let signer = self.provider.key_provider.load_private_key(key).map_err(|e| format!("private key: {e}"))?;
        let cert = Arc::new(CertifiedKey::new(chain, signer));
        {
            let mut m = self.material.write().expect("identity lock");
            *m = Arc::new(Material { cert: Some(cert), validity: Some(validity), roots: m.roots.clone() });
        }
        self.installed.send_replace(true);
        Ok(())
    }

    /// Returns once a certificate is installed (at once if one is): a sidecar's first
    /// handshakes wait for its agent's first certificate, as Envoy's listeners and
    /// clusters wait for their SDS secret.
    pub async fn certificate_installed(&self) {
        let mut rx = self.installed.subscribe();
        // The sender lives in `self`: the wait ends only when the value turns true.
        let _ = rx.wait_for(|has| *has).await;
    }

    /// Replaces the trust bundle (during a root rotation it holds both roots).
    pub fn set_trust_bundle(&self, roots: &[CertificateDer<'static>]) -> Result<(), String> {
        let mut store = RootCertStore::empty();
        for r in roots {
            store.add(r.clone()).map_err(|e| format!("trust bundle root: {e}"))?;
        }
        let mut m = self.material.write().expect("identity lock");
        *m = Arc::new(Material { cert: m.cert.clone(), validity: m.validity, roots: Arc::new(store) });
        Ok(())
    }
}

/// The CA agent installs what it fetched: the next handshakes use it.
impl IdentitySink for IdentityStore {
    fn install(&self, chain: Vec<Der>, key_pkcs8: Vec<u8>) -> Result<(), String> {
        let chain = chain.into_iter().map(CertificateDer::from).collect();
        IdentityStore::install(self, chain, PrivateKeyDer::Pkcs8(key_pkcs8.into()))
    }

    fn set_trust_bundle(&self, roots: Vec<Der>) -> Result<(), String> {
        let roots: Vec<CertificateDer<'static>> = roots.into_iter().map(CertificateDer::from).collect();
        IdentityStore::set_trust_bundle(self, &roots)
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

    fn cert_for(uri: &str) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
        let cert = params.self_signed(&key).unwrap();
        (cert.der().clone(), PrivateKeyDer::try_from(key.serialize_der()).unwrap())
    }

    #[test]
    fn reads_spiffe_uri_sans_of_a_certificate() {
        let (der, _) = cert_for("spiffe://cluster.local/ns/default/sa/web");
        assert_eq!(spiffe_uris(&der), ["spiffe://cluster.local/ns/default/sa/web"]);
        assert!(spiffe_uris(b"not a certificate").is_empty());
    }

    #[test]
    fn installing_swaps_material_without_touching_earlier_readers() {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let store = IdentityStore::new(SpiffeId::new("default", "web"), DEFAULT_TRUST_DOMAIN, provider);
        let empty = store.current();
        assert!(empty.cert.is_none() && empty.roots.is_empty());
        let (der, key) = cert_for("spiffe://cluster.local/ns/default/sa/web");
        store.install(vec![der.clone()], key.clone_key()).unwrap();
        store.set_trust_bundle(std::slice::from_ref(&der)).unwrap();
        let now = store.current();
        assert!(now.cert.is_some() && now.roots.len() == 1 && now.validity.is_some());
        assert!(empty.cert.is_none(), "a reader keeps the material it took");
        assert!(store.install(Vec::new(), key).is_err(), "an empty chain is refused");
    }
}
