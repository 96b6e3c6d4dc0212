//! The sidecar's two listeners: `outbound` (the app's requests, routed by `Host` over
//! RDS) and `inbound` (its peers' requests, to the app). Each has one HTTP connection
//! manager with the access log of [`ACCESS_LOG_FIELDS`]; the HTTP filters are Istio's
//! for a sidecar, reduced to what meshsim models: fault injection then the router
//! outbound, the router inbound.
//!
//! Sources: Istio `pilot/pkg/networking/core/listener.go` and `httproute.go`
//! (`buildSidecarOutboundHTTPListenerOptsForPortOrUDS`, `buildHTTPConnectionManager`);
//! Envoy's [HTTP connection manager](https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/http_conn_man)
//! and [file access log](https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/access_loggers/file/v3/file.proto).
//!
//! Not here: the routes (`route`), TLS on the inbound side (`tls`).

use crate::pb::envoy::config::accesslog::v3::{AccessLog, access_log};
use crate::pb::envoy::config::core::v3 as core;
use crate::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, ListenerFilter, filter};
use crate::pb::envoy::config::route::v3 as route;
use crate::pb::envoy::extensions::access_loggers::file::v3::{FileAccessLog, file_access_log};
use crate::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use crate::pb::envoy::extensions::filters::http::router::v3::Router;
use crate::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use crate::pb::google::protobuf::{Struct, Value, value};

use super::{ACCESS_LOG_FIELDS, INBOUND_LISTENER, OUTBOUND_LISTENER, OUTBOUND_ROUTE_CONFIG, Placement};

pub(crate) const HCM_FILTER: &str = "envoy.filters.network.http_connection_manager";
pub(crate) const FAULT_FILTER: &str = "envoy.filters.http.fault";
const ROUTER_FILTER: &str = "envoy.filters.http.router";
/// The `Server` header of the inbound side's responses (Istio's `EnvoyServerName`); the
/// outbound side keeps Envoy's default `envoy`, as meshsim's sidecar answers.
const INBOUND_SERVER_NAME: &str = "istio-envoy";

/// The outbound listener: every request of the app, routed by `Host` with route
/// configuration [`OUTBOUND_ROUTE_CONFIG`] over ADS.
/// `tcp_filters` and `tcp_chains`: the TCP services' (see `tcp`), before the HTTP chain.
pub(super) fn outbound(p: &Placement, tcp_filters: Vec<ListenerFilter>, tcp_chains: Vec<FilterChain>) -> Listener {
    let rds = hcm::Rds { config_source: Some(super::ads()), route_config_name: OUTBOUND_ROUTE_CONFIG.to_string() };
    let manager = hcm::HttpConnectionManager {
        stat_prefix: format!("outbound_{}_{}", p.outbound.ip(), p.outbound.port()),
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::Rds(rds)),
        // The fault filter with an empty config: each route's `typed_per_filter_config`
        // carries its faults, as Istio configures it.
        http_filters: vec![
            http_filter(FAULT_FILTER, &HttpFault::default()),
            http_filter(ROUTER_FILTER, &Router::default()),
        ],
        ..connection_manager(p)
    };
    Listener {
        name: OUTBOUND_LISTENER.to_string(),
        address: Some(super::address(p.outbound.ip(), p.outbound.port())),
        listener_filters: tcp_filters,
        filter_chains: tcp_chains
            .into_iter()
            .chain([FilterChain {
                name: "http".to_string(),
                filters: vec![network_filter(HCM_FILTER, &manager)],
                ..Default::default()
            }])
            .collect(),
        traffic_direction: core::TrafficDirection::Outbound as i32,
        ..Default::default()
    }
}

/// The inbound HTTP connection manager: one route, to the app, without a timeout (Istio's
/// `BuildDefaultHTTPInboundRoute`), and the router. `filters`: the HTTP filters before
/// the router (RBAC, local rate limit).
pub(super) fn inbound_manager(p: &Placement, filters: Vec<hcm::HttpFilter>) -> hcm::HttpConnectionManager {
    let cluster = super::inbound_cluster_name(p);
    let to_app = route::Route {
        // meshsim's sidecar logs `inbound` as the route of every inbound request (Istio
        // names this route `default`).
        name: "inbound".to_string(),
        r#match: Some(route::RouteMatch {
            path_specifier: Some(route::route_match::PathSpecifier::Prefix("/".to_string())),
            ..Default::default()
        }),
        action: Some(route::route::Action::Route(route::RouteAction {
            cluster_specifier: Some(route::route_action::ClusterSpecifier::Cluster(cluster.clone())),
            timeout: Some(super::duration(std::time::Duration::ZERO)),
            ..Default::default()
        })),
        ..Default::default()
    };
    let config = route::RouteConfiguration {
        name: cluster.clone(),
        virtual_hosts: vec![route::VirtualHost {
            name: format!("inbound|http|{}", p.app.port()),
            domains: vec!["*".to_string()],
            routes: vec![to_app],
            ..Default::default()
        }],
        validate_clusters: super::boolv(false),
        ..Default::default()
    };
    let mut http_filters = filters;
    http_filters.push(http_filter(ROUTER_FILTER, &Router::default()));
    hcm::HttpConnectionManager {
        stat_prefix: format!("inbound_{}_{}", p.inbound.ip(), p.inbound.port()),
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(config)),
        http_filters,
        server_name: INBOUND_SERVER_NAME.to_string(),
        ..connection_manager(p)
    }
}

/// The inbound listener: `chains` (by the pod's mTLS mode, see `tls`) behind
/// `listener_filters`.
pub(super) fn inbound(p: &Placement, listener_filters: Vec<ListenerFilter>, chains: Vec<FilterChain>) -> Listener {
    Listener {
        name: INBOUND_LISTENER.to_string(),
        address: Some(super::address(p.inbound.ip(), p.inbound.port())),
        listener_filters,
        filter_chains: chains,
        traffic_direction: core::TrafficDirection::Inbound as i32,
        ..Default::default()
    }
}

/// What both connection managers share: the codec (HTTP/1.1 or HTTP/2, detected), the
/// caller's `x-request-id` kept (meshsim's workload sets it and joins logs by it), and
/// the access log.
fn connection_manager(p: &Placement) -> hcm::HttpConnectionManager {
    hcm::HttpConnectionManager {
        codec_type: hcm::http_connection_manager::CodecType::Auto as i32,
        preserve_external_request_id: true,
        access_log: vec![access_log(p)],
        ..Default::default()
    }
}

/// The file access log as JSON lines with the keys of [`ACCESS_LOG_FIELDS`].
pub(super) fn access_log(p: &Placement) -> AccessLog {
    let fields = ACCESS_LOG_FIELDS
        .iter()
        .map(|(k, op)| (k.to_string(), Value { kind: Some(value::Kind::StringValue(op.to_string())) }))
        .collect();
    let file = FileAccessLog {
        path: p.access_log.display().to_string(),
        access_log_format: Some(file_access_log::AccessLogFormat::LogFormat(core::SubstitutionFormatString {
            format: Some(core::substitution_format_string::Format::JsonFormat(Struct { fields })),
            ..Default::default()
        })),
    };
    AccessLog {
        name: "envoy.access_loggers.file".to_string(),
        config_type: Some(access_log::ConfigType::TypedConfig(crate::any(&file))),
        ..Default::default()
    }
}

pub(super) fn http_filter<M: prost::Message + prost::Name>(name: &str, config: &M) -> hcm::HttpFilter {
    hcm::HttpFilter {
        name: name.to_string(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(crate::any(config))),
        ..Default::default()
    }
}

pub(super) fn network_filter<M: prost::Message + prost::Name>(name: &str, config: &M) -> Filter {
    Filter { name: name.to_string(), config_type: Some(filter::ConfigType::TypedConfig(crate::any(config))) }
}
