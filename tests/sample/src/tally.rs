//! What a load run saw: answers by (version, status), transport errors by kind, and the
//! latency distribution; and its two renderings, a table for people and JSON for tests.
//!
//! Pure: the load client feeds it outcomes, so the arithmetic is tested without a network.

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use hdrhistogram::Histogram;
use serde::Serialize;
use thiserror::Error;

/// Latencies above this are recorded as this (an hour, in microseconds): no request of a
/// bounded run lasts longer, and a fixed range keeps histograms mergeable.
const MAX_LATENCY_US: u64 = 3_600_000_000;
/// Three significant digits: 0.1% error on any latency, at a few tens of KiB per histogram.
const SIGNIFICANT_DIGITS: u8 = 3;

/// Shown in place of a version when an answer has no `x-sample-version` header
/// (it came from something other than a sample, e.g. a proxy answering on its own).
pub const NO_VERSION: &str = "-";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The connection could not be made (refused, unreachable).
    Connect,
    /// No complete answer within the per-request timeout.
    Timeout,
    /// The peer reset or closed the connection (or, for HTTP/2, the stream) mid-request.
    Reset,
    Other,
}

#[derive(Debug, Error)]
#[error("merging latency histograms failed")]
pub struct MergeError(#[from] hdrhistogram::errors::AdditionError);

/// Counts outcomes as they happen. One per load worker, merged at the end, so workers
/// never contend on a lock.
#[derive(Debug, Clone)]
pub struct Tally {
    answers: BTreeMap<(String, u16), u64>,
    errors: ErrorCounts,
    latency_us: Histogram<u64>,
}

impl Default for Tally {
    fn default() -> Self {
        Self::new()
    }
}

impl Tally {
    pub fn new() -> Self {
        Self {
            answers: BTreeMap::new(),
            errors: ErrorCounts::default(),
            // Fails only for bounds that make no sense; these are constants that do.
            latency_us: Histogram::new_with_bounds(1, MAX_LATENCY_US, SIGNIFICANT_DIGITS)
                .expect("constant histogram bounds are valid"),
        }
    }

    /// An answer arrived (whatever its status); `latency` runs to its body's last byte.
    pub fn record_answer(&mut self, version: Option<&str>, status: u16, latency: Duration) {
        let version = version.unwrap_or(NO_VERSION).to_owned();
        *self.answers.entry((version, status)).or_default() += 1;
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        // Sub-microsecond answers still count, as 1 µs (the histogram's lowest value).
        self.latency_us.saturating_record(micros.max(1));
    }

    /// A request got no answer. Its latency is not recorded: a timeout's or a refused
    /// connection's duration says nothing about how fast the server answers.
    pub fn record_error(&mut self, kind: ErrorKind) {
        let counter = match kind {
            ErrorKind::Connect => &mut self.errors.connect,
            ErrorKind::Timeout => &mut self.errors.timeout,
            ErrorKind::Reset => &mut self.errors.reset,
            ErrorKind::Other => &mut self.errors.other,
        };
        *counter += 1;
    }

    pub fn merge(&mut self, other: &Tally) -> Result<(), MergeError> {
        for (key, count) in &other.answers {
            *self.answers.entry(key.clone()).or_default() += count;
        }
        self.errors.connect += other.errors.connect;
        self.errors.timeout += other.errors.timeout;
        self.errors.reset += other.errors.reset;
        self.errors.other += other.errors.other;
        self.latency_us.add(&other.latency_us)?;
        Ok(())
    }

    /// Summarises the run; `elapsed` is its wall-clock time, for the request rate.
    pub fn report(&self, elapsed: Duration) -> Report {
        let answered: u64 = self.answers.values().sum();
        let requests = answered + self.errors.total();
        let duration_s = elapsed.as_secs_f64();
        let at = |quantile: f64| micros_to_ms(self.latency_us.value_at_quantile(quantile));
        Report {
            requests,
            duration_s,
            rps: if duration_s > 0.0 {
                requests as f64 / duration_s
            } else {
                0.0
            },
            by_version_status: self
                .answers
                .iter()
                .map(|((version, status), count)| VersionStatusCount {
                    version: version.clone(),
                    status: *status,
                    count: *count,
                })
                .collect(),
            errors: self.errors,
            latency_ms: LatencyMs {
                p50: at(0.50),
                p90: at(0.90),
                p99: at(0.99),
                max: micros_to_ms(self.latency_us.max()),
            },
        }
    }
}

fn micros_to_ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ErrorCounts {
    pub connect: u64,
    pub timeout: u64,
    pub reset: u64,
    pub other: u64,
}

impl ErrorCounts {
    pub fn total(&self) -> u64 {
        self.connect + self.timeout + self.reset + self.other
    }
}

/// The result of a run; its JSON form is what tests read (`load --json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub requests: u64,
    pub duration_s: f64,
    pub rps: f64,
    pub by_version_status: Vec<VersionStatusCount>,
    pub errors: ErrorCounts,
    pub latency_ms: LatencyMs,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionStatusCount {
    pub version: String,
    pub status: u16,
    pub count: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencyMs {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Report {
    /// The human-readable form: one line for the run, one row per (version, status), then
    /// errors and latency. Shares are of all requests, so errors are part of the 100%.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let share = |count: u64| {
            if self.requests == 0 {
                0.0
            } else {
                100.0 * count as f64 / self.requests as f64
            }
        };
        let version_width = self
            .by_version_status
            .iter()
            .map(|row| row.version.len())
            .chain(["version".len()])
            .max()
            .unwrap_or_default();
        // Writing to a String cannot fail, so the fmt::Results below are ignored.
        let _ = writeln!(
            out,
            "{} requests in {:.2} s ({:.1} req/s)\n",
            self.requests, self.duration_s, self.rps
        );
        let _ = writeln!(
            out,
            "{:<version_width$}  {:>6}  {:>8}  {:>6}",
            "version", "status", "count", "share"
        );
        if self.by_version_status.is_empty() {
            let _ = writeln!(out, "(no answers)");
        }
        for row in &self.by_version_status {
            let _ = writeln!(
                out,
                "{:<version_width$}  {:>6}  {:>8}  {:>5.1}%",
                row.version,
                row.status,
                row.count,
                share(row.count)
            );
        }
        let errors = &self.errors;
        let _ = writeln!(
            out,
            "\nerrors   connect {}  timeout {}  reset {}  other {}  ({:.1}%)",
            errors.connect,
            errors.timeout,
            errors.reset,
            errors.other,
            share(errors.total())
        );
        let latency = &self.latency_ms;
        let _ = writeln!(
            out,
            "latency  p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
            latency.p50, latency.p90, latency.p99, latency.max
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Within the histogram's 0.1% precision.
    fn assert_close(actual: f64, expected: f64) {
        assert!(
            (actual - expected).abs() <= expected * 0.001 + 0.001,
            "{actual} is not close to {expected}"
        );
    }

    #[test]
    fn groups_answers_by_version_and_status() {
        let mut tally = Tally::new();
        tally.record_answer(Some("v2"), 200, ms(1));
        tally.record_answer(Some("v1"), 503, ms(1));
        tally.record_answer(Some("v1"), 200, ms(1));
        tally.record_answer(Some("v1"), 200, ms(1));
        tally.record_answer(None, 504, ms(1));
        let report = tally.report(Duration::from_secs(1));
        let rows: Vec<_> = report
            .by_version_status
            .iter()
            .map(|r| (r.version.as_str(), r.status, r.count))
            .collect();
        assert_eq!(
            rows,
            [
                ("-", 504, 1),
                ("v1", 200, 2),
                ("v1", 503, 1),
                ("v2", 200, 1)
            ]
        );
        assert_eq!(report.requests, 5);
    }

    #[test]
    fn errors_count_as_requests_but_not_as_latency() {
        let mut tally = Tally::new();
        tally.record_answer(Some("v1"), 200, ms(10));
        tally.record_error(ErrorKind::Connect);
        tally.record_error(ErrorKind::Timeout);
        tally.record_error(ErrorKind::Timeout);
        tally.record_error(ErrorKind::Reset);
        tally.record_error(ErrorKind::Other);
        let report = tally.report(Duration::from_secs(2));
        assert_eq!(report.requests, 6);
        assert_eq!(
            report.errors,
            ErrorCounts {
                connect: 1,
                timeout: 2,
                reset: 1,
                other: 1
            }
        );
        assert_close(report.rps, 3.0);
        assert_close(report.latency_ms.max, 10.0);
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut tally = Tally::new();
        for n in 1..=100 {
            tally.record_answer(Some("v1"), 200, ms(n));
        }
        let latency = tally.report(Duration::from_secs(1)).latency_ms;
        assert_close(latency.p50, 50.0);
        assert_close(latency.p90, 90.0);
        assert_close(latency.p99, 99.0);
        assert_close(latency.max, 100.0);
    }

    #[test]
    fn merging_equals_recording_in_one_tally() {
        let mut one = Tally::new();
        let mut left = Tally::new();
        let mut right = Tally::new();
        for n in 1..=100 {
            let status = if n % 10 == 0 { 503 } else { 200 };
            one.record_answer(Some("v1"), status, ms(n));
            let half = if n % 2 == 0 { &mut left } else { &mut right };
            half.record_answer(Some("v1"), status, ms(n));
        }
        one.record_error(ErrorKind::Reset);
        right.record_error(ErrorKind::Reset);
        left.merge(&right).unwrap();
        let elapsed = Duration::from_secs(1);
        assert_eq!(left.report(elapsed), one.report(elapsed));
    }

    #[test]
    fn an_empty_run_reports_zeros() {
        let report = Tally::new().report(Duration::ZERO);
        assert_eq!(report.requests, 0);
        assert_eq!(report.rps, 0.0);
        assert!(report.by_version_status.is_empty());
        assert_eq!(report.latency_ms.p99, 0.0);
        assert!(report.to_table().contains("0 requests"));
    }

    #[test]
    fn sub_microsecond_and_huge_latencies_are_kept_in_range() {
        let mut tally = Tally::new();
        tally.record_answer(Some("v1"), 200, Duration::from_nanos(10));
        tally.record_answer(Some("v1"), 200, Duration::from_secs(10 * 3600));
        let latency = tally.report(Duration::from_secs(1)).latency_ms;
        assert_close(latency.p50, 0.001);
        assert_close(latency.max, 3_600_000.0);
    }

    #[test]
    fn json_has_the_documented_shape() {
        let mut tally = Tally::new();
        tally.record_answer(Some("v1"), 200, ms(4));
        tally.record_error(ErrorKind::Timeout);
        let json = serde_json::to_value(tally.report(Duration::from_secs(2))).unwrap();
        assert_eq!(json["requests"], 2);
        assert_eq!(json["duration_s"], 2.0);
        assert_eq!(json["rps"], 1.0);
        assert_eq!(
            json["by_version_status"],
            serde_json::json!([{"version": "v1", "status": 200, "count": 1}])
        );
        assert_eq!(
            json["errors"],
            serde_json::json!({"connect": 0, "timeout": 1, "reset": 0, "other": 0})
        );
        for key in ["p50", "p90", "p99", "max"] {
            let value = json["latency_ms"][key].as_f64().unwrap();
            assert_close(value, 4.0);
        }
    }

    #[test]
    fn table_shows_rows_shares_errors_and_latency() {
        let mut tally = Tally::new();
        for _ in 0..3 {
            tally.record_answer(Some("v1-canary"), 200, ms(2));
        }
        tally.record_error(ErrorKind::Connect);
        let table = tally.report(Duration::from_secs(1)).to_table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "4 requests in 1.00 s (4.0 req/s)");
        assert_eq!(lines[2], "version    status     count   share");
        assert_eq!(lines[3], "v1-canary     200         3   75.0%");
        assert!(
            table.contains("errors   connect 1  timeout 0  reset 0  other 0  (25.0%)"),
            "{table}"
        );
        assert!(table.contains("latency  p50 2.000 ms"), "{table}");
    }
}
