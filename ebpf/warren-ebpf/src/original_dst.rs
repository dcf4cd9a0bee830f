//! The `cgroup/getsockopt` program: answers `SO_ORIGINAL_DST` (IPv4) and
//! `IP6T_SO_ORIGINAL_DST` (IPv6) for connections Warren captured, so any
//! proxy that asks the standard question works, and Warren's own option
//! `SO_WARREN_ORIGIN`, which adds the client pod's netns cookie.
//!
//! The kernel runs the real getsockopt first (without conntrack it fails);
//! this program then overrides the answer for flows in `ORIG_DST_BY_FLOW`
//! and leaves every other call untouched.

use core::ptr::{addr_of_mut, write_unaligned, write_volatile};

use aya_ebpf::{bindings::bpf_sockopt, macros::cgroup_sockopt, programs::SockoptContext};
use warren_ebpf_common::{
    AF_INET, AF_INET6, Counter, OrigDst, SO_ORIGINAL_DST, SO_WARREN_ORIGIN, SOL_IP, SOL_IPV6,
};

use crate::{
    addr::v4_mapped,
    counters::bump,
    flows::sock_flow,
    maps::{CONFIG, ORIG_DST_BY_FLOW},
};

/// Return value that keeps the (possibly overridden) result.
const KEEP: i32 = 1;
const ENOENT: i32 = 2;

#[repr(C)]
struct SockaddrIn {
    family: u16,
    port_be: u16,
    addr_be: u32,
    zero: [u8; 8],
}

#[repr(C)]
struct SockaddrIn6 {
    family: u16,
    port_be: u16,
    flowinfo: u32,
    addr_be: [u32; 4],
    scope_id: u32,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    V4,
    V6,
    Origin,
}

#[cgroup_sockopt(getsockopt)]
pub fn warren_getsockopt(ctx: SockoptContext) -> i32 {
    // SAFETY: the kernel passes a valid `bpf_sockopt` for this program type.
    let so = unsafe { &mut *ctx.sockopt };
    let answer = match (so.level, so.optname) {
        (SOL_IP, SO_ORIGINAL_DST) => Answer::V4,
        (SOL_IPV6, SO_ORIGINAL_DST) => Answer::V6,
        (SOL_IP, SO_WARREN_ORIGIN) => Answer::Origin,
        _ => return KEEP,
    };
    // SAFETY: `sk` is set for sockopt programs and points to the socket.
    let sk = unsafe { &*so.__bindgen_anon_1.sk };
    // The proxy's accepted socket: its remote end is the client.
    let client = sock_flow(sk).reversed();
    let Some(orig) = ORIG_DST_BY_FLOW.get_ptr(&client) else {
        bump(Counter::GetsockoptMiss);
        // On ztunnel's own listener, conntrack's answer (if any) would be
        // ztunnel itself: a loop. Say "no such entry" instead.
        if CONFIG
            .get(0)
            .is_some_and(|c| c.ztunnel_port != 0 && client.dst_port == c.ztunnel_port)
        {
            set_result(so, 0, -ENOENT);
        }
        return KEEP;
    };
    // SAFETY: a pointer from a successful lookup, valid for this run.
    let orig: OrigDst = unsafe { *orig };

    // SAFETY: optval/optval_end bound the kernel's copy of the caller's
    // buffer; every write below is checked against them first.
    let (start, end) = unsafe {
        (
            so.__bindgen_anon_2.optval as *mut u8,
            so.__bindgen_anon_3.optval_end as *mut u8,
        )
    };
    let written = match answer {
        Answer::V4 if orig.dst.family == AF_INET => {
            let value = SockaddrIn {
                family: AF_INET,
                port_be: orig.dst.port.to_be(),
                addr_be: orig.dst.addr[0],
                zero: [0; 8],
            };
            write_checked(start, end, value)
        }
        Answer::V6 => {
            let addr_be = if orig.dst.family == AF_INET {
                v4_mapped(orig.dst.addr[0])
            } else {
                orig.dst.addr
            };
            let value = SockaddrIn6 {
                family: AF_INET6,
                port_be: orig.dst.port.to_be(),
                flowinfo: 0,
                addr_be,
                scope_id: 0,
            };
            write_checked(start, end, value)
        }
        Answer::Origin => write_checked(start, end, orig),
        // An IPv4 question about an IPv6 destination has no answer.
        Answer::V4 => None,
    };
    match written {
        Some(len) => {
            set_result(so, len as i32, 0);
            bump(Counter::GetsockoptAnswered);
        }
        // The caller's buffer is too small: leave the kernel's error.
        None => bump(Counter::GetsockoptMiss),
    }
    KEEP
}

/// Sets the caller's `optlen` and the syscall's result. Two separate 4-byte
/// stores: LLVM may otherwise merge the adjacent fields into one 8-byte
/// store, which the verifier rejects as an invalid context access.
#[inline(always)]
fn set_result(so: &mut bpf_sockopt, optlen: i32, retval: i32) {
    // SAFETY: both fields belong to the valid context the kernel passed.
    unsafe {
        write_volatile(addr_of_mut!(so.optlen), optlen);
        write_volatile(addr_of_mut!(so.retval), retval);
    }
}

/// Writes `value` at `start` if it fits before `end`; returns its size.
#[inline(always)]
fn write_checked<T>(start: *mut u8, end: *mut u8, value: T) -> Option<usize> {
    let len = core::mem::size_of::<T>();
    // SAFETY: only compared, not dereferenced, until the bound holds.
    if unsafe { start.add(len) } > end {
        return None;
    }
    // SAFETY: `start..start + len` lies inside the kernel's buffer.
    unsafe { write_unaligned(start.cast::<T>(), value) };
    Some(len)
}
