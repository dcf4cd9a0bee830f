//! The waypoint's side of the agent's config stream: L7 routing and attached
//! AuthorizationPolicies go to
//! [`Tables`], everything else (workloads, services, certificates, roots) to
//! the state ztunnel's own handler keeps, so both proxies read resources the
//! same way.

use std::{collections::HashSet, sync::Arc};

use warren_api::{
    config::{Update, resource::Kind},
    subscribe::{Handler, Refused},
};
use warren_ztunnel::subscription::Subscription as L4Subscription;

use crate::{tables::Tables, upstream::Scope};

pub struct Subscription {
    l4: L4Subscription,
    tables: Arc<Tables>,
    /// The namespace and Gateway (when known) this waypoint implements.
    namespace: String,
    gateway: Option<String>,
}

impl Subscription {
    pub fn new(
        l4: L4Subscription,
        tables: Arc<Tables>,
        namespace: String,
        gateway: Option<String>,
    ) -> Self {
        Subscription {
            l4,
            tables,
            namespace,
            gateway,
        }
    }
}

fn is_l7(kind: &Option<Kind>) -> bool {
    matches!(
        kind,
        Some(
            Kind::VirtualService(_)
                | Kind::DestinationRule(_)
                | Kind::L7Authorization(_)
                | Kind::L7Authentication(_)
                | Kind::ExtensionProvider(_)
                | Kind::Telemetry(_)
                | Kind::TelemetryDefaults(_)
                | Kind::Credential(_)
                | Kind::BackendTls(_)
        )
    )
}

impl Handler for Subscription {
    fn apply(&mut self, update: Update) -> Vec<Refused> {
        let mut refused = Vec::new();
        let (l7, l4): (Vec<_>, Vec<_>) = update.upserts.into_iter().partition(|r| is_l7(&r.kind));
        let mentioned: HashSet<String> = l7.iter().map(|r| r.key.clone()).collect();
        if update.snapshot {
            for key in self.tables.keys() {
                if !mentioned.contains(&key) {
                    self.tables.remove(&key);
                }
            }
        }
        let mut l4_removals = Vec::new();
        for key in update.removals {
            if !self.tables.remove(&key) {
                l4_removals.push(key);
            }
        }
        for resource in l7 {
            let parsed = match &resource.kind {
                Some(Kind::VirtualService(vs)) => Tables::parse_virtual_service(&resource.key, vs)
                    .map(|vs| self.tables.upsert_virtual_service(resource.key.clone(), vs)),
                Some(Kind::DestinationRule(dr)) => Tables::parse_destination_rule(dr).map(|dr| {
                    self.tables
                        .upsert_destination_rule(resource.key.clone(), dr)
                }),
                // Refused (a spec this build cannot read): the last good copy
                // stays in force, as for every resource.
                Some(Kind::L7Authorization(policy)) => {
                    Tables::parse_authorization(policy, &self.namespace, self.gateway.as_deref())
                        .map(|p| self.tables.upsert_authorization(resource.key.clone(), p))
                }
                Some(Kind::L7Authentication(ra)) => {
                    Tables::parse_authentication(ra, &self.namespace, self.gateway.as_deref())
                        .map(|r| self.tables.upsert_authentication(resource.key.clone(), r))
                }
                Some(Kind::ExtensionProvider(provider)) => Tables::parse_provider(provider)
                    .map(|p| self.tables.upsert_provider(resource.key.clone(), p)),
                Some(Kind::Telemetry(telemetry)) => {
                    Tables::parse_telemetry(telemetry, &self.namespace, self.gateway.as_deref())
                        .map(|t| self.tables.upsert_telemetry(resource.key.clone(), t))
                }
                Some(Kind::Credential(credential)) => {
                    self.tables
                        .upsert_credential(resource.key.clone(), credential.clone());
                    Ok(())
                }
                Some(Kind::BackendTls(tls)) => {
                    self.tables
                        .upsert_backend_tls(resource.key.clone(), tls.clone());
                    Ok(())
                }
                Some(Kind::TelemetryDefaults(defaults)) => {
                    Tables::parse_telemetry_defaults(defaults)
                        .map(|d| self.tables.set_telemetry_defaults(d))
                }
                _ => Ok(()),
            };
            if let Err(reason) = parsed {
                refused.push(Refused {
                    key: resource.key,
                    reason,
                });
            }
        }
        refused.extend(self.l4.apply(Update {
            version: update.version,
            snapshot: update.snapshot,
            upserts: l4,
            removals: l4_removals,
            ..Update::default()
        }));
        // After the mesh settings of the same update: the root namespace
        // decides which DestinationRules apply.
        self.tables.rebuild(Scope {
            namespace: self.namespace.clone(),
            root: self.l4.state().mesh().root_namespace,
            labels: Scope::waypoint_labels(self.gateway.as_deref()),
        });
        refused
    }
}
