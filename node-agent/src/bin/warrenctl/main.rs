//! `warrenctl`: Warren's debugging CLI, in the spirit of bpftool. `bpf`
//! reads what the kernel holds (pins, maps, programs) directly, so it works
//! with no agent running; `config dump|status` ask the node agent.

mod agent;
mod bpf;
mod certs;
mod config;
mod dump;
mod table;

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
}

fn main() -> std::process::ExitCode {
    let result: Result<()> = match Cli::parse().command {
        Command::Bpf(cmd) => bpf::run(cmd),
        Command::Config(cmd) => config::run(cmd),
        Command::Certs(args) => certs::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
