//! SIGTERM and SIGINT, the two ways a testbed or a person stops a server.

use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio::signal::unix::{Signal, SignalKind, signal};

/// How long a server lets in-flight work finish after a signal before it gives up on it.
pub const GRACE: Duration = Duration::from_secs(5);

pub struct Shutdown {
    terminate: Signal,
    interrupt: Signal,
}

impl Shutdown {
    /// Installs the handlers. Done before serving, so a signal that arrives while the
    /// server starts up is not lost (and a failure to install shows at once).
    pub fn install() -> Result<Self> {
        Ok(Self {
            terminate: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            interrupt: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    /// Waits for either signal and names it. Cancel-safe, so it can sit in a `select!`.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}
