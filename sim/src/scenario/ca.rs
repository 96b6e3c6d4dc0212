//! The `ca` section: the lifetime workload certificates are asked for and the CA's
//! limit. It owns [`CaPlan`]; issuing is `mesh::ca`'s, CA faults are `faults`'.

use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::builder::{Builder, Dur};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaDef {
    /// The lifetime agents ask for (Istio's `SECRET_TTL`); default 24h.
    pub workload_cert_ttl: Option<Dur>,
    /// The CA's limit (Istio's `MAX_WORKLOAD_CERT_TTL`); default 90 days (2160h).
    pub max_workload_cert_ttl: Option<Dur>,
}

/// The CA settings of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct CaPlan {
    /// What agents ask for; `None` = the CA's default (24h).
    pub workload_cert_ttl: Option<Duration>,
    pub max_workload_cert_ttl: Duration,
}

impl Builder {
    pub(super) fn ca(&mut self, def: Option<&Spanned<CaDef>>) -> CaPlan {
        let ca_def = def.map(|c| &c.value);
        let max_workload_cert_ttl = ca_def
            .and_then(|c| c.max_workload_cert_ttl.as_ref())
            .map(|d| d.value.0)
            .unwrap_or(mesh::ca::authority::MAX_TTL);
        let workload_cert_ttl = ca_def.and_then(|c| c.workload_cert_ttl.as_ref()).map(|d| d.value.0);
        if let Some(c) = ca_def {
            if let Some(t) = &c.workload_cert_ttl {
                if t.value.0 < Duration::from_secs(60) {
                    self.err(t, "ca.workload_cert_ttl", "a workload certificate must live at least 1m");
                } else if t.value.0 > max_workload_cert_ttl {
                    self.err(
                        t,
                        "ca.workload_cert_ttl",
                        format!(
                            "workload_cert_ttl {} is greater than max_workload_cert_ttl {}: the CA would refuse every request",
                            mesh::ca::format_duration(t.value.0),
                            mesh::ca::format_duration(max_workload_cert_ttl)
                        ),
                    );
                }
            }
            if let Some(m) = &c.max_workload_cert_ttl
                && m.value.0 < Duration::from_secs(60)
            {
                self.err(m, "ca.max_workload_cert_ttl", "max_workload_cert_ttl must be at least 1m");
            }
        }
        CaPlan { workload_cert_ttl, max_workload_cert_ttl }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{BASE, errors, plan};
    use super::*;

    #[test]
    fn without_a_ca_section_agents_ask_the_default_and_the_limit_is_90_days() {
        assert_eq!(
            plan(BASE).ca,
            CaPlan { workload_cert_ttl: None, max_workload_cert_ttl: Duration::from_secs(2160 * 3600) }
        );
    }

    #[test]
    fn a_ttl_above_the_limit_is_refused() {
        assert_eq!(
            errors(&format!("{BASE}ca: {{workload_cert_ttl: 2h, max_workload_cert_ttl: 1h}}\n")),
            "t.yaml:16:25: error [MSIM0002] ca.workload_cert_ttl: workload_cert_ttl 2h0m0s is greater than max_workload_cert_ttl 1h0m0s: the CA would refuse every request\n"
        );
    }
}
