//! Who is at the other end of the socket. A hello's role and namespace say
//! which keys a subscriber gets: a ztunnel every key of this node's
//! workloads, a waypoint its namespace's identities and Secrets. The socket
//! is root's alone, but waypoint pods mount it too, so the agent believes a
//! hello only of a process it can place:
//!
//! - a ztunnel runs on the node's own network (the chart's DaemonSet is
//!   `hostNetwork`, the testbed's runs in its node): the agent's network
//!   namespace;
//! - a waypoint runs in a pod of one of its namespace's waypoint Gateways on
//!   this node: its process's cgroup names the pod's UID (as kubelet makes
//!   them), or, in local mode, its network namespace is the pod's
//!   (`warren.io/netns`).
//!
//! A connection is placed once, when it is accepted ([`Placement`]), from
//! the connecting process as the kernel names it with a pidfd: what is read
//! of `/proc/<pid>` counts only if that process is still alive once read, so
//! a pid reused by another process cannot pass for it. Every stream of the
//! connection is judged by that placement, when it starts and again
//! whenever this node's pods change: a subscription whose process is no
//! longer where its hello needs it (its pod deleted, relabelled or its
//! Gateway gone) is ended ([`Peers::changes`]).

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    pin::Pin,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::UnixStream,
    sync::watch,
};
use warren_api::config::Role;

use crate::{
    enrollment::PodNetworks,
    sandbox::{namespace_id, pod_uid_of},
    view::{LocalPod, NodePods},
};

/// `SO_PEERPIDFD` (Linux 6.5): a pidfd of the process that connected.
const SO_PEERPIDFD: libc::c_int = 77;

/// Where the process at the other end of a connection was when it was
/// accepted; all `None` when it could not be told.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    pub pid: Option<i32>,
    /// Its network namespace (device, inode).
    pub netns: Option<(u64, u64)>,
    /// The pod UID its cgroup names, if any.
    pub pod_uid: Option<String>,
}

impl Placement {
    /// Reads where the peer of `stream` is, under `proc`.
    pub fn of(stream: &UnixStream, proc: &Path) -> Placement {
        let Some(pid) = stream.peer_cred().ok().and_then(|c| c.pid()) else {
            return Placement::default();
        };
        // The process itself, held so that its pid cannot be another's
        // while we read. (A peer already reaped gets no pidfd before Linux
        // 6.16, and a pidfd of a dead process since: `alive` refuses it.)
        let Some(pidfd) = peer_pidfd(stream, pid) else {
            return Placement::default();
        };
        let placement = Placement::read(pid, proc);
        if alive(&pidfd) {
            placement
        } else {
            Placement::default()
        }
    }

    /// What `/proc/<pid>` says (tests place fake processes this way).
    pub fn read(pid: i32, proc: &Path) -> Placement {
        let dir = proc.join(pid.to_string());
        let pod_uid = std::fs::read_to_string(dir.join("cgroup"))
            .ok()
            .and_then(|cgroups| {
                cgroups
                    .lines()
                    .filter_map(|line| line.splitn(3, ':').nth(2))
                    .find_map(|path| path.split('/').find_map(pod_uid_of))
            });
        Placement {
            pid: Some(pid),
            netns: namespace_id(&dir.join("ns/net")).ok(),
            pod_uid,
        }
    }
}

/// A pidfd of the process that connected: the kernel's own (`SO_PEERPIDFD`),
/// else, on a kernel before 6.5, one opened from its pid (`pidfd_open`),
/// which a pid reused between the connect and now could fool.
fn peer_pidfd(stream: &UnixStream, pid: i32) -> Option<OwnedFd> {
    match socket_pidfd(stream) {
        Ok(fd) => Some(fd),
        Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                tracing::warn!(
                    "this kernel has no SO_PEERPIDFD (Linux 6.5): subscribers are placed by their pid alone"
                );
            });
            // SAFETY: pidfd_open takes a pid and flags; the result, if any,
            // is a new descriptor we own.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
            let fd = libc::c_int::try_from(fd).ok().filter(|fd| *fd >= 0)?;
            // SAFETY: a descriptor the kernel just gave us.
            Some(unsafe { OwnedFd::from_raw_fd(fd) })
        }
        Err(_) => None,
    }
}

fn socket_pidfd(stream: &UnixStream) -> io::Result<OwnedFd> {
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `fd`, an int.
    let got = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&raw mut fd).cast(),
            &raw mut len,
        )
    };
    if got != 0 || fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: on success the kernel gave us this descriptor to own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether the process of `pidfd` still runs (signal 0 checks, sends nothing).
fn alive(pidfd: &OwnedFd) -> bool {
    // SAFETY: pidfd_send_signal with signal 0 and no info only checks.
    let sent = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            libc::c_long::from(pidfd.as_raw_fd()),
            0 as libc::c_long,
            std::ptr::null::<libc::siginfo_t>(),
            0 as libc::c_long,
        )
    };
    sent == 0
}

/// An accepted connection with its peer's [`Placement`], which tonic puts in
/// each request's extensions.
pub struct PlacedStream {
    stream: UnixStream,
    placement: Placement,
}

impl PlacedStream {
    pub fn new(stream: UnixStream) -> Self {
        let placement = Placement::of(&stream, Path::new("/proc"));
        Self { stream, placement }
    }
}

impl tonic::transport::server::Connected for PlacedStream {
    type ConnectInfo = Placement;

    fn connect_info(&self) -> Placement {
        self.placement.clone()
    }
}

impl AsyncRead for PlacedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for PlacedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The facts a peer is checked against: this node's pods as the view holds
/// them.
#[derive(Clone)]
pub struct Peers {
    proc: PathBuf,
    networks: PodNetworks,
    /// Warren's own pods' namespace (`--system-namespace`): where a ztunnel
    /// in a pod may run.
    system_namespace: Option<String>,
    pods: NodePods,
}

impl Peers {
    pub fn new(networks: PodNetworks, system_namespace: Option<String>, pods: NodePods) -> Self {
        Self::with_proc(Path::new("/proc"), networks, system_namespace, pods)
    }

    /// With another `/proc` (tests).
    pub fn with_proc(
        proc: &Path,
        networks: PodNetworks,
        system_namespace: Option<String>,
        pods: NodePods,
    ) -> Self {
        Self {
            proc: proc.to_owned(),
            networks,
            system_namespace,
            pods,
        }
    }

    /// Tells of each change of this node's pods, after which a
    /// subscription's placement may no longer pass [`Peers::check`].
    pub fn changes(&self) -> watch::Receiver<Vec<LocalPod>> {
        self.pods.changes()
    }

    /// Whether the peer `at` may subscribe as `role` (for `namespace`, a
    /// waypoint's).
    pub fn check(&self, at: &Placement, role: Role, namespace: &str) -> Result<(), String> {
        match role {
            Role::Waypoint => self.check_waypoint(at, namespace),
            _ => self.check_ztunnel(at),
        }
    }

    /// Whether the peer `at` may subscribe as a ztunnel: it is on the
    /// agent's own network, and in no pod (a node's daemon, as in the
    /// testbed) or in a pod of Warren's own namespace on this node (the
    /// chart's DaemonSet). Any other pod on the node's network (a
    /// `hostNetwork` pod of a namespace's owner, a waypoint's included) is
    /// refused, as is one the agent does not know yet: it tries again.
    pub fn check_ztunnel(&self, at: &Placement) -> Result<(), String> {
        let ours = namespace_id(&self.proc.join("self/ns/net")).map_err(|e| e.to_string())?;
        match at.netns {
            None => return Err(UNPLACED.to_owned()),
            Some(theirs) if theirs != ours => {
                return Err(
                    "the process is not on the node's network, where a ztunnel runs".into(),
                );
            }
            Some(_) => {}
        }
        let Some(uid) = &at.pod_uid else {
            return Ok(());
        };
        let system = self.system_namespace.as_deref();
        if self
            .pods
            .read()
            .iter()
            .any(|p| p.uid.as_ref() == Some(uid) && Some(p.namespace.as_str()) == system)
        {
            Ok(())
        } else {
            Err(format!(
                "the process is in pod {uid}, not one of Warren's own on this node (namespace {}, --system-namespace)",
                self.system_namespace.as_deref().unwrap_or("unset")
            ))
        }
    }

    /// Whether the peer `at` may subscribe as the waypoint of `namespace`:
    /// it runs in a waypoint pod of that namespace on this node.
    pub fn check_waypoint(&self, at: &Placement, namespace: &str) -> Result<(), String> {
        if at.pid.is_none() {
            return Err(UNPLACED.to_owned());
        }
        // An annotation is whoever wrote the pod's word: believed only where
        // the folder is the operator's own.
        let annotations = self.networks == PodNetworks::AnnotationsOrUid;
        let placed = self
            .pods
            .read()
            .iter()
            .filter(|p| p.waypoint && p.namespace == namespace)
            .any(|w| {
                (at.pod_uid.is_some() && w.uid == at.pod_uid)
                    || w.netns
                        .as_deref()
                        .filter(|_| annotations)
                        .is_some_and(|path| {
                            at.netns.is_some() && namespace_id(Path::new(path)).ok() == at.netns
                        })
            });
        if placed {
            Ok(())
        } else {
            Err(format!(
                "the process is not in a waypoint pod of namespace {namespace} on this node"
            ))
        }
    }
}

/// Why a peer that could not be placed is refused.
const UNPLACED: &str =
    "the process at the other end of the socket could not be told (gone, or no pidfd)";

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    const UID: &str = "3f2c1a9e-5b7d-4c1e-9a2b-8d6e0f1a2b3c";

    /// A stand-in `/proc`: this process as `self`, and peers whose cgroup
    /// and network namespace are given (a namespace is a file: the agent
    /// compares their device and inode).
    struct FakeProc {
        dir: tempfile::TempDir,
    }

    impl FakeProc {
        fn new() -> Self {
            let dir = tempfile::tempdir().expect("temporary folder");
            std::fs::create_dir_all(dir.path().join("self/ns")).expect("self");
            symlink("/proc/self/ns/net", dir.path().join("self/ns/net")).expect("own netns");
            Self { dir }
        }

        fn peer(&self, pid: i32, cgroup: &str, netns: &Path) {
            let dir = self.dir.path().join(pid.to_string());
            std::fs::create_dir_all(dir.join("ns")).expect("peer");
            std::fs::write(dir.join("cgroup"), cgroup).expect("cgroup");
            symlink(netns, dir.join("ns/net")).expect("peer netns");
        }

        /// A network namespace other than this process's.
        fn other_netns(&self, name: &str) -> PathBuf {
            let path = self.dir.path().join(name);
            std::fs::write(&path, "").expect("a namespace stand-in");
            path
        }
    }

    #[test]
    fn a_ztunnel_is_on_the_agents_own_network() {
        let proc = FakeProc::new();
        proc.peer(
            10,
            "0::/system.slice/ztunnel.service\n",
            Path::new("/proc/self/ns/net"),
        );
        proc.peer(11, "0::/kubepods/pod/x\n", &proc.other_netns("pod-net"));
        let peers = Peers::with_proc(
            proc.dir.path(),
            PodNetworks::UidOnly,
            Some("warren-system".into()),
            NodePods::default(),
        );
        let at = |pid| Placement::read(pid, proc.dir.path());
        assert_eq!(peers.check_ztunnel(&at(10)), Ok(()));
        let refused = peers.check_ztunnel(&at(11)).unwrap_err();
        assert!(refused.contains("not on the node's network"), "{refused}");
        assert!(peers.check_ztunnel(&Placement::default()).is_err());
        assert!(peers.check_ztunnel(&at(12)).is_err(), "no such process");
        // In a pod on the node's network: believed only if the pod is one of
        // Warren's own (a `hostNetwork` pod of a tenant, a waypoint's made
        // so, or one not known yet, is not).
        proc.peer(
            13,
            &format!("0::/kubepods/besteffort/pod{UID}/c1\n"),
            Path::new("/proc/self/ns/net"),
        );
        let refused = peers.check_ztunnel(&at(13)).unwrap_err();
        assert!(refused.contains("not one of Warren's own"), "{refused}");
        let pod = |namespace: &str, waypoint| LocalPod {
            namespace: namespace.into(),
            uid: Some(UID.into()),
            netns: None,
            waypoint,
        };
        peers.pods.set(vec![pod("demo", false)]);
        assert!(peers.check_ztunnel(&at(13)).is_err());
        peers.pods.set(vec![pod("demo", true)]);
        assert!(peers.check_ztunnel(&at(13)).is_err(), "a waypoint's pod");
        peers.pods.set(vec![pod("warren-system", false)]);
        assert_eq!(peers.check_ztunnel(&at(13)), Ok(()));
    }

    #[test]
    fn a_waypoint_runs_in_a_waypoint_pod_of_its_namespace_on_this_node() {
        let proc = FakeProc::new();
        let pod_net = proc.other_netns("waypoint-net");
        let elsewhere = proc.other_netns("client-net");
        let systemd = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-1.scope\n",
            UID.replace('-', "_")
        );
        // In the pod's cgroup (a cluster), in its namespace (local mode),
        // and in neither.
        proc.peer(20, &systemd, &elsewhere);
        proc.peer(21, "0::/system.slice/test.scope\n", &pod_net);
        proc.peer(22, "0::/system.slice/test.scope\n", &elsewhere);
        let waypoint = LocalPod {
            namespace: "demo".into(),
            uid: Some(UID.into()),
            netns: Some(pod_net.to_string_lossy().into_owned()),
            waypoint: true,
        };
        // The same pod, not (or no longer) a waypoint's.
        let plain = LocalPod {
            waypoint: false,
            ..waypoint.clone()
        };
        let local = Peers::with_proc(
            proc.dir.path(),
            PodNetworks::AnnotationsOrUid,
            None,
            NodePods::default(),
        );
        let cluster = Peers::with_proc(
            proc.dir.path(),
            PodNetworks::UidOnly,
            None,
            NodePods::default(),
        );
        let at = |pid| Placement::read(pid, proc.dir.path());
        assert_eq!(at(20).pod_uid.as_deref(), Some(UID));
        for peers in [&local, &cluster] {
            peers.pods.set(vec![plain.clone()]);
            assert!(peers.check_waypoint(&at(20), "demo").is_err());
            peers.pods.set(vec![waypoint.clone()]);
            assert_eq!(peers.check_waypoint(&at(20), "demo"), Ok(()));
            let refused = peers.check_waypoint(&at(20), "shop").unwrap_err();
            assert!(
                refused.contains("not in a waypoint pod of namespace shop"),
                "{refused}"
            );
            assert!(peers.check_waypoint(&at(22), "demo").is_err());
            assert!(peers.check_waypoint(&Placement::default(), "demo").is_err());
        }
        // The annotation is believed in local mode only.
        assert_eq!(local.check_waypoint(&at(21), "demo"), Ok(()));
        assert!(cluster.check_waypoint(&at(21), "demo").is_err());
        // Gone from this node: no longer believed.
        local.pods.set(Vec::new());
        assert!(local.check_waypoint(&at(20), "demo").is_err());
    }
}
