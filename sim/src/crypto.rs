//! rustls randomness from the seed, for the simulated world only: a `CryptoProvider`
//! (ring's suites and signatures) whose `secure_random` and X25519 key exchange draw from
//! a seeded ChaCha8 stream. Replacing `secure_random` alone is not enough with ring: its
//! key exchange draws from the system RNG directly, so the X25519 group here is
//! x25519-dalek fed by the seed. Certificates are Ed25519 (deterministic signatures), so
//! with this provider a handshake is byte-identical for a seed. Real mode never uses it:
//! it runs `mesh::proxy::tls::os_provider`.

use std::sync::{Arc, Mutex};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rustls::crypto::{
    ActiveKeyExchange, CryptoProvider, GetRandomFailed, SecureRandom, SharedSecret, SupportedKxGroup,
};
use rustls::{Error, NamedGroup, PeerMisbehaved};

use crate::seed::sub_seed;

#[derive(Debug)]
struct SeededRandom(Mutex<ChaCha8Rng>);

impl SecureRandom for SeededRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), GetRandomFailed> {
        self.0.lock().expect("tls rng lock").fill_bytes(buf);
        Ok(())
    }
}

#[derive(Debug)]
struct SeededX25519(Mutex<ChaCha8Rng>);

impl SupportedKxGroup for SeededX25519 {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, Error> {
        let mut secret = [0u8; 32];
        self.0.lock().expect("tls kx lock").fill_bytes(&mut secret);
        let secret = x25519_dalek::StaticSecret::from(secret);
        let public = x25519_dalek::PublicKey::from(&secret);
        Ok(Box::new(X25519Exchange { secret, public }))
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

struct X25519Exchange {
    secret: x25519_dalek::StaticSecret,
    public: x25519_dalek::PublicKey,
}

impl ActiveKeyExchange for X25519Exchange {
    fn complete(self: Box<Self>, peer: &[u8]) -> Result<SharedSecret, Error> {
        let peer: [u8; 32] = peer.try_into().map_err(|_| Error::from(PeerMisbehaved::InvalidKeyShare))?;
        let shared = self.secret.diffie_hellman(&x25519_dalek::PublicKey::from(peer));
        if !shared.was_contributory() {
            return Err(PeerMisbehaved::InvalidKeyShare.into());
        }
        Ok(SharedSecret::from(&shared.as_bytes()[..]))
    }

    fn pub_key(&self) -> &[u8] {
        self.public.as_bytes()
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

/// A provider whose randomness is the stream of `seed`. rustls wants `'static`
/// randomness sources, so each call leaks two small objects (one provider per sidecar
/// start; a run starts a bounded number).
pub fn seeded_provider(seed: u64) -> Arc<CryptoProvider> {
    let random: &'static SeededRandom =
        Box::leak(Box::new(SeededRandom(Mutex::new(ChaCha8Rng::seed_from_u64(sub_seed(seed, "tls-random", 0))))));
    let kx: &'static SeededX25519 =
        Box::leak(Box::new(SeededX25519(Mutex::new(ChaCha8Rng::seed_from_u64(sub_seed(seed, "tls-kx", 0))))));
    Arc::new(CryptoProvider { kx_groups: vec![kx], secure_random: random, ..rustls::crypto::ring::default_provider() })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ClientHello a fresh connection with `provider` sends.
    pub fn client_hello(provider: Arc<CryptoProvider>) -> Vec<u8> {
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let mut conn =
            rustls::ClientConnection::new(Arc::new(config), "peer.mesh".try_into().expect("a name")).expect("client");
        let mut out = Vec::new();
        conn.write_tls(&mut out).expect("hello");
        out
    }

    #[test]
    fn same_seed_gives_the_same_client_hello_and_another_seed_does_not() {
        let a = client_hello(seeded_provider(7));
        assert_eq!(a, client_hello(seeded_provider(7)));
        assert_ne!(a, client_hello(seeded_provider(8)));
    }

    #[test]
    fn seeded_x25519_agrees_with_itself() {
        let g = SeededX25519(Mutex::new(ChaCha8Rng::seed_from_u64(1)));
        let (a, b) = (g.start().unwrap(), g.start().unwrap());
        let pa = a.pub_key().to_vec();
        let pb = b.pub_key().to_vec();
        assert_ne!(pa, pb);
        let sa = a.complete(&pb).unwrap();
        let sb = b.complete(&pa).unwrap();
        assert_eq!(sa.secret_bytes(), sb.secret_bytes());
        assert!(g.start().unwrap().complete(&[0u8; 31]).is_err(), "a short key share is refused");
    }
}
