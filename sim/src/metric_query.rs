//! Metric expectations: `name{label="value",label!="value",...} op number`, evaluated
//! over every sidecar's series at the end of a run, summing the series whose labels
//! match (PromQL's `sum(name{...})`). Labels are Istio's
//! ([reference](https://istio.io/latest/docs/reference/config/metrics/)),
//! plus `pod` (the reporting sidecar's pod, as a Prometheus scrape would add it) and,
//! for `_bucket` series, `le`. It does not own the series (`mesh::proxy::metrics`).

use std::collections::BTreeMap;

use mesh::proxy::metrics::{BUCKETS, LABELS, Series, is_metric_name};

/// A comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Ge,
    Le,
    Gt,
    Lt,
}

impl Cmp {
    pub fn as_str(self) -> &'static str {
        match self {
            Cmp::Eq => "==",
            Cmp::Ne => "!=",
            Cmp::Ge => ">=",
            Cmp::Le => "<=",
            Cmp::Gt => ">",
            Cmp::Lt => "<",
        }
    }

    pub fn holds(self, a: f64, b: f64) -> bool {
        match self {
            Cmp::Eq => a == b,
            Cmp::Ne => a != b,
            Cmp::Ge => a >= b,
            Cmp::Le => a <= b,
            Cmp::Gt => a > b,
            Cmp::Lt => a < b,
        }
    }
}

/// One label condition: `label="value"` or `label!="value"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matcher {
    pub label: String,
    pub equal: bool,
    pub value: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MetricQuery {
    pub name: String,
    pub matchers: Vec<Matcher>,
    /// The `le` of a `_bucket` query.
    pub le: Option<String>,
    pub cmp: Cmp,
    pub bound: f64,
}

/// The pseudo-label naming the reporting sidecar's pod.
pub const POD_LABEL: &str = "pod";

fn ident_end(s: &str) -> usize {
    s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len())
}

impl MetricQuery {
    /// Parses `name{label="v",...} op number`; the error says what is wrong.
    pub fn parse(text: &str) -> Result<MetricQuery, String> {
        let s = text.trim();
        let n = ident_end(s);
        let name = &s[..n];
        if name.is_empty() {
            return Err(format!("{text:?} does not start with a metric name (write name{{label=\"value\"}} >= 1)"));
        }
        if !is_metric_name(name) {
            return Err(format!(
                "unknown metric {name:?}: meshsim records istio_requests_total, the _count, _sum and _bucket series of istio_request_duration_milliseconds, istio_request_bytes and istio_response_bytes, and istio_tcp_sent_bytes_total, istio_tcp_received_bytes_total, istio_tcp_connections_opened_total and istio_tcp_connections_closed_total"
            ));
        }
        let mut rest = s[n..].trim_start();
        let mut matchers = Vec::new();
        let mut le = None;
        if let Some(body) = rest.strip_prefix('{') {
            let close = body.find('}').ok_or_else(|| format!("{text:?}: `{{` without a closing `}}`"))?;
            for part in body[..close].split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let m = parse_matcher(part)?;
                if m.label == "le" {
                    if !name.ends_with("_bucket") {
                        return Err(format!("label \"le\" applies only to _bucket series, not {name:?}"));
                    }
                    if !m.equal {
                        return Err("write le=\"<bound>\" (le!= is not supported)".into());
                    }
                    let ok = m.value == "+Inf" || m.value.parse::<f64>().is_ok_and(|v| BUCKETS.contains(&v));
                    if !ok {
                        return Err(format!(
                            "le={:?} is not a bucket bound (Envoy's defaults: {}, +Inf)",
                            m.value,
                            BUCKETS.map(|b| b.to_string()).join(", ")
                        ));
                    }
                    le = Some(m.value);
                    continue;
                }
                if !(LABELS.contains(&m.label.as_str()) || m.label == POD_LABEL) {
                    return Err(format!("unknown label {:?} (Istio's labels, `pod` or, on _bucket, `le`)", m.label));
                }
                matchers.push(m);
            }
            rest = body[close + 1..].trim_start();
        }
        if name.ends_with("_bucket") && le.is_none() {
            return Err(format!("{name} needs le=\"<bound>\""));
        }
        let ops = [(">=", Cmp::Ge), ("<=", Cmp::Le), ("==", Cmp::Eq), ("!=", Cmp::Ne), (">", Cmp::Gt), ("<", Cmp::Lt)];
        let (cmp, after) = ops
            .iter()
            .find_map(|(op, c)| rest.strip_prefix(op).map(|a| (*c, a)))
            .ok_or_else(|| format!("{text:?}: expected a comparison (>=, <=, ==, !=, >, <) after the series"))?;
        let bound = after
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|b| b.is_finite())
            .ok_or_else(|| format!("{text:?}: {:?} is not a number", after.trim()))?;
        Ok(MetricQuery { name: name.to_string(), matchers, le, cmp, bound })
    }

    /// The sum over matching series of every pod, and how many series matched.
    pub fn eval(&self, pods: &BTreeMap<String, Vec<Series>>) -> (f64, usize) {
        let mut sum = 0.0;
        let mut n = 0;
        for (pod, series) in pods {
            for s in series {
                let matches = self.matchers.iter().all(|m| {
                    let v = if m.label == POD_LABEL { Some(pod) } else { s.labels.get(m.label.as_str()) };
                    (v.map(String::as_str) == Some(m.value.as_str())) == m.equal
                });
                if matches && let Some(v) = s.value(&self.name, self.le.as_deref()) {
                    sum += v;
                    n += 1;
                }
            }
        }
        (sum, n)
    }
}

fn parse_matcher(part: &str) -> Result<Matcher, String> {
    let n = ident_end(part);
    let label = &part[..n];
    let rest = part[n..].trim_start();
    let (equal, value) = match (rest.strip_prefix("!="), rest.strip_prefix('=')) {
        (Some(v), _) => (false, v),
        (None, Some(v)) => (true, v),
        _ => return Err(format!("{part:?}: write label=\"value\" or label!=\"value\"")),
    };
    let value = value.trim();
    let value = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .ok_or_else(|| format!("{part:?}: the value goes in double quotes"))?;
    if label.is_empty() {
        return Err(format!("{part:?}: missing label name"));
    }
    Ok(Matcher { label: label.to_string(), equal, value: value.to_string() })
}

impl std::fmt::Display for MetricQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)?;
        let mut parts: Vec<String> = self
            .matchers
            .iter()
            .map(|m| format!("{}{}{:?}", m.label, if m.equal { "=" } else { "!=" }, m.value))
            .collect();
        if let Some(le) = &self.le {
            parts.push(format!("le={le:?}"));
        }
        if !parts.is_empty() {
            write!(f, "{{{}}}", parts.join(","))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_name_labels_comparison_and_bound() {
        let q =
            MetricQuery::parse(r#"istio_requests_total{response_flags="UO", reporter!="destination"} >= 1"#).unwrap();
        assert_eq!(q.name, "istio_requests_total");
        assert_eq!(q.matchers.len(), 2);
        assert!(q.matchers[0].equal && !q.matchers[1].equal);
        assert_eq!((q.cmp, q.bound), (Cmp::Ge, 1.0));
        assert_eq!(q.to_string(), r#"istio_requests_total{response_flags="UO",reporter!="destination"}"#);
        let b = MetricQuery::parse(r#"istio_request_duration_milliseconds_bucket{le="100"} == 0"#).unwrap();
        assert_eq!(b.le.as_deref(), Some("100"));
        assert_eq!(MetricQuery::parse("istio_requests_total > 0.5").unwrap().cmp, Cmp::Gt);
    }

    #[test]
    fn rejects_what_it_cannot_evaluate_naming_the_problem() {
        let err = |s: &str| MetricQuery::parse(s).unwrap_err();
        assert!(err("istio_requests{} >= 1").contains("unknown metric \"istio_requests\""));
        assert!(err(r#"istio_requests_total{flags="UO"} >= 1"#).contains("unknown label \"flags\""));
        assert!(err(r#"istio_requests_total{response_flags=UO} >= 1"#).contains("double quotes"));
        assert!(err(r#"istio_requests_total{response_flags="UO"} ~ 1"#).contains("expected a comparison"));
        assert!(err(r#"istio_requests_total >= many"#).contains("not a number"));
        assert!(err(r#"istio_request_bytes_bucket >= 1"#).contains("needs le="));
        assert!(err(r#"istio_request_bytes_bucket{le="7"} >= 1"#).contains("not a bucket bound"));
        assert!(err(r#"istio_requests_total{le="1"} >= 1"#).contains("only to _bucket"));
        assert!(err(r#"istio_requests_total{reporter="source" >= 1"#).contains("closing"));
    }
}
