//! HTTP routes: each service's ordered routes (first match wins) from its
//! VirtualService's `http` section — matches, the action (weighted clusters, redirect,
//! direct response), timeout, retries, fault injection, mirroring, header operations and
//! rewrites — or one default route to the whole service, as Istio's
//! [VirtualService](https://istio.io/latest/docs/reference/config/networking/virtual-service/)
//! defines them; and their validation (the webhook's and the analyzer's IST0130/IST0131).
//!
//! Not here: the matchers and policies at run time (`proxy::route_match`, `proxy::retry`,
//! `proxy::fault`), the clusters routed to (`cluster`), TCP routes (`tcp`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_saphyr::Spanned;

use super::cluster::DestinationRules;
use super::{Cluster, Compiler, cluster_name};
use crate::config::diag::code;
use crate::config::istio::{Headers, Resource, VirtualServiceSpec};
use crate::config::{Finding, Pos};
use crate::proxy::fault::{FaultPolicy, per_million};
use crate::proxy::headers::HeaderOps;
use crate::proxy::retry::RetryPolicy;
use crate::proxy::route_match::RouteMatch;
use crate::registry::{AppProtocol, qualify};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightedCluster {
    pub cluster: String,
    pub weight: u32,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
}

/// What a route does with a matched request.
#[derive(Clone, Debug)]
pub enum Action {
    /// Send it to one of these clusters (Envoy's weighted pick).
    Forward(Vec<WeightedCluster>),
    /// Answer with a redirect.
    Redirect(Redirect),
    /// Answer with this status and body.
    Direct { status: u16, body: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirect {
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub port: Option<u32>,
    pub scheme: Option<String>,
    /// 301 unless set.
    pub code: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rewrite {
    pub uri: Option<String>,
    pub authority: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mirror {
    pub cluster: String,
    pub per_million: u32,
}

#[derive(Clone, Debug)]
pub struct Route {
    /// `<vs namespace>/<vs name>/<route index or name>` or `default` without a VirtualService.
    pub name: String,
    /// Any entry matching selects the route; empty = every request.
    pub matches: Vec<RouteMatch>,
    pub action: Action,
    /// Route timeout covering the whole request, retries and backoff included; `None` =
    /// disabled (Istio's default).
    pub timeout: Option<Duration>,
    /// `None` = retries disabled (`attempts: 0`).
    pub retry: Option<RetryPolicy>,
    pub fault: Option<FaultPolicy>,
    pub mirror: Option<Mirror>,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    pub rewrite: Option<Rewrite>,
}

/// The VirtualService in effect for each host (FQDN), with the file it came from.
pub(super) type VirtualServices<'a> = BTreeMap<String, (&'a str, &'a Resource, &'a VirtualServiceSpec)>;

impl Route {
    /// The route of a service without a VirtualService: every request to its own
    /// cluster, with the mesh's default retries.
    fn default_to(cluster: String, hashed: bool) -> Route {
        Route {
            name: "default".into(),
            matches: Vec::new(),
            action: Action::Forward(vec![WeightedCluster {
                cluster,
                weight: 1,
                request_headers: HeaderOps::default(),
                response_headers: HeaderOps::default(),
            }]),
            timeout: None,
            retry: RetryPolicy::from_istio(None, hashed),
            fault: None,
            mirror: None,
            request_headers: HeaderOps::default(),
            response_headers: HeaderOps::default(),
            rewrite: None,
        }
    }
}

impl Compiler<'_> {
    /// Checks `vs` and makes it the VirtualService of each of its hosts that is a
    /// service, unless the host already has one (the first wins, as in Istio).
    pub(super) fn virtual_service<'r>(
        &mut self,
        file: &'r str,
        r: &'r Resource,
        vs: &'r VirtualServiceSpec,
        what: &str,
        vss: &mut VirtualServices<'r>,
    ) {
        if vs.hosts.is_empty() {
            self.findings.push(Finding::error(
                Pos::of(file, &r.kind),
                code::SCHEMA,
                "spec.hosts",
                "virtual service must have at least one host",
            ));
        }
        if !vs.gateways.is_empty() && !vs.gateways.iter().any(|g| g.value == "mesh") {
            self.warning(file, &vs.gateways[0], code::NOT_SIMULATED, "spec.gateways", format!(
                "{what} binds only to gateways, which meshsim does not simulate: it has no effect on sidecars (add `mesh` to apply it to them)"
            ));
            return;
        }
        self.not_simulated(file, "spec.tls", &vs.tls);
        self.not_simulated(file, "spec.exportTo", &vs.export_to);
        for h in &vs.hosts {
            let host = qualify(&h.value, r.namespace());
            if h.value.contains('*') || !self.registry.services.contains_key(&host) {
                self.warning(
                    file,
                    h,
                    code::NOT_FOUND,
                    "spec.hosts",
                    format!("host {:?} is not a service of the scenario: the rules for it have no effect", h.value),
                );
                continue;
            }
            let tcp_host = self.registry.services[&host].protocol == AppProtocol::Tcp;
            if !vs.tcp.is_empty() && !tcp_host {
                self.warning(
                    file,
                    h,
                    code::NOT_SIMULATED,
                    "spec.tcp",
                    format!(
                        "{what}: {host} is an http service, so its `tcp` routes do not apply (meshsim services have one port): they are ignored"
                    ),
                );
            }
            if !vs.http.is_empty() && tcp_host {
                self.warning(
                    file,
                    h,
                    code::NOT_SIMULATED,
                    "spec.http",
                    format!(
                        "{what}: {host} is a tcp service (app_protocol: tcp), so its `http` routes do not apply (Istio builds no HTTP route for a TCP port): connections go to the whole service"
                    ),
                );
                if vs.tcp.is_empty() {
                    continue;
                }
            }
            if let Some((f, prev, _)) = vss.get(&host) {
                self.warning(
                    file,
                    h,
                    "MSIM0003",
                    "spec.hosts",
                    format!(
                        "{what} is ignored for {host}: VirtualService {}/{} ({f}) already routes it",
                        prev.namespace(),
                        prev.name()
                    ),
                );
                continue;
            }
            vss.insert(host, (file, r, vs));
        }
    }

    /// The routes of service `fqdn`: its VirtualService's, or the default route.
    pub(super) fn service_routes(
        &mut self,
        fqdn: &str,
        port: u16,
        vs: Option<&(&str, &Resource, &VirtualServiceSpec)>,
        drs: &DestinationRules<'_>,
        clusters: &BTreeMap<String, Arc<Cluster>>,
    ) -> Vec<Route> {
        match vs {
            Some((file, r, vs)) => {
                let from = self.findings.0.len();
                let routes = self.routes(file, r, vs, drs, clusters);
                self.tag(from, Some(format!("VirtualService {}/{}", r.namespace(), r.name())));
                routes
            }
            None => {
                let cluster = cluster_name(port, None, fqdn);
                let hashed = clusters.get(&cluster).is_some_and(|c| c.hash.is_some());
                vec![Route::default_to(cluster, hashed)]
            }
        }
    }

    fn header_ops(
        &mut self,
        file: &str,
        at: &str,
        pos: &Spanned<String>,
        h: Option<&Headers>,
    ) -> (HeaderOps, HeaderOps) {
        let mut compile = |which: &str, ops: Option<&crate::config::istio::HeaderOperations>| match ops {
            None => HeaderOps::default(),
            Some(o) => HeaderOps::compile(o).unwrap_or_else(|e| {
                self.findings.push(Finding::error(
                    Pos::of(file, pos),
                    code::SCHEMA,
                    format!("{at}.headers.{which}"),
                    e,
                ));
                HeaderOps::default()
            }),
        };
        let req = compile("request", h.and_then(|h| h.request.as_ref()));
        let resp = compile("response", h.and_then(|h| h.response.as_ref()));
        (req, resp)
    }

    /// A destination's cluster, checking that its host and subset exist (IST0101).
    pub(super) fn destination(
        &mut self,
        file: &str,
        at: &str,
        ns: &str,
        d: &crate::config::istio::Destination,
        drs: &DestinationRules<'_>,
        what: &str,
    ) -> Option<String> {
        let host = qualify(&d.host.value, ns);
        let Some(svc) = self.registry.services.get(&host) else {
            self.error(
                file,
                &d.host,
                code::NOT_FOUND,
                &format!("{at}.host"),
                format!("Referenced {what} not found: {:?}", d.host.value),
            );
            return None;
        };
        let port = svc.port;
        if let Some(subset) = &d.subset {
            let known =
                drs.get(&host).is_some_and(|(_, _, dr)| dr.subsets.iter().any(|s| s.name.value == subset.value));
            if !known {
                self.error(
                    file,
                    subset,
                    code::NOT_FOUND,
                    &format!("{at}.subset"),
                    format!(
                        "Referenced host+subset in destinationrule not found: \"{}+{}\"",
                        d.host.value, subset.value
                    ),
                );
            }
        }
        Some(cluster_name(port, d.subset.as_ref().map(|s| s.value.as_str()), &host))
    }

    fn routes(
        &mut self,
        file: &str,
        r: &Resource,
        vs: &VirtualServiceSpec,
        drs: &DestinationRules<'_>,
        clusters: &BTreeMap<String, Arc<Cluster>>,
    ) -> Vec<Route> {
        let mut out = Vec::new();
        // For IST0130/IST0131: the first catch-all route, and the match entries seen so far.
        let mut catch_all: Option<usize> = None;
        let mut seen_matches: Vec<(usize, usize, String)> = Vec::new();
        for (i, http) in vs.http.iter().enumerate() {
            let at = format!("spec.http[{i}]");
            let anchor = http.route.first().map(|d| d.destination.host.clone()).unwrap_or_else(|| r.kind.clone());
            self.not_simulated(file, &format!("{at}.delegate"), &http.delegate);
            self.not_simulated(file, &format!("{at}.mirrors"), &http.mirrors);
            self.not_simulated(file, &format!("{at}.corsPolicy"), &http.cors_policy);
            self.check_duration(file, &format!("{at}.timeout"), &http.timeout);

            // Matches, with the analyzer's reachability checks.
            let mut matches = Vec::new();
            for (j, m) in http.match_.iter().enumerate() {
                let mat = format!("{at}.match[{j}]");
                self.findings.0.extend(crate::config::route_match::validate(m, file, &mat));
                let Ok(c) = RouteMatch::compile(&m.value) else { continue };
                // The compiled form carries no source positions: equal means the same match.
                let key = format!("{c:?}");
                if catch_all.is_none()
                    && let Some((ei, ej, _)) = seen_matches.iter().find(|(_, _, k)| *k == key)
                {
                    self.findings.push(Finding::warning(
                        Pos::of(file, m),
                        "IST0131",
                        mat.clone(),
                        format!("VirtualService rule #{i} match #{j} is not used (same as rule #{ei} match #{ej})."),
                    ));
                }
                seen_matches.push((i, j, key));
                matches.push(c);
            }
            if let Some(k) = catch_all {
                self.findings.push(Finding::warning(
                    Pos::of(file, &anchor),
                    "IST0130",
                    at.clone(),
                    format!(
                        "VirtualService rule #{i} not used (rule #{k} has no match and takes every request; only the last rule can have no matches)."
                    ),
                ));
            } else if http.match_.is_empty() {
                catch_all = Some(i);
            }

            // Action: exactly one of route, redirect, directResponse.
            let kinds = [!http.route.is_empty(), http.redirect.is_some(), http.direct_response.is_some()];
            if kinds[0] && kinds[1] {
                self.findings.push(Finding::error(
                    Pos::of(file, &anchor),
                    code::SCHEMA,
                    at.clone(),
                    "HTTP route cannot contain both route and redirect",
                ));
            }
            if kinds[0] && kinds[2] {
                self.findings.push(Finding::error(
                    Pos::of(file, &anchor),
                    code::SCHEMA,
                    at.clone(),
                    "HTTP route cannot contain both route and direct response",
                ));
            }
            if kinds[1] && kinds[2] {
                self.findings.push(Finding::error(
                    Pos::of(file, &anchor),
                    code::SCHEMA,
                    at.clone(),
                    "HTTP route cannot contain both redirect and direct response",
                ));
            }
            if !kinds.iter().any(|&k| k) {
                self.findings.push(Finding::error(
                    Pos::of(file, &anchor),
                    code::SCHEMA,
                    at.clone(),
                    "HTTP route, redirect or direct response is required",
                ));
            }

            let action = if let Some(rd) = &http.redirect {
                let code_ = rd.value.redirect_code.as_ref().map(|c| c.value).unwrap_or(301);
                if let Some(c) = &rd.value.redirect_code
                    && !matches!(c.value, 301 | 302 | 303 | 307 | 308)
                {
                    self.error(
                        file,
                        c,
                        code::SCHEMA,
                        &format!("{at}.redirect.redirectCode"),
                        format!("{} is not a valid redirect code, must be 301, 302, 303, 307, or 308", c.value),
                    );
                }
                self.not_simulated(file, &format!("{at}.redirect.derivePort"), &rd.value.derive_port);
                Action::Redirect(Redirect {
                    uri: rd.value.uri.clone(),
                    authority: rd.value.authority.clone(),
                    port: rd.value.port,
                    scheme: rd.value.scheme.clone(),
                    code: code_ as u16,
                })
            } else if let Some(dr) = &http.direct_response {
                let st = dr.value.status.value;
                if !(200..=599).contains(&st) {
                    self.error(
                        file,
                        &dr.value.status,
                        code::SCHEMA,
                        &format!("{at}.directResponse.status"),
                        format!("directResponse status {st} is not in range 200-599"),
                    );
                }
                if let Some(b) = &dr.value.body {
                    self.not_simulated(file, &format!("{at}.directResponse.body.bytes"), &b.bytes);
                }
                Action::Direct {
                    status: st as u16,
                    body: dr.value.body.as_ref().and_then(|b| b.string.clone()).unwrap_or_default(),
                }
            } else {
                let mut weighted = Vec::new();
                let mut total: i64 = 0;
                for (j, d) in http.route.iter().enumerate() {
                    let dat = format!("{at}.route[{j}]");
                    let weight = self.route_weight(file, &dat, d.weight.as_ref());
                    total = total.saturating_add(weight.max(0));
                    let (rq, rs) = self.header_ops(file, &dat, &d.destination.host, d.headers.as_ref());
                    if let Some(cluster) = self.destination(
                        file,
                        &format!("{dat}.destination"),
                        r.namespace(),
                        &d.destination,
                        drs,
                        "host",
                    ) {
                        weighted.push(WeightedCluster {
                            cluster,
                            weight: weight.clamp(0, i64::from(u32::MAX)) as u32,
                            request_headers: rq,
                            response_headers: rs,
                        });
                    }
                }
                if http.route.len() > 1 && total == 0 {
                    let pos = http.route[0]
                        .weight
                        .as_ref()
                        .map(|w| Pos::of(file, w))
                        .unwrap_or_else(|| Pos::of(file, &anchor));
                    self.findings.push(Finding::error(
                        pos,
                        code::SCHEMA,
                        format!("{at}.route"),
                        "total destination weight = 0",
                    ));
                }
                // Istio: one destination gets all traffic whatever its weight; weight-0 entries drop.
                if weighted.len() == 1 {
                    weighted[0].weight = 1;
                } else {
                    weighted.retain(|c| c.weight > 0);
                }
                Action::Forward(weighted)
            };

            if let Some(rt) = &http.retries {
                self.findings.0.extend(crate::config::retry::validate(rt, file, &format!("{at}.retries")));
            }
            let hashed = matches!(&action, Action::Forward(w) if w.iter().any(|c| clusters.get(&c.cluster).is_some_and(|c| c.hash.is_some())));
            let retry = RetryPolicy::from_istio(http.retries.as_ref().map(|r| &r.value), hashed);

            let fault = http.fault.as_ref().map(|f| {
                let fat = format!("{at}.fault");
                if f.value.delay.is_none() && f.value.abort.is_none() {
                    self.error(
                        file,
                        f,
                        code::SCHEMA,
                        &fat,
                        "HTTP fault injection must have an abort and/or a delay".into(),
                    );
                }
                if let Some(d) = &f.value.delay {
                    self.not_simulated(file, &format!("{fat}.delay.exponentialDelay"), &d.value.exponential_delay);
                    match &d.value.fixed_delay {
                        None => self.error(
                            file,
                            d,
                            code::SCHEMA,
                            &format!("{fat}.delay"),
                            "delay must have a fixedDelay".into(),
                        ),
                        Some(fd) => self.check_duration(file, &format!("{fat}.delay.fixedDelay"), &Some(fd.clone())),
                    }
                    self.check_percent(file, d, &format!("{fat}.delay.percentage"), d.value.percentage.as_ref());
                }
                if let Some(ab) = &f.value.abort {
                    self.not_simulated(file, &format!("{fat}.abort.grpcStatus"), &ab.value.grpc_status);
                    self.not_simulated(file, &format!("{fat}.abort.http2Error"), &ab.value.http2_error);
                    match &ab.value.http_status {
                        Some(st) if !(200..=599).contains(&st.value) => self.error(
                            file,
                            st,
                            code::SCHEMA,
                            &format!("{fat}.abort.httpStatus"),
                            format!("HTTP status {} is not in range 200-599", st.value),
                        ),
                        Some(_) => {}
                        None if ab.value.grpc_status.is_none() && ab.value.http2_error.is_none() => self.error(
                            file,
                            ab,
                            code::SCHEMA,
                            &format!("{fat}.abort"),
                            "abort must have an httpStatus".into(),
                        ),
                        None => {}
                    }
                    self.check_percent(file, ab, &format!("{fat}.abort.percentage"), ab.value.percentage.as_ref());
                }
                FaultPolicy::from_istio(&f.value)
            });

            let mirror = http.mirror.as_ref().and_then(|m| {
                let cluster =
                    self.destination(file, &format!("{at}.mirror"), r.namespace(), &m.value, drs, "mirror host")?;
                if let Some(p) = &http.mirror_percentage {
                    self.check_percent(file, p, &format!("{at}.mirrorPercentage"), Some(&p.value));
                }
                // mirrorPercentage defaults to 100% when omitted (0 disables).
                let ppm = match (&http.mirror_percentage, &http.mirror_percent) {
                    (None, None) => 1_000_000,
                    (p, d) => per_million(p.as_ref().map(|p| &p.value), d.as_ref().map(|d| d.value)),
                };
                Some(Mirror { cluster, per_million: ppm })
            });
            if http.mirror.is_none() && (http.mirror_percentage.is_some() || http.mirror_percent.is_some()) {
                self.findings.push(Finding::warning(
                    Pos::of(file, &anchor),
                    code::SCHEMA,
                    format!("{at}.mirrorPercentage"),
                    "mirrorPercentage without mirror has no effect",
                ));
            }
            let rewrite = http.rewrite.as_ref().map(|rw| {
                self.not_simulated(file, &format!("{at}.rewrite.uriRegexRewrite"), &rw.value.uri_regex_rewrite);
                Rewrite { uri: rw.value.uri.clone(), authority: rw.value.authority.clone() }
            });
            let (request_headers, response_headers) = self.header_ops(file, &at, &anchor, http.headers.as_ref());
            out.push(Route {
                name: http.name.clone().unwrap_or_else(|| format!("{}/{}/{i}", r.namespace(), r.name())),
                matches,
                action,
                timeout: http.timeout.as_ref().map(|t| t.value.0),
                retry,
                fault,
                mirror,
                request_headers,
                response_headers,
                rewrite,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests;
