//! The accept loop the TCP servers share: a task per connection, finished
//! tasks reaped as they end, and on SIGTERM/SIGINT no new connections while
//! open ones get a grace period.

use std::{future::Future, net::SocketAddr, time::Duration};

use anyhow::Result;
use tokio::{
    net::{TcpListener, TcpStream},
    task::JoinSet,
};
use tracing::{info, warn};

use crate::shutdown::Shutdown;

/// Serves `listener` until a signal. `handle` turns each connection into a
/// task, or returns `None` when it took the connection elsewhere (a thread
/// of its own). `what` names the server in logs.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    mut shutdown: Shutdown,
    what: &'static str,
    grace: Duration,
    mut handle: F,
) -> Result<()>
where
    F: FnMut(TcpStream, SocketAddr) -> Option<Fut>,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut connections = JoinSet::new();
    let signal = loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if let Some(task) = handle(stream, peer) {
                        connections.spawn(task);
                    }
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
                    warn!(%error, what, "a connection task failed");
                }
            }
            signal = shutdown.recv() => break signal,
        }
    };

    drop(listener);
    info!(signal, open = connections.len(), what, "stopping");
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            open = connections.len(),
            ?grace,
            what,
            "closing connections still open after the grace period"
        );
        connections.shutdown().await;
    }
    Ok(())
}
