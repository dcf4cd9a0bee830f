//! Locality-aware load balancing, as istiod sets it up for a proxy and Envoy
//! applies it: endpoints are put in priority levels (failover) or weighted
//! locality groups (`distribute`) relative to the waypoint's own locality,
//! and each pick first chooses a group by its share of the load.
//!
//! Which mode applies (istiod's `ApplyLocalityLoadBalancer`):
//! - `distribute` with an entry whose `from` matches the waypoint's
//!   locality: one priority, a group per locality the entry's `to` names,
//!   weighted; endpoints in localities it does not name get no traffic.
//! - else, failover, only when the cluster has outlier detection (without it
//!   an endpoint never stops being healthy, so traffic would never move) or
//!   the Service asks for closeness (`trafficDistribution`, which istiod
//!   turns into a `failoverPriority` of topology labels that applies
//!   regardless), and locality balancing is not turned off (`enabled: false`;
//!   the mesh-wide default is on): priority 0 for endpoints in the
//!   waypoint's region, zone and subzone, 1 for its zone, 2 for its region, 3
//!   for other regions — or 4 for regions other than the `failover` target
//!   of the waypoint's region. With `failoverPriority`, endpoints are ordered
//!   by how many of those labels, in order, they share with the waypoint
//!   first (a label neither has counts as shared, as in istiod; node name
//!   and localities stand in for `kubernetes.io/hostname` and the topology
//!   labels).
//! - else, or while the waypoint does not know its own pod, every endpoint
//!   is in one group, as without locality.
//!
//! How a pick's load is split (Envoy's priority and locality weighting, with
//! its default overprovisioning factor of 1.4): a priority level takes
//! `min(100 %, 1.4 × its healthy share)` of what the levels above left,
//! so losing a few endpoints does not yet move traffic; if the levels'
//! availabilities sum below 100 % the loads are scaled up to fill it. Within
//! a level, a locality group's weight is scaled the same way by its healthy
//! share.
//!
//! Where Warren differs: with explicit `failover` or `failoverPriority` the
//! localities of one priority level form one group (Envoy weights them by
//! their endpoint counts, which comes to nearly the same; in the default
//! failover Istio does not weight localities at all).

use std::collections::BTreeMap;

use warren_api::{
    Locality,
    locality::{REGION_LABEL, SUBZONE_LABEL, ZONE_LABEL},
};

/// The node label istiod adds to both sides of a `failoverPriority`
/// comparison (a pod does not carry it; its node's name stands in).
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// Envoy's default overprovisioning factor, in percent.
const OVERPROVISIONING: u64 = 140;

/// `loadBalancer.localityLbSetting`, compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalityLb {
    /// `enabled` (the mesh default, `true`, when unset).
    pub enabled: bool,
    /// `distribute`: (`from` pattern, [(`to` pattern, weight)]).
    pub distribute: Vec<(String, Vec<(String, u32)>)>,
    /// `failover`: (from region, to region).
    pub failover: Vec<(String, String)>,
    /// `failoverPriority`.
    pub failover_priority: Vec<PriorityLabel>,
    /// Failover applies without outlier detection (a Service's
    /// `trafficDistribution`, as istiod forces it).
    pub forced: bool,
}

impl Default for LocalityLb {
    /// The mesh-wide default: on, failover by locality.
    fn default() -> Self {
        Self {
            enabled: true,
            distribute: Vec::new(),
            failover: Vec::new(),
            failover_priority: Vec::new(),
            forced: false,
        }
    }
}

/// One `failoverPriority` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PriorityLabel {
    /// `key`: the endpoint's value must equal the waypoint's.
    Same(String),
    /// `key=value`: the endpoint's value must be this one.
    Value(String, String),
}

impl PriorityLabel {
    pub fn parse(entry: &str) -> Self {
        match entry.split_once('=') {
            Some((key, value)) => PriorityLabel::Value(key.to_owned(), value.to_owned()),
            None => PriorityLabel::Same(entry.to_owned()),
        }
    }
}

/// Where the waypoint is: its locality, node and its pod's labels.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Proximity {
    pub locality: Locality,
    pub node: String,
    pub labels: BTreeMap<String, String>,
}

/// A set of endpoints that share a priority (and, with `distribute`, a
/// locality), with its weight within the priority.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub priority: u32,
    pub weight: u64,
    /// Positions in the endpoint list given to [`groups`].
    pub members: Vec<usize>,
}

/// An endpoint as grouping sees it.
pub struct Member<'a> {
    pub locality: &'a Locality,
    pub node: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

/// The groups of `endpoints` for a cluster with `settings` (`None`: the mesh
/// default) and outlier detection on or off, seen from `proxy` (`None`: not
/// known yet). Endpoints that get no traffic are in no group; priorities are
/// contiguous from 0.
pub fn groups(
    settings: Option<&LocalityLb>,
    outlier_detection: bool,
    proxy: Option<&Proximity>,
    endpoints: &[Member<'_>],
) -> Vec<Placement> {
    let default = LocalityLb::default();
    let settings = settings.unwrap_or(&default);
    let everyone = || {
        vec![Placement {
            priority: 0,
            weight: 1,
            members: (0..endpoints.len()).collect(),
        }]
    };
    let Some(proxy) = proxy else {
        return everyone();
    };
    if !settings.enabled || endpoints.is_empty() {
        return everyone();
    }
    let distribute = settings
        .distribute
        .iter()
        .find(|(from, _)| matches(&proxy.locality, from));
    if let Some((_, to)) = distribute {
        return distributed(to, endpoints);
    }
    if !settings.distribute.is_empty() || !(outlier_detection || settings.forced) {
        return everyone();
    }
    let priorities: Vec<u32> = endpoints
        .iter()
        .map(|e| {
            if settings.failover_priority.is_empty() {
                locality_priority(&settings.failover, proxy, e.locality)
            } else {
                let by_labels = label_priority(&settings.failover_priority, proxy, e);
                if settings.failover.is_empty() {
                    by_labels
                } else {
                    // Both: labels first, then locality within (5 levels).
                    by_labels * 5 + locality_priority(&settings.failover, proxy, e.locality)
                }
            }
        })
        .collect();
    // Contiguous from 0, as Envoy requires.
    let mut levels: Vec<u32> = priorities.clone();
    levels.sort_unstable();
    levels.dedup();
    levels
        .iter()
        .enumerate()
        .map(|(rank, level)| Placement {
            priority: u32::try_from(rank).unwrap_or(u32::MAX),
            weight: 1,
            members: (0..endpoints.len())
                .filter(|i| priorities.get(*i) == Some(level))
                .collect(),
        })
        .collect()
}

/// istiod's `applyLocalityWeights`: each `to` pattern takes the endpoints
/// of the localities it matches that no other took, and shares its weight
/// among those localities by their endpoint counts. The most specific
/// patterns go first (`us/us-1a` before `us/*`), so an overlap cannot
/// depend on the order the rule's map happens to have.
fn distributed(to: &[(String, u32)], endpoints: &[Member<'_>]) -> Vec<Placement> {
    let mut taken = vec![false; endpoints.len()];
    let mut groups = Vec::new();
    let mut to: Vec<&(String, u32)> = to.iter().collect();
    to.sort_by_key(|(pattern, _)| std::cmp::Reverse(specificity(pattern)));
    for (pattern, weight) in to {
        let mut by_locality: BTreeMap<&Locality, Vec<usize>> = BTreeMap::new();
        for (i, e) in endpoints.iter().enumerate() {
            if !taken[i] && matches(e.locality, pattern) {
                taken[i] = true;
                by_locality.entry(e.locality).or_default().push(i);
            }
        }
        let total: u64 = by_locality.values().map(|m| m.len() as u64).sum();
        for members in by_locality.into_values() {
            let share = (members.len() as u64 * u64::from(*weight)).div_ceil(total.max(1));
            groups.push(Placement {
                priority: 0,
                weight: share.max(1),
                members,
            });
        }
    }
    groups
}

/// How many levels of a `region/zone/subzone` pattern name a place (not
/// `*`, not left out).
fn specificity(pattern: &str) -> usize {
    let rule = Locality::parse(pattern);
    [&rule.region, &rule.zone, &rule.subzone]
        .iter()
        .filter(|level| !level.is_empty() && level.as_str() != "*")
        .count()
}

/// Istio's `LocalityMatch`: `region/zone/subzone`, where `*` or a missing
/// level matches anything (a missing region does not).
pub fn matches(locality: &Locality, pattern: &str) -> bool {
    let rule = Locality::parse(pattern);
    let level = |rule: &str, have: &str, open_when_empty: bool| {
        rule == "*" || (open_when_empty && rule.is_empty()) || rule == have
    };
    level(&rule.region, &locality.region, false)
        && level(&rule.zone, &locality.zone, true)
        && level(&rule.subzone, &locality.subzone, true)
}

/// istiod's `LbPriority`, with `failover` moving other regions but the
/// named one further down.
fn locality_priority(failover: &[(String, String)], proxy: &Proximity, endpoint: &Locality) -> u32 {
    let near = &proxy.locality;
    if near.region == endpoint.region {
        if near.zone == endpoint.zone {
            return if near.subzone == endpoint.subzone {
                0
            } else {
                1
            };
        }
        return 2;
    }
    match failover.iter().find(|(from, _)| *from == near.region) {
        Some((_, to)) if *to != endpoint.region => 4,
        _ => 3,
    }
}

/// `failoverPriority`: the number of labels, counted from the first, the
/// endpoint shares with the waypoint, subtracted from their count. As in
/// istiod, a label missing on both sides reads as empty on both (shared),
/// and both sides get the node's name and their localities as
/// `kubernetes.io/hostname` and the topology labels.
fn label_priority(labels: &[PriorityLabel], proxy: &Proximity, endpoint: &Member<'_>) -> u32 {
    fn value<'a>(
        labels: &'a BTreeMap<String, String>,
        locality: &'a Locality,
        node: &'a str,
        key: &str,
    ) -> &'a str {
        match key {
            REGION_LABEL => &locality.region,
            ZONE_LABEL => &locality.zone,
            SUBZONE_LABEL => &locality.subzone,
            HOSTNAME_LABEL => node,
            _ => labels.get(key).map_or("", String::as_str),
        }
    }
    let theirs = |key: &str| value(endpoint.labels, endpoint.locality, endpoint.node, key);
    let ours = |key: &str| value(&proxy.labels, &proxy.locality, &proxy.node, key);
    let matched = labels
        .iter()
        .take_while(|label| match label {
            PriorityLabel::Same(key) => theirs(key) == ours(key),
            PriorityLabel::Value(key, wanted) => theirs(key) == wanted,
        })
        .count();
    u32::try_from(labels.len() - matched).unwrap_or(u32::MAX)
}

/// How a group stands now, for [`loads`].
#[derive(Clone, Copy, Debug)]
pub struct Health {
    pub priority: u32,
    pub weight: u64,
    pub healthy: u64,
    pub total: u64,
}

/// The whole load: shares are in parts per 10 000.
const WHOLE: u64 = 10_000;

/// A set's availability: min(100 %, 1.4 × its healthy share), per 10 000.
fn available(healthy: u64, total: u64) -> u64 {
    (healthy * OVERPROVISIONING * 100)
        .checked_div(total)
        .map_or(0, |a| a.min(WHOLE))
}

/// Each priority level's availability, level 0 first.
fn level_availability(groups: &[Health]) -> Vec<u64> {
    let levels = groups.iter().map(|g| g.priority).max().map_or(0, |m| m + 1);
    (0..levels)
        .map(|level| {
            let (healthy, total) = groups
                .iter()
                .filter(|g| g.priority == level)
                .fold((0, 0), |(h, t), g| (h + g.healthy, t + g.total));
            available(healthy, total)
        })
        .collect()
}

/// Gives what rounding lost to the first group with load (as Envoy gives
/// it to the first available priority), so the loads sum to exactly 100 %
/// and a hash drawn against them stays put while they stay.
fn settle(mut loads: Vec<u64>) -> Vec<u64> {
    let lost = WHOLE.saturating_sub(loads.iter().sum());
    if let Some(first) = loads.iter_mut().find(|l| **l > 0) {
        *first += lost;
    }
    loads
}

/// Each group's share of the load, in parts per 10 000 (Envoy's priority
/// load with overprovisioning, then locality weights within a priority).
/// All zeros when no group has a healthy endpoint.
pub fn loads(groups: &[Health]) -> Vec<u64> {
    let level_available = level_availability(groups);
    let sum: u64 = level_available.iter().sum();
    if sum == 0 {
        return vec![0; groups.len()];
    }
    // Spill down the levels, then scale up if they fall short of 100 %.
    let mut left = WHOLE;
    let mut level_load = Vec::with_capacity(level_available.len());
    for a in &level_available {
        let take = (*a).min(left);
        left -= take;
        level_load.push(take);
    }
    let total_available = sum.min(WHOLE);
    if total_available < WHOLE {
        for load in &mut level_load {
            *load = *load * WHOLE / total_available;
        }
    }
    let effective = |h: &Health| h.weight * available(h.healthy, h.total);
    settle(
        groups
            .iter()
            .map(|g| {
                let level_weight: u64 = groups
                    .iter()
                    .filter(|o| o.priority == g.priority)
                    .map(effective)
                    .sum();
                (level_load.get(g.priority as usize).copied().unwrap_or(0) * effective(g))
                    .checked_div(level_weight)
                    .unwrap_or(0)
            })
            .collect(),
    )
}

/// Loads when every group is in panic: by endpoint count, as Envoy's
/// `recalculateLoadInTotalPanic` (and what Warren does instead of "no
/// healthy upstream" when no endpoint is healthy).
pub fn loads_in_total_panic(groups: &[Health]) -> Vec<u64> {
    let total: u64 = groups.iter().map(|g| g.total).sum();
    settle(
        groups
            .iter()
            .map(|g| (g.total * WHOLE).checked_div(total).unwrap_or(0))
            .collect(),
    )
}

/// Which priority levels are in panic, level 0 first, as Envoy decides it:
/// none while the levels' availabilities (in whole percent) add up to
/// 100 %; else those whose healthy share is below the threshold
/// (`minHealthPercent`; 0, Istio's default, never).
pub fn levels_in_panic(groups: &[Health], threshold_percent: u64) -> Vec<bool> {
    let level_available = level_availability(groups);
    let percent: u64 = level_available.iter().map(|a| a / 100).sum();
    (0..level_available.len())
        .map(|level| {
            let (healthy, all) = groups
                .iter()
                .filter(|g| g.priority as usize == level)
                .fold((0, 0), |(h, t), g| (h + g.healthy, t + g.total));
            percent < 100 && healthy * 100 < threshold_percent * all
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Locality {
        Locality::parse(text)
    }

    fn proxy(text: &str) -> Proximity {
        Proximity {
            locality: at(text),
            node: "node-a".into(),
            labels: BTreeMap::new(),
        }
    }

    fn members<'a>(
        localities: &'a [Locality],
        labels: &'a BTreeMap<String, String>,
    ) -> Vec<Member<'a>> {
        localities
            .iter()
            .map(|locality| Member {
                locality,
                node: "node-b",
                labels,
            })
            .collect()
    }

    fn priorities(groups: &[Placement], n: usize) -> Vec<Option<u32>> {
        (0..n)
            .map(|i| {
                groups
                    .iter()
                    .find(|g| g.members.contains(&i))
                    .map(|g| g.priority)
            })
            .collect()
    }

    #[test]
    fn patterns_match_as_istio_reads_them() {
        let here = at("us-east/us-east-1a/rack1");
        assert!(matches(&here, "us-east"));
        assert!(matches(&here, "us-east/*"));
        assert!(matches(&here, "us-east/us-east-1a"));
        assert!(matches(&here, "*"));
        assert!(matches(&here, "us-east/us-east-1a/rack1"));
        assert!(!matches(&here, "us-east/us-east-1b"));
        assert!(!matches(&here, "us-west/*"));
        assert!(!matches(&here, "us-east/us-east-1a/rack2"));
    }

    #[test]
    fn failover_orders_by_locality_and_needs_outlier_detection() {
        let endpoints = [
            at("us/us-1a/r1"),
            at("us/us-1a/r2"),
            at("us/us-1b"),
            at("eu/eu-1a"),
            at("us/us-1a/r1"),
        ];
        let labels = BTreeMap::new();
        let e = members(&endpoints, &labels);
        let here = proxy("us/us-1a/r1");
        let groups = groups(None, true, Some(&here), &e);
        assert_eq!(
            priorities(&groups, 5),
            vec![Some(0), Some(1), Some(2), Some(3), Some(0)]
        );
        // No outlier detection: one group (traffic could never fail over).
        let flat = super::groups(None, false, Some(&here), &e);
        assert_eq!(flat.len(), 1);
        assert_eq!(flat[0].members, vec![0, 1, 2, 3, 4]);
        // Turned off.
        let off = LocalityLb {
            enabled: false,
            ..LocalityLb::default()
        };
        assert_eq!(super::groups(Some(&off), true, Some(&here), &e).len(), 1);
    }

    #[test]
    fn failover_names_the_region_to_use_next() {
        let endpoints = [at("us/us-1a"), at("eu/eu-1a"), at("ap/ap-1a")];
        let labels = BTreeMap::new();
        let e = members(&endpoints, &labels);
        let settings = LocalityLb {
            failover: vec![("us".into(), "ap".into())],
            ..LocalityLb::default()
        };
        let groups = groups(Some(&settings), true, Some(&proxy("us/us-1a")), &e);
        // us first, then ap (named), then eu; priorities stay contiguous.
        assert_eq!(priorities(&groups, 3), vec![Some(0), Some(2), Some(1)]);
    }

    #[test]
    fn failover_priority_counts_shared_labels_in_order() {
        let endpoints = [at("us/a"), at("us/a"), at("us/b"), at("eu/c")];
        let near: BTreeMap<String, String> =
            [("topology.istio.io/network".to_owned(), "n1".to_owned())].into();
        let far: BTreeMap<String, String> =
            [("topology.istio.io/network".to_owned(), "n2".to_owned())].into();
        let e = vec![
            Member {
                locality: &endpoints[0],
                node: "n",
                labels: &near,
            },
            Member {
                locality: &endpoints[1],
                node: "n",
                labels: &far,
            },
            Member {
                locality: &endpoints[2],
                node: "n",
                labels: &near,
            },
            Member {
                locality: &endpoints[3],
                node: "n",
                labels: &near,
            },
        ];
        let here = Proximity {
            locality: at("us/a"),
            node: "n".into(),
            labels: near.clone(),
        };
        let settings = LocalityLb {
            failover_priority: vec![
                PriorityLabel::parse("topology.istio.io/network"),
                PriorityLabel::parse(REGION_LABEL),
                PriorityLabel::parse(ZONE_LABEL),
            ],
            ..LocalityLb::default()
        };
        let groups = groups(Some(&settings), true, Some(&here), &e);
        // n1+us+a: 0; n1+us: 1; n1 only: 2; another network: 3 (no later
        // label counts once one differs).
        assert_eq!(
            priorities(&groups, 4),
            vec![Some(0), Some(3), Some(1), Some(2)]
        );
        // key=value compares with the value given, not the waypoint's.
        let settings = LocalityLb {
            failover_priority: vec![PriorityLabel::parse("topology.istio.io/network=n2")],
            ..LocalityLb::default()
        };
        let groups = super::groups(Some(&settings), true, Some(&here), &e);
        assert_eq!(
            priorities(&groups, 4),
            vec![Some(1), Some(0), Some(1), Some(1)]
        );
    }

    #[test]
    fn distribute_weights_localities_and_drops_the_others() {
        let endpoints = [
            at("us/us-1a"),
            at("us/us-1b"),
            at("us/us-1b"),
            at("us/us-1c"),
            at("eu/eu-1a"),
        ];
        let labels = BTreeMap::new();
        let e = members(&endpoints, &labels);
        let settings = LocalityLb {
            distribute: vec![(
                "us/us-1a/*".into(),
                vec![("us/us-1a".into(), 80), ("us/us-1b".into(), 20)],
            )],
            ..LocalityLb::default()
        };
        // Applies without outlier detection.
        let groups = groups(Some(&settings), false, Some(&proxy("us/us-1a")), &e);
        assert_eq!(
            priorities(&groups, 5),
            vec![Some(0), Some(0), Some(0), None, None]
        );
        let weights: Vec<u64> = groups.iter().map(|g| g.weight).collect();
        assert_eq!(weights, vec![80, 20]);
        // A wildcard shares its weight by endpoint count.
        let settings = LocalityLb {
            distribute: vec![("*".into(), vec![("us/*".into(), 100)])],
            ..LocalityLb::default()
        };
        let groups = super::groups(Some(&settings), false, Some(&proxy("eu/eu-1a")), &e);
        let weights: Vec<(Vec<usize>, u64)> = groups
            .iter()
            .map(|g| (g.members.clone(), g.weight))
            .collect();
        assert_eq!(
            weights,
            vec![(vec![0], 25), (vec![1, 2], 50), (vec![3], 25)]
        );
        // An entry for another locality: plain balancing (no failover
        // without outlier detection).
        let settings = LocalityLb {
            distribute: vec![("ap/*".into(), vec![("ap/*".into(), 100)])],
            ..LocalityLb::default()
        };
        assert_eq!(
            super::groups(Some(&settings), false, Some(&proxy("us/us-1a")), &e).len(),
            1
        );
    }

    fn health(priority: u32, weight: u64, healthy: u64, total: u64) -> Health {
        Health {
            priority,
            weight,
            healthy,
            total,
        }
    }

    #[test]
    fn load_spills_to_the_next_priority_as_envoy_overprovisions() {
        // All healthy: everything to priority 0.
        assert_eq!(
            loads(&[health(0, 1, 4, 4), health(1, 1, 4, 4)]),
            vec![10_000, 0]
        );
        // 3 of 4 healthy: 1.4 × 75 % > 100 %, still all.
        assert_eq!(
            loads(&[health(0, 1, 3, 4), health(1, 1, 4, 4)]),
            vec![10_000, 0]
        );
        // 1 of 2: 70 % stays, 30 % moves.
        assert_eq!(
            loads(&[health(0, 1, 1, 2), health(1, 1, 4, 4)]),
            vec![7_000, 3_000]
        );
        // None healthy: all moves.
        assert_eq!(
            loads(&[health(0, 1, 0, 2), health(1, 1, 4, 4)]),
            vec![0, 10_000]
        );
        // Both short: 70 % + 35 % ≥ 100 %: 70 / 30.
        assert_eq!(
            loads(&[health(0, 1, 1, 2), health(1, 1, 1, 4)]),
            vec![7_000, 3_000]
        );
        // Short in sum (14 % + 35 %): scaled up to 100 %.
        assert_eq!(
            loads(&[health(0, 1, 1, 10), health(1, 1, 1, 4)]),
            vec![2_858, 7_142]
        );
        // Nobody healthy.
        assert_eq!(loads(&[health(0, 1, 0, 2), health(1, 1, 0, 1)]), vec![0, 0]);
    }

    #[test]
    fn locality_weights_share_a_priority_by_health() {
        // 80 / 20, both healthy.
        assert_eq!(
            loads(&[health(0, 80, 2, 2), health(0, 20, 1, 1)]),
            vec![8_000, 2_000]
        );
        // The 80 % locality loses half its endpoints: its weight × 70 %
        // (and the rounding's remainder, so the loads sum to 100 %).
        assert_eq!(
            loads(&[health(0, 80, 1, 2), health(0, 20, 1, 1)]),
            vec![7_369, 2_631]
        );
    }

    #[test]
    fn failover_priority_reads_absent_labels_as_equal_and_knows_the_node() {
        // Istio's documented list on a mesh without network labels: the
        // network reads "" on both sides and the topology decides.
        let endpoints = [at("us/a"), at("us/b"), at("us/a")];
        let none = BTreeMap::new();
        let e = vec![
            Member {
                locality: &endpoints[0],
                node: "node-b",
                labels: &none,
            },
            Member {
                locality: &endpoints[1],
                node: "node-c",
                labels: &none,
            },
            Member {
                locality: &endpoints[2],
                node: "node-a",
                labels: &none,
            },
        ];
        let settings = LocalityLb {
            failover_priority: ["topology.istio.io/network", REGION_LABEL, ZONE_LABEL]
                .into_iter()
                .map(PriorityLabel::parse)
                .collect(),
            ..LocalityLb::default()
        };
        let here = proxy("us/a");
        let zones = groups(Some(&settings), true, Some(&here), &e);
        assert_eq!(priorities(&zones, 3), vec![Some(0), Some(1), Some(0)]);
        // kubernetes.io/hostname is the node's name.
        let settings = LocalityLb {
            failover_priority: vec![PriorityLabel::parse(HOSTNAME_LABEL)],
            ..LocalityLb::default()
        };
        let nodes = groups(Some(&settings), true, Some(&here), &e);
        assert_eq!(priorities(&nodes, 3), vec![Some(1), Some(1), Some(0)]);
    }

    #[test]
    fn a_service_asking_for_closeness_fails_over_without_outlier_detection() {
        let endpoints = [at("us/a"), at("us/b")];
        let labels = BTreeMap::new();
        let e = members(&endpoints, &labels);
        let forced = LocalityLb {
            failover_priority: [REGION_LABEL, ZONE_LABEL]
                .into_iter()
                .map(PriorityLabel::parse)
                .collect(),
            forced: true,
            ..LocalityLb::default()
        };
        let here = proxy("us/a");
        let g = groups(Some(&forced), false, Some(&here), &e);
        assert_eq!(priorities(&g, 2), vec![Some(0), Some(1)]);
        // A waypoint that does not know its own place: no preference.
        assert_eq!(groups(Some(&forced), false, None, &e).len(), 1);
    }

    #[test]
    fn the_most_specific_distribute_pattern_takes_its_endpoints_first() {
        let endpoints = [at("us/us-1a"), at("us/us-1b")];
        let labels = BTreeMap::new();
        let e = members(&endpoints, &labels);
        // `us/*` sorts before `us/us-1a`, but must not take us-1a's endpoint.
        let settings = LocalityLb {
            distribute: vec![(
                "*".into(),
                vec![("us/*".into(), 20), ("us/us-1a".into(), 80)],
            )],
            ..LocalityLb::default()
        };
        let g = groups(Some(&settings), false, Some(&proxy("us/us-1a")), &e);
        let weights: Vec<(Vec<usize>, u64)> =
            g.iter().map(|g| (g.members.clone(), g.weight)).collect();
        assert_eq!(weights, vec![(vec![0], 80), (vec![1], 20)]);
    }

    #[test]
    fn panic_is_per_level_and_only_short_of_full_availability() {
        // minHealthPercent 50: P0 all ejected, P1 2 of 3 healthy. P1 is
        // available enough (93 %) not to panic, and takes everything.
        let groups = [health(0, 1, 0, 2), health(1, 1, 2, 3)];
        assert_eq!(levels_in_panic(&groups, 50), vec![true, false]);
        assert_eq!(loads(&groups), vec![0, 10_000]);
        // 75 % healthy with a threshold of 80: 1.4 × 75 % covers it, so no
        // panic at all.
        assert_eq!(levels_in_panic(&[health(0, 1, 3, 4)], 80), vec![false]);
        // Threshold 0 (Istio's default): never.
        assert_eq!(levels_in_panic(&[health(0, 1, 0, 4)], 0), vec![false]);
        // Everyone in panic: by endpoint count.
        assert_eq!(
            loads_in_total_panic(&[health(0, 1, 0, 1), health(1, 1, 0, 3)]),
            vec![2_500, 7_500]
        );
    }

    #[test]
    fn loads_always_sum_to_the_whole() {
        let split = loads(&[health(0, 80, 1, 2), health(0, 20, 1, 1)]);
        assert_eq!(split.iter().sum::<u64>(), 10_000);
        let short = loads(&[health(0, 1, 1, 10), health(1, 1, 1, 4)]);
        assert_eq!(short.iter().sum::<u64>(), 10_000);
    }
}
