//! Connection pool limits (Envoy's circuit breakers, as Istio sets them
//! from `connectionPool`), per upstream cluster.
//!
//! Two counts, as in Envoy: connections (`tcp.maxConnections`) and active
//! requests of any protocol (`http.http2MaxRequests`, Envoy's
//! `max_requests`). An HTTP/1.1 request needs a connection of its own; when
//! none is free it waits, first come first served, if fewer than
//! `http1MaxPendingRequests` are already waiting. Every HTTP request also
//! needs a request slot, and one over `http2MaxRequests` is refused at once:
//! that limit has no queue. An HTTP/2 request shares its endpoint's
//! connections and needs only the request slot; when every one is at its
//! stream limit and `maxConnections` allows no other, it waits in the same
//! pending queue ([`Pool::pend`], `proxy/multiplex.rs`). A connection to a TCP port is
//! refused at once when `maxConnections` are open (Envoy's TCP proxy does
//! not queue: a long-lived connection may never free its place). A refusal
//! is [`Overflow`]: the proxy answers 503 (Envoy's `UO`) or closes the
//! connection.
//!
//! Retries in flight are bounded by `http.maxRetries`, or, when the rule sets
//! a `retryBudget`, by a share of the requests ([`RetryBudget`]): the share
//! grows with the load, so a burst of failing requests cannot all be retried
//! at once and double the load on a struggling service (a retry storm),
//! while a quiet cluster still gets the budget's minimum.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::policy::{PoolLimits, RetryBudget};

/// The request was refused: the pool is full and so is its queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("upstream overflow: every connection is busy and the pending queue is full")]
pub struct Overflow;

/// A place in the pool, held for the whole request or connection; dropping
/// it frees the place for the next one.
#[derive(Debug)]
pub struct Permit {
    _connection: Option<OwnedSemaphorePermit>,
    _request: Option<OwnedSemaphorePermit>,
}

/// One retry in flight (counted against `http.maxRetries` or the retry
/// budget); dropping it ends the retry.
#[derive(Debug)]
pub struct RetryPermit {
    retries: Arc<AtomicU64>,
}

impl Drop for RetryPermit {
    fn drop(&mut self) {
        self.retries.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug)]
pub(crate) struct Pool {
    limits: PoolLimits,
    /// Open connections: HTTP/1.1 requests (one each) and TCP connections.
    connections: Arc<Semaphore>,
    /// Active HTTP requests, whatever their protocol.
    requests: Arc<Semaphore>,
    pending: AtomicU64,
    overflows: AtomicU64,
    retries: Arc<AtomicU64>,
    retry_overflows: AtomicU64,
    /// `retryBudget`, in place of `limits.max_retries`.
    budget: Option<RetryBudget>,
    /// The requests made lately, for a budget with an interval.
    recent: Option<Mutex<Recent>>,
}

/// Takes the request off the pending count however the wait ends
/// (a slot, or the caller giving up and dropping the future).
pub(crate) struct Waiting<'a>(&'a AtomicU64);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A semaphore size for a limit (2^32-1 is above tokio's maximum on 32-bit
/// targets, and unlimited anyway).
fn permits(limit: u32) -> usize {
    usize::try_from(limit)
        .unwrap_or(usize::MAX)
        .min(Semaphore::MAX_PERMITS)
}

impl Pool {
    pub(crate) fn new(limits: PoolLimits, budget: Option<RetryBudget>) -> Self {
        Self {
            connections: Arc::new(Semaphore::new(permits(limits.max_connections))),
            requests: Arc::new(Semaphore::new(permits(limits.max_requests))),
            limits,
            pending: AtomicU64::new(0),
            overflows: AtomicU64::new(0),
            retries: Arc::new(AtomicU64::new(0)),
            retry_overflows: AtomicU64::new(0),
            recent: budget
                .and_then(|b| b.interval)
                .map(|interval| Mutex::new(Recent::new(interval, Instant::now()))),
            budget,
        }
    }

    pub(crate) fn limits(&self) -> &PoolLimits {
        &self.limits
    }

    /// A place for an HTTP/1.1 request: a connection (waiting in the
    /// pending queue if need be), then a request slot.
    pub(crate) async fn admit(&self) -> Result<Permit, Overflow> {
        // Envoy checks the request breaker before queueing: with every
        // request slot taken, waiting for a connection could only end in
        // the same refusal.
        if self.requests.available_permits() == 0 {
            return Err(self.overflow());
        }
        let connection = self.connection_or_wait().await?;
        let request = self.request()?;
        Ok(Permit {
            _connection: Some(connection),
            _request: Some(request),
        })
    }

    /// A place for an HTTP/2 request: a request slot.
    pub(crate) fn admit_multiplexed(&self) -> Result<Permit, Overflow> {
        Ok(Permit {
            _connection: None,
            _request: Some(self.request()?),
        })
    }

    /// A place for a connection to a TCP port, or a refusal at once.
    pub(crate) fn admit_connection(&self) -> Result<Permit, Overflow> {
        match self.connections.clone().try_acquire_owned() {
            Ok(connection) => Ok(Permit {
                _connection: Some(connection),
                _request: None,
            }),
            Err(_) => Err(self.overflow()),
        }
    }

    /// A connection place, if one is free now (an HTTP/2 connection beyond
    /// an endpoint's first).
    pub(crate) fn try_connection_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.connections.clone().try_acquire_owned().ok()
    }

    /// A connection place, once one is free.
    pub(crate) async fn connection_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.connections.clone().acquire_owned().await.ok()
    }

    /// A place in the pending queue for an HTTP/2 request that found every
    /// connection at its stream limit and no place for another (Envoy's
    /// HTTP/2 pool queues it under the same `max_pending_requests`), held
    /// while it waits; the queue full is [`Overflow`].
    pub(crate) fn pend(&self) -> Result<Waiting<'_>, Overflow> {
        let already = self.pending.fetch_add(1, Ordering::AcqRel);
        let waiting = Waiting(&self.pending);
        if already >= u64::from(self.limits.max_pending_requests) {
            return Err(self.overflow());
        }
        Ok(waiting)
    }

    fn request(&self) -> Result<OwnedSemaphorePermit, Overflow> {
        let slot = self
            .requests
            .clone()
            .try_acquire_owned()
            .map_err(|_| self.overflow())?;
        if let Some(recent) = &self.recent {
            lock(recent).record(Instant::now());
        }
        Ok(slot)
    }

    fn overflow(&self) -> Overflow {
        self.overflows.fetch_add(1, Ordering::Relaxed);
        Overflow
    }

    async fn connection_or_wait(&self) -> Result<OwnedSemaphorePermit, Overflow> {
        // A free connection exists only when nobody waits (tokio hands a
        // released permit to the first waiter), so this does not jump the
        // queue.
        if let Ok(slot) = self.connections.clone().try_acquire_owned() {
            return Ok(slot);
        }
        let already = self.pending.fetch_add(1, Ordering::AcqRel);
        let waiting = Waiting(&self.pending);
        if already >= u64::from(self.limits.max_pending_requests) {
            return Err(self.overflow());
        }
        // The semaphore is never closed; if it were, refusing is the answer.
        let slot = self
            .connections
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Overflow)?;
        drop(waiting);
        Ok(slot)
    }

    /// A retry may start if fewer than `maxRetries` are in flight, or than
    /// the retry budget allows.
    pub(crate) fn try_retry(&self) -> Option<RetryPermit> {
        let limit = self.retry_limit();
        let before = self.retries.fetch_add(1, Ordering::AcqRel);
        if before >= limit {
            self.retries.fetch_sub(1, Ordering::AcqRel);
            self.retry_overflows.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(RetryPermit {
            retries: self.retries.clone(),
        })
    }

    /// Retries that may be in flight now.
    pub(crate) fn retry_limit(&self) -> u64 {
        let Some(budget) = &self.budget else {
            return u64::from(self.limits.max_retries);
        };
        let base = match &self.recent {
            Some(recent) => lock(recent).total(Instant::now()),
            None => self.active_requests() + self.pending(),
        };
        budget.limit(base)
    }

    /// HTTP requests holding a request slot (retries included).
    pub(crate) fn active_requests(&self) -> u64 {
        let held = permits(self.limits.max_requests) - self.requests.available_permits();
        u64::try_from(held).unwrap_or(u64::MAX)
    }

    pub(crate) fn pending(&self) -> u64 {
        self.pending.load(Ordering::Acquire)
    }

    pub(crate) fn overflows(&self) -> u64 {
        self.overflows.load(Ordering::Relaxed)
    }

    pub(crate) fn retry_overflows(&self) -> u64 {
        self.retry_overflows.load(Ordering::Relaxed)
    }
}

fn lock(recent: &Mutex<Recent>) -> std::sync::MutexGuard<'_, Recent> {
    // Nothing under the lock can panic; a poisoned count is still a count.
    recent
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Requests made over the last interval, in ten slots of a tenth of it each
/// (as Envoy's budget interval counts them): a request leaves the count
/// between 0.9 and 1 interval after it was made.
#[derive(Debug)]
pub(crate) struct Recent {
    slot: Duration,
    /// Where the current slot began.
    since: Instant,
    current: usize,
    counts: [u64; SLOTS],
}

const SLOTS: usize = 10;

impl Recent {
    pub(crate) fn new(interval: Duration, now: Instant) -> Self {
        Self {
            // Intervals are 1 ms at least (checked on load); the floor only
            // keeps a slot from being zero, which the division needs.
            slot: (interval / SLOTS as u32).max(Duration::from_micros(1)),
            since: now,
            current: 0,
            counts: [0; SLOTS],
        }
    }

    pub(crate) fn record(&mut self, now: Instant) {
        self.advance(now);
        self.counts[self.current] += 1;
    }

    pub(crate) fn total(&mut self, now: Instant) -> u64 {
        self.advance(now);
        self.counts.iter().sum()
    }

    /// Moves to the slot `now` falls in, emptying the slots passed over.
    fn advance(&mut self, now: Instant) {
        let passed = now.saturating_duration_since(self.since).as_nanos() / self.slot.as_nanos();
        if passed == 0 {
            return;
        }
        for _ in 0..passed.min(SLOTS as u128) {
            self.current = (self.current + 1) % SLOTS;
            self.counts[self.current] = 0;
        }
        self.since = match u32::try_from(passed) {
            Ok(n) => self.since + self.slot * n,
            // Idle for ages: start afresh from now.
            Err(_) => now,
        };
    }
}
