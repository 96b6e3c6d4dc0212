//! The sidecars' telemetry against what the run recorded, on real scenarios: every
//! metric count equals the outcomes the clients saw (source reporter) and the tries the
//! destinations answered (destination reporter), every label set is Istio's
//! (<https://istio.io/latest/docs/reference/config/metrics/>; its TCP set for TCP series), and every request's trace tree is
//! complete.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use mesh::proxy::metrics::Series;
use mesh::proxy::tracing::SpanKind;
use sim::recorder::{Outcome, Record};
use sim::world::RunOutput;

/// The label list of Istio's reference (<https://istio.io/latest/docs/reference/config/metrics/>), written out
/// here (not taken from the code
/// under test).
const SECTION_6_LABELS: [&str; 25] = [
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "source_canonical_service",
    "source_canonical_revision",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_cluster",
    "destination_canonical_service",
    "destination_canonical_revision",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
];

/// Istio's TCP metric labels (istio/proxy `testdata/metric/tcp_*.yaml.tmpl`): section 6's
/// without `response_code` and `grpc_response_status`, written out here.
const TCP_LABELS: [&str; 23] = [
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "source_canonical_service",
    "source_canonical_revision",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_cluster",
    "destination_canonical_service",
    "destination_canonical_revision",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
];

fn run(file: &str) -> (Arc<sim::scenario::Plan>, RunOutput) {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios").join(file);
    let plan = Arc::new(sim::scenario::load(&p).unwrap_or_else(|e| panic!("{file}: {e}")));
    let out = sim::world::run(plan.clone(), plan.seed).unwrap_or_else(|e| panic!("{file}: {e}"));
    (plan, out)
}

/// `istio_requests_total` summed per (response_code, response_flags) over every pod's
/// series of `reporter`.
fn requests_by_code_and_flags(out: &RunOutput, reporter: &str) -> BTreeMap<(String, String), u64> {
    let mut m = BTreeMap::new();
    for s in out.metrics.values().flatten().filter(|s: &&Series| s.labels["reporter"] == reporter) {
        *m.entry((s.labels["response_code"].clone(), s.labels["response_flags"].clone())).or_default() +=
            s.value("istio_requests_total", None).unwrap_or(0.0) as u64;
    }
    m
}

/// What the clients saw, per (status, source sidecar flags), for requests that reached
/// the source sidecar.
fn outcomes_by_code_and_flags(records: &[Record]) -> BTreeMap<(String, String), u64> {
    let mut m = BTreeMap::new();
    for r in records {
        if let Outcome::Response { status, .. } = r.outcome {
            *m.entry((status.to_string(), r.flags.clone())).or_default() += 1;
        }
    }
    m
}

/// What the destination sidecars answered, per (status, flags): one entry per try that
/// got a response, from the try spans the source sidecars recorded.
fn tries_by_status(records: &[Record]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for r in records {
        for s in r.spans.iter().filter(|s| s.kind == SpanKind::Try) {
            if let Some(st) = s.status {
                *m.entry(st.to_string()).or_default() += 1;
            }
        }
    }
    m
}

fn destination_by_code(out: &RunOutput) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for ((code, _), n) in requests_by_code_and_flags(out, "destination") {
        *m.entry(code).or_default() += n;
    }
    m
}

fn assert_no_client_errors(records: &[Record]) {
    let errors: Vec<&Outcome> = records.iter().map(|r| &r.outcome).filter(|o| matches!(o, Outcome::Error(_))).collect();
    assert!(errors.is_empty(), "the comparison below assumes every request got a response: {errors:?}");
}

#[test]
fn circuit_breaker_overflow_is_counted_as_uo_at_the_source_only() {
    let (_, out) = run("circuit-breaker-overflow.yaml");
    assert_no_client_errors(&out.records);
    let source = requests_by_code_and_flags(&out, "source");
    assert_eq!(source, outcomes_by_code_and_flags(&out.records), "source series = client outcomes");
    assert!(source.get(&("503".into(), "UO".into())).is_some_and(|n| *n >= 200), "{source:?}");
    let dest = requests_by_code_and_flags(&out, "destination");
    assert!(dest.keys().all(|(_, flags)| flags == "-"), "no UO at the destination: {dest:?}");
    assert_eq!(destination_by_code(&out), tries_by_status(&out.records), "destination series = answered tries");
    let received: u64 = out.records.iter().map(|r| u64::from(r.upstream_attempts)).sum();
    assert_eq!(dest.values().sum::<u64>(), received, "every request an app received was counted at its sidecar");
}

#[test]
fn local_rate_limit_is_counted_as_429_rl_at_the_destination() {
    let (_, out) = run("rate-limit-burst.yaml");
    assert_no_client_errors(&out.records);
    let source = requests_by_code_and_flags(&out, "source");
    assert_eq!(source, outcomes_by_code_and_flags(&out.records));
    let dest = requests_by_code_and_flags(&out, "destination");
    let limited = out.records.iter().filter(|r| matches!(r.outcome, Outcome::Response { status: 429, .. })).count();
    assert!(limited >= 6);
    assert_eq!(dest.get(&("429".into(), "RL".into())).copied(), Some(limited as u64), "{dest:?}");
    assert_eq!(source.get(&("429".into(), "-".into())).copied(), Some(limited as u64), "the source passes it on");
    let ok = out.records.iter().filter(|r| matches!(r.outcome, Outcome::Response { status: 200, .. })).count();
    assert_eq!(dest.get(&("200".into(), "-".into())).copied(), Some(ok as u64));
}

#[test]
fn retried_requests_count_once_at_the_source_and_per_try_at_the_destination() {
    let (_, out) = run("retry-5xx.yaml");
    assert_no_client_errors(&out.records);
    let n = out.records.len() as u64;
    assert_eq!(requests_by_code_and_flags(&out, "source"), BTreeMap::from([(("200".into(), "-".into()), n)]));
    assert_eq!(destination_by_code(&out), BTreeMap::from([("200".into(), n), ("503".into(), 2 * n)]));
    assert_eq!(destination_by_code(&out), tries_by_status(&out.records));
}

#[test]
fn every_series_carries_exactly_the_section_6_labels_and_names_both_workloads() {
    let (plan, out) = run("telemetry.yaml");
    let want: Vec<&str> = {
        let mut l = SECTION_6_LABELS.to_vec();
        l.sort_unstable();
        l
    };
    let mut series = 0;
    for (pod, ss) in &out.metrics {
        for s in ss {
            series += 1;
            assert_eq!(s.labels.keys().copied().collect::<Vec<_>>(), want, "{pod}: {:?}", s.labels);
            let (mine, peer) = match s.labels["reporter"].as_str() {
                "source" => ("source_workload", "destination_workload"),
                "destination" => ("destination_workload", "source_workload"),
                other => panic!("reporter {other}"),
            };
            let me = plan.pods.iter().find(|p| p.name == *pod).expect("a pod of the plan");
            assert_eq!(s.labels[mine], me.workload(), "{pod} reports itself");
            assert_ne!(s.labels[peer], "unknown", "{pod}: the peer's metadata arrived: {:?}", s.labels);
            assert_eq!(s.labels["request_protocol"], "http");
            assert_eq!(s.labels["grpc_response_status"], "");
        }
    }
    assert!(series >= 4, "{series} series");
}

#[test]
fn every_request_has_a_complete_trace_tree_with_a_span_per_try() {
    for file in ["retry-5xx.yaml", "circuit-breaker-overflow.yaml", "rate-limit-burst.yaml", "telemetry.yaml"] {
        let (plan, out) = run(file);
        let summary = sim::traces::Summary::of(&plan, &out.records);
        assert!(summary.checked > 0, "{file}");
        assert_eq!(summary.incomplete, 0, "{file}: {summary:?}");
        if file == "retry-5xx.yaml" {
            for r in &out.records {
                let tries = r.spans.iter().filter(|s| s.kind == SpanKind::Try).count();
                let inbound = r.spans.iter().filter(|s| s.kind == SpanKind::Inbound).count();
                assert_eq!((tries, inbound), (3, 3), "{file}: {:?}", r.spans);
            }
        }
    }
}

/// A TCP counter summed over every pod's series of `reporter`.
fn tcp_total(out: &RunOutput, reporter: &str, name: &str) -> u64 {
    out.metrics
        .values()
        .flatten()
        .filter(|s| s.is_tcp() && s.labels["reporter"] == reporter)
        .map(|s| s.value(name, None).expect("a TCP counter") as u64)
        .sum()
}

/// Bytes the connections that were echoed got back.
fn echoed_bytes(records: &[Record]) -> u64 {
    records
        .iter()
        .map(|r| match r.outcome {
            Outcome::Echoed { bytes } => bytes,
            _ => 0,
        })
        .sum()
}

#[test]
fn tcp_metrics_equal_the_recorded_connections_for_both_reporters() {
    let (_, out) = run("tcp.yaml");
    let n = out.records.len() as u64;
    assert!(n >= 100 && out.records.iter().all(|r| matches!(r.outcome, Outcome::Echoed { .. })));
    let bytes = echoed_bytes(&out.records);
    for reporter in ["source", "destination"] {
        let got = [
            "istio_tcp_connections_opened_total",
            "istio_tcp_connections_closed_total",
            "istio_tcp_received_bytes_total",
            "istio_tcp_sent_bytes_total",
        ]
        .map(|m| tcp_total(&out, reporter, m));
        assert_eq!(got, [n, n, bytes, bytes], "{reporter}: opened, closed, received, sent");
    }
    let http = out.metrics.values().flatten().filter(|s| !s.is_tcp()).count();
    assert_eq!(http, 0, "a TCP service makes no HTTP series");
}

#[test]
fn tcp_connections_denied_or_refused_still_open_and_close_once_and_carry_no_echo() {
    let (plan, out) = run("tcp-security.yaml");
    // Every connection from a pod with a sidecar passes its sidecar once, echoed or not;
    // the plaintext ones into STRICT are dropped before any sidecar counts them.
    let meshed = out.records.iter().filter(|r| plan.pods[r.source].sidecar).count() as u64;
    let echoed = out.records.iter().filter(|r| matches!(r.outcome, Outcome::Echoed { .. })).count();
    assert!(meshed > 0 && echoed > 0 && (echoed as u64) < meshed, "{echoed} of {meshed}");
    for reporter in ["source", "destination"] {
        let opened = tcp_total(&out, reporter, "istio_tcp_connections_opened_total");
        let closed = tcp_total(&out, reporter, "istio_tcp_connections_closed_total");
        assert_eq!((opened, closed), (meshed, meshed), "{reporter}");
        let sent = tcp_total(&out, reporter, "istio_tcp_sent_bytes_total");
        assert_eq!(sent, echoed_bytes(&out.records), "{reporter}: only echoed connections carry bytes back");
    }
}

#[test]
fn tcp_series_carry_exactly_istios_tcp_labels_and_name_both_workloads() {
    let (plan, out) = run("tcp.yaml");
    let mut want = TCP_LABELS.to_vec();
    want.sort_unstable();
    let mut series = 0;
    for (pod, ss) in &out.metrics {
        for s in ss {
            series += 1;
            assert_eq!(s.labels.keys().copied().collect::<Vec<_>>(), want, "{pod}: {:?}", s.labels);
            assert_eq!(s.labels["request_protocol"], "tcp");
            let (mine, peer) = match s.labels["reporter"].as_str() {
                "source" => ("source_workload", "destination_workload"),
                "destination" => ("destination_workload", "source_workload"),
                other => panic!("reporter {other}"),
            };
            let me = plan.pods.iter().find(|p| p.name == *pod).expect("a pod of the plan");
            assert_eq!(s.labels[mine], me.workload(), "{pod} reports itself");
            assert_ne!(s.labels[peer], "unknown", "{pod}: the in-band metadata exchange ran: {:?}", s.labels);
            for p in ["source_principal", "destination_principal"] {
                assert!(s.labels[p].starts_with("spiffe://cluster.local/ns/default/sa/"), "{pod}: {p} {:?}", s.labels);
            }
        }
    }
    assert_eq!(series, 4, "source and destination series of the client towards v1 and v2");
}
