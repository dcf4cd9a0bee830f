//! Keeping a certificate for every wanted identity: obtain it, renew it at
//! half its remaining lifetime (±10 % jitter, so a node's certificates do
//! not all renew at once), retry failures with backoff, drop what is no
//! longer wanted, and keep the trust bundle current.
//!
//! One task owns all state; the [`Handle`] only sends the wanted set and
//! hands out a watch of the certificates.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::{sync::watch, time::Instant};
use tracing::{info, warn};
use warren_api::{Identity, config::Certificate};

use super::{
    client::{CaClient, ClientConfig, ClientError},
    csr,
};
use crate::ca::x509::{self, Usage};

/// First retry delay after a failure; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Never renew sooner than this after obtaining (a CA granting tiny TTLs
/// must not turn the agent into a busy loop).
const MIN_RENEW_AFTER: Duration = Duration::from_millis(500);

/// The certificates in force, as the agent pushes them to ztunnel.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Certificates {
    pub by_identity: BTreeMap<Identity, Arc<Certificate>>,
    /// The roots to trust (old and new during a root rotation).
    pub roots_pem: Vec<String>,
}

/// Starts the certificate task.
pub struct Manager;

impl Manager {
    /// Spawns the task on the current tokio runtime. It runs until every
    /// clone of the returned handle is dropped.
    pub fn spawn(config: ClientConfig) -> Handle {
        let (wanted_tx, wanted_rx) = watch::channel(BTreeSet::new());
        let (certs_tx, certs_rx) = watch::channel(Certificates::default());
        let renewer = Renewer {
            bundle_every: config.trust_bundle_every.max(Duration::from_secs(1)),
            client: CaClient::new(config),
            entries: BTreeMap::new(),
            published: certs_tx,
            roots: Vec::new(),
        };
        tokio::spawn(renewer.run(wanted_rx));
        Handle {
            wanted: Arc::new(wanted_tx),
            certificates: certs_rx,
        }
    }
}

/// How the rest of the agent talks to the certificate task.
#[derive(Clone)]
pub struct Handle {
    wanted: Arc<watch::Sender<BTreeSet<Identity>>>,
    certificates: watch::Receiver<Certificates>,
}

impl Handle {
    /// The identities to hold certificates for (replaces the previous set;
    /// identities left out are dropped).
    pub fn want(&self, identities: BTreeSet<Identity>) {
        self.wanted.send_if_modified(|wanted| {
            let changed = *wanted != identities;
            *wanted = identities;
            changed
        });
    }

    /// Certificates as they are obtained, renewed and dropped.
    pub fn certificates(&self) -> watch::Receiver<Certificates> {
        self.certificates.clone()
    }
}

/// What the task knows about one identity.
struct Entry {
    cert: Option<Arc<Certificate>>,
    /// When to obtain (first time, renewal or retry).
    due: Instant,
    failures: u32,
}

#[derive(Debug, thiserror::Error)]
enum ObtainError {
    #[error("generating a key and CSR: {0}")]
    Key(#[from] rcgen::Error),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the CA's answer is not usable: {0}")]
    Answer(String),
}

impl ObtainError {
    /// The CA was not reached (or its files are missing): every request
    /// would fail the same way.
    fn unreachable(&self) -> bool {
        match self {
            ObtainError::Client(ClientError::Status(status)) => {
                status.code() == tonic::Code::Unavailable
            }
            ObtainError::Client(_) => true,
            ObtainError::Key(_) | ObtainError::Answer(_) => false,
        }
    }
}

struct Renewer {
    client: CaClient,
    entries: BTreeMap<Identity, Entry>,
    roots: Vec<String>,
    published: watch::Sender<Certificates>,
    bundle_every: Duration,
}

impl Renewer {
    async fn run(mut self, mut wanted: watch::Receiver<BTreeSet<Identity>>) {
        // The bundle is fetched at once: proxies need the roots to accept
        // peers before this node has any workload of its own.
        let mut bundle_due = Instant::now();
        loop {
            let next = self
                .entries
                .values()
                .map(|e| e.due)
                .chain(self.expiries())
                .chain([bundle_due])
                .min()
                .unwrap_or(bundle_due);
            tokio::select! {
                changed = wanted.changed() => {
                    if changed.is_err() {
                        // Every handle is gone.
                        return;
                    }
                    let set = wanted.borrow_and_update().clone();
                    self.set_wanted(set);
                }
                _ = tokio::time::sleep_until(next) => {}
            }
            let now = Instant::now();
            let due: Vec<Identity> = self
                .entries
                .iter()
                .filter(|(_, e)| e.due <= now)
                .map(|(id, _)| id.clone())
                .collect();
            let mut due = due.into_iter();
            while let Some(identity) = due.next() {
                if let Err(retry_at) = self.obtain(identity).await {
                    // The CA cannot be reached: the others would wait for
                    // the same timeout one after another. They retry with
                    // this one instead.
                    for other in due.by_ref() {
                        if let Some(entry) = self.entries.get_mut(&other) {
                            entry.due = entry.due.max(retry_at);
                        }
                    }
                }
            }
            if Instant::now() >= bundle_due {
                // Until a bundle is in, retry soon rather than every period.
                let wait = if self.refresh_bundle().await || !self.roots.is_empty() {
                    self.bundle_every
                } else {
                    self.bundle_every.min(Duration::from_secs(2))
                };
                bundle_due = Instant::now() + wait;
            }
            self.drop_expired();
            self.publish();
        }
    }

    fn set_wanted(&mut self, wanted: BTreeSet<Identity>) {
        self.entries.retain(|identity, _| {
            let keep = wanted.contains(identity);
            if !keep {
                info!(identity = %identity, "certificate no longer wanted; dropped");
            }
            keep
        });
        let now = Instant::now();
        for identity in wanted {
            self.entries.entry(identity).or_insert(Entry {
                cert: None,
                due: now,
                failures: 0,
            });
        }
    }

    /// When held certificates expire, as instants (to drop them on time if
    /// renewal keeps failing).
    fn expiries(&self) -> impl Iterator<Item = Instant> + '_ {
        self.entries
            .values()
            .filter_map(|e| e.cert.as_ref())
            .map(|c| instant_at(c.not_after))
    }

    /// Obtains or renews one certificate. `Err(retry_at)` when the CA could
    /// not be reached at all (as opposed to a refusal of this request).
    async fn obtain(&mut self, identity: Identity) -> Result<(), Instant> {
        let result = self.request(&identity).await;
        let Some(entry) = self.entries.get_mut(&identity) else {
            return Ok(());
        };
        match result {
            Ok((cert, roots)) => {
                let renew_in = renew_after(cert.not_after);
                info!(
                    identity = %identity,
                    not_after = cert.not_after,
                    renew_in = ?renew_in,
                    "certificate obtained"
                );
                entry.cert = Some(Arc::new(cert));
                entry.failures = 0;
                entry.due = Instant::now() + renew_in;
                if !roots.is_empty() {
                    self.roots = roots;
                }
                Ok(())
            }
            Err(err) => {
                entry.failures = entry.failures.saturating_add(1);
                let retry_in = backoff(entry.failures);
                entry.due = Instant::now() + retry_in;
                warn!(
                    identity = %identity,
                    error = %err,
                    attempt = entry.failures,
                    retry_in = ?retry_in,
                    still_valid = entry.cert.is_some(),
                    "obtaining a certificate failed"
                );
                if err.unreachable() {
                    Err(entry.due)
                } else {
                    Ok(())
                }
            }
        }
    }

    /// One CSR, one Sign call, and checks of the answer.
    async fn request(
        &mut self,
        identity: &Identity,
    ) -> Result<(Certificate, Vec<String>), ObtainError> {
        let request = csr::generate(identity)?;
        let response = self.client.sign(request.csr_pem, identity).await?;
        check_answer(
            identity,
            request.key.public_key_raw(),
            &response.chain_pem,
            &response.roots_pem,
        )
        .map_err(ObtainError::Answer)?;
        Ok((
            Certificate {
                identity: identity.to_string(),
                chain_pem: response.chain_pem,
                private_key_pem: request.key.serialize_pem(),
                not_before: response.not_before,
                not_after: response.not_after,
            },
            response.roots_pem,
        ))
    }

    /// Fetches the bundle; true if the CA answered with one.
    async fn refresh_bundle(&mut self) -> bool {
        match self.client.trust_bundle().await {
            Ok(roots) if !roots.is_empty() => {
                if roots != self.roots {
                    info!(roots = roots.len(), "trust bundle changed");
                }
                self.roots = roots;
                true
            }
            Ok(_) => {
                warn!("the CA sent an empty trust bundle; keeping the current one");
                false
            }
            Err(err) => {
                warn!(error = %err, "fetching the trust bundle failed; retrying later");
                false
            }
        }
    }

    fn drop_expired(&mut self) {
        let now = unix_now();
        for (identity, entry) in &mut self.entries {
            if entry.cert.as_ref().is_some_and(|c| c.not_after <= now) {
                warn!(identity = %identity, "certificate expired before it could be renewed; withdrawn");
                entry.cert = None;
            }
        }
    }

    fn publish(&self) {
        let next = Certificates {
            by_identity: self
                .entries
                .iter()
                .filter_map(|(id, e)| e.cert.clone().map(|c| (id.clone(), c)))
                .collect(),
            roots_pem: self.roots.clone(),
        };
        self.published.send_if_modified(|current| {
            let changed = *current != next;
            if changed {
                *current = next;
            }
            changed
        });
    }
}

/// Refuses an answer that is not a certificate for our key and identity,
/// chaining to the roots the CA sent: better a retry than a certificate
/// every peer would reject.
fn check_answer(
    identity: &Identity,
    public_key: &[u8],
    chain_pem: &[String],
    roots_pem: &[String],
) -> Result<(), String> {
    let chain = x509::certs_from_pem(&chain_pem.concat()).map_err(|e| format!("chain: {e}"))?;
    let roots = x509::certs_from_pem(&roots_pem.concat()).map_err(|e| format!("roots: {e}"))?;
    let leaf = x509::parse(chain.first().ok_or("empty chain")?).map_err(|e| e.to_string())?;
    if leaf.public_key().subject_public_key.data.as_ref() != public_key {
        return Err("the leaf is not for the key we sent".into());
    }
    let summary = super::describe(chain_pem).map_err(|e| e.to_string())?;
    if summary.uris != [identity.to_string()] {
        return Err(format!("the leaf names {:?}, not {identity}", summary.uris));
    }
    x509::verify_chain(
        &chain,
        &roots,
        time::OffsetDateTime::now_utc(),
        Usage::Client,
    )
    .map_err(|e| format!("the chain does not verify to the CA's roots: {e}"))
}

/// Half of the remaining lifetime, ±10 %.
fn renew_after(not_after: i64) -> Duration {
    let remaining = not_after.saturating_sub(unix_now()).max(0) as f64;
    let jitter: f64 = rand::random_range(0.9..1.1);
    Duration::from_secs_f64(remaining / 2.0 * jitter).max(MIN_RENEW_AFTER)
}

fn backoff(failures: u32) -> Duration {
    let base = FIRST_BACKOFF
        .saturating_mul(1u32 << failures.saturating_sub(1).min(10))
        .min(MAX_BACKOFF);
    base.mul_f64(rand::random_range(0.9..1.1))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The instant at which the wall clock reads `unix_seconds`.
fn instant_at(unix_seconds: i64) -> Instant {
    let ahead = unix_seconds.saturating_sub(unix_now()).max(0);
    Instant::now() + Duration::from_secs(u64::try_from(ahead).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_at_half_the_remaining_lifetime_with_jitter() {
        for _ in 0..100 {
            let after = renew_after(unix_now() + 1000);
            assert!(
                after >= Duration::from_secs(449) && after <= Duration::from_secs(551),
                "{after:?}"
            );
        }
        // An expired or nearly expired certificate is renewed right away,
        // but never in a busy loop.
        assert_eq!(renew_after(unix_now() - 5), MIN_RENEW_AFTER);
    }

    #[test]
    fn backoff_doubles_up_to_a_minute() {
        let d1 = backoff(1);
        assert!(d1 >= Duration::from_millis(450) && d1 <= Duration::from_millis(550));
        let d3 = backoff(3);
        assert!(d3 >= Duration::from_millis(1800) && d3 <= Duration::from_millis(2200));
        let d30 = backoff(30);
        assert!(d30 >= Duration::from_secs(54) && d30 <= Duration::from_secs(66));
    }
}
