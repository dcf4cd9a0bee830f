//! Every setting of the waypoint, with its flag, environment variable and default.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;
use warren_ztunnel::config::parse_duration;

#[derive(Clone, Debug, Parser)]
#[command(
    name = "warren-waypoint",
    about = "Warren's waypoint: the L7 proxy of one namespace"
)]
pub struct Config {
    /// The namespace this waypoint serves.
    #[arg(long, env = "WARREN_WAYPOINT_NAMESPACE")]
    pub namespace: String,

    /// The waypoint Gateway (of `namespace`) this process implements: an
    /// AuthorizationPolicy attached to that Gateway applies to every request.
    /// Unset, a policy attached to any waypoint Gateway of the namespace
    /// applies (more policy, never less).
    #[arg(long, env = "WARREN_WAYPOINT_GATEWAY")]
    pub gateway: Option<String>,

    /// The service account the waypoint runs as: its certificate's identity.
    #[arg(
        long,
        env = "WARREN_WAYPOINT_SERVICE_ACCOUNT",
        default_value = "waypoint"
    )]
    pub service_account: String,

    /// The node agent's config socket.
    #[arg(long, env = "WARREN_AGENT_SOCKET", default_value = warren_api::socket::DEFAULT_PATH)]
    pub agent_socket: PathBuf,

    /// Name in the agent's `warrenctl config status` (default: waypoint-<pid>).
    #[arg(long, env = "WARREN_WAYPOINT_CLIENT_ID")]
    pub client_id: Option<String>,

    /// HBONE listener: ztunnels send the namespace's traffic here.
    #[arg(
        long,
        env = "WARREN_WAYPOINT_HBONE_ADDR",
        default_value = "0.0.0.0:15008"
    )]
    pub hbone_addr: SocketAddr,

    /// Admin endpoint (`/config_dump`, `/logging`, `/quitquitquit`): loopback only.
    #[arg(
        long,
        env = "WARREN_WAYPOINT_ADMIN_ADDR",
        default_value = "127.0.0.1:15000"
    )]
    pub admin_addr: SocketAddr,

    /// Prometheus metrics (`/metrics`).
    #[arg(
        long,
        env = "WARREN_WAYPOINT_METRICS_ADDR",
        default_value = "0.0.0.0:15020"
    )]
    pub metrics_addr: SocketAddr,

    /// Readiness (`/healthz/ready`).
    #[arg(
        long,
        env = "WARREN_WAYPOINT_READINESS_ADDR",
        default_value = "0.0.0.0:15021"
    )]
    pub readiness_addr: SocketAddr,

    /// Most bytes of a request body kept so a retry or a lagging mirror can
    /// send it again; a larger body still streams through, on one attempt.
    #[arg(long, env = "WARREN_WAYPOINT_MAX_BODY", default_value_t = 8 << 20)]
    pub max_request_body: usize,

    /// Limit on reaching an endpoint's node over HBONE (the TLS connection
    /// the streams share). A connection to an endpoint, stream included,
    /// is bounded by its DestinationRule's `tcp.connectTimeout` (10s).
    #[arg(long, env = "WARREN_WAYPOINT_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// DNS servers that resolve the names of endpoints known by name (ServiceEntries
    /// with `resolution: DNS` that use this waypoint), as `IP` or `IP:PORT`; default:
    /// /etc/resolv.conf. A name is looked up within `--connect-timeout`.
    #[arg(long = "dns-server", env = "WARREN_WAYPOINT_DNS_SERVER", value_delimiter = ',', value_parser = warren_ztunnel::config::parse_dns_server)]
    pub dns_servers: Vec<std::net::SocketAddr>,

    /// How long open requests may go on after SIGTERM or `/quitquitquit`.
    #[arg(long, env = "WARREN_WAYPOINT_DRAIN_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Runtime worker threads; 1 runs a current-thread runtime (FIFO run
    /// queue, so HTTP/2 frames of several streams go out in one write). Default:
    /// 1 with two CPUs or fewer, else 2 (as ztunnel).
    #[arg(long, env = "WARREN_WAYPOINT_WORKER_THREADS")]
    pub worker_threads: Option<usize>,

    /// Initial log filter (tracing `EnvFilter` syntax).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log_level: String,
}

impl Config {
    /// The L4 settings the waypoint shares with ztunnel (TLS, HBONE pool and
    /// timeouts), with ztunnel's own listeners switched off.
    pub fn proxy(&self) -> warren_ztunnel::Config {
        let mut proxy = warren_ztunnel::Config::parse_from(["warren-waypoint"]);
        proxy.agent_socket = self.agent_socket.clone();
        proxy.outbound_addrs = Vec::new();
        proxy.inbound_plaintext_addrs = Vec::new();
        proxy.hbone_addrs = vec![self.hbone_addr];
        proxy.admin_addr = self.admin_addr;
        proxy.metrics_addr = self.metrics_addr;
        proxy.readiness_addr = self.readiness_addr;
        // The waypoint is outside the capture: nothing to mark its sockets for.
        proxy.mark = 0;
        proxy.connect_timeout = self.connect_timeout;
        proxy.dns_servers = self.dns_servers.clone();
        proxy.drain_timeout = self.drain_timeout;
        proxy.log_level = self.log_level.clone();
        proxy
    }
}
