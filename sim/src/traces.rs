//! Trace trees: rebuilding one request's tree from the spans the sidecars recorded and
//! deciding whether it is complete. A request the client got a response for is complete
//! when its source sidecar recorded exactly one `outbound` span, every upstream try is
//! a child of it numbered 1, 2, … in order, every `inbound` span hangs under one of
//! those tries (or under the outbound span: a mirrored copy), all in one trace, and
//! every try that got a response has its `inbound` span at the destination sidecar.
//! Requests the client saw no response for are not checked (their spans may have been
//! cut short with the connection). It does not own recording (`recorder`).

use std::collections::BTreeSet;

use mesh::proxy::tracing::{OwnedSpan, SpanKind};
use serde::Serialize;

use crate::recorder::{Outcome, Record};
use crate::scenario::Plan;

/// Most incomplete requests named in a [`Summary`].
const NAMED: usize = 10;

/// The trace trees of a run, in numbers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub spans: usize,
    /// Requests whose client got a response.
    pub checked: usize,
    pub complete: usize,
    pub incomplete: usize,
    /// The first incomplete requests: id and why.
    pub first_incomplete: Vec<(usize, String)>,
}

impl Summary {
    pub fn of(plan: &Plan, records: &[Record]) -> Summary {
        let mut s = Summary { spans: 0, checked: 0, complete: 0, incomplete: 0, first_incomplete: Vec::new() };
        for (id, r) in records.iter().enumerate() {
            s.spans += r.spans.len();
            if !checkable(r) {
                continue;
            }
            s.checked += 1;
            match check(r, &plan.pods[r.source].name) {
                Ok(()) => s.complete += 1,
                Err(why) => {
                    s.incomplete += 1;
                    if s.first_incomplete.len() < NAMED {
                        s.first_incomplete.push((id, why));
                    }
                }
            }
        }
        s
    }

    pub fn describe(&self) -> String {
        let mut d = format!("{} of {} complete ({} spans)", self.complete, self.checked, self.spans);
        if let Some((id, why)) = self.first_incomplete.first() {
            d.push_str(&format!("; request {id}: {why}"));
        }
        d
    }
}

/// Why a request's trace tree is not complete; `Ok` when it is.
pub fn check(r: &Record, source_pod: &str) -> Result<(), String> {
    let outbound: Vec<&OwnedSpan> = r.spans.iter().filter(|s| s.kind == SpanKind::Outbound).collect();
    let [root] = outbound.as_slice() else {
        return Err(format!("{} outbound spans, expected 1", outbound.len()));
    };
    if root.proxy != source_pod {
        return Err(format!("outbound span recorded by {}, not the source {source_pod}", root.proxy));
    }
    if let Some(s) = r.spans.iter().find(|s| s.trace_id != root.trace_id) {
        return Err(format!("{} span {:016x} is in another trace", s.kind.as_str(), s.span_id));
    }
    let tries: Vec<&OwnedSpan> = r.spans.iter().filter(|s| s.kind == SpanKind::Try).collect();
    let mut attempts: Vec<u32> = tries.iter().map(|t| t.attempt).collect();
    attempts.sort_unstable();
    if attempts.iter().enumerate().any(|(i, a)| *a != i as u32 + 1) {
        return Err(format!("tries numbered {attempts:?}, expected 1..={}", tries.len()));
    }
    if let Some(t) = tries.iter().find(|t| t.parent != Some(root.span_id)) {
        return Err(format!("try {} is not a child of the outbound span", t.attempt));
    }
    let parents: BTreeSet<u64> = tries.iter().map(|t| t.span_id).chain([root.span_id]).collect();
    let inbound: Vec<&OwnedSpan> = r.spans.iter().filter(|s| s.kind == SpanKind::Inbound).collect();
    if let Some(s) = inbound.iter().find(|s| s.parent.is_none_or(|p| !parents.contains(&p))) {
        return Err(format!("inbound span at {} has no parent in the tree", s.proxy));
    }
    for t in tries.iter().filter(|t| t.status.is_some()) {
        let children = inbound.iter().filter(|s| s.parent == Some(t.span_id)).count();
        if children != 1 {
            return Err(format!("try {} got a response but has {children} inbound spans, expected 1", t.attempt));
        }
    }
    Ok(())
}

/// Whether the client got a response, so the tree can be checked.
pub fn checkable(r: &Record) -> bool {
    matches!(r.outcome, Outcome::Response { .. })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn span(kind: SpanKind, proxy: &str, id: u64, parent: Option<u64>, status: Option<u16>, attempt: u32) -> OwnedSpan {
        OwnedSpan {
            proxy: proxy.into(),
            kind,
            request_id: None,
            trace_id: 7,
            span_id: id,
            parent,
            start: Duration::ZERO,
            duration: Duration::ZERO,
            status,
            attempt,
        }
    }

    fn record(spans: Vec<OwnedSpan>) -> Record {
        Record {
            workload: 0,
            source: 0,
            intended: Duration::ZERO,
            latency: Duration::ZERO,
            outcome: Outcome::Response { status: 200, pod: None },
            flags: "-".into(),
            connection_security: None,
            upstream_attempts: 0,
            headers: Vec::new(),
            body: None,
            receipts: Vec::new(),
            spans,
        }
    }

    fn retried() -> Vec<OwnedSpan> {
        vec![
            span(SpanKind::Inbound, "b-0", 11, Some(2), Some(503), 0),
            span(SpanKind::Try, "a-0", 2, Some(1), Some(503), 1),
            span(SpanKind::Inbound, "b-1", 12, Some(3), Some(200), 0),
            span(SpanKind::Try, "a-0", 3, Some(1), Some(200), 2),
            span(SpanKind::Outbound, "a-0", 1, None, Some(200), 0),
        ]
    }

    #[test]
    fn a_retried_request_with_a_span_per_try_and_hop_is_complete() {
        assert_eq!(check(&record(retried()), "a-0"), Ok(()));
    }

    #[test]
    fn a_missing_inbound_span_or_a_broken_link_is_incomplete() {
        let mut s = retried();
        s.remove(2);
        assert!(check(&record(s), "a-0").unwrap_err().contains("try 2 got a response but has 0 inbound spans"));
        let mut s = retried();
        s[0].parent = Some(99);
        assert!(check(&record(s), "a-0").unwrap_err().contains("no parent"));
        let mut s = retried();
        s[3].attempt = 3;
        assert!(check(&record(s), "a-0").unwrap_err().contains("numbered"));
        let mut s = retried();
        s.pop();
        assert!(check(&record(s), "a-0").unwrap_err().contains("0 outbound spans"));
        assert!(check(&record(retried()), "c-0").unwrap_err().contains("not the source"));
        let mut s = retried();
        s[1].trace_id = 8;
        assert!(check(&record(s), "a-0").unwrap_err().contains("another trace"));
    }

    #[test]
    fn a_try_without_a_response_needs_no_inbound_span() {
        let spans = vec![
            span(SpanKind::Try, "a-0", 2, Some(1), None, 1),
            span(SpanKind::Outbound, "a-0", 1, None, Some(503), 0),
        ];
        assert_eq!(check(&record(spans), "a-0"), Ok(()));
    }
}
