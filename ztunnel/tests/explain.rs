//! `/explain`: what ztunnel says it would do with a connection agrees with what
//! the connection meets. Explanations are checked against real connections
//! through the same ztunnel where the outcome is this ztunnel's to decide.

use std::net::{IpAddr, SocketAddr};

use crate::common::*;
use serde_json::Value;
use warren_api::config::{self, Action, resource::Kind};

const PAYLOAD: &[u8] = b"explained";

/// `/explain?from=FROM&to=TO` of node A: the status and the answer (JSON when 200).
async fn explain(mesh: &TwoNodes, from: &str, to: &str) -> (u16, String) {
    let encode = |s: &str| s.replace('[', "%5B").replace(']', "%5D");
    http_get(
        mesh.a.ztunnel.addresses.admin,
        &format!("/explain?from={}&to={}", encode(from), encode(to)),
    )
    .await
}

/// The verdict and every step's detail, one per line.
async fn explained(mesh: &TwoNodes, from: &str, to: &str) -> (String, String) {
    let (status, body) = explain(mesh, from, to).await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    let steps = answer["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "{}: {}",
                s["stage"].as_str().unwrap(),
                s["detail"].as_str().unwrap()
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    (answer["verdict"].as_str().unwrap().to_owned(), steps)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_tells_what_a_connection_meets() {
    let mut mesh = two_nodes(54).await;
    let ip = |c: u8, d: u8| IpAddr::from([127, 54, c, d]);
    let client = mesh.client_ip.to_string();
    let server = mesh.server.to_string();

    // Across nodes, no policy: HBONE to node B, allowed, and the echo comes back.
    let (verdict, steps) = explained(&mesh, &client, &server).await;
    assert_eq!(verdict, "allowed", "{steps}");
    for part in [
        "source: pod demo/client (127.54.1.2) of this node, identity spiffe://cluster.local/ns/demo/sa/client",
        "route: HBONE to node \"node-b\"",
        "expecting spiffe://cluster.local/ns/demo/sa/server",
        "policy: at the destination's ztunnel: no AuthorizationPolicy applies to demo/server: allowed",
    ] {
        assert!(steps.contains(part), "no {part:?} in\n{steps}");
    }
    assert_eq!(
        round_trip(mesh.client_to(mesh.server).await, PAYLOAD)
            .await
            .unwrap(),
        PAYLOAD
    );

    // By the name the DNS proxy answers, through a Service's VIP, from the pod
    // named by namespace/name.
    let vip: SocketAddr = SocketAddr::new(ip(100, 1), 80);
    mesh.view.put(res(
        warren_api::key::service("demo", "app"),
        Kind::Service(config::Service {
            name: "app".into(),
            namespace: "demo".into(),
            hostname: "app.demo.svc.cluster.local".into(),
            vips: vec![warren_api::addr::to_bytes(vip.ip())],
            ports: vec![config::ServicePort {
                port: 80,
                target_port: u32::from(mesh.server.port()),
                ..Default::default()
            }],
            endpoints: vec![config::Endpoint {
                workload: mesh.server_key.clone(),
                address: warren_api::addr::to_bytes(mesh.server.ip()),
                ready: true,
                ..Default::default()
            }],
            ..Default::default()
        }),
    ));
    mesh.sync();
    let (verdict, steps) = explained(&mesh, "demo/client", "app.demo.svc.cluster.local:80").await;
    assert_eq!(verdict, "allowed", "{steps}");
    for part in [
        "name: app.demo.svc.cluster.local is service/demo/app: the DNS proxy answers 127.54.100.1",
        "destination: 127.54.100.1:80 is an address of service/demo/app",
        &format!("CONNECT {server} (pod demo/server)"),
    ] {
        assert!(steps.contains(part), "no {part:?} in\n{steps}");
    }
    assert_eq!(
        round_trip(mesh.client_to(vip).await, PAYLOAD)
            .await
            .unwrap(),
        PAYLOAD
    );

    // Two endpoints: an explanation looks at the one the next connection gets
    // and leaves it that turn; the connection takes it, and the next
    // explanation names the other.
    let second = echo(ip(2, 3)).await;
    let second_key = mesh.view.add_workload(workload(
        "demo",
        "second",
        "server",
        second.ip(),
        "node-b",
        ip(2, 1),
    ));
    mesh.view.put(res(
        warren_api::key::service("demo", "pair"),
        Kind::Service(config::Service {
            name: "pair".into(),
            namespace: "demo".into(),
            hostname: "pair.demo.svc.cluster.local".into(),
            vips: vec![warren_api::addr::to_bytes(ip(100, 3))],
            ports: vec![config::ServicePort {
                port: 80,
                target_port: u32::from(mesh.server.port()),
                ..Default::default()
            }],
            endpoints: [(&mesh.server_key, mesh.server), (&second_key, second)]
                .into_iter()
                .map(|(key, addr)| config::Endpoint {
                    workload: key.clone(),
                    address: warren_api::addr::to_bytes(addr.ip()),
                    ready: true,
                    ports: [(80, u32::from(addr.port()))].into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
    ));
    mesh.sync();
    let pair = SocketAddr::new(ip(100, 3), 80);
    let endpoint = async || {
        let (_, steps) = explained(&mesh, &client, &pair.to_string()).await;
        [mesh.server, second]
            .into_iter()
            .find(|addr| steps.contains(&format!("CONNECT {addr}")))
            .unwrap_or_else(|| panic!("no endpoint in\n{steps}"))
    };
    let next = endpoint().await;
    assert_eq!(endpoint().await, next, "explaining took the turn");
    assert_eq!(
        round_trip(mesh.client_to(pair).await, PAYLOAD)
            .await
            .unwrap(),
        PAYLOAD
    );
    assert_ne!(
        endpoint().await,
        next,
        "the connection did not take its turn"
    );

    // A pod by name: its own address.
    let (verdict, steps) = explained(&mesh, &client, "demo/server:9").await;
    assert!(
        steps.contains(&format!("name: pod demo/server is at {}", mesh.server.ip())),
        "{steps}"
    );
    assert_eq!(verdict, "allowed", "{steps}");

    // A DENY policy on the server: denied, naming the policy, and refused indeed.
    let deny = policy(
        "no-clients",
        Action::Deny,
        vec![vec![vec![config::Match {
            principals: vec![exact("cluster.local/ns/demo/sa/client")],
            ..Default::default()
        }]]],
    );
    let key = mesh.view.add_policy(deny);
    let server_key = mesh.server_key.clone();
    mesh.view.workload_mut(&server_key).authorization_policies = vec![key.clone()];
    mesh.sync();
    let (verdict, steps) = explained(&mesh, &client, &server).await;
    assert_eq!(verdict, "denied", "{steps}");
    assert!(
        steps.contains(&format!("denied by DENY policy {key}")),
        "{steps}"
    );
    assert!(refused(mesh.client_to(mesh.server).await).await);

    // A port of the Service that does not exist: refused before any policy.
    let (verdict, steps) =
        explained(&mesh, &client, &SocketAddr::new(vip.ip(), 81).to_string()).await;
    assert_eq!(verdict, "refused", "{steps}");
    assert!(steps.contains("has no port 81"), "{steps}");
    assert!(refused(mesh.client_to(SocketAddr::new(vip.ip(), 81)).await).await);

    // A Service with a waypoint: the waypoint is the hop, and its policies decide.
    let via = SocketAddr::new(ip(100, 2), 80);
    mesh.view.put(res(
        warren_api::key::service("demo", "via"),
        Kind::Service(config::Service {
            name: "via".into(),
            namespace: "demo".into(),
            hostname: "via.demo.svc.cluster.local".into(),
            vips: vec![warren_api::addr::to_bytes(via.ip())],
            ports: vec![config::ServicePort {
                port: 80,
                target_port: 80,
                ..Default::default()
            }],
            waypoint: Some(config::GatewayAddress {
                workload: mesh.server_key.clone(),
                address: warren_api::addr::to_bytes(mesh.b.hbone().ip()),
                hbone_port: u32::from(mesh.b.hbone().port()),
                identity: spiffe("demo", "server"),
            }),
            ..Default::default()
        }),
    ));
    mesh.sync();
    let (verdict, steps) = explained(&mesh, &client, &via.to_string()).await;
    assert_eq!(verdict, "to_waypoint", "{steps}");
    assert!(
        steps.contains(&format!(
            "route: through waypoint demo/server at {}",
            mesh.b.hbone()
        )),
        "{steps}"
    );

    // Outside the mesh under ALLOW_ANY: plain TCP; under REGISTRY_ONLY: refused.
    let outside = echo(ip(9, 9)).await;
    let (verdict, steps) = explained(&mesh, &client, &outside.to_string()).await;
    assert_eq!(verdict, "allowed", "{steps}");
    assert!(steps.contains("plain TCP to"), "{steps}");
    mesh.view.put(registry_only());
    mesh.sync();
    let (verdict, steps) = explained(&mesh, &client, &outside.to_string()).await;
    assert_eq!(verdict, "refused", "{steps}");
    assert!(steps.contains("REGISTRY_ONLY"), "{steps}");
    assert!(refused(mesh.client_to(outside).await).await);

    // A port the pod excludes from capture: past ztunnel, whatever the
    // policies and the registry say.
    mesh.view
        .workload_mut(&mesh.client_key.clone())
        .excluded_ports = vec![u32::from(outside.port())];
    mesh.sync();
    let (verdict, steps) = explained(&mesh, &client, &outside.to_string()).await;
    assert_eq!(verdict, "not_captured", "{steps}");
    assert!(
        steps.contains(&format!("port {} is excluded from capture", outside.port())),
        "{steps}"
    );
    // To a STRICT pod of the mesh, the plaintext is dropped by its guard.
    let (client_key, server_key) = (mesh.client_key.clone(), mesh.server_key.clone());
    mesh.view.workload_mut(&client_key).excluded_ports = vec![u32::from(mesh.server.port())];
    mesh.view.workload_mut(&server_key).inbound_mode = config::InboundMode::Strict.into();
    mesh.sync();
    let (verdict, steps) = explained(&mesh, &client, &mesh.server.to_string()).await;
    assert_eq!(verdict, "refused", "{steps}");
    assert!(steps.contains("is STRICT on port"), "{steps}");
    mesh.view.workload_mut(&server_key).inbound_mode = config::InboundMode::Permissive.into();
    mesh.view
        .workload_mut(&mesh.client_key.clone())
        .excluded_ports
        .clear();
    mesh.sync();

    // Questions it cannot answer say why: a pod of another node, an unknown pod,
    // a pod outside the mesh, a name outside the mesh, a host the pod's DNS
    // resolves, a malformed destination.
    let mut outsider = workload("demo", "outsider", "outsider", ip(1, 9), "node-a", ip(1, 1));
    outsider.protocol = config::TunnelProtocol::None.into();
    mesh.view.add_workload(outsider);
    mesh.view.put(res(
        warren_api::key::service_entry("demo", "dynamic.example.com"),
        Kind::Service(config::Service {
            name: "dynamic.example.com".into(),
            namespace: "demo".into(),
            hostname: "dynamic.example.com".into(),
            ..Default::default()
        }),
    ));
    mesh.sync();
    for (from, to, says) in [
        ("demo/server", server.as_str(), "runs on node \"node-b\""),
        ("demo/nobody", server.as_str(), "no pod \"demo/nobody\""),
        ("demo/outsider", server.as_str(), "is not in the mesh"),
        (
            client.as_str(),
            "www.example.org:80",
            "the pod's DNS server resolves it",
        ),
        (
            client.as_str(),
            "dynamic.example.com:80",
            "without addresses",
        ),
        (client.as_str(), "nowhere", "neither address:port"),
        (client.as_str(), "demo/nobody:80", "no pod \"demo/nobody\""),
        (client.as_str(), "fd00::1:80", "in brackets"),
    ] {
        let (status, body) = explain(&mesh, from, to).await;
        assert_eq!(status, 400, "{from} -> {to}: {body}");
        assert!(body.contains(says), "{from} -> {to}: {body}");
    }
    let (status, body) = http_get(mesh.a.ztunnel.addresses.admin, "/explain").await;
    assert_eq!(status, 400);
    assert!(body.contains("usage"), "{body}");
}

/// A WorkloadEntry outside the mesh (a VM, on no node) is named as one and
/// reached in plain TCP, as the explanation says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_names_a_workload_entry() {
    let mut mesh = two_nodes(60).await;
    let vm = echo(IpAddr::from([127, 60, 3, 7])).await;
    mesh.view.put(res(
        warren_api::key::workload_entry("demo", "vm"),
        Kind::Workload(config::Workload {
            uid: "demo/workloadentry:vm".into(),
            name: "vm".into(),
            namespace: "demo".into(),
            service_account: "default".into(),
            addresses: vec![warren_api::addr::to_bytes(vm.ip())],
            protocol: config::TunnelProtocol::None.into(),
            ..Default::default()
        }),
    ));
    mesh.sync();
    let (verdict, steps) = explained(&mesh, &mesh.client_ip.to_string(), &vm.to_string()).await;
    assert_eq!(verdict, "allowed", "{steps}");
    let part = format!("plain TCP to WorkloadEntry demo/vm at {vm}, which is not in the mesh");
    assert!(steps.contains(&part), "no {part:?} in\n{steps}");
    assert_eq!(
        round_trip(mesh.client_to(vm).await, PAYLOAD).await.unwrap(),
        PAYLOAD
    );
}
