//! The mesh's namespaces, written beside the agent's socket for the plugin.
//!
//! While the agent is down (restarting, upgrading) the plugin cannot ask it. A pod
//! of a namespace in the mesh must then wait, or it would start uncaptured; a pod of
//! any other namespace has no reason to. The agent keeps this file current, so the
//! plugin can tell the two apart without it: a namespace labelled into the mesh while
//! no agent runs is not listed yet, and its starting pods are captured, as before the
//! plugin existed, once the agent is back and finds them.

use std::{
    collections::BTreeSet,
    io,
    path::{Path, PathBuf},
};

use tracing::warn;

use super::install::write_atomically;

/// The file beside `socket`.
pub fn path_for(socket: &Path) -> PathBuf {
    socket.with_file_name("ambient-namespaces.json")
}

/// Keeps the file equal to the namespaces configuration puts in the mesh.
#[derive(Debug)]
pub struct NamespaceFile {
    path: PathBuf,
    written: Option<BTreeSet<String>>,
}

impl NamespaceFile {
    pub fn new(socket: &Path) -> Self {
        NamespaceFile {
            path: path_for(socket),
            written: None,
        }
    }

    /// Writes `namespaces` unless the file already says so.
    pub fn update(&mut self, namespaces: BTreeSet<String>) {
        if self.written.as_ref() == Some(&namespaces) {
            return;
        }
        let mut bytes = serde_json::to_vec(&namespaces).unwrap_or_default();
        bytes.push(b'\n');
        match write_atomically(&self.path, &bytes, 0o644) {
            Ok(()) => self.written = Some(namespaces),
            Err(error) => warn!(%error, "writing the mesh's namespaces for the CNI plugin"),
        }
    }
}

/// What the agent last wrote.
pub fn read(socket: &Path) -> io::Result<BTreeSet<String>> {
    let bytes = std::fs::read(path_for(socket))?;
    serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}
