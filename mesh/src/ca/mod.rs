//! The certificate authority, as istiod's CA and the Istio agent do it: issuing workload
//! certificates whose only identity is a SPIFFE URI SAN (`authority`), Ed25519 keys and CSRs
//! from a seeded RNG (`keys`), the CA as a network service and its client (`service`), and
//! each sidecar's certificate lifecycle (`agent`). It does not own checking certificates on connections (the
//! TLS layer) nor the identity name itself (`crate::identity`).

pub mod agent;
pub mod authority;
pub mod keys;
pub mod service;

use std::fmt;
use std::time::Duration;

pub use crate::identity::Der;
use crate::identity::SpiffeId;

pub use authority::{Authority, CaOptions, Issued};

/// Why the CA refused a request or a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaError {
    /// The request asked for a lifetime beyond the maximum.
    TtlTooLong { requested: Duration, max: Duration },
    /// The CSR asks for an identity other than the one its credential proves.
    IdentityMismatch { requested: Vec<String>, caller: SpiffeId, why: String },
    /// The CSR cannot be parsed or its signature does not verify.
    BadCsr(String),
    /// The user-supplied root, key or intermediates are unusable.
    BadRoot(String),
    /// A root rotation step out of order.
    Rotation(String),
}

impl fmt::Display for CaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CaError::TtlTooLong { requested, max } => write!(
                f,
                "requested certificate TTL {} is greater than the max allowed TTL {} (MAX_WORKLOAD_CERT_TTL)",
                format_duration(*requested),
                format_duration(*max)
            ),
            CaError::IdentityMismatch { requested, caller, why } => write!(
                f,
                "CSR identity [{}] does not match the caller's credential ({caller}): {why}",
                requested.join(", ")
            ),
            CaError::BadCsr(e) => write!(f, "invalid CSR: {e}"),
            CaError::BadRoot(e) => write!(f, "unusable CA certificate: {e}"),
            CaError::Rotation(e) => write!(f, "root rotation: {e}"),
        }
    }
}

impl std::error::Error for CaError {}

/// `2160h0m0s` style (Go's `time.Duration` format, which Istio prints), whole seconds.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}h{}m{}s", s / 3600, s % 3600 / 60, s % 60)
}

#[cfg(test)]
mod tests;
