//! An HBONE peer slow to answer a CONNECT: the client's first read leaves with
//! the CONNECT and the rest waits for the answer; a peer that never answers is
//! given up on in time, its stream cancelled; a peer that goes away before taking
//! the stream has it sent again, first bytes and all, on a new connection.
//!
//! The peers here are bare HTTP/2 servers over TLS that hold their answer back,
//! so the tests can see what a ztunnel client sends while a destination is slow
//! to accept: a stream filling its window with bytes the peer cannot deliver yet
//! would hold back every other stream of the pooled connection.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use crate::common::*;
use bytes::Bytes;
use http::{Method, Response};
use rustls::sign::SingleCertAndKey;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::oneshot,
};
use warren_api::{Identity, config};
use warren_ztunnel::{
    proxy::{
        hbone::client::Establish,
        pool::{Pool, PoolKey},
    },
    tls::{TrustBundle, WorkloadCertificate},
};

const FIRST: usize = 1000;
const LATER: usize = 3 * 16 * 1024;

/// What the slow peer saw of the one tunnel it served.
#[derive(Debug)]
struct Seen {
    authority: String,
    before_answer: usize,
    after_answer: usize,
}

/// The tests' mesh: a CA, its roots, a client and a server identity.
struct Pki {
    ca: Ca,
    trust: TrustBundle,
    client: String,
    server: String,
}

impl Pki {
    fn new() -> Pki {
        init();
        let ca = Ca::new("mesh root");
        let trust = TrustBundle::from_proto(&config::TrustBundle {
            roots_pem: vec![ca.root_pem.clone()],
        })
        .unwrap();
        Pki {
            ca,
            trust,
            client: spiffe("demo", "client"),
            server: spiffe("demo", "server"),
        }
    }

    fn client_cert(&self) -> WorkloadCertificate {
        WorkloadCertificate::from_proto(&self.ca.issue(&self.client)).unwrap()
    }

    fn server_cert(&self) -> WorkloadCertificate {
        WorkloadCertificate::from_proto(&self.ca.issue(&self.server)).unwrap()
    }

    /// A ztunnel client's pool to the peer at `gateway`, and the key of the
    /// client's connections to it.
    fn pool_to(&self, gateway: SocketAddr, connect_header_timeout: Duration) -> (Pool, PoolKey) {
        let mut config = test_config("node-a", [127, 0, 0, 1].into(), gateway.port());
        config.connect_header_timeout = connect_header_timeout;
        let key = PoolKey {
            source: self.client.parse::<Identity>().unwrap(),
            gateway,
            expected: self.server.parse::<Identity>().unwrap(),
        };
        (Pool::new(Arc::new(config)), key)
    }
}

/// The application's socket pair: the app writes and reads one end, ztunnel splices
/// the other.
async fn app_socket() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (accepted, _) = listener.accept().await.unwrap();
    (app, accepted)
}

/// A loopback listener for an HBONE peer presenting `cert` (TLS 1.3, h2).
async fn h2_peer(
    cert: &WorkloadCertificate,
) -> (TcpListener, tokio_rustls::TlsAcceptor, SocketAddr) {
    let mut tls = rustls::ServerConfig::builder_with_provider(warren_ztunnel::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(Arc::clone(
            &cert.certified,
        ))));
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (
        listener,
        tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
        addr,
    )
}

/// An HBONE peer presenting `cert` that answers its first CONNECT only once
/// `answer` fires; `first_arrived` fires when the first DATA has come.
async fn slow_peer(
    cert: &WorkloadCertificate,
    first_arrived: oneshot::Sender<()>,
    answer: oneshot::Receiver<()>,
) -> (SocketAddr, tokio::task::JoinHandle<Seen>) {
    let (listener, acceptor, addr) = h2_peer(cert).await;
    let served = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = acceptor.accept(tcp).await.unwrap();
        let mut connection = h2::server::handshake(tls).await.unwrap();
        let (request, mut respond) = connection.accept().await.unwrap().unwrap();
        assert_eq!(request.method(), Method::CONNECT);
        let authority = request.uri().to_string();
        // The connection makes progress only while polled.
        tokio::spawn(async move { while connection.accept().await.is_some() {} });

        let mut body = request.into_body();
        let take = async |body: &mut h2::RecvStream| match body.data().await {
            Some(Ok(data)) => {
                let _ = body.flow_control().release_capacity(data.len());
                Some(data.len())
            }
            _ => None,
        };
        let mut before_answer = take(&mut body).await.expect("early data");
        let _ = first_arrived.send(());
        let mut answer = answer;
        loop {
            tokio::select! {
                _ = &mut answer => break,
                more = take(&mut body) => before_answer += more.expect("the tunnel stays open"),
            }
        }
        let mut send = respond
            .send_response(Response::new(()), false)
            .expect("answering");
        let mut after_answer = 0;
        while let Some(n) = take(&mut body).await {
            after_answer += n;
        }
        send.send_data(Bytes::new(), true).unwrap();
        Seen {
            authority,
            before_answer,
            after_answer,
        }
    });
    (addr, served)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_first_read_leaves_before_the_answer() {
    let pki = Pki::new();
    let (first_tx, first_rx) = oneshot::channel();
    let (answer_tx, answer_rx) = oneshot::channel();
    let (gateway, peer) = slow_peer(&pki.server_cert(), first_tx, answer_rx).await;

    let (pool, key) = pki.pool_to(gateway, Duration::from_secs(10));
    let destination: SocketAddr = "10.1.2.3:8080".parse().unwrap();
    let tunnel = pool
        .tunnel(
            &key,
            &pki.client_cert(),
            &pki.trust,
            destination,
            None,
            Establish::SendEarly,
        )
        .await
        .expect("an early tunnel opens before the answer");

    let (mut app, accepted) = app_socket().await;
    app.write_all(&[1u8; FIRST]).await.unwrap();
    let splice = tokio::spawn(tunnel.splice(accepted, 64 << 10));

    tokio::time::timeout(Duration::from_secs(5), first_rx)
        .await
        .expect("the first read leaves before the answer")
        .unwrap();
    // More from the application while the peer still has not answered; none of
    // it may leave yet. A client that sent it would have it at the peer within
    // milliseconds on loopback.
    app.write_all(&[2u8; LATER]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    answer_tx.send(()).unwrap();
    app.shutdown().await.unwrap();

    let seen = tokio::time::timeout(Duration::from_secs(10), peer)
        .await
        .expect("the tunnel ends")
        .unwrap();
    assert_eq!(seen.authority, destination.to_string());
    assert_eq!(
        seen.before_answer, FIRST,
        "only the first read goes out before the answer: {seen:?}"
    );
    assert_eq!(
        seen.after_answer, LATER,
        "the rest follows the answer: {seen:?}"
    );
    let spliced = tokio::time::timeout(Duration::from_secs(10), splice)
        .await
        .expect("the splice ends with the stream")
        .unwrap();
    assert!(spliced.failed_connect.is_none(), "{spliced:?}");
    assert_eq!(spliced.to_tunnel, (FIRST + LATER) as u64);
    assert!(!spliced.sent_again);
}

/// An HBONE peer that takes one CONNECT and never answers it; the task ends
/// with how the client left the stream.
async fn silent_peer(
    cert: &WorkloadCertificate,
) -> (SocketAddr, tokio::task::JoinHandle<Option<h2::Reason>>) {
    let (listener, acceptor, addr) = h2_peer(cert).await;
    let served = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = acceptor.accept(tcp).await.unwrap();
        let mut connection = h2::server::handshake(tls).await.unwrap();
        let (_request, mut respond) = connection.accept().await.unwrap().unwrap();
        tokio::spawn(async move { while connection.accept().await.is_some() {} });
        std::future::poll_fn(|cx| respond.poll_reset(cx)).await.ok()
    });
    (addr, served)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_without_an_answer_fails_in_time_and_cancels_its_stream() {
    let pki = Pki::new();
    let (gateway, peer) = silent_peer(&pki.server_cert()).await;

    let (pool, key) = pki.pool_to(gateway, Duration::from_millis(300));
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(5),
        pool.tunnel(
            &key,
            &pki.client_cert(),
            &pki.trust,
            "10.1.2.3:8080".parse().unwrap(),
            None,
            Establish::AwaitAnswer,
        ),
    )
    .await
    .expect("the client gives up by itself, not by the test's timeout");
    let error = result.err().expect("a CONNECT without an answer must fail");
    assert!(
        error.to_string().contains("no answer in time"),
        "the error says why: {error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "gave up after {:?}",
        started.elapsed()
    );
    // The peer sees the stream cancelled: nothing is left waiting on it.
    let reset = tokio::time::timeout(Duration::from_secs(5), peer)
        .await
        .expect("the stream ends at the peer")
        .unwrap();
    assert!(reset.is_some(), "the abandoned stream is reset");
}

/// HTTP/2 frame types and flags the going-away peer reads and writes by hand.
const DATA: u8 = 0x0;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const ACK: u8 = 0x1;

fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut frame = vec![len[1], len[2], len[3], kind, flags, 0, 0, 0, 0];
    frame.extend_from_slice(payload);
    frame
}

/// An HBONE peer whose first connection goes away (GOAWAY, last stream 0, no
/// error) once the first CONNECT's early bytes arrive: the stream was on its way
/// before the client knew, and the peer never took it (h2's own server counts any
/// stream it has seen as taken, hence the frames by hand). The second connection
/// answers and echoes. The task ends with the early bytes the first connection got
/// and everything the second one got.
async fn going_away_peer(
    cert: &WorkloadCertificate,
) -> (SocketAddr, tokio::task::JoinHandle<(usize, Vec<u8>)>) {
    let (listener, acceptor, addr) = h2_peer(cert).await;
    let served = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut first = acceptor.accept(tcp).await.unwrap();
        first.write_all(&frame(SETTINGS, 0, &[])).await.unwrap();
        let mut preface = [0u8; 24];
        first.read_exact(&mut preface).await.unwrap();
        assert_eq!(&preface[..], b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        let early = loop {
            let mut head = [0u8; 9];
            first.read_exact(&mut head).await.unwrap();
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            first.read_exact(&mut payload).await.unwrap();
            match (head[3], head[4] & ACK) {
                (SETTINGS, 0) => first.write_all(&frame(SETTINGS, ACK, &[])).await.unwrap(),
                (DATA, _) => break len,
                _ => {}
            }
        };
        // Last stream 0 (none taken), NO_ERROR: a graceful drain that the stream
        // crossed on the wire.
        first.write_all(&frame(GOAWAY, 0, &[0; 8])).await.unwrap();
        first.flush().await.unwrap();
        // Open until the client lets go of it.
        tokio::spawn(async move {
            let mut sink = [0u8; 1024];
            while matches!(first.read(&mut sink).await, Ok(n) if n > 0) {}
        });

        let (tcp, _) = listener.accept().await.unwrap();
        let tls = acceptor.accept(tcp).await.unwrap();
        let mut connection = h2::server::handshake(tls).await.unwrap();
        let (request, mut respond) = connection.accept().await.unwrap().unwrap();
        tokio::spawn(async move { while connection.accept().await.is_some() {} });
        let mut body = request.into_body();
        let mut send = respond
            .send_response(Response::new(()), false)
            .expect("answering");
        let mut got = Vec::new();
        while let Some(Ok(data)) = body.data().await {
            let _ = body.flow_control().release_capacity(data.len());
            got.extend_from_slice(&data);
            send.send_data(data, false).unwrap();
        }
        send.send_data(Bytes::new(), true).unwrap();
        (early, got)
    });
    (addr, served)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_the_peer_went_away_before_is_sent_again_first_bytes_and_all() {
    let pki = Pki::new();
    let (gateway, peer) = going_away_peer(&pki.server_cert()).await;
    let (pool, key) = pki.pool_to(gateway, Duration::from_secs(10));
    let tunnel = pool
        .tunnel(
            &key,
            &pki.client_cert(),
            &pki.trust,
            "10.1.2.3:8080".parse().unwrap(),
            None,
            Establish::SendEarly,
        )
        .await
        .expect("an early tunnel opens before the answer");

    let (mut app, accepted) = app_socket().await;
    let splice = tokio::spawn(tunnel.splice(accepted, 64 << 10));
    let exchange = async {
        app.write_all(&[1u8; FIRST]).await?;
        let mut echo = vec![0u8; FIRST];
        app.read_exact(&mut echo).await?;
        app.write_all(&[2u8; LATER]).await?;
        app.shutdown().await?;
        app.read_to_end(&mut echo).await?;
        std::io::Result::Ok(echo)
    };
    let echo = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("the tunnel carried on through the second connection")
        .expect("the client saw no failure");
    let mut sent = vec![1u8; FIRST];
    sent.extend_from_slice(&[2u8; LATER]);
    assert!(
        echo == sent,
        "echoed {} bytes, not what was sent",
        echo.len()
    );

    let (early, got) = tokio::time::timeout(Duration::from_secs(10), peer)
        .await
        .expect("the peer is done")
        .unwrap();
    assert_eq!(
        early, FIRST,
        "the first bytes left early on the first connection"
    );
    assert!(
        got == sent,
        "the second connection got each byte once: {} bytes",
        got.len()
    );
    let spliced = splice.await.unwrap();
    assert!(spliced.failed_connect.is_none(), "{spliced:?}");
    assert!(spliced.error.is_none(), "{spliced:?}");
    assert_eq!(spliced.to_tunnel, sent.len() as u64);
    assert!(
        spliced.sent_again,
        "the splice says it sent the stream again"
    );
    assert_eq!(
        pool.connection_count(),
        1,
        "the connection that went away is retired"
    );
}
