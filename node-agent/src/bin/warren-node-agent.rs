//! `warren-node-agent`: the per-node agent binary.

use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Parser as _;
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tracing::{debug, error, info, warn};
use warren_api::config::OutboundPolicy;
use warren_ebpf_common::AddrKind;
use warren_node_agent::{
    cni,
    config::{Cli, Command, RunArgs, WaypointControllerArgs},
    datapath::{self, Datapath, Redirect},
    distribution::{self, Distribution},
    enrollment::{self, Enrollment, PodNetworks},
    identity, memory,
    model::ObjectKey,
    source::{Source, SourceEvent, kube::KubeSource, local::LocalSource},
    store::{Applied, Store},
    view::{Mesh, Publisher, View},
    waypoint_controller,
    waypoints::{self, Supervisor},
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        // Colour only for a person's terminal, not in captured logs.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match Cli::parse().command {
        Command::Run(args) => run(args).await,
        Command::Uninstall(args) => {
            let root = args.node.pin_root();
            datapath::uninstall(&datapath::pins::Pins::new(&root))
                .with_context(|| format!("uninstalling {}", root.display()))?;
            info!(pins = %root.display(), "datapath uninstalled");
            if let (Some(conf), Some(bin)) = (&args.cni.cni_conf_dir, &args.cni.cni_bin_dir) {
                let removed = cni::install::remove(conf, bin)
                    .context("removing the CNI plugin from the node's configuration")?;
                info!(?removed, "CNI plugin removed");
            }
            Ok(())
        }
        Command::Ca(args) => Ok(warren_node_agent::ca::run(args).await?),
        Command::WaypointController(args) => waypoint_controller(args).await,
    }
}

async fn waypoint_controller(args: WaypointControllerArgs) -> Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API server (in-cluster or kubeconfig)")?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = sigterm.recv() => {}
        }
    };
    waypoint_controller::run(
        client,
        waypoint_controller::render::Settings {
            image: args.image,
            agent_socket: args.agent_socket,
        },
        waypoint_controller::route_status::Settings {
            cluster_domain: args.cluster_domain,
            bundle_namespaces: args.secret_namespaces,
        },
        args.namespace.as_deref(),
        shutdown,
    )
    .await;
    Ok(())
}

/// ztunnel hands a node over between processes with SO_REUSEPORT listeners; with
/// `net.ipv4.tcp_migrate_req` the connections queued on the old one's listeners move
/// to the new one's instead of being reset. ztunnel sets it when it can; in a
/// container without a writable `/proc/sys` it cannot, so the agent (privileged, in
/// the node's network namespace) sets it for the node.
fn migrate_queued_connections() {
    match warren_api::handover::migrate_queued_connections() {
        Ok(true) => info!("set net.ipv4.tcp_migrate_req for ztunnel's hand-overs"),
        Ok(false) => {}
        Err(error) => {
            tracing::warn!(%error, "could not set net.ipv4.tcp_migrate_req: ztunnel hand-overs may reset queued connections")
        }
    }
}

async fn run(args: RunArgs) -> Result<()> {
    // Local-mode waypoints run in the namespace a pod's annotation names; on a
    // cluster anyone creating a pod writes those.
    if args.kube && args.run_waypoints == Some(true) {
        anyhow::bail!(
            "--run-waypoints is for local mode: with --kube a Deployment runs each waypoint (warren-node-agent waypoint-controller)"
        );
    }
    let pin_root = args.node.pin_root();
    let (mut datapath, installed) = Datapath::install(&pin_root, &args.cgroup)
        .with_context(|| format!("installing the datapath on {}", args.cgroup.display()))?;
    datapath.configure(
        args.ztunnel.map(|addr| Redirect {
            ip4: *addr.ip(),
            ip6: args.ztunnel6,
            port: addr.port(),
            dns_port: args.ztunnel_dns_port,
        }),
        args.socket_shortcut,
    )?;
    for ip in &args.node_addrs {
        datapath.add_local_addr(*ip, AddrKind::Node)?;
    }
    datapath.set_inbound_capture(args.inbound_capture);
    if args.ztunnel.is_some() {
        migrate_queued_connections();
    }
    info!(
        node = %args.node.node,
        pins = %pin_root.display(),
        cgroup = %args.cgroup.display(),
        ?installed,
        ztunnel = ?args.ztunnel,
        "node agent ready"
    );

    // Configuration: a folder source feeding the store; enrollment follows
    // the store. Without a folder the agent only keeps the datapath up.
    let (events_tx, mut events) = mpsc::channel(1024);
    if let Some(dir) = &args.config_dir {
        let rescan = Duration::from_secs(args.rescan_every.max(1));
        spawn_source(
            LocalSource::new(dir, rescan),
            events_tx,
            dir.display().to_string(),
        );
    } else if args.kube {
        let client = kube::Client::try_default()
            .await
            .context("connecting to the Kubernetes API server (in-cluster or kubeconfig)")?;
        let mesh_config = (args.root_namespace.clone(), args.mesh_config.clone());
        spawn_source(
            KubeSource::new(client, mesh_config)
                .with_secret_namespaces(args.secret_namespaces.clone()),
            events_tx,
            "kube".into(),
        );
    } else {
        drop(events_tx);
    }
    let mut store = Store::default();
    let networks = if args.kube {
        PodNetworks::UidOnly
    } else {
        PodNetworks::AnnotationsOrUid
    };
    let mut enrollment =
        Enrollment::new(&args.node.node, &args.root_namespace, networks, &datapath)?;

    // The per-node view, served to this node's proxies.
    let publisher = Publisher::default();
    let mut view = View::new(
        Mesh {
            node: args.node.node.clone(),
            node_addresses: args.node_addrs.clone(),
            root_namespace: args.root_namespace.clone(),
            mesh_config: args.mesh_config.clone(),
            trust_domain: args.trust_domain.clone(),
            trust_domain_aliases: args.trust_domain_aliases.clone(),
            cluster_domain: args.cluster_domain.clone(),
            outbound_policy: OutboundPolicy::from_str_name(&args.outbound_policy)
                .unwrap_or(OutboundPolicy::AllowAny),
            captures_ipv6: args.ztunnel6.is_some(),
            inbound_listeners: args
                .inbound_capture
                .then(|| datapath.pins().map(warren_ebpf_common::map::INBOUND)),
        },
        publisher.clone(),
    );
    let listener = distribution::bind(&args.socket).await?;
    info!(socket = %args.socket.display(), "serving proxies");
    // A hello is believed only of a process the agent can place.
    let peers = distribution::Peers::new(networks, args.system_namespace.clone(), view.node_pods());
    let service = Distribution::new(publisher).checking(peers).into_service();
    tokio::spawn(async move {
        // Each connection placed as it is accepted (`distribution::Peers`).
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener)
            .map(|accepted| accepted.map(distribution::PlacedStream::new));
        if let Err(err) = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await
        {
            error!(error = %err, "config distribution server stopped");
        }
    });
    let mut built = false;
    let mut reclaim = memory::Reclaim::default();

    // The CNI plugin's calls: pods captured as the runtime builds their sandbox.
    let mut cni_calls = match &args.cni_socket {
        Some(path) => {
            let calls = cni::server::serve(path).await?;
            info!(socket = %path.display(), "serving the CNI plugin");
            Some(calls)
        }
        None => None,
    };
    let mut cni_pending = cni::server::Pending::default();
    // Installed once configuration is read: the entry lists the mesh's namespaces
    // for the plugin to fall back on while the agent is down (`cni::install`).
    let cni_install = cni_install(&args)?;
    // The mesh's namespaces as the installed entry lists them.
    let mut cni_namespaces = None;

    // Local mode: nothing else turns a waypoint Gateway into a process.
    let mut waypoints = if args.runs_waypoints() {
        let binary = match &args.waypoint_bin {
            Some(path) => path.clone(),
            None => waypoints::beside_current_exe()
                .context("finding warren-waypoint beside the agent (or pass --waypoint-bin)")?,
        };
        if let Some(dir) = &args.waypoint_log_dir {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the waypoint log folder {}", dir.display()))?;
        }
        Some(Supervisor::new(waypoints::Settings {
            binary,
            agent_socket: args.socket.clone(),
            log_dir: args.waypoint_log_dir.clone(),
            stop_grace: args.waypoint_stop_grace,
        }))
    } else {
        None
    };

    // Certificates for this node's workloads, when a CA is configured.
    let identities = identity::ClientConfig::from_args(&args.identity)
        .context("configuring the CA client")?
        .map(identity::Manager::spawn);
    let mut certificates = identities.as_ref().map(identity::Handle::certificates);

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let mut ticker = tokio::time::interval(Duration::from_secs(args.report_every.max(1)));
    // Reconciling on a timer too retries enrollments that failed (a pod's
    // namespace or veth not there yet) and notices recreated namespaces.
    let mut retry = tokio::time::interval(Duration::from_secs(args.rescan_every.max(1)));
    // ztunnel's listeners appear within moments of a pod's config: each pod's
    // inbound capture follows within a second.
    let mut inbound = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            Some(event) = events.recv() => {
                // Take every event already queued, then reconcile once.
                let mut changed = Vec::new();
                let mut relevant = apply(&mut store, event, &mut changed);
                while let Ok(event) = events.try_recv() {
                    relevant |= apply(&mut store, event, &mut changed);
                }
                if !store.synced() {
                    continue;
                }
                if relevant {
                    enrollment.reconcile(&store, &mut datapath);
                }
                if built {
                    view.changed(&store, &changed);
                } else {
                    view.rebuild(&store);
                    built = true;
                }
                view.refusals(&store);
                if let Some(install) = &cni_install {
                    let namespaces = enrollment::ambient_namespaces(&store);
                    if cni_namespaces.as_ref() != Some(&namespaces) {
                        ensure_cni_installed(install, &namespaces);
                        cni_namespaces = Some(namespaces);
                    }
                }
                // After the view's work: it frees what it computed from.
                reclaim.after_changes(changed.len());
                view.set_namespaces(&store, enrollment.namespaces());
                view.set_uncaptured(enrollment.uncaptured());
                if let Some(handle) = &identities {
                    handle.want(view.local_identities());
                }
                if let Some(waypoints) = &mut waypoints {
                    waypoints.reconcile(&store, &args.node.node);
                }
                settle(&mut cni_pending, &store, &mut datapath, &mut enrollment, &mut view, identities.as_ref());
            }
            Some(call) = next_call(&mut cni_calls) => {
                match cni::server::report_of(&call.request) {
                    Some(report) => cni_pending.add(report, call.answer, args.cni_wait),
                    None => {
                        if let cni::wire::Request::Del { pod, container_id } = &call.request {
                            cni_pending.cancel(container_id);
                            enrollment.forget(&store, &pod.namespace, &pod.name, pod.uid.as_deref(), container_id);
                        }
                        let _ = call.answer.send(cni::wire::Answer::Done);
                    }
                }
                settle(&mut cni_pending, &store, &mut datapath, &mut enrollment, &mut view, identities.as_ref());
            }
            () = deadline(cni_pending.next_deadline()) => {
                settle(&mut cni_pending, &store, &mut datapath, &mut enrollment, &mut view, identities.as_ref());
            }
            Some(()) = certificates_changed(&mut certificates) => {
                if let Some(rx) = &mut certificates {
                    let certs = rx.borrow_and_update().clone();
                    view.set_certificates(&certs.by_identity, &certs.roots_pem);
                }
            }
            _ = inbound.tick() => enrollment.capture_inbound(&mut datapath),
            _ = retry.tick() => {
                reclaim.on_tick();
                if store.synced() {
                    enrollment.reconcile(&store, &mut datapath);
                    view.set_namespaces(&store, enrollment.namespaces());
                    view.set_uncaptured(enrollment.uncaptured());
                }
                // The node's network plugin may have rewritten its configuration.
                if let (Some(install), Some(namespaces)) = (&cni_install, &cni_namespaces) {
                    ensure_cni_installed(install, namespaces);
                }
            }
            _ = ticker.tick() => {
                let counters = datapath.counters()?;
                let fields: Vec<String> = counters.iter().filter(|(_, v)| *v > 0).map(|(k, v)| format!("{k}={v}")).collect();
                info!(counters = %fields.join(" "), "datapath");
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
    }
    // Waypoints talk to this agent's socket: they go with it (SIGTERM, so
    // open requests drain), and the next agent starts them again.
    if let Some(waypoints) = waypoints {
        waypoints.shutdown().await;
    }
    // Nothing is detached: the pins keep capture running until the next
    // agent adopts them, or `uninstall` removes them.
    info!("node agent stopping; datapath stays installed");
    Ok(())
}

/// Applies one event, noting the objects it changed; true if it may change
/// enrollment.
fn apply(store: &mut Store, event: SourceEvent, changed: &mut Vec<ObjectKey>) -> bool {
    match store.apply(event) {
        Applied::Changed(key) => {
            let relevant = Enrollment::cares_about(key.kind);
            changed.push(key);
            relevant
        }
        // A refusal can change a fail-closed decision (PeerAuthentication).
        Applied::Refused(key) => {
            let relevant = Enrollment::cares_about(key.kind);
            changed.push(key);
            relevant
        }
        Applied::Synced => true,
        Applied::Unchanged => false,
    }
}

/// Decides the CNI calls that can be decided, and answers them once the view they
/// depend on is published.
fn settle(
    pending: &mut cni::server::Pending,
    store: &Store,
    datapath: &mut Datapath,
    enrollment: &mut Enrollment,
    view: &mut View,
    identities: Option<&identity::Handle>,
) {
    if pending.is_empty() {
        return;
    }
    let answers = pending.settle(|reports| enrollment.admit(store, datapath, reports));
    if answers.any() {
        // Published before the runtime starts the pod's containers: ztunnel knows
        // the pod (and the agent asks for its certificate) by its first connection.
        view.set_namespaces(store, enrollment.namespaces());
        view.set_uncaptured(enrollment.uncaptured());
        if let Some(handle) = identities {
            handle.want(view.local_identities());
        }
    }
    answers.send();
}

/// What `--cni-conf-dir` asks to install, if anything.
fn cni_install(args: &RunArgs) -> Result<Option<cni::install::Install>> {
    let (Some(conf_dir), Some(bin_dir)) = (&args.cni_dirs.cni_conf_dir, &args.cni_dirs.cni_bin_dir)
    else {
        return Ok(None);
    };
    let Some(agent_socket) = &args.cni_socket else {
        anyhow::bail!(
            "--cni-conf-dir installs a plugin that asks the agent: give --cni-socket too"
        );
    };
    let plugin = match &args.cni_plugin {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .context("finding warren-cni beside the agent (or pass --cni-plugin)")?
            .with_file_name(cni::PLUGIN_NAME),
    };
    Ok(Some(cni::install::Install {
        bin_dir: bin_dir.clone(),
        conf_dir: conf_dir.clone(),
        plugin,
        agent_socket: agent_socket.clone(),
        exclude_namespaces: args.cni_exclude_namespaces.clone(),
        // The agent may wait `--cni-wait` for a Pod object, then answers.
        timeout_seconds: args.cni_wait.as_secs() + 10,
    }))
}

/// Installs the plugin, logging what changed; a failure is retried on the timer.
fn ensure_cni_installed(
    install: &cni::install::Install,
    namespaces: &std::collections::BTreeSet<String>,
) {
    match install.ensure(namespaces) {
        Ok(cni::install::Installed::Changed(path)) => {
            info!(path = %path.display(), "CNI plugin installed")
        }
        Ok(cni::install::Installed::Unchanged) => {}
        Ok(cni::install::Installed::NoNetwork) => debug!(
            conf_dir = %install.conf_dir.display(),
            "no CNI network configuration yet to chain warren-cni after"
        ),
        Err(error) => warn!(%error, "installing the CNI plugin"),
    }
}

/// The next CNI call; never without the CNI socket.
async fn next_call(
    calls: &mut Option<mpsc::Receiver<cni::server::Call>>,
) -> Option<cni::server::Call> {
    match calls {
        Some(calls) => calls.recv().await,
        None => std::future::pending().await,
    }
}

/// Resolves at `at`; never without one.
async fn deadline(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Resolves when the certificates change; never without a CA.
async fn certificates_changed(
    rx: &mut Option<tokio::sync::watch::Receiver<identity::Certificates>>,
) -> Option<()> {
    match rx {
        Some(rx) => rx.changed().await.ok(),
        None => std::future::pending().await,
    }
}

/// Runs a configuration source in the background, logging why it stopped.
fn spawn_source(source: impl Source, events: mpsc::Sender<SourceEvent>, name: String) {
    tokio::spawn(async move {
        if let Err(err) = source.run(events).await {
            error!(source = name, error = %format!("{err:#}"), "config source stopped");
        }
    });
}
