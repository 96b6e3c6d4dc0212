//! AuthorizationPolicy validation ([Istio's reference](https://istio.io/latest/docs/reference/config/security/authorization-policy/); the webhook's checks are
//! `pkg/config/validation` in <https://github.com/istio/istio>): the webhook's rules with its
//! messages, CUSTOM rejected as out of scope, and warnings naming what meshsim evaluates
//! differently. Each case edits one place of a valid scenario, runs `meshsim validate`
//! and checks the exit code (79 for an error, 0 for warnings only), the one finding in
//! `istioctl analyze` style and its position (computed from the YAML text); error cases
//! also check that `run` reports the same finding and exits 2.

use crate::istio_validation::{Want, rejected, validate, warned};
use crate::util::{At, Expect, edit, pos, rejects};

/// A valid scenario with one ALLOW policy holding a source, an operation and a condition.
const BASE: &str = "\
name: authz-validation
duration: 10s
services:
  - name: frontend
    pods:
      - name: v1
  - name: reviews
    pods:
      - name: v1
istio:
  - apiVersion: security.istio.io/v1
    kind: AuthorizationPolicy
    metadata: {name: reviews}
    spec:
      selector:
        matchLabels: {app: reviews}
      action: ALLOW
      rules:
        - from:
            - source:
                namespaces: [default]
          to:
            - operation:
                methods: [GET]
                paths: [\"/info*\"]
          when:
            - key: request.headers[x-user]
              values: [alice]
workload:
  - name: browse
    from: frontend
    to: reviews
    rate: 100
";

const AP: &str = "AuthorizationPolicy default/reviews";

#[test]
fn the_base_is_valid() {
    let (ran, found) = validate("authz-base", BASE);
    assert_eq!(ran.code, Some(0), "{}", ran.dump());
    assert!(found.is_empty() && ran.stderr.is_empty(), "the base must have no findings\n{}", ran.dump());
}

#[test]
fn deny_without_rules() {
    let y = edit(
        BASE,
        "      action: ALLOW\n      rules:\n        - from:\n            - source:\n                namespaces: [default]\n          to:\n            - operation:\n                methods: [GET]\n                paths: [\"/info*\"]\n          when:\n            - key: request.headers[x-user]\n              values: [alice]\n",
        "      action: DENY\n",
    );
    let (line, col) = pos(&y, "action: DENY", "DENY");
    rejected(
        "authz-deny-no-rules",
        &y,
        &Want {
            code: "IST0106",
            resource: AP,
            field: "spec.rules",
            message: "DENY action without `rules` is meaningless as it will never be triggered, add an empty rule `{}` if you want it be triggered for every request",
            at: At::Exact(line, col),
        },
    );
}

#[test]
fn custom_is_out_of_scope() {
    let y = edit(BASE, "      action: ALLOW\n", "      action: CUSTOM\n      provider: {name: ext-authz}\n");
    let (line, col) = pos(&y, "action: CUSTOM", "CUSTOM");
    rejected(
        "authz-custom",
        &y,
        &Want {
            code: "MSIM0001",
            resource: AP,
            field: "spec.action",
            message: "CUSTOM (external authorization through a provider) is out of meshsim's scope: it cannot be simulated; use ALLOW or DENY",
            at: At::Exact(line, col),
        },
    );
}

#[test]
fn selector_and_target_ref_are_exclusive() {
    let y = edit(
        BASE,
        "      action: ALLOW\n",
        "      targetRef: {group: gateway.networking.k8s.io, kind: Gateway, name: gw}\n      action: ALLOW\n",
    );
    // The policy also warns that a targetRef never applies to sidecars: count errors only.
    let (ran, _) = validate("authz-selector-target-ref", &y);
    assert_eq!(ran.code, Some(79), "{}", ran.dump());
    let expect = Expect {
        at: At::Line(pos(&y, "kind: AuthorizationPolicy", "AuthorizationPolicy").0),
        code: "IST0106",
        field: Some("spec"),
        rule: "only one of targetRefs or workloadSelector can be set",
    };
    rejects("authz-selector-target-ref", &y, &expect).single();
}

#[test]
fn service_accounts_with_namespaces() {
    let y = edit(
        BASE,
        "                namespaces: [default]\n",
        "                namespaces: [default]\n                serviceAccounts: [default/frontend]\n",
    );
    let (line, col) = pos(&y, "namespaces: [default]", "namespaces");
    rejected(
        "authz-service-accounts",
        &y,
        &Want {
            code: "IST0106",
            resource: AP,
            field: "spec.rules[0].from[0].source",
            message: "cannot set serviceAccounts with namespaces or principals, found at rule 0",
            at: At::Exact(line, col),
        },
    );
}

#[test]
fn bad_ip_block() {
    let y = edit(BASE, "                namespaces: [default]\n", "                ipBlocks: [10.0.0.0/33]\n");
    let (line, col) = pos(&y, "ipBlocks", "10.0");
    rejected(
        "authz-bad-cidr",
        &y,
        &Want {
            code: "IST0106",
            resource: AP,
            field: "spec.rules[0].from[0].source.ipBlocks[0]",
            message: "bad CIDR range (10.0.0.0/33): prefix length out of range",
            at: At::Exact(line, col),
        },
    );
}

#[test]
fn unknown_condition_attribute() {
    let y = edit(BASE, "key: request.headers[x-user]", "key: request.user");
    let (line, col) = pos(&y, "key: request.user", "request.user");
    rejected(
        "authz-unknown-attribute",
        &y,
        &Want {
            code: "IST0106",
            resource: AP,
            field: "spec.rules[0].when[0].key",
            message: "invalid `value` for `key` request.user: unknown attribute: request.user",
            at: At::Exact(line, col),
        },
    );
}

#[test]
fn empty_operation() {
    let y = edit(BASE, "                methods: [GET]\n                paths: [\"/info*\"]\n", "                {}\n");
    let (line, col) = pos(&y, "                {}", "{}");
    rejected(
        "authz-empty-operation",
        &y,
        &Want {
            code: "IST0106",
            resource: AP,
            field: "spec.rules[0].to[0].operation",
            message: "`to.operation` must not be empty, found at rule 0",
            at: At::Exact(line, col),
        },
    );
}

#[test]
fn wrong_api_group() {
    let y = edit(BASE, "apiVersion: security.istio.io/v1", "apiVersion: networking.istio.io/v1");
    let (line, col) = pos(&y, "apiVersion: networking", "networking");
    rejected(
        "authz-api-group",
        &y,
        &Want {
            code: "IST0106",
            resource: AP,
            field: "apiVersion",
            message: "apiVersion \"networking.istio.io/v1\" is not one of security.istio.io/v1, security.istio.io/v1beta1",
            at: At::Exact(line, col),
        },
    );
}

#[test]
fn unknown_field_is_a_parse_error() {
    let y = edit(BASE, "                methods: [GET]\n", "                method: [GET]\n");
    let expect =
        Expect { at: At::Line(pos(&y, "method: [GET]", "method").0), code: "IST0106", field: None, rule: "method" };
    let r = rejects("authz-unknown-field", &y, &expect);
    let (ran, _) = validate("authz-unknown-field-validate", &y);
    assert_eq!(ran.code, Some(2), "unparsable input makes validate exit 2\n{}", ran.dump());
    r.single();
}

#[test]
fn request_principals_are_a_warning_naming_the_field() {
    let y = edit(BASE, "                namespaces: [default]\n", "                requestPrincipals: [\"*\"]\n");
    let (line, col) = pos(&y, "requestPrincipals", "\"*\"");
    warned(
        "authz-request-principals",
        &y,
        &Want {
            code: "MSIM0001",
            resource: AP,
            field: "spec.rules[0].from[0].source.requestPrincipals",
            message: "meshsim simulates no RequestAuthentication, so requests carry no JWT: it never matches",
            at: At::Exact(line, col),
        },
    );
}
