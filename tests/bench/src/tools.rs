//! The external tools a benchmark runs, checked before it starts.

use anyhow::{Result, ensure};

/// Fails with the install hint unless `tool` is on PATH.
pub fn which(tool: &str) -> Result<()> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    ensure!(
        found,
        "{tool} not found on PATH; `cargo xtask setup` installs it (apt-get install -y {})",
        if tool == "taskset" {
            "util-linux"
        } else {
            tool
        }
    );
    Ok(())
}
