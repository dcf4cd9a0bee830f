//! Every map, in one place. All are pinned by name: the node agent loads the
//! object with its pin folder as the default, so a restarted agent reuses
//! the maps (and their contents) instead of making new ones.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, SockHash},
};
use warren_ebpf_common::{
    Counter, EnrolledPod, FlowKey, GuardEntry, GuardPortKey, IpKey, NodeConfig, OrigDst, PodStats,
    PortKey, SockAddr, capacity,
};

#[map(name = "WARREN_ENROLLED")]
pub static ENROLLED: HashMap<u64, EnrolledPod> = HashMap::pinned(capacity::ENROLLED, 0);

#[map(name = "WARREN_CONFIG")]
pub static CONFIG: Array<NodeConfig> = Array::pinned(1, 0);

#[map(name = "WARREN_EXCLUDED_PORTS")]
pub static EXCLUDED_PORTS: HashMap<PortKey, u8> = HashMap::pinned(capacity::EXCLUDED_PORTS, 0);

#[map(name = "WARREN_ORIG_DST")]
pub static ORIG_DST: LruHashMap<u64, OrigDst> = LruHashMap::pinned(capacity::ORIG_DST, 0);

#[map(name = "WARREN_ORIG_DST_BY_FLOW")]
pub static ORIG_DST_BY_FLOW: LruHashMap<FlowKey, OrigDst> =
    LruHashMap::pinned(capacity::ORIG_DST_BY_FLOW, 0);

#[map(name = "WARREN_SOCKS")]
pub static SOCKS: SockHash<FlowKey> = SockHash::pinned(capacity::SOCKS, 0);

#[map(name = "WARREN_SHORTCUT_SENT")]
pub static SHORTCUT_SENT: LruHashMap<FlowKey, u64> = LruHashMap::pinned(capacity::SOCKS, 0);

#[map(name = "WARREN_LOCAL_ADDRS")]
pub static LOCAL_ADDRS: HashMap<IpKey, u32> = HashMap::pinned(capacity::LOCAL_ADDRS, 0);

#[map(name = "WARREN_GUARD")]
pub static GUARD: HashMap<u32, GuardEntry> = HashMap::pinned(capacity::GUARD, 0);

#[map(name = "WARREN_GUARD_PORTS")]
pub static GUARD_PORTS: HashMap<GuardPortKey, GuardEntry> =
    HashMap::pinned(capacity::GUARD_PORTS, 0);

#[map(name = "WARREN_POD_STATS")]
pub static POD_STATS: PerCpuHashMap<u64, PodStats> = PerCpuHashMap::pinned(capacity::ENROLLED, 0);

#[map(name = "WARREN_COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(Counter::COUNT, 0);

/// Written by user space only: which object's programs are installed.
#[map(name = "WARREN_META")]
pub static META: Array<u64> = Array::pinned(1, 0);

#[map(name = "WARREN_DNS_ORIG")]
pub static DNS_ORIG: LruHashMap<u64, SockAddr> = LruHashMap::pinned(capacity::DNS_ORIG, 0);

#[map(name = "WARREN_INBOUND")]
pub static INBOUND: SockHash<IpKey> = SockHash::pinned(capacity::INBOUND, 0);
