//! DestinationRule `tls`: TLS the waypoint starts towards an endpoint (Istio's
//! "TLS origination"). The usual case is egress: clients speak plain HTTP to
//! a ServiceEntry host, and the waypoint reaches the host over HTTPS, checking
//! its certificate, with a client certificate of its own for `MUTUAL`.
//!
//! Settings are compiled with the rules, files read then. A setting the
//! waypoint cannot honour (a file it cannot read, a `credentialName`, a
//! `caCrl`) is reported and makes the cluster fail closed: its connections are
//! refused with the reason, never made in plaintext instead.
//!
//! `ISTIO_MUTUAL` and `DISABLE` start nothing here: meshed endpoints are
//! reached over HBONE, which is the mesh's mutual TLS.

use std::{
    path::Path,
    sync::{Arc, OnceLock},
};

use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error, RootCertStore, SignatureScheme,
    client::{
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        verify_server_cert_signed_by_trust_anchor, verify_server_name,
    },
    crypto::WebPkiSupportedAlgorithms,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject},
    server::ParsedCertificate,
};
use warren_api::Identity;
use warren_model::istio::{ClientTlsMode, ClientTlsSettings};

/// What an origination speaks over the TLS it starts: its ALPN offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Speaks {
    Http1,
    Http2,
    /// A TCP route's bytes: no ALPN.
    Bytes,
}

/// One rule part's `tls` with SIMPLE or MUTUAL, compiled.
#[derive(Debug)]
pub struct TlsSettings {
    /// As written, for equality (pooled connections compare it) and display.
    spec: ClientTlsSettings,
    /// The client configs by ALPN, or why there are none.
    configs: Result<Configs, String>,
}

#[derive(Debug)]
struct Configs {
    http1: Arc<ClientConfig>,
    http2: Arc<ClientConfig>,
    bytes: Arc<ClientConfig>,
}

impl TlsSettings {
    /// `None` when the mode starts no TLS here; else the settings, which may
    /// be broken (reported as `Err` beside them, and failing closed).
    pub fn compile(spec: &ClientTlsSettings) -> Option<(Arc<TlsSettings>, Option<String>)> {
        let mutual = match spec.mode {
            Some(ClientTlsMode::Simple) => false,
            Some(ClientTlsMode::Mutual) => true,
            None | Some(ClientTlsMode::Disable | ClientTlsMode::IstioMutual) => return None,
        };
        let configs = build(spec, mutual);
        let error = configs.as_ref().err().cloned();
        Some((
            Arc::new(TlsSettings {
                spec: spec.clone(),
                configs,
            }),
            error,
        ))
    }

    /// The settings for traffic to `host` (the cluster's, fully qualified):
    /// the server name is `sni`, else the host.
    pub fn for_host(self: &Arc<Self>, host: &str) -> Origination {
        let name = if self.spec.sni.is_empty() {
            host
        } else {
            &self.spec.sni
        };
        let server_name = ServerName::try_from(name.to_owned()).map_err(|_| {
            format!("{name:?} cannot be a TLS server name; set the DestinationRule's tls.sni")
        });
        Origination {
            settings: Arc::clone(self),
            server_name,
        }
    }
}

/// TLS to start on a cluster's connections: the settings, and the name the
/// server is asked for (and, without `subjectAltNames`, checked against).
#[derive(Clone, Debug)]
pub struct Origination {
    settings: Arc<TlsSettings>,
    server_name: Result<ServerName<'static>, String>,
}

// Two clusters whose settings read the same reach an endpoint the same way:
// they may share its pooled connections.
impl PartialEq for Origination {
    fn eq(&self, other: &Self) -> bool {
        self.settings.spec == other.settings.spec && self.server_name == other.server_name
    }
}

impl Eq for Origination {}

impl Origination {
    /// The client config and server name to start TLS with, or why the
    /// connection must be refused.
    pub fn client(
        &self,
        speaks: Speaks,
    ) -> Result<(Arc<ClientConfig>, ServerName<'static>), String> {
        let configs = self.settings.configs.as_ref().map_err(Clone::clone)?;
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
            "server_name": self.server_name.as_ref().map(|n| n.to_str().into_owned()).ok(),
            "subject_alt_names": spec.subject_alt_names,
            "ca_certificates": (!spec.ca_certificates.is_empty()).then_some(&spec.ca_certificates),
            "client_certificate": (!spec.client_certificate.is_empty()).then_some(&spec.client_certificate),
            "insecure_skip_verify": spec.insecure_skip_verify.unwrap_or(false),
            "error": self.settings.configs.as_ref().err().or(self.server_name.as_ref().err()),
        })
    }
}

fn build(spec: &ClientTlsSettings, mutual: bool) -> Result<Configs, String> {
    if !spec.credential_name.is_empty() {
        return Err(format!(
            "credentialName {:?}: the waypoint reads no Secrets; give caCertificates, clientCertificate and privateKey as files",
            spec.credential_name
        ));
    }
    if !spec.ca_crl.is_empty() {
        return Err(format!(
            "caCrl {:?}: certificate revocation lists are not supported, and the waypoint will not connect without checking one",
            spec.ca_crl
        ));
    }
    let provider = warren_ztunnel::tls::provider();
    let verifier: Arc<dyn ServerCertVerifier> = if spec.insecure_skip_verify == Some(true) {
        Arc::new(Unverified(provider.signature_verification_algorithms))
    } else {
        let roots = if spec.ca_certificates.is_empty() {
            system_roots()?
        } else {
            Arc::new(roots_from(&spec.ca_certificates)?)
        };
        let expected = spec
            .subject_alt_names
            .iter()
            .map(|san| Expected::parse(san))
            .collect::<Result<Vec<_>, _>>()?;
        Arc::new(Verifier {
            roots,
            expected,
            algorithms: provider.signature_verification_algorithms,
        })
    };
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = if mutual {
        let chain = certificates_from(&spec.client_certificate, "clientCertificate")?;
        let key = PrivateKeyDer::from_pem_file(&spec.private_key)
            .map_err(|e| format!("privateKey {:?}: {e}", spec.private_key))?;
        builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("clientCertificate and privateKey: {e}"))?
    } else {
        builder.with_no_client_auth()
    };
    let with_alpn = |protocols: &[&[u8]]| {
        let mut config = config.clone();
        config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    };
    Ok(Configs {
        http1: with_alpn(&[b"http/1.1"]),
        http2: with_alpn(&[b"h2"]),
        bytes: with_alpn(&[]),
    })
}

fn certificates_from(path: &str, field: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_file_iter(Path::new(path))
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{field} {path:?}: {e}"))?;
    if certificates.is_empty() {
        return Err(format!("{field} {path:?}: no PEM certificate in it"));
    }
    Ok(certificates)
}

fn roots_from(path: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates_from(path, "caCertificates")? {
        roots
            .add(certificate)
            .map_err(|e| format!("caCertificates {path:?}: {e}"))?;
    }
    Ok(roots)
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

/// One `subjectAltNames` entry.
#[derive(Debug)]
enum Expected {
    /// A DNS name or an IP address.
    Name(ServerName<'static>),
    /// A SPIFFE identity (a URI SAN).
    Spiffe(Identity),
}

impl Expected {
    fn parse(san: &str) -> Result<Expected, String> {
        if san.starts_with("spiffe://") {
            return san
                .parse()
                .map(Expected::Spiffe)
                .map_err(|e| format!("subjectAltNames {san:?}: {e}"));
        }
        ServerName::try_from(san.to_owned())
            .map(Expected::Name)
            .map_err(|_| {
                format!(
                    "subjectAltNames {san:?}: not a DNS name, an IP address or a spiffe:// identity"
                )
            })
    }

    fn matches(&self, cert: &ParsedCertificate<'_>, der: &CertificateDer<'_>) -> bool {
        match self {
            Expected::Name(name) => verify_server_name(cert, name).is_ok(),
            Expected::Spiffe(identity) => {
                warren_ztunnel::tls::identity_of(der).is_ok_and(|got| got == *identity)
            }
        }
    }
}

/// The chain to the roots, then the name: one of `subjectAltNames` when the
/// rule lists some, else the server name asked for.
#[derive(Debug)]
struct Verifier {
    roots: Arc<RootCertStore>,
    expected: Vec<Expected>,
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
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        if self.expected.is_empty() {
            verify_server_name(&cert, server_name)?;
        } else if !self.expected.iter().any(|e| e.matches(&cert, end_entity)) {
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

/// `insecureSkipVerify: true`: any certificate, as the rule asks. The
/// handshake's signatures are still checked, so the peer holds the key of
/// the certificate it sent.
#[derive(Debug)]
struct Unverified(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}
