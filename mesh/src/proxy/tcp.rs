//! The TCP proxy: what a sidecar does with a connection to a TCP service
//! (`appProtocol: tcp`), as Envoy's `envoy.filters.network.tcp_proxy` does it in Istio's
//! filter chains for a TCP port.
//!
//! Outbound (a connection the app made to the service's `ClusterIP:port`, captured to
//! the outbound listener; the world tells its original destination, see
//! `Net::original_dst`): the first VirtualService `tcp` route matching the connection
//! (port, source labels, source namespace) picks a weighted cluster — none: the
//! service's own —, then an endpoint of it with its load balancer and outlier state;
//! the sidecar connects to that pod's sidecar (mTLS exactly as the HTTP path originates
//! it), then copies bytes both ways until both sides have closed (a half-close is passed
//! on). No service port ⇒ `NR`, a route's cluster missing ⇒ `NC`,
//! no healthy endpoint ⇒ `UH`, the cluster at `maxConnections` ⇒ `UO`, connect failure
//! ⇒ `UF`: the downstream connection is closed.
//!
//! Inbound (after PeerAuthentication, see `Sidecar::serve_inbound`): AuthorizationPolicy's
//! TCP semantics (`authz::Workload::decide_tcp`; deny ⇒ the connection is closed), then
//! bytes both ways to the local app's port.
//!
//! Metadata exchange, in band, over mTLS only (Istio's `istio-peer-exchange`): each side
//! writes one frame first — a 4-byte big-endian magic [`MX_MAGIC`], a 4-byte big-endian
//! length, then that many bytes of the workload metadata in the `x-envoy-peer-metadata`
//! text form (Istio sends a protobuf `Struct` there) — and reads the peer's before the
//! peer's bytes flow to its side. The client writes its frame and its app's bytes at once;
//! the server reads the client's frame, answers its own, then decides. Over plaintext no
//! frame is sent and the peer's labels are `unknown`, as in Istio. Unlike Istio, the frame
//! is not keyed on ALPN: both ends know the connection is mTLS.
//!
//! Each side reports Istio's four TCP metrics: opened once the peer is known (or the
//! connection failed), bytes and closed at the close. Not here: HTTP (`outbound`,
//! `inbound`), connection pooling (a TCP connection is its own upstream connection,
//! counted against the cluster's `maxConnections` only).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::Sidecar;
use super::authz;
use super::local_reply::Flag;
use super::metrics::{PeerId, Reporter, Security, TcpConnection, TcpDelta};
use super::telemetry::Direction;
use super::tls::{self, ConnectionSecurity, Peer};
use crate::net::{Net, Stream};
use crate::snapshot::cluster_name;

/// The magic number opening a metadata-exchange frame (Istio's `metadata_exchange`
/// filter uses the same value).
pub const MX_MAGIC: u32 = 0x3D23_0467;
/// The longest metadata a frame may carry.
pub const MX_MAX_BYTES: u32 = 16 * 1024;
/// Bytes read and written per copy step.
const COPY_BUFFER: usize = 16 * 1024;

/// Writes one metadata-exchange frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, metadata: &[u8]) -> io::Result<()> {
    let len = u32::try_from(metadata.len()).ok().filter(|&l| l <= MX_MAX_BYTES);
    let len = len.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "peer metadata too long"))?;
    let mut frame = Vec::with_capacity(8 + metadata.len());
    frame.extend_from_slice(&MX_MAGIC.to_be_bytes());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(metadata);
    w.write_all(&frame).await?;
    w.flush().await
}

/// Reads one metadata-exchange frame: its metadata. A wrong magic or a length over
/// [`MX_MAX_BYTES`] is an error (the connection is not speaking the exchange).
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Vec<u8>> {
    let mut head = [0u8; 8];
    r.read_exact(&mut head).await?;
    let magic = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let len = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    if magic != MX_MAGIC {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not a metadata-exchange frame"));
    }
    if len > MX_MAX_BYTES {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "peer metadata too long"));
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body).await?;
    Ok(body)
}

/// Copies `r` to `w` until `r` ends, then half-closes `w`; counts the bytes written in
/// `n`. An error on either side ends the copy.
async fn pump<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(r: &mut R, w: &mut W, n: &AtomicU64) -> io::Result<()> {
    let mut buf = vec![0u8; COPY_BUFFER];
    loop {
        let k = r.read(&mut buf).await?;
        if k == 0 {
            return w.shutdown().await;
        }
        w.write_all(&buf[..k]).await?;
        w.flush().await?;
        n.fetch_add(k as u64, Ordering::Relaxed);
    }
}

/// Bytes a proxied connection carried: `up` from the client toward the server, `down`
/// back.
#[derive(Default)]
struct Carried {
    up: AtomicU64,
    down: AtomicU64,
}

/// Proxies `downstream` ↔ `upstream` until both directions have ended, or either fails
/// (then both are dropped: closed). With `mx`, the upstream's first bytes are its
/// metadata-exchange frame: read before anything flows down and handed to `on_peer`
/// (`None`: no frame came).
async fn splice<D: Stream, U: Stream>(
    downstream: D,
    upstream: U,
    carried: &Carried,
    mx: bool,
    on_peer: &(dyn Fn(Option<&[u8]>) + Sync),
) {
    let (mut dr, mut dw) = tokio::io::split(downstream);
    let (mut ur, mut uw) = tokio::io::split(upstream);
    let up = pump(&mut dr, &mut uw, &carried.up);
    let down = async {
        if mx {
            let metadata = read_frame(&mut ur).await;
            on_peer(metadata.as_deref().ok());
            metadata?;
        }
        pump(&mut ur, &mut dw, &carried.down).await
    };
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        let result = tokio::select! {
            biased;
            r = &mut up, if !up_done => { up_done = true; r }
            r = &mut down, if !down_done => { down_done = true; r }
        };
        if result.is_err() {
            return;
        }
    }
}

/// Who the other side of a proxied connection is, once known: `None` until the
/// connection is reported opened.
type Opened = std::sync::Mutex<Option<PeerId>>;

impl<N: Net> Sidecar<N> {
    /// One captured outbound connection to the TCP service `fqdn`.
    pub(super) async fn tcp_outbound<S: Stream>(self: Arc<Self>, downstream: S, fqdn: String) {
        self.spend(Direction::Outbound).await;
        let snapshot = self.snapshot();
        let conn = |flags: &'static [Flag]| TcpConnection {
            reporter: Reporter::Source,
            peer: PeerId::UNKNOWN,
            service: &fqdn,
            flags,
            security: Security::Unknown,
            principals: [None, None],
        };
        let failed = |flags: &'static [Flag]| {
            self.record_tcp(&conn(flags), TcpDelta { opened: 1, closed: 1, sent: 0, received: 0 })
        };
        let Some(&port) = snapshot.ports.get(&fqdn) else {
            return failed(&[Flag::NoRoute]);
        };
        // The first `tcp` route matching the connection picks a weighted cluster; without
        // one, the service's own cluster.
        let route = snapshot
            .tcp_routes
            .get(&fqdn)
            .and_then(|rules| rules.iter().find(|r| r.matches(port, &self.cfg.labels, &self.cfg.namespace)));
        let name = match route {
            Some(rule) => {
                let weights: Vec<u32> = rule.clusters.iter().map(|(_, w)| *w).collect();
                match super::weighted::pick(&weights, self.draw()) {
                    Some(i) => rule.clusters[i].0.clone(),
                    None => return failed(&[Flag::NoCluster]),
                }
            }
            None => cluster_name(port, None, &fqdn),
        };
        let Some(cluster) = snapshot.clusters.get(&name).cloned() else {
            return failed(&[Flag::NoCluster]);
        };
        let Some(host) = self.choose_host(&cluster, None) else {
            return failed(&[Flag::NoHealthyUpstream]);
        };
        let ep = &cluster.endpoints[host];
        let Some(_slot) = self.cluster_pool(&cluster).try_tcp_connection((ep.host.clone(), ep.port)) else {
            return failed(&[Flag::UpstreamOverflow]);
        };
        self.commit_host(&cluster, host);
        let tls = self.cfg.tls.clone().filter(|_| ep.mtls);
        let connect = async {
            if let Some(t) = &tls {
                t.await_certificate(cluster.connect_timeout).await.map_err(|_| ())?;
            }
            let addr = self.net.resolve(&ep.host, ep.port).await.map_err(|_| ())?;
            let stream = self.net.connect(addr).await.map_err(|_| ())?;
            match &tls {
                Some(t) => {
                    let connector = t.connector(&cluster.peer_identities).map_err(|_| ())?;
                    let stream = tls::connect(&connector, &ep.host, stream).await.map_err(|_| ())?;
                    let server = tls::server_identity(&stream);
                    let stream: Box<dyn Stream> = Box::new(stream);
                    Ok::<_, ()>((stream, server))
                }
                None => {
                    let stream: Box<dyn Stream> = Box::new(stream);
                    Ok((stream, None))
                }
            }
        };
        let (mut upstream, server) = match tokio::time::timeout(cluster.connect_timeout, connect).await {
            Ok(Ok(up)) => up,
            _ => {
                self.release_host(&cluster, host, Some(503));
                return failed(&[Flag::UpstreamConnectionFailure]);
            }
        };
        let mtls = tls.is_some();
        let own = tls.as_ref().map(|t| t.id().clone());
        let principals = [own.as_deref(), server.as_deref()];
        let labels = |peer: PeerId| TcpConnection {
            peer,
            principals: if mtls { principals } else { [None, None] },
            ..conn(&[])
        };
        let opened: Opened = std::sync::Mutex::new(None);
        let open = |peer: PeerId| {
            *opened.lock().expect("opened lock") = Some(peer);
            self.record_tcp(&labels(peer), TcpDelta { opened: 1, ..TcpDelta::default() });
        };
        let carried = Carried::default();
        if !mtls {
            open(PeerId::UNKNOWN);
            splice(downstream, upstream, &carried, false, &|_| ()).await;
        } else if write_frame(&mut upstream, self.metadata.as_bytes()).await.is_ok() {
            let on_peer = |metadata: Option<&[u8]>| {
                let peer = self.metrics.lock().expect("metrics lock").peer(metadata);
                open(peer);
            };
            splice(downstream, upstream, &carried, true, &on_peer).await;
        }
        self.close_tcp(&opened, &carried, labels);
        self.release_host(&cluster, host, Some(200));
    }

    /// One inbound connection to this pod's TCP service, past PeerAuthentication: the
    /// metadata exchange (mTLS), AuthorizationPolicy, then bytes to and from the app.
    pub(super) async fn tcp_inbound<S: Stream>(self: Arc<Self>, mut downstream: S, addr: SocketAddr, peer: Peer) {
        self.spend(Direction::Inbound).await;
        let mtls = peer.security == ConnectionSecurity::MutualTls;
        let peer_principal = peer.identity.clone();
        let own = self.cfg.tls.as_ref().filter(|_| mtls).map(|t| t.id().clone());
        let labels = |id: PeerId, flags: &'static [Flag]| TcpConnection {
            reporter: Reporter::Destination,
            peer: id,
            service: &self.cfg.service,
            flags,
            security: if mtls { Security::MutualTls } else { Security::None },
            principals: if mtls { [peer_principal.as_deref(), own.as_deref()] } else { [None, None] },
        };
        let opened: Opened = std::sync::Mutex::new(None);
        let carried = Carried::default();
        let id = if mtls {
            let metadata = read_frame(&mut downstream).await;
            let id = self.metrics.lock().expect("metrics lock").peer(metadata.as_deref().ok());
            if metadata.is_err() || write_frame(&mut downstream, self.metadata.as_bytes()).await.is_err() {
                return self.record_tcp(&labels(id, &[]), TcpDelta { opened: 1, closed: 1, sent: 0, received: 0 });
            }
            id
        } else {
            PeerId::UNKNOWN
        };
        let once = TcpDelta { opened: 1, closed: 1, sent: 0, received: 0 };
        let source = authz::Peer { principal: peer.principal().map(str::to_string), ip: addr.ip() };
        let policies = self.snapshot().authz.get(&self.cfg.pod).cloned();
        if policies.is_some_and(|w| w.decide_tcp(&source) == authz::Decision::Deny) {
            return self.record_tcp(&labels(id, &[]), once);
        }
        let app = async {
            let addr = self.net.resolve("127.0.0.1", self.cfg.app_port).await?;
            self.net.connect(addr).await
        };
        let Ok(Ok(upstream)) = tokio::time::timeout(crate::snapshot::DEFAULT_CONNECT_TIMEOUT, app).await else {
            return self.record_tcp(&labels(id, &[Flag::UpstreamConnectionFailure]), once);
        };
        *opened.lock().expect("opened lock") = Some(id);
        self.record_tcp(&labels(id, &[]), TcpDelta { opened: 1, ..TcpDelta::default() });
        splice(downstream, upstream, &carried, false, &|_| ()).await;
        self.close_tcp(&opened, &carried, |id| labels(id, &[]));
    }

    /// Reports a proxied connection closed with the bytes it carried (and opened, if it
    /// never got that far).
    fn close_tcp<'a>(&self, opened: &Opened, carried: &Carried, labels: impl Fn(PeerId) -> TcpConnection<'a>) {
        let (peer, opened_now) = match *opened.lock().expect("opened lock") {
            Some(p) => (p, 0),
            None => (PeerId::UNKNOWN, 1),
        };
        let delta = TcpDelta {
            opened: opened_now,
            closed: 1,
            sent: carried.down.load(Ordering::Relaxed),
            received: carried.up.load(Ordering::Relaxed),
        };
        self.record_tcp(&labels(peer), delta);
    }

    fn record_tcp(&self, c: &TcpConnection<'_>, d: TcpDelta) {
        self.metrics.lock().expect("metrics lock").record_tcp(c, d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn metadata_frames_round_trip_and_reject_what_is_not_one() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"workload=a").await.unwrap();
        assert_eq!(&buf[..4], &[0x3D, 0x23, 0x04, 0x67], "big-endian magic first");
        assert_eq!(&buf[4..8], &[0, 0, 0, 10], "then the big-endian length");
        assert_eq!(read_frame(&mut &buf[..]).await.unwrap(), b"workload=a");
        let mut wrong = buf.clone();
        wrong[0] = 0;
        assert_eq!(read_frame(&mut &wrong[..]).await.unwrap_err().kind(), io::ErrorKind::InvalidData);
        let mut long = buf.clone();
        long[4..8].copy_from_slice(&(MX_MAX_BYTES + 1).to_be_bytes());
        assert_eq!(read_frame(&mut &long[..]).await.unwrap_err().kind(), io::ErrorKind::InvalidData);
        assert!(read_frame(&mut &buf[..6]).await.is_err(), "a short frame is an error");
    }

    #[tokio::test]
    async fn splice_passes_a_half_close_on_and_counts_both_directions() {
        let (client, proxy_down) = tokio::io::duplex(64);
        let (proxy_up, server) = tokio::io::duplex(64);
        let carried = Carried::default();
        let echo = async move {
            let (mut r, mut w) = tokio::io::split(server);
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.unwrap();
            w.write_all(&got).await.unwrap();
            w.write_all(b"!").await.unwrap();
            w.shutdown().await.unwrap();
        };
        let talk = async move {
            let (mut r, mut w) = tokio::io::split(client);
            w.write_all(b"hello").await.unwrap();
            w.shutdown().await.unwrap();
            let mut back = Vec::new();
            r.read_to_end(&mut back).await.unwrap();
            back
        };
        let (_, _, back) = tokio::join!(splice(proxy_down, proxy_up, &carried, false, &|_| ()), echo, talk);
        assert_eq!(back, b"hello!", "the server saw the client's close and answered after it");
        assert_eq!((carried.up.load(Ordering::Relaxed), carried.down.load(Ordering::Relaxed)), (5, 6));
    }
}
