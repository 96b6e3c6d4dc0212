//! Control steps: the `config` section (resources applied or deleted during the run,
//! deployments scaled), each checked against the config the steps before it leave, and
//! the `control_plane` settings (readiness delay). It owns [`ConfigStep`] and
//! [`ConfigChange`]; applying them at their time is `crate::world`'s.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mesh::config::Pos;
use mesh::config::istio::Resource;
use mesh::control::StoredResource;
use mesh::control::store::{ResourceKey, Store};
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::builder::{Builder, Dur};
use super::istio::{Suppress, suppressed};
use super::services::Placement;
use super::workloads::Workload;

/// How the simulated Kubernetes and control plane behave.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlPlaneDef {
    /// How long after a pod goes down or comes back its endpoint is withdrawn or
    /// published (kubelet + EndpointSlice controller).
    pub readiness_delay: Option<Dur>,
}

/// One config change: exactly one of `apply`, `apply_file`, `delete`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigStepDef {
    pub at: Dur,
    /// Resources to create or replace, written inline.
    pub apply: Option<Vec<Resource>>,
    /// A file of resources to create or replace, relative to the scenario.
    pub apply_file: Option<Spanned<String>>,
    /// Resources to delete.
    pub delete: Option<Vec<DeleteDef>>,
    /// A pod group (`kubectl scale deployment/<service>-<group>`) to a replica count.
    pub scale: Option<Spanned<ScaleDef>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleDef {
    /// `<service>-<group>`: the pods `<service>-<group>-<index>`.
    pub deployment: Spanned<String>,
    pub replicas: Spanned<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteDef {
    pub kind: Spanned<String>,
    pub name: String,
    pub namespace: Option<String>,
}

/// A change to the control plane's store.
#[derive(Clone, Debug)]
pub enum ConfigChange {
    Apply(Vec<StoredResource>),
    Delete(Vec<(ResourceKey, Pos)>),
    /// A deployment scaled to `replicas`: the pods (indices into `Plan::pods`) to start and
    /// to stop, worked out from the steps before it.
    Scale {
        deployment: String,
        replicas: u32,
        start: Vec<usize>,
        stop: Vec<usize>,
    },
}

#[derive(Clone, Debug)]
pub struct ConfigStep {
    pub at: Duration,
    pub change: ConfigChange,
}

/// Istio's default: how long the registry takes to learn that a pod went down or came back.
pub(super) const DEFAULT_READINESS_DELAY: Duration = Duration::from_secs(1);

/// How long a pod removed by a scale-down keeps running after its endpoint is withdrawn
/// (Istio's `terminationDrainDuration` default): callers stop sending to it first.
pub const TERMINATION_DRAIN: Duration = Duration::from_secs(5);

/// The most replicas any scale step asks of each deployment: its pods are planned up front.
pub(super) fn scaled_max(defs: &[ConfigStepDef]) -> BTreeMap<&str, u32> {
    let mut scaled_max: BTreeMap<&str, u32> = BTreeMap::new();
    for sc in defs.iter().filter_map(|c| c.scale.as_ref()) {
        let m = scaled_max.entry(sc.value.deployment.value.as_str()).or_default();
        *m = (*m).max(sc.value.replicas.value);
    }
    scaled_max
}

impl Builder {
    /// The config steps, checked: each applies to the config as the steps before it left
    /// it, and must validate there (as the control plane will check it during the run),
    /// and the local rate limits its EnvoyFilters select pods for must be one per pod
    /// (`reported`: the filters already reported, see `envoy_filter_rate_limits`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn config_steps(
        &mut self,
        defs: &[ConfigStepDef],
        generic: &serde_json::Value,
        base: &Path,
        placed: &Placement,
        initial: &[StoredResource],
        suppress: &Arc<Vec<Suppress>>,
        run_end: Option<Duration>,
        reported: &mut BTreeSet<String>,
    ) -> Vec<ConfigStep> {
        let mut steps = Vec::new();
        for (i, d) in defs.iter().enumerate() {
            let f = format!("config[{i}]");
            let at = d.at.value.0;
            if run_end.is_some_and(|end| at >= end) {
                self.err(&d.at, &format!("{f}.at"), "a config step must happen before the run ends");
            }
            let mut changes = Vec::new();
            if let Some(rs) = &d.apply {
                let docs = generic
                    .get("config")
                    .and_then(|c| c.get(i))
                    .and_then(|c| c.get("apply"))
                    .and_then(|a| a.as_array())
                    .cloned()
                    .unwrap_or_default();
                if docs.len() != rs.len() {
                    self.err(&d.at, &format!("{f}.apply"), "the resources cannot be read as plain documents");
                }
                let stored = rs
                    .iter()
                    .cloned()
                    .zip(docs)
                    .map(|(resource, doc)| StoredResource { file: self.file.clone(), resource, doc })
                    .collect();
                changes.push(ConfigChange::Apply(stored));
            }
            if let Some(file) = &d.apply_file
                && let Some(rs) = self.istio_file(base, file, &format!("{f}.apply_file"))
            {
                changes.push(ConfigChange::Apply(rs));
            }
            if let Some(dels) = &d.delete {
                let keys = dels
                    .iter()
                    .map(|x| {
                        let key = ResourceKey {
                            kind: x.kind.value.clone(),
                            namespace: x.namespace.clone().unwrap_or_else(|| "default".into()),
                            name: x.name.clone(),
                        };
                        (key, Pos::of(&self.file, &x.kind))
                    })
                    .collect();
                changes.push(ConfigChange::Delete(keys));
            }
            if let Some(sc) = &d.scale {
                let (deployment, replicas) = (sc.value.deployment.value.clone(), sc.value.replicas.value);
                changes.push(ConfigChange::Scale { deployment, replicas, start: Vec::new(), stop: Vec::new() });
            }
            let given = [d.apply.is_some(), d.apply_file.is_some(), d.delete.is_some(), d.scale.is_some()];
            if given.iter().filter(|&&x| x).count() != 1 {
                self.err(&d.at, &f, "a config step has exactly one of apply, apply_file, delete, scale");
            }
            if let Some(change) = changes.pop() {
                steps.push(ConfigStep { at, change });
            }
        }
        steps.sort_by_key(|s| s.at);
        // Replay the steps on a store holding the initial config (when that is valid).
        if let Ok(store) = Store::new(placed.registry.clone(), initial.to_vec(), BTreeMap::new(), suppressed(suppress))
        {
            for s in &steps {
                let result = match &s.change {
                    ConfigChange::Apply(rs) => store.apply(rs.clone()),
                    ConfigChange::Delete(keys) => store.delete(keys),
                    ConfigChange::Scale { .. } => continue,
                };
                match result {
                    Ok(_) => self.envoy_filter_rate_limits(&store.compiled(), &placed.pods, reported),
                    Err(findings) => {
                        self.findings.0.extend(findings.0.into_iter().filter(|f| {
                            f.level == mesh::config::Level::Error && !suppress.iter().any(|r| r.matches(f))
                        }))
                    }
                }
            }
        }
        steps
    }

    /// Checks each `scale` step and works out, in time order, which pods it starts (the
    /// next indices up) and stops (the highest running ones, as a StatefulSet would).
    pub(super) fn plan_scaling(
        &mut self,
        steps: &mut [ConfigStep],
        defs: &[ConfigStepDef],
        deployments: &BTreeMap<String, (Vec<usize>, u32)>,
        workloads: &[Workload],
    ) {
        for (i, d) in defs.iter().enumerate() {
            let Some(sc) = &d.scale else { continue };
            let f = format!("config[{i}].scale");
            let name = &sc.value.deployment;
            match deployments.get(&name.value) {
                None => {
                    let known: Vec<&str> = deployments.keys().map(String::as_str).collect();
                    self.err(
                        name,
                        &format!("{f}.deployment"),
                        format!(
                            "no deployment {:?} (pod groups are <service>-<group>: {})",
                            name.value,
                            known.join(", ")
                        ),
                    );
                }
                Some((pods, _)) if workloads.iter().any(|w| w.sources.iter().any(|p| pods.contains(p))) => self.err(
                    name,
                    &format!("{f}.deployment"),
                    format!(
                        "{:?} sends a workload's requests: only deployments that no workload sends from can scale",
                        name.value
                    ),
                ),
                Some(_) => {}
            }
            if sc.value.replicas.value > 100 {
                self.err(&sc.value.replicas, &format!("{f}.replicas"), "replicas must be at most 100");
            }
        }
        let mut running: BTreeMap<&str, u32> = deployments.iter().map(|(k, (_, r))| (k.as_str(), *r)).collect();
        for step in steps.iter_mut() {
            let ConfigChange::Scale { deployment, replicas, start, stop } = &mut step.change else { continue };
            let (Some((pods, _)), Some(now)) =
                (deployments.get(deployment.as_str()), running.get_mut(deployment.as_str()))
            else {
                continue;
            };
            let (from, to) = (*now as usize, (*replicas as usize).min(pods.len()));
            if to > from {
                start.extend(&pods[from..to]);
            } else {
                stop.extend(pods[to..from].iter().rev());
            }
            *now = to as u32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{BASE, errors, plan};
    use super::*;

    #[test]
    fn scaling_down_stops_the_highest_pods_and_scaling_up_restarts_them() {
        let text = format!(
            "{BASE}config:\n  - {{at: 4s, scale: {{deployment: backend-v1, replicas: 5}}}}\n  - {{at: 2s, scale: {{deployment: backend-v1, replicas: 1}}}}\n"
        );
        let p = plan(&text);
        assert_eq!(p.pods.len(), 6, "the most replicas asked for are planned up front");
        assert!(!p.pods[4].running_at_start && !p.pods[5].running_at_start);
        let scaled: Vec<(Duration, Vec<usize>, Vec<usize>)> = p
            .config_steps
            .iter()
            .map(|s| match &s.change {
                ConfigChange::Scale { start, stop, .. } => (s.at, start.clone(), stop.clone()),
                other => panic!("not a scale step: {other:?}"),
            })
            .collect();
        assert_eq!(
            scaled,
            [(Duration::from_secs(2), vec![], vec![3, 2]), (Duration::from_secs(4), vec![2, 3, 4, 5], vec![])]
        );
    }

    #[test]
    fn a_deployment_that_sends_a_workload_cannot_scale() {
        assert_eq!(
            errors(&format!("{BASE}config:\n  - {{at: 1s, scale: {{deployment: frontend-v1, replicas: 2}}}}\n")),
            "t.yaml:17:34: error [MSIM0002] config[0].scale.deployment: \"frontend-v1\" sends a workload's requests: only deployments that no workload sends from can scale\n"
        );
    }

    #[test]
    fn a_step_gives_exactly_one_change() {
        assert_eq!(
            errors(&format!("{BASE}config:\n  - {{at: 1s}}\n")),
            "t.yaml:17:10: error [MSIM0002] config[0]: a config step has exactly one of apply, apply_file, delete, scale\n"
        );
    }
    #[test]
    fn a_step_s_envoy_filter_rate_limit_on_a_pod_that_has_one_is_an_error() {
        let with_shorthand = BASE.replace(
            "        replicas: 3\n",
            "        replicas: 3\n    rate_limit: {max_tokens: 4, fill_interval: 1s}\n",
        );
        let step = "\
config:
  - at: 1s
    apply:
      - apiVersion: networking.istio.io/v1alpha3
        kind: EnvoyFilter
        metadata: {name: rl, namespace: default}
        spec:
          workloadSelector: {labels: {app: backend}}
          configPatches:
            - applyTo: HTTP_FILTER
              match: {context: SIDECAR_INBOUND}
              patch:
                operation: INSERT_BEFORE
                value:
                  name: envoy.filters.http.local_ratelimit
                  typed_config:
                    \"@type\": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
                    stat_prefix: rl
                    token_bucket: {max_tokens: 2, fill_interval: 1s}
";
        let e = errors(&format!("{with_shorthand}{step}"));
        assert!(
            e.contains(
                "error [MSIM0002] spec.configPatches: EnvoyFilter default/rl selects pod backend-v1-0, but its service \"backend\" has a `rate_limit` too"
            ),
            "{e}"
        );
        assert_eq!(e.lines().count(), 1, "reported once for the filter: {e}");
        // Without the service's own limit the step loads: the sidecars get it when pushed.
        let p = plan(&format!("{BASE}{step}"));
        assert!(p.pods.iter().all(|p| p.bootstrap_rate_limit.is_none()), "nothing is frozen into the plan");
    }
}
