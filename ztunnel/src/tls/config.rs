//! rustls configurations for both ends of HBONE: TLS 1.3 only, ALPN `h2`.

use std::sync::{Arc, Mutex};

use rustls::{
    ClientConfig, ServerConfig, SignatureScheme,
    client::ResolvesClientCert,
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};
use warren_api::{Identity, identity::TrustDomains};

use super::{
    TlsError, TrustBundle, WorkloadCertificate, provider,
    verify::{ClientIdentityVerifier, ServerIdentityVerifier},
};

const ALPN_H2: &[u8] = b"h2";

/// The client side of one HBONE connection: presents `source`'s certificate and accepts
/// only a peer proving `expected`.
pub fn client_config(
    source: &WorkloadCertificate,
    trust: &TrustBundle,
    expected: Identity,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let verifier = ServerIdentityVerifier::new(
        Arc::clone(&trust.roots),
        expected,
        provider.signature_verification_algorithms,
    );
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(OneCertificate(Arc::clone(&source.certified))));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // A resumed session skips the peer's certificate: see the server side.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct OneCertificate(Arc<CertifiedKey>);

impl ResolvesClientCert for OneCertificate {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Where the server finds its certificates and roots (ztunnel's state).
pub trait CertificateSource: Send + Sync + std::fmt::Debug + 'static {
    /// The certificate to present for a ClientHello's server name (see
    /// [`super::server_name_for`]); without one, the only certificate if there is one.
    fn server_certificate(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>>;
    /// The trust bundle, a number that changes whenever it does, and the mesh's trust
    /// domains.
    fn trust(&self) -> Option<(u64, Arc<TrustBundle>, TrustDomains)>;
}

#[derive(Debug)]
struct Resolver<S>(Arc<S>);

impl<S: CertificateSource> ResolvesServerCert for Resolver<S> {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name();
        let found = self.0.server_certificate(name);
        if found.is_none() {
            tracing::debug!(
                server_name = name,
                "no certificate for the requested server name"
            );
        }
        found
    }
}

/// The HBONE server's config, rebuilt when the trust bundle or trust domain changes.
pub struct ServerConfigs<S> {
    source: Arc<S>,
    cached: Mutex<Option<(u64, TrustDomains, Arc<ServerConfig>)>>,
}

impl<S: CertificateSource> ServerConfigs<S> {
    pub fn new(source: Arc<S>) -> Self {
        ServerConfigs {
            source,
            cached: Mutex::new(None),
        }
    }

    pub fn current(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let (generation, trust, trust_domain) =
            self.source.trust().ok_or(TlsError::NoTrustBundle)?;
        // A poisoned lock only means another thread panicked mid-update: rebuild.
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((g, td, config)) = cached.as_ref()
            && *g == generation
            && *td == trust_domain
        {
            return Ok(Arc::clone(config));
        }
        let provider = provider();
        let webpki = WebPkiClientVerifier::builder_with_provider(
            Arc::clone(&trust.roots),
            Arc::clone(&provider),
        )
        .build()
        .map_err(|e| TlsError::Pem(format!("trust bundle: {e}")))?;
        let verifier = ClientIdentityVerifier::new(webpki, trust_domain.clone());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_cert_resolver(Arc::new(Resolver(Arc::clone(&self.source))));
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        // No session resumption: a resumed TLS 1.3 session brings back the identity
        // of the first handshake without showing a certificate, so a peer could go on
        // as an identity whose short-lived certificate has expired (or was replaced)
        // for as long as its ticket lives. HBONE connections are long-lived and
        // pooled; a full handshake per connection costs next to nothing.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        let config = Arc::new(config);
        *cached = Some((generation, trust_domain, Arc::clone(&config)));
        Ok(config)
    }
}
