//! `cargo xtask build`: the workspace and the eBPF object in one build.

use anyhow::Result;

use crate::exec::{self, cargo};

#[derive(clap::Args)]
pub struct Args {
    /// Build with the release profile.
    #[arg(long)]
    release: bool,
}

pub fn run_build(release: bool) -> Result<()> {
    // node-agent's build.rs builds the eBPF crate with aya-build, so building
    // the default members builds everything.
    let mut cmd = cargo();
    cmd.args([
        "build",
        "--workspace",
        "--exclude",
        "warren-ebpf",
        "--bins",
        "--tests",
    ]);
    if release {
        cmd.arg("--release");
    }
    exec::run(&mut cmd)
}

pub fn run(args: &Args) -> Result<()> {
    run_build(args.release)
}
