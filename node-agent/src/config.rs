//! Every setting of the node agent in one place: its flag, its environment
//! variable and its default.

use std::{
    net::{IpAddr, SocketAddrV4},
    path::PathBuf,
};

use clap::Args;

use crate::datapath::pins::BPFFS_ROOT;

/// Which node, and where its kernel objects live.
#[derive(Args, Clone, Debug)]
pub struct NodeArgs {
    /// This node's name (Kubernetes node name).
    #[arg(long = "node", env = "NODE_NAME")]
    pub node: String,
    /// Pin folder for this node's eBPF objects [default: `/sys/fs/bpf/warren/NODE`].
    #[arg(long, env = "WARREN_BPFFS")]
    pub bpffs: Option<PathBuf>,
}

impl NodeArgs {
    pub fn pin_root(&self) -> PathBuf {
        self.bpffs
            .clone()
            .unwrap_or_else(|| PathBuf::from(BPFFS_ROOT).join(&self.node))
    }
}

/// `warren-node-agent run`.
#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// cgroup v2 folder holding every process of this node (pods and node
    /// daemons); the capture programs attach here.
    #[arg(long, env = "WARREN_CGROUP")]
    pub cgroup: PathBuf,
    /// ztunnel's outbound listener as pods reach it; without it, capture is
    /// off and connects go out untouched.
    #[arg(long, env = "WARREN_ZTUNNEL_OUTBOUND")]
    pub ztunnel: Option<SocketAddrV4>,
    /// ztunnel's outbound listener IPv6 address as pods reach it (same port
    /// as --ztunnel); without it, IPv6 connects are not captured.
    #[arg(long, env = "WARREN_ZTUNNEL_OUTBOUND6", requires = "ztunnel")]
    pub ztunnel6: Option<std::net::Ipv6Addr>,
    /// This node's own addresses (repeatable): the STRICT guard admits
    /// connections from them (ztunnel, probes).
    #[arg(long = "node-addr", env = "WARREN_NODE_ADDRS", value_delimiter = ',')]
    pub node_addrs: Vec<IpAddr>,
    /// Folder of Kubernetes and Istio YAML to read configuration from
    /// (hot-reloaded). Without it or --kube, no pod is enrolled by the agent.
    #[arg(long, env = "WARREN_CONFIG_DIR", conflicts_with = "kube")]
    pub config_dir: Option<PathBuf>,
    /// Read configuration from the Kubernetes API server (in-cluster
    /// credentials, or the kubeconfig).
    #[arg(long, env = "WARREN_KUBE")]
    pub kube: bool,
    /// Namespace whose unselected PeerAuthentication applies mesh-wide.
    #[arg(long, default_value = "istio-system", env = "WARREN_ROOT_NAMESPACE")]
    pub root_namespace: String,
    /// How often the config folder is rescanned in case the watcher missed
    /// an event.
    #[arg(
        long,
        default_value = "10",
        value_name = "SECONDS",
        env = "WARREN_RESCAN_EVERY"
    )]
    pub rescan_every: u64,
    /// How often to log the datapath counters.
    #[arg(
        long,
        default_value = "10",
        value_name = "SECONDS",
        env = "WARREN_REPORT_EVERY"
    )]
    pub report_every: u64,
}
