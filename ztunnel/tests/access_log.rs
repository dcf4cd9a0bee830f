//! The access log: one line per connection, on each side, written when the
//! connection ends (or is refused), with who, where, how many bytes and how
//! it ended.

use std::{
    io::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::common::*;
use warren_api::config::{self, Action};

const PAYLOAD: &[u8] = b"logged through the mesh";

/// Everything the `access` target writes, kept for the test to read.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// The access lines that contain every one of `parts`.
    fn lines_with(&self, parts: &[&str]) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| l.contains("connection complete") && parts.iter().all(|p| l.contains(p)))
            .map(str::to_owned)
            .collect()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_side_logs_one_line_per_connection_with_its_outcome() {
    // Before the fixture's own subscriber (which then finds one set).
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_env_filter("access=info")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();
    let mut mesh = two_nodes(23).await;

    let echoed = round_trip(mesh.client_to(mesh.server).await, PAYLOAD)
        .await
        .unwrap();
    assert_eq!(echoed, PAYLOAD);
    let bytes = format!("bytes_sent={}", PAYLOAD.len());
    let both = eventually(Duration::from_secs(3), async || {
        captured.lines_with(&["outcome=\"ok\""]).len() == 2
    })
    .await;
    assert!(both, "one line per side:\n{}", captured.text());
    let outbound = captured.lines_with(&["direction=\"outbound\"", "outcome=\"ok\""]);
    let inbound = captured.lines_with(&["direction=\"inbound\"", "outcome=\"ok\""]);
    assert_eq!(
        (outbound.len(), inbound.len()),
        (1, 1),
        "{}",
        captured.text()
    );
    for line in [&outbound[0], &inbound[0]] {
        for part in [
            format!("src={}", mesh.client_ip),
            format!("dst={}", mesh.server),
            "src_identity=spiffe://cluster.local/ns/demo/sa/client".to_owned(),
            "dst_identity=spiffe://cluster.local/ns/demo/sa/server".to_owned(),
            bytes.clone(),
            format!("bytes_received={}", PAYLOAD.len()),
            "duration_ms=".to_owned(),
        ] {
            assert!(line.contains(&part), "no {part} in {line}");
        }
    }

    // Refused by policy: the line says so, and why.
    let deny = policy(
        "deny-all",
        Action::Deny,
        vec![vec![vec![config::Match::default()]]],
    );
    let key = mesh.view.add_policy(deny);
    let server_key = mesh.server_key.clone();
    mesh.view.workload_mut(&server_key).authorization_policies = vec![key];
    mesh.sync();
    assert!(refused(mesh.client_to(mesh.server).await).await);
    let logged = eventually(Duration::from_secs(3), async || {
        !captured
            .lines_with(&["direction=\"inbound\"", "outcome=\"refused\""])
            .is_empty()
    })
    .await;
    assert!(
        logged,
        "a refused connection is logged:\n{}",
        captured.text()
    );
    let line = &captured.lines_with(&["direction=\"inbound\"", "outcome=\"refused\""])[0];
    assert!(
        line.contains("reason=") && line.contains("deny-all"),
        "the line names the policy: {line}"
    );

    // Plaintext to a STRICT workload: refused, and logged with the reason.
    mesh.view.workload_mut(&server_key).authorization_policies = Vec::new();
    mesh.view.workload_mut(&server_key).inbound_mode = config::InboundMode::Strict.into();
    mesh.sync();
    let outsider = "127.23.9.9".parse().unwrap();
    assert!(refused(mesh.b.passthrough(outsider, mesh.server).await).await);
    let parts = [
        "direction=\"inbound_passthrough\"",
        "outcome=\"refused\"",
        "STRICT",
    ];
    let logged = eventually(Duration::from_secs(3), async || {
        captured.lines_with(&parts).len() == 1
    })
    .await;
    assert!(logged, "a STRICT refusal is logged:\n{}", captured.text());

    // Refused on the way out (no pod of node A has that address): logged too.
    assert!(refused(mesh.a.outbound(outsider, mesh.server, 0).await).await);
    let parts = [
        "direction=\"outbound\"",
        "outcome=\"refused\"",
        "unknown_source",
    ];
    let logged = eventually(Duration::from_secs(3), async || {
        captured.lines_with(&parts).len() == 1
    })
    .await;
    assert!(
        logged,
        "an outbound refusal is logged:\n{}",
        captured.text()
    );
}
