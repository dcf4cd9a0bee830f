//! Who is at the other end of the socket. A hello's role and namespace say
//! which keys a subscriber gets: a ztunnel every key of this node's
//! workloads, a waypoint its namespace's identities and Secrets. The socket
//! is root's alone, but waypoint pods mount it too, so the agent believes a
//! hello only of a process it can place (by `SO_PEERCRED`, in the host's PID
//! namespace, where the agent runs):
//!
//! - a ztunnel runs on the node's own network (the chart's DaemonSet is
//!   `hostNetwork`, the testbed's runs in its node): the agent's network
//!   namespace;
//! - a waypoint runs in a pod of one of its namespace's waypoint Gateways on
//!   this node: its process's cgroup names the pod's UID (as kubelet makes
//!   them), or, in local mode, its network namespace is the pod's
//!   (`warren.io/netns`).

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use crate::{
    enrollment::PodNetworks,
    sandbox::{namespace_id, pod_uid_of},
    view::LocalWaypoint,
};

/// A waypoint pod of this node, as a peer is placed against it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct WaypointPod {
    namespace: String,
    uid: Option<String>,
    /// Local mode's `warren.io/netns`.
    netns: Option<PathBuf>,
}

/// The facts a peer is checked against, kept up to date from the store.
#[derive(Clone)]
pub struct Peers {
    proc: PathBuf,
    networks: PodNetworks,
    waypoints: Arc<RwLock<Vec<WaypointPod>>>,
}

impl Peers {
    pub fn new(networks: PodNetworks) -> Self {
        Self::with_proc(Path::new("/proc"), networks)
    }

    /// With another `/proc` (tests).
    pub fn with_proc(proc: &Path, networks: PodNetworks) -> Self {
        Self {
            proc: proc.to_owned(),
            networks,
            waypoints: Arc::default(),
        }
    }

    /// Notes this node's waypoint pods (the view's).
    pub fn update<'a>(&self, pods: impl Iterator<Item = &'a LocalWaypoint>) {
        let pods: Vec<WaypointPod> = pods
            .map(|pod| WaypointPod {
                namespace: pod.namespace.clone(),
                uid: pod.uid.clone(),
                // An annotation is whoever wrote the pod's word: believed only
                // where the folder is the operator's own.
                netns: match self.networks {
                    PodNetworks::AnnotationsOrUid => pod.netns.as_deref().map(PathBuf::from),
                    PodNetworks::UidOnly => None,
                },
            })
            .collect();
        let mut waypoints = self
            .waypoints
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *waypoints != pods {
            *waypoints = pods;
        }
    }

    /// Whether process `pid` may subscribe as a ztunnel: it is on the
    /// agent's own network.
    pub fn check_ztunnel(&self, pid: Option<i32>) -> Result<(), String> {
        let pid = pid.ok_or("the process at the other end of the socket is not known")?;
        let theirs = namespace_id(&self.proc.join(pid.to_string()).join("ns/net"))
            .map_err(|e| format!("process {pid}: {e}"))?;
        let ours = namespace_id(&self.proc.join("self/ns/net")).map_err(|e| e.to_string())?;
        if theirs == ours {
            Ok(())
        } else {
            Err(format!(
                "process {pid} is not on the node's network, where a ztunnel runs"
            ))
        }
    }

    /// Whether process `pid` may subscribe as the waypoint of `namespace`:
    /// it runs in a waypoint pod of that namespace on this node.
    pub fn check_waypoint(&self, pid: Option<i32>, namespace: &str) -> Result<(), String> {
        let pid = pid.ok_or("the process at the other end of the socket is not known")?;
        let dir = self.proc.join(pid.to_string());
        let uid = std::fs::read_to_string(dir.join("cgroup"))
            .ok()
            .and_then(|cgroups| {
                cgroups
                    .lines()
                    .filter_map(|line| line.splitn(3, ':').nth(2))
                    .find_map(|path| path.split('/').find_map(pod_uid_of))
            });
        let netns = namespace_id(&dir.join("ns/net")).ok();
        let waypoints = self
            .waypoints
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let placed = waypoints
            .iter()
            .filter(|w| w.namespace == namespace)
            .any(|w| {
                (uid.is_some() && w.uid == uid)
                    || w.netns
                        .as_deref()
                        .is_some_and(|path| netns.is_some() && namespace_id(path).ok() == netns)
            });
        if placed {
            Ok(())
        } else {
            Err(format!(
                "process {pid} is not in a waypoint pod of namespace {namespace} on this node"
            ))
        }
    }
}

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
        let peers = Peers::with_proc(proc.dir.path(), PodNetworks::UidOnly);
        assert_eq!(peers.check_ztunnel(Some(10)), Ok(()));
        let refused = peers.check_ztunnel(Some(11)).unwrap_err();
        assert!(refused.contains("not on the node's network"), "{refused}");
        assert!(peers.check_ztunnel(None).is_err());
        assert!(peers.check_ztunnel(Some(12)).is_err(), "no such process");
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
        let waypoint = LocalWaypoint {
            namespace: "demo".into(),
            uid: Some(UID.into()),
            netns: Some(pod_net.to_string_lossy().into_owned()),
        };
        let local = Peers::with_proc(proc.dir.path(), PodNetworks::AnnotationsOrUid);
        let cluster = Peers::with_proc(proc.dir.path(), PodNetworks::UidOnly);
        for peers in [&local, &cluster] {
            peers.update([&waypoint].into_iter());
            assert_eq!(peers.check_waypoint(Some(20), "demo"), Ok(()));
            let refused = peers.check_waypoint(Some(20), "shop").unwrap_err();
            assert!(
                refused.contains("not in a waypoint pod of namespace shop"),
                "{refused}"
            );
            assert!(peers.check_waypoint(Some(22), "demo").is_err());
            assert!(peers.check_waypoint(None, "demo").is_err());
        }
        // The annotation is believed in local mode only.
        assert_eq!(local.check_waypoint(Some(21), "demo"), Ok(()));
        assert!(cluster.check_waypoint(Some(21), "demo").is_err());
        // Gone from this node: no longer believed.
        local.update(std::iter::empty());
        assert!(local.check_waypoint(Some(20), "demo").is_err());
    }
}
