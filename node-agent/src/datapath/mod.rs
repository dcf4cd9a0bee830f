//! The eBPF datapath as user space sees it.
//!
//! [`Datapath`] is the only owner of the node's kernel objects: it installs
//! (or adopts) the programs, and reads and writes the maps. Everything else
//! in the agent, and `warrenctl`, goes through it.
//!
//! - `install`: load, attach and pin; adopt an earlier installation.
//! - `maps`: the maps, opened from their pins.
//! - `enroll`: netns cookies, veth guards.
//! - `inspect`: decoded views of programs and maps for debugging.

mod counters;
mod enroll;
mod error;
pub mod inspect;
mod install;
mod link;
mod maps;
mod object;
pub mod pins;

use std::{
    net::{IpAddr, Ipv4Addr},
    path::Path,
};

use aya::maps::{Array, HashMap, PerCpuHashMap, PerCpuValues, SockHash};
use tracing::info;
use warren_ebpf_common::{
    AddrKind, EnrolledPod, GuardEntry, GuardPortKey, IpKey, Mode, NodeConfig, PodStats, PortKey,
    ZTUNNEL_MARK, map,
};

pub use counters::Counters;
pub use enroll::{PodEnrollment, netns_cookie};
pub use error::DatapathError;
pub use install::{Installed, uninstall};
use maps::Maps;
use pins::Pins;

/// Where the node's ztunnel takes captured connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Redirect {
    /// ztunnel's outbound listener as pods reach it.
    pub ip4: Ipv4Addr,
    /// The same over IPv6; without it, IPv6 connects are not captured.
    pub ip6: Option<std::net::Ipv6Addr>,
    pub port: u16,
    /// ztunnel's DNS proxy on `ip4`; without it pods' DNS goes where they send it.
    pub dns_port: Option<u16>,
}

/// One node's installed datapath.
pub struct Datapath {
    pins: Pins,
    maps: Maps,
    /// Whether enrolled pods' inbound connections from outside the mesh go
    /// to ztunnel ([`Datapath::set_inbound_capture`]).
    inbound_capture: bool,
}

impl Datapath {
    /// Installs the programs on `cgroup` (the node's cgroup subtree), or
    /// adopts an earlier installation pinned at `pin_root`.
    pub fn install(pin_root: &Path, cgroup: &Path) -> Result<(Self, Installed), DatapathError> {
        let pins = Pins::new(pin_root);
        let installed = install::install(&pins, cgroup)?;
        let maps = Maps::open(&pins)?;
        let datapath = Self {
            pins,
            maps,
            inbound_capture: true,
        };
        Ok((datapath, installed))
    }

    /// Opens an installed datapath from its pins alone (no programs loaded).
    pub fn open(pin_root: &Path) -> Result<Self, DatapathError> {
        let pins = Pins::new(pin_root);
        let maps = Maps::open(&pins)?;
        Ok(Self {
            pins,
            maps,
            inbound_capture: true,
        })
    }

    pub fn pins(&self) -> &Pins {
        &self.pins
    }

    /// Whether pods enrolled from now on (and enrolled again) have their
    /// connections from outside the mesh handed to ztunnel's plaintext
    /// inbound listener (on by default); `false` only for testing the
    /// datapath without ztunnel.
    pub fn set_inbound_capture(&mut self, on: bool) {
        self.inbound_capture = on;
    }

    /// Points capture at ztunnel (`None` turns capture off: connects then
    /// go out untouched) and turns the socket shortcut on or off for
    /// connections established from now on.
    pub fn configure(
        &mut self,
        redirect: Option<Redirect>,
        shortcut: bool,
    ) -> Result<(), DatapathError> {
        let value = NodeConfig {
            ztunnel_ip4: redirect.map_or(0, |r| u32::from(r.ip4).to_be()),
            ztunnel_ip6: redirect.and_then(|r| r.ip6).map_or([0; 4], |ip6| {
                warren_ebpf_common::words_of(IpAddr::V6(ip6)).1
            }),
            ztunnel_port: redirect.map_or(0, |r| r.port),
            shortcut: u16::from(shortcut),
            mark: ZTUNNEL_MARK,
            dns_port: redirect.and_then(|r| r.dns_port).unwrap_or(0),
            _pad: 0,
        };
        let mut config: Array<_, NodeConfig> = Array::try_from(self.maps.get_mut(map::CONFIG))
            .map_err(DatapathError::map(map::CONFIG))?;
        config
            .set(0, value, 0)
            .map_err(DatapathError::map(map::CONFIG))
    }

    /// Records an address of this node or of one of its pods: the STRICT
    /// guard admits connections from node addresses; sockets whose peer has a
    /// local address may use the shortcut.
    pub fn add_local_addr(&mut self, ip: IpAddr, kind: AddrKind) -> Result<(), DatapathError> {
        let mut addrs: HashMap<_, IpKey, u32> =
            HashMap::try_from(self.maps.get_mut(map::LOCAL_ADDRS))
                .map_err(DatapathError::map(map::LOCAL_ADDRS))?;
        addrs
            .insert(IpKey::from_ip(ip), kind as u32, 0)
            .map_err(DatapathError::map(map::LOCAL_ADDRS))
    }

    pub fn remove_local_addr(&mut self, ip: IpAddr) -> Result<(), DatapathError> {
        let mut addrs: HashMap<_, IpKey, u32> =
            HashMap::try_from(self.maps.get_mut(map::LOCAL_ADDRS))
                .map_err(DatapathError::map(map::LOCAL_ADDRS))?;
        ignore_missing(addrs.remove(&IpKey::from_ip(ip)))
            .map_err(DatapathError::map(map::LOCAL_ADDRS))
    }

    /// Enrolls a pod (or updates its enrollment) and returns its netns
    /// cookie. Capture starts last, once the guard, exclusions and stats are
    /// in place. Must run in the node's network namespace when the pod has a
    /// veth to guard. Re-enrolling keeps the pod's counters.
    pub fn enroll(&mut self, pod: &PodEnrollment) -> Result<u64, DatapathError> {
        let cookie = netns_cookie(&pod.netns)?;
        let ifindex = match &pod.host_veth {
            Some(veth) => {
                let index = enroll::ifindex(&pod.name, veth)?;
                // Ports first: the pod's entry is what makes the guard act.
                self.set_guard_ports(index, &pod.port_modes)?;
                let strict_port = pod.port_modes.iter().any(|(_, m)| *m == Mode::Strict);
                let mut guard: HashMap<_, u32, GuardEntry> =
                    HashMap::try_from(self.maps.get_mut(map::GUARD))
                        .map_err(DatapathError::map(map::GUARD))?;
                guard
                    .insert(
                        index,
                        GuardEntry {
                            mode: pod.mode as u32,
                            strict_port: u32::from(strict_port),
                        },
                        0,
                    )
                    .map_err(DatapathError::map(map::GUARD))?;
                enroll::attach_guard(&self.pins, &pod.name, veth)?;
                index
            }
            None => 0,
        };
        if let Some(ip) = pod.ip4 {
            self.add_local_addr(IpAddr::V4(ip), AddrKind::Pod)?;
        }
        {
            let mut stats: PerCpuHashMap<_, u64, PodStats> =
                PerCpuHashMap::try_from(self.maps.get_mut(map::POD_STATS))
                    .map_err(DatapathError::map(map::POD_STATS))?;
            if stats.get(&cookie, 0).is_err() {
                let zeros = PerCpuValues::try_from(vec![
                    PodStats::default();
                    aya::util::nr_cpus().map_err(
                        |(_, e)| DatapathError::io(
                            "counting CPUs",
                            "/sys/devices/system/cpu/possible"
                        )(e)
                    )?
                ])
                .map_err(DatapathError::io(
                    "sizing per-CPU values",
                    "/sys/devices/system/cpu/possible",
                ))?;
                stats
                    .insert(cookie, zeros, 0)
                    .map_err(DatapathError::map(map::POD_STATS))?;
            }
        }
        self.set_excluded_ports(cookie, &pod.excluded_ports)?;
        // Connections from outside the mesh go to ztunnel's plaintext inbound
        // listener (which ztunnel makes in the pod's namespace).
        if !self.inbound_capture {
            enroll::detach_inbound(&self.pins, cookie)?;
        }
        let mut enrolled: HashMap<_, u64, EnrolledPod> =
            HashMap::try_from(self.maps.get_mut(map::ENROLLED))
                .map_err(DatapathError::map(map::ENROLLED))?;
        enrolled
            .insert(cookie, enroll::enrolled_value(pod, ifindex), 0)
            .map_err(DatapathError::map(map::ENROLLED))?;
        info!(pod = %pod.name, netns_cookie = cookie, mode = pod.mode.name(), "pod enrolled");
        Ok(cookie)
    }

    /// The pod addresses ztunnel has registered a plaintext inbound listener
    /// for (in the `INBOUND` SOCKHASH).
    pub fn inbound_listeners(&self) -> Result<std::collections::BTreeSet<IpAddr>, DatapathError> {
        let listeners: SockHash<_, IpKey> = SockHash::try_from(self.maps.get(map::INBOUND))
            .map_err(DatapathError::map(map::INBOUND))?;
        Ok(listeners
            .keys()
            .filter_map(Result::ok)
            .filter_map(|key| key.to_ip())
            .collect())
    }

    /// Turns the inbound capture on for the enrolled pod of this cookie, once
    /// ztunnel listens for it (`listening`, from [`Datapath::inbound_listeners`]):
    /// attaching it before would refuse the pod's plaintext clients (a ztunnel
    /// not up yet, or of a version without the capture). Returns whether the
    /// capture is on.
    pub fn capture_inbound(
        &mut self,
        pod: &PodEnrollment,
        cookie: u64,
        listening: &std::collections::BTreeSet<IpAddr>,
    ) -> Result<bool, DatapathError> {
        if !self.inbound_capture {
            return Ok(false);
        }
        let Some(ip) = pod.ip4 else {
            return Ok(false);
        };
        if !listening.contains(&IpAddr::V4(ip)) {
            return Ok(false);
        }
        enroll::attach_inbound(&self.pins, &pod.name, &pod.netns, cookie)?;
        Ok(true)
    }

    /// Stops capturing new connections of the pod with this netns cookie;
    /// its established connections carry on. Removes its guard, exclusions
    /// and stats. Must run in the node's namespace if the pod had a guard.
    pub fn unenroll(&mut self, cookie: u64) -> Result<(), DatapathError> {
        let mut enrolled: HashMap<_, u64, EnrolledPod> =
            HashMap::try_from(self.maps.get_mut(map::ENROLLED))
                .map_err(DatapathError::map(map::ENROLLED))?;
        let Ok(pod) = enrolled.get(&cookie, 0) else {
            return Ok(());
        };
        enrolled
            .remove(&cookie)
            .map_err(DatapathError::map(map::ENROLLED))?;
        self.set_excluded_ports(cookie, &[])?;
        enroll::detach_inbound(&self.pins, cookie)?;
        if pod.ifindex != 0 {
            let mut guard: HashMap<_, u32, GuardEntry> =
                HashMap::try_from(self.maps.get_mut(map::GUARD))
                    .map_err(DatapathError::map(map::GUARD))?;
            ignore_missing(guard.remove(&pod.ifindex)).map_err(DatapathError::map(map::GUARD))?;
            enroll::detach_guards(&self.pins, pod.ifindex)?;
            self.set_guard_ports(pod.ifindex, &[])?;
        }
        let mut stats: PerCpuHashMap<_, u64, PodStats> =
            PerCpuHashMap::try_from(self.maps.get_mut(map::POD_STATS))
                .map_err(DatapathError::map(map::POD_STATS))?;
        ignore_missing(stats.remove(&cookie)).map_err(DatapathError::map(map::POD_STATS))?;
        if pod.ip4 != 0 {
            // Out of the shortcut's local set too: the map is bounded, and
            // the address may next belong to a pod on another node.
            self.remove_local_addr(IpAddr::V4(Ipv4Addr::from(u32::from_be(pod.ip4))))?;
        }
        info!(pod = %inspect::pod_name(&pod), netns_cookie = cookie, "pod unenrolled");
        Ok(())
    }

    /// Replaces the per-port modes of the pod behind veth `ifindex`.
    fn set_guard_ports(
        &mut self,
        ifindex: u32,
        ports: &[(u16, Mode)],
    ) -> Result<(), DatapathError> {
        let mut map: HashMap<_, GuardPortKey, GuardEntry> =
            HashMap::try_from(self.maps.get_mut(map::GUARD_PORTS))
                .map_err(DatapathError::map(map::GUARD_PORTS))?;
        let stale: Vec<GuardPortKey> = map
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.ifindex == ifindex && !ports.iter().any(|(p, _)| *p == k.port))
            .collect();
        for key in stale {
            ignore_missing(map.remove(&key)).map_err(DatapathError::map(map::GUARD_PORTS))?;
        }
        for &(port, mode) in ports {
            let key = GuardPortKey {
                ifindex,
                port,
                _pad: 0,
            };
            let entry = GuardEntry {
                mode: mode as u32,
                strict_port: 0,
            };
            map.insert(key, entry, 0)
                .map_err(DatapathError::map(map::GUARD_PORTS))?;
        }
        Ok(())
    }

    /// Replaces the pod's excluded destination ports.
    fn set_excluded_ports(&mut self, cookie: u64, ports: &[u16]) -> Result<(), DatapathError> {
        let mut excluded: HashMap<_, PortKey, u8> =
            HashMap::try_from(self.maps.get_mut(map::EXCLUDED_PORTS))
                .map_err(DatapathError::map(map::EXCLUDED_PORTS))?;
        let stale: Vec<PortKey> = excluded
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.netns_cookie == cookie && !ports.contains(&k.port))
            .collect();
        for key in stale {
            ignore_missing(excluded.remove(&key))
                .map_err(DatapathError::map(map::EXCLUDED_PORTS))?;
        }
        for &port in ports {
            let key = PortKey {
                netns_cookie: cookie,
                port,
                _pad: [0; 6],
            };
            excluded
                .insert(key, 1, 0)
                .map_err(DatapathError::map(map::EXCLUDED_PORTS))?;
        }
        Ok(())
    }

    /// Event counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, DatapathError> {
        Counters::read(self.maps.get(map::COUNTERS))
    }

    /// Enrolled pods with their per-pod counters.
    pub fn pods(&self) -> Result<Vec<inspect::PodRow>, DatapathError> {
        inspect::pods(&self.maps)
    }

    /// Every map with its shape and entry count.
    pub fn map_rows(&self) -> Result<Vec<inspect::MapRow>, DatapathError> {
        inspect::maps(&self.pins, &self.maps)
    }

    /// Decoded contents of one map, by name.
    pub fn dump(&self, name: &str) -> Result<inspect::MapDump, DatapathError> {
        inspect::dump(&self.maps, name)
    }

    /// The pod mode the guard enforces on `ifindex`, if any.
    pub fn guard_mode(&self, ifindex: u32) -> Result<Option<Mode>, DatapathError> {
        let guard: HashMap<_, u32, GuardEntry> =
            HashMap::try_from(self.maps.get(map::GUARD)).map_err(DatapathError::map(map::GUARD))?;
        Ok(guard
            .get(&ifindex, 0)
            .ok()
            .and_then(|e| Mode::from_u32(e.mode)))
    }
}

/// Removing what is already gone is not an error.
/// aya reports a missing key as `KeyNotFound` on lookups but as the raw
/// `ENOENT` of `bpf_map_delete_elem` on deletes.
fn ignore_missing(result: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match result {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        other => other,
    }
}
