//! DestinationRule `tls` on real handshakes: a loopback server with
//! certificates from a test authority, reached through the connector.

use std::{convert::Infallible, net::SocketAddr, path::Path, sync::Arc};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt as _;
use hyper::{
    server::conn::{http1, http2},
    service::service_fn,
};
use hyper_util::rt::{TokioExecutor, TokioIo};

use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_rustls::TlsAcceptor;
use warren_api::config::Credential;
use warren_model::istio::DestinationRuleSpec;
use warren_testbed::pki::{Authority, Leaf};

use super::{ConnectError, Stream, Upstream};
use crate::proxy::{
    http::full,
    keepalive::KeepAlive,
    lifetime,
    multiplex::{
        Multiplexed,
        tests::{cluster, connector},
    },
};
use crate::upstream::{Credentials, DrInput, Policies, PoolLimits, Scope, Speaks};

const HOST: &str = "api.example.test";
/// The ServiceEntry whose `subjectAltNames` the tests check against.
const ENTRY: &str = "service/egress/serviceentry:api.example.test";

/// What the server saw of a handshake.
#[derive(Debug)]
struct Seen {
    sni: Option<String>,
    alpn: Option<Vec<u8>>,
    client_certificate: bool,
}

type Handshakes = tokio::sync::mpsc::UnboundedReceiver<Result<Seen, String>>;

/// A TLS server on loopback that answers each connection with "hello",
/// asking for a client certificate from `client_ca` if given; each
/// handshake's outcome is sent on the channel.
async fn server(leaf: &Leaf, client_ca: Option<&Authority>) -> (SocketAddr, Handshakes) {
    serve(leaf, client_ca, Speaking::Hello).await
}

/// As [`server`], speaking HTTP/1.1 (200 "ok" to every request) instead.
async fn http_server(leaf: &Leaf) -> (SocketAddr, Handshakes) {
    serve(leaf, None, Speaking::Http1).await
}

/// What a test server says once the handshake is done.
#[derive(Clone, Copy, PartialEq)]
enum Speaking {
    Hello,
    Http1,
    /// HTTP/2, after holding each handshake back 300 ms.
    SlowHttp2,
}

async fn serve(
    leaf: &Leaf,
    client_ca: Option<&Authority>,
    speaking: Speaking,
) -> (SocketAddr, Handshakes) {
    let provider = warren_ztunnel::tls::provider();
    // The leaf and, when an intermediate issued it, the chain after it.
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .expect("server certificates");
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("server key");
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("versions");
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_slice(ca.root_pem.as_bytes()).expect("client root"))
                .expect("root added");
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).expect("server config");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local address");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                if speaking == Speaking::SlowHttp2 {
                    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                }
                match acceptor.accept(tcp).await {
                    Ok(mut tls) => {
                        let (_, session) = tls.get_ref();
                        let seen = Seen {
                            sni: session.server_name().map(str::to_owned),
                            alpn: session.alpn_protocol().map(<[u8]>::to_vec),
                            client_certificate: session.peer_certificates().is_some(),
                        };
                        let _ = tx.send(Ok(seen));
                        let ok = service_fn(|_| async {
                            Ok::<_, Infallible>(Response::new(full(Bytes::from_static(b"ok"))))
                        });
                        match speaking {
                            Speaking::Hello => {
                                let _ = tls.write_all(b"hello").await;
                                let _ = tls.shutdown().await;
                            }
                            Speaking::Http1 => {
                                let _ = http1::Builder::new()
                                    .serve_connection(TokioIo::new(tls), ok)
                                    .await;
                            }
                            Speaking::SlowHttp2 => {
                                let _ = http2::Builder::new(TokioExecutor::new())
                                    .serve_connection(TokioIo::new(tls), ok)
                                    .await;
                            }
                        }
                    }
                    Err(error) => {
                        let _ = tx.send(Err(error.to_string()));
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// The pool limits a DestinationRule for [`HOST`] with `tls` gives, and the
/// problems it reported.
fn limits_for(tls: serde_json::Value) -> (PoolLimits, Vec<String>) {
    limits_with(tls, &Credentials::new())
}

/// [`limits_for`], with the Secrets the agent sent.
fn limits_with(tls: serde_json::Value, credentials: &Credentials) -> (PoolLimits, Vec<String>) {
    limits_at(HOST, tls, credentials)
}

/// [`limits_with`] for a rule of `host` (port 443).
fn limits_at(
    host: &str,
    tls: serde_json::Value,
    credentials: &Credentials,
) -> (PoolLimits, Vec<String>) {
    let spec: DestinationRuleSpec =
        serde_json::from_value(json!({"host": host, "trafficPolicy": {"tls": tls}}))
            .expect("test DestinationRule spec is valid");
    let (policies, errors) = Policies::build_with(
        vec![DrInput {
            namespace: "egress".into(),
            name: "api".into(),
            created: 0,
            host: host.into(),
            spec,
        }],
        Scope {
            namespace: "egress".into(),
            root: "istio-system".into(),
            labels: Default::default(),
        },
        credentials,
    );
    let pool = policies
        .resolve(host, "egress", None, 443)
        .expect("resolves")
        .pool;
    (
        pool,
        errors
            .into_iter()
            .map(|e| format!("{}: {}", e.path, e.reason))
            .collect(),
    )
}

/// `GET /` for [`HOST`], as the HTTP/1.1 pool sends it (origin form, `Host`).
fn get_root() -> Request<crate::app::Body> {
    Request::builder()
        .uri("/")
        .header(http::header::HOST, HOST)
        .body(full(Bytes::new()))
        .expect("request")
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// What TLS agreed on (ALPN).
fn alpn(upstream: Upstream) -> Option<Vec<u8>> {
    let Stream::Tls(tls) = upstream.into_stream() else {
        panic!("the rule starts TLS");
    };
    tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
}

async fn read_all(upstream: Upstream) -> Vec<u8> {
    let Stream::Tls(mut tls) = upstream.into_stream() else {
        panic!("the rule starts TLS");
    };
    let mut got = Vec::new();
    let _ = tls.read_to_end(&mut got).await;
    got
}

#[tokio::test]
async fn simple_checks_the_server_against_the_ca_and_offers_what_it_speaks() {
    let dir = tempdir();
    let ca = Authority::new("egress test root").expect("ca");
    let root = ca.write_root(dir.path(), "root").expect("root written");
    let (addr, mut seen) = server(&ca.server(&[HOST]).expect("leaf"), None).await;
    let (limits, errors) = limits_for(json!({"mode": "SIMPLE", "caCertificates": path(&root)}));
    assert!(errors.is_empty(), "{errors:?}");

    let upstream = connector()
        .connect(addr, &limits, Speaks::Http1)
        .await
        .expect("TLS to a server the CA vouches for");
    let seen_now = seen.recv().await.expect("a handshake").expect("accepted");
    assert_eq!(
        seen_now.sni.as_deref(),
        Some(HOST),
        "the server name is the host"
    );
    assert!(!seen_now.client_certificate);
    assert_eq!(seen_now.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(read_all(upstream).await, b"hello");

    let upstream = connector()
        .connect(addr, &limits, Speaks::Http2)
        .await
        .expect("TLS again");
    assert_eq!(alpn(upstream).as_deref(), Some(&b"h2"[..]));
    let seen_now = seen.recv().await.expect("a handshake").expect("accepted");
    assert_eq!(seen_now.alpn.as_deref(), Some(&b"h2"[..]));
}

#[tokio::test]
async fn a_server_the_rule_does_not_trust_is_refused() {
    let dir = tempdir();
    let ca = Authority::new("egress test root").expect("ca");
    let root = ca.write_root(dir.path(), "root").expect("root written");
    let stranger = Authority::new("someone else").expect("ca");
    let (addr, _seen) = server(&stranger.server(&[HOST]).expect("leaf"), None).await;
    let (limits, _) = limits_for(json!({"mode": "SIMPLE", "caCertificates": path(&root)}));
    let refused = connector().connect(addr, &limits, Speaks::Http1).await;
    assert!(
        matches!(refused, Err(ConnectError::TlsHandshake { .. })),
        "{:?}",
        refused.err()
    );
    // The right CA, but a certificate for another name.
    let (addr, _seen) = server(&ca.server(&["elsewhere.test"]).expect("leaf"), None).await;
    let refused = connector().connect(addr, &limits, Speaks::Http1).await;
    assert!(
        matches!(refused, Err(ConnectError::TlsHandshake { .. })),
        "{:?}",
        refused.err()
    );
}

#[tokio::test]
async fn sni_and_subject_alt_names_say_which_name_is_asked_for_and_accepted() {
    let dir = tempdir();
    let ca = Authority::new("egress test root").expect("ca");
    let root = path(&ca.write_root(dir.path(), "root").expect("root written"));
    let (addr, mut seen) = server(&ca.server(&["backend.internal"]).expect("leaf"), None).await;

    let (limits, _) =
        limits_for(json!({"mode": "SIMPLE", "caCertificates": root, "sni": "backend.internal"}));
    connector()
        .connect(addr, &limits, Speaks::Bytes)
        .await
        .expect("the certificate is for the sni");
    let seen_now = seen.recv().await.expect("a handshake").expect("accepted");
    assert_eq!(seen_now.sni.as_deref(), Some("backend.internal"));
    assert_eq!(seen_now.alpn, None, "TCP routes offer no ALPN");

    // subjectAltNames replace the server name's check.
    let (limits, _) = limits_for(
        json!({"mode": "SIMPLE", "caCertificates": root, "subjectAltNames": ["nope.test", "backend.internal"]}),
    );
    connector()
        .connect(addr, &limits, Speaks::Http1)
        .await
        .expect("one of the subjectAltNames is the certificate's");
    let (limits, _) = limits_for(
        json!({"mode": "SIMPLE", "caCertificates": root, "subjectAltNames": ["nope.test"]}),
    );
    let refused = connector().connect(addr, &limits, Speaks::Http1).await;
    assert!(matches!(refused, Err(ConnectError::TlsHandshake { .. })));

    // insecureSkipVerify: any certificate, even from a stranger.
    let stranger = Authority::new("someone else").expect("ca");
    let (addr, _seen) = server(&stranger.server(&["x.test"]).expect("leaf"), None).await;
    let (limits, _) = limits_for(json!({"mode": "SIMPLE", "insecureSkipVerify": true}));
    let upstream = connector()
        .connect(addr, &limits, Speaks::Http1)
        .await
        .expect("not verified, as asked");
    assert_eq!(read_all(upstream).await, b"hello");
}

#[tokio::test]
async fn mutual_presents_the_client_certificate() {
    let dir = tempdir();
    let ca = Authority::new("egress test root").expect("ca");
    let root = path(&ca.write_root(dir.path(), "root").expect("root written"));
    let clients = Authority::new("clients").expect("ca");
    let client = clients
        .client(&["spiffe://cluster.local/ns/egress/sa/waypoint"])
        .expect("client leaf")
        .write(dir.path(), "client")
        .expect("client written");
    let (addr, mut seen) = server(&ca.server(&[HOST]).expect("leaf"), Some(&clients)).await;

    let (limits, errors) = limits_for(json!({"mode": "MUTUAL", "caCertificates": root,
        "clientCertificate": path(&client.cert), "privateKey": path(&client.key)}));
    assert!(errors.is_empty(), "{errors:?}");
    let upstream = connector()
        .connect(addr, &limits, Speaks::Http1)
        .await
        .expect("mutual TLS");
    let seen_now = seen.recv().await.expect("a handshake").expect("accepted");
    assert!(seen_now.client_certificate);
    assert_eq!(read_all(upstream).await, b"hello");

    // Without it, the server refuses (in TLS 1.3 after the client's side of
    // the handshake is done, so it shows on the server and in the read).
    let (limits, _) = limits_for(json!({"mode": "SIMPLE", "caCertificates": root}));
    if let Ok(upstream) = connector().connect(addr, &limits, Speaks::Http1).await {
        assert_eq!(
            read_all(upstream).await,
            b"",
            "nothing for a client without a certificate"
        );
    }
    let refused = seen.recv().await.expect("a handshake");
    assert!(refused.is_err(), "{refused:?}");
}

#[tokio::test]
async fn settings_it_cannot_honour_refuse_before_connecting() {
    let dir = tempdir();
    let missing = path(&dir.path().join("missing.pem"));
    let ca = Authority::new("egress test root").expect("ca");
    let root = path(&ca.write_root(dir.path(), "root").expect("root written"));
    // Nothing listens here: a refusal naming TLS shows no connect was tried.
    let nowhere: SocketAddr = "127.0.0.1:9".parse().expect("address");
    for (tls, says) in [
        (
            json!({"mode": "SIMPLE", "credentialName": "api-ca"}),
            "credentialName \"api-ca\"",
        ),
        (
            json!({"mode": "SIMPLE", "caCertificates": missing}),
            "caCertificates",
        ),
        (
            json!({"mode": "SIMPLE", "caCertificates": root, "caCrl": missing}),
            "caCrl",
        ),
        (
            json!({"mode": "MUTUAL", "clientCertificate": missing, "privateKey": missing}),
            "clientCertificate",
        ),
    ] {
        let (limits, errors) = limits_for(tls.clone());
        assert!(
            errors.len() == 1
                && errors[0].starts_with("spec.trafficPolicy.tls: ")
                && errors[0].contains(says),
            "{tls}: {errors:?}"
        );
        match connector().connect(nowhere, &limits, Speaks::Http1).await {
            Err(ConnectError::TlsSettings { reason, .. }) => {
                assert!(reason.contains(says), "{reason}")
            }
            other => panic!("{tls}: refused for its settings, not {:?}", other.err()),
        }
    }
    // DISABLE starts nothing; ISTIO_MUTUAL starts nothing either (HBONE is
    // the mesh's mutual TLS) and refuses an endpoint outside the mesh.
    let (limits, errors) = limits_for(json!({ "mode": "DISABLE" }));
    assert!(errors.is_empty() && limits.tls.is_none() && !limits.mesh_tls_only);
    let (limits, errors) = limits_for(json!({ "mode": "ISTIO_MUTUAL" }));
    assert!(errors.is_empty() && limits.tls.is_none() && limits.mesh_tls_only);
    match connector().connect(nowhere, &limits, Speaks::Http1).await {
        Err(error @ ConnectError::OutsideMesh { .. }) => {
            assert!(error.to_string().contains("ISTIO_MUTUAL"), "{error}");
        }
        other => panic!("ISTIO_MUTUAL to a plain endpoint: {:?}", other.err()),
    }
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temporary directory")
}

#[tokio::test]
async fn pooled_connections_are_kept_apart_by_their_tls() {
    let dir = tempdir();
    let ca = Authority::new("egress test root").expect("ca");
    let root = path(&ca.write_root(dir.path(), "root").expect("root written"));
    let (addr, mut seen) =
        http_server(&ca.server(&[HOST, "alias.example.test"]).expect("leaf")).await;
    let (by_host, _) = limits_for(json!({"mode": "SIMPLE", "caCertificates": root}));
    let (by_alias, _) =
        limits_for(json!({"mode": "SIMPLE", "caCertificates": root, "sni": "alias.example.test"}));
    let pool = KeepAlive::new(connector());
    let get = |limits: PoolLimits| {
        let pool = &pool;
        async move {
            let request = get_root();
            let response = pool.send(addr, request, &limits).await.expect("answered");
            response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes()
        }
    };
    let sni = |seen: Option<Result<Seen, String>>| seen.and_then(Result::ok).and_then(|s| s.sni);
    // A connection goes back to the pool once its answer is read.
    let settle = |idle: usize| {
        let pool = &pool;
        async move {
            for _ in 0..200 {
                if pool.idle() == idle {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            panic!("{} idle connections, expected {idle}", pool.idle());
        }
    };
    assert_eq!(get(by_host.clone()).await, "ok");
    settle(1).await;
    assert_eq!(get(by_host.clone()).await, "ok");
    settle(1).await;
    assert_eq!(
        sni(seen.recv().await).as_deref(),
        Some(HOST),
        "one handshake for both"
    );
    // Another cluster's settings (another server name) get a connection of
    // their own, and leave the first one in the pool.
    assert_eq!(get(by_alias.clone()).await, "ok");
    assert_eq!(
        sni(seen.recv().await).as_deref(),
        Some("alias.example.test")
    );
    settle(2).await;
    assert_eq!(get(by_host.clone()).await, "ok");
    settle(2).await;
    assert_eq!(get(by_alias).await, "ok");
    settle(2).await;
    assert!(seen.try_recv().is_err(), "each reused its own connection");
    // Without TLS, the endpoint is never reached over one of those.
    let request = get_root();
    let plain = pool.send(addr, request, &PoolLimits::default()).await;
    assert!(
        plain.is_err(),
        "plain HTTP to a TLS server fails rather than reusing TLS"
    );
}

#[tokio::test]
async fn changed_files_make_different_settings() {
    let dir = tempdir();
    let root = dir.path().join("root.pem");
    let ca = Authority::new("first").expect("ca");
    std::fs::write(&root, &ca.root_pem).expect("root written");
    let tls = json!({"mode": "SIMPLE", "caCertificates": path(&root)});
    let (first, _) = limits_for(tls.clone());
    let (again, _) = limits_for(tls.clone());
    assert_eq!(first.tls, again.tls, "same rule, same files: same settings");
    // Rotated in place: the rule reads the same, the settings do not.
    let rotated = Authority::new("second").expect("ca");
    std::fs::write(&root, &rotated.root_pem).expect("root rewritten");
    let (after, _) = limits_for(tls.clone());
    assert_ne!(first.tls, after.tls);
    // A file that was missing and then appears, likewise.
    std::fs::remove_file(&root).expect("removed");
    let (missing, errors) = limits_for(tls.clone());
    assert_eq!(errors.len(), 1);
    std::fs::write(&root, &ca.root_pem).expect("root back");
    let (back, errors) = limits_for(tls);
    assert!(errors.is_empty());
    assert_ne!(missing.tls, back.tls);
    assert_eq!(back.tls, first.tls);
}

/// A ServiceEntry's `subjectAltNames` check the certificate where the
/// rule lists none, in place of the server name; the rule's own win, and
/// `insecureSkipVerify` still checks nothing.
#[tokio::test]
async fn a_service_entrys_subject_alt_names_stand_in_for_the_rules() {
    let dir = tempdir();
    let ca = Authority::new("egress test root").expect("ca");
    let root = path(&ca.write_root(dir.path(), "root").expect("root written"));
    let (addr, _seen) = server(&ca.server(&[HOST]).expect("leaf"), None).await;
    let with_entry = |tls: serde_json::Value, names: &[&str]| {
        let (mut limits, errors) = limits_for(tls);
        assert!(errors.is_empty(), "{errors:?}");
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        limits.tls = limits.tls.map(|tls| tls.with_entry_names(ENTRY, &names));
        limits
    };
    let simple = json!({"mode": "SIMPLE", "caCertificates": root});

    let limits = with_entry(simple.clone(), &[]);
    connector()
        .connect(addr, &limits, Speaks::Http1)
        .await
        .expect("no names: the server name is checked");
    let unchecked = limits.tls.clone().expect("TLS");
    // Clusters rebuilt with the same names share one config (one verifier,
    // so TLS sessions resume across rebuilds).
    let names = ["other.example.test".to_owned()];
    let config = |tls: &crate::upstream::Origination| {
        tls.clone()
            .with_entry_names(ENTRY, &names)
            .client(Speaks::Http1)
            .expect("a config")
            .0
    };
    assert!(Arc::ptr_eq(&config(&unchecked), &config(&unchecked)));
    assert!(!Arc::ptr_eq(
        &config(&unchecked),
        &unchecked.client(Speaks::Http1).expect("a config").0
    ));

    let limits = with_entry(simple.clone(), &["other.example.test"]);
    let refused = connector().connect(addr, &limits, Speaks::Http1).await;
    assert!(
        matches!(refused, Err(ConnectError::TlsHandshake { .. })),
        "the entry's names replace the server name's check"
    );
    let described = limits.tls.as_ref().expect("TLS").describe();
    assert_eq!(
        described["subject_alt_names"],
        json!(["other.example.test"])
    );
    assert_eq!(described["subject_alt_names_from"], "ServiceEntry");
    // Settings that check other names reach an endpoint another way: they
    // share no pooled connection.
    assert_ne!(limits.tls.as_ref(), Some(&unchecked));

    let limits = with_entry(simple.clone(), &["other.example.test", HOST]);
    connector()
        .connect(addr, &limits, Speaks::Http2)
        .await
        .expect("one of the entry's names is the certificate's");

    let limits = with_entry(
        json!({"mode": "SIMPLE", "caCertificates": root, "subjectAltNames": [HOST]}),
        &["other.example.test"],
    );
    connector()
        .connect(addr, &limits, Speaks::Http1)
        .await
        .expect("the rule's own names win");
    let described = limits.tls.as_ref().expect("TLS").describe();
    assert_eq!(described["subject_alt_names_from"], "DestinationRule");

    let stranger = Authority::new("someone else").expect("ca");
    let (addr, _seen) = server(&stranger.server(&["x.test"]).expect("leaf"), None).await;
    let limits = with_entry(
        json!({"mode": "SIMPLE", "insecureSkipVerify": true}),
        &["other.example.test"],
    );
    connector()
        .connect(addr, &limits, Speaks::Http1)
        .await
        .expect("insecureSkipVerify checks nothing, as asked");
}

#[tokio::test]
async fn subject_alt_names_match_uris_exactly() {
    let dir = tempdir();
    let ca = Authority::new("egress test root").expect("ca");
    let root = path(&ca.write_root(dir.path(), "root").expect("root written"));
    let leaf = ca
        .server_with(
            &[HOST, "*.wild.example.test"],
            &["spiffe://partner.example/api"],
        )
        .expect("leaf");
    let (addr, _seen) = server(&leaf, None).await;
    let (limits, errors) = limits_for(json!({"mode": "SIMPLE", "caCertificates": root,
        "subjectAltNames": ["spiffe://partner.example/api"]}));
    assert!(errors.is_empty(), "{errors:?}");
    connector()
        .connect(addr, &limits, Speaks::Http1)
        .await
        .expect("the certificate carries that URI");
    let (limits, _) = limits_for(json!({"mode": "SIMPLE", "caCertificates": root,
        "subjectAltNames": ["spiffe://partner.example/other"]}));
    let refused = connector().connect(addr, &limits, Speaks::Http1).await;
    assert!(matches!(refused, Err(ConnectError::TlsHandshake { .. })));
    // A wildcard entry equals the certificate's wildcard SAN as written.
    let (limits, _) = limits_for(json!({"mode": "SIMPLE", "caCertificates": root,
        "subjectAltNames": ["*.wild.example.test"]}));
    connector()
        .connect(addr, &limits, Speaks::Http1)
        .await
        .expect("the certificate carries that wildcard name");
}

#[tokio::test]
async fn a_rotated_file_is_compiled_again_without_a_config_change() {
    use crate::tables::Tables;

    let dir = tempdir();
    let root = dir.path().join("root.pem");
    let first = Authority::new("first").expect("ca");
    std::fs::write(&root, &first.root_pem).expect("root written");
    let spec: DestinationRuleSpec = serde_json::from_value(json!({"host": HOST,
        "trafficPolicy": {"tls": {"mode": "SIMPLE", "caCertificates": path(&root)}}}))
    .expect("test DestinationRule spec is valid");
    let tables = Tables::default();
    tables.upsert_destination_rule(
        "egress/api".into(),
        DrInput {
            namespace: "egress".into(),
            name: "api".into(),
            created: 0,
            host: HOST.into(),
            spec,
        },
    );
    let scope = Scope {
        namespace: "egress".into(),
        root: "istio-system".into(),
        labels: Default::default(),
    };
    tables.rebuild(scope);
    let tls_now = |tables: &Tables| {
        tables
            .current()
            .policies
            .resolve(HOST, "egress", None, 443)
            .expect("resolves")
            .pool
            .tls
    };
    let before = tls_now(&tables);
    assert!(!tables.recheck_tls_files(), "nothing changed");
    // cert-manager renews the file in place; no configuration changes.
    let second = Authority::new("second").expect("ca");
    std::fs::write(&root, &second.root_pem).expect("root rewritten");
    assert!(tables.recheck_tls_files());
    assert_ne!(tls_now(&tables), before);
    assert!(
        !tables.recheck_tls_files(),
        "compiled with what is there now"
    );
}

/// With `limits`, a server showing `good` is reached and one showing
/// `revoked` refused for it.
async fn refuses_only_the_revoked(limits: &PoolLimits, good: &Leaf, revoked: &Leaf) {
    let (addr, _seen) = server(good, None).await;
    connector()
        .connect(addr, limits, Speaks::Http1)
        .await
        .expect("a certificate the list does not name");
    let (addr, _seen) = server(revoked, None).await;
    match connector().connect(addr, limits, Speaks::Http1).await {
        Err(ConnectError::TlsHandshake { source, .. }) => {
            assert!(source.to_string().contains("Revoked"), "{source}");
        }
        other => panic!("a revoked certificate: {:?}", other.err()),
    }
}

#[tokio::test]
async fn a_revoked_certificate_is_refused_with_ca_crl() {
    let dir = tempdir();
    let ca = Authority::new("egress test root").expect("ca");
    let root = path(&ca.write_root(dir.path(), "root").expect("root written"));
    let good = ca.server(&[HOST]).expect("leaf");
    let revoked = ca.server(&[HOST]).expect("leaf");
    let crl = dir.path().join("crl.pem");
    std::fs::write(&crl, ca.revocation_list(&[&revoked]).expect("crl")).expect("crl written");
    let (limits, errors) = limits_for(json!({"mode": "SIMPLE", "caCertificates": root,
        "caCrl": path(&crl)}));
    assert!(errors.is_empty(), "{errors:?}");

    refuses_only_the_revoked(&limits, &good, &revoked).await;
    // A list from another authority says nothing of this chain: refused,
    // as Envoy refuses a chain its lists do not all cover.
    let other = Authority::new("someone else").expect("ca");
    std::fs::write(&crl, other.revocation_list(&[]).expect("crl")).expect("crl rewritten");
    let (limits, _) = limits_for(json!({"mode": "SIMPLE", "caCertificates": root,
        "caCrl": path(&crl)}));
    let (addr, _seen) = server(&good, None).await;
    match connector().connect(addr, &limits, Speaks::Http1).await {
        Err(ConnectError::TlsHandshake { source, .. }) => {
            assert!(
                source.to_string().contains("UnknownRevocationStatus"),
                "{source}"
            );
        }
        other => panic!("a chain no list covers: {:?}", other.err()),
    }
    // With a list, the name is still checked.
    std::fs::write(&crl, ca.revocation_list(&[]).expect("crl")).expect("crl rewritten");
    let (limits, _) = limits_for(json!({"mode": "SIMPLE", "caCertificates": root,
        "caCrl": path(&crl)}));
    let (addr, _seen) = server(&ca.server(&["elsewhere.test"]).expect("leaf"), None).await;
    match connector().connect(addr, &limits, Speaks::Http1).await {
        Err(ConnectError::TlsHandshake { source, .. }) => {
            assert!(
                source.to_string().contains("not valid for name"),
                "{source}"
            );
        }
        other => panic!("a certificate for another name: {:?}", other.err()),
    }
}

/// `caCrl` covers the whole chain: with an intermediate, the root's list
/// speaks for the intermediate and the intermediate's for the server. A
/// revoked intermediate, a revoked server, or an intermediate no list
/// speaks for is refused.
#[tokio::test]
async fn revocation_lists_cover_an_intermediate_too() {
    let dir = tempdir();
    let root = Authority::new("egress test root").expect("ca");
    let anchor = path(&root.write_root(dir.path(), "root").expect("root written"));
    let issuing = root.intermediate("egress issuing").expect("intermediate");
    let good = issuing.server(&[HOST]).expect("leaf");
    let revoked_leaf = issuing.server(&[HOST]).expect("leaf");
    let crl = dir.path().join("crl.pem");
    let lists = |root_revokes: &[u64], issuing_revokes: &[&Leaf], with_root: bool| {
        let mut text = issuing.revocation_list(issuing_revokes).expect("crl");
        if with_root {
            text.push_str(&root.revocation_list_of(root_revokes).expect("crl"));
        }
        std::fs::write(&crl, text).expect("crl written");
        let (limits, errors) = limits_for(json!({"mode": "SIMPLE", "caCertificates": anchor,
            "caCrl": path(&crl)}));
        assert!(errors.is_empty(), "{errors:?}");
        limits
    };
    let refused_for = |outcome: Result<_, ConnectError>, reason: &str| match outcome {
        Err(ConnectError::TlsHandshake { source, .. }) => {
            assert!(source.to_string().contains(reason), "{source}");
        }
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("not refused ({reason})"),
    };

    // Both lists, nothing revoked: accepted; the server's own revoked: refused.
    let limits = lists(&[], &[&revoked_leaf], true);
    refuses_only_the_revoked(&limits, &good, &revoked_leaf).await;
    // The intermediate revoked by the root: every server under it refused.
    let limits = lists(&[issuing.serial], &[], true);
    let (addr, _seen) = server(&good, None).await;
    refused_for(
        connector().connect(addr, &limits, Speaks::Http1).await,
        "Revoked",
    );
    // No list from the root: the intermediate's status is unknown.
    let limits = lists(&[], &[], false);
    let (addr, _seen) = server(&good, None).await;
    refused_for(
        connector().connect(addr, &limits, Speaks::Http1).await,
        "UnknownRevocationStatus",
    );
}

#[tokio::test]
async fn an_http2_handshake_is_joined_only_by_requests_of_its_route() {
    let dir = tempdir();
    let ca = Authority::new("egress test root").expect("ca");
    let root = path(&ca.write_root(dir.path(), "root").expect("root written"));
    // Handshakes take 300 ms: a second request comes while the first is made.
    let (addr, mut seen) = serve(
        &ca.server(&[HOST]).expect("leaf"),
        None,
        Speaking::SlowHttp2,
    )
    .await;
    // One cluster asks for a name the certificate does not carry: its
    // handshake fails. Another asks for the right one.
    let (wrong, _) =
        limits_for(json!({"mode": "SIMPLE", "caCertificates": root, "sni": "wrong.example.test"}));
    let (right, _) = limits_for(json!({"mode": "SIMPLE", "caCertificates": root}));
    let pool = Multiplexed::new(connector());
    let get = || {
        Request::get(format!("https://{HOST}/"))
            .body(full(Bytes::new()))
            .expect("request")
    };
    let failing = pool.send(addr, get(), cluster(&wrong, 10));
    let later = async {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        pool.send(addr, get(), cluster(&right, 10)).await
    };
    let (failed, answered) = tokio::join!(failing, later);
    assert!(failed.is_err(), "the misnamed cluster's request fails");
    let (response, _stream) =
        answered.expect("the other cluster's request is not the first's failure");
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(body, "ok");
    // Two handshakes: the misnamed one, refused by the waypoint, and the
    // other cluster's own.
    let handshakes = [seen.recv().await, seen.recv().await];
    let accepted: Vec<_> = handshakes
        .iter()
        .filter_map(|h| h.as_ref().and_then(|h| h.as_ref().ok()))
        .map(|h| h.sni.clone())
        .collect();
    assert_eq!(accepted, vec![Some(HOST.to_owned())], "{handshakes:?}");
}

/// A Secret of the `egress` namespace as the agent sends it.
fn secret(name: &str, chain: &str, key: &str, ca: &str, crl: &str) -> (String, Arc<Credential>) {
    let credential = Credential {
        name: name.into(),
        namespace: "egress".into(),
        certificate_chain: chain.as_bytes().to_vec(),
        private_key: key.as_bytes().to_vec(),
        ca_certificates: ca.as_bytes().to_vec(),
        ca_crl: crl.as_bytes().to_vec(),
    };
    (name.to_owned(), Arc::new(credential))
}

#[tokio::test]
async fn credential_name_takes_the_certificates_from_the_secret_the_agent_sent() {
    let ca = Authority::new("egress test root").expect("ca");
    let clients = Authority::new("clients").expect("ca");
    let client = clients
        .client(&["spiffe://cluster.local/ns/egress/sa/waypoint"])
        .expect("client leaf");
    let (addr, mut seen) = server(&ca.server(&[HOST]).expect("leaf"), Some(&clients)).await;
    let mutual = json!({"mode": "MUTUAL", "credentialName": "partner"});

    // A TLS Secret with its CA: the waypoint presents its certificate and
    // checks the server against its CA.
    let whole: Credentials = [secret(
        "partner",
        &client.cert_pem,
        &client.key_pem,
        &ca.root_pem,
        "",
    )]
    .into();
    let (limits, errors) = limits_with(mutual.clone(), &whole);
    assert!(errors.is_empty(), "{errors:?}");
    let upstream = connector()
        .connect(addr, &limits, Speaks::Http1)
        .await
        .expect("mutual TLS from the Secret");
    let seen_now = seen.recv().await.expect("a handshake").expect("accepted");
    assert!(seen_now.client_certificate);
    assert_eq!(read_all(upstream).await, b"hello");

    // The CA from the `-cacert` companion when the Secret has none.
    let split: Credentials = [
        secret("partner", &client.cert_pem, &client.key_pem, "", ""),
        secret("partner-cacert", "", "", &ca.root_pem, ""),
    ]
    .into();
    let (split_limits, errors) = limits_with(mutual.clone(), &split);
    assert!(errors.is_empty(), "{errors:?}");
    connector()
        .connect(addr, &split_limits, Speaks::Http1)
        .await
        .expect("CA from partner-cacert");
    assert!(seen.recv().await.expect("a handshake").is_ok());

    // Istio's order: the companion's CA wins over the Secret's own (a
    // cert-manager Secret's `ca.crt` is its client certificate's issuer).
    let stranger = Authority::new("someone else").expect("ca");
    let both: Credentials = [
        secret(
            "partner",
            &client.cert_pem,
            &client.key_pem,
            &stranger.root_pem,
            "",
        ),
        secret("partner-cacert", "", "", &ca.root_pem, ""),
    ]
    .into();
    let (both_limits, errors) = limits_with(mutual.clone(), &both);
    assert!(errors.is_empty(), "{errors:?}");
    connector()
        .connect(addr, &both_limits, Speaks::Http1)
        .await
        .expect("CA from partner-cacert, not from partner");
    assert!(seen.recv().await.expect("a handshake").is_ok());

    // Another CA in the Secret: the server is not trusted.
    let wrong_ca: Credentials = [secret(
        "partner",
        &client.cert_pem,
        &client.key_pem,
        &stranger.root_pem,
        "",
    )]
    .into();
    let (wrong_limits, _) = limits_with(mutual.clone(), &wrong_ca);
    let refused = connector()
        .connect(addr, &wrong_limits, Speaks::Http1)
        .await;
    assert!(
        matches!(refused, Err(ConnectError::TlsHandshake { .. })),
        "{:?}",
        refused.err()
    );
    // A renewed Secret makes other settings (new connections), the same
    // one the same (pooled connections shared).
    assert_ne!(limits.tls, wrong_limits.tls);
    assert_eq!(limits.tls, limits_with(mutual.clone(), &whole).0.tls);

    // MUTUAL without a key in the Secret, or without the Secret: refused
    // before connecting, naming what is missing.
    let nowhere: SocketAddr = "127.0.0.1:9".parse().expect("address");
    let keyless: Credentials = [secret("partner", &client.cert_pem, "", &ca.root_pem, "")].into();
    let other: Credentials = [secret(
        "someone-else",
        &client.cert_pem,
        &client.key_pem,
        &ca.root_pem,
        "",
    )]
    .into();
    // Without a CA the server cannot be checked: never against the
    // system's roots instead.
    let caless: Credentials = [secret("partner", &client.cert_pem, &client.key_pem, "", "")].into();
    for (credentials, says) in [
        (keyless, "private key"),
        (other, "sent no Secret"),
        (caless, "no CA"),
    ] {
        let (limits, errors) = limits_with(mutual.clone(), &credentials);
        assert!(errors.len() == 1 && errors[0].contains(says), "{errors:?}");
        match connector().connect(nowhere, &limits, Speaks::Http1).await {
            Err(ConnectError::TlsSettings { reason, .. }) => {
                assert!(reason.contains(says), "{reason}")
            }
            other => panic!("refused for its settings, not {:?}", other.err()),
        }
    }
}

#[tokio::test]
async fn a_credentials_revocation_list_refuses_a_revoked_server() {
    let ca = Authority::new("egress test root").expect("ca");
    let good = ca.server(&[HOST]).expect("leaf");
    let revoked = ca.server(&[HOST]).expect("leaf");
    let crl = ca.revocation_list(&[&revoked]).expect("crl");
    let credentials: Credentials = [secret("partner", "", "", &ca.root_pem, &crl)].into();
    let (limits, errors) = limits_with(
        json!({"mode": "SIMPLE", "credentialName": "partner"}),
        &credentials,
    );
    assert!(errors.is_empty(), "{errors:?}");
    refuses_only_the_revoked(&limits, &good, &revoked).await;
}

/// A BackendTLSPolicy on [`HOST`] (of namespace `egress`), as the agent
/// sends it: `ports` are (port, policy, CA bundle, subjectAltNames, error);
/// a name with a scheme is a URI.
fn backend_tls(ports: &[(u32, &str, &str, &[&str], &str)]) -> warren_api::config::BackendTls {
    warren_api::config::BackendTls {
        namespace: "egress".into(),
        // As DNS compares names.
        hosts: vec![format!("{}.", HOST.to_ascii_uppercase())],
        ports: ports
            .iter()
            .map(
                |&(port, policy, ca, names, error)| warren_api::config::BackendTlsPort {
                    port,
                    policy: policy.into(),
                    hostname: "backend.internal".into(),
                    subject_alt_names: names
                        .iter()
                        .filter(|n| !n.contains("://"))
                        .map(|n| (*n).to_owned())
                        .collect(),
                    uri_subject_alt_names: names
                        .iter()
                        .filter(|n| n.contains("://"))
                        .map(|n| (*n).to_owned())
                        .collect(),
                    ca_certificates: ca.as_bytes().to_vec(),
                    system_roots: ca.is_empty(),
                    error: error.into(),
                },
            )
            .collect(),
    }
}

/// The pool settings for [`HOST`] port 443 of a service in `namespace`,
/// with `rule` (a DestinationRule's spec, if any) and `policy`, and the
/// policies' errors.
fn limits_with_policy(
    rule: Option<serde_json::Value>,
    policy: &warren_api::config::BackendTls,
    namespace: &str,
    port: u16,
) -> (PoolLimits, Vec<String>) {
    let rules = rule.map(|spec| DrInput {
        namespace: "egress".into(),
        name: "api".into(),
        created: 0,
        host: HOST.into(),
        spec: serde_json::from_value(spec).expect("test DestinationRule spec is valid"),
    });
    let (policies, _) = Policies::build(
        rules,
        Scope {
            namespace: "egress".into(),
            root: "istio-system".into(),
            labels: Default::default(),
        },
    );
    let (table, errors) =
        crate::upstream::BackendTlsTable::build([("backendtls/egress/api", policy)]);
    let policies = policies.with_backend_tls(table);
    let pool = policies
        .resolve(HOST, namespace, None, port)
        .expect("resolves")
        .pool;
    (pool, errors.iter().map(ToString::to_string).collect())
}

#[tokio::test]
async fn a_backend_tls_policy_asks_for_its_hostname_and_checks_it_against_its_bundle() {
    let ca = Authority::new("backend root").expect("ca");
    let (addr, mut seen) = server(&ca.server(&["backend.internal"]).expect("leaf"), None).await;
    let policy = backend_tls(&[(0, "egress/api", &ca.root_pem, &[], "")]);
    let (limits, errors) = limits_with_policy(None, &policy, "egress", 443);
    assert!(errors.is_empty(), "{errors:?}");
    let upstream = connector()
        .connect(addr, &limits, Speaks::Http1)
        .await
        .expect("TLS to a server the bundle vouches for");
    let seen_now = seen.recv().await.expect("a handshake").expect("accepted");
    assert_eq!(seen_now.sni.as_deref(), Some("backend.internal"));
    assert_eq!(seen_now.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(read_all(upstream).await, b"hello");
    let described = limits.tls.as_ref().expect("TLS").describe();
    assert_eq!(described["backend_tls_policy"], "egress/api");
    assert_eq!(described["subject_alt_names_from"], "BackendTLSPolicy");
    // A ServiceEntry's names never stand in for the policy's hostname.
    let mut with_entry = limits.clone();
    with_entry.tls = with_entry
        .tls
        .map(|tls| tls.with_entry_names(ENTRY, &["elsewhere.test".to_owned()]));
    connector()
        .connect(addr, &with_entry, Speaks::Http1)
        .await
        .expect("the policy's hostname is still what is checked");

    // Only the target's namespace: a host of that name elsewhere is not it.
    let (elsewhere, _) = limits_with_policy(None, &policy, "other", 443);
    assert!(elsewhere.tls.is_none());

    // Another CA, or the bundle's CA for another name: refused.
    let stranger = Authority::new("someone else").expect("ca");
    let (addr, _seen) = server(&stranger.server(&["backend.internal"]).expect("leaf"), None).await;
    let refused = connector().connect(addr, &limits, Speaks::Http1).await;
    assert!(matches!(refused, Err(ConnectError::TlsHandshake { .. })));
    let (addr, _seen) = server(&ca.server(&[HOST]).expect("leaf"), None).await;
    let refused = connector().connect(addr, &limits, Speaks::Http1).await;
    assert!(
        matches!(refused, Err(ConnectError::TlsHandshake { .. })),
        "the certificate must carry the hostname"
    );
    // subjectAltNames replace the hostname's check, not the name asked for.
    let named = backend_tls(&[(0, "egress/api", &ca.root_pem, &[HOST], "")]);
    let (limits, _) = limits_with_policy(None, &named, "egress", 443);
    let mut seen = {
        let (addr, seen) = server(&ca.server(&[HOST]).expect("leaf"), None).await;
        connector()
            .connect(addr, &limits, Speaks::Http1)
            .await
            .expect("one of the subjectAltNames is the certificate's");
        seen
    };
    let seen_now = seen.recv().await.expect("a handshake").expect("accepted");
    assert_eq!(seen_now.sni.as_deref(), Some("backend.internal"));

    // A URI is one of the certificate's URIs, never its DNS names.
    let identity = "spiffe://cluster.local/ns/egress/sa/api";
    let (addr, _seen) = server(
        &ca.server_with(&["backend.internal"], &[identity])
            .expect("leaf"),
        None,
    )
    .await;
    let (limits, _) = limits_with_policy(
        None,
        &backend_tls(&[(0, "egress/api", &ca.root_pem, &[identity], "")]),
        "egress",
        443,
    );
    connector()
        .connect(addr, &limits, Speaks::Http1)
        .await
        .expect("the certificate carries the URI");
    let other = "spiffe://cluster.local/ns/egress/sa/other";
    let (limits, _) = limits_with_policy(
        None,
        &backend_tls(&[(0, "egress/api", &ca.root_pem, &[other], "")]),
        "egress",
        443,
    );
    let refused = connector().connect(addr, &limits, Speaks::Http1).await;
    assert!(
        matches!(refused, Err(ConnectError::TlsHandshake { .. })),
        "a URI the certificate lacks, though its hostname is there"
    );
}

#[test]
fn targets_sharing_a_host_keep_each_others_ports() {
    let ca = Authority::new("backend root").expect("ca");
    let a = backend_tls(&[(80, "egress/a", &ca.root_pem, &[], "")]);
    let b = backend_tls(&[
        (80, "egress/b80", "", &[], ""),
        (0, "egress/b", "", &[], ""),
    ]);
    let (table, errors) = crate::upstream::BackendTlsTable::build([
        ("backendtls/egress/serviceentry:b", &b),
        ("backendtls/egress/serviceentry:a", &a),
    ]);
    assert!(errors.is_empty(), "{errors:?}");
    let policy_on = |port| {
        table
            .get(HOST, "egress", port)
            .map(|settings| settings.for_host(HOST).describe()["backend_tls_policy"].clone())
    };
    // Port 80: the first target's by key; every other port: the other's.
    assert_eq!(policy_on(80), Some(json!("egress/a")));
    assert_eq!(policy_on(443), Some(json!("egress/b")));
}

#[tokio::test]
async fn a_destination_rules_tls_speaks_before_a_backend_tls_policy() {
    let ca = Authority::new("backend root").expect("ca");
    let policy = backend_tls(&[
        (9000, "egress/admin", "", &[], ""),
        (0, "egress/api", &ca.root_pem, &[], ""),
    ]);
    let tls_of = |rule: Option<serde_json::Value>, port: u16| {
        let (limits, _) = limits_with_policy(rule, &policy, "egress", port);
        limits
            .tls
            .map(|tls| tls.describe()["backend_tls_policy"].clone())
    };
    // Port by port.
    assert_eq!(tls_of(None, 443), Some(json!("egress/api")));
    assert_eq!(tls_of(None, 9000), Some(json!("egress/admin")));
    // A rule that says nothing of TLS leaves it to the policy.
    let balancing = json!({"host": HOST, "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}}});
    assert_eq!(tls_of(Some(balancing), 443), Some(json!("egress/api")));
    // A rule's tls, DISABLE included, is the operator's last word.
    let disabled = json!({"host": HOST, "trafficPolicy": {"tls": {"mode": "DISABLE"}}});
    assert_eq!(tls_of(Some(disabled), 443), None);
    let own = json!({"host": HOST, "trafficPolicy": {"portLevelSettings": [
        {"port": {"number": 443}, "tls": {"mode": "SIMPLE", "insecureSkipVerify": true}}
    ]}});
    assert_eq!(
        tls_of(Some(own.clone()), 443),
        Some(serde_json::Value::Null)
    );
    assert_eq!(tls_of(Some(own), 9000), Some(json!("egress/admin")));
    // A wildcard rule's tls (a mesh-wide ISTIO_MUTUAL, say) gives way to a
    // policy of the host itself.
    let wildcard = |tls: serde_json::Value| {
        let rules = DrInput {
            namespace: "egress".into(),
            name: "mesh-wide".into(),
            created: 0,
            host: "*.test".into(),
            spec: serde_json::from_value(json!({"host": "*.test", "trafficPolicy": {"tls": tls}}))
                .expect("valid"),
        };
        let (policies, _) = Policies::build(
            [rules],
            Scope {
                namespace: "egress".into(),
                root: "istio-system".into(),
                labels: Default::default(),
            },
        );
        let (table, _) = crate::upstream::BackendTlsTable::build([("k", &policy)]);
        let pool = policies
            .with_backend_tls(table)
            .resolve(HOST, "egress", None, 443)
            .expect("resolves")
            .pool;
        (
            pool.tls.map(|t| t.describe()["backend_tls_policy"].clone()),
            pool.mesh_tls_only,
        )
    };
    assert_eq!(
        wildcard(json!({"mode": "ISTIO_MUTUAL"})),
        (Some(json!("egress/api")), false)
    );
    assert_eq!(
        wildcard(json!({"mode": "DISABLE"})),
        (Some(json!("egress/api")), false)
    );
}

#[tokio::test]
async fn a_backend_tls_policy_that_cannot_be_honoured_refuses_its_connections() {
    let ca = Authority::new("backend root").expect("ca");
    let (addr, mut seen) = server(&ca.server(&["backend.internal"]).expect("leaf"), None).await;
    let missing = "ConfigMap egress/api-ca (caCertificateRefs) was not found";
    for (policy, why) in [
        (backend_tls(&[(0, "egress/api", "", &[], missing)]), missing),
        (
            backend_tls(&[(0, "egress/api", "not PEM", &[], "")]),
            "BackendTLSPolicy egress/api (caCertificateRefs): no PEM certificate",
        ),
    ] {
        let (limits, errors) = limits_with_policy(None, &policy, "egress", 443);
        assert!(
            errors.len() == 1 && errors[0].contains(why),
            "reported: {errors:?}"
        );
        let refused = connector().connect(addr, &limits, Speaks::Http1).await;
        assert!(
            matches!(&refused, Err(e) if e.to_string().contains(why)),
            "{:?}",
            refused.err()
        );
    }
    // A connection made now is the first the server sees: the refused
    // ones never reached it.
    let good = backend_tls(&[(0, "egress/api", &ca.root_pem, &[], "")]);
    let (limits, _) = limits_with_policy(None, &good, "egress", 443);
    connector()
        .connect(addr, &limits, Speaks::Http1)
        .await
        .expect("TLS with settings that can be honoured");
    seen.recv().await.expect("a handshake").expect("accepted");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(
        seen.try_recv().is_err(),
        "refused before any connection to the server"
    );
}

#[test]
fn a_backend_tls_policy_starts_nothing_on_the_clients_own_tls() {
    let ca = Authority::new("backend root").expect("ca");
    let policy = backend_tls(&[(0, "egress/api", &ca.root_pem, &[], "")]);
    let (from_policy, _) = limits_with_policy(None, &policy, "egress", 443);
    let rule = json!({"host": HOST, "trafficPolicy": {"tls": {"mode": "SIMPLE", "insecureSkipVerify": true}}});
    let (from_rule, _) = limits_with_policy(Some(rule), &policy, "egress", 443);
    let on = |limits: &PoolLimits, client_tls| {
        crate::proxy::tcp::relaying(limits, client_tls)
            .tls
            .is_some()
    };
    assert!(on(&from_policy, false), "plain bytes of the client's");
    assert!(
        !on(&from_policy, true),
        "the client's own TLS passes through"
    );
    // A DestinationRule's tls is the operator's own word, as before.
    assert!(on(&from_rule, true));
}

/// Sends a request through `pool` and waits for it to hold the answer's
/// connection, idle.
async fn pooled_after_a_request(pool: &KeepAlive, addr: SocketAddr, limits: &PoolLimits) {
    let response = pool.send(addr, get_root(), limits).await.expect("answered");
    response.into_body().collect().await.expect("body");
    for _ in 0..200 {
        if pool.idle() == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(pool.idle(), 1);
}

/// Pooled connections started with a CA bundle since renewed are closed at
/// the pools' next sweep (nothing would take them again; before, they sat
/// idle for up to an hour), while those of settings still asked for stay.
#[tokio::test]
async fn pooled_connections_of_a_renewed_bundle_are_closed() {
    let ca = Authority::new("backend root").expect("ca");
    let next = Authority::new("next root").expect("ca");
    let leaf = ca.server(&["backend.internal"]).expect("leaf");
    let policies = |bundle: &str| {
        let policy = backend_tls(&[(0, "egress/api", bundle, &[], "")]);
        let (table, errors) =
            crate::upstream::BackendTlsTable::build([("backendtls/egress/api", &policy)]);
        assert!(errors.is_empty(), "{errors:?}");
        let scope = Scope {
            namespace: "egress".into(),
            root: "istio-system".into(),
            labels: Default::default(),
        };
        Policies::build(None, scope).0.with_backend_tls(table)
    };
    let before = policies(&ca.root_pem);
    let again = policies(&ca.root_pem);
    let renewed = policies(&format!("{}{}", ca.root_pem, next.root_pem));
    let limits = before
        .resolve(HOST, "egress", None, 443)
        .expect("resolves")
        .pool;
    let now = tokio::time::Instant::now;

    // HTTP/1.1: one idle connection after a request.
    let (addr, _seen) = http_server(&leaf).await;
    let pool = KeepAlive::new(connector());
    pooled_after_a_request(&pool, addr, &limits).await;
    // The same bundle compiled again (any config change does): kept.
    pool.evict(now(), &|tls| again.starts(tls.settings()));
    assert_eq!(
        pool.idle(),
        1,
        "settings that read the same are still asked for"
    );
    pool.evict(now(), &|tls| renewed.starts(tls.settings()));
    assert_eq!(pool.idle(), 0, "the old bundle's connection is closed");

    // HTTP/2 likewise, once its streams are done.
    let (addr, _seen) = serve(&leaf, None, Speaking::SlowHttp2).await;
    let pool = Multiplexed::new(connector());
    let request = Request::get(format!("https://{HOST}/"))
        .body(full(Bytes::new()))
        .expect("request");
    let (response, stream) = pool
        .send(addr, request, cluster(&limits, 10))
        .await
        .expect("answered");
    pool.evict(now(), &|tls| renewed.starts(tls.settings()));
    assert_eq!(pool.connections(), 1, "a stream still runs on it");
    response.into_body().collect().await.expect("body");
    drop(stream);
    pool.evict(now(), &|tls| again.starts(tls.settings()));
    assert_eq!(pool.connections(), 1);
    pool.evict(now(), &|tls| renewed.starts(tls.settings()));
    assert_eq!(
        pool.connections(),
        0,
        "the old bundle's connection is closed"
    );
}

/// Pooled connections that check a ServiceEntry's `subjectAltNames` are
/// closed at the next sweep once the entry lists other names (or is gone):
/// the cluster's new connections check the new names, and nothing would
/// take the old ones again.
#[tokio::test]
async fn pooled_connections_checking_an_entrys_old_names_are_closed() {
    use warren_api::{addr, config};
    use warren_ztunnel::state::{Resource, State, service::Service};

    let dir = tempdir();
    let ca = Authority::new("egress test root").expect("ca");
    let root = path(&ca.write_root(dir.path(), "root").expect("root written"));
    let (addr, _seen) = http_server(&ca.server(&[HOST]).expect("leaf")).await;
    let (mut limits, errors) = limits_for(json!({"mode": "SIMPLE", "caCertificates": root}));
    assert!(errors.is_empty(), "{errors:?}");
    let names = vec![HOST.to_owned()];
    limits.tls = limits.tls.map(|tls| tls.with_entry_names(ENTRY, &names));

    let state = State::new(None, 15008);
    let list = |names: &[String]| {
        let entry = config::Service {
            name: HOST.into(),
            namespace: "egress".into(),
            hostname: HOST.into(),
            vips: vec![addr::to_bytes("240.240.0.1".parse().expect("ip"))],
            subject_alt_names: names.to_vec(),
            ..Default::default()
        };
        let entry = Service::from_proto(ENTRY, entry).expect("an entry");
        state.update(|inner| inner.upsert(ENTRY.into(), Resource::Service(Arc::new(entry))));
    };
    list(&names);

    let pool = KeepAlive::new(connector());
    pooled_after_a_request(&pool, addr, &limits).await;
    let sweep = || {
        pool.evict(tokio::time::Instant::now(), &|tls| {
            lifetime::entry_still_names(tls, &state)
        });
    };
    sweep();
    assert_eq!(pool.idle(), 1, "the entry still lists the names");
    list(&["other.example.test".to_owned()]);
    sweep();
    assert_eq!(pool.idle(), 0, "the old names' connection is closed");

    // Gone altogether: likewise.
    list(&names);
    pooled_after_a_request(&pool, addr, &limits).await;
    state.update(|inner| inner.remove(ENTRY));
    sweep();
    assert_eq!(pool.idle(), 0, "the removed entry's connection is closed");
}

/// A wildcard host without `sni` asks for each request's own host (Istio's
/// auto SNI) and checks the certificate for it; a host not under the
/// wildcard, and a TCP connection (no request to name one), are refused.
#[tokio::test]
async fn a_wildcard_host_asks_for_each_requests_host() {
    let dir = tempdir();
    let ca = Authority::new("wildcard root").expect("ca");
    let root = path(&ca.write_root(dir.path(), "root").expect("root written"));
    let (addr, mut seen) = http_server(&ca.server(&["api.wild.test"]).expect("leaf")).await;
    let tls = json!({ "mode": "SIMPLE", "caCertificates": root });
    let (limits, errors) = limits_at("*.wild.test", tls, &Credentials::new());
    assert!(errors.is_empty(), "{errors:?}");
    let described = limits.tls.as_ref().expect("TLS").describe();
    assert!(described["error"].is_null(), "{described}");
    assert!(
        described["server_name"]
            .as_str()
            .is_some_and(|n| n.contains("each request's host")),
        "{described}"
    );
    // No request: nothing names the server.
    let bytes = connector().connect(addr, &limits, Speaks::Bytes).await;
    assert!(
        bytes.is_err(),
        "a TCP connection to a wildcard host needs sni"
    );

    // The request's host names it, and the certificate must carry it.
    let pool = KeepAlive::new(connector());
    let named = limits.for_request("API.wild.test.");
    assert!(matches!(named, std::borrow::Cow::Owned(_)));
    let response = pool.send(addr, get_root(), &named).await.expect("answered");
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(body, "ok");
    let handshake = seen.recv().await.and_then(Result::ok).expect("a handshake");
    assert_eq!(handshake.sni.as_deref(), Some("api.wild.test"));
    let other = limits.for_request("www.wild.test");
    assert!(
        pool.send(addr, get_root(), &other).await.is_err(),
        "a certificate that does not carry the request's host is refused"
    );
    // Hosts not under the wildcard keep the cluster's settings (refused).
    for host in ["api.other.test", "wild.test", "evilwild.test"] {
        assert!(
            matches!(limits.for_request(host), std::borrow::Cow::Borrowed(_)),
            "{host}"
        );
    }
}

/// Many names under a wildcard host make one HTTP/2 connection each: once
/// their streams are done, the sweep keeps at most
/// [`MAX_IDLE_PER_ENDPOINT`](crate::proxy::lifetime::MAX_IDLE_PER_ENDPOINT)
/// of them.
#[tokio::test]
async fn idle_http2_connections_per_endpoint_are_bounded() {
    use crate::proxy::lifetime::MAX_IDLE_PER_ENDPOINT;
    let dir = tempdir();
    let ca = Authority::new("wildcard root").expect("ca");
    let root = path(&ca.write_root(dir.path(), "root").expect("root written"));
    let leaf = ca.server(&["*.wild.test"]).expect("leaf");
    let (addr, _seen) = serve(&leaf, None, Speaking::SlowHttp2).await;
    let tls = json!({ "mode": "SIMPLE", "caCertificates": root });
    let (limits, _) = limits_at("*.wild.test", tls, &Credentials::new());
    let pool = Multiplexed::new(connector());
    let many = MAX_IDLE_PER_ENDPOINT + 4;
    let sends = (0..many).map(|i| {
        let named = limits.for_request(&format!("h{i}.wild.test")).into_owned();
        let pool = &pool;
        async move {
            let request = Request::get(format!("https://h{i}.wild.test/"))
                .body(full(Bytes::new()))
                .expect("request");
            let (response, stream) = pool
                .send(addr, request, cluster(&named, 10))
                .await
                .expect("answered");
            response.into_body().collect().await.expect("body");
            drop(stream);
        }
    });
    futures::future::join_all(sends).await;
    assert_eq!(pool.connections(), many, "one connection per name");
    pool.evict(tokio::time::Instant::now(), &|_| true);
    assert_eq!(pool.connections(), MAX_IDLE_PER_ENDPOINT);
}
