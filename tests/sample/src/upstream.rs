//! The call a sample makes to its `--upstream` for each request, so a chain of samples
//! (front → back) shows which hops a request took and which trace headers survived them.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Uri};
use http_body_util::Empty;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde::Serialize;
use serde_json::Value;
use thiserror::Error;

use crate::body::{self, BodyError};

/// Request headers passed on to the upstream: request ids, W3C and B3 tracing, and the
/// routing keys tests match on. Real applications must do the same for traces to join up.
pub const FORWARDED_HEADERS: [&str; 10] = [
    "x-request-id",
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-lane-id",
    "end-user",
];

#[derive(Debug, Error)]
pub enum UpstreamError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the request failed")]
    Request(#[source] hyper_util::client::legacy::Error),
    #[error("the answer's body could not be read")]
    Body(#[source] BodyError),
}

/// What the upstream answered, as it appears in the caller's own answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpstreamAnswer {
    pub status: u16,
    /// The body as JSON if it is JSON (another sample's answer), else as text.
    pub body: Value,
}

impl UpstreamAnswer {
    /// The upstream's own chain, if it is a sample that reported one.
    pub fn chain(&self) -> Vec<String> {
        self.body
            .get("chain")
            .and_then(Value::as_array)
            .map(|hops| {
                hops.iter()
                    .filter_map(|hop| hop.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

pub struct Upstream {
    url: Uri,
    timeout: Duration,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Upstream {
    pub fn new(url: Uri, timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        // Small request/answer pairs: waiting for Nagle would add delayed-ACK latency.
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Self {
            url,
            timeout,
            client,
        }
    }

    pub fn url(&self) -> &Uri {
        &self.url
    }

    /// GETs the upstream URL, forwarding the [`FORWARDED_HEADERS`] found in `incoming`.
    pub async fn call(&self, incoming: &HeaderMap) -> Result<UpstreamAnswer, UpstreamError> {
        let mut request = Request::new(Empty::new());
        *request.uri_mut() = self.url.clone();
        for name in FORWARDED_HEADERS {
            for value in incoming.get_all(name) {
                request.headers_mut().append(name, value.clone());
            }
        }
        let exchange = async {
            let answer = self
                .client
                .request(request)
                .await
                .map_err(UpstreamError::Request)?;
            let (parts, body) = answer.into_parts();
            let bytes = body::collect(body, body::LIMIT)
                .await
                .map_err(UpstreamError::Body)?;
            Ok(UpstreamAnswer {
                status: parts.status.as_u16(),
                body: parse_body(bytes),
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| UpstreamError::Timeout(self.timeout))?
    }
}

fn parse_body(bytes: Bytes) -> Value {
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_body_is_kept_as_json_and_its_chain_read() {
        let answer = UpstreamAnswer {
            status: 200,
            body: parse_body(Bytes::from_static(br#"{"chain": ["back@v2", "db@v1"]}"#)),
        };
        assert_eq!(answer.chain(), ["back@v2", "db@v1"]);
    }

    #[test]
    fn a_text_body_is_kept_as_text_with_no_chain() {
        let answer = UpstreamAnswer {
            status: 503,
            body: parse_body(Bytes::from_static(b"no healthy upstream")),
        };
        assert_eq!(answer.body, Value::String("no healthy upstream".into()));
        assert!(answer.chain().is_empty());
    }
}
