//! `warrenctl`: Warren's debugging CLI, in the spirit of bpftool. `bpf`
//! reads what the kernel holds (pins, maps, programs) directly, so it works
//! with no agent running; `config dump|status` ask the node agent;
//! `waypoint` manages waypoint Gateways in the local config folder and asks
//! running waypoints how their upstreams stand.

mod admin;
mod agent;
mod bpf;
mod certs;
mod config;
mod dump;
mod explain;
mod table;
mod waypoint;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "warrenctl", version, about = "Inspect a Warren node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The node's eBPF programs, maps and enrolled pods.
    #[command(subcommand)]
    Bpf(bpf::Command),
    /// Configuration: validate files offline; the agent's view and its
    /// proxies' sync status.
    #[command(subcommand)]
    Config(config::Command),
    /// Workload certificates this node serves: identity, serial, expiry;
    /// `--chain ID` for one identity's whole chain.
    Certs(certs::CertsArgs),
    /// What this node's ztunnel would do with a connection from one of its
    /// pods, step by step: the destination, the route, the policy, the verdict.
    Explain(explain::ExplainArgs),
    /// A namespace's waypoint in local mode: `apply` and `delete` its
    /// Gateway in the config folder, `list` them; `clusters` of a running one.
    #[command(subcommand)]
    Waypoint(waypoint::Command),
}

fn main() -> std::process::ExitCode {
    let result: Result<()> = match Cli::parse().command {
        Command::Bpf(cmd) => bpf::run(cmd),
        Command::Config(cmd) => config::run(cmd),
        Command::Certs(args) => certs::run(args),
        Command::Explain(args) => explain::run(args),
        Command::Waypoint(cmd) => waypoint::run(cmd),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
