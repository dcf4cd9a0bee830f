//! `warren-sample pingpong`: latency and throughput of one connection to an `echo` server.
//!
//! Round trips: send a message, wait for all of it to come back, repeat, recording each
//! round trip's time; this is what a datapath shortcut (or a proxy hop) changes most.
//! Stream: send a fixed amount in 64 KiB writes while a concurrent task reads the echo,
//! timed until the last echoed byte arrived.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tracing::info;

use crate::{load::Output, pattern::ByteStream};

/// Round trips above this are recorded as this (an hour, in nanoseconds); none of a
/// bounded run with a per-round-trip timeout lasts longer.
const MAX_RTT_NS: u64 = 3_600_000_000_000;
/// Three significant digits: 0.1% error on any latency.
const SIGNIFICANT_DIGITS: u8 = 3;
/// Write size of the stream mode.
const STREAM_WRITE: usize = 64 * 1024;
const MIB: u64 = 1 << 20;

/// When a round-trip run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    AfterRoundTrips(u64),
    /// No round trip starts after this long.
    AfterDuration(Duration),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    RoundTrips {
        size: usize,
        stop: Stop,
    },
    /// Each round trip on a connection of its own, timed from before the
    /// connect to the last echoed byte: what a proxy adds to a new
    /// connection (its handshakes included).
    NewConnections {
        size: usize,
        stop: Stop,
    },
    Stream {
        mib: u64,
    },
}

pub struct Config {
    pub connect: SocketAddr,
    pub mode: Mode,
    /// Limit on connecting, on each round trip, and on each read of the stream mode.
    pub timeout: Duration,
    pub output: Output,
}

/// The result of a round-trip run (`pingpong --json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoundTripReport {
    pub round_trips: u64,
    pub duration_s: f64,
    pub rtt_per_s: f64,
    pub latency_us: LatencyUs,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencyUs {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// The result of a stream run (`pingpong --stream-mib N --json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StreamReport {
    pub stream_mib: u64,
    pub duration_s: f64,
    pub stream_mib_s: f64,
}

pub async fn run(config: Config) -> Result<()> {
    if let Mode::NewConnections { size, stop } = config.mode {
        info!(addr = %config.connect, mode = ?config.mode, "pingpong starting");
        let (addr, timeout) = (config.connect, config.timeout);
        let report =
            tokio::task::spawn_blocking(move || new_connections(addr, size, stop, timeout))
                .await
                .context("the round-trip thread panicked")??;
        return print_report(&report, RoundTripReport::to_table, config.output);
    }
    let stream = tokio::time::timeout(config.timeout, TcpStream::connect(config.connect))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "connecting to {}: no answer within {:?}",
                config.connect,
                config.timeout
            )
        })?
        .with_context(|| format!("connecting to {}", config.connect))?;
    // Each message must leave at once, not wait for the previous one's ACK.
    stream
        .set_nodelay(true)
        .context("setting TCP_NODELAY on the connection")?;
    info!(addr = %config.connect, mode = ?config.mode, "pingpong starting");

    match config.mode {
        Mode::RoundTrips { size, stop } => {
            let stream = stream
                .into_std()
                .context("taking the connection out of the runtime")?;
            stream
                .set_nonblocking(false)
                .context("making the connection blocking")?;
            let timeout = config.timeout;
            let report =
                tokio::task::spawn_blocking(move || round_trips(stream, size, stop, timeout))
                    .await
                    .context("the round-trip thread panicked")??;
            print_report(&report, RoundTripReport::to_table, config.output)
        }
        Mode::Stream { mib } => {
            let report = stream_through(stream, mib, config.timeout).await?;
            print_report(&report, StreamReport::to_table, config.output)
        }
        Mode::NewConnections { .. } => unreachable!("answered above"),
    }
}

fn print_report<R: Serialize>(report: &R, table: fn(&R) -> String, output: Output) -> Result<()> {
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string(report).context("encoding the report")?
        ),
        Output::Table => print!("{}", table(report)),
    }
    Ok(())
}

/// Round trips with blocking I/O on a thread of its own. An async runtime
/// adds its own wake-up path (epoll, a task switch) to every round trip; on a
/// fast path that overhead would hide the very difference being measured.
fn round_trips(
    mut stream: std::net::TcpStream,
    size: usize,
    stop: Stop,
    timeout: Duration,
) -> Result<RoundTripReport> {
    stream
        .set_read_timeout(Some(timeout))
        .context("setting the read timeout")?;
    stream
        .set_write_timeout(Some(timeout))
        .context("setting the write timeout")?;
    timed(size, stop, |n, message, echo| {
        exchange(&mut stream, message, echo)
            .with_context(|| format!("round trip {n} (timeout {timeout:?})"))
    })
}

/// Round trips each on a new blocking connection (see [`Mode::NewConnections`]).
fn new_connections(
    addr: SocketAddr,
    size: usize,
    stop: Stop,
    timeout: Duration,
) -> Result<RoundTripReport> {
    timed(size, stop, |n, message, echo| {
        let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("connection {n} to {addr}"))?;
        stream
            .set_nodelay(true)
            .and_then(|()| stream.set_read_timeout(Some(timeout)))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .context("setting up the connection")?;
        exchange(&mut stream, message, echo)
            .with_context(|| format!("round trip on connection {n} (timeout {timeout:?})"))
    })
}

fn exchange(
    stream: &mut std::net::TcpStream,
    message: &[u8],
    echo: &mut [u8],
) -> std::io::Result<()> {
    use std::io::{Read as _, Write as _};
    stream.write_all(message)?;
    stream.read_exact(echo)
}

/// Runs `one` (round trip number n, message, echo buffer) until `stop`,
/// timing each call and checking each echo.
fn timed(
    size: usize,
    stop: Stop,
    mut one: impl FnMut(u64, &[u8], &mut [u8]) -> Result<()>,
) -> Result<RoundTripReport> {
    // Varied bytes rather than zeros, so an echo that mixes up messages is caught.
    let mut message = vec![0u8; size];
    ByteStream::new(0).fill(&mut message);
    let mut echo = vec![0u8; size];
    let mut rtt_ns = Histogram::<u64>::new_with_bounds(1, MAX_RTT_NS, SIGNIFICANT_DIGITS)
        .context("creating the latency histogram")?;
    let started = Instant::now();
    let mut done = 0u64;
    loop {
        let more = match stop {
            Stop::AfterRoundTrips(n) => done < n,
            Stop::AfterDuration(d) => started.elapsed() < d,
        };
        if !more {
            break;
        }
        let began = Instant::now();
        one(done + 1, &message, &mut echo)?;
        let rtt = u64::try_from(began.elapsed().as_nanos()).unwrap_or(u64::MAX);
        rtt_ns.saturating_record(rtt.max(1));
        ensure!(
            echo == message,
            "round trip {}: the echo differs from the message",
            done + 1
        );
        done += 1;
    }
    Ok(RoundTripReport::new(done, started.elapsed(), &rtt_ns))
}

/// Sends `mib` MiB and reads the echo concurrently (sending everything first would fill
/// both directions' buffers and stall); done when the last echoed byte arrived.
async fn stream_through(stream: TcpStream, mib: u64, timeout: Duration) -> Result<StreamReport> {
    let total = mib
        .checked_mul(MIB)
        .with_context(|| format!("--stream-mib {mib} is more than 2^64 bytes"))?;
    let (mut reader, mut writer) = stream.into_split();
    let started = Instant::now();
    let reading = tokio::spawn(async move {
        let mut buf = vec![0u8; STREAM_WRITE];
        let mut received = 0u64;
        while received < total {
            let n = tokio::time::timeout(timeout, reader.read(&mut buf))
                .await
                .map_err(|_| {
                    anyhow::anyhow!("no echo for {timeout:?} after {received} of {total} bytes")
                })?
                .with_context(|| format!("reading the echo after {received} of {total} bytes"))?;
            if n == 0 {
                bail!("the echo ended after {received} of {total} bytes");
            }
            received += n as u64;
        }
        Ok(started.elapsed())
    });

    let chunk = vec![0u8; STREAM_WRITE];
    let mut left = total;
    let written: Result<()> = async {
        while left > 0 {
            // `min` with a usize-sized write, so the cast is lossless.
            let size = left.min(STREAM_WRITE as u64) as usize;
            writer
                .write_all(&chunk[..size])
                .await
                .with_context(|| format!("writing after {} of {total} bytes", total - left))?;
            left -= size as u64;
        }
        // Lets the echo server finish: it closes its side once ours is closed.
        writer.shutdown().await.context("closing the writing side")
    }
    .await;

    let elapsed = match reading.await {
        // A failed write explains a missing echo: say both.
        Ok(Err(read_error)) => match written {
            Err(write_error) => bail!("{read_error:#}; before that, {write_error:#}"),
            Ok(()) => return Err(read_error),
        },
        Ok(Ok(elapsed)) => elapsed,
        Err(join_error) => bail!("the reading task failed: {join_error}"),
    };
    written?;
    let duration_s = elapsed.as_secs_f64();
    Ok(StreamReport {
        stream_mib: mib,
        duration_s,
        stream_mib_s: if duration_s > 0.0 {
            mib as f64 / duration_s
        } else {
            0.0
        },
    })
}

impl RoundTripReport {
    fn new(round_trips: u64, elapsed: Duration, rtt_ns: &Histogram<u64>) -> Self {
        let duration_s = elapsed.as_secs_f64();
        let us = |ns: u64| ns as f64 / 1000.0;
        let at = |quantile: f64| us(rtt_ns.value_at_quantile(quantile));
        Self {
            round_trips,
            duration_s,
            rtt_per_s: if duration_s > 0.0 {
                round_trips as f64 / duration_s
            } else {
                0.0
            },
            latency_us: LatencyUs {
                p50: at(0.50),
                p90: at(0.90),
                p99: at(0.99),
                max: us(rtt_ns.max()),
            },
        }
    }

    pub fn to_table(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail, so the fmt::Results below are ignored.
        let _ = writeln!(
            out,
            "{} round trips in {:.2} s ({:.1} round trips/s)",
            self.round_trips, self.duration_s, self.rtt_per_s
        );
        let latency = &self.latency_us;
        let _ = writeln!(
            out,
            "latency  p50 {:.1} µs  p90 {:.1} µs  p99 {:.1} µs  max {:.1} µs",
            latency.p50, latency.p90, latency.p99, latency.max
        );
        out
    }
}

impl StreamReport {
    pub fn to_table(&self) -> String {
        format!(
            "{} MiB echoed in {:.3} s ({:.1} MiB/s)\n",
            self.stream_mib, self.duration_s, self.stream_mib_s
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Within the histogram's 0.1% precision.
    fn assert_close(actual: f64, expected: f64) {
        assert!(
            (actual - expected).abs() <= expected * 0.001 + 0.001,
            "{actual} is not close to {expected}"
        );
    }

    #[test]
    fn percentiles_are_in_microseconds() {
        let mut rtt_ns =
            Histogram::<u64>::new_with_bounds(1, MAX_RTT_NS, SIGNIFICANT_DIGITS).unwrap();
        for n in 1..=100 {
            rtt_ns.record(n * 10_000).unwrap();
        }
        let report = RoundTripReport::new(100, Duration::from_secs(2), &rtt_ns);
        assert_close(report.rtt_per_s, 50.0);
        assert_close(report.latency_us.p50, 500.0);
        assert_close(report.latency_us.p90, 900.0);
        assert_close(report.latency_us.p99, 990.0);
        assert_close(report.latency_us.max, 1000.0);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["round_trips"], 100);
        for key in ["p50", "p90", "p99", "max"] {
            assert!(json["latency_us"][key].is_f64(), "{json}");
        }
        assert!(report.to_table().starts_with("100 round trips in 2.00 s"));
    }

    #[test]
    fn an_empty_run_reports_zeros() {
        let rtt_ns = Histogram::<u64>::new_with_bounds(1, MAX_RTT_NS, SIGNIFICANT_DIGITS).unwrap();
        let report = RoundTripReport::new(0, Duration::ZERO, &rtt_ns);
        assert_eq!(report.rtt_per_s, 0.0);
        assert_eq!(report.latency_us.max, 0.0);
    }
}
