//! cgroup v2 folders owned by a test or a cluster.

use std::{
    fs,
    io::ErrorKind,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// Where the cgroup v2 hierarchy is mounted: `/sys/fs/cgroup` on a pure v2
/// system, `/sys/fs/cgroup/unified` on a hybrid one (as on these VMs).
pub fn v2_root() -> Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_src, target, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(target))
        })
        // Prefer the shortest path: the host's own mount, not one inside a container folder.
        .min_by_key(|p| p.as_os_str().len())
        .context("no cgroup2 filesystem is mounted (run `cargo xtask setup` to mount one)")
}

/// A cgroup v2 folder, removed (with everything under it) on drop.
///
/// Processes still inside are killed first, so a failing test does not leave
/// a cgroup that cannot be removed.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Creates `name` (a relative path, may be nested) under the v2 root.
    /// A leftover of the same name from a killed run is removed first.
    pub fn create(name: &str) -> Result<Self> {
        let path = v2_root()?.join(name);
        if path.exists() {
            remove_tree(&path)
                .with_context(|| format!("removing stale cgroup {}", path.display()))?;
        }
        fs::create_dir_all(&path).with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A child cgroup, owned by its parent's cleanup.
    pub fn child(&self, name: &str) -> Result<PathBuf> {
        let path = self.path.join(name);
        fs::create_dir_all(&path).with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(path)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if let Err(err) = remove_tree(&self.path) {
            eprintln!(
                "warning: could not remove cgroup {}: {err:#}",
                self.path.display()
            );
        }
    }
}

/// Kills every process under `path` and removes the folders, deepest first.
/// Missing folders are fine: cleanup may race with another cleanup.
pub fn remove_tree(path: &Path) -> Result<()> {
    let children = match fs::read_dir(path) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect::<Vec<_>>(),
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
    };
    for child in children {
        remove_tree(&child)?;
    }
    // cgroup.kill (Linux 5.14) kills the whole subtree at once.
    let _ = fs::write(path.join("cgroup.kill"), "1");
    // The kernel refuses rmdir while dying processes are still accounted to
    // the cgroup; they leave within milliseconds.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(err) if err.kind() == ErrorKind::NotFound => return Ok(()),
            Err(err) if Instant::now() < deadline && err.raw_os_error() == Some(libc::EBUSY) => {
                thread::sleep(Duration::from_millis(10));
            }
            Err(err) => bail!("rmdir {}: {err}", path.display()),
        }
    }
}
