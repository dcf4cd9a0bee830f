//! What both upstream pools ([`super::keepalive`] for HTTP/1.1,
//! [`super::multiplex`] for HTTP/2) keep about a pooled connection besides
//! the connection itself, and their eviction loop.

use std::{cell::RefCell, collections::HashMap, sync::Arc, time::Duration};

use tokio::time::Instant;
use warren_ztunnel::{drain, proxy::hbone::client::Carrier, state::State};

use crate::tables::Tables;

use super::connect::{Route, Via};
use crate::upstream::{Origination, PoolLimits};

/// Whether connections started with some TLS are still asked for: its
/// settings are some rule's or policy's ([`crate::upstream::Policies::starts`],
/// of the tables in force), and the names it checks still listed
/// ([`entry_still_names`]).
pub type InForce<'a> = &'a dyn Fn(&Origination) -> bool;

/// The most idle connections a pool keeps per endpoint (beyond any one
/// load's concurrency, which reuses them): clients naming many servers
/// under a wildcard host (one connection per name) must not pile up idle
/// connections until their idle timeout.
pub const MAX_IDLE_PER_ENDPOINT: usize = 256;

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
    /// The HBONE connection it runs on, if it is a tunnel: once that one goes away
    /// (its ztunnel drains), this one takes no new request.
    carrier: Option<Carrier>,
}

impl Lifetime {
    /// For a connection opened now by `route`, over `carrier` if a tunnel.
    pub fn new(route: Route, limits: &PoolLimits, carrier: Option<Carrier>) -> Self {
        Self {
            route,
            idle_timeout: limits.idle_timeout,
            retire_at: limits
                .max_connection_duration
                .map(|limit| Instant::now() + limit),
            carrier,
        }
    }

    /// Whether the endpoint is still reached this way (a pod that joined
    /// the mesh, moved node or changed identity is not reached over an old
    /// connection), with the TLS the cluster asks for (another cluster's
    /// connection to the same endpoint may carry other TLS, or none).
    pub fn reaches_by(&self, route: &Route) -> bool {
        self.route == *route
    }

    /// Whether the TLS it started (if any) is still asked for: settings no
    /// rule or policy holds any more, or names its ServiceEntry no longer
    /// lists, would never be taken again.
    pub fn tls_in_force(&self, in_force: InForce<'_>) -> bool {
        self.route.tls.as_ref().is_none_or(in_force)
    }

    /// Whether it goes by `via`, whatever its TLS.
    pub fn goes_via(&self, via: &Via) -> bool {
        self.route.via == *via
    }

    /// Whether it may stay pooled at `now`, unused since `last_used`.
    pub fn fresh(&self, last_used: Instant, now: Instant) -> bool {
        self.idle_within(last_used, now) && !self.retired(now)
    }

    /// Whether, unused since `last_used`, it is within its idle timeout at `now`.
    pub fn idle_within(&self, last_used: Instant, now: Instant) -> bool {
        now.saturating_duration_since(last_used) < self.idle_timeout
    }

    /// Whether it must take no new request at `now`: it has lived its maximum
    /// duration, or the HBONE connection under it takes no new stream (the peer
    /// ztunnel is draining; a new connection reaches its successor).
    pub fn retired(&self, now: Instant) -> bool {
        self.expired(now)
            || self
                .carrier
                .as_ref()
                .is_some_and(|carrier| !carrier.accepts_streams())
    }

    /// Whether it has lived its maximum duration at `now` (the cheaper half
    /// of [`Lifetime::retired`]: no look at the HBONE connection).
    pub fn expired(&self, now: Instant) -> bool {
        self.retire_at.is_some_and(|at| now >= at)
    }
}

/// Whether the ServiceEntry whose `subjectAltNames` `tls` checks (if any)
/// lists them still: once it lists others, or is gone, connections checking
/// the old names would never be taken again.
pub fn entry_still_names(tls: &Origination, state: &State) -> bool {
    tls.entry_names().is_none_or(|(entry, names)| {
        state
            .service(entry)
            .is_some_and(|service| service.subject_alt_names == names)
    })
}

/// Calls `evict` every [`EVICTION_INTERVAL`] until the drain, with the
/// TLS the tables in force and the ServiceEntries of `state` ask for: each
/// pool's eviction task.
pub async fn sweep(
    mut drain: drain::Watch,
    tables: Arc<Tables>,
    state: Arc<State>,
    evict: impl Fn(Instant, InForce<'_>),
) {
    let mut tick = tokio::time::interval(EVICTION_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let compiled = tables.current();
                // Connections made alike share their settings: each is looked
                // up once a sweep, however many connections (and rules) there are.
                let seen = RefCell::new(HashMap::<usize, bool>::new());
                evict(Instant::now(), &|tls| {
                    let settings = tls.settings();
                    let id = std::ptr::from_ref(settings) as usize;
                    let held = *seen
                        .borrow_mut()
                        .entry(id)
                        .or_insert_with(|| compiled.policies.starts(settings));
                    held && entry_still_names(tls, &state)
                });
            }
            () = drain.draining() => return,
        }
    }
}
