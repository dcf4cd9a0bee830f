//! mTLS for HBONE: workload certificates and trust bundles from the agent, SPIFFE
//! identities in URI SANs, and the rustls configurations of both ends.
//!
//! DNS names play no part in verification. The client sends a server name only to tell
//! the peer ztunnel which of its workloads' certificates to present
//! ([`server_name_for`]); what it then checks is the URI SAN.

mod certificate;
mod config;
mod verify;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls_pki_types::{CertificateDer, ServerName};
use warren_api::Identity;
use x509_parser::{extensions::GeneralName, prelude::FromDer as _};

pub use certificate::{TrustBundle, WorkloadCertificate};
pub use config::{CertificateSource, ServerConfigs, client_config};
pub use verify::handshake_refusal;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("the certificate does not parse: {0}")]
    Parse(String),
    #[error("the certificate has no SPIFFE URI SAN")]
    NoIdentity,
    #[error("the certificate has more than one SPIFFE URI SAN")]
    ManyIdentities,
    #[error(transparent)]
    BadIdentity(#[from] warren_api::identity::IdentityError),
    #[error("PEM: {0}")]
    Pem(String),
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
    #[error("no trust bundle yet")]
    NoTrustBundle,
}

/// The crypto every Warren config uses (ring: no cmake, no aws-lc build).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The SPIFFE identity in a certificate's URI SAN: exactly one `spiffe://` URI.
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<Identity, TlsError> {
    let names = alt_names(cert)?;
    let mut spiffe = names.iter().filter_map(|name| match name {
        AltName::Uri(uri) if uri.starts_with("spiffe://") => Some(uri),
        _ => None,
    });
    let uri = spiffe.next().ok_or(TlsError::NoIdentity)?;
    if spiffe.next().is_some() {
        return Err(TlsError::ManyIdentities);
    }
    Ok(uri.parse()?)
}

/// A subjectAltName of a certificate, as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AltName {
    Dns(String),
    Uri(String),
}

impl AltName {
    pub fn as_str(&self) -> &str {
        match self {
            AltName::Dns(name) | AltName::Uri(name) => name,
        }
    }
}

/// Every DNS and URI SAN of a certificate (none without a SAN extension).
pub fn alt_names(cert: &CertificateDer<'_>) -> Result<Vec<AltName>, TlsError> {
    let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(cert.as_ref())
        .map_err(|e| TlsError::Parse(e.to_string()))?;
    let Some(san) = parsed
        .subject_alternative_name()
        .map_err(|e| TlsError::Parse(e.to_string()))?
    else {
        return Ok(Vec::new());
    };
    Ok(san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some(AltName::Dns((*dns).to_owned())),
            GeneralName::URI(uri) => Some(AltName::Uri((*uri).to_owned())),
            _ => None,
        })
        .collect())
}

/// Seconds since the epoch of a certificate's notBefore and notAfter.
pub fn validity_of(cert: &CertificateDer<'_>) -> Result<(i64, i64), TlsError> {
    let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(cert.as_ref())
        .map_err(|e| TlsError::Parse(e.to_string()))?;
    let validity = parsed.validity();
    Ok((
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    ))
}

/// The TLS server name that asks a ztunnel for the certificate of `identity`:
/// `<sa>.<ns>.<trust-domain>` when that is a valid DNS name, else a hash of the URI
/// under `.id.warren.invalid` (names longer than DNS allows).
pub fn server_name_for(identity: &Identity) -> ServerName<'static> {
    let readable = format!(
        "{}.{}.{}",
        identity.service_account, identity.namespace, identity.trust_domain
    );
    let labels_fit = readable
        .split('.')
        .all(|label| !label.is_empty() && label.len() <= 63);
    if labels_fit && let Ok(name) = ServerName::try_from(readable) {
        return name;
    }
    // FNV-1a: stable across versions and platforms, unlike std's hasher.
    let hash = identity
        .to_string()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    ServerName::try_from(format!("{hash:016x}.id.warren.invalid"))
        .unwrap_or_else(|_| ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into()))
}

/// The server name as a string, for comparing with a ClientHello's SNI.
pub fn server_name_string(identity: &Identity) -> String {
    match server_name_for(identity) {
        ServerName::DnsName(name) => name.as_ref().to_owned(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_are_dns_names() {
        let id = Identity::new("cluster.local", "demo", "app");
        assert_eq!(server_name_string(&id), "app.demo.cluster.local");
        let long = Identity::new("cluster.local", "demo", &"a".repeat(70));
        let name = server_name_string(&long);
        assert!(name.ends_with(".id.warren.invalid"), "{name}");
        assert_eq!(name, server_name_string(&long));
    }
}
