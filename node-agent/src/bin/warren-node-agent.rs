//! `warren-node-agent`: the per-node agent binary.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use tracing::info;
use warren_node_agent::datapath::Datapath;

#[derive(Parser)]
#[command(name = "warren-node-agent", version, about = "Warren's per-node agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the eBPF datapath, attach it to the node's cgroup subtree and
    /// keep it there until SIGINT or SIGTERM.
    Run {
        /// cgroup v2 folder whose processes the datapath sees.
        #[arg(long, env = "WARREN_CGROUP")]
        cgroup: PathBuf,
        /// How often to log the datapath counters.
        #[arg(long, default_value = "10", value_name = "SECONDS")]
        report_every: u64,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match Cli::parse().command {
        Command::Run {
            cgroup,
            report_every,
        } => run(cgroup, Duration::from_secs(report_every.max(1))).await,
    }
}

async fn run(cgroup: PathBuf, report_every: Duration) -> Result<()> {
    let mut datapath = Datapath::load()?;
    datapath
        .attach_cgroup(&cgroup)
        .with_context(|| format!("attaching to {}", cgroup.display()))?;
    info!(cgroup = %cgroup.display(), "datapath attached");

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let mut ticker = tokio::time::interval(report_every);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let counters = datapath.counters()?;
                let fields: Vec<String> = counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
                info!(counters = %fields.join(" "), "datapath");
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
    }
    // Dropping the datapath detaches its programs: nothing is pinned yet.
    info!("shutting down");
    Ok(())
}
