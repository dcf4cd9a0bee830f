//! Privileged tests must not pass by skipping: these checks fail with the
//! reason and the fix instead.

use anyhow::{Result, bail};

/// Fails unless the process runs as root (privileged tests create network
/// namespaces, cgroups and load eBPF programs).
pub fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        bail!(
            "this test needs root (euid is {euid}): it loads eBPF programs and creates \
             namespaces and cgroups; run `sudo -E cargo xtask test`"
        );
    }
    Ok(())
}
