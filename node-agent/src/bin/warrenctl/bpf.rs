//! `warrenctl bpf …`: programs, maps and pods of one node, from its pins.

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use serde_json::Value;
use warren_node_agent::datapath::{
    Datapath, inspect,
    pins::{BPFFS_ROOT, Pins},
};

use crate::table;

#[derive(Args, Clone, Debug)]
pub struct Target {
    /// Node name (its pins are under `/sys/fs/bpf/warren/NODE`); optional
    /// when this machine has one node.
    #[arg(long, env = "NODE_NAME")]
    node: Option<String>,
    /// Pin folder, instead of --node.
    #[arg(long, env = "WARREN_BPFFS", conflicts_with = "node")]
    bpffs: Option<PathBuf>,
    /// JSON output.
    #[arg(short = 'j', long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
pub enum Command {
    /// Programs.
    #[command(subcommand)]
    Prog(ProgCommand),
    /// Maps.
    #[command(subcommand)]
    Map(MapCommand),
    /// Enrolled pods: name, netns cookie, mode, counters.
    Pods(Target),
}

#[derive(Subcommand)]
pub enum ProgCommand {
    /// Programs attached or pinned for the node.
    List(Target),
}

#[derive(Subcommand)]
pub enum MapCommand {
    /// Maps with their shape and entry count.
    List(Target),
    /// A map's entries, decoded.
    Dump {
        /// Map name (e.g. WARREN_ENROLLED; case does not matter).
        name: String,
        #[command(flatten)]
        target: Target,
    },
}

impl Target {
    fn pins(&self) -> Result<Pins> {
        if let Some(dir) = &self.bpffs {
            return Ok(Pins::new(dir));
        }
        if let Some(node) = &self.node {
            return Ok(Pins::new(PathBuf::from(BPFFS_ROOT).join(node)));
        }
        let nodes: Vec<PathBuf> = std::fs::read_dir(BPFFS_ROOT)
            .with_context(|| {
                format!("no Warren datapath on this machine ({BPFFS_ROOT} is missing)")
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        match nodes.as_slice() {
            [one] => Ok(Pins::new(one)),
            [] => bail!("no Warren node has pins under {BPFFS_ROOT}"),
            many => bail!(
                "{} nodes on this machine ({}): choose one with --node",
                many.len(),
                many.iter()
                    .filter_map(|p| p.file_name())
                    .map(|n| n.to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    fn open(&self) -> Result<Datapath> {
        let pins = self.pins()?;
        Datapath::open(pins.root()).with_context(|| format!("opening {}", pins.root().display()))
    }
}

pub fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Prog(ProgCommand::List(target)) => {
            let rows = inspect::programs(&target.pins()?)?;
            if target.json {
                return print_json(&rows);
            }
            // Guards sit on veths in the node's namespace, maybe not this
            // one's: take their names from the enrolled pods, not from here.
            let veths: std::collections::HashMap<u32, String> = target
                .open()
                .and_then(|d| Ok(d.pods()?))
                .map(|pods| {
                    pods.into_iter()
                        .filter_map(|p| Some((p.ifindex, p.veth?)))
                        .collect()
                })
                .unwrap_or_default();
            table::print(
                &["ID", "NAME", "TYPE", "LINK", "PIN", "ATTACHED TO"],
                &rows
                    .iter()
                    .map(|r| {
                        vec![
                            r.id.to_string(),
                            r.name.clone(),
                            r.kind.clone(),
                            r.link_id.map_or_else(|| "-".into(), |l| l.to_string()),
                            r.pin.clone(),
                            match r.ifindex {
                                None => "-".into(),
                                Some(0) => "(interface gone)".into(),
                                Some(i) => veths.get(&i).map_or_else(
                                    || format!("ifindex {i}"),
                                    |n| format!("{n} (ifindex {i})"),
                                ),
                            },
                        ]
                    })
                    .collect::<Vec<_>>(),
            );
        }
        Command::Map(MapCommand::List(target)) => {
            let datapath = target.open()?;
            let rows = datapath.map_rows()?;
            if target.json {
                return print_json(&rows);
            }
            table::print(
                &["ID", "NAME", "TYPE", "KEY", "VALUE", "MAX", "ENTRIES"],
                &rows
                    .iter()
                    .map(|r| {
                        vec![
                            r.id.to_string(),
                            r.name.clone(),
                            r.kind.clone(),
                            r.key_size.to_string(),
                            r.value_size.to_string(),
                            r.max_entries.to_string(),
                            r.entries.to_string(),
                        ]
                    })
                    .collect::<Vec<_>>(),
            );
        }
        Command::Map(MapCommand::Dump { name, target }) => {
            let dump = target.open()?.dump(&name)?;
            if target.json {
                return print_json(&dump.entries);
            }
            table::print(
                &["KEY", "VALUE"],
                &dump
                    .entries
                    .iter()
                    .map(|e| vec![compact(&e.key), compact(&e.value)])
                    .collect::<Vec<_>>(),
            );
        }
        Command::Pods(target) => {
            let rows = target.open()?.pods()?;
            if target.json {
                return print_json(&rows);
            }
            table::print(
                &[
                    "POD",
                    "NETNS COOKIE",
                    "IP",
                    "VETH",
                    "MODE",
                    "REDIRECTED",
                    "EXEMPT",
                ],
                &rows
                    .iter()
                    .map(|r| {
                        vec![
                            r.pod.clone(),
                            r.netns_cookie.to_string(),
                            r.ip.map_or_else(|| "-".into(), |ip| ip.to_string()),
                            r.veth.clone().unwrap_or_else(|| "-".into()),
                            r.mode.clone(),
                            r.redirected.to_string(),
                            r.exempt.to_string(),
                        ]
                    })
                    .collect::<Vec<_>>(),
            );
        }
    }
    Ok(())
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A JSON value as one short line for tables: objects as `k=v` pairs.
fn compact(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Object(fields) => fields
            .iter()
            .map(|(k, v)| format!("{k}={}", compact(v)))
            .collect::<Vec<_>>()
            .join(" "),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}
