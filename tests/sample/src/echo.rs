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
