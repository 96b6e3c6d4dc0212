use std::time::Duration;

use crate::config::Level;
use crate::identity::SpiffeId;
use crate::proxy::pool::Limits;
use crate::snapshot::tests::{codes, compile_yaml, fqdn};
use crate::snapshot::{Cluster, LbPolicy, OutlierConfig, Snapshot, cluster_name};

const DR: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: b}\n";

fn cluster<'s>(snap: &'s Snapshot, subset: Option<&str>) -> &'s Cluster {
    &snap.clusters[&cluster_name(80, subset, &fqdn("b"))]
}

#[test]
fn a_service_without_a_destination_rule_is_one_least_request_cluster_of_all_its_pods() {
    let (snap, _) = compile_yaml("");
    let c = cluster(&snap, None);
    assert_eq!((c.service.as_str(), c.subset.as_deref()), (fqdn("b").as_str(), None));
    let pods: Vec<(&str, &str, u16, bool)> =
        c.endpoints.iter().map(|e| (e.pod.as_str(), e.host.as_str(), e.port, e.mtls)).collect();
    assert_eq!(pods, [("b-0", "node-b-0", 15006, true), ("b-1", "node-b-1", 15006, true)]);
    assert_eq!((c.lb, c.hash.is_none(), c.outlier), (LbPolicy::LeastRequest, true, None));
    assert_eq!(c.connect_timeout, Duration::from_secs(10));
    assert_eq!(c.limits, Limits::default());
    assert_eq!(c.peer_identities, [SpiffeId::new("default", "b")]);
}

#[test]
fn subsets_select_pods_by_label_and_replace_whole_policy_blocks() {
    let (snap, findings) = compile_yaml(&format!(
        "{DR}spec:
  host: b
  trafficPolicy:
    loadBalancer: {{simple: ROUND_ROBIN}}
    connectionPool: {{tcp: {{connectTimeout: 2s}}}}
  subsets:
  - name: v1
    labels: {{version: v1}}
  - name: v2
    labels: {{version: v2}}
    trafficPolicy:
      loadBalancer: {{simple: RANDOM}}
      connectionPool: {{http: {{http1MaxPendingRequests: 3}}}}
"
    ));
    assert!(codes(&findings, Level::Error).is_empty(), "{:?}", findings.0);
    let v1 = cluster(&snap, Some("v1"));
    let v2 = cluster(&snap, Some("v2"));
    assert_eq!(v1.endpoints.iter().map(|e| e.pod.as_str()).collect::<Vec<_>>(), ["b-0"]);
    assert_eq!(v2.endpoints.iter().map(|e| e.pod.as_str()).collect::<Vec<_>>(), ["b-1"]);
    assert_eq!((v1.lb, v2.lb, cluster(&snap, None).lb), (LbPolicy::RoundRobin, LbPolicy::Random, LbPolicy::RoundRobin));
    // v2's connectionPool block replaces the top level's whole: its connectTimeout is the
    // default, not the top level's.
    assert_eq!((v1.connect_timeout, v2.connect_timeout), (Duration::from_secs(2), Duration::from_secs(10)));
    assert_eq!((v1.limits.max_pending_requests, v2.limits.max_pending_requests), (u32::MAX, 3));
}

#[test]
fn a_subset_selecting_no_pod_is_ist0173_naming_the_rule() {
    let (snap, findings) =
        compile_yaml(&format!("{DR}spec:\n  host: b\n  subsets:\n  - name: v3\n    labels: {{version: v3}}\n"));
    assert!(cluster(&snap, Some("v3")).endpoints.is_empty());
    let f = findings.0.iter().find(|f| f.code == "IST0173").expect("IST0173");
    assert_eq!((f.level, f.resource.as_deref()), (Level::Warning, Some("DestinationRule default/b")));
}

#[test]
fn outlier_detection_gets_istios_defaults() {
    let (snap, _) = compile_yaml(&format!(
        "{DR}spec:\n  host: b\n  trafficPolicy:\n    outlierDetection: {{baseEjectionTime: 1m}}\n"
    ));
    let want = OutlierConfig {
        consecutive_5xx: Some(5),
        consecutive_gateway: None,
        interval: Duration::from_secs(10),
        base_ejection_time: Duration::from_secs(60),
        max_ejection_time: Duration::from_secs(300),
        max_ejection_percent: 10,
        panic_threshold_percent: 0,
    };
    assert_eq!(cluster(&snap, None).outlier, Some(want));
}

#[test]
fn connection_pool_thresholds_of_zero_or_less_mean_unset() {
    let (snap, _) = compile_yaml(&format!(
        "{DR}spec:\n  host: b\n  trafficPolicy:\n    connectionPool:\n      tcp: {{maxConnections: 0}}\n      http: {{http1MaxPendingRequests: 7, maxRetries: -1}}\n"
    ));
    let l = &cluster(&snap, None).limits;
    assert_eq!((l.max_connections, l.max_pending_requests, l.max_retries), (u32::MAX, 7, u32::MAX));
}

#[test]
fn tls_mode_disable_turns_auto_mtls_off() {
    let (snap, _) = compile_yaml(&format!("{DR}spec:\n  host: b\n  trafficPolicy:\n    tls: {{mode: DISABLE}}\n"));
    assert!(cluster(&snap, None).endpoints.iter().all(|e| !e.mtls));
}

#[test]
fn only_the_first_destination_rule_of_a_host_counts() {
    let second = format!("{DR}spec:\n  host: b\n  trafficPolicy:\n    loadBalancer: {{simple: RANDOM}}\n")
        .replace("name: b", "name: b2");
    let (snap, findings) = compile_yaml(&format!(
        "{DR}spec:\n  host: b\n  trafficPolicy:\n    loadBalancer: {{simple: ROUND_ROBIN}}\n---\n{second}"
    ));
    assert_eq!(cluster(&snap, None).lb, LbPolicy::RoundRobin);
    assert_eq!(codes(&findings, Level::Warning), ["MSIM0003"]);
}

#[test]
fn a_rule_for_a_host_that_is_not_a_service_is_ist0174() {
    let (_, findings) = compile_yaml(&format!("{DR}spec:\n  host: nowhere\n"));
    assert_eq!(codes(&findings, Level::Warning), ["IST0174"]);
}

#[test]
fn a_maglev_table_size_must_be_prime() {
    let dr = |size: u64| {
        format!(
            "{DR}spec:\n  host: b\n  trafficPolicy:\n    loadBalancer:\n      consistentHash: {{httpHeaderName: x-user, maglev: {{tableSize: {size}}}}}\n"
        )
    };
    let (_, bad) = compile_yaml(&dr(65536));
    assert!(bad.0.iter().any(|f| f.message == "table size 65536 must be a prime number"), "{:?}", bad.0);
    let (snap, good) = compile_yaml(&dr(65537));
    assert!(codes(&good, Level::Error).is_empty());
    assert!(cluster(&snap, None).hash.is_some());
}
