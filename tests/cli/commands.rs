//! The commands on valid input: `validate` exit codes across files, `run` exit codes,
//! the results file and `--seed`.

use std::ffi::OsStr;
use std::path::Path;

use crate::util::{Scratch, analyze_errors_about, errors_about, meshsim};

/// Small and quick: 2 simulated seconds, a few hundred requests.
const SMALL: &str = "\
name: small
duration: 2s
services:
  - name: client
    pods:
      - name: v1
  - name: server
    pods:
      - name: v1
        replicas: 2
workload:
  - name: calls
    from: client
    to: server
    rate: 100
expect:
  - success_rate: {workload: calls, at_least: 1.0}
";

#[test]
fn validate_accepts_a_good_file() {
    let scratch = Scratch::new("validate-good");
    let good = scratch.write("good.yaml", SMALL);
    let ran = meshsim([OsStr::new("validate"), good.as_os_str()]);
    ran.assert_no_panic();
    assert_eq!(ran.code, Some(0), "{}", ran.dump());
    assert!(
        ran.stdout.contains(&format!("{}: ok (3 pods, 1 workloads, 1 expectations, 0 warnings)", good.display())),
        "{}",
        ran.dump()
    );
    assert!(ran.stderr.is_empty(), "{}", ran.dump());
}

#[test]
fn validate_rejects_a_bad_file_among_good_ones() {
    let scratch = Scratch::new("validate-mixed");
    let good = scratch.write("good.yaml", SMALL);
    let bad = scratch.write("bad.yaml", SMALL.replace("to: server", "to: serve"));
    let ran = meshsim([OsStr::new("validate"), good.as_os_str(), bad.as_os_str(), good.as_os_str()]);
    ran.assert_no_panic();
    assert_eq!(ran.code, Some(79), "one file with an error finding makes the whole validation fail\n{}", ran.dump());
    // Every file is still checked and reported.
    assert_eq!(ran.stdout.matches(&format!("{}: ok", good.display())).count(), 2, "{}", ran.dump());
    let errors = analyze_errors_about(&ran.stderr, &bad);
    assert_eq!(errors.len(), 1, "{}", ran.dump());
    assert!(errors[0].rest.contains("workload[0].to"), "{}", ran.dump());
    assert!(errors_about(&ran.stderr, &good).is_empty(), "{}", ran.dump());
}

#[test]
fn validate_accepts_every_shipped_scenario() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("scenarios/ is readable")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension() == Some(OsStr::new("yaml")))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no scenarios in {}", dir.display());
    let ran = meshsim(std::iter::once(OsStr::new("validate")).chain(files.iter().map(|f| f.as_os_str())));
    ran.assert_no_panic();
    assert_eq!(ran.code, Some(0), "{}", ran.dump());
    assert_eq!(ran.stdout.lines().filter(|l| l.contains(": ok (")).count(), files.len(), "{}", ran.dump());
}

#[test]
fn run_passes_exits_0_and_writes_results() {
    let scratch = Scratch::new("run-ok");
    let file = scratch.write("small.yaml", SMALL);
    let out = scratch.dir.join("results");
    let ran = meshsim([OsStr::new("run"), file.as_os_str(), OsStr::new("--out"), out.as_os_str()]);
    ran.assert_no_panic();
    assert_eq!(ran.code, Some(0), "{}", ran.dump());
    // No `seed:` in the file: the default seed is 1.
    let json = out.join("small-seed1.json");
    let text = std::fs::read_to_string(&json).unwrap_or_else(|e| panic!("{}: {e}\n{}", json.display(), ran.dump()));
    let v: serde_json::Value = serde_json::from_str(&text).expect("results are JSON");
    assert_eq!(v["scenario"], "small");
    assert_eq!(v["seed"], 1);
    assert_eq!(v["passed"], true);
    assert!(v["issued"].as_u64().is_some_and(|n| n > 100), "about 200 requests in 2s at 100/s: {}", v["issued"]);
    assert_eq!(v["issued"], v["recorded"], "every issued request has an outcome");
    assert!(ran.stdout.contains("PASS"), "{}", ran.dump());
}

#[test]
fn run_with_a_failed_expectation_exits_1() {
    let scratch = Scratch::new("run-fail");
    // Every response is a 500, so `at_least: 1.0` cannot hold.
    let failing =
        SMALL.replace("        replicas: 2\n", "        replicas: 2\n        app: {error_rate_ppm: 1000000}\n");
    assert_ne!(failing, SMALL);
    let file = scratch.write("failing.yaml", failing);
    let out = scratch.dir.join("results");
    let ran = meshsim([OsStr::new("run"), file.as_os_str(), OsStr::new("--out"), out.as_os_str()]);
    ran.assert_no_panic();
    assert_eq!(ran.code, Some(1), "{}", ran.dump());
    assert!(ran.stdout.contains("FAIL"), "{}", ran.dump());
    assert!(
        ran.stdout.contains(&format!("repro: meshsim run {} --seed 1", file.display())),
        "a failure prints how to reproduce it\n{}",
        ran.dump()
    );
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("small-seed1.json")).expect("results written on failure too"))
            .expect("results are JSON");
    assert_eq!(v["passed"], false);
}

#[test]
fn run_seed_flag_overrides_the_scenario_seed() {
    let scratch = Scratch::new("run-seed");
    let file = scratch.write("small.yaml", SMALL.replace("duration: 2s", "seed: 5\nduration: 2s"));
    let out = scratch.dir.join("results");
    let mut json = Vec::new();
    for seed in [None, Some("77")] {
        let mut args = vec![OsStr::new("run"), file.as_os_str(), OsStr::new("--out"), out.as_os_str()];
        if let Some(s) = seed {
            args.extend([OsStr::new("--seed"), OsStr::new(s)]);
        }
        let ran = meshsim(&args);
        assert_eq!(ran.code, Some(0), "{}", ran.dump());
        let used = seed.unwrap_or("5");
        assert!(ran.stdout.contains(&format!("--seed {used}")), "{}", ran.dump());
        let path = out.join(format!("small-seed{used}.json"));
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).expect("results written"))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(v["seed"].as_u64(), used.parse().ok());
        json.push(v);
    }
    assert_ne!(json[0]["requests"], json[1]["requests"], "a different seed gives different requests");
}

#[test]
fn target_envoy_without_an_envoy_binary_is_refused_with_exit_2() {
    let scratch = Scratch::new("envoy-missing");
    let missing = scratch.dir.join("no-such-envoy");
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/basic.yaml");
    let ran = meshsim([
        OsStr::new("run"),
        scenario.as_os_str(),
        OsStr::new("--target"),
        OsStr::new("envoy"),
        OsStr::new("--envoy"),
        missing.as_os_str(),
        OsStr::new("--out"),
        scratch.dir.as_os_str(),
    ]);
    ran.assert_no_panic();
    assert_eq!(ran.code, Some(2), "{}", ran.dump());
    assert!(ran.stderr.contains("--envoy") && ran.stderr.contains("no such file"), "{}", ran.dump());
    // Refused before any run: no results were written.
    assert!(!scratch.dir.join("basic-seed1.json").exists());
}
