//! HTTP/2 PINGs on an HBONE connection, so a peer that vanished without a FIN (a node
//! that lost power, a dropped route) is noticed and its pooled connection let go, rather
//! than streams hanging on it until TCP gives up.

use std::time::Duration;

use h2::{Ping, PingPong};

/// How often to ask, and how long to wait for the answer.
pub const INTERVAL: Duration = Duration::from_secs(30);
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Pings every [`INTERVAL`]; returns why the peer is considered gone.
pub async fn watch(ping_pong: Option<PingPong>) -> String {
    // h2 hands the ping handle out once; without it there is nothing to watch.
    let Some(mut ping_pong) = ping_pong else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(INTERVAL).await;
        match tokio::time::timeout(TIMEOUT, ping_pong.ping(Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(error)) => return format!("PING failed: {error}"),
            Err(_) => return format!("no answer to a PING within {TIMEOUT:?}"),
        }
    }
}
