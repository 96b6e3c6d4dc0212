//! The real side of the seam: [`RealNet`] (tokio sockets on loopback) and [`RealClock`]
//! (the system's monotonic and wall clocks), with the same pod-level fault table as the
//! simulator applied to real connections, in the spirit of Toxiproxy.
//!
//! Addresses: one run owns a slice of the loopback range, `127.B.0.0/16` (B picked per
//! run, see [`Addrs::reserve`]). Pod `i` has its own address `127.B.(1 + i/250).(1 +
//! i%250)` and binds its planned ports there; istiod has `127.B.0.1`. Every address of
//! 127.0.0.0/8 reaches the loopback interface on Linux, so nothing leaves the machine,
//! and an accepted connection's peer address names the pod that opened it.
//!
//! Translation at the seam, so the mesh above it is the simulator's unchanged: a bind
//! to `0.0.0.0:port` binds the pod's own address; `127.0.0.1` (a pod's app and sidecar
//! talking to each other) is the pod's own address; a node name resolves to the address
//! of the pod owning the port (every pod port is unique in a run), `istiod` to istiod's.
//!
//! Faults, as in the simulator: a partition blackholes new connections (a connect waits
//! until it heals or the caller gives up) and stalls established ones in both
//! directions; a crashed pod's sockets fail with a reset (and its tasks, so its
//! listeners, are gone); link latency delays every byte read across two nodes by the
//! link's one-way latency (`network.latency`, or a `link_latency` fault's) — the
//! receiving side of each direction waits, so a round trip pays it twice. Jitter
//! (`network.jitter`) is the simulator's only.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use mesh::net::{Clock, Listener, Net};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::net::Faults;
use crate::pod::PodNet;
use crate::scenario::ISTIOD;

/// Pods per /24 of a run's loopback slice.
const PODS_PER_SUBNET: usize = 250;
/// The most pods the envoy target runs: its Envoys' own addresses take the upper part
/// of the slice ([`Addrs::envoy`]).
pub const ENVOY_MAX_PODS: usize = PODS_PER_SUBNET * 100;
/// The port on istiod's address a run holds for its whole length: the slice is taken.
const LOCK_PORT: u16 = 15_000;
/// Bytes a delayed stream reads ahead of its reader at most.
const DELAY_BUFFER: usize = 256 * 1024;

/// The loopback slice of one run.
#[derive(Debug)]
pub struct Addrs {
    second_octet: u8,
    pods: usize,
    /// Held for the run: another run (in this process or another) skips the slice.
    _lock: Option<std::net::TcpListener>,
}

impl Addrs {
    /// Takes a free slice of 127.0.0.0/8 for `pods` pods. Slices are tried from one
    /// derived from the process id and a per-process counter, so concurrent runs (tests
    /// in one process, or several processes) take different ones.
    pub fn reserve(pods: usize) -> io::Result<Addrs> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let max = PODS_PER_SUBNET * 254;
        if pods > max {
            return Err(io::Error::other(format!("real mode runs at most {max} pods, not {pods}")));
        }
        let start = std::process::id().wrapping_mul(7).wrapping_add(NEXT.fetch_add(1, Ordering::SeqCst));
        let mut last = None;
        for k in 0..150u32 {
            let second_octet = 100 + ((start + k) % 150) as u8;
            match std::net::TcpListener::bind((Ipv4Addr::new(127, second_octet, 0, 1), LOCK_PORT)) {
                Ok(lock) => return Ok(Addrs { second_octet, pods, _lock: Some(lock) }),
                Err(e) => last = Some(e),
            }
        }
        Err(io::Error::other(format!(
            "no free loopback slice 127.100-249.0.0/16 (binding 127.x.0.1:{LOCK_PORT}): {}",
            last.map_or_else(String::new, |e| e.to_string())
        )))
    }

    /// The slice `127.second_octet.0.0/16`, as components started by hand name it: no
    /// lock, since their processes share it by design.
    pub fn fixed(second_octet: u8, pods: usize) -> Addrs {
        Addrs { second_octet, pods, _lock: None }
    }

    pub fn istiod(&self) -> Ipv4Addr {
        Ipv4Addr::new(127, self.second_octet, 0, 1)
    }

    pub fn pod(&self, pod: usize) -> Ipv4Addr {
        assert!(pod < self.pods, "pod {pod} of {}", self.pods);
        Ipv4Addr::new(127, self.second_octet, (1 + pod / PODS_PER_SUBNET) as u8, (1 + pod % PODS_PER_SUBNET) as u8)
    }

    /// Where the envoy target puts pod `pod`'s Envoy listeners (admin, inbound): an
    /// address of its own, behind the relay on the pod's address (`127.B.(101 +
    /// i/250).(1 + i%250)`; the envoy target runs at most [`ENVOY_MAX_PODS`] pods).
    pub fn envoy(&self, pod: usize) -> Ipv4Addr {
        assert!(pod < self.pods.min(ENVOY_MAX_PODS), "pod {pod} of {}", self.pods);
        Ipv4Addr::new(127, self.second_octet, (101 + pod / PODS_PER_SUBNET) as u8, (1 + pod % PODS_PER_SUBNET) as u8)
    }

    /// Where the envoy target's control plane really listens, behind the relay on
    /// istiod's address.
    pub fn istiod_hidden(&self) -> Ipv4Addr {
        Ipv4Addr::new(127, self.second_octet, 0, 2)
    }

    /// The pod whose address `ip` is, if any.
    fn pod_at(&self, ip: IpAddr) -> Option<usize> {
        let IpAddr::V4(v4) = ip else { return None };
        let [a, b, c, d] = v4.octets();
        if a != 127 || b != self.second_octet || c == 0 || d == 0 || usize::from(d) > PODS_PER_SUBNET {
            return None;
        }
        let pod = (usize::from(c) - 1) * PODS_PER_SUBNET + usize::from(d) - 1;
        (pod < self.pods).then_some(pod)
    }
}

/// What every socket of one real run shares.
#[derive(Debug)]
pub struct Shared {
    pub addrs: Addrs,
    pub faults: Arc<Faults>,
    /// Each pod's node (istiod's is the one after the nodes').
    pub node_of: Vec<usize>,
    /// istiod's index in the fault table (after the pods').
    pub istiod: usize,
    /// One-way latency between two different nodes, unless a fault sets a link's.
    pub base_latency: Duration,
    /// Link latency faults: (lower node, higher node) → one-way latency.
    links: Mutex<BTreeMap<(usize, usize), Duration>>,
    /// Captured connections not yet accepted: client address → original destination.
    captured: Mutex<BTreeMap<SocketAddr, SocketAddr>>,
    /// Whether a captured connection tells its original destination in a PROXY
    /// protocol header (the envoy target: Envoy reads it with its `proxy_protocol`
    /// listener filter, where a sidecar in a pod reads `SO_ORIGINAL_DST`).
    proxy_protocol: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub fn new(addrs: Addrs, faults: Arc<Faults>, node_of: Vec<usize>, base_latency: Duration) -> Arc<Shared> {
        let istiod = node_of.len();
        Arc::new(Shared {
            addrs,
            faults,
            node_of,
            istiod,
            base_latency,
            links: Mutex::new(BTreeMap::new()),
            captured: Mutex::new(BTreeMap::new()),
            proxy_protocol: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Captured connections start with a PROXY protocol (v1) header naming their
    /// original destination.
    pub fn send_proxy_protocol(&self) {
        self.proxy_protocol.store(true, Ordering::SeqCst);
    }

    /// Sets (`Some`) or clears the one-way latency between nodes `a` and `b`.
    pub fn set_link_latency(&self, a: usize, b: usize, latency: Option<Duration>) {
        let mut links = self.links.lock().expect("links lock");
        match latency {
            Some(l) => links.insert((a.min(b), a.max(b)), l),
            None => links.remove(&(a.min(b), a.max(b))),
        };
    }

    /// The node of fault-table entry `who` (a pod, or istiod on a node of its own).
    fn node(&self, who: usize) -> usize {
        self.node_of.get(who).copied().unwrap_or(self.node_of.len())
    }

    fn latency(&self, a: usize, b: usize) -> Duration {
        let (x, y) = (self.node(a), self.node(b));
        if x == y {
            return Duration::ZERO;
        }
        self.links.lock().expect("links lock").get(&(x.min(y), x.max(y))).copied().unwrap_or(self.base_latency)
    }

    fn ip_of(&self, who: usize) -> Ipv4Addr {
        if who == self.istiod { self.addrs.istiod() } else { self.addrs.pod(who) }
    }

    /// Who is at `ip`: a pod, istiod, or (`None`) something outside the run.
    pub fn at(&self, ip: IpAddr) -> Option<usize> {
        if ip == IpAddr::V4(self.addrs.istiod()) { Some(self.istiod) } else { self.addrs.pod_at(ip) }
    }
}

/// The sockets of one pod (or of istiod) in a real run.
#[derive(Clone, Debug)]
pub struct RealNet {
    /// Fault-table index: a pod, or istiod.
    me: usize,
    shared: Arc<Shared>,
}

impl RealNet {
    pub fn new(me: usize, shared: Arc<Shared>) -> RealNet {
        RealNet { me, shared }
    }

    fn my_ip(&self) -> Ipv4Addr {
        self.shared.ip_of(self.me)
    }

    /// The address a connection to `addr` really goes to.
    fn translate(&self, addr: SocketAddr) -> SocketAddr {
        if addr.ip() == IpAddr::V4(Ipv4Addr::LOCALHOST) || addr.ip().is_unspecified() {
            SocketAddr::new(IpAddr::V4(self.my_ip()), addr.port())
        } else {
            addr
        }
    }

    fn stream(&self, inner: TcpStream, peer: Option<usize>, partitions: bool) -> RealStream {
        let link = peer.unwrap_or(self.me);
        RealStream {
            inner,
            me: self.me,
            peer: link,
            partitions,
            generation: (self.me < self.shared.istiod).then(|| self.shared.faults.generation(self.me)),
            shared: self.shared.clone(),
            delayed: VecDeque::new(),
            buffered: 0,
            eof: None,
            timer: None,
        }
    }

    /// Connects from this pod's own address (so the peer knows who called), the way the
    /// fault table allows: blackholed while partitioned, refused by a crashed pod.
    async fn dial(&self, addr: SocketAddr, on_bound: impl FnOnce(SocketAddr)) -> io::Result<RealStream> {
        let addr = self.translate(addr);
        let peer = self.shared.at(addr.ip()).filter(|&p| p != self.me);
        self.dial_peer(addr, peer, on_bound).await
    }

    /// Connects to `addr`, where `peer` (a pod, or istiod) listens, under the fault
    /// table's rules for this pod and `peer`: a relay in front of a process that is not
    /// on the seam (an Envoy) dials its hidden address this way, as the calling pod.
    pub async fn dial_as(&self, addr: SocketAddr, peer: usize) -> io::Result<RealStream> {
        self.dial_peer(addr, Some(peer).filter(|&p| p != self.me), |_| {}).await
    }

    async fn dial_peer(
        &self,
        addr: SocketAddr,
        peer: Option<usize>,
        on_bound: impl FnOnce(SocketAddr),
    ) -> io::Result<RealStream> {
        if let Some(peer) = peer {
            // A partition blackholes the SYN: wait until it heals (or the caller gives up).
            std::future::poll_fn(|cx| {
                if self.shared.faults.blocked(self.me, peer, cx.waker()) { Poll::Pending } else { Poll::Ready(()) }
            })
            .await;
            if peer < self.shared.istiod && self.shared.faults.is_crashed(peer) {
                return Err(io::Error::new(io::ErrorKind::ConnectionRefused, "pod is down"));
            }
        }
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(IpAddr::V4(self.my_ip()), 0))?;
        on_bound(socket.local_addr()?);
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(self.stream(stream, peer, true))
    }
}

#[allow(clippy::disallowed_types)] // the seam's real implementation
type TcpStream = tokio::net::TcpStream;
#[allow(clippy::disallowed_types)] // the seam's real implementation
type TcpListener = tokio::net::TcpListener;
type TcpSocket = tokio::net::TcpSocket;

pub struct RealListener {
    inner: TcpListener,
    net: RealNet,
}

impl Listener for RealListener {
    type Stream = RealStream;
    async fn accept(&mut self) -> io::Result<(RealStream, SocketAddr)> {
        let (s, peer) = self.inner.accept().await?;
        s.set_nodelay(true)?;
        let from = self.net.shared.at(peer.ip()).filter(|&p| p != self.net.me);
        // Partitions are enforced on the connecting side; the accepting side only dies
        // with its pod (as in the simulator). Latency applies to each side's reads.
        Ok((self.net.stream(s, from, false), peer))
    }
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

impl Net for RealNet {
    type Stream = RealStream;
    type Listener = RealListener;

    #[allow(clippy::disallowed_methods)] // the seam's real implementation
    async fn bind(&self, addr: SocketAddr) -> io::Result<RealListener> {
        let addr = self.translate(addr);
        let inner =
            TcpListener::bind(addr).await.map_err(|e| io::Error::new(e.kind(), format!("cannot bind {addr}: {e}")))?;
        Ok(RealListener { inner, net: self.clone() })
    }

    async fn connect(&self, addr: SocketAddr) -> io::Result<RealStream> {
        self.dial(addr, |_| {}).await
    }

    fn original_dst(&self, _local: SocketAddr, peer: SocketAddr) -> Option<SocketAddr> {
        self.shared.captured.lock().expect("capture lock").remove(&peer)
    }

    async fn resolve(&self, host: &str, port: u16) -> io::Result<SocketAddr> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(self.translate(SocketAddr::new(ip, port)));
        }
        if host == ISTIOD {
            return Ok(SocketAddr::new(IpAddr::V4(self.shared.addrs.istiod()), port));
        }
        // A node name: every pod port is unique, so the port names the pod.
        match self.shared.faults.owner(port) {
            Some(pod) => Ok(SocketAddr::new(IpAddr::V4(self.shared.addrs.pod(pod)), port)),
            None => Err(io::Error::new(io::ErrorKind::NotFound, format!("no pod listens on {host}:{port}"))),
        }
    }
}

impl PodNet for RealNet {
    async fn connect_captured(&self, listener_port: u16, original_dst: SocketAddr) -> io::Result<RealStream> {
        let shared = self.shared.clone();
        let mut client = None;
        let r = self
            .dial(SocketAddr::from((Ipv4Addr::LOCALHOST, listener_port)), |local| {
                client = Some(local);
                shared.captured.lock().expect("capture lock").insert(local, original_dst);
            })
            .await;
        if r.is_err()
            && let Some(c) = client
        {
            self.shared.captured.lock().expect("capture lock").remove(&c);
        }
        let mut stream = r?;
        if self.shared.proxy_protocol.load(Ordering::SeqCst)
            && let Some(c) = client
        {
            self.shared.captured.lock().expect("capture lock").remove(&c);
            let header =
                format!("PROXY TCP4 {} {} {} {}\r\n", c.ip(), original_dst.ip(), c.port(), original_dst.port());
            tokio::io::AsyncWriteExt::write_all(&mut stream, header.as_bytes()).await?;
        }
        Ok(stream)
    }
}

/// A real TCP stream that obeys the fault table and the links' latency.
pub struct RealStream {
    inner: TcpStream,
    me: usize,
    /// The pod (or istiod) at the other end; `me` when it is outside the run or itself.
    peer: usize,
    /// Whether partitions stall this side (the connecting side's).
    partitions: bool,
    /// The pod's generation when the stream opened (`None`: istiod, whose crash the
    /// world handles by ending its tasks).
    generation: Option<u64>,
    shared: Arc<Shared>,
    /// Bytes read from the socket, each with the instant it may be handed on.
    delayed: VecDeque<(tokio::time::Instant, Bytes)>,
    buffered: usize,
    /// When the peer's FIN may be handed on.
    eof: Option<tokio::time::Instant>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl RealStream {
    fn check(&self, cx: &Context<'_>) -> Poll<io::Result<()>> {
        if let Some(g) = self.generation
            && self.shared.faults.generation(self.me) != g
        {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionReset, "pod crashed")));
        }
        if self.partitions && self.peer != self.me && self.shared.faults.blocked(self.me, self.peer, cx.waker()) {
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }

    /// Waits until `at`; `Ready` once it has passed.
    fn wait_until(&mut self, cx: &mut Context<'_>, at: tokio::time::Instant) -> Poll<()> {
        let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if timer.deadline() != at {
            timer.as_mut().reset(at);
        }
        timer.as_mut().poll(cx)
    }

    #[allow(clippy::disallowed_methods)] // the seam's real implementation: real time
    fn poll_delayed(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>, latency: Duration) -> Poll<io::Result<()>> {
        loop {
            let now = tokio::time::Instant::now();
            // Read ahead what the socket has, stamping each chunk with its arrival.
            while self.eof.is_none() && self.buffered < DELAY_BUFFER {
                let mut chunk = vec![0u8; 16 * 1024];
                let mut rb = ReadBuf::new(&mut chunk);
                match Pin::new(&mut self.inner).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) if rb.filled().is_empty() => self.eof = Some(now + latency),
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        chunk.truncate(n);
                        self.buffered += n;
                        self.delayed.push_back((now + latency, Bytes::from(chunk)));
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => break,
                }
            }
            let due = match self.delayed.front() {
                Some((at, _)) => *at,
                None => match self.eof {
                    Some(at) => at,
                    None => return Poll::Pending,
                },
            };
            if due > now {
                match self.wait_until(cx, due) {
                    Poll::Ready(()) => continue,
                    Poll::Pending => return Poll::Pending,
                }
            }
            let Some((_, front)) = self.delayed.front_mut() else {
                // The FIN is due: end of stream.
                return Poll::Ready(Ok(()));
            };
            let n = front.len().min(buf.remaining());
            buf.put_slice(&front[..n]);
            front.advance(n);
            self.buffered -= n;
            if front.is_empty() {
                self.delayed.pop_front();
            }
            return Poll::Ready(Ok(()));
        }
    }
}

impl AsyncRead for RealStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.check(cx) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        let latency = if self.peer == self.me { Duration::ZERO } else { self.shared.latency(self.me, self.peer) };
        if latency.is_zero() && self.delayed.is_empty() && self.eof.is_none() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        self.poll_delayed(cx, buf, latency)
    }
}

impl AsyncWrite for RealStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.check(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut self.inner).poll_write(cx, buf),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.check(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut self.inner).poll_flush(cx),
            other => other,
        }
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Real time: the scenario's clock starts when the run's boot is over (until then it
/// reads zero, as the simulator's does during its boot); Unix time is the system's.
#[derive(Debug)]
pub struct RealClock {
    base: std::time::Instant,
    unix_base: Duration,
    start: OnceLock<Duration>,
}

impl RealClock {
    #[allow(clippy::disallowed_methods)] // the seam's real implementation
    pub fn new() -> RealClock {
        let unix_base = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        RealClock { base: std::time::Instant::now(), unix_base, start: OnceLock::new() }
    }

    /// The scenario's clock starts now (once).
    pub fn start(&self) {
        let _ = self.start.set(self.base.elapsed());
    }
}

impl Default for RealClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for RealClock {
    fn now(&self) -> Duration {
        match self.start.get() {
            Some(s) => self.base.elapsed().saturating_sub(*s),
            None => Duration::ZERO,
        }
    }
    fn unix_time(&self) -> Duration {
        self.unix_base + self.base.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_addresses_round_trip_and_stay_in_the_runs_slice() {
        let addrs = Addrs::reserve(600).expect("a free slice");
        for pod in [0, 1, 249, 250, 251, 599] {
            let ip = addrs.pod(pod);
            assert_eq!(ip.octets()[1], addrs.istiod().octets()[1], "same slice as istiod");
            assert_eq!(addrs.pod_at(IpAddr::V4(ip)), Some(pod), "{ip}");
        }
        assert_eq!(addrs.pod_at(IpAddr::V4(addrs.istiod())), None, "istiod is no pod");
        assert_eq!(addrs.pod_at(IpAddr::V4(Ipv4Addr::LOCALHOST)), None);
        let other = Addrs::reserve(1).expect("a second slice");
        assert_ne!(other.istiod(), addrs.istiod(), "a held slice is not handed out twice");
    }
}
