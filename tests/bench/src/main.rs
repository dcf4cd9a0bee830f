//! `warren-bench`: benchmarks that measure Warren and a baseline alternately
//! in one run and print ratios. Run through `cargo xtask bench <name>`,
//! which builds everything in release mode first.

mod config;
mod l4;
mod l7;
mod procfs;
mod report;
mod shortcut;
mod tools;
mod tuning;

use std::{process::ExitCode, time::Duration};

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "warren-bench", about = "Warren's benchmarks", version)]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Same-node pod-to-pod ping-pong and stream, with and without the
    /// sk_msg shortcut.
    Shortcut(shortcut::Args),
    /// Config distribution on a synthetic mesh: one object's change to the
    /// proxy, a full snapshot to a new proxy, agent memory per workload.
    Config(config::Args),
    /// Pod to pod across nodes, direct and through ztunnel (HBONE mTLS):
    /// 1 KiB round trips, bulk throughput, ztunnel memory.
    L4(l4::Args),
    /// HTTP/1.1 keep-alive (64 connections) through the waypoint with a
    /// route and a retry policy, against HAProxy with the same route and
    /// against direct: requests/s, p50, p99.
    L7(l7::Args),
}

/// Parses "3s", "500ms", "2m".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("bad unit in {s:?} (use ms, s or m)")),
    };
    if !(secs > 0.0 && secs <= 600.0) {
        return Err(format!("duration {s:?} must be between 0 and 10 minutes"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn main() -> ExitCode {
    let result = match Cli::parse().bench {
        Bench::Shortcut(args) => shortcut::run(&args),
        Bench::Config(args) => config::run(&args),
        Bench::L4(args) => l4::run(&args),
        Bench::L7(args) => l7::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_are_bounded() {
        assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("11m").is_err());
        assert!(parse_duration("3h").is_err());
    }
}
