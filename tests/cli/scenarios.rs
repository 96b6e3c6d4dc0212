//! Every file in `scenarios/` runs as its own test case through the library: it loads,
//! passes its expectations and records an outcome for every request it issued. And it is
//! deterministic: the same seed gives byte-identical results JSON, another seed does not.
//!
//! Adding a scenario file means adding a line to the `scenarios!` list below;
//! `every_scenario_file_has_a_test` fails until it is there.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sim::scenario::Plan;

fn path(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios").join(file)
}

fn load(file: &str) -> Arc<Plan> {
    let p = path(file);
    Arc::new(sim::scenario::load(&p).unwrap_or_else(|e| panic!("{} does not load:\n{e}", p.display())))
}

/// One run, reduced to what the tests compare.
pub struct Run {
    pub seed: u64,
    pub passed: bool,
    pub issued: usize,
    pub recorded: usize,
    pub json: Vec<u8>,
    pub summary: String,
}

fn run(plan: &Arc<Plan>, seed: u64) -> Run {
    let out =
        sim::world::run(plan.clone(), seed).unwrap_or_else(|e| panic!("{} with seed {seed} broke: {e}", plan.file));
    let results = sim::results::build(plan, seed, &out);
    Run {
        seed,
        passed: results.passed,
        issued: results.issued,
        recorded: results.recorded,
        json: serde_json::to_vec(&results).expect("results serialize"),
        summary: sim::results::summary(&results),
    }
}

/// The run with the scenario's own seed, as `meshsim run FILE` does it.
fn passes(file: &str, first: &Run) {
    assert!(first.passed, "{file} (seed {}) failed its expectations:\n{}", first.seed, first.summary);
    assert!(first.issued > 0, "{file} issued no request:\n{}", first.summary);
    assert_eq!(first.issued, first.recorded, "{file}: every issued request must be recorded once:\n{}", first.summary);
}

/// Where two byte strings first differ, with some context, for a readable failure.
fn first_difference(a: &[u8], b: &[u8]) -> String {
    let i = a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
    let ctx = |s: &[u8]| String::from_utf8_lossy(&s[i.saturating_sub(200)..(i + 200).min(s.len())]).into_owned();
    format!("lengths {} and {}, first difference at byte {i}:\n  {}\nvs\n  {}", a.len(), b.len(), ctx(a), ctx(b))
}

/// The results JSON without its `seed` field.
fn without_seed(json: &[u8]) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_slice(json).expect("results are JSON");
    v.as_object_mut().expect("results are an object").remove("seed");
    v
}

fn deterministic(file: &str, first: impl FnOnce() -> &'static Run) {
    let plan = load(file);
    let seed = plan.seed;
    let other = seed ^ 0x9e37_79b9_7f4a_7c15;
    // `first` may already have run (for `passes`); the other two are fresh. Each run is
    // single-threaded, so they go in parallel.
    let (a, again, different) = std::thread::scope(|s| {
        let again = s.spawn(|| run(&plan, seed));
        let different = s.spawn(|| run(&plan, other));
        let a = first();
        (a, again.join().expect("second run"), different.join().expect("run with another seed"))
    });
    assert!(
        a.json == again.json,
        "{file}: two runs with seed {seed} gave different results JSON: {}",
        first_difference(&a.json, &again.json)
    );
    assert!(
        without_seed(&a.json) != without_seed(&different.json),
        "{file}: seeds {seed} and {other} gave the same results: the seed changes nothing"
    );
}

macro_rules! scenarios {
    ($($name:ident: $file:literal,)*) => {
        /// The files with a test, as listed.
        const FILES: &[&str] = &[$($file),*];
        $(
            mod $name {
                use std::sync::OnceLock;

                const FILE: &str = $file;
                /// The run with the scenario's seed, shared by both tests.
                static FIRST: OnceLock<super::Run> = OnceLock::new();

                fn first() -> &'static super::Run {
                    FIRST.get_or_init(|| {
                        let plan = super::load(FILE);
                        let seed = plan.seed;
                        super::run(&plan, seed)
                    })
                }

                #[test]
                fn passes() {
                    super::passes(FILE, first());
                }

                #[test]
                fn deterministic() {
                    super::deterministic(FILE, first);
                }
            }
        )*
    };
}

scenarios! {
    authz_allow_nothing: "authz-allow-nothing.yaml",
    authz_allow_paths: "authz-allow-paths.yaml",
    authz_deny_before_allow: "authz-deny-before-allow.yaml",
    authz_ip_blocks: "authz-ip-blocks.yaml",
    authz_methods_headers: "authz-methods-headers.yaml",
    authz_principals: "authz-principals.yaml",
    basic: "basic.yaml",
    ca_outage: "ca-outage.yaml",
    ca_root_rotation: "ca-root-rotation.yaml",
    ca_rotation_under_load: "ca-rotation-under-load.yaml",
    canary_95_5: "canary-95-5.yaml",
    canary_shift: "canary-shift.yaml",
    circuit_breaker_overflow: "circuit-breaker-overflow.yaml",
    circuit_breaker_serial: "circuit-breaker-serial.yaml",
    consistent_hash: "consistent-hash.yaml",
    consistent_hash_cookie: "consistent-hash-cookie.yaml",
    control_nack: "control-nack.yaml",
    control_istiod_restart: "control-istiod-restart.yaml",
    control_partition: "control-partition.yaml",
    control_pod_kill: "control-pod-kill.yaml",
    control_scale: "control-scale.yaml",
    direct_response: "direct-response.yaml",
    ejection_percent_default: "ejection-percent-default.yaml",
    envoyfilter_rate_limit_pushed: "envoyfilter-rate-limit-pushed.yaml",
    fault_abort_50: "fault-abort-50.yaml",
    fault_abort_no_percentage: "fault-abort-no-percentage.yaml",
    fault_delay: "fault-delay.yaml",
    header_edits: "header-edits.yaml",
    latency_tax: "latency-tax.yaml",
    link_latency: "link-latency.yaml",
    match_first_wins: "match-first-wins.yaml",
    match_headers: "match-headers.yaml",
    mirror: "mirror.yaml",
    missing_subset: "missing-subset.yaml",
    mtls_bad_identity: "mtls-bad-identity.yaml",
    mtls_dr_disable: "mtls-dr-disable.yaml",
    mtls_permissive: "mtls-permissive.yaml",
    mtls_precedence: "mtls-precedence.yaml",
    mtls_strict: "mtls-strict.yaml",
    outlier_backoff_decay: "outlier-backoff-decay.yaml",
    outlier_counter_reset: "outlier-counter-reset.yaml",
    outlier_ejection: "outlier-ejection.yaml",
    outlier_max_ejection_50: "outlier-max-ejection-50.yaml",
    outlier_no_healthy_upstream: "outlier-no-healthy-upstream.yaml",
    outlier_panic: "outlier-panic.yaml",
    partition: "partition.yaml",
    pod_crash: "pod-crash.yaml",
    rate_limit_burst: "rate-limit-burst.yaml",
    rate_limit_envoyfilter: "rate-limit-envoyfilter.yaml",
    redirect: "redirect.yaml",
    retry_5xx: "retry-5xx.yaml",
    retry_default_no_503: "retry-default-no-503.yaml",
    retry_exhausted: "retry-exhausted.yaml",
    retry_other_host: "retry-other-host.yaml",
    retry_per_try_timeout: "retry-per-try-timeout.yaml",
    rewrite: "rewrite.yaml",
    route_timeout: "route-timeout.yaml",
    tcp: "tcp.yaml",
    tcp_circuit_breaker: "tcp-circuit-breaker.yaml",
    tcp_failures: "tcp-failures.yaml",
    tcp_routes: "tcp-routes.yaml",
    tcp_security: "tcp-security.yaml",
    telemetry: "telemetry.yaml",
    weighted_1_1_2: "weighted-1-1-2.yaml",
    weighted_lone_destination: "weighted-lone-destination.yaml",
}

/// Determinism with mTLS on, named: seeded TLS randomness, key exchange and certificate
/// keys make two runs of one seed byte-identical, and the run did go over mTLS.
#[test]
fn mtls_runs_give_byte_identical_results_for_a_seed() {
    let plan = load("mtls-permissive.yaml");
    let (a, b) = (run(&plan, 5), run(&plan, 5));
    assert!(String::from_utf8_lossy(&a.json).contains(r#""connection_security":"mutual_tls""#), "no mTLS request");
    assert!(a.json == b.json, "two runs with seed 5 differ: {}", first_difference(&a.json, &b.json));
}

#[test]
fn every_scenario_file_has_a_test() {
    let dir = path("");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| matches!(p.extension().and_then(OsStr::to_str), Some("yaml" | "yml")))
        .map(|p| p.file_name().and_then(OsStr::to_str).expect("UTF-8 file name").to_string())
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = FILES.iter().map(|f| f.to_string()).collect();
    listed.sort();
    let missing: Vec<&String> = on_disk.iter().filter(|f| !listed.contains(f)).collect();
    let stale: Vec<&String> = listed.iter().filter(|f| !on_disk.contains(f)).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "the scenarios! list in tests/cli/scenarios.rs must match {}:\n  \
         files without a test: {missing:?}\n  tests without a file: {stale:?}",
        dir.display()
    );
}
