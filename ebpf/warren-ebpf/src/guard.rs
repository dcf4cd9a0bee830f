//! The STRICT guard: a TC classifier on each enrolled pod's host-side veth,
//! seeing packets on their way into the pod.
//!
//! In STRICT mode a TCP connection attempt (SYN without ACK) reaches the pod
//! only if it comes from one of the node's own addresses: that is where the
//! node's ztunnel (delivering mesh traffic) and kubelet-style probes come
//! from. Anything else, another pod, another node, a client outside the
//! mesh, is dropped, so plaintext cannot bypass mTLS. PERMISSIVE lets
//! everything through. Packets of established connections are not judged:
//! without a SYN getting through, none can exist.

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::classifier,
    programs::TcContext,
};
use warren_ebpf_common::{AF_INET, AF_INET6, AddrKind, Counter, Mode};

use crate::{
    addr::ip_key,
    counters::bump,
    maps::{GUARD, LOCAL_ADDRS},
};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const TCP_FLAGS_OFFSET: usize = 13;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
/// "Not decided here": the next program, or the default action.
const NEXT: i32 = TC_ACT_UNSPEC;

#[classifier]
pub fn warren_guard(ctx: TcContext) -> i32 {
    match judge(&ctx) {
        Some(true) => {
            bump(Counter::GuardPassed);
            NEXT
        }
        Some(false) => {
            bump(Counter::GuardDropped);
            TC_ACT_SHOT as i32
        }
        None => NEXT,
    }
}

/// `Some(allowed)` for a connection attempt to a guarded pod; `None` for
/// everything the guard does not judge.
#[inline(always)]
fn judge(ctx: &TcContext) -> Option<bool> {
    // SAFETY: the context's skb pointer is valid for this run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let entry = GUARD.get_ptr(&ifindex)?;
    // SAFETY: a pointer from a successful lookup, valid for this run.
    let mode = unsafe { (*entry).mode };
    let ethertype = u16::from_be(ctx.load::<u16>(12).ok()?);
    let (family, src, tcp) = match ethertype {
        ETH_P_IP => {
            let ver_ihl: u8 = ctx.load(ETH_HLEN).ok()?;
            let proto: u8 = ctx.load(ETH_HLEN + 9).ok()?;
            if proto != IPPROTO_TCP {
                return None;
            }
            let src: u32 = ctx.load(ETH_HLEN + 12).ok()?;
            let ihl = usize::from(ver_ihl & 0x0f) * 4;
            (AF_INET as u32, [src, 0, 0, 0], ETH_HLEN + ihl)
        }
        ETH_P_IPV6 => {
            let next: u8 = ctx.load(ETH_HLEN + 6).ok()?;
            if next != IPPROTO_TCP {
                // Extension headers before TCP are not walked; such packets
                // are rare on a pod network and pass unjudged.
                return None;
            }
            let src: [u32; 4] = ctx.load(ETH_HLEN + 8).ok()?;
            (AF_INET6 as u32, src, ETH_HLEN + 40)
        }
        _ => return None,
    };
    let flags: u8 = ctx.load(tcp + TCP_FLAGS_OFFSET).ok()?;
    if flags & TCP_SYN == 0 || flags & TCP_ACK != 0 {
        return None;
    }
    if mode != Mode::Strict as u32 {
        return Some(true);
    }
    let from_node = LOCAL_ADDRS
        .get_ptr(&ip_key(family, src))
        // SAFETY: a pointer from a successful lookup, valid for this run.
        .is_some_and(|kind| unsafe { *kind } == AddrKind::Node as u32);
    Some(from_node)
}
