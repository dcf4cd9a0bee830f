//! Admin endpoints (loopback only, 15000): `/config_dump` (what ztunnel holds; for
//! certificates only identity and validity, never keys), `/logging?level=` (changes the
//! log filter), `/quitquitquit` (drains and exits), `/server_info` (what this process is:
//! a successor checks it before asking it to drain, see [`crate::handover`]).

use std::sync::{Arc, Mutex};

use http::{Method, StatusCode};
use tokio::sync::Notify;

use crate::{
    handover::ServerInfo,
    http_endpoint::{Handler, json, text},
    proxy::Inputs,
};

/// Why a process was asked to stop. A successor says who it is (`POST
/// /quitquitquit?from=successor`) so that the process knows it handed its node over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuitReason {
    /// An operator (or anything else) asked.
    Asked,
    /// A successor took the node over and asked this one to drain.
    HandedOver,
    /// This process, a successor, gave up taking the node over.
    GaveUp,
}

/// A request to stop, and its first reason (later ones do not change it).
#[derive(Debug, Default)]
pub struct Quit {
    reason: Mutex<Option<QuitReason>>,
    notify: Notify,
}

impl Quit {
    pub fn request(&self, reason: QuitReason) {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(reason);
        // notify_one keeps a permit: a request before anyone waits is not lost.
        self.notify.notify_one();
    }

    /// Resolves with the reason once a stop is requested.
    pub async fn requested(&self) -> QuitReason {
        self.notify.notified().await;
        let reason = *self.reason.lock().unwrap_or_else(|p| p.into_inner());
        reason.unwrap_or(QuitReason::Asked)
    }
}

/// Changes the log filter (tracing `EnvFilter` syntax); the error says why not.
pub type LogControl = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// `server` names the process in `/server_info` (the waypoint serves these endpoints
/// too, under its own name).
pub fn handler(
    inputs: Arc<Inputs>,
    log: Option<LogControl>,
    quit: Arc<Quit>,
    server: &'static str,
) -> Handler {
    Arc::new(move |request| {
        let inputs = Arc::clone(&inputs);
        let log = log.clone();
        let quit = Arc::clone(&quit);
        Box::pin(async move {
            match request.uri().path() {
                "/config_dump" => {
                    let mut dump = inputs.state.dump();
                    dump["hbone_pool_connections"] = inputs.pool.connection_count().into();
                    json(&dump)
                }
                "/logging" => {
                    let level = query_param(&request, "level");
                    match (level, log) {
                        (None, _) => text(
                            StatusCode::BAD_REQUEST,
                            "usage: /logging?level=<filter>, e.g. level=debug or level=info,access=off\n",
                        ),
                        (Some(_), None) => text(
                            StatusCode::NOT_IMPLEMENTED,
                            "log filter changes are not available in this process\n",
                        ),
                        (Some(level), Some(log)) => match log(&level) {
                            Ok(()) => {
                                tracing::info!(filter = %level, "log filter changed");
                                text(StatusCode::OK, format!("log filter: {level}\n"))
                            }
                            Err(error) => text(
                                StatusCode::BAD_REQUEST,
                                format!("bad filter {level:?}: {error}\n"),
                            ),
                        },
                    }
                }
                // POST only, as Envoy's and Istio's: a stray GET (a browser, a link
                // checker) never stops the node's proxy.
                "/quitquitquit" if request.method() == Method::POST => {
                    let reason = if request.uri().query() == Some("from=successor") {
                        QuitReason::HandedOver
                    } else {
                        QuitReason::Asked
                    };
                    tracing::info!(
                        ?reason,
                        "quit requested through the admin endpoint; draining"
                    );
                    quit.request(reason);
                    text(StatusCode::OK, "draining\n")
                }
                "/explain" => {
                    let from = query_param(&request, "from");
                    let explained = match (from, query_param(&request, "to")) {
                        (Some(from), Some(to)) => {
                            crate::explain::explain(&inputs, &from, &to).await
                        }
                        _ => Err(crate::explain::ExplainError::Usage),
                    };
                    match explained.map(serde_json::to_value) {
                        Ok(Ok(explanation)) => json(&explanation),
                        Ok(Err(error)) => {
                            text(StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n"))
                        }
                        Err(error) => text(StatusCode::BAD_REQUEST, format!("{error}\n")),
                    }
                }
                "/server_info" => json(
                    &serde_json::to_value(ServerInfo::of_this_process(server, inputs.state.node()))
                        .unwrap_or_default(),
                ),
                "/quitquitquit" => {
                    text(StatusCode::METHOD_NOT_ALLOWED, "/quitquitquit takes POST\n")
                }
                "/" => text(
                    StatusCode::OK,
                    "/config_dump\n/explain?from=<pod>&to=<destination>\n/logging?level=<filter>\nPOST /quitquitquit\n/server_info\n",
                ),
                other => text(
                    StatusCode::NOT_FOUND,
                    format!("no admin endpoint {other}\n"),
                ),
            }
        })
    })
}

/// The first value of `name` in the request's query, decoded.
fn query_param<B>(request: &http::Request<B>, name: &str) -> Option<String> {
    form_urlencoded::parse(request.uri().query().unwrap_or_default().as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_values_are_decoded() {
        let request = |uri: &str| http::Request::get(uri).body(()).unwrap();
        let logging = request("/logging?level=info%2Caccess%3Doff");
        assert_eq!(
            super::query_param(&logging, "level").as_deref(),
            Some("info,access=off")
        );
        let explain = request("/explain?from=shop%2Ffront&to=%5Bfd00%3A%3A1%5D%3A80");
        assert_eq!(
            super::query_param(&explain, "to").as_deref(),
            Some("[fd00::1]:80")
        );
        assert_eq!(
            super::query_param(&explain, "from").as_deref(),
            Some("shop/front")
        );
        assert_eq!(super::query_param(&explain, "level"), None);
    }
}
