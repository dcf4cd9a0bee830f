//! Warren's kernel programs.
//!
//! Built for `bpfel-unknown-none` by aya-build (from node-agent's build.rs)
//! and embedded in the node agent. Names of programs and maps come from
//! `warren-ebpf-common`, the contract with user space.
//!
//! | module | program | job |
//! |---|---|---|
//! | `capture` | `cgroup/connect4`, `cgroup/connect6` | send enrolled pods' connects to ztunnel |
//! | `flows` | `sock_ops` | key original destinations by flow; fill the shortcut map |
//! | `original_dst` | `cgroup/getsockopt` | answer `SO_ORIGINAL_DST` |
//! | `peer` | `cgroup/getpeername4`, `getpeername6` | give a captured connection's peer as the pod dialled it |
//! | `shortcut` | `sk_msg` | hand bytes straight to the local peer socket |
//! | `guard` | TC classifier | STRICT: only the node may open connections to a pod |
//! | `dns` | `cgroup/sendmsg4`, `sendmsg6`, `recvmsg4`, `recvmsg6` | send enrolled pods' DNS queries to ztunnel's DNS proxy |
//! | `inbound` | `sk_lookup` (per pod namespace) | hand connections from outside the mesh to ztunnel's plaintext inbound listener |
//!
//! On the host (for `cargo clippy --workspace`) this compiles to an empty
//! `main`; every program is gated on `target_arch = "bpf"`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod addr;
#[cfg(target_arch = "bpf")]
mod capture;
#[cfg(target_arch = "bpf")]
mod counters;
#[cfg(target_arch = "bpf")]
mod dns;
#[cfg(target_arch = "bpf")]
mod flows;
#[cfg(target_arch = "bpf")]
mod guard;
#[cfg(target_arch = "bpf")]
mod inbound;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod original_dst;
#[cfg(target_arch = "bpf")]
mod peer;
#[cfg(target_arch = "bpf")]
mod rewrite;
#[cfg(target_arch = "bpf")]
mod shortcut;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves programs cannot panic; this is never reached.
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
