//! Header manipulation of a route or a weighted destination (`headers.request` /
//! `headers.response`): Envoy removes first, then adds (`add` appends) and sets (`set`
//! overwrites). Destination-level operations run before route-level ones, so the
//! route's `set` wins (Envoy's default order, least specific last).

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::config::istio::HeaderOperations;

/// Compiled header operations; invalid names or values are rejected at compile time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderOps {
    pub remove: Vec<HeaderName>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub set: Vec<(HeaderName, HeaderValue)>,
}

impl HeaderOps {
    /// Compiles Istio's operations; `Err` names the bad header.
    pub fn compile(ops: &HeaderOperations) -> Result<HeaderOps, String> {
        let name = |n: &str| HeaderName::try_from(n).map_err(|_| format!("invalid header name {n:?}"));
        let value = |v: &str| HeaderValue::try_from(v).map_err(|_| format!("invalid header value {v:?}"));
        Ok(HeaderOps {
            remove: ops.remove.iter().map(|n| name(n)).collect::<Result<_, _>>()?,
            add: ops.add.iter().map(|(k, v)| Ok((name(k)?, value(v)?))).collect::<Result<_, String>>()?,
            set: ops.set.iter().map(|(k, v)| Ok((name(k)?, value(v)?))).collect::<Result<_, String>>()?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.add.is_empty() && self.set.is_empty()
    }

    /// Removes, then overwrites (`set`), then appends (`add`), as Envoy evaluates one
    /// level's header operations (`HeaderParser::evaluateHeaders`: removals, then the
    /// overwriting options, then the appending ones): an `add` and a `set` of one header
    /// leave both values, the set one first. (Measured on Envoy 1.40 with the config
    /// Istio generates; meshsim overwrote last before, keeping the set value alone.)
    pub fn apply(&self, h: &mut HeaderMap) {
        for n in &self.remove {
            h.remove(n);
        }
        for (n, v) in &self.set {
            h.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            h.append(n.clone(), v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn ops(set: &[(&str, &str)], add: &[(&str, &str)], remove: &[&str]) -> HeaderOps {
        let m = |v: &[(&str, &str)]| v.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>();
        HeaderOps::compile(&HeaderOperations {
            set: m(set),
            add: m(add),
            remove: remove.iter().map(|s| s.to_string()).collect(),
        })
        .unwrap()
    }

    #[test]
    fn an_add_and_a_set_of_one_header_keep_both_values_as_envoy_does() {
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("old"));
        ops(&[("x-a", "2")], &[("x-a", "1")], &[]).apply(&mut h);
        let all: Vec<_> = h.get_all("x-a").iter().map(|v| v.to_str().unwrap().to_string()).collect();
        assert_eq!(all, ["2", "1"], "the set overwrites, then the add appends");
    }

    #[test]
    fn removes_then_sets_then_adds() {
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("old"));
        h.insert("x-gone", HeaderValue::from_static("1"));
        ops(&[("x-a", "new")], &[("x-b", "1")], &["x-gone"]).apply(&mut h);
        assert_eq!(h.get("x-a").unwrap(), "new");
        assert_eq!(h.get("x-b").unwrap(), "1");
        assert!(h.get("x-gone").is_none());
        ops(&[], &[("x-b", "2")], &[]).apply(&mut h);
        assert_eq!(h.get_all("x-b").iter().count(), 2, "add appends");
    }

    #[test]
    fn invalid_header_name_is_an_error() {
        let bad = HeaderOperations { set: [("bad header".to_string(), "v".to_string())].into(), ..Default::default() };
        assert!(HeaderOps::compile(&bad).unwrap_err().contains("bad header"));
    }
}
