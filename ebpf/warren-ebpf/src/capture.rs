//! Outbound capture: the `cgroup/connect4` and `cgroup/connect6` hooks (and DNS
//! capture's UDP connects: see `dns`).
//!
//! They run on every `connect()` in the node's cgroup subtree, before the
//! kernel picks a route. For a TCP socket of an enrolled pod (its network
//! namespace cookie is in `ENROLLED`), the destination is rewritten to the
//! node's ztunnel and the original one is remembered under the socket cookie;
//! `flows` moves it to the flow key once the connection is up. DNS over TCP
//! (port 53) goes to ztunnel's DNS proxy when DNS is captured, as its UDP
//! queries do; everything else to the outbound listener.
//!
//! Left alone: sockets of namespaces that are not enrolled (ztunnel's own
//! among them), sockets carrying ztunnel's mark (a loop guard), loopback
//! destinations, and destination ports the pod excludes.

use aya_ebpf::{
    EbpfContext as _,
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use warren_ebpf_common::{Counter, NodeConfig, OrigDst, PodStats, PortKey, SockAddr};

use crate::{
    addr::{is_loopback_v4, is_loopback_v6, is_v4_mapped, v4_mapped},
    counters::{bump, bump_pod},
    maps::{CONFIG, ENROLLED, EXCLUDED_PORTS, ORIG_DST},
    rewrite::{set_addr4, set_addr6},
};

const IPPROTO_TCP: u32 = 6;
/// Return value that lets the syscall proceed. Capture never blocks a
/// connect itself: an enrolled pod's connect is always sent to ztunnel, and
/// ztunnel refuses what it cannot resolve, so a capture that could not
/// record the original destination fails closed there, not open here.
const ALLOW: i32 = 1;

#[cgroup_sock_addr(connect4)]
pub fn warren_connect4(ctx: SockAddrContext) -> i32 {
    // A resolver's connected UDP socket: its queries go to the DNS proxy.
    crate::dns::redirect_query4(&ctx);
    // SAFETY: the kernel passes a valid `bpf_sock_addr` for this program type.
    let sa = unsafe { &mut *ctx.sock_addr };
    let Some((cfg, netns_cookie)) = should_capture(&ctx, sa) else {
        return ALLOW;
    };
    let dst_ip = sa.user_ip4;
    let dst_port = u16::from_be(sa.user_port as u16);
    // 0.0.0.0 means "this host" to connect(): the pod itself, like loopback.
    if is_loopback_v4(dst_ip) || dst_ip == 0 || is_excluded(netns_cookie, dst_port) {
        return exempt(netns_cookie);
    }
    if cfg.ztunnel_ip4 == 0 {
        return unconfigured();
    }
    remember(&ctx, SockAddr::v4(dst_ip, dst_port), netns_cookie);
    set_addr4(&ctx, cfg.ztunnel_ip4, ztunnel_port(&cfg, dst_port));
    redirected(netns_cookie)
}

#[cgroup_sock_addr(connect6)]
pub fn warren_connect6(ctx: SockAddrContext) -> i32 {
    // A resolver's connected UDP socket: its queries go to the DNS proxy.
    crate::dns::redirect_query6(&ctx);
    // SAFETY: as above.
    let sa = unsafe { &mut *ctx.sock_addr };
    let Some((cfg, netns_cookie)) = should_capture(&ctx, sa) else {
        return ALLOW;
    };
    let dst = sa.user_ip6;
    let dst_port = u16::from_be(sa.user_port as u16);
    // `::` means "this host" to connect(), like loopback.
    if is_loopback_v6(&dst) || dst == [0; 4] || is_excluded(netns_cookie, dst_port) {
        return exempt(netns_cookie);
    }
    // An IPv4 destination on a dual-stack socket goes to ztunnel's IPv4
    // listener, v4-mapped; a real IPv6 one to its IPv6 listener.
    let target = if is_v4_mapped(&dst) {
        if cfg.ztunnel_ip4 == 0 {
            return unconfigured();
        }
        v4_mapped(cfg.ztunnel_ip4)
    } else {
        if cfg.ztunnel_ip6 == [0; 4] {
            return unconfigured();
        }
        cfg.ztunnel_ip6
    };
    let original = if is_v4_mapped(&dst) {
        SockAddr::v4(dst[3], dst_port)
    } else {
        SockAddr::v6(dst, dst_port)
    };
    remember(&ctx, original, netns_cookie);
    set_addr6(&ctx, target, ztunnel_port(&cfg, dst_port));
    redirected(netns_cookie)
}

/// The node config and the pod's netns cookie if this connect is a TCP
/// connect of an enrolled pod that capture applies to.
#[inline(always)]
fn should_capture(ctx: &SockAddrContext, sa: &bpf_sock_addr) -> Option<(NodeConfig, u64)> {
    if sa.protocol != IPPROTO_TCP {
        return None;
    }
    bump(Counter::ConnectSeen);
    // SAFETY: the helper only reads the socket behind a valid context.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    if ENROLLED.get_ptr(&netns_cookie).is_none() {
        bump(Counter::ConnectNotEnrolled);
        return None;
    }
    let Some(cfg) = CONFIG.get(0).copied() else {
        unconfigured();
        return None;
    };
    if cfg.ztunnel_port == 0 {
        unconfigured();
        return None;
    }
    // SAFETY: `sk` is always set for connect hooks and points to the socket.
    let mark = unsafe { (*sa.__bindgen_anon_1.sk).mark };
    if cfg.mark != 0 && mark == cfg.mark {
        exempt(netns_cookie);
        return None;
    }
    Some((cfg, netns_cookie))
}

/// ztunnel's port for a connection to `dst_port`: the DNS proxy's for DNS
/// when DNS is captured, the outbound listener's otherwise.
#[inline(always)]
fn ztunnel_port(cfg: &NodeConfig, dst_port: u16) -> u16 {
    if dst_port == crate::dns::DNS_PORT && cfg.dns_port != 0 {
        cfg.dns_port
    } else {
        cfg.ztunnel_port
    }
}

#[inline(always)]
fn is_excluded(netns_cookie: u64, port: u16) -> bool {
    let key = PortKey {
        netns_cookie,
        port,
        _pad: [0; 6],
    };
    EXCLUDED_PORTS.get_ptr(&key).is_some()
}

#[inline(always)]
fn remember(ctx: &SockAddrContext, dst: SockAddr, netns_cookie: u64) {
    // SAFETY: the helper only reads the socket behind a valid context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let value = OrigDst {
        dst,
        _pad: 0,
        netns_cookie,
    };
    if ORIG_DST.insert(&cookie, &value, 0).is_err() {
        bump(Counter::OrigDstFull);
    }
}

#[inline(always)]
fn redirected(netns_cookie: u64) -> i32 {
    bump(Counter::ConnectRedirected);
    bump_pod(netns_cookie, |s: &mut PodStats| &mut s.redirected);
    ALLOW
}

#[inline(always)]
fn exempt(netns_cookie: u64) -> i32 {
    bump(Counter::ConnectExempt);
    bump_pod(netns_cookie, |s: &mut PodStats| &mut s.exempt);
    ALLOW
}

#[inline(always)]
fn unconfigured() -> i32 {
    bump(Counter::ConnectUnconfigured);
    ALLOW
}
