//! What a certificate chain says, for people (`warrenctl certs`) and logs.

use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;

use crate::ca::x509::{self, CertError};

/// The leaf of a chain, summarised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertSummary {
    /// Lowercase hex, no separators.
    pub serial: String,
    /// The subjectAltName URIs (an SVID has exactly one).
    pub uris: Vec<String>,
    pub subject: String,
    pub issuer: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// Certificates in the chain, leaf included.
    pub chain_len: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum DescribeError {
    #[error(transparent)]
    Cert(#[from] CertError),
    #[error("the leaf's subjectAltName does not parse: {0}")]
    San(String),
}

/// Summarises the leaf (first certificate) of `chain_pem`; each element
/// may hold one or more PEM certificates.
pub fn describe(chain_pem: &[String]) -> Result<CertSummary, DescribeError> {
    let certs = x509::certs_from_pem(&chain_pem.concat())?;
    let leaf = x509::parse(certs.first().ok_or(CertError::Empty)?)?;
    let uris = leaf
        .subject_alternative_name()
        .map_err(|e| DescribeError::San(e.to_string()))?
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some((*uri).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(CertSummary {
        serial: x509::serial_hex(&leaf),
        uris,
        subject: leaf.subject().to_string(),
        issuer: leaf.issuer().to_string(),
        not_before: x509::not_before(&leaf),
        not_after: x509::not_after(&leaf),
        chain_len: certs.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summarises_the_leaf_of_a_chain() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::URI(
            "spiffe://cluster.local/ns/demo/sa/web".try_into().unwrap(),
        )];
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x4a, 0x01]));
        params.not_after = rcgen::date_time_ymd(2030, 1, 2);
        let cert = params.self_signed(&key).unwrap();
        let summary = describe(&[cert.pem()]).unwrap();
        assert_eq!(summary.serial, "4a01");
        assert_eq!(summary.uris, ["spiffe://cluster.local/ns/demo/sa/web"]);
        assert_eq!(summary.not_after, rcgen::date_time_ymd(2030, 1, 2));
        assert_eq!(summary.chain_len, 1);
        assert!(
            summary.issuer.contains("rcgen self signed cert"),
            "{}",
            summary.issuer
        );
        assert!(matches!(
            describe(&["not a certificate".into()]),
            Err(DescribeError::Cert(CertError::Empty))
        ));
    }
}
