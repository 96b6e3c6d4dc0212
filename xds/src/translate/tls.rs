//! Istio mutual TLS: the proxy's secrets (`default`: its certificate and key; `ROOTCA`:
//! the trust bundle) served over SDS; auto-mTLS on the outbound clusters (a TLS
//! transport socket for the endpoints labelled `tlsMode: istio`, plaintext for the
//! others); the inbound listener's filter chains by the pod's PeerAuthentication mode
//! (STRICT: TLS with a required client certificate; PERMISSIVE: TLS detected by the TLS
//! inspector, plaintext otherwise; DISABLE: plaintext).
//!
//! Sources: Istio `pilot/pkg/networking/core/cluster_tls.go` (`buildUpstreamTLSSettings`,
//! auto-mTLS `transport_socket_matches`), `pilot/pkg/security/authn/utils/utils.go`
//! (`BuildInboundTLS`), `pilot/pkg/model/authentication.go` (`ConstructSdsSecretConfig`);
//! Envoy's [TLS transport socket](https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/transport_sockets/tls/v3/tls.proto),
//! [SDS](https://www.envoyproxy.io/docs/envoy/latest/configuration/security/secret) and
//! [transport socket matches](https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/cluster/v3/cluster.proto#envoy-v3-api-msg-config-cluster-v3-cluster-transportsocketmatch).
//!
//! ALPN: a client offers Istio's `istio-peer-exchange`, `istio` (Istio's `istio-http/1.1`
//! comes from its own ALPN filter, which upstream Envoy has not); a server offers
//! `h2`, `http/1.1` (Istio's `ALPNHttp` for HTTP ports).
//!
//! Not here: the listeners and clusters themselves (`listener`, `cluster`).

use mesh::config::istio::MtlsMode;
use mesh::snapshot::{Cluster as MeshCluster, Snapshot};
use prost::Message;

use crate::pb::envoy::config::cluster::v3::{Cluster, cluster};
use crate::pb::envoy::config::core::v3 as core;
use crate::pb::envoy::config::listener::v3::{
    FilterChain, FilterChainMatch, Listener, ListenerFilter, listener_filter,
};
use crate::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use crate::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use crate::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, Secret,
    SubjectAltNameMatcher, TlsCertificate, TlsParameters, UpstreamTlsContext, common_tls_context, secret,
    subject_alt_name_matcher, tls_parameters,
};
use crate::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use crate::pb::google::protobuf::{Struct, Value, value};

use super::{Identity, Placement};

/// The endpoint metadata filter Envoy's `transport_socket_matches` read.
pub(super) const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";
/// Istio's SDS names of the workload certificate and of the trust bundle.
pub const SECRET_DEFAULT: &str = "default";
pub const SECRET_ROOTCA: &str = "ROOTCA";
const TLS_SOCKET: &str = "envoy.transport_sockets.tls";
const RAW_BUFFER_SOCKET: &str = "envoy.transport_sockets.raw_buffer";
const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";
/// Istio's `ALPNInMeshWithMxc`.
const ALPN_CLIENT: [&str; 2] = ["istio-peer-exchange", "istio"];
/// Istio's `ALPNHttp`.
const ALPN_SERVER: [&str; 2] = ["h2", "http/1.1"];

/// `{envoy.transport_socket_match: {tlsMode: istio}}` on an endpoint that gets mTLS
/// (Istio labels endpoints with a sidecar so), none otherwise.
pub(super) fn endpoint_metadata(mtls: bool) -> Option<core::Metadata> {
    mtls.then(|| core::Metadata {
        filter_metadata: [(TRANSPORT_SOCKET_MATCH.to_string(), tls_mode_istio())].into_iter().collect(),
        ..Default::default()
    })
}

fn tls_mode_istio() -> Struct {
    Struct {
        fields: [("tlsMode".to_string(), Value { kind: Some(value::Kind::StringValue("istio".to_string())) })]
            .into_iter()
            .collect(),
    }
}

/// The proxy's two secrets, inline PEM.
pub(super) fn secrets(id: &Identity) -> Vec<Secret> {
    let inline = |pem: &str| core::DataSource {
        specifier: Some(core::data_source::Specifier::InlineString(pem.to_string())),
        ..Default::default()
    };
    vec![
        Secret {
            name: SECRET_DEFAULT.to_string(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: Some(inline(&id.cert_chain)),
                private_key: Some(inline(&id.private_key)),
                ..Default::default()
            })),
        },
        Secret {
            name: SECRET_ROOTCA.to_string(),
            r#type: Some(secret::Type::ValidationContext(CertificateValidationContext {
                trusted_ca: Some(inline(&id.trust_bundle)),
                ..Default::default()
            })),
        },
    ]
}

/// A secret by name over ADS.
fn sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig { name: name.to_string(), sds_config: Some(super::ads()) }
}

/// The certificate `default`, validation against `ROOTCA` (and, for a client, the
/// server's SPIFFE IDs as URI SANs), TLS 1.2 to 1.3.
fn common(alpn: &[&str], sans: &[String]) -> CommonTlsContext {
    let san_matchers = sans
        .iter()
        .map(|uri| SubjectAltNameMatcher {
            san_type: subject_alt_name_matcher::SanType::Uri as i32,
            matcher: Some(StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::Exact(uri.clone())),
                ignore_case: false,
            }),
            ..Default::default()
        })
        .collect();
    CommonTlsContext {
        tls_params: Some(TlsParameters {
            tls_minimum_protocol_version: tls_parameters::TlsProtocol::TlSv12 as i32,
            tls_maximum_protocol_version: tls_parameters::TlsProtocol::TlSv13 as i32,
            ..Default::default()
        }),
        tls_certificate_sds_secret_configs: vec![sds(SECRET_DEFAULT)],
        validation_context_type: Some(common_tls_context::ValidationContextType::CombinedValidationContext(
            common_tls_context::CombinedCertificateValidationContext {
                default_validation_context: Some(CertificateValidationContext {
                    match_typed_subject_alt_names: san_matchers,
                    ..Default::default()
                }),
                validation_context_sds_secret_config: Some(sds(SECRET_ROOTCA)),
                ..Default::default()
            },
        )),
        alpn_protocols: alpn.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn transport_socket<M: Message + prost::Name>(name: &str, config: &M) -> core::TransportSocket {
    core::TransportSocket {
        name: name.to_string(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(crate::any(config))),
    }
}

/// Auto-mTLS on an outbound cluster: Istio mTLS (SNI the cluster's name, the service
/// accounts of its pods as the accepted server identities) to endpoints labelled
/// `tlsMode: istio`, plaintext to the rest.
pub(super) fn auto_mtls(envoy: &mut Cluster, c: &MeshCluster) {
    let sans: Vec<String> = c.peer_identities.iter().map(|id| id.to_string()).collect();
    let upstream = UpstreamTlsContext {
        common_tls_context: Some(common(&ALPN_CLIENT, &sans)),
        sni: c.name.clone(),
        ..Default::default()
    };
    envoy.transport_socket_matches = vec![
        cluster::TransportSocketMatch {
            name: "tlsMode-istio".to_string(),
            r#match: Some(tls_mode_istio()),
            transport_socket: Some(transport_socket(TLS_SOCKET, &upstream)),
        },
        cluster::TransportSocketMatch {
            name: "tlsMode-disabled".to_string(),
            r#match: Some(Struct::default()),
            transport_socket: Some(transport_socket(RAW_BUFFER_SOCKET, &RawBuffer::default())),
        },
    ];
}

/// The inbound listener's filter chains for this pod's PeerAuthentication mode, each
/// running `filters`; notes what cannot be secured.
pub(super) fn inbound_chains(
    snapshot: &Snapshot,
    p: &Placement,
    filters: Vec<crate::pb::envoy::config::listener::v3::Filter>,
    untranslated: &mut Vec<String>,
) -> (Vec<ListenerFilter>, Vec<FilterChain>) {
    let plain = || FilterChain { filters: filters.clone(), name: "plaintext".to_string(), ..Default::default() };
    let mode = match snapshot.inbound_mtls.get(&p.pod) {
        Some(m) => *m,
        None => {
            untranslated.push(format!(
                "inbound mTLS of {}: the snapshot has no PeerAuthentication mode for it (a pod without a sidecar), so its inbound side is plaintext",
                p.pod
            ));
            return (Vec::new(), vec![plain()]);
        }
    };
    if mode == MtlsMode::Disable || mode == MtlsMode::Unset {
        return (Vec::new(), vec![plain()]);
    }
    if p.identity.is_none() {
        untranslated.push(format!(
            "inbound mTLS of {} ({mode:?}): the placement has no identity (certificate), so its inbound side is plaintext",
            p.pod
        ));
        return (Vec::new(), vec![plain()]);
    }
    let downstream = DownstreamTlsContext {
        common_tls_context: Some(common(&ALPN_SERVER, &[])),
        require_client_certificate: super::boolv(true),
        ..Default::default()
    };
    let tls = FilterChain {
        filters: filters.clone(),
        transport_socket: Some(transport_socket(TLS_SOCKET, &downstream)),
        name: "mtls".to_string(),
        ..Default::default()
    };
    if mode == MtlsMode::Strict {
        return (Vec::new(), vec![tls]);
    }
    let inspector = ListenerFilter {
        name: TLS_INSPECTOR.to_string(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(crate::any(&TlsInspector::default()))),
        ..Default::default()
    };
    let tls = FilterChain {
        filter_chain_match: Some(FilterChainMatch { transport_protocol: "tls".to_string(), ..Default::default() }),
        ..tls
    };
    (vec![inspector], vec![tls, plain()])
}

/// `l` with its SDS references pointing at static secrets (no config source).
pub(super) fn static_secrets_in_listener(l: &Listener) -> Listener {
    let mut l = l.clone();
    for chain in &mut l.filter_chains {
        if let Some(ts) = &mut chain.transport_socket {
            rewrite_socket::<DownstreamTlsContext>(ts, |c| c.common_tls_context.as_mut());
        }
    }
    l
}

/// `c` with its SDS references pointing at static secrets (no config source).
pub(super) fn static_secrets_in_cluster(c: &Cluster) -> Cluster {
    let mut c = c.clone();
    for m in &mut c.transport_socket_matches {
        if let Some(ts) = &mut m.transport_socket {
            rewrite_socket::<UpstreamTlsContext>(ts, |c| c.common_tls_context.as_mut());
        }
    }
    if let Some(ts) = &mut c.transport_socket {
        rewrite_socket::<UpstreamTlsContext>(ts, |c| c.common_tls_context.as_mut());
    }
    c
}

fn rewrite_socket<M: Message + prost::Name + Default>(
    ts: &mut core::TransportSocket,
    common: impl Fn(&mut M) -> Option<&mut CommonTlsContext>,
) {
    if ts.name != TLS_SOCKET {
        return;
    }
    let Some(core::transport_socket::ConfigType::TypedConfig(any)) = &mut ts.config_type else { return };
    let Ok(mut ctx) = M::decode(any.value.as_slice()) else { return };
    if let Some(c) = common(&mut ctx) {
        for s in &mut c.tls_certificate_sds_secret_configs {
            s.sds_config = None;
        }
        if let Some(common_tls_context::ValidationContextType::CombinedValidationContext(v)) =
            &mut c.validation_context_type
            && let Some(s) = &mut v.validation_context_sds_secret_config
        {
            s.sds_config = None;
        }
    }
    *any = crate::any(&ctx);
}

#[cfg(test)]
pub(super) fn tests_tls_mode_value() -> Value {
    tls_mode_istio().fields["tlsMode"].clone()
}
