//! The service registry: services, their pods (workloads) and where each pod's sidecar
//! listens. It is what Kubernetes' Services and Endpoints are to Istio. It does not own
//! routing policy (see `snapshot`) nor pod lifecycles (the world that runs pods does).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// The cluster-local DNS suffix.
pub const DOMAIN_SUFFIX: &str = "svc.cluster.local";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    /// The service port apps call.
    pub port: u16,
    /// What the port speaks (Kubernetes' `appProtocol`): the sidecar runs its HTTP stack
    /// or its TCP proxy for it.
    #[serde(default)]
    pub protocol: AppProtocol,
    /// The service's virtual IP (Kubernetes' ClusterIP): a TCP client connects to
    /// `cluster_ip:port` and its sidecar learns the service from that original
    /// destination. `None`: no virtual IP (HTTP clients name the service in `Host`).
    #[serde(default)]
    pub cluster_ip: Option<Ipv4Addr>,
}

/// The protocol of a service port (Istio's protocol selection, from `appProtocol`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocol {
    #[default]
    Http,
    Tcp,
}

impl AppProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            AppProtocol::Http => "http",
            AppProtocol::Tcp => "tcp",
        }
    }
}

impl Service {
    /// An HTTP service without a virtual IP.
    pub fn http(name: &str, namespace: &str, port: u16) -> Service {
        Service {
            name: name.to_string(),
            namespace: namespace.to_string(),
            port,
            protocol: AppProtocol::Http,
            cluster_ip: None,
        }
    }

    pub fn fqdn(&self) -> String {
        format!("{}.{}.{}", self.name, self.namespace, DOMAIN_SUFFIX)
    }
}

/// One pod of a service: an app plus (usually) its sidecar.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub service: String,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    /// Host name (resolved through the `Net` seam) of the machine running the pod.
    pub host: String,
    /// Port clients connect to: the sidecar's inbound listener, or the app's own port
    /// for a pod without a sidecar.
    pub inbound_port: u16,
    /// Whether the pod runs a sidecar (pods without one are outside the mesh).
    pub sidecar: bool,
}

#[derive(Clone, Debug, Default)]
pub struct Registry {
    /// Services by FQDN.
    pub services: BTreeMap<String, Service>,
    /// Pods by name.
    pub pods: BTreeMap<String, Pod>,
}

impl Registry {
    pub fn add_service(&mut self, service: Service) {
        self.services.insert(service.fqdn(), service);
    }

    pub fn add_pod(&mut self, pod: Pod) {
        self.pods.insert(pod.name.clone(), pod);
    }

    /// Pods of the service `fqdn` whose labels include all of `selector`.
    pub fn pods_of<'a>(
        &'a self,
        fqdn: &'a str,
        selector: &'a BTreeMap<String, String>,
    ) -> impl Iterator<Item = &'a Pod> + 'a {
        self.pods.values().filter(move |p| {
            self.services.get(fqdn).is_some_and(|s| s.name == p.service && s.namespace == p.namespace)
                && selector.iter().all(|(k, v)| p.labels.get(k) == Some(v))
        })
    }
}

/// Expands a short host name the way Kubernetes DNS search paths do.
pub fn qualify(host: &str, namespace: &str) -> String {
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    match host.matches('.').count() {
        0 => format!("{host}.{namespace}.{DOMAIN_SUFFIX}"),
        1 => format!("{host}.{DOMAIN_SUFFIX}"),
        2 if host.ends_with(".svc") => format!("{host}.cluster.local"),
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualifies_short_names_like_kubernetes_dns() {
        assert_eq!(qualify("reviews", "default"), "reviews.default.svc.cluster.local");
        assert_eq!(qualify("reviews:9080", "default"), "reviews.default.svc.cluster.local");
        assert_eq!(qualify("reviews.prod", "default"), "reviews.prod.svc.cluster.local");
        assert_eq!(qualify("reviews.prod.svc", "default"), "reviews.prod.svc.cluster.local");
        assert_eq!(qualify("Reviews.prod.svc.cluster.local", "x"), "reviews.prod.svc.cluster.local");
    }
}
