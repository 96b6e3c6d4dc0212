//! The `workload` section: open-loop traffic from a service's pods (or one pod) to a
//! service, HTTP requests or TCP connections, and from it each service's egress scope.
//! It owns the workload's model ([`Workload`], [`TcpWorkload`], [`Arrivals`]); sending
//! is `crate::workload`'s.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use mesh::config::diag::code;
use mesh::config::{Finding, Pos};
use mesh::registry::{AppProtocol, Service, qualify};
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::builder::{Builder, Dur, dur};
use super::services::Placement;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadDef {
    pub name: Option<Spanned<String>>,
    /// Source service (its pods take turns) or one pod.
    pub from: Spanned<String>,
    /// Destination as the app writes it in the Host header (a service name).
    pub to: Spanned<String>,
    pub path: Option<String>,
    /// HTTP method; absent = GET.
    pub method: Option<Spanned<String>>,
    /// Extra request headers.
    pub headers: Option<Spanned<BTreeMap<String, String>>>,
    /// Requests per second.
    pub rate: Spanned<f64>,
    pub arrivals: Option<Spanned<String>>,
    pub start: Option<Dur>,
    pub stop: Option<Dur>,
    pub max_in_flight: Option<Spanned<u32>>,
    /// Client-side timeout: the app gives up and records `client_timeout`.
    pub timeout: Option<Dur>,
    /// To a TCP service: the bytes each connection sends (and expects echoed back);
    /// default [`DEFAULT_TCP_BYTES`], at most [`MAX_TCP_BYTES`].
    pub bytes: Option<Spanned<u32>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrivals {
    Constant,
    Poisson,
}

#[derive(Clone, Debug)]
pub struct Workload {
    pub name: String,
    /// Indices into `Plan::pods` of the pods that send.
    pub sources: Vec<usize>,
    /// The Host header.
    pub to: String,
    /// FQDN of the destination service (as seen from the source namespace).
    pub to_fqdn: String,
    pub path: String,
    pub method: http::Method,
    /// Extra request headers, after `Host` and `x-request-id`.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub rate: f64,
    pub arrivals: Arrivals,
    pub start: Duration,
    pub stop: Duration,
    pub max_in_flight: u32,
    pub timeout: Duration,
    /// A workload over a TCP service: each arrival is one connection.
    pub tcp: Option<TcpWorkload>,
}

/// What one connection of a TCP workload does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpWorkload {
    /// Bytes sent, and expected back.
    pub bytes: u32,
    /// The destination service's `ClusterIP:port`.
    pub vip: SocketAddr,
}

/// Request headers a workload sets itself (or that belong to the connection).
const RESERVED_REQUEST_HEADERS: &[&str] =
    &["host", "x-request-id", "content-length", "transfer-encoding", "connection", "keep-alive", "te", "upgrade"];
/// Bytes a TCP workload's connection sends when the scenario does not say.
const DEFAULT_TCP_BYTES: u32 = 1024;
/// The most bytes one TCP workload connection may send.
const MAX_TCP_BYTES: u32 = 1 << 20;

impl Builder {
    /// The workloads, and each one's index by name (expectations name them).
    pub(super) fn workloads(
        &mut self,
        defs: &[WorkloadDef],
        placed: &Placement,
        duration: Duration,
        run_end: Option<Duration>,
    ) -> (Vec<Workload>, BTreeMap<String, usize>) {
        let mut workloads = Vec::new();
        let mut workload_names = BTreeMap::new();
        for (wi, w) in defs.iter().enumerate() {
            let workload = self.workload(wi, w, placed, duration, run_end, &mut workload_names);
            workloads.push(workload);
        }
        (workloads, workload_names)
    }

    /// Workload `wi`, checked; its name joins `names` (a name used twice is an error).
    fn workload(
        &mut self,
        wi: usize,
        w: &WorkloadDef,
        placed: &Placement,
        duration: Duration,
        run_end: Option<Duration>,
        names: &mut BTreeMap<String, usize>,
    ) -> Workload {
        let f = format!("workload[{wi}]");
        let sources: Vec<usize> = if let Some(ps) = placed.service_pods.get(&w.from.value) {
            ps.clone()
        } else if let Some(&p) = placed.pod_index.get(&w.from.value) {
            vec![p]
        } else {
            self.not_found(
                &w.from,
                &format!("{f}.from"),
                format!("{:?} is neither a service nor a pod of the scenario", w.from.value),
            );
            vec![]
        };
        let ns = sources.first().map(|&p| placed.pods[p].namespace.clone()).unwrap_or_else(|| "default".into());
        let to_fqdn = qualify(&w.to.value, &ns);
        if !placed.registry.services.contains_key(&to_fqdn) {
            self.not_found(&w.to, &format!("{f}.to"), format!("{:?} is not a service of the scenario", w.to.value));
        }
        if !(w.rate.value.is_finite() && w.rate.value > 0.0) {
            self.err(
                &w.rate,
                &format!("{f}.rate"),
                format!("rate must be greater than 0 requests per second (got {})", w.rate.value),
            );
        } else if w.rate.value > 100_000.0 {
            self.err(&w.rate, &format!("{f}.rate"), "rate must be at most 100000 requests per second");
        }
        let arrivals = match w.arrivals.as_ref().map(|a| a.value.as_str()) {
            None | Some("poisson") => Arrivals::Poisson,
            Some("constant") => Arrivals::Constant,
            Some(other) => {
                let at = w.arrivals.as_ref().expect("set");
                self.err(
                    at,
                    &format!("{f}.arrivals"),
                    format!("arrivals must be `constant` or `poisson`, not {other:?}"),
                );
                Arrivals::Poisson
            }
        };
        let start = dur(&w.start, Duration::ZERO);
        let stop = dur(&w.stop, duration);
        if stop <= start && (w.stop.is_some() || run_end.is_some()) {
            let at = w.stop.as_ref().map(|s| Pos::of(&self.file, s)).unwrap_or_else(|| Pos::of(&self.file, &w.from));
            self.findings.push(Finding::error(
                at,
                code::SCENARIO,
                format!("{f}.stop"),
                format!("workload stops ({stop:?}) before it starts ({start:?})"),
            ));
        }
        if let Some(m) = &w.max_in_flight
            && m.value == 0
        {
            self.err(m, &format!("{f}.max_in_flight"), "max_in_flight must be at least 1");
        }
        if let Some(t) = &w.timeout
            && t.value.0.is_zero()
        {
            self.err(t, &format!("{f}.timeout"), "timeout must be greater than 0");
        }
        let name =
            w.name.as_ref().map(|n| n.value.clone()).unwrap_or_else(|| format!("{}->{}", w.from.value, w.to.value));
        if names.insert(name.clone(), wi).is_some() {
            let at = w.name.as_ref().map(|n| Pos::of(&self.file, n)).unwrap_or_else(|| Pos::of(&self.file, &w.from));
            self.findings.push(Finding::error(
                at,
                code::SCENARIO,
                format!("{f}.name"),
                format!("workload name {name:?} is used twice"),
            ));
        }
        let method = match &w.method {
            None => http::Method::GET,
            Some(m) => match http::Method::from_bytes(m.value.as_bytes()) {
                Ok(x) if x == http::Method::CONNECT => {
                    self.err(m, &format!("{f}.method"), "CONNECT is not supported (a workload sends to a path)");
                    x
                }
                Ok(x) => x,
                Err(_) => {
                    self.err(
                        m,
                        &format!("{f}.method"),
                        format!("{:?} is not a valid HTTP method (an HTTP token, like GET or POST)", m.value),
                    );
                    http::Method::GET
                }
            },
        };
        let headers = match &w.headers {
            None => Vec::new(),
            Some(h) => self.headers(h, &format!("{f}.headers"), RESERVED_REQUEST_HEADERS),
        };
        let path = w.path.clone().unwrap_or_else(|| "/".into());
        if !path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err() {
            let at = w.name.as_ref().map(|n| Pos::of(&self.file, n)).unwrap_or_else(|| Pos::of(&self.file, &w.from));
            self.findings.push(Finding::error(
                at,
                code::SCENARIO,
                format!("{f}.path"),
                format!("{path:?} is not a request path (it starts with `/`; a query may follow `?`)"),
            ));
        }
        let tcp = self.tcp_workload(w, &f, placed.registry.services.get(&to_fqdn));
        Workload {
            name,
            sources,
            to: w.to.value.clone(),
            to_fqdn,
            path,
            method,
            headers,
            rate: w.rate.value,
            arrivals,
            start,
            stop: stop.min(duration),
            max_in_flight: w.max_in_flight.as_ref().map(|m| m.value).unwrap_or(10_000),
            timeout: dur(&w.timeout, Duration::from_secs(30)),
            tcp,
        }
    }

    /// The TCP side of a workload: `Some` when it calls a TCP service (its HTTP-only
    /// fields are then errors), and `bytes` is an error on an HTTP workload.
    fn tcp_workload(&mut self, w: &WorkloadDef, f: &str, to: Option<&Service>) -> Option<TcpWorkload> {
        let Some(svc) = to.filter(|s| s.protocol == AppProtocol::Tcp) else {
            if let Some(b) = &w.bytes {
                self.err(
                    b,
                    &format!("{f}.bytes"),
                    "bytes applies to a workload over a tcp service (app_protocol: tcp)",
                );
            }
            return None;
        };
        let why = |field: &str| {
            format!("{field} is HTTP-only: {} is a tcp service, a workload opens connections to it", svc.name)
        };
        if let Some(m) = &w.method {
            self.err(m, &format!("{f}.method"), why("method"));
        }
        if let Some(h) = &w.headers {
            self.err(h, &format!("{f}.headers"), why("headers"));
        }
        if w.path.is_some() {
            self.err(&w.to, &format!("{f}.path"), why("path"));
        }
        let bytes = w.bytes.as_ref().map_or(DEFAULT_TCP_BYTES, |b| b.value);
        if let Some(b) = &w.bytes
            && !(1..=MAX_TCP_BYTES).contains(&b.value)
        {
            self.err(b, &format!("{f}.bytes"), format!("bytes must be between 1 and {MAX_TCP_BYTES}"));
        }
        let vip = SocketAddr::from((svc.cluster_ip.expect("every scenario service has a ClusterIP"), svc.port));
        Some(TcpWorkload { bytes, vip })
    }
}

/// Each service's egress scope: the services its pods' workloads call.
pub(super) fn egress(placed: &Placement, workloads: &[Workload]) -> BTreeMap<String, BTreeSet<String>> {
    let mut egress: BTreeMap<String, BTreeSet<String>> =
        placed.registry.services.keys().map(|fqdn| (fqdn.clone(), BTreeSet::new())).collect();
    for w in workloads {
        for &p in &w.sources {
            let fqdn = qualify(&placed.pods[p].service, &placed.pods[p].namespace);
            egress.entry(fqdn).or_default().insert(w.to_fqdn.clone());
        }
    }
    egress
}

#[cfg(test)]
mod tests {
    use super::super::testing::{BASE, errors, plan};
    use super::*;

    #[test]
    fn a_workload_defaults_to_get_slash_for_the_whole_run_and_sets_its_egress() {
        let p = plan(BASE);
        let w = &p.workloads[0];
        assert_eq!(
            (w.name.as_str(), w.to_fqdn.as_str(), w.path.as_str()),
            ("browse", "backend.default.svc.cluster.local", "/")
        );
        assert_eq!((w.method.clone(), w.sources.clone(), w.arrivals), (http::Method::GET, vec![0], Arrivals::Poisson));
        assert_eq!((w.start, w.stop, w.timeout), (Duration::ZERO, Duration::from_secs(10), Duration::from_secs(30)));
        assert_eq!((w.max_in_flight, w.tcp), (10_000, None));
        let egress: Vec<&String> = p.egress["frontend.default.svc.cluster.local"].iter().collect();
        assert_eq!(egress, ["backend.default.svc.cluster.local"]);
        assert!(p.egress["backend.default.svc.cluster.local"].is_empty());
    }

    #[test]
    fn bytes_on_an_http_workload_is_refused() {
        assert_eq!(
            errors(&format!("{BASE}    bytes: 10\n")),
            "t.yaml:16:12: error [MSIM0002] workload[0].bytes: bytes applies to a workload over a tcp service (app_protocol: tcp)\n"
        );
    }

    #[test]
    fn a_workload_to_a_tcp_service_opens_connections_to_its_cluster_ip() {
        let text = BASE.replace("  - name: backend\n", "  - name: backend\n    app_protocol: tcp\n");
        let tcp = plan(&text).workloads[0].tcp.expect("a tcp workload");
        assert_eq!(tcp.bytes, 1024);
        assert_eq!(tcp.vip, "10.96.0.2:80".parse().expect("an address"));
    }

    #[test]
    fn an_unknown_source_is_not_found() {
        assert_eq!(
            errors(&BASE.replace("from: frontend", "from: frontent")),
            "t.yaml:13:11: error [IST0101] workload[0].from: \"frontent\" is neither a service nor a pod of the scenario\n"
        );
    }
}
