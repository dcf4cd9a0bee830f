//! Named network namespaces (`/run/netns/NAME`, as `ip netns` makes them)
//! and running code inside one.
//!
//! Code enters a namespace with `setns` on one thread only; the mount
//! namespace stays the host's, so bpffs and cgroup2 stay visible (`ip netns
//! exec` would remount /sys and hide them).

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// Where `ip netns` keeps its namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// The path of the named namespace.
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Creates the named namespace with loopback up.
pub fn create(name: &str) -> Result<()> {
    ip(&["netns", "add", name])?;
    ip(&["-n", name, "link", "set", "lo", "up"])
}

/// Deletes the named namespace; a missing one is fine, including one that
/// a concurrent teardown removed first.
pub fn delete(name: &str) -> Result<()> {
    match ip(&["netns", "delete", name]) {
        Err(_) if !path(name).exists() => Ok(()),
        other => other,
    }
}

/// Names of all namespaces starting with `prefix`.
pub fn list(prefix: &str) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(e) => e,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err).context("reading /run/netns"),
    };
    Ok(entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect())
}

/// Pids of processes whose network namespace is `name`.
pub fn pids(name: &str) -> Result<Vec<i32>> {
    let out = Command::new("ip")
        .args(["netns", "pids", name])
        .output()
        .context("running `ip netns pids`")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// Runs `f` on a fresh thread that has entered the namespace at `netns`.
/// Sockets `f` creates belong to that namespace for their whole life, even
/// after the thread ends.
pub fn run_in<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let file = File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    let shown = netns.display().to_string();
    std::thread::spawn(move || {
        // SAFETY: setns on a valid namespace fd changes only this thread.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("setns({shown})"));
        }
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in {} panicked", netns.display()))?
}

/// The calling thread moved into a namespace until this is dropped. On the
/// main thread it moves the process as others see it (`/proc/<pid>/ns/net`
/// is the main thread's): a probe the node agent must place on a node's
/// network, as it places a ztunnel, enters the node for a while.
pub struct Entered {
    home: File,
    /// Dropped on the thread that entered (setns moves one thread).
    _here: std::marker::PhantomData<*const ()>,
}

/// Moves the calling thread into the namespace at `netns`.
pub fn enter(netns: &Path) -> Result<Entered> {
    let home = File::open("/proc/thread-self/ns/net").context("opening this thread's namespace")?;
    let file = File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    // SAFETY: setns on a valid namespace fd changes only this thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("setns({})", netns.display()));
    }
    Ok(Entered {
        home,
        _here: std::marker::PhantomData,
    })
}

impl Drop for Entered {
    fn drop(&mut self) {
        // SAFETY: back to the namespace this thread was in; it is still open.
        if unsafe { libc::setns(self.home.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            eprintln!(
                "could not return to the namespace this thread left: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Writes a sysctl under `/proc/sys/net` of the namespace at `netns`.
pub fn sysctl(netns: &Path, key: &str, value: &str) -> Result<()> {
    let file = format!("/proc/sys/{}", key.replace('.', "/"));
    let value = value.to_owned();
    run_in(netns, move || {
        std::fs::write(&file, &value).with_context(|| format!("writing {value} to {file}"))
    })
}

/// Runs `ip ARGS…`, failing with its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (install iproute2: cargo xtask setup)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
