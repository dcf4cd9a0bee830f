//! Which DestinationRules apply to a host, as istiod picks them for one
//! proxy (`PushContext::destinationRule`, `SidecarScope::DestinationRule`).
//!
//! Three tiers, the first with a rule for the host deciding alone:
//!
//! 1. the proxy's own namespace, whatever the rules' `exportTo`;
//! 2. the service's namespace, rules exported to the proxy's;
//! 3. the root namespace, rules exported to the proxy's.
//!
//! Rules of any other namespace never apply, so one namespace cannot set
//! another's subsets, pools or ejections. Within a tier the most specific
//! host wins (exact, then the longest wildcard), and a wildcard rule in the
//! proxy's namespace beats an exact one elsewhere, as in Istio.
//!
//! Rules for the same host merge oldest first, but only with rules of the
//! same `workloadSelector`: a rule with a selector is its own group, applied
//! instead of the others when it selects the proxy (the first such group
//! wins); otherwise the rules without a selector apply. A selector is only
//! honoured in the rules' own namespace (Istio refuses exporting such a rule
//! elsewhere), so other tiers hold no selector groups.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use super::selects;

/// The proxy the rules are looked up for.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    /// The waypoint's namespace.
    pub namespace: String,
    /// Istio's root namespace (`istio-system` by default); empty: none.
    pub root: String,
    /// The waypoint's own labels, which `workloadSelector`s are matched
    /// against.
    pub labels: BTreeMap<String, String>,
}

impl Scope {
    /// The labels a waypoint of Gateway `gateway` carries (Istio's waypoint
    /// Deployment labels its pods with the Gateway's name).
    pub fn waypoint_labels(gateway: Option<&str>) -> BTreeMap<String, String> {
        gateway
            .map(|name| {
                BTreeMap::from([(
                    "gateway.networking.k8s.io/gateway-name".to_owned(),
                    name.to_owned(),
                )])
            })
            .unwrap_or_default()
    }
}

/// Where a new rule went.
pub enum Placed<'a, R> {
    /// First of its host and selector: stored.
    New,
    /// Same host and selector as an older rule: merge it into that one.
    Merge { older: &'a mut R, later: R },
    /// Not visible to this proxy: dropped.
    Invisible,
}

/// Rules by tier, then host, then selector group.
#[derive(Debug)]
pub struct Lookup<R> {
    scope: Scope,
    local: Hosts<R>,
    /// Other namespaces' rules exported to the proxy's, by namespace.
    exported: HashMap<String, Hosts<R>>,
}

impl<R> Default for Lookup<R> {
    fn default() -> Self {
        Self {
            scope: Scope::default(),
            local: Hosts::default(),
            exported: HashMap::new(),
        }
    }
}

impl<R> Lookup<R> {
    pub fn new(scope: Scope) -> Self {
        Self {
            scope,
            local: Hosts::default(),
            exported: HashMap::new(),
        }
    }

    /// Files a rule; rules come oldest first. `exported`: its `exportTo`
    /// reaches the proxy's namespace.
    pub fn insert(
        &mut self,
        namespace: &str,
        host: &str,
        selector: Option<&BTreeMap<String, String>>,
        exported: bool,
        rule: R,
    ) -> Placed<'_, R> {
        let hosts = if namespace == self.scope.namespace {
            &mut self.local
        } else if exported && selector.is_none() {
            self.exported.entry(namespace.to_owned()).or_default()
        } else {
            return Placed::Invisible;
        };
        hosts.insert(host, selector, rule)
    }

    /// The merged rules that apply to `host`, a service of `namespace`.
    pub fn get(&self, host: &str, namespace: &str) -> Option<&R> {
        // Host names compare without case; avoid the copy when already lower.
        let host: Cow<'_, str> = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(host.to_ascii_lowercase())
        } else {
            Cow::Borrowed(host)
        };
        let tiers = [
            Some(&self.local),
            self.exported.get(namespace),
            self.exported.get(&self.scope.root),
        ];
        let groups = tiers
            .into_iter()
            .flatten()
            .find_map(|hosts| hosts.most_specific(&host))?;
        groups
            .iter()
            .find(|g| {
                g.selector
                    .as_ref()
                    .is_some_and(|s| selects(s, &self.scope.labels))
            })
            .or_else(|| groups.iter().find(|g| g.selector.is_none()))
            .map(|g| &g.rule)
    }
}

/// One tier's rules by host.
#[derive(Debug)]
struct Hosts<R> {
    exact: HashMap<String, Vec<Group<R>>>,
    /// `(suffix, groups)`, longest suffix first; `*.a.b` is stored as
    /// `.a.b`, `*` as the empty suffix.
    wildcards: Vec<(String, Vec<Group<R>>)>,
}

impl<R> Default for Hosts<R> {
    fn default() -> Self {
        Self {
            exact: HashMap::new(),
            wildcards: Vec::new(),
        }
    }
}

/// Rules of one host with the same selector, merged.
#[derive(Debug)]
struct Group<R> {
    selector: Option<BTreeMap<String, String>>,
    rule: R,
}

impl<R> Hosts<R> {
    fn insert(
        &mut self,
        host: &str,
        selector: Option<&BTreeMap<String, String>>,
        rule: R,
    ) -> Placed<'_, R> {
        let host = host.to_ascii_lowercase();
        let groups = match host.strip_prefix('*') {
            Some(suffix) => match self.wildcards.iter().position(|(s, _)| s == suffix) {
                Some(i) => &mut self.wildcards[i].1,
                None => {
                    // Longest first; among equals the older stays first.
                    let at = self
                        .wildcards
                        .iter()
                        .position(|(s, _)| s.len() < suffix.len())
                        .unwrap_or(self.wildcards.len());
                    self.wildcards.insert(at, (suffix.to_owned(), Vec::new()));
                    &mut self.wildcards[at].1
                }
            },
            None => self.exact.entry(host).or_default(),
        };
        match groups.iter().position(|g| g.selector.as_ref() == selector) {
            Some(i) => Placed::Merge {
                older: &mut groups[i].rule,
                later: rule,
            },
            None => {
                groups.push(Group {
                    selector: selector.cloned(),
                    rule,
                });
                Placed::New
            }
        }
    }

    fn most_specific(&self, host: &str) -> Option<&[Group<R>]> {
        if let Some(groups) = self.exact.get(host) {
            return Some(groups);
        }
        self.wildcards
            .iter()
            // `*.a.b` needs at least one label before `.a.b`.
            .find(|(suffix, _)| host.len() > suffix.len() && host.ends_with(suffix.as_str()))
            .map(|(_, groups)| groups.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::{Lookup, Placed, Scope};

    type Labels<'a> = &'a [(&'a str, &'a str)];

    /// `(namespace, host, selector, exported)`, oldest first. Rules are
    /// names; merging appends.
    fn lookup(rules: &[(&str, &str, Option<Labels<'_>>, bool)]) -> Lookup<String> {
        let mut lookup = Lookup::new(Scope {
            namespace: "prod".into(),
            root: "istio-system".into(),
            labels: Scope::waypoint_labels(Some("waypoint")),
        });
        for (i, (namespace, host, selector, exported)) in rules.iter().enumerate() {
            let selector: Option<BTreeMap<String, String>> = selector.map(|labels| {
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect()
            });
            let name = format!("{namespace}/{i}");
            match lookup.insert(namespace, host, selector.as_ref(), *exported, name.clone()) {
                Placed::Merge { older, later } => *older = format!("{older}+{later}"),
                Placed::New | Placed::Invisible => {}
            }
        }
        lookup
    }

    const PAYMENTS: &str = "payments.shop.svc.cluster.local";

    #[test]
    fn the_proxys_namespace_then_the_services_then_the_roots() {
        let rules = lookup(&[
            ("istio-system", "*", None, true),
            ("shop", PAYMENTS, None, true),
            ("evil", PAYMENTS, None, true),
        ]);
        assert_eq!(
            rules.get(PAYMENTS, "shop").map(String::as_str),
            Some("shop/1")
        );
        // Another namespace's service: only the root's default reaches it;
        // `evil` is neither the proxy's nor the service's namespace.
        assert_eq!(
            rules
                .get("db.evil.svc.cluster.local", "evil")
                .map(String::as_str),
            Some("istio-system/0")
        );
        // The proxy's own namespace wins, even with a wildcard against the
        // service namespace's exact host.
        let rules = lookup(&[
            ("shop", PAYMENTS, None, true),
            ("prod", "*.svc.cluster.local", None, false),
        ]);
        assert_eq!(
            rules.get(PAYMENTS, "shop").map(String::as_str),
            Some("prod/1")
        );
    }

    #[test]
    fn a_rule_not_exported_to_the_proxy_does_not_apply_elsewhere() {
        let rules = lookup(&[("shop", PAYMENTS, None, false)]);
        assert_eq!(rules.get(PAYMENTS, "shop"), None);
        // In its own namespace, exportTo does not matter (Istio indexes every
        // rule in its own namespace).
        let rules = lookup(&[("prod", "db.prod.svc.cluster.local", None, false)]);
        assert!(rules.get("db.prod.svc.cluster.local", "prod").is_some());
    }

    #[test]
    fn the_most_specific_host_of_the_first_tier_that_has_one_decides() {
        let rules = lookup(&[
            ("shop", "*.shop.svc.cluster.local", None, true),
            ("shop", "*", None, true),
            ("shop", PAYMENTS, None, true),
        ]);
        assert_eq!(
            rules.get(PAYMENTS, "shop").map(String::as_str),
            Some("shop/2")
        );
        assert_eq!(
            rules
                .get("cart.shop.svc.cluster.local", "shop")
                .map(String::as_str),
            Some("shop/0")
        );
        assert_eq!(
            rules.get("example.com", "shop").map(String::as_str),
            Some("shop/1")
        );
    }

    #[test]
    fn a_workload_selector_picks_its_group_instead_of_the_catch_all() {
        const DB: &str = "db.prod.svc.cluster.local";
        let me: Labels<'_> = &[("gateway.networking.k8s.io/gateway-name", "waypoint")];
        let other: Labels<'_> = &[("app", "sidecar")];
        // Same selector merges; a selector for someone else is ignored.
        let rules = lookup(&[
            ("prod", DB, None, true),
            ("prod", DB, Some(other), true),
            ("prod", DB, Some(me), true),
            ("prod", DB, None, true),
            ("prod", DB, Some(me), true),
        ]);
        assert_eq!(
            rules.get(DB, "prod").map(String::as_str),
            Some("prod/2+prod/4")
        );
        // Not selected: the rules without a selector, merged.
        let rules = lookup(&[
            ("prod", DB, None, true),
            ("prod", DB, Some(other), true),
            ("prod", DB, None, true),
        ]);
        assert_eq!(
            rules.get(DB, "prod").map(String::as_str),
            Some("prod/0+prod/2")
        );
        // Only selector rules for the host, none selecting the waypoint:
        // nothing applies, and less specific hosts are not consulted.
        let rules = lookup(&[("prod", "*", None, true), ("prod", DB, Some(other), true)]);
        assert_eq!(rules.get(DB, "prod"), None);
        // A selector rule of another namespace never applies.
        let rules = lookup(&[("shop", PAYMENTS, Some(me), true)]);
        assert_eq!(rules.get(PAYMENTS, "shop"), None);
    }
}
