//! The external tools a benchmark runs: checked before it starts, and HAProxy,
//! the baseline proxy of several benchmarks.

use anyhow::{Context as _, Result, ensure};
use warren_e2e::workload::wait_listening;
use warren_testbed::{Cluster, Pod, Process};

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

/// HAProxy with `config` in `pod`, in the foreground (the returned guard stops
/// it), pinned to `cpu` if given; returns once it listens on `port`.
pub fn start_haproxy(
    cluster: &Cluster,
    pod: &Pod,
    config: &str,
    port: u16,
    cpu: Option<&str>,
) -> Result<Process> {
    let cfg = cluster.log_dir().join(format!("haproxy-{}.cfg", pod.name));
    std::fs::write(&cfg, config).with_context(|| format!("writing {}", cfg.display()))?;
    let cfg = cfg.to_string_lossy();
    let check = pod.sandbox.exec("haproxy", ["-c", "-f", &cfg])?;
    ensure!(
        check.status.success(),
        "haproxy rejects {cfg}: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let haproxy = ["haproxy", "-db", "-f", &cfg];
    let mut process = match cpu {
        Some(cpu) => {
            let pinned: Vec<&str> = ["-c", cpu].into_iter().chain(haproxy).collect();
            cluster.spawn(&pod.sandbox, "taskset", &pinned)?
        }
        None => cluster.spawn(&pod.sandbox, haproxy[0], &haproxy[1..])?,
    };
    wait_listening(pod, port, &mut process)?;
    Ok(process)
}
