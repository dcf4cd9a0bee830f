//! Gateway API BackendTLSPolicies as the waypoints receive them: for each
//! Service (or ServiceEntry) one or more policies target, the policy in
//! force on each of its ports, with the CA bundle of its ConfigMaps read in.
//!
//! Which policy wins follows the Gateway API: one naming the port
//! (`sectionName`) beats one for the whole target, and among equals the
//! oldest (then the first by name) wins. A policy whose ConfigMaps cannot
//! all be read (missing, without `ca.crt`, or in a namespace the agent may
//! not read), or that asks what Warren cannot do
//! ([`cannot_honour`]), still wins its ports, carrying why: the waypoint
//! refuses their connections rather than reach the server unchecked or in
//! plaintext.

use std::collections::{BTreeMap, BTreeSet};

use rustls_pki_types::{CertificateDer, pem::PemObject as _};

use warren_api::{
    config::{BackendTls, BackendTlsPort},
    key,
};

use crate::{
    model::{
        Kind, Object, ObjectKey,
        backend_tls_policy::{BackendTLSPolicy, CA_KEY, SYSTEM_CAS, SanType, cannot_honour},
        http_route::ParentKind,
    },
    store::Store,
};

use super::{names_cluster_services, section_port};

/// What a policy asks (for every port), attached to a target, with the
/// port it names (by name), if any.
type Attached<'a> = (Option<&'a str>, &'a BackendTlsPort);

/// The resources `namespace`'s policies make, by key.
pub fn in_namespace(
    store: &Store,
    namespace: &str,
    cluster_domain: &str,
) -> BTreeMap<String, BackendTls> {
    let mut policies: Vec<&BackendTLSPolicy> = store
        .of_kind_in(Kind::BackendTlsPolicy, namespace)
        .filter_map(|o| match o {
            Object::BackendTlsPolicy(p) => Some(&**p),
            _ => None,
        })
        .collect();
    policies.sort_by_key(|p| {
        let created = p.metadata.creation_timestamp.as_ref().map(|t| t.0);
        (created, p.metadata.name.clone())
    });
    // What each policy asks, its bundle read once however many ports and
    // targets it holds.
    let asked: Vec<BackendTlsPort> = policies
        .iter()
        .map(|policy| policy_entry(store, namespace, policy))
        .collect();
    // Each target's policies, oldest first, with the port they name.
    let mut targets: BTreeMap<(ParentKind, &str), Vec<Attached<'_>>> = BTreeMap::new();
    for (policy, asked) in policies.iter().zip(&asked) {
        for target in &policy.spec.target_refs {
            if let Some(kind) = target.target_kind() {
                targets
                    .entry((kind, &target.name))
                    .or_default()
                    .push((target.section_name.as_deref(), asked));
            }
        }
    }
    let on_port = |asked: &BackendTlsPort, port: u16| BackendTlsPort {
        port: u32::from(port),
        ..asked.clone()
    };
    let mut out = BTreeMap::new();
    for ((kind, name), attached) in targets {
        let Some((resource_key, hosts)) = target(store, namespace, kind, name, cluster_domain)
        else {
            continue;
        };
        let mut ports = Vec::new();
        let mut taken = BTreeSet::new();
        for (section, asked) in &attached {
            let Some(section) = section else { continue };
            // A port the target does not have: the policy applies nowhere
            // on it (until the port appears).
            if let Some(port) = section_port(store, namespace, kind, name, section)
                && taken.insert(port)
            {
                ports.push(on_port(asked, port));
            }
        }
        if let Some((_, asked)) = attached.iter().find(|(section, _)| section.is_none()) {
            ports.push(on_port(asked, 0));
        }
        if ports.is_empty() {
            continue;
        }
        out.insert(
            resource_key,
            BackendTls {
                namespace: namespace.to_owned(),
                hosts,
                ports,
            },
        );
    }
    out
}

/// The resource key and hosts of a target that exists.
fn target(
    store: &Store,
    namespace: &str,
    kind: ParentKind,
    name: &str,
    cluster_domain: &str,
) -> Option<(String, Vec<String>)> {
    match kind {
        ParentKind::Service => {
            let key = ObjectKey::new(Kind::Service, Some(namespace), name);
            store.get(&key)?;
            Some((
                key::backend_tls(namespace, name),
                vec![format!("{name}.{namespace}.svc.{cluster_domain}")],
            ))
        }
        ParentKind::ServiceEntry => {
            let key = ObjectKey::new(Kind::ServiceEntry, Some(namespace), name);
            let Some(Object::ServiceEntry(entry)) = store.get(&key) else {
                return None;
            };
            // An entry never speaks for a Kubernetes Service's name.
            let hosts: Vec<String> = entry
                .spec
                .hosts
                .iter()
                .filter(|h| !names_cluster_services(h, cluster_domain))
                .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
                .collect();
            (!hosts.is_empty()).then(|| (key::service_entry_backend_tls(namespace, name), hosts))
        }
    }
}

/// What `policy` asks (on every port: port 0), its CA bundle read, or why
/// it cannot be honoured.
fn policy_entry(store: &Store, namespace: &str, policy: &BackendTLSPolicy) -> BackendTlsPort {
    let validation = &policy.spec.validation;
    let name = policy.metadata.name.as_deref().unwrap_or_default();
    let sans = |kind: SanType| {
        validation
            .subject_alt_names
            .iter()
            .filter(|san| san.san_type() == Some(kind))
            .map(|san| san.value().to_owned())
            .collect()
    };
    let cannot = cannot_honour(policy);
    let (ca_certificates, error) = if cannot.is_empty() {
        ca_bundle(store, namespace, policy)
    } else {
        (Vec::new(), cannot.join("; "))
    };
    BackendTlsPort {
        port: 0,
        policy: format!("{namespace}/{name}"),
        hostname: validation.hostname.clone(),
        subject_alt_names: sans(SanType::Hostname),
        uri_subject_alt_names: sans(SanType::Uri),
        ca_certificates,
        system_roots: validation.well_known_ca_certificates.as_deref() == Some(SYSTEM_CAS),
        error,
    }
}

/// The PEM of every ConfigMap the policy names, in order, or why it cannot
/// be had: one reference that cannot be read fails the policy whole, as the
/// Gateway API asks.
fn ca_bundle(store: &Store, namespace: &str, policy: &BackendTLSPolicy) -> (Vec<u8>, String) {
    let mut bundle = Vec::new();
    for reference in &policy.spec.validation.ca_certificate_refs {
        match ca_certificates(store, namespace, &reference.name) {
            Ok(pem) => {
                bundle.extend_from_slice(pem.as_bytes());
                if !pem.ends_with('\n') {
                    bundle.push(b'\n');
                }
            }
            Err(why) => return (Vec::new(), why),
        }
    }
    (bundle, String::new())
}

/// The CA certificates (PEM) of ConfigMap `name` of `namespace`, or why
/// they cannot be had: no such ConfigMap (or one the agent may not read),
/// no `ca.crt`, or one without a certificate in it.
pub fn ca_certificates<'a>(
    store: &'a Store,
    namespace: &str,
    name: &str,
) -> Result<&'a str, String> {
    let key = ObjectKey::new(Kind::ConfigMap, Some(namespace), name);
    let Some(Object::ConfigMap(map)) = store.get(&key) else {
        return Err(format!(
            "ConfigMap {namespace}/{name} (caCertificateRefs) was not found: is there one, and may the node agent read that namespace's (--secret-namespace, the chart's nodeAgent.credentialNamespaces)?"
        ));
    };
    let pem = map.ca_certificates.as_deref().unwrap_or_default();
    if pem.trim().is_empty() {
        return Err(format!(
            "ConfigMap {namespace}/{name} (caCertificateRefs) has no {CA_KEY:?} key to check the server against"
        ));
    }
    // What the waypoint would refuse as trust anchors, said here, where the
    // ConfigMap is named (and its status can tell).
    let why = |what: &str| {
        Err(format!(
            "ConfigMap {namespace}/{name} (caCertificateRefs): its {CA_KEY:?} {what}"
        ))
    };
    let mut found = 0;
    for certificate in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let Ok(certificate) = certificate else {
            return why("has a PEM block that cannot be read");
        };
        if webpki::anchor_from_trusted_cert(&certificate).is_err() {
            return why(&format!(
                "holds a certificate (number {}) that cannot be a trust anchor",
                found + 1
            ));
        }
        found += 1;
    }
    if found == 0 {
        return why("holds no PEM certificate");
    }
    Ok(pem)
}

/// Whether a change to the object `key` may change `namespace`'s
/// resources: its policies, and what they read.
pub fn depends_on(store: &Store, key: &ObjectKey) -> bool {
    match key.kind {
        Kind::BackendTlsPolicy => true,
        Kind::ConfigMap | Kind::Service | Kind::ServiceEntry => {
            let namespace = key.namespace.as_deref().unwrap_or_default();
            store
                .of_kind_in(Kind::BackendTlsPolicy, namespace)
                .next()
                .is_some()
        }
        _ => false,
    }
}
