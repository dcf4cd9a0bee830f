//! HTTP/1.1 upgrades (WebSocket, or any `Upgrade:` protocol) through the
//! waypoint.
//!
//! An upgrade request is routed, authorized and load balanced like any
//! other request; only the hop-by-hop `Connection: upgrade` and `Upgrade`
//! headers, which a proxy otherwise drops, are carried to the upstream and
//! back. When the upstream answers `101 Switching Protocols`, the downstream
//! and upstream connections are spliced and bytes flow both ways untouched
//! until either side closes. Anything else the upstream answers goes back as
//! a normal response. HTTP/2's extended CONNECT (RFC 8441) is not supported:
//! such a request is an ordinary CONNECT to the router and is refused.

use std::sync::{Arc, Mutex};

use http::{HeaderMap, HeaderValue, StatusCode, Version, header};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::debug;

/// The protocol an HTTP/1.1 request asks to switch to, if it asks.
pub fn requested(version: Version, headers: &HeaderMap) -> Option<HeaderValue> {
    if version != Version::HTTP_11 {
        return None;
    }
    let wants = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    wants
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

/// Puts back the two hop-by-hop headers an upgrade needs, after the proxy
/// stripped the others.
pub fn restore(headers: &mut HeaderMap, protocol: &HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol.clone());
}

/// What an upgraded connection holds for as long as it is spliced: its
/// connection-pool slot and its endpoint's active-request count, so
/// `maxConnections` bounds WebSockets too and LEAST_REQUEST sees them.
/// Carried in the answer's extensions from the attempt to the splice (which
/// is why it is `Clone`; only one ever holds it).
#[derive(Clone)]
pub struct Hold(Arc<Mutex<Option<Box<dyn Send>>>>);

impl Hold {
    pub fn new(held: impl Send + 'static) -> Self {
        Hold(Arc::new(Mutex::new(Some(Box::new(held)))))
    }

    fn take(&self) -> Option<Box<dyn Send>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// When the upstream switched protocols, splices the two connections once
/// both sides have handed them over, holding `hold` until the splice ends.
/// `upstream` is the upstream response's upgrade (taken before the response
/// is sent downstream).
pub fn splice(
    status: StatusCode,
    downstream: Option<OnUpgrade>,
    upstream: Option<OnUpgrade>,
    hold: Option<Hold>,
) {
    let (true, Some(downstream), Some(upstream)) = (
        status == StatusCode::SWITCHING_PROTOCOLS,
        downstream,
        upstream,
    ) else {
        return;
    };
    let held = hold.and_then(|hold| hold.take());
    tokio::spawn(async move {
        let _held = held;
        let (down, up) = match tokio::try_join!(downstream, upstream) {
            Ok(both) => both,
            Err(error) => {
                debug!(%error, "an upgraded connection did not open");
                return;
            }
        };
        let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
        match tokio::io::copy_bidirectional(&mut down, &mut up).await {
            Ok((sent, received)) => debug!(sent, received, "upgraded connection closed"),
            Err(error) => debug!(%error, "upgraded connection ended with an error"),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    header::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn an_upgrade_needs_both_headers_and_http_1_1() {
        let ws = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert_eq!(
            requested(Version::HTTP_11, &ws),
            Some(HeaderValue::from_static("websocket"))
        );
        assert_eq!(requested(Version::HTTP_2, &ws), None);
        assert_eq!(requested(Version::HTTP_10, &ws), None);
        let no_connection = headers(&[("upgrade", "websocket")]);
        assert_eq!(requested(Version::HTTP_11, &no_connection), None);
        let no_protocol = headers(&[("connection", "upgrade")]);
        assert_eq!(requested(Version::HTTP_11, &no_protocol), None);
        let other_token = headers(&[("connection", "upgrade-insecure"), ("upgrade", "x")]);
        assert_eq!(requested(Version::HTTP_11, &other_token), None);
    }

    #[test]
    fn restore_puts_back_what_stripping_removed() {
        let mut h = HeaderMap::new();
        restore(&mut h, &HeaderValue::from_static("websocket"));
        assert_eq!(h[header::CONNECTION], "upgrade");
        assert_eq!(h[header::UPGRADE], "websocket");
    }
}
