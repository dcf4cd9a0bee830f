//! SPIFFE identities: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`,
//! the form Istio uses, so Warren and Istio ambient nodes recognise each other.

use std::{fmt, str::FromStr};

/// The trust domain Warren uses when none is configured (Istio's default).
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Identity {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{uri:?} is not a SPIFFE workload identity: {reason}")]
pub struct IdentityError {
    pub uri: String,
    pub reason: &'static str,
}

impl Identity {
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Self {
        Identity {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        }
    }

    /// The principal as AuthorizationPolicy names it: the URI without `spiffe://`.
    pub fn principal(&self) -> String {
        format!(
            "{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

/// The mesh's trust domain and its aliases (Istio's `trustDomainAliases`:
/// domains a mesh is migrating from, or shares its root with), which its
/// proxies accept as their own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustDomains {
    pub trust_domain: String,
    pub aliases: Vec<String>,
}

impl Default for TrustDomains {
    fn default() -> Self {
        TrustDomains {
            trust_domain: DEFAULT_TRUST_DOMAIN.to_owned(),
            aliases: Vec::new(),
        }
    }
}

impl TrustDomains {
    /// Whether a peer of `trust_domain` is one of this mesh's.
    pub fn is_local(&self, trust_domain: &str) -> bool {
        self.trust_domain == trust_domain || self.aliases.iter().any(|a| a == trust_domain)
    }

    /// The principals `identity` answers to in AuthorizationPolicies, as
    /// Istio reads them: a principal naming the mesh's trust domain, one of
    /// its aliases, or `cluster.local` (which stands for the local trust
    /// domain, whatever it is, so policies written for Istio's default keep
    /// their meaning) names the same workload under each of them. Its own
    /// principal first; a peer of another trust domain has only its own.
    pub fn principals(&self, identity: &Identity) -> Vec<String> {
        let own = identity.principal();
        if !self.is_local(&identity.trust_domain) {
            return vec![own];
        }
        let rest = &own[identity.trust_domain.len()..];
        let mut forms = vec![own.clone()];
        let others = std::iter::once(self.trust_domain.as_str())
            .chain(self.aliases.iter().map(String::as_str))
            .chain(std::iter::once(DEFAULT_TRUST_DOMAIN));
        for domain in others {
            let form = format!("{domain}{rest}");
            if !forms.contains(&form) {
                forms.push(form);
            }
        }
        forms
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}", self.principal())
    }
}

/// A name segment: what Kubernetes allows in namespace and account names,
/// plus the trust domain's dots.
fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

impl FromStr for Identity {
    type Err = IdentityError;

    fn from_str(uri: &str) -> Result<Self, Self::Err> {
        let fail = |reason| IdentityError {
            uri: uri.to_owned(),
            reason,
        };
        let rest = uri
            .strip_prefix("spiffe://")
            .ok_or_else(|| fail("it does not start with spiffe://"))?;
        let mut parts = rest.split('/');
        let (Some(td), Some("ns"), Some(ns), Some("sa"), Some(sa), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(fail("the path is not /ns/<namespace>/sa/<service-account>"));
        };
        for segment in [td, ns, sa] {
            if !valid_segment(segment) {
                return Err(fail(
                    "a segment is empty or has characters other than a-z, 0-9, '-' and '.'",
                ));
            }
        }
        Ok(Identity::new(td, ns, sa))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_principals_answer_to_every_local_trust_domain_and_cluster_local() {
        let domains = TrustDomains {
            trust_domain: "corp.example".into(),
            aliases: vec!["old.example".into()],
        };
        let peer = Identity::new("old.example", "demo", "app");
        assert_eq!(
            domains.principals(&peer),
            [
                "old.example/ns/demo/sa/app",
                "corp.example/ns/demo/sa/app",
                "cluster.local/ns/demo/sa/app",
            ]
        );
        // Another mesh's peer is only itself.
        let foreign = Identity::new("cluster.local", "demo", "app");
        assert_eq!(
            domains.principals(&foreign),
            ["cluster.local/ns/demo/sa/app"]
        );
        // Istio's default: nothing to add.
        let default = TrustDomains::default();
        let peer = Identity::new("cluster.local", "demo", "app");
        assert_eq!(default.principals(&peer), ["cluster.local/ns/demo/sa/app"]);
        assert!(default.is_local("cluster.local") && !default.is_local("corp.example"));
    }

    #[test]
    fn parses_and_prints_back() {
        let uri = "spiffe://cluster.local/ns/demo/sa/app";
        let id: Identity = uri.parse().unwrap();
        assert_eq!(id, Identity::new("cluster.local", "demo", "app"));
        assert_eq!(id.to_string(), uri);
        assert_eq!(id.principal(), "cluster.local/ns/demo/sa/app");
    }

    #[test]
    fn refuses_what_is_not_a_workload_identity() {
        for (uri, why) in [
            ("https://cluster.local/ns/a/sa/b", "spiffe://"),
            ("spiffe://cluster.local/ns/a", "path"),
            ("spiffe://cluster.local/ns/a/sa/b/extra", "path"),
            ("spiffe://cluster.local/ns//sa/b", "segment"),
            ("spiffe://cluster.local/ns/A/sa/b", "segment"),
            ("spiffe://cluster.local/sa/a/ns/b", "path"),
        ] {
            let err = uri.parse::<Identity>().unwrap_err();
            assert!(err.to_string().contains(why), "{uri}: {err}");
        }
    }
}
