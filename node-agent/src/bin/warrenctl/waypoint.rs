//! `warrenctl waypoint …`: a namespace's waypoint in local mode, where the
//! config folder plays the API server: `apply` writes the Gateway that asks
//! for it (each node agent then runs `warren-waypoint` in the namespace's
//! waypoint pods on its node), `delete` removes it, `list` shows them.
//! `clusters` asks a running waypoint how its upstream clusters stand, and
//! `explain` what it would do with one request.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use warren_api::config::{Role, StatusRequest};
use warren_node_agent::enrollment::NETNS_ANNOTATION;
use warren_node_agent::model::{
    Object,
    gateway::{DEFAULT_WAYPOINT_NAME, GATEWAY_NAME_LABEL, Gateway},
    object::{parse_document, split_documents},
};

use crate::{admin, agent::AgentArgs, table};

#[derive(Subcommand)]
pub enum Command {
    /// Ask for a waypoint in a namespace: writes its Gateway (class
    /// warren-waypoint, HBONE on 15008) as `gateway.NS.NAME.yaml` into the
    /// config folder. Pods labelled `gateway.networking.k8s.io/gateway-name=NAME`
    /// then run it.
    Apply {
        #[command(flatten)]
        target: Target,
        /// Which traffic it takes (its `istio.io/waypoint-for` label):
        /// addressed to Services, to pods themselves, or both.
        #[arg(long = "for", default_value = "service", value_parser = ["service", "workload", "all"])]
        traffic: String,
    },
    /// Remove a namespace's waypoint Gateway from the config folder; the
    /// agents stop its processes and traffic goes straight to endpoints.
    Delete(Target),
    /// Waypoint Gateways in the config folder, the traffic each takes
    /// (`istio.io/waypoint-for`), their pods, and whether this node's agent
    /// has a waypoint of that namespace subscribed.
    List {
        #[command(flatten)]
        folder: Folder,
        #[command(flatten)]
        agent: AgentArgs,
    },
    /// The upstream clusters a namespace's running waypoint has built: the
    /// DestinationRules that made each, its balancer, upstream HTTP version,
    /// pool limits and counters, and each endpoint's active requests and
    /// ejection (the waypoint's admin `/clusters`, asked inside its pods'
    /// network namespaces on this machine).
    Clusters {
        #[command(flatten)]
        target: Target,
        /// The waypoint's admin port (on loopback in its pod).
        #[arg(long, default_value_t = 15000)]
        admin_port: u16,
        /// Print each pod's answer as JSON, keyed by pod.
        #[arg(short, long)]
        json: bool,
        /// Only the pods of this node (the agent's `--node-name`); all
        /// pods whose network namespace is on this machine by default.
        #[arg(long)]
        node: Option<String>,
    },
    /// What a namespace's running waypoint would do with one request, step
    /// by step: the caller, the destination, the AuthorizationPolicy
    /// decision, the VirtualService route, its faults, destinations and
    /// weights, timeout, retries and mirrors (the waypoint's admin
    /// `/explain`).
    Explain {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        request: Request,
        /// The waypoint's admin port (on loopback in its pod).
        #[arg(long, default_value_t = 15000)]
        admin_port: u16,
        /// Print the waypoint's answer as JSON.
        #[arg(short, long)]
        json: bool,
    },
}

/// A request for `waypoint explain`.
#[derive(Args, Clone, Debug)]
pub struct Request {
    /// The calling pod, NAMESPACE/NAME.
    #[arg(long)]
    from: String,
    /// The request's method.
    #[arg(short = 'X', long, default_value = "GET")]
    method: String,
    /// A request header, `name: value` (repeat for more).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// On a TLS port: the server name the client's hello asks for (default:
    /// the URL's host, when it is a name).
    #[arg(long)]
    sni: Option<String>,
    /// Only the pods of this node (the agent's `--node-name`).
    #[arg(long)]
    node: Option<String>,
    /// The URL: `http://HOST[:PORT]/PATH`, HOST a Service's name or address.
    url: String,
}

/// Where the local configuration lives (the agent's `--config-dir`).
#[derive(Args, Clone, Debug)]
pub struct Folder {
    /// The node agents' config folder.
    #[arg(long, env = "WARREN_CONFIG_DIR")]
    config_dir: PathBuf,
}

#[derive(Args, Clone, Debug)]
pub struct Target {
    /// The namespace the waypoint serves.
    #[arg(short, long)]
    namespace: String,
    /// The Gateway's name (its pods carry it in their gateway-name label).
    #[arg(long, default_value = DEFAULT_WAYPOINT_NAME)]
    name: String,
    #[command(flatten)]
    folder: Folder,
}

pub fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Apply { target, traffic } => apply(&target, &traffic),
        Command::Delete(target) => delete(&target),
        Command::List { folder, agent } => list(&folder.config_dir, &agent),
        Command::Clusters {
            target,
            admin_port,
            json,
            node,
        } => clusters(&target, admin_port, json, node.as_deref()),
        Command::Explain {
            target,
            request,
            admin_port,
            json,
        } => explain(&target, &request, admin_port, json),
    }
}

/// `gateway.NS.NAME.yaml`, the name the testbed's writer would give it.
fn file_name(namespace: &str, name: &str) -> String {
    format!("gateway.{namespace}.{name}.yaml")
}

fn apply(target: &Target, traffic: &str) -> Result<()> {
    let dir = &target.folder.config_dir;
    ensure_dir(dir)?;
    let mut gateway = Gateway::waypoint(&target.namespace, &target.name);
    // Unlabelled is `service` already: the Gateway stays as Istio writes it.
    if traffic != "service" {
        gateway = gateway.taking(traffic);
    }
    let yaml = gateway.to_yaml().context("encoding the Gateway")?;
    let file = file_name(&target.namespace, &target.name);
    let path = dir.join(&file);
    // Written aside (hidden, so the agents skip it) and renamed into place:
    // an agent never reads half a file.
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, yaml).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
    println!(
        "gateway {}/{} written to {}",
        target.namespace,
        target.name,
        path.display()
    );
    Ok(())
}

fn delete(target: &Target) -> Result<()> {
    let dir = &target.folder.config_dir;
    let wanted = (target.namespace.as_str(), target.name.as_str());
    // The Gateway may have been written by hand under another file name.
    let mut removed = false;
    for (path, objects) in read_folder(dir)? {
        let holds = |o: &Object| matches!(o, Object::Gateway(g) if (g.metadata.namespace.as_deref().unwrap_or("default"), g.metadata.name.as_deref().unwrap_or_default()) == wanted);
        if !objects.iter().any(holds) {
            continue;
        }
        if !objects.iter().all(holds) {
            bail!(
                "{} holds gateway {}/{} with other objects: edit it by hand",
                path.display(),
                target.namespace,
                target.name
            );
        }
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        println!(
            "gateway {}/{} removed ({})",
            target.namespace,
            target.name,
            path.display()
        );
        removed = true;
    }
    if !removed {
        bail!(
            "no gateway {}/{} in {}",
            target.namespace,
            target.name,
            dir.display()
        );
    }
    Ok(())
}

fn list(dir: &Path, agent: &AgentArgs) -> Result<()> {
    let objects: Vec<Object> = read_folder(dir)?
        .into_iter()
        .flat_map(|(_, objects)| objects)
        .collect();
    // Waypoints subscribed to this node's agent, by namespace. Without an
    // agent the folder is still worth showing.
    let subscribed: Option<BTreeMap<String, String>> = match agent.call(|mut c| async move {
        c.status(StatusRequest {})
            .await
            .map(tonic::Response::into_inner)
    }) {
        Ok(status) => Some(
            status
                .clients
                .iter()
                .filter(|c| c.role == Role::Waypoint as i32)
                .filter_map(|c| {
                    let namespace = c.client_id.strip_prefix("waypoint-")?;
                    Some((namespace.to_owned(), c.client_id.clone()))
                })
                .collect(),
        ),
        Err(err) => {
            eprintln!("warning: {err:#}");
            None
        }
    };
    let mut rows = Vec::new();
    for object in &objects {
        let Object::Gateway(gateway) = object else {
            continue;
        };
        if !gateway.is_waypoint() {
            continue;
        }
        let namespace = gateway.metadata.namespace.as_deref().unwrap_or("default");
        let name = gateway.metadata.name.as_deref().unwrap_or_default();
        let pods: Vec<String> = objects
            .iter()
            .filter_map(|o| match o {
                Object::Pod(p) => Some(p),
                _ => None,
            })
            .filter(|p| *p.namespace == *namespace)
            .filter(|p| p.labels.get(GATEWAY_NAME_LABEL) == Some(name))
            .map(|p| format!("{}@{}", p.name, p.node_name.as_deref().unwrap_or("?")))
            .collect();
        let process = match &subscribed {
            None => "? (no agent)".to_owned(),
            Some(clients) => match clients.get(namespace) {
                Some(client) => format!("running ({client})"),
                None => "not on this node".to_owned(),
            },
        };
        rows.push(vec![
            namespace.to_owned(),
            name.to_owned(),
            gateway.spec.gateway_class_name.clone(),
            gateway.waypoint_for().to_owned(),
            if pods.is_empty() {
                "none (fails closed)".to_owned()
            } else {
                pods.join(",")
            },
            process,
        ]);
    }
    rows.sort();
    table::print(
        &["NAMESPACE", "NAME", "CLASS", "FOR", "PODS", "PROCESS"],
        &rows,
    );
    Ok(())
}

/// A waypoint pod found in the config folder: `namespace/name` and its
/// network namespace.
struct WaypointPod {
    name: String,
    netns: PathBuf,
}

/// The running pods of `target`'s waypoint whose network namespace is on
/// this machine (of `node` only, when given).
fn running_pods(target: &Target, node: Option<&str>) -> Result<Vec<WaypointPod>> {
    let pods: Vec<WaypointPod> = read_folder(&target.folder.config_dir)?
        .into_iter()
        .flat_map(|(_, objects)| objects)
        .filter_map(|object| match object {
            Object::Pod(pod) => Some(pod),
            _ => None,
        })
        .filter(|pod| *pod.namespace == *target.namespace)
        .filter(|pod| pod.labels.get(GATEWAY_NAME_LABEL) == Some(target.name.as_str()))
        // As the agent runs them: pods that have not finished, on the node
        // asked for.
        .filter(|pod| !pod.finished())
        .filter(|pod| node.is_none_or(|n| pod.node_name.as_deref() == Some(n)))
        // A pod whose namespace is not on this machine runs elsewhere.
        .filter(|pod| {
            pod.annotation(NETNS_ANNOTATION)
                .is_some_and(|path| Path::new(path).exists())
        })
        .filter_map(|pod| {
            Some(WaypointPod {
                name: format!("{}/{}", pod.namespace, pod.name),
                netns: PathBuf::from(pod.annotation(NETNS_ANNOTATION)?),
            })
        })
        .collect();
    if pods.is_empty() {
        bail!(
            "no running pod of waypoint {}/{} with a {NETNS_ANNOTATION} on this machine in {}",
            target.namespace,
            target.name,
            target.folder.config_dir.display()
        );
    }
    Ok(pods)
}

/// Asks a running pod of the waypoint what it would do with one request.
fn explain(target: &Target, request: &Request, admin_port: u16, json: bool) -> Result<()> {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query
        .append_pair("from", &request.from)
        .append_pair("method", &request.method)
        .append_pair("url", &request.url);
    for header in &request.headers {
        query.append_pair("header", header);
    }
    if let Some(sni) = &request.sni {
        query.append_pair("sni", sni);
    }
    let path = format!("/explain?{}", query.finish());
    let mut failed = Vec::new();
    // Every pod of a waypoint holds the same tables: the first to answer.
    for pod in running_pods(target, request.node.as_deref())? {
        match admin::get_in_netns(&pod.netns, admin_port, &path) {
            Ok(body) => {
                println!("waypoint pod {}", pod.name);
                return crate::explain::print(&body, json);
            }
            // The question was read and answered: no other pod says otherwise.
            Err(err) if err.chain().any(|e| e.is::<admin::Answered>()) => {
                return Err(err.context(format!("waypoint pod {}", pod.name)));
            }
            Err(err) => failed.push(format!("{}: {err:#}", pod.name)),
        }
    }
    bail!("no waypoint pod answered:\n{}", failed.join("\n"))
}

fn clusters(target: &Target, admin_port: u16, json: bool, node: Option<&str>) -> Result<()> {
    let pods = running_pods(target, node)?;
    let mut answers = serde_json::Map::new();
    let mut failed = Vec::new();
    for pod in &pods {
        let answer = admin::get_in_netns(&pod.netns, admin_port, "/clusters").and_then(|body| {
            serde_json::from_slice::<serde_json::Value>(&body)
                .context("the waypoint's /clusters is not JSON")
        });
        match answer {
            Ok(dump) => {
                answers.insert(pod.name.clone(), dump);
            }
            Err(err) => failed.push(format!("{}: {err:#}", pod.name)),
        }
    }
    for failure in &failed {
        eprintln!("warning: {failure}");
    }
    if answers.is_empty() {
        bail!(
            "no waypoint pod of {}/{} answered",
            target.namespace,
            target.name
        );
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&answers)?);
        return Ok(());
    }
    for (i, (pod, dump)) in answers.iter().enumerate() {
        if i > 0 {
            println!();
        }
        println!("waypoint pod {pod}");
        print_clusters(dump);
    }
    Ok(())
}

/// Two tables from a `/clusters` answer: one row per cluster, then one per
/// endpoint.
fn print_clusters(dump: &serde_json::Value) {
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".to_owned(),
        other => other.to_string(),
    };
    let empty = Vec::new();
    let clusters = dump["clusters"].as_array().unwrap_or(&empty);
    let mut rows = Vec::new();
    let mut endpoint_rows = Vec::new();
    for cluster in clusters {
        let name = match cluster["subset"].as_str() {
            Some(subset) => format!("{}:{} ({subset})", text(&cluster["host"]), cluster["port"]),
            None => format!("{}:{}", text(&cluster["host"]), cluster["port"]),
        };
        let rules = cluster["rules"]
            .as_array()
            .filter(|r| !r.is_empty())
            .map_or_else(
                || "-".to_owned(),
                |r| r.iter().map(text).collect::<Vec<_>>().join(","),
            );
        let pool = &cluster["connection_pool"];
        let limits: Vec<String> = [
            ("maxConnections", "max_connections"),
            ("http1MaxPendingRequests", "http1_max_pending_requests"),
            ("http2MaxRequests", "http2_max_requests"),
            ("maxRequestsPerConnection", "max_requests_per_connection"),
            ("maxConcurrentStreams", "max_concurrent_streams"),
            ("maxRetries", "max_retries"),
        ]
        .into_iter()
        .filter(|(_, key)| !pool[*key].is_null() && pool[*key] != "unlimited")
        .map(|(field, key)| format!("{field}={}", text(&pool[key])))
        .collect();
        let endpoints = cluster["endpoints"].as_array().unwrap_or(&empty);
        let ejected = endpoints
            .iter()
            .filter(|e| e["ejected"] == serde_json::Value::Bool(true))
            .count();
        let active: u64 = endpoints
            .iter()
            .filter_map(|e| e["active_requests"].as_u64())
            .sum();
        // Where the load goes by locality priority, when it is split.
        let loads: Vec<String> = cluster["locality_groups"]
            .as_array()
            .filter(|g| g.len() > 1)
            .map(|groups| {
                groups
                    .iter()
                    .map(|g| {
                        let load = g["load_percent"].as_f64().unwrap_or_default();
                        // With `distribute` one priority holds several
                        // weighted localities: name them.
                        let localities: Vec<&str> = g["localities"]
                            .as_array()
                            .map(|l| l.iter().filter_map(serde_json::Value::as_str).collect())
                            .unwrap_or_default();
                        match localities.as_slice() {
                            [one] if !one.is_empty() => {
                                format!("p{} {one}:{load:.0}%", g["priority"])
                            }
                            _ => format!("p{}:{load:.0}%", g["priority"]),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        rows.push(vec![
            name.clone(),
            rules,
            text(&cluster["load_balancer"]),
            text(&cluster["upstream_http"]),
            format!("{}/{}", endpoints.len() - ejected, endpoints.len()),
            active.to_string(),
            text(&cluster["pending"]),
            text(&cluster["overflows"]),
            text(&cluster["ejections"]),
            if loads.is_empty() {
                "-".to_owned()
            } else {
                loads.join(" ")
            },
            if limits.is_empty() {
                "-".to_owned()
            } else {
                limits.join(" ")
            },
        ]);
        for endpoint in endpoints {
            let locality = match endpoint["locality"].as_str() {
                None | Some("") => "-".to_owned(),
                Some(l) => l.to_owned(),
            };
            endpoint_rows.push(vec![
                name.clone(),
                text(&endpoint["id"]),
                text(&endpoint["address"]),
                locality,
                // No priority: locality balancing gives it no traffic.
                match endpoint["priority"].as_u64() {
                    Some(p) => p.to_string(),
                    None => "none".to_owned(),
                },
                text(&endpoint["active_requests"]),
                if endpoint["ejected"] == serde_json::Value::Bool(true) {
                    "ejected".to_owned()
                } else {
                    "healthy".to_owned()
                },
            ]);
        }
    }
    if rows.is_empty() {
        println!("no clusters yet (they are built by the first request to each destination)");
        return;
    }
    table::print(
        &[
            "CLUSTER",
            "RULES",
            "BALANCER",
            "UPSTREAM",
            "HEALTHY",
            "ACTIVE",
            "PENDING",
            "OVERFLOWS",
            "EJECTIONS",
            "LOCALITY LOAD",
            "LIMITS",
        ],
        &rows,
    );
    println!();
    table::print(
        &[
            "CLUSTER", "ENDPOINT", "ADDRESS", "LOCALITY", "PRIORITY", "ACTIVE", "STATE",
        ],
        &endpoint_rows,
    );
    println!(
        "\npooled: {} idle HTTP/1.1 connection(s), {} HTTP/2 connection(s) to {} endpoint(s)",
        text(&dump["http1_idle_connections"]),
        text(&dump["http2_connections"]),
        text(&dump["http2_endpoints"])
    );
}

fn ensure_dir(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        bail!(
            "{} is not a folder (the node agents' --config-dir)",
            dir.display()
        );
    }
    Ok(())
}

/// Every config file of the folder with the objects it holds, read the way
/// the agent reads it; files or documents it would refuse are skipped with
/// a warning.
fn read_folder(dir: &Path) -> Result<Vec<(PathBuf, Vec<Object>)>> {
    ensure_dir(dir)?;
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for entry in entries {
        let path = entry
            .with_context(|| format!("reading {}", dir.display()))?
            .path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let is_config =
            !name.starts_with('.') && [".yaml", ".yml", ".json"].iter().any(|e| name.ends_with(e));
        if !is_config || !path.is_file() {
            continue;
        }
        let source = path.display().to_string();
        // A file may vanish between listing and reading (the testbed or an
        // agent's writer renaming): skip it.
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let docs = match split_documents(&text) {
            Ok(docs) => docs,
            Err(reason) => {
                eprintln!("warning: {source}: not valid YAML: {reason}");
                continue;
            }
        };
        let mut objects = Vec::new();
        for doc in docs {
            match parse_document(doc, &source) {
                Ok(object) => objects.push(object),
                Err(err) => eprintln!("warning: {err}"),
            }
        }
        out.push((path, objects));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}
