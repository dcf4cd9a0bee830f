//! `warren-waypoint`: the L7 proxy of one namespace. Subscribes to the node
//! agent as that namespace's waypoint, serves HBONE, drains on SIGTERM.

use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser as _;
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;
use warren_api::{
    config::{Hello, Role},
    subscribe::Subscriber,
};
use warren_waypoint::{App, Config, subscription::Subscription, tables::Tables};
use warren_ztunnel::{
    admin::LogControl, drain, state::State, subscription::Subscription as L4Subscription,
};

fn main() -> anyhow::Result<()> {
    warren_ztunnel::malloc::tune_for_proxy();
    let config = Config::parse();
    let log = warren_ztunnel::process::init_logging(&config.log_level)?;
    let runtime = warren_ztunnel::process::runtime(config.worker_threads)?;
    runtime.block_on(run(config, log))
}

async fn run(config: Config, log: LogControl) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    let state = State::new(None, config.proxy().hbone_port);
    let tables = Arc::new(Tables::default());
    let subscriber = Subscriber::new(
        config.agent_socket.clone(),
        Hello {
            role: Role::Waypoint.into(),
            namespace: config.namespace.clone(),
            client_id: config
                .client_id
                .clone()
                .unwrap_or_else(|| format!("waypoint-{}", std::process::id())),
            ..Hello::default()
        },
    );
    info!(socket = %config.agent_socket.display(), namespace = %config.namespace, "subscribing to the node agent");
    let subscription = tokio::spawn(subscriber.run(Subscription::new(
        L4Subscription::new(Arc::clone(&state)),
        Arc::clone(&tables),
        config.namespace.clone(),
        config.gateway.clone(),
    )));
    let app = App::start(config, state, tables, Some(log)).await?;
    tokio::select! {
        _ = sigterm.recv() => info!("SIGTERM: draining"),
        _ = sigint.recv() => info!("SIGINT: draining"),
        () = app.quit_requested() => {}
    }
    subscription.abort();
    match app.drain().await {
        drain::Outcome::Clean => info!("drained: every request finished"),
        drain::Outcome::Forced => info!("drain deadline passed: remaining requests cut"),
    }
    Ok(())
}
