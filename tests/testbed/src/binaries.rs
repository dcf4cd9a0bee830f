//! Finding the workspace's own binaries (`warren-sample`, the node agent…)
//! from a test or from xtask.

use std::path::PathBuf;

use anyhow::{Result, bail};

/// The path of binary `name` built in the same target folder as the running
/// executable (tests live in `target/<profile>/deps/`, binaries one level
/// up). `cargo xtask test` builds every binary before the end-to-end tests.
pub fn path(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join(name))
        .collect();
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    bail!(
        "binary {name} not found (looked in {}); build it first: cargo build --bins",
        candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}
