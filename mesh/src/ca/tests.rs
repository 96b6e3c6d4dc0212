use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyUsagePurpose};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::authority::{DEFAULT_TTL, MAX_TTL, not_after, uri_sans, verify_chain};
use super::keys::{csr_der, ed25519_key};
use super::*;
use crate::identity::{DEFAULT_TRUST_DOMAIN, IdentitySink, IdentityStore};

const NOW: Duration = Duration::from_secs(1_800_000_000);

fn sleep_id() -> SpiffeId {
    SpiffeId::new("default", "sleep")
}

fn csr_for(id: &SpiffeId, seed: u64) -> Vec<u8> {
    csr_der(id, &ed25519_key(&mut ChaCha8Rng::seed_from_u64(seed)))
}

fn ca() -> Authority {
    Authority::self_signed(CaOptions::default(), 1, NOW)
}

#[test]
fn workload_cert_identity_is_only_the_spiffe_uri_san() {
    let issued = ca().sign_csr(&csr_for(&sleep_id(), 2), &sleep_id(), None, NOW).unwrap();
    let leaf = &issued.chain[0];
    assert_eq!(uri_sans(leaf).unwrap(), vec!["spiffe://cluster.local/ns/default/sa/sleep".to_string()]);
    let (_, cert) = X509Certificate::from_der(leaf).unwrap();
    assert_eq!(cert.subject().iter().count(), 0, "the subject is empty");
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(san.value.general_names.len(), 1, "no other SAN");
    assert!(san.critical, "with an empty subject the SAN is critical (RFC 5280)");
    assert!(!cert.is_ca());
}

#[test]
fn default_ttl_is_24h_and_the_chain_verifies() {
    let mut ca = ca();
    let issued = ca.sign_csr(&csr_for(&sleep_id(), 2), &sleep_id(), None, NOW).unwrap();
    assert_eq!(issued.not_after - issued.not_before, DEFAULT_TTL);
    assert_eq!(not_after(&issued.chain[0]).unwrap(), NOW + DEFAULT_TTL);
    assert_eq!(issued.chain.len(), 1, "a root signs: no intermediates");
    verify_chain(&issued.chain, ca.trust_bundle(), NOW).unwrap();
    verify_chain(&issued.chain, ca.trust_bundle(), NOW + DEFAULT_TTL).unwrap();
    assert!(verify_chain(&issued.chain, ca.trust_bundle(), NOW + DEFAULT_TTL + Duration::from_secs(1)).is_err());
}

#[test]
fn chain_does_not_verify_against_a_foreign_root() {
    let issued = ca().sign_csr(&csr_for(&sleep_id(), 2), &sleep_id(), None, NOW).unwrap();
    let foreign = Authority::self_signed(CaOptions::default(), 99, NOW);
    assert!(verify_chain(&issued.chain, foreign.trust_bundle(), NOW).is_err());
}

#[test]
fn requested_ttl_up_to_90_days_is_granted() {
    let mut ca = ca();
    let issued = ca.sign_csr(&csr_for(&sleep_id(), 2), &sleep_id(), Some(MAX_TTL), NOW).unwrap();
    assert_eq!(issued.not_after - issued.not_before, MAX_TTL);
    let issued = ca.sign_csr(&csr_for(&sleep_id(), 3), &sleep_id(), Some(Duration::from_secs(3600)), NOW).unwrap();
    assert_eq!(issued.not_after - issued.not_before, Duration::from_secs(3600));
}

#[test]
fn ttl_over_90_days_is_refused_with_the_limit_named() {
    let err =
        ca().sign_csr(&csr_for(&sleep_id(), 2), &sleep_id(), Some(MAX_TTL + Duration::from_secs(1)), NOW).unwrap_err();
    assert_eq!(err, CaError::TtlTooLong { requested: MAX_TTL + Duration::from_secs(1), max: MAX_TTL });
    assert_eq!(
        err.to_string(),
        "requested certificate TTL 2160h0m1s is greater than the max allowed TTL 2160h0m0s (MAX_WORKLOAD_CERT_TTL)"
    );
}

#[test]
fn csr_for_another_identity_is_refused() {
    let other = SpiffeId::new("default", "admin");
    let err = ca().sign_csr(&csr_for(&other, 2), &sleep_id(), None, NOW).unwrap_err();
    assert!(matches!(&err, CaError::IdentityMismatch { requested, .. } if requested == &[other.to_string()]), "{err}");
    assert!(
        err.to_string().contains("does not match the caller's credential (spiffe://cluster.local/ns/default/sa/sleep)")
    );
}

#[test]
fn caller_of_another_trust_domain_is_refused() {
    let foreign = SpiffeId::in_domain("evil.local", "default", "sleep");
    let err = ca().sign_csr(&csr_for(&foreign, 2), &foreign, None, NOW).unwrap_err();
    assert!(matches!(err, CaError::IdentityMismatch { .. }), "{err}");
}

#[test]
fn csr_with_a_bad_signature_is_refused() {
    let mut csr = csr_for(&sleep_id(), 2);
    let last = csr.len() - 1;
    csr[last] ^= 1;
    let err = ca().sign_csr(&csr, &sleep_id(), None, NOW).unwrap_err();
    assert!(matches!(err, CaError::BadCsr(_)), "{err}");
    assert!(matches!(ca().sign_csr(b"junk", &sleep_id(), None, NOW), Err(CaError::BadCsr(_))));
}

#[test]
fn same_seed_issues_byte_identical_certificates() {
    let a = ca().sign_csr(&csr_for(&sleep_id(), 2), &sleep_id(), None, NOW).unwrap();
    let b = ca().sign_csr(&csr_for(&sleep_id(), 2), &sleep_id(), None, NOW).unwrap();
    assert_eq!(a, b);
    assert_eq!(ca().trust_bundle(), ca().trust_bundle());
}

/// A root and an intermediate as PEM, the way a user would plug them in.
struct Plugged {
    root_pem: String,
    root_key_pem: String,
    intermediate_pem: String,
    intermediate_key_pem: String,
}

fn plugged() -> Plugged {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let ca_params = |cn: &str| {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        p.not_before = time::OffsetDateTime::from_unix_timestamp(NOW.as_secs() as i64 - 10).unwrap();
        p.not_after = time::OffsetDateTime::from_unix_timestamp(NOW.as_secs() as i64 + 365 * 86400).unwrap();
        p
    };
    let root_key = ed25519_key(&mut rng);
    let root_params = ca_params("user root");
    let root = root_params.self_signed(&root_key).unwrap();
    let int_key = ed25519_key(&mut rng);
    let int = ca_params("user intermediate").signed_by(&int_key, &Issuer::new(root_params, &root_key)).unwrap();
    Plugged {
        root_pem: root.pem(),
        root_key_pem: root_key.serialize_pem(),
        intermediate_pem: int.pem(),
        intermediate_key_pem: int_key.serialize_pem(),
    }
}

#[test]
fn user_supplied_root_signs_workloads() {
    let p = plugged();
    let mut ca = Authority::from_pem(CaOptions::default(), 1, &p.root_pem, &p.root_key_pem, None, NOW).unwrap();
    let issued = ca.sign_csr(&csr_for(&sleep_id(), 2), &sleep_id(), None, NOW).unwrap();
    assert_eq!(issued.chain.len(), 1);
    verify_chain(&issued.chain, ca.trust_bundle(), NOW).unwrap();
}

#[test]
fn user_supplied_intermediate_signs_and_is_sent_in_the_chain() {
    let p = plugged();
    let mut ca = Authority::from_pem(
        CaOptions::default(),
        1,
        &p.root_pem,
        &p.intermediate_key_pem,
        Some(&p.intermediate_pem),
        NOW,
    )
    .unwrap();
    let issued = ca.sign_csr(&csr_for(&sleep_id(), 2), &sleep_id(), None, NOW).unwrap();
    assert_eq!(issued.chain.len(), 2, "leaf and intermediate");
    verify_chain(&issued.chain, ca.trust_bundle(), NOW).unwrap();
    assert!(
        verify_chain(&issued.chain[..1], ca.trust_bundle(), NOW).is_err(),
        "the leaf alone does not reach the root"
    );
}

#[test]
fn user_supplied_key_of_another_certificate_is_refused() {
    let p = plugged();
    let err =
        Authority::from_pem(CaOptions::default(), 1, &p.root_pem, &p.intermediate_key_pem, None, NOW).unwrap_err();
    assert_eq!(err.to_string(), "unusable CA certificate: signing key: does not belong to the signing certificate");
    let err = Authority::from_pem(CaOptions::default(), 1, "nonsense", &p.root_key_pem, None, NOW).unwrap_err();
    assert!(matches!(err, CaError::BadRoot(_)), "{err}");
}

#[test]
fn intermediate_not_signed_by_the_root_is_refused() {
    let p = plugged();
    let other = plugged_other_root();
    let err =
        Authority::from_pem(CaOptions::default(), 1, &other, &p.intermediate_key_pem, Some(&p.intermediate_pem), NOW)
            .unwrap_err();
    assert!(err.to_string().contains("chain to the root"), "{err}");
}

fn plugged_other_root() -> String {
    let key = ed25519_key(&mut ChaCha8Rng::seed_from_u64(77));
    let mut p = CertificateParams::default();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.self_signed(&key).unwrap().pem()
}

#[test]
fn root_rotation_in_order_keeps_every_workload_verifiable() {
    let mut ca = ca();
    let old = ca.sign_csr(&csr_for(&sleep_id(), 2), &sleep_id(), None, NOW).unwrap();
    ca.add_root(NOW).unwrap();
    assert_eq!(ca.trust_bundle().len(), 2);
    let still_old = ca.sign_csr(&csr_for(&sleep_id(), 3), &sleep_id(), None, NOW).unwrap();
    verify_chain(&still_old.chain, &ca.trust_bundle()[..1], NOW).expect("the old root still signs after step 1");
    ca.sign_with_new_root().unwrap();
    let new = ca.sign_csr(&csr_for(&sleep_id(), 4), &sleep_id(), None, NOW).unwrap();
    // Between steps 2 and 3 old and new certificates both verify against the bundle.
    verify_chain(&old.chain, ca.trust_bundle(), NOW).unwrap();
    verify_chain(&new.chain, ca.trust_bundle(), NOW).unwrap();
    assert!(verify_chain(&new.chain, &ca.trust_bundle()[..1], NOW).is_err(), "signed by the new root");
    ca.remove_old_roots();
    assert_eq!(ca.trust_bundle().len(), 1);
    verify_chain(&new.chain, ca.trust_bundle(), NOW).unwrap();
    assert!(verify_chain(&old.chain, ca.trust_bundle(), NOW).is_err());
}

#[test]
fn removing_the_old_root_before_switching_strands_the_signing_root() {
    let mut ca = ca();
    ca.add_root(NOW).unwrap();
    ca.remove_old_roots();
    let issued = ca.sign_csr(&csr_for(&sleep_id(), 2), &sleep_id(), None, NOW).unwrap();
    assert!(verify_chain(&issued.chain, ca.trust_bundle(), NOW).is_err());
}

#[test]
fn rotation_steps_out_of_order_are_refused() {
    let mut ca = ca();
    assert!(matches!(ca.sign_with_new_root(), Err(CaError::Rotation(_))));
    ca.add_root(NOW).unwrap();
    assert!(matches!(ca.add_root(NOW), Err(CaError::Rotation(_))));
}

#[tokio::test]
async fn a_ca_certificate_installs_through_the_agent_sink_and_wakes_waiting_handshakes() {
    let now = Duration::from_secs(1_800_000_000);
    let mut ca = Authority::self_signed(CaOptions::default(), 1, now);
    let id = SpiffeId::new("default", "web");
    let key = keys::ed25519_key(&mut ChaCha8Rng::seed_from_u64(2));
    let issued = ca.sign_csr(&keys::csr_der(&id, &key), &id, None, now).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let store = Arc::new(IdentityStore::new(id, DEFAULT_TRUST_DOMAIN, provider));
    let waiter = tokio::spawn({
        let store = store.clone();
        async move { store.certificate_installed().await }
    });
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished(), "no certificate yet: a handshake waits");
    let sink: &dyn IdentitySink = &*store;
    sink.set_trust_bundle(ca.trust_bundle().to_vec()).unwrap();
    sink.install(issued.chain, key.serialize_der()).unwrap();
    waiter.await.unwrap();
    let m = store.current();
    assert_eq!(m.validity, Some((now, now + DEFAULT_TTL)));
    assert_eq!(m.roots.len(), 1);
    assert!(sink.install(Vec::new(), key.serialize_der()).is_err(), "an empty chain is refused");
}
