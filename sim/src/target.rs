//! Targets — where a scenario runs — and what real time does to its expectations.
//!
//! `sim` (the default) runs the scenario in the deterministic simulator; `real` runs the
//! same mesh on loopback sockets in real time ([`crate::real`]); `envoy` (real Envoy
//! processes as the sidecars) is not built yet and is refused with that reason.
//!
//! In the simulator a fault fires at its tick and every expectation is checked as
//! written. In real time the machine's scheduling moves every instant by up to a few
//! milliseconds (more on a loaded two-core machine), so on `real` each expectation is
//! checked with a stated slack ([`slacken`]), never silently passed:
//! - instants of events (`ejection.at`, `ejection.lasting`, `events` and `certs`
//!   windows, `converged.within`) are widened by [`REAL_TIME_SLACK`] on each side;
//! - windows of requests (`success_rate`, `share`, `latency`, `latency_overhead`) are
//!   narrowed by [`REAL_TIME_SLACK`] at each end, so requests sent just as a fault
//!   starts or ends are not judged; a `count` window is widened for its `at_least` bound
//!   and narrowed for its `at_most` bound (it becomes two checks when it has both);
//! - latency bounds are loosened by [`REAL_LATENCY_SLACK`] (`at_most` up, `at_least`
//!   down): real proxies, the kernel and the scheduler spend time the simulator's cost
//!   model only approximates.
//!
//! The check's description in the summary and the report shows the slackened values.

use std::time::Duration;

use crate::scenario::{Expectation, LatencyBound, Window};

/// Where a scenario runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Target {
    #[default]
    Sim,
    Real,
    Envoy,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Sim => "sim",
            Target::Real => "real",
            Target::Envoy => "envoy",
        }
    }
}

impl std::str::FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Target, String> {
        match s {
            "sim" => Ok(Target::Sim),
            "real" => Ok(Target::Real),
            "envoy" => Ok(Target::Envoy),
            other => Err(format!("unknown target {other:?}: expected sim, real or envoy")),
        }
    }
}

/// Why `target` cannot check expectation `e`, when it cannot. The envoy target's
/// sidecars are plain Envoys: Istio's standard metrics come from Istio's stats
/// extension, which they lack; meshsim does not configure their tracing; their
/// certificates arrive over SDS, not from meshsim's certificate agent, and a refused
/// TLS handshake is not an event Envoy logs.
pub fn not_checkable(e: &Expectation, target: Target) -> Option<&'static str> {
    if target != Target::Envoy {
        return None;
    }
    match e {
        Expectation::Metric(_) => {
            Some("Istio's standard metrics need Istio's stats extension, which a plain Envoy lacks")
        }
        Expectation::TracesComplete => Some("meshsim does not configure Envoy's tracing"),
        Expectation::Certs { .. } => {
            Some("certificate events come from meshsim's certificate agent; Envoy gets its certificates over SDS")
        }
        Expectation::Events { kind, .. } if kind.starts_with("cert_") || kind == "ca_unreachable" => {
            Some("certificate events come from meshsim's certificate agent; Envoy gets its certificates over SDS")
        }
        Expectation::Count { filter, .. }
            if filter.upstream_header.as_ref().is_some_and(|h| {
                ["traceparent", "tracestate", "b3"].contains(&h.name.as_str()) || h.name.starts_with("x-b3-")
            }) =>
        {
            Some("trace headers come from the sidecars' tracing, which meshsim does not configure in Envoy")
        }
        Expectation::Events { kind, .. } if kind == "connection_refused" => {
            Some("a refused TLS handshake is not an event a plain Envoy logs")
        }
        _ => None,
    }
}

/// How far real time moves an instant (see the module doc).
pub const REAL_TIME_SLACK: Duration = Duration::from_millis(100);
/// How far real time moves a latency percentile (see the module doc).
pub const REAL_LATENCY_SLACK: Duration = Duration::from_millis(10);

/// `expectations` as `target` checks them: unchanged in the simulator, with the stated
/// slack in real time.
pub fn slacken(expectations: &[Expectation], target: Target) -> Vec<Expectation> {
    if target == Target::Sim {
        return expectations.to_vec();
    }
    let t = REAL_TIME_SLACK;
    let widen = |(a, b): (Duration, Duration)| (a.saturating_sub(t), b + t);
    let widen_window = |w: &Window| match w {
        Window::All => Window::All,
        Window::Between(a, b) => Window::Between(a.saturating_sub(t), *b + t),
    };
    let narrow_window = |w: &Window| match w {
        Window::Between(a, b) if *b > *a + 2 * t => Window::Between(*a + t, *b - t),
        other => other.clone(),
    };
    let loosen = |b: &LatencyBound| LatencyBound {
        workload: b.workload,
        window: narrow_window(&b.window),
        percentile: b.percentile,
        at_most: b.at_most.map(|d| d + REAL_LATENCY_SLACK),
        at_least: b.at_least.map(|d| d.saturating_sub(REAL_LATENCY_SLACK)),
    };
    let mut out = Vec::with_capacity(expectations.len());
    for e in expectations {
        match e {
            Expectation::Ejection { pod, by, nth, at, lasting } => out.push(Expectation::Ejection {
                pod: pod.clone(),
                by: by.clone(),
                nth: *nth,
                at: widen(*at),
                lasting: lasting.map(widen),
            }),
            Expectation::Events { kind, window, detail, at_least, at_most } => out.push(Expectation::Events {
                kind: kind.clone(),
                window: widen_window(window),
                detail: detail.clone(),
                at_least: *at_least,
                at_most: *at_most,
            }),
            Expectation::Certs { pods, event, window, at_least, at_most } => out.push(Expectation::Certs {
                pods: pods.clone(),
                event: event.clone(),
                window: widen_window(window),
                at_least: *at_least,
                at_most: *at_most,
            }),
            Expectation::Converged { after, within } => {
                out.push(Expectation::Converged { after: *after, within: *within + t })
            }
            Expectation::Share { workload, pods, what, window, expected, tolerance } => out.push(Expectation::Share {
                workload: *workload,
                pods: pods.clone(),
                what: what.clone(),
                window: narrow_window(window),
                expected: *expected,
                tolerance: *tolerance,
            }),
            Expectation::SuccessRate { workload, window, at_least, at_most } => out.push(Expectation::SuccessRate {
                workload: *workload,
                window: narrow_window(window),
                at_least: *at_least,
                at_most: *at_most,
            }),
            Expectation::Latency(b) => out.push(Expectation::Latency(loosen(b))),
            Expectation::LatencyOverhead(b) => out.push(Expectation::LatencyOverhead(loosen(b))),
            Expectation::Count { workload, window, filter, at_least, at_most } => {
                if at_least.is_some() {
                    out.push(Expectation::Count {
                        workload: *workload,
                        window: widen_window(window),
                        filter: filter.clone(),
                        at_least: *at_least,
                        at_most: None,
                    });
                }
                if at_most.is_some() {
                    out.push(Expectation::Count {
                        workload: *workload,
                        window: narrow_window(window),
                        filter: filter.clone(),
                        at_least: None,
                        at_most: *at_most,
                    });
                }
            }
            Expectation::NeverEjected { .. } | Expectation::Metric(_) | Expectation::TracesComplete => {
                out.push(e.clone())
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_simulator_checks_expectations_as_written() {
        let e = vec![Expectation::SuccessRate {
            workload: 0,
            window: Window::Between(ms(10_000), ms(20_000)),
            at_least: Some(0.99),
            at_most: None,
        }];
        assert_eq!(slacken(&e, Target::Sim), e);
    }

    #[test]
    fn real_time_widens_event_instants_and_narrows_request_windows() {
        let e = vec![
            Expectation::Ejection { pod: "p".into(), by: None, nth: 1, at: (ms(10_000), ms(11_000)), lasting: None },
            Expectation::SuccessRate {
                workload: 0,
                window: Window::Between(ms(10_000), ms(20_000)),
                at_least: Some(0.99),
                at_most: None,
            },
            Expectation::Latency(LatencyBound {
                workload: 0,
                window: Window::All,
                percentile: 99.0,
                at_most: Some(ms(5)),
                at_least: Some(ms(1)),
            }),
        ];
        let s = slacken(&e, Target::Real);
        let Expectation::Ejection { at, .. } = &s[0] else { panic!("{s:?}") };
        assert_eq!(*at, (ms(9_900), ms(11_100)));
        let Expectation::SuccessRate { window, .. } = &s[1] else { panic!("{s:?}") };
        assert_eq!(*window, Window::Between(ms(10_100), ms(19_900)));
        let Expectation::Latency(b) = &s[2] else { panic!("{s:?}") };
        assert_eq!((b.at_most, b.at_least), (Some(ms(15)), Some(Duration::ZERO)));
    }

    #[test]
    fn a_count_with_both_bounds_becomes_two_checks_each_slackened_its_own_way() {
        let e = vec![Expectation::Count {
            workload: 0,
            window: Window::Between(ms(1_000), ms(2_000)),
            filter: Box::default(),
            at_least: Some(5),
            at_most: Some(9),
        }];
        let s = slacken(&e, Target::Real);
        assert_eq!(s.len(), 2);
        let Expectation::Count { window: w1, at_least: Some(5), at_most: None, .. } = &s[0] else { panic!("{s:?}") };
        let Expectation::Count { window: w2, at_least: None, at_most: Some(9), .. } = &s[1] else { panic!("{s:?}") };
        assert_eq!(*w1, Window::Between(ms(900), ms(2_100)));
        assert_eq!(*w2, Window::Between(ms(1_100), ms(1_900)));
    }

    #[test]
    fn targets_parse_by_name() {
        assert_eq!("real".parse::<Target>(), Ok(Target::Real));
        assert!("kubernetes".parse::<Target>().unwrap_err().contains("sim, real or envoy"));
    }
}
