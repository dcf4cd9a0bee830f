//! Inbound capture: an `sk_lookup` program attached to each enrolled pod's
//! network namespace. A connection to the pod from outside the mesh (not
//! from the node, where ztunnel's own deliveries and kubelet probes come
//! from) is handed to ztunnel's plaintext inbound listener in that
//! namespace, as Istio's inbound redirect does: the pod's PeerAuthentication
//! and L4 policies then decide on it, and it is counted.
//!
//! The listener is found by the pod's address (the connection's local
//! address) in the `INBOUND` SOCKHASH, where ztunnel puts it. Without one the
//! connection is refused (the client gets a reset): letting it through would
//! skip the pod's policies. The agent attaches this program to a pod's
//! namespace only once ztunnel has registered the pod's listener, so that
//! happens only when ztunnel went away after.

use aya_ebpf::{macros::sk_lookup, programs::SkLookupContext};
use warren_ebpf_common::{AF_INET, AF_INET6, AddrKind, Counter};

use crate::{
    addr::ip_key,
    counters::bump,
    maps::{INBOUND, LOCAL_ADDRS},
};

const SK_DROP: u32 = 0;
const SK_PASS: u32 = 1;
const IPPROTO_TCP: u32 = 6;
/// Every network namespace's loopback is interface 1: connections from
/// inside the pod itself are its own business.
const LOOPBACK_IFINDEX: u32 = 1;
/// Take the listener itself, not another of its `SO_REUSEPORT` group (a
/// successor ztunnel's listener shares the port while its predecessor
/// drains).
const BPF_SK_LOOKUP_F_NO_REUSEPORT: u64 = 1 << 1;

/// Reads one `u32` field of the context. Volatile, so that each is one
/// load at a constant offset from the context pointer: the verifier refuses
/// loads through a context pointer moved first (as copying an array field
/// compiles to).
macro_rules! field {
    ($ctx:expr, $($field:tt)+) => {
        // SAFETY: a field of the context, valid for this run.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*$ctx.lookup).$($field)+)) }
    };
}

#[sk_lookup]
pub fn warren_inbound(ctx: SkLookupContext) -> u32 {
    if field!(ctx, protocol) != IPPROTO_TCP || field!(ctx, ingress_ifindex) == LOOPBACK_IFINDEX {
        return SK_PASS;
    }
    let (remote, local) = match field!(ctx, family) {
        f if f == AF_INET as u32 => (
            ip_key(f, [field!(ctx, remote_ip4), 0, 0, 0]),
            ip_key(f, [field!(ctx, local_ip4), 0, 0, 0]),
        ),
        f if f == AF_INET6 as u32 => (
            ip_key(
                f,
                [
                    field!(ctx, remote_ip6[0]),
                    field!(ctx, remote_ip6[1]),
                    field!(ctx, remote_ip6[2]),
                    field!(ctx, remote_ip6[3]),
                ],
            ),
            ip_key(
                f,
                [
                    field!(ctx, local_ip6[0]),
                    field!(ctx, local_ip6[1]),
                    field!(ctx, local_ip6[2]),
                    field!(ctx, local_ip6[3]),
                ],
            ),
        ),
        _ => return SK_PASS,
    };
    // From the node: ztunnel delivering mesh traffic (or plaintext it
    // admitted), or a kubelet probe.
    let from_node = LOCAL_ADDRS
        .get_ptr(&remote)
        // SAFETY: a pointer from a successful lookup, valid for this run.
        .is_some_and(|kind| unsafe { *kind } == AddrKind::Node as u32);
    if from_node {
        return SK_PASS;
    }
    match INBOUND.redirect_sk_lookup(&ctx, local, BPF_SK_LOOKUP_F_NO_REUSEPORT) {
        Ok(()) => {
            bump(Counter::InboundSteered);
            SK_PASS
        }
        Err(_) => {
            bump(Counter::InboundNoListener);
            SK_DROP
        }
    }
}
