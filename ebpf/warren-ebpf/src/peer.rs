//! The `cgroup/getpeername4` and `cgroup/getpeername6` hooks: a captured
//! connection's peer, as the pod asks it, is where the pod connected, not
//! ztunnel.
//!
//! Capture rewrites the destination inside `connect()`, so the socket's peer is
//! ztunnel's listener; without these hooks a pod that asks (Go's
//! `Conn.RemoteAddr`, a client logging whom it reached) would see a node address
//! it never dialled. The original destination is the one `flows` keeps under
//! the socket's own view of its flow while the connection lives; a socket with
//! no entry is answered as the kernel found it.

use aya_ebpf::{bindings::bpf_sock, macros::cgroup_sock_addr, programs::SockAddrContext};
use warren_ebpf_common::{AF_INET, AF_INET6, Counter, FlowKey};

use crate::{
    counters::bump,
    flows::fold_v4_mapped,
    maps::ORIG_DST_BY_FLOW,
    rewrite::{set_addr4, set_addr6},
};

/// Lets the syscall proceed (the only value these hooks may return).
const ALLOW: i32 = 1;

#[cgroup_sock_addr(getpeername4)]
pub fn warren_getpeer4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel passes a valid `bpf_sock_addr` whose `sk` is the socket asked.
    let sk = unsafe { &*(*ctx.sock_addr).__bindgen_anon_1.sk };
    let own = FlowKey {
        src: [sk.src_ip4, 0, 0, 0],
        dst: [sk.dst_ip4, 0, 0, 0],
        src_port: sk.src_port as u16,
        dst_port: u16::from_be(sk.dst_port),
        family: AF_INET as u32,
    };
    if let Some(orig) = original(&own)
        && orig.family == AF_INET
    {
        set_addr4(&ctx, orig.addr[0], orig.port);
        bump(Counter::PeerRestored);
    }
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn warren_getpeer6(ctx: SockAddrContext) -> i32 {
    // SAFETY: as above.
    let sk: &bpf_sock = unsafe { &*(*ctx.sock_addr).__bindgen_anon_1.sk };
    // Keyed as `flows` keys it: a dual-stack socket's IPv4 flow as IPv4.
    let own = fold_v4_mapped(FlowKey {
        src: sk.src_ip6,
        dst: sk.dst_ip6,
        src_port: sk.src_port as u16,
        dst_port: u16::from_be(sk.dst_port),
        family: AF_INET6 as u32,
    });
    let Some(orig) = original(&own) else {
        return ALLOW;
    };
    // An IPv4 destination dialled from an IPv6 socket reads back v4-mapped.
    let addr = if orig.family == AF_INET {
        [0, 0, 0xffffu32.to_be(), orig.addr[0]]
    } else {
        orig.addr
    };
    set_addr6(&ctx, addr, orig.port);
    bump(Counter::PeerRestored);
    ALLOW
}

#[inline(always)]
fn original(own: &FlowKey) -> Option<warren_ebpf_common::SockAddr> {
    // SAFETY: a plain value read of a map entry.
    unsafe { ORIG_DST_BY_FLOW.get(own) }.map(|orig| orig.dst)
}
