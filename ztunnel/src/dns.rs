//! Names of endpoints known by name (a ServiceEntry with `resolution: DNS` or
//! `DNS_ROUND_ROBIN`), resolved when a connection picks one.
//!
//! Each answer is kept for its TTL (at least a second), so a busy name costs a query
//! per TTL, not one per connection, and a changed record takes effect when the old
//! answer expires; an expired answer is refreshed in the background while it still
//! serves, so no connection waits on DNS once a name has resolved. The resolver is
//! built on first use: a node whose ServiceEntries name nothing
//! never reads resolv.conf nor holds a cache, and a resolver that could not be built
//! (resolv.conf missing) is tried again by the next connection.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hickory_resolver::{
    TokioResolver,
    config::{LookupIpStrategy, NameServerConfig, ResolverConfig},
    net::{NetError, runtime::TokioRuntimeProvider},
};
use tokio::sync::OnceCell;
use tracing::warn;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("no DNS resolver: {0}")]
    Config(String),
    #[error("cannot resolve {host}: {source}")]
    Lookup {
        host: String,
        #[source]
        source: NetError,
    },
    #[error("{host} resolves to no address")]
    NoAddress { host: String },
    #[error("resolving {host} took longer than {seconds:.1} s")]
    Timeout { host: String, seconds: f64 },
}

impl DnsError {
    /// The servers answered that the name has no address (NXDOMAIN, or no
    /// records), as opposed to failing to answer.
    fn no_such_name(&self) -> bool {
        match self {
            DnsError::Lookup { source, .. } => source.is_no_records_found(),
            DnsError::NoAddress { .. } => true,
            DnsError::Config(_) | DnsError::Timeout { .. } => false,
        }
    }
}

/// Shortest time an answer is kept: a TTL of 0 would cost a query per
/// connection (Envoy's `dns_min_refresh_rate` has the same purpose).
const MIN_TTL: Duration = Duration::from_secs(1);
/// After a refresh failed, how long the last good answer serves before the
/// next refresh.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Resolves endpoint names with the configured servers, or the system's.
/// Cheap to clone: clones share the answers.
#[derive(Clone)]
pub struct Resolver(Arc<Inner>);

struct Inner {
    /// `--dns-server`; empty: /etc/resolv.conf.
    servers: Vec<SocketAddr>,
    resolver: OnceCell<TokioResolver>,
    known: Mutex<HashMap<String, Known>>,
}

/// The last good answer for a name.
struct Known {
    addresses: Vec<IpAddr>,
    valid_until: Instant,
    /// A refresh runs in the background.
    refreshing: bool,
}

impl Resolver {
    pub fn new(servers: Vec<SocketAddr>) -> Resolver {
        Resolver(Arc::new(Inner {
            servers,
            resolver: OnceCell::new(),
            known: Mutex::default(),
        }))
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<String, Known>> {
        // Nothing under this lock panics; a poisoned map is still sound.
        self.0.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every address `host` resolves to, in the answer's order, and until
    /// when that holds. A name resolved before is answered at once: while
    /// its answer holds, from it; once expired, still from it while one
    /// refresh runs in the background, as Envoy keeps a DNS cluster's hosts.
    /// So when the DNS servers fail or stall, the last good answer stands in
    /// (a warning says so), until a name that no longer exists (NXDOMAIN,
    /// no records) is dropped. Only a name never resolved waits, within
    /// `limit`.
    pub async fn resolve(
        &self,
        host: &str,
        limit: Duration,
    ) -> Result<(Vec<IpAddr>, Instant), DnsError> {
        let now = Instant::now();
        if let Some(known) = self.known().get_mut(host) {
            if known.valid_until > now {
                return Ok((known.addresses.clone(), known.valid_until));
            }
            if !known.refreshing {
                known.refreshing = true;
                let (this, name) = (self.clone(), host.to_owned());
                tokio::spawn(async move {
                    // What it found is in `known`; failures are logged there.
                    let _ = this.refresh(&name, limit).await;
                });
            }
            return Ok((known.addresses.clone(), now + RETRY_AFTER));
        }
        self.refresh(host, limit).await
    }

    /// As [`Resolver::resolve`], the addresses alone.
    pub async fn lookup(&self, host: &str, limit: Duration) -> Result<Vec<IpAddr>, DnsError> {
        self.resolve(host, limit)
            .await
            .map(|(addresses, _)| addresses)
    }

    /// Asks the servers for `host` within `limit` and keeps what they say.
    async fn refresh(
        &self,
        host: &str,
        limit: Duration,
    ) -> Result<(Vec<IpAddr>, Instant), DnsError> {
        let answer = tokio::time::timeout(limit, self.lookup_until(host))
            .await
            .unwrap_or_else(|_| {
                Err(DnsError::Timeout {
                    host: host.to_owned(),
                    seconds: limit.as_secs_f64(),
                })
            });
        let now = Instant::now();
        let mut known = self.known();
        match answer {
            Ok((addresses, until)) => {
                let valid_until = until.max(now + MIN_TTL);
                known.insert(
                    host.to_owned(),
                    Known {
                        addresses: addresses.clone(),
                        valid_until,
                        refreshing: false,
                    },
                );
                Ok((addresses, valid_until))
            }
            Err(error) if error.no_such_name() => {
                known.remove(host);
                Err(error)
            }
            Err(error) => match known.get_mut(host) {
                Some(stale) => {
                    warn!(%host, %error, addresses = ?stale.addresses, "DNS failed; the name's last answer stands in");
                    stale.valid_until = now + RETRY_AFTER;
                    stale.refreshing = false;
                    Ok((stale.addresses.clone(), stale.valid_until))
                }
                None => Err(error),
            },
        }
    }

    /// One lookup, with when its answer expires (its TTL).
    async fn lookup_until(&self, host: &str) -> Result<(Vec<IpAddr>, Instant), DnsError> {
        let resolver = self
            .0
            .resolver
            .get_or_try_init(|| async { build(&self.0.servers) })
            .await?;
        // A name with dots is asked as it is, not appended to the node's
        // search domains first (a ServiceEntry names hosts in full).
        let query = if host.contains('.') && !host.ends_with('.') {
            format!("{host}.")
        } else {
            host.to_owned()
        };
        let answer =
            resolver
                .lookup_ip(query.as_str())
                .await
                .map_err(|source| DnsError::Lookup {
                    host: host.to_owned(),
                    source,
                })?;
        let addresses: Vec<IpAddr> = answer.iter().map(|ip| ip.to_canonical()).collect();
        if addresses.is_empty() {
            return Err(DnsError::NoAddress {
                host: host.to_owned(),
            });
        }
        Ok((addresses, answer.valid_until()))
    }

    /// The address a connection to `host` goes to, of the family the client
    /// dialled (`v4`) when the name has one: the answer's first
    /// (`DNS_ROUND_ROBIN`: the server rotates its answers), or any of them
    /// (`DNS`: every address is an endpoint; connections spread at random),
    /// within `limit` (see [`Resolver::resolve`]).
    pub async fn pick(
        &self,
        host: &str,
        first: bool,
        v4: bool,
        limit: Duration,
    ) -> Result<IpAddr, DnsError> {
        let addresses = preferring(self.lookup(host, limit).await?, v4);
        let index = if first {
            0
        } else {
            rand::random_range(0..addresses.len())
        };
        // `lookup` never returns an empty list.
        addresses
            .get(index)
            .copied()
            .ok_or_else(|| DnsError::NoAddress {
                host: host.to_owned(),
            })
    }
}

/// The addresses of one family (IPv4 with `v4`) when there are any, else
/// all: a name with both is reached in the client's own address family
/// (as Istio's ztunnel does), or IPv4 first where no client decides.
pub fn preferring(addresses: Vec<IpAddr>, v4: bool) -> Vec<IpAddr> {
    if addresses.iter().any(|ip| ip.is_ipv4() == v4) {
        addresses
            .into_iter()
            .filter(|ip| ip.is_ipv4() == v4)
            .collect()
    } else {
        addresses
    }
}

fn build(servers: &[SocketAddr]) -> Result<TokioResolver, DnsError> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = if servers.is_empty() {
        TokioResolver::builder(provider)
            .map_err(|e| DnsError::Config(format!("reading /etc/resolv.conf: {e}")))?
    } else {
        let name_servers = servers
            .iter()
            .map(|server| {
                let mut config = NameServerConfig::udp_and_tcp(server.ip());
                for connection in &mut config.connections {
                    connection.port = server.port();
                }
                config
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(name_servers),
            provider,
        )
    };
    // Both families, IPv4 first ([`preferring`] chooses); hickory's default
    // puts IPv6 first.
    builder.options_mut().ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    builder.build().map_err(|e| DnsError::Config(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dialled_family_first_else_any() {
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(preferring(vec![v6, v4], true), [v4]);
        assert_eq!(preferring(vec![v6, v4], false), [v6]);
        assert_eq!(preferring(vec![v6], true), [v6]);
        assert_eq!(preferring(vec![v4], false), [v4]);
    }
}
