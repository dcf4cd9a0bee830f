//! Load balancing helpers: what a request is hashed on, the consistent hash
//! tables (ring hash and maglev), and the random choices.
//!
//! Hashes are deterministic (FNV-1a with a murmur3 finaliser, not Rust's
//! seeded `RandomState`), so every waypoint replica sends one key to the same
//! endpoint.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http::header::COOKIE;
use http::{HeaderMap, Uri};
use rand::Rng;

use super::policy::{HashCookie, HashKey, HashTable};

// ---------------------------------------------------------------------------
// Request side
// ---------------------------------------------------------------------------

/// What a request offers to a consistent hash. Fields the key does not use
/// may be left `None`.
#[derive(Clone, Copy, Debug, Default)]
pub struct HashInput<'a> {
    pub headers: Option<&'a HeaderMap>,
    /// The raw query string (after `?`), if any.
    pub query: Option<&'a str>,
    /// The downstream client's address.
    pub source: Option<SocketAddr>,
    /// The downstream connection's id: the seed of a new hash cookie, so
    /// requests racing on one connection get the same cookie and other
    /// connections (other sessions, even from the same address) their own.
    pub connection: Option<u64>,
}

impl<'a> HashInput<'a> {
    pub fn new(
        headers: &'a HeaderMap,
        uri: &'a Uri,
        source: Option<SocketAddr>,
        connection: Option<u64>,
    ) -> Self {
        Self {
            headers: Some(headers),
            query: uri.query(),
            source,
            connection,
        }
    }
}

/// A cookie the proxy must add to the response (`Set-Cookie`): the request
/// had no hash cookie and the rule has a ttl. The request was hashed on the
/// new value, so the client's next request lands on the same endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetCookie {
    pub name: String,
    pub value: String,
    pub path: Option<String>,
    /// `None` for a session cookie (ttl `0s`).
    pub max_age: Option<Duration>,
}

impl SetCookie {
    /// The `Set-Cookie` header value; fails only when the configured name or
    /// path holds bytes a header cannot carry.
    pub fn header_value(&self) -> Result<http::HeaderValue, http::header::InvalidHeaderValue> {
        http::HeaderValue::from_str(&self.to_string())
    }
}

/// The `Set-Cookie` header value, as Envoy writes it.
impl fmt::Display for SetCookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}=\"{}\"", self.name, self.value)?;
        if let Some(age) = self.max_age {
            write!(f, "; Max-Age={}", age.as_secs())?;
        }
        if let Some(path) = &self.path {
            write!(f, "; Path={path}")?;
        }
        write!(f, "; HttpOnly")
    }
}

/// The hash of a request for `key`, or `None` when the request lacks the
/// attribute (it then goes to a random endpoint, as in Envoy); and the
/// cookie to set, when one was generated.
pub(crate) fn hash_request(
    key: &HashKey,
    input: &HashInput<'_>,
) -> (Option<u64>, Option<SetCookie>) {
    match key {
        HashKey::Header(name) => {
            let Some(headers) = input.headers else {
                return (None, None);
            };
            let mut values: Vec<&[u8]> =
                headers.get_all(name).iter().map(|v| v.as_bytes()).collect();
            // Several values hash the same whatever their order (Envoy).
            values.sort_unstable();
            if values.is_empty() {
                return (None, None);
            }
            let mut h = Hasher::new();
            for (i, v) in values.iter().enumerate() {
                if i > 0 {
                    h.write(&[0]);
                }
                h.write(v);
            }
            (Some(h.finish()), None)
        }
        HashKey::Cookie(cookie) => hash_cookie(cookie, input),
        HashKey::SourceIp => (input.source.map(|s| hash_ip(s.ip())), None),
        HashKey::QueryParameter(name) => (
            input
                .query
                .and_then(|q| query_value(q, name))
                .map(|v| hash_bytes(v.as_bytes())),
            None,
        ),
    }
}

fn hash_cookie(cookie: &HashCookie, input: &HashInput<'_>) -> (Option<u64>, Option<SetCookie>) {
    if let Some(value) = input.headers.and_then(|h| cookie_value(h, &cookie.name)) {
        return (Some(hash_bytes(value.as_bytes())), None);
    }
    let Some(ttl) = cookie.ttl else {
        return (None, None);
    };
    // Envoy derives the value from the connection's addresses, so requests
    // racing on one connection get the same cookie; a waypoint sees the
    // client's address without its port (ztunnel forwards only the IP), which
    // would give every session of one pod, or of an ingress gateway, one
    // cookie and one endpoint: the connection's id stands in for it.
    let seed = match input.connection {
        Some(connection) => connection,
        None => rand::rng().random(),
    };
    let value = format!("{seed:016x}");
    let hash = hash_bytes(value.as_bytes());
    let set = SetCookie {
        name: cookie.name.clone(),
        value,
        path: cookie.path.clone(),
        max_age: (!ttl.is_zero()).then_some(ttl),
    };
    (Some(hash), Some(set))
}

/// The first value of cookie `name` in the request's `Cookie` headers.
fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k.trim() == name).then(|| {
                let v = v.trim();
                v.strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v)
            })
        })
}

/// The raw value of the first parameter `name`; a parameter without `=`
/// has the empty value.
fn query_value<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

fn hash_ip(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => hash_bytes(&v4.octets()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            // One client, one hash, whichever socket family it came in on.
            Some(v4) => hash_bytes(&v4.octets()),
            None => hash_bytes(&v6.octets()),
        },
    }
}

// ---------------------------------------------------------------------------
// Hashing
// ---------------------------------------------------------------------------

/// FNV-1a over the bytes, finished with murmur3's `fmix64` so that short,
/// similar inputs (`10.0.0.1:80` and `10.0.0.2:80`) spread over the ring.
#[derive(Clone, Debug)]
pub(crate) struct Hasher(u64);

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

impl Hasher {
    pub(crate) fn new() -> Self {
        Self(FNV_OFFSET)
    }

    pub(crate) fn with_seed(seed: u64) -> Self {
        let mut h = Self::new();
        h.write(&seed.to_le_bytes());
        h
    }

    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
    }

    pub(crate) fn finish(&self) -> u64 {
        let mut k = self.0;
        k ^= k >> 33;
        k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
        k ^= k >> 33;
        k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        k ^= k >> 33;
        k
    }
}

pub(crate) fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h = Hasher::new();
    h.write(bytes);
    h.finish()
}

// ---------------------------------------------------------------------------
// Consistent hash tables
// ---------------------------------------------------------------------------

/// A consistent hash table over a list of endpoint keys (their addresses):
/// `lookup` answers a position in that list.
#[derive(Debug)]
pub(crate) enum Table {
    Ring(Ring),
    Maglev(Maglev),
}

impl Table {
    /// A table over `keys` (each with its weight), the eligible endpoints
    /// out of `population`.
    pub(crate) fn build(kind: &HashTable, keys: &[(String, u32)], population: Population) -> Table {
        match kind {
            HashTable::Ring { minimum_size } => {
                Table::Ring(Ring::build(keys, *minimum_size, population))
            }
            HashTable::Maglev { table_size } => {
                Table::Maglev(Maglev::build(keys, *table_size, population))
            }
        }
    }

    pub(crate) fn lookup(&self, hash: u64) -> Option<usize> {
        match self {
            Table::Ring(ring) => ring.lookup(hash),
            Table::Maglev(maglev) => maglev.lookup(hash),
        }
    }
}

/// What a table's shares are measured against: every endpoint of the group,
/// ejected or not, so that ejecting one (or its coming back) moves only the
/// keys it owned, not everyone's share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Population {
    pub count: usize,
    /// The sum of their weights (each at least 1).
    pub total_weight: u64,
    /// The largest of their weights (at least 1).
    pub heaviest: u32,
}

impl Population {
    /// The population of `weights` (0 counts as 1).
    pub(crate) fn of(weights: impl IntoIterator<Item = u32>) -> Population {
        let mut population = Population {
            count: 0,
            total_weight: 0,
            heaviest: 1,
        };
        for w in weights {
            let w = w.max(1);
            population.count += 1;
            population.total_weight += u64::from(w);
            population.heaviest = population.heaviest.max(w);
        }
        population
    }
}

/// Envoy's ring hash: every endpoint owns points on a 64-bit ring (hashes
/// of its address and the point's number); a request goes to the owner of
/// the first point at or after its hash.
///
/// Envoy gives each of `n` endpoints `ceil(minimum / n)` points, so removing
/// one endpoint also adds points to the others, which take keys from each
/// other. Here the count is rounded up to a power of two and computed from
/// all the cluster's endpoints, ejected or not: it changes only when the
/// endpoint count crosses a power-of-two boundary, so removing or ejecting
/// an endpoint usually moves only the keys it owned. The ring holds between
/// `minimum` and twice that many points. With unequal weights the same
/// number of points is shared by weight (each endpoint keeps at least one),
/// measured against the whole population, so that the shares, too, change
/// only with the population; Envoy sizes its ring from the lightest
/// endpoint's share instead, which comes to the same shares.
#[derive(Debug, Default)]
pub(crate) struct Ring {
    /// Sorted.
    points: Vec<u64>,
    /// `owners[i]` owns `points[i]`.
    owners: Vec<u32>,
}

impl Ring {
    fn build(keys: &[(String, u32)], minimum_size: usize, population: Population) -> Ring {
        let n = keys.len();
        if n == 0 {
            return Ring::default();
        }
        let count = population.count.max(n);
        let per_key = minimum_size
            .div_ceil(count)
            .max(1)
            .checked_next_power_of_two()
            .unwrap_or(1);
        // Equal weights: `per_key` each. Else the population's points
        // (`per_key` × its size, at most twice `minimum_size`) by weight.
        let total_weight = population.total_weight.max(n as u64);
        let points = per_key as u128 * count as u128;
        let counts: Vec<usize> = keys
            .iter()
            .map(|(_, w)| {
                let share = points * u128::from((*w).max(1)) / u128::from(total_weight);
                usize::try_from(share).unwrap_or(per_key).max(1)
            })
            .collect();
        let mut entries: Vec<(u64, u32)> = Vec::with_capacity(counts.iter().sum());
        for (owner, ((key, _), count)) in keys.iter().zip(&counts).enumerate() {
            // More than 2^32 endpoints cannot be listed; saturate rather than wrap.
            let owner = u32::try_from(owner).unwrap_or(u32::MAX);
            for replica in 0..*count {
                let mut h = Hasher::new();
                h.write(key.as_bytes());
                h.write(b"_");
                h.write(&(replica as u64).to_le_bytes());
                entries.push((h.finish(), owner));
            }
        }
        entries.sort_unstable();
        let (points, owners) = entries.into_iter().unzip();
        Ring { points, owners }
    }

    fn lookup(&self, hash: u64) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let i = self.points.partition_point(|p| *p < hash);
        let i = if i == self.points.len() { 0 } else { i };
        self.owners.get(i).map(|o| *o as usize)
    }
}

/// Maglev (Eisenbud et al., 2016): a prime-sized table filled by each
/// endpoint's permutation in turn; near-minimal disruption, O(1) lookup.
/// With unequal weights an endpoint takes its turn only as often as its
/// weight over the heaviest's (Envoy's weighted Maglev), so its share of
/// the table follows its weight. The heaviest is the population's, ejected
/// or not, so that ejecting it does not reshuffle everyone; the turns are
/// scheduled exactly (in integers, by round), so skewed weights cost no
/// more than equal ones.
#[derive(Debug, Default)]
pub(crate) struct Maglev {
    table: Vec<u32>,
}

impl Maglev {
    fn build(keys: &[(String, u32)], table_size: usize, population: Population) -> Maglev {
        let n = keys.len();
        // The permutation needs a prime size of at least 2.
        let m = if table_size < 2 { 65537 } else { table_size } as u64;
        if n == 0 {
            return Maglev::default();
        }
        const EMPTY: u32 = u32::MAX;
        let mut table = vec![EMPTY; m as usize];
        let mut cursor: Vec<u64> = Vec::with_capacity(n);
        let mut skip: Vec<u64> = Vec::with_capacity(n);
        let heaviest = keys
            .iter()
            .map(|(_, w)| (*w).max(1))
            .fold(population.heaviest.max(1), u32::max);
        // An endpoint of weight w takes its k-th turn in round
        // ceil(k × heaviest / w) (the heaviest in every round); within a
        // round, in the endpoints' order. So: the next turn of each, by
        // (round, endpoint).
        let round = |k: u64, w: u32| {
            let w = u128::from(w.max(1));
            (u128::from(k) * u128::from(heaviest)).div_ceil(w)
        };
        let mut turns: std::collections::BinaryHeap<std::cmp::Reverse<(u128, usize, u64)>> = keys
            .iter()
            .enumerate()
            .map(|(i, (_, w))| std::cmp::Reverse((round(1, *w), i, 1)))
            .collect();
        for (key, _) in keys {
            let mut offset = Hasher::with_seed(0);
            offset.write(key.as_bytes());
            let mut step = Hasher::with_seed(1);
            step.write(key.as_bytes());
            cursor.push(offset.finish() % m);
            skip.push(step.finish() % (m - 1) + 1);
        }
        let mut filled = 0u64;
        while filled < m {
            let Some(std::cmp::Reverse((_, i, k))) = turns.pop() else {
                break;
            };
            // Each permutation visits every slot (m is prime), so an empty
            // one is found while any remains.
            while table[cursor[i] as usize] != EMPTY {
                cursor[i] = (cursor[i] + skip[i]) % m;
            }
            table[cursor[i] as usize] = u32::try_from(i).unwrap_or(EMPTY - 1);
            cursor[i] = (cursor[i] + skip[i]) % m;
            filled += 1;
            let weight = keys.get(i).map_or(1, |(_, w)| *w);
            turns.push(std::cmp::Reverse((round(k + 1, weight), i, k + 1)));
        }
        Maglev { table }
    }

    fn lookup(&self, hash: u64) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        let slot = (hash % self.table.len() as u64) as usize;
        self.table.get(slot).map(|o| *o as usize)
    }
}

// ---------------------------------------------------------------------------
// Random choices
// ---------------------------------------------------------------------------

/// A uniform position below `n` (`n > 0`).
pub(crate) fn random_index(n: usize) -> usize {
    rand::rng().random_range(0..n)
}

/// A random position, each as likely as its weight (slow start); `None`
/// when no weight is positive.
pub(crate) fn weighted_index(weights: &[f64]) -> Option<usize> {
    let total: f64 = weights.iter().filter(|w| **w > 0.0).sum();
    if total <= 0.0 {
        return None;
    }
    let mut draw = rand::rng().random_range(0.0..total);
    for (i, w) in weights.iter().enumerate() {
        if *w <= 0.0 {
            continue;
        }
        if draw < *w {
            return Some(i);
        }
        draw -= w;
    }
    weights.iter().rposition(|w| *w > 0.0)
}

/// Power of two choices: two distinct random positions, the one with the
/// smaller load wins (Envoy's LEAST_REQUEST with `choice_count` 2).
pub(crate) fn two_choices(n: usize, load: impl Fn(usize) -> u64) -> usize {
    if n < 2 {
        return 0;
    }
    let mut rng = rand::rng();
    let a = rng.random_range(0..n);
    let mut b = rng.random_range(0..n - 1);
    if b >= a {
        b += 1;
    }
    if load(b) < load(a) { b } else { a }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_and_query_values_are_found() {
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, "a=1; user=\"bob\"".parse().expect("static header"));
        headers.append(COOKIE, "user=alice".parse().expect("static header"));
        assert_eq!(cookie_value(&headers, "user"), Some("bob"));
        assert_eq!(cookie_value(&headers, "a"), Some("1"));
        assert_eq!(cookie_value(&headers, "b"), None);

        assert_eq!(query_value("a=1&b=2&b=3", "b"), Some("2"));
        assert_eq!(query_value("flag&x=1", "flag"), Some(""));
        assert_eq!(query_value("a=1", "c"), None);
    }

    #[test]
    fn set_cookie_header_matches_envoy() {
        let c = SetCookie {
            name: "session".into(),
            value: "00ff".into(),
            path: Some("/app".into()),
            max_age: Some(Duration::from_secs(3600)),
        };
        assert_eq!(
            c.to_string(),
            "session=\"00ff\"; Max-Age=3600; Path=/app; HttpOnly"
        );
        assert_eq!(
            c.header_value().ok().as_ref().map(|v| v.as_bytes()),
            Some(&b"session=\"00ff\"; Max-Age=3600; Path=/app; HttpOnly"[..])
        );
        let session = SetCookie {
            max_age: None,
            path: None,
            ..c
        };
        assert_eq!(session.to_string(), "session=\"00ff\"; HttpOnly");
    }

    #[test]
    fn header_values_hash_in_any_order() {
        let name = http::HeaderName::from_static("x-user");
        let key = HashKey::Header(name.clone());
        let mut ab = HeaderMap::new();
        ab.append(&name, "a".parse().expect("static header"));
        ab.append(&name, "b".parse().expect("static header"));
        let mut ba = HeaderMap::new();
        ba.append(&name, "b".parse().expect("static header"));
        ba.append(&name, "a".parse().expect("static header"));
        let input = |h| HashInput {
            headers: Some(h),
            ..Default::default()
        };
        let (h1, _) = hash_request(&key, &input(&ab));
        let (h2, _) = hash_request(&key, &input(&ba));
        assert!(h1.is_some());
        assert_eq!(h1, h2);
        assert_eq!(hash_request(&key, &input(&HeaderMap::new())).0, None);
    }

    #[test]
    fn ring_has_the_minimum_size_and_wraps() {
        let keys: Vec<(String, u32)> = (0..3).map(|i| (format!("10.0.0.{i}:80"), 1)).collect();
        let Table::Ring(ring) = Table::build(
            &HashTable::Ring { minimum_size: 1024 },
            &keys,
            Population::of([1, 1, 1]),
        ) else {
            panic!("asked for a ring");
        };
        // ceil(1024 / 3) = 342, rounded up to 512.
        assert_eq!(ring.points.len(), 3 * 512);
        assert!(ring.points.windows(2).all(|w| w[0] <= w[1]));
        // Past the last point, the first point's owner takes the hash.
        let last = *ring.points.last().expect("the ring has points");
        if last < u64::MAX {
            assert_eq!(ring.lookup(last + 1), Some(ring.owners[0] as usize));
        }
        assert_eq!(ring.lookup(0), Some(ring.owners[0] as usize));
    }

    #[test]
    fn maglev_fills_every_slot_evenly() {
        let keys: Vec<(String, u32)> = (0..7).map(|i| (format!("10.0.0.{i}:80"), 1)).collect();
        let Table::Maglev(m) = Table::build(
            &HashTable::Maglev { table_size: 65537 },
            &keys,
            Population::of([1; 7]),
        ) else {
            panic!("asked for maglev");
        };
        let mut counts = [0usize; 7];
        for owner in &m.table {
            counts[*owner as usize] += 1;
        }
        // Maglev gives each endpoint within one slot of m / n.
        for c in counts {
            assert!((9361..=9364).contains(&c), "uneven maglev share {c}");
        }
    }

    /// Weighted endpoints own shares of either table that follow their
    /// weights: 1, 2 and 5 of 8.
    #[test]
    fn hash_tables_share_by_weight() {
        let keys: Vec<(String, u32)> = [1, 2, 5]
            .iter()
            .enumerate()
            .map(|(i, w)| (format!("10.0.0.{i}:80"), *w))
            .collect();
        let shares = |owners: &[u32]| {
            let mut counts = [0usize; 3];
            for owner in owners {
                counts[*owner as usize] += 1;
            }
            counts.map(|c| c as f64 / owners.len() as f64)
        };
        let population = Population::of([1, 2, 5]);
        let Table::Maglev(m) =
            Table::build(&HashTable::Maglev { table_size: 65537 }, &keys, population)
        else {
            panic!("asked for maglev");
        };
        let Table::Ring(ring) =
            Table::build(&HashTable::Ring { minimum_size: 1024 }, &keys, population)
        else {
            panic!("asked for a ring");
        };
        // The ring's points: as many as for three equal endpoints (1024 / 3,
        // rounded up to a power of two, each), shared 1:2:5.
        assert_eq!(ring.points.len(), 3 * 512);
        for (name, got) in [
            ("maglev", shares(&m.table)),
            ("ring points", shares(&ring.owners)),
        ] {
            for (share, want) in got.iter().zip([1.0 / 8.0, 2.0 / 8.0, 5.0 / 8.0]) {
                assert!((share - want).abs() < 0.01, "{name}: {got:?}");
            }
        }
        // What the ring's points cover (its hash space) follows too, within
        // what 4 096 random points allow.
        let mut covered = [0f64; 3];
        let mut previous = *ring.points.last().expect("points");
        for (point, owner) in ring.points.iter().zip(&ring.owners) {
            covered[*owner as usize] += point.wrapping_sub(previous) as f64 / u64::MAX as f64;
            previous = *point;
        }
        for (share, want) in covered.iter().zip([1.0 / 8.0, 2.0 / 8.0, 5.0 / 8.0]) {
            assert!((share - want).abs() < 0.04, "ring coverage: {covered:?}");
        }

        // The lightest ejected (still in the population): the others keep
        // their points, so only its keys move.
        let Table::Ring(without) = Table::build(
            &HashTable::Ring { minimum_size: 1024 },
            &keys[1..],
            population,
        ) else {
            panic!("asked for a ring");
        };
        let points_of = |ring: &Ring, owner: u32| -> Vec<u64> {
            ring.points
                .iter()
                .zip(&ring.owners)
                .filter(|(_, o)| **o == owner)
                .map(|(p, _)| *p)
                .collect()
        };
        assert_eq!(points_of(&without, 0), points_of(&ring, 1));
        assert_eq!(points_of(&without, 1), points_of(&ring, 2));
    }

    /// Skewed weights neither blow a ring up nor slow Maglev down: the ring
    /// keeps its size (the light endpoint one point at least), and Maglev
    /// schedules turns, not rounds.
    #[test]
    fn skewed_weights_keep_tables_small_and_quick() {
        let keys: Vec<(String, u32)> = vec![("a:80".into(), 1), ("b:80".into(), u32::MAX)];
        let population = Population::of([1, u32::MAX]);
        let Table::Ring(ring) =
            Table::build(&HashTable::Ring { minimum_size: 1024 }, &keys, population)
        else {
            panic!("asked for a ring");
        };
        assert_eq!(ring.points.len(), 1024);
        assert_eq!(ring.owners.iter().filter(|o| **o == 0).count(), 1);
        let started = std::time::Instant::now();
        let Table::Maglev(m) =
            Table::build(&HashTable::Maglev { table_size: 65537 }, &keys, population)
        else {
            panic!("asked for maglev");
        };
        assert!(m.table.iter().all(|o| *o < 2));
        // The light one's first turn is past the table's end: it gets none.
        assert_eq!(m.table.iter().filter(|o| **o == 0).count(), 0);
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn two_choices_never_picks_the_busier_of_two() {
        for _ in 0..200 {
            assert_eq!(two_choices(2, |i| if i == 0 { 5 } else { 0 }), 1);
        }
    }
}
