//! Durations as Istio's YAML writes them: `10s`, `1.5s`, `500ms`, `1m30s`, `1h`.
//!
//! Istio's API uses protobuf `Duration`; its YAML form accepts Go-style duration strings.
//! This module only parses; range rules (e.g. "duration must be greater than 1ms") live
//! in validation.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer};

/// A parsed duration that remembers nothing but its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct IstioDuration(pub Duration);

/// Parses a Go/Istio duration string. Returns a message naming the rule broken.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration: expected a number with a unit, like 10s or 500ms".into());
    }
    if s.starts_with('-') {
        return Err(format!("duration {s:?} is negative"));
    }
    let mut total_ns: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("duration {s:?} has no unit: use h, m, s, ms, us or ns"))?;
        if num_len == 0 {
            return Err(format!("duration {s:?} is not a number with a unit (like 10s or 500ms)"));
        }
        let number: f64 =
            rest[..num_len].parse().map_err(|_| format!("duration {s:?}: {:?} is not a number", &rest[..num_len]))?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let unit_ns: f64 = match &rest[..unit_len] {
            "h" => 3_600e9,
            "m" => 60e9,
            "s" => 1e9,
            "ms" => 1e6,
            "us" | "µs" => 1e3,
            "ns" => 1.0,
            other => {
                return Err(format!("duration {s:?} has unknown unit {other:?}: use h, m, s, ms, us or ns"));
            }
        };
        rest = &rest[unit_len..];
        let part = number * unit_ns;
        if !part.is_finite() || part > 1e21 {
            return Err(format!("duration {s:?} is too large"));
        }
        total_ns += part.round() as u128;
    }
    let secs = u64::try_from(total_ns / 1_000_000_000).map_err(|_| format!("duration {s:?} is too large"))?;
    Ok(Duration::new(secs, (total_ns % 1_000_000_000) as u32))
}

impl<'de> Deserialize<'de> for IstioDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = IstioDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as 10s, 500ms or 1m30s")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IstioDuration, E> {
                parse_duration(v).map(IstioDuration).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<IstioDuration, E> {
                Err(E::custom(format!("duration {v} has no unit: write {v}s or {v}ms")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<IstioDuration, E> {
                Err(E::custom(format!("duration {v} has no unit: write {v}s or {v}ms")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<IstioDuration, E> {
                Err(E::custom(format!("duration {v} has no unit: write {v}s")))
            }
        }
        deserializer.deserialize_any(V)
    }
}

impl fmt::Display for IstioDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_style_durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
    }

    #[test]
    fn rejects_malformed_durations_with_the_reason() {
        assert!(parse_duration("10").unwrap_err().contains("no unit"));
        assert!(parse_duration("10x").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("-1s").unwrap_err().contains("negative"));
        assert!(parse_duration("s").unwrap_err().contains("not a number"));
        assert!(parse_duration("").unwrap_err().contains("empty"));
    }
}
