//! VirtualService `tcp` rules: where a connection to a TCP service port
//! goes.
//!
//! A waypoint serves a port whose protocol is TCP (see
//! `warren_ztunnel::state::service::Protocol`) as opaque bytes: it picks a
//! destination once per connection and splices. Of the VirtualServices with
//! `tcp` rules claiming the service's host (exactly or by wildcard, and only
//! those of the service's namespace or the waypoint's, as for HTTP), the
//! first in precedence order is used; its first rule whose `match` fits the
//! connection wins, and its destinations are chosen by weight. No such
//! VirtualService, or no rule that fits: the service itself (Istio's
//! waypoint does the same).
//!
//! Match fields: `port`, `sourceLabels`, `sourceNamespace`,
//! `destinationSubnets`. A match bound to `gateways` other than `mesh` is
//! the gateways', not the waypoint's: left out (a rule left with none is).

use std::{collections::BTreeMap, net::IpAddr};

use rand::Rng;
use warren_model::istio::{L4MatchAttributes, TcpRoute};

use super::{
    ErrorEffect, ExportTo, RouteDestination, RouteError, Scope, VsId, VsInput, host::HostIndex,
};
use crate::authz::matcher::Cidr;

/// A field that does not compile, and why.
struct Invalid {
    field: String,
    reason: String,
}

fn invalid(field: String, reason: String) -> Invalid {
    Invalid { field, reason }
}

/// What is known of a connection when it is routed.
pub struct ConnectionInfo<'a> {
    /// The service port it was addressed to.
    pub port: u16,
    /// The address it was addressed to (the service VIP).
    pub destination: IpAddr,
    pub source_labels: &'a BTreeMap<String, String>,
    pub source_namespace: &'a str,
}

#[derive(Clone, Debug)]
struct L4Match {
    port: Option<u16>,
    subnets: Vec<Cidr>,
    source_labels: BTreeMap<String, String>,
    source_namespace: Option<String>,
}

impl L4Match {
    fn compile(path: &str, m: &L4MatchAttributes) -> Result<Self, Invalid> {
        let port = m
            .port
            .map(|p| {
                u16::try_from(p)
                    .map_err(|_| invalid(format!("{path}.port"), format!("{p} is not a port")))
            })
            .transpose()?;
        let subnets = m
            .destination_subnets
            .iter()
            .map(|s| {
                Cidr::parse(s).ok_or_else(|| {
                    invalid(
                        format!("{path}.destinationSubnets"),
                        format!("`{s}` is not an address or CIDR"),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(L4Match {
            port,
            subnets,
            source_labels: m.source_labels.clone(),
            source_namespace: Some(m.source_namespace.clone()).filter(|n| !n.is_empty()),
        })
    }

    fn fits(&self, c: &ConnectionInfo<'_>) -> bool {
        self.port.is_none_or(|p| p == c.port)
            && (self.subnets.is_empty() || self.subnets.iter().any(|n| n.contains(c.destination)))
            && self
                .source_labels
                .iter()
                .all(|(k, v)| c.source_labels.get(k) == Some(v))
            && self
                .source_namespace
                .as_deref()
                .is_none_or(|n| n == c.source_namespace)
    }
}

/// One compiled `tcp` rule.
#[derive(Clone, Debug)]
pub struct TcpRule {
    pub name: String,
    matches: Vec<L4Match>,
    destinations: Vec<RouteDestination>,
}

impl TcpRule {
    /// `None` for a rule whose every match is bound to gateways: not the
    /// mesh's.
    fn compile(path: &str, rule: &TcpRoute) -> Result<Option<Self>, Invalid> {
        let matches = rule
            .r#match
            .iter()
            .enumerate()
            .filter(|(_, m)| m.gateways.is_empty() || m.gateways.iter().any(|g| g == "mesh"))
            .map(|(i, m)| L4Match::compile(&format!("{path}.match[{i}]"), m))
            .collect::<Result<Vec<_>, _>>()?;
        if !rule.r#match.is_empty() && matches.is_empty() {
            return Ok(None);
        }
        if rule.route.is_empty() {
            return Err(invalid(format!("{path}.route"), "no destination".into()));
        }
        let several = rule.route.len() > 1;
        let destinations = rule
            .route
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let mut destination = RouteDestination::to_host(&d.destination.host);
                destination.subset = Some(d.destination.subset.clone()).filter(|s| !s.is_empty());
                destination.port = match &d.destination.port {
                    Some(p) => Some(u16::try_from(p.number).map_err(|_| {
                        invalid(
                            format!("{path}.route[{i}].destination.port"),
                            format!("{} is not a port", p.number),
                        )
                    })?),
                    None => None,
                };
                // A lone destination takes everything, whatever it weighs.
                destination.weight = if several {
                    u32::try_from(d.weight.unwrap_or(0)).unwrap_or(0)
                } else {
                    100
                };
                Ok(destination)
            })
            .collect::<Result<Vec<_>, Invalid>>()?;
        Ok(Some(TcpRule {
            name: path.to_owned(),
            matches,
            destinations,
        }))
    }

    fn fits(&self, c: &ConnectionInfo<'_>) -> bool {
        self.matches.is_empty() || self.matches.iter().any(|m| m.fits(c))
    }

    /// Where it sends connections, each with its weight.
    pub fn destinations(&self) -> &[RouteDestination] {
        &self.destinations
    }

    /// A destination drawn by weight.
    pub fn pick<R: Rng + ?Sized>(&self, rng: &mut R) -> Option<&RouteDestination> {
        let total: u64 = self.destinations.iter().map(|d| u64::from(d.weight)).sum();
        if total == 0 {
            return self.destinations.first();
        }
        let mut point = rng.random_range(0..total);
        for destination in &self.destinations {
            let weight = u64::from(destination.weight);
            if point < weight {
                return Some(destination);
            }
            point -= weight;
        }
        self.destinations.last()
    }
}

/// How a TCP connection to a host is routed.
pub enum TcpRouted<'a> {
    /// No VirtualService's `tcp` rule fits: to the host itself.
    Default,
    Rule(&'a VsId, &'a TcpRule),
}

/// Every VirtualService's `tcp` rules, by host.
#[derive(Default)]
pub struct TcpTable {
    virtual_services: Vec<(VsId, ExportTo, Vec<TcpRule>)>,
    hosts: HostIndex,
}

impl TcpTable {
    /// Compiles the `tcp` rules of `inputs`, in precedence order (oldest
    /// first); a VirtualService whose rules do not compile is reported and
    /// left out, the others still route.
    pub fn build(inputs: impl IntoIterator<Item = VsInput>) -> (TcpTable, Vec<RouteError>) {
        let mut table = TcpTable::default();
        let mut errors = Vec::new();
        for input in inputs {
            let spec = &input.spec;
            if spec.tcp.is_empty()
                || (!spec.gateways.is_empty() && !spec.gateways.iter().any(|g| g == "mesh"))
            {
                continue;
            }
            let id = VsId {
                namespace: input.namespace.clone(),
                name: input.name.clone(),
            };
            let rules = spec
                .tcp
                .iter()
                .enumerate()
                .map(|(i, r)| TcpRule::compile(&format!("spec.tcp[{i}]"), r))
                .collect::<Result<Vec<_>, _>>();
            match rules {
                Ok(rules) => {
                    let rules: Vec<TcpRule> = rules.into_iter().flatten().collect();
                    if rules.is_empty() {
                        continue;
                    }
                    let index = table.virtual_services.len();
                    for host in &input.hosts {
                        table.hosts.claim(host, index);
                    }
                    let export_to = ExportTo::new(&spec.export_to);
                    table.virtual_services.push((id, export_to, rules));
                }
                Err(Invalid { field, reason }) => errors.push(RouteError {
                    virtual_service: id,
                    field,
                    reason,
                    effect: ErrorEffect::Skipped,
                }),
            }
        }
        table.hosts.finish();
        (table, errors)
    }

    /// Where a connection to `host` goes, with the VirtualServices `scope`
    /// admits.
    pub fn route(&self, host: &str, scope: Scope<'_>, c: &ConnectionInfo<'_>) -> TcpRouted<'_> {
        let claimed = self
            .hosts
            .claims(host)
            .filter_map(|i| self.virtual_services.get(i))
            .find(|(id, export_to, _)| scope.admits(id, export_to));
        claimed
            .and_then(|(id, _, rules)| rules.iter().find(|r| r.fits(c)).map(|r| (id, r)))
            .map_or(TcpRouted::Default, |(id, rule)| TcpRouted::Rule(id, rule))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{SeedableRng, rngs::StdRng};

    const HOST: &str = "db.shop.svc.cluster.local";
    const SHOP: Scope<'static> = Scope {
        service_namespace: "shop",
        waypoint_namespace: "shop",
    };

    fn input(name: &str, tcp: serde_json::Value) -> VsInput {
        VsInput {
            namespace: "shop".into(),
            name: name.into(),
            created: 0,
            hosts: vec![HOST.into()],
            spec: serde_json::from_value(serde_json::json!({ "hosts": [HOST], "tcp": tcp }))
                .expect("a valid spec"),
        }
    }

    fn conn<'a>(port: u16, labels: &'a BTreeMap<String, String>) -> ConnectionInfo<'a> {
        ConnectionInfo {
            port,
            destination: "10.96.0.10".parse().expect("an address"),
            source_labels: labels,
            source_namespace: "shop",
        }
    }

    #[test]
    fn no_virtual_service_routes_to_the_host() {
        let (table, errors) = TcpTable::build([]);
        assert!(errors.is_empty());
        let labels = BTreeMap::new();
        assert!(matches!(
            table.route(HOST, SHOP, &conn(5432, &labels)),
            TcpRouted::Default
        ));
    }

    #[test]
    fn first_fitting_rule_wins_and_weights_split() {
        let (table, errors) = TcpTable::build([input(
            "db",
            serde_json::json!([
                { "match": [{ "port": 5432, "sourceLabels": { "app": "admin" } }],
                  "route": [{ "destination": { "host": HOST, "subset": "primary" } }] },
                { "match": [{ "destinationSubnets": ["10.96.0.0/16"] }],
                  "route": [
                    { "destination": { "host": HOST, "subset": "v1" }, "weight": 75 },
                    { "destination": { "host": HOST, "subset": "v2" }, "weight": 25 }
                  ] }
            ]),
        )]);
        assert!(errors.is_empty(), "{errors:?}");
        let admin: BTreeMap<_, _> = [("app".to_owned(), "admin".to_owned())].into();
        let TcpRouted::Rule(_, rule) = table.route(HOST, SHOP, &conn(5432, &admin)) else {
            panic!("the admin rule fits");
        };
        assert_eq!(
            rule.pick(&mut rand::rng())
                .and_then(|d| d.subset.as_deref()),
            Some("primary")
        );

        let other = BTreeMap::new();
        let TcpRouted::Rule(_, rule) = table.route(HOST, SHOP, &conn(5432, &other)) else {
            panic!("the subnet rule fits");
        };
        let mut rng = StdRng::seed_from_u64(7);
        let v1 = (0..4000)
            .filter(|_| rule.pick(&mut rng).and_then(|d| d.subset.as_deref()) == Some("v1"))
            .count();
        assert!((2800..3200).contains(&v1), "75 % of 4000 to v1, got {v1}");
    }

    #[test]
    fn a_claimed_host_with_no_fitting_rule_goes_to_the_service() {
        let (table, _) = TcpTable::build([input(
            "db",
            serde_json::json!([{ "match": [{ "port": 1 }], "route": [{ "destination": { "host": HOST, "subset": "v2" } }] }]),
        )]);
        let labels = BTreeMap::new();
        assert!(matches!(
            table.route(HOST, SHOP, &conn(5432, &labels)),
            TcpRouted::Default
        ));
        assert!(matches!(
            table.route(HOST, SHOP, &conn(1, &labels)),
            TcpRouted::Rule(..)
        ));
    }

    #[test]
    fn wildcards_gateway_rules_and_other_namespaces() {
        let mut wild = input(
            "all",
            serde_json::json!([
                { "match": [{ "gateways": ["shop/ingress"] }],
                  "route": [{ "destination": { "host": HOST, "subset": "gw" } }] },
                { "route": [{ "destination": { "host": HOST, "subset": "v2" } }] }
            ]),
        );
        wild.hosts = vec!["*.shop.svc.cluster.local".into()];
        let mut foreign = input(
            "aaa",
            serde_json::json!([{ "route": [{ "destination": { "host": "collector.evil.svc.cluster.local" } }] }]),
        );
        foreign.namespace = "evil".into();
        let (table, errors) = TcpTable::build([foreign, wild]);
        assert!(errors.is_empty(), "{errors:?}");
        let labels = BTreeMap::new();
        // The gateway-bound rule is left out, the next one routes; the other
        // namespace's VirtualService, first in order, is not in scope.
        let TcpRouted::Rule(id, rule) = table.route(HOST, SHOP, &conn(5432, &labels)) else {
            panic!("the wildcard VirtualService routes");
        };
        assert_eq!(id.name, "all");
        assert_eq!(
            rule.pick(&mut rand::rng())
                .and_then(|d| d.subset.as_deref()),
            Some("v2")
        );
    }

    #[test]
    fn a_bad_subnet_reports_the_virtual_service() {
        let (table, errors) = TcpTable::build([input(
            "db",
            serde_json::json!([{ "match": [{ "destinationSubnets": ["nope"] }], "route": [{ "destination": { "host": HOST } }] }]),
        )]);
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].to_string().contains("destinationSubnets"),
            "{}",
            errors[0]
        );
        let labels = BTreeMap::new();
        assert!(matches!(
            table.route(HOST, SHOP, &conn(5432, &labels)),
            TcpRouted::Default
        ));
    }
}
