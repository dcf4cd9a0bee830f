//! DNS capture: the `cgroup/sendmsg4`, `cgroup/sendmsg6`, `cgroup/recvmsg4` and
//! `cgroup/recvmsg6` hooks, and UDP connects in `cgroup/connect4` and
//! `cgroup/connect6`.
//!
//! An enrolled pod's DNS query (UDP to port 53) is sent to ztunnel's DNS proxy
//! instead, which answers for the mesh's hosts and forwards the rest. The server
//! the pod asked is remembered under the socket cookie, and the proxy's answers are
//! handed to the pod as coming from that server: resolvers drop an answer from an
//! address they did not ask. Resolvers that `connect()` their UDP socket (glibc)
//! are redirected at the connect; those that `sendto()` (musl) at each send. A
//! query to an IPv6 server goes to ztunnel's IPv6 address, one to an IPv4 server
//! (on an IPv6 socket, v4-mapped) to its IPv4 address. DNS over TCP is captured
//! with the pod's other TCP connections (`capture`), to the proxy's port.

use aya_ebpf::{
    EbpfContext as _,
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use warren_ebpf_common::{AF_INET, AF_INET6, Counter, NodeConfig, PortKey, SockAddr};

use crate::{
    addr::{is_loopback_v4, is_loopback_v6, is_v4_mapped, v4_mapped},
    counters::bump,
    maps::{CONFIG, DNS_ORIG, ENROLLED, EXCLUDED_PORTS},
    rewrite::{set_addr4, set_addr6},
};

const IPPROTO_UDP: u32 = 17;
pub(crate) const DNS_PORT: u16 = 53;
/// Lets the syscall proceed (the only value recvmsg hooks may return).
const ALLOW: i32 = 1;

#[cgroup_sock_addr(sendmsg4)]
pub fn warren_sendmsg4(ctx: SockAddrContext) -> i32 {
    redirect_query4(&ctx);
    ALLOW
}

#[cgroup_sock_addr(sendmsg6)]
pub fn warren_sendmsg6(ctx: SockAddrContext) -> i32 {
    redirect_query6(&ctx);
    ALLOW
}

#[cgroup_sock_addr(recvmsg4)]
pub fn warren_recvmsg4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel passes a valid `bpf_sock_addr` for this program type.
    let sa = unsafe { &*ctx.sock_addr };
    let Some(cfg) = answering(sa) else {
        return ALLOW;
    };
    // Here the address is the datagram's sender.
    if sa.user_ip4 != cfg.ztunnel_ip4 {
        return ALLOW;
    }
    let Some(asked) = asked(&ctx).filter(|a| a.family == AF_INET) else {
        return ALLOW;
    };
    // Rewriting the sender is what recvmsg hooks are for.
    set_addr4(&ctx, asked.addr[0], asked.port);
    bump(Counter::DnsAnswerRestored);
    ALLOW
}

#[cgroup_sock_addr(recvmsg6)]
pub fn warren_recvmsg6(ctx: SockAddrContext) -> i32 {
    // SAFETY: as above.
    let sa = unsafe { &*ctx.sock_addr };
    let Some(cfg) = answering(sa) else {
        return ALLOW;
    };
    let sender = sa.user_ip6;
    let mapped = is_v4_mapped(&sender);
    let from_proxy = if mapped {
        cfg.ztunnel_ip4 != 0 && sender[3] == cfg.ztunnel_ip4
    } else {
        cfg.ztunnel_ip6 != [0; 4] && sender == cfg.ztunnel_ip6
    };
    if !from_proxy {
        return ALLOW;
    }
    let Some(asked) = asked(&ctx) else {
        return ALLOW;
    };
    // A `sendto` to a v4-mapped server on an IPv6 socket takes the kernel's IPv4
    // path (sendmsg4 recorded it as IPv4); the answer comes back here, v4-mapped.
    let server = match asked.family {
        AF_INET6 => asked.addr,
        AF_INET if mapped => v4_mapped(asked.addr[0]),
        _ => return ALLOW,
    };
    set_addr6(&ctx, server, asked.port);
    bump(Counter::DnsAnswerRestored);
    ALLOW
}

/// The node config, if this received datagram may be the DNS proxy's answer.
#[inline(always)]
fn answering(sa: &bpf_sock_addr) -> Option<NodeConfig> {
    if sa.protocol != IPPROTO_UDP {
        return None;
    }
    let cfg = CONFIG.get(0).copied()?;
    (cfg.dns_port != 0 && u16::from_be(sa.user_port as u16) == cfg.dns_port).then_some(cfg)
}

/// The server this socket's query went to, if it was captured.
#[inline(always)]
fn asked(ctx: &SockAddrContext) -> Option<SockAddr> {
    // SAFETY: the helper only reads the socket behind a valid context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: a plain value read of a map entry.
    unsafe { DNS_ORIG.get(&cookie) }.copied()
}

/// The node config and the pod's netns cookie if this is a DNS query of an
/// enrolled pod that capture applies to (the family's own checks follow).
#[inline(always)]
fn query_of_pod(ctx: &SockAddrContext, sa: &bpf_sock_addr) -> Option<(NodeConfig, u64)> {
    if sa.protocol != IPPROTO_UDP || u16::from_be(sa.user_port as u16) != DNS_PORT {
        return None;
    }
    let cfg = CONFIG.get(0).copied()?;
    if cfg.dns_port == 0 {
        return None;
    }
    // SAFETY: the helper only reads the socket behind a valid context.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    ENROLLED.get_ptr(&netns_cookie)?;
    // SAFETY: `sk` is always set for these hooks and points to the socket.
    let mark = unsafe { (*sa.__bindgen_anon_1.sk).mark };
    if cfg.mark != 0 && mark == cfg.mark {
        return None;
    }
    // A pod that keeps port 53 out of the mesh (`warren.io/exclude-outbound-ports`)
    // asks its server directly.
    let excluded = PortKey {
        netns_cookie,
        port: DNS_PORT,
        _pad: [0; 6],
    };
    if EXCLUDED_PORTS.get_ptr(&excluded).is_some() {
        return None;
    }
    Some((cfg, netns_cookie))
}

/// Records the server asked; without the record the answer would be dropped by
/// the pod, so then the query is left alone.
#[inline(always)]
fn remember(ctx: &SockAddrContext, asked: &SockAddr) -> bool {
    // SAFETY: the helper only reads the socket behind a valid context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    DNS_ORIG.insert(&cookie, asked, 0).is_ok()
}

/// Sends an IPv4 socket's DNS query to the DNS proxy. Called for sends with an
/// address and for UDP connects.
#[inline(always)]
pub fn redirect_query4(ctx: &SockAddrContext) {
    // SAFETY: as above.
    let sa: &bpf_sock_addr = unsafe { &*ctx.sock_addr };
    let Some((cfg, _)) = query_of_pod(ctx, sa) else {
        return;
    };
    // A resolver inside the pod (dnsmasq on loopback) is asked directly.
    if cfg.ztunnel_ip4 == 0 || is_loopback_v4(sa.user_ip4) {
        return;
    }
    if !remember(ctx, &SockAddr::v4(sa.user_ip4, DNS_PORT)) {
        return;
    }
    set_addr4(ctx, cfg.ztunnel_ip4, cfg.dns_port);
    bump(Counter::DnsRedirected);
}

/// The same for an IPv6 socket: an IPv6 server's query goes to ztunnel's IPv6
/// address, a v4-mapped one to its IPv4 address, v4-mapped.
#[inline(always)]
pub fn redirect_query6(ctx: &SockAddrContext) {
    // SAFETY: as above.
    let sa: &bpf_sock_addr = unsafe { &*ctx.sock_addr };
    let Some((cfg, _)) = query_of_pod(ctx, sa) else {
        return;
    };
    let server = sa.user_ip6;
    if is_loopback_v6(&server) {
        return;
    }
    let target = if is_v4_mapped(&server) {
        if cfg.ztunnel_ip4 == 0 {
            return;
        }
        v4_mapped(cfg.ztunnel_ip4)
    } else {
        if cfg.ztunnel_ip6 == [0; 4] {
            return;
        }
        cfg.ztunnel_ip6
    };
    if !remember(ctx, &SockAddr::v6(server, DNS_PORT)) {
        return;
    }
    set_addr6(ctx, target, cfg.dns_port);
    bump(Counter::DnsRedirected);
}
