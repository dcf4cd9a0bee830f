//! A certificate authority for tests and the demo: servers outside the mesh
//! that speak TLS, the client certificates they ask for, and revocation
//! lists. PEM files are written where a test's processes can read them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context as _, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber, date_time_ymd,
};

pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    /// The root certificate, PEM (for an intermediate, its root's).
    pub root_pem: String,
    /// The next leaf's serial number.
    serials: AtomicU64,
    /// For an intermediate: its certificate, then its issuers' up to the
    /// root (not included), PEM; each leaf's certificate comes with it.
    chain_pem: String,
    /// For an intermediate: its serial number with its issuer, to revoke it
    /// by (0 for a root).
    pub serial: u64,
}

/// A certificate and its key, PEM.
pub struct Leaf {
    /// The certificate, then its chain up to the root (not included) when
    /// an intermediate issued it.
    pub cert_pem: String,
    pub key_pem: String,
    /// Its serial number, to revoke it by.
    pub serial: u64,
}

/// Where [`Leaf::write`] put a certificate and its key.
pub struct LeafFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Authority {
    pub fn new(name: &str) -> Result<Authority> {
        let params = Self::ca_params(name)?;
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Authority {
            root_pem: cert.pem(),
            issuer: Issuer::new(params, key),
            serials: AtomicU64::new(1),
            chain_pem: String::new(),
            serial: 0,
        })
    }

    /// An intermediate authority this one signs: its leaves come with the
    /// chain up to this authority's root.
    pub fn intermediate(&self, name: &str) -> Result<Authority> {
        let mut params = Self::ca_params(name)?;
        let serial = self.serials.fetch_add(1, Ordering::Relaxed);
        params.serial_number = Some(SerialNumber::from(serial));
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Authority {
            root_pem: self.root_pem.clone(),
            chain_pem: format!("{}{}", cert.pem(), self.chain_pem),
            issuer: Issuer::new(params, key),
            serials: AtomicU64::new(1),
            serial,
        })
    }

    fn ca_params(name: &str) -> Result<CertificateParams> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Ok(params)
    }

    /// A revocation list (PEM) of this authority naming `revoked`, valid
    /// from 2020 to 2099.
    pub fn revocation_list(&self, revoked: &[&Leaf]) -> Result<String> {
        let serials: Vec<u64> = revoked.iter().map(|leaf| leaf.serial).collect();
        self.revocation_list_of(&serials)
    }

    /// A revocation list (PEM) of this authority naming the certificates
    /// it issued with these serial numbers (an intermediate's included).
    pub fn revocation_list_of(&self, serials: &[u64]) -> Result<String> {
        let params = CertificateRevocationListParams {
            this_update: date_time_ymd(2020, 1, 1),
            next_update: date_time_ymd(2099, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|serial| RevokedCertParams {
                    serial_number: SerialNumber::from(*serial),
                    revocation_time: date_time_ymd(2024, 1, 1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }

    /// A server certificate for DNS names or IP addresses.
    pub fn server(&self, names: &[&str]) -> Result<Leaf> {
        self.server_with(names, &[])
    }

    /// A server certificate for DNS names or IP addresses, and URIs.
    pub fn server_with(&self, names: &[&str], uris: &[&str]) -> Result<Leaf> {
        self.leaf(names, uris, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate, with URI SANs (a SPIFFE identity, say) if any.
    pub fn client(&self, uris: &[&str]) -> Result<Leaf> {
        self.leaf(&[], uris, ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn leaf(&self, names: &[&str], uris: &[&str], usage: ExtendedKeyUsagePurpose) -> Result<Leaf> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        for name in names {
            params.subject_alt_names.push(match name.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*name).try_into()?),
            });
        }
        for uri in uris {
            params
                .subject_alt_names
                .push(SanType::URI((*uri).try_into()?));
        }
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let serial = self.serials.fetch_add(1, Ordering::Relaxed);
        params.serial_number = Some(SerialNumber::from(serial));
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Leaf {
            cert_pem: format!("{}{}", cert.pem(), self.chain_pem),
            key_pem: key.serialize_pem(),
            serial,
        })
    }

    /// Writes the root to `dir/<name>.pem`.
    pub fn write_root(&self, dir: &Path, name: &str) -> Result<PathBuf> {
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, &self.root_pem)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

impl Leaf {
    /// Writes `dir/<name>.pem` and `dir/<name>-key.pem`.
    pub fn write(&self, dir: &Path, name: &str) -> Result<LeafFiles> {
        let files = LeafFiles {
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}-key.pem")),
        };
        std::fs::write(&files.cert, &self.cert_pem)
            .with_context(|| format!("writing {}", files.cert.display()))?;
        std::fs::write(&files.key, &self.key_pem)
            .with_context(|| format!("writing {}", files.key.display()))?;
        Ok(files)
    }
}
