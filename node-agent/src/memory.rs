//! Keeping the agent's memory small: freed memory handed back to the
//! kernel after configuration changes, and big sets kept packed.
//!
//! Reading a file of a thousand pods builds megabytes of YAML trees and
//! full Kubernetes objects that are freed once the compact objects are
//! kept; the kept ones end up scattered between the freed space. glibc
//! returns only the top of a heap by itself, so after a bulk load the
//! agent held about 160 bytes per workload of free memory (14 % of its
//! footprint on the `config` bench). `malloc_trim` also releases the whole
//! free pages inside the heaps. It walks them (0.1–0.8 ms on the bench's
//! 60 MiB heap, up to about 12 ms right after a bulk load), so it runs
//! after every few hundred changes and on the agent's periodic tick when
//! something changed — not after each edit.

use std::{
    borrow::Borrow,
    collections::{BTreeSet, btree_set},
};

/// Objects changed since the last release from which memory is handed
/// back at once.
const BULK_CHANGES: usize = 256;

/// Counts the objects changed since freed memory was last handed back.
#[derive(Default)]
pub struct Reclaim {
    changed: usize,
}

impl Reclaim {
    /// After a batch of `changed` objects: releases once a bulk of changes
    /// has accumulated.
    pub fn after_changes(&mut self, changed: usize) {
        self.changed += changed;
        if self.changed >= BULK_CHANGES {
            self.release();
        }
    }

    /// On the periodic tick: releases what the changes since the last
    /// release freed, if there were any.
    pub fn on_tick(&mut self) {
        if self.changed > 0 {
            self.release();
        }
    }

    fn release(&mut self) {
        self.changed = 0;
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only releases memory the allocator holds
        // free; it may be called at any time from any thread. Its result
        // (whether anything was released) needs no handling.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// A B-tree set packed dense again whenever a quarter of it is new since it
/// was last packed.
///
/// The standard B-tree splits a full node in two and never packs: filled
/// in key order, as a folder or an API listing fills it, its nodes stay
/// about half full, and a node costs its eleven slots however few are
/// used. Rebuilding from the sorted elements fills the nodes; doing it
/// after a quarter of new elements keeps the cost linear overall (a few
/// milliseconds for 60 000 elements) and most of the set packed.
pub struct DenseSet<T> {
    set: BTreeSet<T>,
    /// Elements added since the last packing.
    added: usize,
}

/// Sets smaller than this are not worth packing.
const MIN_PACKED: usize = 64;

impl<T> Default for DenseSet<T> {
    fn default() -> Self {
        Self {
            set: BTreeSet::new(),
            added: 0,
        }
    }
}

impl<T: Ord> DenseSet<T> {
    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    pub fn iter(&self) -> btree_set::Iter<'_, T> {
        self.set.iter()
    }

    pub fn get<Q: Ord + ?Sized>(&self, value: &Q) -> Option<&T>
    where
        T: Borrow<Q>,
    {
        self.set.get(value)
    }

    /// Adds `value`, or replaces the equal element (returned).
    pub fn replace(&mut self, value: T) -> Option<T> {
        let old = self.set.replace(value);
        if old.is_none() {
            self.added += 1;
            if self.added >= MIN_PACKED && self.added * 4 >= self.set.len() {
                self.set = std::mem::take(&mut self.set).into_iter().collect();
                self.added = 0;
            }
        }
        old
    }

    pub fn take<Q: Ord + ?Sized>(&mut self, value: &Q) -> Option<T>
    where
        T: Borrow<Q>,
    {
        self.set.take(value)
    }
}

impl<'a, T> IntoIterator for &'a DenseSet<T> {
    type Item = &'a T;
    type IntoIter = btree_set::Iter<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.set.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packed_set_keeps_its_elements_in_order() {
        let mut set = DenseSet::default();
        for i in (0..1000u32).rev() {
            assert_eq!(set.replace(i * 2), None);
        }
        assert_eq!(set.replace(10), Some(10), "an equal element is replaced");
        assert_eq!(set.take(&12), Some(12));
        assert_eq!(set.len(), 999);
        assert!(
            set.iter()
                .copied()
                .eq((0..1000u32).map(|i| i * 2).filter(|v| *v != 12))
        );
        assert_eq!(set.get(&1998), Some(&1998));
    }
}
