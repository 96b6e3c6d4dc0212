//! The CA service and an agent over real loopback sockets (`TokioNet`).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Mutex;

use super::*;
use crate::ca::CaOptions;
use crate::ca::agent::{Agent, AgentConfig, CertEvent, CertEvents};
use crate::ca::authority::{uri_sans, verify_chain};
use crate::ca::keys::{csr_der, ed25519_key};
use crate::http::Client;
use crate::identity::IdentitySink;
use crate::net::{SystemClock, TokioNet};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

async fn start_ca() -> (Arc<CaServer>, CaAddress) {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    let ca = CaServer::new(Authority::self_signed(CaOptions::default(), 1, clock.unix_time()));
    ca.credentials().insert("token-sleep".into(), SpiffeId::new("default", "sleep"));
    let listener = TokioNet.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(ca.clone().serve(listener, clock));
    (ca, CaAddress { host: "127.0.0.1".into(), port, timeout: Duration::from_secs(5) })
}

fn csr(id: &SpiffeId) -> Vec<u8> {
    csr_der(id, &ed25519_key(&mut ChaCha8Rng::seed_from_u64(3)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_signs_a_csr_that_matches_the_credential() {
    let (ca, addr) = start_ca().await;
    let id = SpiffeId::new("default", "sleep");
    let granted = request_certificate(&Client::new(TokioNet), &addr, "token-sleep", &csr(&id), None).await.unwrap();
    assert_eq!(uri_sans(&granted.chain[0]).unwrap(), vec![id.to_string()]);
    assert_eq!(granted.trust_bundle, ca.trust_bundle());
    verify_chain(&granted.chain, &granted.trust_bundle, SystemClock::new().unix_time()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_refuses_a_csr_for_another_identity_than_the_credential() {
    let (_ca, addr) = start_ca().await;
    let admin = SpiffeId::new("default", "admin");
    let err = request_certificate(&Client::new(TokioNet), &addr, "token-sleep", &csr(&admin), None).await.unwrap_err();
    let FetchError::Refused { status, message } = err else { panic!("{err}") };
    assert_eq!(status, 403);
    assert!(
        message.starts_with("CSR identity [spiffe://cluster.local/ns/default/sa/admin] does not match"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_refuses_an_unknown_credential_and_a_ttl_over_the_maximum() {
    let (_ca, addr) = start_ca().await;
    let id = SpiffeId::new("default", "sleep");
    let client = Client::new(TokioNet);
    let err = request_certificate(&client, &addr, "stolen", &csr(&id), None).await.unwrap_err();
    assert!(matches!(err, FetchError::Refused { status: 401, .. }), "{err}");
    let err = request_certificate(&client, &addr, "token-sleep", &csr(&id), Some(Duration::from_secs(91 * 86400)))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, FetchError::Refused { status: 400, message } if message.contains("max allowed TTL 2160h0m0s")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_that_is_down_is_unreachable() {
    let (ca, addr) = start_ca().await;
    ca.set_up(false);
    let id = SpiffeId::new("default", "sleep");
    let err = request_certificate(&Client::new(TokioNet), &addr, "token-sleep", &csr(&id), None).await.unwrap_err();
    assert!(matches!(err, FetchError::Unreachable(_)), "{err}");
}

#[derive(Default)]
struct Memory {
    chains: Mutex<Vec<Vec<Der>>>,
    bundles: Mutex<Vec<Vec<Der>>>,
    events: Mutex<Vec<CertEvent>>,
    notify: tokio::sync::Notify,
}

impl IdentitySink for Memory {
    fn install(&self, chain: Vec<Der>, _key: Vec<u8>) -> Result<(), String> {
        self.chains.lock().unwrap().push(chain);
        Ok(())
    }
    fn set_trust_bundle(&self, roots: Vec<Der>) -> Result<(), String> {
        self.bundles.lock().unwrap().push(roots);
        Ok(())
    }
}

impl CertEvents for Memory {
    fn cert_event(&self, _pod: &str, _id: &SpiffeId, _at: Duration, event: &CertEvent) {
        self.events.lock().unwrap().push(event.clone());
        self.notify.notify_one();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_gets_a_certificate_at_start_and_again_when_roots_change() {
    let (ca, addr) = start_ca().await;
    let memory = Arc::new(Memory::default());
    let agent = Agent::new(
        AgentConfig {
            pod: "sleep-0".into(),
            id: SpiffeId::new("default", "sleep"),
            token: "token-sleep".into(),
            ca: addr,
            ttl: None,
            seed: 9,
        },
        TokioNet,
        Arc::new(SystemClock::new()),
        memory.clone(),
        memory.clone(),
        ca.roots_changed(),
    );
    tokio::spawn(agent.run());
    memory.notify.notified().await;
    assert!(matches!(memory.events.lock().unwrap()[..], [CertEvent::Issued { .. }]));
    ca.rotate(|a| a.add_root(SystemClock::new().unix_time())).unwrap();
    memory.notify.notified().await;
    assert!(matches!(memory.events.lock().unwrap()[..], [CertEvent::Issued { .. }, CertEvent::Renewed { .. }]));
    let bundles = memory.bundles.lock().unwrap();
    assert_eq!((bundles[0].len(), bundles[1].len()), (1, 2), "the second fetch brought both roots");
    assert_eq!(memory.chains.lock().unwrap().len(), 2);
}
