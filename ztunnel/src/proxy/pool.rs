//! The HBONE connection pool: multiplexed HTTP/2 connections keyed by (source identity,
//! peer address, expected peer identity), a bound on streams per connection (another
//! connection opens when all are full), idle connections closed.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use tracing::debug;
use warren_api::Identity;

use super::hbone::{
    Tunnel,
    client::{self, Connection, Establish, HboneError, StreamGuard},
};
use crate::{
    config::Config,
    drain,
    tls::{TrustBundle, WorkloadCertificate},
};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub source: Identity,
    pub gateway: SocketAddr,
    pub expected: Identity,
}

type Slot = Arc<tokio::sync::Mutex<()>>;

/// A pooled connection without a stream for longer than this waits for the
/// answer to its next CONNECT before sending: a peer that died meanwhile is then
/// found, and retried on a fresh connection, before any client byte is spent.
const QUIET_BEFORE_EARLY_DATA: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<Config>,
    connections: Mutex<HashMap<PoolKey, Vec<Arc<Connection>>>>,
    /// One connect at a time per key: a burst of tunnels to a new peer shares the
    /// connections it opens instead of each opening its own.
    connecting: Mutex<HashMap<PoolKey, Slot>>,
}

impl Pool {
    pub fn new(config: Arc<Config>) -> Pool {
        Pool {
            inner: Arc::new(Inner {
                config,
                connections: Mutex::new(HashMap::new()),
                connecting: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// A CONNECT stream to `authority` through the peer of `key`; `establish` says
    /// whether it may carry bytes before the peer's answer.
    pub async fn tunnel(
        &self,
        key: &PoolKey,
        source_cert: &WorkloadCertificate,
        trust: &TrustBundle,
        authority: SocketAddr,
        source_ip: Option<IpAddr>,
        establish: Establish,
    ) -> Result<Tunnel, HboneError> {
        let mut tunnel = self
            .open(key, source_cert, trust, authority, source_ip, establish)
            .await?;
        if tunnel.is_early() {
            // A draining peer's GOAWAY can cross a stream already sent (or a peer
            // can refuse a stream over its limit): the peer did not process it, and
            // the splice opens it once more, on whichever connection the pool offers
            // then (one that got GOAWAY takes no streams), waiting for the answer
            // this time.
            let (pool, key) = (self.clone(), key.clone());
            let (cert, trust) = (source_cert.clone(), trust.clone());
            tunnel.reopen_with(Box::new(move || {
                Box::pin(async move {
                    let again = Establish::AwaitAnswer;
                    pool.open(&key, &cert, &trust, authority, source_ip, again)
                        .await
                })
            }));
        }
        Ok(tunnel)
    }

    async fn open(
        &self,
        key: &PoolKey,
        source_cert: &WorkloadCertificate,
        trust: &TrustBundle,
        authority: SocketAddr,
        source_ip: Option<IpAddr>,
        establish: Establish,
    ) -> Result<Tunnel, HboneError> {
        let timeout = self.inner.config.connect_header_timeout;
        // Pooled connections first. A peer that drains sends GOAWAY on all of them at
        // once; each refusal retires its connection, so every one is tried at most once.
        while let Some((connection, guard)) = self.find(key) {
            // Early data is sent again only when the peer says it did not take the
            // stream (GOAWAY); a connection that died unnoticed says nothing. So one
            // that may have, no stream on it for a while, first proves itself with
            // an answer.
            let usage = connection.usage();
            let quiet = usage.streams() <= 1 && usage.idle_for() > QUIET_BEFORE_EARLY_DATA;
            let establish = if quiet {
                Establish::AwaitAnswer
            } else {
                establish
            };
            match connection
                .open(guard, authority, source_ip, timeout, establish)
                .await
            {
                Err(HboneError::Http2 { source, .. }) if connection.is_closed() => {
                    debug!(%source, "pooled HBONE connection takes no more streams; trying the next");
                }
                // It may have died since (a reset): once more, on a fresh one.
                Err(HboneError::Http2 { source, .. }) => {
                    debug!(%source, "pooled HBONE connection failed; opening another");
                    break;
                }
                other => return other,
            }
        }
        let (connection, guard) = self.checkout_new(key, source_cert, trust).await?;
        connection
            .open(guard, authority, source_ip, timeout, establish)
            .await
    }

    /// A live connection of `key` with a free stream slot.
    fn find(&self, key: &PoolKey) -> Option<(Arc<Connection>, StreamGuard)> {
        let mut connections = self
            .inner
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let list = connections.get_mut(key)?;
        list.retain(|c| !c.is_closed());
        list.iter()
            .find_map(|c| c.try_reserve().map(|guard| (Arc::clone(c), guard)))
    }

    async fn checkout_new(
        &self,
        key: &PoolKey,
        source_cert: &WorkloadCertificate,
        trust: &TrustBundle,
    ) -> Result<(Arc<Connection>, StreamGuard), HboneError> {
        let slot = {
            let mut connecting = self
                .inner
                .connecting
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            Arc::clone(connecting.entry(key.clone()).or_default())
        };
        let _turn = slot.lock().await;
        // Whoever connected while we waited may have room for us.
        if let Some(found) = self.find(key) {
            return Ok(found);
        }
        let connection = Arc::new(
            client::connect(
                &self.inner.config,
                key.gateway,
                source_cert,
                trust,
                &key.expected,
            )
            .await?,
        );
        let guard = connection
            .try_reserve()
            .ok_or_else(|| HboneError::ConnectTimeout(key.gateway))?;
        debug!(peer = %key.gateway, source = %key.source, expected = %key.expected, "new pooled HBONE connection");
        self.inner
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default()
            .push(Arc::clone(&connection));
        Ok((connection, guard))
    }

    /// Connections open now, for tests and `/config_dump`.
    pub fn connection_count(&self) -> usize {
        let connections = self
            .inner
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        connections
            .values()
            .map(|l| l.iter().filter(|c| !c.is_closed()).count())
            .sum()
    }

    /// Drops connections with no stream that have been idle for `idle` (dropping the last
    /// sender closes the HTTP/2 connection), and the per-key slots no one uses.
    pub fn evict_idle(&self, idle: Duration) {
        let mut connections = self
            .inner
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        connections.retain(|_, list| {
            list.retain(|c| {
                let idle_long = c.usage().streams() == 0 && c.usage().idle_for() >= idle;
                !c.is_closed() && !idle_long
            });
            !list.is_empty()
        });
        drop(connections);
        let mut connecting = self
            .inner
            .connecting
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        connecting.retain(|_, slot| Arc::strong_count(slot) > 1);
    }

    /// Forgets every connection (streams in flight keep theirs alive until they end).
    pub fn clear(&self) {
        self.inner
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Evicts idle connections periodically until draining, then clears the pool.
    pub async fn run_eviction(self, mut drain: drain::Watch) {
        let idle = self.inner.config.pool_idle_timeout;
        let period = (idle / 4).max(Duration::from_millis(50));
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = drain.draining() => break,
                _ = ticker.tick() => self.evict_idle(idle),
            }
        }
        self.clear();
    }
}
