//! Per-CPU event counters, summed by user space.

use warren_ebpf_common::{Counter, PodStats};

use crate::maps::{COUNTERS, POD_STATS};

/// Adds one to `counter` on this CPU. No atomics needed: a per-CPU slot is
/// only touched by programs running on that CPU, one at a time.
#[inline(always)]
pub fn bump(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: the pointer comes from a successful lookup in a per-CPU
        // array, valid for this program run and not shared with other CPUs.
        unsafe { *slot += 1 };
    }
}

/// Adds one to a field of a pod's per-CPU stats, if the agent made its entry.
#[inline(always)]
pub fn bump_pod(netns_cookie: u64, field: fn(&mut PodStats) -> &mut u64) {
    if let Some(stats) = POD_STATS.get_ptr_mut(&netns_cookie) {
        // SAFETY: as above, a per-CPU value valid for this run.
        unsafe { *field(&mut *stats) += 1 };
    }
}
