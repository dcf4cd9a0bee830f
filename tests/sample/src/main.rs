//! `warren-sample`: the workload Warren's testbed runs in its pods, and the client that
//! drives it.
//!
//! - `http`: an HTTP/1.1 + h2c server that answers with its identity and what it received
//!   ([`http_server`]), optionally calling an upstream ([`upstream`]).
//! - `echo`: a TCP echo server ([`echo`]).
//! - `load`: a bounded load client that tallies answers by version and status ([`load`],
//!   [`tally`]).
//!
//! Every flag, its default and its environment variable are declared here.

mod body;
mod duration;
mod echo;
mod error_chain;
mod fault;
mod http_server;
mod http_url;
mod load;
mod shutdown;
mod tally;
mod upstream;

use std::{io::IsTerminal as _, net::SocketAddr, time::Duration};

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};
use http::{HeaderName, HeaderValue, StatusCode, Uri};

use crate::fault::FailRate;

#[derive(Parser)]
#[command(
    name = "warren-sample",
    version,
    about = "Test and demo workload for Warren: HTTP and echo servers, and a load client"
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
}

#[derive(Args)]
struct EchoArgs {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:9000")]
    listen: SocketAddr,
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

#[tokio::main]
async fn main() -> Result<()> {
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

    match Cli::parse().command {
        Command::Http(args) => http_server::run(args.into_config()).await,
        Command::Echo(args) => {
            echo::run(echo::Config {
                listen: args.listen,
            })
            .await
        }
        Command::Load(args) => load::run(args.into_config()?).await,
    }
}

impl HttpArgs {
    fn into_config(self) -> http_server::Config {
        http_server::Config {
            listen: self.listen,
            identity: http_server::Identity {
                name: self.name,
                namespace: self.namespace,
                version: self.version,
            },
            latency: self.latency,
            fail_rate: self.fail_rate,
            fail_status: self.fail_status,
            upstream: self.upstream,
            upstream_timeout: self.upstream_timeout,
        }
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
            output: if self.json {
                load::Output::Json
            } else {
                load::Output::Table
            },
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
}
