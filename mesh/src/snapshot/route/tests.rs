use std::time::Duration;

use crate::config::Level;
use crate::proxy::retry::RetryPolicy;
use crate::snapshot::tests::{codes, compile_yaml, fqdn};
use crate::snapshot::{Action, Route, Snapshot, cluster_name};

const VS: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: b}\n";
const SUBSETS: &str = "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: b}\nspec:\n  host: b\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n";

fn routes(snap: &Snapshot) -> &[Route] {
    &snap.routes[&fqdn("b")]
}

/// `(cluster, weight)` of a forwarding route.
fn weights(r: &Route) -> Vec<(String, u32)> {
    match &r.action {
        Action::Forward(w) => w.iter().map(|c| (c.cluster.clone(), c.weight)).collect(),
        other => panic!("not a forward: {other:?}"),
    }
}

#[test]
fn without_a_virtual_service_one_default_route_takes_everything_with_default_retries() {
    let (snap, _) = compile_yaml("");
    let [r] = routes(&snap) else { panic!("one route") };
    assert_eq!(r.name, "default");
    assert!(r.matches.is_empty() && r.timeout.is_none() && r.fault.is_none() && r.mirror.is_none());
    assert_eq!(weights(r), [(cluster_name(80, None, &fqdn("b")), 1)]);
    assert_eq!(r.retry, Some(RetryPolicy::default()));
}

#[test]
fn weighted_destinations_keep_their_weights_and_weight_zero_drops() {
    let (snap, findings) = compile_yaml(&format!(
        "{VS}spec:\n  hosts: [b]\n  http:\n  - route:\n    - {{destination: {{host: b, subset: v1}}, weight: 90}}\n    - {{destination: {{host: b, subset: v2}}, weight: 10}}\n    - {{destination: {{host: a}}, weight: 0}}\n{SUBSETS}"
    ));
    assert!(codes(&findings, Level::Error).is_empty(), "{:?}", findings.0);
    let b = fqdn("b");
    assert_eq!(
        weights(&routes(&snap)[0]),
        [(cluster_name(80, Some("v1"), &b), 90), (cluster_name(80, Some("v2"), &b), 10)]
    );
    assert_eq!(routes(&snap)[0].name, "default/b/0");
}

#[test]
fn a_lone_destination_gets_all_traffic_whatever_its_weight() {
    let (snap, _) = compile_yaml(&format!(
        "{VS}spec:\n  hosts: [b]\n  http:\n  - route:\n    - {{destination: {{host: a}}, weight: 5}}\n"
    ));
    assert_eq!(weights(&routes(&snap)[0]), [(cluster_name(80, None, &fqdn("a")), 1)]);
}

#[test]
fn timeout_retries_and_redirects_compile_to_values() {
    let (snap, findings) = compile_yaml(&format!(
        "{VS}spec:
  hosts: [b]
  http:
  - name: old
    match: [{{uri: {{prefix: /old}}}}]
    redirect: {{uri: /new, redirectCode: 302}}
  - timeout: 3s
    retries: {{attempts: 0}}
    route:
    - destination: {{host: b}}
"
    ));
    assert!(findings.0.is_empty(), "{:?}", findings.0);
    let [old, rest] = routes(&snap) else { panic!("two routes") };
    assert_eq!((old.name.as_str(), old.matches.len()), ("old", 1));
    assert!(matches!(&old.action, Action::Redirect(r) if r.code == 302 && r.uri.as_deref() == Some("/new")));
    assert_eq!((rest.timeout, &rest.retry), (Some(Duration::from_secs(3)), &None));
}

#[test]
fn a_route_with_both_route_and_redirect_is_an_error() {
    let (_, findings) = compile_yaml(&format!(
        "{VS}spec:\n  hosts: [b]\n  http:\n  - redirect: {{uri: /x}}\n    route:\n    - destination: {{host: b}}\n"
    ));
    let errors: Vec<&str> = findings.0.iter().filter(|f| f.level == Level::Error).map(|f| f.message.as_str()).collect();
    assert_eq!(errors, ["HTTP route cannot contain both route and redirect"]);
}

#[test]
fn a_rule_after_a_catch_all_is_ist0130() {
    let (_, findings) = compile_yaml(&format!(
        "{VS}spec:\n  hosts: [b]\n  http:\n  - route: [{{destination: {{host: b}}}}]\n  - route: [{{destination: {{host: a}}}}]\n"
    ));
    let f = findings.0.iter().find(|f| f.code == "IST0130").expect("IST0130");
    assert_eq!((f.field.as_str(), f.resource.as_deref()), ("spec.http[1]", Some("VirtualService default/b")));
}

#[test]
fn an_unknown_subset_is_not_found() {
    let (_, findings) = compile_yaml(&format!(
        "{VS}spec:\n  hosts: [b]\n  http:\n  - route: [{{destination: {{host: b, subset: v9}}}}]\n"
    ));
    let f = findings.0.iter().find(|f| f.level == Level::Error).expect("an error");
    assert_eq!(f.field, "spec.http[0].route[0].destination.subset");
    assert_eq!(f.message, "Referenced host+subset in destinationrule not found: \"b+v9\"");
}

#[test]
fn a_mirror_without_a_percentage_mirrors_everything() {
    let (snap, _) = compile_yaml(&format!(
        "{VS}spec:\n  hosts: [b]\n  http:\n  - route: [{{destination: {{host: b}}}}]\n    mirror: {{host: a}}\n"
    ));
    let m = routes(&snap)[0].mirror.as_ref().expect("a mirror");
    assert_eq!((m.cluster.clone(), m.per_million), (cluster_name(80, None, &fqdn("a")), 1_000_000));
}

#[test]
fn a_virtual_service_bound_only_to_gateways_leaves_the_default_route() {
    let (snap, findings) = compile_yaml(&format!(
        "{VS}spec:\n  hosts: [b]\n  gateways: [istio-system/ingress]\n  http:\n  - route: [{{destination: {{host: a}}}}]\n"
    ));
    assert_eq!(routes(&snap)[0].name, "default");
    assert_eq!(codes(&findings, Level::Warning).len(), 1);
}
