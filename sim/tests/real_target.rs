//! The `real` target: scenarios run on loopback sockets in real time and real TLS, pods
//! assembled by the same builder as in the simulator (`sim::pod`). Each run is bounded
//! by its scenario (a few seconds: shorter variants of the shipped scenarios where
//! those are long) plus real mode's boot limit; every component is a task of the run's
//! own runtime, ended with it.
//!
//! The expectations are the scenario's, with real mode's stated slack
//! (`sim::target::slacken`); a test also checks from the records what a fault on real
//! sockets did.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sim::recorder::{Outcome, Record};
use sim::results::{self, Results};
use sim::scenario::{self, Plan};
use sim::target::{Target, slacken};

fn plan_of(name: &str, yaml: &str) -> Plan {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    scenario::load_str(name, yaml, &base).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn shipped(name: &str) -> Plan {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../scenarios/{name}.yaml"));
    scenario::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Runs `plan` on `target` and returns its results and records.
fn run_on(mut plan: Plan, target: Target) -> (Results, Vec<Record>) {
    plan.expectations = slacken(&plan.expectations, target);
    let plan = Arc::new(plan);
    let out = match target {
        Target::Sim => sim::world::run(plan.clone(), plan.seed),
        _ => sim::real::run(plan.clone(), plan.seed, &|_| {}),
    }
    .unwrap_or_else(|e| panic!("{}: {e}", plan.name));
    assert_eq!(out.records.len(), out.issued, "every issued request has exactly one outcome");
    (results::build(&plan, plan.seed, &out), out.records)
}

/// Runs `plan` on `real` and asserts that every expectation held.
fn passes_on_real(plan: Plan) -> (Results, Vec<Record>) {
    let (r, records) = run_on(plan, Target::Real);
    assert_eq!(r.target, "real");
    let failed: Vec<String> = r
        .expectations
        .iter()
        .filter(|c| !c.pass)
        .map(|c| format!("{}: observed {}", c.expectation, c.observed))
        .collect();
    assert!(failed.is_empty(), "{} failed on real:\n{}", r.scenario, failed.join("\n"));
    (r, records)
}

#[test]
fn basic_passes_on_real() {
    passes_on_real(plan_of(
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
    ));
}

#[test]
fn canary_95_5_weights_hold_on_real() {
    passes_on_real(plan_of(
        "canary-95-5-short",
        r#"
name: canary-95-5-short
duration: 4s
services:
  - name: frontend
    pods: [{name: v1, replicas: 2}]
  - name: reviews
    port: 9080
    pods:
      - {name: v1, replicas: 3, labels: {version: v1}, app: {latency: {uniform: [1ms, 3ms]}}}
      - {name: v2, replicas: 1, labels: {version: v2}, app: {latency: {uniform: [1ms, 3ms]}}}
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
            - {destination: {host: reviews, subset: v1}, weight: 95}
            - {destination: {host: reviews, subset: v2}, weight: 5}
workload:
  - {name: browse, from: frontend, to: reviews, rate: 300}
expect:
  - share: {workload: browse, subset: v2, expected: 0.05}
  - share: {workload: browse, subset: v1, expected: 0.95}
  - success_rate: {workload: browse, at_least: 1.0}
"#,
    ));
}

#[test]
fn outlier_ejection_on_real_ejects_the_failing_pod_and_readmits_it() {
    passes_on_real(plan_of(
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
  - ejection: {pod: reviews-v1-2, by: frontend-v1-0, nth: 1, at: [1s, 1.5s], lasting: [2s, 3s]}
  - count: {workload: browse, window: [1.5s, 3s], pod: reviews-v1-2, at_most: 0}
  - count: {workload: browse, status: 500, at_least: 5}
"#,
    ));
}

/// A partition scheduled in the scenario reaches the real sockets: connections to the
/// partitioned pod hang until the connect timeout (503 UF) while it lasts, and its
/// repair ends them.
#[test]
fn a_partition_on_real_sockets_gives_uf_until_it_heals() {
    let (r, records) = passes_on_real(plan_of(
        "partition-short",
        r#"
name: partition-short
duration: 5s
services:
  - name: frontend
    pods: [{name: v1}]
  - name: reviews
    port: 9080
    pods: [{name: v1, replicas: 2, app: {latency: {uniform: [1ms, 3ms]}}}]
istio:
  - apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: reviews}
    spec:
      hosts: [reviews]
      http:
        - route: [{destination: {host: reviews}}]
          timeout: 2s
          retries: {attempts: 0}
  - apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {name: reviews}
    spec:
      host: reviews
      trafficPolicy:
        connectionPool: {tcp: {connectTimeout: 200ms}, http: {maxRequestsPerConnection: 1}}
workload:
  - {name: browse, from: frontend-v1-0, to: reviews, rate: 100}
faults:
  - {at: 1s, for: 2s, partition: {from: [frontend], to: [reviews-v1-1]}}
expect:
  - success_rate: {workload: browse, window: [0s, 1s], at_least: 1.0}
  - count: {workload: browse, window: [1s, 3s], status: 503, flag: UF, at_least: 20}
  - count: {workload: browse, window: [3.5s, 5s], flag: UF, at_most: 0}
  - success_rate: {workload: browse, window: [3.5s, 5s], at_least: 1.0}
"#,
    ));
    // From the records themselves: UF only for requests sent while the partition held.
    let uf: Vec<Duration> = records.iter().filter(|x| x.flags.contains("UF")).map(|x| x.intended).collect();
    assert!(!uf.is_empty(), "the partition produced no UF: {:?}", r.workloads[0].statuses);
    let (first, last) = (uf.iter().min().unwrap(), uf.iter().max().unwrap());
    assert!(*first >= Duration::from_millis(900), "a UF before the partition: {first:?}");
    assert!(*last < Duration::from_millis(3_100), "a UF after the repair: {last:?}");
    let after = records.iter().filter(|x| x.intended >= Duration::from_millis(3_300));
    assert!(
        after.clone().count() > 100
            && after.clone().all(|x| matches!(x.outcome, Outcome::Response { status: 200, .. }))
    );
}

#[test]
fn mtls_strict_on_real_resets_plaintext_and_serves_mutual_tls() {
    passes_on_real(plan_of(
        "mtls-strict-short",
        r#"
name: mtls-strict-short
duration: 3s
services:
  - name: web
    pods: [{name: v1, service_account: web}]
  - name: legacy
    pods: [{name: v1, sidecar: false}]
  - name: api
    pods: [{name: v1, service_account: api}]
istio:
  - apiVersion: security.istio.io/v1
    kind: PeerAuthentication
    metadata: {name: api-strict, namespace: default}
    spec:
      selector: {matchLabels: {app: api}}
      mtls: {mode: STRICT}
workload:
  - {name: mesh, from: web, to: api, rate: 20}
  - {name: plaintext, from: legacy, to: api, rate: 20}
expect:
  - success_rate: {workload: mesh, at_least: 1.0}
  - count: {workload: mesh, status: 200, connection_security: mutual_tls, at_least: 45}
  - success_rate: {workload: plaintext, at_most: 0.0}
  - count: {workload: plaintext, error: reset, at_least: 45}
"#,
    ));
}

#[test]
fn canary_shift_on_real_follows_each_push() {
    passes_on_real(plan_of(
        "canary-shift-short",
        r#"
name: canary-shift-short
duration: 6s
services:
  - name: frontend
    pods: [{name: v1, replicas: 2}]
  - name: reviews
    port: 9080
    pods:
      - {name: v1, replicas: 3, labels: {version: v1}, app: {latency: {uniform: [1ms, 3ms]}}}
      - {name: v2, labels: {version: v2}, app: {latency: {uniform: [1ms, 3ms]}}}
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
            - {destination: {host: reviews, subset: v1}, weight: 95}
            - {destination: {host: reviews, subset: v2}, weight: 5}
workload:
  - {name: browse, from: frontend, to: reviews, rate: 200}
config:
  - at: 2s
    apply:
      - apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: reviews}
        spec:
          hosts: [reviews]
          http:
            - route:
                - {destination: {host: reviews, subset: v1}, weight: 50}
                - {destination: {host: reviews, subset: v2}, weight: 50}
  - at: 4s
    apply_file: istio/canary-shift-v2.yaml
expect:
  - converged: {after: 2s, within: 200ms}
  - converged: {after: 4s, within: 200ms}
  - share: {workload: browse, subset: v2, window: [0s, 2s], expected: 0.05}
  - share: {workload: browse, subset: v2, window: [2.2s, 4s], expected: 0.5}
  - share: {workload: browse, subset: v2, window: [4.2s, 6s], expected: 1.0}
  - success_rate: {workload: browse, at_least: 1.0}
  - events: {kind: config_nacked, at_most: 0}
"#,
    ));
}

/// Envoy refuses a ring of ten million entries: both frontends NACK the push and keep
/// their last good config, then ACK the fixed one — over real sockets.
#[test]
fn control_nack_on_real_keeps_the_last_good_config() {
    passes_on_real(plan_of(
        "control-nack-short",
        r#"
name: control-nack-short
duration: 4s
services:
  - name: frontend
    pods: [{name: v1, replicas: 2}]
  - name: reviews
    port: 9080
    pods:
      - {name: v1, replicas: 2, labels: {version: v1}}
      - {name: v2, replicas: 2, labels: {version: v2}}
istio:
  - apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {name: reviews}
    spec:
      host: reviews
      subsets:
        - {name: v1, labels: {version: v1}}
        - {name: v2, labels: {version: v2}}
workload:
  - {name: browse, from: frontend, to: reviews, rate: 100}
config:
  - at: 1s
    apply:
      - apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata: {name: reviews}
        spec:
          host: reviews
          trafficPolicy:
            loadBalancer:
              consistentHash: {httpHeaderName: x-user, ringHash: {minimumRingSize: 10000000}}
          subsets:
            - {name: v1, labels: {version: v1}}
            - {name: v2, labels: {version: v2}}
  - at: 2.5s
    apply:
      - apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata: {name: reviews}
        spec:
          host: reviews
          trafficPolicy:
            loadBalancer:
              consistentHash: {httpHeaderName: x-user, ringHash: {minimumRingSize: 1024}}
          subsets:
            - {name: v1, labels: {version: v1}}
            - {name: v2, labels: {version: v2}}
expect:
  - events: {kind: config_nacked, detail: MinimumRingSize, window: [1s, 1.2s], at_least: 2, at_most: 2}
  - events: {kind: config_acked, detail: frontend, window: [1s, 2.5s], at_most: 0}
  - converged: {after: 2.5s, within: 200ms}
  - success_rate: {workload: browse, at_least: 1.0}
"#,
    ));
}

/// TCP through two real sidecars over mTLS: every connection echoed, Istio's TCP
/// counters from both reporters (the shipped scenario, 5 s).
#[test]
fn tcp_passes_on_real() {
    passes_on_real(shipped("tcp"));
}

/// The same requests in both worlds end the same way: status, response flags and
/// connection security per request, over mTLS with the mesh CA's certificates (the
/// simulator's seeded provider, real mode's OS-backed one).
#[test]
fn mtls_strict_gives_the_same_outcomes_in_sim_and_on_real() {
    // The serving pod is left out: load balancing draws differ between the worlds.
    let key = |r: &Record| {
        let outcome = match &r.outcome {
            Outcome::Response { status, .. } => status.to_string(),
            other => format!("{other:?}"),
        };
        (r.workload, outcome, r.flags.clone(), r.connection_security)
    };
    let (_, sim) = run_on(shipped("mtls-strict"), Target::Sim);
    let (_, real) = run_on(shipped("mtls-strict"), Target::Real);
    let (mut a, mut b): (Vec<_>, Vec<_>) = (sim.iter().map(key).collect(), real.iter().map(key).collect());
    a.sort();
    b.sort();
    assert_eq!(a, b, "per-request outcomes differ between the simulator and real mode");
}

/// Istio's standard metrics from both reporters, metadata exchange and trace
/// propagation over real sockets (the shipped scenario, 10 s).
#[test]
fn telemetry_passes_on_real() {
    passes_on_real(shipped("telemetry"));
}

/// istiod crashes: sidecars keep serving their last config; a change made while it is
/// down reaches every sidecar once it is back and they have reconnected.
#[test]
fn sidecars_resync_after_istiod_restarts_on_real() {
    passes_on_real(plan_of(
        "control-istiod-restart-short",
        r#"
name: control-istiod-restart-short
duration: 9s
services:
  - name: frontend
    pods: [{name: v1, replicas: 2}]
  - name: reviews
    port: 9080
    pods:
      - {name: v1, replicas: 2, labels: {version: v1}}
      - {name: v2, labels: {version: v2}}
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
        - route: [{destination: {host: reviews, subset: v1}}]
workload:
  - {name: browse, from: frontend, to: reviews, rate: 20}
faults:
  - {at: 1s, for: 2s, crash: {pods: [istiod]}}
config:
  - at: 2s
    apply:
      - apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: reviews}
        spec:
          hosts: [reviews]
          http:
            - route: [{destination: {host: reviews, subset: v2}}]
expect:
  - success_rate: {workload: browse, at_least: 1.0}
  - share: {workload: browse, subset: v1, window: [0s, 3s], expected: 1.0}
  - events: {kind: config_acked, window: [1s, 3s], at_most: 0}
  - events: {kind: config_acked, detail: version 2, window: [3s, 8s], at_least: 5}
  - share: {workload: browse, subset: v2, window: [8s, 9s], expected: 1.0}
"#,
    ));
}
