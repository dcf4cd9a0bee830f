//! The `cgroup/getpeername4` and `cgroup/getpeername6` hooks: a captured
//! connection's peer, as the pod asks it, is where the pod connected, not
//! ztunnel.
//!
//! Capture rewrites the destination inside `connect()`, so the socket's peer is
//! ztunnel's listener; without these hooks a pod that asks (Go's
//! `Conn.RemoteAddr`, a client logging whom it reached) would see a node address
//! it never dialled. The original destination is the one `flows` keeps under
//! the socket's own view of its flow while the connection lives, for the pod
//! that made it; a socket with no entry is answered as the kernel found it.

use aya_ebpf::{
    EbpfContext as _, helpers::bpf_get_netns_cookie, macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use warren_ebpf_common::{AF_INET, Counter, SockAddr};

use crate::{
    addr::v4_mapped,
    counters::bump,
    flows::sock_flow,
    maps::ORIG_DST_BY_FLOW,
    rewrite::{set_addr4, set_addr6},
};

/// Lets the syscall proceed (the only value these hooks may return).
const ALLOW: i32 = 1;

#[cgroup_sock_addr(getpeername4)]
pub fn warren_getpeer4(ctx: SockAddrContext) -> i32 {
    if let Some(orig) = original(&ctx).filter(|orig| orig.family == AF_INET) {
        set_addr4(&ctx, orig.addr[0], orig.port);
        bump(Counter::PeerRestored);
    }
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn warren_getpeer6(ctx: SockAddrContext) -> i32 {
    if let Some(orig) = original(&ctx) {
        // An IPv4 destination dialled from an IPv6 socket reads back v4-mapped.
        let addr = if orig.family == AF_INET {
            v4_mapped(orig.addr[0])
        } else {
            orig.addr
        };
        set_addr6(&ctx, addr, orig.port);
        bump(Counter::PeerRestored);
    }
    ALLOW
}

/// Where the socket asked about was going, if Warren captured it from this
/// very pod (flow keys carry no namespace).
#[inline(always)]
fn original(ctx: &SockAddrContext) -> Option<SockAddr> {
    // SAFETY: the kernel passes a valid `bpf_sock_addr` whose `sk` is the socket asked.
    let sk = unsafe { &*(*ctx.sock_addr).__bindgen_anon_1.sk };
    // SAFETY: a plain value read of a map entry.
    let orig = unsafe { ORIG_DST_BY_FLOW.get(&sock_flow(sk)) }.copied()?;
    // SAFETY: the helper only reads the socket behind a valid context.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    (orig.netns_cookie == netns_cookie).then_some(orig.dst)
}
