//! `warren-sample hold`: opens many TCP connections to an echo server, checks
//! each carries a round trip, keeps them all open for a while, then closes
//! them — so a test can see a proxy hold thousands of connections at once
//! (its memory, its file descriptors) and give everything back afterwards.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Result;
use serde::Serialize;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::Semaphore,
    task::JoinSet,
};
use tracing::info;

use crate::tally::ErrorKind;

pub struct Config {
    pub connect: SocketAddr,
    pub count: u32,
    /// Connection attempts in flight at once.
    pub parallel: usize,
    /// How long every connection stays open once all are established.
    pub hold: Duration,
    /// Limit for each connect and each round trip.
    pub timeout: Duration,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub requested: u32,
    /// Connections that carried their round trip and were held.
    pub held: u32,
    /// Round trips whose echo differed from what was sent.
    pub mismatched: u32,
    pub errors: Errors,
    /// Time to establish all of them.
    pub open_s: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct Errors {
    pub connect: u32,
    pub timeout: u32,
    pub reset: u32,
    pub other: u32,
}

enum Failure {
    Io(ErrorKind),
    Mismatch,
}

/// One connection with its round trip done.
async fn open(addr: SocketAddr, id: u32, timeout: Duration) -> Result<TcpStream, Failure> {
    let connect = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| Failure::Io(ErrorKind::Timeout))?
        .map_err(|_| Failure::Io(ErrorKind::Connect))?;
    let mut stream = connect;
    // Distinct bytes per connection: a proxy that mixed streams up shows.
    let message = format!("hold-{id:010}\n");
    let round_trip = async {
        stream.write_all(message.as_bytes()).await?;
        let mut echo = vec![0u8; message.len()];
        stream.read_exact(&mut echo).await?;
        Ok::<_, std::io::Error>(echo)
    };
    let echo = tokio::time::timeout(timeout, round_trip)
        .await
        .map_err(|_| Failure::Io(ErrorKind::Timeout))?
        .map_err(|e| Failure::Io(round_trip_error(&e)))?;
    if echo != message.as_bytes() {
        return Err(Failure::Mismatch);
    }
    Ok(stream)
}

fn round_trip_error(error: &std::io::Error) -> ErrorKind {
    use std::io::ErrorKind as Io;
    match error.kind() {
        Io::ConnectionReset | Io::ConnectionAborted | Io::BrokenPipe | Io::UnexpectedEof => {
            ErrorKind::Reset
        }
        Io::TimedOut => ErrorKind::Timeout,
        _ => ErrorKind::Other,
    }
}

pub async fn run(config: Config) -> Result<Report> {
    let start = Instant::now();
    let permits = Arc::new(Semaphore::new(config.parallel.max(1)));
    let mut tasks = JoinSet::new();
    for id in 0..config.count {
        let permits = Arc::clone(&permits);
        let (addr, timeout) = (config.connect, config.timeout);
        tasks.spawn(async move {
            // The semaphore is never closed.
            let _permit = permits.acquire_owned().await.ok();
            open(addr, id, timeout).await
        });
    }
    let mut report = Report {
        requested: config.count,
        ..Report::default()
    };
    let mut held = Vec::with_capacity(config.count as usize);
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(stream)) => held.push(stream),
            Ok(Err(Failure::Mismatch)) => report.mismatched += 1,
            Ok(Err(Failure::Io(kind))) => match kind {
                ErrorKind::Connect => report.errors.connect += 1,
                ErrorKind::Timeout => report.errors.timeout += 1,
                ErrorKind::Reset => report.errors.reset += 1,
                ErrorKind::Other => report.errors.other += 1,
            },
            Err(_) => report.errors.other += 1,
        }
    }
    report.held = u32::try_from(held.len()).unwrap_or(u32::MAX);
    report.open_s = start.elapsed().as_secs_f64();
    // Tests wait for this line to measure the proxies while everything is open.
    info!(held = report.held, hold = ?config.hold, "holding connections");
    tokio::time::sleep(config.hold).await;
    drop(held);
    info!("released connections");
    Ok(report)
}
