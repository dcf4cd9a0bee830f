//! `warren-waypoint`: the L7 proxy of one namespace. Subscribes to the node
//! agent as that namespace's waypoint, serves HBONE, drains on SIGTERM.

use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser as _;
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;
use tracing_subscriber::{
    EnvFilter, layer::SubscriberExt as _, reload, util::SubscriberInitExt as _,
};
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
    let filter = EnvFilter::try_new(&config.log_level)
        .with_context(|| format!("bad log filter {:?}", config.log_level))?;
    let (filter, handle) = reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // Colour only for a person's terminal, not in captured logs.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .init();
    let log: LogControl = Arc::new(move |level: &str| {
        let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    });
    // One worker: the current-thread scheduler. Its run queue is FIFO, so the
    // HTTP/2 connection task a stream wakes runs after the other ready streams
    // have queued their frames, and one TLS write carries several of them (the
    // multi-thread scheduler's LIFO slot runs it at once: a write per frame).
    let mut builder = if config.worker_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(config.worker_threads);
        builder
    };
    let runtime = builder
        .enable_all()
        .build()
        .context("starting the runtime")?;
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
