//! `warrenctl config …`: configuration, checked the way the agent checks it.

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;
use warren_api::config::{DumpRequest, Role, StatusRequest};
use warren_node_agent::model::{
    ConfigError, FieldError, Object,
    object::{parse_document, split_documents},
    validate,
};

use crate::{agent::AgentArgs, dump, table};

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// The node agent's current view: what it serves this node's ztunnel,
    /// or (`--waypoint NS`) what it serves the waypoints of a namespace
    /// (routes, policies, Telemetry, providers), or (`--all`) both.
    Dump {
        #[command(flatten)]
        agent: AgentArgs,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
        /// What the waypoints of this namespace are sent.
        #[arg(long, value_name = "NAMESPACE", conflicts_with = "all")]
        waypoint: Option<String>,
        /// Everything the agent publishes.
        #[arg(long)]
        all: bool,
    },
    /// Each subscribed proxy: the version it was sent, the one it
    /// acknowledged, and why it refused one, if it did.
    Status {
        #[command(flatten)]
        agent: AgentArgs,
    },
    /// Check YAML/JSON files offline with the agent's own rules; exits
    /// non-zero if any object would be refused.
    Validate {
        /// Files to check (multi-document YAML or JSON).
        #[arg(short = 'f', long = "file", required = true)]
        files: Vec<PathBuf>,
    },
}

pub fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Validate { files } => validate_files(&files),
        Command::Dump {
            agent,
            output,
            waypoint,
            all,
        } => {
            let (role, namespace) = match (waypoint, all) {
                (Some(namespace), _) => (Role::Waypoint, namespace),
                (None, true) => (Role::Unspecified, String::new()),
                (None, false) => (Role::Ztunnel, String::new()),
            };
            let dump = agent.call(|mut c| async move {
                c.dump(DumpRequest {
                    role: role as i32,
                    namespace,
                })
                .await
                .map(tonic::Response::into_inner)
            })?;
            match output {
                Output::Json => dump::print_json(&dump)?,
                Output::Table => dump::print_tables(&dump),
            }
            Ok(())
        }
        Command::Status { agent } => {
            let status = agent.call(|mut c| async move {
                c.status(StatusRequest {})
                    .await
                    .map(tonic::Response::into_inner)
            })?;
            println!("view version {}", status.version);
            let rows: Vec<Vec<String>> = status
                .clients
                .iter()
                .map(|c| {
                    let role = Role::try_from(c.role).map_or("?", |r| r.as_str_name());
                    let behind = status.version.saturating_sub(c.acked_version);
                    vec![
                        c.client_id.clone(),
                        role.to_owned(),
                        c.sent_version.to_string(),
                        c.acked_version.to_string(),
                        if behind == 0 {
                            "in sync".into()
                        } else {
                            format!("{behind} behind")
                        },
                        c.nacks.to_string(),
                        if c.nacks == 0 {
                            "-".into()
                        } else {
                            format!("v{}: {}", c.nacked_version, c.nack_reason)
                        },
                    ]
                })
                .collect();
            table::print(
                &[
                    "CLIENT",
                    "ROLE",
                    "SENT",
                    "ACKED",
                    "STATE",
                    "NACKS",
                    "LAST NACK",
                ],
                &rows,
            );
            Ok(())
        }
    }
}

fn validate_files(files: &[PathBuf]) -> Result<()> {
    let mut objects = Vec::new();
    let mut errors: Vec<ConfigError> = Vec::new();
    for file in files {
        let source = file.display().to_string();
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {source}"))?;
        let docs = match split_documents(&text) {
            Ok(docs) => docs,
            Err(reason) => {
                errors.push(ConfigError {
                    kind: "file".into(),
                    object: source.clone(),
                    origin: None,
                    errors: vec![FieldError::new("", format!("not valid YAML: {reason}"))],
                });
                continue;
            }
        };
        for doc in docs {
            match parse_document(doc, &source) {
                Ok(object) => objects.push((source.clone(), object)),
                Err(err) => errors.push(err),
            }
        }
    }
    // References between the objects given: a route to a subset that the
    // host's DestinationRule does not define.
    let mut subsets: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (_, object) in &objects {
        if let Object::DestinationRule(dr) = object {
            subsets
                .entry(dr.spec.host.clone())
                .or_default()
                .extend(dr.spec.subsets.iter().map(|s| s.name.clone()));
        }
    }
    for (source, object) in &objects {
        if let Object::VirtualService(vs) = object {
            let unknown = validate::unknown_subsets(vs, |host| subsets.get(host).cloned());
            if !unknown.is_empty() {
                let key = object.key();
                errors.push(ConfigError {
                    kind: key.kind.name().into(),
                    object: format!("{}/{}", key.namespace.unwrap_or_default(), key.name),
                    origin: Some(source.clone()),
                    errors: unknown,
                });
            }
        }
    }
    for (_, object) in &objects {
        println!("ok       {}", object.key());
    }
    for err in &errors {
        println!("REJECTED {err}");
    }
    if !errors.is_empty() {
        bail!(
            "{} of {} objects rejected",
            errors.len(),
            errors.len() + objects.len()
        );
    }
    Ok(())
}
