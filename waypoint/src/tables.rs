//! The waypoint's L7 configuration: the VirtualServices, DestinationRules and
//! attached AuthorizationPolicies the agent sent, compiled into a
//! [`RouteTable`], [`Policies`] and an [`Authorizer`], rebuilt
//! whole when either changes (there are few per namespace; a rebuild takes
//! microseconds and readers never wait for it: they hold the previous
//! [`Compiled`] until they are done).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, RwLock},
};

use tracing::warn;
use warren_api::config::{DestinationRule, L7Authorization, VirtualService};
use warren_model::istio::{AuthorizationPolicySpec, DestinationRuleSpec, VirtualServiceSpec};

use crate::{
    authz::{Authorizer, PolicyInput},
    route::{ExportTo, RouteTable, VsInput, tcp::TcpTable},
    upstream::{DrInput, Policies},
};

/// One generation of compiled routing.
#[derive(Default)]
pub struct Compiled {
    pub routes: RouteTable,
    /// `tcp` rules, for service ports whose protocol is TCP.
    pub tcp_routes: TcpTable,
    pub policies: Policies,
    pub authz: Authorizer,
    /// Bumped on every rebuild: upstream clusters built from an older
    /// generation are rebuilt.
    pub generation: u64,
}

#[derive(Default)]
pub struct Tables {
    virtual_services: RwLock<BTreeMap<String, VsInput>>,
    destination_rules: RwLock<BTreeMap<String, DrInput>>,
    authorizations: RwLock<BTreeMap<String, PolicyInput>>,
    compiled: RwLock<Arc<Compiled>>,
}

impl Tables {
    pub fn current(&self) -> Arc<Compiled> {
        Arc::clone(&self.compiled.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Checks a VirtualService resource; the error names what is wrong.
    pub fn parse_virtual_service(vs: &VirtualService) -> Result<VsInput, String> {
        let spec: VirtualServiceSpec =
            serde_json::from_str(&vs.spec_json).map_err(|e| format!("spec_json: {e}"))?;
        Ok(VsInput {
            namespace: vs.namespace.clone(),
            name: vs.name.clone(),
            created: vs.created,
            hosts: vs.hosts.clone(),
            spec,
        })
    }

    pub fn parse_destination_rule(dr: &DestinationRule) -> Result<DrInput, String> {
        let spec: DestinationRuleSpec =
            serde_json::from_str(&dr.spec_json).map_err(|e| format!("spec_json: {e}"))?;
        Ok(DrInput {
            namespace: dr.namespace.clone(),
            name: dr.name.clone(),
            created: dr.created,
            host: dr.host.clone(),
            spec,
        })
    }

    /// Checks an attached AuthorizationPolicy resource, for the waypoint of
    /// Gateway `gateway` (any, when not known) in `namespace`.
    pub fn parse_authorization(
        policy: &L7Authorization,
        namespace: &str,
        gateway: Option<&str>,
    ) -> Result<PolicyInput, String> {
        let spec: AuthorizationPolicySpec =
            serde_json::from_str(&policy.spec_json).map_err(|e| format!("spec_json: {e}"))?;
        Ok(PolicyInput {
            namespace: policy.namespace.clone(),
            name: policy.name.clone(),
            // Attached to this waypoint, not another one (of this namespace
            // or of another, which the agent sends for their Services). An
            // agent older than `gateways` sets only `waypoint`: bound then,
            // as it was (more policy, never less).
            waypoint: policy.namespace == namespace
                && (policy
                    .gateways
                    .iter()
                    .any(|g| gateway.is_none_or(|me| g == me))
                    || (policy.gateways.is_empty() && policy.waypoint)),
            services: policy.services.clone(),
            spec,
        })
    }

    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = read(&self.virtual_services).keys().cloned().collect();
        keys.extend(read(&self.destination_rules).keys().cloned());
        keys.extend(read(&self.authorizations).keys().cloned());
        keys
    }

    pub fn upsert_virtual_service(&self, key: String, vs: VsInput) {
        write(&self.virtual_services).insert(key, vs);
    }

    pub fn upsert_destination_rule(&self, key: String, dr: DrInput) {
        write(&self.destination_rules).insert(key, dr);
    }

    pub fn upsert_authorization(&self, key: String, policy: PolicyInput) {
        write(&self.authorizations).insert(key, policy);
    }

    /// Forgets `key`; false if it was not an L7 resource.
    pub fn remove(&self, key: &str) -> bool {
        write(&self.virtual_services).remove(key).is_some()
            || write(&self.destination_rules).remove(key).is_some()
            || write(&self.authorizations).remove(key).is_some()
    }

    /// Compiles what is held and makes it current. Errors were checked when
    /// each resource came in, except those between objects (two
    /// VirtualServices claiming a host), which are logged here.
    pub fn rebuild(&self, waypoint_namespace: &str, root_namespace: &str) {
        // Oldest first, then by namespace and name (Istio's precedence).
        let mut virtual_services: Vec<VsInput> =
            read(&self.virtual_services).values().cloned().collect();
        virtual_services.sort_by(|a, b| {
            (a.created, &a.namespace, &a.name).cmp(&(b.created, &b.namespace, &b.name))
        });
        let (routes, route_errors) = RouteTable::build(virtual_services.iter().cloned());
        let (tcp_routes, tcp_errors) = TcpTable::build(virtual_services);
        let (policies, policy_errors) = Policies::build(visible_destination_rules(
            read(&self.destination_rules).values(),
            waypoint_namespace,
            root_namespace,
        ));
        for error in route_errors.iter().chain(&tcp_errors) {
            warn!(%error, "VirtualService not (fully) applied");
        }
        for error in &policy_errors {
            warn!(%error, "DestinationRule not (fully) applied");
        }
        let authz = Authorizer::build(read(&self.authorizations).values().cloned());
        let mut compiled = write(&self.compiled);
        let generation = compiled.generation + 1;
        *compiled = Arc::new(Compiled {
            routes,
            tcp_routes,
            policies,
            authz,
            generation,
        });
    }
}

/// The DestinationRules this waypoint applies, as Istio looks them up for a
/// proxy: for each host, those of the waypoint's own namespace; else those
/// of the host's namespace exported to it; else those of the root namespace
/// exported to it. A rule of any other namespace does not apply, so one
/// namespace cannot set another's subsets, pools or ejections.
fn visible_destination_rules<'a>(
    all: impl Iterator<Item = &'a DrInput>,
    waypoint: &str,
    root: &str,
) -> Vec<DrInput> {
    let rank = |dr: &DrInput| {
        let exported = ExportTo::new(&dr.spec.export_to).reaches(&dr.namespace, waypoint);
        if dr.namespace == waypoint {
            Some(0)
        } else if exported && host_namespace(&dr.host) == Some(dr.namespace.as_str()) {
            Some(1)
        } else if exported && !root.is_empty() && dr.namespace == root {
            Some(2)
        } else {
            None
        }
    };
    let ranked: Vec<(u8, &DrInput)> = all.filter_map(|dr| Some((rank(dr)?, dr))).collect();
    let mut best: HashMap<String, u8> = HashMap::new();
    for (rank, dr) in &ranked {
        let entry = best.entry(dr.host.to_ascii_lowercase()).or_insert(*rank);
        *entry = (*entry).min(*rank);
    }
    let mut visible: Vec<DrInput> = ranked
        .into_iter()
        .filter(|(rank, dr)| best.get(&dr.host.to_ascii_lowercase()) == Some(rank))
        .map(|(_, dr)| dr.clone())
        .collect();
    // Oldest first, then by namespace and name: the order Istio merges in.
    visible.sort_by(|a, b| {
        (a.created, &a.namespace, &a.name).cmp(&(b.created, &b.namespace, &b.name))
    });
    visible
}

/// The namespace of a Service host (`name.ns.svc.<domain>`, or
/// `*.ns.svc.<domain>`); `None` for other hosts.
fn host_namespace(host: &str) -> Option<&str> {
    let mut labels = host.split('.');
    let _name = labels.next()?;
    let namespace = labels.next()?;
    (labels.next() == Some("svc")).then_some(namespace)
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use warren_api::config::L7Authorization;

    use super::{DrInput, Tables, visible_destination_rules};

    fn dr(namespace: &str, host: &str, export_to: &[&str]) -> DrInput {
        DrInput {
            namespace: namespace.into(),
            name: format!("{namespace}-{host}"),
            created: 0,
            host: host.into(),
            spec: serde_json::from_value(serde_json::json!({
                "host": host,
                "exportTo": export_to,
            }))
            .expect("a valid spec"),
        }
    }

    #[test]
    fn destination_rules_apply_from_the_waypoints_the_hosts_or_the_root_namespace() {
        let all = [
            dr("evil", "payments.prod.svc.cluster.local", &[]),
            dr("prod", "payments.prod.svc.cluster.local", &[]),
            dr("shop", "ratings.shop.svc.cluster.local", &["."]),
            dr("shop", "reviews.shop.svc.cluster.local", &[]),
            dr("istio-system", "reviews.shop.svc.cluster.local", &[]),
            dr("istio-system", "*", &[]),
        ];
        let mut seen: Vec<String> = visible_destination_rules(all.iter(), "prod", "istio-system")
            .into_iter()
            .map(|d| d.name)
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            [
                // The root's mesh-wide default.
                "istio-system-*",
                // The waypoint's own, not another namespace's.
                "prod-payments.prod.svc.cluster.local",
                // The host's namespace's, exported; before the root's.
                "shop-reviews.shop.svc.cluster.local",
            ]
        );
    }

    #[test]
    fn destination_rules_for_a_host_merge_oldest_first() {
        let mut newer = dr("prod", "db.prod.svc.cluster.local", &[]);
        newer.name = "a-newer".into();
        newer.created = 20;
        let mut older = dr("prod", "db.prod.svc.cluster.local", &[]);
        older.name = "z-older".into();
        older.created = 10;
        let order: Vec<String> = visible_destination_rules([newer, older].iter(), "prod", "")
            .into_iter()
            .map(|d| d.name)
            .collect();
        assert_eq!(order, ["z-older", "a-newer"]);
    }

    #[test]
    fn a_policy_binds_only_the_waypoint_of_the_gateway_it_names() {
        let mut policy = L7Authorization {
            name: "deny".into(),
            namespace: "demo".into(),
            waypoint: true,
            gateways: vec!["special".into()],
            services: vec!["app".into()],
            spec_json: r#"{"action":"DENY"}"#.into(),
        };
        let bound = |namespace: &str, gateway: Option<&str>| {
            Tables::parse_authorization(&policy, namespace, gateway)
                .map(|p| (p.waypoint, p.services))
        };
        let app = vec!["app".to_owned()];
        assert_eq!(bound("demo", Some("special")), Ok((true, app.clone())));
        // The namespace's other waypoint, and a waypoint elsewhere that may
        // serve demo's Services: only the Service attachment holds.
        assert_eq!(bound("demo", Some("waypoint")), Ok((false, app.clone())));
        assert_eq!(bound("infra", Some("special")), Ok((false, app.clone())));
        // A waypoint not told its Gateway errs on the side of more policy.
        assert_eq!(bound("demo", None), Ok((true, app.clone())));
        // From an agent older than `gateways`: bound, as before.
        policy.gateways.clear();
        let bound = |namespace: &str, gateway: Option<&str>| {
            Tables::parse_authorization(&policy, namespace, gateway).map(|p| p.waypoint)
        };
        assert_eq!(bound("demo", Some("waypoint")), Ok(true));
        assert_eq!(bound("infra", Some("waypoint")), Ok(false));
    }
}
