//! DNS over TCP (RFC 7766): a pod's connection to port 53, sent here by the
//! connect hook. Queries, each after its two length bytes, are answered in
//! turn; forwarded ones go to the node's DNS servers over TCP too, and a zone
//! transfer's answers are relayed until the server ends them.
//!
//! Bounded so that no pod, nor anyone reaching the port from off the node, can
//! take the descriptors the node's connections need: [`MAX_CONNECTIONS`] at
//! once, [`MAX_PER_SOURCE`] from one address, [`MAX_WAITING`] from addresses
//! ztunnel does not know yet, each closed after [`IDLE`] without a query or
//! with an answer it does not read.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use simple_dns::{Packet, QTYPE};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::timeout,
};
use tracing::{debug, info, warn};

use super::{FORWARD_TIMEOUT, Reply, Transport, answer_pod};
use crate::{
    dns::{exchange_tcp, read_message, write_message},
    drain,
    proxy::{Inputs, accept_loop, reset},
};

/// DNS connections open at once.
const MAX_CONNECTIONS: usize = 256;
/// DNS connections open at once from one address.
const MAX_PER_SOURCE: usize = 16;
/// Connections from addresses of no pod of this node (yet) waiting at once
/// for the agent's update: a pod captured as its sandbox was built asks
/// before ztunnel knows it, but so can anyone reaching the port.
const MAX_WAITING: usize = 16;
/// How long a connection may stay quiet between queries, or leave an answer
/// unread: resolvers send theirs at once.
const IDLE: Duration = Duration::from_secs(10);
/// A zone transfer's server silent this long after its first message has
/// sent them all.
const TRANSFER_PAUSE: Duration = Duration::from_secs(1);

/// Answers DNS over TCP on `listener` until draining starts.
pub async fn serve(inputs: Arc<Inputs>, listener: TcpListener, drain: drain::Watch) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "DNS proxy (TCP) ready");
    }
    let limits = Arc::new(Limits::new());
    let waiting = Arc::new(Semaphore::new(MAX_WAITING));
    accept_loop(listener, drain, "DNS proxy", move |client, peer, drain| {
        let inputs = Arc::clone(&inputs);
        let slot = limits.take(peer.ip().to_canonical());
        let waiting = Arc::clone(&waiting);
        async move {
            match slot {
                Some(_slot) => serve_connection(&inputs, &waiting, client, peer, drain).await,
                None => {
                    inputs.metrics.dns_query("tcp", "overloaded");
                    debug!(%peer, "DNS proxy: too many connections; reset one");
                    reset(client);
                }
            }
        }
    })
    .await;
}

/// One pod's connection, until it closes, stays quiet, sends what is not a
/// query, or draining starts.
async fn serve_connection(
    inputs: &Inputs,
    waiting: &Arc<Semaphore>,
    mut client: TcpStream,
    peer: SocketAddr,
    mut drain: drain::Watch,
) {
    let metrics = &inputs.metrics;
    // As over UDP: this node's pods only, a newcomer's update waited for,
    // by a few connections at a time (anyone can reach the port).
    let ip = peer.ip().to_canonical();
    let pod = match inputs.state.local_workload_by_ip(ip) {
        Some(pod) => Some(pod),
        None => match Arc::clone(waiting).try_acquire_owned() {
            Ok(_waiting) => {
                inputs
                    .state
                    .wait_for(inputs.config.catch_up_wait, |s| s.local_workload_by_ip(ip))
                    .await
            }
            Err(_) => None,
        },
    };
    let Some(pod) = pod else {
        metrics.dns_query("tcp", "dropped");
        debug!(%peer, "DNS proxy: a TCP connection from no pod of this node; reset");
        return reset(client);
    };
    loop {
        let read = tokio::select! {
            read = timeout(IDLE, read_message(&mut client)) => read,
            () = drain.draining() => return,
        };
        let query = match read {
            Ok(Ok(Some(query))) => query,
            Ok(Ok(None)) => return,
            Ok(Err(error)) => return debug!(%peer, %error, "DNS proxy: reading a TCP query"),
            Err(_) => return debug!(%peer, "DNS proxy: a TCP connection stayed idle; closed"),
        };
        let answered = match answer_pod(inputs, &pod, &query, Transport::Tcp) {
            Reply::Answer(bytes) => {
                metrics.dns_query("tcp", "mesh");
                send(&mut client, &bytes).await
            }
            Reply::Forward => {
                metrics.dns_query("tcp", "forwarded");
                forward(inputs, &mut client, &query).await
            }
            Reply::Drop(why) => {
                metrics.dns_query("tcp", "dropped");
                return debug!(%peer, %why, "DNS proxy: closed a TCP connection");
            }
            // The pod is known: looked up above.
            Reply::Unknown => return,
        };
        if let Err(error) = answered {
            return debug!(%peer, %error, "DNS proxy: answering over TCP");
        }
    }
}

/// One message to the client, which must take it within [`IDLE`].
async fn send(client: &mut TcpStream, message: &[u8]) -> std::io::Result<()> {
    timeout(IDLE, write_message(client, message))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "the answer went unread"))?
}

/// Asks the node's DNS servers in turn and relays the first answer; an error
/// (and the connection closed) when none answers, so the resolver tries its
/// next server.
async fn forward(inputs: &Inputs, client: &mut TcpStream, query: &[u8]) -> std::io::Result<()> {
    let servers =
        inputs.dns.servers().await.map_err(|error| {
            std::io::Error::other(format!("nowhere to forward a query: {error}"))
        })?;
    if is_zone_transfer(query) {
        return match servers.first() {
            Some(server) => transfer(*server, client, query).await,
            None => Err(std::io::Error::other("no DNS server")),
        };
    }
    for server in servers {
        match timeout(FORWARD_TIMEOUT, exchange_tcp(*server, query)).await {
            Ok(Ok(answer)) => return send(client, &answer).await,
            Ok(Err(error)) => debug!(%server, %error, "DNS proxy: forwarding over TCP"),
            Err(_) => debug!(%server, "DNS proxy: forwarding over TCP timed out"),
        }
    }
    warn!("DNS proxy: no DNS server answered a query forwarded over TCP");
    Err(std::io::Error::other("no DNS server answered"))
}

/// AXFR and IXFR: answered in many messages, not one.
fn is_zone_transfer(query: &[u8]) -> bool {
    Packet::parse(query).is_ok_and(|packet| {
        packet
            .questions
            .iter()
            .any(|q| matches!(q.qtype, QTYPE::AXFR | QTYPE::IXFR))
    })
}

/// Relays a zone transfer's messages from `server`: until it closes, or,
/// once it has sent some, until it pauses for [`TRANSFER_PAUSE`] (servers
/// keep the connection open after the last one).
async fn transfer(server: SocketAddr, client: &mut TcpStream, query: &[u8]) -> std::io::Result<()> {
    let mut upstream = timeout(FORWARD_TIMEOUT, TcpStream::connect(server))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connecting"))??;
    write_message(&mut upstream, query).await?;
    let mut wait = FORWARD_TIMEOUT;
    loop {
        match timeout(wait, read_message(&mut upstream)).await {
            Ok(Ok(Some(message))) => send(client, &message).await?,
            Ok(Ok(None)) => return Ok(()),
            Ok(Err(error)) => return Err(error),
            Err(_) if wait == TRANSFER_PAUSE => return Ok(()),
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the server did not answer the transfer",
                ));
            }
        }
        wait = TRANSFER_PAUSE;
    }
}

/// The connections open, in all and per source address.
struct Limits {
    all: Arc<Semaphore>,
    per_source: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Limits {
    fn new() -> Limits {
        Limits {
            all: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            per_source: Arc::default(),
        }
    }

    /// A slot for one more connection from `source`, if within both limits.
    fn take(&self, source: IpAddr) -> Option<Slot> {
        let all = Arc::clone(&self.all).try_acquire_owned().ok()?;
        let mut counts = self.per_source.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(source).or_default();
        if *count >= MAX_PER_SOURCE {
            return None;
        }
        *count += 1;
        Some(Slot {
            _all: all,
            source,
            per_source: Arc::clone(&self.per_source),
        })
    }
}

/// Held while a connection is served; gives its places back when dropped.
struct Slot {
    _all: OwnedSemaphorePermit,
    source: IpAddr,
    per_source: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.per_source.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_bounded_per_source_and_in_all() {
        let limits = Limits::new();
        let source = |i: usize| IpAddr::from([10, 0, 0, u8::try_from(i).unwrap()]);
        let held: Vec<Slot> = (0..MAX_PER_SOURCE)
            .map_while(|_| limits.take(source(0)))
            .collect();
        assert_eq!(held.len(), MAX_PER_SOURCE);
        assert!(
            limits.take(source(0)).is_none(),
            "one source past its share"
        );
        let others: Vec<Slot> = (1..)
            .take(MAX_CONNECTIONS / MAX_PER_SOURCE - 1)
            .flat_map(|i| (0..MAX_PER_SOURCE).map(move |_| i))
            .map_while(|i| limits.take(source(i)))
            .collect();
        assert_eq!(held.len() + others.len(), MAX_CONNECTIONS);
        assert!(limits.take(source(200)).is_none(), "past the limit of all");
        drop(held);
        assert!(
            limits.take(source(0)).is_some(),
            "closed connections give their places back"
        );
        drop(others);
        assert!(limits.per_source.lock().unwrap().is_empty());
    }
}
