//! Invalid input: one test per class of mistake. Each writes a small scenario that differs
//! from a valid base by one edit, and checks that `validate` and `run` exit 2 and print
//! `file:line:col: error [CODE] field: rule` with the position computed from the text.

use std::ffi::OsStr;

use crate::util::{At, Expect, Scratch, edit, lines, meshsim, pos, rejects};

/// A valid scenario without Istio resources.
const PLAIN: &str = "\
name: shop
description: a valid base that each test breaks in one place
duration: 10s
services:
  - name: frontend
    pods:
      - name: v1
  - name: backend
    port: 8080
    pods:
      - name: v1
        replicas: 2
workload:
  - name: browse
    from: frontend
    to: backend
    rate: 100
    timeout: 2s
faults:
  - at: 2s
    for: 1s
    app_errors: {pods: [backend-v1-0]}
expect:
  - success_rate: {workload: browse, at_least: 0.5}
";

/// A valid scenario with a DestinationRule and a VirtualService.
const MESH: &str = "\
name: canary
duration: 10s
services:
  - name: frontend
    pods:
      - name: v1
  - name: reviews
    pods:
      - name: v1
        labels: {version: v1}
      - name: v2
        labels: {version: v2}
  - name: ratings
    pods:
      - name: v1
istio:
  - apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {name: reviews}
    spec:
      host: reviews
      subsets:
        - name: v1
          labels: {version: v1}
        - name: v2
          labels: {version: v2}
      trafficPolicy:
        outlierDetection:
          maxEjectionPercent: 50
  - apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: reviews}
    spec:
      hosts: [reviews]
      http:
        - route:
            - destination: {host: reviews, subset: v1}
              weight: 90
            - destination: {host: reviews, subset: v2}
              weight: 10
          timeout: 2s
workload:
  - name: browse
    from: frontend
    to: reviews
    rate: 100
";

#[test]
fn the_bases_are_valid() {
    for (name, text) in [("plain", PLAIN), ("mesh", MESH)] {
        let scratch = Scratch::new(name);
        let file = scratch.write("scenario.yaml", text);
        let ran = meshsim([OsStr::new("validate"), file.as_os_str()]);
        assert_eq!(ran.code, Some(0), "base {name} must be valid\n{}", ran.dump());
        assert!(ran.stderr.is_empty(), "base {name} must have no findings\n{}", ran.dump());
    }
}

// ------------------------------------------------------------------ TCP services

#[test]
fn app_protocol_must_be_http_or_tcp() {
    let y = edit(PLAIN, "    port: 8080\n", "    port: 8080\n    app_protocol: udp\n");
    let (line, col) = pos(&y, "app_protocol: udp", "udp");
    rejects(
        "app-protocol-udp",
        &y,
        &Expect {
            at: At::Exact(line, col),
            code: "MSIM0002",
            field: Some("services[1].app_protocol"),
            rule: "is not one of http, tcp",
        },
    )
    .single();
}

#[test]
fn http_only_workload_fields_towards_a_tcp_service_are_errors() {
    let y = edit(PLAIN, "    port: 8080\n", "    port: 8080\n    app_protocol: tcp\n");
    let y = edit(&y, "    rate: 100\n", "    rate: 100\n    method: POST\n");
    let (line, col) = pos(&y, "method: POST", "POST");
    rejects(
        "tcp-method",
        &y,
        &Expect { at: At::Exact(line, col), code: "MSIM0002", field: Some("workload[0].method"), rule: "is HTTP-only" },
    )
    .single();
}

#[test]
fn bytes_on_a_workload_over_http_is_an_error() {
    let y = edit(PLAIN, "    rate: 100\n", "    rate: 100\n    bytes: 100\n");
    let (line, col) = pos(&y, "bytes: 100", "100");
    rejects(
        "http-bytes",
        &y,
        &Expect {
            at: At::Exact(line, col),
            code: "MSIM0002",
            field: Some("workload[0].bytes"),
            rule: "applies to a workload over a tcp service",
        },
    )
    .single();
}

#[test]
fn bytes_of_a_tcp_workload_are_bounded() {
    let y = edit(PLAIN, "    port: 8080\n", "    port: 8080\n    app_protocol: tcp\n");
    let y = edit(&y, "    rate: 100\n", "    rate: 100\n    bytes: 0\n");
    let (line, col) = pos(&y, "bytes: 0", "0");
    rejects(
        "tcp-bytes-0",
        &y,
        &Expect { at: At::Exact(line, col), code: "MSIM0002", field: Some("workload[0].bytes"), rule: "between 1 and" },
    )
    .single();
}

#[test]
fn a_tcp_service_cannot_have_a_rate_limit_or_http_app_fields() {
    let y = edit(
        PLAIN,
        "    port: 8080\n",
        "    port: 8080\n    app_protocol: tcp\n    rate_limit: {max_tokens: 1, fill_interval: 1s}\n",
    );
    let (line, col) = pos(&y, "rate_limit:", "{");
    rejects(
        "tcp-rate-limit",
        &y,
        &Expect {
            at: At::Exact(line, col),
            code: "MSIM0002",
            field: Some("services[1].rate_limit"),
            rule: "a tcp service cannot have one",
        },
    )
    .single();
    let y = edit(PLAIN, "    port: 8080\n", "    port: 8080\n    app_protocol: tcp\n");
    let y = edit(&y, "        replicas: 2\n", "        replicas: 2\n        app: {error_status: 503}\n");
    let (line, col) = pos(&y, "error_status: 503", "503");
    rejects(
        "tcp-error-status",
        &y,
        &Expect {
            at: At::Exact(line, col),
            code: "MSIM0002",
            field: Some("services[1].pods[0].app.error_status"),
            rule: "applies to HTTP responses",
        },
    )
    .single();
}

// ------------------------------------------------------------------ malformed YAML

#[test]
fn malformed_yaml_unclosed_quote() {
    let y = edit(PLAIN, "name: shop", "name: \"shop");
    let (line, col) = pos(&y, "name: \"shop", "\"");
    rejects(
        "unclosed-quote",
        &y,
        &Expect { at: At::Exact(line, col), code: "IST0106", field: None, rule: "unclosed quote" },
    )
    .single();
}

#[test]
fn malformed_yaml_bad_indentation() {
    let y = edit(PLAIN, "duration: 10s", "  duration: 10s");
    let (line, _) = pos(&y, "  duration: 10s", "duration");
    rejects(
        "bad-indentation",
        &y,
        &Expect { at: At::Line(line), code: "IST0106", field: None, rule: "mapping values are not allowed" },
    )
    .single();
}

#[test]
fn malformed_yaml_tab_indentation() {
    let y = edit(PLAIN, "      - name: v1\n  - name: backend", "\t- name: v1\n  - name: backend");
    let (line, _) = pos(&y, "\t- name: v1", "-");
    rejects("tab", &y, &Expect { at: At::Line(line), code: "IST0106", field: None, rule: "tabs" }).single();
}

// ------------------------------------------------------------------ unknown fields

#[test]
fn unknown_field_at_top_level() {
    let y = edit(PLAIN, "duration: 10s\n", "duration: 10s\nretries: 3\n");
    let (line, col) = pos(&y, "retries: 3", "retries");
    rejects(
        "unknown-top",
        &y,
        &Expect { at: At::Exact(line, col), code: "IST0106", field: Some("`retries`"), rule: "unknown field" },
    )
    .single();
}

#[test]
fn unknown_field_in_a_service() {
    let y = edit(PLAIN, "    port: 8080\n", "    port: 8080\n    replicas: 3\n");
    let (line, col) = pos(&y, "    replicas: 3", "replicas");
    rejects(
        "unknown-service",
        &y,
        &Expect { at: At::Exact(line, col), code: "IST0106", field: Some("`replicas`"), rule: "unknown field" },
    )
    .single();
}

#[test]
fn unknown_field_in_an_istio_spec() {
    let y = edit(MESH, "      hosts: [reviews]\n", "      hosts: [reviews]\n      retry: {attempts: 3}\n");
    let (line, col) = pos(&y, "retry: {attempts: 3}", "retry");
    rejects(
        "unknown-istio",
        &y,
        &Expect { at: At::Exact(line, col), code: "IST0106", field: Some("`retry`"), rule: "unknown field" },
    )
    .single();
}

#[test]
fn unknown_field_in_an_istio_file_has_its_line() {
    let scratch = Scratch::new("istio-file");
    let resources = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metdata: {name: reviews}
spec:
  hosts: [reviews]
";
    let istio = scratch.write("reviews.yaml", resources);
    let (line, col) = pos(resources, "metdata", "metdata");
    let scenario = scratch.write("scenario.yaml", format!("{PLAIN}istio_files: [reviews.yaml]\n"));
    let ran = meshsim([OsStr::new("validate"), scenario.as_os_str()]);
    ran.assert_no_panic();
    assert_eq!(ran.code, Some(2), "an Istio file that cannot be parsed: exit 2\n{}", ran.dump());
    let want = format!("Error [IST0106] (Scenario {}:{line}:{col})", istio.display());
    assert!(ran.stderr.contains(&want) && ran.stderr.contains("`metdata`"), "expected {want:?}\n{}", ran.dump());
}

// ------------------------------------------------------------------ wrong types

#[test]
fn wrong_type_rate_is_a_word() {
    let y = edit(PLAIN, "rate: 100", "rate: fast");
    let (line, col) = pos(&y, "rate: fast", "fast");
    rejects(
        "rate-fast",
        &y,
        &Expect { at: At::Exact(line, col), code: "IST0106", field: Some("rate"), rule: "invalid" },
    )
    .single();
}

#[test]
fn wrong_type_negative_replicas() {
    let y = edit(PLAIN, "replicas: 2", "replicas: -1");
    let (line, col) = pos(&y, "replicas: -1", "-1");
    rejects(
        "replicas-negative",
        &y,
        &Expect { at: At::Exact(line, col), code: "IST0106", field: Some("replicas"), rule: "invalid" },
    )
    .single();
}

#[test]
fn wrong_type_weight_is_a_word() {
    let y = edit(MESH, "weight: 10", "weight: ten");
    let (line, col) = pos(&y, "weight: ten", "ten");
    rejects(
        "weight-word",
        &y,
        &Expect { at: At::Exact(line, col), code: "IST0106", field: Some("weight"), rule: "invalid" },
    )
    .single();
}

#[test]
fn schema_errors_state_the_position_once() {
    let y = edit(PLAIN, "duration: 10s\n", "duration: 10s\nretries: 3\n");
    let r = rejects("position-once", &y, &Expect { at: At::Anywhere, code: "IST0106", field: None, rule: "unknown" });
    for e in &r.errors {
        assert!(!e.rest.contains(" at line "), "position repeated in the message: {:?}\n{}", e.rest, r.ran.dump());
    }
}

// ------------------------------------------------------------------ references

#[test]
fn workload_from_an_unknown_service() {
    let y = edit(PLAIN, "from: frontend", "from: fronted");
    let (line, col) = pos(&y, "from: fronted", "fronted");
    rejects(
        "from-unknown",
        &y,
        &Expect {
            at: At::Exact(line, col),
            code: "IST0101",
            field: Some("workload[0].from"),
            rule: "\"fronted\" is neither a service nor a pod",
        },
    )
    .single();
}

#[test]
fn workload_to_an_unknown_service() {
    let y = edit(PLAIN, "to: backend", "to: backnd");
    let (line, col) = pos(&y, "to: backnd", "backnd");
    rejects(
        "to-unknown",
        &y,
        &Expect {
            at: At::Exact(line, col),
            code: "IST0101",
            field: Some("workload[0].to"),
            rule: "\"backnd\" is not a service",
        },
    )
    .single();
}

#[test]
fn fault_on_an_unknown_pod() {
    let y = edit(PLAIN, "pods: [backend-v1-0]", "pods: [backend-v2-0]");
    let (line, col) = pos(&y, "pods: [backend-v2-0]", "backend-v2-0");
    rejects(
        "fault-pod",
        &y,
        &Expect {
            at: At::Exact(line, col),
            code: "IST0101",
            field: Some("faults[0].app_errors.pods"),
            rule: "pod \"backend-v2-0\" is not in the scenario",
        },
    )
    .single();
}

#[test]
fn virtual_service_unknown_subset() {
    let y = edit(MESH, "{host: reviews, subset: v2}", "{host: reviews, subset: v3}");
    let (line, col) = pos(&y, "subset: v3", "v3");
    rejects(
        "unknown-subset",
        &y,
        &Expect {
            at: At::Exact(line, col),
            code: "IST0101",
            field: Some("spec.http[0].route[1].destination.subset"),
            rule: "Referenced host+subset in destinationrule not found: \"reviews+v3\"",
        },
    )
    .single();
}

#[test]
fn virtual_service_unknown_host() {
    let y = edit(MESH, "{host: reviews, subset: v2}", "{host: details}");
    let (line, col) = pos(&y, "{host: details}", "details");
    rejects(
        "unknown-host",
        &y,
        &Expect {
            at: At::Exact(line, col),
            code: "IST0101",
            field: Some("spec.http[0].route[1].destination.host"),
            rule: "Referenced host not found: \"details\"",
        },
    )
    .single();
}

// ------------------------------------------------------------------ weights

#[test]
fn negative_weight() {
    let y = edit(MESH, "weight: 10", "weight: -1");
    let (line, col) = pos(&y, "weight: -1", "-1");
    rejects(
        "weight-negative",
        &y,
        &Expect {
            at: At::Exact(line, col),
            code: "IST0106",
            field: Some("spec.http[0].route[1].weight"),
            rule: "weight -1 < 0",
        },
    )
    .single();
}

#[test]
fn zero_total_weight_over_two_destinations() {
    let y = edit(&edit(MESH, "weight: 90", "weight: 0"), "weight: 10", "weight: 0");
    // Reported at the first destination's weight, naming the route.
    let (line, col) = pos(&y, "weight: 0", "0");
    rejects(
        "weight-zero",
        &y,
        &Expect {
            at: At::Exact(line, col),
            code: "IST0106",
            field: Some("spec.http[0].route"),
            rule: "total destination weight = 0",
        },
    )
    .single();
}

// ------------------------------------------------------------------ durations

#[test]
fn duration_with_a_word_unit() {
    let y = edit(PLAIN, "duration: 10s", "duration: 10 seconds");
    let (line, col) = pos(&y, "duration: 10 seconds", "10 seconds");
    rejects(
        "duration-words",
        &y,
        &Expect { at: At::Exact(line, col), code: "IST0106", field: Some("duration"), rule: "unknown unit" },
    )
    .single();
}

#[test]
fn workload_timeout_without_a_unit() {
    let y = edit(PLAIN, "timeout: 2s", "timeout: 5");
    let (line, col) = pos(&y, "timeout: 5", "5");
    rejects(
        "timeout-unitless",
        &y,
        &Expect { at: At::Exact(line, col), code: "IST0106", field: Some("timeout"), rule: "has no unit" },
    )
    .single();
}

#[test]
fn virtual_service_timeout_without_a_unit() {
    let y = edit(MESH, "timeout: 2s", "timeout: 5");
    let (line, col) = pos(&y, "timeout: 5", "5");
    rejects(
        "vs-timeout-unitless",
        &y,
        &Expect { at: At::Exact(line, col), code: "IST0106", field: Some("timeout"), rule: "has no unit" },
    )
    .single();
}

#[test]
fn zero_duration() {
    let y = edit(PLAIN, "duration: 10s", "duration: 0s");
    let (line, col) = pos(&y, "duration: 0s", "0s");
    rejects(
        "duration-zero",
        &y,
        &Expect {
            at: At::Exact(line, col),
            code: "MSIM0002",
            field: Some("duration"),
            rule: "duration must be greater than 0",
        },
    );
}

#[test]
fn zero_duration_is_one_error() {
    let y = edit(PLAIN, "duration: 10s", "duration: 0s");
    let (line, col) = pos(&y, "duration: 0s", "0s");
    rejects(
        "duration-zero-once",
        &y,
        &Expect { at: At::Exact(line, col), code: "MSIM0002", field: Some("duration"), rule: "greater than 0" },
    )
    .single();
}

#[test]
fn virtual_service_zero_timeout() {
    let y = edit(MESH, "timeout: 2s", "timeout: 0s");
    let (line, col) = pos(&y, "timeout: 0s", "0s");
    rejects(
        "vs-timeout-zero",
        &y,
        &Expect {
            at: At::Exact(line, col),
            code: "IST0106",
            field: Some("spec.http[0].timeout"),
            rule: "duration must be greater than 1ms",
        },
    )
    .single();
}

// ------------------------------------------------------------------ rates and ranges

#[test]
fn zero_rate() {
    let y = edit(PLAIN, "rate: 100", "rate: 0");
    let (line, col) = pos(&y, "rate: 0", "0");
    rejects(
        "rate-zero",
        &y,
        &Expect {
            at: At::Exact(line, col),
            code: "MSIM0002",
            field: Some("workload[0].rate"),
            rule: "rate must be greater than 0",
        },
    )
    .single();
}

#[test]
fn negative_rate() {
    let y = edit(PLAIN, "rate: 100", "rate: -5");
    let (line, col) = pos(&y, "rate: -5", "-5");
    rejects(
        "rate-negative",
        &y,
        &Expect {
            at: At::Exact(line, col),
            code: "MSIM0002",
            field: Some("workload[0].rate"),
            rule: "rate must be greater than 0",
        },
    )
    .single();
}

#[test]
fn max_ejection_percent_over_100() {
    let y = edit(MESH, "maxEjectionPercent: 50", "maxEjectionPercent: 150");
    let (line, col) = pos(&y, "maxEjectionPercent: 150", "150");
    rejects(
        "max-ejection",
        &y,
        &Expect {
            at: At::Exact(line, col),
            code: "IST0106",
            field: Some("spec.trafficPolicy.outlierDetection.maxEjectionPercent"),
            rule: "max ejection percent must be in range [0..100]",
        },
    )
    .single();
}

// ------------------------------------------------------------------ structure

#[test]
fn unknown_istio_kind() {
    let y = edit(MESH, "kind: VirtualService", "kind: Gateway");
    let (line, col) = pos(&y, "kind: Gateway", "Gateway");
    rejects(
        "kind",
        &y,
        &Expect {
            at: At::Exact(line, col),
            code: "IST0106",
            field: Some("kind"),
            rule: "\"Gateway\" is not supported",
        },
    )
    .single();
}

#[test]
fn missing_required_field() {
    let y = edit(PLAIN, "duration: 10s\n", "");
    rejects(
        "missing-duration",
        &y,
        &Expect { at: At::Anywhere, code: "IST0106", field: Some("`duration`"), rule: "missing field" },
    )
    .single();
}

#[test]
fn missing_required_field_points_at_its_mapping() {
    let y = edit(PLAIN, "duration: 10s\n", "");
    let (line, col) = pos(&y, "name: shop", "name");
    rejects(
        "missing-duration-pos",
        &y,
        &Expect { at: At::Exact(line, col), code: "IST0106", field: Some("`duration`"), rule: "missing field" },
    )
    .single();
}

#[test]
fn fault_with_two_kinds() {
    let y = edit(
        PLAIN,
        "    app_errors: {pods: [backend-v1-0]}\n",
        "    app_errors: {pods: [backend-v1-0]}\n    crash: {pods: [backend-v1-1]}\n",
    );
    rejects(
        "fault-two-kinds",
        &y,
        &Expect {
            at: At::Lines(lines(&y, "- at: 2s", "crash:")),
            code: "MSIM0002",
            field: Some("faults[0]"),
            rule: "a fault has exactly one of app_errors, partition, link_latency, crash",
        },
    )
    .single();
}

// ------------------------------------------------------------------ no input panics

/// Scenario texts that must each be rejected (exit 2) or accepted, never crash `validate`.
fn odd_inputs() -> Vec<(&'static str, Vec<u8>)> {
    let deep = format!("name: x\nduration: 1s\nservices: {}{}\n", "[".repeat(10_000), "]".repeat(10_000));
    let aliases = "\
a: &a [x, x, x, x, x, x, x, x]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b]
d: [*c, *c, *c, *c, *c, *c, *c, *c]
";
    let plain = |from: &str, to: &str| edit(PLAIN, from, to).into_bytes();
    let mesh = |from: &str, to: &str| edit(MESH, from, to).into_bytes();
    vec![
        ("empty", Vec::new()),
        ("comment only", b"# nothing\n".to_vec()),
        ("null", b"~\n".to_vec()),
        ("scalar", b"just words\n".to_vec()),
        ("sequence", b"- a\n- b\n".to_vec()),
        ("not utf-8", vec![0xff, 0xfe, 0x00, b'x', 0x80]),
        ("nul bytes", b"name: \x00\x00\nduration: 1s\n".to_vec()),
        ("deep nesting", deep.into_bytes()),
        ("alias expansion", aliases.as_bytes().to_vec()),
        ("duplicate key", plain("duration: 10s\n", "duration: 10s\nduration: 20s\n")),
        ("huge replicas", plain("replicas: 2", "replicas: 4294967295")),
        ("replicas overflow", plain("replicas: 2", "replicas: 99999999999999999999999")),
        ("nan rate", plain("rate: 100", "rate: .nan")),
        ("infinite rate", plain("rate: 100", "rate: .inf")),
        ("huge rate", plain("rate: 100", "rate: 1e300")),
        ("huge duration", plain("duration: 10s", "duration: 99999999999999999999h")),
        ("sub-nanosecond duration", plain("duration: 10s", "duration: 0.0001ns")),
        ("negative duration", plain("duration: 10s", "duration: -10s")),
        ("port 0", plain("port: 8080", "port: 0")),
        ("port too big", plain("port: 8080", "port: 70000")),
        ("nodes 0", plain("duration: 10s\n", "duration: 10s\nnodes: 0\n")),
        ("nodes 1000", plain("duration: 10s\n", "duration: 10s\nnodes: 1000\n")),
        ("fault after end", plain("at: 2s", "at: 1h")),
        ("fault without kind", plain("    app_errors: {pods: [backend-v1-0]}\n", "")),
        ("fault for 0s", plain("for: 1s", "for: 0s")),
        (
            "unknown node",
            plain("app_errors: {pods: [backend-v1-0]}", "link_latency: {from: [node-9], to: [node-0], latency: 1s}"),
        ),
        ("status 99", plain("app_errors: {pods: [backend-v1-0]}", "app_errors: {pods: [backend-v1-0], status: 99}")),
        ("reversed window", plain("at_least: 0.5}", "at_least: 0.5, window: [5s, 1s]}")),
        ("one-element window", plain("at_least: 0.5}", "at_least: 0.5, window: [5s]}")),
        ("empty expectation", plain("  - success_rate: {workload: browse, at_least: 0.5}", "  - {}")),
        ("unknown workload", plain("{workload: browse,", "{workload: nobody,")),
        ("stop before start", plain("timeout: 2s", "start: 5s\n    stop: 1s")),
        ("bad arrivals", plain("timeout: 2s", "arrivals: bursty")),
        ("upper-case service", plain("name: backend", "name: Backend")),
        ("duplicate service", plain("name: backend", "name: frontend")),
        ("no services", b"name: x\nduration: 1s\nservices: []\n".to_vec()),
        ("empty pod list", plain("      - name: v1\n        replicas: 2\n", "      []\n")),
        (
            "lognormal zero",
            plain("replicas: 2\n", "replicas: 2\n        app: {latency: {lognormal: {median: 0s, p99: 0s}}}\n"),
        ),
        (
            "two latencies",
            plain("replicas: 2\n", "replicas: 2\n        app: {latency: {constant: 1ms, exponential: 2ms}}\n"),
        ),
        ("istio file missing", plain("duration: 10s\n", "duration: 10s\nistio_files: [/nonexistent/meshsim.yaml]\n")),
        ("istio file is a directory", plain("duration: 10s\n", "duration: 10s\nistio_files: [.]\n")),
        ("huge weight", mesh("weight: 90", "weight: 99999999999")),
        ("weight overflow", mesh("weight: 90", "weight: 99999999999999999999999")),
        ("only zero weight", mesh("weight: 10", "weight: 0")),
        ("no http routes", mesh("      http:\n", "      http: []\n      tcp: []\n")),
        ("empty route", mesh("        - route:\n", "        - route: []\n          name: r\n        - route:\n")),
        (
            "no kind",
            mesh("    kind: VirtualService\n    metadata: {name: reviews}\n", "    metadata: {name: reviews}\n"),
        ),
        (
            "spec before kind",
            mesh(
                "    kind: DestinationRule\n    metadata: {name: reviews}\n    spec:\n      host: reviews\n",
                "    metadata: {name: reviews}\n    spec: {host: reviews}\n    kind: DestinationRule\n    x:\n",
            ),
        ),
        (
            "no metadata name",
            mesh(
                "    kind: VirtualService\n    metadata: {name: reviews}\n",
                "    kind: VirtualService\n    metadata: {}\n",
            ),
        ),
        (
            "bad apiVersion",
            mesh(
                "  - apiVersion: networking.istio.io/v1\n    kind: VirtualService",
                "  - apiVersion: v1\n    kind: VirtualService",
            ),
        ),
        (
            "duplicate subset",
            mesh(
                "        - name: v2\n          labels: {version: v2}",
                "        - name: v1\n          labels: {version: v2}",
            ),
        ),
        ("negative percent", mesh("maxEjectionPercent: 50", "maxEjectionPercent: -1\n          minHealthPercent: 200")),
        ("bad lb", mesh("outlierDetection:", "loadBalancer: {simple: FASTEST}\n        outlierDetection:")),
        ("empty connection pool", mesh("outlierDetection:", "connectionPool: {}\n        outlierDetection:")),
        ("zero intervals", mesh("maxEjectionPercent: 50", "interval: 0s\n          baseEjectionTime: 0s")),
        ("DR for unknown host", mesh("      host: reviews\n", "      host: nowhere\n")),
        (
            "subset selects no pod",
            mesh("labels: {version: v2}\n      trafficPolicy", "labels: {version: v9}\n      trafficPolicy"),
        ),
    ]
}

#[test]
fn no_input_makes_validate_panic() {
    let scratch = Scratch::new("odd");
    let mut files = Vec::new();
    for (i, (name, text)) in odd_inputs().into_iter().enumerate() {
        files.push((name, scratch.write(&format!("odd-{i}.yaml"), text)));
    }
    // One at a time, so a crash is pinned to its input.
    for (name, file) in &files {
        let ran = meshsim([OsStr::new("validate"), file.as_os_str()]);
        assert!(!ran.stderr.contains("panicked"), "input {name:?} made validate panic\n{}", ran.dump());
        assert!(matches!(ran.code, Some(0 | 2 | 79)), "input {name:?}: validate must exit 0, 2 or 79\n{}", ran.dump());
        if ran.code != Some(0) {
            assert!(
                ran.stderr.contains(&format!("{}: invalid scenario (", file.display())),
                "input {name:?}: a rejection must end with the summary line\n{}",
                ran.dump()
            );
        }
    }
}

#[test]
fn command_line_mistakes_exit_2() {
    let scratch = Scratch::new("args");
    let missing = scratch.dir.join("missing.yaml");
    for args in [
        vec![],
        vec![OsStr::new("fly")],
        vec![OsStr::new("validate")],
        vec![OsStr::new("run")],
        vec![OsStr::new("run"), missing.as_os_str(), OsStr::new("--seed"), OsStr::new("many")],
        vec![OsStr::new("run"), missing.as_os_str(), OsStr::new("--seed"), OsStr::new("-1")],
    ] {
        let ran = meshsim(&args);
        ran.assert_no_panic();
        assert_eq!(ran.code, Some(2), "meshsim {args:?} must exit 2\n{}", ran.dump());
    }
}

#[test]
fn a_missing_file_is_named_and_exits_2() {
    let scratch = Scratch::new("missing");
    let missing = scratch.dir.join("no-such-scenario.yaml");
    let out = scratch.dir.join("out");
    for args in [vec!["validate"], vec!["run", "--out", out.to_str().expect("utf-8 temp dir")]] {
        let cmd = args[0];
        let ran = meshsim(args.iter().map(OsStr::new).chain([missing.as_os_str()]));
        ran.assert_no_panic();
        assert_eq!(ran.code, Some(2), "{cmd} of a missing file\n{}", ran.dump());
        let want = match cmd {
            "validate" => format!("Error [MSIM0002] (Scenario {})", missing.display()),
            _ => format!("{}: error [", missing.display()),
        };
        assert!(ran.stderr.contains(&want), "{cmd}: expected {want:?}\n{}", ran.dump());
        assert!(ran.stderr.contains("cannot read"), "{cmd}: the rule is not stated\n{}", ran.dump());
    }
}

/// Two small services and a workload; fault schedules are appended.
const TWO: &str = "\
name: faults
duration: 2s
services:
  - name: a
    pods:
      - name: v1
  - name: b
    pods:
      - name: v1
        replicas: 2
workload:
  - {name: w, from: a, to: b, rate: 100, timeout: 1s}
faults:
";

fn run_exits_cleanly(test: &str, faults: &str) {
    let scratch = Scratch::new(test);
    let file = scratch.write("scenario.yaml", format!("{TWO}{faults}"));
    let out = scratch.dir.join("out");
    let ran = meshsim([OsStr::new("run"), file.as_os_str(), OsStr::new("--out"), out.as_os_str()]);
    ran.assert_no_panic();
    assert_eq!(ran.code, Some(0), "faults:\n{faults}\n{}", ran.dump());
}

#[test]
fn unusual_fault_schedules_run_without_panicking() {
    for (name, faults) in [
        ("crash at the last ms", "  - {at: 1999ms, crash: {pods: [b-v1-0]}}\n"),
        ("crash the source", "  - {at: 500ms, for: 100ms, crash: {pods: [a-v1-0]}}\n"),
        ("crash everything", "  - {at: 100ms, crash: {pods: [a-v1-0, b-v1-0, b-v1-1]}}\n"),
        (
            "crash the same pod twice, apart",
            "  - {at: 500ms, for: 100ms, crash: {pods: [b-v1-0]}}\n\
             \x20 - {at: 800ms, for: 100ms, crash: {pods: [b-v1-0]}}\n",
        ),
        ("partition both ways", "  - {at: 100ms, partition: {from: [a, b-v1-0], to: [b, a-v1-0]}}\n"),
        ("slow link", "  - {at: 1s, for: 999ms, link_latency: {from: [node-0], to: [node-1], latency: 1s}}\n"),
        (
            "errors and a crash on one pod",
            "  - {at: 100ms, app_errors: {pods: [b-v1-1]}}\n  - {at: 200ms, for: 1s, crash: {pods: [b-v1-1]}}\n",
        ),
    ] {
        run_exits_cleanly(&name.replace(' ', "-"), faults);
    }
}

#[test]
fn overlapping_crashes_of_one_pod_do_not_panic() {
    for (name, faults) in [
        (
            "overlapping",
            "  - {at: 500ms, for: 500ms, crash: {pods: [b-v1-0]}}\n\
             \x20 - {at: 600ms, for: 100ms, crash: {pods: [b-v1-0]}}\n",
        ),
        (
            "back-to-back",
            "  - {at: 500ms, for: 100ms, crash: {pods: [b-v1-0]}}\n\
             \x20 - {at: 600ms, for: 100ms, crash: {pods: [b-v1-0]}}\n",
        ),
        ("listed twice", "  - {at: 500ms, for: 100ms, crash: {pods: [b-v1-0, b-v1-0]}}\n"),
    ] {
        // Either reject the schedule (exit 2, with its line) or simulate it; never panic.
        let scratch = Scratch::new(name);
        let file = scratch.write("scenario.yaml", format!("{TWO}{faults}"));
        let out = scratch.dir.join("out");
        let ran = meshsim([OsStr::new("run"), file.as_os_str(), OsStr::new("--out"), out.as_os_str()]);
        assert!(!ran.stderr.contains("panicked"), "{name}: run panicked\n{}", ran.dump());
        assert!(matches!(ran.code, Some(0 | 2)), "{name}\n{}", ran.dump());
    }
}

#[test]
fn overlapping_crashes_keep_the_pod_down_until_the_last_ends() {
    // Down for the union of the windows (500ms-1s), then serving again.
    let expect = "\
expect:
  - count: {workload: w, pod: b-v1-0, status: 200, window: [510ms, 990ms], at_most: 0}
  - count: {workload: w, pod: b-v1-0, status: 200, window: [1100ms, 2s], at_least: 10}
";
    for (name, faults) in [
        (
            "nested",
            "  - {at: 500ms, for: 500ms, crash: {pods: [b-v1-0]}}\n\
             \x20 - {at: 600ms, for: 100ms, crash: {pods: [b-v1-0]}}\n",
        ),
        (
            "chained",
            "  - {at: 500ms, for: 300ms, crash: {pods: [b-v1-0]}}\n\
             \x20 - {at: 800ms, for: 200ms, crash: {pods: [b-v1-0]}}\n",
        ),
        (
            "staggered",
            "  - {at: 500ms, for: 300ms, crash: {pods: [b-v1-0]}}\n\
             \x20 - {at: 700ms, for: 300ms, crash: {pods: [b-v1-0]}}\n",
        ),
    ] {
        run_exits_cleanly(&format!("crash-union-{name}"), &format!("{faults}{expect}"));
    }
}

#[test]
fn a_pod_listed_twice_in_one_fault() {
    let y = edit(PLAIN, "app_errors: {pods: [backend-v1-0]}", "crash: {pods: [backend-v1-0, backend-v1-0]}");
    let line = pos(&y, "crash: {pods", "crash").0;
    rejects(
        "crash-pod-twice",
        &y,
        &Expect {
            at: At::Line(line),
            code: "MSIM0002",
            field: Some("faults[0].crash.pods"),
            rule: "pod \"backend-v1-0\" is listed twice",
        },
    )
    .single();
}

#[test]
fn duplicate_key_is_named_for_users() {
    let y = edit(PLAIN, "duration: 10s\n", "duration: 10s\nduration: 20s\n");
    let (line, col) = pos(&y, "duration: 20s", "duration");
    let r = rejects(
        "duplicate-key",
        &y,
        &Expect { at: At::Exact(line, col), code: "IST0106", field: None, rule: "duplicate key `duration`" },
    );
    r.single();
    assert!(!r.ran.stderr.contains("DuplicateKeyPolicy"), "library advice in a user message\n{}", r.ran.dump());
}

// ------------------------------------------------------------------ request shape

/// A workload, app or expectation field that is a header map or header condition.
fn rejects_field(test: &str, y: &str, line_has: &str, field: &str, rule: &str) {
    let line = pos(y, line_has, line_has).0;
    rejects(test, y, &Expect { at: At::Line(line), code: "MSIM0002", field: Some(field), rule }).single();
}

#[test]
fn workload_header_with_an_invalid_name() {
    let y = edit(PLAIN, "    timeout: 2s\n", "    timeout: 2s\n    headers: {\"end user\": jason}\n");
    rejects_field("header-name", &y, "headers:", "workload[0].headers", "\"end user\" is not a valid header name");
}

#[test]
fn workload_header_with_an_invalid_value() {
    let y = edit(PLAIN, "    timeout: 2s\n", "    timeout: 2s\n    headers: {x-note: \"line\\nbreak\"}\n");
    rejects_field("header-value", &y, "headers:", "workload[0].headers", "is not a valid header value");
}

#[test]
fn workload_header_meshsim_sets_itself() {
    let y = edit(PLAIN, "    timeout: 2s\n", "    timeout: 2s\n    headers: {Host: elsewhere}\n");
    rejects_field("header-host", &y, "headers:", "workload[0].headers", "header \"host\" is set by meshsim itself");
}

#[test]
fn workload_method_that_is_not_a_token() {
    let y = edit(PLAIN, "    timeout: 2s\n", "    timeout: 2s\n    method: \"GET /\"\n");
    rejects_field("method", &y, "method:", "workload[0].method", "\"GET /\" is not a valid HTTP method");
}

#[test]
fn workload_path_without_a_slash() {
    let y = edit(PLAIN, "    timeout: 2s\n", "    timeout: 2s\n    path: items\n");
    rejects(
        "path",
        &y,
        &Expect { at: At::Anywhere, code: "MSIM0002", field: Some("workload[0].path"), rule: "is not a request path" },
    )
    .single();
}

#[test]
fn app_response_header_with_an_invalid_name() {
    let y =
        edit(PLAIN, "        replicas: 2\n", "        replicas: 2\n        app: {response_headers: {\"a b\": c}}\n");
    rejects_field(
        "app-header",
        &y,
        "response_headers",
        "services[1].pods[0].app.response_headers",
        "\"a b\" is not a valid header name",
    );
}

#[test]
fn count_header_condition_with_an_invalid_name() {
    let y = edit(
        PLAIN,
        "  - success_rate: {workload: browse, at_least: 0.5}\n",
        "  - count: {workload: browse, upstream_header: \"end user: jason\", at_least: 1}\n",
    );
    rejects_field(
        "count-header",
        &y,
        "upstream_header",
        "expect[0].count.upstream_header",
        "\"end user\" is not a valid header name",
    );
}

// ------------------------------------------------------------------ EnvoyFilter

/// PLAIN with the local rate limit EnvoyFilter (direct typed_config form) on `backend`.
fn with_rate_limit_filter(bucket: &str) -> String {
    let filter = format!(
        "istio:
  - apiVersion: networking.istio.io/v1alpha3
    kind: EnvoyFilter
    metadata: {{name: rl}}
    spec:
      workloadSelector: {{labels: {{app: backend}}}}
      configPatches:
        - applyTo: HTTP_FILTER
          match: {{context: SIDECAR_INBOUND}}
          patch:
            operation: INSERT_BEFORE
            value:
              name: envoy.filters.http.local_ratelimit
              typed_config:
                \"@type\": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
                stat_prefix: rl
                token_bucket: {bucket}
workload:
"
    );
    edit(PLAIN, "workload:\n", &filter)
}

#[test]
fn envoy_filter_rate_limit_fill_interval_below_50ms() {
    let y = with_rate_limit_filter("{max_tokens: 4, fill_interval: 10ms}");
    let (line, _) = pos(&y, "name: envoy.filters.http.local_ratelimit", "name");
    rejects(
        "rl-fill",
        &y,
        &Expect {
            at: At::Line(line),
            code: "IST0106",
            field: Some("spec.configPatches[0].patch.value.typed_config"),
            rule: "50ms",
        },
    )
    .single();
}

#[test]
fn envoy_filter_rate_limit_unknown_envoy_field() {
    let y = with_rate_limit_filter("{max_tokens: 4, fill_interval: 1s, max_burst: 9}");
    let (line, _) = pos(&y, "name: envoy.filters.http.local_ratelimit", "name");
    rejects(
        "rl-unknown",
        &y,
        &Expect {
            at: At::Line(line),
            code: "IST0106",
            field: Some("spec.configPatches[0].patch.value.typed_config"),
            rule: "unknown field `max_burst`",
        },
    )
    .single();
}

#[test]
fn envoy_filter_and_service_rate_limit_on_one_pod() {
    let y = with_rate_limit_filter("{max_tokens: 4, fill_interval: 1s}");
    let y = edit(&y, "    port: 8080\n", "    port: 8080\n    rate_limit: {max_tokens: 1, fill_interval: 1s}\n");
    let (line, col) = pos(&y, "kind: EnvoyFilter", "EnvoyFilter");
    rejects(
        "rl-twice",
        &y,
        &Expect {
            at: At::Exact(line, col),
            code: "MSIM0002",
            field: Some("spec.configPatches"),
            rule: "meshsim runs one local rate limit per proxy",
        },
    )
    .single();
}

#[test]
fn suppress_rule_not_in_istioctl_form() {
    let y = edit(MESH, "istio:\n", "suppress: [\"IST0101 VirtualService reviews\"]\nistio:\n");
    let (line, col) = pos(&y, "suppress:", "\"IST0101");
    rejects(
        "suppress",
        &y,
        &Expect {
            at: At::Exact(line, col),
            code: "MSIM0002",
            field: Some("suppress[0]"),
            rule: "write CODE=Kind name.namespace",
        },
    )
    .single();
}

#[test]
fn suppressed_finding_no_longer_blocks_the_run_but_others_do() {
    // The unknown-subset error of `virtual_service_unknown_subset`, suppressed by code,
    // kind and name.namespace: validation passes. Suppressing another code does not help.
    let y = edit(MESH, "{host: reviews, subset: v2}", "{host: reviews, subset: v3}");
    let ok = edit(&y, "istio:\n", "suppress: [\"IST0101=VirtualService reviews.*\"]\nistio:\n");
    let dir = Scratch::new("suppressed");
    let file = dir.write("s.yaml", &ok);
    let out = meshsim([OsStr::new("validate"), file.as_os_str()]);
    assert_eq!(out.code, Some(0), "{}", out.dump());
    let other = edit(&y, "istio:\n", "suppress: [\"IST0130=VirtualService reviews.*\"]\nistio:\n");
    rejects(
        "suppressed-other",
        &other,
        &Expect {
            at: At::Anywhere,
            code: "IST0101",
            field: None,
            rule: "Referenced host+subset in destinationrule not found: \"reviews+v3\"",
        },
    )
    .single();
}

// ------------------------------------------------------------------ the CA

#[test]
fn ca_root_step_that_does_not_exist() {
    let y = edit(PLAIN, "    app_errors: {pods: [backend-v1-0]}\n", "    ca_root: rotate\n");
    let y = edit(&y, "    for: 1s\n", "");
    let (line, col) = pos(&y, "ca_root: rotate", "rotate");
    rejects(
        "ca-root-step",
        &y,
        &Expect {
            at: At::Exact(line, col),
            code: "MSIM0002",
            field: Some("faults[0].ca_root"),
            rule: "\"rotate\" is not a root rotation step: add_root, sign_with_new_root, remove_old_roots",
        },
    )
    .single();
}

#[test]
fn ca_root_steps_out_of_order() {
    let y = edit(PLAIN, "    app_errors: {pods: [backend-v1-0]}\n", "    ca_root: sign_with_new_root\n");
    let y = edit(&y, "    for: 1s\n", "");
    let (line, col) = pos(&y, "ca_root: sign_with_new_root", "sign_with_new_root");
    rejects(
        "ca-root-order",
        &y,
        &Expect {
            at: At::Exact(line, col),
            code: "MSIM0002",
            field: Some("faults[0].ca_root"),
            rule: "sign_with_new_root needs an add_root before it",
        },
    )
    .single();
}

#[test]
fn ca_workload_cert_ttl_over_the_maximum() {
    let y = edit(PLAIN, "duration: 10s\n", "duration: 10s\nca: {workload_cert_ttl: 2161h}\n");
    let (line, col) = pos(&y, "workload_cert_ttl: 2161h", "2161h");
    rejects(
        "ca-ttl-max",
        &y,
        &Expect {
            at: At::Exact(line, col),
            code: "MSIM0002",
            field: Some("ca.workload_cert_ttl"),
            rule: "workload_cert_ttl 2161h0m0s is greater than max_workload_cert_ttl 2160h0m0s",
        },
    )
    .single();
}

#[test]
fn certs_expectation_with_an_unknown_event() {
    let y = edit(
        PLAIN,
        "  - success_rate: {workload: browse, at_least: 0.5}\n",
        "  - success_rate: {workload: browse, at_least: 0.5}\n  - certs: {event: rotated, at_least: 1}\n",
    );
    let (line, col) = pos(&y, "event: rotated", "rotated");
    rejects(
        "certs-event",
        &y,
        &Expect {
            at: At::Exact(line, col),
            code: "MSIM0002",
            field: Some("expect[1].certs.event"),
            rule: "\"rotated\" is not a certificate event: issued, renewed, ca_unreachable, expired",
        },
    )
    .single();
}

#[test]
fn metric_expectation_with_an_unknown_label() {
    let y = edit(
        PLAIN,
        "  - success_rate: {workload: browse, at_least: 0.5}\n",
        "  - metric: 'istio_requests_total{flags=\"UO\"} >= 1'\n",
    );
    rejects_field("metric-label", &y, "metric:", "expect[0].metric", "unknown label \"flags\"");
}

#[test]
fn metric_expectation_without_a_comparison() {
    let y = edit(
        PLAIN,
        "  - success_rate: {workload: browse, at_least: 0.5}\n",
        "  - metric: 'istio_requests_total{reporter=\"source\"}'\n",
    );
    rejects_field("metric-cmp", &y, "metric:", "expect[0].metric", "expected a comparison");
}

#[test]
fn traces_expectation_with_an_unknown_word() {
    let y = edit(PLAIN, "  - success_rate: {workload: browse, at_least: 0.5}\n", "  - traces: sampled\n");
    rejects_field("traces-word", &y, "traces:", "expect[0].traces", "write `traces: complete`");
}

#[test]
fn mesh_that_is_neither_istio_nor_none() {
    let y = edit(PLAIN, "duration: 10s\n", "duration: 10s\nmesh: linkerd\n");
    rejects_field("mesh-name", &y, "mesh:", "mesh", "mesh \"linkerd\" is not one of istio, none");
}

#[test]
fn latency_overhead_without_a_mesh_to_measure() {
    let y = edit(PLAIN, "duration: 10s\n", "duration: 10s\nmesh: none\n");
    let y = edit(
        &y,
        "  - success_rate: {workload: browse, at_least: 0.5}\n",
        "  - latency_overhead: {workload: browse, percentile: 99, at_most: 3ms}\n",
    );
    rejects_field(
        "overhead-no-mesh",
        &y,
        "latency_overhead:",
        "expect[0].latency_overhead",
        "with mesh: none there is no mesh overhead to measure",
    );
}

#[test]
fn latency_overhead_without_bounds() {
    let y = edit(
        PLAIN,
        "  - success_rate: {workload: browse, at_least: 0.5}\n",
        "  - latency_overhead: {workload: browse, percentile: 99}\n",
    );
    rejects_field(
        "overhead-bounds",
        &y,
        "latency_overhead:",
        "expect[0].latency_overhead",
        "give at_least and/or at_most",
    );
}

#[test]
fn proxy_cost_lognormal_with_p99_below_the_median() {
    let y =
        edit(PLAIN, "duration: 10s\n", "duration: 10s\nproxy_cost:\n  inbound: {lognormal: {median: 2ms, p99: 1ms}}\n");
    rejects_field(
        "cost-lognormal",
        &y,
        "lognormal:",
        "proxy_cost.inbound.lognormal",
        "lognormal needs 0 < median <= p99",
    );
}

// ------------------------------------------------------------------ config steps

#[test]
fn config_step_resource_error_has_its_line_and_field() {
    let y = format!(
        "{MESH}config:
  - at: 5s
    apply:
      - apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {{name: reviews}}
        spec:
          hosts: [reviews]
          http:
            - route:
                - destination: {{host: reviews, subset: v1}}
                  weight: -1
"
    );
    let (line, _) = pos(&y, "weight: -1", "-1");
    rejects(
        "step-weight",
        &y,
        &Expect { at: At::Line(line), code: "IST0106", field: Some("spec.http[0].route[0].weight"), rule: "< 0" },
    );
}

#[test]
fn config_step_is_validated_against_what_earlier_steps_left() {
    // Deleting the DestinationRule leaves the VirtualService pointing at its subsets.
    let y = format!("{MESH}config:\n  - at: 5s\n    delete: [{{kind: DestinationRule, name: reviews}}]\n");
    let (line, _) = pos(&y, "destination: {host: reviews, subset: v1}", "subset");
    rejects(
        "step-dangling",
        &y,
        &Expect {
            at: At::Line(line),
            code: "IST0101",
            field: Some("destination.subset"),
            rule: "Referenced host+subset in destinationrule not found",
        },
    );
}

#[test]
fn config_step_deleting_a_missing_resource_is_an_error() {
    let y = format!("{MESH}config:\n  - at: 5s\n    delete: [{{kind: VirtualService, name: ratings}}]\n");
    let (line, col) = pos(&y, "delete: [{kind: VirtualService, name: ratings}]", "VirtualService");
    rejects(
        "step-delete",
        &y,
        &Expect {
            at: At::Exact(line, col),
            code: "IST0101",
            field: Some("delete"),
            rule: "VirtualService default/ratings does not exist",
        },
    )
    .single();
}

#[test]
fn config_step_apply_file_must_exist() {
    let y = format!("{MESH}config:\n  - at: 5s\n    apply_file: nowhere.yaml\n");
    let (line, col) = pos(&y, "apply_file: nowhere.yaml", "nowhere");
    rejects(
        "step-file",
        &y,
        &Expect { at: At::Exact(line, col), code: "IST0101", field: Some("config[0].apply_file"), rule: "cannot read" },
    )
    .single();
}

#[test]
fn events_expectation_names_a_known_kind() {
    let y = edit(
        PLAIN,
        "  - success_rate: {workload: browse, at_least: 0.5}",
        "  - events: {kind: config_ackd, at_least: 1}",
    );
    let (line, col) = pos(&y, "kind: config_ackd", "config_ackd");
    rejects(
        "events-kind",
        &y,
        &Expect {
            at: At::Exact(line, col),
            code: "MSIM0002",
            field: Some("expect[0].events.kind"),
            rule: "unknown event kind",
        },
    )
    .single();
}
