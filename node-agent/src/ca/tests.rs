//! Issuance end to end without the network: real keys, real CSRs, chains
//! verified by webpki and rustls as peers will.

use std::{os::unix::fs::PermissionsExt as _, path::Path, sync::Arc, time::Duration};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P384_SHA384, PKCS_ED25519, SanType,
};
use rustls_pki_types::{CertificateDer, UnixTime};
use time::OffsetDateTime;
use warren_api::Identity;
use x509_parser::extensions::{GeneralName, ParsedExtension};

use super::{
    authority::{Authority, Issued, Policy, SignError},
    csr::{CsrError, MAX_CSR_PEM},
    material::{self, Material, MaterialError, PluginFiles},
    x509::{self, Usage},
};
use crate::identity;

const HOUR: Duration = Duration::from_secs(3600);

fn policy() -> Policy {
    Policy {
        trust_domain: "cluster.local".into(),
        default_ttl: 24 * HOUR,
        max_ttl: 24 * HOUR,
    }
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn self_managed(dir: &Path) -> Authority {
    let (material, _) = Material::load_or_create(dir, now()).unwrap();
    Authority::new(material, policy(), now()).unwrap()
}

fn app() -> Identity {
    Identity::new("cluster.local", "demo", "app")
}

fn csr_for(identity: &Identity) -> String {
    identity::csr::generate(identity).unwrap().csr_pem
}

/// A CSR with arbitrary names, signed with a key of `alg`.
fn csr_with(sans: Vec<SanType>, alg: &'static rcgen::SignatureAlgorithm) -> String {
    let key = KeyPair::generate_for(alg).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = sans;
    params.serialize_request(&key).unwrap().pem().unwrap()
}

fn uri(identity: &Identity) -> SanType {
    SanType::URI(identity.to_string().try_into().unwrap())
}

fn ders(pems: &[String]) -> Vec<CertificateDer<'static>> {
    x509::certs_from_pem(&pems.concat()).unwrap()
}

fn sign(authority: &Authority, identity: &Identity) -> Issued {
    authority
        .sign(&csr_for(identity), identity, Duration::ZERO, now())
        .unwrap()
}

fn csr_error(result: Result<Issued, SignError>) -> CsrError {
    match result {
        Err(SignError::Csr(err)) => err,
        other => panic!("expected a CSR refusal, got {other:?}"),
    }
}

#[test]
fn issued_leaf_verifies_for_client_and_server_and_carries_only_what_the_ca_grants() {
    let dir = tempfile::tempdir().unwrap();
    let authority = self_managed(dir.path());
    let issued = sign(&authority, &app());
    let chain = ders(&issued.chain_pem);
    let roots = authority.material().roots().to_vec();
    assert_eq!(chain.len(), 1, "a self-managed root signs leaves directly");
    for usage in [Usage::Client, Usage::Server] {
        x509::verify_chain(&chain, &roots, now(), usage).unwrap();
    }

    // rustls itself accepts it as a client certificate.
    let mut store = rustls::RootCertStore::empty();
    store.add(roots[0].clone()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(store),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    let unix_now = UnixTime::since_unix_epoch(Duration::from_secs(now().unix_timestamp() as u64));
    verifier
        .verify_client_cert(&chain[0], &[], unix_now)
        .unwrap();

    let leaf = x509::parse(&chain[0]).unwrap();
    let root = x509::parse(&roots[0]).unwrap();
    assert!(!leaf.is_ca());
    assert_eq!(leaf.raw_serial()[0] & 0x80, 0, "serial is positive");
    assert_eq!(x509::serial_hex(&leaf), issued.serial);
    let mut names = Vec::new();
    let (mut eku_ok, mut ku_ok, mut aki) = (false, false, None);
    for ext in leaf.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                assert!(ext.critical, "empty subject: the SAN must be critical");
                names.extend(san.general_names.iter().map(|n| format!("{n:?}")));
            }
            ParsedExtension::ExtendedKeyUsage(eku) => {
                eku_ok = eku.server_auth && eku.client_auth && !eku.any;
            }
            ParsedExtension::KeyUsage(ku) => {
                ku_ok = ku.digital_signature() && !ku.key_cert_sign();
            }
            ParsedExtension::AuthorityKeyIdentifier(id) => aki = id.key_identifier.clone(),
            _ => {}
        }
    }
    assert_eq!(
        names,
        [format!(
            "{:?}",
            GeneralName::URI("spiffe://cluster.local/ns/demo/sa/app")
        )]
    );
    assert!(eku_ok && ku_ok);
    let root_ski = root
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
            _ => None,
        })
        .unwrap();
    assert_eq!(aki.unwrap().0, root_ski.as_slice());
    // Backdated for skew; default lifetime of a day.
    let start = now();
    assert!(x509::not_before(&leaf) <= start - Duration::from_secs(59));
    let lifetime = x509::not_after(&leaf) - start;
    assert!(lifetime <= time::Duration::hours(24) && lifetime > time::Duration::hours(23));
    assert_eq!(issued.not_after, x509::not_after(&leaf));
}

#[test]
fn other_key_types_are_accepted_and_certified_as_sent() {
    let dir = tempfile::tempdir().unwrap();
    let authority = self_managed(dir.path());
    for alg in [&PKCS_ECDSA_P384_SHA384, &PKCS_ED25519] {
        let issued = authority
            .sign(
                &csr_with(vec![uri(&app())], alg),
                &app(),
                Duration::ZERO,
                now(),
            )
            .unwrap();
        x509::verify_chain(
            &ders(&issued.chain_pem),
            authority.material().roots(),
            now(),
            Usage::Client,
        )
        .unwrap();
    }
}

#[test]
fn malformed_csrs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let authority = self_managed(dir.path());
    let err = csr_error(authority.sign("hello", &app(), Duration::ZERO, now()));
    assert!(matches!(err, CsrError::NotPem(_)), "{err}");
    let garbage =
        "-----BEGIN CERTIFICATE REQUEST-----\nAAECAwQF\n-----END CERTIFICATE REQUEST-----\n";
    let err = csr_error(authority.sign(garbage, &app(), Duration::ZERO, now()));
    assert!(matches!(err, CsrError::Malformed(_)), "{err}");
    let two = format!("{}{}", csr_for(&app()), csr_for(&app()));
    let err = csr_error(authority.sign(&two, &app(), Duration::ZERO, now()));
    assert!(err.to_string().contains("more than one"), "{err}");
}

#[test]
fn a_csr_for_another_identity_or_with_extra_names_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let authority = self_managed(dir.path());
    let other = Identity::new("cluster.local", "demo", "db");
    let err = csr_error(authority.sign(&csr_for(&other), &app(), Duration::ZERO, now()));
    assert!(matches!(err, CsrError::SanMismatch { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("spiffe://cluster.local/ns/demo/sa/db"),
        "{err}"
    );

    let extra = csr_with(
        vec![
            uri(&app()),
            SanType::DnsName("evil.example".try_into().unwrap()),
        ],
        &rcgen::PKCS_ECDSA_P256_SHA256,
    );
    let err = csr_error(authority.sign(&extra, &app(), Duration::ZERO, now()));
    assert!(matches!(err, CsrError::ExtraSan { .. }), "{err}");
    assert!(err.to_string().contains("DNS:evil.example"), "{err}");

    let none = csr_with(vec![], &rcgen::PKCS_ECDSA_P256_SHA256);
    let err = csr_error(authority.sign(&none, &app(), Duration::ZERO, now()));
    assert!(matches!(err, CsrError::NoIdentity { .. }), "{err}");
}

#[test]
fn a_csr_asking_for_a_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let authority = self_managed(dir.path());
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![uri(&app())];
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let err = csr_error(authority.sign(&csr, &app(), Duration::ZERO, now()));
    assert_eq!(err, CsrError::AsksForCa);
}

#[test]
fn a_csr_whose_signature_does_not_verify_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let authority = self_managed(dir.path());
    let pem = csr_for(&app());
    let mut der = ::pem::parse(&pem).unwrap().into_contents();
    let last = der.len() - 1;
    der[last] ^= 0x01;
    let tampered = ::pem::encode(&::pem::Pem::new("CERTIFICATE REQUEST", der));
    let err = csr_error(authority.sign(&tampered, &app(), Duration::ZERO, now()));
    assert_eq!(err, CsrError::BadSignature);
}

#[test]
fn an_oversized_csr_is_refused_before_parsing() {
    let dir = tempfile::tempdir().unwrap();
    let authority = self_managed(dir.path());
    let big = format!("{}{}", csr_for(&app()), " ".repeat(MAX_CSR_PEM));
    let err = csr_error(authority.sign(&big, &app(), Duration::ZERO, now()));
    assert!(matches!(err, CsrError::TooLarge { .. }), "{err}");
}

#[test]
fn identities_outside_the_trust_domain_or_malformed_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let authority = self_managed(dir.path());
    let err = authority
        .identity("spiffe://other.domain/ns/demo/sa/app")
        .unwrap_err();
    assert!(matches!(err, SignError::TrustDomain { .. }), "{err}");
    assert!(err.to_string().contains("\"cluster.local\""), "{err}");
    let err = authority
        .identity("spiffe://cluster.local/demo")
        .unwrap_err();
    assert_eq!(err.reason(), "identity_malformed");
    assert_eq!(
        authority
            .identity("spiffe://cluster.local/ns/demo/sa/app")
            .unwrap(),
        app()
    );
}

#[test]
fn the_lifetime_is_capped_at_the_maximum() {
    let dir = tempfile::tempdir().unwrap();
    let (material, _) = Material::load_or_create(dir.path(), now()).unwrap();
    let policy = Policy {
        trust_domain: "cluster.local".into(),
        default_ttl: 2 * HOUR,
        max_ttl: HOUR,
    };
    let authority = Authority::new(material, policy, now()).unwrap();
    let start = now();
    for (asked, granted) in [
        (48 * HOUR, HOUR),
        (Duration::ZERO, HOUR),
        (Duration::from_secs(90), Duration::from_secs(90)),
    ] {
        let issued = authority
            .sign(&csr_for(&app()), &app(), asked, start)
            .unwrap();
        let start_s = start.replace_nanosecond(0).unwrap();
        assert_eq!(issued.not_after - start_s, granted, "asked {asked:?}");
    }
}

/// An operator's root and an intermediate under it, as files.
fn operator_pki(dir: &Path) -> (PluginFiles, CertificateDer<'static>) {
    let root_key = KeyPair::generate().unwrap();
    let mut root_params = CertificateParams::default();
    root_params.distinguished_name = DistinguishedName::new();
    root_params
        .distinguished_name
        .push(DnType::CommonName, "Operator root");
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let root = root_params.self_signed(&root_key).unwrap();
    let root_issuer = Issuer::new(root_params, root_key);

    let mid_key = KeyPair::generate().unwrap();
    let mut mid_params = CertificateParams::default();
    mid_params.distinguished_name = DistinguishedName::new();
    mid_params
        .distinguished_name
        .push(DnType::CommonName, "Warren intermediate");
    mid_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    mid_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    mid_params.use_authority_key_identifier_extension = true;
    let mid = mid_params.signed_by(&mid_key, &root_issuer).unwrap();

    let files = PluginFiles {
        cert: dir.join("ca-cert.pem"),
        key: dir.join("ca-key.pem"),
        chain: None,
        roots: dir.join("root-cert.pem"),
    };
    std::fs::write(&files.cert, mid.pem()).unwrap();
    std::fs::write(&files.key, mid_key.serialize_pem()).unwrap();
    std::fs::write(&files.roots, root.pem()).unwrap();
    (files, root.der().clone())
}

#[test]
fn a_plugin_intermediate_issues_chains_that_verify_to_the_operator_root() {
    let dir = tempfile::tempdir().unwrap();
    let (files, operator_root) = operator_pki(dir.path());
    let material = Material::load_plugin(&files, now()).unwrap();
    let authority = Authority::new(material, policy(), now()).unwrap();
    let issued = sign(&authority, &app());
    let chain = ders(&issued.chain_pem);
    assert_eq!(chain.len(), 2, "leaf, then the intermediate");
    assert_eq!(
        authority.material().roots(),
        std::slice::from_ref(&operator_root)
    );
    for usage in [Usage::Client, Usage::Server] {
        x509::verify_chain(&chain, std::slice::from_ref(&operator_root), now(), usage).unwrap();
    }
    // Without the intermediate, the leaf does not verify: it is needed.
    assert!(x509::verify_chain(&chain[..1], &[operator_root], now(), Usage::Client).is_err());

    // A root that is not the intermediate's issuer is refused at start.
    let other = tempfile::tempdir().unwrap();
    let (other_files, _) = operator_pki(other.path());
    let mismatched = PluginFiles {
        roots: other_files.roots,
        ..files
    };
    let material = Material::load_plugin(&mismatched, now()).unwrap();
    let err = Authority::new(material, policy(), now()).unwrap_err();
    assert!(err.contains("do not verify to its roots"), "{err}");
}

#[test]
fn a_key_that_is_not_the_certificates_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (files, _) = operator_pki(dir.path());
    std::fs::write(&files.key, KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let err = Material::load_plugin(&files, now()).unwrap_err();
    assert!(err.to_string().contains("key does not belong"), "{err}");
}

#[test]
fn the_root_is_persisted_privately_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let (first, created) = Material::load_or_create(dir.path(), now()).unwrap();
    assert!(created);
    let (again, created) = Material::load_or_create(dir.path(), now()).unwrap();
    assert!(!created);
    assert_eq!(first.signer_serial(), again.signer_serial());
    assert!(first.same_as(&again));
    let mode = std::fs::metadata(dir.path().join(material::SIGNER_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let bundle = std::fs::read_to_string(dir.path().join(material::BUNDLE_FILE)).unwrap();
    assert_eq!(bundle, first.roots_pem().concat());
    assert!(!bundle.contains("PRIVATE KEY"));
    let root = x509::parse(&first.roots()[0]).unwrap();
    assert!(root.subject().to_string().contains("CN=Warren mesh root"));
    assert!(x509::not_after(&root) - now() > time::Duration::days(9 * 365));
}

#[test]
fn rotation_keeps_the_old_root_trusted_until_removed() {
    let dir = tempfile::tempdir().unwrap();
    let old = self_managed(dir.path());
    let old_root = old.material().roots()[0].clone();
    let old_leaf = ders(&sign(&old, &app()).chain_pem);

    let rotated = material::rotate_root(dir.path(), now()).unwrap();
    assert_eq!(
        rotated.previous_serial.as_deref(),
        Some(old.material().signer_serial().as_str())
    );
    let new = Authority::new(
        Material::load_state(dir.path(), now()).unwrap(),
        policy(),
        now(),
    )
    .unwrap();
    assert_eq!(new.material().signer_serial(), rotated.new_serial);
    let bundle = new.material().roots().to_vec();
    assert_eq!(bundle.len(), 2);
    assert_eq!(bundle[1], old_root, "the new root first, the old one kept");
    let file = std::fs::read_to_string(dir.path().join(material::BUNDLE_FILE)).unwrap();
    assert_eq!(file, rotated.bundle.concat());

    let new_leaf = ders(&sign(&new, &app()).chain_pem);
    let new_root = bundle[0].clone();
    x509::verify_chain(
        &new_leaf,
        std::slice::from_ref(&new_root),
        now(),
        Usage::Client,
    )
    .unwrap();
    assert!(
        x509::verify_chain(
            &new_leaf,
            std::slice::from_ref(&old_root),
            now(),
            Usage::Client
        )
        .is_err()
    );
    // During the overlap both generations verify against the bundle.
    x509::verify_chain(&new_leaf, &bundle, now(), Usage::Server).unwrap();
    x509::verify_chain(&old_leaf, &bundle, now(), Usage::Server).unwrap();

    // The active root cannot be removed; the old one can.
    let err = material::remove_root(dir.path(), &rotated.new_serial, now()).unwrap_err();
    assert!(matches!(err, MaterialError::ActiveRoot(_)), "{err}");
    let err = material::remove_root(dir.path(), "abcdef", now()).unwrap_err();
    assert!(matches!(err, MaterialError::NoSuchRoot { .. }), "{err}");
    let previous = rotated.previous_serial.unwrap();
    material::remove_root(dir.path(), &previous, now()).unwrap();
    let after = Material::load_state(dir.path(), now()).unwrap();
    assert_eq!(after.roots(), [new_root]);
    assert!(x509::verify_chain(&old_leaf, after.roots(), now(), Usage::Client).is_err());
}

#[test]
fn retired_roots_leave_the_bundle_once_expired() {
    let dir = tempfile::tempdir().unwrap();
    self_managed(dir.path());
    material::rotate_root(dir.path(), now()).unwrap();
    // A retired root that expires tomorrow, beside the one rotated out.
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.not_before = now() - time::Duration::days(1);
    params.not_after = now() + time::Duration::days(1);
    let short = params.self_signed(&key).unwrap();
    let retired = dir.path().join(material::RETIRED_FILE);
    let mut text = std::fs::read_to_string(&retired).unwrap();
    text.push_str(&short.pem());
    std::fs::write(&retired, text).unwrap();

    assert_eq!(
        Material::load_state(dir.path(), now())
            .unwrap()
            .roots()
            .len(),
        3
    );
    let in_two_days = now() + time::Duration::days(2);
    let later = Material::load_state(dir.path(), in_two_days).unwrap();
    assert_eq!(later.roots().len(), 2);
    assert!(!later.roots().contains(short.der()));
    // Eleven years on the signer itself has expired: refused, with why.
    let err = Material::load_state(dir.path(), now() + time::Duration::days(11 * 365)).unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");
}

/// The `ca` command line as the binary parses it.
#[derive(clap::Parser, Debug)]
struct Cli {
    #[command(subcommand)]
    command: Top,
}

#[derive(clap::Subcommand, Debug)]
enum Top {
    Ca(crate::config::CaArgs),
}

fn parse(args: &[&str]) -> Result<crate::config::CaArgs, clap::Error> {
    use clap::Parser as _;
    let Top::Ca(ca) = Cli::try_parse_from(["warren-node-agent", "ca"].iter().chain(args))?.command;
    Ok(ca)
}

#[test]
fn the_ca_command_line_serves_by_default_and_has_state_commands() {
    use crate::config::CaCommand;
    use clap::CommandFactory as _;
    Cli::command().debug_assert();

    let serve = parse(&[
        "--state-dir",
        "/s",
        "--config-dir",
        "/c",
        "--max-ttl",
        "1h",
        "--san",
        "ca.example,10.0.0.9",
    ])
    .unwrap();
    assert!(serve.command.is_none());
    assert_eq!(serve.serve.max_ttl, HOUR);
    assert_eq!(serve.serve.default_ttl, 24 * HOUR);
    assert_eq!(serve.serve.listen.to_string(), "0.0.0.0:15012");
    assert_eq!(serve.serve.sans, ["ca.example", "10.0.0.9"]);
    assert_eq!(
        serve.serve.node_agent_accounts,
        ["warren-system/warren-node-agent"]
    );

    let token = parse(&[
        "issue-token",
        "--state-dir",
        "/s",
        "--node",
        "node-a",
        "--ttl",
        "90s",
    ])
    .unwrap();
    match token.command {
        Some(CaCommand::IssueToken(t)) => {
            assert_eq!(t.node, "node-a");
            assert_eq!(t.ttl, Duration::from_secs(90));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        parse(&["rotate-root", "--state-dir", "/s"])
            .unwrap()
            .command,
        Some(CaCommand::RotateRoot(_))
    ));
    // A plug-in signer needs its key and roots.
    let err = parse(&["--cert-file", "/ca.pem"]).unwrap_err();
    assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    assert!(parse(&["--max-ttl", "soon"]).is_err());
}
