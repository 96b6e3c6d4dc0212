//! Components as processes of their own: `examples/by-hand.sh` starts istiod and the
//! app and sidecar of three pods by hand (seven `meshsim` processes on loopback), sends
//! one request through a sidecar, and stops them all. The script's run is bounded here
//! (and each component stops by itself after 60 s).

use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util::meshsim;

#[test]
fn the_by_hand_example_serves_a_request_through_separate_processes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Its own process group: on a timeout the whole group (the script and every
    // component it started) is killed.
    let mut child = Command::new("bash")
        .process_group(0)
        .arg(root.join("examples/by-hand.sh"))
        .env("MESHSIM", env!("CARGO_BIN_EXE_meshsim"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bash runs");
    // At most 60 s: 1,200 polls 50 ms apart.
    let mut polls = 0;
    while child.try_wait().expect("wait").is_none() {
        polls += 1;
        if polls > 1_200 {
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", child.id())]).status();
            let _ = child.wait();
            panic!("examples/by-hand.sh did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "exit {:?}\n{stdout}\n{stderr}", out.status);
    for pod in ["frontend-v1-0", "backend-v1-0", "backend-v1-1"] {
        assert!(stdout.contains(&format!("ready: sidecar of {pod}")), "{stdout}");
    }
    assert!(stdout.contains("HTTP/1.1 200 OK"), "{stdout}");
    assert!(stdout.contains("x-meshsim-pod: backend-v1-"), "served by a backend pod through its sidecar: {stdout}");
    assert!(stdout.contains("server: envoy"), "the response came through the sidecars: {stdout}");
}

#[test]
fn a_component_for_a_pod_the_scenario_lacks_is_invalid_input() {
    let ran = meshsim(["sidecar", "examples/by-hand.yaml", "--pod", "nope-v1-0", "--slice", "150", "--for", "1s"]);
    assert_eq!(ran.code, Some(2), "{}", ran.stderr);
    assert!(
        ran.stderr
            .contains("no pod \"nope-v1-0\" in the scenario (its pods: frontend-v1-0, backend-v1-0, backend-v1-1)"),
        "{}",
        ran.stderr
    );
    let ran = meshsim(["control", "examples/by-hand.yaml", "--slice", "99"]);
    assert_eq!(ran.code, Some(2), "a slice outside 100–249: {}", ran.stderr);
}
