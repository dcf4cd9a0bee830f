//! The `sk_msg` program: for a socket in the shortcut SOCKHASH, each
//! `sendmsg` is handed straight to the receive queue of its peer socket on
//! this node, skipping the TCP/IP stack on both sides. `shortcut_hit`
//! counts verdicts, each covering up to [`APPLY_BYTES`]. A peer that is not in
//! the map (on another node, closed, not yet established) means the normal
//! path: the program never drops data.
//!
//! A socket that gets [`warren_ebpf_common::SHORTCUT_BUDGET_BYTES`] ahead of
//! its peer moves to TCP for the rest of its life (see there why, and why
//! never back).

use aya_ebpf::{
    bindings::{BPF_F_INGRESS, sk_action::SK_PASS},
    macros::sk_msg,
    programs::SkMsgContext,
};
use warren_ebpf_common::{AF_INET, AF_INET6, Counter, FlowKey, SHORTCUT_BUDGET_BYTES};

use crate::{
    counters::bump,
    flows::fold_v4_mapped,
    maps::{SHORTCUT_SENT, SOCKS},
};

/// After a successful redirect, the verdict covers this many following
/// bytes without running the program again: a connected socket's peer does
/// not change, and one program run per `sendmsg` cost bulk transfers about a
/// fifth of their throughput (measured with `cargo xtask bench shortcut`).
const APPLY_BYTES: u32 = 1 << 20;

#[sk_msg]
pub fn warren_shortcut(ctx: SkMsgContext) -> u32 {
    // SAFETY: the kernel passes a valid `sk_msg_md` for this program type.
    let md = unsafe { &*ctx.msg };
    let own = if md.family == AF_INET as u32 {
        FlowKey {
            src: [md.local_ip4, 0, 0, 0],
            dst: [md.remote_ip4, 0, 0, 0],
            src_port: md.local_port as u16,
            dst_port: u32::from_be(md.remote_port) as u16,
            family: AF_INET as u32,
        }
    } else {
        fold_v4_mapped(FlowKey {
            src: md.local_ip6,
            dst: md.remote_ip6,
            src_port: md.local_port as u16,
            dst_port: u32::from_be(md.remote_port) as u16,
            family: AF_INET6 as u32,
        })
    };
    // Each verdict covers up to APPLY_BYTES, so each is counted as that much.
    let Some(sent) = SHORTCUT_SENT.get_ptr_mut(&own) else {
        // Moved to TCP (or never joined): this verdict stands for the next
        // APPLY_BYTES too, so the program stays off the per-message path.
        apply_verdict(&ctx);
        return SK_PASS;
    };
    // The peer socket is keyed by its own view: ours reversed.
    let mut peer = own.reversed();
    // SAFETY (both reads): pointers from successful lookups, valid for this
    // run. Only this socket's own sendmsg, under its socket lock, writes its
    // entry; the peer's may move meanwhile, which only makes this estimate
    // a verdict late.
    let ours = unsafe { *sent };
    let theirs = SHORTCUT_SENT.get_ptr(&peer).map_or(0, |p| unsafe { *p });
    if ours.saturating_sub(theirs) >= SHORTCUT_BUDGET_BYTES {
        let _ = SHORTCUT_SENT.remove(&own);
        bump(Counter::ShortcutBudgetSpent);
        apply_verdict(&ctx);
        return SK_PASS;
    }
    if SOCKS.redirect_msg(&ctx, &mut peer, BPF_F_INGRESS as u64) == SK_PASS as i64 {
        // SAFETY: as above.
        unsafe { *sent = ours + APPLY_BYTES as u64 };
        apply_verdict(&ctx);
        bump(Counter::ShortcutHit);
    } else {
        bump(Counter::ShortcutMiss);
    }
    SK_PASS
}

/// Lets this verdict cover the next [`APPLY_BYTES`] without running again.
#[inline(always)]
fn apply_verdict(ctx: &SkMsgContext) {
    // SAFETY: a valid context; the helper only sets the psock's byte budget.
    unsafe { aya_ebpf::helpers::bpf_msg_apply_bytes(ctx.msg, APPLY_BYTES) };
}
