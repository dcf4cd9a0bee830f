//! Many concurrent tunnels through one pair of ztunnels, and no file descriptor left
//! behind. Alone in its test binary: it counts this process's descriptors.

use std::time::Duration;

use crate::common::*;

const TUNNELS: usize = 1_000;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_tunnels_complete_and_descriptors_return_to_baseline() {
    let mesh = two_nodes(51).await;
    // Warm up (one pooled connection), then measure from there.
    assert_eq!(
        round_trip(mesh.client_to(mesh.server).await, b"warm")
            .await
            .unwrap(),
        b"warm"
    );
    let baseline = open_fds();

    // Open every client connection first, so all tunnels are open at once.
    let mut clients = Vec::with_capacity(TUNNELS);
    for _ in 0..TUNNELS {
        clients.push(mesh.client_to(mesh.server).await);
    }
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, client)| {
            tokio::spawn(async move {
                let payload = format!("tunnel {i} says hello").into_bytes();
                let echoed = round_trip(client, &payload).await;
                matches!(echoed, Ok(bytes) if bytes == payload)
            })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        ok += usize::from(task.await.unwrap());
    }
    assert_eq!(ok, TUNNELS, "every tunnel echoes its own bytes");
    // 100 streams per connection: the burst needed more than one.
    let pooled = mesh.a.ztunnel.inputs.pool.connection_count();
    assert!(
        pooled >= TUNNELS / 100,
        "{pooled} pooled connections for {TUNNELS} concurrent tunnels"
    );

    // Idle pooled connections are closed by eviction (the pool keeps none idle past
    // the timeout); evict now instead of waiting a minute.
    mesh.a.ztunnel.inputs.pool.evict_idle(Duration::ZERO);
    let back = eventually(Duration::from_secs(10), async || open_fds() <= baseline).await;
    assert!(back, "descriptors: {} now, {baseline} before", open_fds());
    let text = mesh.a.metrics().await;
    assert_eq!(
        metric(
            &text,
            "istio_tcp_connections_closed_total",
            &["reporter=\"source\""]
        ),
        (TUNNELS + 1) as u64
    );
}
