//! Admin endpoints (loopback only, 15000): `/config_dump` (what ztunnel holds; for
//! certificates only identity and validity, never keys), `/logging?level=` (changes the
//! log filter), `/quitquitquit` (drains and exits), `/server_info` (what this process is:
//! a successor checks it before asking it to drain, see [`crate::handover`]).

use std::sync::Arc;

use http::{Method, StatusCode};
use tokio::sync::Notify;

use crate::{
    handover::ServerInfo,
    http_endpoint::{Handler, json, text},
    proxy::Inputs,
};

/// Changes the log filter (tracing `EnvFilter` syntax); the error says why not.
pub type LogControl = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// `server` names the process in `/server_info` (the waypoint serves these endpoints
/// too, under its own name).
pub fn handler(
    inputs: Arc<Inputs>,
    log: Option<LogControl>,
    quit: Arc<Notify>,
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
                    let level = request
                        .uri()
                        .query()
                        .unwrap_or_default()
                        .split('&')
                        .find_map(|kv| kv.strip_prefix("level="));
                    match (level, log) {
                        (None, _) => text(
                            StatusCode::BAD_REQUEST,
                            "usage: /logging?level=<filter>, e.g. level=debug or level=info,access=off\n",
                        ),
                        (Some(_), None) => text(
                            StatusCode::NOT_IMPLEMENTED,
                            "log filter changes are not available in this process\n",
                        ),
                        (Some(level), Some(log)) => {
                            let level = decode(level);
                            match log(&level) {
                                Ok(()) => {
                                    tracing::info!(filter = %level, "log filter changed");
                                    text(StatusCode::OK, format!("log filter: {level}\n"))
                                }
                                Err(error) => text(
                                    StatusCode::BAD_REQUEST,
                                    format!("bad filter {level:?}: {error}\n"),
                                ),
                            }
                        }
                    }
                }
                // POST only, as Envoy's and Istio's: a stray GET (a browser, a link
                // checker) never stops the node's proxy.
                "/quitquitquit" if request.method() == Method::POST => {
                    tracing::info!("quit requested through the admin endpoint; draining");
                    quit.notify_one();
                    text(StatusCode::OK, "draining\n")
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
                    "/config_dump\n/logging?level=<filter>\nPOST /quitquitquit\n/server_info\n",
                ),
                other => text(
                    StatusCode::NOT_FOUND,
                    format!("no admin endpoint {other}\n"),
                ),
            }
        })
    })
}

/// Percent-decoding for the few characters a filter may carry (`,` `=` `:`).
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        // Two hex digits: at most 255.
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn decodes_percent_escapes() {
        assert_eq!(super::decode("info%2Caccess%3Doff"), "info,access=off");
        assert_eq!(super::decode("debug"), "debug");
        assert_eq!(super::decode("bad%2"), "bad%2");
    }
}
