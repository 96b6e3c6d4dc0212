//! The translation of small snapshots, compiled from a registry and Istio YAML.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use mesh::config::parse_resources;
use mesh::registry::{Pod, Registry, Service};
use mesh::snapshot::{Snapshot, Sourced, compile};

use super::*;

pub(super) fn pod(name: &str, service: &str, labels: &[(&str, &str)]) -> Pod {
    let mut l: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    l.insert("app".into(), service.into());
    Pod {
        name: name.into(),
        namespace: "default".into(),
        service: service.into(),
        labels: l,
        service_account: service.into(),
        host: format!("node-{name}"),
        inbound_port: 15006,
        sidecar: true,
    }
}

/// Services `a` and `b` (port 80) in `default`: pod `a-0`; pods `b-0` (v1), `b-1` (v2).
pub(super) fn registry() -> Registry {
    let mut r = Registry::default();
    r.add_service(Service::http("a", "default", 80));
    r.add_service(Service::http("b", "default", 80));
    r.add_pod(pod("a-0", "a", &[]));
    r.add_pod(pod("b-0", "b", &[("version", "v1")]));
    r.add_pod(pod("b-1", "b", &[("version", "v2")]));
    r
}

pub(super) fn snapshot(yaml: &str) -> Snapshot {
    snapshot_with(&registry(), yaml)
}

pub(super) fn snapshot_with(registry: &Registry, yaml: &str) -> Snapshot {
    let resources = parse_resources("mesh.yaml", yaml).expect("valid YAML");
    let sourced: Vec<Sourced<'_>> = resources.iter().map(|r| Sourced { file: "mesh.yaml", resource: r }).collect();
    let (snap, findings) = compile(registry, &sourced);
    assert!(findings.0.iter().all(|f| f.level != mesh::config::Level::Error), "{:?}", findings.0);
    snap
}

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// The placement of pod `a-0`, every pod's peer address known.
pub(super) fn placement() -> Placement {
    Placement {
        pod: "a-0".into(),
        namespace: "default".into(),
        labels: [("app".to_string(), "a".to_string())].into(),
        service: "a.default.svc.cluster.local".into(),
        outbound: SocketAddr::new(ip(1), 15001),
        inbound: SocketAddr::new(ip(1), 15006),
        app: SocketAddr::new(ip(1), 8080),
        source: ip(1),
        peers: [("a-0", 2), ("b-0", 3), ("b-1", 4)]
            .into_iter()
            .map(|(p, i)| (p.to_string(), SocketAddr::new(ip(i), 15006)))
            .collect(),
        access_log: "/tmp/a-0.log".into(),
        identity: Some(identity("spiffe://cluster.local/ns/default/sa/a")),
        rate_limit: None,
    }
}

/// A root and a workload certificate for `spiffe_id` signed by it (ECDSA P-256).
pub(super) fn identity(spiffe_id: &str) -> Identity {
    identities(&[spiffe_id]).remove(0)
}

/// One root, and a workload certificate signed by it for each SPIFFE ID (ECDSA P-256).
pub(super) fn identities(spiffe_ids: &[&str]) -> Vec<Identity> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
    let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("root key");
    let mut root = CertificateParams::new(Vec::<String>::new()).expect("root params");
    root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root.distinguished_name.push(rcgen::DnType::OrganizationName, "cluster.local");
    root.distinguished_name.push(rcgen::DnType::CommonName, "meshsim test root");
    let root_cert = root.self_signed(&root_key).expect("root certificate");
    let issuer = Issuer::new(root, root_key);
    spiffe_ids
        .iter()
        .map(|id| {
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("workload key");
            let mut leaf = CertificateParams::new(Vec::<String>::new()).expect("leaf params");
            leaf.subject_alt_names = vec![SanType::URI((*id).try_into().expect("a URI"))];
            leaf.is_ca = IsCa::ExplicitNoCa;
            // No subject: the identity is the URI SAN alone, as Istio's workload certificates.
            leaf.distinguished_name = rcgen::DistinguishedName::new();
            let cert = leaf.signed_by(&key, &issuer).expect("workload certificate");
            Identity { cert_chain: cert.pem(), private_key: key.serialize_pem(), trust_bundle: root_cert.pem() }
        })
        .collect()
}

#[test]
fn no_resources_give_the_two_listeners_one_route_config_and_every_cluster() {
    let t = translate(&snapshot(""), &placement());
    assert!(t.untranslated.is_empty(), "{:?}", t.untranslated);
    let r = &t.resources;
    let names: Vec<&str> = r.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["outbound", "inbound"]);
    assert_eq!(r.routes.len(), 1);
    let clusters: Vec<&str> = r.clusters.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        clusters,
        ["outbound|80||a.default.svc.cluster.local", "outbound|80||b.default.svc.cluster.local", "inbound|8080||"]
    );
    assert_eq!(r.endpoints.len(), 2);
    let inbound = r.clusters.last().unwrap();
    let th = &inbound.circuit_breakers.as_ref().expect("Istio's thresholds, not Envoy's 1024").thresholds[0];
    assert_eq!(th.max_pending_requests.map(|v| v.value), Some(u32::MAX));
}

/// Routes for `b` exercising most of what a route holds, and a DestinationRule with
/// subsets, pool limits and outlier detection.
pub(super) const RICH: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: b}
spec:
  hosts: [b]
  http:
  - name: canary
    match:
    - headers: {x-canary: {exact: "yes"}}
      uri: {prefix: /api}
      ignoreUriCase: true
    - queryParams: {v: {regex: "[0-9]+"}}
      withoutHeaders: {x-skip: {}}
    - sourceLabels: {app: not-a}
    - port: 81
    route:
    - destination: {host: b, subset: v2}
      weight: 30
      headers: {request: {set: {x-subset: v2}}}
    - destination: {host: b, subset: v1}
      weight: 70
    timeout: 2s
    retries: {attempts: 4, perTryTimeout: 500ms, retryOn: "5xx,503,reset"}
    headers:
      request: {add: {x-added: "1"}, set: {x-set: "2"}, remove: [x-gone]}
      response: {set: {x-resp: "r"}}
    rewrite: {uri: /v2, authority: b-new}
    mirror: {host: a}
    mirrorPercentage: {value: 25}
    fault:
      delay: {fixedDelay: 100ms, percentage: {value: 10}}
      abort: {httpStatus: 418, percentage: {value: 0.5}}
  - match: [{uri: {exact: /moved}}]
    redirect: {uri: /new, authority: elsewhere, redirectCode: 302}
  - match: [{uri: {regex: "/teapot/.*"}, method: {exact: GET}}]
    directResponse: {status: 418, body: {string: "short and stout"}}
  - route: [{destination: {host: b}}]
    retries: {attempts: 0}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: b}
spec:
  host: b
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    connectionPool:
      tcp: {maxConnections: 7, connectTimeout: 250ms}
      http: {http1MaxPendingRequests: 3, maxRequestsPerConnection: 10, idleTimeout: 30s, maxRetries: 2}
    outlierDetection: {consecutive5xxErrors: 3, interval: 1s, baseEjectionTime: 15s, maxEjectionPercent: 50, minHealthPercent: 20}
  subsets:
  - {name: v1, labels: {version: v1}}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      loadBalancer:
        consistentHash: {httpHeaderName: x-user, ringHash: {minimumRingSize: 2048}}
"#;

use crate::pb::envoy::config::route::v3 as rt;

fn vhost<'r>(t: &'r Translation, name: &str) -> &'r rt::VirtualHost {
    t.resources.routes[0].virtual_hosts.iter().find(|v| v.name == name).expect("virtual host")
}

fn route_action(r: &rt::Route) -> &rt::RouteAction {
    match &r.action {
        Some(rt::route::Action::Route(a)) => a,
        other => panic!("not a route action: {other:?}"),
    }
}

fn cluster<'r>(t: &'r Translation, name: &str) -> &'r crate::pb::envoy::config::cluster::v3::Cluster {
    t.resources.clusters.iter().find(|c| c.name == name).expect("cluster")
}

#[test]
fn virtual_hosts_carry_istio_domains_relative_to_the_proxy_namespace() {
    let t = translate(&snapshot(""), &placement());
    let b = vhost(&t, "b.default.svc.cluster.local:80");
    assert!(b.include_request_attempt_count);
    assert!(t.resources.routes[0].ignore_port_in_host_matching, "meshsim picks the service by host alone");
    assert_eq!(
        b.domains,
        [
            "b.default.svc.cluster.local",
            "b.default.svc.cluster.local:80",
            "b",
            "b:80",
            "b.default",
            "b.default:80",
            "b.default.svc",
            "b.default.svc:80"
        ]
    );
    let other = route::domains("r.prod.svc.cluster.local", 9080, "default");
    assert!(!other.iter().any(|d| d == "r" || d == "r:9080"), "{other:?}");
    assert!(other.contains(&"r.prod:9080".to_string()));
}

#[test]
fn the_default_route_has_no_timeout_and_istio_default_retries() {
    let t = translate(&snapshot(""), &placement());
    let [r] = &vhost(&t, "b.default.svc.cluster.local:80").routes[..] else { panic!("one route") };
    assert_eq!(r.name, "default");
    let a = route_action(r);
    assert_eq!(
        a.cluster_specifier,
        Some(rt::route_action::ClusterSpecifier::Cluster("outbound|80||b.default.svc.cluster.local".into()))
    );
    assert_eq!(a.timeout, Some(duration(std::time::Duration::ZERO)), "Istio's explicit 0s, not Envoy's 15s");
    let rp = a.retry_policy.as_ref().expect("default retries");
    let mut on: Vec<&str> = rp.retry_on.split(',').collect();
    on.sort_unstable();
    assert_eq!(on, ["cancelled", "connect-failure", "refused-stream", "retriable-status-codes", "unavailable"]);
    assert_eq!(rp.num_retries.map(|v| v.value), Some(2));
    assert!(rp.retriable_status_codes.is_empty());
    assert_eq!(rp.host_selection_retry_max_attempts, 5);
    assert_eq!(rp.retry_host_predicate[0].name, "envoy.retry_host_predicates.previous_hosts");
}

#[test]
fn a_rich_virtual_service_translates_match_by_match_with_its_policies() {
    let t = translate(&snapshot(RICH), &placement());
    assert!(t.untranslated.is_empty(), "{:?}", t.untranslated);
    let routes = &vhost(&t, "b.default.svc.cluster.local:80").routes;
    let names: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
    // `sourceLabels: {app: not-a}` and `port: 81` do not apply to a-0 on port 80.
    assert_eq!(names, ["canary", "canary", "default/b/1", "default/b/2", "default/b/3"]);

    let m = routes[0].r#match.as_ref().unwrap();
    assert_eq!(m.path_specifier, Some(rt::route_match::PathSpecifier::Prefix("/api".into())));
    assert_eq!(m.case_sensitive.map(|v| v.value), Some(false));
    assert_eq!(m.headers[0].name, "x-canary");
    let m1 = routes[1].r#match.as_ref().unwrap();
    assert_eq!(m1.query_parameters[0].name, "v");
    let skip = &m1.headers[0];
    assert!(
        skip.invert_match && !skip.treat_missing_header_as_empty,
        "withoutHeaders presence: inverted present match"
    );

    let a = route_action(&routes[0]);
    assert_eq!(a.timeout, Some(duration(std::time::Duration::from_secs(2))));
    let Some(rt::route_action::ClusterSpecifier::WeightedClusters(w)) = &a.cluster_specifier else {
        panic!("weighted")
    };
    let weights: Vec<(&str, u32)> = w.clusters.iter().map(|c| (c.name.as_str(), c.weight.unwrap().value)).collect();
    assert_eq!(
        weights,
        [("outbound|80|v2|b.default.svc.cluster.local", 30), ("outbound|80|v1|b.default.svc.cluster.local", 70)]
    );
    assert_eq!(w.clusters[0].request_headers_to_add[0].header.as_ref().unwrap().key, "x-subset");
    let rp = a.retry_policy.as_ref().unwrap();
    assert_eq!(rp.num_retries.map(|v| v.value), Some(4));
    assert_eq!(rp.per_try_timeout, Some(duration(std::time::Duration::from_millis(500))));
    assert_eq!(rp.retriable_status_codes, [503]);
    assert!(rp.retry_on.split(',').any(|c| c == "retriable-status-codes"));
    // A hashed destination (subset v2): Istio's default drops the previous-hosts predicate.
    assert!(rp.retry_host_predicate.is_empty());
    assert_eq!(a.hash_policy.len(), 1);
    assert_eq!(a.prefix_rewrite, "/v2");
    assert_eq!(
        a.host_rewrite_specifier,
        Some(rt::route_action::HostRewriteSpecifier::HostRewriteLiteral("b-new".into()))
    );
    let mirror = &a.request_mirror_policies[0];
    assert_eq!(mirror.cluster, "outbound|80||a.default.svc.cluster.local");
    assert_eq!(mirror.runtime_fraction.as_ref().unwrap().default_value.as_ref().unwrap().numerator, 250_000);
    let adds: Vec<(&str, i32)> = routes[0]
        .request_headers_to_add
        .iter()
        .map(|h| (h.header.as_ref().unwrap().key.as_str(), h.append_action))
        .collect();
    use crate::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction as A;
    assert_eq!(adds, [("x-set", A::OverwriteIfExistsOrAdd as i32), ("x-added", A::AppendIfExistsOrAdd as i32)]);
    assert_eq!(routes[0].request_headers_to_remove, ["x-gone"]);
    let fault = routes[0].typed_per_filter_config.get("envoy.filters.http.fault").expect("per-route fault");
    let fault = <crate::pb::envoy::extensions::filters::http::fault::v3::HttpFault as prost::Message>::decode(
        fault.value.as_slice(),
    )
    .unwrap();
    assert_eq!(fault.delay.unwrap().percentage.unwrap().numerator, 100_000);
    let abort = fault.abort.unwrap();
    assert_eq!(abort.percentage.unwrap().numerator, 5_000);

    let Some(rt::route::Action::Redirect(rd)) = &routes[2].action else { panic!("redirect") };
    assert_eq!((rd.host_redirect.as_str(), rd.response_code), ("elsewhere", 1));
    let m = routes[3].r#match.as_ref().unwrap();
    let Some(rt::route_match::PathSpecifier::SafeRegex(re)) = &m.path_specifier else { panic!("regex") };
    assert_eq!(re.regex, "/teapot/.*");
    assert_eq!(m.headers[0].name, ":method");
    let Some(rt::route::Action::DirectResponse(d)) = &routes[3].action else { panic!("direct response") };
    assert_eq!(d.status, 418);
    assert!(route_action(&routes[4]).retry_policy.is_none(), "attempts: 0 disables retries");
}

#[test]
fn clusters_carry_lb_limits_pool_outlier_and_source_address() {
    let t = translate(&snapshot(RICH), &placement());
    use crate::pb::envoy::config::cluster::v3::cluster as cl;
    let c = cluster(&t, "outbound|80||b.default.svc.cluster.local");
    assert_eq!(c.cluster_discovery_type, Some(cl::ClusterDiscoveryType::Type(cl::DiscoveryType::Eds as i32)));
    assert_eq!(c.lb_policy, cl::LbPolicy::RoundRobin as i32);
    assert_eq!(c.connect_timeout, Some(duration(std::time::Duration::from_millis(250))));
    let th = &c.circuit_breakers.as_ref().unwrap().thresholds[0];
    assert_eq!(th.max_connections.map(|v| v.value), Some(7));
    assert_eq!(th.max_pending_requests.map(|v| v.value), Some(3));
    assert_eq!(th.max_requests.map(|v| v.value), Some(u32::MAX));
    assert_eq!(th.max_retries.map(|v| v.value), Some(2));
    let od = c.outlier_detection.as_ref().unwrap();
    assert_eq!(od.consecutive_5xx.map(|v| v.value), Some(3));
    assert_eq!(od.enforcing_consecutive_5xx.map(|v| v.value), Some(100));
    assert_eq!(od.enforcing_consecutive_gateway_failure.map(|v| v.value), Some(0));
    assert_eq!(od.interval, Some(duration(std::time::Duration::from_secs(1))));
    assert_eq!(od.base_ejection_time, Some(duration(std::time::Duration::from_secs(15))));
    assert_eq!(od.max_ejection_time, Some(duration(std::time::Duration::from_secs(300))));
    assert_eq!(od.max_ejection_percent.map(|v| v.value), Some(50));
    assert_eq!(c.common_lb_config.as_ref().unwrap().healthy_panic_threshold.as_ref().unwrap().value, 20.0);
    let src = c.upstream_bind_config.as_ref().unwrap().source_address.as_ref().unwrap();
    assert_eq!(src.address, "127.0.0.1");
    let opts =
        c.typed_extension_protocol_options.get("envoy.extensions.upstreams.http.v3.HttpProtocolOptions").unwrap();
    let opts = <crate::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions as prost::Message>::decode(
        opts.value.as_slice(),
    )
    .unwrap();
    let common = opts.common_http_protocol_options.unwrap();
    assert_eq!(common.max_requests_per_connection.map(|v| v.value), Some(10));
    assert_eq!(common.idle_timeout, Some(duration(std::time::Duration::from_secs(30))));

    let v2 = cluster(&t, "outbound|80|v2|b.default.svc.cluster.local");
    assert_eq!(v2.lb_policy, cl::LbPolicy::RingHash as i32);
    let Some(cl::LbConfig::RingHashLbConfig(ring)) = &v2.lb_config else { panic!("ring hash config") };
    assert_eq!(ring.minimum_ring_size.map(|v| v.value), Some(2048));

    let cla =
        t.resources.endpoints.iter().find(|e| e.cluster_name == "outbound|80|v1|b.default.svc.cluster.local").unwrap();
    let hosts: Vec<_> = cla.endpoints[0].lb_endpoints.iter().map(|e| format!("{:?}", e.host_identifier)).collect();
    assert_eq!(hosts.len(), 1);
    assert!(hosts[0].contains("127.0.0.3") && hosts[0].contains("15006"), "{hosts:?}");
}

#[test]
fn an_endpoint_without_a_peer_address_is_skipped_and_named() {
    let mut p = placement();
    p.peers.remove("b-1");
    let t = translate(&snapshot(""), &p);
    assert_eq!(t.untranslated.len(), 1, "{:?}", t.untranslated);
    assert!(t.untranslated[0].contains("b-1"));
    let cla =
        t.resources.endpoints.iter().find(|e| e.cluster_name == "outbound|80||b.default.svc.cluster.local").unwrap();
    assert_eq!(cla.endpoints[0].lb_endpoints.len(), 1);
}

// ---------------------------------------------------------------- against Envoy

/// Runs `envoy --mode validate` on `bootstrap` written as binary protobuf. `None`: no
/// Envoy here (the test is skipped, and says so).
pub(super) fn envoy_validate(
    name: &str,
    bootstrap: &crate::pb::envoy::config::bootstrap::v3::Bootstrap,
) -> Option<Result<(), String>> {
    let envoy = match crate::find_envoy(None) {
        Ok(e) => e,
        Err(why) => {
            println!("SKIPPED: envoy --mode validate for {name}: {why}");
            return None;
        }
    };
    let dir = std::env::temp_dir().join(format!("xds-translate-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join(format!("{name}.pb"));
    std::fs::write(&file, prost::Message::encode_to_vec(bootstrap)).expect("write bootstrap");
    let mut child = std::process::Command::new(&envoy)
        .args(["--mode", "validate", "--disable-hot-restart", "-l", "error", "-c"])
        .arg(&file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start envoy");
    // Bounded: 600 polls of 100ms.
    let mut status = None;
    for _ in 0..600 {
        if let Some(s) = child.try_wait().expect("wait envoy") {
            status = Some(s);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        return Some(Err("envoy --mode validate did not finish in 60s".into()));
    };
    let out = child.wait_with_output().expect("envoy output");
    let _ = std::fs::remove_dir_all(&dir);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Some(if status.success() { Ok(()) } else { Err(format!("{}: {status}\n{text}", file.display())) })
}

#[test]
fn envoy_accepts_the_static_bootstrap_of_a_rich_translation() {
    let t = translate(&snapshot(RICH), &placement());
    let b = static_bootstrap(&t.resources, "a-0");
    let listeners = &b.static_resources.as_ref().unwrap().listeners;
    assert_eq!(listeners.len(), 2);
    if let Some(result) = envoy_validate("rich", &b) {
        result.unwrap();
    }
}

// ---------------------------------------------------------------- mTLS

fn peer_authentication(mode: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: default, namespace: istio-system}}\nspec: {{mtls: {{mode: {mode}}}}}\n"
    )
}

fn decode<M: prost::Message + Default>(any: &crate::pb::google::protobuf::Any) -> M {
    M::decode(any.value.as_slice()).expect("decodes")
}

fn socket_config(ts: &crate::pb::envoy::config::core::v3::TransportSocket) -> &crate::pb::google::protobuf::Any {
    match &ts.config_type {
        Some(crate::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(a)) => a,
        None => panic!("no config"),
    }
}

use crate::pb::envoy::extensions::transport_sockets::tls::v3 as tlspb;

#[test]
fn secrets_are_the_workload_certificate_and_the_root_over_sds() {
    let t = translate(&snapshot(""), &placement());
    let names: Vec<&str> = t.resources.secrets.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["default", "ROOTCA"]);
    let Some(tlspb::secret::Type::TlsCertificate(cert)) = &t.resources.secrets[0].r#type else { panic!("cert") };
    assert!(format!("{:?}", cert.certificate_chain).contains("BEGIN CERTIFICATE"));
}

#[test]
fn auto_mtls_matches_istio_endpoints_and_checks_the_peers_spiffe_ids() {
    let t = translate(&snapshot(""), &placement());
    assert!(t.untranslated.is_empty(), "{:?}", t.untranslated);
    let c = cluster(&t, "outbound|80||b.default.svc.cluster.local");
    let [istio, plain] = &c.transport_socket_matches[..] else { panic!("two matches") };
    assert_eq!(istio.r#match.as_ref().unwrap().fields["tlsMode"], super::tls::tests_tls_mode_value());
    assert!(plain.r#match.as_ref().unwrap().fields.is_empty());
    assert_eq!(plain.transport_socket.as_ref().unwrap().name, "envoy.transport_sockets.raw_buffer");
    let up: tlspb::UpstreamTlsContext = decode(socket_config(istio.transport_socket.as_ref().unwrap()));
    assert_eq!(up.sni, "outbound|80||b.default.svc.cluster.local");
    let common = up.common_tls_context.unwrap();
    assert_eq!(common.alpn_protocols, ["istio-peer-exchange", "istio"]);
    assert_eq!(common.tls_certificate_sds_secret_configs[0].name, "default");
    assert!(common.tls_certificate_sds_secret_configs[0].sds_config.is_some(), "over ADS");
    let Some(tlspb::common_tls_context::ValidationContextType::CombinedValidationContext(v)) =
        common.validation_context_type
    else {
        panic!("combined validation")
    };
    assert_eq!(v.validation_context_sds_secret_config.unwrap().name, "ROOTCA");
    let sans = v.default_validation_context.unwrap().match_typed_subject_alt_names;
    let sans: Vec<String> = sans.iter().map(|m| format!("{:?}", m.matcher)).collect();
    assert_eq!(sans.len(), 1);
    assert!(sans[0].contains("spiffe://cluster.local/ns/default/sa/b"), "{sans:?}");
    let cla = t.resources.endpoints.iter().find(|e| e.cluster_name == c.name).unwrap();
    assert!(cla.endpoints[0].lb_endpoints.iter().all(|e| e.metadata.is_some()), "sidecar endpoints are tlsMode: istio");
}

#[test]
fn inbound_chains_follow_the_peer_authentication_mode() {
    let inbound = |t: &Translation| t.resources.listeners.iter().find(|l| l.name == "inbound").unwrap().clone();
    // No PeerAuthentication: PERMISSIVE.
    let l = inbound(&translate(&snapshot(""), &placement()));
    assert_eq!(l.listener_filters[0].name, "envoy.filters.listener.tls_inspector");
    let chains: Vec<(&str, Option<String>)> = l
        .filter_chains
        .iter()
        .map(|c| (c.name.as_str(), c.filter_chain_match.as_ref().map(|m| m.transport_protocol.clone())))
        .collect();
    assert_eq!(chains, [("mtls", Some("tls".to_string())), ("plaintext", None)]);

    let l = inbound(&translate(&snapshot(&peer_authentication("STRICT")), &placement()));
    assert!(l.listener_filters.is_empty());
    let [chain] = &l.filter_chains[..] else { panic!("one chain") };
    let down: tlspb::DownstreamTlsContext = decode(socket_config(chain.transport_socket.as_ref().unwrap()));
    assert_eq!(down.require_client_certificate.map(|v| v.value), Some(true));
    assert_eq!(down.common_tls_context.unwrap().alpn_protocols, ["h2", "http/1.1"]);

    let t = translate(&snapshot(&peer_authentication("DISABLE")), &placement());
    let l = inbound(&t);
    let [chain] = &l.filter_chains[..] else { panic!("one chain") };
    assert!(chain.transport_socket.is_none());
    // Peers without mTLS inbound are called in plaintext: no transport socket matches.
    assert!(cluster(&t, "outbound|80||b.default.svc.cluster.local").transport_socket_matches.is_empty());
}

#[test]
fn without_an_identity_mtls_is_untranslated_and_named() {
    let mut p = placement();
    p.identity = None;
    let t = translate(&snapshot(""), &p);
    assert!(t.resources.secrets.is_empty());
    assert!(t.untranslated.iter().any(|u| u.starts_with("inbound mTLS of a-0")), "{:?}", t.untranslated);
    assert!(t.untranslated.iter().any(|u| u.contains("cluster outbound|80||b.default.svc.cluster.local")));
}

#[test]
fn envoy_accepts_the_static_bootstraps_with_strict_and_permissive_mtls() {
    for mode in ["STRICT", "PERMISSIVE"] {
        let t = translate(&snapshot(&format!("{RICH}---\n{}", peer_authentication(mode))), &placement());
        let b = static_bootstrap(&t.resources, "a-0");
        assert_eq!(b.static_resources.as_ref().unwrap().secrets.len(), 2);
        if let Some(result) = envoy_validate(&format!("mtls-{mode}"), &b) {
            result.unwrap();
        }
    }
}

#[test]
fn envoy_rejects_a_broken_private_key() {
    let mut p = placement();
    p.identity.as_mut().unwrap().private_key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into();
    let t = translate(&snapshot(&peer_authentication("STRICT")), &p);
    if let Some(result) = envoy_validate("broken-key", &static_bootstrap(&t.resources, "a-0")) {
        let err = result.expect_err("a key that does not parse is refused");
        assert!(err.contains("key") || err.contains("Key"), "{err}");
    }
}

/// The HTTP connection manager of a filter chain.
pub(super) fn hcm_of(
    chain: &crate::pb::envoy::config::listener::v3::FilterChain,
) -> crate::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager {
    match &chain.filters[0].config_type {
        Some(crate::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(a)) => decode(a),
        other => panic!("not a typed config: {other:?}"),
    }
}

#[test]
fn an_add_and_a_set_of_one_header_are_both_written_as_istio_writes_them() {
    let yaml = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: b}\nspec:\n  hosts: [b]\n  http:\n  - route: [{destination: {host: b}}]\n    headers: {request: {add: {x-r: \"1\", x-a: \"1\"}, set: {x-r: \"2\"}}}\n";
    let t = translate(&snapshot(yaml), &placement());
    let r = &vhost(&t, "b.default.svc.cluster.local:80").routes[0];
    let adds: Vec<(&str, &str)> = r
        .request_headers_to_add
        .iter()
        .map(|h| h.header.as_ref().unwrap())
        .map(|h| (h.key.as_str(), h.value.as_str()))
        .collect();
    assert_eq!(adds, [("x-r", "2"), ("x-a", "1"), ("x-r", "1")]);
}
