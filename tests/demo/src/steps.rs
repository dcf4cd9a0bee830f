//! Running steps: each timed, each ending in PASS or FAIL with the evidence
//! that decided it, and a summary table at the end.

use std::{
    io::IsTerminal as _,
    time::{Duration, Instant},
};

use anyhow::Result;

/// `text` in an ANSI style when stdout is a terminal, plain otherwise.
fn paint(style: &str, text: &str) -> String {
    if std::io::stdout().is_terminal() {
        format!("\x1b[{style}m{text}\x1b[0m")
    } else {
        text.to_owned()
    }
}

pub enum Outcome {
    Pass(String),
    Fail(String),
}

pub struct Steps {
    rows: Vec<(String, Duration, Outcome)>,
}

impl Steps {
    pub fn new() -> Self {
        Self { rows: Vec::new() }
    }

    /// Runs one step. An error is a FAIL with its message as evidence.
    pub fn run(&mut self, title: &str, f: impl FnOnce() -> Result<String>) -> bool {
        let n = self.rows.len() + 1;
        println!("\n{}", paint("1", &format!("── {n}. {title}")));
        let started = Instant::now();
        let outcome = match f() {
            Ok(evidence) => Outcome::Pass(evidence),
            Err(err) => Outcome::Fail(format!("{err:#}")),
        };
        let elapsed = started.elapsed();
        let passed = matches!(outcome, Outcome::Pass(_));
        match &outcome {
            Outcome::Pass(e) => {
                println!(
                    "   {} ({:.1}s) {e}",
                    paint("32", "PASS"),
                    elapsed.as_secs_f64()
                )
            }
            Outcome::Fail(e) => {
                println!(
                    "   {} ({:.1}s) {e}",
                    paint("31", "FAIL"),
                    elapsed.as_secs_f64()
                )
            }
        }
        self.rows.push((title.to_owned(), elapsed, outcome));
        passed
    }

    /// How many steps have run.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Prints the table; true if every step that ran passed.
    pub fn summary(&self) -> bool {
        println!(
            "\n{}",
            paint(
                "1",
                &format!("{:<4}{:<64}{:>8}  result", "#", "step", "time")
            )
        );
        let mut ok = true;
        for (i, (title, elapsed, outcome)) in self.rows.iter().enumerate() {
            let (verdict, time) = match outcome {
                Outcome::Pass(_) => (
                    paint("32", "PASS"),
                    format!("{:.1}s", elapsed.as_secs_f64()),
                ),
                Outcome::Fail(_) => {
                    ok = false;
                    (
                        paint("31", "FAIL"),
                        format!("{:.1}s", elapsed.as_secs_f64()),
                    )
                }
            };
            println!("{:<4}{:<64}{:>8}  {verdict}", i + 1, title, time);
        }
        ok
    }
}

/// Shows what a command printed, set off as [`show_yaml`] sets off a file.
pub fn show_output(text: &str) {
    for line in text.lines() {
        println!("   {} {line}", paint("2", "│"));
    }
}

/// Prints a YAML document the way the demo applies it.
pub fn show_yaml(file: &str, yaml: &str) {
    println!("   applying {file}:");
    for line in yaml.lines() {
        println!("   {} {line}", paint("2", "│"));
    }
}
