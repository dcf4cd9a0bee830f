//! `warren-sample transparent`: a minimal transparent TCP proxy, the stand-in for Warren's
//! node proxy in datapath tests.
//!
//! Warren's connect hook sends an enrolled pod's connects to this listener. For each
//! connection the proxy asks the kernel where it was going ([`original_dst`]), prints what
//! it learnt as one JSON line on stdout (tests read them while the proxy runs), then
//! connects there with its own socket mark (so the hook leaves that connect alone) and
//! relays bytes both ways until both sides have closed.

use std::{
    io::{self, Write as _},
    net::SocketAddr,
    os::fd::AsFd as _,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow};
use serde::Serialize;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tracing::{debug, info, warn};
use warren_ebpf_common::{
    ZTUNNEL_MARK,
    origin::{self as original_dst, LookupError, Origin},
};

use crate::{accept, error_chain::describe, shutdown::Shutdown, socket_mark};

/// How long relays may go on after a signal. Shorter than the servers' grace: datapath
/// tests restart the proxy between scenarios, and a relay still open then belongs to a
/// scenario that is over.
const GRACE: Duration = Duration::from_secs(2);
/// Per-direction relay buffer: the default 8 KiB costs a syscall pair per 8 KiB on bulk
/// transfers, which would make the proxy, not the datapath, what a throughput test
/// measures.
const RELAY_BUFFER: usize = 64 * 1024;

pub struct Config {
    pub listen: SocketAddr,
    /// `SO_MARK` for outbound sockets; `None` leaves them unmarked.
    pub mark: Option<u32>,
    pub connect_timeout: Duration,
}

/// What every connection needs to know, shared by the connection tasks.
struct Outbound {
    mark: Option<u32>,
    connect_timeout: Duration,
}

pub async fn run(config: Config) -> Result<()> {
    let shutdown = Shutdown::install()?;
    if let Some(mark) = config.mark {
        check_mark_allowed(mark)?;
        if mark != ZTUNNEL_MARK {
            info!(
                mark = format_args!("{mark:#x}"),
                default = format_args!("{ZTUNNEL_MARK:#x}"),
                "the mark is not Warren's default: the node config must name it too"
            );
        }
    } else {
        info!("no --mark: under Warren's connect hook, the proxy's own connects could be captured");
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding the transparent proxy to {}", config.listen))?;
    info!(
        addr = %config.listen,
        mark = config.mark.map(|mark| format!("{mark:#x}")),
        "transparent proxy listening"
    );

    let outbound = Arc::new(Outbound {
        mark: config.mark,
        connect_timeout: config.connect_timeout,
    });
    accept::serve(
        listener,
        shutdown,
        "transparent proxy",
        GRACE,
        |stream, peer| Some(serve(stream, peer, Arc::clone(&outbound))),
    )
    .await
}

/// Setting a mark needs `CAP_NET_ADMIN`; finding out at start beats failing every
/// connection.
fn check_mark_allowed(mark: u32) -> Result<()> {
    let probe = TcpSocket::new_v4().context("creating a socket to check --mark on")?;
    socket_mark::set(&probe, mark)
        .with_context(|| format!("setting SO_MARK {mark:#x} (needs CAP_NET_ADMIN)"))
}

async fn serve(client: TcpStream, peer: SocketAddr, outbound: Arc<Outbound>) {
    let local = match client.local_addr() {
        Ok(local) => local,
        Err(error) => {
            debug!(%peer, %error, "the accepted connection is already gone");
            return;
        }
    };
    let orig_dst = original_dst::original_dst(client.as_fd(), peer, local);
    let origin = original_dst::origin(client.as_fd(), local);
    let line = ConnectionLine::new(peer, &orig_dst, &origin);
    if let Err(error) = line.print() {
        warn!(%peer, error = %describe(&error), "printing the connection's line failed");
    }

    // SO_ORIGINAL_DST is the standard question: prefer it when both answered.
    let target = match (orig_dst, origin) {
        (Ok(dst), _) | (Err(_), Ok(Origin { dst, .. })) => dst,
        (Err(_), Err(_)) => {
            debug!(%peer, "no original destination: closing the connection");
            return;
        }
    };
    match forward(client, target, &outbound).await {
        Ok((to_target, from_target)) => {
            debug!(%peer, %target, to_target, from_target, "relay finished");
        }
        Err(error) => warn!(%peer, %target, error = format!("{error:#}"), "relay failed"),
    }
}

/// Connects to `target` (marked, if configured) and relays until both directions have
/// ended. Returns the bytes sent to and received from the target.
///
/// A side that shuts down its writing only ends that direction: the relay shuts down the
/// other side's writing too and keeps carrying the answer.
async fn forward(
    mut client: TcpStream,
    target: SocketAddr,
    outbound: &Outbound,
) -> Result<(u64, u64)> {
    let socket = match target {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .context("creating the outbound socket")?;
    if let Some(mark) = outbound.mark {
        // Before connect: the hook looks at the mark when the connect happens.
        socket_mark::set(&socket, mark)
            .with_context(|| format!("setting SO_MARK {mark:#x} on the outbound socket"))?;
    }
    let mut upstream = tokio::time::timeout(outbound.connect_timeout, socket.connect(target))
        .await
        .map_err(|_| {
            anyhow!(
                "connecting to {target}: no answer within {:?}",
                outbound.connect_timeout
            )
        })?
        .with_context(|| format!("connecting to {target}"))?;
    // The relay writes what it read, as soon as it read it: Nagle would only add latency.
    for (side, stream) in [("client", &client), ("target", &upstream)] {
        if let Err(error) = stream.set_nodelay(true) {
            debug!(side, %error, "setting TCP_NODELAY failed");
        }
    }
    tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, RELAY_BUFFER, RELAY_BUFFER)
        .await
        .context("relaying")
}

/// The line `transparent` prints for each accepted connection: what the kernel said about
/// it, and why it said nothing when it did not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectionLine {
    pub peer: String,
    pub orig_dst: Option<String>,
    pub orig_dst_error: Option<String>,
    pub origin_dst: Option<String>,
    pub netns_cookie: Option<u64>,
    pub origin_error: Option<String>,
}

impl ConnectionLine {
    pub fn new(
        peer: SocketAddr,
        orig_dst: &Result<SocketAddr, LookupError>,
        origin: &Result<Origin, LookupError>,
    ) -> Self {
        Self {
            peer: canonical(peer).to_string(),
            orig_dst: orig_dst.as_ref().ok().map(ToString::to_string),
            orig_dst_error: orig_dst.as_ref().err().map(|error| describe(error)),
            origin_dst: origin.as_ref().ok().map(|origin| origin.dst.to_string()),
            netns_cookie: origin.as_ref().ok().map(|origin| origin.netns_cookie),
            origin_error: origin.as_ref().err().map(|error| describe(error)),
        }
    }

    /// One line of JSON, no newline.
    pub fn to_json(&self) -> serde_json::Result<String> {
        serde_json::to_string(self)
    }

    /// Prints the line and flushes it at once: a test waits for it while the proxy runs,
    /// and a block-buffered pipe would hold it back.
    fn print(&self) -> io::Result<()> {
        let json = self.to_json()?;
        // Locked for the whole line, so lines of concurrent connections never interleave.
        let mut stdout = io::stdout().lock();
        writeln!(stdout, "{json}")?;
        stdout.flush()
    }
}

/// An IPv4 client of a dual-stack listener shows as `[::ffff:a.b.c.d]`; tests compare
/// against the client's own view, `a.b.c.d`.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    fn no_program(option: &'static str) -> LookupError {
        LookupError::Getsockopt {
            option,
            source: io::Error::from_raw_os_error(libc::ENOPROTOOPT),
        }
    }

    #[test]
    fn a_line_without_answers_says_why() {
        let line = ConnectionLine::new(
            "127.0.0.1:40000".parse().unwrap(),
            &Err(no_program("SOL_IP, SO_ORIGINAL_DST")),
            &Err(no_program("SOL_IP, SO_WARREN_ORIGIN")),
        );
        let json = line.to_json().unwrap();
        assert!(!json.contains('\n'), "{json}");
        let value: Value = serde_json::from_str(&json).unwrap();
        let reason = io::Error::from_raw_os_error(libc::ENOPROTOOPT).to_string();
        assert_eq!(
            value,
            json!({
                "peer": "127.0.0.1:40000",
                "orig_dst": null,
                "orig_dst_error": format!("getsockopt(SOL_IP, SO_ORIGINAL_DST) failed: {reason}"),
                "origin_dst": null,
                "netns_cookie": null,
                "origin_error": format!("getsockopt(SOL_IP, SO_WARREN_ORIGIN) failed: {reason}"),
            })
        );
    }

    #[test]
    fn a_line_with_answers_names_them_in_a_fixed_order() {
        let line = ConnectionLine::new(
            "[::ffff:10.0.1.5]:51000".parse().unwrap(),
            &Ok("10.0.2.7:9000".parse().unwrap()),
            &Ok(Origin {
                dst: "[fd00::7]:9000".parse().unwrap(),
                netns_cookie: u64::MAX,
            }),
        );
        assert_eq!(
            line.to_json().unwrap(),
            r#"{"peer":"10.0.1.5:51000","orig_dst":"10.0.2.7:9000","orig_dst_error":null,"origin_dst":"[fd00::7]:9000","netns_cookie":18446744073709551615,"origin_error":null}"#
        );
    }

    /// The relay on its own, with the original destination given: a client that shuts
    /// down its writing still gets the whole answer, sent only after the target saw EOF.
    #[tokio::test]
    async fn the_relay_carries_an_answer_after_a_half_close() {
        let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target_addr = target.local_addr().unwrap();
        let answering = tokio::spawn(async move {
            let (mut stream, _) = target.accept().await.unwrap();
            let mut question = Vec::new();
            stream.read_to_end(&mut question).await.unwrap();
            let answer = [b"answer to ".as_slice(), &question]
                .concat()
                .repeat(10_000);
            stream.write_all(&answer).await.unwrap();
            stream.shutdown().await.unwrap();
            answer
        });

        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_addr = proxy.local_addr().unwrap();
        let relaying = tokio::spawn(async move {
            let (client, _) = proxy.accept().await.unwrap();
            let outbound = Outbound {
                mark: None,
                connect_timeout: Duration::from_secs(5),
            };
            forward(client, target_addr, &outbound).await
        });

        let mut client = TcpStream::connect(proxy_addr).await.unwrap();
        client.write_all(b"the question").await.unwrap();
        client.shutdown().await.unwrap();
        let mut received = Vec::new();
        client.read_to_end(&mut received).await.unwrap();

        let answer = answering.await.unwrap();
        assert_eq!(received.len(), answer.len());
        assert!(received == answer, "the relayed answer differs");
        let (to_target, from_target) = relaying.await.unwrap().unwrap();
        assert_eq!(to_target, b"the question".len() as u64);
        assert_eq!(from_target, answer.len() as u64);
    }

    #[tokio::test]
    async fn an_unreachable_target_is_an_error_naming_it() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_addr = proxy.local_addr().unwrap();
        let _client = TcpStream::connect(proxy_addr).await.unwrap();
        let (accepted, _) = proxy.accept().await.unwrap();
        let outbound = Outbound {
            mark: None,
            connect_timeout: Duration::from_secs(5),
        };
        let error = forward(accepted, closed, &outbound).await.unwrap_err();
        assert!(
            format!("{error:#}").contains(&format!("connecting to {closed}")),
            "{error:#}"
        );
    }
}
