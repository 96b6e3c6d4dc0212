//! Istio's standard metrics as one sidecar keeps them ([Istio's
//! reference](https://istio.io/latest/docs/reference/config/metrics/)):
//! `istio_requests_total`, `istio_request_duration_milliseconds`, `istio_request_bytes`
//! and `istio_response_bytes` for HTTP; `istio_tcp_sent_bytes_total`,
//! `istio_tcp_received_bytes_total`, `istio_tcp_connections_opened_total` and
//! `istio_tcp_connections_closed_total` for TCP ([`TCP_LABELS`]); with Istio's label set,
//! reported as `source` (outbound) or `destination` (inbound); the workload metadata the
//! two sidecars of a request exchange (`x-envoy-peer-metadata`; for TCP the in-band
//! exchange of `tcp`) so both reporters know both workloads; and the Prometheus text
//! exposition (`/stats/prometheus`).
//!
//! State lives in ordered maps keyed by small integers (peers and services are interned),
//! so recording a request is a couple of map look-ups and no allocation once a series
//! exists. It does not own when requests start or end (`outbound`, `inbound`) nor
//! tracing (`tracing`).

use std::collections::BTreeMap;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use serde::Serialize;

use super::local_reply::{self, Flag};
use crate::registry::DOMAIN_SUFFIX;

/// Istio's label names, in the order of Istio's reference
/// (<https://istio.io/latest/docs/reference/config/metrics/>).
pub const LABELS: [&str; 25] = [
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "source_canonical_service",
    "source_canonical_revision",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_cluster",
    "destination_canonical_service",
    "destination_canonical_revision",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
];

/// The labels of the TCP metrics: [`LABELS`] without `response_code` and
/// `grpc_response_status`, with `request_protocol="tcp"`. As istio/proxy's own expected
/// series say (`testdata/metric/tcp_client_sent_bytes.yaml.tmpl` and
/// `tcp_server_sent_bytes.yaml.tmpl`: reporter, source_* incl. principal, destination_*
/// incl. service name/namespace, request_protocol "tcp", response_flags "-",
/// connection_security_policy — and no response code).
pub const TCP_LABELS: [&str; 23] = [
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "source_canonical_service",
    "source_canonical_revision",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_cluster",
    "destination_canonical_service",
    "destination_canonical_revision",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
];

/// Envoy's default histogram bucket bounds (upper, inclusive), used for every histogram;
/// a last `+Inf` bucket follows.
pub const BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0, 300000.0,
    600000.0, 1800000.0, 3600000.0,
];

/// What a label is when the peer did not say.
pub const UNKNOWN: &str = "unknown";
/// Istio's cluster id when none is configured.
pub const CLUSTER_ID: &str = "Kubernetes";
/// The metadata-exchange header: a request carries the client workload's metadata, a
/// response the server's. Each sidecar strips its peer's before the app sees it.
pub const PEER_METADATA: HeaderName = HeaderName::from_static("x-envoy-peer-metadata");

/// The metric names [`Series`] answers to (histograms by their `_count`, `_sum` and
/// `_bucket` series).
pub const COUNTERS: [&str; 5] = [
    "istio_requests_total",
    "istio_tcp_sent_bytes_total",
    "istio_tcp_received_bytes_total",
    "istio_tcp_connections_opened_total",
    "istio_tcp_connections_closed_total",
];
pub const HISTOGRAMS: [&str; 3] =
    ["istio_request_duration_milliseconds", "istio_request_bytes", "istio_response_bytes"];

/// Which side of the request a sidecar reports for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reporter {
    /// The client's sidecar (outbound).
    Source,
    /// The server's sidecar (inbound).
    Destination,
}

impl Reporter {
    pub fn as_str(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
    }
}

/// `connection_security_policy`: what the destination saw of the connection; the
/// source reports `unknown`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Security {
    Unknown,
    MutualTls,
    None,
}

impl Security {
    pub fn as_str(self) -> &'static str {
        match self {
            Security::Unknown => UNKNOWN,
            Security::MutualTls => "mutual_tls",
            Security::None => "none",
        }
    }
}

/// A workload as metadata exchange describes it (Istio's `WorkloadMetadataObject`,
/// reduced to what the standard labels use).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub app: String,
    pub version: String,
    pub cluster: String,
    pub canonical_service: String,
    pub canonical_revision: String,
}

impl Workload {
    /// Istio's derivation from a pod: `app` / `version` labels (or their
    /// `app.kubernetes.io/` forms), the canonical service and revision labels falling
    /// back to those and then to the workload name and `latest`.
    pub fn from_pod(name: &str, namespace: &str, labels: &BTreeMap<String, String>) -> Workload {
        let label = |keys: &[&str]| keys.iter().find_map(|k| labels.get(*k)).cloned();
        let app = label(&["app", "app.kubernetes.io/name"]);
        let version = label(&["version", "app.kubernetes.io/version"]);
        Workload {
            name: name.to_string(),
            namespace: namespace.to_string(),
            canonical_service: label(&["service.istio.io/canonical-name"])
                .or_else(|| app.clone())
                .unwrap_or_else(|| name.to_string()),
            canonical_revision: label(&["service.istio.io/canonical-revision"])
                .or_else(|| version.clone())
                .unwrap_or_else(|| "latest".into()),
            app: app.unwrap_or_else(|| UNKNOWN.into()),
            version: version.unwrap_or_else(|| UNKNOWN.into()),
            cluster: CLUSTER_ID.into(),
        }
    }

    /// Every field `unknown`: a peer that sent no metadata.
    pub fn unknown() -> Workload {
        let u = || UNKNOWN.to_string();
        Workload {
            name: u(),
            namespace: u(),
            app: u(),
            version: u(),
            cluster: u(),
            canonical_service: u(),
            canonical_revision: u(),
        }
    }

    fn fields(&self) -> [(&'static str, &str); 7] {
        [
            ("workload", &self.name),
            ("namespace", &self.namespace),
            ("app", &self.app),
            ("version", &self.version),
            ("cluster", &self.cluster),
            ("canonical_service", &self.canonical_service),
            ("canonical_revision", &self.canonical_revision),
        ]
    }

    /// The header value: `key=value` pairs joined by `;` (Istio sends a base64
    /// protobuf; meshsim's form is readable, see the README).
    pub fn to_header(&self) -> HeaderValue {
        let s: Vec<String> = self.fields().iter().map(|(k, v)| format!("{k}={v}")).collect();
        HeaderValue::from_str(&s.join(";")).expect("label values are header-safe")
    }

    /// Parses [`Workload::to_header`]'s form; missing keys are `unknown`, anything
    /// malformed is `None`.
    pub fn parse(v: &[u8]) -> Option<Workload> {
        let s = std::str::from_utf8(v).ok()?;
        let mut w = Workload::unknown();
        for pair in s.split(';') {
            let (k, v) = pair.split_once('=')?;
            let slot = match k {
                "workload" => &mut w.name,
                "namespace" => &mut w.namespace,
                "app" => &mut w.app,
                "version" => &mut w.version,
                "cluster" => &mut w.cluster,
                "canonical_service" => &mut w.canonical_service,
                "canonical_revision" => &mut w.canonical_revision,
                _ => continue,
            };
            if !v.is_empty() {
                *slot = v.to_string();
            }
        }
        Some(w)
    }
}

/// A destination service: FQDN, short name and namespace (`unknown` parts when the host
/// is not a cluster service).
#[derive(Clone, Debug, PartialEq, Eq)]
struct ServiceName {
    fqdn: String,
    name: String,
    namespace: String,
}

impl ServiceName {
    fn of(fqdn: &str) -> ServiceName {
        let (name, namespace) = match fqdn.strip_suffix(DOMAIN_SUFFIX).and_then(|h| h.strip_suffix('.')) {
            Some(h) => match h.split_once('.') {
                Some((n, ns)) => (n.to_string(), ns.to_string()),
                None => (h.to_string(), UNKNOWN.to_string()),
            },
            None => (fqdn.to_string(), UNKNOWN.to_string()),
        };
        let fqdn = if fqdn.is_empty() { UNKNOWN.to_string() } else { fqdn.to_string() };
        let name = if name.is_empty() { UNKNOWN.to_string() } else { name };
        ServiceName { fqdn, name, namespace }
    }
}

/// A histogram over [`BUCKETS`]: per-bucket counts (not cumulative), the count and the
/// sum (kept in integer millionths of the unit so sums are exact and order-independent).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hist {
    buckets: [u64; BUCKETS.len() + 1],
    count: u64,
    sum_millionths: u64,
}

impl Hist {
    /// Records a value given in millionths of the unit (nanoseconds for a histogram in
    /// milliseconds; bytes × 10⁶ for a byte histogram).
    fn record(&mut self, millionths: u64) {
        let v = millionths as f64 / 1e6;
        let i = BUCKETS.partition_point(|&b| b < v);
        self.buckets[i] += 1;
        self.count += 1;
        self.sum_millionths += millionths;
    }

    fn add(&mut self, o: &Hist) {
        for (a, b) in self.buckets.iter_mut().zip(o.buckets) {
            *a += b;
        }
        self.count += o.count;
        self.sum_millionths += o.sum_millionths;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn sum(&self) -> f64 {
        self.sum_millionths as f64 / 1e6
    }

    /// Cumulative counts per bound of [`BUCKETS`], then `+Inf`.
    pub fn cumulative(&self) -> Vec<u64> {
        self.buckets
            .iter()
            .scan(0u64, |acc, b| {
                *acc += b;
                Some(*acc)
            })
            .collect()
    }

    /// `(upper bound, count in that bucket)` pairs, as the Prometheus encoder wants them.
    fn pairs(&self) -> Vec<(f64, u64)> {
        BUCKETS.iter().copied().chain([f64::INFINITY]).zip(self.buckets).collect()
    }
}

impl Serialize for Hist {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Hist", 3)?;
        st.serialize_field("count", &self.count)?;
        st.serialize_field("sum", &self.sum())?;
        st.serialize_field("buckets", &self.cumulative())?;
        st.end()
    }
}

/// Flags as a bit set (so a series key is `Copy` and allocation-free).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
struct FlagSet(u16);

impl FlagSet {
    fn of(flags: &[Flag]) -> FlagSet {
        FlagSet(flags.iter().fold(0, |m, f| m | 1 << (*f as u16)))
    }

    fn to_flags(self) -> Vec<Flag> {
        Flag::ALL.iter().copied().filter(|f| self.0 & (1 << (*f as u16)) != 0).collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct HttpKey {
    reporter: Reporter,
    /// The other side's workload (index into `peers`).
    peer: u32,
    /// Index into `services`.
    service: u32,
    code: u16,
    flags: FlagSet,
    security: Security,
    /// Source and destination principals (indexes into `principals`; 0 = unknown).
    principals: [u32; 2],
}

/// The values of one HTTP series.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HttpValues {
    pub istio_requests_total: u64,
    pub istio_request_duration_milliseconds: Hist,
    pub istio_request_bytes: Hist,
    pub istio_response_bytes: Hist,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct TcpKey {
    reporter: Reporter,
    peer: u32,
    service: u32,
    flags: FlagSet,
    security: Security,
    principals: [u32; 2],
}

/// The values of one TCP series. `received`: bytes from the client toward the server;
/// `sent`: bytes from the server toward the client (for both reporters).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TcpValues {
    pub istio_tcp_sent_bytes_total: u64,
    pub istio_tcp_received_bytes_total: u64,
    pub istio_tcp_connections_opened_total: u64,
    pub istio_tcp_connections_closed_total: u64,
}

/// One TCP connection as a sidecar reports it: its labels.
#[derive(Clone, Copy, Debug)]
pub struct TcpConnection<'a> {
    pub reporter: Reporter,
    pub peer: PeerId,
    /// The destination service's FQDN (empty: unknown).
    pub service: &'a str,
    pub flags: &'a [Flag],
    pub security: Security,
    /// `source_principal` and `destination_principal` (`None`: unknown).
    pub principals: [Option<&'a str>; 2],
}

/// What happened on a TCP connection since it was last reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpDelta {
    pub opened: u64,
    pub closed: u64,
    pub sent: u64,
    pub received: u64,
}

/// One finished HTTP request as a sidecar reports it.
#[derive(Clone, Copy, Debug)]
pub struct HttpRequest<'a> {
    pub reporter: Reporter,
    /// The other side's workload, interned by [`Metrics::peer`].
    pub peer: PeerId,
    /// The destination service's FQDN (empty: unknown).
    pub service: &'a str,
    pub code: u16,
    pub flags: &'a [Flag],
    pub security: Security,
    /// `source_principal` and `destination_principal`: the SPIFFE IDs of the mTLS
    /// connection's two ends (`None`: unknown).
    pub principals: [Option<&'a str>; 2],
    pub duration: Duration,
    /// Body sizes (Istio's request and response size metrics measure bodies).
    pub request_bytes: u64,
    pub response_bytes: u64,
}

/// A workload interned in one [`Metrics`]; [`PeerId::UNKNOWN`] = no metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PeerId(u32);

impl PeerId {
    pub const UNKNOWN: PeerId = PeerId(0);
}

/// One sidecar's metric state.
#[derive(Debug)]
pub struct Metrics {
    me: Workload,
    /// Interned peers; index 0 is the unknown peer.
    peers: Vec<Workload>,
    /// Peers by the raw header that described them.
    peer_index: BTreeMap<Vec<u8>, u32>,
    services: Vec<ServiceName>,
    service_index: BTreeMap<String, u32>,
    /// Interned principals; index 0 is `unknown`.
    principals: Vec<String>,
    http: BTreeMap<HttpKey, HttpValues>,
    tcp: BTreeMap<TcpKey, TcpValues>,
}

/// One series of a sidecar: its labels (every name of [`LABELS`] for HTTP, of
/// [`TCP_LABELS`] for TCP) and values.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Series {
    pub labels: BTreeMap<&'static str, String>,
    #[serde(flatten)]
    pub values: Values,
}

/// The values of a series: HTTP's or TCP's metrics.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Values {
    /// Boxed: HTTP's histograms make it far larger than TCP's counters.
    Http(Box<HttpValues>),
    Tcp(TcpValues),
}

impl Series {
    /// The value of `name`: a counter, or a histogram's `_count` / `_sum` / `_bucket`
    /// (`le` = the bucket's upper bound, `+Inf` for the last). `None`: no such metric
    /// (or one of the other protocol).
    pub fn value(&self, name: &str, le: Option<&str>) -> Option<f64> {
        let h = match &self.values {
            Values::Tcp(t) => {
                let v = match name {
                    "istio_tcp_sent_bytes_total" => t.istio_tcp_sent_bytes_total,
                    "istio_tcp_received_bytes_total" => t.istio_tcp_received_bytes_total,
                    "istio_tcp_connections_opened_total" => t.istio_tcp_connections_opened_total,
                    "istio_tcp_connections_closed_total" => t.istio_tcp_connections_closed_total,
                    _ => return None,
                };
                return Some(v as f64);
            }
            Values::Http(h) => h,
        };
        if name == "istio_requests_total" {
            return Some(h.istio_requests_total as f64);
        }
        let hists = [
            ("istio_request_duration_milliseconds", &h.istio_request_duration_milliseconds),
            ("istio_request_bytes", &h.istio_request_bytes),
            ("istio_response_bytes", &h.istio_response_bytes),
        ];
        let (part, h) = hists.iter().find_map(|(base, h)| name.strip_prefix(base).map(|p| (p, *h)))?;
        match part {
            "_count" => Some(h.count as f64),
            "_sum" => Some(h.sum()),
            "_bucket" => {
                let i = match le? {
                    "+Inf" => BUCKETS.len(),
                    b => BUCKETS.iter().position(|x| b.parse::<f64>().is_ok_and(|v| v == *x))?,
                };
                Some(h.cumulative()[i] as f64)
            }
            _ => None,
        }
    }

    /// Adds `o`'s values (same labels: another instance of the same pod; same labels
    /// mean the same protocol).
    pub fn add(&mut self, o: &Series) {
        match (&mut self.values, &o.values) {
            (Values::Http(a), Values::Http(b)) => {
                a.istio_requests_total += b.istio_requests_total;
                a.istio_request_duration_milliseconds.add(&b.istio_request_duration_milliseconds);
                a.istio_request_bytes.add(&b.istio_request_bytes);
                a.istio_response_bytes.add(&b.istio_response_bytes);
            }
            (Values::Tcp(a), Values::Tcp(b)) => {
                a.istio_tcp_sent_bytes_total += b.istio_tcp_sent_bytes_total;
                a.istio_tcp_received_bytes_total += b.istio_tcp_received_bytes_total;
                a.istio_tcp_connections_opened_total += b.istio_tcp_connections_opened_total;
                a.istio_tcp_connections_closed_total += b.istio_tcp_connections_closed_total;
            }
            _ => panic!("bug: series with the same labels have different protocols"),
        }
    }

    /// Whether this is a TCP series.
    pub fn is_tcp(&self) -> bool {
        matches!(self.values, Values::Tcp(_))
    }
}

/// Whether `name` is a metric a [`Series`] can answer (see [`Series::value`]).
pub fn is_metric_name(name: &str) -> bool {
    COUNTERS.contains(&name)
        || HISTOGRAMS
            .iter()
            .any(|h| name.strip_prefix(h).is_some_and(|rest| ["_count", "_sum", "_bucket"].contains(&rest)))
}

impl Metrics {
    pub fn new(me: Workload) -> Metrics {
        Metrics {
            me,
            peers: vec![Workload::unknown()],
            peer_index: BTreeMap::new(),
            services: Vec::new(),
            service_index: BTreeMap::new(),
            principals: vec![UNKNOWN.to_string()],
            http: BTreeMap::new(),
            tcp: BTreeMap::new(),
        }
    }

    /// This sidecar's own workload.
    pub fn me(&self) -> &Workload {
        &self.me
    }

    /// Interns the peer a metadata header describes (`None` or unparsable: unknown).
    pub fn peer(&mut self, header: Option<&[u8]>) -> PeerId {
        let Some(h) = header else { return PeerId::UNKNOWN };
        if let Some(&i) = self.peer_index.get(h) {
            return PeerId(i);
        }
        let i = match Workload::parse(h) {
            Some(w) => {
                self.peers.push(w);
                (self.peers.len() - 1) as u32
            }
            None => 0,
        };
        self.peer_index.insert(h.to_vec(), i);
        PeerId(i)
    }

    fn service(&mut self, fqdn: &str) -> u32 {
        if let Some(&i) = self.service_index.get(fqdn) {
            return i;
        }
        self.services.push(ServiceName::of(fqdn));
        let i = (self.services.len() - 1) as u32;
        self.service_index.insert(fqdn.to_string(), i);
        i
    }

    fn principal(&mut self, p: Option<&str>) -> u32 {
        let Some(p) = p else { return 0 };
        match self.principals.iter().position(|x| x == p) {
            Some(i) => i as u32,
            None => {
                self.principals.push(p.to_string());
                (self.principals.len() - 1) as u32
            }
        }
    }

    pub fn record_http(&mut self, r: &HttpRequest<'_>) {
        let principals = [self.principal(r.principals[0]), self.principal(r.principals[1])];
        let key = HttpKey {
            principals,
            reporter: r.reporter,
            peer: r.peer.0,
            service: self.service(r.service),
            code: r.code,
            flags: FlagSet::of(r.flags),
            security: r.security,
        };
        let v = self.http.entry(key).or_default();
        v.istio_requests_total += 1;
        v.istio_request_duration_milliseconds.record(r.duration.as_nanos() as u64);
        v.istio_request_bytes.record(r.request_bytes.saturating_mul(1_000_000));
        v.istio_response_bytes.record(r.response_bytes.saturating_mul(1_000_000));
    }

    /// Adds `d` to the series of connection `c`.
    pub fn record_tcp(&mut self, c: &TcpConnection<'_>, d: TcpDelta) {
        let principals = [self.principal(c.principals[0]), self.principal(c.principals[1])];
        let key = TcpKey {
            reporter: c.reporter,
            peer: c.peer.0,
            service: self.service(c.service),
            flags: FlagSet::of(c.flags),
            security: c.security,
            principals,
        };
        let v = self.tcp.entry(key).or_default();
        v.istio_tcp_connections_opened_total += d.opened;
        v.istio_tcp_connections_closed_total += d.closed;
        v.istio_tcp_sent_bytes_total += d.sent;
        v.istio_tcp_received_bytes_total += d.received;
    }

    fn labels(&self, k: &HttpKey) -> BTreeMap<&'static str, String> {
        let tcp = TcpKey {
            reporter: k.reporter,
            peer: k.peer,
            service: k.service,
            flags: k.flags,
            security: k.security,
            principals: k.principals,
        };
        self.labels_of(&tcp, Some(k.code))
    }

    /// The labels of a series: HTTP's ([`LABELS`]) with a `code`, TCP's ([`TCP_LABELS`])
    /// without.
    fn labels_of(&self, k: &TcpKey, code: Option<u16>) -> BTreeMap<&'static str, String> {
        let peer = &self.peers[k.peer as usize];
        let (src, dst) = match k.reporter {
            Reporter::Source => (&self.me, peer),
            Reporter::Destination => (peer, &self.me),
        };
        let svc = &self.services[k.service as usize];
        let flags = local_reply::flags_string(&k.flags.to_flags()).into_owned();
        let code = code.map(|c| c.to_string());
        let values: [&str; 25] = [
            k.reporter.as_str(),
            &src.name,
            &src.namespace,
            &self.principals[k.principals[0] as usize],
            &src.app,
            &src.version,
            &src.cluster,
            &src.canonical_service,
            &src.canonical_revision,
            &dst.name,
            &dst.namespace,
            &self.principals[k.principals[1] as usize],
            &dst.app,
            &dst.version,
            &svc.fqdn,
            &svc.name,
            &svc.namespace,
            &dst.cluster,
            &dst.canonical_service,
            &dst.canonical_revision,
            if code.is_some() { "http" } else { "tcp" },
            code.as_deref().unwrap_or_default(),
            "",
            &flags,
            k.security.as_str(),
        ];
        let all = LABELS.iter().copied().zip(values.iter().map(|v| v.to_string()));
        match code {
            Some(_) => all.collect(),
            None => all.filter(|(l, _)| TCP_LABELS.contains(l)).collect(),
        }
    }

    /// Every series, in key order: HTTP's, then TCP's.
    pub fn series(&self) -> Vec<Series> {
        let http =
            self.http.iter().map(|(k, v)| Series { labels: self.labels(k), values: Values::Http(Box::new(v.clone())) });
        let tcp =
            self.tcp.iter().map(|(k, v)| Series { labels: self.labels_of(k, None), values: Values::Tcp(v.clone()) });
        http.chain(tcp).collect()
    }
}

/// Writes `series` in the Prometheus text format (0.0.4), as Envoy's
/// `/stats/prometheus` serves Istio's metrics.
pub fn encode_prometheus(series: &[Series]) -> Result<String, std::fmt::Error> {
    let collector = Exposition(series.to_vec());
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(collector));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?;
    Ok(out)
}

/// The Prometheus `Content-Type` of [`encode_prometheus`]'s output.
pub const PROMETHEUS_CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Debug)]
struct Exposition(Vec<Series>);

impl prometheus_client::collector::Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let labels = |s: &Series| -> Vec<(&'static str, String)> {
            let names: &[&'static str] = if s.is_tcp() { &TCP_LABELS } else { &LABELS };
            names.iter().map(|l| (*l, s.labels.get(l).cloned().unwrap_or_default())).collect()
        };
        let http: Vec<(&Series, &HttpValues)> = self
            .0
            .iter()
            .filter_map(|s| match &s.values {
                Values::Http(h) => Some((s, &**h)),
                Values::Tcp(_) => None,
            })
            .collect();
        let tcp: Vec<(&Series, &TcpValues)> = self
            .0
            .iter()
            .filter_map(|s| match &s.values {
                Values::Tcp(t) => Some((s, t)),
                Values::Http(_) => None,
            })
            .collect();
        type Counter = fn(&HttpValues) -> u64;
        type TcpCounter = fn(&TcpValues) -> u64;
        // The encoder appends `_total` to counters.
        let counters: [(&str, &str, Counter); 1] =
            [("istio_requests", "Requests handled by an Istio proxy.", |h| h.istio_requests_total)];
        for (name, help, pick) in counters {
            if http.is_empty() {
                continue;
            }
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (s, h) in &http {
                prometheus_client::metrics::counter::ConstCounter::new(pick(h)).encode(m.encode_family(&labels(s))?)?;
            }
        }
        let tcp_counters: [(&str, &str, TcpCounter); 4] = [
            ("istio_tcp_sent_bytes", "Bytes sent from the server toward the client.", |t| t.istio_tcp_sent_bytes_total),
            ("istio_tcp_received_bytes", "Bytes received from the client toward the server.", |t| {
                t.istio_tcp_received_bytes_total
            }),
            ("istio_tcp_connections_opened", "TCP connections opened.", |t| t.istio_tcp_connections_opened_total),
            ("istio_tcp_connections_closed", "TCP connections closed.", |t| t.istio_tcp_connections_closed_total),
        ];
        for (name, help, pick) in tcp_counters {
            if tcp.is_empty() {
                continue;
            }
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (s, t) in &tcp {
                prometheus_client::metrics::counter::ConstCounter::new(pick(t)).encode(m.encode_family(&labels(s))?)?;
            }
        }
        type Pick = fn(&HttpValues) -> &Hist;
        let hists: [(&str, &str, Pick); 3] = [
            ("istio_request_duration_milliseconds", "Request duration.", |h| &h.istio_request_duration_milliseconds),
            ("istio_request_bytes", "Request body sizes.", |h| &h.istio_request_bytes),
            ("istio_response_bytes", "Response body sizes.", |h| &h.istio_response_bytes),
        ];
        for (name, help, pick) in hists {
            if http.is_empty() {
                continue;
            }
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
            for (s, hv) in &http {
                let l = labels(s);
                let h = pick(hv);
                m.encode_family(&l)?.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    h.sum(),
                    h.count,
                    &h.pairs(),
                    None,
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn workload_metadata_round_trips_through_the_header() {
        let w = Workload::from_pod("reviews-v2", "prod", &labels(&[("app", "reviews"), ("version", "v2")]));
        assert_eq!(w.canonical_service, "reviews");
        assert_eq!(w.canonical_revision, "v2");
        let h = w.to_header();
        assert_eq!(Workload::parse(h.as_bytes()), Some(w));
        assert_eq!(Workload::parse(b"garbage"), None);
        let partial = Workload::parse(b"workload=x").unwrap();
        assert_eq!((partial.name.as_str(), partial.app.as_str()), ("x", UNKNOWN));
    }

    #[test]
    fn pod_without_app_or_version_labels_falls_back_like_istio() {
        let w = Workload::from_pod("db-main", "default", &BTreeMap::new());
        assert_eq!((w.app.as_str(), w.version.as_str()), (UNKNOWN, UNKNOWN));
        assert_eq!((w.canonical_service.as_str(), w.canonical_revision.as_str()), ("db-main", "latest"));
    }

    #[test]
    fn histogram_buckets_are_upper_inclusive_and_cumulative() {
        let mut h = Hist::default();
        for ns in [400_000, 500_000, 501_000, 1_000_000, 7_000_000_000_000] {
            h.record(ns);
        }
        // 0.4 ms and 0.5 ms in le=0.5; 0.501 ms and 1 ms in le=1; 7000 s in +Inf.
        let c = h.cumulative();
        assert_eq!(c.len(), 20);
        assert_eq!((c[0], c[1], c[18], c[19]), (2, 4, 4, 5));
        assert_eq!(h.count(), 5);
    }

    fn request(reporter: Reporter, peer: PeerId, code: u16, flags: &[Flag]) -> HttpRequest<'_> {
        HttpRequest {
            reporter,
            peer,
            service: "reviews.default.svc.cluster.local",
            code,
            flags,
            security: if reporter == Reporter::Source { Security::Unknown } else { Security::None },
            principals: [None, None],
            duration: Duration::from_millis(3),
            request_bytes: 0,
            response_bytes: 2,
        }
    }

    #[test]
    fn mtls_principals_split_series_and_plaintext_ones_are_unknown() {
        let me = Workload::from_pod("reviews-v1", "default", &labels(&[("app", "reviews")]));
        let mut m = Metrics::new(me);
        let (a, b, own) = (
            "spiffe://cluster.local/ns/default/sa/a",
            "spiffe://cluster.local/ns/default/sa/b",
            "spiffe://td/ns/x/sa/y",
        );
        for src in [Some(a), Some(b), Some(a), None] {
            let mut r = request(Reporter::Destination, PeerId::UNKNOWN, 200, &[]);
            if src.is_some() {
                r.security = Security::MutualTls;
                r.principals = [src, Some(own)];
            }
            m.record_http(&r);
        }
        let s = m.series();
        let count = |src: &str, dst: &str| {
            s.iter()
                .filter(|x| x.labels["source_principal"] == src && x.labels["destination_principal"] == dst)
                .map(|x| x.value("istio_requests_total", None).unwrap())
                .sum::<f64>() as u64
        };
        assert_eq!(s.len(), 3);
        assert_eq!((count(a, own), count(b, own), count(UNKNOWN, UNKNOWN)), (2, 1, 1));
        let plain = s.iter().find(|x| x.labels["source_principal"] == UNKNOWN).unwrap();
        assert_eq!(plain.labels["connection_security_policy"], "none");
    }

    #[test]
    fn series_carry_exactly_istios_labels_with_both_workloads() {
        let me = Workload::from_pod("frontend-v1", "default", &labels(&[("app", "frontend")]));
        let peer = Workload::from_pod("reviews-v1", "default", &labels(&[("app", "reviews"), ("version", "v1")]));
        let mut m = Metrics::new(me);
        let p = m.peer(Some(peer.to_header().as_bytes()));
        m.record_http(&request(Reporter::Source, p, 200, &[]));
        m.record_http(&request(Reporter::Source, p, 200, &[]));
        m.record_http(&request(Reporter::Source, PeerId::UNKNOWN, 503, &[Flag::UpstreamOverflow]));
        let s = m.series();
        assert_eq!(s.len(), 2);
        for x in &s {
            assert_eq!(x.labels.keys().copied().collect::<Vec<_>>(), {
                let mut l = LABELS.to_vec();
                l.sort();
                l
            });
        }
        let by_code = |c: &str| s.iter().find(|x| x.labels["response_code"] == c).unwrap();
        let ok = by_code("200");
        assert_eq!(ok.value("istio_requests_total", None), Some(2.0));
        assert_eq!(ok.labels["source_workload"], "frontend-v1");
        assert_eq!(ok.labels["destination_workload"], "reviews-v1");
        assert_eq!(ok.labels["destination_version"], "v1");
        assert_eq!(ok.labels["destination_service_name"], "reviews");
        assert_eq!(ok.labels["destination_service_namespace"], "default");
        assert_eq!(ok.labels["response_flags"], "-");
        assert_eq!(ok.labels["connection_security_policy"], "unknown");
        let uo = by_code("503");
        assert_eq!(uo.labels["response_code"], "503");
        assert_eq!(uo.labels["response_flags"], "UO");
        assert_eq!(uo.labels["destination_workload"], UNKNOWN);
        assert_eq!(uo.value("istio_response_bytes_sum", None), Some(2.0));
    }

    #[test]
    fn destination_reporter_puts_the_peer_on_the_source_side() {
        let me = Workload::from_pod("reviews-v1", "default", &BTreeMap::new());
        let mut m = Metrics::new(me);
        let p = m.peer(Some(b"workload=frontend-v1;namespace=web"));
        m.record_http(&request(Reporter::Destination, p, 429, &[Flag::RateLimited]));
        let s = &m.series()[0];
        assert_eq!(s.labels["reporter"], "destination");
        assert_eq!(s.labels["source_workload"], "frontend-v1");
        assert_eq!(s.labels["source_workload_namespace"], "web");
        assert_eq!(s.labels["destination_workload"], "reviews-v1");
        assert_eq!(s.labels["connection_security_policy"], "none");
        assert_eq!(s.labels["response_flags"], "RL");
    }

    #[test]
    fn tcp_series_have_istios_tcp_labels_and_four_counters() {
        let me = Workload::from_pod("client-v1", "default", &labels(&[("app", "client")]));
        let mut m = Metrics::new(me);
        let p = m.peer(Some(b"workload=db-v1;namespace=default;app=db"));
        let c = TcpConnection {
            reporter: Reporter::Source,
            peer: p,
            service: "db.default.svc.cluster.local",
            flags: &[],
            security: Security::Unknown,
            principals: [Some("spiffe://cluster.local/ns/default/sa/client"), None],
        };
        m.record_tcp(&c, TcpDelta { opened: 1, ..TcpDelta::default() });
        m.record_tcp(&c, TcpDelta { opened: 0, closed: 1, sent: 7, received: 5 });
        m.record_tcp(
            &TcpConnection { flags: &[Flag::UpstreamConnectionFailure], peer: PeerId::UNKNOWN, ..c },
            TcpDelta { opened: 1, closed: 1, sent: 0, received: 0 },
        );
        let s = m.series();
        assert_eq!(s.len(), 2);
        let ok = s.iter().find(|x| x.labels["response_flags"] == "-").unwrap();
        assert!(ok.is_tcp());
        let mut want = TCP_LABELS.to_vec();
        want.sort_unstable();
        assert_eq!(ok.labels.keys().copied().collect::<Vec<_>>(), want);
        assert_eq!(ok.labels["request_protocol"], "tcp");
        assert_eq!(ok.labels["destination_workload"], "db-v1");
        assert_eq!(ok.labels["response_flags"], "-");
        let values: Vec<Option<f64>> = COUNTERS[1..].iter().map(|n| ok.value(n, None)).collect();
        assert_eq!(values, [Some(7.0), Some(5.0), Some(1.0), Some(1.0)]);
        assert_eq!(ok.value("istio_requests_total", None), None, "a TCP series has no HTTP metric");
        assert!(s.iter().any(|x| x.labels["response_flags"] == "UF" && x.labels["destination_workload"] == UNKNOWN));
        let text = encode_prometheus(&s).unwrap();
        assert!(text.contains("# TYPE istio_tcp_sent_bytes_total counter"), "{text}");
        assert!(!text.contains("istio_requests_total"), "{text}");
        let line = text
            .lines()
            .find(|l| l.starts_with("istio_tcp_received_bytes_total{") && l.contains("response_flags=\"-\""))
            .unwrap();
        assert!(line.contains("request_protocol=\"tcp\"") && !line.contains("response_code"), "{line}");
        assert!(line.ends_with("} 5"), "{line}");
    }

    #[test]
    fn series_values_answer_counter_and_histogram_names() {
        let mut m = Metrics::new(Workload::unknown());
        m.record_http(&request(Reporter::Source, PeerId::UNKNOWN, 200, &[]));
        let s = &m.series()[0];
        assert_eq!(s.value("istio_requests_total", None), Some(1.0));
        assert_eq!(s.value("istio_request_duration_milliseconds_count", None), Some(1.0));
        assert_eq!(s.value("istio_request_duration_milliseconds_sum", None), Some(3.0));
        assert_eq!(s.value("istio_request_duration_milliseconds_bucket", Some("1")), Some(0.0));
        assert_eq!(s.value("istio_request_duration_milliseconds_bucket", Some("5")), Some(1.0));
        assert_eq!(s.value("istio_request_duration_milliseconds_bucket", Some("+Inf")), Some(1.0));
        assert_eq!(s.value("istio_response_bytes_sum", None), Some(2.0));
        assert_eq!(s.value("istio_nothing", None), None);
        assert!(is_metric_name("istio_request_bytes_bucket"));
        assert!(!is_metric_name("istio_request_bytes"));
    }

    #[test]
    fn prometheus_text_has_counters_and_histograms_with_istio_labels() {
        let mut m = Metrics::new(Workload::from_pod("frontend-v1", "default", &BTreeMap::new()));
        m.record_http(&request(Reporter::Source, PeerId::UNKNOWN, 200, &[]));
        let text = encode_prometheus(&m.series()).unwrap();
        assert!(text.contains("# TYPE istio_requests_total counter"), "{text}");
        assert!(text.contains("# TYPE istio_request_duration_milliseconds histogram"), "{text}");
        let line = text.lines().find(|l| l.starts_with("istio_requests_total{")).unwrap();
        assert!(line.starts_with("istio_requests_total{reporter=\"source\",source_workload=\"frontend-v1\""), "{line}");
        assert!(line.ends_with("} 1"), "{line}");
        assert!(text.contains("le=\"0.5\""), "{text}");
        assert!(text.contains("le=\"+Inf\""), "{text}");
    }
}
