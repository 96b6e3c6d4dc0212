//! Consistent-hash load balancing as Envoy runs it for Istio's
//! `DestinationRule.trafficPolicy.loadBalancer.consistentHash` ([Istio's
//! reference](https://istio.io/latest/docs/reference/config/networking/destination-rule/#LoadBalancerSettings-ConsistentHashLB)):
//!
//! - [`HashPolicy`]: which request property is hashed (`httpHeaderName`, `httpCookie`,
//!   `useSourceIp`, `httpQueryParameterName`) and how, byte for byte as Envoy's
//!   `Http::HashPolicyImpl` does it: xxHash64 with seed 0 of the value.
//! - [`RingHash`] (`ringHash{minimumRingSize}`, Envoy's `ring_hash_lb.cc`) and [`Maglev`]
//!   (`maglev{tableSize}`, `maglev_lb.cc`): map a hash to a host index.
//!
//! Pure: the caller passes a view of the request and the hosts' hash keys. Envoy hashes a
//! host by its address as text (`10.1.2.3:8080`), so two proxies given the same keys build
//! the same tables and send the same request to the same host.
//!
//! Not owned here: which hosts are candidates (outlier ejection, panic mode) and so when a
//! table is rebuilt; what to do when a request yields no hash — Envoy then uses a random
//! u64 as the hash (`ThreadAwareLoadBalancerBase::LoadBalancerImpl::chooseHost`), so the
//! caller draws one from its seeded RNG and calls `pick` with it; where the `set-cookie` of
//! a generated cookie ([`HashPolicy::generate_cookie`]) goes; retry host predicates,
//! bounded load (`hash_balance_factor`), locality weighting and host weights (meshsim endpoints have none: every host weighs the same).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http::header::{COOKIE, HeaderMap, HeaderName};
use xxhash_rust::xxh64::xxh64;

/// What a consistent-hash route hashes. One policy per route, as Istio configures it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashPolicy {
    /// `httpHeaderName`. Every value of the header, sorted bytewise and chained through
    /// xxHash64 (seed 0, then each hash seeds the next), so value order does not matter;
    /// for one value that is xxHash64 of its bytes. Pseudo-headers (`:authority`) are not
    /// headers in meshsim's request view.
    Header(HeaderName),
    /// `httpCookie{name, path, ttl}`. The first cookie named `name` in the `cookie`
    /// header(s), its surrounding double quotes removed; an empty value counts as absent.
    ///
    /// When the cookie is absent and `ttl` is set, Envoy makes one up and hashes that
    /// instead: see [`HashPolicy::generate_cookie`].
    Cookie { name: String, path: String, ttl: Option<Duration> },
    /// `useSourceIp`: xxHash64 of the downstream peer's IP as text (`10.0.0.7`, `fd00::1`).
    SourceIp,
    /// `httpQueryParameterName`: the first value of the parameter in the raw (not
    /// percent-decoded) query string. A parameter present without `=` has the empty value,
    /// which is hashed.
    QueryParameter(String),
}

/// The parts of a request a [`HashPolicy`] may read.
#[derive(Clone, Copy, Debug)]
pub struct HashInput<'a> {
    pub headers: &'a HeaderMap,
    /// The query string without its `?`, as [`http::Uri::query`] returns it.
    pub query: Option<&'a str>,
    /// The downstream peer's address, if known.
    pub source_ip: Option<IpAddr>,
}

impl HashPolicy {
    /// The request's hash, or `None` when the hashed property is absent (then Envoy, and
    /// the caller, hash with a random u64 instead: the request goes to a random host).
    pub fn hash(&self, req: &HashInput<'_>) -> Option<u64> {
        match self {
            HashPolicy::Header(name) => {
                let mut values: Vec<&[u8]> = req.headers.get_all(name).iter().map(|v| v.as_bytes()).collect();
                if values.is_empty() {
                    return None;
                }
                values.sort_unstable();
                Some(values.iter().fold(0, |seed, v| xxh64(v, seed)))
            }
            HashPolicy::Cookie { name, .. } => {
                cookie_value(req.headers, name).filter(|v| !v.is_empty()).map(|v| xxh64(v, 0))
            }
            HashPolicy::SourceIp => req.source_ip.map(|ip| xxh64(ip.to_string().as_bytes(), 0)),
            HashPolicy::QueryParameter(name) => query_value(req.query?, name).map(|v| xxh64(v.as_bytes(), 0)),
        }
    }
}

/// A cookie the proxy made up for a request that lacked the hashed one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeneratedCookie {
    /// The request's hash: xxHash64 of the cookie value.
    pub hash: u64,
    /// The `set-cookie` response header value that hands the cookie to the client.
    pub set_cookie: String,
}

impl HashPolicy {
    /// Envoy's router `addDownstreamSetCookie`, for an `httpCookie` policy with a `ttl`
    /// whose cookie the request lacks ([`HashPolicy::hash`] gave `None`): the value is
    /// xxHash64 of the downstream connection's remote then local address as text
    /// (`10.0.0.7:40312` + `10.0.0.7:15001`), as 16 lower-case hex digits, so requests on
    /// one connection get the same cookie and land on the same host; the response carries
    /// `set-cookie: name="value"; Max-Age=ttl; Path=path; HttpOnly` (`Max-Age` left out for
    /// a zero ttl — a session cookie — and `Path` for an empty path, as Envoy's
    /// `makeSetCookieValue` does). `None` for every other policy and without a ttl.
    pub fn generate_cookie(&self, remote: SocketAddr, local: SocketAddr) -> Option<GeneratedCookie> {
        let HashPolicy::Cookie { name, path, ttl: Some(ttl) } = self else {
            return None;
        };
        let value = format!("{:016x}", xxh64(format!("{remote}{local}").as_bytes(), 0));
        let mut set_cookie = format!("{name}=\"{value}\"");
        if ttl.as_secs() != 0 {
            set_cookie.push_str(&format!("; Max-Age={}", ttl.as_secs()));
        }
        if !path.is_empty() {
            set_cookie.push_str(&format!("; Path={path}"));
        }
        set_cookie.push_str("; HttpOnly");
        Some(GeneratedCookie { hash: xxh64(value.as_bytes(), 0), set_cookie })
    }
}

/// The value of the first cookie named `name` across all `cookie` headers, parsed as
/// Envoy's `Http::Utility::parseCookieValue`: split on `;`, skip leading spaces of the
/// name, skip pairs without `=`, keep the value verbatim but for one pair of surrounding
/// double quotes.
fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    for header in headers.get_all(COOKIE) {
        for pair in header.as_bytes().split(|&b| b == b';').filter(|p| !p.is_empty()) {
            let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                continue;
            };
            let start = pair.iter().position(|&b| b != b' ').unwrap_or(eq);
            if &pair[start..eq] != name.as_bytes() {
                continue;
            }
            let mut value = &pair[eq + 1..];
            if value.len() >= 2 && value[0] == b'"' && value[value.len() - 1] == b'"' {
                value = &value[1..value.len() - 1];
            }
            return Some(value);
        }
    }
    None
}

/// The first value of parameter `name` in a raw query string, as Envoy's
/// `QueryParamsMulti::parseQueryString(..).getFirstValue(name)`: `&`-separated, split at
/// the first `=`, no percent-decoding.
fn query_value<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').filter(|p| !p.is_empty()).find_map(|param| match param.split_once('=') {
        Some((k, v)) if k == name => Some(v),
        None if param == name => Some(""),
        _ => None,
    })
}

/// Checks a host list for a hash table: at least one host, no empty or repeated key.
fn check_hosts<S: AsRef<str>>(hosts: &[S]) -> Result<(), String> {
    if hosts.is_empty() {
        return Err("consistent hash load balancing needs at least one host".to_string());
    }
    assert!(u32::try_from(hosts.len()).is_ok(), "more than 2^32 hosts");
    let mut seen = BTreeSet::new();
    for h in hosts {
        let key = h.as_ref();
        if key.is_empty() {
            return Err("consistent hash load balancing needs a non-empty hash key for every host".to_string());
        }
        if !seen.insert(key) {
            return Err(format!("host hash key {key:?} appears twice: every host needs its own address"));
        }
    }
    Ok(())
}

/// Envoy's ring hash (ketama) over equally weighted hosts.
///
/// Building, as `RingHashLoadBalancer::Ring`: with normalized weight `w = 1/n`, the scale
/// is `min(ceil(w · min_ring_size) / w, 8M)` and each host gets entries until a running
/// sum reaches `scale · w` per host — `ceil(min_ring_size / n)` entries each unless the
/// cap bites. Entry `i` of a host hashes `"<key>_<i>"` with xxHash64. The arithmetic is
/// Envoy's own `f64` arithmetic, kept so that ring sizes match Envoy's to the entry.
/// Lookup: the first entry whose hash is `>= h`, wrapping to the first entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingHash {
    /// `(hash, host index)`, sorted. Never empty.
    ring: Vec<(u64, u32)>,
}

impl RingHash {
    /// Envoy's `minimum_ring_size` default (Istio's too, for `minimumRingSize: 0`).
    pub const DEFAULT_MIN_RING_SIZE: u64 = 1024;
    /// Envoy's `maximum_ring_size` default, which Istio does not change; also the
    /// largest `minimum_ring_size` Envoy accepts.
    pub const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;

    /// Builds the ring of `hosts` (their hash keys, in cluster order; `pick` returns an
    /// index into this slice).
    pub fn new<S: AsRef<str>>(hosts: &[S], min_ring_size: u64) -> Result<Self, String> {
        check_hosts(hosts)?;
        if min_ring_size == 0 || min_ring_size > Self::MAX_RING_SIZE {
            return Err(format!(
                "ring hash minimumRingSize must be in 1..={} (got {min_ring_size}; Istio reads 0 as {})",
                Self::MAX_RING_SIZE,
                Self::DEFAULT_MIN_RING_SIZE
            ));
        }
        let weight = 1.0 / hosts.len() as f64;
        let scale = ((weight * min_ring_size as f64).ceil() / weight).min(Self::MAX_RING_SIZE as f64);
        let mut ring = Vec::with_capacity(scale.ceil() as usize);
        let (mut current, mut target) = (0.0_f64, 0.0_f64);
        for (idx, host) in hosts.iter().enumerate() {
            target += scale * weight;
            let mut i = 0u64;
            while current < target {
                let key = format!("{}_{i}", host.as_ref());
                ring.push((xxh64(key.as_bytes(), 0), idx as u32));
                i += 1;
                current += 1.0;
            }
        }
        // Envoy sorts by hash alone; ties (64-bit collisions) go to the lower index here.
        ring.sort_unstable();
        assert!(!ring.is_empty(), "scale >= 1 gives every ring at least one entry");
        Ok(RingHash { ring })
    }

    /// The host (index into the slice given to `new`) that serves hash `h`.
    pub fn pick(&self, h: u64) -> usize {
        let i = self.ring.partition_point(|&(e, _)| e < h);
        self.ring.get(i).unwrap_or(&self.ring[0]).1 as usize
    }

    /// Number of ring entries (Envoy's `ring_hash_lb.size` gauge).
    pub fn size(&self) -> usize {
        self.ring.len()
    }
}

/// Envoy's Maglev table over equally weighted hosts.
///
/// Building, as `MaglevTable` (the paper's listing 1): hosts sorted by hash key; host `k`
/// has `offset = xxHash64(key, seed 0) % M` and `skip = xxHash64(key, seed 1) % (M-1) + 1`
/// and prefers slots `(offset + j·skip) % M` for `j = 0, 1, ..`; rounds go over the
/// hosts in sorted order, each taking its next preferred free slot, until the table is
/// full. With equal weights every host owns `floor(M/n)` or `ceil(M/n)` slots.
/// Lookup: `table[h % M]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Maglev {
    /// Slot → host index. Length is the (prime) table size.
    table: Vec<u32>,
}

impl Maglev {
    /// Envoy's and Istio's default `tableSize`.
    pub const DEFAULT_TABLE_SIZE: u64 = 65537;
    /// The largest `table_size` Envoy's config validation accepts.
    pub const MAX_TABLE_SIZE: u64 = 5_000_011;

    /// Builds the table of `hosts` (their hash keys; `pick` returns an index into this
    /// slice). `table_size` must be prime, as Envoy requires.
    pub fn new<S: AsRef<str>>(hosts: &[S], table_size: u64) -> Result<Self, String> {
        check_hosts(hosts)?;
        if table_size > Self::MAX_TABLE_SIZE || !is_prime(table_size) {
            return Err(format!(
                "maglev tableSize must be a prime number <= {} (got {table_size}; default {})",
                Self::MAX_TABLE_SIZE,
                Self::DEFAULT_TABLE_SIZE
            ));
        }
        let size = table_size;
        let mut order: Vec<usize> = (0..hosts.len()).collect();
        order.sort_by_key(|&i| hosts[i].as_ref());
        // (host index, offset, skip, next)
        let mut entries: Vec<(u32, u64, u64, u64)> = order
            .into_iter()
            .map(|i| {
                let key = hosts[i].as_ref().as_bytes();
                (i as u32, xxh64(key, 0) % size, xxh64(key, 1) % (size - 1) + 1, 0)
            })
            .collect();
        const FREE: u32 = u32::MAX;
        let mut table = vec![FREE; size as usize];
        let mut filled = 0u64;
        while filled < size {
            for (host, offset, skip, next) in entries.iter_mut() {
                if filled == size {
                    break;
                }
                let mut slot = ((*offset + *skip * *next) % size) as usize;
                while table[slot] != FREE {
                    *next += 1;
                    slot = ((*offset + *skip * *next) % size) as usize;
                }
                table[slot] = *host;
                *next += 1;
                filled += 1;
            }
        }
        Ok(Maglev { table })
    }

    /// The host (index into the slice given to `new`) that serves hash `h`.
    pub fn pick(&self, h: u64) -> usize {
        self.table[(h % self.table.len() as u64) as usize] as usize
    }
}

/// Trial division; table sizes are at most [`Maglev::MAX_TABLE_SIZE`].
fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;
    use rand::{RngCore, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn hosts(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.{}.{}:8080", i / 256, i % 256)).collect()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn input(h: &HeaderMap) -> HashInput<'_> {
        HashInput { headers: h, query: None, source_ip: None }
    }

    fn cookie(name: &str) -> HashPolicy {
        HashPolicy::Cookie { name: name.to_string(), path: "/".to_string(), ttl: Some(Duration::from_secs(60)) }
    }

    fn random_keys(seed: u64, n: usize) -> Vec<u64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.next_u64()).collect()
    }

    // --- hash policy ---

    #[test]
    fn xxhash64_is_the_reference_algorithm_with_seed_0() {
        // Published XXH64 test vectors.
        assert_eq!(xxh64(b"", 0), 0xEF46_DB37_51D8_E999);
        assert_eq!(xxh64(b"abc", 0), 0x44BC_2CF5_AD77_0999);
    }

    #[test]
    fn header_hash_is_xxhash64_of_the_value_bytes() {
        let h = headers(&[("x-user", "alice")]);
        let p = HashPolicy::Header(HeaderName::from_static("x-user"));
        assert_eq!(p.hash(&input(&h)), Some(xxh64(b"alice", 0)));
    }

    #[test]
    fn header_name_matches_case_insensitively() {
        let h = headers(&[("X-User", "alice")]);
        let p = HashPolicy::Header(HeaderName::from_bytes(b"X-USER").unwrap());
        assert_eq!(p.hash(&input(&h)), Some(xxh64(b"alice", 0)));
    }

    #[test]
    fn absent_header_gives_no_hash() {
        let h = headers(&[("x-other", "alice")]);
        assert_eq!(HashPolicy::Header(HeaderName::from_static("x-user")).hash(&input(&h)), None);
    }

    #[test]
    fn repeated_header_values_hash_sorted_and_chained() {
        let p = HashPolicy::Header(HeaderName::from_static("x-user"));
        let ab = headers(&[("x-user", "b"), ("x-user", "a")]);
        let ba = headers(&[("x-user", "a"), ("x-user", "b")]);
        let chained = xxh64(b"b", xxh64(b"a", 0));
        assert_eq!(p.hash(&input(&ab)), Some(chained));
        assert_eq!(p.hash(&input(&ba)), Some(chained));
    }

    #[test]
    fn cookie_hash_is_xxhash64_of_the_cookie_value() {
        let h = headers(&[("cookie", "a=1; session=xyz; b=2")]);
        assert_eq!(cookie("session").hash(&input(&h)), Some(xxh64(b"xyz", 0)));
    }

    #[test]
    fn cookie_is_found_in_any_cookie_header_first_match_wins() {
        let h = headers(&[("cookie", "a=1"), ("cookie", "session=first"), ("cookie", "session=second")]);
        assert_eq!(cookie_value(&h, "session"), Some(&b"first"[..]));
    }

    #[test]
    fn cookie_parsing_follows_envoy_edge_cases() {
        let h = headers(&[("cookie", "bare; q=\"quoted\";  lead=sp ;e=;x=a=b; \"=\"; t=v ")]);
        // Surrounding quotes go; a lone quote stays.
        assert_eq!(cookie_value(&h, "q"), Some(&b"quoted"[..]));
        assert_eq!(cookie_value(&h, "\""), Some(&b"\""[..]));
        // Leading spaces of the name are skipped; the value is verbatim (trailing space kept).
        assert_eq!(cookie_value(&h, "lead"), Some(&b"sp "[..]));
        assert_eq!(cookie_value(&h, "t"), Some(&b"v "[..]));
        // The value runs past later '='.
        assert_eq!(cookie_value(&h, "x"), Some(&b"a=b"[..]));
        // A pair without '=' is not a cookie.
        assert_eq!(cookie_value(&h, "bare"), None);
        // Present but empty: found, yet no hash.
        assert_eq!(cookie_value(&h, "e"), Some(&b""[..]));
        assert_eq!(cookie("e").hash(&input(&h)), None);
        // Names are case-sensitive.
        assert_eq!(cookie_value(&h, "Q"), None);
    }

    #[test]
    fn quoted_empty_cookie_gives_no_hash() {
        let h = headers(&[("cookie", "s=\"\"")]);
        assert_eq!(cookie("s").hash(&input(&h)), None);
    }

    #[test]
    fn absent_cookie_gives_no_hash_the_caller_generates_one() {
        let h = headers(&[("cookie", "other=1")]);
        assert_eq!(cookie("session").hash(&input(&h)), None);
        assert_eq!(cookie("session").hash(&input(&HeaderMap::new())), None);
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn generated_cookie_hashes_the_connection_addresses_as_envoy() {
        let (remote, local) = (addr("10.0.0.7:40312"), addr("10.0.0.7:15001"));
        let g = cookie("session").generate_cookie(remote, local).expect("ttl set");
        // The value is the 16-digit hex of xxHash64("10.0.0.7:4031210.0.0.7:15001").
        let value = format!("{:016x}", xxh64(b"10.0.0.7:4031210.0.0.7:15001", 0));
        assert_eq!(value.len(), 16);
        assert_eq!(g.set_cookie, format!("session=\"{value}\"; Max-Age=60; Path=/; HttpOnly"));
        assert_eq!(g.hash, xxh64(value.as_bytes(), 0));
        // The client sending the cookie back hashes to the same host.
        let back = headers(&[("cookie", &format!("session=\"{value}\""))]);
        assert_eq!(cookie("session").hash(&input(&back)), Some(g.hash));
        // Same connection, same cookie; another connection (port), another cookie.
        assert_eq!(cookie("session").generate_cookie(remote, local), Some(g.clone()));
        assert_ne!(cookie("session").generate_cookie(addr("10.0.0.7:40313"), local).unwrap().hash, g.hash);
    }

    #[test]
    fn generated_cookie_attributes_follow_make_set_cookie_value() {
        let (remote, local) = (addr("[fd00::1]:40312"), addr("[fd00::1]:15001"));
        let session = HashPolicy::Cookie { name: "s".into(), path: String::new(), ttl: Some(Duration::ZERO) };
        let g = session.generate_cookie(remote, local).unwrap();
        let value = format!("{:016x}", xxh64(b"[fd00::1]:40312[fd00::1]:15001", 0));
        assert_eq!(g.set_cookie, format!("s=\"{value}\"; HttpOnly"));
        let no_ttl = HashPolicy::Cookie { name: "s".into(), path: "/".into(), ttl: None };
        assert_eq!(no_ttl.generate_cookie(remote, local), None);
        assert_eq!(HashPolicy::SourceIp.generate_cookie(remote, local), None);
    }

    #[test]
    fn source_ip_hash_is_xxhash64_of_the_ip_text() {
        let h = HeaderMap::new();
        let v4 = HashInput { source_ip: Some("10.0.0.7".parse().unwrap()), ..input(&h) };
        assert_eq!(HashPolicy::SourceIp.hash(&v4), Some(xxh64(b"10.0.0.7", 0)));
        let v6 = HashInput { source_ip: Some("fd00:0:0::1".parse().unwrap()), ..input(&h) };
        assert_eq!(HashPolicy::SourceIp.hash(&v6), Some(xxh64(b"fd00::1", 0)));
        assert_eq!(HashPolicy::SourceIp.hash(&input(&h)), None);
    }

    #[test]
    fn query_parameter_hash_uses_the_first_raw_value() {
        let h = HeaderMap::new();
        let p = HashPolicy::QueryParameter("user".to_string());
        let q = |query| HashInput { query: Some(query), ..input(&h) };
        assert_eq!(p.hash(&q("a=1&user=bob&user=eve")), Some(xxh64(b"bob", 0)));
        assert_eq!(p.hash(&q("user=b%20b")), Some(xxh64(b"b%20b", 0)), "no percent-decoding");
        assert_eq!(p.hash(&q("user=a=b")), Some(xxh64(b"a=b", 0)));
        assert_eq!(p.hash(&q("x=1&user")), Some(xxh64(b"", 0)), "present without '=' hashes the empty value");
        assert_eq!(p.hash(&q("username=bob&&x=user")), None);
        assert_eq!(p.hash(&input(&h)), None);
    }

    // --- ring hash ---

    /// Envoy's own lookup (`Ring::chooseHost`, ported from libketama), to check ours.
    fn ketama(ring: &[(u64, u32)], h: u64) -> usize {
        let (mut lowp, mut highp) = (0i64, ring.len() as i64);
        let midp = loop {
            let midp = (lowp + highp) / 2;
            if midp == ring.len() as i64 {
                break 0;
            }
            let midval = ring[midp as usize].0;
            let midval1 = if midp == 0 { 0 } else { ring[midp as usize - 1].0 };
            if h <= midval && h > midval1 {
                break midp;
            }
            if midval < h {
                lowp = midp + 1;
            } else {
                highp = midp - 1;
            }
            if lowp > highp {
                break 0;
            }
        };
        ring[midp as usize].1 as usize
    }

    fn entries_per_host(r: &RingHash, n: usize) -> Vec<u64> {
        let mut counts = vec![0u64; n];
        for &(_, host) in &r.ring {
            counts[host as usize] += 1;
        }
        counts
    }

    /// Each host's share of the hash space: entry j owns (hash[j-1], hash[j]], entry 0 also the wrap.
    fn ring_shares(r: &RingHash, n: usize) -> Vec<f64> {
        let mut owned = vec![0u128; n];
        let last = r.ring.last().unwrap().0;
        for (j, &(hash, host)) in r.ring.iter().enumerate() {
            let arc = if j == 0 {
                u128::from(hash) + (u128::from(u64::MAX) - u128::from(last)) + 1
            } else {
                u128::from(hash - r.ring[j - 1].0)
            };
            owned[host as usize] += arc;
        }
        owned.iter().map(|&a| a as f64 / 2f64.powi(64)).collect()
    }

    #[test]
    fn ring_matches_envoys_basic_test_vectors() {
        // Envoy's ring_hash_lb_test.cc `Basic`: six hosts, minimum ring size 12.
        let hosts: Vec<String> = (90..96).map(|p| format!("127.0.0.1:{p}")).collect();
        let r = RingHash::new(&hosts, 12).unwrap();
        let expected: [(u64, u32); 12] = [
            (833437586790550860, 4),
            (928266305478181108, 2),
            (1033482794131418490, 0),
            (3551244743356806947, 5),
            (3851675632748031481, 3),
            (5583722120771150861, 1),
            (6311230543546372928, 1),
            (7700377290971790572, 3),
            (13144177310400110813, 5),
            (13444792449719432967, 2),
            (15516499411664133160, 4),
            (16117243373044804889, 0),
        ];
        assert_eq!(r.ring, expected);
        assert_eq!(r.pick(0), 4);
        assert_eq!(r.pick(u64::MAX), 4, "past the last entry wraps to the first");
        assert_eq!(r.pick(3551244743356806947), 5, "a hash equal to an entry picks that entry");
        assert_eq!(r.pick(3551244743356806948), 3);
        assert_eq!(r.pick(16117243373044804880), 0);
    }

    #[test]
    fn ring_hashes_whatever_key_it_is_given() {
        // Envoy's `BasicWithHostName` ring (use_hostname_for_hashing with hostnames "90".."95").
        let hosts: Vec<String> = (90..96).map(|p| p.to_string()).collect();
        let r = RingHash::new(&hosts, 12).unwrap();
        assert_eq!(r.ring[0], (1975508444536362413, 5));
        assert_eq!(r.ring[5], (7225015537174310577, 2));
        assert_eq!(r.ring[11], (15364271037087512980, 4));
        assert_eq!(r.pick(6803900775736438537), 3);
    }

    #[test]
    fn default_ring_gives_each_of_10_hosts_ceil_1024_over_10_entries() {
        let r = RingHash::new(&hosts(10), RingHash::DEFAULT_MIN_RING_SIZE).unwrap();
        assert_eq!(entries_per_host(&r, 10), vec![103; 10]);
        assert_eq!(r.size(), 1030);
    }

    #[test]
    fn ring_with_more_hosts_than_minimum_size_gives_each_host_one_entry() {
        let r = RingHash::new(&hosts(1000), 100).unwrap();
        assert_eq!(entries_per_host(&r, 1000), vec![1; 1000]);
    }

    #[test]
    fn ring_gives_each_host_its_rounded_up_share_for_any_host_count() {
        for n in 1..=40 {
            let r = RingHash::new(&hosts(n), 1024).unwrap();
            let per = 1024u64.div_ceil(n as u64);
            assert_eq!(entries_per_host(&r, n), vec![per; n], "{n} hosts");
        }
    }

    #[test]
    fn ring_spreads_10_hosts_within_a_fifth_of_a_fair_share() {
        let shares = ring_shares(&RingHash::new(&hosts(10), 1024).unwrap(), 10);
        for (host, s) in shares.iter().enumerate() {
            assert!((s * 10.0 - 1.0).abs() < 0.2, "host {host} owns {s:.4} of the ring");
        }
        let big = ring_shares(&RingHash::new(&hosts(10), 100_000).unwrap(), 10);
        for (host, s) in big.iter().enumerate() {
            assert!((s * 10.0 - 1.0).abs() < 0.05, "host {host} owns {s:.4} of a 100k ring");
        }
    }

    #[test]
    fn ring_spreads_1000_hosts_with_a_large_ring() {
        let shares = ring_shares(&RingHash::new(&hosts(1000), 1_000_000).unwrap(), 1000);
        for (host, s) in shares.iter().enumerate() {
            assert!((s * 1000.0 - 1.0).abs() < 0.2, "host {host} owns {s:.6} of the ring");
        }
    }

    #[test]
    fn ring_is_deterministic_and_independent_of_host_order() {
        let hs = hosts(10);
        let a = RingHash::new(&hs, 1024).unwrap();
        assert_eq!(a, RingHash::new(&hs, 1024).unwrap());
        let mut reversed = hs.clone();
        reversed.reverse();
        let b = RingHash::new(&reversed, 1024).unwrap();
        for h in random_keys(1, 2000) {
            assert_eq!(hs[a.pick(h)], reversed[b.pick(h)]);
        }
    }

    #[test]
    fn ring_keeps_keys_of_surviving_hosts_when_entries_per_host_stay_the_same() {
        // 81 = 9 entries per host for both 10 and 9 hosts: the 9-host ring is the 10-host
        // ring minus host 3's entries, so only host 3's keys move.
        let all = hosts(10);
        let mut rest = all.clone();
        rest.remove(3);
        let before = RingHash::new(&all, 81).unwrap();
        let after = RingHash::new(&rest, 81).unwrap();
        for h in random_keys(2, 20_000) {
            let old = &all[before.pick(h)];
            if old != &all[3] {
                assert_eq!(old, &rest[after.pick(h)]);
            }
        }
    }

    #[test]
    fn ring_moves_surviving_keys_only_onto_entries_the_smaller_cluster_added() {
        // Default size: 103 entries per host with 10 hosts, 114 with 9. Each survivor gains
        // entries "<key>_103".."<key>_113"; a key leaves a surviving host only when one of
        // those now comes first on the ring after it. That is Envoy's behaviour too.
        let all = hosts(10);
        let mut rest = all.clone();
        rest.remove(3);
        let before = RingHash::new(&all, 1024).unwrap();
        let after = RingHash::new(&rest, 1024).unwrap();
        let old_entries: BTreeSet<u64> = before.ring.iter().map(|e| e.0).collect();
        let (mut survivors, mut moved) = (0, 0);
        for h in random_keys(3, 20_000) {
            let old = &all[before.pick(h)];
            if old == &all[3] {
                continue;
            }
            survivors += 1;
            let i = after.ring.partition_point(|&(e, _)| e < h) % after.ring.len();
            if old != &rest[after.pick(h)] {
                moved += 1;
                assert!(!old_entries.contains(&after.ring[i].0), "key {h} moved between survivors via an old entry");
            }
        }
        let share = moved as f64 / survivors as f64;
        assert!(share < 0.12, "{share:.3} of surviving keys moved");
    }

    #[test]
    fn ring_rejects_no_hosts_bad_sizes_and_duplicate_keys() {
        let none: [&str; 0] = [];
        assert!(RingHash::new(&none, 1024).unwrap_err().contains("at least one host"));
        assert!(RingHash::new(&["a"], 0).unwrap_err().contains("minimumRingSize"));
        assert!(RingHash::new(&["a"], RingHash::MAX_RING_SIZE + 1).unwrap_err().contains("minimumRingSize"));
        assert!(RingHash::new(&["a", "b", "a"], 1024).unwrap_err().contains("twice"));
        assert!(RingHash::new(&["a", ""], 1024).unwrap_err().contains("non-empty"));
        assert!(RingHash::new(&["a"], RingHash::MAX_RING_SIZE).is_ok());
    }

    #[test]
    fn single_host_ring_always_picks_it() {
        let r = RingHash::new(&["10.0.0.1:80"], 1024).unwrap();
        assert_eq!(r.size(), 1024);
        assert!(random_keys(4, 100).into_iter().all(|h| r.pick(h) == 0));
    }

    // --- maglev ---

    fn slots_per_host(m: &Maglev, n: usize) -> Vec<u64> {
        let mut counts = vec![0u64; n];
        for &host in &m.table {
            counts[host as usize] += 1;
        }
        counts
    }

    #[test]
    fn maglev_matches_envoys_basic_test_vectors() {
        // Envoy's maglev_lb_test.cc `Basic` and `BasicWithHostName`: six hosts, table size 7.
        let by_address: Vec<String> = (90..96).map(|p| format!("127.0.0.1:{p}")).collect();
        assert_eq!(Maglev::new(&by_address, 7).unwrap().table, [2, 4, 0, 1, 5, 0, 3]);
        let by_name: Vec<String> = (90..96).map(|p| p.to_string()).collect();
        let m = Maglev::new(&by_name, 7).unwrap();
        assert_eq!(m.table, [2, 5, 0, 3, 4, 1, 0]);
        assert_eq!((0..21).map(|h| m.pick(h)).collect::<Vec<_>>(), [[2, 5, 0, 3, 4, 1, 0]; 3].concat());
    }

    #[test]
    fn maglev_slot_counts_differ_by_at_most_one_with_equal_weights() {
        for (n, size) in [(10, Maglev::DEFAULT_TABLE_SIZE), (1000, Maglev::DEFAULT_TABLE_SIZE), (7, 13), (3, 2)] {
            let counts = slots_per_host(&Maglev::new(&hosts(n), size).unwrap(), n);
            let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            assert!(hi - lo <= 1, "{n} hosts, table {size}: {lo}..={hi}");
            assert_eq!(counts.iter().sum::<u64>(), size);
        }
    }

    #[test]
    fn maglev_with_fewer_slots_than_hosts_serves_the_first_hosts_by_key() {
        let m = Maglev::new(&["c", "a", "d", "b"], 2).unwrap();
        let mut served: Vec<usize> = m.table.iter().map(|&h| h as usize).collect();
        served.sort();
        assert_eq!(served, [1, 3], "hosts \"a\" and \"b\"");
    }

    #[test]
    fn maglev_is_deterministic_and_independent_of_host_order() {
        let hs = hosts(10);
        let a = Maglev::new(&hs, 65537).unwrap();
        assert_eq!(a, Maglev::new(&hs, 65537).unwrap());
        let mut reversed = hs.clone();
        reversed.reverse();
        let b = Maglev::new(&reversed, 65537).unwrap();
        for slot in 0..65537 {
            assert_eq!(hs[a.pick(slot)], reversed[b.pick(slot)]);
        }
    }

    #[test]
    fn maglev_removing_one_of_10_hosts_moves_its_keys_and_few_others() {
        let all = hosts(10);
        let mut rest = all.clone();
        rest.remove(3);
        let before = Maglev::new(&all, 65537).unwrap();
        let after = Maglev::new(&rest, 65537).unwrap();
        let (mut survivors, mut moved) = (0u64, 0u64);
        for slot in 0..65537u64 {
            let old = &all[before.pick(slot)];
            if old != &all[3] {
                survivors += 1;
                moved += u64::from(old != &rest[after.pick(slot)]);
            }
        }
        let share = moved as f64 / survivors as f64;
        assert!(share < 0.01, "{share:.4} of surviving slots changed host");
    }

    #[test]
    fn maglev_rejects_no_hosts_and_non_prime_or_oversized_tables() {
        let none: [&str; 0] = [];
        assert!(Maglev::new(&none, 65537).unwrap_err().contains("at least one host"));
        for bad in [0, 1, 8, 65536, 5_000_013] {
            assert!(Maglev::new(&["a"], bad).unwrap_err().contains("prime"), "{bad}");
        }
        assert!(Maglev::new(&["a", "a"], 7).unwrap_err().contains("twice"));
        assert!(Maglev::new(&["a"], Maglev::MAX_TABLE_SIZE).is_ok());
    }

    #[test]
    fn primes_are_recognised() {
        let small: Vec<u64> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(small, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(65537) && is_prime(5_000_011) && !is_prime(65539 * 3));
    }

    proptest! {
        #[test]
        fn ring_pick_is_a_valid_index_and_agrees_with_envoys_ketama_search(n in 1usize..40, min in 1u64..3000, keys in proptest::collection::vec(any::<u64>(), 1..50)) {
            let r = RingHash::new(&hosts(n), min).unwrap();
            for h in keys.into_iter().chain(r.ring.iter().flat_map(|e| [e.0, e.0.wrapping_add(1), e.0.wrapping_sub(1)])) {
                let got = r.pick(h);
                prop_assert!(got < n);
                prop_assert_eq!(got, ketama(&r.ring, h));
            }
        }

        #[test]
        fn maglev_pick_is_a_valid_index(n in 1usize..60, size in prop::sample::select(vec![2u64, 3, 7, 13, 251, 1009]), keys in proptest::collection::vec(any::<u64>(), 1..50)) {
            let m = Maglev::new(&hosts(n), size).unwrap();
            for h in keys {
                prop_assert!(m.pick(h) < n);
            }
            let counts = slots_per_host(&m, n);
            prop_assert!(counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1);
        }

        #[test]
        fn header_hash_ignores_value_order(values in proptest::collection::vec("[a-z0-9]{0,8}", 1..5), rotate in 0usize..5) {
            let p = HashPolicy::Header(HeaderName::from_static("x-k"));
            let mut rotated = values.clone();
            rotated.rotate_left(rotate % values.len());
            let a: Vec<(&str, &str)> = values.iter().map(|v| ("x-k", v.as_str())).collect();
            let b: Vec<(&str, &str)> = rotated.iter().map(|v| ("x-k", v.as_str())).collect();
            let (ha, hb) = (headers(&a), headers(&b));
            prop_assert_eq!(p.hash(&input(&ha)), p.hash(&input(&hb)));
        }
    }
}
