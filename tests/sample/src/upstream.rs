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
        let request = self.request(incoming);
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

impl Upstream {
    /// The GET sent upstream: the [`FORWARDED_HEADERS`] of `incoming` (every value of
    /// each), nothing else.
    fn request(&self, incoming: &HeaderMap) -> Request<Empty<Bytes>> {
        let mut request = Request::new(Empty::new());
        *request.uri_mut() = self.url.clone();
        for name in FORWARDED_HEADERS {
            for value in incoming.get_all(name) {
                request.headers_mut().append(name, value.clone());
            }
        }
        request
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
    fn trace_ids_lanes_and_users_are_forwarded_and_nothing_else() {
        let upstream = Upstream::new(
            Uri::from_static("http://data.shop/"),
            Duration::from_secs(1),
        );
        let mut incoming = HeaderMap::new();
        for (name, value) in [
            ("x-request-id", "req-1"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("b3", "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1"),
            ("x-lane-id", "dev-alice"),
            ("end-user", "jason"),
            ("x-b3-traceid", "4bf92f3577b34da6a3ce929d0e0e4736"),
            ("cookie", "session=secret"),
            ("authorization", "Bearer secret"),
            ("host", "app.shop"),
        ] {
            incoming.append(name, http::HeaderValue::from_static(value));
        }
        let request = upstream.request(&incoming);
        assert_eq!(request.uri(), "http://data.shop/");
        for name in [
            "x-request-id",
            "traceparent",
            "b3",
            "x-lane-id",
            "end-user",
            "x-b3-traceid",
        ] {
            assert_eq!(
                request.headers().get(name),
                incoming.get(name),
                "{name} must be forwarded"
            );
        }
        for name in ["cookie", "authorization", "host"] {
            assert!(request.headers().get(name).is_none(), "{name} must not be");
        }
    }

    #[test]
    fn a_header_sent_twice_is_forwarded_twice() {
        let upstream = Upstream::new(Uri::from_static("http://back/"), Duration::from_secs(1));
        let mut incoming = HeaderMap::new();
        incoming.append("x-lane-id", http::HeaderValue::from_static("a"));
        incoming.append("x-lane-id", http::HeaderValue::from_static("b"));
        let request = upstream.request(&incoming);
        let values: Vec<_> = request.headers().get_all("x-lane-id").iter().collect();
        assert_eq!(values, ["a", "b"]);
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
