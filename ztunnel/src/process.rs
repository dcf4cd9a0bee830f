//! What a proxy process (ztunnel, a waypoint) sets up before it serves: logging
//! with a filter the admin endpoint can change, and the async runtime.

use std::sync::Arc;

use tracing_subscriber::{
    EnvFilter, layer::SubscriberExt as _, reload, util::SubscriberInitExt as _,
};

use crate::admin::LogControl;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("bad log filter {filter:?}: {source}")]
    LogFilter {
        filter: String,
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("starting the runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// Logs to stderr through `filter` (tracing `EnvFilter` syntax); the returned
/// control swaps the filter at run time (`/logging?level=`).
pub fn init_logging(filter: &str) -> Result<LogControl, StartError> {
    let initial = EnvFilter::try_new(filter).map_err(|source| StartError::LogFilter {
        filter: filter.to_owned(),
        source,
    })?;
    let (layer, handle) = reload::Layer::new(initial);
    tracing_subscriber::registry()
        .with(layer)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // Colour only for a person's terminal, not in captured logs.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .init();
    Ok(Arc::new(move |level: &str| {
        let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    }))
}

/// The runtime for `worker_threads` workers. One worker runs the current-thread
/// scheduler: no wake-ups between threads, and its run queue is FIFO, so the
/// HTTP/2 connection task a stream wakes runs after the other ready streams have
/// queued their frames and one TLS write carries several of them (the
/// multi-thread scheduler's LIFO slot runs it at once: a write per frame).
pub fn runtime(worker_threads: usize) -> Result<tokio::runtime::Runtime, StartError> {
    let mut builder = if worker_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(worker_threads);
        builder
    };
    builder.enable_all().build().map_err(StartError::Runtime)
}
