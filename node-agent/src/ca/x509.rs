//! Small facts about certificates the CA and the node agent both need:
//! reading PEM bundles, serials, fingerprints, validity, and verifying a
//! chain the way every peer will (webpki, as rustls does).

use rustls_pki_types::{
    CertificateDer, UnixTime,
    pem::{self, PemObject as _},
};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer as _, X509Certificate};

/// Why a certificate (or a bundle of them) is not usable.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("not PEM: {0}")]
    Pem(String),
    #[error("no certificate in the PEM text")]
    Empty,
    #[error("not an X.509 certificate: {0}")]
    Der(String),
}

/// Every `CERTIFICATE` block of a PEM text, in order.
pub fn certs_from_pem(text: &str) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, pem::Error>>()
        .map_err(|e| CertError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(CertError::Empty);
    }
    for cert in &certs {
        parse(cert)?;
    }
    Ok(certs)
}

/// One certificate as PEM (LF line endings, as every Warren file has).
pub fn to_pem(der: &[u8]) -> String {
    ::pem::encode_config(
        &::pem::Pem::new("CERTIFICATE", der.to_vec()),
        ::pem::EncodeConfig::new().set_line_ending(::pem::LineEnding::LF),
    )
}

pub fn parse<'a>(der: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>, CertError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(CertError::Der(
            "trailing bytes after the certificate".into(),
        )),
        Err(err) => Err(CertError::Der(err.to_string())),
    }
}

/// The serial as lowercase hex without separators (how Warren prints it).
pub fn serial_hex(cert: &X509Certificate<'_>) -> String {
    hex(cert.raw_serial())
}

/// SHA-256 of the DER, lowercase hex.
pub fn fingerprint(der: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, der).as_ref())
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

pub fn not_before(cert: &X509Certificate<'_>) -> OffsetDateTime {
    cert.validity().not_before.to_datetime()
}

pub fn not_after(cert: &X509Certificate<'_>) -> OffsetDateTime {
    cert.validity().not_after.to_datetime()
}

/// Which side of a TLS handshake a leaf is checked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
}

/// Verifies `chain` (leaf first, then intermediates) up to one of `roots`
/// at `now`, for `usage`, as a rustls peer would. Names are not checked:
/// SPIFFE peers match the URI SAN themselves.
pub fn verify_chain(
    chain: &[CertificateDer<'_>],
    roots: &[CertificateDer<'_>],
    now: OffsetDateTime,
    usage: Usage,
) -> Result<(), String> {
    let (leaf, intermediates) = chain.split_first().ok_or("empty chain")?;
    let anchors = roots
        .iter()
        .map(|root| {
            webpki::anchor_from_trusted_cert(root)
                .map(|a| a.to_owned())
                .map_err(|e| format!("a root is not a usable trust anchor: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let leaf = webpki::EndEntityCert::try_from(leaf).map_err(|e| format!("leaf: {e}"))?;
    let seconds = u64::try_from(now.unix_timestamp()).map_err(|_| "time before 1970")?;
    let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(seconds));
    let usage = match usage {
        Usage::Server => webpki::KeyUsage::server_auth(),
        Usage::Client => webpki::KeyUsage::client_auth(),
    };
    leaf.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        intermediates,
        time,
        usage,
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}
