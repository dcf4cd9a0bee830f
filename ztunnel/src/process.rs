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

/// How many runtime workers a proxy runs when not told: one on a machine (or a
/// CPU limit) of two CPUs or fewer, two otherwise.
///
/// On two CPUs the proxy shares both with the workloads it carries and with the
/// other proxies of the path, so a second worker buys no parallelism, only hand-offs:
/// a task woken on one worker runs on the other after a futex wake, and the
/// multi-thread scheduler's LIFO slot sends every HTTP/2 frame in a TLS write of its
/// own. Measured on the 2-vCPU bench machine (`cargo xtask bench l4` and `l7`, three
/// alternations each): with one worker, new connection + request 1.07–1.11× two
/// plain TCP relays instead of 1.23–1.30×, bulk stream 1.02–1.15× the relays instead
/// of 0.91–0.98×, requests/s with a waypoint +16 % and without +25 %; round trips
/// the same.
fn default_worker_threads(cpus: usize) -> usize {
    if cpus <= 2 { 1 } else { 2 }
}

/// The worker count to run: `requested`, or [`default_worker_threads`] for the CPUs
/// this process may use (`available_parallelism` honours cgroup CPU limits).
fn worker_threads(requested: Option<usize>) -> usize {
    requested.unwrap_or_else(|| {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        default_worker_threads(cpus)
    })
}

/// The runtime for the `requested` workers (`--worker-threads`), or
/// [`worker_threads`]'s default; logs the count. One worker runs the
/// current-thread scheduler: no wake-ups between threads, and its run queue is
/// FIFO, so the HTTP/2 connection task a stream wakes runs after the other ready
/// streams have queued their frames and one TLS write carries several of them (the
/// multi-thread scheduler's LIFO slot runs it at once: a write per frame).
pub fn runtime(requested: Option<usize>) -> Result<tokio::runtime::Runtime, StartError> {
    let workers = worker_threads(requested);
    tracing::info!(workers, explicit = requested.is_some(), "runtime");
    let mut builder = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(workers);
        builder
    };
    builder.enable_all().build().map_err(StartError::Runtime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_machines_run_one_worker_and_an_explicit_count_wins() {
        assert_eq!(default_worker_threads(1), 1);
        assert_eq!(default_worker_threads(2), 1);
        assert_eq!(default_worker_threads(3), 2);
        assert_eq!(default_worker_threads(64), 2);
        assert_eq!(worker_threads(Some(4)), 4);
        assert!((1..=2).contains(&worker_threads(None)));
    }
}
