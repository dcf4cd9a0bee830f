//! Successful TokenReviews, remembered for a short while: a node agent
//! renewing the certificates of a hundred pods presents the same token a
//! hundred times, and each review is a request to the API server.
//!
//! Only successes are kept (a refused token is asked about again, so a
//! token that becomes valid is not refused for a minute), under the
//! SHA-256 of the token (the tokens themselves never stay in memory), until
//! the TTL or the token's own expiry (its `exp` claim), whichever is first.
//! The cache is bounded: when full, the oldest entry goes.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use super::authn::Caller;

/// How long a review is trusted by default: a revoked token (its pod
/// deleted) keeps working at most this much longer.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);
/// Bound on the entries (about 200 bytes each).
pub const DEFAULT_CAPACITY: usize = 10_000;

type Digest = [u8; 32];
/// The time now; tests move it by hand.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

pub struct ReviewCache {
    ttl: Duration,
    capacity: usize,
    clock: Clock,
    entries: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    by_token: HashMap<Digest, Entry>,
    /// Insertion order (a sequence number per insert), to evict the oldest.
    order: BTreeMap<u64, Digest>,
    next: u64,
}

struct Entry {
    caller: Caller,
    expires: SystemTime,
    seq: u64,
}

impl ReviewCache {
    pub fn new(ttl: Duration, capacity: usize, clock: Clock) -> Self {
        Self {
            ttl,
            capacity,
            clock,
            entries: Mutex::default(),
        }
    }

    /// The caller a still-fresh review of `token` found.
    pub fn get(&self, token: &str) -> Option<Caller> {
        let key = digest(token);
        let now = (self.clock)();
        // A poisoned lock only means a panic elsewhere; the map is intact.
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let entry = entries.by_token.get(&key)?;
        if entry.expires > now {
            return Some(entry.caller.clone());
        }
        let seq = entry.seq;
        entries.by_token.remove(&key);
        entries.order.remove(&seq);
        None
    }

    /// Remembers a successful review of `token`.
    pub fn insert(&self, token: &str, caller: Caller) {
        if self.capacity == 0 || self.ttl.is_zero() {
            return;
        }
        let now = (self.clock)();
        let mut expires = now + self.ttl;
        if let Some(exp) = token_expiry(token) {
            expires = expires.min(exp);
        }
        if expires <= now {
            return;
        }
        let key = digest(token);
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let entries = &mut *entries;
        if let Some(old) = entries.by_token.remove(&key) {
            entries.order.remove(&old.seq);
        }
        while entries.by_token.len() >= self.capacity {
            let Some((_, oldest)) = entries.order.pop_first() else {
                break;
            };
            entries.by_token.remove(&oldest);
        }
        let seq = entries.next;
        entries.next += 1;
        entries.order.insert(seq, key);
        entries.by_token.insert(
            key,
            Entry {
                caller,
                expires,
                seq,
            },
        );
    }

    pub fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_token
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn digest(token: &str) -> Digest {
    let mut out = [0; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref());
    out
}

/// The `exp` claim of a JWT, read without checking the signature: only
/// called on a token the API server has just accepted, and only used to
/// forget the review sooner.
fn token_expiry(token: &str) -> Option<SystemTime> {
    let payload = token.split('.').nth(1)?;
    let claims: serde_json::Value = serde_json::from_slice(&base64url_decode(payload)?).ok()?;
    let exp = claims.get("exp")?.as_u64()?;
    Some(UNIX_EPOCH + Duration::from_secs(exp))
}

/// Unpadded base64url (RFC 4648 §5), as JWTs use.
fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for byte in text.trim_end_matches('=').bytes() {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(node: &str) -> Caller {
        Caller {
            node: node.into(),
            principal: "system:serviceaccount:warren-system:warren-node-agent".into(),
        }
    }

    fn fixed_clock(at: SystemTime) -> (Clock, Arc<Mutex<SystemTime>>) {
        let now = Arc::new(Mutex::new(at));
        let read = Arc::clone(&now);
        (Arc::new(move || *read.lock().unwrap()), now)
    }

    /// An unsigned JWT-shaped token expiring at `exp` (unix seconds).
    fn jwt(exp: u64) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let claims = format!(r#"{{"exp":{exp},"sub":"x"}}"#);
        let mut encoded = String::new();
        for chunk in claims.as_bytes().chunks(3) {
            let n = chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b))
                << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                encoded.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        format!("header.{encoded}.signature")
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let start = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let (clock, now) = fixed_clock(start);
        let cache = ReviewCache::new(Duration::from_secs(60), 10, clock);
        cache.insert("tok", caller("node-a"));
        assert_eq!(cache.get("tok"), Some(caller("node-a")));
        assert_eq!(cache.get("other"), None);
        *now.lock().unwrap() = start + Duration::from_secs(60);
        assert_eq!(cache.get("tok"), None);
        assert!(cache.is_empty(), "an expired entry is dropped when seen");
    }

    #[test]
    fn never_beyond_the_tokens_own_expiry() {
        let start = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let (clock, now) = fixed_clock(start);
        let cache = ReviewCache::new(Duration::from_secs(60), 10, clock);
        let token = jwt(1_000_010);
        assert_eq!(
            token_expiry(&token),
            Some(UNIX_EPOCH + Duration::from_secs(1_000_010))
        );
        cache.insert(&token, caller("node-a"));
        *now.lock().unwrap() = start + Duration::from_secs(9);
        assert!(cache.get(&token).is_some());
        *now.lock().unwrap() = start + Duration::from_secs(10);
        assert!(cache.get(&token).is_none());
        // Already expired: not kept at all.
        cache.insert(&jwt(1_000_000), caller("node-a"));
        assert!(cache.is_empty());
    }

    #[test]
    fn the_oldest_entry_goes_when_full() {
        let (clock, _) = fixed_clock(UNIX_EPOCH + Duration::from_secs(1_000_000));
        let cache = ReviewCache::new(Duration::from_secs(60), 2, clock);
        cache.insert("a", caller("node-a"));
        cache.insert("b", caller("node-b"));
        cache.insert("c", caller("node-c"));
        assert_eq!(cache.len(), 2);
        assert!(cache.get("a").is_none());
        assert!(cache.get("b").is_some() && cache.get("c").is_some());
    }
}
