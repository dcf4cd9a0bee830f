//! `warren-sample dns`: an authoritative-only DNS server over UDP with a fixed zone, so
//! tests can give names to testbed addresses (a ServiceEntry with `resolution: DNS`)
//! without any DNS outside the testbed.
//!
//! A question for a name of the zone gets its A or AAAA records (none of the other
//! family: an empty answer); any other name gets NXDOMAIN. Each answer is logged, so a
//! test can see which names were asked.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use anyhow::{Context as _, Result, bail};
use hickory_proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::{Name, RData, Record, RecordType, rdata},
};
use tokio::net::UdpSocket;
use tracing::{debug, info};

use crate::shutdown::Shutdown;

pub struct Config {
    pub listen: SocketAddr,
    /// Lower-case names, fully qualified (trailing dot) → their addresses.
    pub zone: BTreeMap<String, Vec<IpAddr>>,
    /// TTL of every record, in seconds.
    pub ttl: u32,
}

/// `NAME=IP`: a record of the zone (repeat a name for several addresses).
pub fn parse_record(text: &str) -> Result<(String, IpAddr), String> {
    let (name, ip) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not NAME=IP"))?;
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| format!("`{ip}` in `{text}` is not an IP address"))?;
    let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
    if name.is_empty() {
        return Err(format!("`{text}` names no host"));
    }
    Ok((format!("{name}."), ip))
}

pub async fn run(config: Config) -> Result<()> {
    if config.zone.is_empty() {
        bail!("no records: give at least one --record NAME=IP");
    }
    let mut shutdown = Shutdown::install()?;
    let socket = UdpSocket::bind(config.listen)
        .await
        .with_context(|| format!("binding the DNS server to {}", config.listen))?;
    info!(addr = %config.listen, names = config.zone.len(), "DNS server listening");
    let mut buffer = vec![0u8; 4096];
    loop {
        let (len, from) = tokio::select! {
            signal = shutdown.recv() => {
                info!(signal, "DNS server stopping");
                return Ok(());
            }
            received = socket.recv_from(&mut buffer) => received.context("reading a query")?,
        };
        let Some(reply) = answer(&config, &buffer[..len]) else {
            debug!(%from, "not a DNS query; ignored");
            continue;
        };
        if let Err(error) = socket.send_to(&reply, from).await {
            debug!(%from, %error, "answer not sent");
        }
    }
}

/// The reply to one datagram, or `None` when it is no query this server answers.
fn answer(config: &Config, datagram: &[u8]) -> Option<Vec<u8>> {
    let query = Message::from_vec(datagram).ok()?;
    if query.metadata.message_type != MessageType::Query {
        return None;
    }
    let question = query.queries.first()?.clone();
    let name = question.name().to_ascii().to_ascii_lowercase();
    let mut reply = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
    reply.metadata.authoritative = true;
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.add_query(question.clone());
    match config.zone.get(&name) {
        Some(addresses) => {
            let records = addresses
                .iter()
                .filter_map(|ip| record(question.name(), question.query_type(), *ip, config.ttl));
            reply.add_answers(records);
        }
        None => reply.metadata.response_code = ResponseCode::NXDomain,
    }
    info!(%name, kind = %question.query_type(), answers = reply.answers.len(), "answered");
    reply.to_vec().ok()
}

/// `ip` as a record answering a question of `kind`, if it is of that family.
fn record(name: &Name, kind: RecordType, ip: IpAddr, ttl: u32) -> Option<Record> {
    let data = match (kind, ip) {
        (RecordType::A, IpAddr::V4(v4)) => RData::A(rdata::A(v4)),
        (RecordType::AAAA, IpAddr::V6(v6)) => RData::AAAA(rdata::AAAA(v6)),
        _ => return None,
    };
    Some(Record::from_rdata(name.clone(), ttl, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let mut zone = BTreeMap::new();
        for text in [
            "API.example=10.1.0.1",
            "api.example.=10.1.0.2",
            "api.example=fd00::1",
        ] {
            let (name, ip) = parse_record(text).expect("a record");
            zone.entry(name).or_insert_with(Vec::new).push(ip);
        }
        Config {
            listen: "127.0.0.1:0".parse().expect("an address"),
            zone,
            ttl: 5,
        }
    }

    fn ask(config: &Config, name: &str, kind: RecordType) -> Message {
        let mut query = Message::query();
        query.add_query(hickory_proto::op::Query::query(
            Name::from_ascii(name).expect("a name"),
            kind,
        ));
        let reply = answer(config, &query.to_vec().expect("encodes")).expect("answered");
        Message::from_vec(&reply).expect("decodes")
    }

    #[test]
    fn answers_the_zone_by_family_and_nxdomain_otherwise() {
        let config = config();
        let a = ask(&config, "Api.Example.", RecordType::A);
        let found: Vec<String> = a.answers.iter().map(|r| r.data.to_string()).collect();
        assert_eq!(found, ["10.1.0.1", "10.1.0.2"]);
        assert_eq!(a.metadata.response_code, ResponseCode::NoError);
        let aaaa = ask(&config, "api.example.", RecordType::AAAA);
        assert_eq!(aaaa.answers.len(), 1);
        let other = ask(&config, "other.example.", RecordType::A);
        assert_eq!(other.metadata.response_code, ResponseCode::NXDomain);
        assert!(other.answers.is_empty());
        assert!(parse_record("no-address").is_err());
        assert!(parse_record("x=not-an-ip").is_err());
    }
}
