//! Handing a node over from one ztunnel process to the next (an upgrade, a restart)
//! without refusing or cutting a connection.
//!
//! The proxy listeners are bound with `SO_REUSEPORT`, so the new process can accept
//! beside the old one. The sequence, driven by the new process ([`crate::Ztunnel::take_over`]):
//!
//! 1. it finds the running ztunnel on the admin port ([`predecessor`]) and gets its
//!    config and certificates while the old one serves alone;
//! 2. once ready it binds the proxy ports beside the old one, and sets
//!    `net.ipv4.tcp_migrate_req` ([`migrate_queued_connections`]) so that connections
//!    already queued on the old listeners move to the new ones when those close,
//!    rather than being reset;
//! 3. it asks the old one to drain ([`ask_to_drain`], `/quitquitquit`): the old one
//!    stops accepting, sends GOAWAY on the HBONE connections peers hold to it (their
//!    next streams open connections that reach the new process), and lets its open
//!    connections finish within its `--drain-timeout`;
//! 4. it binds the admin, metrics and readiness ports once the old one lets go of
//!    them (those are never shared, so a request reaches the process it means).
//!
//! Connections still open when the old one's drain deadline passes are cut, as in any
//! drain: a long-lived connection survives a hand-over only within that deadline.

use std::{io, net::SocketAddr, time::Duration};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;

/// What a ztunnel says of itself on `/server_info`: how a successor knows the process
/// on the admin port is a ztunnel it may take over from.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServerInfo {
    /// [`SERVER`] for a ztunnel.
    pub server: String,
    pub version: String,
    pub pid: u32,
    /// The node it serves (empty until known).
    pub node: String,
}

pub const SERVER: &str = "warren-ztunnel";

/// Limit on each exchange with the running ztunnel: it is on loopback.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(2);

impl ServerInfo {
    pub fn of_this_process(server: &str, node: String) -> ServerInfo {
        ServerInfo {
            server: server.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            node,
        }
    }
}

/// The ztunnel serving on `admin` now, if any. Nothing listening is `None`; something
/// answering that is not a Warren ztunnel for `node` is an error, so a misconfigured
/// port never makes this process ask another program to quit.
pub async fn predecessor(
    admin: SocketAddr,
    node: Option<&str>,
) -> anyhow::Result<Option<ServerInfo>> {
    if admin.port() == 0 {
        return Ok(None);
    }
    let (status, body) = match exchange(admin, Method::GET, "/server_info").await {
        Ok(answer) => answer,
        Err(Exchange::Connect(error)) if error.kind() == io::ErrorKind::ConnectionRefused => {
            return Ok(None);
        }
        Err(error) => {
            return Err(error).with_context(|| {
                format!("asking what holds the admin port {admin} (GET /server_info)")
            });
        }
    };
    // `server` first, so that a ztunnel of another version with other fields is
    // still known for one.
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if status != StatusCode::OK || answer["server"] != SERVER {
        bail!(
            "the admin port {admin} is taken by something that is not a Warren ztunnel, or \
             one too old to hand over (GET /server_info answered {status}): stop it first"
        );
    }
    let info: ServerInfo = serde_json::from_value(answer)
        .with_context(|| format!("reading the ztunnel's /server_info on {admin}"))?;
    if let Some(node) = node
        && !info.node.is_empty()
        && info.node != node
    {
        bail!(
            "the ztunnel on {admin} (pid {}) serves node {:?}, this one node {node:?}: \
             give each its own admin port",
            info.pid,
            info.node
        );
    }
    Ok(Some(info))
}

/// Asks the ztunnel on `admin` to drain (`/quitquitquit`).
pub async fn ask_to_drain(admin: SocketAddr) -> anyhow::Result<()> {
    // Says who asks: the old process knows it handed the node over (and may wait to
    // be stopped rather than exit, see `--linger-after-handover`).
    let (status, body) = exchange(admin, Method::POST, "/quitquitquit?from=successor")
        .await
        .with_context(|| format!("POST /quitquitquit to {admin}"))?;
    if status != StatusCode::OK {
        bail!(
            "POST /quitquitquit to {admin} answered {status}: {}",
            String::from_utf8_lossy(&body).trim()
        );
    }
    Ok(())
}

pub use warren_api::handover::migrate_queued_connections;

#[derive(Debug, thiserror::Error)]
enum Exchange {
    #[error("connecting: {0}")]
    Connect(io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Http(#[from] hyper::Error),
    #[error(transparent)]
    Request(#[from] http::Error),
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One HTTP/1.1 request to a loopback admin port, the answer read whole.
async fn exchange(
    addr: SocketAddr,
    method: Method,
    path: &str,
) -> Result<(StatusCode, Bytes), Exchange> {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())?;
    let exchange = async {
        let stream = TcpStream::connect(addr).await.map_err(Exchange::Connect)?;
        let (mut send, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        // Driven by a task of its own (the answer can arrive as the peer closes), which
        // ends with this exchange, timed out or not.
        let _connection = AbortOnDrop(tokio::spawn(async move {
            let _ = connection.await;
        }));
        let response = send.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
        .await
        .map_err(|_| Exchange::Timeout(EXCHANGE_TIMEOUT))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn nothing_listening_is_no_predecessor() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        assert_eq!(predecessor(addr, Some("n")).await.unwrap(), None);
    }

    /// Serves one HTTP/1.1 answer with `status` and `body` to every connection.
    async fn answering(status: u16, body: &'static str) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let service = hyper::service::service_fn(move |_| async move {
                    Ok::<_, std::convert::Infallible>(
                        http::Response::builder()
                            .status(status)
                            .body(http_body_util::Full::new(Bytes::from_static(
                                body.as_bytes(),
                            )))
                            .unwrap(),
                    )
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        addr
    }

    #[tokio::test]
    async fn only_a_ztunnel_of_this_node_is_taken_over() {
        let info =
            serde_json::to_string(&ServerInfo::of_this_process(SERVER, "node-a".into())).unwrap();
        let info: &'static str = Box::leak(info.into_boxed_str());
        let ztunnel = answering(200, info).await;
        let found = predecessor(ztunnel, Some("node-a")).await.unwrap().unwrap();
        assert_eq!(found.pid, std::process::id());
        assert_eq!(found.server, SERVER);
        // Another node's ztunnel on the same port: a configuration mistake.
        let error = predecessor(ztunnel, Some("node-b")).await.unwrap_err();
        assert!(
            format!("{error:#}").contains("serves node \"node-a\""),
            "{error:#}"
        );
        // Something else (an Envoy admin port, say) is never asked to quit.
        let other = answering(404, "no such page").await;
        let error = predecessor(other, None).await.unwrap_err();
        assert!(
            format!("{error:#}").contains("not a Warren ztunnel"),
            "{error:#}"
        );
        let other = answering(
            200,
            "{\"server\":\"envoy\",\"version\":\"1\",\"pid\":1,\"node\":\"\"}",
        )
        .await;
        assert!(predecessor(other, None).await.is_err());
    }

    #[tokio::test]
    async fn a_refused_drain_is_an_error_naming_the_answer() {
        let busy = answering(503, "not now").await;
        let error = ask_to_drain(busy).await.unwrap_err();
        assert!(format!("{error:#}").contains("503"), "{error:#}");
        assert!(format!("{error:#}").contains("not now"), "{error:#}");
        assert!(ask_to_drain(answering(200, "draining").await).await.is_ok());
    }
}
