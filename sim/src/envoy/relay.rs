//! Fault relays: a process outside the seam (an Envoy, the ADS server) listens on a
//! hidden address, and a relay on the address its peers dial applies the fault table
//! to every connection, as [`RealNet`] does for meshsim's own sidecars.
//!
//! The relay knows who called from the connection's source address (every Envoy binds
//! its upstream connections to its pod's address), accepts as the owner (so the
//! owner's crash resets the connection, and reads towards it pay the link's latency)
//! and dials the hidden address as the caller (so partitions stall it and reads back
//! pay the latency the other way). A partition cannot refuse what the kernel already
//! accepted: a new connection into a partitioned pod is accepted and then stalls
//! (Envoy's request timeouts apply, not its connect timeout).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use mesh::net::{Listener, Net};
use tokio::task::JoinSet;

use crate::real::net::{RealNet, Shared};

/// Relays connections to `listen` (an address of `owner`: a pod, or istiod) to
/// `hidden`, until dropped (dropping it ends every relayed connection too).
pub async fn relay(shared: Arc<Shared>, owner: usize, listen: SocketAddr, hidden: SocketAddr) -> io::Result<()> {
    let mut listener = RealNet::new(owner, shared.clone()).bind(listen).await?;
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            Some(_) = connections.join_next() => {}
            accepted = listener.accept() => {
                let (mut downstream, peer) = accepted?;
                let caller = shared.at(peer.ip()).unwrap_or(owner);
                let net = RealNet::new(caller, shared.clone());
                connections.spawn(async move {
                    if let Ok(mut upstream) = net.dial_as(hidden, owner).await {
                        let _ = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await;
                    }
                });
            }
        }
    }
}
