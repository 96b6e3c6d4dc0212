//! The Istio resources of a scenario: written inline (`istio`) or in files
//! (`istio_files`), compiled against the registry into the snapshot the control plane
//! starts with, with the `suppress` rules (`istioctl analyze --suppress`) that drop
//! findings, and the EnvoyFilter local rate limits each pod's sidecar gets. The resource
//! model and its validation are `mesh::config`'s; changes during the run are `control`'s.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mesh::config::Finding;
use mesh::config::diag::code;
use mesh::config::istio::Resource;
use mesh::control::StoredResource;
use mesh::registry::Registry;
use mesh::snapshot::{self, Snapshot, Sourced};
use serde_saphyr::Spanned;

use super::builder::Builder;
use super::services::PlannedPod;

/// One `istioctl analyze --suppress` rule: findings with this code about a resource of this
/// kind whose `name.namespace` matches the pattern are dropped.
#[derive(Debug, PartialEq, Eq)]
pub struct Suppress {
    code: String,
    kind: String,
    name: String,
}

impl Suppress {
    fn parse(rule: &str) -> Option<Suppress> {
        let (code, resource) = rule.split_once('=')?;
        let (kind, name) = resource.trim().split_once(' ')?;
        let (code, kind, name) = (code.trim(), kind.trim(), name.trim());
        (!code.is_empty() && !kind.is_empty() && !name.is_empty() && !name.contains(' ')).then(|| Suppress {
            code: code.into(),
            kind: kind.into(),
            name: name.into(),
        })
    }

    /// Whether `f` is about a resource this rule names (findings record `Kind ns/name`).
    pub fn matches(&self, f: &Finding) -> bool {
        let Some((kind, ns_name)) = f.resource.as_deref().and_then(|r| r.split_once(' ')) else {
            return false;
        };
        let Some((ns, name)) = ns_name.split_once('/') else {
            return false;
        };
        glob(&self.code, f.code) && kind == self.kind && glob(&self.name, &format!("{name}.{ns}"))
    }
}

/// The store's view of `rules`: the error findings they name do not block a change.
pub fn suppressed(rules: &Arc<Vec<Suppress>>) -> mesh::control::store::Suppressed {
    let rules = rules.clone();
    Box::new(move |f| rules.iter().any(|r| r.matches(f)))
}

/// `pattern` with `*` matching any run of characters, against the whole of `text`.
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let mut parts: Vec<&str> = parts.collect();
    let Some(last) = parts.pop() else {
        return rest.is_empty();
    };
    for p in parts {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

impl Builder {
    /// The `suppress` rules, each checked for istioctl's `CODE=Kind name.namespace` form.
    pub(super) fn suppress_rules(&mut self, raw: &[Spanned<String>]) -> Vec<Suppress> {
        let mut out = Vec::new();
        for (i, r) in raw.iter().enumerate() {
            match Suppress::parse(&r.value) {
                Some(s) => out.push(s),
                None => self.err(r, &format!("suppress[{i}]"), format!(
                    "{:?} is not a suppression rule: write CODE=Kind name.namespace (istioctl analyze --suppress), e.g. \"IST0101=VirtualService reviews.default\"",
                    r.value
                )),
            }
        }
        out
    }

    /// The inline resources (with their plain documents from `generic`), then the files',
    /// compiled; the findings `suppress` names are dropped.
    pub(super) fn istio_resources(
        &mut self,
        inline: Vec<Resource>,
        files: &[Spanned<String>],
        generic: &serde_json::Value,
        base: &Path,
        registry: &Registry,
        suppress: &[Suppress],
    ) -> (Vec<StoredResource>, Snapshot) {
        let inline_docs = generic.get("istio").and_then(|v| v.as_array()).cloned().unwrap_or_default();
        if inline_docs.len() != inline.len() {
            self.err_in_file(
                code::SCHEMA,
                "istio",
                "the inline resources cannot be read as plain documents (keys must be strings)",
            );
        }
        let mut sources: Vec<StoredResource> = inline
            .into_iter()
            .zip(inline_docs)
            .map(|(resource, doc)| StoredResource { file: self.file.clone(), resource, doc })
            .collect();
        for f in files {
            if let Some(rs) = self.istio_file(base, f, "istio_files") {
                sources.extend(rs);
            }
        }
        let sourced: Vec<Sourced<'_>> =
            sources.iter().map(|r| Sourced { file: &r.file, resource: &r.resource }).collect();
        let (snapshot, cfg_findings) = snapshot::compile(registry, &sourced);
        self.findings.0.extend(cfg_findings.0.into_iter().filter(|f| !suppress.iter().any(|r| r.matches(f))));
        (sources, snapshot)
    }

    /// Reads and parses a file of Istio resources named relative to the scenario.
    pub(super) fn istio_file(&mut self, base: &Path, f: &Spanned<String>, field: &str) -> Option<Vec<StoredResource>> {
        let path: PathBuf = base.join(&f.value);
        let shown = path.display().to_string();
        match std::fs::read_to_string(&path) {
            Ok(text) => match mesh::control::store::parse(&shown, &text) {
                Ok(rs) => Some(rs),
                Err(e) => {
                    self.findings.push(*e);
                    None
                }
            },
            Err(e) => {
                self.not_found(f, field, format!("cannot read {shown}: {e}"));
                None
            }
        }
    }

    /// Checks the local rate limits EnvoyFilters select pods for in `snapshot` (the
    /// initial config, or the config a step leaves; the sidecars find theirs in the config
    /// pushed to them). meshsim runs one local rate limit per proxy: a pod selected by two,
    /// or by one and its service's `rate_limit`, is an error (reported once per filter
    /// over every call sharing `reported`).
    pub(super) fn envoy_filter_rate_limits(
        &mut self,
        snapshot: &mesh::snapshot::Snapshot,
        pods: &[PlannedPod],
        reported: &mut BTreeSet<String>,
    ) {
        for p in pods {
            let mut filters = snapshot.inbound_rate_limits_for(&p.namespace, &p.labels);
            let Some(first) = filters.next() else { continue };
            let clash = match (filters.next(), &p.bootstrap_rate_limit) {
                (Some(second), _) => Some((second, format!("{} also selects it", first.resource))),
                (None, Some(_)) => Some((first, format!("its service {:?} has a `rate_limit` too", p.service))),
                (None, None) => None,
            };
            if let Some((at, why)) = clash
                && reported.insert(at.resource.clone())
            {
                self.findings.push(Finding::error(
                    at.pos.clone(),
                    code::SCENARIO,
                    "spec.configPatches",
                    format!(
                        "{} selects pod {}, but {why}: meshsim runs one local rate limit per proxy",
                        at.resource, p.name
                    ),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use mesh::config::Pos;

    use super::*;

    fn finding(code: &'static str, resource: &str) -> Finding {
        let mut f = Finding::error(Pos::file("x.yaml"), code, "spec", "m");
        f.resource = Some(resource.to_string());
        f
    }

    #[test]
    fn glob_star_matches_any_run() {
        assert!(glob("reviews.default", "reviews.default"));
        assert!(!glob("reviews.default", "reviews.defaults"));
        assert!(glob("*.default", "reviews.default"));
        assert!(glob("rev*.*", "reviews.default"));
        assert!(glob("*", ""));
        assert!(!glob("a*b", "ab-c"));
        assert!(glob("a*b*b", "abb"));
        assert!(!glob("a*bb*b", "abb"));
    }

    #[test]
    fn suppress_rules_name_code_kind_and_name_dot_namespace() {
        let r = Suppress::parse("IST0101=VirtualService reviews.default").expect("valid");
        assert!(r.matches(&finding("IST0101", "VirtualService default/reviews")));
        assert!(!r.matches(&finding("IST0130", "VirtualService default/reviews")));
        assert!(!r.matches(&finding("IST0101", "DestinationRule default/reviews")));
        assert!(!r.matches(&finding("IST0101", "VirtualService prod/reviews")));
        let any_ns = Suppress::parse("IST0101=VirtualService reviews.*").expect("valid");
        assert!(any_ns.matches(&finding("IST0101", "VirtualService prod/reviews")));
        // A finding about no resource (a scenario field) is never suppressed.
        let mut f = finding("IST0101", "x");
        f.resource = None;
        assert!(!any_ns.matches(&f));
    }

    #[test]
    fn malformed_suppress_rules_are_refused() {
        for bad in ["IST0101", "IST0101=VirtualService", "=VirtualService a.b", "IST0101=VirtualService a b"] {
            assert_eq!(Suppress::parse(bad), None, "{bad}");
        }
    }
}
