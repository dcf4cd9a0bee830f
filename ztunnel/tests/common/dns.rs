//! A DNS server for tests: answers A and AAAA questions from a zone the test
//! changes as it goes.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::{
        RData, Record, RecordType,
        rdata::{A, AAAA},
    },
};
use tokio::net::UdpSocket;

/// Names (with a trailing dot) and their addresses; a test adds names as it learns
/// addresses.
pub type Zone = Arc<Mutex<BTreeMap<&'static str, Vec<IpAddr>>>>;

/// A DNS server over UDP answering A and AAAA questions from `zone` with a TTL of one
/// second; a name it does not hold is NXDOMAIN, and one with no addresses is never
/// answered (a server that stalls).
pub async fn serve(ip: IpAddr, zone: Zone) -> SocketAddr {
    let socket = UdpSocket::bind(SocketAddr::new(ip, 0)).await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buffer = vec![0u8; 4096];
        while let Ok((len, from)) = socket.recv_from(&mut buffer).await {
            let Ok(query) = Message::from_vec(&buffer[..len]) else {
                continue;
            };
            let Some(question) = query.queries.first().cloned() else {
                continue;
            };
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
                Some(addresses) if addresses.is_empty() => continue,
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
            if let Ok(bytes) = answer.to_vec() {
                let _ = socket.send_to(&bytes, from).await;
            }
        }
    });
    addr
}
