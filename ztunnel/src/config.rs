//! Every knob of ztunnel in one place: its flag, its environment variable and its default.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;

/// Listener addresses, ports and limits of `warren-ztunnel`.
///
/// Listeners take repeated flags (or a comma-separated env var) so a dual-stack node can
/// listen on its IPv4 and IPv6 addresses; port 0 picks a free port (tests).
#[derive(Parser, Clone, Debug)]
#[command(
    name = "warren-ztunnel",
    version,
    about = "Warren's node-local L4 proxy"
)]
pub struct Config {
    /// The node agent's config socket (the per-node view is streamed from there).
    #[arg(long, env = "WARREN_AGENT_SOCKET", default_value = warren_api::socket::DEFAULT_PATH)]
    pub agent_socket: PathBuf,

    /// Name reported to the agent (`warrenctl config status`); default `ztunnel-<pid>`.
    #[arg(long, env = "WARREN_ZTUNNEL_CLIENT_ID")]
    pub client_id: Option<String>,

    /// This node's name; default: the `node` of the agent's mesh settings. Workloads of
    /// this node are reached directly, the others over HBONE.
    #[arg(long, env = "WARREN_NODE_NAME")]
    pub node_name: Option<String>,

    /// Where captured outbound connections arrive (the eBPF connect hook's target).
    #[arg(
        long = "outbound-addr",
        env = "WARREN_ZTUNNEL_OUTBOUND_ADDR",
        value_delimiter = ',',
        default_value = "0.0.0.0:15001"
    )]
    pub outbound_addrs: Vec<SocketAddr>,

    /// The DNS proxy (UDP and TCP): pods' DNS queries the agent captures
    /// (`warren-node-agent run --ztunnel-dns-port`) arrive here. Bind the address the agent redirects to
    /// (`--ztunnel`): a resolver drops an answer from another address, which a
    /// wildcard bind may send from on a node with several.
    #[arg(
        long = "dns-proxy-addr",
        env = "WARREN_ZTUNNEL_DNS_PROXY_ADDR",
        value_delimiter = ',',
        default_value = "0.0.0.0:15053"
    )]
    pub dns_proxy_addrs: Vec<SocketAddr>,

    /// Plaintext inbound (PERMISSIVE passthrough; refused under STRICT).
    #[arg(
        long = "inbound-plaintext-addr",
        env = "WARREN_ZTUNNEL_INBOUND_PLAINTEXT_ADDR",
        value_delimiter = ',',
        default_value = "0.0.0.0:15006"
    )]
    pub inbound_plaintext_addrs: Vec<SocketAddr>,

    /// HBONE (mTLS HTTP/2 CONNECT) from other nodes' ztunnels.
    #[arg(
        long = "hbone-addr",
        env = "WARREN_ZTUNNEL_HBONE_ADDR",
        value_delimiter = ',',
        default_value = "0.0.0.0:15008"
    )]
    pub hbone_addrs: Vec<SocketAddr>,

    /// Admin (`/config_dump`, `/logging`, `/quitquitquit`): keep it on loopback.
    #[arg(
        long,
        env = "WARREN_ZTUNNEL_ADMIN_ADDR",
        default_value = "127.0.0.1:15000"
    )]
    pub admin_addr: SocketAddr,

    /// Prometheus metrics (`/metrics`, `/stats/prometheus`).
    #[arg(
        long,
        env = "WARREN_ZTUNNEL_METRICS_ADDR",
        default_value = "0.0.0.0:15020"
    )]
    pub metrics_addr: SocketAddr,

    /// Readiness (`/healthz/ready`).
    #[arg(
        long,
        env = "WARREN_ZTUNNEL_READINESS_ADDR",
        default_value = "0.0.0.0:15021"
    )]
    pub readiness_addr: SocketAddr,

    /// The port other nodes' ztunnels take HBONE on (a workload's `node_address` says
    /// only where).
    #[arg(long, env = "WARREN_ZTUNNEL_HBONE_PORT", default_value_t = 15008)]
    pub hbone_port: u16,

    /// `SO_MARK` on ztunnel's own outgoing sockets, so the capture hook leaves them alone
    /// (needs CAP_NET_ADMIN); 0 leaves them unmarked.
    #[arg(long, env = "WARREN_ZTUNNEL_MARK", default_value_t = warren_ebpf_common::ZTUNNEL_MARK, value_parser = parse_mark)]
    pub mark: u32,

    /// Prefer endpoints of this node when a service has ready ones here.
    #[arg(long, env = "WARREN_ZTUNNEL_PREFER_SAME_NODE", default_value_t = false)]
    pub prefer_same_node: bool,

    /// How long open connections may go on after SIGTERM or `/quitquitquit`.
    #[arg(long, env = "WARREN_ZTUNNEL_DRAIN_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// How long a ztunnel that finds another serving this node (an upgrade, a restart)
    /// may take to get its config and certificates before it gives up and exits, leaving
    /// the running one in charge.
    #[arg(long, env = "WARREN_ZTUNNEL_HANDOVER_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub handover_timeout: Duration,

    /// A file written once this process serves the node (ports bound, config and
    /// certificates in) and removed when it drains: for a readiness probe that must ask
    /// this very process (`--check-ready-file`), as on the host network the readiness
    /// port answers for whichever ztunnel holds it.
    #[arg(long, env = "WARREN_ZTUNNEL_READY_FILE")]
    pub ready_file: Option<PathBuf>,

    /// Exit 0 if this file exists, else 1, and do nothing else: the exec readiness
    /// probe for a ztunnel run with `--ready-file`.
    #[arg(long, value_name = "PATH")]
    pub check_ready_file: Option<PathBuf>,

    /// Once drained at a successor's request, wait for SIGTERM instead of exiting. Under
    /// a DaemonSet the successor is a surged pod on the same node: an old container
    /// that exited would be restarted by kubelet and take the node back.
    #[arg(
        long,
        env = "WARREN_ZTUNNEL_LINGER_AFTER_HANDOVER",
        default_value_t = false
    )]
    pub linger_after_handover: bool,

    /// Set `net.ipv4.tcp_migrate_req` when taking over, so that connections the old
    /// ztunnel has queued but not accepted move to this one instead of being reset.
    #[arg(long, env = "WARREN_ZTUNNEL_MIGRATE_QUEUED_CONNECTIONS", default_value_t = true, action = clap::ArgAction::Set)]
    pub migrate_queued_connections: bool,

    /// How long a connection waits for what ztunnel does not have yet: the agent's
    /// update naming its pod (one captured as its sandbox was built, whose first
    /// connection can beat the update), or a new pod's certificate, on either side
    /// (the HBONE handshake waits for the certificate the client asks for). Refused
    /// after.
    #[arg(long, env = "WARREN_ZTUNNEL_CATCH_UP_WAIT", default_value = "3s", value_parser = parse_duration)]
    pub catch_up_wait: Duration,

    /// Limit on a TCP connect to a pod, a peer ztunnel or a passthrough destination.
    #[arg(long, env = "WARREN_ZTUNNEL_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// DNS servers that resolve the names of endpoints known by name (ServiceEntries
    /// with `resolution: DNS`), as `IP` or `IP:PORT`; default: the nameservers of
    /// /etc/resolv.conf (names are asked in full: no search domains).
    #[arg(long = "dns-server", env = "WARREN_ZTUNNEL_DNS_SERVER", value_delimiter = ',', value_parser = parse_dns_server)]
    pub dns_servers: Vec<SocketAddr>,

    /// Limit on a TLS handshake, either side: a peer that stalls is cut off.
    #[arg(long, env = "WARREN_ZTUNNEL_TLS_HANDSHAKE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub tls_handshake_timeout: Duration,

    /// Limit on the first CONNECT of an HBONE connection (server) and on the answer to
    /// one (client).
    #[arg(long, env = "WARREN_ZTUNNEL_CONNECT_HEADER_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub connect_header_timeout: Duration,

    /// Streams (tunnels) per pooled HBONE connection; another connection opens when full.
    #[arg(long, env = "WARREN_ZTUNNEL_POOL_MAX_STREAMS", default_value_t = 100)]
    pub pool_max_streams: usize,

    /// A pooled HBONE connection with no stream for this long is closed.
    #[arg(long, env = "WARREN_ZTUNNEL_POOL_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub pool_idle_timeout: Duration,

    /// An accepted HBONE connection with no stream for this long is asked to go away
    /// (GOAWAY), so a peer cannot hold connections it does not use; well above any
    /// client pool's own idle timeout, which normally closes first.
    #[arg(long, env = "WARREN_ZTUNNEL_HBONE_IDLE_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub hbone_idle_timeout: Duration,

    /// HTTP/2 flow-control window of one stream (bytes).
    #[arg(long, env = "WARREN_ZTUNNEL_STREAM_WINDOW", default_value_t = 4 << 20)]
    pub stream_window: u32,

    /// HTTP/2 flow-control window of one connection (bytes).
    #[arg(long, env = "WARREN_ZTUNNEL_CONNECTION_WINDOW", default_value_t = 16 << 20)]
    pub connection_window: u32,

    /// Largest HTTP/2 frame accepted (bytes, 16 KiB to 16 MiB).
    #[arg(long, env = "WARREN_ZTUNNEL_FRAME_SIZE", default_value_t = 1 << 20)]
    pub frame_size: u32,

    /// Per-direction copy buffer of a proxied connection (bytes).
    #[arg(long, env = "WARREN_ZTUNNEL_BUFFER_SIZE", default_value_t = 64 << 10)]
    pub buffer_size: usize,

    /// Runtime worker threads; 1 runs a current-thread runtime (no wake-ups between
    /// threads: less CPU and memory, one core at most). Default: 1 with two CPUs or
    /// fewer, else 2 (see `process::default_worker_threads`).
    #[arg(long, env = "WARREN_ZTUNNEL_WORKER_THREADS")]
    pub worker_threads: Option<usize>,

    /// Initial log filter (tracing `EnvFilter` syntax); `/logging?level=` changes it.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log_level: String,
}

impl Config {
    /// Defaults with every listener on `ip` and a free port: what tests start.
    pub fn for_tests(ip: std::net::IpAddr) -> Config {
        let any = SocketAddr::new(ip, 0);
        let mut config = Config::parse_from(["warren-ztunnel"]);
        config.outbound_addrs = vec![any];
        config.dns_proxy_addrs = vec![any];
        config.inbound_plaintext_addrs = vec![any];
        config.hbone_addrs = vec![any];
        config.admin_addr = any;
        config.metrics_addr = any;
        config.readiness_addr = any;
        // Tests need not run with CAP_NET_ADMIN, and no capture hook is there to avoid.
        config.mark = 0;
        // In-process tests share the host's network namespace: leave its sysctls be.
        config.migrate_queued_connections = false;
        config
    }

    /// The mark to put on outgoing sockets, if any.
    pub fn socket_mark(&self) -> Option<u32> {
        (self.mark != 0).then_some(self.mark)
    }
}

/// A socket mark: decimal or `0x` hex, as iptables and `ip rule` print them.
pub fn parse_mark(input: &str) -> Result<u32, String> {
    let text = input.trim();
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse(),
    }
    .map_err(|_| format!("`{input}` is not a 32-bit mark (e.g. 1337 or 0x539)"))
}

/// A DNS server: `IP` (port 53) or `IP:PORT` (`[IPv6]:PORT`).
pub fn parse_dns_server(input: &str) -> Result<SocketAddr, String> {
    let text = input.trim();
    text.parse::<SocketAddr>()
        .or_else(|_| {
            text.parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .map_err(|_| format!("`{input}` is not a DNS server (e.g. 10.96.0.10 or 127.0.0.1:5353)"))
}

/// A duration such as `250ms`, `5s`, `2m` (a bare number is seconds).
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    let text = input.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{input}` is not a duration (e.g. 500ms, 5s, 2m)"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("`{input}`: unknown unit `{unit}` (use ms, s or m)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("`{input}` is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations_and_marks() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_mark("0x539"), Ok(0x539));
        assert_eq!(parse_mark("1337"), Ok(1337));
        assert!(parse_mark("-1").is_err());
        assert_eq!(
            parse_dns_server("10.96.0.10"),
            Ok("10.96.0.10:53".parse().unwrap())
        );
        assert_eq!(
            parse_dns_server("127.0.0.1:5353"),
            Ok("127.0.0.1:5353".parse().unwrap())
        );
        assert_eq!(
            parse_dns_server("[::1]:5353"),
            Ok("[::1]:5353".parse().unwrap())
        );
        assert_eq!(
            parse_dns_server("fd00::a"),
            Ok("[fd00::a]:53".parse().unwrap())
        );
        assert!(parse_dns_server("dns.example").is_err());
    }

    #[test]
    fn defaults_follow_istio_ports() {
        let config = Config::parse_from(["warren-ztunnel"]);
        assert_eq!(config.outbound_addrs[0].port(), 15001);
        assert_eq!(config.inbound_plaintext_addrs[0].port(), 15006);
        assert_eq!(config.hbone_addrs[0].port(), 15008);
        assert_eq!(config.admin_addr, "127.0.0.1:15000".parse().unwrap());
        assert_eq!(config.metrics_addr.port(), 15020);
        assert_eq!(config.readiness_addr.port(), 15021);
        assert_eq!(config.mark, warren_ebpf_common::ZTUNNEL_MARK);
    }
}
