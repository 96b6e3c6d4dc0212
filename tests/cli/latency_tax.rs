//! `mesh: none`, the proxy cost model and `latency_overhead`, on the simulator itself:
//! the baseline replays the same requests with no sidecar anywhere, and the mesh's tax
//! comes from the cost model (take it away and the tax all but goes).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sim::recorder::Record;
use sim::world::RunOutput;

const SCENARIO: &str = "\
name: tax
duration: 5s
services:
  - name: frontend
    pods: [{name: v1}]
  - name: reviews
    pods:
      - name: v1
        replicas: 2
        app: {latency: {constant: 2ms}}
workload:
  - {name: browse, from: frontend, to: reviews, rate: 50, arrivals: constant}
expect:
  - latency_overhead: {workload: browse, percentile: 50, at_most: 100ms}
";

fn run(text: &str) -> RunOutput {
    let plan = Arc::new(sim::scenario::load_str("tax.yaml", text, Path::new(".")).expect("the scenario loads"));
    sim::world::run(plan.clone(), plan.seed).expect("the run completes")
}

fn median(records: &[Record]) -> Duration {
    let mut l: Vec<Duration> = records.iter().map(|r| r.latency).collect();
    l.sort();
    l[l.len() / 2]
}

#[test]
fn the_baseline_replays_the_same_requests_without_any_sidecar() {
    let out = run(SCENARIO);
    let base = out.baseline.as_deref().expect("latency_overhead runs a baseline");
    assert!(base.baseline.is_none());
    assert_eq!(base.records.len(), out.records.len());
    assert!(base.records.iter().zip(&out.records).all(|(b, m)| b.intended == m.intended));
    // No sidecar: no metrics, no mTLS, no certificates; every request still answered.
    assert!(out.metrics.values().any(|s| !s.is_empty()));
    assert!(base.metrics.values().all(Vec::is_empty));
    assert!(out.records.iter().all(|r| r.connection_security.is_some()));
    assert!(base.records.iter().all(|r| r.connection_security.is_none()));
    assert!(base.events.iter().all(|e| !e.kind.starts_with("cert_")));
    assert!(base.records.iter().all(|r| matches!(r.outcome, sim::recorder::Outcome::Response { status: 200, .. })));
}

#[test]
fn the_tax_comes_from_the_cost_model() {
    let taxed = run(SCENARIO);
    let free = run(&SCENARIO.replace(
        "duration: 5s\n",
        "duration: 5s\nproxy_cost:\n  outbound: {constant: 0s}\n  inbound: {constant: 0s}\n  tls_handshake: {constant: 0s}\n",
    ));
    let tax = |o: &RunOutput| median(&o.records).saturating_sub(median(&o.baseline.as_ref().unwrap().records));
    // Two default draws (median 0.7 ms each) put at least a millisecond on the median;
    // without them the mesh's own hops cost under one 1 ms simulation step.
    assert!(tax(&taxed) >= Duration::from_millis(1), "taxed: {:?}", tax(&taxed));
    assert!(tax(&free) < Duration::from_millis(1), "free: {:?}", tax(&free));
    assert!(tax(&taxed) >= tax(&free) + Duration::from_millis(1));
}

#[test]
fn a_run_with_a_baseline_is_deterministic() {
    let a = run(SCENARIO);
    let b = run(SCENARIO);
    let lat = |o: &RunOutput| -> Vec<Duration> {
        o.records.iter().chain(&o.baseline.as_ref().unwrap().records).map(|r| r.latency).collect()
    };
    assert_eq!(lat(&a), lat(&b));
}

#[test]
fn the_results_and_the_report_carry_both_runs() {
    let plan = Arc::new(sim::scenario::load_str("tax.yaml", SCENARIO, Path::new(".")).expect("the scenario loads"));
    let out = sim::world::run(plan.clone(), plan.seed).expect("the run completes");
    let results = sim::results::build(&plan, plan.seed, &out);
    let json = serde_json::to_string(&results).expect("results serialize");
    let run = reports::Run::parse(&json).expect("results read back");
    let base = run.baseline.as_deref().expect("the results carry the baseline");
    assert_eq!(base.requests.len(), run.requests.len());
    assert!(base.expectations.is_empty());
    let page = reports::html::run_page(&run);
    assert!(page.contains("<figure id=\"latency-tax\">"));
    assert!(page.contains("browse (no mesh)"));
    assert!(sim::results::summary(&results).contains("no mesh "));
}
