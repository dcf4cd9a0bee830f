//! `warren-ztunnel`: the node-local L4 proxy. Subscribes to the node agent's config
//! stream, serves its listeners, and drains on SIGTERM, SIGINT or `/quitquitquit`. Started
//! while another ztunnel serves the node, it takes over from it (`handover`).

use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser as _;
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;
use warren_api::{
    config::{Hello, Role},
    subscribe::Subscriber,
};
use warren_ztunnel::{
    Config, Ztunnel,
    admin::{LogControl, QuitReason},
    app, drain, handover,
    readiness::ReadyFile,
    state::State,
    subscription::Subscription,
};

fn main() -> anyhow::Result<()> {
    warren_ztunnel::malloc::tune_for_proxy();
    let config = Config::parse();
    if let Some(path) = &config.check_ready_file {
        std::process::exit(if path.exists() { 0 } else { 1 });
    }
    let log = warren_ztunnel::process::init_logging(&config.log_level)?;
    let runtime = warren_ztunnel::process::runtime(config.worker_threads)?;
    runtime.block_on(run(config, log))
}

async fn run(config: Config, log: LogControl) -> anyhow::Result<()> {
    // Installing the crypto provider process-wide lets rustls pick it where a config
    // is not built with one explicitly (tokio-rustls, hyper).
    let _ = rustls::crypto::ring::default_provider().install_default();
    warren_ztunnel::limits::raise_open_files_or_warn();
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    let state = State::new(config.node_name.clone(), config.hbone_port);
    let linger = config.linger_after_handover;
    let ready_file = config
        .ready_file
        .clone()
        .map(|path| (path, Arc::clone(&state)));
    let client_id = config
        .client_id
        .clone()
        .unwrap_or_else(|| format!("ztunnel-{}", std::process::id()));
    let subscriber = Subscriber::new(
        config.agent_socket.clone(),
        Hello {
            role: Role::Ztunnel.into(),
            client_id,
            ..Hello::default()
        },
    );
    info!(socket = %config.agent_socket.display(), "subscribing to the node agent");
    let subscription = tokio::spawn(subscriber.run(Subscription::new(Arc::clone(&state))));

    let ztunnel = match handover::predecessor(config.admin_addr, config.node_name.as_deref())
        .await?
    {
        None => {
            let ztunnel = Ztunnel::start(config, state, Some(log)).await?;
            info!(addresses = ?ztunnel.addresses, "ztunnel started; ready once config and certificates arrive");
            ztunnel
        }
        Some(running) => {
            info!(
                pid = running.pid,
                version = %running.version,
                admin = %config.admin_addr,
                "a ztunnel already serves this node: taking over once config and certificates are in"
            );
            let within = config.handover_timeout;
            // A signal while waiting leaves the running one in charge: nothing is bound
            // and it was not asked to drain yet.
            tokio::select! {
                ready = app::wait_ready(&state, within) => ready?,
                _ = sigterm.recv() => {
                    info!("SIGTERM before taking over: the running ztunnel stays in charge");
                    return Ok(());
                }
                _ = sigint.recv() => {
                    info!("SIGINT before taking over: the running ztunnel stays in charge");
                    return Ok(());
                }
            }
            Ztunnel::take_over(config, state, Some(log), &running).await?
        }
    };
    // Only now, ports bound: a successor's file appears once it has taken over.
    let ready_file = ready_file.map(|(path, state)| ReadyFile::once_ready(path, state));
    let handed_over = tokio::select! {
        _ = sigterm.recv() => { info!("SIGTERM: draining"); false }
        _ = sigint.recv() => { info!("SIGINT: draining"); false }
        reason = ztunnel.quit_requested() => reason == QuitReason::HandedOver,
    };
    subscription.abort();
    if let Some(file) = ready_file {
        file.withdraw().await;
    }
    match ztunnel.drain().await {
        drain::Outcome::Clean => info!("drained: every connection finished"),
        drain::Outcome::Forced => info!("drain deadline passed: remaining connections cut"),
    }
    if handed_over && linger {
        info!("handed over: holding no port, waiting for SIGTERM");
        tokio::select! {
            _ = sigterm.recv() => {}
            _ = sigint.recv() => {}
        }
    }
    Ok(())
}
