//! Secrets that DestinationRules' `tls.credentialName` name, as the waypoints
//! receive them. Istio's rule holds: a proxy's credentials are Secrets of its
//! own namespace, so a Secret goes to its namespace's waypoints alone
//! ([`crate::view::Audience`]). Only Secrets some `SIMPLE` or `MUTUAL` rule
//! names (or their `<name>-cacert` companions) are published, only by the
//! agents of nodes where a waypoint of their namespace runs, and a private
//! key only where a `MUTUAL` rule needs it: the agent passes on no more.

use std::{collections::BTreeMap, sync::Arc};

use warren_api::config::Credential;

use crate::model::{
    cluster::{CA_SECRET_SUFFIX, Secret},
    istio::{ClientTlsMode, ClientTlsSettings, DestinationRule, TrafficPolicy},
};

/// The `credentialName`s `dr` names in `SIMPLE` or `MUTUAL` parts, at any
/// level (policy, port, subset), each with whether a `MUTUAL` one does.
pub fn names_of(dr: &DestinationRule) -> BTreeMap<String, bool> {
    let spec = &dr.spec;
    let policies = spec.traffic_policy.iter().chain(
        spec.subsets
            .iter()
            .filter_map(|s| s.traffic_policy.as_ref()),
    );
    let mut names = BTreeMap::new();
    for tls in policies.flat_map(tls_of) {
        let mutual = match tls.mode {
            Some(ClientTlsMode::Simple) => false,
            Some(ClientTlsMode::Mutual) => true,
            _ => continue,
        };
        if !tls.credential_name.is_empty() {
            *names.entry(tls.credential_name.clone()).or_default() |= mutual;
        }
    }
    names
}

fn tls_of(policy: &TrafficPolicy) -> impl Iterator<Item = &ClientTlsSettings> {
    policy.tls.iter().chain(
        policy
            .port_level_settings
            .iter()
            .filter_map(|p| p.tls.as_ref()),
    )
}

/// Whether the Secret `name` is the CA companion of one of `named`.
pub fn is_companion_of(name: &str, named: impl Fn(&str) -> bool) -> bool {
    name.strip_suffix(CA_SECRET_SUFFIX).is_some_and(named)
}

/// Whether the Secret `name` is one of `named` or its CA companion.
pub fn is_named(name: &str, named: impl Fn(&str) -> bool) -> bool {
    named(name) || is_companion_of(name, named)
}

/// The Secret as sent: its CA and revocation lists, and its certificate
/// and key only `with_key`.
pub fn resource(secret: &Secret, with_key: bool) -> Credential {
    let bytes = |v: &Option<Arc<[u8]>>| v.as_deref().map(<[u8]>::to_vec).unwrap_or_default();
    let keyed = |v: &Option<Arc<[u8]>>| if with_key { bytes(v) } else { Vec::new() };
    let c = &secret.credential;
    Credential {
        name: secret.name.to_string(),
        namespace: secret.namespace.to_string(),
        certificate_chain: keyed(&c.certificate_chain),
        private_key: keyed(&c.private_key),
        ca_certificates: bytes(&c.ca_certificates),
        ca_crl: bytes(&c.ca_crl),
    }
}
