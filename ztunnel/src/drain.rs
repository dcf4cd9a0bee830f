//! Graceful drain: listeners stop accepting, open connections may finish until a
//! deadline, then whatever is left is cut.
//!
//! Every listener and connection task holds a [`Watch`]; the [`Trigger`] knows all are
//! done when the last one is dropped.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Running,
    /// Stop accepting; finish what is open.
    Draining,
    /// The deadline passed: close everything now.
    Forced,
}

/// Held by every task that must end before the process exits.
#[derive(Clone)]
pub struct Watch {
    phase: watch::Receiver<Phase>,
    _token: mpsc::Sender<()>,
}

impl Watch {
    /// Resolves once draining starts (at once if it has).
    pub async fn draining(&mut self) {
        // An error means the trigger is gone: that is a drain too.
        let _ = self.phase.wait_for(|p| *p >= Phase::Draining).await;
    }

    /// Resolves when the drain deadline passes.
    pub async fn forced(&mut self) {
        let _ = self.phase.wait_for(|p| *p >= Phase::Forced).await;
    }

    pub fn is_draining(&self) -> bool {
        *self.phase.borrow() >= Phase::Draining
    }
}

pub struct Trigger {
    phase: watch::Sender<Phase>,
    token: mpsc::Sender<()>,
    done: mpsc::Receiver<()>,
}

/// How a drain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every connection finished in time.
    Clean,
    /// The deadline passed and the rest were cut.
    Forced,
}

impl Default for Trigger {
    fn default() -> Self {
        Self::new()
    }
}

impl Trigger {
    pub fn new() -> Self {
        let (token, done) = mpsc::channel(1);
        Trigger {
            phase: watch::Sender::new(Phase::Running),
            token,
            done,
        }
    }

    pub fn watch(&self) -> Watch {
        Watch {
            phase: self.phase.subscribe(),
            _token: self.token.clone(),
        }
    }

    /// Starts draining and waits for every [`Watch`] to be dropped, up to `deadline`;
    /// then forces the rest and gives them `grace` to go.
    pub async fn drain(self, deadline: Duration, grace: Duration) -> Outcome {
        let Trigger {
            phase,
            token,
            mut done,
        } = self;
        drop(token);
        phase.send_replace(Phase::Draining);
        // `recv` yields `None` once every sender (every Watch) is gone.
        if tokio::time::timeout(deadline, done.recv()).await.is_ok() {
            return Outcome::Clean;
        }
        phase.send_replace(Phase::Forced);
        let _ = tokio::time::timeout(grace, done.recv()).await;
        Outcome::Forced
    }
}
