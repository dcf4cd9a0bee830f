//! Starting ztunnel: bind every listener, spawn the tasks, and stop them with a drain.
//! The binary and the tests start it the same way; only the config and where state
//! comes from differ.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use tokio::{net::TcpListener, sync::Notify};

use crate::{
    admin::{self, LogControl},
    config::Config,
    drain, http_endpoint,
    metrics::Metrics,
    proxy::{self, Inputs},
    readiness,
    state::State,
};

/// Where each listener ended up (port 0 in the config picks a free port).
#[derive(Clone, Debug)]
pub struct Addresses {
    pub outbound: Vec<SocketAddr>,
    pub inbound_plaintext: Vec<SocketAddr>,
    pub hbone: Vec<SocketAddr>,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
    pub readiness: SocketAddr,
}

/// A running ztunnel.
pub struct Ztunnel {
    pub addresses: Addresses,
    pub inputs: Arc<Inputs>,
    trigger: drain::Trigger,
    quit: Arc<Notify>,
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {what} listener to {addr}"))
}

async fn bind_all(addrs: &[SocketAddr], what: &str) -> anyhow::Result<Vec<TcpListener>> {
    let mut listeners = Vec::with_capacity(addrs.len());
    for addr in addrs {
        listeners.push(bind(*addr, what).await?);
    }
    Ok(listeners)
}

fn local_addrs(listeners: &[TcpListener]) -> anyhow::Result<Vec<SocketAddr>> {
    listeners
        .iter()
        .map(|l| l.local_addr().context("reading a listener's address"))
        .collect()
}

impl Ztunnel {
    /// Binds every listener (all before serving any, so a port clash fails the start)
    /// and serves from `state`.
    pub async fn start(
        config: Config,
        state: Arc<State>,
        log: Option<LogControl>,
    ) -> anyhow::Result<Ztunnel> {
        let config = Arc::new(config);
        let outbound = bind_all(&config.outbound_addrs, "outbound").await?;
        let inbound_plaintext =
            bind_all(&config.inbound_plaintext_addrs, "inbound plaintext").await?;
        let hbone = bind_all(&config.hbone_addrs, "HBONE").await?;
        let admin_listener = bind(config.admin_addr, "admin").await?;
        let metrics_listener = bind(config.metrics_addr, "metrics").await?;
        let readiness_listener = bind(config.readiness_addr, "readiness").await?;
        let addresses = Addresses {
            outbound: local_addrs(&outbound)?,
            inbound_plaintext: local_addrs(&inbound_plaintext)?,
            hbone: local_addrs(&hbone)?,
            admin: admin_listener.local_addr()?,
            metrics: metrics_listener.local_addr()?,
            readiness: readiness_listener.local_addr()?,
        };

        let metrics = Arc::new(Metrics::new());
        let inputs = Inputs::new(
            Arc::clone(&config),
            Arc::clone(&state),
            Arc::clone(&metrics),
        );
        let trigger = drain::Trigger::new();
        let quit = Arc::new(Notify::new());

        for listener in outbound {
            tokio::spawn(proxy::outbound::serve(
                Arc::clone(&inputs),
                listener,
                trigger.watch(),
            ));
        }
        for listener in inbound_plaintext {
            tokio::spawn(proxy::inbound_passthrough::serve(
                Arc::clone(&inputs),
                listener,
                trigger.watch(),
            ));
        }
        for listener in hbone {
            tokio::spawn(proxy::inbound::serve(
                Arc::clone(&inputs),
                listener,
                trigger.watch(),
            ));
        }
        tokio::spawn(inputs.pool.clone().run_eviction(trigger.watch()));
        tokio::spawn(http_endpoint::serve(
            admin_listener,
            trigger.watch(),
            "admin",
            admin::handler(Arc::clone(&inputs), log, Arc::clone(&quit)),
        ));
        let metrics_handler: http_endpoint::Handler = {
            let metrics = Arc::clone(&metrics);
            Arc::new(move |request| {
                let metrics = Arc::clone(&metrics);
                Box::pin(async move {
                    match request.uri().path() {
                        "/metrics" | "/stats/prometheus" => {
                            let mut reply =
                                http_endpoint::text(http::StatusCode::OK, metrics.encode());
                            reply.headers_mut().insert(
                                http::header::CONTENT_TYPE,
                                http::HeaderValue::from_static(
                                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                ),
                            );
                            reply
                        }
                        other => http_endpoint::text(
                            http::StatusCode::NOT_FOUND,
                            format!("no endpoint {other}\n"),
                        ),
                    }
                })
            })
        };
        tokio::spawn(http_endpoint::serve(
            metrics_listener,
            trigger.watch(),
            "metrics",
            metrics_handler,
        ));
        tokio::spawn(http_endpoint::serve(
            readiness_listener,
            trigger.watch(),
            "readiness",
            readiness::handler(Arc::clone(&state)),
        ));
        tokio::spawn(readiness::announce(state));
        Ok(Ztunnel {
            addresses,
            inputs,
            trigger,
            quit,
        })
    }

    /// A drain watch for connections handled outside the listeners (tests drive the
    /// outbound path directly); the drain waits for it like for any connection.
    pub fn drain_watch(&self) -> drain::Watch {
        self.trigger.watch()
    }

    /// Resolves when `/quitquitquit` is called.
    pub async fn quit_requested(&self) {
        self.quit.notified().await;
    }

    /// Stops accepting, lets open connections finish for `--drain-timeout`, then cuts
    /// the rest.
    pub async fn drain(self) -> drain::Outcome {
        let timeout = self.inputs.config.drain_timeout;
        self.inputs.pool.clear();
        self.trigger
            .drain(timeout, std::time::Duration::from_secs(1))
            .await
    }
}
