//! VirtualService `tcp` and `tls` rules: where a connection to a TCP
//! service port goes.
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
//! `destinationSubnets`, and for `tls` rules `sniHosts`. A match bound to
//! `gateways` other than `mesh` is the gateways', not the waypoint's: left
//! out (a rule left with none is).
//!
//! On a port that carries TLS (`tls`, `https`), the VirtualService's `tls`
//! rules are tried first, on the server name the client's hello asks for
//! (the waypoint reads it without terminating TLS), then its `tcp` rules, as
//! Istio tries them.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use rand::Rng;
use warren_model::istio::{L4MatchAttributes, TcpRoute, TlsMatchAttributes, TlsRoute};

use super::{
    ErrorEffect, ExportTo, RouteDestination, RouteError, Scope, VsId, VsInput,
    host::{HostIndex, normalize_host},
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
    /// On a port that carries TLS: the server name of the client's hello
    /// (`Some(None)` when it names none, or was not TLS). `None` elsewhere.
    pub tls: Option<Option<&'a str>>,
}

#[derive(Clone, Debug)]
struct L4Match {
    port: Option<u16>,
    subnets: Vec<Cidr>,
    source_labels: BTreeMap<String, String>,
    source_namespace: Option<String>,
    /// `sniHosts`, lower case: exact, `*.suffix`, or `*`. Empty for `tcp`.
    sni_hosts: Vec<String>,
}

impl L4Match {
    fn compile_tls(path: &str, m: &TlsMatchAttributes) -> Result<Self, Invalid> {
        if m.sni_hosts.is_empty() {
            return Err(invalid(
                format!("{path}.sniHosts"),
                "a tls match needs at least one".into(),
            ));
        }
        let mut compiled = L4Match::compile(
            path,
            &L4MatchAttributes {
                destination_subnets: m.destination_subnets.clone(),
                port: m.port,
                source_labels: m.source_labels.clone(),
                source_namespace: m.source_namespace.clone(),
                gateways: m.gateways.clone(),
            },
        )?;
        compiled.sni_hosts = m.sni_hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
        Ok(compiled)
    }

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
            sni_hosts: Vec::new(),
        })
    }

    fn fits(&self, c: &ConnectionInfo<'_>) -> bool {
        let sni = || {
            let Some(Some(name)) = c.tls else {
                return false;
            };
            // A fully qualified name's root dot is no part of it.
            let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
            self.sni_hosts.iter().any(|h| sni_matches(h, &name))
        };
        (self.sni_hosts.is_empty() || sni()) && self.fits_but_name(c)
    }

    /// Whether every field but `sniHosts` fits.
    fn fits_but_name(&self, c: &ConnectionInfo<'_>) -> bool {
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

/// Whether `name` (lower case) is one of `pattern`: the same name, `*`, or
/// `*.suffix` for a name with at least one more label.
fn sni_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix('*') {
        None => pattern == name,
        Some("") => true,
        Some(suffix) => {
            suffix.starts_with('.') && name.len() > suffix.len() && name.ends_with(suffix)
        }
    }
}

/// One compiled `tcp` or `tls` rule.
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
            .filter(|(_, m)| for_mesh(&m.gateways))
            .map(|(i, m)| L4Match::compile(&format!("{path}.match[{i}]"), m))
            .collect::<Result<Vec<_>, _>>()?;
        if !rule.r#match.is_empty() && matches.is_empty() {
            return Ok(None);
        }
        Self::with_destinations(path, matches, &rule.route).map(Some)
    }

    /// A `tls` rule: like a `tcp` one, each match with `sniHosts`.
    fn compile_tls(path: &str, rule: &TlsRoute) -> Result<Option<Self>, Invalid> {
        if rule.r#match.is_empty() {
            return Err(invalid(
                format!("{path}.match"),
                "a tls rule needs a match with sniHosts".into(),
            ));
        }
        let matches = rule
            .r#match
            .iter()
            .enumerate()
            .filter(|(_, m)| for_mesh(&m.gateways))
            .map(|(i, m)| L4Match::compile_tls(&format!("{path}.match[{i}]"), m))
            .collect::<Result<Vec<_>, _>>()?;
        if matches.is_empty() {
            return Ok(None);
        }
        Self::with_destinations(path, matches, &rule.route).map(Some)
    }

    fn with_destinations(
        path: &str,
        matches: Vec<L4Match>,
        route: &[warren_model::istio::RouteDestination],
    ) -> Result<Self, Invalid> {
        if route.is_empty() {
            return Err(invalid(format!("{path}.route"), "no destination".into()));
        }
        let several = route.len() > 1;
        let destinations = route
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
        Ok(TcpRule {
            name: path.to_owned(),
            matches,
            destinations,
        })
    }

    fn fits(&self, c: &ConnectionInfo<'_>) -> bool {
        self.matches.is_empty() || self.matches.iter().any(|m| m.fits(c))
    }

    /// Whether the rule could fit, its server names aside.
    fn could_fit(&self, c: &ConnectionInfo<'_>) -> bool {
        self.matches.is_empty() || self.matches.iter().any(|m| m.fits_but_name(c))
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

/// A match bound to the mesh (no `gateways`, or `mesh` among them).
fn for_mesh(gateways: &[String]) -> bool {
    gateways.is_empty() || gateways.iter().any(|g| g == "mesh")
}

/// How a TCP connection to a host is routed.
pub enum TcpRouted<'a> {
    /// No VirtualService's `tcp` (or `tls`) rule fits: to the host itself.
    Default,
    Rule(&'a VsId, &'a TcpRule),
}

/// One VirtualService's connection rules.
struct Rules {
    id: VsId,
    export_to: ExportTo,
    tcp: Vec<TcpRule>,
    tls: Vec<TcpRule>,
}

/// Every VirtualService's `tcp` and `tls` rules, by host.
#[derive(Default)]
pub struct TcpTable {
    virtual_services: Vec<Rules>,
    hosts: HostIndex,
}

impl TcpTable {
    /// Compiles the `tcp` rules of `inputs`, in precedence order (oldest
    /// first); a VirtualService whose rules do not compile is reported and
    /// left out, the others still route.
    pub fn build(inputs: impl IntoIterator<Item = VsInput>) -> (TcpTable, Vec<RouteError>) {
        let mut table = TcpTable::default();
        let mut errors = Vec::new();
        // By (namespace, host): the first VirtualService of a namespace
        // with connection rules for a host, and whom it is exported to.
        let mut claims: HashMap<(String, String), (VsId, Vec<String>)> = HashMap::new();
        for input in inputs {
            let spec = &input.spec;
            if (spec.tcp.is_empty() && spec.tls.is_empty()) || !for_mesh(&spec.gateways) {
                continue;
            }
            let id = VsId {
                namespace: input.namespace.clone(),
                name: input.name.clone(),
            };
            let tcp = spec
                .tcp
                .iter()
                .enumerate()
                .map(|(i, r)| TcpRule::compile(&format!("spec.tcp[{i}]"), r))
                .collect::<Result<Vec<_>, _>>();
            let tls = spec
                .tls
                .iter()
                .enumerate()
                .map(|(i, r)| TcpRule::compile_tls(&format!("spec.tls[{i}]"), r))
                .collect::<Result<Vec<_>, _>>();
            match tcp.and_then(|tcp| Ok((tcp, tls?))) {
                Ok((tcp, tls)) => {
                    let tcp: Vec<TcpRule> = tcp.into_iter().flatten().collect();
                    let tls: Vec<TcpRule> = tls.into_iter().flatten().collect();
                    if tcp.is_empty() && tls.is_empty() {
                        continue;
                    }
                    let index = table.virtual_services.len();
                    for (i, host) in input.hosts.iter().enumerate() {
                        let key = (id.namespace.clone(), normalize_host(host));
                        // Shadowed wherever it is seen only when the first
                        // is seen there too (exported alike); otherwise it
                        // still routes where the first is not visible.
                        if let Some((owner, _)) = claims
                            .get(&key)
                            .filter(|(_, exported)| *exported == spec.export_to)
                        {
                            errors.push(RouteError {
                                virtual_service: id.clone(),
                                field: format!("hosts[{i}]"),
                                reason: format!(
                                    "host {host:?} already has tcp or tls rules from VirtualService {owner}, which comes first"
                                ),
                                effect: ErrorEffect::HostIgnored { host: host.clone() },
                            });
                            continue;
                        }
                        claims
                            .entry(key)
                            .or_insert_with(|| (id.clone(), spec.export_to.clone()));
                        table.hosts.claim(host, index);
                    }
                    table.virtual_services.push(Rules {
                        id,
                        export_to: ExportTo::new(&spec.export_to),
                        tcp,
                        tls,
                    });
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

    /// The VirtualService that routes connections to `host`, of those
    /// `scope` admits.
    fn claimed(&self, host: &str, scope: Scope<'_>) -> Option<&Rules> {
        self.hosts
            .claims(host)
            .filter_map(|i| self.virtual_services.get(i))
            .find(|rules| scope.admits(&rules.id, &rules.export_to))
    }

    /// Whether routing connection `c` to `host` would look at its server
    /// name (a `tls` rule fits it but for the name): worth reading the
    /// client's hello for, and only then (a server-first protocol would
    /// wait for it).
    pub fn reads_sni(&self, host: &str, scope: Scope<'_>, c: &ConnectionInfo<'_>) -> bool {
        self.claimed(host, scope)
            .is_some_and(|r| r.tls.iter().any(|rule| rule.could_fit(c)))
    }

    /// Where a connection to `host` goes, with the VirtualServices `scope`
    /// admits: its `tls` rules first on a port that carries TLS, then its
    /// `tcp` rules.
    pub fn route(&self, host: &str, scope: Scope<'_>, c: &ConnectionInfo<'_>) -> TcpRouted<'_> {
        let Some(rules) = self.claimed(host, scope) else {
            return TcpRouted::Default;
        };
        let tls = c.tls.is_some().then_some(&rules.tls).into_iter().flatten();
        tls.chain(&rules.tcp)
            .find(|r| r.fits(c))
            .map_or(TcpRouted::Default, |rule| TcpRouted::Rule(&rules.id, rule))
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
            from_routes: false,
        }
    }

    fn conn<'a>(port: u16, labels: &'a BTreeMap<String, String>) -> ConnectionInfo<'a> {
        ConnectionInfo {
            port,
            destination: "10.96.0.10".parse().expect("an address"),
            source_labels: labels,
            source_namespace: "shop",
            tls: None,
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
    fn a_later_virtual_service_for_a_host_is_reported_not_silently_shadowed() {
        let first = input(
            "first",
            serde_json::json!([{ "route": [{ "destination": { "host": HOST, "subset": "v1" } }] }]),
        );
        let second = input(
            "second",
            serde_json::json!([{ "route": [{ "destination": { "host": HOST, "subset": "v2" } }] }]),
        );
        let (table, errors) = TcpTable::build([first, second]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].virtual_service.name, "second");
        assert!(
            errors[0].reason.contains("VirtualService shop/first"),
            "{}",
            errors[0].reason
        );
        assert!(matches!(
            &errors[0].effect,
            ErrorEffect::HostIgnored { host } if host == HOST
        ));
        let labels = BTreeMap::new();
        let TcpRouted::Rule(id, _) = table.route(HOST, SHOP, &conn(5432, &labels)) else {
            panic!("the first VirtualService routes");
        };
        assert_eq!(id.name, "first");

        // Exported apart, the later one still routes where the first is
        // not seen, and is not reported.
        let mut own = input(
            "own",
            serde_json::json!([{ "route": [{ "destination": { "host": HOST, "subset": "v1" } }] }]),
        );
        own.spec.export_to = vec![".".into()];
        let shared = input(
            "shared",
            serde_json::json!([{ "route": [{ "destination": { "host": HOST, "subset": "v2" } }] }]),
        );
        let (table, errors) = TcpTable::build([own, shared]);
        assert!(errors.is_empty(), "{errors:?}");
        let elsewhere = Scope {
            service_namespace: "shop",
            waypoint_namespace: "infra",
        };
        let TcpRouted::Rule(id, _) = table.route(HOST, elsewhere, &conn(5432, &labels)) else {
            panic!("the exported VirtualService routes for another namespace's waypoint");
        };
        assert_eq!(id.name, "shared");
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

    fn tls_input(spec: serde_json::Value) -> VsInput {
        let mut spec = spec;
        spec["hosts"] = serde_json::json!([HOST]);
        VsInput {
            namespace: "shop".into(),
            name: "tls".into(),
            created: 0,
            hosts: vec![HOST.into()],
            spec: serde_json::from_value(spec).expect("a valid spec"),
            from_routes: false,
        }
    }

    fn subset_for(table: &TcpTable, c: &ConnectionInfo<'_>) -> Option<String> {
        match table.route(HOST, SHOP, c) {
            TcpRouted::Default => None,
            TcpRouted::Rule(_, rule) => rule.pick(&mut rand::rng()).and_then(|d| d.subset.clone()),
        }
    }

    #[test]
    fn tls_rules_route_on_the_server_name_then_tcp_rules() {
        let (table, errors) = TcpTable::build([tls_input(serde_json::json!({
            "tls": [
                { "match": [{ "sniHosts": ["a.example.com"] }],
                  "route": [{ "destination": { "host": HOST, "subset": "a" } }] },
                { "match": [{ "sniHosts": ["*.Example.org"], "port": 443 }],
                  "route": [{ "destination": { "host": HOST, "subset": "org" } }] }
            ],
            "tcp": [{ "route": [{ "destination": { "host": HOST, "subset": "rest" } }] }]
        }))]);
        assert!(errors.is_empty(), "{errors:?}");
        let labels = BTreeMap::new();
        let on = |port: u16, tls: Option<Option<&'static str>>| ConnectionInfo {
            tls,
            ..conn(port, &labels)
        };
        assert!(table.reads_sni(HOST, SHOP, &on(443, Some(None))));
        for (c, want) in [
            (on(443, Some(Some("a.example.com"))), "a"),
            (on(443, Some(Some("a.example.com."))), "a"),
            (on(443, Some(Some("A.EXAMPLE.COM"))), "a"),
            (on(443, Some(Some("api.example.org"))), "org"),
            (on(443, Some(Some("x.y.example.org"))), "org"),
            // The bare suffix is no name under it; another port, no fit.
            (on(443, Some(Some("example.org"))), "rest"),
            (on(8443, Some(Some("api.example.org"))), "rest"),
            (on(443, Some(Some("b.example.com"))), "rest"),
            // No server name in the hello; not a TLS port at all.
            (on(443, Some(None)), "rest"),
            (on(443, None), "rest"),
        ] {
            assert_eq!(subset_for(&table, &c).as_deref(), Some(want), "{:?}", c.tls);
        }
        // tls rules alone: what fits none goes to the service.
        let (table, _) = TcpTable::build([tls_input(serde_json::json!({
            "tls": [{ "match": [{ "sniHosts": ["*"] , "sourceLabels": { "app": "web" } }],
                      "route": [{ "destination": { "host": HOST, "subset": "web" } }] }]
        }))]);
        let web: BTreeMap<_, _> = [("app".to_owned(), "web".to_owned())].into();
        let c = ConnectionInfo {
            tls: Some(Some("any.example")),
            ..conn(443, &web)
        };
        assert_eq!(subset_for(&table, &c).as_deref(), Some("web"));
        let c = ConnectionInfo {
            tls: Some(Some("any.example")),
            ..conn(443, &labels)
        };
        assert_eq!(subset_for(&table, &c), None);
    }

    #[test]
    fn the_hello_is_read_only_where_a_tls_rule_could_fit() {
        let (table, errors) = TcpTable::build([tls_input(serde_json::json!({
            "tls": [{ "match": [{ "sniHosts": ["a.example.com"], "port": 443 }],
                      "route": [{ "destination": { "host": HOST, "subset": "a" } }] }],
            "tcp": [{ "route": [{ "destination": { "host": HOST } }] }]
        }))]);
        assert!(errors.is_empty(), "{errors:?}");
        let labels = BTreeMap::new();
        let on = |port: u16| ConnectionInfo {
            tls: Some(None),
            ..conn(port, &labels)
        };
        assert!(table.reads_sni(HOST, SHOP, &on(443)));
        assert!(!table.reads_sni(HOST, SHOP, &on(8443)));
        // Not in scope: another namespace's service.
        let other = Scope {
            service_namespace: "other",
            waypoint_namespace: "other",
        };
        assert!(!table.reads_sni(HOST, other, &on(443)));
    }

    #[test]
    fn a_tls_rule_without_server_names_is_refused() {
        let (table, errors) = TcpTable::build([tls_input(serde_json::json!({
            "tls": [{ "match": [{ "port": 443 }],
                      "route": [{ "destination": { "host": HOST } }] }]
        }))]);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].to_string().contains("sniHosts"), "{}", errors[0]);
        assert!(!table.reads_sni(HOST, SHOP, &conn(443, &BTreeMap::new())));
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
