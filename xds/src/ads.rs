//! The Aggregated Discovery Service, state of the world (what istiod serves on 15010):
//! every Envoy opens one gRPC stream, names itself in its first request (`node.id` is
//! its pod) and asks for clusters and listeners; it then asks for the endpoints and
//! route configurations (and secrets) those name. Each answer carries the proxy's
//! config version as `version_info` and a fresh nonce; Envoy ACKs by echoing both, or
//! NACKs with `error_detail` and keeps its last good config
//! (<https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#ack-nack-and-resource-type-instance-version>).
//!
//! On every change of the [`Source`] each type the proxy subscribed to is sent again,
//! in the order the xDS protocol recommends for make-before-break (clusters, endpoints,
//! listeners, routes; secrets first, as they are referenced by both).
//!
//! Reported like meshsim's own control plane ([`mesh::control::ControlEvents`]): a
//! proxy's `Connected` and `Disconnected`, `Acked` once it has ACKed a version for every
//! type it holds, `Nacked` with Envoy's error message.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;

use mesh::control::{ControlEvent, ControlEventKind, ControlEvents};
use mesh::net::Clock;
use prost::Name;
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::any;
use crate::pb::envoy::config::cluster::v3::Cluster;
use crate::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use crate::pb::envoy::config::listener::v3::Listener;
use crate::pb::envoy::config::route::v3::RouteConfiguration;
use crate::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use crate::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use crate::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use crate::pb::google::protobuf::Any;
use crate::translate::Resources;

/// Where the ADS server gets each proxy's resources.
pub trait Source: Send + Sync + 'static {
    /// Proxy `node`'s config version and resources; `None` for a proxy the mesh does
    /// not know (its stream is refused).
    fn resources(&self, node: &str) -> Option<(u64, Arc<Resources>)>;
    /// Changes whenever any proxy's config may have changed.
    fn changes(&self) -> watch::Receiver<u64>;
}

/// The resource types, in the order a push sends them.
pub fn type_urls() -> [String; 5] {
    [
        Secret::type_url(),
        Cluster::type_url(),
        ClusterLoadAssignment::type_url(),
        Listener::type_url(),
        RouteConfiguration::type_url(),
    ]
}

/// Whether a type is asked for by name (`false`: wildcard, every resource).
fn by_name(type_url: &str) -> bool {
    type_url != Cluster::type_url() && type_url != Listener::type_url()
}

/// The resources of one type, by name, packed.
fn of_type(r: &Resources, type_url: &str) -> Vec<(String, Any)> {
    if type_url == Cluster::type_url() {
        r.clusters.iter().map(|c| (c.name.clone(), any(c))).collect()
    } else if type_url == ClusterLoadAssignment::type_url() {
        r.endpoints.iter().map(|c| (c.cluster_name.clone(), any(c))).collect()
    } else if type_url == Listener::type_url() {
        r.listeners.iter().map(|l| (l.name.clone(), any(l))).collect()
    } else if type_url == RouteConfiguration::type_url() {
        r.routes.iter().map(|c| (c.name.clone(), any(c))).collect()
    } else if type_url == Secret::type_url() {
        r.secrets.iter().map(|s| (s.name.clone(), any(s))).collect()
    } else {
        Vec::new()
    }
}

/// The part of an Envoy NACK message that says what is wrong: Envoy 1.40 prints the
/// rejected resource's protobuf debug dump (`goo.gle/debugonly …`) before the error
/// itself, which follows the dump's last `\n: `.
pub fn nack_reason(message: &str) -> String {
    let reason = match message.rsplit_once("\n: ") {
        Some((_, after)) => after,
        None => message,
    };
    reason.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The ADS service, for tonic's server.
pub struct Ads {
    source: Arc<dyn Source>,
    events: Arc<dyn ControlEvents>,
    clock: Arc<dyn Clock>,
}

impl Ads {
    pub fn new(
        source: Arc<dyn Source>,
        events: Arc<dyn ControlEvents>,
        clock: Arc<dyn Clock>,
    ) -> AggregatedDiscoveryServiceServer<Ads> {
        AggregatedDiscoveryServiceServer::new(Ads { source, events, clock })
    }
}

type Responses = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;
type DeltaResponses = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = Responses;
    type DeltaAggregatedResourcesStream = DeltaResponses;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Responses>, Status> {
        let (tx, rx) = mpsc::channel(16);
        let stream = ProxyStream {
            source: self.source.clone(),
            events: self.events.clone(),
            clock: self.clock.clone(),
            node: String::new(),
            types: BTreeMap::new(),
            nonce: 0,
            reported: 0,
            tx,
        };
        tokio::spawn(stream.run(request.into_inner()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaResponses>, Status> {
        Err(Status::unimplemented("meshsim's control plane serves state-of-the-world ADS"))
    }
}

/// One type's state on one stream.
#[derive(Default)]
struct TypeState {
    /// Names asked for (types asked for by name).
    names: BTreeSet<String>,
    /// The last response: its version and nonce.
    sent: Option<(u64, String)>,
    /// The last version ACKed.
    acked: Option<u64>,
}

struct ProxyStream {
    source: Arc<dyn Source>,
    events: Arc<dyn ControlEvents>,
    clock: Arc<dyn Clock>,
    node: String,
    types: BTreeMap<String, TypeState>,
    nonce: u64,
    /// The highest version reported ACKed or NACKed.
    reported: u64,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
}

impl ProxyStream {
    fn event(&self, version: u64, kind: ControlEventKind) {
        self.events.control_event(ControlEvent { at: self.clock.now(), proxy: self.node.clone(), version, kind });
    }

    async fn run(mut self, mut requests: Streaming<DiscoveryRequest>) {
        let mut changes = self.source.changes();
        changes.mark_unchanged();
        let mut acked = 0;
        loop {
            tokio::select! {
                next = requests.message() => match next {
                    Ok(Some(req)) => {
                        if !self.request(req).await {
                            break;
                        }
                        acked = self.acked_version().unwrap_or(acked);
                    }
                    Ok(None) | Err(_) => break,
                },
                changed = changes.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    // Changes this close together go out as one push, as istiod debounces.
                    tokio::time::sleep(mesh::control::DEBOUNCE).await;
                    changes.mark_unchanged();
                    if !self.push_all().await {
                        break;
                    }
                }
            }
        }
        if !self.node.is_empty() {
            self.event(acked, ControlEventKind::Disconnected);
        }
    }

    /// Handles one request; `false` ends the stream.
    async fn request(&mut self, req: DiscoveryRequest) -> bool {
        if self.node.is_empty() {
            let Some(node) = req.node.as_ref().map(|n| n.id.clone()).filter(|id| !id.is_empty()) else {
                let _ = self.tx.send(Err(Status::invalid_argument("the first request must name its node"))).await;
                return false;
            };
            if self.source.resources(&node).is_none() {
                let _ = self.tx.send(Err(Status::not_found(format!("no proxy {node:?} in this mesh")))).await;
                return false;
            }
            self.node = node;
            self.event(0, ControlEventKind::Connected);
        }
        let t = req.type_url.clone();
        let state = self.types.entry(t.clone()).or_default();
        if !req.response_nonce.is_empty() {
            // An answer to a response that is not the latest of its type is stale.
            let Some((version, nonce)) = state.sent.clone() else { return true };
            if nonce != req.response_nonce {
                return true;
            }
            if let Some(error) = &req.error_detail {
                let reason = nack_reason(&error.message);
                if version > self.reported {
                    self.reported = version;
                    self.event(version, ControlEventKind::Nacked { reason });
                }
            } else {
                state.acked = Some(version);
            }
        }
        let names: BTreeSet<String> = req.resource_names.iter().cloned().collect();
        let state = self.types.get_mut(&t).expect("inserted above");
        let resend = state.sent.is_none() || (by_name(&t) && names != state.names);
        state.names = names;
        if let Some(v) = self.acked_version()
            && v > self.reported
        {
            self.reported = v;
            self.event(v, ControlEventKind::Acked);
        }
        if resend { self.push(&t).await } else { true }
    }

    /// The version every type the proxy holds has ACKed, once they all have the same.
    fn acked_version(&self) -> Option<u64> {
        let (version, resources) = self.source.resources(&self.node)?;
        let mut expected = vec![Cluster::type_url(), Listener::type_url()];
        if !resources.endpoints.is_empty() {
            expected.push(ClusterLoadAssignment::type_url());
        }
        if !resources.routes.is_empty() {
            expected.push(RouteConfiguration::type_url());
        }
        if !resources.secrets.is_empty() {
            expected.push(Secret::type_url());
        }
        let all = expected.iter().all(|t| self.types.get(t).and_then(|s| s.acked) == Some(version));
        all.then_some(version)
    }

    /// Sends the proxy's current resources of type `t`; `false` when the stream is gone.
    async fn push(&mut self, t: &str) -> bool {
        let Some((version, resources)) = self.source.resources(&self.node) else { return false };
        let state = self.types.get_mut(t).expect("a type is known before it is pushed");
        let all = of_type(&resources, t);
        let chosen: Vec<Any> = if by_name(t) {
            all.into_iter().filter(|(n, _)| state.names.contains(n)).map(|(_, a)| a).collect()
        } else {
            all.into_iter().map(|(_, a)| a).collect()
        };
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        state.sent = Some((version, nonce.clone()));
        let response = DiscoveryResponse {
            version_info: version.to_string(),
            resources: chosen,
            type_url: t.to_string(),
            nonce,
            ..Default::default()
        };
        self.tx.send(Ok(response)).await.is_ok()
    }

    /// Sends every type the proxy subscribed to, in push order.
    async fn push_all(&mut self) -> bool {
        for t in type_urls() {
            if self.types.contains_key(&t) && !self.push(&t).await {
                return false;
            }
        }
        true
    }
}

/// Serves ADS on `listener` until the future is dropped (istiod crashing drops it, and
/// with it every stream).
#[allow(clippy::disallowed_types)] // the control plane's real listener, handed in by the world
pub async fn serve(
    listener: tokio::net::TcpListener,
    source: Arc<dyn Source>,
    events: Arc<dyn ControlEvents>,
    clock: Arc<dyn Clock>,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(Ads::new(source, events, clock))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await
}

#[cfg(test)]
mod tests {
    use super::nack_reason;

    #[test]
    fn a_nack_reason_is_the_error_after_envoys_proto_dump() {
        let m = "goo.gle/debugonly  \nname: \"c\"\nconnect_timeout {\n  seconds: 10\n}\n: Proto constraint validation failed (X: value must be less than or equal to 8388608)";
        assert_eq!(
            nack_reason(m),
            "Proto constraint validation failed (X: value must be less than or equal to 8388608)"
        );
        assert_eq!(nack_reason("plain  reason\nsecond"), "plain reason second");
    }
}
