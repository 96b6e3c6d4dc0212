//! The certificate authority's issuing core, pure (no I/O, no clock: the caller passes the
//! Unix time from its `Clock`): the signing root (self-signed, or a user-supplied root or
//! intermediate from PEM), the trust bundle it distributes, the workload TTL policy, the CSR
//! check, and root rotation. Serving it over the network is `service`; a workload's side is
//! `agent`.

use std::time::Duration;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber, SubjectPublicKeyInfo,
};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use super::{CaError, Der, keys};
use crate::identity::{DEFAULT_TRUST_DOMAIN, SpiffeId};

/// Istio's `DEFAULT_WORKLOAD_CERT_TTL`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Istio's `MAX_WORKLOAD_CERT_TTL`.
pub const MAX_TTL: Duration = Duration::from_secs(90 * 24 * 3600);
/// Istio's self-signed root lifetime (10 years).
pub const ROOT_TTL: Duration = Duration::from_secs(3650 * 24 * 3600);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaOptions {
    pub trust_domain: String,
    /// Lifetime of a certificate whose request names none.
    pub default_ttl: Duration,
    /// Longer requests are refused.
    pub max_ttl: Duration,
}

impl Default for CaOptions {
    fn default() -> Self {
        CaOptions { trust_domain: DEFAULT_TRUST_DOMAIN.to_string(), default_ttl: DEFAULT_TTL, max_ttl: MAX_TTL }
    }
}

/// A workload certificate as issued: the chain to present and its validity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    /// Leaf first, then the intermediates up to (not including) the root.
    pub chain: Vec<Der>,
    /// Unix time, whole seconds.
    pub not_before: Duration,
    pub not_after: Duration,
}

/// What signs workload certificates.
struct Signer {
    issuer: Issuer<'static, KeyPair>,
    /// The signing certificate and the intermediates above it; empty when a root signs.
    intermediates: Vec<Der>,
    /// The root this signer chains to.
    root: Der,
    not_after: Duration,
}

pub struct Authority {
    opts: CaOptions,
    signer: Signer,
    /// A root added for rotation that does not sign yet.
    next: Option<Signer>,
    /// The trust anchors workloads are given, oldest first.
    bundle: Vec<Der>,
    /// Roots of other meshes in the bundle ([`Authority::federate`]); rotation keeps them.
    federated: Vec<Der>,
    /// How many self-signed roots this authority made (names them).
    roots_made: u32,
    /// Serial numbers and new root keys.
    rng: ChaCha8Rng,
}

fn datetime(unix: Duration) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix.as_secs() as i64).expect("simulated and real clocks are in range")
}

fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err("trailing bytes after the certificate".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// The validity end of a DER certificate, Unix seconds.
pub fn not_after(der: &[u8]) -> Result<Duration, String> {
    let cert = parse_cert(der)?;
    Ok(Duration::from_secs(cert.validity().not_after.timestamp().max(0) as u64))
}

/// The validity start of a DER certificate, Unix seconds.
pub fn not_before(der: &[u8]) -> Result<Duration, String> {
    let cert = parse_cert(der)?;
    Ok(Duration::from_secs(cert.validity().not_before.timestamp().max(0) as u64))
}

/// Every URI subject alternative name of a DER certificate.
pub fn uri_sans(der: &[u8]) -> Result<Vec<String>, String> {
    let cert = parse_cert(der)?;
    let san = cert.subject_alternative_name().map_err(|e| e.to_string())?;
    Ok(san
        .map(|s| {
            s.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Checks that each certificate of `chain` (leaf first) is signed by the next, the last by
/// one of `roots`, and that every certificate is valid at `now` (Unix time). The error
/// names the first certificate that fails and why.
pub fn verify_chain(chain: &[Der], roots: &[Der], now: Duration) -> Result<(), String> {
    let certs = chain.iter().map(|d| parse_cert(d)).collect::<Result<Vec<_>, _>>()?;
    let anchors = roots.iter().map(|d| parse_cert(d)).collect::<Result<Vec<_>, _>>()?;
    let now_s = now.as_secs() as i64;
    for (i, c) in certs.iter().enumerate() {
        let v = c.validity();
        if now_s < v.not_before.timestamp() || now_s > v.not_after.timestamp() {
            return Err(format!("certificate {i} of the chain is not valid at Unix time {now_s}"));
        }
        let signed = match certs.get(i + 1) {
            Some(parent) => c.verify_signature(Some(parent.public_key())).is_ok(),
            None => anchors.iter().any(|r| c.verify_signature(Some(r.public_key())).is_ok()),
        };
        if !signed {
            return Err(format!("certificate {i} of the chain is not signed by its issuer in the chain or bundle"));
        }
    }
    Ok(())
}

impl Signer {
    /// A new self-signed root from `rng`, valid from `now` for [`ROOT_TTL`].
    fn self_signed(trust_domain: &str, generation: u32, rng: &mut ChaCha8Rng, now: Duration) -> Signer {
        let key = keys::ed25519_key(rng);
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, trust_domain);
        dn.push(DnType::CommonName, format!("meshsim root {generation}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(serial(rng));
        let not_before = Duration::from_secs(now.as_secs());
        params.not_before = datetime(not_before);
        params.not_after = datetime(not_before + ROOT_TTL);
        let cert = params.self_signed(&key).expect("an Ed25519 root serializes");
        Signer {
            root: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
            intermediates: Vec::new(),
            not_after: not_before + ROOT_TTL,
        }
    }
}

/// A positive 128-bit serial number.
fn serial(rng: &mut ChaCha8Rng) -> SerialNumber {
    let mut b = [0u8; 16];
    rng.fill_bytes(&mut b);
    b[0] &= 0x7f;
    b[0] |= 0x01;
    SerialNumber::from_slice(&b)
}

/// The DER blocks of a PEM text, each labelled `label`.
fn pem_blocks(text: &str, what: &str, label: &str) -> Result<Vec<Der>, CaError> {
    let mut out = Vec::new();
    for p in x509_parser::pem::Pem::iter_from_buffer(text.as_bytes()) {
        let p = p.map_err(|e| CaError::BadRoot(format!("{what}: not PEM: {e}")))?;
        if p.label != label {
            return Err(CaError::BadRoot(format!("{what}: expected a {label} PEM block, found {}", p.label)));
        }
        out.push(p.contents);
    }
    if out.is_empty() {
        return Err(CaError::BadRoot(format!("{what}: no {label} PEM block")));
    }
    Ok(out)
}

impl Authority {
    /// A CA with a fresh self-signed root (Istio's default), its keys and serial numbers
    /// drawn from `seed`.
    pub fn self_signed(opts: CaOptions, seed: u64, now: Duration) -> Authority {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let signer = Signer::self_signed(&opts.trust_domain, 0, &mut rng, now);
        Authority {
            bundle: vec![signer.root.clone()],
            federated: Vec::new(),
            opts,
            signer,
            next: None,
            roots_made: 1,
            rng,
        }
    }

    /// A CA signing with a user-supplied key (Istio's "plugged-in" CA certificates).
    /// `root_pem`: the root certificate (the trust anchor). `key_pem`: the signing key (PKCS#8
    /// PEM). `intermediates_pem`: when the root does not sign itself, the signing
    /// certificate first, then any intermediates above it, up to the root. Serial numbers are
    /// drawn from `seed`. Refused when the key does not belong to the signing certificate,
    /// the signing certificate is not a CA, or the chain does not lead to the root at `now`.
    pub fn from_pem(
        opts: CaOptions,
        seed: u64,
        root_pem: &str,
        key_pem: &str,
        intermediates_pem: Option<&str>,
        now: Duration,
    ) -> Result<Authority, CaError> {
        let mut roots = pem_blocks(root_pem, "root certificate", "CERTIFICATE")?;
        if roots.len() != 1 {
            return Err(CaError::BadRoot(format!("root certificate: expected 1 certificate, found {}", roots.len())));
        }
        let root = roots.remove(0);
        let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::BadRoot(format!("signing key: {e}")))?;
        let intermediates = match intermediates_pem {
            Some(text) => pem_blocks(text, "intermediate chain", "CERTIFICATE")?,
            None => Vec::new(),
        };
        let signing = intermediates.first().unwrap_or(&root).clone();
        let cert = parse_cert(&signing).map_err(|e| CaError::BadRoot(format!("signing certificate: {e}")))?;
        if !cert.is_ca() {
            return Err(CaError::BadRoot("signing certificate: not a CA (basicConstraints CA:TRUE is missing)".into()));
        }
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CaError::BadRoot("signing key: does not belong to the signing certificate".into()));
        }
        let not_after = Duration::from_secs(cert.validity().not_after.timestamp().max(0) as u64);
        // With no intermediates the root signs itself: checked like any chain.
        let chain = if intermediates.is_empty() { std::slice::from_ref(&root) } else { &intermediates[..] };
        verify_chain(chain, std::slice::from_ref(&root), now)
            .map_err(|e| CaError::BadRoot(format!("chain to the root: {e}")))?;
        let issuer =
            Issuer::from_ca_cert_der(&signing.as_slice().into(), key).map_err(|e| CaError::BadRoot(e.to_string()))?;
        let signer = Signer { issuer, intermediates, root: root.clone(), not_after };
        Ok(Authority {
            opts,
            signer,
            next: None,
            bundle: vec![root],
            federated: Vec::new(),
            roots_made: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
        })
    }

    pub fn options(&self) -> &CaOptions {
        &self.opts
    }

    /// The roots workloads must trust, oldest first.
    pub fn trust_bundle(&self) -> &[Der] {
        &self.bundle
    }

    /// The root that signs now.
    pub fn signing_root(&self) -> &Der {
        &self.signer.root
    }

    /// The lifetime a request for `requested` gets: the default when none is asked, refused
    /// beyond the maximum.
    pub fn ttl_for(&self, requested: Option<Duration>) -> Result<Duration, CaError> {
        match requested {
            None => Ok(self.opts.default_ttl),
            Some(t) if t.is_zero() => Ok(self.opts.default_ttl),
            Some(t) if t > self.opts.max_ttl => Err(CaError::TtlTooLong { requested: t, max: self.opts.max_ttl }),
            Some(t) => Ok(t),
        }
    }

    /// Signs a workload CSR from `caller` (the identity its bootstrap credential proves).
    /// The certificate's only identity is `caller`'s SPIFFE ID as a URI SAN; the CSR must ask
    /// for exactly that identity and nothing else, with a valid self-signature.
    pub fn sign_csr(
        &mut self,
        csr: &[u8],
        caller: &SpiffeId,
        ttl: Option<Duration>,
        now: Duration,
    ) -> Result<Issued, CaError> {
        let ttl = self.ttl_for(ttl)?;
        if caller.trust_domain != self.opts.trust_domain {
            return Err(CaError::IdentityMismatch {
                requested: vec![caller.to_string()],
                caller: caller.clone(),
                why: format!("the CA's trust domain is {}", self.opts.trust_domain),
            });
        }
        let req = match X509CertificationRequest::from_der(csr) {
            Ok(([], req)) => req,
            Ok(_) => return Err(CaError::BadCsr("trailing bytes after the CSR".into())),
            Err(e) => return Err(CaError::BadCsr(e.to_string())),
        };
        req.verify_signature().map_err(|e| CaError::BadCsr(format!("signature does not verify: {e}")))?;
        let mut requested = Vec::new();
        for ext in req.requested_extensions().into_iter().flatten() {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for n in &san.general_names {
                    requested.push(match n {
                        GeneralName::URI(u) => u.to_string(),
                        other => format!("{other}"),
                    });
                }
            }
        }
        if requested != [caller.to_string()] {
            return Err(CaError::IdentityMismatch {
                requested,
                caller: caller.clone(),
                why: "a CSR must name exactly the caller's SPIFFE ID".into(),
            });
        }
        let public_key = SubjectPublicKeyInfo::from_der(req.certification_request_info.subject_pki.raw)
            .map_err(|e| CaError::BadCsr(format!("public key: {e}")))?;
        let not_before = Duration::from_secs(now.as_secs());
        let not_after = (not_before + ttl).min(self.signer.not_after);
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(
            caller.to_string().try_into().map_err(|_| CaError::BadCsr("SPIFFE ID is not ASCII".into()))?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(serial(&mut self.rng));
        params.not_before = datetime(not_before);
        params.not_after = datetime(not_after);
        let leaf = params.signed_by(&public_key, &self.signer.issuer).map_err(|e| CaError::BadCsr(e.to_string()))?;
        let mut chain = vec![leaf.der().to_vec()];
        chain.extend(self.signer.intermediates.iter().cloned());
        Ok(Issued { chain, not_before, not_after })
    }

    /// Root rotation, step 1: a new self-signed root joins the trust bundle; the current
    /// signer keeps signing. Refused while a previously added root has not been switched to.
    pub fn add_root(&mut self, now: Duration) -> Result<(), CaError> {
        if self.next.is_some() {
            return Err(CaError::Rotation("a new root was already added and is not signing yet".into()));
        }
        let next = Signer::self_signed(&self.opts.trust_domain, self.roots_made, &mut self.rng, now);
        self.roots_made += 1;
        self.bundle.push(next.root.clone());
        self.next = Some(next);
        Ok(())
    }

    /// Root rotation, step 2: the added root signs from now on (workloads are re-issued
    /// from it when they next ask).
    pub fn sign_with_new_root(&mut self) -> Result<(), CaError> {
        let next = self.next.take().ok_or_else(|| CaError::Rotation("no new root was added".into()))?;
        self.signer = next;
        Ok(())
    }

    /// Root rotation, step 3: every root but the newest leaves the trust bundle. Done before
    /// step 2 it removes the root that still signs, and certificates chaining to it stop
    /// verifying.
    pub fn remove_old_roots(&mut self) {
        let newest = self.next.as_ref().unwrap_or(&self.signer).root.clone();
        let federated = &self.federated;
        self.bundle.retain(|r| *r == newest || federated.contains(r));
    }

    /// Federation: the root of another mesh (another trust domain) joins the trust bundle
    /// every workload gets, as Istio's `meshConfig.caCertificates` distributes extra roots.
    /// Its certificates then chain to a trusted root, and the peer check refuses them for
    /// their trust domain. Root rotation keeps it.
    pub fn federate(&mut self, root: Der) {
        self.federated.push(root.clone());
        self.bundle.push(root);
    }
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").field("opts", &self.opts).field("roots", &self.bundle.len()).finish()
    }
}
