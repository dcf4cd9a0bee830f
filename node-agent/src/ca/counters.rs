//! What the CA did: certificates issued, and refusals by reason. Logged
//! when they change (see [`super::server`]); tests read them directly.

use std::{
    collections::BTreeMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

#[derive(Default, Debug)]
pub struct Counters {
    issued: AtomicU64,
    refused: Mutex<BTreeMap<&'static str, u64>>,
    review_cache_hits: AtomicU64,
    review_cache_misses: AtomicU64,
}

impl Counters {
    pub fn issued(&self) {
        self.issued.fetch_add(1, Ordering::Relaxed);
    }

    /// A token answered from the TokenReview cache (`hit`) or sent to the
    /// API server.
    pub fn review_cache(&self, hit: bool) {
        let counter = if hit {
            &self.review_cache_hits
        } else {
            &self.review_cache_misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn refused(&self, reason: &'static str) {
        // A poisoned map only means a panic elsewhere; counting goes on.
        let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        *refused.entry(reason).or_default() += 1;
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            issued: self.issued.load(Ordering::Relaxed),
            refused: self
                .refused
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            review_cache_hits: self.review_cache_hits.load(Ordering::Relaxed),
            review_cache_misses: self.review_cache_misses.load(Ordering::Relaxed),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub issued: u64,
    pub refused: BTreeMap<&'static str, u64>,
    /// Kubernetes only: TokenReviews answered from the cache, and made.
    pub review_cache_hits: u64,
    pub review_cache_misses: u64,
}

impl Snapshot {
    pub fn refused(&self, reason: &str) -> u64 {
        self.refused.get(reason).copied().unwrap_or(0)
    }
}

impl std::fmt::Display for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "issued={}", self.issued)?;
        for (reason, n) in &self.refused {
            write!(f, " refused.{reason}={n}")?;
        }
        if self.review_cache_hits + self.review_cache_misses > 0 {
            write!(
                f,
                " token_review_cache.hits={} token_review_cache.misses={}",
                self.review_cache_hits, self.review_cache_misses
            )?;
        }
        Ok(())
    }
}
