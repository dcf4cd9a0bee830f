//! `warren-sample echo`: a TCP server that sends every byte back, for L4 tests where HTTP
//! would only get in the way (byte-exact transfer through the tunnel, half-close, many
//! connections).

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result};
use tokio::{
    io::AsyncWriteExt as _,
    net::{TcpListener, TcpStream},
    task::JoinSet,
};
use tracing::{debug, info, warn};

use crate::shutdown::{GRACE, Shutdown};

pub struct Config {
    pub listen: SocketAddr,
    /// One OS thread per connection with blocking I/O: the lowest latency an
    /// echo can add, for latency benchmarks. Not for many connections.
    pub blocking: bool,
}

pub async fn run(config: Config) -> Result<()> {
    let mut shutdown = Shutdown::install()?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding the echo server to {}", config.listen))?;
    info!(addr = %config.listen, "echo server listening");

    let mut connections = JoinSet::new();
    let signal = loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) if config.blocking => echo_blocking(stream, peer),
                Ok((stream, peer)) => {
                    connections.spawn(echo(stream, peer));
                }
                Err(error) => {
                    // Usually out of file descriptors: pausing beats spinning on it.
                    warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            // Reap finished connections so the set does not grow without bound.
            Some(finished) = connections.join_next() => {
                if let Err(error) = finished {
                    warn!(%error, "an echo connection task failed");
                }
            }
            signal = shutdown.recv() => break signal,
        }
    };

    drop(listener);
    info!(signal, open = connections.len(), "echo server stopping");
    let drained = tokio::time::timeout(GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            open = connections.len(),
            grace = ?GRACE,
            "closing echo connections still open after the grace period"
        );
        connections.shutdown().await;
    }
    Ok(())
}

async fn echo(mut stream: TcpStream, peer: SocketAddr) {
    let (mut reader, mut writer) = stream.split();
    match tokio::io::copy(&mut reader, &mut writer).await {
        Ok(bytes) => debug!(%peer, bytes, "echo connection finished"),
        Err(error) => debug!(%peer, %error, "echo connection failed"),
    }
    // The peer half-closed: close our side too, so it sees EOF after the last byte.
    if let Err(error) = writer.shutdown().await {
        debug!(%peer, %error, "closing the echo connection failed");
    }
}

/// Echoes on a thread of its own with blocking I/O (see [`Config::blocking`]).
fn echo_blocking(stream: TcpStream, peer: SocketAddr) {
    let stream = match stream
        .into_std()
        .and_then(|s| s.set_nonblocking(false).map(|()| s))
    {
        Ok(s) => s,
        Err(error) => {
            debug!(%peer, %error, "making the echo connection blocking failed");
            return;
        }
    };
    std::thread::spawn(move || {
        let _ = stream.set_nodelay(true);
        // 64 KiB, not std::io::copy's 8 KiB: fewer, larger writes, as a
        // streaming server would do.
        let copied = stream.try_clone().and_then(|mut writer| {
            use std::io::{Read as _, Write as _};
            let mut reader = &stream;
            let mut buf = vec![0u8; 64 * 1024];
            let mut total = 0u64;
            loop {
                let n = reader.read(&mut buf)?;
                if n == 0 {
                    return Ok(total);
                }
                writer.write_all(&buf[..n])?;
                total += n as u64;
            }
        });
        match copied {
            Ok(bytes) => debug!(%peer, bytes, "echo connection finished"),
            Err(error) => debug!(%peer, %error, "echo connection failed"),
        }
        let _ = stream.shutdown(std::net::Shutdown::Write);
    });
}
