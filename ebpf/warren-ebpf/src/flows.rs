//! The `sock_ops` program: follows TCP connections of the node's cgroup
//! subtree through their life.
//!
//! - Client side established: the original destination recorded at connect
//!   (by socket cookie) moves to the flow key, where `getsockopt` on the
//!   proxy's accepted socket finds it (and `getpeername` on the pod's); the
//!   socket asks to hear about its close, so the entry goes when the
//!   connection does.
//! - Either side established with a peer on this node (and the shortcut
//!   on): the socket gets an account of bytes sent through the shortcut and
//!   joins the shortcut SOCKHASH, keyed by its own view of the flow; its
//!   close removes the account.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, bpf_sock,
    },
    helpers::bpf_get_socket_cookie,
    macros::sock_ops,
    programs::SockOpsContext,
};
use warren_ebpf_common::{AF_INET, AF_INET6, AddrKind, Counter, FlowKey};

use crate::{
    addr::{ip_key, is_loopback_v4, is_loopback_v6, is_v4_mapped},
    counters::bump,
    maps::{CONFIG, LOCAL_ADDRS, ORIG_DST, ORIG_DST_BY_FLOW, SHORTCUT_SENT, SOCKS},
};

/// `TCP_CLOSE` from the kernel's TCP state numbering.
const TCP_CLOSE: u32 = 7;

#[sock_ops]
pub fn warren_sock_ops(ctx: SockOpsContext) -> u32 {
    let Some(own) = own_flow(&ctx) else {
        return 1;
    };
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => {
            track_original_destination(&ctx, &own);
            join_shortcut(&ctx, &own);
        }
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => join_shortcut(&ctx, &own),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == TCP_CLOSE => {
            // Only captured client sockets and shortcut sockets asked for this.
            let _ = ORIG_DST_BY_FLOW.remove(&own);
            let _ = SHORTCUT_SENT.remove(&own);
        }
        _ => {}
    }
    1
}

fn track_original_destination(ctx: &SockOpsContext, own: &FlowKey) {
    // SAFETY: the helper only reads the socket behind a valid context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(orig) = ORIG_DST.get_ptr(&cookie) else {
        return;
    };
    // SAFETY: a pointer from a successful lookup, valid for this run.
    let orig = unsafe { *orig };
    if ORIG_DST_BY_FLOW.insert(own, &orig, 0).is_ok() {
        bump(Counter::OrigDstEstablished);
        let flags = ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG;
        let _ = ctx.set_cb_flags(flags as i32);
    } else {
        bump(Counter::OrigDstFull);
    }
    let _ = ORIG_DST.remove(&cookie);
}

fn join_shortcut(ctx: &SockOpsContext, own: &FlowKey) {
    // Opt-in: the agent turns it on with --socket-shortcut.
    if CONFIG.get(0).is_none_or(|cfg| cfg.shortcut == 0) {
        return;
    }
    // Loopback is never shortcut: the same loopback 4-tuple can exist in
    // many pod namespaces at once, and the key has no namespace in it.
    let loopback = if own.family == AF_INET as u32 {
        is_loopback_v4(own.dst[0])
    } else {
        is_loopback_v6(&own.dst)
    };
    if loopback {
        return;
    }
    let local = LOCAL_ADDRS.get_ptr(&ip_key(own.family, own.dst));
    // SAFETY: a pointer from a successful lookup, valid for this run.
    let local = local.is_some_and(|kind| {
        let kind = unsafe { *kind };
        kind == AddrKind::Node as u32 || kind == AddrKind::Pod as u32
    });
    if !local {
        return;
    }
    // Its account first: a socket without one never takes the shortcut.
    if SHORTCUT_SENT.insert(own, &0, 0).is_err() {
        return;
    }
    let mut key = *own;
    // SAFETY: `ops` is the valid context the kernel passed us.
    if SOCKS.update(&mut key, unsafe { &mut *ctx.ops }, 0).is_ok() {
        bump(Counter::ShortcutInserted);
        // Its close removes the account (the LRU would, later).
        let flags = ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG;
        let _ = ctx.set_cb_flags(flags as i32);
    } else {
        let _ = SHORTCUT_SENT.remove(own);
    }
}

/// A socket's own view of its flow from its `bpf_sock` (hooks other than
/// sock_ops), keyed as [`own_flow`] keys it.
#[inline(always)]
pub fn sock_flow(sk: &bpf_sock) -> FlowKey {
    // `src_port` is in host order, `dst_port` in network order.
    let (src_port, dst_port) = (sk.src_port as u16, u16::from_be(sk.dst_port));
    if sk.family == AF_INET as u32 {
        FlowKey {
            src: [sk.src_ip4, 0, 0, 0],
            dst: [sk.dst_ip4, 0, 0, 0],
            src_port,
            dst_port,
            family: AF_INET as u32,
        }
    } else {
        fold_v4_mapped(FlowKey {
            src: sk.src_ip6,
            dst: sk.dst_ip6,
            src_port,
            dst_port,
            family: AF_INET6 as u32,
        })
    }
}

/// The socket's own view of its flow, v4-mapped addresses folded to IPv4 so
/// both ends of a dual-stack connection use the same key.
#[inline(always)]
fn own_flow(ctx: &SockOpsContext) -> Option<FlowKey> {
    let src_port = ctx.local_port() as u16;
    let dst_port = u32::from_be(ctx.remote_port()) as u16;
    match ctx.family() {
        f if f == AF_INET as u32 => Some(FlowKey {
            src: [ctx.local_ip4(), 0, 0, 0],
            dst: [ctx.remote_ip4(), 0, 0, 0],
            src_port,
            dst_port,
            family: f,
        }),
        f if f == AF_INET6 as u32 => {
            let (src, dst) = (ctx.local_ip6(), ctx.remote_ip6());
            Some(fold_v4_mapped(FlowKey {
                src,
                dst,
                src_port,
                dst_port,
                family: f,
            }))
        }
        _ => None,
    }
}

/// An IPv6 flow between two v4-mapped addresses, as an IPv4 flow.
#[inline(always)]
pub fn fold_v4_mapped(flow: FlowKey) -> FlowKey {
    if flow.family == AF_INET6 as u32 && is_v4_mapped(&flow.src) && is_v4_mapped(&flow.dst) {
        FlowKey {
            src: [flow.src[3], 0, 0, 0],
            dst: [flow.dst[3], 0, 0, 0],
            family: AF_INET as u32,
            ..flow
        }
    } else {
        flow
    }
}
