//! `cargo xtask cluster`: bring up, inspect, enter and remove testbed
//! clusters by hand.

use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use warren_testbed::{Cluster, cleanup};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Create a cluster and leave it running; prints its nodes and pods.
    Up {
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        #[arg(long, default_value_t = 3)]
        pods_per_node: usize,
    },
    /// Remove a cluster (or all of them, leftovers of killed runs included).
    Down {
        /// Cluster id (`wtb-…`); optional when only one exists.
        id: Option<String>,
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
    /// List clusters with their nodes and pods.
    Status,
    /// Run a command in a pod (its network namespace and cgroup).
    Exec {
        /// Cluster id; optional when only one exists.
        #[arg(long)]
        cluster: Option<String>,
        /// Pod name (`namespace/name` if ambiguous), or `node:<index>` for a
        /// node's own namespace.
        target: String,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

pub fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Up {
            nodes,
            pods_per_node,
        } => {
            let cluster = Cluster::builder()
                .nodes(nodes)
                .pods_per_node(pods_per_node)
                .detached()
                .up()?;
            print_cluster(&cluster);
            println!(
                "\nconfig objects: {}\nenter a pod:    cargo xtask cluster exec n0-p0 -- ip addr\nremove it:      cargo xtask cluster down {}",
                cluster.config_dir().display(),
                cluster.id()
            );
        }
        Command::Down { id, all } => {
            let removed = if all {
                cleanup::remove_all_matching(cleanup::PREFIX)?
            } else {
                let id = pick(id)?;
                cleanup::remove_cluster(&id)?;
                vec![id]
            };
            if removed.is_empty() {
                println!("no clusters to remove");
            }
            for id in removed {
                println!("removed {id}");
            }
        }
        Command::Status => {
            let ids = Cluster::list()?;
            if ids.is_empty() {
                println!("no clusters (create one: cargo xtask cluster up)");
            }
            for id in ids {
                print_cluster(&Cluster::open(&id)?);
                println!();
            }
        }
        Command::Exec {
            cluster,
            target,
            command,
        } => {
            let cluster = Cluster::open(&pick(cluster)?)?;
            let sandbox = match target.strip_prefix("node:") {
                Some(index) => {
                    let index = index
                        .parse()
                        .with_context(|| format!("bad node index in {target}"))?;
                    cluster.node(index)?.sandbox.clone()
                }
                None => cluster.pod(&target)?.sandbox.clone(),
            };
            let (program, args) = command.split_first().context("no command given")?;
            let status = sandbox
                .command(program)?
                .args(args)
                .status()
                .with_context(|| format!("running {program}"))?;
            return Ok(ExitCode::from(
                status.code().unwrap_or(1).clamp(0, 255) as u8
            ));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The given id, or the only cluster there is.
fn pick(id: Option<String>) -> Result<String> {
    if let Some(id) = id {
        return Ok(id);
    }
    let ids = Cluster::list()?;
    match ids.as_slice() {
        [only] => Ok(only.clone()),
        [] => bail!("no cluster is up (create one: cargo xtask cluster up)"),
        many => bail!(
            "{} clusters are up ({}): name one",
            many.len(),
            many.join(", ")
        ),
    }
}

fn print_cluster(cluster: &Cluster) {
    println!("cluster {}", cluster.id());
    println!(
        "  {:<14} {:<12} {:<16} {:<10}",
        "NODE", "NODE IP", "POD CIDR", "PODS"
    );
    for node in cluster.nodes() {
        let pods = cluster
            .pods()
            .iter()
            .filter(|p| p.node == node.name)
            .count();
        println!(
            "  {:<14} {:<12} {:<16} {:<10}",
            node.name, node.ip, node.pod_cidr, pods
        );
    }
    println!(
        "\n  {:<24} {:<14} {:<12} {:<16}",
        "POD", "NODE", "IP", "LABELS"
    );
    for pod in cluster.pods() {
        let labels: Vec<String> = pod.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "  {:<24} {:<14} {:<12} {}",
            format!("{}/{}", pod.namespace, pod.name),
            pod.node,
            pod.ip,
            labels.join(",")
        );
    }
    if !cluster.services().is_empty() {
        println!("\n  {:<24} {:<12} PORTS", "SERVICE", "CLUSTER IP");
        for svc in cluster.services() {
            let ports: Vec<String> = svc
                .ports
                .iter()
                .map(|p| format!("{}→{}", p.port, p.target_port))
                .collect();
            println!(
                "  {:<24} {:<12} {}",
                format!("{}/{}", svc.namespace, svc.name),
                svc.cluster_ip,
                ports.join(",")
            );
        }
    }
}
