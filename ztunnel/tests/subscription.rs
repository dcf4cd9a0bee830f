//! ztunnel fed by a real subscription to an in-process config server on a Unix socket:
//! refusals keep the last good copy, and pushed policy applies without a restart.

use std::{sync::Arc, time::Duration};

use crate::common::*;
use warren_api::{
    config::{self, Action, Hello, Role, Update, client_message::Message, resource::Kind},
    subscribe::Subscriber,
};
use warren_ztunnel::{state::State, subscription::Subscription};

/// Node B of a two-node mesh, restarted to follow `server` instead of direct updates.
async fn subscribed_b(mesh: &mut TwoNodes, net: u8) -> (Node, ConfigServer) {
    let server = ConfigServer::start(mesh.view.snapshot()).await;
    let mut config = test_config("node-b", format!("127.{net}.3.1").parse().unwrap(), 0);
    config.agent_socket = server.socket.clone();
    // A dials peers' HBONE on the first B's port: take the same port on the new address.
    config.hbone_addrs = vec![std::net::SocketAddr::new(
        config.admin_addr.ip(),
        mesh.b.hbone().port(),
    )];
    let state = State::new(config.node_name.clone(), config.hbone_port);
    let subscriber = Subscriber::new(
        config.agent_socket.clone(),
        Hello {
            role: Role::Ztunnel.into(),
            client_id: "test".into(),
            ..Hello::default()
        },
    )
    .with_backoff(Duration::from_millis(10), Duration::from_millis(100));
    tokio::spawn(subscriber.run(Subscription::new(Arc::clone(&state))));
    let node = Node::start(config, state).await;
    assert!(
        eventually(Duration::from_secs(5), async || node.state.ready().is_ok()).await,
        "{:?}",
        node.state.ready()
    );
    // A now sends to this B: its workloads live at B's address.
    let b_ip = node.ip;
    for resource in mesh.view.resources.values_mut() {
        if let Some(Kind::Workload(w)) = resource.kind.as_mut()
            && w.node == "node-b"
        {
            w.node_address = warren_api::addr::to_bytes(b_ip);
        }
    }
    let snapshot = mesh.view.snapshot();
    assert!(mesh.a.apply(snapshot).is_empty());
    (node, server)
}

fn delta(version: u64, upserts: Vec<config::Resource>, removals: Vec<String>) -> Update {
    Update {
        version,
        snapshot: false,
        upserts,
        removals,
        ..Update::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_resource_is_refused_and_the_last_good_copy_stays() {
    let mut mesh = two_nodes(31).await;
    let (b, server) = subscribed_b(&mut mesh, 31).await;
    // The snapshot B got is the version before the one A was last given.
    assert!(matches!(
        server.answer(mesh.view.version - 1).await,
        Message::Ack(_)
    ));

    // Three bad resources and one good one in a single update.
    let mut bad_workload = match mesh.view.resources[&mesh.server_key].kind.clone() {
        Some(Kind::Workload(w)) => w,
        _ => unreachable!(),
    };
    bad_workload.addresses = vec![vec![10, 0, 0]];
    let mut dangling = bad_workload.clone();
    dangling.addresses = vec![warren_api::addr::to_bytes("127.31.2.50".parse().unwrap())];
    dangling.name = "dangling".into();
    dangling.authorization_policies = vec!["authorization/demo/nowhere".into()];
    let bad_cert = config::Certificate {
        identity: spiffe("demo", "server"),
        chain_pem: vec![
            "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n".into(),
        ],
        private_key_pem: String::new(),
        ..Default::default()
    };
    let server_id: warren_api::Identity = spiffe("demo", "server").parse().unwrap();
    let good = policy("fine", Action::Deny, vec![]);
    let version = 100;
    server.push(delta(
        version,
        vec![
            res(mesh.server_key.clone(), Kind::Workload(bad_workload)),
            res("workload/demo/dangling", Kind::Workload(dangling)),
            res(
                warren_api::key::certificate(&server_id),
                Kind::Certificate(bad_cert),
            ),
            res("authorization/demo/fine", Kind::Authorization(good)),
            // A kind of a newer agent reads as none at all.
            config::Resource {
                key: "future/demo/x".into(),
                kind: None,
            },
        ],
        vec![],
    ));
    match server.answer(version).await {
        Message::Nack(nack) => {
            let mut refused = nack.refused.clone();
            refused.sort();
            assert_eq!(
                refused,
                vec![
                    warren_api::key::certificate(&server_id),
                    "future/demo/x".to_owned(),
                    "workload/demo/dangling".to_owned(),
                    mesh.server_key.clone(),
                ]
            );
            assert!(
                nack.reason
                    .contains("a kind of resource this build does not know"),
                "{}",
                nack.reason
            );
            assert!(
                nack.reason
                    .contains("addresses: 3 bytes is not an IPv4 or IPv6 address"),
                "{}",
                nack.reason
            );
            assert!(
                nack.reason
                    .contains("unknown policy authorization/demo/nowhere"),
                "{}",
                nack.reason
            );
        }
        other => panic!("expected a NACK, got {other:?}"),
    }
    // The good one was applied; the refused ones kept their last good copies, so the
    // server is still reachable with its old address and certificate.
    let dump = b.state.dump();
    assert!(
        dump["policies"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["key"] == "authorization/demo/fine")
    );
    assert!(
        b.state
            .workload(&mesh.server_key)
            .is_some_and(|w| w.addresses == vec![mesh.server.ip()])
    );
    // A workload naming a policy ztunnel lacks is taken (its old copy would lack a
    // policy just added to it) and every connection to it is refused.
    let dangling = b
        .state
        .workload("workload/demo/dangling")
        .expect("the workload naming an unknown policy is taken");
    let conn = warren_ztunnel::rbac::Connection {
        src_identity: Some(&server_id),
        src_ip: "127.31.1.1".parse().unwrap(),
        dst: "127.31.2.50:8080".parse().unwrap(),
    };
    assert_eq!(
        b.state.authorize(&dangling, &conn).map_err(|d| d.reason()),
        Err("missing_policy")
    );
    assert_eq!(
        round_trip(mesh.client_to(mesh.server).await, b"still here")
            .await
            .unwrap(),
        b"still here"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_pushed_by_the_agent_applies_without_restart() {
    let mut mesh = two_nodes(32).await;
    let (_b, server) = subscribed_b(&mut mesh, 32).await;
    assert_eq!(
        round_trip(mesh.client_to(mesh.server).await, b"before")
            .await
            .unwrap(),
        b"before"
    );

    let deny = policy(
        "deny-client",
        Action::Deny,
        vec![vec![vec![config::Match {
            principals: vec![exact("cluster.local/ns/demo/sa/client")],
            ..Default::default()
        }]]],
    );
    let key = mesh.view.add_policy(deny);
    let server_key = mesh.server_key.clone();
    mesh.view.workload_mut(&server_key).authorization_policies = vec![key.clone()];
    let workload = mesh.view.resources[&server_key].clone();
    server.push(delta(
        200,
        vec![mesh.view.resources[&key].clone(), workload],
        vec![],
    ));
    assert!(matches!(server.answer(200).await, Message::Ack(_)));
    assert!(
        refused(mesh.client_to(mesh.server).await).await,
        "the pushed DENY did not apply"
    );

    // And lifting it works the same way.
    mesh.view.workload_mut(&server_key).authorization_policies = vec![];
    let workload = mesh.view.resources[&server_key].clone();
    server.push(delta(201, vec![workload], vec![key]));
    assert!(matches!(server.answer(201).await, Message::Ack(_)));
    assert_eq!(
        round_trip(mesh.client_to(mesh.server).await, b"after")
            .await
            .unwrap(),
        b"after"
    );
}
