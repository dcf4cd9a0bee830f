//! Every setting of the node agent in one place: its flag, its environment
//! variable and its default.

use std::{
    net::{IpAddr, SocketAddr, SocketAddrV4},
    path::PathBuf,
    time::Duration,
};

use clap::Args;

use crate::datapath::pins::BPFFS_ROOT;

/// The `warren-node-agent` command line (shared with tests that check what the
/// Helm chart passes it).
#[derive(clap::Parser)]
#[command(name = "warren-node-agent", version, about = "Warren's per-node agent")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once, at start: the variants' sizes cost nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(clap::Subcommand)]
pub enum Command {
    /// Install (or adopt) the eBPF datapath on this node and keep it
    /// configured until SIGINT or SIGTERM. Pinned programs stay attached
    /// after the agent exits, so capture survives restarts and upgrades.
    Run(RunArgs),
    /// Remove every program, link, map and pin of this node (and, given the CNI
    /// folders, the CNI plugin and its entry).
    Uninstall(UninstallArgs),
    /// The mesh certificate authority: serve (default), or manage its
    /// state folder (`issue-token`, `rotate-root`, `remove-root`).
    Ca(CaArgs),
    /// Kubernetes: deploy a waypoint (ServiceAccount and Deployment) for
    /// every Gateway of class warren-waypoint or istio-waypoint, and report
    /// in the Gateway's status. One per cluster.
    WaypointController(WaypointControllerArgs),
}

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

/// `warren-node-agent uninstall`.
#[derive(Args, Clone, Debug)]
pub struct UninstallArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    #[command(flatten)]
    pub cni: CniDirs,
}

/// Where the node's container runtime keeps its CNI plugins and configuration
/// (as mounted into the agent's container).
#[derive(Args, Clone, Debug, Default)]
pub struct CniDirs {
    /// The runtime's CNI configuration folder (`/etc/cni/net.d` on the host):
    /// the agent chains `warren-cni` after the node's network plugin there.
    #[arg(long, env = "WARREN_CNI_CONF_DIR", requires = "cni_bin_dir")]
    pub cni_conf_dir: Option<PathBuf>,
    /// The runtime's CNI plugin folder (`/opt/cni/bin` on the host).
    #[arg(long, env = "WARREN_CNI_BIN_DIR", requires = "cni_conf_dir")]
    pub cni_bin_dir: Option<PathBuf>,
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
    /// Port of ztunnel's DNS proxy on the `--ztunnel` address (and `--ztunnel6`, for
    /// queries to IPv6 servers): enrolled pods' DNS queries (UDP port 53) go there,
    /// and it answers for the mesh's names
    /// (Services, ServiceEntry hosts) and forwards the rest. Without it pods' DNS
    /// goes where they send it.
    #[arg(long, env = "WARREN_ZTUNNEL_DNS_PORT", requires = "ztunnel")]
    pub ztunnel_dns_port: Option<u16>,
    /// Let local socket pairs (a pod and ztunnel on this node) skip the TCP
    /// stack with sk_msg. Experimental and off by default: the kernel's
    /// sockmap can fail a blocking reader with EAGAIN and has no
    /// back-pressure (see docs/debugging.md).
    #[arg(long, env = "WARREN_SOCKET_SHORTCUT")]
    pub socket_shortcut: bool,
    /// Hand connections from outside the mesh to enrolled pods to ztunnel's
    /// plaintext inbound listener in each pod's namespace, so that
    /// PeerAuthentication and the pods' L4 policies decide on them (Istio's
    /// inbound capture). `false` lets them reach the pods directly, past
    /// those policies: only for testing the datapath without ztunnel.
    #[arg(long, env = "WARREN_INBOUND_CAPTURE", default_value_t = true, action = clap::ArgAction::Set)]
    pub inbound_capture: bool,
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
    /// The ConfigMap of the root namespace holding Istio's mesh config under
    /// its `mesh` key (its `extensionProviders` are read): `istio`, as
    /// Istio names it (`istio-<revision>` for a revision).
    #[arg(long, default_value = "istio", env = "WARREN_MESH_CONFIG")]
    pub mesh_config: String,
    /// The namespace of Warren's own pods (the chart's release namespace): a
    /// process in a pod may subscribe as this node's ztunnel only if its pod
    /// is of this namespace. Unset, only a process in no pod may (the
    /// testbed's).
    #[arg(long, env = "WARREN_SYSTEM_NAMESPACE")]
    pub system_namespace: Option<String>,
    /// With --kube: a namespace whose Secrets DestinationRules may name as
    /// `tls.credentialName`, and whose ConfigMaps BackendTLSPolicies may name
    /// as CA bundles (repeat, or separate with commas). The agent reads
    /// Secrets and ConfigMaps of these namespaces alone (a Role in each must
    /// let it get, list and watch them); elsewhere a `credentialName` or a
    /// `caCertificateRef` fails closed. A folder source reads the Secrets and
    /// ConfigMaps of its folder.
    #[arg(
        long = "secret-namespace",
        value_delimiter = ',',
        env = "WARREN_SECRET_NAMESPACES"
    )]
    pub secret_namespaces: Vec<String>,
    /// How often the config folder is rescanned in case the watcher missed
    /// an event.
    #[arg(
        long,
        default_value = "10",
        value_name = "SECONDS",
        env = "WARREN_RESCAN_EVERY"
    )]
    pub rescan_every: u64,
    /// Where this node's workload certificates come from.
    #[command(flatten)]
    pub identity: IdentityArgs,
    /// Unix socket where the CNI plugin (`warren-cni`) asks the agent to capture a
    /// pod as the runtime builds its sandbox, before its containers start. The path
    /// must be the same on the host, where the runtime runs the plugin.
    #[arg(long, env = "WARREN_CNI_SOCKET")]
    pub cni_socket: Option<PathBuf>,
    #[command(flatten)]
    pub cni_dirs: CniDirs,
    /// The `warren-cni` binary to install [default: beside the agent].
    #[arg(long, env = "WARREN_CNI_PLUGIN")]
    pub cni_plugin: Option<PathBuf>,
    /// Namespaces whose pods the plugin lets start without asking the agent (they
    /// start even while the agent is down).
    #[arg(
        long = "cni-exclude-namespace",
        env = "WARREN_CNI_EXCLUDE_NAMESPACES",
        value_delimiter = ',',
        default_value = "kube-system"
    )]
    pub cni_exclude_namespaces: Vec<String>,
    /// How long a CNI call may wait for the pod to show in configuration before the
    /// pod is refused (the runtime then tries again).
    #[arg(long, env = "WARREN_CNI_WAIT", default_value = "10s", value_parser = parse_duration)]
    pub cni_wait: Duration,
    /// Unix socket where this node's proxies subscribe to their config.
    #[arg(long, default_value = warren_api::socket::DEFAULT_PATH, env = "WARREN_AGENT_SOCKET")]
    pub socket: PathBuf,
    /// The mesh's SPIFFE trust domain.
    #[arg(long, default_value = warren_api::identity::DEFAULT_TRUST_DOMAIN, env = "WARREN_TRUST_DOMAIN")]
    pub trust_domain: String,
    /// Other trust domains taken as the mesh's own (repeatable; Istio's
    /// `trustDomainAliases`): their peers are accepted, and policies naming
    /// them name the same workloads. `cluster.local` in a policy always
    /// stands for the mesh's trust domain.
    #[arg(
        long = "trust-domain-alias",
        env = "WARREN_TRUST_DOMAIN_ALIASES",
        value_delimiter = ','
    )]
    pub trust_domain_aliases: Vec<String>,
    /// The cluster's DNS domain (service hostnames end with it).
    #[arg(long, default_value = "cluster.local", env = "WARREN_CLUSTER_DOMAIN")]
    pub cluster_domain: String,
    /// Where proxies send connections to destinations the mesh does not
    /// know: ALLOW_ANY (straight there) or REGISTRY_ONLY (refused).
    #[arg(long, default_value = "ALLOW_ANY", value_parser = ["ALLOW_ANY", "REGISTRY_ONLY"], env = "WARREN_OUTBOUND_POLICY")]
    pub outbound_policy: String,
    /// Run this node's waypoints: for every waypoint Gateway, a
    /// `warren-waypoint` inside each pod of this node labelled with its
    /// name. `--run-waypoints` alone means true. Default: on with
    /// --config-dir (local mode, where nothing else would run them), off
    /// with --kube (a Deployment runs them).
    #[arg(
        long,
        env = "WARREN_RUN_WAYPOINTS",
        num_args = 0..=1,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    pub run_waypoints: Option<bool>,
    /// The waypoint binary the agent runs [default: `warren-waypoint`
    /// beside the agent's own binary].
    #[arg(long, env = "WARREN_WAYPOINT_BIN")]
    pub waypoint_bin: Option<PathBuf>,
    /// Folder for the waypoints' output, one `waypoint.NS.POD.log` each;
    /// without it they write to the agent's own stdout and stderr.
    #[arg(long, env = "WARREN_WAYPOINT_LOG_DIR")]
    pub waypoint_log_dir: Option<PathBuf>,
    /// How long a stopped waypoint may drain its open requests (after
    /// SIGTERM) before it is killed.
    #[arg(long, env = "WARREN_WAYPOINT_STOP_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub waypoint_stop_grace: Duration,
    /// How often to log the datapath counters.
    #[arg(
        long,
        default_value = "10",
        value_name = "SECONDS",
        env = "WARREN_REPORT_EVERY"
    )]
    pub report_every: u64,
}

impl RunArgs {
    /// Whether this agent runs its node's waypoints (see `--run-waypoints`).
    pub fn runs_waypoints(&self) -> bool {
        self.run_waypoints.unwrap_or(self.config_dir.is_some())
    }
}

/// `warren-node-agent waypoint-controller`: a Deployment of
/// `warren-waypoint` for every waypoint Gateway (Kubernetes only; in local
/// mode `run --run-waypoints` runs them). The API server is reached with
/// in-cluster credentials or the kubeconfig (`KUBECONFIG`).
#[derive(Args, Clone, Debug)]
pub struct WaypointControllerArgs {
    /// The `warren-waypoint` image the Deployments run.
    #[arg(long, env = "WARREN_WAYPOINT_IMAGE")]
    pub image: String,
    /// Watch the Gateways of this namespace only [default: every namespace].
    #[arg(long, env = "WARREN_WAYPOINT_CONTROLLER_NAMESPACE")]
    pub namespace: Option<String>,
    /// The node agents' socket on every node (`run --socket`): its folder
    /// is mounted into waypoint pods at the same path.
    #[arg(long, default_value = warren_api::socket::DEFAULT_PATH, env = "WARREN_AGENT_SOCKET")]
    pub agent_socket: PathBuf,
    /// The cluster's DNS domain, as the node agents are given it.
    #[arg(long, default_value = "cluster.local", env = "WARREN_CLUSTER_DOMAIN")]
    pub cluster_domain: String,
    /// (repeatable, or comma-separated) The node agents' `--secret-namespace`
    /// list: the namespaces whose ConfigMaps BackendTLSPolicies may name as
    /// CA bundles. The controller reads their ConfigMaps (not their Secrets)
    /// to tell each policy whether its references resolve.
    #[arg(
        long = "secret-namespace",
        env = "WARREN_SECRET_NAMESPACES",
        value_delimiter = ','
    )]
    pub secret_namespaces: Vec<String>,
}

/// `warren-node-agent ca`: the mesh certificate authority. Without a
/// subcommand it serves; the subcommands manage its state folder.
#[derive(Args, Clone, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct CaArgs {
    #[command(subcommand)]
    pub command: Option<CaCommand>,
    #[command(flatten)]
    pub serve: CaServeArgs,
    /// Where the root is kept with --kube (kept out of `CaServeArgs` so that
    /// code building those by hand needs no Kubernetes settings).
    #[command(flatten)]
    pub secret: CaSecretArgs,
}

/// What `warren-node-agent ca` does besides serving.
#[derive(clap::Subcommand, Clone, Debug)]
pub enum CaCommand {
    /// Create a bootstrap token for one node (local mode) and print it.
    IssueToken(CaIssueTokenArgs),
    /// Make a new root the signer. The previous root stays in the trust
    /// bundle until `remove-root` or its expiry.
    RotateRoot(CaRotateRootArgs),
    /// Stop trusting a retired root (by serial, as `rotate-root` prints it).
    RemoveRoot(CaRemoveRootArgs),
}

/// The CA's state folder.
#[derive(Args, Clone, Debug)]
pub struct CaStateArgs {
    /// Folder holding the CA's root (key mode 0600), the trust bundle
    /// (`root-cert.pem`) and the bootstrap tokens.
    #[arg(
        long,
        env = "WARREN_CA_STATE_DIR",
        default_value = "/var/lib/warren/ca"
    )]
    pub state_dir: PathBuf,
}

/// The Secret a CA started with `--kube` keeps its self-managed root in
/// (created on first start; a plug-in CA does not use it).
#[derive(Args, Clone, Debug)]
pub struct CaSecretArgs {
    /// Name of the Secret.
    #[arg(long, env = "WARREN_CA_SECRET_NAME", default_value = crate::ca::root_store::DEFAULT_SECRET_NAME)]
    pub secret_name: String,
    /// Namespace of the Secret; by default the CA's own (in-cluster), or
    /// the kubeconfig context's.
    #[arg(long, env = "WARREN_CA_NAMESPACE")]
    pub namespace: Option<String>,
}

impl Default for CaSecretArgs {
    fn default() -> Self {
        Self {
            secret_name: crate::ca::root_store::DEFAULT_SECRET_NAME.to_owned(),
            namespace: None,
        }
    }
}

/// `warren-node-agent ca rotate-root`.
#[derive(Args, Clone, Debug)]
pub struct CaRotateRootArgs {
    #[command(flatten)]
    pub state: CaStateArgs,
    /// Rotate the root kept in the Secret (as a CA run with --kube does)
    /// instead of the one in the state folder.
    #[arg(long, env = "WARREN_KUBE")]
    pub kube: bool,
    #[command(flatten)]
    pub secret: CaSecretArgs,
}

/// `warren-node-agent ca issue-token`.
#[derive(Args, Clone, Debug)]
pub struct CaIssueTokenArgs {
    #[command(flatten)]
    pub state: CaStateArgs,
    /// The node the token authenticates.
    #[arg(long, env = "NODE_NAME")]
    pub node: String,
    /// How long the token is accepted (e.g. `90s`, `30m`, `24h`, `7d`).
    #[arg(long, env = "WARREN_CA_TOKEN_TTL", default_value = "24h", value_parser = parse_duration)]
    pub ttl: Duration,
}

/// `warren-node-agent ca remove-root`.
#[derive(Args, Clone, Debug)]
pub struct CaRemoveRootArgs {
    #[command(flatten)]
    pub state: CaStateArgs,
    /// Serial of the retired root to drop (hex, as printed by `rotate-root`).
    #[arg(long)]
    pub serial: String,
    /// Change the root kept in the Secret (as a CA run with --kube does)
    /// instead of the one in the state folder.
    #[arg(long, env = "WARREN_KUBE")]
    pub kube: bool,
    #[command(flatten)]
    pub secret: CaSecretArgs,
}

/// `warren-node-agent ca` (serving).
#[derive(Args, Clone, Debug)]
pub struct CaServeArgs {
    #[command(flatten)]
    pub state: CaStateArgs,
    /// Address the gRPC (TLS) service listens on.
    #[arg(long, env = "WARREN_CA_LISTEN", default_value = "0.0.0.0:15012")]
    pub listen: SocketAddr,
    /// Extra names for the CA's serving certificate (repeatable): DNS names
    /// or IP addresses clients use to reach it. `warren-ca` and the listen
    /// address are always included.
    #[arg(long = "san", env = "WARREN_CA_SANS", value_delimiter = ',')]
    pub sans: Vec<String>,
    /// The only trust domain this CA issues identities in.
    #[arg(long, env = "WARREN_TRUST_DOMAIN", default_value = warren_api::identity::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Lifetime of a certificate when the request asks for none.
    #[arg(long, env = "WARREN_CA_DEFAULT_TTL", default_value = "24h", value_parser = parse_duration)]
    pub default_ttl: Duration,
    /// Longest lifetime issued; longer requests are capped.
    #[arg(long, env = "WARREN_CA_MAX_TTL", default_value = "24h", value_parser = parse_duration)]
    pub max_ttl: Duration,
    /// Plug-in CA: the signing certificate (a root or an intermediate)
    /// supplied by the operator, instead of a root generated in the state
    /// folder. Needs --key-file and --root-file.
    #[arg(long, env = "WARREN_CA_SIGNER_CERT", requires_all = ["key_file", "root_file"])]
    pub cert_file: Option<PathBuf>,
    /// Plug-in CA: the signing certificate's private key (PKCS#8 PEM).
    #[arg(long, env = "WARREN_CA_SIGNER_KEY", requires = "cert_file")]
    pub key_file: Option<PathBuf>,
    /// Plug-in CA: intermediates between the signing certificate and the
    /// root, in order (may be absent when the signer is the root or sits
    /// right under it).
    #[arg(long, env = "WARREN_CA_SIGNER_CHAIN", requires = "cert_file")]
    pub chain_file: Option<PathBuf>,
    /// Plug-in CA: the roots to trust (several during a rotation).
    #[arg(long, env = "WARREN_CA_ROOTS", requires = "cert_file")]
    pub root_file: Option<PathBuf>,
    /// Folder of Kubernetes YAML saying which pods run on which node
    /// (hot-reloaded); authorizes requests in local mode.
    #[arg(long, env = "WARREN_CONFIG_DIR", conflicts_with = "kube")]
    pub config_dir: Option<PathBuf>,
    /// Authenticate callers with TokenReview and authorize them against
    /// the API server's pods (in-cluster credentials, or the kubeconfig).
    #[arg(long, env = "WARREN_KUBE")]
    pub kube: bool,
    /// Kubernetes: ServiceAccounts (`namespace/name`, repeatable) whose
    /// tokens may request identities for the pods of the token's node.
    #[arg(
        long = "node-agent-account",
        env = "WARREN_CA_NODE_AGENT_ACCOUNTS",
        value_delimiter = ',',
        default_value = "warren-system/warren-node-agent"
    )]
    pub node_agent_accounts: Vec<String>,
    /// Kubernetes: audiences the reviewed tokens must carry (repeatable);
    /// none means the API server's own.
    #[arg(
        long = "token-audience",
        env = "WARREN_CA_TOKEN_AUDIENCES",
        value_delimiter = ','
    )]
    pub token_audiences: Vec<String>,
    /// How often the config folder is rescanned in case the watcher missed
    /// an event.
    #[arg(long, env = "WARREN_RESCAN_EVERY", default_value = "10s", value_parser = parse_duration)]
    pub rescan_every: Duration,
    /// How often the signing material is re-read (a `rotate-root` or new
    /// plug-in files take effect without a restart).
    #[arg(long, env = "WARREN_CA_RELOAD_EVERY", default_value = "5s", value_parser = parse_duration)]
    pub reload_every: Duration,
    /// How often the issuance and refusal counters are logged (when they
    /// changed).
    #[arg(long, env = "WARREN_REPORT_EVERY", default_value = "60s", value_parser = parse_duration)]
    pub report_every: Duration,
}

/// Where the node agent gets its workloads' certificates. Without
/// `--ca-addr` the agent runs without identities.
#[derive(Args, Clone, Debug)]
pub struct IdentityArgs {
    /// The mesh CA (`host:port` or `https://host:port`).
    #[arg(long, env = "WARREN_CA_ADDR")]
    pub ca_addr: Option<String>,
    /// The roots the CA's serving certificate chains to (the CA writes
    /// them to `root-cert.pem` in its state folder). Re-read on every
    /// connection, so a root rotation needs no restart.
    #[arg(long, env = "WARREN_CA_ROOT_FILE", requires = "ca_addr")]
    pub ca_root_file: Option<PathBuf>,
    /// The bearer token the agent authenticates with (a bootstrap token,
    /// or a projected ServiceAccount token). Re-read on every request, so
    /// a refreshed token is picked up.
    #[arg(long, env = "WARREN_CA_TOKEN_FILE", requires = "ca_addr")]
    pub ca_token_file: Option<PathBuf>,
    /// Name the CA's serving certificate is checked against.
    #[arg(long, env = "WARREN_CA_SERVER_NAME", default_value = "warren-ca")]
    pub ca_server_name: String,
    /// Lifetime asked for; the CA may cap it. Renewal starts at half of it.
    #[arg(long, env = "WARREN_CERT_TTL", default_value = "24h", value_parser = parse_duration)]
    pub cert_ttl: Duration,
    /// How often the trust bundle is fetched even without an issuance.
    #[arg(long, env = "WARREN_TRUST_BUNDLE_EVERY", default_value = "5m", value_parser = parse_duration)]
    pub trust_bundle_every: Duration,
}

/// A duration flag: a number with a unit (`500ms`, `90s`, `15m`, `24h`,
/// `7d`); a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 90s, 15m, 24h, 7d)"))?;
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (ms, s, m, h, d)")),
    };
    value
        .checked_mul(unit_ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{text:?} is too long"))
}
