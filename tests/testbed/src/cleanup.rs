//! Removing clusters: one teardown, used on drop, on Ctrl-C, for leftovers
//! of killed runs and by `cargo xtask cluster down`.
//!
//! Teardown works from names alone (everything a cluster makes carries its
//! id), so it also removes what a run killed halfway through left behind.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    sync::{Mutex, Once},
    time::Duration,
};

use anyhow::{Context as _, Result};

use crate::{cgroup, netns};

/// Every cluster id starts with this; nothing else of ours does.
pub const PREFIX: &str = "wtb-";

/// Where clusters keep their state, config folder and logs
/// (`WARREN_TESTBED_DIR` overrides).
pub fn state_base() -> PathBuf {
    std::env::var_os("WARREN_TESTBED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/warren-testbed"))
}

/// Where each node pins its eBPF objects: `<BPFFS_DIR>/<node name>`.
pub const BPFFS_DIR: &str = "/sys/fs/bpf/warren";

/// What a teardown removed, for reports and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Removed {
    pub namespaces: usize,
    pub processes: usize,
    pub cgroups: bool,
    pub pins: usize,
}

/// Removes everything cluster `id` made: processes, network namespaces
/// (their veths and bridges go with them), cgroups, bpffs pins and state.
/// Safe to run twice and on a half-built cluster.
pub fn remove_cluster(id: &str) -> Result<Removed> {
    let mut removed = Removed::default();
    // Killing through the cgroup first stops processes that could otherwise
    // hold namespaces open.
    if let Ok(root) = cgroup::v2_root() {
        let dir = root.join(id);
        removed.cgroups = dir.exists();
        cgroup::remove_tree(&dir)?;
    }
    let prefix = format!("{id}-");
    for name in netns::list(&prefix)? {
        // Anything that entered the namespace without joining our cgroups.
        // Not this process: a bench may have entered a node's namespace.
        let me = i32::try_from(std::process::id()).unwrap_or(-1);
        for pid in netns::pids(&name)?.into_iter().filter(|pid| *pid != me) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            removed.processes += 1;
        }
        netns::delete(&name).with_context(|| format!("deleting namespace {name}"))?;
        removed.namespaces += 1;
    }
    if let Ok(entries) = fs::read_dir(BPFFS_DIR) {
        for entry in entries.filter_map(|e| e.ok()) {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                ignore_missing(fs::remove_dir_all(entry.path()))
                    .with_context(|| format!("removing pins {}", entry.path().display()))?;
                removed.pins += 1;
            }
        }
    }
    let state = state_base().join(id);
    ignore_missing(fs::remove_dir_all(&state))
        .with_context(|| format!("removing {}", state.display()))?;
    Ok(removed)
}

/// Two teardowns of one cluster may race (a test's own and another test's
/// reaping): what the other already removed is not an error.
fn ignore_missing(result: std::io::Result<()>) -> std::io::Result<()> {
    match result {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Removes every cluster whose id starts with `prefix` (`down --all` passes
/// [`PREFIX`]). Returns the ids removed.
pub fn remove_all_matching(prefix: &str) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for id in cluster_ids()?
        .into_iter()
        .filter(|id| id.starts_with(prefix))
    {
        remove_cluster(&id)?;
        removed.push(id);
    }
    Ok(removed)
}

/// Ids of every cluster with anything left on this machine: state folder,
/// namespace, cgroup or pins.
pub fn cluster_ids() -> Result<BTreeSet<String>> {
    let mut ids = BTreeSet::new();
    let mut add = |name: &str| {
        if let Some(rest) = name.strip_prefix(PREFIX) {
            let suffix = rest.split('-').next().unwrap_or_default();
            if !suffix.is_empty() {
                ids.insert(format!("{PREFIX}{suffix}"));
            }
        }
    };
    for name in netns::list(PREFIX)? {
        add(&name);
    }
    for dir in [state_base(), PathBuf::from(BPFFS_DIR)]
        .into_iter()
        .chain(cgroup::v2_root().ok())
    {
        for name in dir_names(&dir) {
            add(&name);
        }
    }
    Ok(ids)
}

/// Removes every cluster whose owning process is gone (a test run that was
/// killed), leaving live and detached clusters alone. Returns their ids.
pub fn reap_stale() -> Result<Vec<String>> {
    let mut reaped = Vec::new();
    for id in cluster_ids()? {
        let state = state_base().join(&id);
        let stale = match crate::cluster::read_owner(&state) {
            // Detached (`cargo xtask cluster up`): kept until `down`.
            Ok(None) => false,
            Ok(Some(owner)) => !owner.is_alive(),
            // No readable owner: a run killed before it wrote one, or a
            // cluster being built or torn down right now. Only the first
            // is old; a young one is left to whoever is working on it.
            Err(_) => !being_created(&state) && older_than(&state, Duration::from_secs(60)),
        };
        if stale {
            remove_cluster(&id)?;
            reaped.push(id);
        }
    }
    Ok(reaped)
}

/// A cluster whose state folder exists but whose owner file is not written
/// yet is being created right now by another process or thread.
fn being_created(state: &Path) -> bool {
    state.exists() && !state.join(crate::cluster::OWNER_FILE).exists()
}

/// True if `path` was last changed more than `age` ago, or is gone.
fn older_than(path: &Path, age: Duration) -> bool {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .map_or(true, |t| t.elapsed().is_ok_and(|e| e > age))
}

fn dir_names(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Clusters owned by this process, torn down if it is interrupted.
static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());
static HANDLER: Once = Once::new();

/// Tears down `id` if this process gets SIGINT or SIGTERM before
/// [`forget_on_interrupt`] is called for it.
pub(crate) fn remove_on_interrupt(id: &str) {
    HANDLER.call_once(|| {
        // If the program installed its own handler, it owns interrupts and
        // drop-based teardown still runs on normal exits and panics.
        let _ = ctrlc::set_handler(|| {
            let ids = LIVE.lock().map(|l| l.clone()).unwrap_or_default();
            for id in ids {
                eprintln!("interrupted: removing cluster {id}");
                if let Err(err) = remove_cluster(&id) {
                    eprintln!("warning: removing {id}: {err:#}");
                }
            }
            std::process::exit(130);
        });
    });
    if let Ok(mut live) = LIVE.lock() {
        live.push(id.to_owned());
    }
}

pub(crate) fn forget_on_interrupt(id: &str) {
    if let Ok(mut live) = LIVE.lock() {
        live.retain(|l| l != id);
    }
}
