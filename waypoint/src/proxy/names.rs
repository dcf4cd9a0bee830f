//! Endpoints known by name (a ServiceEntry with `resolution: DNS` whose traffic goes
//! through this waypoint): each address a name resolves to is an endpoint of the
//! cluster, as Envoy's `STRICT_DNS` clusters have them, so balancing, outlier detection
//! and pools work per address.
//!
//! Clusters are built synchronously from what this cache holds; a request whose cluster
//! holds an expired or missing name first refreshes it ([`Names::refresh`]), and a
//! changed answer moves [`Names::generation`] so the cluster is rebuilt. When the DNS
//! servers fail, the resolver stands in with the last good answer (as Envoy keeps a DNS
//! cluster's hosts); a name with no answer at all is retried a second later, not by every
//! request.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tracing::{debug, warn};
use warren_ztunnel::dns::{FORGET_AFTER, Resolver};

/// How long a failed lookup stands before the next request tries again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
struct Known {
    addresses: Vec<IpAddr>,
    valid_until: Instant,
}

#[derive(Default)]
pub struct Names {
    known: Mutex<HashMap<String, Known>>,
    generation: AtomicU64,
}

impl Names {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Known>> {
        // Nothing under this lock panics; a poisoned map is still sound.
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What `host` resolved to last (possibly expired), and until when it
    /// holds; `None` before any answer.
    pub fn addresses(&self, host: &str) -> Option<(Vec<IpAddr>, Instant)> {
        self.lock()
            .get(host)
            .map(|k| (k.addresses.clone(), k.valid_until))
    }

    /// Moves whenever a name's addresses change: clusters built before are
    /// rebuilt.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Drops the answers that expired more than [`FORGET_AFTER`] ago: a
    /// name whose ServiceEntry is gone is never asked for again. (A cluster
    /// still naming one keeps its endpoints, and asks again on its next
    /// request.)
    fn forget_unused(&self, now: Instant) {
        self.lock()
            .retain(|_, k| k.valid_until + FORGET_AFTER > now);
    }

    /// Resolves the `hosts` that are missing or expired, each within `limit`.
    pub async fn refresh(&self, resolver: &Resolver, hosts: &[String], limit: Duration) {
        let now = Instant::now();
        let stale: Vec<&String> = {
            // Only a refresh adds names, so forgetting here bounds the map.
            self.forget_unused(now);
            let known = self.lock();
            hosts
                .iter()
                .filter(|h| known.get(*h).is_none_or(|k| k.valid_until <= now))
                .collect()
        };
        // Together: only names never resolved wait (the resolver answers the
        // others at once, refreshing them in the background).
        let answers =
            futures::future::join_all(stale.iter().map(|host| resolver.resolve(host, limit))).await;
        for (host, answer) in stale.into_iter().zip(answers) {
            let mut known = self.lock();
            match answer {
                Ok((addresses, valid_until)) => {
                    debug!(%host, ?addresses, "endpoint name resolved");
                    let changed = known
                        .get(host)
                        .is_none_or(|k| answer_changed(&k.addresses, &addresses));
                    known.insert(
                        host.clone(),
                        Known {
                            addresses,
                            valid_until,
                        },
                    );
                    if changed {
                        self.generation.fetch_add(1, Ordering::AcqRel);
                    }
                }
                // The resolver already stood in with the last good answer
                // where it had one: this name has none (or no longer exists).
                Err(error) => {
                    warn!(%host, %error, "cannot resolve an endpoint's name: no endpoints from it");
                    let had = known
                        .insert(
                            host.clone(),
                            Known {
                                addresses: Vec::new(),
                                valid_until: Instant::now() + RETRY_AFTER,
                            },
                        )
                        .is_some_and(|k| !k.addresses.is_empty());
                    if had {
                        self.generation.fetch_add(1, Ordering::AcqRel);
                    }
                }
            }
        }
    }
}

/// Whether a new answer changes the endpoints clusters take from it: other addresses,
/// or another first one where the cluster uses only that (`DNS_ROUND_ROBIN`, Envoy's
/// LOGICAL_DNS: new connections go to the first address of the latest answer). A
/// server that shuffles its answers otherwise changes nothing.
fn answer_changed(before: &[IpAddr], now: &[IpAddr]) -> bool {
    let sorted = |list: &[IpAddr]| {
        let mut list = list.to_vec();
        list.sort_unstable();
        list
    };
    // The first address a cluster would pick: IPv4 first, as the clusters do.
    let first = |list: &[IpAddr]| {
        warren_ztunnel::dns::preferring(list.to_vec(), true)
            .first()
            .copied()
    };
    sorted(before) != sorted(now) || first(before) != first(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reordered_answer_changes_only_its_first_address() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let (a, b, c) = (ip("192.0.2.1"), ip("192.0.2.2"), ip("192.0.2.3"));
        let v6 = ip("2001:db8::1");
        // Same addresses, same first: nothing to rebuild.
        assert!(!answer_changed(&[a, b, c], &[a, c, b]));
        // Another first address: a DNS_ROUND_ROBIN cluster follows it.
        assert!(answer_changed(&[a, b, c], &[b, a, c]));
        // The first IPv4 address is what counts; IPv6 ahead of it changes nothing.
        assert!(!answer_changed(&[a, v6], &[v6, a]));
        // Other addresses.
        assert!(answer_changed(&[a, b], &[a, c]));
        assert!(answer_changed(&[a], &[]));
    }

    #[test]
    fn answers_unused_long_past_expiry_are_forgotten() {
        let names = Names::default();
        let now = Instant::now();
        for (host, valid_until) in [("used", now + Duration::from_secs(60)), ("gone", now)] {
            names.lock().insert(
                host.to_owned(),
                Known {
                    addresses: vec![IpAddr::from([192, 0, 2, 1])],
                    valid_until,
                },
            );
        }
        names.forget_unused(now + Duration::from_secs(1));
        assert!(names.addresses("gone").is_some(), "just expired: kept");
        let generation = names.generation();
        names.forget_unused(now + FORGET_AFTER + Duration::from_secs(1));
        assert!(names.addresses("gone").is_none());
        assert!(names.addresses("used").is_some());
        // Nothing a cluster holds changed.
        assert_eq!(names.generation(), generation);
    }
}
