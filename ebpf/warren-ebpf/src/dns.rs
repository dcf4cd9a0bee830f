//! DNS capture: the `cgroup/sendmsg4` and `cgroup/recvmsg4` hooks, and UDP
//! connects in `cgroup/connect4`.
//!
//! An enrolled pod's DNS query (UDP to port 53, IPv4) is sent to ztunnel's DNS
//! proxy instead, which answers for the mesh's hosts and forwards the rest. The
//! server the pod asked is remembered under the socket cookie, and the proxy's
//! answers are handed to the pod as coming from that server: resolvers drop an
//! answer from an address they did not ask. Resolvers that `connect()` their UDP
//! socket (glibc) are redirected at the connect; those that `sendto()` (musl) at
//! each send.

use core::ptr::{addr_of_mut, write_volatile};

use aya_ebpf::{
    EbpfContext as _,
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use warren_ebpf_common::{Counter, SockAddr};

use warren_ebpf_common::PortKey;

use crate::{
    addr::is_loopback_v4,
    counters::bump,
    maps::{CONFIG, DNS_ORIG, ENROLLED, EXCLUDED_PORTS},
};

const IPPROTO_UDP: u32 = 17;
const DNS_PORT: u16 = 53;
/// Lets the syscall proceed (the only value recvmsg hooks may return).
const ALLOW: i32 = 1;

#[cgroup_sock_addr(sendmsg4)]
pub fn warren_sendmsg4(ctx: SockAddrContext) -> i32 {
    redirect_query4(&ctx);
    ALLOW
}

#[cgroup_sock_addr(recvmsg4)]
pub fn warren_recvmsg4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel passes a valid `bpf_sock_addr` for this program type.
    let sa = unsafe { &*ctx.sock_addr };
    if sa.protocol != IPPROTO_UDP {
        return ALLOW;
    }
    let Some(cfg) = CONFIG.get(0) else {
        return ALLOW;
    };
    // Here the address is the datagram's sender.
    if cfg.dns_port == 0
        || sa.user_ip4 != cfg.ztunnel_ip4
        || u16::from_be(sa.user_port as u16) != cfg.dns_port
    {
        return ALLOW;
    }
    // SAFETY: the helper only reads the socket behind a valid context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: a plain value read of a map entry.
    let Some(asked) = (unsafe { DNS_ORIG.get(&cookie) }).copied() else {
        return ALLOW;
    };
    // SAFETY: rewriting the sender is what recvmsg hooks are for; one 4-byte
    // store per field (see capture.rs).
    unsafe {
        write_volatile(addr_of_mut!((*ctx.sock_addr).user_ip4), asked.addr[0]);
        write_volatile(
            addr_of_mut!((*ctx.sock_addr).user_port),
            u32::from(asked.port.to_be()),
        );
    }
    bump(Counter::DnsAnswerRestored);
    ALLOW
}

/// Sends a DNS query of an enrolled pod to the DNS proxy, remembering the server
/// asked. Called for sends with an address and for UDP connects.
#[inline(always)]
pub fn redirect_query4(ctx: &SockAddrContext) {
    // SAFETY: as above.
    let sa: &bpf_sock_addr = unsafe { &*ctx.sock_addr };
    if sa.protocol != IPPROTO_UDP || u16::from_be(sa.user_port as u16) != DNS_PORT {
        return;
    }
    let Some(cfg) = CONFIG.get(0).copied() else {
        return;
    };
    if cfg.dns_port == 0 || cfg.ztunnel_ip4 == 0 {
        return;
    }
    // SAFETY: the helper only reads the socket behind a valid context.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    if ENROLLED.get_ptr(&netns_cookie).is_none() {
        return;
    }
    // A resolver inside the pod (dnsmasq on loopback), or a pod that keeps port 53
    // out of the mesh (`warren.io/exclude-outbound-ports`), is asked directly.
    let excluded = PortKey {
        netns_cookie,
        port: DNS_PORT,
        _pad: [0; 6],
    };
    if is_loopback_v4(sa.user_ip4) || EXCLUDED_PORTS.get_ptr(&excluded).is_some() {
        return;
    }
    // SAFETY: `sk` is always set for these hooks and points to the socket.
    let mark = unsafe { (*sa.__bindgen_anon_1.sk).mark };
    if cfg.mark != 0 && mark == cfg.mark {
        return;
    }
    let asked = SockAddr::v4(sa.user_ip4, DNS_PORT);
    // SAFETY: the helper only reads the socket behind a valid context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // Without the record the answer would be dropped by the pod: leave it alone.
    if DNS_ORIG.insert(&cookie, &asked, 0).is_err() {
        return;
    }
    // SAFETY: as in capture.rs; one 4-byte store per field.
    unsafe {
        write_volatile(addr_of_mut!((*ctx.sock_addr).user_ip4), cfg.ztunnel_ip4);
        write_volatile(
            addr_of_mut!((*ctx.sock_addr).user_port),
            u32::from(cfg.dns_port.to_be()),
        );
    }
    bump(Counter::DnsRedirected);
}
