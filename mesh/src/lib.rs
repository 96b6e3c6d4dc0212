//! meshsim's mesh: sidecar proxy, configuration model and the seam to the world.
//!
//! Nothing here names a concrete socket type or reads the wall clock: see [`net`].

pub mod ca;
pub mod config;
pub mod control;
pub mod http;
pub mod identity;
pub mod net;
pub mod proxy;
pub mod registry;
pub mod snapshot;
