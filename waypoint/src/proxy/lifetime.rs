//! What both upstream pools ([`super::keepalive`] for HTTP/1.1,
//! [`super::multiplex`] for HTTP/2) keep about a pooled connection besides
//! the connection itself, and their eviction loop.

use std::time::Duration;

use tokio::time::Instant;
use warren_ztunnel::drain;

use super::connect::Route;
use crate::upstream::PoolLimits;

/// How often pooled connections are checked for their idle timeout and
/// maximum duration.
pub const EVICTION_INTERVAL: Duration = Duration::from_secs(1);

/// How a pooled connection reaches its endpoint, and how long it may be
/// used: the DestinationRule's settings of the request that opened it.
#[derive(Clone, Debug)]
pub struct Lifetime {
    route: Route,
    /// `http.idleTimeout`.
    idle_timeout: Duration,
    /// `tcp.maxConnectionDuration` from its opening.
    retire_at: Option<Instant>,
}

impl Lifetime {
    /// For a connection opened now by `route`.
    pub fn new(route: Route, limits: &PoolLimits) -> Self {
        Self {
            route,
            idle_timeout: limits.idle_timeout,
            retire_at: limits
                .max_connection_duration
                .map(|limit| Instant::now() + limit),
        }
    }

    /// Whether the endpoint is still reached this way (a pod that joined
    /// the mesh, moved node or changed identity is not reached over an old
    /// connection).
    pub fn reaches_by(&self, route: &Route) -> bool {
        self.route == *route
    }

    /// Whether it may stay pooled at `now`, unused since `last_used`.
    pub fn fresh(&self, last_used: Instant, now: Instant) -> bool {
        now.saturating_duration_since(last_used) < self.idle_timeout && !self.expired(now)
    }

    /// Whether it has lived its maximum duration at `now`.
    pub fn expired(&self, now: Instant) -> bool {
        self.retire_at.is_some_and(|at| now >= at)
    }
}

/// Calls `evict` every [`EVICTION_INTERVAL`] until the drain: each pool's
/// eviction task.
pub async fn sweep(mut drain: drain::Watch, evict: impl Fn(Instant)) {
    let mut tick = tokio::time::interval(EVICTION_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => evict(Instant::now()),
            () = drain.draining() => return,
        }
    }
}
