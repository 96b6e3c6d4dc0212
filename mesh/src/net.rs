//! The seam between the mesh and the world: sockets ([`Net`]) and time ([`Clock`]).
//!
//! Everything in `mesh` reaches the network and the wall clock only through these two
//! traits, so the same proxy code runs on real loopback sockets ([`TokioNet`],
//! [`SystemClock`]) and inside the deterministic simulator (the `sim` crate implements
//! both over turmoil). `tokio::time` sleeps and timeouts are allowed everywhere: turmoil
//! drives tokio's timer. This module does not own name resolution policy (the registry
//! decides which endpoint to call) nor any protocol.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream the mesh can run HTTP over.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// An accepting socket.
pub trait Listener: Send + 'static {
    type Stream: Stream;
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>> + Send;
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// Bind, connect and resolve: the only door to sockets.
pub trait Net: Clone + Send + Sync + 'static {
    type Stream: Stream;
    type Listener: Listener<Stream = Self::Stream>;
    fn bind(&self, addr: SocketAddr) -> impl Future<Output = io::Result<Self::Listener>> + Send;
    fn connect(&self, addr: SocketAddr) -> impl Future<Output = io::Result<Self::Stream>> + Send;
    /// Resolves a host name to one address for `port`.
    fn resolve(&self, host: &str, port: u16) -> impl Future<Output = io::Result<SocketAddr>> + Send;
    /// Where a connection accepted on `local` from `peer` was originally going, when it
    /// was redirected to this listener (what `SO_ORIGINAL_DST` tells an iptables-captured
    /// socket). `None`: not captured, or the world cannot say. Default: `None`.
    fn original_dst(&self, local: SocketAddr, peer: SocketAddr) -> Option<SocketAddr> {
        let _ = (local, peer);
        None
    }
}

/// Time as the mesh sees it.
pub trait Clock: Send + Sync + 'static {
    /// Monotonic time since an arbitrary origin shared by every component of one world.
    fn now(&self) -> Duration;
    /// Time since the Unix epoch (for certificates and logs).
    fn unix_time(&self) -> Duration;
}

/// Real sockets through tokio. It captures nothing: [`Net::original_dst`] is `None`, as
/// a real sidecar's would be without iptables' REDIRECT in front of it.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioNet;

#[allow(clippy::disallowed_types)] // the seam's real implementation
pub struct TokioListener(tokio::net::TcpListener);

#[allow(clippy::disallowed_methods, clippy::disallowed_types)] // the seam's real implementation
impl Listener for TokioListener {
    type Stream = tokio::net::TcpStream;
    async fn accept(&mut self) -> io::Result<(Self::Stream, SocketAddr)> {
        let (stream, peer) = self.0.accept().await?;
        stream.set_nodelay(true)?;
        Ok((stream, peer))
    }
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

#[allow(clippy::disallowed_methods, clippy::disallowed_types)] // the seam's real implementation
impl Net for TokioNet {
    type Stream = tokio::net::TcpStream;
    type Listener = TokioListener;
    async fn bind(&self, addr: SocketAddr) -> io::Result<TokioListener> {
        Ok(TokioListener(tokio::net::TcpListener::bind(addr).await?))
    }
    async fn connect(&self, addr: SocketAddr) -> io::Result<Self::Stream> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
    async fn resolve(&self, host: &str, port: u16) -> io::Result<SocketAddr> {
        tokio::net::lookup_host((host, port))
            .await?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{host}: no address")))
    }
}

/// Real monotonic and wall time.
#[derive(Debug)]
pub struct SystemClock {
    origin: std::time::Instant,
}

impl SystemClock {
    #[allow(clippy::disallowed_methods)] // the seam's real implementation
    pub fn new() -> Self {
        SystemClock { origin: std::time::Instant::now() }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
    #[allow(clippy::disallowed_methods)] // the seam's real implementation
    fn unix_time(&self) -> Duration {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default()
    }
}
