//! `config`: how fast one changed object reaches a proxy, how long a new
//! proxy waits for a full snapshot, and what the agent's memory costs per
//! workload — on a synthetic mesh of 10 000 services, 50 000 endpoints and
//! 2 000 policies.
//!
//! The agent reads a testbed cluster's config folder, as in local mode;
//! the proxy is this process, subscribed to the agent's socket with the
//! same client ztunnel runs. A change is an AuthorizationPolicy file
//! rewritten (atomically); its latency runs from the rename to the moment
//! the proxy has applied the update carrying it, just before its ACK.
//! There is no baseline to alternate with: each figure is printed against
//! the target the issue sets.

use std::{
    fmt::Write as _,
    fs,
    path::Path,
    sync::mpsc as std_mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use tokio_stream::wrappers::ReceiverStream;
use warren_api::{
    config::{
        ClientMessage, Hello, Role, Update, client_message::Message,
        config_distribution_client::ConfigDistributionClient, resource::Kind,
    },
    subscribe::{Handler, Refused, Subscriber},
};
use warren_e2e::agent::{agent_socket, start_agent_with_config};
use warren_testbed::Cluster;

use crate::procfs;

#[derive(clap::Args)]
pub struct Args {
    /// Services (each with its EndpointSlice).
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// Endpoints per service; each endpoint is a pod (a workload).
    #[arg(long, default_value_t = 5)]
    endpoints_per_service: usize,
    /// AuthorizationPolicies.
    #[arg(long, default_value_t = 2_000)]
    policies: usize,
    /// Namespaces the objects are spread over.
    #[arg(long, default_value_t = 100)]
    namespaces: usize,
    /// One-object changes timed.
    #[arg(long, default_value_t = 100)]
    changes: usize,
}

/// What the proxy saw, sent to the bench as it happens.
enum Seen {
    Snapshot { resources: usize, bytes: usize },
    Delta { upserts: Vec<(String, u32)> },
}

/// The proxy: reports each update, refuses nothing.
struct Probe(std_mpsc::Sender<(Instant, Seen)>);

impl Handler for Probe {
    fn apply(&mut self, update: Update) -> Vec<Refused> {
        let now = Instant::now();
        let seen = if update.snapshot {
            Seen::Snapshot {
                resources: update.upserts.len(),
                bytes: prost::Message::encoded_len(&update),
            }
        } else {
            Seen::Delta {
                // The changed policy's first port says which change it is.
                upserts: update
                    .upserts
                    .iter()
                    .map(|r| {
                        let port = match &r.kind {
                            Some(Kind::Authorization(a)) => a
                                .rules
                                .first()
                                .and_then(|r| r.clauses.first())
                                .and_then(|c| c.matches.first())
                                .and_then(|m| m.destination_ports.first().copied())
                                .unwrap_or(0),
                            _ => 0,
                        };
                        (r.key.clone(), port)
                    })
                    .collect(),
            }
        };
        let _ = self.0.send((now, seen));
        Vec::new()
    }
}

fn write_atomic(dir: &Path, name: &str, text: &str) -> Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, dir.join(name)).with_context(|| format!("renaming {name}"))
}

/// The synthetic mesh, one file per namespace and kind. Pods run on other
/// nodes: the agent serves them without enrolling any.
fn write_mesh(dir: &Path, args: &Args) -> Result<usize> {
    let per_ns = args.services.div_ceil(args.namespaces);
    let policies_per_ns = args.policies.div_ceil(args.namespaces);
    let mut pods = 0;
    for n in 0..args.namespaces {
        let ns = format!("bench-{n}");
        let (mut pod_docs, mut svc_docs, mut policy_docs) =
            (String::new(), String::new(), String::new());
        writeln!(
            svc_docs,
            "apiVersion: v1\nkind: Namespace\nmetadata: {{ name: {ns}, labels: {{ warren.io/dataplane-mode: ambient }} }}\n---"
        )?;
        for s in 0..per_ns.min(args.services.saturating_sub(n * per_ns)) {
            let svc = format!("svc-{s}");
            let mut endpoints = String::new();
            for e in 0..args.endpoints_per_service {
                let pod = format!("{svc}-{e}");
                let i = pods;
                pods += 1;
                let ip = format!("10.{}.{}.{}", 100 + i / 65_536, (i / 256) % 256, i % 256);
                let node = format!("bench-node-{}", i % 50);
                writeln!(
                    pod_docs,
                    "apiVersion: v1\nkind: Pod\nmetadata: {{ name: {pod}, namespace: {ns}, labels: {{ app: {svc}, version: v1 }} }}\n\
                     spec: {{ nodeName: {node}, serviceAccountName: {svc}, containers: [{{ name: main }}] }}\n\
                     status: {{ hostIP: 172.31.{}.{}, podIP: {ip} }}\n---",
                    (i % 50) / 256,
                    i % 50 + 1
                )?;
                writeln!(
                    endpoints,
                    "  - {{ addresses: [{ip}], conditions: {{ ready: true }}, targetRef: {{ kind: Pod, name: {pod}, namespace: {ns} }} }}"
                )?;
            }
            let vip = format!(
                "10.96.{}.{}",
                (n * per_ns + s) / 256,
                (n * per_ns + s) % 256
            );
            writeln!(
                svc_docs,
                "apiVersion: v1\nkind: Service\nmetadata: {{ name: {svc}, namespace: {ns} }}\n\
                 spec: {{ clusterIP: {vip}, ports: [{{ name: http, port: 80, targetPort: 8080 }}] }}\n---\n\
                 apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata: {{ name: {svc}-1, namespace: {ns}, labels: {{ kubernetes.io/service-name: {svc} }} }}\n\
                 addressType: IPv4\nports: [{{ name: http, port: 8080 }}]\nendpoints:\n{endpoints}---"
            )?;
        }
        for p in 0..policies_per_ns.min(args.policies.saturating_sub(n * policies_per_ns)) {
            writeln!(
                policy_docs,
                "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
                 metadata: {{ name: policy-{p}, namespace: {ns} }}\n\
                 spec: {{ selector: {{ matchLabels: {{ app: svc-{p} }} }}, rules: [{{ from: [{{ source: {{ namespaces: [{ns}] }} }}], to: [{{ operation: {{ ports: [\"8080\"] }} }}] }}] }}\n---"
            )?;
        }
        write_atomic(dir, &format!("{ns}-pods.yaml"), &pod_docs)?;
        write_atomic(dir, &format!("{ns}-services.yaml"), &svc_docs)?;
        write_atomic(dir, &format!("{ns}-policies.yaml"), &policy_docs)?;
    }
    Ok(pods)
}

fn changed_policy(port: u32) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {{ name: bench-change, namespace: bench-0 }}\n\
         spec: {{ rules: [{{ to: [{{ operation: {{ ports: [\"{port}\"] }} }}] }}] }}\n"
    )
}

/// A bare subscription that asks for resources `encoded` or not: how long the
/// snapshot took to arrive whole, and how many resources it held. Unlike
/// [`subscribe`] nothing is applied: this times the agent's side.
fn snapshot_in_form(
    runtime: &tokio::runtime::Runtime,
    socket: &Path,
    encoded: bool,
) -> Result<(Duration, usize)> {
    runtime.block_on(async {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(ClientMessage {
            message: Some(Message::Hello(Hello {
                role: Role::Ztunnel as i32,
                client_id: format!("bench-snapshot-encoded-{encoded}"),
                encoded_resources: encoded,
                ..Default::default()
            })),
        })
        .await
        .context("queueing the hello")?;
        let t0 = Instant::now();
        let mut updates = ConfigDistributionClient::new(warren_api::socket::channel(socket))
            .max_decoding_message_size(256 << 20)
            .subscribe(ReceiverStream::new(rx))
            .await
            .context("subscribing")?
            .into_inner();
        let update = tokio::time::timeout(Duration::from_secs(60), updates.message())
            .await
            .context("no snapshot within 60 s")?
            .context("reading the snapshot")?
            .context("the stream ended before a snapshot")?;
        let elapsed = t0.elapsed();
        ensure!(update.snapshot, "the first update was not a snapshot");
        drop(tx);
        Ok((elapsed, update.upserts.len() + update.encoded_upserts.len()))
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or(f64::NAN)
}

/// Subscribes a probe proxy; updates arrive on the returned channel.
fn subscribe(
    runtime: &tokio::runtime::Runtime,
    socket: &Path,
    name: &str,
) -> (
    tokio::task::JoinHandle<()>,
    std_mpsc::Receiver<(Instant, Seen)>,
) {
    let (tx, rx) = std_mpsc::channel();
    let subscriber = Subscriber::new(
        socket.to_owned(),
        Hello {
            role: Role::Ztunnel as i32,
            client_id: name.into(),
            ..Default::default()
        },
    );
    (runtime.spawn(subscriber.run(Probe(tx))), rx)
}

fn wait_snapshot(
    rx: &std_mpsc::Receiver<(Instant, Seen)>,
    within: Duration,
) -> Result<(Instant, usize, usize)> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((at, Seen::Snapshot { resources, bytes })) => return Ok((at, resources, bytes)),
            Ok(_) => {}
            Err(_) => bail!("no snapshot within {within:?}"),
        }
    }
}

pub fn run(args: &Args) -> Result<()> {
    ensure!(
        args.namespaces > 0 && args.changes > 0,
        "--namespaces and --changes must be positive"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let cluster = Cluster::builder().nodes(1).pods_per_node(0).up()?;
    let node = cluster.node(0)?;
    // The probes subscribe as ztunnels, which the agent believes only of a
    // process on the node's network: this one, for the bench (left before
    // the cluster goes).
    let _on_node = warren_testbed::netns::enter(&node.sandbox.netns)?;
    let dir = cluster.config_dir();
    write_atomic(&dir, "bench-change.yaml", &changed_policy(1))?;

    // The agent with an (almost) empty mesh: its memory before the load.
    let agent = start_agent_with_config(&cluster, node)?;
    let pid = agent.pid().context("the agent has no pid")?;
    let socket = agent_socket(&cluster, node)?;
    let (first, rx) = subscribe(&runtime, &socket, "bench-load");
    wait_snapshot(&rx, Duration::from_secs(20))?;
    let rss_empty = procfs::status_kib(pid, "VmRSS:")?;

    eprintln!(
        "writing {} services, {} endpoints (pods), {} policies over {} namespaces…",
        args.services,
        args.services * args.endpoints_per_service,
        args.policies,
        args.namespaces
    );
    let started = Instant::now();
    let pods = write_mesh(&dir, args)?;
    // Loaded when the proxy has seen the last service of the last namespace.
    let last_ns = args.namespaces - 1;
    let last_key = format!("service/bench-{last_ns}/svc-");
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut services_seen = 0;
    while services_seen < args.services {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((_, Seen::Delta { upserts })) => {
                services_seen += upserts
                    .iter()
                    .filter(|(k, _)| k.starts_with("service/"))
                    .count();
            }
            Ok((_, Seen::Snapshot { .. })) => bail!("the proxy was resubscribed during the load"),
            Err(_) => bail!(
                "only {services_seen} of {} services reached the proxy in 5 min (waiting for {last_key}…)",
                args.services
            ),
        }
    }
    let load_s = started.elapsed().as_secs_f64();
    eprintln!("loaded in {load_s:.1} s; settling…");
    std::thread::sleep(Duration::from_secs(2));
    let rss_full = procfs::status_kib(pid, "VmRSS:")?;
    let bytes_per_workload = (rss_full.saturating_sub(rss_empty) as f64 * 1024.0) / pods as f64;

    // A new proxy: how long until it holds the whole view.
    let t0 = Instant::now();
    let (second, snapshots) = subscribe(&runtime, &socket, "bench-new-proxy");
    let (at, resources, bytes) = wait_snapshot(&snapshots, Duration::from_secs(60))?;
    let snapshot_ms = at.duration_since(t0).as_secs_f64() * 1e3;
    second.abort();

    // The same snapshot with resources decoded for the message (proxies from
    // before encoded resources), against encoded as kept: time, and how far
    // the agent's RSS rose above its loaded size while building it.
    // Encoded first, so it cannot reuse heap the decoded build freed (the
    // agent trims only after config changes). Agent CPU time, from /proc, leaves
    // out the bench client's own decoding.
    let mut forms = Vec::new();
    for encoded in [true, false] {
        std::thread::sleep(Duration::from_millis(500));
        let before = procfs::status_kib(pid, "VmRSS:")?;
        procfs::reset_peak_rss(pid)?;
        let cpu_before = procfs::cpu_ms(pid)?;
        let (took, n) = snapshot_in_form(&runtime, &socket, encoded)?;
        ensure!(
            n == resources,
            "snapshot of {n} resources, the proxy's had {resources}"
        );
        let cpu = procfs::cpu_ms(pid)? - cpu_before;
        let rise = procfs::status_kib(pid, "VmHWM:")?.saturating_sub(before);
        forms.push((took.as_secs_f64() * 1e3, cpu, rise as f64 / 1024.0));
    }
    let [
        (encoded_ms, encoded_cpu, encoded_rise),
        (decoded_ms, decoded_cpu, decoded_rise),
    ] = forms[..]
    else {
        bail!("two snapshot forms measured, not {}", forms.len());
    };

    // One object at a time: file renamed → update applied by the proxy.
    eprintln!("timing {} one-object changes…", args.changes);
    while rx.try_recv().is_ok() {}
    let mut latencies = Vec::with_capacity(args.changes);
    for i in 0..args.changes {
        let port = 2 + i as u32;
        let t0 = Instant::now();
        write_atomic(&dir, "bench-change.yaml", &changed_policy(port))?;
        let deadline = t0 + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok((at, seen)) = rx.recv_timeout(left) else {
                bail!("change {i} did not reach the proxy within 10 s");
            };
            if let Seen::Delta { upserts } = seen
                && upserts
                    .iter()
                    .any(|(k, p)| k == "authorization/bench-0/bench-change" && *p == port)
            {
                latencies.push(at.duration_since(t0).as_secs_f64() * 1e3);
                break;
            }
        }
        // Apart enough that each change is its own update.
        std::thread::sleep(Duration::from_millis(20));
    }
    first.abort();
    latencies.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));

    println!(
        "\nconfig distribution — {} services, {pods} workloads, {} policies",
        args.services, args.policies
    );
    println!(
        "{:<34} {:>12} {:>10} {:>7}",
        "metric", "measured", "target", "ratio"
    );
    println!("{}", "-".repeat(66));
    let rows = [
        ("change → proxy applied, p50", p50, "ms", f64::NAN),
        ("change → proxy applied, p99", p99, "ms", 100.0),
        ("snapshot to a new proxy", snapshot_ms, "ms", 1000.0),
        ("agent memory per workload", bytes_per_workload, "B", 1024.0),
    ];
    for (name, value, unit, target) in rows {
        let target_s = if target.is_nan() {
            "-".to_owned()
        } else {
            format!("{target:.0} {unit}")
        };
        let ratio = if target.is_nan() {
            "-".to_owned()
        } else {
            format!("{:.2}x", value / target)
        };
        println!(
            "{name:<34} {:>12} {target_s:>10} {ratio:>7}",
            format!("{value:.1} {unit}")
        );
    }
    println!(
        "\nsnapshot: {resources} resources, {:.1} MiB; agent RSS {:.1} MiB empty → {:.1} MiB loaded; load took {load_s:.1} s\n",
        bytes as f64 / 1048576.0,
        rss_empty as f64 / 1024.0,
        rss_full as f64 / 1024.0
    );
    println!(
        "snapshot, bare subscription:  encoded {encoded_ms:.0} ms (agent CPU {encoded_cpu:.0} ms), agent RSS +{encoded_rise:.1} MiB;  decoded, for older proxies, {decoded_ms:.0} ms (agent CPU {decoded_cpu:.0} ms), RSS +{decoded_rise:.1} MiB\n"
    );
    println!(
        "BENCH config snapshot_peak_rss_rise_mib encoded={encoded_rise:.1} decoded={decoded_rise:.1} ratio={:.3}",
        encoded_rise / decoded_rise.max(0.1)
    );
    println!(
        "BENCH config snapshot_agent_cpu_ms encoded={encoded_cpu:.1} decoded={decoded_cpu:.1} ratio={:.3}",
        encoded_cpu / decoded_cpu.max(0.001)
    );
    println!(
        "BENCH config snapshot_received_ms encoded={encoded_ms:.1} decoded={decoded_ms:.1} ratio={:.3}",
        encoded_ms / decoded_ms.max(0.001)
    );
    println!("BENCH config change_to_ack_p50_ms={p50:.2}");
    println!(
        "BENCH config change_to_ack_p99_ms={p99:.2} target=100 ratio={:.3}",
        p99 / 100.0
    );
    println!(
        "BENCH config snapshot_ms={snapshot_ms:.1} target=1000 ratio={:.3}",
        snapshot_ms / 1000.0
    );
    println!(
        "BENCH config agent_bytes_per_workload={bytes_per_workload:.0} target=1024 ratio={:.3}",
        bytes_per_workload / 1024.0
    );
    println!(
        "BENCH config agent_rss_mib_per_10k_workloads={:.1}",
        bytes_per_workload * 10_000.0 / 1048576.0
    );
    drop(agent);
    Ok(())
}
