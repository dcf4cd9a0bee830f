//! Checking a certificate signing request before anything is signed: it
//! parses, its signature proves possession of its key, the key is of a kind
//! Warren issues for, and it names exactly the identity asked for.
//!
//! Nothing else of the request is used: the leaf's extensions are the CA's
//! own (see [`super::authority`]), so a request cannot smuggle in a CA
//! flag, a DNS name or a usage the CA did not mean to grant.

use rcgen::{PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519, SignatureAlgorithm};
use rustls_pki_types::{CertificateSigningRequestDer, pem::PemObject as _};
use warren_api::Identity;
use x509_parser::{
    certification_request::X509CertificationRequest,
    extensions::{GeneralName, ParsedExtension},
    oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_SIG_ED25519},
    prelude::FromDer as _,
};

/// Longest CSR accepted, in PEM characters. A P-256 request is about 500;
/// this leaves room for RSA-sized ones, whose refusal then names the key.
pub const MAX_CSR_PEM: usize = 8 * 1024;

/// Why a request is refused. Each names what was wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CsrError {
    #[error("the CSR is {len} characters long; at most {MAX_CSR_PEM} are accepted")]
    TooLarge { len: usize },
    #[error("the CSR is not a PEM `CERTIFICATE REQUEST`: {0}")]
    NotPem(String),
    #[error("the CSR does not parse as PKCS#10: {0}")]
    Malformed(String),
    #[error("the CSR's signature does not verify with its own public key")]
    BadSignature,
    #[error(
        "the CSR's key is not usable: {0}; Warren issues for ECDSA P-256, P-384 and Ed25519 keys"
    )]
    Key(String),
    #[error("the CSR asks for a CA certificate")]
    AsksForCa,
    #[error("the CSR names no identity (no subjectAltName URI); it must name {requested}")]
    NoIdentity { requested: String },
    #[error("the CSR names {found}, not the requested identity {requested}")]
    SanMismatch { requested: String, found: String },
    #[error(
        "the CSR names more than the identity: {found}; its only subjectAltName must be {requested}"
    )]
    ExtraSan { requested: String, found: String },
}

impl CsrError {
    /// A short, stable name for counters.
    pub fn reason(&self) -> &'static str {
        match self {
            CsrError::TooLarge { .. } => "csr_too_large",
            CsrError::NotPem(_) | CsrError::Malformed(_) => "csr_malformed",
            CsrError::BadSignature => "csr_bad_signature",
            CsrError::Key(_) => "csr_key",
            CsrError::AsksForCa => "csr_asks_for_ca",
            CsrError::NoIdentity { .. } | CsrError::SanMismatch { .. } => "csr_san_mismatch",
            CsrError::ExtraSan { .. } => "csr_extra_san",
        }
    }
}

/// The public key of a checked request, in the form rcgen signs over.
#[derive(Debug)]
pub struct RequestKey {
    spki_key: Vec<u8>,
    alg: &'static SignatureAlgorithm,
}

impl rcgen::PublicKeyData for RequestKey {
    fn der_bytes(&self) -> &[u8] {
        &self.spki_key
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

/// Checks `csr_pem` for `identity`; the key to certify if it passes.
pub fn check(csr_pem: &str, identity: &Identity) -> Result<RequestKey, CsrError> {
    if csr_pem.len() > MAX_CSR_PEM {
        return Err(CsrError::TooLarge { len: csr_pem.len() });
    }
    let mut blocks = CertificateSigningRequestDer::pem_slice_iter(csr_pem.as_bytes());
    let der = match (blocks.next(), blocks.next()) {
        (Some(Ok(der)), None) => der,
        (None, _) => return Err(CsrError::NotPem("no CERTIFICATE REQUEST block".into())),
        (Some(Err(err)), _) => return Err(CsrError::NotPem(err.to_string())),
        (Some(Ok(_)), Some(_)) => return Err(CsrError::NotPem("more than one block".into())),
    };
    let csr = match X509CertificationRequest::from_der(der.as_ref()) {
        Ok(([], csr)) => csr,
        Ok(_) => {
            return Err(CsrError::Malformed(
                "trailing bytes after the request".into(),
            ));
        }
        Err(err) => return Err(CsrError::Malformed(err.to_string())),
    };
    // The key first: an unsupported key would only fail the signature
    // check with a less helpful message.
    let key = request_key(&csr)?;
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;
    check_names(&csr, identity)?;
    Ok(key)
}

fn request_key(csr: &X509CertificationRequest<'_>) -> Result<RequestKey, CsrError> {
    let spki = &csr.certification_request_info.subject_pki;
    let data = spki.subject_public_key.data.to_vec();
    let alg = &spki.algorithm;
    let (alg, len): (&'static SignatureAlgorithm, usize) =
        if alg.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
            let curve = alg
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .ok_or_else(|| CsrError::Key("an EC key without a named curve".into()))?;
            if curve == OID_EC_P256 {
                (&PKCS_ECDSA_P256_SHA256, 65)
            } else if curve == OID_NIST_EC_P384 {
                (&PKCS_ECDSA_P384_SHA384, 97)
            } else {
                return Err(CsrError::Key(format!("EC curve {curve}")));
            }
        } else if alg.algorithm == OID_SIG_ED25519 {
            (&PKCS_ED25519, 32)
        } else {
            return Err(CsrError::Key(format!("key algorithm {}", alg.algorithm)));
        };
    // EC points must be uncompressed (what every TLS stack expects).
    let well_formed = data.len() == len && (len == 32 || data.first() == Some(&0x04));
    if !well_formed {
        return Err(CsrError::Key("the public key is not well formed".into()));
    }
    Ok(RequestKey {
        spki_key: data,
        alg,
    })
}

fn check_names(csr: &X509CertificationRequest<'_>, identity: &Identity) -> Result<(), CsrError> {
    let requested = identity.to_string();
    let mut names = Vec::new();
    for extension in csr.requested_extensions().into_iter().flatten() {
        match extension {
            ParsedExtension::SubjectAlternativeName(san) => {
                names.extend(san.general_names.iter().map(describe_name));
            }
            ParsedExtension::BasicConstraints(bc) if bc.ca => return Err(CsrError::AsksForCa),
            ParsedExtension::ParseError { error } => {
                return Err(CsrError::Malformed(format!(
                    "a requested extension does not parse: {error}"
                )));
            }
            // Ignored: the leaf carries only the CA's own extensions.
            _ => {}
        }
    }
    match names.as_slice() {
        [] => Err(CsrError::NoIdentity { requested }),
        [only] if *only == format!("URI:{requested}") => Ok(()),
        [only] => Err(CsrError::SanMismatch {
            requested,
            found: only.clone(),
        }),
        _ => Err(CsrError::ExtraSan {
            requested,
            found: names.join(", "),
        }),
    }
}

fn describe_name(name: &GeneralName<'_>) -> String {
    match name {
        GeneralName::URI(uri) => format!("URI:{uri}"),
        GeneralName::DNSName(dns) => format!("DNS:{dns}"),
        GeneralName::RFC822Name(mail) => format!("email:{mail}"),
        GeneralName::IPAddress(bytes) => match bytes.len() {
            4 => format!(
                "IP:{}",
                std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*bytes).unwrap_or_default())
            ),
            16 => format!(
                "IP:{}",
                std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*bytes).unwrap_or_default())
            ),
            _ => "IP:?".into(),
        },
        GeneralName::OtherName(oid, _) => format!("otherName:{oid}"),
        GeneralName::DirectoryName(dn) => format!("dirName:{dn}"),
        GeneralName::RegisteredID(oid) => format!("registeredID:{oid}"),
        GeneralName::X400Address(_) | GeneralName::EDIPartyName(_) => "other name".into(),
        GeneralName::Invalid(_, _) => "invalid name".into(),
    }
}
