//! Finding a pod's network namespace and veth on a Kubernetes node.
//!
//! In local mode the testbed writes both onto the Pod as annotations. On a
//! cluster nothing does: the agent (a DaemonSet with the host's PID and network
//! namespaces) finds them from the pod's UID, as kubelet leaves them.
//!
//! - Kubelet puts every container of a pod in a cgroup named after the pod's
//!   UID: `…/pod<uid>/…` with the cgroupfs driver, `…/kubepods-<qos>-pod<uid>.slice/…`
//!   (dashes turned to underscores) with the systemd driver. Any process there
//!   is in the pod's network namespace; the lowest PID is usually the sandbox
//!   ("pause"), which lives as long as the pod.
//! - The container runtime keeps the namespace bind-mounted under `/run/netns/`
//!   (`cni-…`). That path outlives any one process, so it is preferred to
//!   `/proc/<pid>/ns/net` when one has the same inode.
//! - The pod's end of its veth names its peer's ifindex in the other namespace
//!   (`IFLA_LINK` with `IFLA_LINK_NETNSID`); the node's end must point back at it.

use std::{
    collections::HashMap,
    fs::File,
    io,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use tracing::debug;

/// Where a pod's network lives on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sandbox {
    /// The pod's network namespace: a runtime's bind mount, else `/proc/<pid>/ns/net`.
    pub netns: PathBuf,
    /// The node's end of the pod's veth, when there is exactly one such pair.
    pub host_veth: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "no process in a cgroup of pod UID {0} (not started yet, or the agent cannot see the host's processes: hostPID)"
    )]
    NotRunning(String),
    #[error("pod UID {0} shares the node's network namespace (hostNetwork): not captured")]
    HostNetwork(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// Finds pods' sandboxes by UID. The paths are fields so tests can point them
/// at their own folders.
#[derive(Clone, Debug)]
pub struct Locator {
    /// The host's `/proc` (the agent runs with `hostPID`).
    pub proc: PathBuf,
    /// Where runtimes bind-mount network namespaces.
    pub netns_dirs: Vec<PathBuf>,
}

impl Default for Locator {
    fn default() -> Self {
        Locator {
            proc: PathBuf::from("/proc"),
            netns_dirs: vec![PathBuf::from("/run/netns"), PathBuf::from("/var/run/netns")],
        }
    }
}

impl Locator {
    /// The sandbox of the pod with `uid`, as seen from the calling thread's
    /// network namespace (the node's).
    pub fn find(&self, uid: &str) -> Result<Sandbox, SandboxError> {
        let pid = self
            .pids_of(uid)?
            .into_iter()
            .min()
            .ok_or_else(|| SandboxError::NotRunning(uid.to_owned()))?;
        let proc_netns = self.proc.join(pid.to_string()).join("ns/net");
        let theirs = namespace_id(&proc_netns)?;
        if theirs == namespace_id(&self.proc.join("thread-self/ns/net"))? {
            return Err(SandboxError::HostNetwork(uid.to_owned()));
        }
        let netns = self.bind_mount_of(theirs).unwrap_or(proc_netns);
        let host_veth = match host_veth(&netns) {
            Ok(veth) => veth,
            Err(error) => {
                debug!(%uid, netns = %netns.display(), %error, "no veth found for the pod");
                None
            }
        };
        Ok(Sandbox { netns, host_veth })
    }

    /// Processes whose cgroup is, or is under, the pod's.
    fn pids_of(&self, uid: &str) -> Result<Vec<u32>, SandboxError> {
        let entries = std::fs::read_dir(&self.proc).map_err(|source| SandboxError::Io {
            what: "listing",
            path: self.proc.clone(),
            source,
        })?;
        let systemd = uid.replace('-', "_");
        let mut pids = Vec::new();
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            // Processes come and go while we look: one gone is not an error.
            let Ok(cgroups) = std::fs::read_to_string(entry.path().join("cgroup")) else {
                continue;
            };
            let in_pod = cgroups
                .lines()
                .filter_map(|line| line.splitn(3, ':').nth(2))
                .any(|path| path.split('/').any(|part| names_pod(part, uid, &systemd)));
            if in_pod {
                pids.push(pid);
            }
        }
        Ok(pids)
    }

    /// A runtime's bind mount of the namespace `id`, if there is one.
    fn bind_mount_of(&self, id: (u64, u64)) -> Option<PathBuf> {
        self.netns_dirs
            .iter()
            .filter_map(|dir| std::fs::read_dir(dir).ok())
            .flat_map(|entries| entries.flatten())
            .map(|entry| entry.path())
            .find(|path| namespace_id(path).is_ok_and(|other| other == id))
    }
}

/// Whether a cgroup path component is the pod's own: `pod<uid>` (cgroupfs
/// driver) or `kubepods[-<qos>]-pod<uid_with_underscores>.slice` (systemd).
fn names_pod(part: &str, uid: &str, systemd: &str) -> bool {
    if part.strip_prefix("pod") == Some(uid) {
        return true;
    }
    part.strip_suffix(".slice")
        .and_then(|slice| slice.strip_suffix(systemd))
        .is_some_and(|prefix| prefix.starts_with("kubepods") && prefix.ends_with("-pod"))
}

/// A namespace's identity: the device and inode of its nsfs file.
fn namespace_id(path: &Path) -> Result<(u64, u64), SandboxError> {
    let meta = std::fs::metadata(path).map_err(|source| SandboxError::Io {
        what: "reading",
        path: path.to_owned(),
        source,
    })?;
    Ok((meta.dev(), meta.ino()))
}

/// One interface as route netlink describes it.
#[derive(Debug)]
struct Link {
    index: u32,
    name: String,
    /// The peer's ifindex, for a veth (in the namespace `peer_netns` names).
    peer: Option<u32>,
    /// Set when the peer lives in another namespace.
    peer_netns: Option<i32>,
}

/// The node's end of the pod's veth: the pod's interface whose peer is in
/// another namespace, and the interface here with that index pointing back.
fn host_veth(netns: &Path) -> io::Result<Option<String>> {
    let file = File::open(netns)?;
    // setns changes only the calling thread: do it on a thread of its own.
    let theirs = std::thread::spawn(move || -> io::Result<Vec<Link>> {
        // SAFETY: setns on a valid namespace fd; affects this thread only.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        links()
    })
    .join()
    .map_err(|_| io::Error::other("the thread listing the pod's interfaces panicked"))??;
    let ours = links()?;
    let mut found = theirs
        .iter()
        .filter(|pod_end| pod_end.peer_netns.is_some())
        .filter_map(|pod_end| {
            ours.iter().find(|node_end| {
                Some(node_end.index) == pod_end.peer
                    && node_end.peer == Some(pod_end.index)
                    && node_end.peer_netns.is_some()
            })
        });
    let first = found.next();
    // Several veths (a pod with more than one network): the guard cannot tell
    // which one carries the mesh, so none is guarded rather than a wrong one.
    if found.next().is_some() {
        return Ok(None);
    }
    Ok(first.map(|link| link.name.clone()))
}

/// Every interface of the calling thread's network namespace.
fn links() -> io::Result<Vec<Link>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut request = NetlinkMessage::from(RouteNetlinkMessage::GetLink(LinkMessage::default()));
    request.header.flags = NLM_F_DUMP | NLM_F_REQUEST;
    request.header.sequence_number = 1;
    request.finalize();
    let mut buf = vec![0; request.buffer_len()];
    request.serialize(&mut buf);
    socket.send(&buf, 0)?;

    let mut links = Vec::new();
    loop {
        let (datagram, _) = socket.recv_from_full()?;
        let mut rest = &datagram[..];
        while !rest.is_empty() {
            let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = (message.header.length as usize).min(rest.len());
            if len == 0 {
                break;
            }
            rest = &rest[len..];
            match message.payload {
                NetlinkPayload::Done(_) => return Ok(links),
                NetlinkPayload::Error(error) => {
                    return Err(error.to_io());
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                    links.push(Link::from(link));
                }
                _ => {}
            }
        }
    }
}

impl From<LinkMessage> for Link {
    fn from(message: LinkMessage) -> Self {
        let mut link = Link {
            index: message.header.index,
            name: String::new(),
            peer: None,
            peer_netns: None,
        };
        for attribute in message.attributes {
            match attribute {
                LinkAttribute::IfName(name) => link.name = name,
                LinkAttribute::Link(peer) => link.peer = Some(peer),
                LinkAttribute::LinkNetNsId(id) => link.peer_netns = Some(id),
                _ => {}
            }
        }
        link
    }
}

/// Sandboxes found, by pod UID, so a reconcile does not scan `/proc` again for
/// pods it already knows. An entry is dropped when its namespace path is gone.
#[derive(Debug, Default)]
pub struct Sandboxes {
    locator: Locator,
    known: HashMap<Box<str>, Sandbox>,
}

impl Sandboxes {
    pub fn new(locator: Locator) -> Self {
        Sandboxes {
            locator,
            known: HashMap::new(),
        }
    }

    pub fn find(&mut self, uid: &str) -> Result<Sandbox, SandboxError> {
        if let Some(known) = self.known.get(uid) {
            if known.netns.exists() {
                return Ok(known.clone());
            }
            self.known.remove(uid);
        }
        let found = self.locator.find(uid)?;
        self.known.insert(uid.into(), found.clone());
        Ok(found)
    }

    /// Forgets pods not in `live`.
    pub fn retain<'a>(&mut self, live: impl IntoIterator<Item = &'a str>) {
        let live: std::collections::HashSet<&str> = live.into_iter().collect();
        self.known.retain(|uid, _| live.contains(&**uid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "6f1c2d3e-0a1b-4c5d-8e9f-001122334455";

    #[test]
    fn kubelets_cgroup_names_for_a_pod_are_recognised() {
        let systemd = UID.replace('-', "_");
        for part in [
            format!("pod{UID}"),
            format!("kubepods-besteffort-pod{systemd}.slice"),
            format!("kubepods-burstable-pod{systemd}.slice"),
            format!("kubepods-pod{systemd}.slice"),
        ] {
            assert!(names_pod(&part, UID, &systemd), "{part}");
        }
        for part in [
            format!("pod{UID}x"),
            format!("xpod{UID}"),
            format!("kubepods-besteffort-pod{systemd}x.slice"),
            format!("other-pod{systemd}.slice"),
            format!("kubepods-besteffort-pod{UID}.slice"),
            "kubepods.slice".to_owned(),
        ] {
            assert!(!names_pod(&part, UID, &systemd), "{part}");
        }
    }
}
