//! Connection pool limits (Envoy's circuit breakers, as Istio sets them
//! from `connectionPool`), per upstream cluster.
//!
//! A request needs a slot to be sent. Over HTTP/1.1 a connection carries one
//! request at a time, so the slots are `min(maxConnections,
//! http2MaxRequests)`; over HTTP/2 requests share connections, so only
//! `http2MaxRequests` limits them. A request that finds no free slot waits,
//! first come first served, if fewer than `http1MaxPendingRequests` are
//! already waiting; otherwise it is refused at once ([`Overflow`]: the proxy
//! answers 503 with `x-envoy-overloaded`, Envoy's `UO`). A cluster speaks one
//! protocol to its endpoints: use [`Pool::admit`] or
//! [`Pool::admit_multiplexed`], not both.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::policy::PoolLimits;

/// The request was refused: the pool is full and so is its queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("upstream overflow: every connection is busy and the pending queue is full")]
pub struct Overflow;

/// A slot in the pool, held for the whole request; dropping it frees the
/// slot for the next waiting request.
#[derive(Debug)]
pub struct Permit {
    _slot: OwnedSemaphorePermit,
}

/// One retry in flight (`http.maxRetries`); dropping it ends the retry.
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
    /// HTTP/1.1 slots: one request per connection.
    serial: Arc<Semaphore>,
    /// HTTP/2 slots: requests share connections.
    multiplexed: Arc<Semaphore>,
    pending: AtomicU64,
    overflows: AtomicU64,
    retries: Arc<AtomicU64>,
    retry_overflows: AtomicU64,
}

/// Takes the request off the pending count however the wait ends
/// (a slot, or the caller giving up and dropping the future).
struct Waiting<'a>(&'a AtomicU64);

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
    pub(crate) fn new(limits: PoolLimits) -> Self {
        let serial = limits.max_connections.min(limits.max_requests);
        Self {
            serial: Arc::new(Semaphore::new(permits(serial))),
            multiplexed: Arc::new(Semaphore::new(permits(limits.max_requests))),
            limits,
            pending: AtomicU64::new(0),
            overflows: AtomicU64::new(0),
            retries: Arc::new(AtomicU64::new(0)),
            retry_overflows: AtomicU64::new(0),
        }
    }

    pub(crate) fn limits(&self) -> &PoolLimits {
        &self.limits
    }

    /// A slot for an HTTP/1.1 request.
    pub(crate) async fn admit(&self) -> Result<Permit, Overflow> {
        self.acquire(&self.serial).await
    }

    /// A slot for an HTTP/2 request.
    pub(crate) async fn admit_multiplexed(&self) -> Result<Permit, Overflow> {
        self.acquire(&self.multiplexed).await
    }

    async fn acquire(&self, slots: &Arc<Semaphore>) -> Result<Permit, Overflow> {
        // A free slot exists only when nobody waits (tokio hands a released
        // permit to the first waiter), so this does not jump the queue.
        if let Ok(slot) = slots.clone().try_acquire_owned() {
            return Ok(Permit { _slot: slot });
        }
        let already = self.pending.fetch_add(1, Ordering::AcqRel);
        let waiting = Waiting(&self.pending);
        if already >= u64::from(self.limits.max_pending_requests) {
            self.overflows.fetch_add(1, Ordering::Relaxed);
            return Err(Overflow);
        }
        // The semaphore is never closed; if it were, refusing is the answer.
        let slot = slots.clone().acquire_owned().await.map_err(|_| Overflow)?;
        drop(waiting);
        Ok(Permit { _slot: slot })
    }

    /// A retry may start if fewer than `maxRetries` are in flight.
    pub(crate) fn try_retry(&self) -> Option<RetryPermit> {
        let before = self.retries.fetch_add(1, Ordering::AcqRel);
        if before >= u64::from(self.limits.max_retries) {
            self.retries.fetch_sub(1, Ordering::AcqRel);
            self.retry_overflows.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(RetryPermit {
            retries: self.retries.clone(),
        })
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
