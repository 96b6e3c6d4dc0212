//! The bad identities a scenario can give a sidecar (`bad_identity`), made with the mesh's
//! own CA code: a certificate from a foreign CA (outside the trust bundle), an expired one
//! from the mesh CA, one of another trust domain from a federated mesh whose root the mesh
//! trusts, or none at all. A pod with a bad identity runs no certificate agent: its
//! material is installed once, at start, and never renewed. Not here: good identities
//! (each pod's agent asks istiod, `world`), checking certificates (`mesh::proxy::tls`).

use std::time::Duration;

use mesh::ca::authority::ROOT_TTL;
use mesh::ca::{Authority, CaOptions, Der, keys};
use mesh::identity::SpiffeId;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyUsagePurpose};

use crate::seed::sub_seed;

/// What a scenario can give a pod instead of a good mesh identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadIdentity {
    /// Issued by a CA outside the mesh trust bundle.
    ForeignCa,
    /// Issued by the mesh CA, expired a day before the run starts.
    Expired,
    /// A SPIFFE ID of another trust domain, from that mesh's CA, whose root the mesh
    /// trusts (federation).
    WrongTrustDomain,
    /// No certificate at all.
    NoCertificate,
}

impl BadIdentity {
    pub const NAMES: [&'static str; 4] = ["foreign_ca", "expired", "wrong_trust_domain", "no_certificate"];

    pub fn parse(s: &str) -> Option<BadIdentity> {
        Some(match s {
            "foreign_ca" => BadIdentity::ForeignCa,
            "expired" => BadIdentity::Expired,
            "wrong_trust_domain" => BadIdentity::WrongTrustDomain,
            "no_certificate" => BadIdentity::NoCertificate,
            _ => return None,
        })
    }
}

/// The trust domain of the federated mesh a `wrong_trust_domain` pod belongs to.
pub const FOREIGN_TRUST_DOMAIN: &str = "foreign.example";

/// A certificate chain (leaf first) and its PKCS#8 key.
pub type Material = (Vec<Der>, Vec<u8>);

/// The CAs outside the mesh, seeded from the run's seed.
pub struct Issuers {
    /// A CA no workload trusts.
    foreign: Authority,
    /// The CA of a federated mesh of another trust domain.
    federated: Authority,
}

impl Issuers {
    pub fn new(seed: u64, now: Duration) -> Issuers {
        let federated_opts = CaOptions { trust_domain: FOREIGN_TRUST_DOMAIN.to_string(), ..CaOptions::default() };
        Issuers {
            foreign: foreign_ca(sub_seed(seed, "ca_foreign", 0), now),
            federated: Authority::self_signed(federated_opts, sub_seed(seed, "ca_federated", 0), now),
        }
    }

    /// The federated mesh's root, for the mesh CA's trust bundle.
    pub fn federated_root(&self) -> Der {
        self.federated.signing_root().clone()
    }

    /// The material of a pod meant to be `id` with identity `bad` at `now` (`None`: no
    /// certificate); `mesh` is the mesh CA, `key_seed` seeds the pod's key.
    pub fn issue(
        &mut self,
        mesh: &mut Authority,
        id: &SpiffeId,
        bad: BadIdentity,
        key_seed: u64,
        now: Duration,
    ) -> Option<Material> {
        let key = keys::ed25519_key(&mut ChaCha8Rng::seed_from_u64(key_seed));
        let day = Duration::from_secs(24 * 3600);
        let issued = match bad {
            BadIdentity::ForeignCa => self.foreign.sign_csr(&keys::csr_der(id, &key), id, None, now),
            BadIdentity::Expired => mesh.sign_csr(&keys::csr_der(id, &key), id, Some(day), now - 2 * day),
            BadIdentity::WrongTrustDomain => {
                let other = SpiffeId::in_domain(FOREIGN_TRUST_DOMAIN, &id.namespace, &id.service_account);
                self.federated.sign_csr(&keys::csr_der(&other, &key), &other, None, now)
            }
            BadIdentity::NoCertificate => return None,
        };
        let issued = issued.expect("the bad identities' CSRs are well formed and within the TTL limit");
        Some((issued.chain, key.serialize_der()))
    }
}

/// A CA of the mesh's own trust domain under a root the mesh does not trust, named
/// `foreign CA` (a root with the mesh root's name would fail as a bad signature, not as
/// an unknown issuer). Plugged in from PEM as a user-supplied root would be.
fn foreign_ca(seed: u64, now: Duration) -> Authority {
    let key = keys::ed25519_key(&mut ChaCha8Rng::seed_from_u64(seed));
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::OrganizationName, "foreign CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = rcgen::date_time_ymd(1970, 1, 1) + now.saturating_sub(Duration::from_secs(3600));
    params.not_after = rcgen::date_time_ymd(1970, 1, 1) + (now + ROOT_TTL);
    let root = params.self_signed(&key).expect("an Ed25519 root serializes").pem();
    Authority::from_pem(CaOptions::default(), seed, &root, &key.serialize_pem(), None, now)
        .expect("a fresh self-signed root is a usable CA")
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh::ca::authority::{not_after, uri_sans, verify_chain};

    #[test]
    fn each_bad_identity_is_bad_in_its_own_way() {
        let now = Duration::from_secs(1_800_000_000);
        let mut mesh = Authority::self_signed(CaOptions::default(), 1, now);
        let mut issuers = Issuers::new(2, now);
        mesh.federate(issuers.federated_root());
        let bundle = mesh.trust_bundle().to_vec();
        let id = SpiffeId::new("default", "web");
        let mut issue = |bad| issuers.issue(&mut mesh, &id, bad, 3, now);
        let (foreign, _) = issue(BadIdentity::ForeignCa).unwrap();
        assert!(verify_chain(&foreign, &bundle, now).is_err(), "a foreign CA is not trusted");
        let (expired, _) = issue(BadIdentity::Expired).unwrap();
        assert!(not_after(&expired[0]).unwrap() < now);
        let (other, _) = issue(BadIdentity::WrongTrustDomain).unwrap();
        verify_chain(&other, &bundle, now).expect("the federated root is trusted");
        assert_eq!(uri_sans(&other[0]).unwrap(), ["spiffe://foreign.example/ns/default/sa/web"]);
        assert_eq!(issue(BadIdentity::NoCertificate), None);
    }
}
