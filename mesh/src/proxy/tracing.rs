//! Tracing in the sidecar: the request id and trace context it reads from a request,
//! makes up when absent (from the sidecar's seeded RNG) and passes on, and the spans it
//! records. Context formats: W3C `traceparent` (with `tracestate` passed through
//! untouched), B3 multi-header (`x-b3-*`) and B3 single-header (`b3`); a sidecar reads
//! whichever the request carries (W3C first) and writes W3C and B3 multi, plus `b3` when
//! the request used it.
//!
//! Every request is sampled and recorded (Istio samples 1% by default): in a simulation
//! spans cost nothing but memory, and complete trace trees are checkable. A received
//! "not sampled" decision is passed on unchanged, and the span is still recorded.
//!
//! It does not own when spans start and end (`outbound`, `inbound`) nor where they go
//! (`telemetry`).

use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use rand::RngCore;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
pub const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
pub const B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
pub const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
pub const B3_SINGLE: HeaderName = HeaderName::from_static("b3");

/// A version-4 UUID (RFC 9562) from 16 random bytes, as Envoy makes `x-request-id`.
pub fn uuid_v4(rng: &mut impl RngCore) -> String {
    let mut b = [0u8; 16];
    rng.fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// The trace context a request arrived with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Incoming {
    pub trace_id: u128,
    /// The sender's span: the parent of this hop's span.
    pub parent: u64,
    pub sampled: bool,
    /// The request used B3 single-header form (`b3`), so it is written back too.
    pub b3_single: bool,
}

fn hex_u128(s: &str) -> Option<u128> {
    (matches!(s.len(), 16 | 32) && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u128::from_str_radix(s, 16).ok())
        .flatten()
        .filter(|&v| v != 0)
}

fn hex_u64(s: &str) -> Option<u64> {
    (s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u64::from_str_radix(s, 16).ok())
        .flatten()
        .filter(|&v| v != 0)
}

fn header<'a>(h: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// W3C `traceparent`: `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`.
fn parse_traceparent(s: &str) -> Option<Incoming> {
    let mut parts = s.trim().split('-');
    let (version, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || version == "ff" || trace.len() != 32 || flags.len() != 2 {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(Incoming { trace_id: hex_u128(trace)?, parent: hex_u64(parent)?, sampled: flags & 1 == 1, b3_single: false })
}

/// B3 single: `<trace id>-<span id>[-<sampled>[-<parent span id>]]`.
fn parse_b3_single(s: &str) -> Option<Incoming> {
    let mut parts = s.trim().split('-');
    let (trace, span) = (parts.next()?, parts.next()?);
    let sampled = !matches!(parts.next(), Some("0"));
    Some(Incoming { trace_id: hex_u128(trace)?, parent: hex_u64(span)?, sampled, b3_single: true })
}

/// The context `h` carries: W3C first, then B3 multi, then B3 single. A malformed
/// header counts as absent (the hop starts a new trace).
pub fn extract(h: &HeaderMap) -> Option<Incoming> {
    if let Some(tp) = header(h, &TRACEPARENT).and_then(parse_traceparent) {
        return Some(tp);
    }
    if let (Some(t), Some(s)) = (header(h, &B3_TRACE_ID), header(h, &B3_SPAN_ID))
        && let (Some(trace_id), Some(parent)) = (hex_u128(t), hex_u64(s))
    {
        let sampled = !matches!(header(h, &B3_SAMPLED), Some("0"));
        return Some(Incoming { trace_id, parent, sampled, b3_single: false });
    }
    header(h, &B3_SINGLE).and_then(parse_b3_single)
}

/// This hop's place in a trace: its trace, its own span and its parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Context {
    pub trace_id: u128,
    pub span_id: u64,
    pub parent: Option<u64>,
    pub sampled: bool,
    pub b3_single: bool,
}

/// A non-zero id (zero means "absent" in both formats).
pub fn span_id(rng: &mut impl RngCore) -> u64 {
    rng.next_u64().max(1)
}

impl Context {
    /// The context of a new span: a child of `incoming`, or the root of a new trace.
    pub fn start(incoming: Option<Incoming>, rng: &mut impl RngCore) -> Context {
        match incoming {
            Some(i) => Context {
                trace_id: i.trace_id,
                span_id: span_id(rng),
                parent: Some(i.parent),
                sampled: i.sampled,
                b3_single: i.b3_single,
            },
            None => {
                let trace_id = (u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64())).max(1);
                Context { trace_id, span_id: span_id(rng), parent: None, sampled: true, b3_single: false }
            }
        }
    }

    /// A child span of this one (an upstream try).
    pub fn child(&self, rng: &mut impl RngCore) -> Context {
        Context { span_id: span_id(rng), parent: Some(self.span_id), ..*self }
    }

    /// Writes this span as the parent of the next hop: `traceparent`, B3 multi, and `b3`
    /// when the request came with it.
    pub fn inject(&self, h: &mut HeaderMap) {
        let value = |s: String| HeaderValue::try_from(s).expect("hex is header-safe");
        let sampled = if self.sampled { "1" } else { "0" };
        h.insert(
            TRACEPARENT,
            value(format!(
                "00-{:032x}-{:016x}-{}",
                self.trace_id,
                self.span_id,
                if self.sampled { "01" } else { "00" }
            )),
        );
        h.insert(B3_TRACE_ID, value(format!("{:032x}", self.trace_id)));
        h.insert(B3_SPAN_ID, value(format!("{:016x}", self.span_id)));
        match self.parent {
            Some(p) => h.insert(B3_PARENT_SPAN_ID, value(format!("{p:016x}"))),
            None => h.remove(B3_PARENT_SPAN_ID),
        };
        h.insert(B3_SAMPLED, HeaderValue::from_static(sampled));
        if self.b3_single {
            let mut s = format!("{:032x}-{:016x}-{sampled}", self.trace_id, self.span_id);
            if let Some(p) = self.parent {
                s.push_str(&format!("-{p:016x}"));
            }
            h.insert(B3_SINGLE, value(s));
        }
    }
}

/// What a span stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SpanKind {
    /// A request at the client's sidecar (Envoy's egress span).
    Outbound,
    /// One upstream try of an outbound request: a child of its `Outbound` span.
    Try,
    /// A request at the server's sidecar (ingress): a child of the try that sent it.
    Inbound,
}

impl SpanKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SpanKind::Outbound => "outbound",
            SpanKind::Try => "try",
            SpanKind::Inbound => "inbound",
        }
    }
}

/// One recorded span. Borrowed, like an access-log entry: a sink keeps what it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span<'a> {
    /// The pod whose sidecar recorded it.
    pub proxy: &'a str,
    pub kind: SpanKind,
    pub request_id: Option<&'a str>,
    pub trace_id: u128,
    pub span_id: u64,
    pub parent: Option<u64>,
    pub start: Duration,
    pub duration: Duration,
    /// The status answered (for a try: the upstream's), `None` when there was none (a
    /// failed connection, a timeout, a try abandoned).
    pub status: Option<u16>,
    /// For a try: its number, from 1.
    pub attempt: u32,
}

/// A [`Span`] that owns its strings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedSpan {
    pub proxy: String,
    pub kind: SpanKind,
    pub request_id: Option<String>,
    pub trace_id: u128,
    pub span_id: u64,
    pub parent: Option<u64>,
    pub start: Duration,
    pub duration: Duration,
    pub status: Option<u16>,
    pub attempt: u32,
}

impl Span<'_> {
    pub fn to_owned(&self) -> OwnedSpan {
        OwnedSpan {
            proxy: self.proxy.to_string(),
            kind: self.kind,
            request_id: self.request_id.map(str::to_string),
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent: self.parent,
            start: self.start,
            duration: self.duration,
            status: self.status,
            attempt: self.attempt,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn uuid_v4_has_version_and_variant_bits() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let id = uuid_v4(&mut rng);
        assert_eq!(id.len(), 36);
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), [8, 4, 4, 4, 12]);
        assert!(parts[2].starts_with('4'), "{id}");
        assert!(matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'), "{id}");
        assert_ne!(id, uuid_v4(&mut rng));
        assert_eq!(id, uuid_v4(&mut ChaCha8Rng::seed_from_u64(1)), "from the seed");
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn reads_w3c_then_b3_multi_then_b3_single() {
        let w3c = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let got = extract(&headers(&[("traceparent", w3c), ("x-b3-traceid", "1111111111111111")])).unwrap();
        assert_eq!(got.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!((got.parent, got.sampled), (0x00f067aa0ba902b7, true));
        let multi = extract(&headers(&[
            ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-sampled", "0"),
        ]))
        .unwrap();
        assert_eq!(
            (multi.trace_id, multi.parent, multi.sampled),
            (0x80f198ee56343ba864fe8b2a57d3eff7, 0xe457b5a2e4d86bd1, false)
        );
        let single =
            extract(&headers(&[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90")]))
                .unwrap();
        assert!(single.b3_single && single.sampled);
        assert_eq!(single.parent, 0xe457b5a2e4d86bd1);
        assert_eq!(
            extract(&headers(&[("traceparent", "00-00000000000000000000000000000000-00f067aa0ba902b7-01")])),
            None
        );
        assert_eq!(extract(&headers(&[("b3", "nonsense")])), None);
    }

    #[test]
    fn child_keeps_the_trace_and_points_at_its_parent() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let root = Context::start(None, &mut rng);
        assert_eq!(root.parent, None);
        let child = root.child(&mut rng);
        assert_eq!((child.trace_id, child.parent), (root.trace_id, Some(root.span_id)));
        assert_ne!(child.span_id, root.span_id);
    }

    #[test]
    fn injected_headers_read_back_as_the_same_context() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let incoming =
            extract(&headers(&[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"), ("tracestate", "a=1")]))
                .unwrap();
        let ctx = Context::start(Some(incoming), &mut rng);
        let mut h = headers(&[("tracestate", "a=1")]);
        ctx.inject(&mut h);
        let back = extract(&h).unwrap();
        assert_eq!((back.trace_id, back.parent), (ctx.trace_id, ctx.span_id));
        assert_eq!(h["x-b3-parentspanid"], "e457b5a2e4d86bd1");
        assert_eq!(h["tracestate"], "a=1", "tracestate passes through");
        let single = h["b3"].to_str().unwrap();
        assert!(single.starts_with("80f198ee56343ba864fe8b2a57d3eff7-"), "{single}");
        assert!(single.ends_with("-1-e457b5a2e4d86bd1"), "{single}");
        h.remove(TRACEPARENT);
        let multi = extract(&h).unwrap();
        assert_eq!(multi.parent, ctx.span_id, "B3 multi says the same");
    }
}
