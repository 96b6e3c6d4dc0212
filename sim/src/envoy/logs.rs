//! What the envoy target reads back from its Envoys: the access log (JSON lines, the
//! fields of [`xds::translate::ACCESS_LOG_FIELDS`]) joined to the records as meshsim's
//! sidecars' logs are — response flags from the source side, connection security from
//! the destination side — and the outlier-detection event log (`event_log_path`),
//! whose ejections and readmissions become the run's outlier events.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mesh::proxy::outlier::Reason;
use mesh::proxy::telemetry::{AccessLog, Direction, OutlierEvent, OutlierKind, Telemetry};
use mesh::proxy::tls::{ConnectionSecurity, Peer};
use serde_json::Value;

use crate::recorder::Recorder;

/// Which log a file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Access,
    Outlier,
}

/// One log file being followed.
struct Followed {
    pod: String,
    kind: Kind,
    path: PathBuf,
    /// Open once the file exists (Envoy creates it on its first line); read from where
    /// the last poll stopped.
    file: Option<std::fs::File>,
    partial: Vec<u8>,
}

/// How long an ejection lasts: Envoy's `base_ejection_time × ejections`, at most
/// `max(base, max_ejection_time)` — looked up per (proxy, cluster).
pub type EjectionTime = dyn Fn(&str, &str, u32) -> Duration + Send + Sync;

/// Follows every Envoy's logs and reports what they say to the recorder.
pub struct Tailer {
    files: Vec<Followed>,
    /// Pod address as Envoy logs it (`ip:port`) → pod name.
    pods: BTreeMap<SocketAddr, String>,
    recorder: Arc<Recorder>,
    /// The Unix time at which the scenario's clock read zero.
    epoch: Duration,
    ejection_time: Arc<EjectionTime>,
    /// Lines that did not parse (kept for the run's error).
    pub bad_lines: Vec<String>,
}

impl Tailer {
    pub fn new(
        pods: BTreeMap<SocketAddr, String>,
        recorder: Arc<Recorder>,
        epoch: Duration,
        ejection_time: Arc<EjectionTime>,
    ) -> Tailer {
        Tailer { files: Vec::new(), pods, recorder, epoch, ejection_time, bad_lines: Vec::new() }
    }

    pub fn follow(&mut self, pod: &str, kind: Kind, path: PathBuf) {
        self.files.push(Followed { pod: pod.to_string(), kind, path, file: None, partial: Vec::new() });
    }

    /// Reads what every file gained since the last poll; returns how many lines.
    pub fn poll(&mut self) -> usize {
        let mut lines = Vec::new();
        for f in &mut self.files {
            if f.file.is_none() {
                f.file = std::fs::File::open(&f.path).ok();
            }
            let Some(file) = &mut f.file else { continue };
            if file.read_to_end(&mut f.partial).is_err() {
                continue;
            }
            while let Some(end) = f.partial.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = f.partial.drain(..=end).collect();
                lines.push((f.pod.clone(), f.kind, String::from_utf8_lossy(&line).trim().to_string()));
            }
        }
        let n = lines.len();
        for (pod, kind, line) in lines {
            if line.is_empty() {
                continue;
            }
            match serde_json::from_str::<Value>(&line) {
                Ok(v) => match kind {
                    Kind::Access => self.access(&pod, &v),
                    Kind::Outlier => self.outlier(&pod, &v),
                },
                Err(_) => self.bad_lines.push(format!("{pod}: {line}")),
            }
        }
        n
    }

    fn pod_at(&self, host: &str) -> Option<&str> {
        host.parse::<SocketAddr>().ok().and_then(|a| self.pods.get(&a)).map(String::as_str)
    }

    fn access(&self, pod: &str, v: &Value) {
        let s = |k: &str| v.get(k).and_then(Value::as_str).filter(|x| !x.is_empty() && *x != "-");
        let direction = match s("direction") {
            Some("inbound") => Direction::Inbound,
            _ => Direction::Outbound,
        };
        let peer = Peer {
            security: if s("tls").is_some() { ConnectionSecurity::MutualTls } else { ConnectionSecurity::None },
            identity: s("peer_san").map(Arc::from),
        };
        let status = v.get("status").and_then(Value::as_u64).unwrap_or(0) as u16;
        let duration = Duration::from_millis(v.get("duration").and_then(Value::as_u64).unwrap_or(0));
        self.recorder.access_log(&AccessLog {
            proxy: pod,
            direction,
            request_id: s("request_id"),
            route: s("route").unwrap_or(""),
            cluster: s("cluster").unwrap_or(""),
            upstream_pod: s("upstream_host").and_then(|h| self.pod_at(h)),
            peer: (direction == Direction::Inbound).then_some(&peer),
            status,
            flags: v.get("flags").and_then(Value::as_str).unwrap_or("-"),
            start: Duration::ZERO,
            duration,
        });
    }

    fn outlier(&mut self, pod: &str, v: &Value) {
        let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("");
        let Some(host) = self.pod_at(s("upstream_url")).map(str::to_string) else {
            self.bad_lines.push(format!("{pod}: outlier event for an unknown host: {v}"));
            return;
        };
        let at = match time::OffsetDateTime::parse(s("timestamp"), &time::format_description::well_known::Rfc3339) {
            Ok(t) => {
                let unix = Duration::from_nanos(t.unix_timestamp_nanos().max(0) as u64);
                unix.saturating_sub(self.epoch)
            }
            Err(_) => {
                self.bad_lines.push(format!("{pod}: outlier event without a timestamp: {v}"));
                return;
            }
        };
        let cluster = s("cluster_name").to_string();
        let reason = match s("type") {
            "CONSECUTIVE_GATEWAY_FAILURE" => Reason::ConsecutiveGatewayFailure,
            _ => Reason::Consecutive5xx,
        };
        let kind = match s("action") {
            "UNEJECT" => OutlierKind::Readmitted,
            _ if v.get("enforced").and_then(Value::as_bool) == Some(false) => return,
            _ => {
                let n = v.get("num_ejections").and_then(Value::as_u64).unwrap_or(1) as u32;
                OutlierKind::Ejected { reason, for_: (self.ejection_time)(pod, &cluster, n) }
            }
        };
        self.recorder.outlier_event(OutlierEvent { proxy: pod.to_string(), cluster, pod: host, at, kind });
    }
}
