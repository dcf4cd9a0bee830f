//! `warren-sample echo`: a TCP server that sends every byte back, for L4 tests where HTTP
//! would only get in the way (byte-exact transfer through the tunnel, half-close, many
//! connections).

use std::net::SocketAddr;

use anyhow::{Context as _, Result};
use tokio::{
    io::AsyncWriteExt as _,
    net::{TcpListener, TcpStream},
};
use tracing::{debug, info};

use crate::{
    accept,
    shutdown::{GRACE, Shutdown},
};

pub struct Config {
    pub listen: SocketAddr,
    /// One OS thread per connection with blocking I/O: the lowest latency an
    /// echo can add, for latency benchmarks. Not for many connections.
    pub blocking: bool,
    /// How long a connection waits before its first read: a slow reader, so
    /// that what the client sends piles up on the way.
    pub read_after: std::time::Duration,
}

pub async fn run(config: Config) -> Result<()> {
    let shutdown = Shutdown::install()?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding the echo server to {}", config.listen))?;
    info!(addr = %config.listen, "echo server listening");

    let (blocking, read_after) = (config.blocking, config.read_after);
    accept::serve(
        listener,
        shutdown,
        "echo server",
        GRACE,
        move |stream, peer| {
            if blocking {
                echo_blocking(stream, peer, read_after);
                None
            } else {
                Some(echo(stream, peer, read_after))
            }
        },
    )
    .await
}

async fn echo(mut stream: TcpStream, peer: SocketAddr, read_after: std::time::Duration) {
    tokio::time::sleep(read_after).await;
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
fn echo_blocking(stream: TcpStream, peer: SocketAddr, read_after: std::time::Duration) {
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
        std::thread::sleep(read_after);
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
