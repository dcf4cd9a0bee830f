//! A fresh key and a CSR naming one identity, nothing else: the CA refuses
//! any other name, and a key is never reused across renewals.

use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use warren_api::Identity;

/// A key and the PEM CSR for it.
pub struct KeyAndCsr {
    pub key: KeyPair,
    pub csr_pem: String,
}

pub fn generate(identity: &Identity) -> Result<KeyAndCsr, rcgen::Error> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    // SPIFFE SVIDs carry the identity in the URI SAN only.
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(identity.to_string().try_into()?)];
    let csr_pem = params.serialize_request(&key)?.pem()?;
    Ok(KeyAndCsr { key, csr_pem })
}
