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
use warren_ebpf_common::{AF_INET, AF_INET6, AddrKind, Counter, GuardPortKey, Mode};

use crate::{
    addr::ip_key,
    counters::bump,
    maps::{GUARD, GUARD_PORTS, LOCAL_ADDRS},
};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;
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
/// everything the guard does not judge. In STRICT mode, a TCP packet from
/// outside the node that cannot be judged (a fragment, an IPv6 extension
/// header chain, a header that cannot be read) counts as a connection
/// attempt: a SYN could hide in it, so the guard fails closed.
#[inline(always)]
fn judge(ctx: &TcContext) -> Option<bool> {
    // SAFETY: the context's skb pointer is valid for this run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let entry = GUARD.get_ptr(&ifindex)?;
    // SAFETY: a pointer from a successful lookup, valid for this run.
    let pod = unsafe { *entry };
    // What cannot be judged is judged as strictly as the pod's strictest port.
    let strict = pod.mode == Mode::Strict as u32 || pod.strict_port != 0;
    let ethertype = u16::from_be(ctx.load::<u16>(12).ok()?);
    let (family, src, tcp) = match ethertype {
        ETH_P_IP => {
            let src: u32 = ctx.load(ETH_HLEN + 12).ok()?;
            let proto: u8 = ctx.load(ETH_HLEN + 9).ok()?;
            let ver_ihl: u8 = ctx.load(ETH_HLEN).ok()?;
            let frag: u16 = u16::from_be(ctx.load(ETH_HLEN + 6).ok()?);
            let ihl = usize::from(ver_ihl & 0x0f) * 4;
            // Fragment offset or more-fragments set, or a header too short
            // to be IPv4: the TCP flags cannot be trusted.
            let unjudgeable = frag & 0x3fff != 0 || ihl < 20;
            match proto {
                IPPROTO_TCP if unjudgeable => {
                    return unjudgeable_verdict(strict, AF_INET as u32, [src, 0, 0, 0]);
                }
                IPPROTO_TCP => (AF_INET as u32, [src, 0, 0, 0], ETH_HLEN + ihl),
                _ => return None,
            }
        }
        ETH_P_IPV6 => {
            let src: [u32; 4] = ctx.load(ETH_HLEN + 8).ok()?;
            let next: u8 = ctx.load(ETH_HLEN + 6).ok()?;
            match next {
                IPPROTO_TCP => (AF_INET6 as u32, src, ETH_HLEN + 40),
                // Upper layers the guard does not police.
                IPPROTO_UDP | IPPROTO_ICMPV6 => return None,
                // Extension headers are not walked; TCP may follow them.
                _ => return unjudgeable_verdict(strict, AF_INET6 as u32, src),
            }
        }
        _ => return None,
    };
    let Ok(flags) = ctx.load::<u8>(tcp + TCP_FLAGS_OFFSET) else {
        return unjudgeable_verdict(strict, family, src);
    };
    if flags & TCP_SYN == 0 || flags & TCP_ACK != 0 {
        return None;
    }
    // The port's own mode, if PeerAuthentication set one, else the pod's.
    let port_mode = ctx
        .load::<u16>(tcp + 2)
        .ok()
        .and_then(|port| {
            let key = GuardPortKey {
                ifindex,
                port: u16::from_be(port),
                _pad: 0,
            };
            GUARD_PORTS.get_ptr(&key)
        })
        // SAFETY: a pointer from a successful lookup, valid for this run.
        .map(|e| unsafe { (*e).mode });
    let strict = port_mode.unwrap_or(pod.mode) == Mode::Strict as u32;
    Some(!strict || from_node(family, src))
}

/// A packet to a guarded pod that cannot be judged: dropped in STRICT
/// unless it comes from the node; not judged otherwise.
#[inline(always)]
fn unjudgeable_verdict(strict: bool, family: u32, src: [u32; 4]) -> Option<bool> {
    if strict && !from_node(family, src) {
        Some(false)
    } else {
        None
    }
}

#[inline(always)]
fn from_node(family: u32, src: [u32; 4]) -> bool {
    LOCAL_ADDRS
        .get_ptr(&ip_key(family, src))
        // SAFETY: a pointer from a successful lookup, valid for this run.
        .is_some_and(|kind| unsafe { *kind } == AddrKind::Node as u32)
}
