//! A ztunnel taking a node over from the one serving it (an upgrade): peers' HBONE
//! connections move to the new process, new connections never fail, and a connection
//! open through the old process finishes on it.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use crate::common::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use warren_api::subscribe::Handler as _;
use warren_ztunnel::{
    Ztunnel,
    admin::QuitReason,
    app, drain, handover,
    proxy::hbone::client::{self, Establish},
    readiness::ReadyFile,
    state::State,
    subscription::Subscription,
    tls::{TrustBundle, WorkloadCertificate},
};

const OPENED: &str = "istio_tcp_connections_opened_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_takes_over_without_losing_a_connection() {
    // Long enough for the held connections to finish on their own. Two streams per
    // HBONE connection, so that A pools several connections to B, each with room.
    let drain_timeout = Duration::from_secs(20);
    let mesh = two_nodes_configured(48, |c| {
        c.drain_timeout = drain_timeout;
        c.pool_max_streams = 2;
    })
    .await;
    let TwoNodes {
        mut view,
        a,
        b,
        client_ip,
        server,
        ..
    } = mesh;
    let a = Arc::new(a);
    let old_addresses = b.ztunnel.addresses.clone();

    // Connections through B that stay open across the hand-over: four fill two
    // HBONE connections, then one on each ends, leaving both with room.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut stream = a.outbound(client_ip, server, 0).await;
        stream.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        held.push(stream);
    }
    assert_eq!(a.ztunnel.inputs.pool.connection_count(), 2);
    drop(held.remove(3));
    drop(held.remove(1));
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The old process drains when asked, as the binary does.
    let (draining_tx, draining) = tokio::sync::oneshot::channel();
    let old = tokio::spawn(async move {
        let reason = b.ztunnel.quit_requested().await;
        let _ = draining_tx.send(reason);
        let started = std::time::Instant::now();
        (b.ztunnel.drain().await, started.elapsed())
    });

    // New connections all along, bounded in number and stopped once checked.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let made = Arc::new(AtomicU64::new(0));
    let load = tokio::spawn({
        let (a, stop, failures, made) = (a.clone(), stop.clone(), failures.clone(), made.clone());
        async move {
            for n in 0..20_000u32 {
                if stop.load(Ordering::Acquire) {
                    break;
                }
                let payload = format!("connection {n}");
                match round_trip(a.outbound(client_ip, server, 0).await, payload.as_bytes()).await {
                    Ok(echo) if echo == payload.as_bytes() => {}
                    Ok(echo) => failures
                        .lock()
                        .unwrap()
                        .push(format!("{n}: echoed {} bytes", echo.len())),
                    Err(error) => failures.lock().unwrap().push(format!("{n}: {error}")),
                }
                made.fetch_add(1, Ordering::AcqRel);
            }
        }
    });
    assert!(
        eventually(Duration::from_secs(5), async || made
            .load(Ordering::Acquire)
            >= 20)
        .await,
        "no load before the hand-over"
    );

    // The successor: same addresses, its own state fed the same view.
    let mut config = test_config("node-b", old_addresses.admin.ip(), 0);
    config.outbound_addrs = old_addresses.outbound.clone();
    config.inbound_plaintext_addrs = old_addresses.inbound_plaintext.clone();
    config.hbone_addrs = old_addresses.hbone.clone();
    config.admin_addr = old_addresses.admin;
    config.metrics_addr = old_addresses.metrics;
    config.readiness_addr = old_addresses.readiness;
    let state = State::new(config.node_name.clone(), config.hbone_port);
    let mut subscription = Subscription::new(Arc::clone(&state));
    // Not ready yet: the take-over waits for the snapshot, the old one serving alone.
    let running = handover::predecessor(old_addresses.admin, Some("node-b"))
        .await
        .unwrap()
        .expect("B answers on its admin port as a ztunnel");
    let successor = tokio::spawn({
        let state = Arc::clone(&state);
        async move {
            app::wait_ready(&state, Duration::from_secs(5)).await?;
            Ztunnel::take_over(config, state, None, &running).await
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!successor.is_finished(), "took over before it was ready");
    assert!(subscription.apply(view.snapshot()).is_empty());
    let successor = successor.await.unwrap().expect("the take-over");
    // Its own ready file (what the DaemonSet's probe asks) once it serves; the old
    // process's port-bound readiness would have answered for it before.
    let dir = tempfile::tempdir().unwrap();
    let ready_path = dir.path().join("ready");
    let ready = ReadyFile::once_ready(ready_path.clone(), Arc::clone(&state));
    assert!(
        eventually(Duration::from_secs(5), async || ready_path.exists()).await,
        "the successor's ready file did not appear"
    );
    let reason = tokio::time::timeout(Duration::from_secs(5), draining)
        .await
        .expect("the old ztunnel was not asked to drain")
        .unwrap();
    // It knows a successor asked (`--linger-after-handover` waits then).
    assert_eq!(reason, QuitReason::HandedOver);

    // Connections made after the old one stopped accepting go through the successor.
    let before = made.load(Ordering::Acquire);
    assert!(
        eventually(Duration::from_secs(10), async || {
            made.load(Ordering::Acquire) >= before + 200
        })
        .await,
        "the load stalled after the hand-over"
    );
    stop.store(true, Ordering::Release);
    load.await.unwrap();
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} of {} connections failed across the hand-over: {:?}",
        failures.len(),
        made.load(Ordering::Acquire),
        &failures[..failures.len().min(5)]
    );
    // The successor took the operator's ports once the old one let go of them, and
    // counts the connections it now carries.
    assert!(
        eventually(Duration::from_secs(5), async || {
            tokio::net::TcpStream::connect(old_addresses.metrics)
                .await
                .is_ok()
        })
        .await,
        "the successor did not take the metrics port"
    );
    let text = http_get(successor.addresses.metrics, "/metrics").await.1;
    assert!(
        metric(&text, OPENED, &["reporter=\"destination\""]) >= 100,
        "the successor carried too few connections:\n{text}"
    );
    let (status, answer) = http_get(successor.addresses.readiness, "/healthz/ready").await;
    assert_eq!((status, answer.trim()), (200, "ready"));
    // Draining withdraws it.
    ready.withdraw().await;
    assert!(
        !ready_path.exists(),
        "the ready file outlived the drain's start"
    );

    // The held connections still work through the old process, and their end lets
    // the old one finish its drain cleanly, well before the deadline.
    assert!(
        !old.is_finished(),
        "the old ztunnel left before its connections closed"
    );
    for mut stream in held {
        stream.write_all(b"pong").await.unwrap();
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
    }
    let (outcome, took) = tokio::time::timeout(Duration::from_secs(10), old)
        .await
        .expect("the old ztunnel did not finish draining")
        .unwrap();
    assert_eq!(outcome, drain::Outcome::Clean);
    assert!(
        took < drain_timeout,
        "drained only at the deadline: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_that_never_gets_ready_leaves_the_running_one_alone() {
    let mesh = two_nodes(49).await;
    let addresses = mesh.b.ztunnel.addresses.clone();
    let mut config = test_config("node-b", addresses.admin.ip(), 0);
    config.hbone_addrs = addresses.hbone.clone();
    config.admin_addr = addresses.admin;
    let state = State::new(config.node_name.clone(), config.hbone_port);
    let running = handover::predecessor(addresses.admin, Some("node-b"))
        .await
        .unwrap()
        .unwrap();
    // Its ready file never appears, not even after it is withdrawn.
    let dir = tempfile::tempdir().unwrap();
    let ready_path = dir.path().join("ready");
    let ready = ReadyFile::once_ready(ready_path.clone(), Arc::clone(&state));
    let waited = app::wait_ready(&state, Duration::from_millis(300)).await;
    assert!(!ready_path.exists(), "ready file written without config");
    ready.withdraw().await;
    assert!(!ready_path.exists());
    let error = format!("{:#}", waited.expect_err("ready without config"));
    assert!(error.contains("not ready within"), "{error}");
    assert!(error.contains("keeps serving"), "{error}");
    // Taking over regardless is refused the same way.
    let error = match Ztunnel::take_over(config, state, None, &running).await {
        Ok(_) => panic!("took over without config"),
        Err(error) => format!("{error:#}"),
    };
    assert!(error.contains("not ready"), "{error}");
    assert!(error.contains("keeps serving"), "{error}");
    // The running one was never asked to drain and still serves.
    let echoed = round_trip(mesh.client_to(mesh.server).await, b"still here")
        .await
        .unwrap();
    assert_eq!(echoed, b"still here");
    assert_eq!(http_get(addresses.admin, "/server_info").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_learns_that_its_connection_goes_away_and_keeps_working() {
    let mesh = two_nodes_configured(50, |c| c.drain_timeout = Duration::from_secs(10)).await;
    let client_cert = mesh.view.ca.issue(&spiffe("demo", "client"));
    let trust = TrustBundle::from_proto(&warren_api::config::TrustBundle {
        roots_pem: vec![mesh.view.ca.root_pem.clone()],
    })
    .unwrap();
    let connection = client::connect(
        &test_config("probe", mesh.a.ip, 0),
        mesh.b.hbone(),
        &WorkloadCertificate::from_proto(&client_cert).unwrap(),
        &trust,
        &spiffe("demo", "server").parse().unwrap(),
    )
    .await
    .unwrap();
    let guard = connection.try_reserve().unwrap();
    let tunnel = connection
        .open(
            guard,
            mesh.server,
            None,
            Duration::from_secs(2),
            Establish::AwaitAnswer,
        )
        .await
        .unwrap();
    let carrier = tunnel
        .carrier()
        .expect("a client tunnel knows its connection");
    assert!(carrier.accepts_streams());

    // B drains: GOAWAY on the connection. The carrier says so; the tunnel on it still
    // carries its bytes until it ends.
    let TwoNodes { b, .. } = mesh;
    let drain = tokio::spawn(b.ztunnel.drain());
    assert!(
        eventually(Duration::from_secs(3), async || !carrier.accepts_streams()).await,
        "the carrier still takes streams after GOAWAY"
    );
    let mut tunnel = tunnel;
    tunnel.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tunnel.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    drop(tunnel);
    drop(connection);
    let outcome = tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .expect("B did not finish draining once the tunnel ended")
        .unwrap();
    assert_eq!(outcome, drain::Outcome::Clean);
}
