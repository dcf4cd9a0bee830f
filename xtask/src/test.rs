//! `cargo xtask test`: everything CI checks, in the order that fails
//! fastest, with a summary table at the end.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::{
    exec::{self, cargo, is_root},
    setup,
};

/// The crate holding the privileged end-to-end tests; everything else is
/// unit tests that run anywhere.
const E2E_CRATE: &str = "warren-e2e";

#[derive(clap::Args)]
pub struct Args {
    /// Skip `cargo xtask setup` (the machine is known to be ready).
    #[arg(long)]
    no_setup: bool,
    /// Skip the privileged end-to-end tests.
    #[arg(long)]
    no_e2e: bool,
    /// Only run tests whose name contains this (passed to the test harness).
    filter: Option<String>,
}

struct Outcome {
    step: &'static str,
    elapsed: Duration,
    result: Result<()>,
}

pub fn run(args: &Args) -> Result<()> {
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut step = |step: &'static str, f: &dyn Fn() -> Result<()>| -> bool {
        eprintln!("\n== {step}");
        let started = Instant::now();
        let result = f();
        let ok = result.is_ok();
        if let Err(err) = &result {
            eprintln!("== {step}: FAILED: {err:#}");
        }
        outcomes.push(Outcome {
            step,
            elapsed: started.elapsed(),
            result,
        });
        ok
    };

    let filter: Vec<String> = args.filter.iter().cloned().collect();
    // Setup and build failures make every later step meaningless: stop there.
    // After that, run every step so one run reports every failure.
    let mut ready = true;
    if !args.no_setup {
        ready = step("setup", &|| setup::run(&setup::Args::default()));
    }
    if ready {
        step("format", &|| {
            exec::run(cargo().args(["fmt", "--all", "--check"]))
        });
        ready = step("clippy", &|| {
            exec::run(cargo().args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))
        });
    }
    if ready {
        // End-to-end tests start the workspace's binaries (warren-sample, the
        // node agent): build them all once, in the shared target folder.
        ready = step("build", &|| crate::build::run_build(false));
    }
    if ready {
        step("unit tests", &|| {
            exec::run(
                cargo()
                    .args([
                        "test",
                        "--workspace",
                        "--exclude",
                        E2E_CRATE,
                        "--exclude",
                        "warren-ebpf",
                        "--",
                    ])
                    .args(&filter),
            )
        });
        if !args.no_e2e {
            step("end-to-end tests (root)", &|| {
                if !is_root() {
                    bail!(
                        "the end-to-end tests need root (BPF, namespaces, cgroups); run as root or pass --no-e2e"
                    );
                }
                exec::run(
                    cargo()
                        .args(["test", "--package", E2E_CRATE, "--"])
                        .args(&filter),
                )
            });
        }
    }

    eprintln!("\n{:<28} {:>8}  result", "step", "time");
    eprintln!("{}", "-".repeat(50));
    let mut failed = 0;
    for o in &outcomes {
        let verdict = match &o.result {
            Ok(()) => "ok",
            Err(_) => {
                failed += 1;
                "FAILED"
            }
        };
        eprintln!(
            "{:<28} {:>7.1}s  {verdict}",
            o.step,
            o.elapsed.as_secs_f64()
        );
    }
    if failed > 0 {
        bail!("{failed} step(s) failed");
    }
    eprintln!("\nall {} steps passed", outcomes.len());
    Ok(())
}
