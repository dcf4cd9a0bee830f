//! Small address helpers shared by the programs.

use warren_ebpf_common::{AF_INET, IpKey};

/// 127.0.0.0/8, with the address in network order.
#[inline(always)]
pub fn is_loopback_v4(addr_be: u32) -> bool {
    u32::from_be(addr_be) >> 24 == 127
}

/// `::1`, or a v4-mapped loopback (`::ffff:127.x.y.z`).
#[inline(always)]
pub fn is_loopback_v6(addr: &[u32; 4]) -> bool {
    let loopback = addr[0] == 0 && addr[1] == 0 && addr[2] == 0 && u32::from_be(addr[3]) == 1;
    loopback || (is_v4_mapped(addr) && is_loopback_v4(addr[3]))
}

/// `::ffff:a.b.c.d`: an IPv4 destination on an IPv6 socket.
#[inline(always)]
pub fn is_v4_mapped(addr: &[u32; 4]) -> bool {
    addr[0] == 0 && addr[1] == 0 && u32::from_be(addr[2]) == 0xffff
}

/// `::ffff:a.b.c.d`, from an IPv4 address in network order.
#[inline(always)]
pub fn v4_mapped(addr_be: u32) -> [u32; 4] {
    [0, 0, 0xffffu32.to_be(), addr_be]
}

/// The map key of an address in kernel layout.
#[inline(always)]
pub fn ip_key(family: u32, addr: [u32; 4]) -> IpKey {
    if family == AF_INET as u32 {
        IpKey::v4(addr[0])
    } else {
        IpKey::v6(addr)
    }
}
