//! Where a self-managed root is persisted, so that a restarted CA signs with
//! the same root (and peers keep trusting what it issued).
//!
//! Two places, one shape ([`RootState`]):
//! - local mode, the state folder: `signer.pem` (the active root and its
//!   key, mode 0600), `retired-roots.pem`, and `root-cert.pem` (the trust
//!   bundle clients read);
//! - Kubernetes (`--kube`), a Secret (`warren-ca-root` in the CA's
//!   namespace, type `Opaque`) with the keys `root-cert.pem`,
//!   `root-key.pem`, `retired-roots.pem` and `trust-bundle.pem`. A Secret
//!   survives the CA pod being rescheduled to another node, where a folder
//!   would not.
//!
//! Neither place is ever overwritten blindly: the folder changes under an
//! exclusive lock, the Secret is created with a POST (which fails if it
//! exists) and replaced only at the resourceVersion it was read at.

use std::{
    collections::BTreeMap,
    fmt, fs, io,
    path::{Path, PathBuf},
};

use k8s_openapi::{
    ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{Api, api::PostParams};
use tracing::info;

use super::persist::{self, StateLock};
use crate::config::CaSecretArgs;

pub const SIGNER_FILE: &str = "signer.pem";
pub const RETIRED_FILE: &str = "retired-roots.pem";
/// The trust bundle clients read (the CA's `--ca-root-file`).
pub const BUNDLE_FILE: &str = "root-cert.pem";

/// The Secret a CA started with `--kube` keeps its root in, by default.
pub const DEFAULT_SECRET_NAME: &str = "warren-ca-root";
/// Secret keys.
pub const SECRET_CERT: &str = "root-cert.pem";
pub const SECRET_KEY: &str = "root-key.pem";
pub const SECRET_RETIRED: &str = "retired-roots.pem";
pub const SECRET_BUNDLE: &str = "trust-bundle.pem";

/// What is persisted of a self-managed root, as PEM text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RootState {
    /// The active root's certificate.
    pub cert_pem: String,
    /// Its PKCS#8 private key.
    pub key_pem: String,
    /// Earlier roots still trusted after a rotation (may be empty).
    pub retired_pem: String,
}

/// A part of [`RootState`], to say where a bad one was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Cert,
    Key,
    Retired,
}

/// Where a piece of persisted state lives, for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    File(PathBuf),
    SecretKey { secret: String, key: &'static str },
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::File(path) => write!(f, "{}", path.display()),
            Place::SecretKey { secret, key } => write!(f, "Secret {secret}, key {key}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("Secret {secret}: {source}")]
    Kube { secret: String, source: kube::Error },
    #[error("Secret {secret}, key {key}: {reason}")]
    Malformed {
        secret: String,
        key: &'static str,
        reason: &'static str,
    },
    #[error(
        "Secret {secret} changed while this command was updating it (another rotate-root or \
         remove-root?): nothing was written, run the command again"
    )]
    Conflict { secret: String },
    #[error("Secret {secret} already exists but could not be read back")]
    Vanished { secret: String },
}

/// Where the root is persisted: exactly one of the two places.
#[derive(Clone, Debug)]
pub enum RootStore {
    Folder(PathBuf),
    // Boxed: a kube client is large, and stores are moved around.
    Secret(Box<SecretStore>),
}

/// What [`RootStore::create`] found.
#[derive(Debug)]
pub enum Created {
    /// Ours was written.
    Written,
    /// Someone else's was there first (another CA racing us): use it.
    Existing(RootState),
}

/// A read state and what the store needs to replace exactly that version.
#[derive(Debug)]
pub struct Versioned {
    pub state: RootState,
    /// The Secret's resourceVersion (the folder is locked instead).
    version: Option<String>,
}

impl RootStore {
    /// The state folder, or, given a client (`--kube`), the Secret `args`
    /// names.
    pub fn of(state_dir: &Path, args: &CaSecretArgs, client: Option<kube::Client>) -> Self {
        match client {
            None => RootStore::Folder(state_dir.to_owned()),
            Some(client) => {
                let namespace = args
                    .namespace
                    .clone()
                    .unwrap_or_else(|| client.default_namespace().to_owned());
                RootStore::Secret(Box::new(SecretStore::new(
                    client,
                    &namespace,
                    &args.secret_name,
                )))
            }
        }
    }

    /// Where a part of the state lives.
    pub fn place(&self, part: Part) -> Place {
        match self {
            RootStore::Folder(dir) => Place::File(dir.join(match part {
                Part::Cert | Part::Key => SIGNER_FILE,
                Part::Retired => RETIRED_FILE,
            })),
            RootStore::Secret(secret) => Place::SecretKey {
                secret: secret.id(),
                key: match part {
                    Part::Cert => SECRET_CERT,
                    Part::Key => SECRET_KEY,
                    Part::Retired => SECRET_RETIRED,
                },
            },
        }
    }

    /// The state, if there is one yet.
    pub async fn read(&self) -> Result<Option<Versioned>, StoreError> {
        match self {
            RootStore::Folder(dir) => Ok(read_folder(dir)?.map(|state| Versioned {
                state,
                version: None,
            })),
            RootStore::Secret(secret) => secret.read().await,
        }
    }

    /// Persists a first state, unless one exists already: then that one is
    /// returned and ours is dropped, so that racing CAs agree on one root.
    pub async fn create(&self, state: &RootState, bundle: &str) -> Result<Created, StoreError> {
        match self {
            RootStore::Folder(dir) => {
                let _lock = StateLock::acquire(dir).map_err(io_err(dir))?;
                // Another process may have created it while we waited.
                if let Some(existing) = read_folder(dir)? {
                    return Ok(Created::Existing(existing));
                }
                write_folder(dir, None, state, bundle)?;
                Ok(Created::Written)
            }
            RootStore::Secret(secret) => secret.create(state, bundle).await,
        }
    }

    /// Replaces `previous` (as read) with `next`. The folder must be locked
    /// by the caller (see [`RootStore::lock`]); the Secret refuses if it
    /// changed since it was read.
    pub async fn replace(
        &self,
        previous: Option<&Versioned>,
        next: &RootState,
        bundle: &str,
    ) -> Result<(), StoreError> {
        match self {
            RootStore::Folder(dir) => write_folder(dir, previous.map(|p| &p.state), next, bundle),
            RootStore::Secret(secret) => match previous {
                Some(previous) => secret.replace(previous.version.clone(), next, bundle).await,
                None => match secret.create(next, bundle).await? {
                    Created::Written => Ok(()),
                    Created::Existing(_) => Err(StoreError::Conflict {
                        secret: secret.id(),
                    }),
                },
            },
        }
    }

    /// Serializes read-modify-write commands on the folder; the Secret
    /// needs no lock (its resourceVersion detects concurrent changes).
    pub fn lock(&self) -> Result<Option<StateLock>, StoreError> {
        match self {
            RootStore::Folder(dir) => Ok(Some(StateLock::acquire(dir).map_err(io_err(dir))?)),
            RootStore::Secret(_) => Ok(None),
        }
    }
}

impl fmt::Display for RootStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RootStore::Folder(dir) => write!(f, "folder {}", dir.display()),
            RootStore::Secret(secret) => write!(f, "Secret {}", secret.id()),
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Reads `signer.pem` (certificate and key in one file, so that a rotation
/// swaps both in a single rename) and `retired-roots.pem`.
fn read_folder(dir: &Path) -> Result<Option<RootState>, StoreError> {
    let signer = dir.join(SIGNER_FILE);
    let text = match fs::read_to_string(&signer) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(io_err(&signer)(err)),
    };
    let (cert_pem, key_pem) = split_pem(&text);
    let retired = dir.join(RETIRED_FILE);
    let retired_pem = match fs::read_to_string(&retired) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => String::new(),
        Err(err) => return Err(io_err(&retired)(err)),
    };
    Ok(Some(RootState {
        cert_pem,
        key_pem,
        retired_pem,
    }))
}

/// Writes what changed: retired roots first, so that a CA reloading between
/// two writes sees the old root twice, never the new signer without the old
/// root trusted; then the signer; then the bundle.
fn write_folder(
    dir: &Path,
    previous: Option<&RootState>,
    next: &RootState,
    bundle: &str,
) -> Result<(), StoreError> {
    persist::ensure_dir(dir).map_err(io_err(dir))?;
    if previous.is_none_or(|p| p.retired_pem != next.retired_pem) {
        let path = dir.join(RETIRED_FILE);
        if previous.is_some() || !next.retired_pem.is_empty() {
            persist::write_atomic(&path, next.retired_pem.as_bytes(), persist::PUBLIC)
                .map_err(io_err(&path))?;
        }
    }
    if previous.is_none_or(|p| p.cert_pem != next.cert_pem || p.key_pem != next.key_pem) {
        let path = dir.join(SIGNER_FILE);
        let text = format!("{}{}", next.cert_pem, next.key_pem);
        persist::write_atomic(&path, text.as_bytes(), persist::PRIVATE).map_err(io_err(&path))?;
    }
    let path = dir.join(BUNDLE_FILE);
    if fs::read_to_string(&path).is_ok_and(|old| old == bundle) {
        return Ok(());
    }
    persist::write_atomic(&path, bundle.as_bytes(), persist::PUBLIC).map_err(io_err(&path))
}

/// Splits PEM text into its certificate blocks and its other blocks (the
/// key), each kept byte for byte, so that rewriting the file after a
/// change to the retired roots leaves the signer exactly as it was.
fn split_pem(text: &str) -> (String, String) {
    let (mut certs, mut others) = (String::new(), String::new());
    let mut block: Option<(bool, String)> = None;
    for line in text.lines() {
        if let Some(label) = line.strip_prefix("-----BEGIN ") {
            block = Some((label.starts_with("CERTIFICATE"), String::new()));
        }
        let Some((is_cert, text)) = block.as_mut() else {
            continue;
        };
        text.push_str(line);
        text.push('\n');
        if line.starts_with("-----END ") {
            let target = if *is_cert { &mut certs } else { &mut others };
            target.push_str(text);
            block = None;
        }
    }
    (certs, others)
}

/// The root kept in a Kubernetes Secret.
#[derive(Clone)]
pub struct SecretStore {
    api: Api<Secret>,
    namespace: String,
    name: String,
}

impl fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretStore({})", self.id())
    }
}

impl SecretStore {
    pub fn new(client: kube::Client, namespace: &str, name: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    /// `namespace/name`, for messages.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    fn kube_err(&self) -> impl FnOnce(kube::Error) -> StoreError + '_ {
        move |source| StoreError::Kube {
            secret: self.id(),
            source,
        }
    }

    async fn read(&self) -> Result<Option<Versioned>, StoreError> {
        let Some(secret) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(self.kube_err())?
        else {
            return Ok(None);
        };
        Ok(Some(Versioned {
            state: self.decode(&secret)?,
            version: secret.metadata.resource_version,
        }))
    }

    fn decode(&self, secret: &Secret) -> Result<RootState, StoreError> {
        let data = secret.data.as_ref();
        let text = |key: &'static str, required: bool| -> Result<String, StoreError> {
            let malformed = |reason| StoreError::Malformed {
                secret: self.id(),
                key,
                reason,
            };
            match data.and_then(|data| data.get(key)) {
                None if required => Err(malformed("missing")),
                None => Ok(String::new()),
                Some(ByteString(bytes)) => {
                    let text =
                        String::from_utf8(bytes.clone()).map_err(|_| malformed("not PEM text"))?;
                    if required && !text.contains("-----BEGIN ") {
                        return Err(malformed("holds no PEM block"));
                    }
                    Ok(text)
                }
            }
        };
        Ok(RootState {
            cert_pem: text(SECRET_CERT, true)?,
            key_pem: text(SECRET_KEY, true)?,
            retired_pem: text(SECRET_RETIRED, false)?,
        })
    }

    fn encode(&self, state: &RootState, bundle: &str, version: Option<String>) -> Secret {
        let bytes = |text: &str| ByteString(text.as_bytes().to_vec());
        Secret {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                resource_version: version,
                labels: Some(BTreeMap::from([
                    ("app.kubernetes.io/name".to_owned(), "warren-ca".to_owned()),
                    (
                        "app.kubernetes.io/managed-by".to_owned(),
                        "warren".to_owned(),
                    ),
                ])),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".to_owned()),
            data: Some(BTreeMap::from([
                (SECRET_CERT.to_owned(), bytes(&state.cert_pem)),
                (SECRET_KEY.to_owned(), bytes(&state.key_pem)),
                (SECRET_RETIRED.to_owned(), bytes(&state.retired_pem)),
                (SECRET_BUNDLE.to_owned(), bytes(bundle)),
            ])),
            ..Secret::default()
        }
    }

    async fn create(&self, state: &RootState, bundle: &str) -> Result<Created, StoreError> {
        let secret = self.encode(state, bundle, None);
        match self.api.create(&PostParams::default(), &secret).await {
            Ok(_) => {
                info!(secret = self.id(), "root persisted in a new Secret");
                Ok(Created::Written)
            }
            // A create never overwrites: another CA won the race, and its
            // root is the one everybody must use.
            Err(kube::Error::Api(status)) if status.code == 409 => {
                info!(
                    secret = self.id(),
                    "the Secret was created concurrently; using the root in it"
                );
                match self.read().await? {
                    Some(existing) => Ok(Created::Existing(existing.state)),
                    None => Err(StoreError::Vanished { secret: self.id() }),
                }
            }
            Err(err) => Err(self.kube_err()(err)),
        }
    }

    async fn replace(
        &self,
        version: Option<String>,
        state: &RootState,
        bundle: &str,
    ) -> Result<(), StoreError> {
        let secret = self.encode(state, bundle, version);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &secret)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => {
                Err(StoreError::Conflict { secret: self.id() })
            }
            Err(err) => Err(self.kube_err()(err)),
        }
    }
}
