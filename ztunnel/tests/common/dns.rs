//! A DNS server for tests: answers A and AAAA questions from a zone the test
//! changes as it goes.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::{
        RData, Record, RecordType,
        rdata::{A, AAAA},
    },
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, UdpSocket},
};

/// Names (with a trailing dot) and their addresses; a test adds names as it learns
/// addresses.
pub type Zone = Arc<Mutex<BTreeMap<&'static str, Vec<IpAddr>>>>;

/// A running test DNS server.
pub struct Server {
    /// UDP and TCP, the same port.
    pub addr: SocketAddr,
    /// Queries it took over TCP.
    pub tcp_queries: Arc<AtomicUsize>,
}

/// A DNS server over UDP answering A and AAAA questions from `zone` with a TTL of one
/// second; a name it does not hold is NXDOMAIN, and one with no addresses is never
/// answered (a server that stalls).
pub async fn serve(ip: IpAddr, zone: Zone) -> SocketAddr {
    serve_both(ip, zone).await.addr
}

/// [`serve`], over TCP too on the same port (two length bytes before each
/// message), counting the TCP queries.
pub async fn serve_both(ip: IpAddr, zone: Zone) -> Server {
    let socket = UdpSocket::bind(SocketAddr::new(ip, 0)).await.unwrap();
    let addr = socket.local_addr().unwrap();
    let listener = TcpListener::bind(addr).await.unwrap();
    let tcp_queries = Arc::new(AtomicUsize::new(0));
    let udp_zone = Arc::clone(&zone);
    tokio::spawn(async move {
        let mut buffer = vec![0u8; 4096];
        while let Ok((len, from)) = socket.recv_from(&mut buffer).await {
            if let Some(bytes) = respond(&udp_zone, &buffer[..len]) {
                let _ = socket.send_to(&bytes, from).await;
            }
        }
    });
    let counter = Arc::clone(&tcp_queries);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (zone, counter) = (Arc::clone(&zone), Arc::clone(&counter));
            tokio::spawn(async move {
                let mut len = [0u8; 2];
                while stream.read_exact(&mut len).await.is_ok() {
                    let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    if stream.read_exact(&mut query).await.is_err() {
                        return;
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    let Some(bytes) = respond(&zone, &query) else {
                        continue;
                    };
                    let mut framed = u16::try_from(bytes.len()).unwrap().to_be_bytes().to_vec();
                    framed.extend_from_slice(&bytes);
                    if stream.write_all(&framed).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Server { addr, tcp_queries }
}

/// The answer to one query; `None` for a name held without addresses (or no query).
fn respond(zone: &Zone, bytes: &[u8]) -> Option<Vec<u8>> {
    let query = Message::from_vec(bytes).ok()?;
    let question = query.queries.first().cloned()?;
    let name = question.name().to_ascii().to_ascii_lowercase();
    let mut answer = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
    answer.metadata.recursion_desired = query.metadata.recursion_desired;
    answer.metadata.recursion_available = true;
    answer.add_query(question.clone());
    let found = zone
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(name.as_str())
        .cloned();
    match found {
        Some(addresses) if addresses.is_empty() => return None,
        Some(addresses) => {
            for ip in addresses {
                let data = match (question.query_type(), ip) {
                    (RecordType::A, IpAddr::V4(v4)) => RData::A(A(v4)),
                    (RecordType::AAAA, IpAddr::V6(v6)) => RData::AAAA(AAAA(v6)),
                    _ => continue,
                };
                answer.add_answer(Record::from_rdata(question.name().clone(), 1, data));
            }
        }
        None => answer.metadata.response_code = ResponseCode::NXDomain,
    }
    answer.to_vec().ok()
}
