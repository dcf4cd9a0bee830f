//! Readiness (15021, `/healthz/ready`): 200 once the config snapshot is applied and every
//! mesh workload of this node has its certificate, else 503 with what is missing.

use std::{path::PathBuf, sync::Arc};

use http::StatusCode;
use tracing::{info, warn};

use crate::{
    http_endpoint::{Handler, text},
    state::State,
};

pub fn handler(state: Arc<State>) -> Handler {
    Arc::new(move |request| {
        let state = Arc::clone(&state);
        Box::pin(async move {
            match request.uri().path() {
                "/healthz/ready" => match state.ready() {
                    Ok(()) => text(StatusCode::OK, "ready\n"),
                    Err(missing) => text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready: {missing}\n"),
                    ),
                },
                other => text(StatusCode::NOT_FOUND, format!("no endpoint {other}\n")),
            }
        })
    })
}

/// Logs `ztunnel ready` the first time the state is ready (the line tests and operators
/// wait for).
pub async fn announce(state: Arc<State>) {
    let mut changes = state.changes();
    loop {
        if state.ready().is_ok() {
            let mesh = state.mesh();
            info!(node = %state.node(), trust_domain = %mesh.trust_domain, "ztunnel ready");
            return;
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// A file that exists while this very process serves the node: its proxy ports bound and
/// its state ready. For a probe run in its own container (`--check-ready-file`): on the
/// host network the readiness port is the node's, and during a hand-over it answers for
/// whichever process holds it, so a surging successor would be marked ready by its
/// predecessor before it took over.
pub struct ReadyFile {
    path: PathBuf,
    writer: tokio::task::JoinHandle<()>,
}

impl ReadyFile {
    /// Writes `path` once `state` is ready. Call it once the proxy ports are bound.
    pub fn once_ready(path: PathBuf, state: Arc<State>) -> ReadyFile {
        let target = path.clone();
        let writer = tokio::spawn(async move {
            let mut changes = state.changes();
            while state.ready().is_err() {
                if changes.changed().await.is_err() {
                    return;
                }
            }
            // Whole or not at all: a probe never sees a half-written file.
            let staged = target.with_extension("new");
            let written =
                std::fs::write(&staged, "ready\n").and_then(|()| std::fs::rename(&staged, &target));
            match written {
                Ok(()) => info!(path = %target.display(), "ready file written"),
                Err(error) => warn!(path = %target.display(), %error, "writing the ready file"),
            }
        });
        ReadyFile { path, writer }
    }

    /// Removes the file (this process stops serving), and makes sure it is not
    /// written afterwards.
    pub async fn withdraw(self) {
        self.writer.abort();
        // A write under way finishes first: the removal comes after it.
        let _ = self.writer.await;
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => warn!(path = %self.path.display(), %error, "removing the ready file"),
        }
    }
}
