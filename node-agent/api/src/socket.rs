//! The node agent serves its API on a Unix socket: only processes on the node
//! with access to the file can reach it, and no port is spent.

use std::{io, path::Path, path::PathBuf};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

/// Where the node agent listens unless told otherwise.
pub const DEFAULT_PATH: &str = "/var/run/warren/agent.sock";

/// A channel to the agent's socket. It connects lazily: a call made while the
/// agent is away fails, and the next one tries again.
pub fn channel(path: &Path) -> Channel {
    let path: PathBuf = path.to_owned();
    // The URI is required by tonic but never resolved: the connector decides.
    Endpoint::from_static("http://warren-node-agent").connect_with_connector_lazy(
        tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(&path).await?;
                Ok::<_, io::Error>(TokioIo::new(stream))
            }
        }),
    )
}
