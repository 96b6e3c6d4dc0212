//! The bootstrap an Envoy sidecar starts with, as istio-agent writes it: the node
//! (`id` = pod, `cluster` = service), an admin listener, the ADS cluster pointing at
//! meshsim's control plane, and `lds_config`/`cds_config` over ADS. Everything else
//! arrives over xDS.
//!
//! Written as JSON (Envoy reads a `.json` bootstrap as its proto's JSON mapping), so a
//! run's folder holds a bootstrap a person can read.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde_json::{Value, json};

/// The static cluster of the control plane (Istio's name).
pub const XDS_CLUSTER: &str = "xds-grpc";

/// What one sidecar's bootstrap says.
#[derive(Clone, Debug)]
pub struct Bootstrap {
    /// Envoy's node id (the pod) and cluster (the service FQDN).
    pub node: String,
    pub cluster: String,
    /// The admin listener.
    pub admin: SocketAddr,
    /// The control plane's ADS address.
    pub control_plane: SocketAddr,
    /// Source address of the ADS connection (so a relay in front of the control plane
    /// knows which pod it is).
    pub source: IpAddr,
    /// Where Envoy writes its outlier-detection events (JSON lines).
    pub outlier_log: PathBuf,
}

fn socket(addr: SocketAddr) -> Value {
    json!({"socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}})
}

impl Bootstrap {
    pub fn to_json(&self) -> Value {
        let ads = json!({"ads": {}, "resource_api_version": "V3"});
        json!({
            "node": {"id": self.node, "cluster": self.cluster},
            "admin": {"address": socket(self.admin)},
            "dynamic_resources": {
                "ads_config": {
                    "api_type": "GRPC",
                    "transport_api_version": "V3",
                    "set_node_on_first_message_only": true,
                    "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}],
                },
                "lds_config": ads,
                "cds_config": ads,
            },
            "static_resources": {
                "clusters": [{
                    "name": XDS_CLUSTER,
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {
                                "connection_keepalive": {"interval": "30s", "timeout": "10s"},
                            }},
                        },
                    },
                    "upstream_bind_config": {"source_address": {"address": self.source.to_string(), "port_value": 0}},
                    "load_assignment": {
                        "cluster_name": XDS_CLUSTER,
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket(self.control_plane)}}]}],
                    },
                }],
            },
            "cluster_manager": {"outlier_detection": {"event_log_path": self.outlier_log.display().to_string()}},
        })
    }
}
