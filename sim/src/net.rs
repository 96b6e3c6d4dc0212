//! The turmoil side of the seam: [`SimNet`] (sockets) and [`SimClock`] (time), plus the
//! pod-level faults applied at the seam ([`Faults`]). A turmoil host is a *node* that
//! holds many pods, so faults between pods cannot be turmoil's host-level partitions:
//! every socket a pod's sidecar opens carries the pod's identity, and the fault table
//! decides, per link, whether bytes flow.
//!
//! Partition = blackhole: a connect across it waits (the caller's connect timeout
//! fires), established connections stall in both directions and resume when the
//! partition heals, as TCP with retransmits would. Crash = the pod's sockets fail with a
//! reset and its listeners go away (the world aborts its tasks).
//!
//! Traffic inside a node (app ↔ its sidecar, pod ↔ pod on the same node) does not go
//! through turmoil: turmoil delivers loopback messages one tick late, which would add a
//! tick to every hop. [`Local`] connects such sockets in memory, with no delay, as a
//! veth pair on one machine nearly does.
//!
//! Capture: an app's connection to a service's ClusterIP goes to its own sidecar's
//! outbound listener instead ([`SimNet::connect_captured`]), and [`Local`] keeps the
//! original destination keyed by the client's address, as conntrack does after
//! iptables' REDIRECT; the sidecar asks for it once per accepted connection
//! (`Net::original_dst`, which takes the entry out).

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use mesh::net::{Clock, Listener, Net};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::sync::mpsc;

use crate::pod::PodNet;

/// Shared pod-level fault state. Cheap to consult when no fault is active.
#[derive(Debug, Default)]
pub struct Faults {
    /// Number of active partitions: 0 skips the lock on the data path.
    partitions_active: AtomicU64,
    state: Mutex<FaultState>,
    /// Per pod: incremented at each crash; sockets of an older generation fail.
    generations: Vec<AtomicU64>,
    /// Ephemeral ports of in-memory connections (for peer addresses only).
    local_ports: AtomicU64,
}

#[derive(Debug, Default)]
struct FaultState {
    /// Pod owning each port (every pod port is unique in a world).
    port_owner: BTreeMap<u16, usize>,
    /// Unordered pairs of pods that cannot reach each other, with a reference count.
    partitions: BTreeMap<(usize, usize), u32>,
    /// Tasks blocked on a partition; woken when any partition heals.
    blocked: Vec<Waker>,
    /// App error overrides: pod → the active app_errors faults on it, in the order they
    /// started, as (fault, status, rate in ppm). The latest started applies.
    app_errors: BTreeMap<usize, Vec<(usize, u16, u32)>>,
    /// Crashed pods, with the number of crash faults holding each down: a pod is down
    /// while any crash fault covering it is active (overlapping windows nest).
    crashed: BTreeMap<usize, u32>,
}

fn pair(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

impl Faults {
    pub fn new(pods: usize, port_owner: BTreeMap<u16, usize>) -> Arc<Faults> {
        Arc::new(Faults {
            partitions_active: AtomicU64::new(0),
            state: Mutex::new(FaultState { port_owner, ..FaultState::default() }),
            generations: (0..pods).map(|_| AtomicU64::new(0)).collect(),
            local_ports: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FaultState> {
        self.state.lock().expect("fault table lock")
    }

    pub fn owner(&self, port: u16) -> Option<usize> {
        self.lock().port_owner.get(&port).copied()
    }

    pub fn partition(&self, from: &[usize], to: &[usize]) {
        let mut s = self.lock();
        for &a in from {
            for &b in to {
                if a != b {
                    *s.partitions.entry(pair(a, b)).or_default() += 1;
                }
            }
        }
        self.partitions_active.store(s.partitions.len() as u64, Ordering::SeqCst);
    }

    pub fn heal(&self, from: &[usize], to: &[usize]) {
        let mut s = self.lock();
        for &a in from {
            for &b in to {
                if a == b {
                    continue;
                }
                let key = pair(a, b);
                if let Some(n) = s.partitions.get_mut(&key) {
                    *n -= 1;
                    if *n == 0 {
                        s.partitions.remove(&key);
                    }
                }
            }
        }
        self.partitions_active.store(s.partitions.len() as u64, Ordering::SeqCst);
        for w in s.blocked.drain(..) {
            w.wake();
        }
    }

    /// If `a` and `b` are partitioned, registers `waker` and returns true.
    pub(crate) fn blocked(&self, a: usize, b: usize, waker: &Waker) -> bool {
        if self.partitions_active.load(Ordering::SeqCst) == 0 {
            return false;
        }
        let mut s = self.lock();
        if s.partitions.contains_key(&pair(a, b)) {
            s.blocked.push(waker.clone());
            true
        } else {
            false
        }
    }

    /// Fault `fault` starts (`Some`) or ends (`None`) overriding `pod`'s app errors. While
    /// several overlap, the latest started applies; when it ends, the one before applies again.
    pub fn set_app_errors(&self, pod: usize, fault: usize, errors: Option<(u16, u32)>) {
        let mut s = self.lock();
        let active = s.app_errors.entry(pod).or_default();
        match errors {
            Some((status, rate)) => active.push((fault, status, rate)),
            None => {
                if let Some(i) = active.iter().rposition(|&(f, ..)| f == fault) {
                    active.remove(i);
                }
            }
        }
        if active.is_empty() {
            s.app_errors.remove(&pod);
        }
    }

    pub fn app_errors(&self, pod: usize) -> Option<(u16, u32)> {
        self.lock().app_errors.get(&pod).and_then(|a| a.last()).map(|&(_, status, rate)| (status, rate))
    }

    /// A crash fault covering `pod` starts. Returns true if this takes the pod down (its
    /// sockets fail from now on); false if it was down already, which changes nothing.
    pub fn crash(&self, pod: usize) -> bool {
        let mut s = self.lock();
        let holds = s.crashed.entry(pod).or_default();
        *holds += 1;
        if *holds > 1 {
            return false;
        }
        self.generations[pod].fetch_add(1, Ordering::SeqCst);
        true
    }

    /// A crash fault covering `pod` ends. Returns true if the pod is up again: no other
    /// crash fault holds it down. Ending a crash that never started changes nothing.
    pub fn recover(&self, pod: usize) -> bool {
        let mut s = self.lock();
        let Some(holds) = s.crashed.get_mut(&pod) else { return false };
        *holds -= 1;
        if *holds > 0 {
            return false;
        }
        s.crashed.remove(&pod);
        true
    }

    pub fn is_crashed(&self, pod: usize) -> bool {
        self.lock().crashed.contains_key(&pod)
    }

    fn next_local_port(&self) -> u16 {
        49152 + (self.local_ports.fetch_add(1, Ordering::SeqCst) % 16384) as u16
    }

    pub(crate) fn generation(&self, pod: usize) -> u64 {
        self.generations[pod].load(Ordering::SeqCst)
    }
}

/// Simulated time before the scenario's clock starts: the control plane comes up and
/// pushes every sidecar its first config during it, so traffic and faults at `0s` meet
/// ready proxies. The scenario's `t` is the simulation's `BOOT + t`.
pub const BOOT: Duration = Duration::from_secs(1);

/// Waits, inside a simulated host, until the scenario's clock starts (the end of [`BOOT`]).
pub async fn scenario_start() {
    let elapsed = turmoil::sim_elapsed().expect("scenario_start runs inside a simulated host");
    tokio::time::sleep(BOOT.saturating_sub(elapsed)).await;
}

/// Simulated time (the scenario's clock: the simulation's elapsed time minus [`BOOT`],
/// 0 during the boot) and its fixed epoch.
///
/// Asking turmoil for the elapsed time borrows its whole world; the host's own tokio
/// clock (which turmoil advances by exactly one tick per step, on every host) is far
/// cheaper. So a clock notes both once, in the host that creates it, and then reads
/// the tokio clock. Create it inside a simulated host.
#[derive(Clone, Copy, Debug)]
pub struct SimClock {
    base: tokio::time::Instant,
    base_elapsed: Duration,
    epoch: Duration,
}

impl SimClock {
    #[allow(clippy::disallowed_methods)] // the seam's simulated implementation
    pub fn new() -> SimClock {
        let base_elapsed = turmoil::sim_elapsed().expect("SimClock::new runs inside a simulated host");
        let epoch = turmoil::since_epoch().unwrap_or_default().saturating_sub(base_elapsed);
        SimClock { base: tokio::time::Instant::now(), base_elapsed, epoch }
    }
}

impl Default for SimClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SimClock {
    #[allow(clippy::disallowed_methods)] // the seam's simulated implementation
    fn now(&self) -> Duration {
        (self.base_elapsed + self.base.elapsed()).saturating_sub(BOOT)
    }
    fn unix_time(&self) -> Duration {
        self.epoch + self.now()
    }
}

/// Where a bound port receives in-memory connections.
type AcceptQueue = mpsc::UnboundedSender<(DuplexStream, SocketAddr)>;

/// In-memory connections between sockets of one node.
#[derive(Debug, Default)]
pub struct Local {
    /// Per port: the node that bound it and its accept queue.
    listeners: Mutex<BTreeMap<u16, (usize, AcceptQueue)>>,
    /// Node IPs, known once the simulation has its hosts.
    node_ips: OnceLock<Vec<IpAddr>>,
    /// The control plane's host IP and its index in the fault table.
    istiod: OnceLock<(IpAddr, usize)>,
    /// Captured connections not yet accepted: client address → original destination.
    /// Bounded by the ephemeral ports in use (a reused port overwrites its entry).
    captured: Mutex<BTreeMap<SocketAddr, SocketAddr>>,
}

/// Buffer of one direction of an in-memory connection.
const LOCAL_BUFFER: usize = 64 * 1024;

impl Local {
    /// The nodes' IPs, then istiod's.
    pub fn set_node_ips(&self, ips: Vec<IpAddr>) {
        self.node_ips.set(ips).expect("node IPs are set once");
    }

    /// Where the control plane runs: its host's IP and its index in the fault table
    /// (after the pods').
    pub fn set_istiod(&self, ip: IpAddr, index: usize) {
        self.istiod.set((ip, index)).expect("istiod is set once");
    }

    /// The fault-table index of the control plane if `addr` is on its host.
    fn istiod_at(&self, addr: SocketAddr) -> Option<usize> {
        self.istiod.get().filter(|(ip, _)| *ip == addr.ip()).map(|(_, i)| *i)
    }

    /// Number of nodes (istiod's host comes after them).
    pub fn node_count(&self) -> usize {
        self.node_ips.get().map_or(0, |ips| ips.len().saturating_sub(1))
    }

    fn node_ip(&self, node: usize) -> IpAddr {
        self.node_ips.get().expect("node IPs set before the run")[node]
    }

    /// Whether `addr` seen from `node` stays on the node.
    fn is_local(&self, node: usize, addr: SocketAddr) -> bool {
        addr.ip().is_loopback() || addr.ip() == self.node_ip(node)
    }

    fn bind(&self, node: usize, port: u16) -> io::Result<mpsc::UnboundedReceiver<(DuplexStream, SocketAddr)>> {
        let mut l = self.listeners.lock().expect("local lock");
        if let Some((_, tx)) = l.get(&port)
            && !tx.is_closed()
        {
            return Err(io::Error::new(io::ErrorKind::AddrInUse, format!("port {port} in use")));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        l.insert(port, (node, tx));
        Ok(rx)
    }

    fn capture(&self, client: SocketAddr, original_dst: SocketAddr) {
        self.captured.lock().expect("capture lock").insert(client, original_dst);
    }

    /// Takes the original destination of the captured connection from `client`.
    fn original_dst(&self, client: SocketAddr) -> Option<SocketAddr> {
        self.captured.lock().expect("capture lock").remove(&client)
    }

    fn connect(&self, node: usize, addr: SocketAddr, local_port: u16) -> io::Result<DuplexStream> {
        let l = self.listeners.lock().expect("local lock");
        let refused = || io::Error::new(io::ErrorKind::ConnectionRefused, format!("nothing listens on {addr}"));
        let Some((owner, tx)) = l.get(&addr.port()) else { return Err(refused()) };
        if *owner != node {
            return Err(refused());
        }
        let (a, b) = tokio::io::duplex(LOCAL_BUFFER);
        let peer = SocketAddr::new(self.node_ip(node), local_port);
        tx.send((b, peer)).map_err(|_| refused())?;
        Ok(a)
    }
}

/// Sockets of one pod.
#[derive(Clone, Debug)]
pub struct SimNet {
    pod: usize,
    node: usize,
    faults: Arc<Faults>,
    local: Arc<Local>,
}

impl SimNet {
    pub fn new(pod: usize, node: usize, faults: Arc<Faults>, local: Arc<Local>) -> SimNet {
        SimNet { pod, node, faults, local }
    }

    /// [`PodNet::connect_captured`], in memory: the capture never leaves the node.
    pub fn connect_captured(&self, listener_port: u16, original_dst: SocketAddr) -> io::Result<SimStream> {
        let port = self.faults.next_local_port();
        let client = SocketAddr::new(self.local.node_ip(self.node), port);
        self.local.capture(client, original_dst);
        let stream = self.local.connect(self.node, SocketAddr::from(([127, 0, 0, 1], listener_port)), port);
        let stream = stream.inspect_err(|_| {
            self.local.original_dst(client);
        })?;
        let generation = self.faults.generation(self.pod);
        Ok(SimStream {
            inner: Inner::Local(stream),
            link: Some((self.pod, self.pod)),
            generation,
            faults: self.faults.clone(),
        })
    }
}

enum Inner {
    Net(turmoil::net::TcpStream),
    Local(DuplexStream),
}

/// A turmoil stream that obeys the fault table.
pub struct SimStream {
    inner: Inner,
    /// (this pod, peer pod) when the peer is another pod.
    link: Option<(usize, usize)>,
    generation: u64,
    faults: Arc<Faults>,
}

impl SimStream {
    fn check(&self, cx: &Context<'_>) -> Poll<io::Result<()>> {
        let me = self.link.map(|l| l.0);
        if let Some(me) = me
            && self.faults.generation(me) != self.generation
        {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionReset, "pod crashed")));
        }
        if let Some((a, b)) = self.link
            && self.faults.blocked(a, b, cx.waker())
        {
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for SimStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.check(cx) {
            Poll::Ready(Ok(())) => match &mut self.inner {
                Inner::Net(s) => Pin::new(s).poll_read(cx, buf),
                Inner::Local(s) => Pin::new(s).poll_read(cx, buf),
            },
            other => other,
        }
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.check(cx) {
            Poll::Ready(Ok(())) => match &mut self.inner {
                Inner::Net(s) => Pin::new(s).poll_write(cx, buf),
                Inner::Local(s) => Pin::new(s).poll_write(cx, buf),
            },
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.check(cx) {
            Poll::Ready(Ok(())) => match &mut self.inner {
                Inner::Net(s) => Pin::new(s).poll_flush(cx),
                Inner::Local(s) => Pin::new(s).poll_flush(cx),
            },
            other => other,
        }
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.inner {
            Inner::Net(s) => Pin::new(s).poll_shutdown(cx),
            Inner::Local(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

pub struct SimListener {
    net: turmoil::net::TcpListener,
    local: mpsc::UnboundedReceiver<(DuplexStream, SocketAddr)>,
    pod: usize,
    faults: Arc<Faults>,
}

impl Listener for SimListener {
    type Stream = SimStream;
    async fn accept(&mut self) -> io::Result<(SimStream, SocketAddr)> {
        let (inner, peer) = tokio::select! {
            biased;
            Some((s, peer)) = self.local.recv() => (Inner::Local(s), peer),
            r = self.net.accept() => {
                let (s, peer) = r?;
                (Inner::Net(s), peer)
            }
        };
        let generation = self.faults.generation(self.pod);
        // Partitions are enforced on the connecting side; the accepting side only dies with its pod.
        Ok((SimStream { inner, link: Some((self.pod, self.pod)), generation, faults: self.faults.clone() }, peer))
    }
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.net.local_addr()
    }
}

impl PodNet for SimNet {
    async fn connect_captured(&self, listener_port: u16, original_dst: SocketAddr) -> io::Result<SimStream> {
        SimNet::connect_captured(self, listener_port, original_dst)
    }
}

impl Net for SimNet {
    type Stream = SimStream;
    type Listener = SimListener;

    async fn bind(&self, addr: SocketAddr) -> io::Result<SimListener> {
        let local = self.local.bind(self.node, addr.port())?;
        let net = turmoil::net::TcpListener::bind(addr).await?;
        Ok(SimListener { net, local, pod: self.pod, faults: self.faults.clone() })
    }

    async fn connect(&self, addr: SocketAddr) -> io::Result<SimStream> {
        let local = self.local.is_local(self.node, addr);
        let peer = if addr.ip().is_loopback() {
            None
        } else {
            self.local.istiod_at(addr).or_else(|| self.faults.owner(addr.port()))
        };
        let link = Some((self.pod, peer.unwrap_or(self.pod)));
        let generation = self.faults.generation(self.pod);
        if let Some(peer) = peer {
            // A partition blackholes the SYN: wait until it heals (or the caller gives up).
            std::future::poll_fn(|cx| {
                if self.faults.blocked(self.pod, peer, cx.waker()) { Poll::Pending } else { Poll::Ready(()) }
            })
            .await;
            if self.faults.is_crashed(peer) {
                return Err(io::Error::new(io::ErrorKind::ConnectionRefused, "pod is down"));
            }
        }
        let inner = if local {
            let port = self.faults.next_local_port();
            Inner::Local(self.local.connect(self.node, addr, port)?)
        } else {
            Inner::Net(turmoil::net::TcpStream::connect(addr).await?)
        };
        Ok(SimStream { inner, link, generation, faults: self.faults.clone() })
    }

    fn original_dst(&self, _local: SocketAddr, peer: SocketAddr) -> Option<SocketAddr> {
        self.local.original_dst(peer)
    }

    async fn resolve(&self, host: &str, port: u16) -> io::Result<SocketAddr> {
        let ip: IpAddr = match host.parse() {
            Ok(ip) => ip,
            Err(_) => turmoil::lookup(host),
        };
        Ok(SocketAddr::new(ip, port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_crashes_keep_a_pod_down_until_the_last_ends() {
        let f = Faults::new(2, BTreeMap::new());
        assert!(f.crash(0), "the first crash takes the pod down");
        let generation = f.generation(0);
        assert!(!f.crash(0), "a crash of a pod that is down changes nothing");
        assert_eq!(f.generation(0), generation, "its sockets are not killed twice");
        assert!(!f.recover(0) && f.is_crashed(0), "one crash still holds it down");
        assert!(f.recover(0) && !f.is_crashed(0), "the last end brings it up");
        assert!(!f.recover(0) && !f.recover(1), "an end without a start changes nothing");
        assert!(f.crash(0) && f.generation(0) > generation, "a later crash takes it down again");
    }

    #[test]
    fn a_captured_connections_original_destination_is_told_once() {
        let local = Local::default();
        let client: SocketAddr = "192.168.0.1:49152".parse().unwrap();
        let vip: SocketAddr = "10.96.0.1:5432".parse().unwrap();
        local.capture(client, vip);
        assert_eq!(local.original_dst("192.168.0.1:49153".parse().unwrap()), None, "another client: not captured");
        assert_eq!(local.original_dst(client), Some(vip));
        assert_eq!(local.original_dst(client), None, "the accept takes the entry, as it leaves the table bounded");
    }

    #[test]
    fn overlapping_app_errors_end_one_at_a_time() {
        let f = Faults::new(1, BTreeMap::new());
        f.set_app_errors(0, 0, Some((500, 1_000_000)));
        f.set_app_errors(0, 1, Some((503, 500_000)));
        assert_eq!(f.app_errors(0), Some((503, 500_000)), "the latest started applies");
        f.set_app_errors(0, 1, None);
        assert_eq!(f.app_errors(0), Some((500, 1_000_000)), "the earlier one applies again");
        f.set_app_errors(0, 1, Some((503, 500_000)));
        f.set_app_errors(0, 0, None);
        assert_eq!(f.app_errors(0), Some((503, 500_000)), "ending the earlier one leaves the later");
        f.set_app_errors(0, 1, None);
        assert_eq!(f.app_errors(0), None);
    }
}
