//! Issuing certificates: which identities this CA signs, for how long, and
//! what a leaf carries. No I/O here; the gRPC service and the tests call
//! the same [`Authority::sign`].
//!
//! A leaf (X.509 SVID) carries exactly: a random positive serial, an empty
//! subject with a critical subjectAltName holding the one SPIFFE URI,
//! `CA:false`, key usage digitalSignature, extended key usage serverAuth
//! and clientAuth (HBONE peers are both), and an authority key identifier
//! naming the signer. Its validity starts a minute in the past (clocks
//! disagree) and ends at the requested TTL, capped by the CA's maximum and
//! by the signing chain's own expiry.

use std::{net::IpAddr, time::Duration};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use time::OffsetDateTime;
use warren_api::{Identity, identity::IdentityError};

use super::{
    csr::{self, CsrError},
    material::{Material, random_serial},
    x509::{self, Usage},
};

/// How far back a leaf's validity starts, for peers whose clock is behind.
const BACKDATE: Duration = Duration::from_secs(60);
/// Lifetime of the CA's own serving certificate (re-issued at each start
/// and each change of signer).
const SERVING_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// The name clients check the CA's serving certificate against.
pub const SERVING_NAME: &str = "warren-ca";

/// What the CA issues, from its flags.
#[derive(Clone, Debug)]
pub struct Policy {
    pub trust_domain: String,
    pub default_ttl: Duration,
    pub max_ttl: Duration,
}

/// Why a request cannot be signed (the caller's fault unless `Signing`).
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("{identity} is outside this CA's trust domain {trust_domain:?}")]
    TrustDomain {
        identity: String,
        trust_domain: String,
    },
    #[error(transparent)]
    Csr(#[from] CsrError),
    #[error("the CA's signing chain expired at {0}; nothing can be issued until it is replaced")]
    SignerExpired(OffsetDateTime),
    #[error("signing failed: {0}")]
    Signing(String),
}

impl SignError {
    /// A short, stable name for counters.
    pub fn reason(&self) -> &'static str {
        match self {
            SignError::Identity(_) => "identity_malformed",
            SignError::TrustDomain { .. } => "wrong_trust_domain",
            SignError::Csr(err) => err.reason(),
            SignError::SignerExpired(_) => "signer_expired",
            SignError::Signing(_) => "internal",
        }
    }
}

/// A signed leaf and what the caller needs with it.
#[derive(Clone, Debug)]
pub struct Issued {
    /// Leaf first, then intermediates up to (not including) the root.
    pub chain_pem: Vec<String>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub serial: String,
}

/// The CA's signing material with its issuance policy.
#[derive(Debug)]
pub struct Authority {
    policy: Policy,
    material: Material,
}

impl Authority {
    /// Checks, by issuing a throwaway leaf and verifying it as a peer would,
    /// that the material produces certificates that verify to its roots:
    /// a plug-in chain that does not lead to the given roots is refused at
    /// start, not discovered by every proxy.
    pub fn new(material: Material, policy: Policy, now: OffsetDateTime) -> Result<Self, String> {
        let authority = Self { policy, material };
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
        let probe = Identity::new(&authority.policy.trust_domain, "warren-ca", "self-test");
        let issued = authority
            .issue(
                &key,
                vec![uri_san(&probe)?],
                DistinguishedName::new(),
                Duration::from_secs(60),
                now,
            )
            .map_err(|e| e.to_string())?;
        let chain = issued
            .chain_pem
            .iter()
            .map(|p| x509::certs_from_pem(p).map(|mut c| c.remove(0)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        for usage in [Usage::Client, Usage::Server] {
            x509::verify_chain(&chain, authority.material.roots(), now, usage).map_err(|e| {
                format!(
                    "certificates from this signer do not verify to its roots ({usage:?} auth): {e}"
                )
            })?;
        }
        Ok(authority)
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn material(&self) -> &Material {
        &self.material
    }

    pub fn roots_pem(&self) -> Vec<String> {
        self.material.roots_pem()
    }

    /// The requested identity, if it is one this CA may issue at all.
    pub fn identity(&self, uri: &str) -> Result<Identity, SignError> {
        let identity: Identity = uri.parse()?;
        if identity.trust_domain != self.policy.trust_domain {
            return Err(SignError::TrustDomain {
                identity: identity.to_string(),
                trust_domain: self.policy.trust_domain.clone(),
            });
        }
        Ok(identity)
    }

    /// The lifetime granted for a requested one (zero: the default).
    pub fn ttl(&self, requested: Duration) -> Duration {
        let wanted = if requested.is_zero() {
            self.policy.default_ttl
        } else {
            requested
        };
        wanted.min(self.policy.max_ttl)
    }

    /// Signs `csr_pem` for `identity` (already authorized by the caller).
    pub fn sign(
        &self,
        csr_pem: &str,
        identity: &Identity,
        requested_ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<Issued, SignError> {
        let key = csr::check(csr_pem, identity)?;
        let sans = vec![uri_san(identity).map_err(SignError::Signing)?];
        self.issue(
            &key,
            sans,
            DistinguishedName::new(),
            self.ttl(requested_ttl),
            now,
        )
    }

    /// A certificate and key for the CA's own TLS listener: DNS
    /// `warren-ca`, the listen address when it is a specific one, and the
    /// operator's extra names.
    pub fn serving_identity(
        &self,
        listen_ip: IpAddr,
        extra_sans: &[String],
        now: OffsetDateTime,
    ) -> Result<(Vec<String>, String), SignError> {
        let mut sans = vec![dns_san(SERVING_NAME)?];
        if !listen_ip.is_unspecified() {
            sans.push(SanType::IpAddress(listen_ip));
        }
        for name in extra_sans {
            let san = match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => dns_san(name)?,
            };
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| SignError::Signing(e.to_string()))?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, SERVING_NAME);
        let issued = self.issue(&key, sans, name, SERVING_LIFETIME, now)?;
        Ok((issued.chain_pem, key.serialize_pem()))
    }

    fn issue(
        &self,
        key: &impl rcgen::PublicKeyData,
        sans: Vec<SanType>,
        subject: DistinguishedName,
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<Issued, SignError> {
        // Certificates hold whole seconds; so do the times reported with them.
        let now = now.replace_nanosecond(0).unwrap_or(now);
        let (chain_not_before, chain_not_after) = self.material.validity();
        if chain_not_after <= now {
            return Err(SignError::SignerExpired(chain_not_after));
        }
        let mut params = CertificateParams::default();
        let serial = random_serial();
        let serial_hex = x509::hex(&serial.to_bytes());
        params.serial_number = Some(serial);
        params.distinguished_name = subject;
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        // Warren issues for EC and Ed25519 keys only: no key encipherment.
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = (now - BACKDATE).max(chain_not_before);
        params.not_after = (now + ttl).min(chain_not_after);
        let leaf = params
            .signed_by(key, self.material.issuer())
            .map_err(|e| SignError::Signing(e.to_string()))?;
        let mut chain_pem = vec![leaf.pem()];
        chain_pem.extend(self.material.chain().iter().map(|c| x509::to_pem(c)));
        Ok(Issued {
            chain_pem,
            not_before: params.not_before,
            not_after: params.not_after,
            serial: serial_hex,
        })
    }
}

fn uri_san(identity: &Identity) -> Result<SanType, String> {
    identity
        .to_string()
        .try_into()
        .map(SanType::URI)
        .map_err(|e: rcgen::Error| format!("{identity} as a URI name: {e}"))
}

fn dns_san(name: &str) -> Result<SanType, SignError> {
    name.to_owned()
        .try_into()
        .map(SanType::DnsName)
        .map_err(|e: rcgen::Error| SignError::Signing(format!("{name:?} as a DNS name: {e}")))
}
