//! `cargo xtask demo`: installs what is missing, builds, and runs the demo
//! (a two-node mesh on network namespaces, shown step by step).

use anyhow::{Result, bail};

use crate::exec::{self, is_root, workspace_root};

#[derive(clap::Args)]
pub struct Args {
    /// Leave the cluster running at the end and print how to explore it.
    #[arg(long)]
    keep: bool,
}

pub fn run(args: &Args) -> Result<()> {
    if !is_root() {
        bail!("the demo builds network namespaces and loads eBPF programs: run it as root");
    }
    crate::setup::run(&crate::setup::Args::default())?;
    crate::build::run_build(false)?;
    let demo = workspace_root().join("target/debug/warren-demo");
    let mut cmd = std::process::Command::new(demo);
    if args.keep {
        cmd.arg("--keep");
    }
    exec::run(&mut cmd)
}
