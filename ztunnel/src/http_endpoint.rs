//! The small HTTP/1.1 servers of admin, metrics and readiness: one handler function each,
//! stopped by the drain.

use std::{convert::Infallible, future::Future, pin::Pin, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::{debug, info};

use crate::drain;

pub type Reply = Response<Full<Bytes>>;
pub type Handler =
    Arc<dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Reply> + Send>> + Send + Sync>;

pub fn text(status: StatusCode, body: impl Into<String>) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from(body.into())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

pub fn json(value: &serde_json::Value) -> Reply {
    let body =
        serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// Serves `handler` on `listener` until draining starts.
pub async fn serve(
    listener: TcpListener,
    mut drain: drain::Watch,
    name: &'static str,
    handler: Handler,
) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "{name} listening");
    }
    loop {
        let accepted = tokio::select! {
            () = drain.draining() => break,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let handler = Arc::clone(&handler);
        let mut conn_drain = drain.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let handler = Arc::clone(&handler);
                async move { Ok::<_, Infallible>(handler(request).await) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                result = connection => {
                    if let Err(error) = result {
                        debug!(%peer, %error, "{name} connection ended with an error");
                    }
                }
                // Admin connections are short: close them at once on drain.
                () = conn_drain.draining() => {}
            }
        });
    }
}
