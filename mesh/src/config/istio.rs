//! The Istio resource model: `VirtualService` and `DestinationRule` as written in Istio's
//! own YAML (`networking.istio.io/v1`), and `AuthorizationPolicy` and `PeerAuthentication`
//! (`security.istio.io/v1`),
//! with source positions kept for validation.
//!
//! Every struct denies unknown fields: a field Istio does not have is an error. Fields
//! Istio has but meshsim does not simulate yet are typed [`NotSimulated`]; validation
//! turns each one present into a warning naming it. The `HTTPMatchRequest` and
//! `HTTPRetry` parts of a VirtualService are in [`super::route_match`] and
//! [`super::retry`] with their validation. Defaults, the rest of validation and the
//! compilation into what a proxy runs live in `crate::snapshot`.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde_saphyr::Spanned;

use super::duration::IstioDuration;

/// A field of Istio's API that meshsim parses but does not simulate yet.
pub type NotSimulated = Option<Spanned<IgnoredAny>>;

/// Kubernetes object metadata (the parts meshsim reads; bookkeeping fields are accepted).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    pub name: Option<Spanned<String>>,
    #[serde(default)]
    pub namespace: Option<Spanned<String>>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    pub creation_timestamp: Option<String>,
    // Kubernetes bookkeeping, as `kubectl get -o yaml` prints it: no effect on behaviour.
    pub uid: Option<IgnoredAny>,
    pub resource_version: Option<IgnoredAny>,
    pub generation: Option<IgnoredAny>,
    pub managed_fields: Option<IgnoredAny>,
    pub owner_references: Option<IgnoredAny>,
    pub finalizers: Option<IgnoredAny>,
    pub generate_name: Option<IgnoredAny>,
    pub self_link: Option<IgnoredAny>,
}

/// One Kubernetes document holding an Istio resource.
#[derive(Clone, Debug)]
pub struct Resource {
    pub api_version: Spanned<String>,
    pub kind: Spanned<String>,
    pub metadata: Metadata,
    pub spec: Spec,
}

#[derive(Clone, Debug)]
pub enum Spec {
    VirtualService(Box<VirtualServiceSpec>),
    DestinationRule(Box<DestinationRuleSpec>),
    AuthorizationPolicy(Box<AuthorizationPolicySpec>),
    /// Only its local rate limit patch runs (see [`super::envoy_filter`]).
    EnvoyFilter(Box<super::envoy_filter::EnvoyFilterSpec>),
    PeerAuthentication(Box<PeerAuthenticationSpec>),
    /// A kind meshsim does not simulate; validation reports it at the `kind` field.
    Unsupported,
}

impl Resource {
    pub fn name(&self) -> &str {
        self.metadata.name.as_ref().map(|n| n.value.as_str()).unwrap_or("")
    }
    pub fn namespace(&self) -> &str {
        self.metadata.namespace.as_ref().map(|n| n.value.as_str()).unwrap_or("default")
    }
}

impl<'de> de::Deserialize<'de> for Resource {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ResourceVisitor;
        impl<'de> Visitor<'de> for ResourceVisitor {
            type Value = Resource;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a Kubernetes object with apiVersion, kind, metadata and spec")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Resource, A::Error> {
                let mut api_version: Option<Spanned<String>> = None;
                let mut kind: Option<Spanned<String>> = None;
                let mut metadata: Option<Metadata> = None;
                let mut spec: Option<Spec> = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "apiVersion" => api_version = Some(map.next_value()?),
                        "kind" => {
                            kind = Some(map.next_value()?);
                        }
                        "metadata" => metadata = Some(map.next_value()?),
                        "status" => {
                            map.next_value::<IgnoredAny>()?;
                        }
                        "spec" => {
                            let Some(k) = &kind else {
                                // Not `custom`: serde-saphyr positions only its typed errors
                                // here (at the key just read) when this is a document's root.
                                return Err(de::Error::invalid_value(
                                    de::Unexpected::Other("`spec` before `kind`"),
                                    &"`kind` first (meshsim reads spec by kind)",
                                ));
                            };
                            spec = Some(match k.value.as_str() {
                                "VirtualService" => Spec::VirtualService(map.next_value()?),
                                "DestinationRule" => Spec::DestinationRule(map.next_value()?),
                                "AuthorizationPolicy" => Spec::AuthorizationPolicy(map.next_value()?),
                                "EnvoyFilter" => Spec::EnvoyFilter(map.next_value()?),
                                "PeerAuthentication" => Spec::PeerAuthentication(map.next_value()?),
                                _ => {
                                    map.next_value::<IgnoredAny>()?;
                                    Spec::Unsupported
                                }
                            });
                        }
                        other => {
                            return Err(de::Error::unknown_field(other, &["apiVersion", "kind", "metadata", "spec"]));
                        }
                    }
                }
                let api_version = api_version.ok_or_else(|| de::Error::missing_field("apiVersion"))?;
                let kind = kind.ok_or_else(|| de::Error::missing_field("kind"))?;
                let metadata = metadata.ok_or_else(|| de::Error::missing_field("metadata"))?;
                let spec = spec.ok_or_else(|| de::Error::missing_field("spec"))?;
                Ok(Resource { api_version, kind, metadata, spec })
            }
        }
        deserializer.deserialize_map(ResourceVisitor)
    }
}

// ---------------------------------------------------------------- VirtualService

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VirtualServiceSpec {
    #[serde(default)]
    pub hosts: Vec<Spanned<String>>,
    #[serde(default)]
    pub gateways: Vec<Spanned<String>>,
    #[serde(default)]
    pub http: Vec<HttpRoute>,
    pub tls: NotSimulated,
    /// Routes of a TCP service's connections (by port and source), to weighted
    /// destinations.
    #[serde(default)]
    pub tcp: Vec<TcpRoute>,
    pub export_to: NotSimulated,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpRoute {
    #[serde(rename = "match", default)]
    pub match_: Vec<Spanned<L4MatchAttributes>>,
    #[serde(default)]
    pub route: Vec<RouteDestination>,
}

/// Istio's `L4MatchAttributes`: what a TCP route matches a connection on.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct L4MatchAttributes {
    pub destination_subnets: NotSimulated,
    /// The service port the connection is addressed to.
    pub port: Option<Spanned<u32>>,
    /// Labels the client workload must all have.
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    pub gateways: NotSimulated,
    /// The client workload's namespace.
    pub source_namespace: Option<String>,
}

/// A weighted destination of a TCP route.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteDestination {
    pub destination: Destination,
    pub weight: Option<Spanned<i64>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRoute {
    pub name: Option<String>,
    #[serde(rename = "match", default)]
    pub match_: Vec<Spanned<super::route_match::HttpMatchRequest>>,
    #[serde(default)]
    pub route: Vec<HttpRouteDestination>,
    pub timeout: Option<Spanned<IstioDuration>>,
    pub redirect: Option<Spanned<HttpRedirect>>,
    pub direct_response: Option<Spanned<HttpDirectResponse>>,
    pub delegate: NotSimulated,
    pub rewrite: Option<Spanned<HttpRewrite>>,
    pub retries: Option<Spanned<super::retry::HttpRetry>>,
    pub fault: Option<Spanned<HttpFaultInjection>>,
    pub mirror: Option<Spanned<Destination>>,
    pub mirrors: NotSimulated,
    pub mirror_percentage: Option<Spanned<Percent>>,
    pub mirror_percent: Option<Spanned<u32>>,
    pub cors_policy: NotSimulated,
    pub headers: Option<Headers>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteDestination {
    pub destination: Destination,
    pub weight: Option<Spanned<i64>>,
    pub headers: Option<Headers>,
}

/// A percentage as Istio writes it: `{value: 12.5}`.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Percent {
    pub value: f64,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Headers {
    pub request: Option<HeaderOperations>,
    pub response: Option<HeaderOperations>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderOperations {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRedirect {
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub port: Option<u32>,
    pub derive_port: NotSimulated,
    pub scheme: Option<String>,
    pub redirect_code: Option<Spanned<u32>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpDirectResponse {
    pub status: Spanned<u32>,
    pub body: Option<HttpBody>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpBody {
    pub string: Option<String>,
    /// Base64 in Istio's API; meshsim takes the text as is.
    pub bytes: NotSimulated,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRewrite {
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub uri_regex_rewrite: NotSimulated,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpFaultInjection {
    pub delay: Option<Spanned<FaultDelay>>,
    pub abort: Option<Spanned<FaultAbort>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultDelay {
    pub fixed_delay: Option<Spanned<IstioDuration>>,
    pub exponential_delay: NotSimulated,
    pub percentage: Option<Percent>,
    /// Deprecated integer percent.
    pub percent: Option<u32>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultAbort {
    pub http_status: Option<Spanned<i64>>,
    pub grpc_status: NotSimulated,
    pub http2_error: NotSimulated,
    pub percentage: Option<Percent>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Destination {
    pub host: Spanned<String>,
    pub subset: Option<Spanned<String>>,
    pub port: Option<PortSelector>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortSelector {
    pub number: Spanned<u32>,
}

// ---------------------------------------------------------------- DestinationRule

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DestinationRuleSpec {
    pub host: Spanned<String>,
    pub traffic_policy: Option<TrafficPolicy>,
    #[serde(default)]
    pub subsets: Vec<Subset>,
    pub export_to: NotSimulated,
    pub workload_selector: NotSimulated,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Subset {
    pub name: Spanned<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub traffic_policy: Option<TrafficPolicy>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrafficPolicy {
    pub load_balancer: Option<Spanned<LoadBalancerSettings>>,
    pub connection_pool: Option<Spanned<ConnectionPoolSettings>>,
    pub outlier_detection: Option<Spanned<OutlierDetection>>,
    pub tls: Option<Spanned<ClientTlsSettings>>,
    pub port_level_settings: NotSimulated,
    pub tunnel: NotSimulated,
    pub proxy_protocol: NotSimulated,
    pub retry_budget: Option<Spanned<RetryBudget>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoadBalancerSettings {
    pub simple: Option<Spanned<SimpleLb>>,
    pub consistent_hash: Option<Spanned<ConsistentHash>>,
    pub locality_lb_setting: NotSimulated,
    pub warmup_duration_secs: NotSimulated,
    pub warmup: NotSimulated,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SimpleLb {
    Unspecified,
    LeastConn,
    Random,
    Passthrough,
    RoundRobin,
    LeastRequest,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConnectionPoolSettings {
    pub tcp: Option<TcpSettings>,
    pub http: Option<HttpSettings>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpSettings {
    pub connect_timeout: Option<Spanned<IstioDuration>>,
    pub max_connections: Option<i64>,
    pub tcp_keepalive: NotSimulated,
    pub max_connection_duration: Option<Spanned<IstioDuration>>,
    pub idle_timeout: Option<Spanned<IstioDuration>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpSettings {
    pub http1_max_pending_requests: Option<i64>,
    pub http2_max_requests: Option<i64>,
    pub max_requests_per_connection: Option<i64>,
    pub max_retries: Option<i64>,
    pub idle_timeout: Option<Spanned<IstioDuration>>,
    pub h2_upgrade_policy: NotSimulated,
    pub use_client_protocol: NotSimulated,
    pub max_concurrent_streams: NotSimulated,
}

/// `trafficPolicy.retryBudget`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetryBudget {
    pub percent: Option<Spanned<Percent>>,
    pub min_retry_concurrency: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConsistentHash {
    pub http_header_name: Option<String>,
    pub http_cookie: Option<HttpCookie>,
    pub use_source_ip: Option<bool>,
    pub http_query_parameter_name: Option<String>,
    pub ring_hash: Option<RingHashSettings>,
    pub maglev: Option<MaglevSettings>,
    /// Deprecated: `ringHash.minimumRingSize`.
    pub minimum_ring_size: Option<u64>,
    pub locality_lb_setting: NotSimulated,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpCookie {
    pub name: String,
    pub path: Option<String>,
    pub ttl: Option<IstioDuration>,
    pub attributes: NotSimulated,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RingHashSettings {
    pub minimum_ring_size: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MaglevSettings {
    pub table_size: Option<Spanned<u64>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutlierDetection {
    pub consecutive_5xx_errors: Option<Spanned<u32>>,
    pub consecutive_gateway_errors: Option<Spanned<u32>>,
    pub interval: Option<Spanned<IstioDuration>>,
    pub base_ejection_time: Option<Spanned<IstioDuration>>,
    pub max_ejection_percent: Option<Spanned<i32>>,
    pub min_health_percent: Option<Spanned<i32>>,
    pub split_external_local_origin_errors: NotSimulated,
    pub consecutive_local_origin_failures: NotSimulated,
    pub consecutive_errors: NotSimulated,
}

// ---------------------------------------------------------------- AuthorizationPolicy

/// `security.istio.io/v1` `AuthorizationPolicy`. Every field is optional: `spec: {}` is
/// the allow-nothing policy.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    pub selector: Option<Spanned<WorkloadSelector>>,
    pub target_ref: Option<Spanned<PolicyTargetReference>>,
    #[serde(default)]
    pub target_refs: Vec<Spanned<PolicyTargetReference>>,
    pub action: Option<Spanned<AuthorizationAction>>,
    pub provider: Option<Spanned<ExtensionProvider>>,
    #[serde(default)]
    pub rules: Vec<Spanned<AuthorizationRule>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// Attaches a policy to a gateway or waypoint (never to a sidecar).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyTargetReference {
    pub group: Option<String>,
    pub kind: Option<String>,
    pub name: Option<String>,
    pub namespace: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AuthorizationAction {
    #[default]
    Allow,
    Deny,
    Audit,
    Custom,
}

impl AuthorizationAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthorizationAction::Allow => "ALLOW",
            AuthorizationAction::Deny => "DENY",
            AuthorizationAction::Audit => "AUDIT",
            AuthorizationAction::Custom => "CUSTOM",
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExtensionProvider {
    pub name: Option<String>,
}

/// One `rules[]` entry. `from`/`to` keep "absent" apart from "empty" (the webhook
/// rejects an empty list).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationRule {
    pub from: Option<Vec<Spanned<RuleFrom>>>,
    pub to: Option<Vec<Spanned<RuleTo>>>,
    #[serde(default)]
    pub when: Vec<Spanned<Condition>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleFrom {
    pub source: Option<Spanned<Source>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleTo {
    pub operation: Option<Spanned<Operation>>,
}

/// Who sent a request. Fields AND together; the values of one field OR.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Source {
    #[serde(default)]
    pub principals: Vec<Spanned<String>>,
    #[serde(default)]
    pub not_principals: Vec<Spanned<String>>,
    #[serde(default)]
    pub request_principals: Vec<Spanned<String>>,
    #[serde(default)]
    pub not_request_principals: Vec<Spanned<String>>,
    #[serde(default)]
    pub namespaces: Vec<Spanned<String>>,
    #[serde(default)]
    pub not_namespaces: Vec<Spanned<String>>,
    #[serde(default)]
    pub service_accounts: Vec<Spanned<String>>,
    #[serde(default)]
    pub not_service_accounts: Vec<Spanned<String>>,
    #[serde(default)]
    pub ip_blocks: Vec<Spanned<String>>,
    #[serde(default)]
    pub not_ip_blocks: Vec<Spanned<String>>,
    #[serde(default)]
    pub remote_ip_blocks: Vec<Spanned<String>>,
    #[serde(default)]
    pub not_remote_ip_blocks: Vec<Spanned<String>>,
}

/// What a request does. Fields AND together; the values of one field OR.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Operation {
    #[serde(default)]
    pub hosts: Vec<Spanned<String>>,
    #[serde(default)]
    pub not_hosts: Vec<Spanned<String>>,
    #[serde(default)]
    pub ports: Vec<Spanned<String>>,
    #[serde(default)]
    pub not_ports: Vec<Spanned<String>>,
    #[serde(default)]
    pub methods: Vec<Spanned<String>>,
    #[serde(default)]
    pub not_methods: Vec<Spanned<String>>,
    #[serde(default)]
    pub paths: Vec<Spanned<String>>,
    #[serde(default)]
    pub not_paths: Vec<Spanned<String>>,
}

/// A `when` condition on one attribute (`request.headers[x]`, `source.ip`, …).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Condition {
    pub key: Spanned<String>,
    #[serde(default)]
    pub values: Vec<Spanned<String>>,
    #[serde(default)]
    pub not_values: Vec<Spanned<String>>,
}

/// `trafficPolicy.tls`: how a client sidecar talks TLS to the destination.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClientTlsSettings {
    pub mode: Option<Spanned<ClientTlsMode>>,
    pub client_certificate: NotSimulated,
    pub private_key: NotSimulated,
    pub ca_certificates: NotSimulated,
    pub credential_name: NotSimulated,
    pub subject_alt_names: NotSimulated,
    pub sni: NotSimulated,
    pub insecure_skip_verify: NotSimulated,
    pub ca_crl: NotSimulated,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClientTlsMode {
    Disable,
    Simple,
    Mutual,
    IstioMutual,
}

// ---------------------------------------------------------------- PeerAuthentication

/// `security.istio.io/v1` PeerAuthentication: which connections a workload's inbound
/// side accepts ([Istio reference](https://istio.io/latest/docs/reference/config/security/peer_authentication/)).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    pub selector: Option<Spanned<WorkloadSelector>>,
    pub mtls: Option<Spanned<PeerMtls>>,
    /// Keyed by workload (target) port.
    #[serde(default, deserialize_with = "port_level_mtls")]
    pub port_level_mtls: Option<Spanned<BTreeMap<u32, PeerMtls>>>,
}

/// A `portLevelMtls` key: a number in YAML, a string of digits in JSON (whose object keys
/// are strings, as Kubernetes stores the resource and as the control plane pushes it).
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct PortKey(u32);

impl<'de> Deserialize<'de> for PortKey {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PortKey;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a port number")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortKey, E> {
                u32::try_from(v).map(PortKey).map_err(|_| E::custom(format!("port {v} is out of range")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortKey, E> {
                u32::try_from(v).map(PortKey).map_err(|_| E::custom(format!("port {v} is out of range")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortKey, E> {
                v.parse().map(PortKey).map_err(|_| E::invalid_type(de::Unexpected::Str(v), &self))
            }
        }
        d.deserialize_any(V)
    }
}

fn port_level_mtls<'de, D: de::Deserializer<'de>>(d: D) -> Result<Option<Spanned<BTreeMap<u32, PeerMtls>>>, D::Error> {
    let keyed: Option<Spanned<BTreeMap<PortKey, PeerMtls>>> = Deserialize::deserialize(d)?;
    Ok(keyed.map(|s| Spanned::new(s.value.into_iter().map(|(k, v)| (k.0, v)).collect(), s.referenced, s.defined)))
}

impl WorkloadSelector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PeerMtls {
    pub mode: Option<Spanned<MtlsMode>>,
}

impl PeerMtls {
    pub fn mode(&self) -> MtlsMode {
        self.mode.as_ref().map(|m| m.value).unwrap_or(MtlsMode::Unset)
    }
}

/// PeerAuthentication `mtls.mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherit from the parent tier.
    Unset,
    /// Plaintext only.
    Disable,
    /// mTLS and plaintext on the same port.
    Permissive,
    /// mTLS only.
    Strict,
}

impl MtlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            MtlsMode::Unset => "UNSET",
            MtlsMode::Disable => "DISABLE",
            MtlsMode::Permissive => "PERMISSIVE",
            MtlsMode::Strict => "STRICT",
        }
    }
}
