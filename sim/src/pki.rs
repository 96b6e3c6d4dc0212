//! Certificates for a run's sidecars, issued in-process when the world is built: a
//! self-signed mesh root and one Ed25519 workload certificate per pod whose only
//! identity is its SPIFFE URI SAN. Keys come from seeds (rcgen's own key generation is
//! random), so certificates are byte-identical for a seed. Also makes the bad
//! identities a scenario can give a pod (foreign CA, expired, wrong trust domain).
//! Not here: the CA as a network service, CSRs and rotation (`mesh::ca`).

use std::time::Duration;

use mesh::identity::SpiffeId;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ED25519, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Workload certificate lifetime (Istio's default `SECRET_TTL`).
pub const WORKLOAD_TTL: Duration = Duration::from_secs(24 * 3600);
/// Self-signed root lifetime (Istio's default, 10 years).
pub const ROOT_TTL: Duration = Duration::from_secs(3650 * 24 * 3600);

/// The PKCS#8 v1 header of an Ed25519 private key; the 32-byte seed follows.
const ED25519_PKCS8_PREFIX: [u8; 16] =
    [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

/// An Ed25519 key pair derived from `seed`.
pub fn ed25519_key(seed: u64) -> (KeyPair, PrivateKeyDer<'static>) {
    let mut secret = [0u8; 32];
    ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut secret);
    let mut der = ED25519_PKCS8_PREFIX.to_vec();
    der.extend_from_slice(&secret);
    let pkcs8 = PrivatePkcs8KeyDer::from(der);
    let key = KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &PKCS_ED25519).expect("a valid Ed25519 PKCS#8 key");
    (key, PrivateKeyDer::Pkcs8(pkcs8))
}

/// A certificate authority: a self-signed root.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    root: CertificateDer<'static>,
}

impl Authority {
    /// A root named after `org`, valid from `now` for [`ROOT_TTL`], key from `seed`.
    pub fn new(org: &str, seed: u64, now: Duration) -> Authority {
        let (key, _) = ed25519_key(seed);
        let at = |unix: Duration| rcgen::date_time_ymd(1970, 1, 1) + unix;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::OrganizationName, org);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.not_before = at(now.saturating_sub(Duration::from_secs(3600)));
        params.not_after = at(now + ROOT_TTL);
        let root = params.self_signed(&key).expect("root certificate").der().clone();
        Authority { issuer: Issuer::new(params, key), root }
    }

    pub fn root(&self) -> &CertificateDer<'static> {
        &self.root
    }

    /// A workload certificate for the SPIFFE ID `uri`, valid `[not_before, not_after]`,
    /// for the key of `key_seed`; returns the chain (leaf first) and the key.
    pub fn issue(
        &self,
        uri: &str,
        key_seed: u64,
        not_before: Duration,
        not_after: Duration,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let (key, der) = ed25519_key(key_seed);
        let at = |unix: Duration| rcgen::date_time_ymd(1970, 1, 1) + unix;
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(uri.try_into().expect("a SPIFFE URI is an IA5 string"))];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = at(not_before);
        params.not_after = at(not_after);
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer).expect("workload certificate");
        (vec![cert.der().clone()], der)
    }
}

/// What a scenario can give a pod instead of a good mesh identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadIdentity {
    /// Issued by a CA outside the mesh trust bundle.
    ForeignCa,
    /// Expired a day before the run starts.
    Expired,
    /// The right CA, a SPIFFE ID of another trust domain.
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

/// The trust domain a `wrong_trust_domain` pod claims.
pub const FOREIGN_TRUST_DOMAIN: &str = "foreign.example";

/// The certificate chain and key of a pod with identity `id` at time `now`, or none.
pub fn workload_cert(
    mesh: &Authority,
    foreign: &Authority,
    id: &SpiffeId,
    bad: Option<BadIdentity>,
    key_seed: u64,
    now: Duration,
) -> Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let day = Duration::from_secs(24 * 3600);
    let from = now.saturating_sub(Duration::from_secs(60));
    Some(match bad {
        None => mesh.issue(&id.to_string(), key_seed, from, from + WORKLOAD_TTL),
        Some(BadIdentity::ForeignCa) => foreign.issue(&id.to_string(), key_seed, from, from + WORKLOAD_TTL),
        Some(BadIdentity::Expired) => mesh.issue(&id.to_string(), key_seed, now - 2 * day, now - day),
        Some(BadIdentity::WrongTrustDomain) => {
            let other = SpiffeId::in_domain(FOREIGN_TRUST_DOMAIN, &id.namespace, &id.service_account);
            mesh.issue(&other.to_string(), key_seed, from, from + WORKLOAD_TTL)
        }
        Some(BadIdentity::NoCertificate) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_follow_the_seed_and_carry_only_the_spiffe_san() {
        let now = Duration::from_secs(1_800_000_000);
        let ca = Authority::new("cluster.local", 1, now);
        let (a, _) = ca.issue("spiffe://cluster.local/ns/default/sa/web", 2, now, now + WORKLOAD_TTL);
        let (b, _) = Authority::new("cluster.local", 1, now).issue(
            "spiffe://cluster.local/ns/default/sa/web",
            2,
            now,
            now + WORKLOAD_TTL,
        );
        assert_eq!(a, b, "same seeds, same bytes");
        assert_eq!(mesh::identity::spiffe_uris(&a[0]), ["spiffe://cluster.local/ns/default/sa/web"]);
        assert_eq!(mesh::identity::validity(&a[0]), Some((now, now + WORKLOAD_TTL)));
        let (c, _) = ca.issue("spiffe://cluster.local/ns/default/sa/web", 3, now, now + WORKLOAD_TTL);
        assert_ne!(a, c, "another key seed, another certificate");
    }
}
