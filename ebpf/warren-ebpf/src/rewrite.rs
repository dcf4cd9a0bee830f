//! Rewriting the address of a `bpf_sock_addr` context: where a connect or send
//! goes, or (in recvmsg hooks) whom a datagram came from.
//!
//! Each field is written with its own 4-byte volatile store: LLVM may otherwise
//! merge adjacent context writes into one 8-byte store, which the verifier
//! rejects.

use core::ptr::{addr_of_mut, write_volatile};

use aya_ebpf::programs::SockAddrContext;

/// Sets the IPv4 address (network order) and the port (host order).
#[inline(always)]
pub fn set_addr4(ctx: &SockAddrContext, ip_be: u32, port: u16) {
    // SAFETY: the context points to the kernel's `bpf_sock_addr` for this run, and
    // these fields are writable in the hooks that call this.
    unsafe {
        write_volatile(addr_of_mut!((*ctx.sock_addr).user_ip4), ip_be);
        write_volatile(
            addr_of_mut!((*ctx.sock_addr).user_port),
            u32::from(port.to_be()),
        );
    }
}

/// Sets the IPv6 address (four network-order words) and the port (host order).
#[inline(always)]
pub fn set_addr6(ctx: &SockAddrContext, ip_be: [u32; 4], port: u16) {
    // SAFETY: as above.
    unsafe {
        let ip6 = addr_of_mut!((*ctx.sock_addr).user_ip6);
        write_volatile(addr_of_mut!((*ip6)[0]), ip_be[0]);
        write_volatile(addr_of_mut!((*ip6)[1]), ip_be[1]);
        write_volatile(addr_of_mut!((*ip6)[2]), ip_be[2]);
        write_volatile(addr_of_mut!((*ip6)[3]), ip_be[3]);
        write_volatile(
            addr_of_mut!((*ctx.sock_addr).user_port),
            u32::from(port.to_be()),
        );
    }
}
