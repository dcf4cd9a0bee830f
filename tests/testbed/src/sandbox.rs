//! Running processes inside a pod or a node: its network namespace and its
//! cgroup, in the host's mount namespace (so bpffs and cgroup2 stay visible).

use std::{
    ffi::{CString, OsStr},
    fs::File,
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::{ffi::OsStrExt as _, process::CommandExt as _},
    },
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

/// Where a process runs: a network namespace, a cgroup, and the environment
/// a kubelet would give it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sandbox {
    /// Shown in logs and errors (`pod default/web-0`, `node wtb-1a2b-n0`).
    pub label: String,
    pub netns: PathBuf,
    pub cgroup: PathBuf,
    pub env: Vec<(String, String)>,
}

impl Sandbox {
    /// A command that starts inside this sandbox. Add arguments, then spawn
    /// it (or hand it to [`Sandbox::spawn`] to get a [`Process`] guard).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Result<Command> {
        let netns: OwnedFd = File::open(&self.netns)
            .with_context(|| format!("{}: opening {}", self.label, self.netns.display()))?
            .into();
        let procs = CString::new(self.cgroup.join("cgroup.procs").as_os_str().as_bytes())
            .context("cgroup path contains a NUL byte")?;
        let mut cmd = Command::new(program);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        // SAFETY: the closure runs between fork and exec and only makes
        // async-signal-safe system calls (setns, open, write, close,
        // get/setrlimit) on data prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // As a container runtime does for a pod (containerd: 1048576),
                // open files up to the hard limit, so a process can hold
                // thousands of connections as it would in a cluster.
                let mut limit = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
                    limit.rlim_cur = limit.rlim_max;
                    libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
                }
                // Writing "0" to cgroup.procs moves the writer itself.
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if written != 1 {
                    return Err(err);
                }
                Ok(())
            });
        }
        Ok(cmd)
    }

    /// Starts `cmd` (made by [`Sandbox::command`]) with its output going to
    /// `log`, and returns a guard that stops it on drop.
    pub fn spawn(&self, mut cmd: Command, log: &Path) -> Result<Process> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("{}: starting {:?}", self.label, cmd.get_program()))?;
        Ok(Process {
            label: format!("{}: {}", self.label, cmd.get_program().to_string_lossy()),
            child: Some(child),
            log: log.to_owned(),
        })
    }

    /// Runs `program ARGS…` to completion and returns its output.
    pub fn exec<I, S>(&self, program: &str, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command(program)?;
        cmd.args(args).stdin(Stdio::null());
        cmd.output()
            .with_context(|| format!("{}: running {program}", self.label))
    }

    /// Runs `f` on a thread inside this sandbox's network namespace (not its
    /// cgroup): sockets it creates live in the namespace.
    pub fn in_netns<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        crate::netns::run_in(&self.netns, f)
    }
}

/// A process started in a sandbox. Dropping it stops it: SIGTERM, then
/// SIGKILL if it has not exited within two seconds.
#[derive(Debug)]
pub struct Process {
    label: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything it has printed so far (stdout and stderr together).
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The file its output goes to.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Waits until its output contains `needle`, failing if it exits first
    /// or `within` passes.
    pub fn wait_for_output(&mut self, needle: &str, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        while !self.output().contains(needle) {
            self.check_running()?;
            if Instant::now() > deadline {
                bail!(
                    "{} printed no {needle:?} within {within:?}; output:\n{}",
                    self.label,
                    self.output()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Waits until it exits on its own, up to `within` (then fails and
    /// leaves it running for the drop guard to stop).
    pub fn wait_exit(&mut self, within: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            let Some(child) = self.child.as_mut() else {
                bail!("{} was stopped", self.label);
            };
            if let Some(status) = child.try_wait()? {
                self.child.take();
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "{} still running after {within:?}; output:\n{}",
                    self.label,
                    self.output()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Fails if it has already exited, with its status and output.
    pub fn check_running(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            bail!("{} was stopped", self.label);
        };
        if let Some(status) = child.try_wait()? {
            bail!(
                "{} exited ({status}); output:\n{}",
                self.label,
                self.output()
            );
        }
        Ok(())
    }

    /// Stops it (SIGTERM, then SIGKILL after `grace`) and returns its status.
    pub fn stop_within(&mut self, grace: Duration) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("{} was already stopped", self.label);
        };
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        // SAFETY: kill has no memory-safety preconditions; the pid is our
        // child, not yet reaped, so it cannot have been reused.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            thread::sleep(Duration::from_millis(10));
        }
        child.kill().ok();
        Ok(child.wait()?)
    }

    /// Lets it run on after this handle is gone (it still lives in the
    /// cluster's cgroups, so the cluster's teardown stops it).
    pub fn detach(mut self) {
        self.child.take();
    }

    /// Stops it with a two-second grace period.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        self.stop_within(Duration::from_secs(2))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
    }
}
