//! The `faults` section: what goes wrong during the run and when — app errors,
//! partitions, link latency, crashes, a CA outage, root rotation steps — checked against
//! the placement (pods, services, nodes). It owns [`Fault`] and [`FaultKind`]; making a
//! fault happen is `crate::world`'s (and `crate::net`'s, at the seam).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use mesh::config::IstioDuration;
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::builder::{Builder, Dur};
use super::services::Placement;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultDef {
    pub at: Dur,
    /// How long the fault lasts; absent = until the end.
    #[serde(rename = "for")]
    pub for_: Option<Dur>,
    pub app_errors: Option<Spanned<AppErrorsDef>>,
    pub partition: Option<Spanned<PartitionDef>>,
    pub link_latency: Option<Spanned<LinkLatencyDef>>,
    pub crash: Option<Spanned<CrashDef>>,
    /// istiod's CA does not answer (for the fault's window).
    pub ca_outage: Option<Spanned<CaOutageDef>>,
    /// A root rotation step: `add_root`, `sign_with_new_root`, `remove_old_roots`.
    pub ca_root: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaOutageDef {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppErrorsDef {
    pub pods: Vec<Spanned<String>>,
    #[serde(default = "status_500")]
    pub status: u16,
    #[serde(default = "million")]
    pub rate_ppm: u32,
}

fn status_500() -> u16 {
    500
}

fn million() -> u32 {
    1_000_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionDef {
    /// Pods or services on one side.
    pub from: Vec<Spanned<String>>,
    /// Pods or services on the other side.
    pub to: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkLatencyDef {
    /// Node names (`node-0`, …) on one side.
    pub from: Vec<Spanned<String>>,
    pub to: Vec<Spanned<String>>,
    pub latency: IstioDuration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrashDef {
    pub pods: Vec<Spanned<String>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Fault {
    pub at: Duration,
    /// End of the fault; `None` = lasts to the end of the run.
    pub until: Option<Duration>,
    pub kind: FaultKind,
}

#[derive(Clone, Debug, PartialEq)]
pub enum FaultKind {
    AppErrors {
        pods: Vec<usize>,
        status: u16,
        rate_ppm: u32,
    },
    Partition {
        from: Vec<usize>,
        to: Vec<usize>,
    },
    LinkLatency {
        from: Vec<usize>,
        to: Vec<usize>,
        latency: Duration,
    },
    Crash {
        pods: Vec<usize>,
    },
    /// istiod's CA closes every connection unanswered.
    CaOutage,
    /// One root rotation step (instant).
    CaRoot(RootStep),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootStep {
    /// A new root joins the trust bundle; the old one keeps signing.
    AddRoot,
    /// The new root signs; workloads are re-issued from it.
    SignWithNewRoot,
    /// Only the newest root stays in the trust bundle.
    RemoveOldRoots,
}

impl RootStep {
    pub const NAMES: [(&str, RootStep); 3] = [
        ("add_root", RootStep::AddRoot),
        ("sign_with_new_root", RootStep::SignWithNewRoot),
        ("remove_old_roots", RootStep::RemoveOldRoots),
    ];

    pub fn name(self) -> &'static str {
        Self::NAMES.iter().find(|(_, s)| *s == self).expect("every step is named").0
    }
}

/// The control plane's host: faults may name it (`crash`, `partition`).
pub const ISTIOD: &str = "istiod";

impl FaultDef {
    /// Each kind a fault may be, named as the scenario writes it, and whether this entry
    /// gives it.
    fn kinds(&self) -> [(&'static str, bool); 6] {
        [
            ("app_errors", self.app_errors.is_some()),
            ("partition", self.partition.is_some()),
            ("link_latency", self.link_latency.is_some()),
            ("crash", self.crash.is_some()),
            ("ca_outage", self.ca_outage.is_some()),
            ("ca_root", self.ca_root.is_some()),
        ]
    }
}

impl Builder {
    pub(super) fn faults(
        &mut self,
        defs: &[FaultDef],
        placed: &Placement,
        duration: Duration,
        run_end: Option<Duration>,
    ) -> Vec<Fault> {
        let mut faults = Vec::new();
        let mut root_steps = Vec::new();
        for (fi, fd) in defs.iter().enumerate() {
            let f = format!("faults[{fi}]");
            let at = fd.at.value.0;
            if run_end.is_some_and(|end| at >= end) {
                self.err(
                    &fd.at,
                    &format!("{f}.at"),
                    format!("fault starts at {at:?}, not before the run ends ({duration:?})"),
                );
            }
            let until = fd.for_.as_ref().map(|d| {
                if d.value.0.is_zero() {
                    self.err(
                        d,
                        &format!("{f}.for"),
                        "a fault must last more than 0s (omit `for` to last until the end)",
                    );
                }
                at + d.value.0
            });
            let mut built = self.fault_kinds(fd, fi, &f, placed, &mut root_steps);
            let kinds = fd.kinds();
            let names = kinds.map(|(name, _)| name).join(", ");
            // A kind given but invalid (reported) is not built, and still counts as given.
            match kinds.iter().filter(|(_, given)| *given).count() {
                1 => faults.extend(built.pop().map(|kind| Fault { at, until, kind })),
                0 => self.err(&fd.at, &f, format!("a fault needs one of {names}")),
                _ => self.err(&fd.at, &f, format!("a fault has exactly one of {names}: split it into several entries")),
            }
        }
        self.root_order(root_steps);
        faults
    }

    /// The kinds fault `fd` (entry `fi`, at field `f`) gives, each checked; a valid
    /// `ca_root` step also joins `root_steps`.
    fn fault_kinds<'a>(
        &mut self,
        fd: &'a FaultDef,
        fi: usize,
        f: &str,
        placed: &Placement,
        root_steps: &mut Vec<(Duration, RootStep, usize, &'a Spanned<String>)>,
    ) -> Vec<FaultKind> {
        let at = fd.at.value.0;
        let mut kinds = Vec::new();
        if let Some(a) = &fd.app_errors {
            let pods_ = self.pods(&a.value.pods, &placed.pod_index, &format!("{f}.app_errors.pods"));
            if !(100..=599).contains(&a.value.status) {
                self.err(
                    a,
                    &format!("{f}.app_errors.status"),
                    format!("HTTP status {} is not in range 100-599", a.value.status),
                );
            }
            if a.value.rate_ppm > 1_000_000 {
                self.err(a, &format!("{f}.app_errors.rate_ppm"), "rate_ppm must be at most 1000000");
            }
            kinds.push(FaultKind::AppErrors { pods: pods_, status: a.value.status, rate_ppm: a.value.rate_ppm });
        }
        if let Some(p) = &fd.partition {
            let from =
                self.members(&p.value.from, &placed.pod_index, &placed.service_pods, &format!("{f}.partition.from"));
            let to = self.members(&p.value.to, &placed.pod_index, &placed.service_pods, &format!("{f}.partition.to"));
            kinds.push(FaultKind::Partition { from, to });
        }
        if let Some(l) = &fd.link_latency {
            let from = self.nodes(&l.value.from, &placed.nodes, &format!("{f}.link_latency.from"));
            let to = self.nodes(&l.value.to, &placed.nodes, &format!("{f}.link_latency.to"));
            kinds.push(FaultKind::LinkLatency { from, to, latency: l.value.latency.0 });
        }
        if let Some(c) = &fd.crash {
            // istiod can crash too: its index comes after the pods'.
            let mut with_istiod = placed.pod_index.clone();
            with_istiod.insert(ISTIOD.to_string(), placed.pod_index.len());
            let pods_ = self.pods(&c.value.pods, &with_istiod, &format!("{f}.crash.pods"));
            kinds.push(FaultKind::Crash { pods: pods_ });
        }
        if fd.ca_outage.is_some() {
            kinds.push(FaultKind::CaOutage);
        }
        if let Some(r) = &fd.ca_root {
            match RootStep::NAMES.iter().find(|(n, _)| *n == r.value) {
                Some(&(_, step)) => {
                    kinds.push(FaultKind::CaRoot(step));
                    root_steps.push((at, step, fi, r));
                }
                None => self.err(
                    r,
                    &format!("{f}.ca_root"),
                    format!(
                        "{:?} is not a root rotation step: add_root, sign_with_new_root, remove_old_roots",
                        r.value
                    ),
                ),
            }
            if let Some(d) = &fd.for_ {
                self.err(d, &format!("{f}.for"), "a root rotation step is instant: remove `for`");
            }
        }
        kinds
    }

    /// Root rotation steps must come, in time, in an order the CA can follow.
    fn root_order(&mut self, mut root_steps: Vec<(Duration, RootStep, usize, &Spanned<String>)>) {
        root_steps.sort_by_key(|s| s.0);
        let mut added = false;
        for (_, step, fi, r) in root_steps {
            let field = format!("faults[{fi}].ca_root");
            match step {
                RootStep::AddRoot if added => {
                    self.err(r, &field, "add_root again before sign_with_new_root: one new root at a time")
                }
                RootStep::AddRoot => added = true,
                RootStep::SignWithNewRoot if !added => {
                    self.err(r, &field, "sign_with_new_root needs an add_root before it")
                }
                RootStep::SignWithNewRoot => added = false,
                RootStep::RemoveOldRoots => {}
            }
        }
    }

    fn members(
        &mut self,
        names: &[Spanned<String>],
        index: &BTreeMap<String, usize>,
        services: &BTreeMap<String, Vec<usize>>,
        field: &str,
    ) -> Vec<usize> {
        let mut out = BTreeSet::new();
        for n in names {
            if let Some(ps) = services.get(&n.value) {
                out.extend(ps.iter().copied());
            } else if n.value == ISTIOD {
                out.insert(index.len());
            } else if let Some(&i) = index.get(&n.value) {
                out.insert(i);
            } else {
                self.not_found(n, field, format!("{:?} is neither a service nor a pod of the scenario", n.value));
            }
        }
        out.into_iter().collect()
    }

    fn nodes(&mut self, names: &[Spanned<String>], nodes: &[String], field: &str) -> Vec<usize> {
        let mut out = Vec::new();
        for n in names {
            match nodes.iter().position(|x| *x == n.value) {
                Some(i) => out.push(i),
                None => self.not_found(
                    n,
                    field,
                    format!("node {:?} does not exist (nodes are node-0 … node-{})", n.value, nodes.len() - 1),
                ),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{BASE, errors, plan};
    use super::*;

    #[test]
    fn a_fault_lasts_for_its_window_and_names_pods_by_index() {
        let p = plan(&format!("{BASE}faults:\n  - {{at: 2s, for: 3s, app_errors: {{pods: [backend-v1-2]}}}}\n"));
        assert_eq!(
            p.faults,
            [Fault {
                at: Duration::from_secs(2),
                until: Some(Duration::from_secs(5)),
                kind: FaultKind::AppErrors { pods: vec![3], status: 500, rate_ppm: 1_000_000 },
            }]
        );
    }

    #[test]
    fn istiod_can_crash_as_the_index_after_the_pods() {
        let p = plan(&format!("{BASE}faults:\n  - {{at: 1s, crash: {{pods: [istiod]}}}}\n"));
        assert_eq!(p.faults[0].kind, FaultKind::Crash { pods: vec![4] });
        assert_eq!(p.faults[0].until, None);
    }

    #[test]
    fn a_fault_with_two_kinds_is_refused_naming_every_kind() {
        assert_eq!(
            errors(&format!("{BASE}faults:\n  - {{at: 1s, ca_outage: {{}}, crash: {{pods: [backend-v1-0]}}}}\n")),
            "t.yaml:17:10: error [MSIM0002] faults[0]: a fault has exactly one of app_errors, partition, link_latency, crash, ca_outage, ca_root: split it into several entries\n"
        );
    }

    #[test]
    fn an_invalid_root_step_is_reported_once() {
        assert_eq!(
            errors(&format!("{BASE}faults:\n  - {{at: 1s, ca_root: rotate}}\n")),
            "t.yaml:17:23: error [MSIM0002] faults[0].ca_root: \"rotate\" is not a root rotation step: add_root, sign_with_new_root, remove_old_roots\n"
        );
    }

    #[test]
    fn root_steps_must_follow_the_rotation_order_in_time() {
        let text =
            format!("{BASE}faults:\n  - {{at: 5s, ca_root: add_root}}\n  - {{at: 3s, ca_root: sign_with_new_root}}\n");
        assert!(
            errors(&text).contains("faults[1].ca_root: sign_with_new_root needs an add_root before it"),
            "{}",
            errors(&text)
        );
        let ordered = text.replace("at: 3s", "at: 7s");
        assert_eq!(plan(&ordered).faults[1].kind, FaultKind::CaRoot(RootStep::SignWithNewRoot));
    }
}
