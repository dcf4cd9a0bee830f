//! A pod new to the mesh: its connections, and connections to it, may come before
//! ztunnel has the certificate they need (the CA is still issuing it). They wait
//! for it, up to `--catch-up-wait`, instead of failing.

use std::time::Duration;

use crate::common::*;
use warren_api::{Identity, config};

/// Takes the certificate of `identity` out of the view, to put back later.
fn hold_back(view: &mut View, identity: &str) -> config::Resource {
    let id: Identity = identity.parse().unwrap();
    view.resources
        .remove(&warren_api::key::certificate(&id))
        .expect("the certificate is in the view")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_wait_for_a_new_pods_certificate() {
    for (late, whose) in [
        (spiffe("demo", "server"), "the destination's (server side)"),
        (spiffe("demo", "client"), "the source's (client side)"),
    ] {
        let net = 57 + u8::from(whose.contains("source"));
        let mut mesh = two_nodes_configured(net, |config| {
            config.catch_up_wait = Duration::from_secs(5);
            config.tls_handshake_timeout = Duration::from_secs(6);
        })
        .await;
        let certificate = hold_back(&mut mesh.view, &late);
        mesh.sync();
        let dst = mesh.server;
        let client = mesh.client_to(dst).await;
        let connection = tokio::spawn(round_trip(client, b"hello"));
        // The CA answers a moment later.
        tokio::time::sleep(Duration::from_millis(300)).await;
        mesh.view.put(certificate);
        mesh.sync();
        let echoed = connection.await.unwrap();
        assert_eq!(
            echoed.as_deref().ok(),
            Some(&b"hello"[..]),
            "with {whose} certificate late: {echoed:?}"
        );
    }
}
