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
    io,
    net::IpAddr,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use tracing::{debug, warn};

use crate::enrollment::SandboxReport;

/// Where a pod's network lives on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sandbox {
    /// The pod's network namespace: a runtime's bind mount, else `/proc/<pid>/ns/net`.
    pub netns: PathBuf,
    /// The node's end of the pod's veth, when there is exactly one such pair.
    pub host_veth: Option<String>,
    /// The pod's addresses as the container runtime reported them through the CNI
    /// plugin, before kubelet writes them into the Pod's status; empty when the
    /// sandbox was found by a scan.
    pub addresses: Vec<IpAddr>,
    /// The runtime's ID of the sandbox, when the runtime reported it (CNI).
    pub container_id: Option<String>,
    /// The namespace's identity when found: a path that later opens another one (a
    /// PID reused) is not taken for it.
    namespace: (u64, u64),
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "no process in a cgroup of pod UID {0} (not started yet, or the agent cannot see the host's processes: hostPID)"
    )]
    NotRunning(String),
    #[error("pod UID {0} shares the node's network namespace (hostNetwork): not captured")]
    HostNetwork(String),
    #[error("{0} is not a network namespace")]
    NotANamespace(PathBuf),
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

/// The PIDs in each pod's cgroup, lowest first, by pod UID: one pass over `/proc`.
pub type Processes = HashMap<String, Vec<u32>>;

impl Locator {
    /// The sandbox of the pod with `uid`, as seen from the calling thread's
    /// network namespace (the node's).
    pub fn find(&self, uid: &str) -> Result<Sandbox, SandboxError> {
        self.find_in(&self.processes()?, uid)
    }

    /// [`Locator::find`] with the processes of an earlier [`Locator::processes`]:
    /// many pods found at the cost of one scan.
    pub fn find_in(&self, processes: &Processes, uid: &str) -> Result<Sandbox, SandboxError> {
        let pids = processes
            .get(uid)
            .ok_or_else(|| SandboxError::NotRunning(uid.to_owned()))?;
        let host = self.host_namespace()?;
        // The lowest PID is usually the sandbox ("pause"). Some runtimes put a
        // monitor in the pod's cgroup but in the node's namespace (CRI-O's conmon
        // with `conmon_cgroup = pod`): the first process in another namespace is
        // the pod's. Processes gone meanwhile are skipped.
        let found = pids.iter().find_map(|pid| {
            let path = self.proc.join(pid.to_string()).join("ns/net");
            namespace_id(&path)
                .ok()
                .filter(|id| *id != host)
                .map(|id| (path, id))
        });
        let Some((proc_netns, theirs)) = found else {
            return Err(SandboxError::HostNetwork(uid.to_owned()));
        };
        let netns = self.bind_mount_of(theirs).unwrap_or(proc_netns);
        let host_veth = match host_veth(&netns) {
            Ok(veth) => veth,
            Err(error) => {
                debug!(%uid, netns = %netns.display(), %error, "no veth found for the pod");
                None
            }
        };
        Ok(Sandbox {
            netns,
            host_veth,
            addresses: Vec::new(),
            container_id: None,
            namespace: theirs,
        })
    }

    /// The sandbox the container runtime reports (through the CNI plugin) for a pod
    /// it is starting: its namespace is the runtime's own, so no scan is needed.
    pub fn reported(
        &self,
        netns: &Path,
        addresses: Vec<IpAddr>,
        container_id: &str,
    ) -> Result<Sandbox, SandboxError> {
        // The runtime names the namespace as the node sees it; the agent's container
        // may not have that path (no `/var/run` → `/run` link in its image), but it
        // mounts the runtime's folder: the same file name there is the same file.
        let found;
        let netns = if netns.exists() {
            netns
        } else {
            found = netns
                .file_name()
                .and_then(|name| {
                    self.netns_dirs
                        .iter()
                        .map(|dir| dir.join(name))
                        .find(|path| path.exists())
                })
                .ok_or_else(|| SandboxError::Io {
                    what: "finding",
                    path: netns.to_owned(),
                    source: io::ErrorKind::NotFound.into(),
                })?;
            &found
        };
        // Only a namespace file is opened: anything else (a FIFO) could block the
        // agent.
        if !is_namespace_file(netns)? {
            return Err(SandboxError::NotANamespace(netns.to_owned()));
        }
        let theirs = namespace_id(netns)?;
        if theirs == self.host_namespace()? {
            return Err(SandboxError::HostNetwork(netns.display().to_string()));
        }
        // The runtime names it as the node sees it (`/var/run/netns/cni-…`); the same
        // namespace under one of our own folders works in our mount namespace, and
        // in ztunnel's.
        let netns = self
            .bind_mount_of(theirs)
            .unwrap_or_else(|| netns.to_owned());
        let host_veth = host_veth(&netns).unwrap_or_else(|error| {
            debug!(netns = %netns.display(), %error, "no veth found for the pod");
            None
        });
        Ok(Sandbox {
            netns,
            host_veth,
            addresses,
            container_id: Some(container_id.to_owned()),
            namespace: theirs,
        })
    }

    /// The calling thread's network namespace (the node's).
    fn host_namespace(&self) -> Result<(u64, u64), SandboxError> {
        namespace_id(&self.proc.join("thread-self/ns/net"))
    }

    /// Whether `sandbox` still stands: its path opens the namespace it was found as,
    /// and that is not the node's.
    fn still_stands(&self, sandbox: &Sandbox) -> bool {
        namespace_id(&sandbox.netns).is_ok_and(|id| id == sandbox.namespace)
            && self
                .host_namespace()
                .is_ok_and(|host| host != sandbox.namespace)
    }

    /// Every process in a pod's cgroup (or under it), by pod.
    pub fn processes(&self) -> Result<Processes, SandboxError> {
        let entries = std::fs::read_dir(&self.proc).map_err(|source| SandboxError::Io {
            what: "listing",
            path: self.proc.clone(),
            source,
        })?;
        let mut pods = Processes::new();
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
            let uid = cgroups
                .lines()
                .filter_map(|line| line.splitn(3, ':').nth(2))
                .find_map(|path| path.split('/').find_map(pod_uid_of));
            if let Some(uid) = uid {
                pods.entry(uid).or_default().push(pid);
            }
        }
        for pids in pods.values_mut() {
            pids.sort_unstable();
        }
        Ok(pods)
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

/// The pod UID a cgroup path component names, as kubelet makes them: `pod<uid>`
/// (cgroupfs driver) or `[<root>-]kubepods[-<qos>]-pod<uid with underscores>.slice`
/// (systemd driver). Kubernetes UIDs have no underscores, so turning them back
/// into dashes is exact.
pub(crate) fn pod_uid_of(part: &str) -> Option<String> {
    if let Some(slice) = part.strip_suffix(".slice") {
        let (prefix, uid) = slice.rsplit_once("-pod")?;
        // `kubepods-…`, or under a kubelet `--cgroup-root` (kind: `kubelet-kubepods-…`).
        let kubepods = prefix.split('-').any(|segment| segment == "kubepods");
        return (kubepods && !uid.is_empty()).then(|| uid.replace('_', "-"));
    }
    // Bare `pod…` names are common (a `pods` folder): only a UUID after it counts.
    part.strip_prefix("pod")
        .filter(|uid| is_uuid(uid))
        .map(str::to_owned)
}

/// `8-4-4-4-12` hex digits, as Kubernetes makes UIDs.
fn is_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Whether `path` is on nsfs (a namespace file), by `statfs`: stat alone cannot tell
/// one from a regular file.
fn is_namespace_file(path: &Path) -> Result<bool, SandboxError> {
    /// `NSFS_MAGIC` of linux/magic.h.
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    let io = |source| SandboxError::Io {
        what: "reading",
        path: path.to_owned(),
        source,
    };
    let name = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| io(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    let mut fs = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `name` is a NUL-terminated path and `fs` is writable memory of the
    // size statfs fills.
    let rc = unsafe { libc::statfs(name.as_ptr(), fs.as_mut_ptr()) };
    if rc != 0 {
        return Err(io(io::Error::last_os_error()));
    }
    // SAFETY: statfs succeeded, so it filled `fs`.
    let fs = unsafe { fs.assume_init() };
    #[allow(clippy::unnecessary_cast)] // `f_type`'s width differs between targets.
    Ok(fs.f_type as i64 == NSFS_MAGIC)
}

/// A namespace's identity: the device and inode of its nsfs file.
pub(crate) fn namespace_id(path: &Path) -> Result<(u64, u64), SandboxError> {
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
    let theirs = crate::netns::run_in(netns, links)??;
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

/// Sandboxes found, by pod UID, so a reconcile does not scan `/proc` for pods it
/// already knows, and scans it at most once for those it does not.
#[derive(Debug, Default)]
pub struct Sandboxes {
    locator: Locator,
    known: HashMap<Box<str>, Sandbox>,
    /// This round's scan, made on the first pod not known.
    processes: Option<Processes>,
    /// Pods looked for and not found: since when, and whether that was reported.
    missing: HashMap<Box<str>, (Instant, bool)>,
}

/// How long a pod with an address may go unfound before a warning: kubelet sets the
/// address once the sandbox runs, so by then something is wrong (a cgroup layout not
/// recognised, the agent without the host's PID namespace).
const MISSING_WARN_AFTER: Duration = Duration::from_secs(30);

impl Sandboxes {
    pub fn new(locator: Locator) -> Self {
        Sandboxes {
            locator,
            ..Sandboxes::default()
        }
    }

    /// Starts a round of lookups: pods not found before are looked for in a
    /// fresh scan.
    pub fn begin_round(&mut self) {
        self.processes = None;
    }

    pub fn find(&mut self, uid: &str) -> Result<Sandbox, SandboxError> {
        if let Some(known) = self.known.get_mut(uid) {
            if self.locator.still_stands(known) {
                // A veth not found at first (not plugged in yet) is asked again.
                if known.host_veth.is_none() {
                    known.host_veth = host_veth(&known.netns).ok().flatten();
                }
                return Ok(known.clone());
            }
            self.known.remove(uid);
        }
        let processes = match &mut self.processes {
            Some(processes) => processes,
            empty => empty.insert(self.locator.processes()?),
        };
        match self.locator.find_in(processes, uid) {
            Ok(found) => {
                self.missing.remove(uid);
                if found.host_veth.is_none() {
                    warn!(%uid, netns = %found.netns.display(), "no single veth pairs the pod with the node: its STRICT guard is not attached");
                }
                self.known.insert(uid.into(), found.clone());
                Ok(found)
            }
            Err(error) => {
                self.missing
                    .entry(uid.into())
                    .or_insert((Instant::now(), false));
                Err(error)
            }
        }
    }

    /// Whether `error`, from looking for `uid`, deserves a warning now: once per
    /// pod, at once unless the pod's processes are just not seen yet, and then once
    /// that has lasted [`MISSING_WARN_AFTER`].
    pub fn worth_a_warning(&mut self, uid: &str, error: &SandboxError) -> bool {
        let Some((since, warned)) = self.missing.get_mut(uid) else {
            return false;
        };
        let due =
            !matches!(error, SandboxError::NotRunning(_)) || since.elapsed() >= MISSING_WARN_AFTER;
        let worth = due && !*warned;
        *warned |= worth;
        worth
    }

    /// Takes what the container runtime reports for a pod it is starting (the CNI
    /// plugin's call): the pod is then looked up without waiting for kubelet to
    /// publish its address, and without a scan.
    pub fn report(&mut self, uid: &str, report: &SandboxReport) -> Result<(), SandboxError> {
        let sandbox = self.locator.reported(
            &report.netns,
            report.addresses.clone(),
            &report.container_id,
        )?;
        self.missing.remove(uid);
        self.known.insert(uid.into(), sandbox);
        Ok(())
    }

    /// Whether the runtime reported this pod's sandbox, and it still stands.
    pub fn is_reported(&self, uid: &str) -> bool {
        self.known
            .get(uid)
            .is_some_and(|s| s.container_id.is_some() && self.locator.still_stands(s))
    }

    /// Forgets the sandbox `container_id` of a pod (torn down: CNI DEL); a newer
    /// sandbox reported since stays. An empty ID matches any.
    pub fn forget(&mut self, uid: &str, container_id: &str) {
        let this_one = self.known.get(uid).is_some_and(|s| {
            container_id.is_empty()
                || s.container_id
                    .as_deref()
                    .is_none_or(|id| id == container_id)
        });
        if this_one {
            self.known.remove(uid);
            self.missing.remove(uid);
        }
    }

    /// Forgets pods not in `live`.
    pub fn retain<'a>(&mut self, live: impl IntoIterator<Item = &'a str>) {
        let live: std::collections::HashSet<&str> = live.into_iter().collect();
        self.known.retain(|uid, _| live.contains(&**uid));
        self.missing.retain(|uid, _| live.contains(&**uid));
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
            format!("kubelet-kubepods-besteffort-pod{systemd}.slice"),
        ] {
            assert_eq!(pod_uid_of(&part).as_deref(), Some(UID), "{part}");
        }
        for part in [
            "pod".to_owned(),
            "pods".to_owned(),
            "podman".to_owned(),
            format!("pod{UID}0"),
            "kubepods.slice".to_owned(),
            "kubepods-besteffort.slice".to_owned(),
            format!("other-pod{systemd}.slice"),
            "kubepods-besteffort-pod.slice".to_owned(),
            "cri-containerd-0123abcd.scope".to_owned(),
            "system.slice".to_owned(),
        ] {
            assert_eq!(pod_uid_of(&part), None, "{part}");
        }
    }

    #[test]
    fn a_pod_not_found_is_warned_about_once_and_not_at_once_when_just_starting() {
        let mut sandboxes = Sandboxes::new(Locator {
            // An empty /proc: nothing runs.
            proc: std::env::temp_dir().join(format!("warren-no-proc-{}", std::process::id())),
            netns_dirs: Vec::new(),
        });
        std::fs::create_dir_all(&sandboxes.locator.proc).unwrap();
        let error = sandboxes.find(UID).unwrap_err();
        assert!(matches!(error, SandboxError::NotRunning(_)), "{error}");
        // Just starting: not worth a warning yet.
        assert!(!sandboxes.worth_a_warning(UID, &error));
        // Missing for long enough: once.
        let since = &mut sandboxes.missing.get_mut(UID).unwrap().0;
        *since = since
            .checked_sub(MISSING_WARN_AFTER)
            .expect("the machine has been up longer than that");
        assert!(sandboxes.worth_a_warning(UID, &error));
        assert!(!sandboxes.worth_a_warning(UID, &error));
        // Another kind of failure is worth one at once, for a pod not warned about.
        let other = "00000000-0000-4000-8000-000000000001";
        let host = SandboxError::HostNetwork(other.into());
        assert!(!sandboxes.worth_a_warning(other, &host), "never looked for");
        let _ = sandboxes.find(other);
        assert!(sandboxes.worth_a_warning(other, &host));
        assert!(!sandboxes.worth_a_warning(other, &host));
        // Gone pods are forgotten.
        sandboxes.retain([other]);
        assert!(!sandboxes.missing.contains_key(UID));
        std::fs::remove_dir_all(&sandboxes.locator.proc).unwrap();
    }

    /// What the runtime reports is checked before it is opened: a path the agent's
    /// container lacks is looked up by name in the runtime's folders, and only a
    /// namespace file (not a FIFO, not a regular file) is taken; the node's own
    /// namespace never is.
    #[test]
    fn a_reported_namespace_is_found_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let locator = Locator {
            proc: PathBuf::from("/proc"),
            netns_dirs: vec![dir.path().to_owned()],
        };
        // The test's own namespace, under a runtime's name.
        std::os::unix::fs::symlink("/proc/thread-self/ns/net", dir.path().join("cni-own")).unwrap();
        std::fs::write(dir.path().join("cni-file"), b"").unwrap();
        let report = |path: &str| locator.reported(Path::new(path), Vec::new(), "c1");
        assert!(
            matches!(
                report("/nowhere/run/netns/cni-own"),
                Err(SandboxError::HostNetwork(_))
            ),
            "found by name, and refused as the node's own"
        );
        assert!(matches!(
            report("/nowhere/run/netns/cni-gone"),
            Err(SandboxError::Io { .. })
        ));
        let file = dir.path().join("cni-file");
        assert!(matches!(
            locator.reported(&file, Vec::new(), "c1"),
            Err(SandboxError::NotANamespace(_))
        ));
    }
}
