//! The CA's signing material: the certificate and key it signs with, the
//! intermediates it sends after each leaf, and the roots every peer trusts.
//!
//! Two origins:
//! - self-managed (the default): a root generated on first start and kept
//!   in a [`RootStore`] (the state folder, or a Secret with `--kube`),
//!   rotated by `ca rotate-root`;
//! - plug-in: files an operator supplies (a root or an intermediate, its
//!   key, the chain above it, the roots).
//!
//! What is kept (the state folder's files; the Secret mirrors them, see
//! [`super::root_store`]):
//! - `signer.pem` (mode 0600): the active root, certificate and PKCS#8 key
//!   in one file, so that a rotation swaps both in a single rename;
//! - `retired-roots.pem`: earlier roots, still trusted until removed or
//!   expired, so certificates they issued keep verifying during a rotation;
//! - `root-cert.pem`: the trust bundle (active root first), what clients
//!   read to verify the CA and what proxies trust.

use std::{
    fs, io,
    path::{Path, PathBuf},
    time::Duration,
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SerialNumber,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use time::OffsetDateTime;
use tracing::info;

use super::{
    persist,
    root_store::{Created, Part, Place, RootState, RootStore, StoreError},
    x509::{self, CertError},
};

pub use super::root_store::{BUNDLE_FILE, RETIRED_FILE, SIGNER_FILE};

/// Lifetime of a generated root.
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Generated roots start this much in the past: nodes' clocks disagree.
const ROOT_BACKDATE: Duration = Duration::from_secs(3600);
pub const ROOT_COMMON_NAME: &str = "Warren mesh root";

#[derive(Debug, thiserror::Error)]
pub enum MaterialError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{place}: {reason}")]
    Invalid { place: Place, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no root in the {0} yet: start the CA once to generate it")]
    NoRoot(String),
    #[error("generating a root: {0}")]
    Generate(rcgen::Error),
    #[error("no retired root has serial {serial} (retired: {retired})")]
    NoSuchRoot { serial: String, retired: String },
    #[error("root {0} is the active signer: rotate to a new root before removing it")]
    ActiveRoot(String),
    #[error("{0}")]
    Unusable(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> MaterialError + '_ {
    move |source| MaterialError::Io {
        path: path.to_owned(),
        source,
    }
}

fn invalid(path: &Path, reason: impl std::fmt::Display) -> MaterialError {
    invalid_at(Place::File(path.to_owned()), reason)
}

fn invalid_at(place: Place, reason: impl std::fmt::Display) -> MaterialError {
    MaterialError::Invalid {
        place,
        reason: reason.to_string(),
    }
}

/// Operator-supplied signing material.
#[derive(Clone, Debug)]
pub struct PluginFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub chain: Option<PathBuf>,
    pub roots: PathBuf,
}

/// What the CA signs with, and what it tells peers to trust.
pub struct Material {
    issuer: Issuer<'static, KeyPair>,
    signer: CertificateDer<'static>,
    /// Sent after every leaf: the signer unless it is a root, then the
    /// intermediates above it.
    chain: Vec<CertificateDer<'static>>,
    /// The trust bundle; the signer's root first.
    roots: Vec<CertificateDer<'static>>,
    /// Leaves must fit inside every certificate of their chain.
    not_after: OffsetDateTime,
    not_before: OffsetDateTime,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field("signer", &self.signer_serial())
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

impl Material {
    /// The self-managed signer in the folder `dir`, generated (and
    /// persisted) if the folder has none yet. True when it was generated now.
    pub fn load_or_create(dir: &Path, now: OffsetDateTime) -> Result<(Self, bool), MaterialError> {
        // The folder store never awaits: this completes without a runtime.
        futures::executor::block_on(load_or_create(&RootStore::Folder(dir.to_owned()), now))
    }

    /// The self-managed signer in the folder `dir`, which must exist.
    pub fn load_state(dir: &Path, now: OffsetDateTime) -> Result<Self, MaterialError> {
        futures::executor::block_on(load(&RootStore::Folder(dir.to_owned()), now))
    }

    /// The signer a persisted state describes. Errors name the file or
    /// Secret key at fault.
    pub fn from_state(
        state: &RootState,
        store: &RootStore,
        now: OffsetDateTime,
    ) -> Result<Self, MaterialError> {
        let at = |part| store.place(part);
        let certs =
            x509::certs_from_pem(&state.cert_pem).map_err(|e| invalid_at(at(Part::Cert), e))?;
        let [signer] = <[_; 1]>::try_from(certs)
            .map_err(|_| invalid_at(at(Part::Cert), "holds more than one certificate"))?;
        let key = key_from_pem(&state.key_pem).map_err(|e| invalid_at(at(Part::Key), e))?;
        let mut roots = vec![signer.clone()];
        roots.extend(retired_roots(state, store, now)?);
        Self::new(signer, key, Vec::new(), roots, now).map_err(|e| invalid_at(at(Part::Cert), e))
    }

    /// Operator-supplied material.
    pub fn load_plugin(files: &PluginFiles, now: OffsetDateTime) -> Result<Self, MaterialError> {
        let read = |path: &Path| fs::read_to_string(path).map_err(io_err(path));
        let certs = |path: &Path| -> Result<Vec<CertificateDer<'static>>, MaterialError> {
            x509::certs_from_pem(&read(path)?).map_err(|e| invalid(path, e))
        };
        let mut signer_certs = certs(&files.cert)?.into_iter();
        let signer = signer_certs
            .next()
            .ok_or_else(|| invalid(&files.cert, CertError::Empty))?;
        // A cert file holding the whole chain (signer first) is common.
        let mut chain: Vec<_> = signer_certs.collect();
        if let Some(path) = &files.chain {
            chain.extend(certs(path)?);
        }
        let key = key_from_pem(&read(&files.key)?).map_err(|e| invalid(&files.key, e))?;
        let roots = certs(&files.roots)?;
        Self::new(signer, key, chain, roots, now).map_err(|e| invalid(&files.cert, e))
    }

    fn new(
        signer: CertificateDer<'static>,
        key: KeyPair,
        intermediates: Vec<CertificateDer<'static>>,
        roots: Vec<CertificateDer<'static>>,
        now: OffsetDateTime,
    ) -> Result<Self, String> {
        let parsed = x509::parse(&signer).map_err(|e| e.to_string())?;
        if !parsed.is_ca() {
            return Err("the signing certificate is not a CA (basicConstraints CA:true)".into());
        }
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err("the key does not belong to the signing certificate".into());
        }
        let mut not_before = x509::not_before(&parsed);
        let mut not_after = x509::not_after(&parsed);
        for cert in &intermediates {
            let cert = x509::parse(cert).map_err(|e| e.to_string())?;
            not_before = not_before.max(x509::not_before(&cert));
            not_after = not_after.min(x509::not_after(&cert));
        }
        if not_after <= now {
            return Err(format!(
                "the signing chain expired at {not_after} (serial {})",
                x509::serial_hex(&parsed)
            ));
        }
        let mut bundle: Vec<CertificateDer<'static>> = Vec::new();
        for root in roots {
            let expired = x509::parse(&root)
                .map(|c| x509::not_after(&c) <= now)
                .map_err(|e| e.to_string())?;
            if !expired && !bundle.contains(&root) {
                bundle.push(root);
            }
        }
        if bundle.is_empty() {
            return Err("no root that has not expired".into());
        }
        let chain = std::iter::once(signer.clone())
            .chain(intermediates)
            .filter(|c| !bundle.contains(c))
            .collect();
        let issuer = Issuer::from_ca_cert_der(&signer, key)
            .map_err(|e| format!("the signing certificate: {e}"))?;
        Ok(Self {
            issuer,
            signer,
            chain,
            roots: bundle,
            not_after,
            not_before,
        })
    }

    pub fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    /// Certificates to send after a leaf.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    pub fn roots_pem(&self) -> Vec<String> {
        self.roots.iter().map(|c| x509::to_pem(c)).collect()
    }

    /// The window a leaf must fit in.
    pub fn validity(&self) -> (OffsetDateTime, OffsetDateTime) {
        (self.not_before, self.not_after)
    }

    pub fn signer_serial(&self) -> String {
        x509::parse(&self.signer)
            .map(|c| x509::serial_hex(&c))
            .unwrap_or_default()
    }

    /// SHA-256 of the first root (the one the signer chains to when
    /// self-managed), for logs.
    pub fn root_fingerprint(&self) -> String {
        self.roots
            .first()
            .map(|r| x509::fingerprint(r))
            .unwrap_or_default()
    }

    /// Same certificates and roots (a reload that found nothing new).
    pub fn same_as(&self, other: &Material) -> bool {
        self.signer == other.signer && self.chain == other.chain && self.roots == other.roots
    }
}

/// The first private key (PKCS#8) of a PEM text.
fn key_from_pem(text: &str) -> Result<KeyPair, String> {
    let der = PrivateKeyDer::from_pem_slice(text.as_bytes())
        .map_err(|e| format!("no private key: {e}"))?;
    KeyPair::try_from(&der).map_err(|e| {
        format!("the private key is not usable ({e}); ECDSA P-256/P-384 or Ed25519 in PKCS#8 are")
    })
}

/// Retired roots still trusted; expired ones are left out.
fn retired_roots(
    state: &RootState,
    store: &RootStore,
    now: OffsetDateTime,
) -> Result<Vec<CertificateDer<'static>>, MaterialError> {
    if state.retired_pem.trim().is_empty() {
        return Ok(Vec::new());
    }
    let certs = x509::certs_from_pem(&state.retired_pem)
        .map_err(|e| invalid_at(store.place(Part::Retired), e))?;
    Ok(certs
        .into_iter()
        .filter(|c| x509::parse(c).is_ok_and(|p| x509::not_after(&p) > now))
        .collect())
}

/// A random, positive, 16-byte serial (RFC 5280: at most 20 octets, and
/// unpredictable so that a collision cannot be engineered).
pub fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Top bit clear: positive; next bit set: no leading zero to strip.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn generate_root(now: OffsetDateTime) -> Result<(KeyPair, rcgen::Certificate), MaterialError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(MaterialError::Generate)?;
    let serial = random_serial();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, ROOT_COMMON_NAME);
    name.push(DnType::OrganizationName, "Warren");
    // Successive roots differ in name too, so path building by name (as
    // OpenSSL does) never confuses the old root with the new one.
    name.push(
        DnType::OrganizationalUnitName,
        format!("root {}", &x509::hex(&serial.to_bytes())[..12]),
    );
    let mut params = CertificateParams::default();
    params.distinguished_name = name;
    params.serial_number = Some(serial);
    // The root signs leaves only: no intermediate below it.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - ROOT_BACKDATE;
    params.not_after = now + ROOT_LIFETIME;
    let cert = params.self_signed(&key).map_err(MaterialError::Generate)?;
    Ok((key, cert))
}

/// A state holding a freshly generated root (and the given retired ones).
fn generated_state(now: OffsetDateTime, retired_pem: String) -> Result<RootState, MaterialError> {
    let (key, cert) = generate_root(now)?;
    Ok(RootState {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        retired_pem,
    })
}

/// Writes the trust bundle file if its content differs. True if written.
pub fn write_bundle(dir: &Path, roots_pem: &[String]) -> io::Result<bool> {
    let path = dir.join(BUNDLE_FILE);
    let text = roots_pem.concat();
    if fs::read_to_string(&path).is_ok_and(|old| old == text) {
        return Ok(false);
    }
    persist::ensure_dir(dir)?;
    persist::write_atomic(&path, text.as_bytes(), persist::PUBLIC)?;
    Ok(true)
}

/// The self-managed signer in `store`, which must exist.
pub async fn load(store: &RootStore, now: OffsetDateTime) -> Result<Material, MaterialError> {
    let read = store
        .read()
        .await?
        .ok_or_else(|| MaterialError::NoRoot(store.to_string()))?;
    Material::from_state(&read.state, store, now)
}

/// The self-managed signer in `store`, generated and persisted on first
/// start. True when it was generated now. When two CAs start at once, the
/// one that persists second uses the first one's root.
pub async fn load_or_create(
    store: &RootStore,
    now: OffsetDateTime,
) -> Result<(Material, bool), MaterialError> {
    if let Some(read) = store.read().await? {
        return Ok((Material::from_state(&read.state, store, now)?, false));
    }
    let state = generated_state(now, String::new())?;
    let material = Material::from_state(&state, store, now)?;
    match store.create(&state, &material.roots_pem().concat()).await? {
        Created::Written => Ok((material, true)),
        Created::Existing(theirs) => Ok((Material::from_state(&theirs, store, now)?, false)),
    }
}

/// What a rotation did.
#[derive(Debug)]
pub struct Rotated {
    pub new_serial: String,
    pub new_not_after: OffsetDateTime,
    /// The root that signed until now, if there was one; still trusted.
    pub previous_serial: Option<String>,
    pub bundle: Vec<String>,
}

/// Makes a new root the signer (in the folder `dir`). See [`rotate_in`].
pub fn rotate_root(dir: &Path, now: OffsetDateTime) -> Result<Rotated, MaterialError> {
    futures::executor::block_on(rotate_in(&RootStore::Folder(dir.to_owned()), now))
}

/// Makes a new root the signer. The previous root moves to the retired
/// roots and stays in the trust bundle, so certificates it issued keep
/// verifying until they are renewed; remove it with [`remove_in`] once
/// every certificate has been renewed (after one maximum TTL).
pub async fn rotate_in(store: &RootStore, now: OffsetDateTime) -> Result<Rotated, MaterialError> {
    let _lock = store.lock()?;
    let current = store.read().await?;
    let mut previous_serial = None;
    let mut retired_pem = String::new();
    if let Some(current) = &current {
        let previous = Material::from_state(&current.state, store, now)?;
        let mut retired = retired_roots(&current.state, store, now)?;
        if !retired.contains(&previous.signer) {
            retired.insert(0, previous.signer.clone());
        }
        retired_pem = retired.iter().map(|c| x509::to_pem(c)).collect();
        previous_serial = Some(previous.signer_serial());
    }
    let next = generated_state(now, retired_pem)?;
    let material = Material::from_state(&next, store, now)?;
    let bundle = material.roots_pem();
    store
        .replace(current.as_ref(), &next, &bundle.concat())
        .await?;
    let rotated = Rotated {
        new_serial: material.signer_serial(),
        new_not_after: material.not_after,
        previous_serial,
        bundle,
    };
    info!(%store, new = %rotated.new_serial, previous = ?rotated.previous_serial, "root rotated");
    Ok(rotated)
}

/// Stops trusting a retired root (in the folder `dir`). See [`remove_in`].
pub fn remove_root(dir: &Path, serial: &str, now: OffsetDateTime) -> Result<(), MaterialError> {
    futures::executor::block_on(remove_in(&RootStore::Folder(dir.to_owned()), serial, now))
}

/// Stops trusting a retired root. The active root cannot be removed.
pub async fn remove_in(
    store: &RootStore,
    serial: &str,
    now: OffsetDateTime,
) -> Result<(), MaterialError> {
    let _lock = store.lock()?;
    let current = store
        .read()
        .await?
        .ok_or_else(|| MaterialError::NoRoot(store.to_string()))?;
    let material = Material::from_state(&current.state, store, now)?;
    let serial = serial.trim().to_ascii_lowercase().replace(':', "");
    if material.signer_serial() == serial {
        return Err(MaterialError::ActiveRoot(serial));
    }
    let retired = retired_roots(&current.state, store, now)?;
    let serial_of = |c: &CertificateDer<'_>| {
        x509::parse(c)
            .map(|p| x509::serial_hex(&p))
            .unwrap_or_default()
    };
    let kept: Vec<_> = retired
        .iter()
        .filter(|c| serial_of(c) != serial)
        .cloned()
        .collect();
    if kept.len() == retired.len() {
        return Err(MaterialError::NoSuchRoot {
            serial,
            retired: retired.iter().map(serial_of).collect::<Vec<_>>().join(", "),
        });
    }
    let next = RootState {
        retired_pem: kept.iter().map(|c| x509::to_pem(c)).collect(),
        ..current.state.clone()
    };
    let material = Material::from_state(&next, store, now)?;
    store
        .replace(Some(&current), &next, &material.roots_pem().concat())
        .await?;
    info!(%store, serial, "retired root removed from the trust bundle");
    Ok(())
}
