//! Which DestinationRules apply to a host, as istiod picks them for one
//! proxy (`PushContext::destinationRule`, `SidecarScope::DestinationRule`).
//!
//! Three tiers, the first with a rule for the host deciding alone:
//!
//! 1. the proxy's own namespace: its rules visible there (`exportTo` empty,
//!    `*`, `.` or naming it); for a proxy in the root namespace only those
//!    private to it, so that the root's mesh-wide defaults do not hide the
//!    service's own rules;
//! 2. the service's namespace: the most specific of the rules it exports
//!    (not private), if that one is exported to the proxy's namespace;
//! 3. the root namespace, likewise.
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
//! elsewhere), so other tiers hold no selector groups. (Istio's enhanced
//! merge also folds a rule without a selector into a selector group when
//! their `exportTo` sets are equal; not done here.)

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use super::selects;
use crate::route::ExportTo;

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
                    warren_model::gateway::GATEWAY_NAME_LABEL.to_owned(),
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

    /// Files a rule; rules come oldest first.
    pub fn insert(
        &mut self,
        namespace: &str,
        host: &str,
        selector: Option<&BTreeMap<String, String>>,
        export_to: &ExportTo,
        rule: R,
    ) -> Placed<'_, R> {
        let mine = namespace == self.scope.namespace;
        let private = export_to.private(namespace);
        if mine
            && (private
                || (namespace != self.scope.root && export_to.reaches(namespace, namespace)))
        {
            return self.local.insert(host, selector, true, rule);
        }
        if private || selector.is_some() {
            return Placed::Invisible;
        }
        let reaches = export_to.reaches(namespace, &self.scope.namespace);
        self.exported
            .entry(namespace.to_owned())
            .or_default()
            .insert(host, None, reaches, rule)
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
        // The most specific host first; then, if its rules are not exported
        // to the proxy's namespace, the next tier.
        let groups = tiers
            .into_iter()
            .flatten()
            .filter_map(|hosts| hosts.most_specific(&host))
            .find(|groups| groups.iter().any(|g| g.reaches))?;
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
    /// Some of them are exported to the proxy's namespace (Istio merges
    /// their `exportTo` sets).
    reaches: bool,
    rule: R,
}

impl<R> Hosts<R> {
    fn insert(
        &mut self,
        host: &str,
        selector: Option<&BTreeMap<String, String>>,
        reaches: bool,
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
            Some(i) => {
                let group = &mut groups[i];
                group.reaches |= reaches;
                Placed::Merge {
                    older: &mut group.rule,
                    later: rule,
                }
            }
            None => {
                groups.push(Group {
                    selector: selector.cloned(),
                    reaches,
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
    use crate::route::ExportTo;

    type Labels<'a> = &'a [(&'a str, &'a str)];

    /// `(namespace, host, selector, exportTo)`, oldest first, for a
    /// waypoint in `waypoint`. Rules are names; merging appends.
    fn lookup_in(
        waypoint: &str,
        rules: &[(&str, &str, Option<Labels<'_>>, &[&str])],
    ) -> Lookup<String> {
        let mut lookup = Lookup::new(Scope {
            namespace: waypoint.into(),
            root: "istio-system".into(),
            labels: Scope::waypoint_labels(Some("waypoint")),
        });
        for (i, (namespace, host, selector, export_to)) in rules.iter().enumerate() {
            let selector: Option<BTreeMap<String, String>> = selector.map(|labels| {
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect()
            });
            let export_to: Vec<String> = export_to.iter().map(|e| (*e).to_owned()).collect();
            let name = format!("{namespace}/{i}");
            let placed = lookup.insert(
                namespace,
                host,
                selector.as_ref(),
                &ExportTo::new(&export_to),
                name.clone(),
            );
            match placed {
                Placed::Merge { older, later } => *older = format!("{older}+{later}"),
                Placed::New | Placed::Invisible => {}
            }
        }
        lookup
    }

    fn lookup(rules: &[(&str, &str, Option<Labels<'_>>, &[&str])]) -> Lookup<String> {
        lookup_in("prod", rules)
    }

    fn get<'a>(lookup: &'a Lookup<String>, host: &str, namespace: &str) -> Option<&'a str> {
        lookup.get(host, namespace).map(String::as_str)
    }

    const PAYMENTS: &str = "payments.shop.svc.cluster.local";
    const ALL: &[&str] = &[];
    const PRIVATE: &[&str] = &["."];

    #[test]
    fn the_proxys_namespace_then_the_services_then_the_roots() {
        let rules = lookup(&[
            ("istio-system", "*", None, ALL),
            ("shop", PAYMENTS, None, ALL),
            ("evil", PAYMENTS, None, ALL),
        ]);
        assert_eq!(get(&rules, PAYMENTS, "shop"), Some("shop/1"));
        // Another namespace's service: only the root's default reaches it;
        // `evil` is neither the proxy's nor the service's namespace.
        assert_eq!(
            get(&rules, "db.evil.svc.cluster.local", "evil"),
            Some("istio-system/0")
        );
        // The proxy's own namespace wins, even with a wildcard against the
        // service namespace's exact host.
        let rules = lookup(&[
            ("shop", PAYMENTS, None, ALL),
            ("prod", "*.svc.cluster.local", None, PRIVATE),
        ]);
        assert_eq!(get(&rules, PAYMENTS, "shop"), Some("prod/1"));
    }

    #[test]
    fn export_to_decides_what_another_namespace_and_the_own_one_see() {
        let rules = lookup(&[("shop", PAYMENTS, None, PRIVATE)]);
        assert_eq!(get(&rules, PAYMENTS, "shop"), None);
        let rules = lookup(&[("shop", PAYMENTS, None, &["prod"])]);
        assert_eq!(get(&rules, PAYMENTS, "shop"), Some("shop/0"));
        // In its own namespace a rule applies if exported there: `.`, `*`,
        // none, or the namespace by name; not when exported elsewhere only.
        const DB: &str = "db.prod.svc.cluster.local";
        for export_to in [ALL, PRIVATE, &["*"], &["prod"]] {
            let rules = lookup(&[("prod", DB, None, export_to)]);
            assert_eq!(get(&rules, DB, "prod"), Some("prod/0"), "{export_to:?}");
        }
        let rules = lookup(&[("prod", DB, None, &["shop"])]);
        assert_eq!(get(&rules, DB, "prod"), None);
    }

    #[test]
    fn the_most_specific_host_of_the_first_tier_that_has_one_decides() {
        let rules = lookup(&[
            ("shop", "*.shop.svc.cluster.local", None, ALL),
            ("shop", "*", None, ALL),
            ("shop", PAYMENTS, None, ALL),
        ]);
        assert_eq!(get(&rules, PAYMENTS, "shop"), Some("shop/2"));
        assert_eq!(
            get(&rules, "cart.shop.svc.cluster.local", "shop"),
            Some("shop/0")
        );
        assert_eq!(get(&rules, "example.com", "shop"), Some("shop/1"));
        // The most specific exported rule is not exported to the proxy's
        // namespace: the tier gives nothing (not its wildcard), the root's
        // default applies.
        let rules = lookup(&[
            ("istio-system", "*", None, ALL),
            ("shop", "*.shop.svc.cluster.local", None, ALL),
            ("shop", PAYMENTS, None, &["web"]),
        ]);
        assert_eq!(get(&rules, PAYMENTS, "shop"), Some("istio-system/0"));
    }

    #[test]
    fn a_waypoint_in_the_root_namespace_keeps_the_roots_defaults_last() {
        let rules = lookup_in(
            "istio-system",
            &[
                ("istio-system", "*", None, ALL),
                ("shop", PAYMENTS, None, ALL),
                ("istio-system", "*.internal", None, PRIVATE),
            ],
        );
        // The service's own rule, not the root's mesh-wide `*`.
        assert_eq!(get(&rules, PAYMENTS, "shop"), Some("shop/1"));
        assert_eq!(
            get(&rules, "cart.shop.svc.cluster.local", "shop"),
            Some("istio-system/0")
        );
        // A rule private to the root namespace is the waypoint's own.
        assert_eq!(get(&rules, "db.internal", "shop"), Some("istio-system/2"));
    }

    #[test]
    fn a_workload_selector_picks_its_group_instead_of_the_catch_all() {
        const DB: &str = "db.prod.svc.cluster.local";
        let me: Labels<'_> = &[("gateway.networking.k8s.io/gateway-name", "waypoint")];
        let other: Labels<'_> = &[("app", "sidecar")];
        // Same selector merges; a selector for someone else is ignored.
        let rules = lookup(&[
            ("prod", DB, None, ALL),
            ("prod", DB, Some(other), PRIVATE),
            ("prod", DB, Some(me), PRIVATE),
            ("prod", DB, None, ALL),
            ("prod", DB, Some(me), PRIVATE),
        ]);
        assert_eq!(get(&rules, DB, "prod"), Some("prod/2+prod/4"));
        // Not selected: the rules without a selector, merged.
        let rules = lookup(&[
            ("prod", DB, None, ALL),
            ("prod", DB, Some(other), PRIVATE),
            ("prod", DB, None, ALL),
        ]);
        assert_eq!(get(&rules, DB, "prod"), Some("prod/0+prod/2"));
        // Only selector rules for the host, none selecting the waypoint:
        // nothing applies, and less specific hosts are not consulted.
        let rules = lookup(&[("prod", "*", None, ALL), ("prod", DB, Some(other), PRIVATE)]);
        assert_eq!(get(&rules, DB, "prod"), None);
        // A selector rule of another namespace never applies.
        let rules = lookup(&[("shop", PAYMENTS, Some(me), PRIVATE)]);
        assert_eq!(get(&rules, PAYMENTS, "shop"), None);
    }
}
