//! Readiness (15021, `/healthz/ready`): 200 once the config snapshot is applied and every
//! mesh workload of this node has its certificate, else 503 with what is missing.

use std::sync::Arc;

use http::StatusCode;
use tracing::info;

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
