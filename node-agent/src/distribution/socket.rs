//! The agent's Unix socket: created with owner-only access, replacing a
//! stale file a killed agent left, but never stealing a live agent's.

use std::{
    io,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use tokio::net::UnixListener;

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("another node agent is serving {0}")]
    InUse(PathBuf),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub async fn bind(path: &Path) -> Result<UnixListener, SocketError> {
    let io = |what| {
        let path = path.to_owned();
        move |source| SocketError::Io { what, path, source }
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io("creating the folder of"))?;
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(SocketError::InUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(io("removing the stale socket"))?;
    }
    let listener = UnixListener::bind(path).map_err(io("listening on"))?;
    // Certificates and keys go through this socket: root-only.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io("restricting access to"))?;
    Ok(listener)
}
