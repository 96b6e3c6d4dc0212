//! Sidecar-to-sidecar mutual TLS (Istio's `ISTIO_MUTUAL`) with rustls, over any `Net`
//! stream, in both worlds.
//!
//! Owns: the TLS 1.3 server and client configs of one sidecar (built once; the
//! certificate and trust bundle are read from its [`IdentityStore`] per handshake, so a
//! rotation never touches established or pooled connections), the peer checks (chain to
//! the mesh trust bundle, validity at the `Clock` seam's `unix_time`, a SPIFFE URI SAN of
//! the mesh trust domain, and on the client side a server identity among the
//! destination's service accounts, as Istio's SAN check does), the named failures, and
//! sniffing a connection's first byte (TLS ClientHello or plaintext) for PERMISSIVE.
//! Not here: which mode a port runs (`peer_authn`, `snapshot`), issuing certificates.
//!
//! ALPN: a client offers `istio-http/1.1` and `istio` (what Istio's sidecars offer to
//! mark mesh traffic); the server also accepts `http/1.1`. Connections carry HTTP/1.1
//! either way. Session tickets and resumption are off: connections are pooled, and
//! tickets would add randomness outside the provider.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, Resumption};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, Error, ServerConfig,
    SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::identity::{IdentityStore, SpiffeId, spiffe_uris};
use crate::net::{Clock, Stream};

/// ALPN a client sidecar offers.
pub const ALPN_CLIENT: [&[u8]; 2] = [b"istio-http/1.1", b"istio"];
/// ALPN a server sidecar accepts, in preference order.
pub const ALPN_SERVER: [&[u8]; 3] = [b"istio-http/1.1", b"istio", b"http/1.1"];

/// The OS-backed provider real mode runs (`sim::real`): ring's suites, key exchange and
/// the system random source. The simulator runs a seeded one instead.
pub fn os_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// How a connection reached the inbound side (Istio's `connection_security_policy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ConnectionSecurity {
    MutualTls,
    None,
}

impl ConnectionSecurity {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionSecurity::MutualTls => "mutual_tls",
            ConnectionSecurity::None => "none",
        }
    }
}

/// The downstream peer of an inbound connection, as the request path sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub security: ConnectionSecurity,
    /// The verified SPIFFE ID of an mTLS peer (`spiffe://<td>/ns/<ns>/sa/<sa>`), rendered
    /// once per connection: every request on it reports it.
    pub identity: Option<Arc<str>>,
}

impl Peer {
    pub const PLAINTEXT: Peer = Peer { security: ConnectionSecurity::None, identity: None };

    /// AuthorizationPolicy's `source.principal`: the ID without `spiffe://`.
    pub fn principal(&self) -> Option<&str> {
        self.identity.as_deref().map(|id| id.strip_prefix("spiffe://").unwrap_or(id))
    }
}

/// The verified SPIFFE ID of the server at the other end of an upstream mTLS
/// connection, carried in the extensions of each response that came over it (the source
/// reporter's `destination_principal`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamPeer(pub Arc<str>);

/// Why a TLS connection was refused, by whichever side found out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsFailure {
    /// The peer's chain does not end in the mesh trust bundle (a foreign CA).
    UnknownCa,
    /// The peer's certificate is expired (or not yet valid) at the simulated time.
    CertificateExpired,
    /// The peer's SPIFFE ID is of another trust domain.
    WrongTrustDomain,
    /// The peer's certificate has no SPIFFE URI SAN.
    NoSpiffeId,
    /// The client sent no certificate.
    NoClientCertificate,
    /// The server's identity is not one of the destination service's accounts.
    ServerIdentityMismatch,
    /// This sidecar has no certificate of its own yet (its agent has not been issued
    /// one): the connection is not attempted.
    NoWorkloadCertificate,
    /// Any other handshake failure.
    Handshake,
}

impl TlsFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsFailure::UnknownCa => "unknown_ca",
            TlsFailure::CertificateExpired => "certificate_expired",
            TlsFailure::WrongTrustDomain => "wrong_trust_domain",
            TlsFailure::NoSpiffeId => "no_spiffe_id",
            TlsFailure::NoClientCertificate => "no_client_certificate",
            TlsFailure::ServerIdentityMismatch => "server_identity_mismatch",
            TlsFailure::NoWorkloadCertificate => "no_workload_certificate",
            TlsFailure::Handshake => "handshake_failed",
        }
    }

    /// The failure a rustls error stands for: found locally, or told by the peer's alert.
    pub fn of(e: &Error) -> TlsFailure {
        match e {
            Error::InvalidCertificate(c) => match c {
                CertificateError::UnknownIssuer => TlsFailure::UnknownCa,
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. } => TlsFailure::CertificateExpired,
                CertificateError::ApplicationVerificationFailure => TlsFailure::WrongTrustDomain,
                CertificateError::BadEncoding => TlsFailure::NoSpiffeId,
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                    TlsFailure::ServerIdentityMismatch
                }
                _ => TlsFailure::Handshake,
            },
            Error::NoCertificatesPresented => TlsFailure::NoClientCertificate,
            Error::AlertReceived(a) => match a {
                AlertDescription::UnknownCA => TlsFailure::UnknownCa,
                AlertDescription::CertificateExpired => TlsFailure::CertificateExpired,
                AlertDescription::AccessDenied => TlsFailure::WrongTrustDomain,
                AlertDescription::BadCertificate => TlsFailure::NoSpiffeId,
                AlertDescription::CertificateRequired => TlsFailure::NoClientCertificate,
                _ => TlsFailure::Handshake,
            },
            _ => TlsFailure::Handshake,
        }
    }

    /// The failure an I/O error carries, if it came from TLS.
    pub fn of_io(e: &io::Error) -> Option<TlsFailure> {
        e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()).map(TlsFailure::of)
    }

    /// The TLS failure anywhere in an error's source chain (hyper wraps the I/O error).
    pub fn find(e: &(dyn std::error::Error + 'static)) -> Option<TlsFailure> {
        let mut cur = Some(e);
        while let Some(err) = cur {
            if let Some(t) = err.downcast_ref::<Error>() {
                return Some(TlsFailure::of(t));
            }
            if let Some(t) = err.downcast_ref::<io::Error>().and_then(TlsFailure::of_io) {
                return Some(t);
            }
            cur = err.source();
        }
        None
    }
}

impl std::fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// rustls' clock: the `Clock` seam, so validity follows simulated time.
struct SeamTime(Arc<dyn Clock>);

impl std::fmt::Debug for SeamTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SeamTime")
    }
}

impl rustls::time_provider::TimeProvider for SeamTime {
    fn current_time(&self) -> Option<UnixTime> {
        Some(UnixTime::since_unix_epoch(self.0.unix_time()))
    }
}

/// The store's certificate, for both sides of a handshake.
#[derive(Debug)]
struct StoreCert(Arc<IdentityStore>);

impl ResolvesServerCert for StoreCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.current().cert.clone()
    }
}

impl ResolvesClientCert for StoreCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.current().cert.clone()
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// Checks a peer's chain against the store's trust bundle at `now`, then its SPIFFE
/// ID's trust domain; returns the ID.
fn verify_peer(
    store: &IdentityStore,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
) -> Result<SpiffeId, Error> {
    let material = store.current();
    let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        &material.roots,
        intermediates,
        now,
        store.provider().signature_verification_algorithms.all,
    )?;
    let id = spiffe_uris(end_entity)
        .iter()
        .find_map(|u| u.parse::<SpiffeId>().ok())
        .ok_or(Error::InvalidCertificate(CertificateError::BadEncoding))?;
    if id.trust_domain != store.trust_domain() {
        return Err(Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure));
    }
    Ok(id)
}

/// The verified SPIFFE ID of a certificate that passed [`verify_peer`].
fn peer_id(certs: Option<&[CertificateDer<'_>]>) -> Option<Arc<str>> {
    let id = spiffe_uris(certs?.first()?).iter().find_map(|u| u.parse::<SpiffeId>().ok())?;
    Some(Arc::from(id.to_string()))
}

/// The verified identity of the server of an upstream mTLS connection.
pub fn server_identity<S>(tls: &tokio_rustls::client::TlsStream<S>) -> Option<Arc<str>> {
    peer_id(tls.get_ref().1.peer_certificates())
}

fn signature_schemes(store: &IdentityStore) -> Vec<SignatureScheme> {
    store.provider().signature_verification_algorithms.supported_schemes()
}

/// The server side's check of client certificates: mandatory, mesh-issued.
#[derive(Debug)]
struct MeshClientVerifier(Arc<IdentityStore>);

impl ClientCertVerifier for MeshClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        verify_peer(&self.0, end_entity, intermediates, now).map(|_| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.0.provider().signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.0.provider().signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        signature_schemes(&self.0)
    }
}

/// The client side's check of a server: mesh-issued, and one of `expected`.
#[derive(Debug)]
struct MeshServerVerifier {
    store: Arc<IdentityStore>,
    /// Empty = any identity of the mesh trust domain.
    expected: Vec<SpiffeId>,
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let id = verify_peer(&self.store, end_entity, intermediates, now)?;
        if !self.expected.is_empty() && !self.expected.contains(&id) {
            return Err(Error::InvalidCertificate(CertificateError::NotValidForName));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.store.provider().signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.store.provider().signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        signature_schemes(&self.store)
    }
}

/// One sidecar's TLS: its identity and the server config built over it.
pub struct SidecarTls {
    store: Arc<IdentityStore>,
    clock: Arc<dyn Clock>,
    acceptor: TlsAcceptor,
    /// The store's SPIFFE ID, rendered once.
    id: Arc<str>,
}

impl std::fmt::Debug for SidecarTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SidecarTls").field("store", &self.store).finish()
    }
}

impl SidecarTls {
    pub fn new(store: Arc<IdentityStore>, clock: Arc<dyn Clock>) -> Result<SidecarTls, String> {
        let mut server =
            ServerConfig::builder_with_details(store.provider().clone(), Arc::new(SeamTime(clock.clone())))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(|e| format!("TLS server config: {e}"))?
                .with_client_cert_verifier(Arc::new(MeshClientVerifier(store.clone())))
                .with_cert_resolver(Arc::new(StoreCert(store.clone())));
        server.alpn_protocols = ALPN_SERVER.iter().map(|p| p.to_vec()).collect();
        server.send_tls13_tickets = 0;
        server.session_storage = Arc::new(NoServerSessionStorage {});
        let id = Arc::from(store.id().to_string());
        Ok(SidecarTls { acceptor: TlsAcceptor::from(Arc::new(server)), store, clock, id })
    }

    pub fn store(&self) -> &Arc<IdentityStore> {
        &self.store
    }

    /// This sidecar's SPIFFE ID (`spiffe://…`).
    pub fn id(&self) -> &Arc<str> {
        &self.id
    }

    /// Waits up to `wait` for this sidecar's first certificate (at once if it has one);
    /// after that, [`TlsFailure::NoWorkloadCertificate`].
    pub async fn await_certificate(&self, wait: std::time::Duration) -> Result<(), TlsFailure> {
        tokio::time::timeout(wait, self.store.certificate_installed())
            .await
            .map_err(|_| TlsFailure::NoWorkloadCertificate)
    }

    /// A connector for a destination whose servers may present one of `expected`.
    pub fn connector(&self, expected: &[SpiffeId]) -> Result<TlsConnector, String> {
        let mut client =
            ClientConfig::builder_with_details(self.store.provider().clone(), Arc::new(SeamTime(self.clock.clone())))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(|e| format!("TLS client config: {e}"))?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(MeshServerVerifier {
                    store: self.store.clone(),
                    expected: expected.to_vec(),
                }))
                .with_client_cert_resolver(Arc::new(StoreCert(self.store.clone())));
        client.alpn_protocols = ALPN_CLIENT.iter().map(|p| p.to_vec()).collect();
        client.resumption = Resumption::disabled();
        Ok(TlsConnector::from(Arc::new(client)))
    }

    /// Completes the server side of a handshake; the peer is verified.
    pub async fn accept<S: Stream>(&self, stream: S) -> Result<(tokio_rustls::server::TlsStream<S>, Peer), TlsFailure> {
        let tls =
            self.acceptor.accept(stream).await.map_err(|e| TlsFailure::of_io(&e).unwrap_or(TlsFailure::Handshake))?;
        let identity = peer_id(tls.get_ref().1.peer_certificates());
        Ok((tls, Peer { security: ConnectionSecurity::MutualTls, identity }))
    }
}

/// The client side of a handshake with `connector` over `stream`.
pub async fn connect<S: Stream>(
    connector: &TlsConnector,
    host: &str,
    stream: S,
) -> Result<tokio_rustls::client::TlsStream<S>, TlsFailure> {
    // The verifier checks SPIFFE IDs, not names: any valid name will do.
    let name =
        ServerName::try_from(host.to_string()).unwrap_or(ServerName::try_from("mesh.internal").expect("a DNS name"));
    connector.connect(name, stream).await.map_err(|e| TlsFailure::of_io(&e).unwrap_or(TlsFailure::Handshake))
}

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// Reads a connection's first byte: whether it starts a TLS handshake (Envoy's TLS
/// inspector, reduced to the record type), and the stream with that byte put back.
pub async fn sniff<S: Stream>(mut stream: S) -> io::Result<(Rewind<S>, bool)> {
    let mut first = [0u8; 1];
    let n = stream.read(&mut first).await?;
    if n == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed before its first byte"));
    }
    Ok((Rewind { first: Some(first[0]), inner: stream }, first[0] == TLS_HANDSHAKE))
}

/// A stream with one byte put back in front.
pub struct Rewind<S> {
    first: Option<u8>,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if let Some(b) = self.first
            && buf.remaining() > 0
        {
            buf.put_slice(&[b]);
            self.first = None;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType};
    use rustls::pki_types::PrivateKeyDer;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::identity::DEFAULT_TRUST_DOMAIN;

    /// A fixed simulated time.
    struct At(Duration);
    impl Clock for At {
        fn now(&self) -> Duration {
            Duration::ZERO
        }
        fn unix_time(&self) -> Duration {
            self.0
        }
    }

    const NOW: Duration = Duration::from_secs(1_800_000_000);
    const DAY: Duration = Duration::from_secs(86_400);

    struct Ca {
        issuer: Issuer<'static, KeyPair>,
        root: CertificateDer<'static>,
    }

    fn ca(org: &str) -> Ca {
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(rcgen::DnType::OrganizationName, org);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.not_before = rcgen::date_time_ymd(1970, 1, 1) + (NOW - DAY);
        params.not_after = rcgen::date_time_ymd(1970, 1, 1) + (NOW + 365 * DAY);
        let root = params.self_signed(&key).unwrap().der().clone();
        Ca { issuer: Issuer::new(params, key), root }
    }

    fn issue(
        ca: &Ca,
        uri: &str,
        valid: (Duration, Duration),
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = rcgen::date_time_ymd(1970, 1, 1) + valid.0;
        params.not_after = rcgen::date_time_ymd(1970, 1, 1) + valid.1;
        let cert = params.signed_by(&key, &ca.issuer).unwrap();
        (vec![cert.der().clone()], PrivateKeyDer::try_from(key.serialize_der()).unwrap())
    }

    fn sidecar(ca: &Ca, bundle: &Ca, uri: Option<&str>, valid: (Duration, Duration)) -> SidecarTls {
        let store = Arc::new(IdentityStore::new(SpiffeId::new("default", "x"), DEFAULT_TRUST_DOMAIN, os_provider()));
        if let Some(uri) = uri {
            let (chain, key) = issue(ca, uri, valid);
            store.install(chain, key).unwrap();
        }
        store.set_trust_bundle(std::slice::from_ref(&bundle.root)).unwrap();
        SidecarTls::new(store, Arc::new(At(NOW))).unwrap()
    }

    fn good(ca: &Ca, sa: &str) -> SidecarTls {
        sidecar(ca, ca, Some(&format!("spiffe://cluster.local/ns/default/sa/{sa}")), (NOW - DAY, NOW + DAY))
    }

    /// One exchange: the client writes a line, the server echoes it. Returns what each
    /// side saw.
    async fn exchange(
        client: &SidecarTls,
        expected: &[SpiffeId],
        server: &SidecarTls,
    ) -> (Result<(), TlsFailure>, Result<Peer, TlsFailure>) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let connector = client.connector(expected).unwrap();
        let server_side = async {
            let (stream, tls) = sniff(b).await.unwrap();
            assert!(tls, "a ClientHello is sniffed as TLS");
            let (mut s, peer) = server.accept(stream).await?;
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.map_err(|_| TlsFailure::Handshake)?;
            s.write_all(&buf).await.map_err(|_| TlsFailure::Handshake)?;
            s.flush().await.map_err(|_| TlsFailure::Handshake)?;
            Ok(peer)
        };
        let client_side = async {
            let mut s = connect(&connector, "peer", a).await?;
            s.write_all(b"hello").await.map_err(|e| TlsFailure::of_io(&e).unwrap_or(TlsFailure::Handshake))?;
            s.flush().await.map_err(|e| TlsFailure::of_io(&e).unwrap_or(TlsFailure::Handshake))?;
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.map_err(|e| TlsFailure::of_io(&e).unwrap_or(TlsFailure::Handshake))?;
            Ok(())
        };
        tokio::join!(client_side, server_side)
    }

    #[tokio::test]
    async fn mesh_peers_complete_mutual_tls_and_the_server_learns_the_client_identity() {
        let ca = ca("mesh");
        let (client, server) = (good(&ca, "web"), good(&ca, "api"));
        let (c, s) = exchange(&client, &[SpiffeId::new("default", "api")], &server).await;
        assert_eq!(c, Ok(()));
        let peer = s.unwrap();
        assert_eq!(peer.security, ConnectionSecurity::MutualTls);
        assert_eq!(peer.principal(), Some("cluster.local/ns/default/sa/web"));
    }

    #[tokio::test]
    async fn each_bad_client_identity_is_refused_with_its_own_failure_on_both_sides() {
        let (ca, foreign) = (ca("mesh"), ca("foreign"));
        let server = good(&ca, "api");
        let valid = (NOW - DAY, NOW + DAY);
        let cases = [
            (sidecar(&foreign, &ca, Some("spiffe://cluster.local/ns/default/sa/web"), valid), TlsFailure::UnknownCa),
            (
                sidecar(&ca, &ca, Some("spiffe://cluster.local/ns/default/sa/web"), (NOW - 2 * DAY, NOW - DAY)),
                TlsFailure::CertificateExpired,
            ),
            (sidecar(&ca, &ca, Some("spiffe://evil.example/ns/default/sa/web"), valid), TlsFailure::WrongTrustDomain),
            (sidecar(&ca, &ca, None, valid), TlsFailure::NoClientCertificate),
        ];
        for (client, want) in cases {
            let (c, s) = exchange(&client, &[], &server).await;
            assert_eq!(s.unwrap_err(), want, "server side");
            assert_eq!(c.unwrap_err(), want, "client side, from the alert");
        }
    }

    #[tokio::test]
    async fn a_client_refuses_a_server_of_another_identity_or_an_expired_one() {
        let ca = ca("mesh");
        let client = good(&ca, "web");
        let (c, _) = exchange(&client, &[SpiffeId::new("default", "api")], &good(&ca, "impostor")).await;
        assert_eq!(c.unwrap_err(), TlsFailure::ServerIdentityMismatch);
        let expired = sidecar(&ca, &ca, Some("spiffe://cluster.local/ns/default/sa/api"), (NOW - 2 * DAY, NOW - DAY));
        let (c, _) = exchange(&client, &[], &expired).await;
        assert_eq!(c.unwrap_err(), TlsFailure::CertificateExpired);
    }

    #[tokio::test]
    async fn a_certificate_installed_later_serves_the_next_handshake_of_the_same_config() {
        let ca = ca("mesh");
        let server = good(&ca, "api");
        let uri = "spiffe://cluster.local/ns/default/sa/web";
        let client = sidecar(&ca, &ca, Some(uri), (NOW - 2 * DAY, NOW - DAY));
        assert_eq!(exchange(&client, &[], &server).await.1.unwrap_err(), TlsFailure::CertificateExpired);
        let (chain, key) = issue(&ca, uri, (NOW - DAY, NOW + DAY));
        client.store().install(chain, key).unwrap();
        let (c, s) = exchange(&client, &[], &server).await;
        assert_eq!(c, Ok(()));
        assert_eq!(s.unwrap().principal(), Some("cluster.local/ns/default/sa/web"));
    }

    #[tokio::test]
    async fn a_rotation_keeps_established_connections_and_serves_the_next_handshake() {
        let ca = ca("mesh");
        let (client, server) = (good(&ca, "web"), good(&ca, "api"));
        let connector = client.connector(&[]).unwrap();
        let handshake = || async {
            let (a, b) = tokio::io::duplex(64 * 1024);
            let accept = async { server.accept(sniff(b).await.unwrap().0).await };
            let (c, s) = tokio::join!(connect(&connector, "peer", a), accept);
            (c.unwrap(), s.unwrap().0)
        };
        let (mut c, mut s) = handshake().await;
        let (chain, key) = issue(&ca, "spiffe://cluster.local/ns/default/sa/api", (NOW - DAY / 2, NOW + 2 * DAY));
        server.store().install(chain.clone(), key).unwrap();
        c.write_all(b"after").await.unwrap();
        c.flush().await.unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"after", "the connection made before the rotation still carries data");
        let old = c.get_ref().1.peer_certificates().unwrap()[0].clone();
        assert_ne!(old, chain[0]);
        let (c2, _) = handshake().await;
        assert_eq!(c2.get_ref().1.peer_certificates().unwrap()[0], chain[0], "the next handshake presents the new one");
    }

    #[tokio::test]
    async fn plaintext_is_sniffed_as_plaintext_and_replayed() {
        let (mut a, b) = tokio::io::duplex(1024);
        a.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let (mut s, tls) = sniff(b).await.unwrap();
        assert!(!tls);
        let mut buf = [0u8; 16];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"GET / HTTP/1.1\r\n");
    }

    #[test]
    fn the_os_provider_draws_fresh_randomness_for_every_connection() {
        let hello = || {
            let config = ClientConfig::builder_with_provider(os_provider())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            let mut conn = rustls::ClientConnection::new(Arc::new(config), "peer.mesh".try_into().unwrap()).unwrap();
            let mut out = Vec::new();
            conn.write_tls(&mut out).unwrap();
            out
        };
        assert_ne!(hello(), hello(), "two ClientHellos of the real provider never repeat");
    }
}
