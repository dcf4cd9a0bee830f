//! `warren-sample`: the workload Warren's testbed runs in its pods, and the client that
//! drives it.
//!
//! - `http`: an HTTP/1.1 + h2c server that answers with its identity and what it received
//!   ([`http_server`]), optionally calling an upstream ([`upstream`]).
//! - `echo`: a TCP echo server ([`echo`]).
//! - `dns`: a DNS server with a fixed zone, names for testbed addresses ([`dns`]).
//! - `load`: a bounded load client that tallies answers by version and status ([`load`],
//!   [`tally`]).
//! - `stream`: a byte-exact check of a gigabyte-scale echo ([`stream`], [`pattern`]).
//! - `pingpong`: round-trip latency and stream throughput of one echo connection
//!   ([`pingpong`]).
//! - `transparent`: a minimal transparent proxy that reports the original destination the
//!   kernel gives it ([`transparent`], [`warren_ebpf_common::origin`], [`socket_mark`]).
//!
//! Every flag, its default and its environment variable are declared here.

mod accept;
mod authz;
mod body;
mod byte_size;
mod collect;
mod dns;
mod duplex;
mod duration;
mod echo;
mod error_chain;
mod fault;
mod grpc;
mod hold;
mod http_server;
mod http_url;
mod load;
mod pattern;
mod pingpong;
mod shutdown;
mod socket_mark;
mod stream;
mod tally;
mod tls;
mod transparent;
mod upstream;

use std::{io::IsTerminal as _, net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Parser, Subcommand};
use http::{HeaderName, HeaderValue, StatusCode, Uri};

use crate::fault::FailRate;

#[derive(Parser)]
#[command(
    name = "warren-sample",
    version,
    about = "Test and demo workload for Warren: HTTP and echo servers, load, stream and \
             latency clients, and a transparent proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve HTTP/1.1 and h2c, answering with this pod's identity and the request it saw.
    ///
    /// Every answer carries `x-sample-version` and `x-sample-pod` headers and a JSON body.
    /// `/healthz` always answers 200 "ok"; `/status/<code>` answers with that status.
    Http(HttpArgs),
    /// Serve TCP, sending every byte back until the client closes its side.
    Echo(EchoArgs),
    /// Send requests to a URL and print a tally of answers, errors and latency.
    ///
    /// Exits 0 whenever the run completed, whatever the answers were: tests judge the
    /// tally. Exits non-zero only if the run could not start (bad URL, bad flag).
    Load(LoadArgs),
    /// Stream seeded pseudo-random bytes to an echo server and check every byte that comes
    /// back.
    ///
    /// Exits 0 if the echo matched exactly, 1 if it differed or was short, 2 if the
    /// connection could not be made.
    Stream(StreamArgs),
    /// Measure round-trip latency (or, with --stream-mib, throughput) of one connection to
    /// an echo server.
    Pingpong(PingpongArgs),
    /// Relay connections redirected to this listener to their original destination,
    /// printing one JSON line per connection with what the kernel said about it.
    ///
    /// The original destination comes from getsockopt(SO_ORIGINAL_DST) or Warren's
    /// SO_WARREN_ORIGIN; a connection with neither is closed. Lines go to stdout, logs to
    /// stderr.
    Transparent(TransparentArgs),
    /// Serve the standard gRPC health service (h2c): `warren.sample.Serving` is serving,
    /// `warren.sample.NotServing` is not, any other name is answered NOT_FOUND.
    GrpcServer(GrpcServerArgs),
    /// Open many connections to an echo server, check a round trip on each, hold them
    /// all open for a while, close them, and print a JSON report.
    ///
    /// Exits 0 whenever the run completed, whatever came back: tests judge the report.
    Hold(HoldArgs),
    /// Make one gRPC health check call and print its status code as JSON.
    ///
    /// Exits 0 whenever the call was made, whatever its status: tests judge the output.
    GrpcCheck(GrpcCheckArgs),
    /// Send one h2c request to a sample server's /echo-stream a chunk at a time, each
    /// only after the one before came back, and print a JSON report: it completes only
    /// through proxies that carry both directions of a request at once.
    ///
    /// Exits 0 whenever the request was made, whatever came back: tests judge the report.
    Duplex(DuplexArgs),
    /// Serve DNS over UDP with a fixed zone (A and AAAA records from --record), NXDOMAIN
    /// for any other name: names for testbed addresses, with no DNS outside the testbed.
    Dns(DnsArgs),
    /// Serve as the external authorizer of CUSTOM AuthorizationPolicies, over HTTP and
    /// gRPC (Envoy's ext_authz protocols): `x-ext-authz: allow` is allowed, anything
    /// else denied (`fail` and `slow` make the HTTP authorizer fail or stall).
    Authz(AuthzArgs),
    /// A span collector standing in for Zipkin: keeps what is posted to
    /// /api/v2/spans and gives it back on GET.
    Collect(CollectArgs),
}

#[derive(Args)]
struct CollectArgs {
    /// Address to listen on: Zipkin's JSON and OTLP over HTTP.
    #[arg(long, default_value = "0.0.0.0:9411")]
    listen: SocketAddr,
    /// Address to take OTLP over gRPC on, if any.
    #[arg(long)]
    grpc: Option<SocketAddr>,
    /// `KEY=VALUE`: OTLP spans with this tag are rejected (OTLP's partial
    /// success names them).
    #[arg(long, value_parser = parse_tag)]
    reject_tag: Option<(String, String)>,
}

fn parse_tag(input: &str) -> Result<(String, String), String> {
    input
        .split_once('=')
        .filter(|(key, _)| !key.is_empty())
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("{input:?}: give KEY=VALUE"))
}

#[derive(Args)]
struct AuthzArgs {
    /// Address the HTTP authorizer listens on.
    #[arg(long, default_value = "0.0.0.0:8000")]
    http: SocketAddr,
    /// Address the gRPC authorizer listens on (h2c).
    #[arg(long, default_value = "0.0.0.0:9000")]
    grpc: SocketAddr,
    /// Allow TCP connections (checks without a request) of callers of this service
    /// account; without it every connection is denied.
    #[arg(long)]
    allow_service_account: Option<String>,
}

#[derive(Args)]
struct DnsArgs {
    /// Address to listen on (UDP).
    #[arg(long, default_value = "0.0.0.0:5353")]
    listen: SocketAddr,
    /// A record, NAME=IP; repeat a name for several addresses.
    #[arg(long = "record", value_name = "NAME=IP", value_parser = dns::parse_record, required = true)]
    records: Vec<(String, std::net::IpAddr)>,
    /// TTL of every record, in seconds.
    #[arg(long, default_value_t = 5)]
    ttl: u32,
}

#[derive(Args)]
struct HoldArgs {
    /// Echo server to connect to, IP:PORT.
    #[arg(long, value_name = "IP:PORT")]
    connect: SocketAddr,
    /// How many connections to open.
    #[arg(long, default_value_t = 1000)]
    count: u32,
    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 256)]
    parallel: usize,
    /// How long all connections stay open once established, e.g. 3s.
    #[arg(long, default_value = "2s", value_parser = duration::parse)]
    hold: Duration,
    /// Limit for each connect and each round trip.
    #[arg(long, default_value = "20s", value_parser = duration::parse)]
    timeout: Duration,
}

#[derive(Args)]
struct GrpcServerArgs {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:9090")]
    listen: SocketAddr,
}

#[derive(Args)]
struct DuplexArgs {
    /// The sample HTTP server, e.g. http://10.96.0.12/ (h2c; the path is ignored).
    #[arg(long, value_parser = http_url::parse)]
    url: Uri,
    /// How many chunks to send.
    #[arg(long, default_value_t = 3)]
    chunks: u32,
    /// How long to wait for the connection, the answer and each echo.
    #[arg(long, default_value = "5s", value_parser = duration::parse)]
    timeout: Duration,
}

#[derive(Args)]
struct GrpcCheckArgs {
    /// The server, e.g. http://10.96.0.12:9090 (h2c).
    #[arg(long)]
    url: String,
    /// The service name to check.
    #[arg(long, default_value = grpc::SERVING)]
    service: String,
    /// How long to wait for the connection and for the answer.
    #[arg(long, default_value = "5s", value_parser = duration::parse)]
    timeout: Duration,
}

#[derive(Args)]
struct HttpArgs {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Pod name, reported in answers and the `x-sample-pod` header.
    #[arg(long, env = "POD_NAME", default_value = "warren-sample")]
    name: String,
    /// Pod namespace, reported in answers.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    namespace: String,
    /// Version, reported in answers and the `x-sample-version` header.
    #[arg(long, env = "SAMPLE_VERSION", default_value = "v1")]
    version: String,
    /// Delay added to each answer (not /healthz), e.g. 50ms, 1s.
    #[arg(long, default_value = "0", value_parser = duration::parse)]
    latency: Duration,
    /// Wait this long before reading a request's body (a slow reader), e.g. 500ms.
    #[arg(long, default_value = "0", value_parser = duration::parse)]
    read_after: Duration,
    /// Fraction of requests (0 to 1) answered with --fail-status, chosen at random.
    #[arg(long, default_value = "0", value_parser = FailRate::parse)]
    fail_rate: FailRate,
    /// Status code of the failures --fail-rate injects.
    #[arg(long, default_value = "503", value_parser = fault::parse_status)]
    fail_status: StatusCode,
    /// URL to GET for each request (not /healthz); its answer is included in ours and a
    /// failure to reach it is answered with 502.
    #[arg(long, value_parser = http_url::parse)]
    upstream: Option<Uri>,
    /// How long to wait for the upstream's whole answer.
    #[arg(long, default_value = "5s", value_parser = duration::parse)]
    upstream_timeout: Duration,
    /// Log one line per request served (method, path, authority) and one per
    /// connection accepted, so a test can count what reached this server, e.g.
    /// a mesh's mirrored copies or the connections a proxy opened.
    #[arg(long)]
    access_log: bool,
    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key. Answers then
    /// say what the handshake was (server name, ALPN, client certificate).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// With --tls-cert: require a client certificate from this authority (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
}

#[derive(Args)]
struct EchoArgs {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:9000")]
    listen: SocketAddr,
    /// A thread per connection with blocking I/O: lowest added latency, for
    /// latency benchmarks; not for thousands of connections.
    #[arg(long)]
    blocking: bool,
    /// Wait this long after accepting before reading (a slow reader, e.g. 2s).
    #[arg(long, default_value = "0s", value_parser = duration::parse)]
    read_after: Duration,
}

#[derive(Args)]
struct LoadArgs {
    /// URL to send requests to (http:// only; with --http2, h2c).
    #[arg(long, value_parser = http_url::parse)]
    url: Uri,
    /// Number of requests to send (or use --duration instead).
    #[arg(short = 'n', long, default_value_t = 100, conflicts_with = "duration")]
    requests: u64,
    /// Send requests for this long instead of a fixed number, e.g. 5s.
    #[arg(short = 'd', long, value_parser = duration::parse)]
    duration: Option<Duration>,
    /// Number of requests in flight at once.
    #[arg(short = 'c', long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,
    /// Extra request header, `name: value`; repeatable.
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE", value_parser = load::parse_header)]
    headers: Vec<(HeaderName, HeaderValue)>,
    /// Use HTTP/2 with prior knowledge (h2c) instead of HTTP/1.1 keep-alive.
    #[arg(long)]
    http2: bool,
    /// Per-request timeout, covering the whole answer, e.g. 500ms.
    #[arg(long, default_value = "5s", value_parser = duration::parse)]
    timeout: Duration,
    /// POST this many bytes with each request instead of a GET.
    #[arg(long, value_name = "N")]
    body_bytes: Option<usize>,
    /// Print the result as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct StreamArgs {
    /// Echo server to stream to, IP:PORT.
    #[arg(long, value_name = "IP:PORT")]
    connect: SocketAddr,
    /// How many bytes to send, e.g. 4096, 64M, 1G (binary units).
    #[arg(long, value_parser = byte_size::parse)]
    bytes: u64,
    /// Seed of the data and of the write sizes; the same seed sends the same bytes.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Largest write; each write's size is drawn from 1..=this, e.g. 65536, 1M.
    #[arg(long, default_value = "65536", value_parser = byte_size::parse)]
    max_write: u64,
    /// How long to wait for the connection, and at most between two echoed chunks.
    #[arg(long, default_value = "10s", value_parser = duration::parse)]
    timeout: Duration,
    /// Print the result as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct PingpongArgs {
    /// Echo server to measure, IP:PORT.
    #[arg(long, value_name = "IP:PORT")]
    connect: SocketAddr,
    /// Size of each message, e.g. 1024, 16K.
    #[arg(long, default_value = "1024", value_parser = byte_size::parse, conflicts_with = "stream_mib")]
    size: u64,
    /// Number of round trips (or use --duration instead).
    #[arg(
        short = 'n',
        long,
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(1..),
        conflicts_with_all = ["duration", "stream_mib"]
    )]
    round_trips: u64,
    /// Make round trips for this long instead of a fixed number, e.g. 3s.
    #[arg(short = 'd', long, value_parser = duration::parse, conflicts_with = "stream_mib")]
    duration: Option<Duration>,
    /// Instead of round trips, send this many MiB in 64 KiB writes and report the echo's
    /// throughput.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    stream_mib: Option<u64>,
    /// Limit on connecting, on each round trip, and on each wait for echoed bytes.
    #[arg(long, default_value = "10s", value_parser = duration::parse)]
    timeout: Duration,
    /// Open a new connection for every round trip and time connect plus round trip.
    #[arg(long, conflicts_with = "stream_mib")]
    new_connection: bool,
    /// Print the result as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct TransparentArgs {
    /// Address to listen on (where Warren's connect hook sends captured connects).
    #[arg(long, default_value = "0.0.0.0:15001")]
    listen: SocketAddr,
    /// SO_MARK for outbound connections, hex or decimal (Warren's hook skips 0x539, so
    /// the proxy's own connects are not captured again). Needs CAP_NET_ADMIN.
    #[arg(long, value_parser = socket_mark::parse)]
    mark: Option<u32>,
    /// How long to wait for the original destination to accept.
    #[arg(long, default_value = "5s", value_parser = duration::parse)]
    connect_timeout: Duration,
}

#[tokio::main]
async fn main() -> Result<ExitCode> {
    // Logs go to stderr: stdout carries `load`'s report, which tests parse.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only for a person's terminal, not in captured test or pod logs.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();

    let done = ExitCode::SUCCESS;
    match Cli::parse().command {
        Command::Http(args) => http_server::run(args.into_config()?).await.map(|()| done),
        Command::Hold(args) => {
            let report = hold::run(hold::Config {
                connect: args.connect,
                count: args.count,
                parallel: args.parallel,
                hold: args.hold,
                timeout: args.timeout,
            })
            .await?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(done)
        }
        Command::GrpcServer(args) => grpc::serve(args.listen).await.map(|()| done),
        Command::Authz(args) => authz::serve(args.http, args.grpc, args.allow_service_account)
            .await
            .map(|()| done),
        Command::Collect(args) => collect::serve(args.listen, args.grpc, args.reject_tag)
            .await
            .map(|()| done),
        Command::Duplex(args) => {
            let report = duplex::run(&args.url, args.chunks, args.timeout).await?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(done)
        }
        Command::GrpcCheck(args) => {
            let checked = grpc::check(&args.url, &args.service, args.timeout).await?;
            println!("{}", serde_json::to_string(&checked)?);
            Ok(done)
        }
        Command::Dns(args) => {
            let mut zone = std::collections::BTreeMap::<String, Vec<std::net::IpAddr>>::new();
            for (name, ip) in args.records {
                zone.entry(name).or_default().push(ip);
            }
            dns::run(dns::Config {
                listen: args.listen,
                zone,
                ttl: args.ttl,
            })
            .await
            .map(|()| done)
        }
        Command::Echo(args) => echo::run(echo::Config {
            listen: args.listen,
            blocking: args.blocking,
            read_after: args.read_after,
        })
        .await
        .map(|()| done),
        Command::Load(args) => load::run(args.into_config()?).await.map(|()| done),
        // `stream` chooses its exit status: tests tell a broken path from a corrupting one.
        Command::Stream(args) => stream::run(args.into_config()?).await,
        Command::Pingpong(args) => pingpong::run(args.into_config()?).await.map(|()| done),
        Command::Transparent(args) => transparent::run(transparent::Config {
            listen: args.listen,
            mark: args.mark,
            connect_timeout: args.connect_timeout,
        })
        .await
        .map(|()| done),
    }
}

fn output(json: bool) -> load::Output {
    if json {
        load::Output::Json
    } else {
        load::Output::Table
    }
}

impl HttpArgs {
    fn into_config(self) -> Result<http_server::Config> {
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(tls::ServerTls::load(
                cert,
                key,
                self.tls_client_ca.as_deref(),
            )?),
            _ => None,
        };
        Ok(http_server::Config {
            listen: self.listen,
            identity: http_server::Identity {
                name: self.name,
                namespace: self.namespace,
                version: self.version,
            },
            latency: self.latency,
            read_after: self.read_after,
            fail_rate: self.fail_rate,
            fail_status: self.fail_status,
            upstream: self.upstream,
            upstream_timeout: self.upstream_timeout,
            access_log: self.access_log,
            tls,
        })
    }
}

impl LoadArgs {
    fn into_config(self) -> Result<load::Config> {
        if self.timeout.is_zero() {
            bail!("--timeout must be more than 0 (every request would time out)");
        }
        Ok(load::Config {
            url: self.url,
            stop: match self.duration {
                Some(duration) => load::Stop::AfterDuration(duration),
                None => load::Stop::AfterRequests(self.requests),
            },
            concurrency: usize::from(self.concurrency),
            headers: self.headers,
            http2: self.http2,
            timeout: self.timeout,
            body_bytes: self.body_bytes,
            output: output(self.json),
        })
    }
}

impl StreamArgs {
    fn into_config(self) -> Result<stream::Config> {
        if self.timeout.is_zero() {
            bail!("--timeout must be more than 0 (every wait would time out)");
        }
        // The write buffer is allocated whole; a gigabyte write is no test of anything.
        const MAX_WRITE_LIMIT: u64 = 64 << 20;
        if !(1..=MAX_WRITE_LIMIT).contains(&self.max_write) {
            bail!(
                "--max-write {} is outside 1..={MAX_WRITE_LIMIT} bytes",
                self.max_write
            );
        }
        Ok(stream::Config {
            connect: self.connect,
            bytes: self.bytes,
            seed: self.seed,
            max_write: usize::try_from(self.max_write)
                .context("--max-write does not fit this machine's memory")?,
            timeout: self.timeout,
            output: output(self.json),
        })
    }
}

impl PingpongArgs {
    fn into_config(self) -> Result<pingpong::Config> {
        if self.timeout.is_zero() {
            bail!("--timeout must be more than 0 (every round trip would time out)");
        }
        // Both message buffers are allocated whole.
        const MAX_SIZE: u64 = 64 << 20;
        if !(1..=MAX_SIZE).contains(&self.size) {
            bail!("--size {} is outside 1..={MAX_SIZE} bytes", self.size);
        }
        let mode = match self.stream_mib {
            Some(mib) => pingpong::Mode::Stream { mib },
            None => {
                let size = usize::try_from(self.size)
                    .context("--size does not fit this machine's memory")?;
                let stop = match self.duration {
                    Some(duration) => pingpong::Stop::AfterDuration(duration),
                    None => pingpong::Stop::AfterRoundTrips(self.round_trips),
                };
                if self.new_connection {
                    pingpong::Mode::NewConnections { size, stop }
                } else {
                    pingpong::Mode::RoundTrips { size, stop }
                }
            }
        };
        Ok(pingpong::Config {
            connect: self.connect,
            mode,
            timeout: self.timeout,
            output: output(self.json),
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn the_cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn load_flags_parse() {
        let cli = Cli::try_parse_from([
            "warren-sample",
            "load",
            "--url",
            "http://127.0.0.1:8080/x",
            "-d",
            "2s",
            "-c",
            "8",
            "-H",
            "x-lane-id: blue",
            "-H",
            "end-user: jason",
            "--http2",
            "--json",
        ])
        .unwrap();
        let Command::Load(args) = cli.command else {
            panic!("not the load command");
        };
        let config = args.into_config().unwrap();
        assert!(matches!(config.stop, load::Stop::AfterDuration(d) if d == Duration::from_secs(2)));
        assert_eq!(config.concurrency, 8);
        assert_eq!(config.headers.len(), 2);
        assert!(config.http2);
        assert_eq!(config.output, load::Output::Json);
    }

    #[test]
    fn bad_flags_are_refused_with_the_reason() {
        let error = Cli::try_parse_from(["warren-sample", "http", "--fail-rate", "1.5"])
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("outside 0..=1"), "{error}");
        let error = Cli::try_parse_from(["warren-sample", "load", "--url", "https://x/"])
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("only http://"), "{error}");
        assert!(
            Cli::try_parse_from(["warren-sample", "load", "--url", "http://x/", "-c", "0"])
                .is_err()
        );
        assert!(
            Cli::try_parse_from([
                "warren-sample",
                "load",
                "--url",
                "http://x/",
                "-n",
                "5",
                "-d",
                "1s"
            ])
            .is_err(),
            "-n and -d are either-or"
        );
    }

    #[test]
    fn the_http_version_flag_is_the_sample_version() {
        let cli = Cli::try_parse_from(["warren-sample", "http", "--version", "v3"]).unwrap();
        let Command::Http(args) = cli.command else {
            panic!("not the http command");
        };
        assert_eq!(args.version, "v3");
    }

    #[test]
    fn stream_flags_parse() {
        let cli = Cli::try_parse_from([
            "warren-sample",
            "stream",
            "--connect",
            "127.0.0.1:9000",
            "--bytes",
            "1G",
            "--seed",
            "7",
            "--max-write",
            "4K",
            "--json",
        ])
        .unwrap();
        let Command::Stream(args) = cli.command else {
            panic!("not the stream command");
        };
        let config = args.into_config().unwrap();
        assert_eq!(config.bytes, 1 << 30);
        assert_eq!(config.seed, 7);
        assert_eq!(config.max_write, 4096);
        assert_eq!(config.output, load::Output::Json);

        let cli = Cli::try_parse_from([
            "warren-sample",
            "stream",
            "--connect",
            "127.0.0.1:9000",
            "--bytes",
            "1M",
            "--max-write",
            "0",
        ])
        .unwrap();
        let Command::Stream(args) = cli.command else {
            panic!("not the stream command");
        };
        let error = args.into_config().err().unwrap().to_string();
        assert!(error.contains("--max-write 0"), "{error}");
        let error = Cli::try_parse_from([
            "warren-sample",
            "stream",
            "--connect",
            "127.0.0.1:9000",
            "--bytes",
            "1X",
        ])
        .err()
        .unwrap()
        .to_string();
        assert!(error.contains("unknown unit"), "{error}");
    }

    #[test]
    fn pingpong_flags_parse_into_one_mode() {
        let parse = |extra: &[&str]| {
            let cli = Cli::try_parse_from(
                [
                    &["warren-sample", "pingpong", "--connect", "127.0.0.1:9000"],
                    extra,
                ]
                .concat(),
            )?;
            let Command::Pingpong(args) = cli.command else {
                panic!("not the pingpong command");
            };
            Ok::<_, clap::Error>(args.into_config().unwrap())
        };
        assert_eq!(
            parse(&[]).unwrap().mode,
            pingpong::Mode::RoundTrips {
                size: 1024,
                stop: pingpong::Stop::AfterRoundTrips(10_000)
            }
        );
        assert_eq!(
            parse(&["--size", "16K", "-d", "3s"]).unwrap().mode,
            pingpong::Mode::RoundTrips {
                size: 16 << 10,
                stop: pingpong::Stop::AfterDuration(Duration::from_secs(3))
            }
        );
        assert_eq!(
            parse(&["--stream-mib", "16"]).unwrap().mode,
            pingpong::Mode::Stream { mib: 16 }
        );
        for conflicting in [
            &["-n", "5", "-d", "1s"][..],
            &["-n", "5", "--stream-mib", "1"][..],
            &["--size", "10", "--stream-mib", "1"][..],
            &["-n", "0"][..],
        ] {
            assert!(parse(conflicting).is_err(), "{conflicting:?}");
        }
    }

    #[test]
    fn transparent_flags_parse() {
        let cli = Cli::try_parse_from(["warren-sample", "transparent", "--mark", "0x539"]).unwrap();
        let Command::Transparent(args) = cli.command else {
            panic!("not the transparent command");
        };
        assert_eq!(args.listen, "0.0.0.0:15001".parse().unwrap());
        assert_eq!(args.mark, Some(warren_ebpf_common::ZTUNNEL_MARK));
        let error = Cli::try_parse_from(["warren-sample", "transparent", "--mark", "0xzz"])
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("not a socket mark"), "{error}");
    }
}
