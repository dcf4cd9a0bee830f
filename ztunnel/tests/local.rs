//! One node's own paths: same-node traffic, plaintext inbound under PeerAuthentication,
//! the outbound policy for unknown destinations, the source from the kernel's cookie,
//! admin and readiness, and drain.

use std::{net::IpAddr, sync::Arc, time::Duration};

use crate::common::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use warren_api::config::{self, Action, InboundMode, resource::Kind};
use warren_ztunnel::{admin::LogControl, drain, state::State};

const PAYLOAD: &[u8] = b"local hello";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_node_traffic_skips_tls_but_not_policy() {
    let mut mesh = two_nodes(41).await;
    // A second client, on node B itself.
    let local_ip: IpAddr = "127.41.2.3".parse().unwrap();
    mesh.view.add_workload(workload(
        "demo",
        "neighbour",
        "neighbour",
        local_ip,
        "node-b",
        "127.41.2.1".parse().unwrap(),
    ));
    mesh.sync();
    let echoed = round_trip(mesh.b.outbound(local_ip, mesh.server, 0).await, PAYLOAD)
        .await
        .unwrap();
    assert_eq!(echoed, PAYLOAD);
    assert_eq!(
        mesh.b.ztunnel.inputs.pool.connection_count(),
        0,
        "same-node traffic used HBONE"
    );
    let text = mesh.b.metrics().await;
    for reporter in ["source", "destination"] {
        let labels = [
            &format!("reporter=\"{reporter}\"") as &str,
            "source_workload=\"neighbour\"",
            "destination_workload=\"server\"",
        ];
        assert_eq!(
            metric(&text, "istio_tcp_connections_opened_total", &labels),
            1,
            "{text}"
        );
    }

    let deny = policy(
        "no-neighbours",
        Action::Deny,
        vec![vec![vec![config::Match {
            principals: vec![exact("cluster.local/ns/demo/sa/neighbour")],
            ..Default::default()
        }]]],
    );
    let key = mesh.view.add_policy(deny);
    let server_key = mesh.server_key.clone();
    mesh.view.workload_mut(&server_key).authorization_policies = vec![key];
    mesh.sync();
    assert!(
        refused(mesh.b.outbound(local_ip, mesh.server, 0).await).await,
        "same-node DENY ignored"
    );
    // The cross-node client is not named by the policy.
    assert_eq!(
        round_trip(mesh.client_to(mesh.server).await, PAYLOAD)
            .await
            .unwrap(),
        PAYLOAD
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_is_known_by_its_netns_cookie() {
    let mut mesh = two_nodes(42).await;
    let client_key = mesh.client_key.clone();
    mesh.view.workload_mut(&client_key).netns_cookie = 4242;
    mesh.sync();
    // From an address that is no workload's: the cookie names the client.
    let stranger: IpAddr = "127.42.1.77".parse().unwrap();
    assert_eq!(
        round_trip(mesh.a.outbound(stranger, mesh.server, 4242).await, PAYLOAD)
            .await
            .unwrap(),
        PAYLOAD
    );
    // Neither cookie nor address known: refused.
    assert!(refused(mesh.a.outbound(stranger, mesh.server, 7).await).await);
    // No cookie, and the address of a workload of another node: no pod of this node
    // can have it, so it names no one here (and lends no identity).
    assert!(refused(mesh.a.outbound(mesh.server.ip(), mesh.server, 0).await).await);
    let text = mesh.a.metrics().await;
    assert_eq!(
        metric(
            &text,
            "warren_ztunnel_refused_connections_total",
            &["reason=\"unknown_source\""]
        ),
        2
    );
    assert_eq!(
        metric(
            &text,
            "istio_tcp_connections_opened_total",
            &["source_workload=\"client\""]
        ),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_inbound_follows_peer_authentication() {
    let mut mesh = two_nodes(43).await;
    let outsider: IpAddr = "127.43.9.9".parse().unwrap();
    // PERMISSIVE (the default): plaintext passes.
    assert_eq!(
        round_trip(mesh.b.passthrough(outsider, mesh.server).await, PAYLOAD)
            .await
            .unwrap(),
        PAYLOAD
    );
    // Plaintext from a mesh pod's address proves no identity: the metrics name no
    // principal for it.
    assert_eq!(
        round_trip(
            mesh.b.passthrough(mesh.client_ip, mesh.server).await,
            PAYLOAD
        )
        .await
        .unwrap(),
        PAYLOAD
    );
    let plaintext = [
        "reporter=\"destination\"",
        "source_workload=\"client\"",
        "source_principal=\"unknown\"",
        "connection_security_policy=\"unknown\"",
    ];
    let counted = eventually(Duration::from_secs(3), async || {
        metric(
            &mesh.b.metrics().await,
            "istio_tcp_connections_closed_total",
            &plaintext,
        ) == 1
    })
    .await;
    assert!(counted, "{}", mesh.b.metrics().await);

    let server_key = mesh.server_key.clone();
    mesh.view.workload_mut(&server_key).inbound_mode = InboundMode::Strict.into();
    mesh.sync();
    assert!(
        refused(mesh.b.passthrough(outsider, mesh.server).await).await,
        "STRICT let plaintext in"
    );
    // HBONE still passes under STRICT.
    assert_eq!(
        round_trip(mesh.client_to(mesh.server).await, PAYLOAD)
            .await
            .unwrap(),
        PAYLOAD
    );

    // DISABLE: ztunnel cannot stop tunnelling its own traffic, so as in
    // PERMISSIVE both plaintext and HBONE pass.
    mesh.view.workload_mut(&server_key).inbound_mode = InboundMode::Disable.into();
    mesh.sync();
    assert_eq!(
        round_trip(mesh.b.passthrough(outsider, mesh.server).await, PAYLOAD)
            .await
            .unwrap(),
        PAYLOAD,
        "DISABLE refused plaintext"
    );
    assert_eq!(
        round_trip(mesh.client_to(mesh.server).await, PAYLOAD)
            .await
            .unwrap(),
        PAYLOAD,
        "DISABLE refused HBONE"
    );
    // A mode this build cannot read (a newer agent's) fails closed, as STRICT.
    mesh.view.workload_mut(&server_key).inbound_mode = 99;
    mesh.sync();
    assert!(
        refused(mesh.b.passthrough(outsider, mesh.server).await).await,
        "an unknown mode let plaintext in"
    );

    // A port-level PERMISSIVE exception on a STRICT workload.
    mesh.view.workload_mut(&server_key).inbound_mode = InboundMode::Strict.into();
    let port = u32::from(mesh.server.port());
    mesh.view.workload_mut(&server_key).port_modes =
        [(port, InboundMode::Permissive.into())].into();
    mesh.sync();
    assert_eq!(
        round_trip(mesh.b.passthrough(outsider, mesh.server).await, PAYLOAD)
            .await
            .unwrap(),
        PAYLOAD
    );

    // Plaintext has no identity: an ALLOW on principals does not let it in.
    let allow = policy(
        "mesh-only",
        Action::Allow,
        vec![vec![vec![config::Match {
            principals: vec![presence()],
            ..Default::default()
        }]]],
    );
    let key = mesh.view.add_policy(allow);
    mesh.view.workload_mut(&server_key).authorization_policies = vec![key];
    mesh.sync();
    assert!(refused(mesh.b.passthrough(outsider, mesh.server).await).await);
    let text = mesh.b.metrics().await;
    assert_eq!(
        metric(
            &text,
            "warren_ztunnel_refused_connections_total",
            &["reason=\"strict_mtls\""]
        ),
        2
    );
    assert_eq!(
        metric(
            &text,
            "warren_ztunnel_refused_connections_total",
            &[
                "direction=\"inbound_passthrough\"",
                "reason=\"not_allowed\""
            ]
        ),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_destinations_pass_through_or_are_refused_per_outbound_policy() {
    let mut mesh = two_nodes(44).await;
    let outside = echo("127.44.50.1".parse().unwrap()).await;
    assert_eq!(
        round_trip(mesh.client_to(outside).await, PAYLOAD)
            .await
            .unwrap(),
        PAYLOAD
    );
    let text = mesh.a.metrics().await;
    assert_eq!(
        metric(
            &text,
            "istio_tcp_connections_opened_total",
            &[
                "destination_workload=\"unknown\"",
                "connection_security_policy=\"unknown\""
            ]
        ),
        1
    );

    mesh.view.put(registry_only());
    mesh.sync();
    assert!(
        refused(mesh.client_to(outside).await).await,
        "REGISTRY_ONLY let an unknown destination through"
    );
    // Known destinations still work.
    assert_eq!(
        round_trip(mesh.client_to(mesh.server).await, PAYLOAD)
            .await
            .unwrap(),
        PAYLOAD
    );
    let text = mesh.a.metrics().await;
    assert_eq!(
        metric(
            &text,
            "warren_ztunnel_refused_connections_total",
            &["reason=\"registry_only\""]
        ),
        1
    );

    // A ServiceEntry registers destinations outside the mesh. `resolution:
    // NONE`: its address is let through, to the address dialled.
    mesh.view.put(res(
        warren_api::key::service_entry("demo", "outside.example"),
        Kind::Service(config::Service {
            name: "outside.example".into(),
            namespace: "demo".into(),
            hostname: "outside.example".into(),
            vips: vec![warren_api::addr::to_bytes(outside.ip())],
            ports: vec![config::ServicePort {
                port: u32::from(outside.port()),
                target_port: u32::from(outside.port()),
                ..Default::default()
            }],
            passthrough: true,
            ..Default::default()
        }),
    ));
    // `STATIC`: a VIP of its own, balanced over endpoints outside the mesh.
    let vip: std::net::SocketAddr = "127.44.60.1:80".parse().unwrap();
    let other = echo("127.44.50.2".parse().unwrap()).await;
    mesh.view.put(res(
        warren_api::key::service_entry("demo", "static.example"),
        Kind::Service(config::Service {
            name: "static.example".into(),
            namespace: "demo".into(),
            hostname: "static.example".into(),
            vips: vec![warren_api::addr::to_bytes(vip.ip())],
            ports: vec![config::ServicePort {
                port: 80,
                target_port: u32::from(other.port()),
                ..Default::default()
            }],
            endpoints: vec![config::Endpoint {
                address: warren_api::addr::to_bytes(other.ip()),
                ready: true,
                ..Default::default()
            }],
            ..Default::default()
        }),
    ));
    mesh.sync();
    for dst in [outside, vip] {
        assert_eq!(
            round_trip(mesh.client_to(dst).await, PAYLOAD)
                .await
                .unwrap(),
            PAYLOAD,
            "{dst} is registered by a ServiceEntry"
        );
    }
    // Its other ports are not.
    let unregistered = std::net::SocketAddr::new(outside.ip(), outside.port().wrapping_add(1));
    assert!(refused(mesh.client_to(unregistered).await).await);
    let text = mesh.a.metrics().await;
    assert_eq!(
        metric(
            &text,
            "istio_tcp_connections_opened_total",
            &["destination_service=\"outside.example\""]
        ),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_admin_and_logging() {
    init();
    let ip: IpAddr = "127.45.1.1".parse().unwrap();
    let config = test_config("node-a", ip, 0);
    let state = State::new(config.node_name.clone(), config.hbone_port);
    let filters = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = Arc::clone(&filters);
    let log: LogControl = Arc::new(move |level: &str| {
        if level == "nonsense=[" {
            return Err("unbalanced".into());
        }
        seen.lock().unwrap().push(level.to_owned());
        Ok(())
    });
    let node_a = Node::start_with_log(config, state, Some(log)).await;
    let node = node_a.ztunnel.addresses.clone();

    let (status, body) = http_get(node.readiness, "/healthz/ready").await;
    assert_eq!(
        (status, body.trim()),
        (503, "not ready: no config snapshot applied yet")
    );

    // A snapshot whose local workload has no certificate yet: still not ready.
    let mut view = View::new(Ca::new("root"));
    let key = view.add_workload(workload(
        "demo",
        "app",
        "app",
        "127.45.1.2".parse().unwrap(),
        "node-a",
        ip,
    ));
    let cert_key = warren_api::key::certificate(&spiffe("demo", "app").parse().unwrap());
    let cert = view.resources.remove(&cert_key).unwrap();
    assert!(node_a.apply(view.snapshot()).is_empty());
    let (status, body) = http_get(node.readiness, "/healthz/ready").await;
    assert_eq!(status, 503);
    assert!(
        body.contains("no certificate yet for spiffe://cluster.local/ns/demo/sa/app"),
        "{body}"
    );

    view.put(cert);
    assert!(node_a.apply(view.snapshot()).is_empty());
    assert_eq!(http_get(node.readiness, "/healthz/ready").await.0, 200);

    let (status, dump) = http_get(node.admin, "/config_dump").await;
    assert_eq!(status, 200);
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(
        dump["certificates"][0]["identity"],
        "spiffe://cluster.local/ns/demo/sa/app"
    );
    assert!(dump["certificates"][0]["not_after"].as_i64().unwrap() > 0);
    assert_eq!(dump["workloads"][0]["key"], key.as_str());
    assert_eq!(
        dump["workloads"][0]["identity"],
        "spiffe://cluster.local/ns/demo/sa/app"
    );
    let text = dump.to_string();
    assert!(
        !text.contains("PRIVATE KEY") && !text.contains("private_key"),
        "the dump shows key material"
    );

    let (status, _) = http_get(node.admin, "/logging?level=debug%2Caccess%3Doff").await;
    assert_eq!(status, 200);
    assert_eq!(filters.lock().unwrap().as_slice(), ["debug,access=off"]);
    assert_eq!(
        http_get(node.admin, "/logging?level=nonsense=%5B").await.0,
        400
    );
    assert_eq!(http_get(node.admin, "/logging").await.0, 400);
    assert_eq!(http_get(node.admin, "/nothing").await.0, 404);

    // /quitquitquit asks the process to drain.
    let quit = tokio::spawn(async move {
        // An operator's request, not a successor's: the binary exits once drained
        // even with --linger-after-handover.
        let reason = node_a.ztunnel.quit_requested().await;
        assert_eq!(reason, warren_ztunnel::admin::QuitReason::Asked);
        node_a.ztunnel.drain().await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Only a POST: a stray GET does not stop the node's proxy.
    assert_eq!(http_get(node.admin, "/quitquitquit").await.0, 405);
    assert_eq!(
        http_request(node.admin, "POST", "/quitquitquit").await.0,
        200
    );
    let outcome = tokio::time::timeout(Duration::from_secs(3), quit)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome, drain::Outcome::Clean);
    assert!(
        tokio::net::TcpStream::connect(node.readiness)
            .await
            .is_err(),
        "still listening after the drain"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_lets_connections_finish_then_cuts_them() {
    let mesh = two_nodes(46).await;
    // A connection that is open while B drains.
    let mut held = mesh.client_to(mesh.server).await;
    held.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    held.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");

    let hbone = mesh.b.hbone();
    let TwoNodes { b, .. } = mesh;
    let started = std::time::Instant::now();
    let drain = tokio::spawn(b.ztunnel.drain());
    // New connections are refused once draining starts...
    assert!(
        eventually(Duration::from_secs(2), async || {
            tokio::net::TcpStream::connect(hbone).await.is_err()
        })
        .await,
        "the HBONE listener still accepts while draining"
    );
    // ...while the open one still works until the deadline (500 ms in tests).
    held.write_all(b"pong").await.unwrap();
    held.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong");
    assert_eq!(drain.await.unwrap(), drain::Outcome::Forced);
    assert!(started.elapsed() >= Duration::from_millis(450));
    // Cut: the client sees the end.
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(3), held.read_to_end(&mut rest)).await;
    assert!(end.is_ok(), "the held connection was not cut");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hbone_over_ipv6_loopback() {
    init();
    // IPv6 loopback has one address: the nodes differ by port, the client is known by
    // its cookie (it has no address of its own here).
    let ip: IpAddr = "::1".parse().unwrap();
    let b = Node::new("node-b", ip, 0).await;
    let a = Node::new("node-a", ip, b.hbone().port()).await;
    let server = echo(ip).await;
    let mut view = View::new(Ca::new("root"));
    let mut client = workload("demo", "client", "client", ip, "node-a", ip);
    client.addresses.clear();
    client.netns_cookie = 66;
    view.add_workload(client);
    view.add_workload(workload("demo", "server", "server", ip, "node-b", ip));
    let snapshot = view.snapshot();
    assert!(a.apply(snapshot.clone()).is_empty());
    assert!(b.apply(snapshot).is_empty());
    let echoed = round_trip(a.outbound(ip, server, 66).await, PAYLOAD)
        .await
        .unwrap();
    assert_eq!(echoed, PAYLOAD);
    assert_eq!(
        a.ztunnel.inputs.pool.connection_count(),
        1,
        "the IPv6 round trip did not use HBONE"
    );
}
