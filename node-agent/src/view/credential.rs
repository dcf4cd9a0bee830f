//! Secrets that DestinationRules' `tls.credentialName` name, as the waypoints
//! receive them. Istio's rule holds: a proxy's credentials are Secrets of its
//! own namespace, so a Secret goes to its namespace's waypoints alone
//! ([`crate::view::Audience`]). Only Secrets some rule names (or their
//! `<name>-cacert` companions) are published, and only in namespaces that ask
//! for a waypoint: the agent passes on no other Secret.

use std::collections::BTreeSet;

use warren_api::config::Credential;

use crate::model::{
    cluster::{CA_SECRET_SUFFIX, Secret},
    istio::{ClientTlsSettings, DestinationRule, TrafficPolicy},
};

/// The `credentialName`s `dr` names, at any level (policy, port, subset).
pub fn names_of(dr: &DestinationRule) -> BTreeSet<String> {
    let spec = &dr.spec;
    let policies = spec.traffic_policy.iter().chain(
        spec.subsets
            .iter()
            .filter_map(|s| s.traffic_policy.as_ref()),
    );
    policies
        .flat_map(tls_of)
        .map(|tls| tls.credential_name.clone())
        .filter(|name| !name.is_empty())
        .collect()
}

fn tls_of(policy: &TrafficPolicy) -> impl Iterator<Item = &ClientTlsSettings> {
    policy.tls.iter().chain(
        policy
            .port_level_settings
            .iter()
            .filter_map(|p| p.tls.as_ref()),
    )
}

/// Whether the Secret `name` is one of `named` or its CA companion.
pub fn is_named(name: &str, named: impl Fn(&str) -> bool) -> bool {
    named(name) || name.strip_suffix(CA_SECRET_SUFFIX).is_some_and(named)
}

pub fn resource(secret: &Secret) -> Credential {
    let bytes = |v: &Option<std::sync::Arc<[u8]>>| v.as_deref().map(<[u8]>::to_vec);
    let c = &secret.credential;
    Credential {
        name: secret.name.to_string(),
        namespace: secret.namespace.to_string(),
        certificate_chain: bytes(&c.certificate_chain).unwrap_or_default(),
        private_key: bytes(&c.private_key).unwrap_or_default(),
        ca_certificates: bytes(&c.ca_certificates).unwrap_or_default(),
        ca_crl: bytes(&c.ca_crl).unwrap_or_default(),
    }
}
