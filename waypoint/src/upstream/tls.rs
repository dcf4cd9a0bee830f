//! DestinationRule `tls`: TLS the waypoint starts towards an endpoint (Istio's
//! "TLS origination"). The usual case is egress: clients speak plain HTTP to
//! a ServiceEntry host, and the waypoint reaches the host over HTTPS, checking
//! its certificate, with a client certificate of its own for `MUTUAL`.
//!
//! The certificates, key and CA come from files, or from a Secret of the
//! waypoint's namespace that `credentialName` names (the agent sends those,
//! as Istio's control plane does over SDS). Settings are compiled with the
//! rules, files read then (a few small files, on each configuration change,
//! and every 30 s to see whether they changed: `tables.rs`); a Secret's new
//! version comes as a configuration change. What they hold is part of the
//! settings' identity, so a rotated certificate makes a new cluster, with new
//! connections. A setting the waypoint cannot honour (a file it cannot read,
//! a Secret it was not sent) is reported and makes the cluster fail closed:
//! its connections are refused with the reason, never made in plaintext
//! instead.
//!
//! `ISTIO_MUTUAL` and `DISABLE` start nothing here: meshed endpoints are
//! reached over HBONE, which is the mesh's mutual TLS (and `ISTIO_MUTUAL`
//! refuses an endpoint outside the mesh, see `proxy/connect.rs`).

use std::{
    collections::{BTreeMap, hash_map::DefaultHasher},
    hash::{Hash as _, Hasher as _},
    sync::{Arc, Mutex, OnceLock},
};

use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error, RootCertStore, SignatureScheme,
    client::{
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        verify_server_cert_signed_by_trust_anchor, verify_server_name,
    },
    crypto::WebPkiSupportedAlgorithms,
    pki_types::{
        CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
        pem::PemObject,
    },
    server::ParsedCertificate,
};
use warren_api::config::{BackendTlsPort, Credential};
use warren_model::{
    cluster::CA_SECRET_SUFFIX,
    istio::{ClientTlsMode, ClientTlsSettings},
};
use warren_ztunnel::tls::AltName;
use webpki::{
    CertRevocationList, ExpirationPolicy, RevocationCheckDepth, RevocationOptionsBuilder,
    UnknownStatusPolicy,
};

/// What an origination speaks over the TLS it starts: its ALPN offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Speaks {
    Http1,
    Http2,
    /// A TCP route's bytes: no ALPN.
    Bytes,
}

/// A rule part's `tls`, by what it asks of the waypoint.
#[derive(Clone, Debug)]
pub enum TlsMode {
    /// `DISABLE` (or no mode): no TLS from the waypoint; meshed endpoints
    /// are still reached over HBONE.
    Disable,
    /// `ISTIO_MUTUAL`: the mesh's mutual TLS only, which HBONE is; an
    /// endpoint outside the mesh cannot have it and is refused.
    MeshOnly,
    /// `SIMPLE` or `MUTUAL`: TLS started on each connection.
    Originate(Arc<TlsSettings>),
}

/// One rule part's `tls` with SIMPLE or MUTUAL (or a BackendTLSPolicy's),
/// compiled.
pub struct TlsSettings {
    /// As written, for display and, with `files`, equality (pooled
    /// connections compare it).
    spec: ClientTlsSettings,
    /// `None` for a DestinationRule's; the BackendTLSPolicy
    /// (`namespace/name`) these settings are made from otherwise.
    policy: Option<String>,
    /// A digest of what the files and credentials held when read (or of why
    /// they could not be): a changed file or Secret makes different settings.
    files: u64,
    /// Whether files were read (else there is nothing to look at again).
    read_files: bool,
    /// The credentials read, to compile again with the same when the files
    /// are looked at again.
    credentials: Credentials,
    /// The client configs by ALPN, or why there are none.
    configs: Result<Arc<Configs>, String>,
    /// The same configs expecting a ServiceEntry's names, by names: made
    /// once for these settings, so that clusters rebuilt on a mesh change
    /// keep one verifier (and with it TLS session resumption).
    expecting: Mutex<BTreeMap<Vec<String>, Arc<Configs>>>,
}

// Never the credentials' bytes: the Secrets by name.
impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("spec", &self.spec)
            .field("policy", &self.policy)
            .field("files", &self.files)
            .field("credentials", &self.credentials.keys().collect::<Vec<_>>())
            .field("configs", &self.configs.as_ref().map(|_| "compiled"))
            .finish()
    }
}

struct Configs {
    http1: Arc<ClientConfig>,
    http2: Arc<ClientConfig>,
    bytes: Arc<ClientConfig>,
    /// Theirs, to make the same configs expecting other names.
    verifier: Arc<Verifier>,
}

// Compiled configs: nothing to read in them but what the settings say.
impl std::fmt::Debug for Configs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Configs").finish_non_exhaustive()
    }
}

impl Configs {
    fn new(config: &ClientConfig, verifier: Arc<Verifier>) -> Configs {
        let with_alpn = |protocols: &[&[u8]]| {
            let mut config = config.clone();
            config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
            config
                .dangerous()
                .set_certificate_verifier(Arc::clone(&verifier) as Arc<dyn ServerCertVerifier>);
            Arc::new(config)
        };
        Configs {
            http1: with_alpn(&[b"http/1.1"]),
            http2: with_alpn(&[b"h2"]),
            bytes: with_alpn(&[]),
            verifier,
        }
    }

    /// The same configs, with a server's certificate checked for one of
    /// `names` instead of the server name asked for; `None` where the rule
    /// checks no name (`insecureSkipVerify`) or lists its own, which win.
    fn expecting(&self, names: &[String]) -> Option<Configs> {
        let Check::Chain {
            roots,
            crls,
            expected,
        } = &self.verifier.check
        else {
            return None;
        };
        if !expected.is_empty() {
            return None;
        }
        let verifier = Arc::new(Verifier {
            check: Check::Chain {
                roots: Arc::clone(roots),
                crls: Arc::clone(crls),
                expected: names.iter().map(|san| Expected::parse(san)).collect(),
            },
            algorithms: self.verifier.algorithms,
        });
        Some(Configs::new(&self.http1, verifier))
    }
}

impl TlsSettings {
    /// Whether `other` reads the same (rule, policy and what its files and
    /// credentials held): connections made with one may serve the other.
    pub fn same_as(&self, other: &TlsSettings) -> bool {
        std::ptr::eq(self, other)
            || (self.files == other.files && self.spec == other.spec && self.policy == other.policy)
    }

    /// What the rule's `tls` asks of the waypoint, and, for settings that
    /// cannot be honoured (they fail closed), why.
    pub fn compile(
        spec: &ClientTlsSettings,
        credentials: &Credentials,
    ) -> (TlsMode, Option<String>) {
        let mutual = match spec.mode {
            Some(ClientTlsMode::Simple) => false,
            Some(ClientTlsMode::Mutual) => true,
            Some(ClientTlsMode::IstioMutual) => return (TlsMode::MeshOnly, None),
            None | Some(ClientTlsMode::Disable) => return (TlsMode::Disable, None),
        };
        let mut material = Material::default();
        let configs = build(spec, mutual, None, &mut material, credentials).map(Arc::new);
        TlsSettings::compiled(spec.clone(), None, configs, material)
    }

    /// What a BackendTLSPolicy asks on a port (see `backend_tls.rs`):
    /// `SIMPLE` to the server named `hostname`, whose certificate must chain
    /// to the policy's CA bundle (or the system's trust anchors) and carry
    /// one of its DNS `subject_alt_names` or URI `uri_subject_alt_names`, or
    /// `hostname` when it lists none. With `error` (what the agent could not
    /// read for it, or what Warren cannot do of it), the settings fail
    /// closed with it.
    pub fn compile_backend(policy: &BackendTlsPort) -> (TlsMode, Option<String>) {
        let (dns, uris) = (&policy.subject_alt_names, &policy.uri_subject_alt_names);
        // The hostname is the name to check when no other is listed: the
        // check is then the policy's own, never a ServiceEntry's names. A
        // URI is matched with URIs alone.
        let mut expected: Vec<Expected> = dns.iter().map(|san| Expected::parse(san)).collect();
        expected.extend(uris.iter().map(|uri| Expected::Uri(uri.clone())));
        if expected.is_empty() {
            expected.push(Expected::parse(&policy.hostname));
        }
        let shown = if dns.is_empty() && uris.is_empty() {
            vec![policy.hostname.clone()]
        } else {
            dns.iter().chain(uris).cloned().collect()
        };
        // For display and equality: the URIs are told apart by their
        // scheme, which no DNS name has.
        let spec = ClientTlsSettings {
            mode: Some(ClientTlsMode::Simple),
            sni: policy.hostname.clone(),
            subject_alt_names: shown,
            ..ClientTlsSettings::default()
        };
        let what = format!("BackendTLSPolicy {}", policy.policy);
        let mut material = Material::default();
        let configs = if !policy.error.is_empty() {
            Err(format!("{what}: {}", policy.error))
        } else {
            let ca = (!policy.system_roots).then(|| {
                // The bundle's bytes make the settings what they are:
                // another bundle, other settings (and new connections).
                policy.ca_certificates.hash(&mut material.digest);
                Pem {
                    what: format!("{what} (caCertificateRefs)"),
                    bytes: policy.ca_certificates.clone(),
                }
            });
            let backend = Backend { ca, expected };
            build(
                &spec,
                false,
                Some(backend),
                &mut material,
                &Credentials::new(),
            )
        }
        .map(Arc::new);
        TlsSettings::compiled(spec, Some(policy.policy.clone()), configs, material)
    }

    fn compiled(
        spec: ClientTlsSettings,
        policy: Option<String>,
        configs: Result<Arc<Configs>, String>,
        mut material: Material,
    ) -> (TlsMode, Option<String>) {
        if let Err(error) = &configs {
            error.hash(&mut material.digest);
        }
        let error = configs.as_ref().err().cloned();
        let settings = TlsSettings {
            spec,
            policy,
            files: material.digest.finish(),
            read_files: material.read_files,
            credentials: material.used,
            configs,
            expecting: Mutex::default(),
        };
        (TlsMode::Originate(Arc::new(settings)), error)
    }

    /// The configs checking a server for one of `names` ([`Configs::expecting`]),
    /// made once per set of names.
    fn expecting(&self, names: &[String]) -> Option<Arc<Configs>> {
        let configs = self.configs.as_ref().ok()?;
        let mut made = self
            .expecting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(expecting) = made.get(names) {
            return Some(Arc::clone(expecting));
        }
        let expecting = Arc::new(configs.expecting(names)?);
        made.insert(names.to_vec(), Arc::clone(&expecting));
        Some(expecting)
    }

    /// Whether the files read hold something else now (compiling again
    /// reads them the same way, and costs a few small files).
    pub fn files_changed(&self) -> bool {
        if !self.read_files {
            return false;
        }
        // A policy's settings read no file: `read_files` is false for them.
        match TlsSettings::compile(&self.spec, &self.credentials).0 {
            TlsMode::Originate(now) => now.files != self.files,
            TlsMode::Disable | TlsMode::MeshOnly => false,
        }
    }

    /// The settings for traffic to `host` (the cluster's, fully qualified):
    /// the server name is `sni`, else the host; for a wildcard host, each
    /// request's own (Istio's auto SNI, [`Origination::for_request`]).
    pub fn for_host(self: &Arc<Self>, host: &str) -> Origination {
        let wildcard = host
            .strip_prefix('*')
            .filter(|suffix| {
                self.spec.sni.is_empty() && suffix.len() > 1 && suffix.starts_with('.')
            })
            .map(|suffix| suffix.trim_end_matches('.').to_ascii_lowercase());
        let name = if self.spec.sni.is_empty() {
            host
        } else {
            &self.spec.sni
        };
        let server_name = match &wildcard {
            Some(_) => Err(format!(
                "{host} is a wildcard host: the server name is each request's host, and a TCP connection (which has none) needs the DestinationRule's tls.sni"
            )),
            None => ServerName::try_from(name.to_owned()).map_err(|_| {
                format!("{name:?} cannot be a TLS server name; set the DestinationRule's tls.sni")
            }),
        };
        Origination {
            settings: Arc::clone(self),
            configs: self.configs.clone(),
            server_name,
            entry: None,
            entry_names: Vec::new(),
            wildcard,
        }
    }
}

/// TLS to start on a cluster's connections: the settings, and the name the
/// server is asked for (and, without `subjectAltNames`, checked against).
#[derive(Clone, Debug)]
pub struct Origination {
    settings: Arc<TlsSettings>,
    /// The settings' configs, or the same expecting `entry_names`.
    configs: Result<Arc<Configs>, String>,
    server_name: Result<ServerName<'static>, String>,
    /// The ServiceEntry's `subjectAltNames` where they stand in for the
    /// rule's (which lists none): the names checked instead of the server
    /// name.
    entry_names: Vec<String>,
    /// The key of the ServiceEntry they are from, where they are: once it
    /// lists other names (or is gone), connections checking these would
    /// never be taken again. Not part of equality: entries listing the same
    /// names reach an endpoint alike.
    entry: Option<String>,
    /// For a wildcard host without `sni`: the part under the wildcard
    /// (`.example.com`), under which each request's host is the server name.
    wildcard: Option<String>,
}

// Two clusters whose settings read the same (rule and files) reach an
// endpoint the same way: they may share its pooled connections.
impl PartialEq for Origination {
    fn eq(&self, other: &Self) -> bool {
        self.settings.same_as(&other.settings)
            && self.server_name == other.server_name
            && self.entry_names == other.entry_names
            && self.wildcard == other.wildcard
    }
}

impl Eq for Origination {}

impl Origination {
    /// Checks the server's certificate for one of the `subjectAltNames`
    /// (`names`) of the ServiceEntry keyed `entry`, as Istio does for an
    /// entry's host, where the rule lists none of its own and checks names
    /// at all.
    #[must_use]
    pub fn with_entry_names(mut self, entry: &str, names: &[String]) -> Origination {
        if names.is_empty() {
            return self;
        }
        if let Some(expecting) = self.settings.expecting(names) {
            self.configs = Ok(expecting);
            self.entry_names = names.to_vec();
            self.entry = Some(entry.to_owned());
        }
        self
    }

    /// The ServiceEntry (its key) whose `subjectAltNames` its connections
    /// check, and those names; `None` where no entry's names apply.
    pub fn entry_names(&self) -> Option<(&str, &[String])> {
        self.entry
            .as_deref()
            .map(|entry| (entry, self.entry_names.as_slice()))
    }

    /// The BackendTLSPolicy (`namespace/name`) these settings are made
    /// from; `None` for a DestinationRule's.
    pub fn backend_tls_policy(&self) -> Option<&str> {
        self.settings.policy.as_deref()
    }

    /// The settings it was made from.
    pub fn settings(&self) -> &TlsSettings {
        &self.settings
    }

    /// Whether the server name comes from each request (a wildcard host
    /// without `sni`, [`Origination::for_request`]).
    pub fn names_by_request(&self) -> bool {
        self.wildcard.is_some()
    }

    /// For a wildcard host without `sni`: these settings for a request to
    /// `host` (its `Host` or `:authority`, without the port), which is then
    /// the server name sent and, without `subjectAltNames`, the name the
    /// certificate must carry, as Istio's auto SNI does. `None` when the
    /// settings name their server themselves, or `host` is not under the
    /// wildcard (its requests are refused with the reason).
    pub fn for_request(&self, host: &str) -> Option<Origination> {
        let suffix = self.wildcard.as_deref()?;
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if host.len() <= suffix.len() || !host.ends_with(suffix) {
            return None;
        }
        let name = ServerName::try_from(host).ok()?;
        Some(Origination {
            server_name: Ok(name),
            wildcard: None,
            ..self.clone()
        })
    }

    /// The client config and server name to start TLS with, or why the
    /// connection must be refused.
    pub fn client(
        &self,
        speaks: Speaks,
    ) -> Result<(Arc<ClientConfig>, ServerName<'static>), String> {
        let configs = self.configs.as_ref().map_err(Clone::clone)?;
        let name = self.server_name.clone()?;
        let config = match speaks {
            Speaks::Http1 => &configs.http1,
            Speaks::Http2 => &configs.http2,
            Speaks::Bytes => &configs.bytes,
        };
        Ok((Arc::clone(config), name))
    }

    /// For `/clusters`.
    pub fn describe(&self) -> serde_json::Value {
        let spec = &self.settings.spec;
        serde_json::json!({
            "mode": spec.mode.map(|m| format!("{m:?}").to_uppercase()),
            "server_name": match &self.wildcard {
                Some(suffix) => Some(format!("(each request's host, under *{suffix})")),
                None => self.server_name.as_ref().map(|n| n.to_str().into_owned()).ok(),
            },
            "sni": (!spec.sni.is_empty()).then_some(&spec.sni),
            "ca_crl": (!spec.ca_crl.is_empty()).then_some(&spec.ca_crl),
            "subject_alt_names": if self.entry_names.is_empty() {
                &spec.subject_alt_names
            } else {
                &self.entry_names
            },
            "subject_alt_names_from": if !self.entry_names.is_empty() {
                Some("ServiceEntry")
            } else if self.settings.policy.is_some() {
                Some("BackendTLSPolicy")
            } else if !spec.subject_alt_names.is_empty() {
                Some("DestinationRule")
            } else {
                None
            },
            "backend_tls_policy": self.settings.policy,
            "ca_certificates": (!spec.ca_certificates.is_empty()).then_some(&spec.ca_certificates),
            "client_certificate": (!spec.client_certificate.is_empty()).then_some(&spec.client_certificate),
            "credential_name": (!spec.credential_name.is_empty()).then_some(&spec.credential_name),
            "credentials_read": self.settings.credentials.keys().collect::<Vec<_>>(),
            "insecure_skip_verify": spec.insecure_skip_verify.unwrap_or(false),
            "error": self.configs.as_ref().err().or(match &self.wildcard {
                Some(_) => None,
                None => self.server_name.as_ref().err(),
            }),
        })
    }
}

/// The Secrets the agent sent, by name: its namespace's that rules name
/// as `credentialName` (and their `-cacert` companions).
pub type Credentials = BTreeMap<String, Arc<Credential>>;

/// What a setting's certificates and key are read from (files, or a
/// credential), hashed as read, each part with its name, so that the same
/// bytes in another part, or a part gone, make other settings.
#[derive(Default)]
struct Material {
    digest: DefaultHasher,
    /// Whether a file was looked at: only then is looking again worth it.
    read_files: bool,
    /// The credentials read, kept to compile again with the same.
    used: Credentials,
}

/// PEM text, with what it is for errors (`caCertificates "/etc/ca.pem"`).
struct Pem {
    what: String,
    bytes: Vec<u8>,
}

/// What a credential gives: the certificate and key for `MUTUAL` (`None`
/// otherwise), and the CA and its revocation lists where there are some.
struct FromCredential {
    chain: Option<Pem>,
    key: Option<Pem>,
    ca: Option<Pem>,
    crl: Option<Pem>,
}

impl Material {
    fn file(&mut self, field: &str, path: &str) -> Result<Pem, String> {
        // Looked at even when unreadable: a file that appears later counts.
        self.read_files = true;
        let bytes = std::fs::read(path).map_err(|e| format!("{field} {path:?}: {e}"))?;
        (field, &bytes).hash(&mut self.digest);
        Ok(Pem {
            what: format!("{field} {path:?}"),
            bytes,
        })
    }

    /// A part of the Secret `secret` (for credential `name`), hashed
    /// whether there or not; `None` when empty.
    fn part(&mut self, name: &str, secret: &str, part: &str, bytes: &[u8]) -> Option<Pem> {
        (secret, part, bytes).hash(&mut self.digest);
        (!bytes.is_empty()).then(|| Pem {
            what: format!("credentialName {name:?} (Secret {secret:?}, {part})"),
            bytes: bytes.to_vec(),
        })
    }

    /// What credential `name` gives, in Istio's order: the certificate and
    /// key (for `mutual` alone) from the Secret `name`; the CA with its
    /// revocation lists from `<name>-cacert` when that Secret was sent, else
    /// from `name`.
    fn credential(
        &mut self,
        name: &str,
        mutual: bool,
        credentials: &Credentials,
    ) -> Result<FromCredential, String> {
        let companion_name = format!("{name}{CA_SECRET_SUFFIX}");
        let main = credentials.get(name);
        let companion = credentials.get(&companion_name);
        let from_companion = companion.map(|c| (companion_name.as_str(), c));
        let Some((ca_name, ca_secret)) = from_companion.or(main.map(|m| (name, m))) else {
            return Err(format!(
                "credentialName {name:?}: the agent sent no Secret {name:?} (or {companion_name:?}) of the waypoint's namespace (is there one, with Istio's keys? may the node agent read that namespace's Secrets: --secret-namespace, the chart's nodeAgent.credentialNamespaces?)"
            ));
        };
        let (mut chain, mut key) = (None, None);
        if mutual {
            let Some(main) = main else {
                return Err(format!(
                    "credentialName {name:?}: mode MUTUAL needs the certificate and key of Secret {name:?}, and the agent sent only {companion_name:?}"
                ));
            };
            self.used.insert(name.to_owned(), Arc::clone(main));
            chain = self.part(name, name, "certificate", &main.certificate_chain);
            key = self.part(name, name, "private key", &main.private_key);
        }
        self.used.insert(ca_name.to_owned(), Arc::clone(ca_secret));
        let ca = self.part(name, ca_name, "CA", &ca_secret.ca_certificates);
        let crl = self.part(name, ca_name, "CRL", &ca_secret.ca_crl);
        Ok(FromCredential {
            chain,
            key,
            ca,
            crl,
        })
    }
}

impl Pem {
    fn certificates(&self) -> Result<Vec<CertificateDer<'static>>, String> {
        let certificates = CertificateDer::pem_slice_iter(&self.bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{}: {e}", self.what))?;
        if certificates.is_empty() {
            return Err(format!("{}: no PEM certificate in it", self.what));
        }
        Ok(certificates)
    }

    fn private_key(&self) -> Result<PrivateKeyDer<'static>, String> {
        PrivateKeyDer::from_pem_slice(&self.bytes).map_err(|e| format!("{}: {e}", self.what))
    }

    fn revocation_lists(&self) -> Result<Vec<CertRevocationList<'static>>, String> {
        let lists = CertificateRevocationListDer::pem_slice_iter(&self.bytes)
            .map(|der| {
                let der = der.map_err(|e| e.to_string())?;
                webpki::OwnedCertRevocationList::from_der(der.as_ref())
                    .map(CertRevocationList::from)
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{}: {e}", self.what))?;
        if lists.is_empty() {
            return Err(format!("{}: no PEM revocation list in it", self.what));
        }
        Ok(lists)
    }
}

/// What a BackendTLSPolicy gives in place of a rule's files, credentials
/// and `subjectAltNames`: its CA bundle (`None`: the system's anchors) and
/// the names, typed, the certificate must carry one of.
struct Backend {
    ca: Option<Pem>,
    expected: Vec<Expected>,
}

/// The client configs `spec` asks for, or a BackendTLSPolicy's (`backend`).
fn build(
    spec: &ClientTlsSettings,
    mutual: bool,
    backend: Option<Backend>,
    material: &mut Material,
    credentials: &Credentials,
) -> Result<Configs, String> {
    let (inline_ca, backend_expected) = match backend {
        Some(Backend { ca, expected }) => (ca, Some(expected)),
        None => (None, None),
    };
    let credential = match spec.credential_name.as_str() {
        "" => None,
        name => Some(material.credential(name, mutual, credentials)?),
    };
    let provider = warren_ztunnel::tls::provider();
    let check = if spec.insecure_skip_verify == Some(true) {
        Check::Nothing
    } else {
        let file_ca;
        let ca = match &credential {
            _ if inline_ca.is_some() => inline_ca.as_ref(),
            // A credential's CA is the one its server must chain to: never
            // the system's instead (Istio fails such a cluster too).
            Some(FromCredential { ca: None, .. }) => {
                let name = &spec.credential_name;
                return Err(format!(
                    "credentialName {name:?}: no CA (cacert or ca.crt) in Secret \"{name}{CA_SECRET_SUFFIX}\" or \"{name}\" to check the server against; add one, or set insecureSkipVerify"
                ));
            }
            Some(credential) => credential.ca.as_ref(),
            None if spec.ca_certificates.is_empty() => None,
            None => {
                file_ca = material.file("caCertificates", &spec.ca_certificates)?;
                Some(&file_ca)
            }
        };
        let roots = match ca {
            None => system_roots()?,
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for certificate in ca.certificates()? {
                    roots
                        .add(certificate)
                        .map_err(|e| format!("{}: {e}", ca.what))?;
                }
                Arc::new(roots)
            }
        };
        // Lists from both a `caCrl` file and the credential all apply.
        let mut crls = Vec::new();
        if !spec.ca_crl.is_empty() {
            crls.extend(material.file("caCrl", &spec.ca_crl)?.revocation_lists()?);
        }
        if let Some(crl) = credential.as_ref().and_then(|c| c.crl.as_ref()) {
            crls.extend(crl.revocation_lists()?);
        }
        Check::Chain {
            roots,
            crls: Arc::new(crls),
            expected: backend_expected.unwrap_or_else(|| {
                spec.subject_alt_names
                    .iter()
                    .map(|san| Expected::parse(san))
                    .collect()
            }),
        }
    };
    let verifier = Arc::new(Verifier {
        check,
        algorithms: provider.signature_verification_algorithms,
    });
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::clone(&verifier) as Arc<dyn ServerCertVerifier>);
    let config = if mutual {
        let (chain, key) = match credential {
            Some(FromCredential { chain, key, .. }) => {
                let name = &spec.credential_name;
                let missing = || {
                    format!(
                        "credentialName {name:?}: mode MUTUAL needs a certificate and its private key (cert and key, or tls.crt and tls.key) in Secret {name:?}"
                    )
                };
                (chain.ok_or_else(missing)?, key.ok_or_else(missing)?)
            }
            None => (
                material.file("clientCertificate", &spec.client_certificate)?,
                material.file("privateKey", &spec.private_key)?,
            ),
        };
        builder
            .with_client_auth_cert(chain.certificates()?, key.private_key()?)
            .map_err(|e| format!("{} and {}: {e}", chain.what, key.what))?
    } else {
        builder.with_no_client_auth()
    };
    Ok(Configs::new(&config, verifier))
}

/// webpki's refusal as rustls says it (the reason a handshake fails with).
fn certificate_error(error: webpki::Error) -> Error {
    let reason = match error {
        webpki::Error::CertRevoked => CertificateError::Revoked,
        webpki::Error::CertExpired { .. } => CertificateError::Expired,
        webpki::Error::CertNotValidYet { .. } => CertificateError::NotValidYet,
        webpki::Error::UnknownIssuer => CertificateError::UnknownIssuer,
        webpki::Error::UnknownRevocationStatus => CertificateError::UnknownRevocationStatus,
        webpki::Error::CrlExpired { .. } => CertificateError::ExpiredRevocationList,
        webpki::Error::BadDer | webpki::Error::BadDerTime => CertificateError::BadEncoding,
        webpki::Error::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        webpki::Error::CertNotValidForName(_) => CertificateError::NotValidForName,
        other => CertificateError::Other(rustls::OtherError(Arc::new(other))),
    };
    Error::InvalidCertificate(reason)
}

/// The system's trust anchors, read once (Istio verifies with them when a
/// rule names no `caCertificates`).
fn system_roots() -> Result<Arc<RootCertStore>, String> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(format!(
                    "no caCertificates given and no system trust anchors found ({} errors reading them)",
                    found.errors.len()
                ));
            }
            Ok(Arc::new(roots))
        })
        .clone()
}

/// One `subjectAltNames` entry: matched as a DNS name or IP address when
/// it reads as one (wildcards in the certificate apply); any other entry (a
/// `spiffe://` identity, a wildcard name) must equal one of the certificate's
/// DNS or URI SANs as written, as Envoy matches a SAN string exactly.
#[derive(Debug)]
enum Expected {
    Name(ServerName<'static>),
    Exactly(String),
    /// A BackendTLSPolicy's `URI` name: one of the certificate's URI SANs,
    /// as written (never a DNS SAN of the same text).
    Uri(String),
}

impl Expected {
    fn parse(san: &str) -> Expected {
        match ServerName::try_from(san.to_owned()) {
            Ok(name) => Expected::Name(name),
            Err(_) => Expected::Exactly(san.to_owned()),
        }
    }

    fn matches(&self, cert: &ParsedCertificate<'_>, der: &CertificateDer<'_>) -> bool {
        match self {
            Expected::Name(name) => verify_server_name(cert, name).is_ok(),
            Expected::Exactly(san) => warren_ztunnel::tls::alt_names(der)
                .is_ok_and(|names| names.iter().any(|name| name.as_str() == san)),
            Expected::Uri(uri) => warren_ztunnel::tls::alt_names(der).is_ok_and(|names| {
                names
                    .iter()
                    .any(|name| matches!(name, AltName::Uri(u) if u == uri))
            }),
        }
    }
}

/// What the server's certificate must pass.
#[derive(Debug)]
enum Check {
    /// The chain to `roots` (none of it revoked, with `caCrl`), then the
    /// name: one of `expected` when the rule lists `subjectAltNames`, else
    /// the server name asked for.
    Chain {
        roots: Arc<RootCertStore>,
        /// `caCrl`: as in Envoy, a list must cover every certificate of the
        /// chain (a certificate no list speaks for is refused).
        crls: Arc<Vec<CertRevocationList<'static>>>,
        expected: Vec<Expected>,
    },
    /// `insecureSkipVerify: true`: any certificate, as the rule asks. The
    /// handshake's signatures are still checked, so the peer holds the key
    /// of the certificate it sent.
    Nothing,
}

#[derive(Debug)]
struct Verifier {
    check: Check,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let Check::Chain {
            roots,
            crls,
            expected,
        } = &self.check
        else {
            return Ok(ServerCertVerified::assertion());
        };
        let cert = ParsedCertificate::try_from(end_entity)?;
        if crls.is_empty() {
            verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.algorithms.all,
            )?;
        } else {
            // rustls checks revocation only inside its own verifier, which
            // also checks the name its own way: webpki directly, then.
            let lists: Vec<&CertRevocationList<'_>> = crls.iter().collect();
            let revocation = RevocationOptionsBuilder::new(&lists)
                .map_err(|_| Error::General("no revocation list".into()))?
                .with_depth(RevocationCheckDepth::Chain)
                .with_status_policy(UnknownStatusPolicy::Deny)
                .with_expiration_policy(ExpirationPolicy::Enforce)
                .build();
            webpki::EndEntityCert::try_from(end_entity)
                .and_then(|leaf| {
                    leaf.verify_for_usage(
                        self.algorithms.all,
                        &roots.roots,
                        intermediates,
                        now,
                        webpki::KeyUsage::server_auth(),
                        Some(revocation),
                        None,
                    )
                    .map(|_| ())
                })
                .map_err(certificate_error)?;
        }
        if expected.is_empty() {
            verify_server_name(&cert, server_name)?;
        } else if !expected.iter().any(|e| e.matches(&cert, end_entity)) {
            return Err(Error::InvalidCertificate(CertificateError::NotValidForName));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
