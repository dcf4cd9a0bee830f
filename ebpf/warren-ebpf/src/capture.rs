//! Outbound capture: the `cgroup/connect4` hook.
//!
//! Runs on every `connect()` of a socket in the attached cgroup subtree,
//! before the kernel picks a route. It records where the application meant
//! to go, keyed by the socket cookie, so the proxy the connection is sent to
//! can learn the original destination from the kernel rather than from
//! anything the peer says.

use aya_ebpf::{
    EbpfContext as _,
    helpers::bpf_get_socket_cookie,
    macros::{cgroup_sock_addr, map},
    maps::HashMap,
    programs::SockAddrContext,
};
use warren_ebpf_common::{Counter, ORIG_DST_CAPACITY, SockAddr};

use crate::counters::bump;

const IPPROTO_TCP: u32 = 6;
/// Return value that lets the syscall proceed.
const ALLOW: i32 = 1;

#[map(name = "WARREN_ORIG_DST")]
static ORIG_DST: HashMap<u64, SockAddr> = HashMap::with_max_entries(ORIG_DST_CAPACITY, 0);

#[cgroup_sock_addr(connect4)]
pub fn warren_connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel passes a valid `bpf_sock_addr` for this program type.
    let sa = unsafe { &*ctx.sock_addr };
    if sa.protocol != IPPROTO_TCP {
        return ALLOW;
    }
    bump(Counter::Connect4Seen);

    // `user_port` holds the port in network order in its low 16 bits.
    let port = u16::from_be(sa.user_port as u16);
    let dst = SockAddr::v4(sa.user_ip4, port);
    // SAFETY: the helper only reads the socket behind a valid context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if ORIG_DST.insert(&cookie, &dst, 0).is_err() {
        bump(Counter::OrigDstFull);
    }
    // A hook never blocks a connect: capture failing must not break the
    // application, only leave this connection uncaptured.
    ALLOW
}
