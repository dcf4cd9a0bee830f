//! Decoded views of a node's programs and maps, for `warrenctl` and logs.
//!
//! Maps are declared without BTF, so generic tools show them as hex; these
//! views decode every key and value with the shared types, from the pins
//! alone.

use std::{
    ffi::CStr,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, HashMap, MapInfo, PerCpuArray, PerCpuHashMap, SockHash},
    programs::{
        ProgramInfo,
        links::{FdLink, PinnedLink},
        loaded_programs,
    },
};
use serde::Serialize;
use serde_json::{Value, json};
use warren_ebpf_common::{
    AddrKind, Counter, EnrolledPod, FlowKey, GuardEntry, GuardPortKey, IpKey, Mode, NodeConfig,
    OrigDst, PodStats, PortKey, SockAddr, ip_of_words, map, program,
};

use super::{DatapathError, maps::Maps, pins::Pins};

/// One program attached or pinned by this node.
#[derive(Clone, Debug, Serialize)]
pub struct ProgRow {
    pub id: u32,
    pub name: String,
    pub kind: String,
    /// What holds it: `links/<name>` (a pinned attachment) or `progs/<name>`.
    pub pin: String,
    /// The kernel's link id when attached through a link.
    pub link_id: Option<u32>,
    /// For a guard link, the ifindex the kernel says it is attached to
    /// (0: its interface is gone).
    pub ifindex: Option<u32>,
}

/// One pinned map.
#[derive(Clone, Debug, Serialize)]
pub struct MapRow {
    pub id: u32,
    pub name: String,
    pub kind: String,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub entries: usize,
}

/// A map's decoded contents.
#[derive(Clone, Debug, Serialize)]
pub struct MapDump {
    pub name: String,
    pub entries: Vec<Entry>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    pub key: Value,
    pub value: Value,
}

/// An enrolled pod as `warrenctl bpf pods` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct PodRow {
    pub pod: String,
    pub netns_cookie: u64,
    pub ip: Option<Ipv4Addr>,
    pub veth: Option<String>,
    /// The veth's ifindex in the node's namespace (0 when not guarded).
    pub ifindex: u32,
    pub mode: String,
    pub redirected: u64,
    pub exempt: u64,
}

/// Programs behind this node's pins: pinned links first, then pinned
/// programs. A program attached twice would show twice.
pub fn programs(pins: &Pins) -> Result<Vec<ProgRow>, DatapathError> {
    let infos: Vec<ProgramInfo> = loaded_programs().filter_map(Result::ok).collect();
    // The kernel keeps 15 characters of a name; show the full one.
    let describe = |info: &ProgramInfo| {
        let short = info.name_as_str().unwrap_or("?");
        let name = program::ALL
            .iter()
            .find(|full| full.starts_with(short))
            .map_or(short, |full| *full);
        let kind = format!("{:?}", info.program_type());
        let kind = kind.trim_start_matches("BPF_PROG_TYPE_").to_lowercase();
        (name.to_owned(), kind)
    };
    let mut rows = Vec::new();
    for path in pin_files(&pins.links_dir())? {
        let link: FdLink = PinnedLink::from_pin(&path)
            .map_err(|e| DatapathError::Pod {
                pod: path.display().to_string(),
                reason: format!("not a pinned link: {e}"),
            })?
            .into();
        let Ok(info) = link.info() else { continue };
        let prog_id = info.program_id();
        let (name, kind) = infos
            .iter()
            .find(|p| p.id() == prog_id)
            .map_or(("?".into(), "?".into()), describe);
        let is_guard = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("guard_"));
        rows.push(ProgRow {
            id: prog_id,
            name,
            kind,
            pin: relative(pins, &path),
            link_id: Some(info.id()),
            ifindex: is_guard.then(|| super::link::tcx_link_ifindex(&path).unwrap_or(0)),
        });
    }
    for path in pin_files(&pins.progs_dir())? {
        let Ok(info) = ProgramInfo::from_pin(&path) else {
            continue;
        };
        let (name, kind) = describe(&info);
        rows.push(ProgRow {
            id: info.id(),
            name,
            kind,
            pin: relative(pins, &path),
            link_id: None,
            ifindex: None,
        });
    }
    Ok(rows)
}

/// Every pinned map with its shape and how many entries it holds.
pub fn maps(pins: &Pins, maps: &Maps) -> Result<Vec<MapRow>, DatapathError> {
    let mut rows = Vec::new();
    for &name in map::ALL {
        let info = MapInfo::from_pin(pins.map(name)).map_err(DatapathError::map(name))?;
        rows.push(MapRow {
            id: info.id(),
            name: name.to_owned(),
            kind: info
                .map_type()
                .map_or_else(|_| "?".to_owned(), |t| format!("{t:?}")),
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
            entries: dump(maps, name)?.entries.len(),
        });
    }
    Ok(rows)
}

/// Decoded contents of the map called `name`.
pub fn dump(maps: &Maps, name: &str) -> Result<MapDump, DatapathError> {
    let Some(&name) = map::ALL.iter().find(|n| n.eq_ignore_ascii_case(name)) else {
        return Err(DatapathError::Pod {
            pod: name.to_owned(),
            reason: format!("no such map; maps: {}", map::ALL.join(", ")),
        });
    };
    let m = maps.get(name);
    let err = DatapathError::map(name);
    let mut entries = Vec::new();
    match name {
        map::ENROLLED => {
            let h: HashMap<_, u64, EnrolledPod> = HashMap::try_from(m).map_err(err)?;
            for (cookie, pod) in h.iter().filter_map(Result::ok) {
                entries.push(Entry {
                    key: json!({ "netns_cookie": cookie }),
                    value: json!({
                        "pod": pod_name(&pod),
                        "ip": ipv4(pod.ip4),
                        "ifindex": pod.ifindex,
                        "mode": mode_name(pod.mode),
                    }),
                });
            }
        }
        map::CONFIG => {
            let a: Array<_, NodeConfig> = Array::try_from(m).map_err(err)?;
            for (i, cfg) in a.iter().filter_map(Result::ok).enumerate() {
                let ztunnel = (cfg.ztunnel_port != 0).then(|| {
                    SocketAddr::new(IpAddr::V4(ipv4(cfg.ztunnel_ip4)), cfg.ztunnel_port).to_string()
                });
                entries.push(Entry {
                    key: json!(i),
                    value: json!({ "ztunnel": ztunnel, "mark": format!("{:#x}", cfg.mark) }),
                });
            }
        }
        map::EXCLUDED_PORTS => {
            let h: HashMap<_, PortKey, u8> = HashMap::try_from(m).map_err(err)?;
            for key in h.keys().filter_map(Result::ok) {
                entries.push(Entry {
                    key: json!({ "netns_cookie": key.netns_cookie, "port": key.port }),
                    value: json!("excluded"),
                });
            }
        }
        map::ORIG_DST => {
            let h: HashMap<_, u64, OrigDst> = HashMap::try_from(m).map_err(err)?;
            for (cookie, orig) in h.iter().filter_map(Result::ok) {
                entries.push(Entry {
                    key: json!({ "socket_cookie": cookie }),
                    value: orig_json(&orig),
                });
            }
        }
        map::ORIG_DST_BY_FLOW => {
            let h: HashMap<_, FlowKey, OrigDst> = HashMap::try_from(m).map_err(err)?;
            for (flow, orig) in h.iter().filter_map(Result::ok) {
                entries.push(Entry {
                    key: json!(flow_string(&flow)),
                    value: orig_json(&orig),
                });
            }
        }
        map::SOCKS => {
            let h: SockHash<_, FlowKey> = SockHash::try_from(m).map_err(err)?;
            for flow in h.keys().filter_map(Result::ok) {
                entries.push(Entry {
                    key: json!(flow_string(&flow)),
                    value: json!("socket"),
                });
            }
        }
        map::SHORTCUT_SENT => {
            let h: HashMap<_, FlowKey, u64> = HashMap::try_from(m).map_err(err)?;
            for (flow, sent) in h.iter().filter_map(Result::ok) {
                entries.push(Entry {
                    key: json!(flow_string(&flow)),
                    value: json!({ "bytes_sent_at_most": sent }),
                });
            }
        }
        map::LOCAL_ADDRS => {
            let h: HashMap<_, IpKey, u32> = HashMap::try_from(m).map_err(err)?;
            for (ip, kind) in h.iter().filter_map(Result::ok) {
                let kind = match kind {
                    k if k == AddrKind::Node as u32 => "node",
                    k if k == AddrKind::Pod as u32 => "pod",
                    _ => "?",
                };
                entries.push(Entry {
                    key: json!(ip_of(ip.family, &ip.addr).to_string()),
                    value: json!(kind),
                });
            }
        }
        map::GUARD => {
            let h: HashMap<_, u32, GuardEntry> = HashMap::try_from(m).map_err(err)?;
            for (ifindex, entry) in h.iter().filter_map(Result::ok) {
                entries.push(Entry {
                    key: json!({ "ifindex": ifindex, "ifname": ifname(ifindex) }),
                    value: json!(mode_name(entry.mode)),
                });
            }
        }
        map::GUARD_PORTS => {
            let h: HashMap<_, GuardPortKey, GuardEntry> = HashMap::try_from(m).map_err(err)?;
            for (key, entry) in h.iter().filter_map(Result::ok) {
                entries.push(Entry {
                    key: json!({ "ifindex": key.ifindex, "ifname": ifname(key.ifindex), "port": key.port }),
                    value: json!(mode_name(entry.mode)),
                });
            }
        }
        map::POD_STATS => {
            let h: PerCpuHashMap<_, u64, PodStats> = PerCpuHashMap::try_from(m).map_err(err)?;
            for (cookie, per_cpu) in h.iter().filter_map(Result::ok) {
                let s = sum_stats(per_cpu.iter());
                entries.push(Entry {
                    key: json!({ "netns_cookie": cookie }),
                    value: json!({ "redirected": s.redirected, "exempt": s.exempt }),
                });
            }
        }
        map::COUNTERS => {
            let a: PerCpuArray<_, u64> = PerCpuArray::try_from(m).map_err(err)?;
            for &counter in Counter::ALL {
                let v: u64 = a
                    .get(&(counter as u32), 0)
                    .map_err(DatapathError::map(map::COUNTERS))?
                    .iter()
                    .sum();
                entries.push(Entry {
                    key: json!(counter.name()),
                    value: json!(v),
                });
            }
        }
        _ => {}
    }
    Ok(MapDump {
        name: name.to_owned(),
        entries,
    })
}

/// Enrolled pods joined with their stats.
pub fn pods(maps: &Maps) -> Result<Vec<PodRow>, DatapathError> {
    let enrolled: HashMap<_, u64, EnrolledPod> =
        HashMap::try_from(maps.get(map::ENROLLED)).map_err(DatapathError::map(map::ENROLLED))?;
    let stats: PerCpuHashMap<_, u64, PodStats> = PerCpuHashMap::try_from(maps.get(map::POD_STATS))
        .map_err(DatapathError::map(map::POD_STATS))?;
    let mut rows: Vec<PodRow> = enrolled
        .iter()
        .filter_map(Result::ok)
        .map(|(cookie, pod)| {
            let s = stats
                .get(&cookie, 0)
                .map(|v| sum_stats(v.iter()))
                .unwrap_or_default();
            PodRow {
                pod: pod_name(&pod),
                netns_cookie: cookie,
                ip: (pod.ip4 != 0).then(|| ipv4(pod.ip4)),
                veth: (pod.ifindex != 0).then(|| stored_ifname(&pod)),
                ifindex: pod.ifindex,
                mode: mode_name(pod.mode).to_owned(),
                redirected: s.redirected,
                exempt: s.exempt,
            }
        })
        .collect();
    rows.sort_by(|a, b| a.pod.cmp(&b.pod));
    Ok(rows)
}

/// The veth name recorded at enrollment (a name resolved here could belong
/// to another namespace's interface with the same index).
fn stored_ifname(pod: &EnrolledPod) -> String {
    let end = pod
        .ifname
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(pod.ifname.len());
    match &pod.ifname[..end] {
        [] => format!("ifindex {}", pod.ifindex),
        name => String::from_utf8_lossy(name).into_owned(),
    }
}

/// The `namespace/name` stored with an enrolled pod.
pub fn pod_name(pod: &EnrolledPod) -> String {
    let end = pod
        .name
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(pod.name.len());
    String::from_utf8_lossy(&pod.name[..end]).into_owned()
}

/// The name of interface `ifindex` in this thread's namespace.
pub fn ifname(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer is IF_NAMESIZE bytes, as if_indextoname requires.
    let ptr = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if ptr.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    Some(
        unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
    )
}

fn sum_stats<'a>(per_cpu: impl Iterator<Item = &'a PodStats>) -> PodStats {
    per_cpu.fold(PodStats::default(), |acc, s| PodStats {
        redirected: acc.redirected + s.redirected,
        exempt: acc.exempt + s.exempt,
    })
}

fn mode_name(mode: u32) -> &'static str {
    Mode::from_u32(mode).map_or("?", Mode::name)
}

fn ipv4(be: u32) -> Ipv4Addr {
    Ipv4Addr::from(be.to_ne_bytes())
}

fn ip_of(family: u32, addr: &[u32; 4]) -> IpAddr {
    ip_of_words(family, addr).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// A socket address in kernel layout as a std one.
pub fn socket_addr(addr: &SockAddr) -> SocketAddr {
    addr.to_socket_addr()
        .unwrap_or_else(|| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), addr.port))
}

fn orig_json(orig: &OrigDst) -> Value {
    json!({ "dst": socket_addr(&orig.dst).to_string(), "netns_cookie": orig.netns_cookie })
}

fn flow_string(flow: &FlowKey) -> String {
    let src = SocketAddr::new(ip_of(flow.family, &flow.src), flow.src_port);
    let dst = SocketAddr::new(ip_of(flow.family, &flow.dst), flow.dst_port);
    format!("{src} -> {dst}")
}

fn pin_files(dir: &Path) -> Result<Vec<PathBuf>, DatapathError> {
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            let mut files: Vec<PathBuf> =
                entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
            files.sort();
            Ok(files)
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(err) => Err(DatapathError::io("reading", dir)(err)),
    }
}

fn relative(pins: &Pins, path: &Path) -> String {
    path.strip_prefix(pins.root())
        .unwrap_or(path)
        .display()
        .to_string()
}
