//! Per-CPU event counters, summed by user space.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use warren_ebpf_common::Counter;

#[map(name = "WARREN_COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

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
