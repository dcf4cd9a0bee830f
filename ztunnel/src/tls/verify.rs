//! Certificate verification by SPIFFE identity: the chain must lead to the trust bundle
//! (webpki: signatures, validity period, key usage), then the URI SAN decides.

use std::sync::Arc;

use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, OtherError, RootCertStore,
    SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::WebPkiSupportedAlgorithms,
    server::{
        ParsedCertificate,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use warren_api::{Identity, identity::TrustDomains};

use super::identity_of;

/// Why a peer's certificate names the wrong identity.
#[derive(thiserror::Error)]
pub enum IdentityMismatch {
    #[error("the peer presented {got}, expected {expected}")]
    Unexpected { expected: Identity, got: Identity },
    #[error("the peer's identity {got} is not of trust domain {trust_domain}")]
    ForeignTrustDomain { trust_domain: String, got: Identity },
    #[error("the peer's certificate has no usable SPIFFE identity: {0}")]
    NoIdentity(String),
}

/// rustls shows `Other` errors with `Debug`: make that the sentence operators read.
impl std::fmt::Debug for IdentityMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// The refusal reason (a metric label) for a failed TLS handshake: which
/// check the peer's certificate failed, so a dashboard tells an expired
/// certificate from a foreign CA or trust domain without reading logs.
pub fn handshake_refusal(error: &std::io::Error) -> &'static str {
    let Some(error) = error.get_ref().and_then(|e| e.downcast_ref::<Error>()) else {
        return "tls_handshake";
    };
    match error {
        Error::NoCertificatesPresented => "tls_no_certificate",
        Error::InvalidCertificate(certificate) => match certificate {
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => "tls_certificate_not_valid_now",
            CertificateError::UnknownIssuer
            | CertificateError::BadSignature
            | CertificateError::Revoked => "tls_certificate_untrusted",
            CertificateError::Other(OtherError(other)) => {
                match other.downcast_ref::<IdentityMismatch>() {
                    Some(IdentityMismatch::ForeignTrustDomain { .. }) => "tls_foreign_trust_domain",
                    Some(IdentityMismatch::Unexpected { .. }) => "tls_unexpected_identity",
                    Some(IdentityMismatch::NoIdentity(_)) => "tls_no_identity",
                    None => "tls_certificate_invalid",
                }
            }
            _ => "tls_certificate_invalid",
        },
        _ => "tls_handshake",
    }
}

fn reject(mismatch: IdentityMismatch) -> Error {
    Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(mismatch))))
}

/// The client's check of the peer ztunnel (or waypoint): chain to our roots, and the URI
/// SAN is exactly the identity the destination must have.
#[derive(Debug)]
pub struct ServerIdentityVerifier {
    roots: Arc<RootCertStore>,
    expected: Identity,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerIdentityVerifier {
    pub fn new(
        roots: Arc<RootCertStore>,
        expected: Identity,
        algorithms: WebPkiSupportedAlgorithms,
    ) -> Self {
        ServerIdentityVerifier {
            roots,
            expected,
            algorithms,
        }
    }
}

impl ServerCertVerifier for ServerIdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        let got = identity_of(end_entity)
            .map_err(|e| reject(IdentityMismatch::NoIdentity(e.to_string())))?;
        if got != self.expected {
            return Err(reject(IdentityMismatch::Unexpected {
                expected: self.expected.clone(),
                got,
            }));
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

/// The HBONE server's check of a client: webpki's chain verification (a certificate is
/// mandatory), then a SPIFFE identity of this mesh's trust domain or one of its aliases.
#[derive(Debug)]
pub struct ClientIdentityVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    domains: TrustDomains,
}

impl ClientIdentityVerifier {
    pub fn new(inner: Arc<dyn ClientCertVerifier>, domains: TrustDomains) -> Self {
        ClientIdentityVerifier { inner, domains }
    }
}

impl ClientCertVerifier for ClientIdentityVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let got = identity_of(end_entity)
            .map_err(|e| reject(IdentityMismatch::NoIdentity(e.to_string())))?;
        if !self.domains.is_local(&got.trust_domain) {
            return Err(reject(IdentityMismatch::ForeignTrustDomain {
                trust_domain: self.domains.trust_domain.clone(),
                got,
            }));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
