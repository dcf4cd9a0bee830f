//! Certificates for unit tests.

use std::collections::BTreeMap;

/// A CA certificate of its own for each `name`, the same on every call, as
/// PEM without a final newline.
pub fn ca_pem(name: &str) -> String {
    static MADE: std::sync::LazyLock<std::sync::Mutex<BTreeMap<String, String>>> =
        std::sync::LazyLock::new(Default::default);
    let mut made = MADE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    made.entry(name.to_owned())
        .or_insert_with(|| {
            let key = rcgen::KeyPair::generate().expect("a key");
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, format!("test CA {name}"));
            let cert = params.self_signed(&key).expect("a certificate");
            cert.pem().trim_end().to_owned()
        })
        .clone()
}
