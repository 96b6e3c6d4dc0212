//! Configuration: Istio's resource model (`istio`, with a VirtualService's match and retry
//! parts in `route_match` and `retry`, and EnvoyFilter's local rate limit in
//! `envoy_filter` and `ratelimit`), parsing from Kubernetes YAML, findings.
//!
//! This module owns reading config and saying what is wrong with it; it is a leaf that
//! imports nothing of the proxy. Turning valid config into what a proxy runs is
//! `crate::snapshot`'s job, and the proxy's runtime types compile from these.

pub mod diag;
pub mod duration;
pub mod envoy_filter;
pub mod istio;
pub mod ratelimit;
pub mod retry;
pub mod route_match;

pub use diag::{Finding, Findings, Level, Pos};
pub use duration::{IstioDuration, parse_duration};
pub use istio::Resource;

/// Parses a multi-document Kubernetes YAML text holding Istio resources.
/// Empty documents (a trailing `---`) are skipped.
pub fn parse_resources(file: &str, text: &str) -> Result<Vec<Resource>, Box<Finding>> {
    let docs: Vec<Option<Resource>> =
        serde_saphyr::from_multiple(text).map_err(|e| Box::new(diag::from_yaml_error(file, text, &e)))?;
    Ok(docs.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const VS: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 90
    - destination: {host: reviews, subset: v2}
      weight: 10
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
";

    #[test]
    fn parses_multi_document_istio_yaml() {
        let res = parse_resources("x.yaml", VS).unwrap();
        assert_eq!(res.len(), 2);
        match &res[0].spec {
            istio::Spec::VirtualService(vs) => {
                assert_eq!(vs.http[0].route[1].weight.as_ref().unwrap().value, 10);
                assert_eq!(vs.http[0].route[1].weight.as_ref().unwrap().referenced.line(), 12);
            }
            other => panic!("expected a VirtualService, got {other:?}"),
        }
        assert_eq!(res[1].namespace(), "default");
    }

    #[test]
    fn unknown_field_is_an_error_with_its_line() {
        let text = VS.replace("      weight: 90", "      wieght: 90");
        let err = parse_resources("x.yaml", &text).unwrap_err();
        assert_eq!(err.pos.line, 10, "{err}");
        assert!(err.message.contains("wieght"), "{err}");
    }

    #[test]
    fn unsupported_kind_is_an_error_at_its_line() {
        let text = "apiVersion: v1\nkind: Gateway\nmetadata: {name: x}\nspec: {}\n";
        let res = parse_resources("x.yaml", text).unwrap();
        let sourced = [crate::snapshot::Sourced { file: "x.yaml", resource: &res[0] }];
        let (_, findings) = crate::snapshot::compile(&crate::registry::Registry::default(), &sourced);
        let err = &findings.0[0];
        assert!(err.message.contains("\"Gateway\" is not supported"), "{err}");
        assert_eq!((err.pos.line, err.level), (2, Level::Error), "{err}");
    }

    #[test]
    fn wrong_type_is_an_error_with_its_line() {
        let text = VS.replace("weight: 90", "weight: ninety");
        let err = parse_resources("x.yaml", &text).unwrap_err();
        assert_eq!(err.pos.line, 10, "{err}");
    }

    #[test]
    fn errors_in_a_resource_s_own_keys_have_their_line() {
        let text = format!("{VS}---\napiVersion: networking.istio.io/v1\nmetdata: {{name: x}}\n");
        let err = parse_resources("x.yaml", &text).unwrap_err();
        assert_eq!((err.pos.line, err.pos.column), (23, 1), "{err}");
        assert!(err.message.contains("unknown field `metdata`"), "{err}");

        let text = "apiVersion: v1\nmetadata: {name: x}\nspec: {}\nkind: DestinationRule\n";
        let err = parse_resources("x.yaml", text).unwrap_err();
        assert_eq!((err.pos.line, err.pos.column), (3, 1), "{err}");
        assert!(err.message.contains("`kind` first"), "{err}");

        let text = "apiVersion: v1\nmetadata: {name: x}\n";
        let err = parse_resources("x.yaml", text).unwrap_err();
        assert_eq!((err.pos.line, err.pos.column), (1, 1), "{err}");
        assert!(err.message.contains("missing field `kind`"), "{err}");
    }

    #[test]
    fn malformed_yaml_is_an_error_not_a_panic() {
        let err = parse_resources("x.yaml", "kind: [unclosed\n").unwrap_err();
        assert!(err.pos.line >= 1, "{err}");
    }
}
