//! A cluster: nodes and pods made of network namespaces, veths, bridges and
//! cgroups, plus the Kubernetes objects that describe them.
//!
//! ```text
//!   fabric netns:  br0 ──┬── veth ── node n0 netns: fabric0 172.30.0.1 ─ cni0 10.244.0.1 ─┬─ pod (eth0 10.244.0.2)
//!                        │                                                               └─ pod (eth0 10.244.0.3)
//!                        └── veth ── node n1 netns: fabric0 172.30.0.2 ─ cni0 10.244.1.1 ─── pod (eth0 10.244.1.2)
//! ```
//!
//! Nodes route each other's pod CIDRs over the fabric. Each node's pods sit
//! in one cgroup subtree (`<cgroup2>/<id>/<node>/pods/…`), where the node
//! agent attaches its programs; the node's own daemons run in
//! `<cgroup2>/<id>/<node>/system`.

use std::{
    collections::BTreeMap,
    fs,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail, ensure};
use serde::{Deserialize, Serialize};

use crate::{
    addressing, cgroup,
    cleanup::{self, PREFIX},
    manifests,
    netns::{self, ip},
    privilege::require_root,
    sandbox::{Process, Sandbox},
};

/// File in the state folder naming the process that owns the cluster.
pub(crate) const OWNER_FILE: &str = "owner.json";
const STATE_FILE: &str = "cluster.json";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Node {
    /// Kubernetes node name, unique on the machine: `<cluster id>-n<i>`.
    pub name: String,
    pub index: usize,
    /// Address on the fabric (the node IP).
    pub ip: Ipv4Addr,
    /// IPv6 address on the fabric.
    pub ip6: Ipv6Addr,
    /// `10.244.<i>.0/24`.
    pub pod_cidr: String,
    /// The node's namespace and its daemons' cgroup.
    pub sandbox: Sandbox,
    /// The node's cgroup subtree: its pods and its daemons. The node agent
    /// attaches its programs here.
    pub cgroup: PathBuf,
    /// The cgroup subtree holding this node's pods.
    pub pods_cgroup: PathBuf,
    /// The node's address on its pod bridge: pods' default gateway, and how
    /// pods reach the node's ztunnel.
    pub gateway: Ipv4Addr,
    /// The same for IPv6.
    pub gateway6: Ipv6Addr,
    /// `fd00:244:<i>::/64`.
    pub pod_cidr6: String,
    /// Where this node's eBPF objects are pinned.
    pub bpffs: PathBuf,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// Name of the node it runs on.
    pub node: String,
    pub ip: Ipv4Addr,
    pub ip6: Ipv6Addr,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    /// The node-side end of its veth (inside the node's namespace).
    pub host_veth: String,
    pub sandbox: Sandbox,
    /// Shown as on a Kubernetes node (see [`Cluster::add_kubelet_pod`]).
    #[serde(default)]
    pub kubelet: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServicePort {
    pub name: String,
    pub port: u16,
    pub target_port: u16,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub selector: BTreeMap<String, String>,
    pub cluster_ip: Ipv4Addr,
    pub ports: Vec<ServicePort>,
}

/// What the config folder shows of a new pod.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shown {
    /// Running, with its address.
    Started,
    /// Its sandbox being built: no address yet.
    Starting,
    /// Nothing: the agent never hears of it.
    Unlisted,
}

/// What to create with [`Cluster::add_pod`].
#[derive(Clone, Debug, Default)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    /// Index of the node to run on.
    pub node: usize,
    pub labels: BTreeMap<String, String>,
    /// Defaults to `default`.
    pub service_account: Option<String>,
}

/// The process that owns a cluster: when it is gone, the cluster is a
/// leftover. The start time guards against pid reuse.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Owner {
    pid: u32,
    start_time: u64,
}

impl Owner {
    fn current() -> Result<Self> {
        let pid = std::process::id();
        Ok(Self {
            pid,
            start_time: start_time(pid).context("reading this process's start time")?,
        })
    }

    pub(crate) fn is_alive(&self) -> bool {
        start_time(self.pid).is_some_and(|t| t == self.start_time)
    }
}

/// Field 22 of /proc/PID/stat: start time in clock ticks since boot.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after it don't.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// `Ok(None)` for a detached cluster, the owner otherwise.
pub(crate) fn read_owner(state_dir: &Path) -> Result<Option<Owner>> {
    let text = fs::read_to_string(state_dir.join(OWNER_FILE))?;
    Ok(serde_json::from_str(&text)?)
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct State {
    id: String,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    services: Vec<Service>,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// Next free pod slot (address and veth number) per node.
    next_slot: Vec<usize>,
}

/// How to build a cluster; see [`Cluster::builder`].
#[derive(Clone, Debug)]
pub struct ClusterBuilder {
    nodes: usize,
    pods_per_node: usize,
    detached: bool,
}

impl ClusterBuilder {
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }

    /// Generic pods `n<i>-p<j>` in namespace `default` (label `app=sample`).
    pub fn pods_per_node(mut self, m: usize) -> Self {
        self.pods_per_node = m;
        self
    }

    /// Keep the cluster when the handle is dropped and the process exits
    /// (`cargo xtask cluster up`); remove it with `cluster down`.
    pub fn detached(mut self) -> Self {
        self.detached = true;
        self
    }

    pub fn up(self) -> Result<Cluster> {
        Cluster::up(self)
    }
}

/// A running cluster. Dropping an owned cluster tears it down.
#[derive(Debug)]
pub struct Cluster {
    state: State,
    dir: PathBuf,
    owned: bool,
}

static LOG_SEQ: AtomicUsize = AtomicUsize::new(0);

impl Cluster {
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder {
            nodes: 2,
            pods_per_node: 0,
            detached: false,
        }
    }

    fn up(spec: ClusterBuilder) -> Result<Self> {
        require_root()?;
        addressing::check_size(spec.nodes, spec.pods_per_node)?;
        // Leftovers of killed runs use other ids, so they cannot collide
        // with us; removing them keeps the machine from filling up.
        // Best effort: a leftover that cannot be removed must not stop a new
        // cluster from coming up.
        match cleanup::reap_stale() {
            Ok(reaped) => reaped
                .iter()
                .for_each(|id| eprintln!("testbed: removed leftover cluster {id}")),
            Err(err) => eprintln!("warning: removing leftovers of killed runs: {err:#}"),
        }
        let (id, dir) = claim_id()?;
        cleanup::remove_on_interrupt(&id);
        // From here on, dropping `cluster` (on error too) tears down what
        // exists so far.
        let mut cluster = Cluster {
            state: State {
                id: id.clone(),
                next_slot: vec![0; spec.nodes],
                ..State::default()
            },
            dir,
            owned: true,
        };
        let owner = if spec.detached {
            None
        } else {
            Some(Owner::current()?)
        };
        // Atomically: a concurrent `reap_stale` must see no owner file (being
        // created) or a whole one, never an empty file it would call stale.
        let tmp = cluster.dir.join(format!(".{OWNER_FILE}.tmp"));
        fs::write(&tmp, serde_json::to_vec(&owner)?)?;
        fs::rename(&tmp, cluster.dir.join(OWNER_FILE))?;
        fs::create_dir_all(cluster.config_dir())?;
        fs::create_dir_all(cluster.log_dir())?;

        cluster.create_fabric()?;
        for i in 0..spec.nodes {
            cluster.create_node(i)?;
        }
        cluster.route_between_nodes()?;
        cluster.add_namespace("default", BTreeMap::new())?;
        for node in 0..spec.nodes {
            for j in 0..spec.pods_per_node {
                cluster.add_pod(PodSpec {
                    name: format!("n{node}-p{j}"),
                    namespace: "default".into(),
                    node,
                    labels: BTreeMap::from([("app".into(), "sample".into())]),
                    service_account: None,
                })?;
            }
        }
        if spec.detached {
            cluster.owned = false;
            cleanup::forget_on_interrupt(&id);
        }
        cluster.save()?;
        Ok(cluster)
    }

    /// A handle on an existing cluster (made by this or another process).
    /// Dropping it leaves the cluster alone.
    pub fn open(id: &str) -> Result<Self> {
        let dir = cleanup::state_base().join(id);
        let text = fs::read_to_string(dir.join(STATE_FILE))
            .with_context(|| format!("no cluster {id} (is it up? `cargo xtask cluster status`)"))?;
        let state: State =
            serde_json::from_str(&text).with_context(|| format!("reading state of {id}"))?;
        Ok(Self {
            state,
            dir,
            owned: false,
        })
    }

    /// Ids of the clusters with saved state on this machine.
    pub fn list() -> Result<Vec<String>> {
        Ok(cleanup::cluster_ids()?
            .into_iter()
            .filter(|id| cleanup::state_base().join(id).join(STATE_FILE).exists())
            .collect())
    }

    /// Keeps the cluster after this process exits (as `cluster up` does);
    /// remove it later with `cargo xtask cluster down`.
    pub fn detach(mut self) -> Result<String> {
        let none: Option<Owner> = None;
        let tmp = self.dir.join(format!(".{OWNER_FILE}.tmp"));
        fs::write(&tmp, serde_json::to_vec(&none)?)?;
        fs::rename(&tmp, self.dir.join(OWNER_FILE))?;
        self.owned = false;
        cleanup::forget_on_interrupt(&self.state.id);
        Ok(self.state.id.clone())
    }

    /// Tears the cluster down now, reporting errors (drop only warns).
    pub fn down(mut self) -> Result<cleanup::Removed> {
        self.owned = false;
        cleanup::forget_on_interrupt(&self.state.id);
        cleanup::remove_cluster(&self.state.id)
    }

    pub fn id(&self) -> &str {
        &self.state.id
    }

    pub fn nodes(&self) -> &[Node] {
        &self.state.nodes
    }

    pub fn pods(&self) -> &[Pod] {
        &self.state.pods
    }

    pub fn services(&self) -> &[Service] {
        &self.state.services
    }

    pub fn node(&self, index: usize) -> Result<&Node> {
        self.state
            .nodes
            .get(index)
            .with_context(|| format!("cluster {} has no node {index}", self.state.id))
    }

    /// A pod by `namespace/name`, or by bare name if that is unambiguous.
    pub fn pod(&self, name: &str) -> Result<&Pod> {
        let (ns, name) = match name.split_once('/') {
            Some((ns, n)) => (Some(ns), n),
            None => (None, name),
        };
        let matches: Vec<&Pod> = self
            .state
            .pods
            .iter()
            .filter(|p| p.name == name && ns.is_none_or(|ns| p.namespace == ns))
            .collect();
        match matches.as_slice() {
            [pod] => Ok(pod),
            [] => bail!(
                "cluster {} has no pod {name}; pods: {}",
                self.state.id,
                self.state
                    .pods
                    .iter()
                    .map(|p| format!("{}/{}", p.namespace, p.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            _ => bail!("pod name {name} is ambiguous: say namespace/name"),
        }
    }

    /// The folder holding the Kubernetes objects this cluster shows.
    pub fn config_dir(&self) -> PathBuf {
        self.dir.join("config")
    }

    /// A folder for a node's daemons' runtime files (the agent's socket, the
    /// CA's state), removed with the cluster.
    pub fn node_dir(&self, node: &Node) -> Result<PathBuf> {
        let dir = self.dir.join("nodes").join(&node.name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    /// The folder holding the output of processes started here.
    pub fn log_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// Creates or relabels a namespace.
    pub fn add_namespace(&mut self, name: &str, labels: BTreeMap<String, String>) -> Result<()> {
        manifests::write_namespace(&self.config_dir(), name, &labels)?;
        self.state.namespaces.insert(name.to_owned(), labels);
        self.save()
    }

    /// Writes node `node`'s Node object with these labels (e.g. Kubernetes'
    /// topology labels, for locality-aware load balancing). A node without
    /// one has no locality.
    pub fn label_node(&self, node: &str, labels: BTreeMap<String, String>) -> Result<()> {
        let node = self
            .nodes()
            .iter()
            .find(|n| n.name == node || n.name.ends_with(&format!("-{node}")))
            .with_context(|| format!("no node {node}"))?;
        manifests::write_node(&self.config_dir(), &node.name, &labels)?;
        Ok(())
    }

    /// Labels of a namespace.
    pub fn namespace_labels(&self, name: &str) -> Option<&BTreeMap<String, String>> {
        self.state.namespaces.get(name)
    }

    /// Creates a pod: namespace, veth on its node's bridge, address, default
    /// route, cgroup, and its `Pod` object (plus updated EndpointSlices).
    pub fn add_pod(&mut self, spec: PodSpec) -> Result<&Pod> {
        self.add_pod_shown(spec, false, Shown::Started)
    }

    /// Adds a pod shown as a kubelet on a Kubernetes node shows it: none of the
    /// testbed's annotations (the node agent finds its namespace and veth from its
    /// UID), its cgroup named after the UID as kubelet's systemd driver names it,
    /// and a sandbox process ("pause") in it for as long as the pod lives.
    pub fn add_kubelet_pod(&mut self, spec: PodSpec) -> Result<&Pod> {
        self.add_pod_shown(spec, true, Shown::Started)
    }

    /// [`Cluster::add_kubelet_pod`] caught while kubelet builds the sandbox: the
    /// network namespace, veth and sandbox process exist, and the Pod object has no
    /// address yet. [`Cluster::pod_started`] publishes it, as kubelet does once the
    /// CNI plugins have run.
    pub fn add_starting_pod(&mut self, spec: PodSpec) -> Result<&Pod> {
        self.add_pod_shown(spec, true, Shown::Starting)
    }

    /// [`Cluster::add_starting_pod`] whose Pod object is never written: a
    /// sandbox the node agent never hears of (no Service may select it).
    pub fn add_unlisted_pod(&mut self, spec: PodSpec) -> Result<&Pod> {
        self.add_pod_shown(spec, true, Shown::Unlisted)
    }

    /// Publishes a starting pod's address and phase (see [`Cluster::add_starting_pod`]).
    pub fn pod_started(&self, name: &str) -> Result<()> {
        let pod = self.pod(name)?;
        let node = self
            .state
            .nodes
            .iter()
            .find(|n| n.name == pod.node)
            .with_context(|| format!("node {} of pod {name}", pod.node))?;
        manifests::write_pod(&self.config_dir(), pod, node)?;
        Ok(())
    }

    fn add_pod_shown(&mut self, spec: PodSpec, kubelet: bool, shown: Shown) -> Result<&Pod> {
        if self
            .state
            .pods
            .iter()
            .any(|p| p.name == spec.name && p.namespace == spec.namespace)
        {
            bail!("pod {}/{} already exists", spec.namespace, spec.name);
        }
        let node = self.node(spec.node)?.clone();
        if !self.state.namespaces.contains_key(&spec.namespace) {
            self.add_namespace(&spec.namespace, BTreeMap::new())?;
        }
        let slot = self.state.next_slot[spec.node];
        let ip_addr = addressing::pod_ip(spec.node, slot)?;
        let netns_name = format!("{}-pod-{}-{}", self.state.id, spec.namespace, spec.name);
        let host_veth = format!("veth{slot}");
        let uid = format!("{}-{}-{}", self.state.id, spec.namespace, spec.name);
        let cgroup = if kubelet {
            let slice = format!("kubepods-besteffort-pod{}.slice", uid.replace('-', "_"));
            node.pods_cgroup
                .join("kubepods.slice/kubepods-besteffort.slice")
                .join(slice)
        } else {
            node.pods_cgroup
                .join(format!("{}.{}", spec.namespace, spec.name))
        };

        netns::create(&netns_name)?;
        // The veth is born with one end in each namespace: nothing is ever
        // created in the host's namespace.
        ip(&[
            "-n",
            &node.sandbox_netns_name(),
            "link",
            "add",
            &host_veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &netns_name,
        ])?;
        ip(&[
            "-n",
            &node.sandbox_netns_name(),
            "link",
            "set",
            &host_veth,
            "master",
            "cni0",
            "up",
        ])?;
        let cidr = format!("{ip_addr}/{}", addressing::PREFIX_LEN);
        ip(&["-n", &netns_name, "addr", "add", &cidr, "dev", "eth0"])?;
        ip(&["-n", &netns_name, "link", "set", "eth0", "up"])?;
        let gw = addressing::pod_gateway(spec.node).to_string();
        ip(&["-n", &netns_name, "route", "add", "default", "via", &gw])?;
        // Dual-stack; no duplicate address detection, so the address is
        // usable at once.
        let ip6_addr = addressing::pod_ip6(spec.node, slot);
        let cidr6 = format!("{ip6_addr}/{}", addressing::PREFIX_LEN6);
        ip(&[
            "-n",
            &netns_name,
            "addr",
            "add",
            &cidr6,
            "dev",
            "eth0",
            "nodad",
        ])?;
        let gw6 = addressing::pod_gateway6(spec.node).to_string();
        ip(&[
            "-n",
            &netns_name,
            "-6",
            "route",
            "add",
            "default",
            "via",
            &gw6,
        ])?;
        let netns_path = netns::path(&netns_name);
        netns::sysctl(&netns_path, "net.ipv4.tcp_tw_reuse", "1")?;
        fs::create_dir_all(&cgroup)
            .with_context(|| format!("creating cgroup {}", cgroup.display()))?;

        let mut env = vec![
            ("POD_NAME".to_owned(), spec.name.clone()),
            ("POD_NAMESPACE".to_owned(), spec.namespace.clone()),
            ("POD_IP".to_owned(), ip_addr.to_string()),
            ("NODE_NAME".to_owned(), node.name.clone()),
        ];
        if let Some(version) = spec.labels.get("version") {
            env.push(("SAMPLE_VERSION".to_owned(), version.clone()));
        }
        let pod = Pod {
            uid,
            kubelet,
            node: node.name.clone(),
            ip: ip_addr,
            ip6: ip6_addr,
            service_account: spec.service_account.unwrap_or_else(|| "default".into()),
            host_veth,
            sandbox: Sandbox {
                label: format!("pod {}/{}", spec.namespace, spec.name),
                netns: netns_path,
                cgroup,
                env,
            },
            name: spec.name,
            namespace: spec.namespace,
            labels: spec.labels,
        };
        if kubelet {
            // Reparented to init by the shell, and killed with the cgroup.
            let status = pod
                .sandbox
                .command("sh")?
                .args(["-c", "sleep infinity </dev/null >/dev/null 2>&1 &"])
                .stdin(std::process::Stdio::null())
                .status()
                .context("starting the pod's sandbox process")?;
            ensure!(
                status.success(),
                "starting the pod's sandbox process: {status}"
            );
        }
        match shown {
            Shown::Started => {
                manifests::write_pod(&self.config_dir(), &pod, &node)?;
            }
            Shown::Starting => {
                manifests::write_starting_pod(&self.config_dir(), &pod, &node)?;
            }
            Shown::Unlisted => {}
        }
        self.state.next_slot[spec.node] = slot + 1;
        self.state.pods.push(pod);
        self.write_endpoint_slices()?;
        self.save()?;
        self.state.pods.last().context("pod just added")
    }

    /// Removes a pod: its processes, namespace, cgroup and object.
    pub fn remove_pod(&mut self, name: &str) -> Result<()> {
        let pod = self.pod(name)?.clone();
        cgroup::remove_tree(&pod.sandbox.cgroup)?;
        let netns_name = pod
            .sandbox
            .netns
            .file_name()
            .and_then(|n| n.to_str())
            .context("pod netns path has no name")?
            .to_owned();
        netns::delete(&netns_name)?;
        manifests::remove(&self.config_dir(), "Pod", Some(&pod.namespace), &pod.name)?;
        self.state
            .pods
            .retain(|p| !(p.name == pod.name && p.namespace == pod.namespace));
        self.write_endpoint_slices()?;
        self.save()
    }

    /// Creates a ClusterIP service selecting pods by labels, and its
    /// EndpointSlice.
    pub fn add_service(
        &mut self,
        namespace: &str,
        name: &str,
        selector: BTreeMap<String, String>,
        ports: Vec<ServicePort>,
    ) -> Result<&Service> {
        if self
            .state
            .services
            .iter()
            .any(|s| s.name == name && s.namespace == namespace)
        {
            bail!("service {namespace}/{name} already exists");
        }
        let svc = Service {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            labels: BTreeMap::new(),
            selector,
            cluster_ip: addressing::cluster_ip(self.state.services.len())?,
            ports,
        };
        manifests::write_service(&self.config_dir(), &svc)?;
        self.state.services.push(svc);
        self.write_endpoint_slices()?;
        self.save()?;
        self.state.services.last().context("service just added")
    }

    /// Starts `program ARGS…` in a pod or node sandbox, output to a log file
    /// in [`Cluster::log_dir`].
    pub fn spawn(&self, sandbox: &Sandbox, program: &str, args: &[&str]) -> Result<Process> {
        let mut cmd: Command = sandbox.command(program)?;
        cmd.args(args);
        let seq = LOG_SEQ.fetch_add(1, Ordering::Relaxed);
        let base = Path::new(program)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("proc");
        let who = sandbox.label.replace(['/', ' '], "_");
        let log = self.log_dir().join(format!("{who}.{base}.{seq}.log"));
        sandbox.spawn(cmd, &log)
    }

    fn create_fabric(&mut self) -> Result<()> {
        let fabric = self.fabric_netns();
        netns::create(&fabric)?;
        // A bridge without an address of its own takes its lowest port's, so
        // it changes as ports come and go; its neighbours' cached entries then
        // point nowhere until they are probed again (seconds of silence).
        // Pinned, as the CNI bridge plugin pins its bridge's.
        ip(&[
            "-n",
            &fabric,
            "link",
            "add",
            "br0",
            "address",
            &addressing::bridge_mac(None),
            "type",
            "bridge",
        ])?;
        ip(&["-n", &fabric, "link", "set", "br0", "up"])
    }

    fn create_node(&mut self, index: usize) -> Result<()> {
        let name = format!("{}-n{index}", self.state.id);
        let netns_name = name.clone();
        let fabric = self.fabric_netns();
        let node_ip = addressing::node_ip(index);
        netns::create(&netns_name)?;
        let fabric_port = format!("n{index}");
        ip(&[
            "-n",
            &fabric,
            "link",
            "add",
            &fabric_port,
            "type",
            "veth",
            "peer",
            "name",
            "fabric0",
            "netns",
            &netns_name,
        ])?;
        ip(&[
            "-n",
            &fabric,
            "link",
            "set",
            &fabric_port,
            "master",
            "br0",
            "up",
        ])?;
        ip(&[
            "-n",
            &netns_name,
            "addr",
            "add",
            &format!("{node_ip}/{}", addressing::PREFIX_LEN),
            "dev",
            "fabric0",
        ])?;
        ip(&["-n", &netns_name, "link", "set", "fabric0", "up"])?;
        // Pinned (see `create_fabric`): pods come and go on it, and a pod that
        // went quiet would otherwise find the gateway's address moved.
        ip(&[
            "-n",
            &netns_name,
            "link",
            "add",
            "cni0",
            "address",
            &addressing::bridge_mac(Some(index)),
            "type",
            "bridge",
        ])?;
        let gw = format!(
            "{}/{}",
            addressing::pod_gateway(index),
            addressing::PREFIX_LEN
        );
        ip(&["-n", &netns_name, "addr", "add", &gw, "dev", "cni0"])?;
        ip(&["-n", &netns_name, "link", "set", "cni0", "up"])?;
        let netns_path = netns::path(&netns_name);
        let node_ip6 = addressing::node_ip6(index);
        ip(&[
            "-n",
            &netns_name,
            "addr",
            "add",
            &format!("{node_ip6}/{}", addressing::PREFIX_LEN6),
            "dev",
            "fabric0",
            "nodad",
        ])?;
        let gw6 = format!(
            "{}/{}",
            addressing::pod_gateway6(index),
            addressing::PREFIX_LEN6
        );
        ip(&[
            "-n",
            &netns_name,
            "addr",
            "add",
            &gw6,
            "dev",
            "cni0",
            "nodad",
        ])?;
        netns::sysctl(&netns_path, "net.ipv6.conf.all.forwarding", "1")?;
        netns::sysctl(&netns_path, "net.ipv4.ip_forward", "1")?;
        netns::sysctl(&netns_path, "net.ipv4.tcp_tw_reuse", "1")?;

        let cgroup_root = cgroup::v2_root()?
            .join(&self.state.id)
            .join(format!("n{index}"));
        let system = cgroup_root.join("system");
        let pods = cgroup_root.join("pods");
        for dir in [&system, &pods] {
            fs::create_dir_all(dir)
                .with_context(|| format!("creating cgroup {}", dir.display()))?;
        }
        self.state.nodes.push(Node {
            bpffs: Path::new(cleanup::BPFFS_DIR).join(&name),
            sandbox: Sandbox {
                label: format!("node {name}"),
                netns: netns_path,
                cgroup: system,
                env: vec![
                    ("NODE_NAME".into(), name.clone()),
                    ("NODE_IP".into(), node_ip.to_string()),
                ],
            },
            cgroup: cgroup_root,
            pods_cgroup: pods,
            gateway: addressing::pod_gateway(index),
            gateway6: addressing::pod_gateway6(index),
            pod_cidr6: format!(
                "{}/{}",
                addressing::pod_cidr6(index),
                addressing::PREFIX_LEN6
            ),
            ip6: node_ip6,
            pod_cidr: format!("{}/{}", addressing::pod_cidr(index), addressing::PREFIX_LEN),
            ip: node_ip,
            index,
            name,
        });
        Ok(())
    }

    fn route_between_nodes(&self) -> Result<()> {
        for from in &self.state.nodes {
            for to in self.state.nodes.iter().filter(|n| n.index != from.index) {
                let via = to.ip.to_string();
                ip(&[
                    "-n",
                    &from.sandbox_netns_name(),
                    "route",
                    "add",
                    &to.pod_cidr,
                    "via",
                    &via,
                ])?;

                let via6 = to.ip6.to_string();
                ip(&[
                    "-n",
                    &from.sandbox_netns_name(),
                    "-6",
                    "route",
                    "add",
                    &to.pod_cidr6,
                    "via",
                    &via6,
                ])?;
            }
        }
        Ok(())
    }

    fn write_endpoint_slices(&self) -> Result<()> {
        for svc in &self.state.services {
            let selected: Vec<(&Pod, &Node)> = self
                .state
                .pods
                .iter()
                .filter(|p| {
                    p.namespace == svc.namespace
                        && svc.selector.iter().all(|(k, v)| p.labels.get(k) == Some(v))
                })
                .filter_map(|p| {
                    self.state
                        .nodes
                        .iter()
                        .find(|n| n.name == p.node)
                        .map(|n| (p, n))
                })
                .collect();
            manifests::write_endpoint_slice(&self.config_dir(), svc, &selected)?;
        }
        Ok(())
    }

    fn fabric_netns(&self) -> String {
        format!("{}-fabric", self.state.id)
    }

    fn save(&self) -> Result<()> {
        let tmp = self.dir.join(format!(".{STATE_FILE}.tmp"));
        fs::write(&tmp, serde_json::to_vec_pretty(&self.state)?)?;
        fs::rename(&tmp, self.dir.join(STATE_FILE))?;
        Ok(())
    }
}

impl Node {
    /// The name of the node's network namespace (as `ip -n` wants it).
    pub fn sandbox_netns_name(&self) -> String {
        self.name.clone()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        cleanup::forget_on_interrupt(&self.state.id);
        if let Err(err) = cleanup::remove_cluster(&self.state.id) {
            eprintln!("warning: tearing down cluster {}: {err:#}", self.state.id);
        }
    }
}

/// Picks an unused id and claims it by creating its state folder
/// (`create_dir` is atomic: two processes cannot both win).
fn claim_id() -> Result<(String, PathBuf)> {
    let base = cleanup::state_base();
    fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    let pid = u64::from(std::process::id());
    for attempt in 0u64..64 {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as u64);
        // Mix pid, time and attempt; 16 bits keep interface-name budgets.
        let mixed =
            (nanos ^ pid.wrapping_mul(0x9e37_79b9) ^ attempt.wrapping_mul(0x85eb_ca6b)) & 0xffff;
        let id = format!("{PREFIX}{mixed:04x}");
        let dir = base.join(&id);
        let taken = !netns::list(&format!("{id}-"))?.is_empty();
        if taken {
            continue;
        }
        match fs::create_dir(&dir) {
            Ok(()) => return Ok((id, dir)),
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(err) => return Err(err).with_context(|| format!("creating {}", dir.display())),
        }
    }
    bail!(
        "could not find a free cluster id after 64 attempts; run `cargo xtask cluster down --all`"
    )
}
