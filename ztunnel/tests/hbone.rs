//! HBONE between two ztunnels on loopback: round trips, identity checks, authorization,
//! and bad input.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use crate::common::*;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};
use warren_api::{
    Identity,
    config::{self, Action, resource::Kind},
};
use warren_ztunnel::{
    proxy::{
        hbone::client::{self, Establish, HboneError},
        pool::{Pool, PoolKey},
    },
    state::Pick,
    tls::{TrustBundle, WorkloadCertificate},
};

const PAYLOAD: &[u8] = b"hello through the mesh";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hbone_round_trip_carries_bytes_both_ways_and_counts_them() {
    let mesh = two_nodes(11).await;
    // Larger than a window's worth, so flow control and half-close both matter.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let echoed = round_trip(mesh.client_to(mesh.server).await, &big)
        .await
        .unwrap();
    assert_eq!(echoed.len(), big.len());
    assert!(echoed == big, "echoed bytes differ");
    let echoed = round_trip(mesh.client_to(mesh.server).await, PAYLOAD)
        .await
        .unwrap();
    assert_eq!(echoed, PAYLOAD);

    // Both tunnels shared one pooled connection.
    assert_eq!(mesh.a.ztunnel.inputs.pool.connection_count(), 1);

    let source = "reporter=\"source\"";
    let ok = eventually(Duration::from_secs(3), async || {
        let text = mesh.a.metrics().await;
        metric(&text, "istio_tcp_connections_closed_total", &[source]) == 2
    })
    .await;
    assert!(ok, "client side closed count");
    let text = mesh.a.metrics().await;
    let labels = [
        source,
        "source_workload=\"client\"",
        "destination_workload=\"server\"",
        "connection_security_policy=\"mutual_tls\"",
    ];
    assert_eq!(
        metric(&text, "istio_tcp_connections_opened_total", &labels),
        2
    );
    assert_eq!(
        metric(&text, "istio_tcp_sent_bytes_total", &labels),
        (big.len() + PAYLOAD.len()) as u64
    );
    assert_eq!(
        metric(&text, "istio_tcp_received_bytes_total", &labels),
        (big.len() + PAYLOAD.len()) as u64
    );
    assert!(
        text.contains("source_principal=\"spiffe://cluster.local/ns/demo/sa/client\""),
        "{text}"
    );

    let ok = eventually(Duration::from_secs(3), async || {
        let text = mesh.b.metrics().await;
        metric(
            &text,
            "istio_tcp_connections_closed_total",
            &["reporter=\"destination\"", "source_workload=\"client\""],
        ) == 2
    })
    .await;
    assert!(
        ok,
        "server side reports the source workload it learnt from Forwarded + identity"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_counters_read_as_istio_received_is_the_request_sent_the_response() {
    let mesh = two_nodes(25).await;
    // A second server on the server pod's address: takes the whole request, then
    // answers with a short response.
    const REQUEST: usize = 50_000;
    const RESPONSE: &[u8] = b"accepted";
    let listener = TcpListener::bind(SocketAddr::new(mesh.server.ip(), 0))
        .await
        .unwrap();
    let dst = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        stream.read_to_end(&mut request).await.unwrap();
        assert_eq!(request.len(), REQUEST);
        stream.write_all(RESPONSE).await.unwrap();
        stream.shutdown().await.unwrap();
    });
    let response = round_trip(mesh.client_to(dst).await, &vec![7u8; REQUEST])
        .await
        .unwrap();
    assert_eq!(response, RESPONSE);

    for (node, reporter) in [(&mesh.a, "source"), (&mesh.b, "destination")] {
        let labels = [&format!("reporter=\"{reporter}\"")[..]];
        let counted = eventually(Duration::from_secs(3), async || {
            let text = node.metrics().await;
            metric(&text, "istio_tcp_connections_closed_total", &labels) == 1
        })
        .await;
        assert!(counted, "{reporter}: {}", node.metrics().await);
        let text = node.metrics().await;
        assert_eq!(
            (
                metric(&text, "istio_tcp_received_bytes_total", &labels),
                metric(&text, "istio_tcp_sent_bytes_total", &labels)
            ),
            (REQUEST as u64, RESPONSE.len() as u64),
            "{reporter}: (received, sent)"
        );
    }
}

fn certificate(cert: &config::Certificate) -> WorkloadCertificate {
    WorkloadCertificate::from_proto(cert).unwrap()
}

fn bundle(ca: &Ca) -> TrustBundle {
    TrustBundle::from_proto(&config::TrustBundle {
        roots_pem: vec![ca.root_pem.clone()],
    })
    .unwrap()
}

/// A direct HBONE connect from a client holding `cert` and trusting `trust`, to node B,
/// expecting `expected`.
async fn connect_b(
    mesh: &TwoNodes,
    cert: &config::Certificate,
    trust: &TrustBundle,
    expected: &str,
) -> Result<client::Connection, HboneError> {
    let config = test_config("probe", mesh.a.ip, 0);
    client::connect(
        &config,
        mesh.b.hbone(),
        &certificate(cert),
        trust,
        &expected.parse::<Identity>().unwrap(),
    )
    .await
}

async fn refused_metric(node: &Node, reason: &str) -> u64 {
    metric(
        &node.metrics().await,
        "warren_ztunnel_refused_connections_total",
        &[&format!("reason=\"{reason}\"")],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_must_prove_the_expected_identity() {
    let mesh = two_nodes(12).await;
    let client_cert = mesh.view.ca.issue(&spiffe("demo", "client"));
    let trust = bundle(&mesh.view.ca);
    let good = connect_b(&mesh, &client_cert, &trust, &spiffe("demo", "server")).await;
    assert!(good.is_ok(), "{:?}", good.err());

    let wrong = connect_b(&mesh, &client_cert, &trust, &spiffe("demo", "someone-else")).await;
    // B has no certificate for that name, or presents one with another SAN: refused
    // either way.
    assert!(
        matches!(wrong, Err(HboneError::Tls { .. })),
        "{:?}",
        wrong.err()
    );

    // A peer presenting `server`'s valid certificate to a client that expects `client`:
    // the URI SAN check refuses it.
    let server_cert = mesh.view.ca.issue(&spiffe("demo", "server"));
    let chain: Vec<rustls_pki_types::CertificateDer<'static>> =
        certificate(&server_cert).certified.cert.clone();
    let key = rustls_pki_types::PrivateKeyDer::try_from(
        rustls_pki_types::pem::PemObject::from_pem_slice(server_cert.private_key_pem.as_bytes())
            .map(|k: rustls_pki_types::PrivatePkcs8KeyDer| k.secret_pkcs8_der().to_vec())
            .unwrap(),
    )
    .unwrap();
    let mut server_config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    server_config.alpn_protocols = vec![b"h2".to_vec()];
    let listener = tokio::net::TcpListener::bind("127.12.3.1:0").await.unwrap();
    let impostor = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = acceptor.accept(tcp).await;
        }
    });
    let config = test_config("probe", mesh.a.ip, 0);
    let expected: Identity = spiffe("demo", "client").parse().unwrap();
    match client::connect(
        &config,
        impostor,
        &certificate(&client_cert),
        &trust,
        &expected,
    )
    .await
    {
        Err(HboneError::Tls { source, .. }) => {
            assert!(
                source
                    .to_string()
                    .contains("expected spiffe://cluster.local/ns/demo/sa/client"),
                "{source}"
            )
        }
        other => panic!("expected a SAN mismatch, got {:?}", other.err()),
    }
}

/// Connect and open one stream: TLS 1.3 checks the client's certificate after the
/// client's side of the handshake is done, so a refused client learns it here.
async fn tunnel_b(
    mesh: &TwoNodes,
    cert: &config::Certificate,
    trust: &TrustBundle,
    expected: &str,
) -> Result<(), String> {
    let connection = connect_b(mesh, cert, trust, expected)
        .await
        .map_err(|e| e.to_string())?;
    // Closed already when the server's alert arrived first.
    let guard = connection.try_reserve().ok_or("the connection closed")?;
    connection
        .open(
            guard,
            mesh.server,
            None,
            Duration::from_secs(2),
            Establish::AwaitAnswer,
        )
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_expired_and_other_domain_clients_are_refused() {
    let mut mesh = two_nodes(13).await;
    let trust = bundle(&mesh.view.ca);
    let server = spiffe("demo", "server");

    let foreign = Ca::new("someone else's root");
    let foreign_cert = foreign.issue(&spiffe("demo", "client"));
    assert!(
        tunnel_b(
            &mesh,
            &mesh.view.ca.issue(&spiffe("demo", "client")),
            &trust,
            &server
        )
        .await
        .is_ok()
    );
    // Each refusal is counted under the check it failed (TLS 1.3 checks the
    // client's certificate after the client's side of the handshake: the
    // refusal shows on the server).
    let refused = async |reason: &str, case: &str, cert: &config::Certificate| {
        let result = tunnel_b(&mesh, cert, &trust, &server).await;
        assert!(result.is_err(), "{case}: accepted");
        let counted = eventually(Duration::from_secs(3), async || {
            refused_metric(&mesh.b, reason).await == 1
        })
        .await;
        assert!(
            counted,
            "{case}: not refused as {reason}\n{}",
            mesh.b.metrics().await
        );
    };
    refused(
        "tls_certificate_untrusted",
        "a foreign CA's client",
        &foreign_cert,
    )
    .await;
    let now = time::OffsetDateTime::now_utc();
    let expired = mesh.view.ca.issue_between(
        &spiffe("demo", "client"),
        now - time::Duration::hours(3),
        now - time::Duration::hours(1),
    );
    refused(
        "tls_certificate_not_valid_now",
        "an expired client certificate",
        &expired,
    )
    .await;
    let other_domain = mesh
        .view
        .ca
        .issue("spiffe://other.domain/ns/demo/sa/client");
    refused(
        "tls_foreign_trust_domain",
        "another trust domain's client",
        &other_domain,
    )
    .await;
    assert_eq!(refused_metric(&mesh.b, "tls_handshake").await, 0);

    // Once that domain is an alias of the mesh's, its clients are the mesh's.
    mesh.view.put(res(
        warren_api::key::MESH,
        Kind::Mesh(config::MeshSettings {
            trust_domain: TD.into(),
            trust_domain_aliases: vec!["other.domain".into()],
            ..Default::default()
        }),
    ));
    mesh.sync();
    assert_eq!(
        tunnel_b(&mesh, &other_domain, &trust, &server).await,
        Ok(()),
        "an alias's client is refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_a_foreign_or_expired_certificate_is_refused() {
    let mut mesh = two_nodes(14).await;
    let client_cert = mesh.view.ca.issue(&spiffe("demo", "client"));
    let trust = bundle(&mesh.view.ca);
    let server_id: Identity = spiffe("demo", "server").parse().unwrap();
    let key = warren_api::key::certificate(&server_id);

    let foreign = Ca::new("impostor root");
    let mut update = mesh.view.snapshot();
    update.snapshot = false;
    update.upserts = vec![res(
        key.clone(),
        Kind::Certificate(foreign.issue(&server_id.to_string())),
    )];
    assert!(mesh.b.apply(update).is_empty());
    match connect_b(&mesh, &client_cert, &trust, &server_id.to_string()).await {
        Err(HboneError::Tls { source, .. }) => {
            assert!(source.to_string().contains("UnknownIssuer"), "{source}")
        }
        other => panic!(
            "a server with a foreign certificate was accepted: {:?}",
            other.err()
        ),
    }

    let now = time::OffsetDateTime::now_utc();
    let mut update = mesh.view.snapshot();
    update.snapshot = false;
    let expired = mesh.view.ca.issue_between(
        &server_id.to_string(),
        now - time::Duration::hours(3),
        now - time::Duration::hours(1),
    );
    update.upserts = vec![res(key, Kind::Certificate(expired))];
    assert!(mesh.b.apply(update).is_empty());
    match connect_b(&mesh, &client_cert, &trust, &server_id.to_string()).await {
        Err(HboneError::Tls { source, .. }) => {
            assert!(source.to_string().contains("expired"), "{source}")
        }
        other => panic!(
            "a server with an expired certificate was accepted: {:?}",
            other.err()
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_policy_matrix() {
    use config::Match;
    let mut mesh = two_nodes(15).await;
    let port = mesh.server.port();
    let client_principal = "cluster.local/ns/demo/sa/client";
    let m = Match::default;
    // (name, policies, allowed)
    let cases: Vec<(&str, Vec<config::Authorization>, bool)> = vec![
        ("no policy", vec![], true),
        (
            "allow principal",
            vec![policy(
                "p",
                Action::Allow,
                vec![vec![vec![Match {
                    principals: vec![exact(client_principal)],
                    ..m()
                }]]],
            )],
            true,
        ),
        (
            "allow other principal",
            vec![policy(
                "p",
                Action::Allow,
                vec![vec![vec![Match {
                    principals: vec![exact("cluster.local/ns/demo/sa/x")],
                    ..m()
                }]]],
            )],
            false,
        ),
        (
            "allow principal prefix",
            vec![policy(
                "p",
                Action::Allow,
                vec![vec![vec![Match {
                    principals: vec![prefix("cluster.local/ns/demo/")],
                    ..m()
                }]]],
            )],
            true,
        ),
        (
            "allow namespace",
            vec![policy(
                "p",
                Action::Allow,
                vec![vec![vec![Match {
                    namespaces: vec![exact("demo")],
                    ..m()
                }]]],
            )],
            true,
        ),
        (
            "allow other namespace",
            vec![policy(
                "p",
                Action::Allow,
                vec![vec![vec![Match {
                    namespaces: vec![exact("prod")],
                    ..m()
                }]]],
            )],
            false,
        ),
        (
            "allow not_namespaces demo",
            vec![policy(
                "p",
                Action::Allow,
                vec![vec![vec![Match {
                    not_namespaces: vec![exact("demo")],
                    ..m()
                }]]],
            )],
            false,
        ),
        (
            "allow source block",
            vec![policy(
                "p",
                Action::Allow,
                vec![vec![vec![Match {
                    source_ips: vec![cidr("127.15.1.0", 24)],
                    ..m()
                }]]],
            )],
            true,
        ),
        (
            "allow other source block",
            vec![policy(
                "p",
                Action::Allow,
                vec![vec![vec![Match {
                    source_ips: vec![cidr("10.0.0.0", 8)],
                    ..m()
                }]]],
            )],
            false,
        ),
        (
            "allow not_source block",
            vec![policy(
                "p",
                Action::Allow,
                vec![vec![vec![Match {
                    not_source_ips: vec![cidr("127.15.1.2", 32)],
                    ..m()
                }]]],
            )],
            false,
        ),
        (
            "allow destination ip",
            vec![policy(
                "p",
                Action::Allow,
                vec![vec![vec![Match {
                    destination_ips: vec![cidr("127.15.2.2", 32)],
                    ..m()
                }]]],
            )],
            true,
        ),
        (
            "allow port",
            vec![policy(
                "p",
                Action::Allow,
                vec![vec![vec![Match {
                    destination_ports: vec![u32::from(port)],
                    ..m()
                }]]],
            )],
            true,
        ),
        (
            "allow other port",
            vec![policy(
                "p",
                Action::Allow,
                vec![vec![vec![Match {
                    destination_ports: vec![1],
                    ..m()
                }]]],
            )],
            false,
        ),
        (
            "allow not_port",
            vec![policy(
                "p",
                Action::Allow,
                vec![vec![vec![Match {
                    not_destination_ports: vec![u32::from(port)],
                    ..m()
                }]]],
            )],
            false,
        ),
        (
            "allow with no rules",
            vec![policy("p", Action::Allow, vec![])],
            false,
        ),
        (
            "rule needs every clause",
            vec![policy(
                "p",
                Action::Allow,
                vec![vec![
                    vec![Match {
                        principals: vec![presence()],
                        ..m()
                    }],
                    vec![Match {
                        destination_ports: vec![1],
                        ..m()
                    }],
                ]],
            )],
            false,
        ),
        (
            "clause needs any match",
            vec![policy(
                "p",
                Action::Allow,
                vec![vec![vec![
                    Match {
                        destination_ports: vec![1],
                        ..m()
                    },
                    Match {
                        namespaces: vec![exact("demo")],
                        ..m()
                    },
                ]]],
            )],
            true,
        ),
        (
            "deny wins over allow",
            vec![
                policy("allow-all", Action::Allow, vec![vec![]]),
                policy(
                    "deny-demo",
                    Action::Deny,
                    vec![vec![vec![Match {
                        namespaces: vec![exact("demo")],
                        ..m()
                    }]]],
                ),
            ],
            false,
        ),
        (
            "deny not matching",
            vec![policy(
                "d",
                Action::Deny,
                vec![vec![vec![Match {
                    namespaces: vec![exact("prod")],
                    ..m()
                }]]],
            )],
            true,
        ),
        (
            "deny not_principals any",
            vec![policy(
                "d",
                Action::Deny,
                vec![vec![vec![Match {
                    not_principals: vec![presence()],
                    ..m()
                }]]],
            )],
            true,
        ),
        (
            "deny that lost its HTTP conditions",
            vec![policy("d", Action::Deny, vec![vec![vec![m()]]])],
            false,
        ),
    ];
    let server_key = mesh.server_key.clone();
    for (name, policies, allowed) in cases {
        // Drop the previous case's policies, then add this case's.
        mesh.view
            .resources
            .retain(|k, _| !k.starts_with("authorization/"));
        let keys: Vec<String> = policies
            .into_iter()
            .map(|p| mesh.view.add_policy(p))
            .collect();
        mesh.view.workload_mut(&server_key).authorization_policies = keys;
        mesh.sync();
        let result = round_trip(mesh.client_to(mesh.server).await, PAYLOAD).await;
        let passed = matches!(&result, Ok(bytes) if bytes == PAYLOAD);
        assert_eq!(passed, allowed, "case {name:?}: {result:?}");
    }
    assert!(refused_metric(&mesh.b, "not_allowed").await > 0);
    assert!(refused_metric(&mesh.b, "deny_policy").await > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_connect_says_why() {
    let mut mesh = two_nodes(16).await;
    let key = mesh
        .view
        .add_policy(policy("nobody", Action::Allow, vec![]));
    let server_key = mesh.server_key.clone();
    mesh.view.workload_mut(&server_key).authorization_policies = vec![key];
    mesh.sync();
    let id: Identity = spiffe("demo", "client").parse().unwrap();
    let cert = mesh.a.state.certificate(&id).unwrap();
    let trust = mesh.a.state.trust_bundle().unwrap();
    let pool_key = warren_ztunnel::proxy::pool::PoolKey {
        source: id,
        gateway: mesh.b.hbone(),
        expected: spiffe("demo", "server").parse().unwrap(),
    };
    let pool = &mesh.a.ztunnel.inputs.pool;
    let expect_403 = |error: &HboneError| match error {
        HboneError::Status { status, reason, .. } => {
            assert_eq!(*status, StatusCode::FORBIDDEN);
            assert!(
                reason.contains("no ALLOW policy matched (of authorization/demo/nobody)"),
                "{reason}"
            );
        }
        other => panic!("expected 403, got {other}"),
    };
    match pool
        .tunnel(
            &pool_key,
            &cert,
            &trust,
            mesh.server,
            None,
            Establish::AwaitAnswer,
        )
        .await
    {
        Err(error) => expect_403(&error),
        Ok(_) => panic!("expected 403, got a tunnel"),
    }

    // An early tunnel to the denied server, and a client socket pair to splice it with.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let early = || async {
        let tunnel = pool
            .tunnel(
                &pool_key,
                &cert,
                &trust,
                mesh.server,
                None,
                Establish::SendEarly,
            )
            .await
            .expect("an early tunnel opens before the answer");
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        (tunnel, client, accepted)
    };

    // Sending early, the refusal comes while relaying: the client's bytes went nowhere,
    // the client is reset, and the splice says why.
    let (tunnel, mut client, accepted) = early().await;
    client.write_all(b"first bytes").await.unwrap();
    let spliced = tokio::time::timeout(Duration::from_secs(5), tunnel.splice(accepted, 4096))
        .await
        .expect("the refusal ends the splice");
    expect_403(
        spliced
            .failed_connect
            .as_ref()
            .expect("the splice reports the refusal"),
    );
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
        .await
        .expect("the client learns at once");
    assert_eq!(
        read.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset),
        "a refused client is reset, not given an empty answer"
    );

    // A client still uploading when the refusal comes (only its first read may leave
    // before the answer): the splice reports a refusal all the same.
    let (tunnel, client, accepted) = early().await;
    let (_, mut upload) = client.into_split();
    let uploading = tokio::spawn(async move {
        let chunk = vec![0u8; 64 << 10];
        // Ends with an error once the refused connection is reset.
        for _ in 0..1024 {
            if upload.write_all(&chunk).await.is_err() {
                break;
            }
        }
    });
    let spliced = tokio::time::timeout(Duration::from_secs(10), tunnel.splice(accepted, 4096))
        .await
        .expect("the refusal ends the splice");
    expect_403(
        spliced
            .failed_connect
            .as_ref()
            .expect("a refusal during an upload is still a refusal"),
    );
    tokio::time::timeout(Duration::from_secs(10), uploading)
        .await
        .expect("the reset stops the upload")
        .unwrap();
}

/// An h2 client over mTLS to node B that sends whatever request a test makes.
async fn raw_h2(mesh: &TwoNodes) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    raw_h2_at(mesh, mesh.b.hbone()).await.0
}

/// [`raw_h2`] to the HBONE port at `hbone` (a node holding the server's certificate),
/// with the task driving the connection, which ends when the connection does.
async fn raw_h2_at(
    mesh: &TwoNodes,
    hbone: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
) {
    let cert = certificate(&mesh.view.ca.issue(&spiffe("demo", "client")));
    let trust = bundle(&mesh.view.ca);
    let server: Identity = spiffe("demo", "server").parse().unwrap();
    let tls_config = warren_ztunnel::tls::client_config(&cert, &trust, server.clone()).unwrap();
    let tcp = TcpStream::connect(hbone).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(tls_config)
        .connect(warren_ztunnel::tls::server_name_for(&server), tcp)
        .await
        .unwrap();
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(tls))
        .await
        .unwrap();
    (sender, tokio::spawn(connection))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_left_without_streams_is_asked_to_go_away() {
    let mut mesh = two_nodes(27).await;
    // A third node that holds the server's certificate, with a short idle limit.
    let mut config = test_config("node-c", "127.27.3.1".parse().unwrap(), 0);
    config.hbone_idle_timeout = Duration::from_millis(400);
    let state = warren_ztunnel::state::State::new(config.node_name.clone(), config.hbone_port);
    let c = Node::start(config, state).await;
    assert!(c.apply(mesh.view.snapshot()).is_empty());

    for (node, closes) in [(&c, true), (&mesh.b, false)] {
        let (mut sender, connection) = raw_h2_at(&mesh, node.hbone()).await;
        // One stream (refused: not a CONNECT), then none.
        let get = Request::builder()
            .method(Method::GET)
            .uri(format!("http://{}/", mesh.server))
            .body(Empty::new())
            .unwrap();
        let (status, _) = send(&mut sender, get).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let ended = tokio::time::timeout(Duration::from_secs(2), connection).await;
        assert_eq!(
            ended.is_ok(),
            closes,
            "{}: the idle connection {}",
            node.name,
            if closes { "stayed open" } else { "was closed" }
        );
    }
}

async fn send(
    sender: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    request: Request<Empty<Bytes>>,
) -> (StatusCode, String) {
    use http_body_util::BodyExt as _;
    sender.ready().await.unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_tls_session_is_resumed() {
    // A client that would resume if it could (ztunnel's own never tries): each
    // handshake must be a full one, with the client certificate checked again.
    let mesh = two_nodes(24).await;
    let cert = certificate(&mesh.view.ca.issue(&spiffe("demo", "client")));
    let trust = bundle(&mesh.view.ca);
    let server: Identity = spiffe("demo", "server").parse().unwrap();
    let mut resuming =
        (*warren_ztunnel::tls::client_config(&cert, &trust, server.clone()).unwrap()).clone();
    resuming.resumption = rustls::client::Resumption::in_memory_sessions(16);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(resuming));
    for attempt in 0..2 {
        let tcp = TcpStream::connect(mesh.b.hbone()).await.unwrap();
        let tls = connector
            .connect(warren_ztunnel::tls::server_name_for(&server), tcp)
            .await
            .unwrap();
        assert_eq!(
            tls.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Full),
            "handshake {attempt} was not a full one"
        );
        // Read the server's first flight after the handshake (where tickets would be).
        let (mut sender, connection) =
            hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .handshake(TokioIo::new(tls))
                .await
                .unwrap();
        let driver = tokio::spawn(connection);
        let get = Request::builder()
            .method(Method::GET)
            .uri(format!("http://{}/", mesh.server))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let (status, _) = send(&mut sender, get).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        drop(sender);
        driver.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_is_believed_only_for_the_peers_own_workload() {
    let mut mesh = two_nodes(26).await;
    // Only the client pod's address, or an address that is no workload's, may connect.
    let outsider = "127.26.9.9";
    let allow = policy(
        "from-addresses",
        Action::Allow,
        vec![vec![vec![config::Match {
            source_ips: vec![cidr(&mesh.client_ip.to_string(), 32), cidr(outsider, 32)],
            ..Default::default()
        }]]],
    );
    let key = mesh.view.add_policy(allow);
    let server_key = mesh.server_key.clone();
    mesh.view.workload_mut(&server_key).authorization_policies = vec![key];
    mesh.sync();

    // A raw client holding the client's certificate, from an address of its own.
    let mut sender = raw_h2(&mesh).await;
    let connect = |forwarded_for: &str| {
        Request::builder()
            .method(Method::CONNECT)
            .uri(mesh.server.to_string())
            .header("forwarded", format!("for={forwarded_for}"))
            .body(Empty::new())
            .unwrap()
    };
    // Its own pod's address: believed.
    sender.ready().await.unwrap();
    let own = sender
        .send_request(connect(&mesh.client_ip.to_string()))
        .await
        .unwrap();
    assert_eq!(own.status(), StatusCode::OK);
    // An address that is no workload's: not believed, the peer's address stands.
    let (status, body) = send(&mut sender, connect(outsider)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // Another identity's workload: not believed either.
    let (status, body) = send(&mut sender, connect(&mesh.server.ip().to_string())).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors() {
    let mesh = two_nodes(17).await;
    let mut sender = raw_h2(&mesh).await;

    let get = Request::builder()
        .method(Method::GET)
        .uri(format!("http://{}/", mesh.server))
        .body(Empty::new())
        .unwrap();
    let (status, body) = send(&mut sender, get).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("only CONNECT"), "{body}");

    let named = Request::builder()
        .method(Method::CONNECT)
        .uri("example.com:80")
        .body(Empty::new())
        .unwrap();
    let (status, body) = send(&mut sender, named).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("is not an ip:port"), "{body}");

    let elsewhere = Request::builder()
        .method(Method::CONNECT)
        .uri("127.17.9.9:80")
        .body(Empty::new())
        .unwrap();
    let (status, body) = send(&mut sender, elsewhere).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("not a workload of this node"), "{body}");

    // The client pod lives on node A: B must not dial it.
    let not_here = Request::builder()
        .method(Method::CONNECT)
        .uri(format!("{}:80", mesh.client_ip))
        .body(Empty::new())
        .unwrap();
    let (status, _) = send(&mut sender, not_here).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The connection is still good for a proper CONNECT.
    let good = Request::builder()
        .method(Method::CONNECT)
        .uri(mesh.server.to_string())
        .body(Empty::new())
        .unwrap();
    sender.ready().await.unwrap();
    let response = sender.send_request(good).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let text = mesh.b.metrics().await;
    for reason in ["not_connect", "bad_authority", "unknown_destination"] {
        assert!(
            metric(
                &text,
                "warren_ztunnel_refused_connections_total",
                &[&format!("reason=\"{reason}\"")]
            ) >= 1,
            "{reason}: {text}"
        );
    }
}

/// Open connections are checked again when the policies change, as Istio's
/// ztunnel does: a change that still allows them leaves them be; one that
/// refuses them closes them, counted and logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_connections_close_when_the_policies_come_to_refuse_them() {
    use config::Match;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut mesh = two_nodes(62).await;
    let mut open = mesh.client_to(mesh.server).await;
    async fn echo(stream: &mut tokio::net::TcpStream) -> std::io::Result<[u8; 4]> {
        stream.write_all(b"ping").await?;
        let mut back = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(3), stream.read_exact(&mut back))
            .await
            .map_err(|_| std::io::Error::other("no echo in time"))??;
        Ok(back)
    }
    assert_eq!(&echo(&mut open).await.unwrap(), b"ping");

    // A policy that still allows the client: the connection stays.
    let allow = policy(
        "allow-client",
        Action::Allow,
        vec![vec![vec![Match {
            principals: vec![exact("cluster.local/ns/demo/sa/client")],
            ..Match::default()
        }]]],
    );
    let key = mesh.view.add_policy(allow);
    let server_key = mesh.server_key.clone();
    mesh.view.workload_mut(&server_key).authorization_policies = vec![key.clone()];
    mesh.sync();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(&echo(&mut open).await.unwrap(), b"ping", "still allowed");

    // Narrowed to another client: closed, without waiting for the client.
    let narrowed = policy(
        "allow-client",
        Action::Allow,
        vec![vec![vec![Match {
            principals: vec![exact("cluster.local/ns/demo/sa/other")],
            ..Match::default()
        }]]],
    );
    mesh.view.add_policy(narrowed);
    mesh.sync();
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(3), open.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "the refused connection was not closed");
    assert!(
        eventually(Duration::from_secs(3), async || {
            refused_metric(&mesh.b, "policy_changed").await == 1
        })
        .await,
        "counted as closed by a policy change"
    );
    // New connections are refused as before.
    assert!(refused(mesh.client_to(mesh.server).await).await);
}

/// A tunnel reaches only a pod of the mesh: not a pod of the node outside it
/// (nor one on the host network, whose address is the node's), and not a
/// waypoint. Istio's ztunnel checks the target the same way; without it any
/// holder of a mesh certificate could dial the node's own ports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_reaches_only_pods_of_the_mesh() {
    let mut mesh = two_nodes(61).await;
    let node_b: std::net::IpAddr = "127.61.2.1".parse().unwrap();
    let mut listeners = Vec::new();
    for (name, ip, tune) in [
        (
            "outsider",
            "127.61.2.5",
            (|w: &mut config::Workload| {
                w.protocol = config::TunnelProtocol::None.into();
            }) as fn(&mut config::Workload),
        ),
        ("waypoint", "127.61.2.6", |w: &mut config::Workload| {
            w.is_waypoint = true;
        }),
    ] {
        let ip: std::net::IpAddr = ip.parse().unwrap();
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(ip, 0))
            .await
            .unwrap();
        let mut w = workload("demo", name, name, ip, "node-b", node_b);
        tune(&mut w);
        mesh.view.add_workload(w);
        listeners.push(listener);
    }
    mesh.sync();
    let mut sender = raw_h2(&mesh).await;
    for listener in &listeners {
        let target = listener.local_addr().unwrap();
        let connect = Request::builder()
            .method(Method::CONNECT)
            .uri(target.to_string())
            .body(Empty::new())
            .unwrap();
        sender.ready().await.unwrap();
        let (status, body) = send(&mut sender, connect).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{target}: {body}");
        assert!(
            body.contains("outside the mesh") || body.contains("a waypoint"),
            "{body}"
        );
        let accepted = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
        assert!(accepted.is_err(), "{target} was dialled");
    }
    // A pod of the mesh still is.
    let good = Request::builder()
        .method(Method::CONNECT)
        .uri(mesh.server.to_string())
        .body(Empty::new())
        .unwrap();
    sender.ready().await.unwrap();
    let response = sender.send_request(good).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_truncated_and_stalled_peers_are_cut() {
    let mesh = two_nodes(18).await;
    let hbone = mesh.b.hbone();
    let closed_within = |mut stream: TcpStream, limit: Duration| async move {
        let mut buf = [0u8; 256];
        let started = std::time::Instant::now();
        loop {
            match tokio::time::timeout(limit, stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed() < limit,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    };

    // Garbage instead of a ClientHello.
    let mut garbage = TcpStream::connect(hbone).await.unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(
        closed_within(garbage, Duration::from_secs(3)).await,
        "garbage was not cut"
    );

    // A truncated ClientHello: a TLS record header announcing more than is sent.
    let mut truncated = TcpStream::connect(hbone).await.unwrap();
    truncated
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
        .await
        .unwrap();
    assert!(
        closed_within(truncated, Duration::from_secs(3)).await,
        "a truncated hello was not cut"
    );

    // Nothing at all: the handshake timeout (500 ms in tests) cuts it.
    let stalled = TcpStream::connect(hbone).await.unwrap();
    assert!(
        closed_within(stalled, Duration::from_secs(3)).await,
        "a stalled peer was not cut"
    );

    // TLS done, then no CONNECT: the header timeout cuts it.
    let cert = certificate(&mesh.view.ca.issue(&spiffe("demo", "client")));
    let trust = bundle(&mesh.view.ca);
    let server: Identity = spiffe("demo", "server").parse().unwrap();
    let tls_config = warren_ztunnel::tls::client_config(&cert, &trust, server.clone()).unwrap();
    let tcp = TcpStream::connect(hbone).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(tls_config)
        .connect(warren_ztunnel::tls::server_name_for(&server), tcp)
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let cut = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(cut.is_ok(), "a peer that never sent CONNECT was not cut");

    let ok = eventually(Duration::from_secs(3), async || {
        // The truncated hello waits for the rest of its record: a timeout too.
        refused_metric(&mesh.b, "tls_handshake").await >= 1
            && refused_metric(&mesh.b, "tls_handshake_timeout").await >= 2
            && refused_metric(&mesh.b, "connect_header_timeout").await >= 1
    })
    .await;
    assert!(ok, "{}", mesh.b.metrics().await);

    // And B still serves.
    assert_eq!(
        round_trip(mesh.client_to(mesh.server).await, PAYLOAD)
            .await
            .unwrap(),
        PAYLOAD
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hop_to_a_service_with_a_waypoint_is_the_waypoint() {
    let mut mesh = two_nodes(19).await;
    // The "waypoint" is node B's ztunnel with the server's identity: it answers 404 for
    // the VIP, which shows the CONNECT went there with the VIP as authority.
    let vip: SocketAddr = "127.19.100.1:80".parse().unwrap();
    let service = config::Service {
        name: "svc".into(),
        namespace: "demo".into(),
        hostname: "svc.demo.svc.cluster.local".into(),
        vips: vec![warren_api::addr::to_bytes(vip.ip())],
        ports: vec![config::ServicePort {
            port: 80,
            target_port: u32::from(mesh.server.port()),
            ..Default::default()
        }],
        waypoint: Some(config::GatewayAddress {
            workload: mesh.server_key.clone(),
            address: warren_api::addr::to_bytes(mesh.b.hbone().ip()),
            hbone_port: u32::from(mesh.b.hbone().port()),
            identity: spiffe("demo", "server"),
        }),
        ..Default::default()
    };
    mesh.view.put(res(
        warren_api::key::service("demo", "svc"),
        Kind::Service(service),
    ));
    mesh.sync();
    assert!(refused(mesh.client_to(vip).await).await);
    let ok = eventually(Duration::from_secs(3), async || {
        refused_metric(&mesh.b, "unknown_destination").await == 1
            && refused_metric(&mesh.a, "hbone_status").await == 1
    })
    .await;
    assert!(ok, "the CONNECT for the VIP did not reach the waypoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_vip_balances_over_ready_endpoints() {
    let mut mesh = two_nodes(20).await;
    // Two more pods on B that each answer with their name.
    let mut endpoints = Vec::new();
    let mut counters = Vec::new();
    for (i, name) in ["one", "two", "three"].into_iter().enumerate() {
        let ip: std::net::IpAddr = format!("127.20.2.{}", 10 + i).parse().unwrap();
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(ip, 0))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = Arc::clone(&count);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::spawn(async move {
                    let _ = s.write_all(name.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        counters.push(count);
        let key = mesh.view.add_workload(workload(
            "demo",
            &format!("web-{name}"),
            "web",
            ip,
            "node-b",
            "127.20.2.1".parse().unwrap(),
        ));
        endpoints.push(config::Endpoint {
            workload: key,
            address: warren_api::addr::to_bytes(ip),
            // The third is not ready: never picked.
            ready: i < 2,
            ports: [(80, u32::from(addr.port()))].into(),
            ..Default::default()
        });
    }
    let vip: SocketAddr = "127.20.100.1:80".parse().unwrap();
    put_service(&mut mesh.view, "web", vip, endpoints);
    mesh.sync();
    for _ in 0..6 {
        let answer = round_trip(mesh.client_to(vip).await, b"").await.unwrap();
        assert!(answer == b"one" || answer == b"two", "{answer:?}");
    }
    let counts: Vec<usize> = counters
        .iter()
        .map(|c| c.load(std::sync::atomic::Ordering::Relaxed))
        .collect();
    assert_eq!(counts, vec![3, 3, 0]);
    let text = mesh.a.metrics().await;
    assert_eq!(
        metric(
            &text,
            "istio_tcp_connections_opened_total",
            &["destination_service=\"web.demo.svc.cluster.local\""]
        ),
        6
    );
    // The rest of Istio's labels, which dashboards group by.
    for endpoint in ["web-one", "web-two"] {
        let destination_app = format!("destination_app=\"{endpoint}\"");
        let labels = [
            "reporter=\"source\"",
            "source_app=\"client\"",
            "source_version=\"latest\"",
            "source_canonical_revision=\"latest\"",
            "source_cluster=\"Kubernetes\"",
            "destination_service_name=\"web\"",
            "destination_service_namespace=\"demo\"",
            &destination_app,
            "destination_version=\"latest\"",
            "destination_cluster=\"Kubernetes\"",
            "request_protocol=\"tcp\"",
            "response_flags=\"-\"",
        ];
        assert_eq!(
            metric(&text, "istio_tcp_connections_opened_total", &labels),
            3,
            "{endpoint}: {text}"
        );
    }
    // The destination side sees pod addresses, and names the service they serve.
    let text = mesh.b.metrics().await;
    let labels = [
        "reporter=\"destination\"",
        "destination_service=\"web.demo.svc.cluster.local\"",
        "destination_service_name=\"web\"",
        "destination_service_namespace=\"demo\"",
    ];
    assert_eq!(
        metric(&text, "istio_tcp_connections_opened_total", &labels),
        6,
        "{text}"
    );
    // Once the service is gone, its pods serve none.
    let one = mesh
        .b
        .state
        .workload(&warren_api::key::workload("demo", "web-one"))
        .unwrap();
    let port = u16::try_from(endpoints_port(
        &mesh.view,
        &warren_api::key::service("demo", "web"),
    ))
    .unwrap();
    assert!(mesh.b.state.inbound_service(&one, port).is_some());
    mesh.view
        .resources
        .remove(&warren_api::key::service("demo", "web"));
    mesh.sync();
    assert!(mesh.b.state.inbound_service(&one, port).is_none());
}

/// The target port of the first endpoint of a service in the view.
fn endpoints_port(view: &View, key: &str) -> u32 {
    match view.resources.get(key).and_then(|r| r.kind.as_ref()) {
        Some(Kind::Service(s)) => s.endpoints[0].ports[&80],
        _ => panic!("no service {key}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vip_prefers_endpoints_on_the_same_node_when_asked() {
    let mut mesh = two_nodes(21).await;
    let node_ip = |node: &str| -> std::net::IpAddr {
        if node == "node-a" {
            mesh.a.ip
        } else {
            mesh.b.ip
        }
    };
    let mut endpoints = Vec::new();
    for (name, ip, node) in [
        ("local", "127.21.1.20", "node-a"),
        ("remote", "127.21.2.20", "node-b"),
    ] {
        let ip: std::net::IpAddr = ip.parse().unwrap();
        let gateway = node_ip(node);
        let key = mesh.view.add_workload(workload(
            "demo",
            &format!("api-{name}"),
            "api",
            ip,
            node,
            gateway,
        ));
        endpoints.push(config::Endpoint {
            workload: key,
            address: warren_api::addr::to_bytes(ip),
            ready: true,
            ports: [(80, 8080)].into(),
            ..Default::default()
        });
    }
    let vip: SocketAddr = "127.21.100.1:80".parse().unwrap();
    put_service(&mut mesh.view, "api", vip, endpoints.clone());
    mesh.sync();
    let state = Arc::clone(&mesh.a.state);
    let picks = |prefer: bool| -> Vec<bool> {
        (0..8)
            .map(|_| {
                let resolved = state
                    .resolve(vip, None, prefer, Pick::Take)
                    .expect("the VIP resolves");
                matches!(
                    resolved.target,
                    warren_ztunnel::state::Target::Upstream(
                        warren_ztunnel::state::Upstream::SameNode { .. }
                    )
                )
            })
            .collect()
    };
    assert!(
        picks(true).iter().all(|local| *local),
        "with the preference every pick is node A's own endpoint"
    );
    let spread = picks(false);
    assert!(
        spread.iter().any(|l| *l) && spread.iter().any(|l| !*l),
        "without it, round robin over both nodes: {spread:?}"
    );

    // `internalTrafficPolicy: Local`, as the agent sends it: this node's
    // endpoints only, whatever the node-wide setting; none here is no
    // endpoint, not a remote one.
    let node_local = config::LoadBalancing {
        routing_preference: vec![config::load_balancing::Scope::Node as i32],
        mode: config::load_balancing::Mode::Strict as i32,
    };
    put_balanced_service(
        &mut mesh.view,
        "api",
        vip,
        endpoints.clone(),
        Some(node_local.clone()),
    );
    mesh.sync();
    assert!(
        picks(false).iter().all(|local| *local),
        "a node-local Service keeps to node A's endpoint"
    );
    let remote_only: Vec<config::Endpoint> = endpoints
        .iter()
        .filter(|e| e.workload.ends_with("api-remote"))
        .cloned()
        .collect();
    put_balanced_service(&mut mesh.view, "api", vip, remote_only, Some(node_local));
    mesh.sync();
    let refused = state.resolve(vip, None, false, Pick::Take);
    assert!(
        matches!(
            refused,
            Err(warren_ztunnel::state::ResolveError::NoEndpoint(_))
        ),
        "no endpoint on this node: refused, not sent away ({refused:?})"
    );
}

/// Service `name` in namespace demo at `vip` (port 80 → 8080) over `endpoints`.
fn put_service(view: &mut View, name: &str, vip: SocketAddr, endpoints: Vec<config::Endpoint>) {
    put_balanced_service(view, name, vip, endpoints, None);
}

/// [`put_service`] with a closeness preference.
fn put_balanced_service(
    view: &mut View,
    name: &str,
    vip: SocketAddr,
    endpoints: Vec<config::Endpoint>,
    load_balancing: Option<config::LoadBalancing>,
) {
    view.put(res(
        warren_api::key::service("demo", name),
        Kind::Service(config::Service {
            name: name.into(),
            namespace: "demo".into(),
            hostname: format!("{name}.demo.svc.cluster.local"),
            vips: vec![warren_api::addr::to_bytes(vip.ip())],
            ports: vec![config::ServicePort {
                port: 80,
                target_port: 8080,
                ..Default::default()
            }],
            endpoints,
            load_balancing,
            ..Default::default()
        }),
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_shares_a_connection_per_source_identity_up_to_its_stream_limit() {
    let mesh = two_nodes(22).await;
    let mut config = test_config("pool", mesh.a.ip, 0);
    config.pool_max_streams = 2;
    let pool = Pool::new(Arc::new(config));
    let trust = bundle(&mesh.view.ca);
    let client_id = spiffe("demo", "client");
    let other_id = spiffe("demo", "other");
    let client = certificate(&mesh.view.ca.issue(&client_id));
    let other = certificate(&mesh.view.ca.issue(&other_id));
    let key = |source: &str| PoolKey {
        source: source.parse().unwrap(),
        gateway: mesh.b.hbone(),
        expected: spiffe("demo", "server").parse().unwrap(),
    };
    let open = async |source: &str, cert: &WorkloadCertificate| {
        pool.tunnel(
            &key(source),
            cert,
            &trust,
            mesh.server,
            None,
            Establish::AwaitAnswer,
        )
        .await
        .expect("a tunnel to the server")
    };
    let first = open(&client_id, &client).await;
    let second = open(&client_id, &client).await;
    assert_eq!(
        pool.connection_count(),
        1,
        "two streams share one connection"
    );
    let third = open(&client_id, &client).await;
    assert_eq!(
        pool.connection_count(),
        2,
        "a third stream over the limit of 2 opens a second connection"
    );
    let elsewhere = open(&other_id, &other).await;
    assert_eq!(
        pool.connection_count(),
        3,
        "another source identity never rides the client's connections"
    );
    // Streams end with their tunnels; idle connections then go.
    drop((first, second, third, elsewhere));
    let emptied = eventually(Duration::from_secs(3), async || {
        pool.evict_idle(Duration::ZERO);
        pool.connection_count() == 0
    })
    .await;
    assert!(emptied, "{} connections left", pool.connection_count());
}
