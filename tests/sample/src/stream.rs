//! `warren-sample stream`: a byte-exact check of a path to an `echo` server.
//!
//! Writes N bytes of a seeded pseudo-random stream ([`pattern`]) in writes of random sizes,
//! while reading the echo back and comparing each byte with the same stream regenerated on
//! the read side, so a gigabyte is checked without being held. After the last byte it
//! shuts down its writing and reads until the echo server closes too. Anything a datapath
//! can get wrong (a lost, repeated or reordered segment, a truncated half-close) shows as
//! a first mismatching offset or a short count.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde::Serialize;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
};
use tracing::{error, info};

use crate::{
    load::Output,
    pattern::{ByteStream, SplitMix64},
};

/// Exit status when the echo differed or was short.
pub const EXIT_MISMATCH: u8 = 1;
/// Exit status when no connection could be made, so a test can tell "the path is down"
/// from "the path corrupts data".
pub const EXIT_UNREACHABLE: u8 = 2;

/// Mixed into the seed for the write sizes, so they come from a sequence of their own:
/// the data bytes must not depend on how the writes were cut.
const WRITE_SIZE_SALT: u64 = 0x5752_4954_4553_495A;
const READ_BUFFER: usize = 256 * 1024;
const MIB: f64 = (1 << 20) as f64;

pub struct Config {
    pub connect: SocketAddr,
    pub bytes: u64,
    pub seed: u64,
    /// Largest write; each write's size is drawn from `1..=max_write`.
    pub max_write: usize,
    /// How long to wait for the connection, and at most between two reads.
    pub timeout: Duration,
    pub output: Output,
}

/// The result of a run; its JSON form is what tests read (`stream --json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub ok: bool,
    /// Offset of the first echoed byte that differs from what was sent (an echoed byte
    /// past the end counts as differing).
    pub first_mismatch: Option<u64>,
    pub duration_s: f64,
    pub throughput_mib_s: f64,
    /// Why the run ended early, if it did (a reset, a stall).
    pub error: Option<String>,
}

pub async fn run(config: Config) -> Result<ExitCode> {
    let stream =
        match tokio::time::timeout(config.timeout, TcpStream::connect(config.connect)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(connect_error)) => {
                error!(addr = %config.connect, error = %connect_error, "connecting failed");
                return Ok(ExitCode::from(EXIT_UNREACHABLE));
            }
            Err(_) => {
                error!(addr = %config.connect, timeout = ?config.timeout, "connecting timed out");
                return Ok(ExitCode::from(EXIT_UNREACHABLE));
            }
        };
    info!(
        addr = %config.connect,
        bytes = config.bytes,
        seed = config.seed,
        max_write = config.max_write,
        "stream starting"
    );

    let started = Instant::now();
    let (reader, writer) = stream.into_split();
    let sent = Arc::new(AtomicU64::new(0));
    let mut writing = tokio::spawn(write_stream(
        writer,
        config.seed,
        config.bytes,
        config.max_write,
        Arc::clone(&sent),
    ));
    let checked = check_echo(reader, config.seed, config.bytes, config.timeout).await;
    let duration = started.elapsed();

    // The echo has ended; a writer still going has nobody left to write to (the server
    // closed early). It gets the read timeout to notice before it is stopped.
    let write_error = match tokio::time::timeout(config.timeout, &mut writing).await {
        Ok(Ok(Ok(()))) => None,
        Ok(Ok(Err(write_error))) => Some(format!("writing failed: {write_error}")),
        Ok(Err(join_error)) => Some(format!("the writer failed: {join_error}")),
        Err(_) => {
            writing.abort();
            Some("writing stalled after the echo ended".to_owned())
        }
    };
    let report = Report::new(
        config.bytes,
        sent.load(Ordering::Relaxed),
        checked,
        write_error,
        duration,
    );

    match config.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string(&report).context("encoding the report")?
        ),
        Output::Table => print!("{}", report.to_table()),
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_MISMATCH)
    })
}

/// Writes `bytes` bytes of the stream in writes of random sizes, then shuts down writing.
/// `sent` counts what was written so far, for the report even if writing fails.
async fn write_stream(
    mut writer: OwnedWriteHalf,
    seed: u64,
    bytes: u64,
    max_write: usize,
    sent: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let mut data = ByteStream::new(seed);
    let mut sizes = SplitMix64::new(seed ^ WRITE_SIZE_SALT);
    let mut buf = vec![0u8; max_write];
    let mut left = bytes;
    while left > 0 {
        let size = sizes.between(1, max_write as u64).min(left);
        // `size <= max_write`, a usize.
        let chunk = &mut buf[..size as usize];
        data.fill(chunk);
        writer.write_all(chunk).await?;
        left -= size;
        sent.fetch_add(size, Ordering::Relaxed);
    }
    writer.shutdown().await
}

/// What the read side saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Checked {
    received: u64,
    first_mismatch: Option<u64>,
    error: Option<String>,
}

/// Reads the echo until EOF, comparing it with the stream regenerated from `seed`.
async fn check_echo(
    mut reader: OwnedReadHalf,
    seed: u64,
    bytes: u64,
    timeout: Duration,
) -> Checked {
    let mut checker = EchoChecker::new(seed, bytes);
    let mut buf = vec![0u8; READ_BUFFER];
    loop {
        match tokio::time::timeout(timeout, reader.read(&mut buf)).await {
            Ok(Ok(0)) => return checker.finish(None),
            Ok(Ok(n)) => checker.check(&buf[..n]),
            Ok(Err(read_error)) => {
                return checker.finish(Some(format!("reading the echo failed: {read_error}")));
            }
            Err(_) => {
                let stalled = format!("no echo for {timeout:?} after {} bytes", checker.received);
                return checker.finish(Some(stalled));
            }
        }
    }
}

/// Compares echoed chunks, however they were cut, with the expected stream.
struct EchoChecker {
    expected: ByteStream,
    scratch: Vec<u8>,
    bytes: u64,
    received: u64,
    first_mismatch: Option<u64>,
}

impl EchoChecker {
    fn new(seed: u64, bytes: u64) -> Self {
        Self {
            expected: ByteStream::new(seed),
            scratch: Vec::new(),
            bytes,
            received: 0,
            first_mismatch: None,
        }
    }

    fn check(&mut self, chunk: &[u8]) {
        let offset = self.received;
        self.received += chunk.len() as u64;
        // After the first difference the rest is only counted: one offset says it all.
        if self.first_mismatch.is_some() {
            return;
        }
        // The part of the chunk that should be there; bytes past the end never should.
        let in_stream = usize::try_from(self.bytes.saturating_sub(offset))
            .unwrap_or(usize::MAX)
            .min(chunk.len());
        self.scratch.resize(in_stream, 0);
        self.expected.fill(&mut self.scratch);
        let (wanted, extra) = chunk.split_at(in_stream);
        if wanted != self.scratch.as_slice() {
            let at = wanted
                .iter()
                .zip(&self.scratch)
                .position(|(got, want)| got != want)
                .unwrap_or_default();
            self.first_mismatch = Some(offset + at as u64);
        } else if !extra.is_empty() {
            self.first_mismatch = Some(self.bytes);
        }
    }

    fn finish(self, error: Option<String>) -> Checked {
        Checked {
            received: self.received,
            first_mismatch: self.first_mismatch,
            error,
        }
    }
}

impl Report {
    fn new(
        bytes: u64,
        sent: u64,
        checked: Checked,
        write_error: Option<String>,
        duration: Duration,
    ) -> Self {
        // The read side's error first: it is usually the cause, the writer's the symptom.
        let error = checked.error.or(write_error);
        let duration_s = duration.as_secs_f64();
        Self {
            bytes_sent: sent,
            bytes_received: checked.received,
            ok: error.is_none()
                && sent == bytes
                && checked.received == bytes
                && checked.first_mismatch.is_none(),
            first_mismatch: checked.first_mismatch,
            duration_s,
            throughput_mib_s: if duration_s > 0.0 {
                checked.received as f64 / MIB / duration_s
            } else {
                0.0
            },
            error,
        }
    }

    /// The human-readable form.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail, so the fmt::Results below are ignored.
        let _ = writeln!(
            out,
            "{}",
            if self.ok {
                "ok: the echo matched"
            } else {
                "FAILED: the echo differed or was short"
            }
        );
        let _ = writeln!(out, "sent            {} bytes", self.bytes_sent);
        let _ = writeln!(out, "received        {} bytes", self.bytes_received);
        let mismatch = self
            .first_mismatch
            .map_or_else(|| "none".to_owned(), |offset| format!("at byte {offset}"));
        let _ = writeln!(out, "first mismatch  {mismatch}");
        let _ = writeln!(
            out,
            "duration        {:.3} s ({:.1} MiB/s)",
            self.duration_s, self.throughput_mib_s
        );
        if let Some(error) = &self.error {
            let _ = writeln!(out, "error           {error}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected(seed: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        ByteStream::new(seed).fill(&mut buf);
        buf
    }

    #[test]
    fn a_faithful_echo_in_any_cut_matches() {
        let data = expected(5, 10_000);
        let mut checker = EchoChecker::new(5, 10_000);
        for piece in data.chunks(333) {
            checker.check(piece);
        }
        let checked = checker.finish(None);
        assert_eq!(checked.received, 10_000);
        assert_eq!(checked.first_mismatch, None);
    }

    #[test]
    fn finds_the_first_differing_byte() {
        let mut data = expected(5, 10_000);
        data[4_321] ^= 1;
        data[9_000] ^= 1;
        let mut checker = EchoChecker::new(5, 10_000);
        for piece in data.chunks(1000) {
            checker.check(piece);
        }
        let checked = checker.finish(None);
        assert_eq!(checked.first_mismatch, Some(4_321));
        assert_eq!(checked.received, 10_000);
    }

    #[test]
    fn bytes_past_the_end_are_a_mismatch_at_the_end() {
        let mut data = expected(5, 100);
        data.extend_from_slice(b"extra");
        let mut checker = EchoChecker::new(5, 100);
        checker.check(&data[..60]);
        checker.check(&data[60..]);
        let checked = checker.finish(None);
        assert_eq!(checked.first_mismatch, Some(100));
        assert_eq!(checked.received, 105);
    }

    #[test]
    fn the_report_is_ok_only_for_a_whole_exact_echo() {
        let second = Duration::from_secs(1);
        let whole = Checked {
            received: 1 << 20,
            ..Checked::default()
        };
        let report = Report::new(1 << 20, 1 << 20, whole.clone(), None, second);
        assert!(report.ok);
        assert_eq!(report.throughput_mib_s, 1.0);

        let short = Checked {
            received: 1000,
            ..Checked::default()
        };
        assert!(!Report::new(1 << 20, 1 << 20, short, None, second).ok);
        let failed_write = Report::new(
            1 << 20,
            1 << 20,
            whole.clone(),
            Some("reset".into()),
            second,
        );
        assert!(!failed_write.ok);
        assert_eq!(failed_write.error.as_deref(), Some("reset"));
        let mismatched = Checked {
            first_mismatch: Some(7),
            ..whole
        };
        assert!(!Report::new(1 << 20, 1 << 20, mismatched, None, second).ok);
    }

    #[test]
    fn json_has_the_documented_shape() {
        let checked = Checked {
            received: 2 << 20,
            first_mismatch: Some(12),
            error: None,
        };
        let report = Report::new(2 << 20, 2 << 20, checked, None, Duration::from_secs(2));
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "bytes_sent": 2 << 20,
                "bytes_received": 2 << 20,
                "ok": false,
                "first_mismatch": 12,
                "duration_s": 2.0,
                "throughput_mib_s": 1.0,
                "error": null,
            })
        );
        assert!(report.to_table().contains("first mismatch  at byte 12"));
    }
}
