//! Running this node's waypoints (local mode).
//!
//! On a cluster a Gateway controller turns a waypoint Gateway into a
//! Deployment and the kubelet runs its pods. In local mode there is neither,
//! so the agent does their job for the pods of its own node: for every
//! Gateway of a waypoint class and every pod of this node labelled with its
//! name, it runs `warren-waypoint` inside that pod's network namespace (and
//! cgroup), restarts it with backoff when it exits, and stops it when the
//! Gateway or the pod goes away, or the agent stops.
//!
//! [`desired`] decides which processes should run, from the store alone, so
//! it is tested without spawning anything; [`Supervisor`] makes it so.

use std::{
    collections::BTreeMap,
    ffi::{CString, OsString},
    fs::{File, OpenOptions},
    io,
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::Duration,
};

use tokio::{
    process::{Child, Command},
    sync::oneshot,
    task::JoinHandle,
    time::Instant,
};
use tracing::{debug, info, warn};

use crate::{
    enrollment::NETNS_ANNOTATION,
    model::{Kind, Object, gateway::GATEWAY_NAME_LABEL},
    store::Store,
};

/// Pod annotation with the pod's cgroup v2 folder (local mode), so a
/// waypoint is accounted, limited and cleaned up like the pod's own
/// processes.
pub const CGROUP_ANNOTATION: &str = "warren.io/cgroup";

/// The waypoint binary's name, looked for beside the agent's.
pub const WAYPOINT_BINARY: &str = "warren-waypoint";

/// First restart delay; it doubles on each quick exit up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A process that ran this long before exiting was healthy: the next
/// restart starts from [`MIN_BACKOFF`] again.
const STABLE_AFTER: Duration = Duration::from_secs(60);

/// How the agent runs waypoints (from [`crate::config::RunArgs`]).
#[derive(Clone, Debug)]
pub struct Settings {
    /// The `warren-waypoint` executable.
    pub binary: PathBuf,
    /// The agent's own socket: the waypoint subscribes to it.
    pub agent_socket: PathBuf,
    /// Folder for one log file per pod; `None` shares the agent's output.
    pub log_dir: Option<PathBuf>,
    /// How long a waypoint may drain after SIGTERM before SIGKILL.
    pub stop_grace: Duration,
}

/// `warren-waypoint` beside the running agent binary.
pub fn beside_current_exe() -> io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} has no parent folder", exe.display()),
        )
    })?;
    Ok(dir.join(WAYPOINT_BINARY))
}

/// One waypoint process this node should run: the pod it runs in and what
/// it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaypointPod {
    pub namespace: String,
    /// The Gateway the pod implements.
    pub gateway: String,
    pub pod: String,
    /// The pod's network namespace (a path, e.g. `/run/netns/NAME`).
    pub netns: PathBuf,
    pub cgroup: Option<PathBuf>,
    /// The identity the waypoint's certificate is for: the pod's.
    pub service_account: String,
}

impl WaypointPod {
    /// `namespace/pod`, as logs name it.
    pub fn name(&self) -> String {
        format!("{}/{}", self.namespace, self.pod)
    }

    /// The name it subscribes under (`warrenctl config status`).
    pub fn client_id(&self) -> String {
        format!("waypoint-{}", self.namespace)
    }

    fn args(&self, settings: &Settings) -> Vec<OsString> {
        vec![
            "--namespace".into(),
            self.namespace.clone().into(),
            "--gateway".into(),
            self.gateway.clone().into(),
            "--service-account".into(),
            self.service_account.clone().into(),
            "--agent-socket".into(),
            settings.agent_socket.clone().into(),
            "--client-id".into(),
            self.client_id().into(),
        ]
    }
}

/// Which waypoints this node runs, by `namespace/pod`: a pod of `node`
/// labelled with the name of a waypoint Gateway of its namespace, with a
/// network namespace to run in.
pub fn desired(store: &Store, node: &str) -> BTreeMap<String, WaypointPod> {
    let mut out = BTreeMap::new();
    for object in store.of_kind(Kind::Gateway) {
        let Object::Gateway(gateway) = object else {
            continue;
        };
        if !gateway.is_waypoint() {
            continue;
        }
        let (Some(namespace), Some(name)) = (
            gateway.metadata.namespace.as_deref(),
            gateway.metadata.name.as_deref(),
        ) else {
            continue;
        };
        for object in store.of_kind_in(Kind::Pod, namespace) {
            let Object::Pod(pod) = object else { continue };
            if pod.labels.get(GATEWAY_NAME_LABEL) != Some(name) {
                continue;
            }
            if pod.node_name.as_deref() != Some(node) {
                continue;
            }
            // A finished pod's sandbox is gone; nothing to run in.
            if pod.finished() {
                continue;
            }
            let pod_name = pod.name.to_string();
            let Some(netns) = pod.annotation(NETNS_ANNOTATION) else {
                // Called on every change: a debug line, not a warning flood.
                debug!(pod = %format!("{namespace}/{pod_name}"), "waypoint pod without a {NETNS_ANNOTATION} annotation: not run here");
                continue;
            };
            let want = WaypointPod {
                namespace: namespace.to_owned(),
                gateway: name.to_owned(),
                pod: pod_name,
                netns: PathBuf::from(netns),
                cgroup: pod.annotation(CGROUP_ANNOTATION).map(PathBuf::from),
                service_account: pod.service_account().to_owned(),
            };
            out.insert(want.name(), want);
        }
    }
    out
}

/// Why a waypoint could not be started; each names the pod.
#[derive(Debug, thiserror::Error)]
pub enum WaypointError {
    #[error("waypoint of pod {pod}: opening its network namespace {}: {source}", path.display())]
    Netns {
        pod: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("waypoint of pod {pod}: cgroup path {} contains a NUL byte", path.display())]
    Cgroup { pod: String, path: PathBuf },
    #[error("waypoint of pod {pod}: opening its log {}: {source}", path.display())]
    Log {
        pod: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("waypoint of pod {pod}: starting {}: {source}", binary.display())]
    Spawn {
        pod: String,
        binary: PathBuf,
        source: io::Error,
    },
}

/// The running waypoints of this node, kept equal to [`desired`].
pub struct Supervisor {
    settings: Arc<Settings>,
    running: BTreeMap<String, Running>,
    /// Tasks still stopping a process (draining, then killed at the grace).
    stopping: Vec<JoinHandle<()>>,
}

struct Running {
    want: WaypointPod,
    /// Dropping or sending stops the process.
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Supervisor {
    pub fn new(settings: Settings) -> Self {
        info!(binary = %settings.binary.display(), "running this node's waypoints");
        Self {
            settings: Arc::new(settings),
            running: BTreeMap::new(),
            stopping: Vec::new(),
        }
    }

    /// Starts what [`desired`] adds, stops what it drops, and restarts a
    /// process whose pod changed (say, recreated in a new namespace).
    pub fn reconcile(&mut self, store: &Store, node: &str) {
        let mut want = desired(store, node);
        let names: Vec<String> = self.running.keys().cloned().collect();
        for name in names {
            let unchanged = matches!(
                (self.running.get(&name), want.get(&name)),
                (Some(running), Some(wanted)) if running.want == *wanted
            );
            if unchanged {
                want.remove(&name);
            } else if let Some(running) = self.running.remove(&name) {
                info!(pod = %name, "waypoint no longer wanted here, or its pod changed: stopping it");
                // The receiver may be gone if the task ended; nothing to stop.
                let _ = running.stop.send(());
                self.stopping.push(running.task);
            }
        }
        self.stopping.retain(|task| !task.is_finished());
        for (name, want) in want {
            let (stop, stopped) = oneshot::channel();
            let task = tokio::spawn(supervise(self.settings.clone(), want.clone(), stopped));
            self.running.insert(name, Running { want, stop, task });
        }
    }

    /// The pods whose waypoint is supervised now.
    pub fn running(&self) -> impl Iterator<Item = &WaypointPod> {
        self.running.values().map(|r| &r.want)
    }

    /// Stops every waypoint and waits until they have exited.
    pub async fn shutdown(mut self) {
        for (_, running) in std::mem::take(&mut self.running) {
            let _ = running.stop.send(());
            self.stopping.push(running.task);
        }
        for task in self.stopping.drain(..) {
            if let Err(err) = task.await {
                warn!(error = %err, "a waypoint supervisor task failed");
            }
        }
    }
}

/// Runs one waypoint until `stop` fires (or its sender is dropped),
/// restarting it with backoff whenever it exits.
async fn supervise(settings: Arc<Settings>, want: WaypointPod, mut stop: oneshot::Receiver<()>) {
    let pod = want.name();
    let mut backoff = MIN_BACKOFF;
    loop {
        let started = Instant::now();
        match spawn(&settings, &want) {
            Ok(mut child) => {
                // id() is None only once reaped, which cannot be yet.
                let pid = child.id().unwrap_or_default();
                info!(pod = %pod, gateway = %want.gateway, pid, "waypoint started");
                tokio::select! {
                    status = child.wait() => match status {
                        Ok(status) => warn!(pod = %pod, %status, "waypoint exited"),
                        Err(err) => warn!(pod = %pod, error = %err, "waiting for the waypoint"),
                    },
                    _ = &mut stop => {
                        terminate(&mut child, &pod, settings.stop_grace).await;
                        return;
                    }
                }
            }
            Err(err) => warn!(error = %err, "waypoint not started"),
        }
        if started.elapsed() >= STABLE_AFTER {
            backoff = MIN_BACKOFF;
        }
        info!(pod = %pod, retry_in = ?backoff, "restarting the waypoint");
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = &mut stop => {
                info!(pod = %pod, "waypoint stopped");
                return;
            }
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// SIGTERM, so the waypoint drains its open requests; SIGKILL if it is
/// still there after `grace`.
async fn terminate(child: &mut Child, pod: &str, grace: Duration) {
    if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
        // SAFETY: kill has no memory-safety preconditions; the pid is our
        // child and not yet reaped (id() is None once it is), so it cannot
        // name another process.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            warn!(pod = %pod, error = %io::Error::last_os_error(), "SIGTERM to the waypoint");
        }
        match tokio::time::timeout(grace, child.wait()).await {
            Ok(Ok(status)) => {
                info!(pod = %pod, %status, "waypoint stopped");
                return;
            }
            Ok(Err(err)) => warn!(pod = %pod, error = %err, "waiting for the waypoint"),
            Err(_) => warn!(pod = %pod, ?grace, "waypoint still running after SIGTERM: killing it"),
        }
    }
    match child.kill().await {
        Ok(()) => info!(pod = %pod, "waypoint killed"),
        Err(err) => warn!(pod = %pod, error = %err, "killing the waypoint"),
    }
}

/// Starts `warren-waypoint` in the pod's network namespace and cgroup.
fn spawn(settings: &Settings, want: &WaypointPod) -> Result<Child, WaypointError> {
    let pod = want.name();
    // Opened here, before the fork: the hook between fork and exec may only
    // make async-signal-safe calls.
    let netns: OwnedFd = File::open(&want.netns)
        .map_err(|source| WaypointError::Netns {
            pod: pod.clone(),
            path: want.netns.clone(),
            source,
        })?
        .into();
    let procs = match &want.cgroup {
        Some(cgroup) => {
            let path = cgroup.join("cgroup.procs");
            Some(
                CString::new(path.as_os_str().as_bytes()).map_err(|_| WaypointError::Cgroup {
                    pod: pod.clone(),
                    path,
                })?,
            )
        }
        None => None,
    };
    let mut cmd = Command::new(&settings.binary);
    cmd.args(want.args(settings))
        .stdin(Stdio::null())
        // Should this task be dropped without a stop (the runtime going
        // away), the process goes with it.
        .kill_on_drop(true);
    if let Some(dir) = &settings.log_dir {
        let path = dir.join(format!("waypoint.{}.{}.log", want.namespace, want.pod));
        let log_error = |source| WaypointError::Log {
            pod: pod.clone(),
            path: path.clone(),
            source,
        };
        let out = open_log(&path).map_err(log_error)?;
        let err = out.try_clone().map_err(log_error)?;
        cmd.stdout(out).stderr(err);
    }
    // SAFETY: the hook runs between fork and exec and only makes
    // async-signal-safe system calls (prctl, setns, open, write, close) on
    // data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            // Dies with the agent even when the agent is killed outright and
            // cannot stop it (its restart then starts a fresh one).
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(procs) = &procs {
                // Writing "0" to cgroup.procs moves the writer itself.
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = io::Error::last_os_error();
                libc::close(fd);
                if written != 1 {
                    return Err(err);
                }
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(|source| WaypointError::Spawn {
        pod,
        binary: settings.binary.clone(),
        source,
    })
}

/// Appends, so a restarted waypoint's output follows the last one's.
fn open_log(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::object::{parse_document, split_documents},
        source::SourceEvent,
    };

    const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: waypoint-0
  namespace: demo
  labels: { gateway.networking.k8s.io/gateway-name: waypoint, warren.io/dataplane-mode: none }
  annotations: { warren.io/netns: /run/netns/t-demo-waypoint-0, warren.io/cgroup: /sys/fs/cgroup/t/waypoint-0 }
spec: { nodeName: node-a, serviceAccountName: waypoint, containers: [{ name: main }] }
---
apiVersion: v1
kind: Pod
metadata:
  name: waypoint-1
  namespace: demo
  labels: { gateway.networking.k8s.io/gateway-name: waypoint }
  annotations: { warren.io/netns: /run/netns/t-demo-waypoint-1 }
spec: { nodeName: node-b, containers: [{ name: main }] }
---
apiVersion: v1
kind: Pod
metadata:
  name: app-0
  namespace: demo
  labels: { app: app }
  annotations: { warren.io/netns: /run/netns/t-demo-app-0 }
spec: { nodeName: node-a, containers: [{ name: main }] }
---
apiVersion: v1
kind: Pod
metadata:
  name: waypoint-0
  namespace: other
  labels: { gateway.networking.k8s.io/gateway-name: waypoint }
  annotations: { warren.io/netns: /run/netns/t-other-waypoint-0 }
spec: { nodeName: node-a, containers: [{ name: main }] }
"#;

    fn waypoint_gateway(namespace: &str, class: &str) -> String {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{ name: waypoint, namespace: {namespace} }}\nspec:\n  gatewayClassName: {class}\n"
        )
    }

    fn store(yaml: &[&str]) -> Store {
        let mut store = Store::default();
        for text in yaml {
            for doc in split_documents(text).expect("YAML") {
                let object = parse_document(doc, "test").unwrap_or_else(|e| panic!("{e}"));
                store.apply(SourceEvent::Upsert(object));
            }
        }
        store.apply(SourceEvent::Synced);
        store
    }

    #[test]
    fn a_waypoint_runs_in_each_labelled_pod_of_this_node() {
        let store = store(&[PODS, &waypoint_gateway("demo", "warren-waypoint")]);
        let want = desired(&store, "node-a");
        assert_eq!(want.keys().collect::<Vec<_>>(), ["demo/waypoint-0"]);
        let w = &want["demo/waypoint-0"];
        assert_eq!(w.gateway, "waypoint");
        assert_eq!(w.netns, PathBuf::from("/run/netns/t-demo-waypoint-0"));
        assert_eq!(w.cgroup, Some(PathBuf::from("/sys/fs/cgroup/t/waypoint-0")));
        assert_eq!(w.service_account, "waypoint");
        assert_eq!(w.client_id(), "waypoint-demo");

        // The other node runs its own pod's; the second replica has no
        // service account, so it is `default`.
        let other = desired(&store, "node-b");
        assert_eq!(other.keys().collect::<Vec<_>>(), ["demo/waypoint-1"]);
        assert_eq!(other["demo/waypoint-1"].service_account, "default");
        assert_eq!(other["demo/waypoint-1"].cgroup, None);
    }

    #[test]
    fn no_gateway_or_another_class_runs_nothing() {
        assert!(desired(&store(&[PODS]), "node-a").is_empty());
        let store = store(&[PODS, &waypoint_gateway("demo", "nginx")]);
        assert!(desired(&store, "node-a").is_empty());
    }

    #[test]
    fn istio_waypoint_gateways_count_too() {
        let store = store(&[PODS, &waypoint_gateway("other", "istio-waypoint")]);
        let want = desired(&store, "node-a");
        assert_eq!(want.keys().collect::<Vec<_>>(), ["other/waypoint-0"]);
    }

    #[test]
    fn a_pod_without_a_network_namespace_or_finished_is_skipped() {
        let pods = r#"
apiVersion: v1
kind: Pod
metadata:
  name: no-netns
  namespace: demo
  labels: { gateway.networking.k8s.io/gateway-name: waypoint }
spec: { nodeName: node-a, containers: [{ name: main }] }
---
apiVersion: v1
kind: Pod
metadata:
  name: done
  namespace: demo
  labels: { gateway.networking.k8s.io/gateway-name: waypoint }
  annotations: { warren.io/netns: /run/netns/t-demo-done }
spec: { nodeName: node-a, containers: [{ name: main }] }
status: { phase: Succeeded }
"#;
        let store = store(&[pods, &waypoint_gateway("demo", "warren-waypoint")]);
        assert!(desired(&store, "node-a").is_empty());
    }

    #[test]
    fn a_label_for_another_gateway_does_not_match() {
        let gateway = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: { name: reviews-waypoint, namespace: demo }\nspec: { gatewayClassName: warren-waypoint }\n";
        let store = store(&[PODS, gateway]);
        assert!(desired(&store, "node-a").is_empty());
    }
}
