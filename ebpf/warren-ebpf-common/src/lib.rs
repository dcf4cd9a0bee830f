//! The contract between Warren's kernel programs and user space.
//!
//! Everything both sides must agree on lives here and nowhere else: the names
//! of programs and maps (user space finds them by name in the object and
//! under the pin folder) and the `#[repr(C)]` layout of map keys and values.
//! The crate is `no_std` so the eBPF crate can use it; the `user` feature adds
//! the `aya::Pod` impls that typed user-space maps need.
//!
//! Addresses are stored exactly as the kernel hands them to programs: IPv4 in
//! network byte order in the first word of a `[u32; 4]` (the other words
//! zero), IPv6 as four network-order words. Ports are in host order.
#![no_std]

// The `user` side runs in ordinary processes: `origin` needs std (sockets, errors).
#[cfg(feature = "user")]
extern crate std;

/// Asking the kernel where a captured connection was going (user space only).
#[cfg(feature = "user")]
pub mod origin;

/// Program names, as the eBPF crate names its functions.
pub mod program {
    /// `cgroup/connect4`: redirects enrolled pods' IPv4 TCP connects.
    pub const CONNECT4: &str = "warren_connect4";
    /// `cgroup/connect6`: the same for IPv6 (and v4-mapped) connects.
    pub const CONNECT6: &str = "warren_connect6";
    /// `sock_ops`: moves original destinations to flow keys, fills the
    /// shortcut SOCKHASH, forgets flows at close.
    pub const SOCK_OPS: &str = "warren_sock_ops";
    /// `cgroup/getsockopt`: answers `SO_ORIGINAL_DST` from the flow map.
    pub const GETSOCKOPT: &str = "warren_getsockopt";
    /// `sk_msg`: hands payloads straight to the peer socket.
    pub const SHORTCUT: &str = "warren_shortcut";
    /// TC classifier on pods' host-side veths: the STRICT guard.
    pub const GUARD: &str = "warren_guard";
    /// `cgroup/sendmsg4`: sends enrolled pods' DNS queries (UDP port 53) to
    /// ztunnel's DNS proxy.
    pub const SENDMSG4: &str = "warren_sendmsg4";
    /// `cgroup/recvmsg4`: gives the proxy's answers the address the pod asked.
    pub const RECVMSG4: &str = "warren_recvmsg4";
    /// `cgroup/sendmsg6`, `cgroup/recvmsg6`: the same for IPv6 sockets.
    pub const SENDMSG6: &str = "warren_sendmsg6";
    pub const RECVMSG6: &str = "warren_recvmsg6";
    /// `cgroup/getpeername4`, `cgroup/getpeername6`: a captured connection's
    /// peer is the destination the pod dialled, not ztunnel.
    pub const GETPEERNAME4: &str = "warren_getpeer4";
    pub const GETPEERNAME6: &str = "warren_getpeer6";
    /// `sk_lookup`, attached to each enrolled pod's network namespace: hands
    /// connections from outside the mesh to ztunnel's plaintext inbound
    /// listener in that namespace, so the pod's policies see them.
    pub const INBOUND: &str = "warren_inbound";

    /// Programs attached to the node's cgroup subtree, in attach order:
    /// the programs that answer `SO_ORIGINAL_DST` first, capture last, so a
    /// failed install never leaves capture on with nothing answering.
    pub const CGROUP: &[&str] = &[
        SOCK_OPS,
        GETSOCKOPT,
        RECVMSG4,
        RECVMSG6,
        GETPEERNAME4,
        GETPEERNAME6,
        CONNECT4,
        CONNECT6,
        SENDMSG4,
        SENDMSG6,
    ];
    /// Every program the object carries.
    pub const ALL: &[&str] = &[
        CONNECT4,
        CONNECT6,
        SOCK_OPS,
        GETSOCKOPT,
        SHORTCUT,
        GUARD,
        SENDMSG4,
        RECVMSG4,
        SENDMSG6,
        RECVMSG6,
        GETPEERNAME4,
        GETPEERNAME6,
        INBOUND,
    ];
}

/// Map names, as the eBPF crate declares them.
pub mod map {
    /// Netns cookie → [`crate::EnrolledPod`]: pods whose connects are captured.
    pub const ENROLLED: &str = "WARREN_ENROLLED";
    /// One [`crate::NodeConfig`]: where ztunnel listens, its socket mark.
    pub const CONFIG: &str = "WARREN_CONFIG";
    /// [`crate::PortKey`] → 1: destination ports a pod keeps out of the mesh.
    pub const EXCLUDED_PORTS: &str = "WARREN_EXCLUDED_PORTS";
    /// Socket cookie → [`crate::OrigDst`], from connect until established.
    pub const ORIG_DST: &str = "WARREN_ORIG_DST";
    /// [`crate::FlowKey`] (client's view) → [`crate::OrigDst`], while the
    /// connection lives.
    pub const ORIG_DST_BY_FLOW: &str = "WARREN_ORIG_DST_BY_FLOW";
    /// SOCKHASH of local sockets keyed by [`crate::FlowKey`] (own view).
    pub const SOCKS: &str = "WARREN_SOCKS";
    /// Bytes each shortcut socket has handed to its peer directly, in
    /// verdicts of up to 1 MiB (LRU, keyed by the socket's own flow).
    pub const SHORTCUT_SENT: &str = "WARREN_SHORTCUT_SENT";
    /// [`crate::IpKey`] → [`crate::AddrKind`]: this node's own and its pods'
    /// addresses.
    pub const LOCAL_ADDRS: &str = "WARREN_LOCAL_ADDRS";
    /// Host-side veth ifindex → [`crate::GuardEntry`].
    pub const GUARD: &str = "WARREN_GUARD";
    /// [`crate::GuardPortKey`] → [`crate::GuardEntry`]: a pod's per-port
    /// mode (PeerAuthentication `portLevelMtls`), overriding its own.
    pub const GUARD_PORTS: &str = "WARREN_GUARD_PORTS";
    /// Netns cookie → per-CPU [`crate::PodStats`].
    pub const POD_STATS: &str = "WARREN_POD_STATS";
    /// Per-CPU event counters, indexed by [`crate::Counter`].
    pub const COUNTERS: &str = "WARREN_COUNTERS";
    /// One `u64`: a hash of the object whose programs are installed, so an
    /// agent can tell whether the pinned programs are its own.
    pub const META: &str = "WARREN_META";
    /// Socket cookie → [`crate::SockAddr`]: the DNS server a pod's socket last
    /// asked, whose address the proxy's answers are given back (LRU).
    pub const DNS_ORIG: &str = "WARREN_DNS_ORIG";
    /// SOCKHASH keyed by [`crate::IpKey`] (an enrolled pod's address):
    /// ztunnel's plaintext inbound listener in that pod's namespace.
    pub const INBOUND: &str = "WARREN_INBOUND";

    /// Maps that only count: a build that reshapes one (a counter added)
    /// starts it over at zero instead of reinstalling the datapath.
    pub const STATISTICS: &[&str] = &[COUNTERS, POD_STATS];

    /// Every map the object carries.
    pub const ALL: &[&str] = &[
        ENROLLED,
        CONFIG,
        EXCLUDED_PORTS,
        ORIG_DST,
        ORIG_DST_BY_FLOW,
        SOCKS,
        SHORTCUT_SENT,
        LOCAL_ADDRS,
        GUARD,
        GUARD_PORTS,
        POD_STATS,
        COUNTERS,
        META,
        DNS_ORIG,
        INBOUND,
    ];
}

/// The shape of one map, as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapLayout {
    pub name: &'static str,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

const fn layout<K, V>(name: &'static str, max_entries: u32) -> MapLayout {
    MapLayout {
        name,
        key_size: core::mem::size_of::<K>() as u32,
        value_size: core::mem::size_of::<V>() as u32,
        max_entries,
    }
}

/// Every map's shape, from the same types and capacities the eBPF crate
/// declares them with. An agent that finds pinned maps of another shape
/// (left by another version) must not reuse them; a fresh install is
/// checked against this table too, so it cannot drift from the programs.
pub const MAP_LAYOUTS: &[MapLayout] = &[
    layout::<u64, EnrolledPod>(map::ENROLLED, capacity::ENROLLED),
    layout::<u32, NodeConfig>(map::CONFIG, 1),
    layout::<PortKey, u8>(map::EXCLUDED_PORTS, capacity::EXCLUDED_PORTS),
    layout::<u64, OrigDst>(map::ORIG_DST, capacity::ORIG_DST),
    layout::<FlowKey, OrigDst>(map::ORIG_DST_BY_FLOW, capacity::ORIG_DST_BY_FLOW),
    // A SOCKHASH value is the socket, 4 bytes from user space's side.
    layout::<FlowKey, u32>(map::SOCKS, capacity::SOCKS),
    layout::<FlowKey, u64>(map::SHORTCUT_SENT, capacity::SOCKS),
    layout::<IpKey, u32>(map::LOCAL_ADDRS, capacity::LOCAL_ADDRS),
    layout::<u32, GuardEntry>(map::GUARD, capacity::GUARD),
    layout::<GuardPortKey, GuardEntry>(map::GUARD_PORTS, capacity::GUARD_PORTS),
    layout::<u64, PodStats>(map::POD_STATS, capacity::ENROLLED),
    layout::<u32, u64>(map::COUNTERS, Counter::COUNT),
    layout::<u32, u64>(map::META, 1),
    layout::<u64, SockAddr>(map::DNS_ORIG, capacity::DNS_ORIG),
    layout::<IpKey, u32>(map::INBOUND, capacity::INBOUND),
];

/// Capacities. Flow-keyed maps are LRU so that a flow whose close was never
/// seen (a socket outside the subtree, a crash) cannot fill them.
pub mod capacity {
    pub const ENROLLED: u32 = 4_096;
    pub const EXCLUDED_PORTS: u32 = 16_384;
    pub const ORIG_DST: u32 = 65_536;
    pub const ORIG_DST_BY_FLOW: u32 = 262_144;
    pub const SOCKS: u32 = 262_144;
    pub const LOCAL_ADDRS: u32 = 8_192;
    pub const GUARD: u32 = 4_096;
    pub const GUARD_PORTS: u32 = 16_384;
    pub const DNS_ORIG: u32 = 16_384;
    /// Two per enrolled pod (IPv4 and IPv6).
    pub const INBOUND: u32 = 8_192;
}

/// How far one socket may get ahead of its peer through the shortcut (bytes
/// it sent that way minus bytes the peer sent back that way) before the rest
/// of its life goes over TCP.
///
/// The kernel queues a redirected message on the peer's ingress list with no
/// back-pressure: a sender faster than its reader (a bulk upload into ztunnel,
/// which is busy encrypting) grows that list until the host's TCP memory
/// reaches its hard limit (`tcp_mem`), and then every redirect fails with
/// ENOMEM in the sender's `write`. Measured here: a 4 GiB echo through
/// ztunnel failed after 1.6-2.0 GB. The peer's reader cannot be seen from
/// the send hook, but what the peer sends back can: request/response and
/// ping-pong traffic stays even and keeps the shortcut for good, while a
/// one-way flood gets this far ahead and moves to TCP, whose windows bound
/// it. The switch is one-way because the reader takes queued shortcut
/// messages before TCP data: returning to the shortcut while TCP bytes are
/// unread would reorder the stream.
pub const SHORTCUT_BUDGET_BYTES: u64 = 8 << 20;

/// Address families as the kernel numbers them.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Socket mark of ztunnel's own sockets. Connects carrying it are never
/// captured, whatever namespace they come from: a loop guard. Istio uses the
/// same value, so operators' rules carry over.
pub const ZTUNNEL_MARK: u32 = 0x539;

/// `getsockopt(SOL_IP, SO_ORIGINAL_DST)`, as netfilter defines it; IPv6 uses
/// the same number at level `SOL_IPV6` (`IP6T_SO_ORIGINAL_DST`).
pub const SO_ORIGINAL_DST: i32 = 80;
pub const SOL_IP: i32 = 0;
pub const SOL_IPV6: i32 = 41;
/// Warren's own option at level `SOL_IP`: returns the whole [`OrigDst`],
/// original destination and the client pod's netns cookie, so a proxy learns
/// who connected from the kernel. Unused by Linux (its SOL_IP options stop
/// below 100).
pub const SO_WARREN_ORIGIN: i32 = 0x5741;

/// Four address words in kernel layout (network-order bytes, as the kernel
/// stores them) from an IP address: IPv4 in the first word.
pub fn words_of(ip: core::net::IpAddr) -> (u16, [u32; 4]) {
    match ip {
        core::net::IpAddr::V4(v4) => (AF_INET, [u32::from_ne_bytes(v4.octets()), 0, 0, 0]),
        core::net::IpAddr::V6(v6) => {
            let o = v6.octets();
            let word = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            (AF_INET6, [word(0), word(4), word(8), word(12)])
        }
    }
}

/// The IP address of four words in kernel layout, if `family` is one.
pub fn ip_of_words(family: u32, addr: &[u32; 4]) -> Option<core::net::IpAddr> {
    match family {
        f if f == AF_INET as u32 => Some(core::net::Ipv4Addr::from(addr[0].to_ne_bytes()).into()),
        f if f == AF_INET6 as u32 => {
            let mut octets = [0u8; 16];
            for (chunk, word) in octets.chunks_exact_mut(4).zip(addr) {
                chunk.copy_from_slice(&word.to_ne_bytes());
            }
            Some(core::net::Ipv6Addr::from(octets).into())
        }
        _ => None,
    }
}

/// A socket address: family, port (host order) and address (kernel layout).
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

    /// An IPv6 address from four network-order words and a host-order port.
    pub const fn v6(addr_be: [u32; 4], port: u16) -> Self {
        Self {
            family: AF_INET6,
            port,
            addr: addr_be,
        }
    }

    /// As a std socket address, if the family is IPv4 or IPv6.
    pub fn to_socket_addr(&self) -> Option<core::net::SocketAddr> {
        ip_of_words(u32::from(self.family), &self.addr)
            .map(|ip| core::net::SocketAddr::new(ip, self.port))
    }
}

/// Where a captured connection was going, and who sent it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrigDst {
    pub dst: SockAddr,
    pub _pad: u32,
    /// Network-namespace cookie of the connecting pod.
    pub netns_cookie: u64,
}

/// A TCP flow. Maps say whose view it is: `ORIG_DST_BY_FLOW` keys flows as
/// the client sees them (`src` = client); `SOCKS` keys each socket by its own
/// view (`src` = the socket's local end).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowKey {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub src_port: u16,
    pub dst_port: u16,
    pub family: u32,
}

impl FlowKey {
    /// The same flow seen from the other end.
    pub const fn reversed(&self) -> Self {
        Self {
            src: self.dst,
            dst: self.src,
            src_port: self.dst_port,
            dst_port: self.src_port,
            family: self.family,
        }
    }
}

/// An IP address as a map key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IpKey {
    pub family: u32,
    pub addr: [u32; 4],
}

impl IpKey {
    pub const fn v4(addr_be: u32) -> Self {
        Self {
            family: AF_INET as u32,
            addr: [addr_be, 0, 0, 0],
        }
    }

    pub const fn v6(addr_be: [u32; 4]) -> Self {
        Self {
            family: AF_INET6 as u32,
            addr: addr_be,
        }
    }

    pub fn from_ip(ip: core::net::IpAddr) -> Self {
        let (family, addr) = words_of(ip);
        Self {
            family: u32::from(family),
            addr,
        }
    }

    pub fn to_ip(&self) -> Option<core::net::IpAddr> {
        ip_of_words(self.family, &self.addr)
    }
}

/// What a local address belongs to ([`map::LOCAL_ADDRS`] values).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddrKind {
    /// The node itself (where ztunnel and kubelet-style probes come from).
    Node = 1,
    /// A pod on this node.
    Pod = 2,
}

/// A pod's destination port kept out of the mesh.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortKey {
    pub netns_cookie: u64,
    pub port: u16,
    pub _pad: [u8; 6],
}

/// Inbound policy the STRICT guard enforces on a pod's veth.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Plaintext from outside the mesh is let through.
    Permissive = 0,
    /// Only the node (its ztunnel, its probes) may open connections to the pod.
    Strict = 1,
}

impl Mode {
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(Mode::Permissive),
            1 => Some(Mode::Strict),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Mode::Permissive => "PERMISSIVE",
            Mode::Strict => "STRICT",
        }
    }
}

/// Length of [`EnrolledPod::name`].
pub const POD_NAME_LEN: usize = 64;

/// An enrolled pod ([`map::ENROLLED`] values). The kernel only needs the
/// key; the rest is there so debugging tools can explain the map from the
/// pins alone, with no agent running.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnrolledPod {
    /// `namespace/name`, NUL-padded (truncated if longer).
    pub name: [u8; POD_NAME_LEN],
    /// The pod's IPv4 address (network order), 0 if none.
    pub ip4: u32,
    /// Host-side veth ifindex in the node's namespace.
    pub ifindex: u32,
    /// [`Mode`] as u32.
    pub mode: u32,
    pub _pad: u32,
    /// Name of the host-side veth, NUL-padded: debugging tools show it even
    /// when they run in another network namespace than the veth.
    pub ifname: [u8; IFNAME_LEN],
}

/// Length of [`EnrolledPod::ifname`] (the kernel's `IFNAMSIZ`).
pub const IFNAME_LEN: usize = 16;

/// Guard settings for one veth ([`map::GUARD`]) or one of its ports
/// ([`map::GUARD_PORTS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuardEntry {
    /// [`Mode`] as u32.
    pub mode: u32,
    /// In a pod's entry: 1 if any of its ports is STRICT. A packet whose
    /// port cannot be read (a fragment) is then judged as STRICT.
    pub strict_port: u32,
}

/// A pod's port, as seen on its host-side veth.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuardPortKey {
    pub ifindex: u32,
    /// Destination port (host order).
    pub port: u16,
    pub _pad: u16,
}

/// Node-wide settings ([`map::CONFIG`], one entry at index 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeConfig {
    /// ztunnel's outbound listener as pods reach it (IPv4, network order).
    pub ztunnel_ip4: u32,
    /// The same for IPv6 (all zero: IPv6 is not captured).
    pub ztunnel_ip6: [u32; 4],
    /// ztunnel's outbound port (15001); 0 turns capture off.
    pub ztunnel_port: u16,
    /// 1: local socket pairs may take the sk_msg shortcut (opt-in, see
    /// [`SHORTCUT_BUDGET_BYTES`] and docs/debugging.md for why it is off
    /// by default).
    pub shortcut: u16,
    /// Sockets with this mark are never captured.
    pub mark: u32,
    /// ztunnel's DNS proxy port, UDP and TCP, on `ztunnel_ip4` (and `ztunnel_ip6`,
    /// for queries to IPv6 servers) (15053); 0 leaves DNS alone (DNS over TCP
    /// then goes to `ztunnel_port` as any connection).
    pub dns_port: u16,
    pub _pad: u16,
}

/// Per-pod counters ([`map::POD_STATS`], per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodStats {
    /// Connects sent to ztunnel.
    pub redirected: u64,
    /// Connects left alone (loopback, excluded port, marked socket).
    pub exempt: u64,
}

macro_rules! counters {
    ($($(#[$doc:meta])* $variant:ident = $slot:literal => $name:literal,)*) => {
        /// Events the programs count, one slot each in [`map::COUNTERS`].
        ///
        /// A per-CPU array because the bpf target has no 64-bit atomic add;
        /// user space sums the CPUs when it reads.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter {
            $($(#[$doc])* $variant = $slot,)*
        }

        impl Counter {
            pub const ALL: &[Counter] = &[$(Counter::$variant,)*];
            /// Number of slots the counters map needs.
            pub const COUNT: u32 = Self::ALL.len() as u32;

            /// Stable name for tables and metrics.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Counter::$variant => $name,)*
                }
            }
        }
    };
}

counters! {
    /// A TCP connect seen by connect4/connect6.
    ConnectSeen = 0 => "connect_seen",
    /// A connect from an enrolled pod sent to ztunnel.
    ConnectRedirected = 1 => "connect_redirected",
    /// A connect from a namespace that is not enrolled.
    ConnectNotEnrolled = 2 => "connect_not_enrolled",
    /// A connect from an enrolled pod left alone (loopback, excluded port, mark).
    ConnectExempt = 3 => "connect_exempt",
    /// Capture is off (no ztunnel address configured).
    ConnectUnconfigured = 4 => "connect_unconfigured",
    /// The original destination could not be recorded (map full).
    OrigDstFull = 5 => "orig_dst_full",
    /// An original destination moved to its flow key at establishment.
    OrigDstEstablished = 6 => "orig_dst_established",
    /// `SO_ORIGINAL_DST` (or Warren's option) answered from the flow map.
    GetsockoptAnswered = 7 => "getsockopt_answered",
    /// `SO_ORIGINAL_DST` asked for a flow Warren did not capture.
    GetsockoptMiss = 8 => "getsockopt_miss",
    /// A local socket added to the shortcut map.
    ShortcutInserted = 9 => "shortcut_inserted",
    /// A message handed straight to its peer socket.
    ShortcutHit = 10 => "shortcut_hit",
    /// A message whose peer is not in the map: normal path.
    ShortcutMiss = 11 => "shortcut_miss",
    /// A connection attempt to a guarded pod let through.
    GuardPassed = 12 => "guard_passed",
    /// A connection attempt to a STRICT pod from outside the node: dropped.
    GuardDropped = 13 => "guard_dropped",
    /// A socket got too far ahead of its peer: the rest of its bytes take TCP.
    ShortcutBudgetSpent = 14 => "shortcut_budget_spent",
    /// A DNS query of an enrolled pod sent to ztunnel's DNS proxy.
    DnsRedirected = 15 => "dns_redirected",
    /// An answer of the DNS proxy given the address the pod asked.
    DnsAnswerRestored = 16 => "dns_answer_restored",
    /// A captured connection's peer given as the destination the pod dialled.
    PeerRestored = 17 => "peer_restored",
    /// A connection from outside the mesh to an enrolled pod handed to
    /// ztunnel's plaintext inbound listener.
    InboundSteered = 18 => "inbound_steered",
    /// One that found no listener of ztunnel's for its pod (ztunnel gone):
    /// refused.
    InboundNoListener = 19 => "inbound_no_listener",
}

#[cfg(feature = "user")]
mod pod_impls {
    use super::*;
    // SAFETY (all): `repr(C)`, `Copy`, explicit padding fields so no
    // implicit padding, and every bit pattern is a valid value.
    unsafe impl aya::Pod for SockAddr {}
    unsafe impl aya::Pod for OrigDst {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for IpKey {}
    unsafe impl aya::Pod for PortKey {}
    unsafe impl aya::Pod for EnrolledPod {}
    unsafe impl aya::Pod for GuardEntry {}
    unsafe impl aya::Pod for GuardPortKey {}
    unsafe impl aya::Pod for NodeConfig {}
    unsafe impl aya::Pod for PodStats {}
}

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;

    /// The kernel keeps a program's first 15 bytes of name (BPF_OBJ_NAME_LEN),
    /// and tools that list programs (bpftool, warrenctl) tell them apart by it.
    #[test]
    fn program_names_differ_as_the_kernel_keeps_them() {
        let kept = |name: &'static str| &name[..name.len().min(15)];
        for (i, name) in program::ALL.iter().enumerate() {
            for other in &program::ALL[..i] {
                assert_ne!(kept(name), kept(other), "{name} and {other}");
            }
        }
    }

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
    fn layouts_have_no_hidden_padding() {
        // Sizes are the sum of the fields: both sides read the same bytes,
        // and hash keys have no uninitialised bytes.
        assert_eq!(size_of::<SockAddr>(), 20);
        assert_eq!(size_of::<OrigDst>(), 32);
        assert_eq!(size_of::<FlowKey>(), 40);
        assert_eq!(size_of::<IpKey>(), 20);
        assert_eq!(size_of::<PortKey>(), 16);
        assert_eq!(size_of::<GuardPortKey>(), 8);
        assert_eq!(size_of::<EnrolledPod>(), POD_NAME_LEN + 16 + IFNAME_LEN);
        assert_eq!(size_of::<NodeConfig>(), 4 + 16 + 4 + 4 + 4);
        assert_eq!(size_of::<PodStats>(), 16);
    }

    #[test]
    fn addresses_round_trip_through_kernel_layout() {
        use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
        let v4 = IpAddr::V4(Ipv4Addr::new(10, 244, 1, 2));
        // The kernel stores 10.244.1.2 as the bytes 0a f4 01 02.
        assert_eq!(IpKey::from_ip(v4).addr[0].to_ne_bytes(), [10, 244, 1, 2]);
        assert_eq!(IpKey::from_ip(v4).to_ip(), Some(v4));
        let v6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x1));
        assert_eq!(IpKey::from_ip(v6).to_ip(), Some(v6));
        let sa = SockAddr::v4(u32::from_ne_bytes([10, 0, 0, 1]), 8080);
        let want = core::net::SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 8080);
        assert_eq!(sa.to_socket_addr(), Some(want));
    }

    #[test]
    fn flow_reversal_swaps_ends() {
        let f = FlowKey {
            src: [1, 0, 0, 0],
            dst: [2, 0, 0, 0],
            src_port: 40000,
            dst_port: 15001,
            family: AF_INET as u32,
        };
        let r = f.reversed();
        assert_eq!(
            (r.src, r.src_port, r.dst, r.dst_port),
            (f.dst, f.dst_port, f.src, f.src_port)
        );
        assert_eq!(r.reversed(), f);
    }
}
