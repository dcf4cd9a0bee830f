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
}

impl Counters {
    pub fn issued(&self) {
        self.issued.fetch_add(1, Ordering::Relaxed);
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
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub issued: u64,
    pub refused: BTreeMap<&'static str, u64>,
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
        Ok(())
    }
}
