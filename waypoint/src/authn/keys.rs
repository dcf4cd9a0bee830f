//! The keys tokens are verified with: a rule's inline key set, or one
//! fetched from its `jwksUri` (or found by OpenID discovery on its issuer)
//! and refreshed in the background.
//!
//! One fetcher per key set location, shared by every generation of the
//! compiled tables that names it: a rebuild does not fetch again, and the
//! fetcher stops when the last generation naming it is dropped.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use jsonwebtoken::{
    Algorithm, DecodingKey,
    jwk::{AlgorithmParameters, Jwk},
};
use tokio::sync::watch;
use tracing::{info, warn};

/// Istio's default refresh interval for fetched key sets
/// (`PILOT_JWT_PUB_KEY_REFRESH_INTERVAL`).
const REFRESH: Duration = Duration::from_secs(20 * 60);
/// Retries of a failed fetch back off up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A key set (or discovery document) larger than this is refused.
const MAX_DOCUMENT: usize = 1 << 20;

/// A key set, ready to verify with.
pub struct Keys {
    keys: Vec<Key>,
}

pub struct Key {
    pub kid: Option<String>,
    /// The algorithm the key is for, when the set says.
    pub alg: Option<Algorithm>,
    pub key: DecodingKey,
}

impl Keys {
    /// No keys: every token is refused.
    pub fn empty() -> Keys {
        Keys { keys: Vec::new() }
    }

    /// A rule's own key set (`jwks`): every key must be readable, as the
    /// agent checked.
    pub fn inline(text: &str) -> Result<Keys, String> {
        let set = warren_model::validate::key_set(text)?;
        Ok(Keys {
            keys: set.keys.iter().filter_map(Key::from_jwk).collect(),
        })
    }

    /// A fetched key set: keys this proxy cannot use are skipped, since
    /// an issuer may publish other key types, or encryption keys, beside
    /// its signing keys; at least one must be usable.
    pub fn fetched(text: &str) -> Result<Keys, String> {
        #[derive(serde::Deserialize)]
        struct Set {
            keys: Vec<serde_json::Value>,
        }
        let set: Set =
            serde_json::from_str(text).map_err(|e| format!("not a JSON Web Key Set: {e}"))?;
        let keys: Vec<Key> = set
            .keys
            .into_iter()
            .filter_map(|v| serde_json::from_value::<Jwk>(v).ok())
            // A shared secret in a published set is everyone's.
            .filter(|jwk| !matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)))
            .filter_map(|jwk| Key::from_jwk(&jwk))
            .collect();
        if keys.is_empty() {
            return Err("no key of the set can verify tokens".into());
        }
        Ok(Keys { keys })
    }

    /// The keys a token with `kid` (if it names one) signed with `alg` may
    /// be verified by: a key without a `kid` is tried for any (as Envoy
    /// does), one with a `kid` only for that.
    pub fn candidates(&self, kid: Option<&str>, alg: Algorithm) -> impl Iterator<Item = &Key> {
        self.keys.iter().filter(move |k| {
            (kid.is_none() || k.kid.is_none() || k.kid.as_deref() == kid)
                && k.alg.is_none_or(|a| a == alg)
        })
    }
}

impl Key {
    /// A signing key ([`warren_model::validate::signing_key`]); `None` for
    /// an encryption key or one that cannot be used.
    fn from_jwk(jwk: &Jwk) -> Option<Key> {
        let (key, alg) = warren_model::validate::signing_key(jwk).ok()??;
        Some(Key {
            kid: jwk.common.key_id.clone(),
            alg,
            key,
        })
    }
}

/// Where a key set comes from, when it is not inline.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Remote {
    /// `jwksUri`.
    Uri(String),
    /// OpenID discovery: `<issuer>/.well-known/openid-configuration` names
    /// the key set's location.
    Discovery(String),
}

impl std::fmt::Display for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Remote::Uri(uri) => f.write_str(uri),
            Remote::Discovery(issuer) => write!(f, "{issuer} (OpenID discovery)"),
        }
    }
}

/// What a fetcher has: nothing yet, the last good key set, or only a
/// failure.
type Fetched = Option<Result<Arc<Keys>, String>>;

/// Fetches one remote key set and keeps it fresh while it is in use.
pub struct Fetcher {
    remote: Remote,
    timeout: Duration,
    current: watch::Receiver<Fetched>,
    /// The refresh task, once started; the sender it publishes with until
    /// then.
    task: Mutex<Task>,
}

enum Task {
    NotStarted(watch::Sender<Fetched>),
    Running(tokio::task::JoinHandle<()>),
    /// No runtime to run it on (unit tests).
    Unavailable,
}

impl Drop for Fetcher {
    fn drop(&mut self) {
        if let Task::Running(task) = &*self.task.get_mut().unwrap_or_else(|p| p.into_inner()) {
            task.abort();
        }
    }
}

impl Fetcher {
    /// Starts fetching, if not yet.
    pub fn start(&self) {
        let mut task = self.task.lock().unwrap_or_else(|p| p.into_inner());
        if !matches!(*task, Task::NotStarted(_)) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            *task = Task::Unavailable;
            return;
        };
        if let Task::NotStarted(tx) = std::mem::replace(&mut *task, Task::Unavailable) {
            *task = Task::Running(runtime.spawn(refresh(self.remote.clone(), self.timeout, tx)));
        }
    }

    /// The key set, waiting up to `timeout` for a first fetch (started now
    /// if it was not).
    pub async fn keys(&self, timeout: Duration) -> Result<Arc<Keys>, String> {
        self.start();
        let mut current = self.current.clone();
        let waited = tokio::time::timeout(timeout, current.wait_for(Option::is_some)).await;
        let fetched = match waited {
            Ok(Ok(fetched)) => fetched.clone(),
            Ok(Err(_)) => None,
            Err(_) => {
                return Err(format!(
                    "no key set from {} within {timeout:?}",
                    self.remote
                ));
            }
        };
        match fetched {
            Some(result) => result,
            None => Err(format!("the fetcher of {} stopped", self.remote)),
        }
    }

    pub fn remote(&self) -> &Remote {
        &self.remote
    }
}

/// The fetchers in use, by location.
#[derive(Default)]
pub struct KeyStore {
    fetchers: Mutex<HashMap<Remote, Weak<Fetcher>>>,
}

impl KeyStore {
    /// The fetcher of `remote`, shared if one is in use. It fetches once a
    /// token needs it ([`Fetcher::keys`]) or once [`Fetcher::start`]ed, so a
    /// rule no request of this waypoint meets costs no request to its
    /// issuer. Outside a runtime (unit tests) nothing is fetched: tokens
    /// needing it are refused.
    pub fn fetcher(&self, remote: Remote, timeout: Duration) -> Arc<Fetcher> {
        let mut fetchers = self.fetchers.lock().unwrap_or_else(|p| p.into_inner());
        fetchers.retain(|_, f| f.strong_count() > 0);
        if let Some(fetcher) = fetchers.get(&remote).and_then(Weak::upgrade) {
            return fetcher;
        }
        let (tx, rx) = watch::channel(None);
        let fetcher = Arc::new(Fetcher {
            remote: remote.clone(),
            timeout,
            current: rx,
            task: Mutex::new(Task::NotStarted(tx)),
        });
        fetchers.insert(remote, Arc::downgrade(&fetcher));
        fetcher
    }
}

/// Fetches `remote` now and every [`REFRESH`]; a failed fetch is retried
/// with backoff and does not replace a good key set.
async fn refresh(remote: Remote, timeout: Duration, tx: watch::Sender<Fetched>) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let fetched = tokio::time::timeout(timeout, fetch(&remote))
            .await
            .unwrap_or_else(|_| Err(format!("timed out after {timeout:?}")));
        match fetched {
            Ok(keys) => {
                info!(jwks = %remote, keys = keys.keys.len(), "fetched JWT key set");
                tx.send_replace(Some(Ok(Arc::new(keys))));
                backoff = Duration::from_secs(1);
                tokio::time::sleep(REFRESH).await;
            }
            Err(error) => {
                warn!(jwks = %remote, %error, retry_in = ?backoff, "fetching JWT key set failed");
                tx.send_if_modified(|current| match current {
                    Some(Ok(_)) => false,
                    _ => {
                        *current = Some(Err(error));
                        true
                    }
                });
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

async fn fetch(remote: &Remote) -> Result<Keys, String> {
    let uri = match remote {
        Remote::Uri(uri) => uri.clone(),
        Remote::Discovery(issuer) => {
            let url = format!(
                "{}/.well-known/openid-configuration",
                issuer.trim_end_matches('/')
            );
            let document = get(&url).await?;
            let document: serde_json::Value = serde_json::from_slice(&document)
                .map_err(|e| format!("{url}: not a JSON document: {e}"))?;
            document
                .get("jwks_uri")
                .and_then(|u| u.as_str())
                .ok_or_else(|| format!("{url}: no jwks_uri"))?
                .to_owned()
        }
    };
    let body = get(&uri).await?;
    let text = std::str::from_utf8(&body).map_err(|_| format!("{uri}: not UTF-8 text"))?;
    Keys::fetched(text).map_err(|e| format!("{uri}: {e}"))
}

/// One GET over HTTP or HTTPS (the system's roots), body at most
/// [`MAX_DOCUMENT`].
async fn get(url: &str) -> Result<Bytes, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(Arc::new(rustls::crypto::ring::default_provider()))
        .map_err(|e| format!("no TLS roots for {url}: {e}"))?
        .https_or_http()
        .enable_http1()
        .build();
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let response = client
        .get(uri)
        .await
        // `{:#}`: the error with its causes (the connect error under it).
        .map_err(|e| format!("{url}: {:#}", anyhow::Error::new(e)))?;
    if !response.status().is_success() {
        return Err(format!("{url}: answered {}", response.status()));
    }
    let body = Limited::new(response.into_body(), MAX_DOCUMENT)
        .collect()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    Ok(body.to_bytes())
}
