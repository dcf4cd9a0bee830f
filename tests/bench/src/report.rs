//! Printing results: a table for people, then `BENCH` lines for machines.

/// One metric measured for Warren and for the baseline.
pub struct Row {
    pub metric: &'static str,
    pub unit: &'static str,
    pub warren: f64,
    pub baseline: f64,
    /// True if more is better (throughput), false if less is (latency).
    pub higher_is_better: bool,
}

impl Row {
    pub fn ratio(&self) -> f64 {
        if self.baseline == 0.0 {
            f64::NAN
        } else {
            self.warren / self.baseline
        }
    }
}

/// Prints the table, then one line per metric:
/// `BENCH <bench> <metric> <subject>=<v> <baseline>=<v> ratio=<subject/baseline>`,
/// `subject` naming Warren's arm as the bench's issue does (`mesh` for l4).
pub fn print(bench: &str, subject: &str, baseline: &str, rows: &[Row]) {
    println!(
        "\n{:<16} {:>14} {:>14} {:>8}  better",
        "metric", subject, baseline, "ratio"
    );
    println!("{}", "-".repeat(64));
    for r in rows {
        let better = if r.higher_is_better {
            "higher"
        } else {
            "lower"
        };
        println!(
            "{:<16} {:>14} {:>14} {:>7.2}x  {better}",
            r.metric,
            format!("{:.1} {}", r.warren, r.unit),
            format!("{:.1} {}", r.baseline, r.unit),
            r.ratio()
        );
    }
    println!();
    for r in rows {
        println!(
            "BENCH {bench} {} {subject}={:.2} {baseline}={:.2} ratio={:.3}",
            r.metric,
            r.warren,
            r.baseline,
            r.ratio()
        );
    }
}
