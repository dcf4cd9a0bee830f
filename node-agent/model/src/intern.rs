//! One shared copy of the strings that repeat across many objects:
//! namespace, node and service-account names, and whole label sets (the
//! replicas of a Deployment carry the same ones). A mesh of 50 000 pods
//! over 100 namespaces and 50 nodes then holds each such name once, not
//! once per pod.
//!
//! The table only hands out copies; each object owns its `Arc`. Strings no
//! object holds any more are swept when the table has doubled since the
//! last sweep, so churn (rollouts renaming label sets) does not grow it for
//! ever, and the cost of a sweep is spread over the interning that led to it.

use std::{
    collections::HashSet,
    sync::{Arc, LazyLock, Mutex},
};

/// Entries below which the table is never swept.
const MIN_SWEEP: usize = 1024;

struct Table {
    strings: HashSet<Arc<str>>,
    sweep_at: usize,
}

static TABLE: LazyLock<Mutex<Table>> = LazyLock::new(|| {
    Mutex::new(Table {
        strings: HashSet::new(),
        sweep_at: MIN_SWEEP,
    })
});

/// The shared copy of `s`.
pub fn intern(s: &str) -> Arc<str> {
    // A panic while holding the lock leaves a valid set behind (every change
    // is one insert or one retain), so poisoning is ignored.
    let mut table = TABLE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(shared) = table.strings.get(s) {
        return shared.clone();
    }
    if table.strings.len() >= table.sweep_at {
        // Held only by the table: no object uses it any more.
        table.strings.retain(|s| Arc::strong_count(s) > 1);
        table.sweep_at = (table.strings.len() * 2).max(MIN_SWEEP);
    }
    let shared: Arc<str> = Arc::from(s);
    table.strings.insert(shared.clone());
    shared
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_strings_share_one_copy() {
        let a = intern("bench-namespace");
        let b = intern(&String::from("bench-namespace"));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &intern("other-namespace")));
    }

    #[test]
    fn unused_strings_are_swept() {
        for i in 0..3 * MIN_SWEEP {
            intern(&format!("swept-{i}"));
        }
        // Other tests intern strings meanwhile: count only these.
        let table = TABLE.lock().unwrap_or_else(|p| p.into_inner());
        let kept = table
            .strings
            .iter()
            .filter(|s| s.starts_with("swept-"))
            .count();
        assert!(kept < 3 * MIN_SWEEP, "none of {kept} unused strings swept");
    }
}
