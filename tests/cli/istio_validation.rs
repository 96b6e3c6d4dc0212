//! Istio validation: one test per webhook message (`pkg/config/validation` in
//! <https://github.com/istio/istio>) and analyzer code
//! meshsim implements. Each edits one place of a valid scenario holding a
//! DestinationRule and a VirtualService, runs `meshsim validate`, and checks the exit
//! code (79 for an error finding, 0 for warnings only), the one finding printed in
//! `istioctl analyze` style — level, code, resource, field, exact message — and that it
//! points at the offending value, the position computed from the YAML text. Error cases
//! also check that `run` reports the same finding and exits 2.

use std::ffi::OsStr;
use std::path::Path;

use crate::util::{At, Expect, Ran, Scratch, analyze_errors_about, edit, errors_about, lines, meshsim, pos, rejects};

/// A valid scenario: a DestinationRule with two subsets and every policy block, and a
/// VirtualService with a matched rule (fault injection) and a catch-all weighted rule
/// (timeout, retries).
const BASE: &str = "\
name: istio-validation
duration: 10s
services:
  - name: frontend
    pods:
      - name: v1
  - name: reviews
    port: 9080
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
      trafficPolicy:
        loadBalancer:
          simple: ROUND_ROBIN
        connectionPool:
          tcp:
            maxConnections: 100
            connectTimeout: 1s
        outlierDetection:
          consecutive5xxErrors: 5
          interval: 1s
          baseEjectionTime: 30s
          maxEjectionPercent: 50
      subsets:
        - name: v1
          labels: {version: v1}
        - name: v2
          labels: {version: v2}
  - apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: reviews}
    spec:
      hosts: [reviews]
      http:
        - match:
            - uri: {prefix: /api}
          route:
            - destination: {host: reviews, subset: v2}
          fault:
            abort:
              httpStatus: 503
              percentage: {value: 1}
        - route:
            - destination: {host: reviews, subset: v1}
              weight: 90
            - destination: {host: reviews, subset: v2}
              weight: 10
          timeout: 2s
          retries:
            attempts: 3
            perTryTimeout: 500ms
            retryOn: 5xx,connect-failure
workload:
  - name: browse
    from: frontend
    to: reviews
    rate: 100
";

const VS: &str = "VirtualService default/reviews";
const DR: &str = "DestinationRule default/reviews";

// ------------------------------------------------------------------ helpers

/// One finding as `validate` prints it:
/// `Level [CODE] (Kind ns/name FILE:LINE:COL) field: message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Analyzed {
    level: String,
    code: String,
    /// `Kind ns/name`, or `Scenario`.
    resource: String,
    line: Option<u64>,
    column: Option<u64>,
    field: String,
    message: String,
}

/// The findings about `file` (errors and warnings) that `validate` printed.
fn analyzed(stderr: &str, file: &Path) -> Vec<Analyzed> {
    let name = file.display().to_string();
    stderr
        .lines()
        .filter_map(|l| {
            let (level, rest) = l.split_once(" [")?;
            if !matches!(level, "Error" | "Warning") {
                return None;
            }
            let (code, rest) = rest.split_once("] (")?;
            let (what, rest) = rest.split_once(") ")?;
            let at = what.find(&name)?;
            let mut nums = what[at + name.len()..].strip_prefix(':').map(|s| s.split(':').map(|n| n.parse().ok()));
            let (line, column) = match nums.as_mut() {
                Some(it) => (it.next().flatten(), it.next().flatten()),
                None => (None, None),
            };
            let (field, message) = rest.split_once(": ").unwrap_or(("", rest));
            Some(Analyzed {
                level: level.to_string(),
                code: code.to_string(),
                resource: what[..at].trim_end().to_string(),
                line,
                column,
                field: field.to_string(),
                message: message.to_string(),
            })
        })
        .collect()
}

/// Like [`pos`], in the `n`th (0-based) line of `yaml` containing `line_has`.
fn pos_nth(yaml: &str, n: usize, line_has: &str, token: &str) -> (u64, u64) {
    let (i, line) = yaml
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(line_has))
        .nth(n)
        .unwrap_or_else(|| panic!("fewer than {} lines contain {line_has:?}", n + 1));
    let (_, col) = pos(line, line, token);
    (i as u64 + 1, col)
}

/// Whether a finding at `line`:`column` is where `at` says.
fn is_at(at: &At, line: Option<u64>, column: Option<u64>) -> bool {
    match at {
        At::Exact(l, c) => line == Some(*l) && column == Some(*c),
        At::Line(l) => line == Some(*l) && column.is_some(),
        At::Lines(r) => line.is_some_and(|l| r.contains(&l)) && column.is_some(),
        At::Anywhere => true,
    }
}

/// The one finding an edit must produce.
pub(crate) struct Want<'a> {
    pub code: &'a str,
    /// `Kind ns/name` of the resource the finding is about.
    pub resource: &'a str,
    pub field: &'a str,
    /// The exact message after `field: `.
    pub message: &'a str,
    pub at: At,
}

/// Runs `validate` on `yaml`; returns what it did and its findings about the file.
pub(crate) fn validate(test: &str, yaml: &str) -> (Ran, Vec<Analyzed>) {
    let scratch = Scratch::new(test);
    let file = scratch.write("scenario.yaml", yaml);
    let ran = meshsim([OsStr::new("validate"), file.as_os_str()]);
    ran.assert_no_panic();
    let found = analyzed(&ran.stderr, &file);
    (ran, found)
}

/// Checks that `found` is exactly the finding `want` describes, at level `level`.
fn assert_finding(ran: &Ran, found: &[Analyzed], level: &str, want: &Want<'_>) {
    assert_eq!(found.len(), 1, "one edit, exactly one finding\n{}", ran.dump());
    let f = &found[0];
    assert_eq!((f.level.as_str(), f.code.as_str()), (level, want.code), "level and code\n{}", ran.dump());
    assert_eq!(f.resource, want.resource, "the resource named\n{}", ran.dump());
    assert_eq!(f.field, want.field, "the field named\n{}", ran.dump());
    assert_eq!(f.message, want.message, "the message\n{}", ran.dump());
    assert!(
        is_at(&want.at, f.line, f.column),
        "expected the finding at {:?}, got {:?}:{:?}\n{}",
        want.at,
        f.line,
        f.column,
        ran.dump()
    );
}

/// `yaml` has one error: `validate` exits 79 with exactly the finding `want`, and `run`
/// reports the same finding and exits 2.
pub(crate) fn rejected(test: &str, yaml: &str, want: &Want<'_>) {
    let (ran, found) = validate(test, yaml);
    assert_eq!(ran.code, Some(79), "an error finding makes validate exit 79\n{}", ran.dump());
    assert_finding(&ran, &found, "Error", want);
    let expect = Expect { at: want.at.clone(), code: want.code, field: Some(want.field), rule: want.message };
    rejects(test, yaml, &expect).single();
}

/// `yaml` only warrants a warning: `validate` exits 0, saying the file is ok with one
/// warning, and prints exactly the finding `want`.
pub(crate) fn warned(test: &str, yaml: &str, want: &Want<'_>) {
    let (ran, found) = validate(test, yaml);
    assert_eq!(ran.code, Some(0), "warnings alone make validate exit 0\n{}", ran.dump());
    assert!(ran.stdout.contains(", 1 warnings)"), "the summary counts the warning\n{}", ran.dump());
    assert_finding(&ran, &found, "Warning", want);
}

#[test]
fn the_base_is_valid() {
    let (ran, found) = validate("base", BASE);
    assert_eq!(ran.code, Some(0), "{}", ran.dump());
    assert!(found.is_empty() && ran.stderr.is_empty(), "the base must have no findings\n{}", ran.dump());
}

// ------------------------------------------------------------------ webhook: weights

#[test]
fn negative_weight() {
    let y = edit(BASE, "weight: 10", "weight: -1");
    let (line, col) = pos(&y, "weight: -1", "-1");
    rejected(
        "weight-negative",
        &y,
        &Want {
            code: "IST0106",
            resource: VS,
            field: "spec.http[1].route[1].weight",
            message: "weight -1 < 0",
            at: At::Exact(line, col),
        },
    );
}

#[test]
fn total_destination_weight_zero() {
    let y = edit(&edit(BASE, "weight: 90", "weight: 0"), "weight: 10", "weight: 0");
    // At the first destination's weight, naming the whole route.
    let (line, col) = pos(&y, "weight: 0", "0");
    rejected(
        "weight-total-zero",
        &y,
        &Want {
            code: "IST0106",
            resource: VS,
            field: "spec.http[1].route",
            message: "total destination weight = 0",
            at: At::Exact(line, col),
        },
    );
}

// ------------------------------------------------------------------ webhook: retries

#[test]
fn negative_retry_attempts() {
    let y = edit(BASE, "attempts: 3", "attempts: -1");
    let (line, col) = pos(&y, "attempts: -1", "-1");
    rejected(
        "attempts-negative",
        &y,
        &Want {
            code: "IST0106",
            resource: VS,
            field: "spec.http[1].retries.attempts",
            message: "attempts cannot be negative",
            at: At::Exact(line, col),
        },
    );
}

#[test]
fn retry_policy_with_zero_attempts() {
    // perTryTimeout and retryOn stay set while attempts 0 disables retries.
    let y = edit(BASE, "attempts: 3", "attempts: 0");
    let (line, col) = pos(&y, "attempts: 0", "0");
    rejected(
        "attempts-zero",
        &y,
        &Want {
            code: "IST0106",
            resource: VS,
            field: "spec.http[1].retries.attempts",
            message: "http retry policy configured when attempts are set to 0 (disabled)",
            at: At::Exact(line, col),
        },
    );
}

#[test]
fn invalid_retry_on_policy() {
    let y = edit(BASE, "retryOn: 5xx,connect-failure", "retryOn: 5xx,foo");
    let (line, col) = pos(&y, "retryOn: 5xx,foo", "5xx,foo");
    rejected(
        "retry-on-foo",
        &y,
        &Want {
            code: "IST0106",
            resource: VS,
            field: "spec.http[1].retries.retryOn",
            message: "\"foo\" is not a valid retryOn policy",
            at: At::Exact(line, col),
        },
    );
}

// ------------------------------------------------------------------ webhook: durations

#[test]
fn duration_must_be_greater_than_1ms() {
    for (test, from, to, resource, field) in [
        ("route-timeout", "timeout: 2s", "timeout: 0s", VS, "spec.http[1].timeout"),
        ("per-try-timeout", "perTryTimeout: 500ms", "perTryTimeout: 0s", VS, "spec.http[1].retries.perTryTimeout"),
        ("outlier-interval", "interval: 1s", "interval: 0s", DR, "spec.trafficPolicy.outlierDetection.interval"),
        (
            "base-ejection-time",
            "baseEjectionTime: 30s",
            "baseEjectionTime: 500us",
            DR,
            "spec.trafficPolicy.outlierDetection.baseEjectionTime",
        ),
        (
            "connect-timeout",
            "connectTimeout: 1s",
            "connectTimeout: 0s",
            DR,
            "spec.trafficPolicy.connectionPool.tcp.connectTimeout",
        ),
    ] {
        let y = edit(BASE, from, to);
        let value = to.split_once(": ").expect("key: value").1;
        let (line, col) = pos(&y, to, value);
        rejected(
            &format!("duration-{test}"),
            &y,
            &Want {
                code: "IST0106",
                resource,
                field,
                message: "duration must be greater than 1ms",
                at: At::Exact(line, col),
            },
        );
    }
}

#[test]
fn durations_need_millisecond_precision() {
    for (test, from, to, resource, field) in [
        ("route-timeout", "timeout: 2s", "timeout: 1500us", VS, "spec.http[1].timeout"),
        ("outlier-interval", "interval: 1s", "interval: 1.0005s", DR, "spec.trafficPolicy.outlierDetection.interval"),
    ] {
        let y = edit(BASE, from, to);
        let value = to.split_once(": ").expect("key: value").1;
        let (line, col) = pos(&y, to, value);
        rejected(
            &format!("precision-{test}"),
            &y,
            &Want {
                code: "IST0106",
                resource,
                field,
                message: "only durations to ms precision are supported",
                at: At::Exact(line, col),
            },
        );
    }
}

// ------------------------------------------------------------------ webhook: fault injection

#[test]
fn fault_abort_status_out_of_range() {
    let y = edit(BASE, "httpStatus: 503", "httpStatus: 700");
    let (line, col) = pos(&y, "httpStatus: 700", "700");
    rejected(
        "abort-700",
        &y,
        &Want {
            code: "IST0106",
            resource: VS,
            field: "spec.http[0].fault.abort.httpStatus",
            message: "HTTP status 700 is not in range 200-599",
            at: At::Exact(line, col),
        },
    );
}

#[test]
fn fault_without_abort_or_delay() {
    let y = edit(
        BASE,
        "          fault:\n            abort:\n              httpStatus: 503\n              percentage: {value: 1}\n",
        "          fault: {}\n",
    );
    let (line, col) = pos(&y, "fault: {}", "{}");
    rejected(
        "fault-empty",
        &y,
        &Want {
            code: "IST0106",
            resource: VS,
            field: "spec.http[0].fault",
            message: "HTTP fault injection must have an abort and/or a delay",
            at: At::Exact(line, col),
        },
    );
}

// ------------------------------------------------------------------ webhook: route actions

#[test]
fn route_and_redirect_in_one_rule() {
    let y = edit(BASE, "          timeout: 2s\n", "          timeout: 2s\n          redirect: {uri: /v2}\n");
    // The conflict is the rule's: anywhere in it.
    rejected(
        "route-and-redirect",
        &y,
        &Want {
            code: "IST0106",
            resource: VS,
            field: "spec.http[1]",
            message: "HTTP route cannot contain both route and redirect",
            at: At::Lines(lines(&y, "- route:", "redirect: {uri: /v2}")),
        },
    );
}

#[test]
fn redirect_code_not_a_redirect() {
    let y = edit(
        BASE,
        "        - match:\n",
        "        - match:\n            - uri: {prefix: /old}\n          redirect:\n            uri: /new\n            redirectCode: 305\n        - match:\n",
    );
    let (line, col) = pos(&y, "redirectCode: 305", "305");
    rejected(
        "redirect-code",
        &y,
        &Want {
            code: "IST0106",
            resource: VS,
            field: "spec.http[0].redirect.redirectCode",
            message: "305 is not a valid redirect code, must be 301, 302, 303, 307, or 308",
            at: At::Exact(line, col),
        },
    );
}

// ------------------------------------------------------------------ webhook: DestinationRule

#[test]
fn empty_connection_pool() {
    let y = edit(
        BASE,
        "        connectionPool:\n          tcp:\n            maxConnections: 100\n            connectTimeout: 1s\n",
        "        connectionPool: {}\n",
    );
    let (line, col) = pos(&y, "connectionPool: {}", "{}");
    rejected(
        "pool-empty",
        &y,
        &Want {
            code: "IST0106",
            resource: DR,
            field: "spec.trafficPolicy.connectionPool",
            message: "connection pool must have at least one field",
            at: At::Exact(line, col),
        },
    );
}

#[test]
fn empty_subset_name() {
    let y = edit(
        BASE,
        "          labels: {version: v2}\n",
        "          labels: {version: v2}\n        - name: \"\"\n          labels: {version: v1}\n",
    );
    let (line, col) = pos(&y, "- name: \"\"", "\"\"");
    rejected(
        "subset-name-empty",
        &y,
        &Want {
            code: "IST0106",
            resource: DR,
            field: "spec.subsets[2].name",
            message: "subset name cannot be empty",
            at: At::Exact(line, col),
        },
    );
}

#[test]
fn max_ejection_percent_out_of_range() {
    for (test, value) in [("over", "101"), ("negative", "-1")] {
        let y = edit(BASE, "maxEjectionPercent: 50", &format!("maxEjectionPercent: {value}"));
        let (line, col) = pos(&y, "maxEjectionPercent:", value);
        rejected(
            &format!("max-ejection-{test}"),
            &y,
            &Want {
                code: "IST0106",
                resource: DR,
                field: "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
                message: "max ejection percent must be in range [0..100]",
                at: At::Exact(line, col),
            },
        );
    }
}

#[test]
fn consistent_hash_with_two_keys() {
    let y = edit(
        BASE,
        "          simple: ROUND_ROBIN\n",
        "          consistentHash:\n            httpHeaderName: x-user\n            useSourceIp: true\n",
    );
    // At the consistentHash mapping, whose keys conflict.
    rejected(
        "hash-two-keys",
        &y,
        &Want {
            code: "IST0106",
            resource: DR,
            field: "spec.trafficPolicy.loadBalancer.consistentHash",
            message: "consistentHash needs exactly one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName",
            at: At::Lines(lines(&y, "consistentHash:", "useSourceIp: true")),
        },
    );
}

const MAGLEV_1000: &str = "          consistentHash:\n            httpHeaderName: x-user\n            maglev:\n              tableSize: 1000\n";

#[test]
fn maglev_table_size_not_prime() {
    let y = edit(BASE, "          simple: ROUND_ROBIN\n", MAGLEV_1000);
    rejected(
        "maglev-not-prime",
        &y,
        &Want {
            code: "IST0106",
            resource: DR,
            field: "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize",
            message: "table size 1000 must be a prime number",
            at: At::Lines(lines(&y, "consistentHash:", "tableSize: 1000")),
        },
    );
}

#[test]
fn maglev_table_size_error_points_at_the_value() {
    let y = edit(BASE, "          simple: ROUND_ROBIN\n", MAGLEV_1000);
    let (line, col) = pos(&y, "tableSize: 1000", "1000");
    rejected(
        "maglev-position",
        &y,
        &Want {
            code: "IST0106",
            resource: DR,
            field: "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize",
            message: "table size 1000 must be a prime number",
            at: At::Exact(line, col),
        },
    );
}

// ------------------------------------------------------------------ analyzer: IST0101

#[test]
fn referenced_subset_not_found() {
    let y = edit(BASE, "subset: v2}\n              weight: 10", "subset: v3}\n              weight: 10");
    let (line, col) = pos(&y, "subset: v3", "v3");
    rejected(
        "subset-not-found",
        &y,
        &Want {
            code: "IST0101",
            resource: VS,
            field: "spec.http[1].route[1].destination.subset",
            message: "Referenced host+subset in destinationrule not found: \"reviews+v3\"",
            at: At::Exact(line, col),
        },
    );
}

#[test]
fn referenced_host_not_found() {
    let y = edit(
        BASE,
        "{host: reviews, subset: v2}\n              weight: 10",
        "{host: details}\n              weight: 10",
    );
    let (line, col) = pos(&y, "{host: details}", "details");
    rejected(
        "host-not-found",
        &y,
        &Want {
            code: "IST0101",
            resource: VS,
            field: "spec.http[1].route[1].destination.host",
            message: "Referenced host not found: \"details\"",
            at: At::Exact(line, col),
        },
    );
}

// ------------------------------------------------------------------ analyzer: warnings

#[test]
fn rule_after_a_catch_all_rule_is_unreachable() {
    let y = edit(
        BASE,
        "workload:\n",
        "        - match:\n            - uri: {prefix: /late}\n          route:\n            - destination: {host: ratings}\nworkload:\n",
    );
    // Rule #1 has no match: rule #2, after it, never applies.
    warned(
        "ist0130",
        &y,
        &Want {
            code: "IST0130",
            resource: VS,
            field: "spec.http[2]",
            message: "VirtualService rule #2 not used (rule #1 has no match and takes every request; \
                      only the last rule can have no matches).",
            at: At::Lines(lines(&y, "uri: {prefix: /late}", "{host: ratings}")),
        },
    );
}

#[test]
fn repeated_match_is_ineffective() {
    let y = edit(
        BASE,
        "            - uri: {prefix: /api}\n",
        "            - uri: {prefix: /api}\n            - uri: {prefix: /api}\n",
    );
    // At the second, identical entry.
    let (line, col) = pos_nth(&y, 1, "uri: {prefix: /api}", "uri");
    warned(
        "ist0131",
        &y,
        &Want {
            code: "IST0131",
            resource: VS,
            field: "spec.http[0].match[1]",
            message: "VirtualService rule #0 match #1 is not used (same as rule #0 match #0).",
            at: At::Exact(line, col),
        },
    );
}

const SUBSET_V9: (&str, &str) = ("          labels: {version: v2}\n", "          labels: {version: v9}\n");

#[test]
fn subset_selecting_no_pods() {
    let y = edit(BASE, SUBSET_V9.0, SUBSET_V9.1);
    let (line, col) = pos(&y, "        - name: v2", "v2");
    let (ran, found) = validate("ist0173", &y);
    assert_eq!(ran.code, Some(0), "a warning alone makes validate exit 0\n{}", ran.dump());
    assert_eq!(found.len(), 1, "one edit, exactly one finding\n{}", ran.dump());
    let f = &found[0];
    assert_eq!((f.level.as_str(), f.code.as_str(), f.resource.as_str()), ("Warning", "IST0173", DR), "{}", ran.dump());
    // The index in the field path is checked by subset_selecting_no_pods_names_its_index.
    assert!(f.field.starts_with("spec.subsets") && f.field.ends_with(".name"), "{}", ran.dump());
    assert_eq!(
        f.message,
        "Subset \"v2\" in DestinationRule doesn't select any pods of reviews.default.svc.cluster.local: \
         traffic to it may lead to 503 UH",
        "{}",
        ran.dump()
    );
    assert_eq!((f.line, f.column), (Some(line), Some(col)), "at the subset's name\n{}", ran.dump());
}

#[test]
fn subset_selecting_no_pods_names_its_index() {
    let y = edit(BASE, SUBSET_V9.0, SUBSET_V9.1);
    let (line, col) = pos(&y, "        - name: v2", "v2");
    warned(
        "ist0173-index",
        &y,
        &Want {
            code: "IST0173",
            resource: DR,
            field: "spec.subsets[1].name",
            message: "Subset \"v2\" in DestinationRule doesn't select any pods of reviews.default.svc.cluster.local: \
                      traffic to it may lead to 503 UH",
            at: At::Exact(line, col),
        },
    );
}

#[test]
fn destination_rule_for_an_unknown_host() {
    let y = edit(
        BASE,
        "workload:\n",
        "  - apiVersion: networking.istio.io/v1\n    kind: DestinationRule\n    metadata: {name: details}\n    spec:\n      host: details\nworkload:\n",
    );
    let (line, col) = pos(&y, "host: details", "details");
    warned(
        "ist0174",
        &y,
        &Want {
            code: "IST0174",
            resource: "DestinationRule default/details",
            field: "spec.host",
            message: "DestinationRule for non-existent service registry host \"details\": it has no effect",
            at: At::Exact(line, col),
        },
    );
}

#[test]
fn not_simulated_field_is_a_warning_naming_it() {
    let y = edit(
        BASE,
        "          timeout: 2s\n",
        "          timeout: 2s\n          corsPolicy:\n            allowOrigins:\n              - exact: https://example.com\n",
    );
    // At the field's value: the mapping's first key.
    let (line, col) = pos(&y, "allowOrigins:", "allowOrigins");
    warned(
        "cors",
        &y,
        &Want {
            code: "MSIM0001",
            resource: VS,
            field: "spec.http[1].corsPolicy",
            message: "`spec.http[1].corsPolicy` is an Istio field meshsim does not simulate yet: it is ignored",
            at: At::Exact(line, col),
        },
    );
}

#[test]
fn http_routes_to_a_tcp_service_are_a_warning_and_ignored() {
    let y = edit(BASE, "    port: 9080\n", "    port: 9080\n    app_protocol: tcp\n");
    let (line, col) = pos(&y, "hosts: [reviews]", "reviews");
    warned(
        "vs-http-on-tcp",
        &y,
        &Want {
            code: "MSIM0001",
            resource: VS,
            field: "spec.http",
            message: "VirtualService default/reviews: reviews.default.svc.cluster.local is a tcp service (app_protocol: tcp), so its `http` routes do not apply (Istio builds no HTTP route for a TCP port): connections go to the whole service",
            at: At::Exact(line, col),
        },
    );
}

/// A valid TCP service with `tcp` routes splitting its connections over two subsets.
const TCP_BASE: &str = "\
name: tcp-validation
duration: 1s
services:
  - name: client
    pods: [{name: v1}]
  - name: db
    port: 5432
    app_protocol: tcp
    pods:
      - {name: v1, labels: {version: v1}}
      - {name: v2, labels: {version: v2}}
istio:
  - apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {name: db}
    spec:
      host: db
      subsets:
        - {name: v1, labels: {version: v1}}
        - {name: v2, labels: {version: v2}}
  - apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: db}
    spec:
      hosts: [db]
      tcp:
        - match: [{port: 5432, sourceLabels: {app: client}}]
          route:
            - destination: {host: db, subset: v1}
              weight: 80
            - destination: {host: db, subset: v2}
              weight: 20
";

#[test]
fn the_tcp_base_is_valid() {
    let (ran, found) = validate("tcp-base", TCP_BASE);
    assert_eq!(ran.code, Some(0), "{}", ran.dump());
    assert!(found.is_empty() && ran.stderr.is_empty(), "the TCP base must have no findings\n{}", ran.dump());
}

#[test]
fn a_tcp_route_to_an_http_service_is_an_error() {
    let y = edit(TCP_BASE, "{host: db, subset: v2}", "{host: client}");
    let (line, col) = pos(&y, "{host: client}", "client");
    rejected(
        "tcp-route-to-http",
        &y,
        &Want {
            code: "MSIM0001",
            resource: "VirtualService default/db",
            field: "spec.tcp[0].route[1].destination.host",
            message: "client.default.svc.cluster.local is an http service: meshsim proxies a tcp route's connections only to a tcp service (app_protocol: tcp)",
            at: At::Exact(line, col),
        },
    );
}

#[test]
fn tcp_route_weights_summing_to_zero_are_an_error() {
    let y = edit(&edit(TCP_BASE, "weight: 80", "weight: 0"), "weight: 20", "weight: 0");
    let (line, col) = pos(&y, "weight: 0", "0");
    rejected(
        "tcp-weight-zero",
        &y,
        &Want {
            code: "IST0106",
            resource: "VirtualService default/db",
            field: "spec.tcp[0].route",
            message: "total destination weight = 0",
            at: At::Exact(line, col),
        },
    );
}

#[test]
fn tcp_routes_on_an_http_service_are_a_warning_and_ignored() {
    let y = edit(
        BASE,
        "      hosts: [reviews]\n",
        "      hosts: [reviews]\n      tcp:\n        - route:\n            - destination: {host: reviews}\n",
    );
    let (line, col) = pos(&y, "hosts: [reviews]", "reviews");
    warned(
        "tcp-routes-on-http",
        &y,
        &Want {
            code: "MSIM0001",
            resource: VS,
            field: "spec.tcp",
            message: "VirtualService default/reviews: reviews.default.svc.cluster.local is an http service, so its `tcp` routes do not apply (meshsim services have one port): they are ignored",
            at: At::Exact(line, col),
        },
    );
}

// ------------------------------------------------------------------ istio_files

/// The base's Istio resources as a file of their own (Kubernetes documents).
const RESOURCES: &str = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
    - {name: v1, labels: {version: v1}}
    - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
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
";

/// The base scenario with its inline resources replaced by `istio_files: [reviews.yaml]`.
fn scenario_with_istio_file() -> String {
    let (head, tail) = BASE.split_once("istio:\n").expect("the base has inline resources");
    let tail = &tail[tail.find("workload:\n").expect("the base has a workload")..];
    format!("{head}istio_files: [reviews.yaml]\n{tail}")
}

/// Writes `resources` as `reviews.yaml` and, next to it, [`scenario_with_istio_file`]
/// with `change` (from, to) applied; runs `validate` on the scenario.
fn with_istio_file(test: &str, resources: &str, change: Option<(&str, &str)>) -> (Scratch, Ran) {
    let scratch = Scratch::new(test);
    scratch.write("reviews.yaml", resources);
    let scenario = match change {
        Some((from, to)) => edit(&scenario_with_istio_file(), from, to),
        None => scenario_with_istio_file(),
    };
    let file = scratch.write("scenario.yaml", scenario);
    let validated = meshsim([OsStr::new("validate"), file.as_os_str()]);
    validated.assert_no_panic();
    (scratch, validated)
}

/// `run` on the scenario in `scratch` refuses it: exit 2, nothing written.
fn run_refuses(scratch: &Scratch) -> Ran {
    let out = scratch.dir.join("out");
    let ran = meshsim([
        OsStr::new("run"),
        scratch.dir.join("scenario.yaml").as_os_str(),
        OsStr::new("--out"),
        out.as_os_str(),
    ]);
    ran.assert_no_panic();
    assert_eq!(ran.code, Some(2), "run exits 2 on any invalid input\n{}", ran.dump());
    assert!(!out.exists(), "run wrote results for an invalid scenario");
    ran
}

#[test]
fn istio_file_unparsable_exits_2_semantic_error_exits_79() {
    let (_, ok) = with_istio_file("istio-file-valid", RESOURCES, None);
    assert_eq!(ok.code, Some(0), "the Istio file is valid as given\n{}", ok.dump());
    assert!(ok.stderr.is_empty(), "{}", ok.dump());

    // A semantic error in the Istio file: an error finding there, exit 79.
    let bad = edit(RESOURCES, "weight: 10", "weight: -1");
    let (scratch, validated) = with_istio_file("istio-file-semantic", &bad, None);
    let istio = scratch.dir.join("reviews.yaml");
    let (line, col) = pos(&bad, "weight: -1", "-1");
    assert_eq!(validated.code, Some(79), "a semantic error in an Istio file: exit 79\n{}", validated.dump());
    let found = analyzed(&validated.stderr, &istio);
    assert_eq!(
        found,
        [Analyzed {
            level: "Error".into(),
            code: "IST0106".into(),
            resource: VS.into(),
            line: Some(line),
            column: Some(col),
            field: "spec.http[0].route[1].weight".into(),
            message: "weight -1 < 0".into(),
        }],
        "{}",
        validated.dump()
    );
    let ran = run_refuses(&scratch);
    assert_eq!(
        analyze_errors_about(&validated.stderr, &istio),
        errors_about(&ran.stderr, &istio),
        "run and validate report the same findings\n{}\n{}",
        validated.dump(),
        ran.dump()
    );

    // An Istio file that cannot be parsed (a word for a number): exit 2, at the word.
    let unparsable = edit(RESOURCES, "weight: 10", "weight: ten");
    let (line, col) = pos(&unparsable, "weight: ten", "ten");
    let (scratch, validated) = with_istio_file("istio-file-unparsable", &unparsable, None);
    let istio = scratch.dir.join("reviews.yaml");
    assert_eq!(validated.code, Some(2), "an Istio file that cannot be parsed: exit 2\n{}", validated.dump());
    let errors = analyze_errors_about(&validated.stderr, &istio);
    assert_eq!(errors.len(), 1, "{}", validated.dump());
    let e = &errors[0];
    assert_eq!((e.code.as_str(), e.line, e.column), ("IST0106", Some(line), Some(col)), "{}", validated.dump());
    run_refuses(&scratch);

    // Unparsable outranks an error finding elsewhere in the scenario.
    let (scratch, validated) =
        with_istio_file("istio-file-unparsable-and-error", &unparsable, Some(("rate: 100", "rate: 0")));
    assert_eq!(validated.code, Some(2), "an unparsable file outranks error findings\n{}", validated.dump());
    run_refuses(&scratch);
}

// ------------------------------------------------------------------ PeerAuthentication

/// The base with one PeerAuthentication appended to `istio:`.
fn with_peer_authentication(spec: &str) -> String {
    let pa = format!(
        "  - apiVersion: security.istio.io/v1\n    kind: PeerAuthentication\n    metadata: {{name: pa, namespace: default}}\n    spec:\n{spec}"
    );
    edit(BASE, "workload:\n", &format!("{pa}workload:\n"))
}

#[test]
fn namespace_peer_authentication_with_port_level_mtls() {
    let y =
        with_peer_authentication("      mtls: {mode: STRICT}\n      portLevelMtls:\n        8080: {mode: DISABLE}\n");
    let (line, _) = pos(&y, "8080: {mode: DISABLE}", "8080");
    rejected(
        "pa-port-level-without-selector",
        &y,
        &Want {
            code: "IST0106",
            resource: "PeerAuthentication default/pa",
            field: "spec.portLevelMtls",
            message: "mesh/namespace peer authentication cannot have port level mTLS",
            at: At::Line(line),
        },
    );
}

#[test]
fn workload_peer_authentication_with_port_level_mtls_is_valid() {
    let y = with_peer_authentication(
        "      selector: {matchLabels: {app: reviews}}\n      mtls: {mode: STRICT}\n      portLevelMtls:\n        9080: {mode: PERMISSIVE}\n",
    );
    let (ran, found) = validate("pa-port-level-with-selector", &y);
    assert_eq!(ran.code, Some(0), "{}", ran.dump());
    assert!(found.is_empty(), "{}", ran.dump());
}

#[test]
fn peer_authentication_unknown_mode_is_an_error_at_its_line() {
    let y = with_peer_authentication("      mtls: {mode: STRICTER}\n");
    let (line, _) = pos(&y, "mode: STRICTER", "STRICTER");
    let expect = Expect { at: At::Line(line), code: "IST0106", field: None, rule: "STRICTER" };
    rejects("pa-unknown-mode", &y, &expect).single();
}
