//! Keys and certificate signing requests. Keys are Ed25519 drawn from a caller's RNG (a
//! seeded `ChaCha8Rng` in the simulator, so a run's certificates are byte-identical for a
//! seed; Ed25519 signatures are deterministic, so signing adds no randomness). This module
//! does not decide what a certificate says: the authority does.

use rand::RngCore;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ED25519, SanType};

use crate::identity::SpiffeId;

/// The PKCS#8 v1 (RFC 8410) prefix of an Ed25519 private key: the 32-byte seed follows.
const ED25519_PKCS8_PREFIX: [u8; 16] =
    [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

/// A fresh Ed25519 key pair from 32 bytes of `rng`.
pub fn ed25519_key(rng: &mut impl RngCore) -> KeyPair {
    let mut pkcs8 = ED25519_PKCS8_PREFIX.to_vec();
    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut seed);
    pkcs8.extend_from_slice(&seed);
    KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8.as_slice().into(), &PKCS_ED25519)
        .expect("a 32-byte seed behind the RFC 8410 prefix is a valid Ed25519 PKCS#8 key")
}

/// A DER certificate signing request for `id`, signed by `key`: no subject, the SPIFFE ID
/// as its only subject alternative name (what Istio's agent sends).
pub fn csr_der(id: &SpiffeId, key: &KeyPair) -> Vec<u8> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names =
        vec![SanType::URI(id.to_string().try_into().expect("a SPIFFE ID is ASCII: a valid IA5 string"))];
    params.serialize_request(key).expect("an Ed25519 CSR with one URI SAN serializes").der().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn same_seed_gives_the_same_key_and_csr() {
        let id = SpiffeId::new("default", "sleep");
        let a = ed25519_key(&mut ChaCha8Rng::seed_from_u64(7));
        let b = ed25519_key(&mut ChaCha8Rng::seed_from_u64(7));
        let c = ed25519_key(&mut ChaCha8Rng::seed_from_u64(8));
        assert_eq!(a.serialize_der(), b.serialize_der());
        assert_ne!(a.public_key_raw(), c.public_key_raw());
        assert_eq!(csr_der(&id, &a), csr_der(&id, &b));
    }
}
