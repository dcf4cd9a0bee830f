//! Workload certificates and trust bundles, parsed from the agent's PEM.

use std::sync::Arc;

use rustls::{RootCertStore, sign::CertifiedKey};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use serde::Serialize;
use warren_api::{Identity, config};

use super::{TlsError, identity_of, provider, validity_of};

/// The certificate and key of one identity this ztunnel serves.
#[derive(Clone, Debug)]
pub struct WorkloadCertificate {
    pub identity: Identity,
    pub certified: Arc<CertifiedKey>,
    pub not_before: i64,
    pub not_after: i64,
}

/// What `/config_dump` shows of a certificate (never the key).
#[derive(Serialize)]
pub struct CertificateSummary {
    pub identity: String,
    pub not_before: i64,
    pub not_after: i64,
    pub chain_length: usize,
}

impl WorkloadCertificate {
    pub fn from_proto(c: &config::Certificate) -> Result<WorkloadCertificate, TlsError> {
        let identity: Identity = c.identity.parse()?;
        let mut chain = Vec::new();
        for pem in &c.chain_pem {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                chain.push(cert.map_err(|e| TlsError::Pem(format!("chain_pem: {e}")))?);
            }
        }
        let leaf = chain
            .first()
            .ok_or_else(|| TlsError::Pem("chain_pem holds no certificate".into()))?;
        let in_cert = identity_of(leaf)?;
        if in_cert != identity {
            return Err(TlsError::Pem(format!(
                "the leaf certificate is for {in_cert}, not {identity}"
            )));
        }
        let (not_before, not_after) = validity_of(leaf)?;
        let key = PrivateKeyDer::from_pem_slice(c.private_key_pem.as_bytes())
            .map_err(|e| TlsError::Pem(format!("private_key_pem: {e}")))?;
        // Also checks that the key is the leaf's.
        let certified = CertifiedKey::from_der(chain, key, &provider())?;
        Ok(WorkloadCertificate {
            identity,
            certified: Arc::new(certified),
            not_before,
            not_after,
        })
    }

    pub fn summary(&self) -> CertificateSummary {
        CertificateSummary {
            identity: self.identity.to_string(),
            not_before: self.not_before,
            not_after: self.not_after,
            chain_length: self.certified.cert.len(),
        }
    }
}

/// The roots peers' chains must lead to.
#[derive(Clone, Debug)]
pub struct TrustBundle {
    pub roots: Arc<RootCertStore>,
    pub count: usize,
}

impl TrustBundle {
    pub fn from_proto(b: &config::TrustBundle) -> Result<TrustBundle, TlsError> {
        let mut roots = RootCertStore::empty();
        for pem in &b.roots_pem {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| TlsError::Pem(format!("roots_pem: {e}")))?;
                roots.add(cert)?;
            }
        }
        if roots.is_empty() {
            return Err(TlsError::Pem("roots_pem holds no certificate".into()));
        }
        let count = roots.len();
        Ok(TrustBundle {
            roots: Arc::new(roots),
            count,
        })
    }
}
