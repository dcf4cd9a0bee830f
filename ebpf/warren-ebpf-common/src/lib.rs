//! The contract between Warren's kernel programs and user space.
//!
//! Everything both sides must agree on lives here and nowhere else: the names
//! of programs and maps (user space looks them up by name in the object file
//! and under the pin folder) and the `#[repr(C)]` layout of map keys and
//! values. The crate is `no_std` so the eBPF crate can use it; the `user`
//! feature adds the `aya::Pod` impls that typed user-space maps need.
#![no_std]

/// Program names, as the eBPF crate names its functions.
pub mod program {
    /// `cgroup/connect4`: sees every IPv4 TCP connect in the attached cgroup.
    pub const CONNECT4: &str = "warren_connect4";

    /// Every program the object carries, for listing and uninstalling.
    pub const ALL: &[&str] = &[CONNECT4];
}

/// Map names, as the eBPF crate declares them.
pub mod map {
    /// Socket cookie → original destination of a connect.
    pub const ORIG_DST: &str = "WARREN_ORIG_DST";
    /// Per-CPU event counters, indexed by [`crate::Counter`].
    pub const COUNTERS: &str = "WARREN_COUNTERS";

    /// Every map the object carries, for listing and uninstalling.
    pub const ALL: &[&str] = &[ORIG_DST, COUNTERS];
}

/// Capacity of [`map::ORIG_DST`]. Entries outlive the connect only until
/// the connection is established, so this bounds connects in flight, not
/// open connections.
pub const ORIG_DST_CAPACITY: u32 = 65_536;

/// Address families as the kernel numbers them (`AF_INET`, `AF_INET6`).
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// A socket address as the kernel hands it to cgroup programs.
///
/// `addr` holds the address in network byte order exactly as the kernel
/// stores it (an IPv4 address uses `addr[0]` only); `port` is in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockAddr {
    pub family: u16,
    pub port: u16,
    pub addr: [u32; 4],
}

impl SockAddr {
    /// An IPv4 address from the kernel's network-order `u32` and a host-order port.
    pub const fn v4(addr_be: u32, port: u16) -> Self {
        Self {
            family: AF_INET,
            port,
            addr: [addr_be, 0, 0, 0],
        }
    }
}

/// Events the programs count, one slot each in [`map::COUNTERS`].
///
/// A per-CPU array because the bpf target has no 64-bit atomic add; user
/// space sums the CPUs when it reads.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// A TCP connect seen by `connect4`.
    Connect4Seen = 0,
    /// The original destination could not be recorded (map full).
    OrigDstFull = 1,
}

impl Counter {
    /// Number of slots the counters map needs.
    pub const COUNT: u32 = 2;
    pub const ALL: [Counter; Self::COUNT as usize] = [Counter::Connect4Seen, Counter::OrigDstFull];

    /// Stable name for tables and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Connect4Seen => "connect4_seen",
            Counter::OrigDstFull => "orig_dst_full",
        }
    }
}

#[cfg(feature = "user")]
// SAFETY: `SockAddr` is `repr(C)`, `Copy`, has no padding (2 + 2 + 16 bytes)
// and every bit pattern is a valid value.
unsafe impl aya::Pod for SockAddr {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_table_is_consistent() {
        for (slot, counter) in Counter::ALL.iter().enumerate() {
            assert_eq!(*counter as usize, slot, "{counter:?} is not in slot order");
        }
        for (i, a) in Counter::ALL.iter().enumerate() {
            for b in &Counter::ALL[i + 1..] {
                assert_ne!(a.name(), b.name(), "two counters share a name");
            }
        }
    }

    #[test]
    fn sockaddr_layout_matches_kernel_side() {
        // 2 + 2 + 16 bytes, no padding: both sides read the same bytes.
        assert_eq!(core::mem::size_of::<SockAddr>(), 20);
        let a = SockAddr::v4(u32::from_be_bytes([10, 0, 0, 1]).to_be(), 8080);
        assert_eq!((a.family, a.port, a.addr[1]), (AF_INET, 8080, 0));
    }
}
