//! `cargo xtask`: Warren's developer and CI entry point.
//!
//! Every step a person or CI needs — installing the toolchain, building the
//! eBPF object with the rest, running tests, the demo and the benchmarks —
//! starts here, so a fresh machine needs nothing but `cargo`.

mod bench;
mod build;
mod cluster;
mod demo;
mod exec;
mod setup;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Warren's developer and CI tasks",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install and check everything this machine needs (idempotent): Debian
    /// packages, nightly rust-src, bpf-linker matching nightly's LLVM, bpffs
    /// and cgroup2 mounts.
    Setup(setup::Args),
    /// Build the whole workspace, eBPF object included.
    Build(build::Args),
    /// Setup, then fmt, clippy, unit tests and privileged end-to-end tests,
    /// with a summary at the end.
    Test(test::Args),
    /// Testbed clusters made of network namespaces: up, down, status, exec.
    #[command(subcommand)]
    Cluster(cluster::Command),
    /// Bring up a two-node mesh on network namespaces and show it working
    /// with real traffic, step by step.
    Demo(demo::Args),
    /// Run a benchmark: Warren and its baseline measured in one run, with
    /// ratios (omit the name to list them).
    Bench(bench::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup(args) => setup::run(&args),
        Command::Build(args) => build::run(&args),
        Command::Test(args) => test::run(&args),
        Command::Cluster(command) => {
            return cluster::run(command).unwrap_or_else(|err| {
                eprintln!("error: {err:#}");
                ExitCode::FAILURE
            });
        }
        Command::Demo(args) => demo::run(&args),
        Command::Bench(args) => bench::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
