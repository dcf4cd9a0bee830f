//! Turns the agent's config stream into state: each resource is validated on its own; a
//! bad one is refused with a reason (the agent sees a NACK naming it) and its last good
//! copy stays in force; the others are applied.

use std::sync::Arc;

use tracing::{debug, warn};
use warren_api::{
    config::{Update, resource::Kind},
    subscribe::{Handler, Refused},
};

use crate::{
    state::{Authorization, Mesh, Resource, ResourceError, Service, State, Workload},
    tls::{TrustBundle, WorkloadCertificate},
};

/// The [`Handler`] ztunnel gives the [`warren_api::subscribe::Subscriber`].
pub struct Subscription {
    state: Arc<State>,
}

impl Subscription {
    pub fn new(state: Arc<State>) -> Self {
        Subscription { state }
    }

    pub fn state(&self) -> &Arc<State> {
        &self.state
    }
}

/// Resources are applied in this order so that references (a workload's policies) point
/// at what the same update brings.
fn rank(resource: &Resource) -> u8 {
    match resource {
        Resource::Mesh(_) => 0,
        Resource::TrustBundle(_) => 1,
        Resource::Certificate(_) => 2,
        Resource::Authorization(_) => 3,
        Resource::Workload(_) => 4,
        Resource::Service(_) => 5,
    }
}

fn parse(key: &str, kind: Kind, trust_domain: &str) -> Result<Resource, String> {
    let wrap = |e: ResourceError| format!("{}: {}", e.field, e.reason);
    match kind {
        Kind::Mesh(m) => Mesh::from_proto(&m).map(Resource::Mesh).map_err(wrap),
        Kind::TrustBundle(b) => TrustBundle::from_proto(&b)
            .map(|b| Resource::TrustBundle(Arc::new(b)))
            .map_err(|e| format!("trust bundle: {e}")),
        Kind::Certificate(c) => {
            let cert =
                WorkloadCertificate::from_proto(&c).map_err(|e| format!("certificate: {e}"))?;
            let expected = warren_api::key::certificate(&cert.identity);
            if key != expected {
                return Err(format!(
                    "the key of the certificate of {} must be {expected}",
                    cert.identity
                ));
            }
            Ok(Resource::Certificate(Arc::new(cert)))
        }
        Kind::Authorization(a) => Authorization::from_proto(key, a)
            .map(|a| Resource::Authorization(Arc::new(a)))
            .map_err(wrap),
        Kind::Workload(w) => Workload::from_proto(key, w, trust_domain)
            .map(|w| Resource::Workload(Arc::new(w)))
            .map_err(wrap),
        Kind::Service(s) => Service::from_proto(key, s)
            .map(|s| Resource::Service(Arc::new(s)))
            .map_err(wrap),
        Kind::VirtualService(_) | Kind::DestinationRule(_) => {
            Err("L7 routing is the waypoint's; ztunnel does not take it".to_owned())
        }
        Kind::L7Authorization(_) | Kind::L7Authentication(_) => Err(
            "a policy attached by targetRef is the waypoint's to enforce; ztunnel does not take it"
                .to_owned(),
        ),
        Kind::ExtensionProvider(_) => {
            Err("extension providers are used by waypoints; ztunnel does not take them".to_owned())
        }
        Kind::Telemetry(_) | Kind::TelemetryDefaults(_) => Err(
            "the Telemetry API shapes waypoints' telemetry; ztunnel does not take it".to_owned(),
        ),
        Kind::Credential(_) => Err(
            "a Secret named by credentialName is for waypoints' TLS origination; ztunnel does not take it"
                .to_owned(),
        ),
        Kind::BackendTls(_) => Err(
            "a BackendTLSPolicy is for waypoints' TLS origination; ztunnel does not take it"
                .to_owned(),
        ),
    }
}

impl Handler for Subscription {
    fn apply(&mut self, update: Update) -> Vec<Refused> {
        let mut refused = Vec::new();
        let mut dangling = Vec::new();
        // The trust domain workloads' identities default to: this update's, else the
        // one in force.
        let trust_domain = update
            .upserts
            .iter()
            .find_map(|r| match &r.kind {
                Some(Kind::Mesh(m)) if !m.trust_domain.is_empty() => Some(m.trust_domain.clone()),
                _ => None,
            })
            .unwrap_or_else(|| self.state.mesh().trust_domain);
        let mut parsed = Vec::with_capacity(update.upserts.len());
        let mut mentioned = std::collections::HashSet::new();
        for resource in update.upserts {
            mentioned.insert(resource.key.clone());
            let result = match resource.kind {
                Some(kind) => parse(&resource.key, kind, &trust_domain),
                // prost leaves a oneof variant it does not know empty: a
                // newer agent's kind, which this build cannot enforce. Refused,
                // so the agent hears of it (its status lists the NACK).
                None => Err(
                    "a kind of resource this build does not know (a newer node agent's? roll ztunnel and the waypoints out with it): not applied"
                        .to_owned(),
                ),
            };
            match result {
                Ok(r) => parsed.push((resource.key, r)),
                Err(reason) => refused.push(Refused {
                    key: resource.key,
                    reason,
                }),
            }
        }
        parsed.sort_by_key(|(_, r)| rank(r));

        self.state.update(|inner| {
            if update.snapshot {
                // A snapshot replaces everything, except that a refused resource keeps its
                // last good copy.
                for key in inner.keys() {
                    if !mentioned.contains(&key) {
                        inner.remove(&key);
                    }
                }
            }
            for key in &update.removals {
                inner.remove(key);
            }
            for (key, resource) in parsed {
                // A workload naming a policy ztunnel does not hold (refused, or not sent)
                // is taken all the same: keeping its last copy would drop whatever policy
                // was just added to it, a DENY among them, while `authorize` refuses every
                // connection to a workload whose policy is missing. Still NACKed.
                if let Err(reason) = inner.check_references(&resource) {
                    dangling.push(Refused {
                        key: key.clone(),
                        reason: format!(
                            "{reason} (taken: connections to it are refused until the policy arrives)"
                        ),
                    });
                }
                inner.upsert(key, resource);
            }
            inner.version = update.version;
            inner.synced |= update.snapshot;
        });
        for r in &refused {
            warn!(key = %r.key, reason = %r.reason, version = update.version, "config resource refused; keeping its last good copy");
        }
        for r in &dangling {
            warn!(key = %r.key, reason = %r.reason, version = update.version, "workload names a policy ztunnel does not hold; denying its connections");
        }
        refused.extend(dangling);
        debug!(
            version = update.version,
            snapshot = update.snapshot,
            refused = refused.len(),
            "config update applied"
        );
        refused
    }
}
