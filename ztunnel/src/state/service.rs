//! Services: VIPs, ports, endpoints and an optional waypoint, and the choice of an endpoint.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::atomic::{AtomicUsize, Ordering},
};

use serde::Serialize;
use warren_api::{Locality, config};

use super::{
    ResourceError, Waypoint,
    cidr::{Cidr, cidrs},
};

/// Whether choosing a Service's endpoint takes the balancer's turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pick {
    /// For a connection: the next one gets the next endpoint.
    Take,
    /// For a look (`/explain`): the endpoint the next connection gets, the
    /// turn left to it. Where closeness narrows the set, picks are random
    /// either way.
    Peek,
}

#[derive(Debug, Serialize)]
pub struct Service {
    pub key: String,
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    pub vips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    pub endpoints: Vec<Endpoint>,
    pub waypoint: Option<Waypoint>,
    /// Closeness preference (`trafficDistribution`, `internalTrafficPolicy`).
    pub load_balancing: Option<LoadBalancing>,
    /// Connections go to the address dialled (a ServiceEntry resolved `NONE`).
    pub passthrough: bool,
    /// A named endpoint is reached at the first address its name resolves
    /// to (`DNS_ROUND_ROBIN`), not spread over all of them (`DNS`).
    pub dns_first_address: bool,
    /// The agent allocated the VIPs (a ServiceEntry host without addresses):
    /// they lead nowhere but here.
    pub vips_allocated: bool,
    /// The namespaces that see it (a ServiceEntry's `exportTo`); empty: all.
    pub export_to: Vec<String>,
    /// A ServiceEntry's address blocks: an address in one is the entry's
    /// where no Service has it exactly and no pod has it.
    pub vip_ranges: Vec<Cidr>,
    /// A ServiceEntry's `subjectAltNames`, which a waypoint checks an
    /// endpoint's certificate against when it starts TLS to it and the
    /// DestinationRule names none (ztunnel does not start such TLS).
    pub subject_alt_names: Vec<String>,
    /// Round-robin cursor, shared by every connection to the service.
    #[serde(skip)]
    next: AtomicUsize,
}

impl Service {
    /// Whether `ip` is one of its addresses: a VIP, or in one of its blocks.
    pub fn has_address(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.vips.contains(&ip) || self.vip_ranges.iter().any(|block| block.contains(ip))
    }

    /// Whether clients of `namespace` see it (`exportTo`: empty or `*` is
    /// every namespace, `~` none, else the namespaces named).
    pub fn visible_to(&self, namespace: &str) -> bool {
        self.export_to.is_empty() || self.export_to.iter().any(|ns| ns == "*" || ns == namespace)
    }

    /// Whether an address of it, dialled as a plain address (as a resolved
    /// endpoint name would be), could reach its traffic around its waypoint
    /// and mutual TLS: a Kubernetes Service's VIP (the node's service proxy
    /// hands it to a pod in plaintext), or any Service with a waypoint. A
    /// ServiceEntry's address is its destination itself.
    pub fn fronts_mesh(&self) -> bool {
        !warren_api::key::is_service_entry(&self.key) || self.waypoint.is_some()
    }

    /// A pod addressed directly at `ip`:`port`, as the waypoint it goes
    /// through serves it: a Service of its own with that one port and the pod
    /// as its only endpoint, so routing, pools and telemetry treat it as any
    /// other destination. Its hostname is the address dialled, and it has no
    /// name: no policy attached to a Service binds it (a VirtualService
    /// listing the address as a host would route it). The port
    /// carries what `declared` (a port of a Service in front of the pod that
    /// targets it) says; with none, opaque TCP, as a waypoint cannot know
    /// what an undeclared port speaks.
    pub fn of_pod(
        workload: &super::Workload,
        ip: IpAddr,
        port: u16,
        declared: Option<&ServicePort>,
    ) -> Service {
        let (name, app_protocol) = match declared {
            Some(p) => (p.name.clone(), p.app_protocol.clone()),
            None => ("tcp".to_owned(), String::new()),
        };
        Service {
            key: workload.key.clone(),
            name: String::new(),
            namespace: workload.namespace.clone(),
            hostname: ip.to_string(),
            vips: vec![ip],
            ports: vec![ServicePort {
                port,
                target_port: port,
                name,
                app_protocol,
            }],
            endpoints: vec![Endpoint {
                workload: Some(workload.key.clone()),
                address: Address::Ip(ip),
                ready: true,
                ports: BTreeMap::new(),
                ready_since: None,
                labels: BTreeMap::new(),
                locality: Locality::default(),
                weight: 1,
            }],
            waypoint: workload.waypoint.clone(),
            load_balancing: None,
            passthrough: false,
            dns_first_address: false,
            vips_allocated: false,
            export_to: Vec::new(),
            vip_ranges: Vec::new(),
            subject_alt_names: Vec::new(),
            next: AtomicUsize::new(0),
        }
    }

    /// The name telemetry and access lines give the service: its hostname, else its
    /// key.
    pub fn telemetry_host(&self) -> &str {
        if self.hostname.is_empty() {
            &self.key
        } else {
            &self.hostname
        }
    }
}

/// How endpoints are weighed by closeness to the client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LoadBalancing {
    /// Levels of closeness, counted in order up to the first an endpoint
    /// does not share with the client.
    pub preference: Vec<Scope>,
    /// Only endpoints sharing every level (else the closest there are).
    pub strict: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Scope {
    Region,
    Zone,
    Subzone,
    Node,
}

/// Where a client or an endpoint is, for [`LoadBalancing`].
#[derive(Clone, Copy, Debug)]
pub struct Place<'a> {
    pub locality: &'a warren_api::Locality,
    pub node: &'a str,
}

impl LoadBalancing {
    /// From the agent's message. A scope or mode this ztunnel does not
    /// know (a newer agent's) is skipped, as unset, rather than costing the
    /// whole Service.
    fn from_proto(key: &str, lb: &config::LoadBalancing) -> Self {
        use config::load_balancing::{Mode, Scope as ProtoScope};
        let preference = lb
            .routing_preference
            .iter()
            .filter_map(|s| match ProtoScope::try_from(*s) {
                Ok(ProtoScope::Region) => Some(Scope::Region),
                Ok(ProtoScope::Zone) => Some(Scope::Zone),
                Ok(ProtoScope::Subzone) => Some(Scope::Subzone),
                Ok(ProtoScope::Node) => Some(Scope::Node),
                Ok(ProtoScope::Unspecified) | Err(_) => {
                    tracing::warn!(service = key, scope = s, "unknown closeness scope skipped");
                    None
                }
            })
            .collect();
        let strict = Mode::try_from(lb.mode) == Ok(Mode::Strict);
        Self { preference, strict }
    }

    /// This node's endpoints first, then any (ztunnel's
    /// `--prefer-same-node`).
    pub fn same_node() -> Self {
        Self {
            preference: vec![Scope::Node],
            strict: false,
        }
    }

    /// How close `endpoint` is to `client` (more is closer), or `None`
    /// when a strict preference rules it out. An endpoint of unknown place
    /// shares nothing.
    pub fn closeness(&self, client: &Place<'_>, endpoint: Option<&Place<'_>>) -> Option<usize> {
        let shared = endpoint.map_or(0, |endpoint| {
            self.preference
                .iter()
                .take_while(|scope| match scope {
                    Scope::Region => client.locality.region == endpoint.locality.region,
                    Scope::Zone => client.locality.zone == endpoint.locality.zone,
                    Scope::Subzone => client.locality.subzone == endpoint.locality.subzone,
                    Scope::Node => !client.node.is_empty() && client.node == endpoint.node,
                })
                .count()
        });
        (!self.strict || shared == self.preference.len()).then_some(shared)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ServicePort {
    pub port: u16,
    /// Where endpoints listen (already `port` when the agent sent 0).
    pub target_port: u16,
    pub name: String,
    /// Kubernetes `appProtocol`, empty when not set.
    pub app_protocol: String,
}

/// What a service port carries, as Istio's protocol selection reads it:
/// `appProtocol` first, else the port name's prefix (`tcp-db`, `http2`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1, HTTP/2 or gRPC: a waypoint routes requests.
    Http,
    /// Opaque bytes (including TLS a proxy does not terminate and the
    /// database protocols Istio names): a waypoint routes connections.
    Tcp,
}

/// Which HTTP an HTTP port declares, for the version a waypoint speaks to
/// its endpoints (Istio's `IsHTTP2` and `IsHTTP`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeclaredHttp {
    /// `http`, `http_proxy`, appProtocol `kubernetes.io/ws`: HTTP/1.1
    /// upstream.
    Http1,
    /// `http2`, `grpc`, `grpc-web`, appProtocol `kubernetes.io/h2c`:
    /// HTTP/2 upstream.
    Http2,
    /// Anything else (an unnamed port): the client's version.
    #[default]
    Undeclared,
}

impl ServicePort {
    pub fn protocol(&self) -> Protocol {
        match self.declared().as_str() {
            "tcp" | "tls" | "https" | "mongo" | "mysql" | "redis" => Protocol::Tcp,
            // http, http2, grpc, grpc-web, h2c, kubernetes.io/h2c, ws, and
            // unnamed ports: served as HTTP (the server tells 1.1 from 2).
            _ => Protocol::Http,
        }
    }

    pub fn declared_http(&self) -> DeclaredHttp {
        match self.declared().as_str() {
            "http" | "http_proxy" | "kubernetes.io/ws" => DeclaredHttp::Http1,
            "http2" | "grpc" | "grpc-web" | "kubernetes.io/h2c" => DeclaredHttp::Http2,
            _ => DeclaredHttp::Undeclared,
        }
    }

    /// Whether it declares TLS a proxy passes through (`tls`, `https`):
    /// VirtualService `tls` rules route it by server name.
    pub fn carries_tls(&self) -> bool {
        matches!(self.declared().as_str(), "tls" | "https")
    }

    /// `appProtocol` first, else the port name's prefix, lower case.
    fn declared(&self) -> String {
        let declared = if self.app_protocol.is_empty() {
            self.name.split('-').next().unwrap_or_default()
        } else {
            self.app_protocol.as_str()
        };
        declared.to_ascii_lowercase()
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Endpoint {
    /// Key of the endpoint's workload; `None` for an endpoint that is no pod.
    pub workload: Option<String>,
    pub address: Address,
    pub ready: bool,
    /// Target port by service port, when it differs per endpoint.
    pub ports: BTreeMap<u16, u16>,
    /// Since when this node has known it ready (carried over from the
    /// Service's previous version): a waypoint's slow start counts from it.
    #[serde(skip)]
    pub ready_since: Option<std::time::Instant>,
    /// A ServiceEntry endpoint's own labels, for a waypoint's subsets (a
    /// pod's are its workload's).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// A ServiceEntry endpoint's own locality (a pod's is its workload's).
    #[serde(serialize_with = "super::serialize_display")]
    pub locality: Locality,
    /// Its share of a waypoint's picks relative to the others' (at least 1).
    pub weight: u32,
}

/// Where an endpoint is: an address, or a name (a ServiceEntry's with
/// `resolution: DNS`) resolved each time a connection picks the endpoint,
/// so that the answer's TTL, not the config, decides how long it holds.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(untagged)]
pub enum Address {
    Ip(IpAddr),
    Hostname(String),
}

impl Address {
    /// The address, for an endpoint known by one.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Address::Ip(ip) => Some(*ip),
            Address::Hostname(_) => None,
        }
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Ip(ip) => ip.fmt(f),
            Address::Hostname(name) => f.write_str(name),
        }
    }
}

pub(super) fn port(key: &str, field: &'static str, value: u32) -> Result<u16, ResourceError> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| ResourceError::new(key, field, format!("{value} is not a port")))
}

/// A name to resolve: letters, digits, `-`, `_` and dots, as DNS carries
/// them; anything else would only fail later, on a connection.
fn hostname(key: &str, name: &str) -> Result<String, ResourceError> {
    let valid = name.len() <= 255
        && name.trim_end_matches('.').split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if valid {
        Ok(name.to_owned())
    } else {
        Err(ResourceError::new(
            key,
            "endpoints.hostname",
            format!("{name:?} is not a DNS name"),
        ))
    }
}

pub(super) fn address(
    key: &str,
    field: &'static str,
    bytes: &[u8],
) -> Result<IpAddr, ResourceError> {
    warren_api::addr::from_bytes(bytes).ok_or_else(|| {
        ResourceError::new(
            key,
            field,
            format!("{} bytes is not an IPv4 or IPv6 address", bytes.len()),
        )
    })
}

impl Service {
    pub fn from_proto(key: &str, s: config::Service) -> Result<Service, ResourceError> {
        // Canonical, as every address looked up is: an IPv4-mapped VIP
        // (`::ffff:10.0.0.1`, which an entry may list) is the IPv4 one.
        let mut vips = Vec::with_capacity(s.vips.len());
        for v in &s.vips {
            let ip = address(key, "vips", v)?.to_canonical();
            // Both forms of one address listed: one VIP (one DNS answer).
            if !vips.contains(&ip) {
                vips.push(ip);
            }
        }
        let ports = s
            .ports
            .iter()
            .map(|p| {
                let service_port = port(key, "ports.port", p.port)?;
                let target_port = match p.target_port {
                    0 => service_port,
                    t => port(key, "ports.target_port", t)?,
                };
                Ok(ServicePort {
                    port: service_port,
                    target_port,
                    name: p.name.clone(),
                    app_protocol: p.app_protocol.clone(),
                })
            })
            .collect::<Result<Vec<_>, ResourceError>>()?;
        let endpoints = s
            .endpoints
            .iter()
            .map(|e| {
                let ports = e
                    .ports
                    .iter()
                    .map(|(sp, tp)| {
                        Ok((
                            port(key, "endpoints.ports", *sp)?,
                            port(key, "endpoints.ports", *tp)?,
                        ))
                    })
                    .collect::<Result<_, ResourceError>>()?;
                Ok(Endpoint {
                    workload: (!e.workload.is_empty()).then(|| e.workload.clone()),
                    address: if e.hostname.is_empty() {
                        Address::Ip(address(key, "endpoints.address", &e.address)?)
                    } else {
                        Address::Hostname(hostname(key, &e.hostname)?)
                    },
                    ready: e.ready,
                    ports,
                    ready_since: e.ready.then(std::time::Instant::now),
                    labels: e.labels.clone().into_iter().collect(),
                    locality: Locality::parse(&e.locality),
                    weight: e.weight.max(1),
                })
            })
            .collect::<Result<Vec<_>, ResourceError>>()?;
        let waypoint = s
            .waypoint
            .map(|w| Waypoint::from_proto(key, &s.namespace, w))
            .transpose()?;
        Ok(Service {
            key: key.to_owned(),
            name: s.name,
            namespace: s.namespace,
            hostname: s.hostname,
            vips,
            ports,
            endpoints,
            waypoint,
            load_balancing: s
                .load_balancing
                .as_ref()
                .map(|lb| LoadBalancing::from_proto(key, lb)),
            passthrough: s.passthrough,
            dns_first_address: s.dns_first_address,
            vips_allocated: s.vips_allocated,
            export_to: s.export_to,
            vip_ranges: cidrs(key, "vip_ranges", &s.vip_ranges)?,
            subject_alt_names: s.subject_alt_names,
            next: AtomicUsize::new(0),
        })
    }

    pub fn port(&self, port: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == port)
    }

    /// The next ready endpoint for which `usable` holds, round robin among
    /// the closest: `closeness` ranks an endpoint (more is closer) or rules
    /// it out (`None`). [`Pick::Peek`] leaves the turn to the next connection.
    pub fn pick(
        &self,
        usable: impl Fn(&Endpoint) -> bool,
        closeness: impl Fn(&Endpoint) -> Option<usize>,
        pick: Pick,
    ) -> Option<&Endpoint> {
        // Two passes and no allocation: this runs for every outbound
        // connection to a Service.
        let candidates = || {
            self.endpoints
                .iter()
                .filter(|e| e.ready && usable(e))
                .filter_map(|e| Some((closeness(e)?, e)))
        };
        let (mut best, mut closest, mut all) = (0, 0, 0);
        for (rank, _) in candidates() {
            all += 1;
            if rank > best || closest == 0 {
                (best, closest) = (rank, 1);
            } else if rank == best {
                closest += 1;
            }
        }
        if closest == 0 {
            return None;
        }
        // One cursor serves every client; when closeness narrows the set
        // differently per client, turns would line up with set sizes and
        // pin a client to one endpoint, so those picks are random (as
        // Istio's ztunnel picks).
        let n = if closest == all {
            match pick {
                Pick::Take => self.next.fetch_add(1, Ordering::Relaxed),
                Pick::Peek => self.next.load(Ordering::Relaxed),
            }
        } else {
            rand::random_range(0..closest)
        };
        candidates()
            .filter(|(rank, _)| *rank == best)
            .nth(n % closest)
            .map(|(_, e)| e)
    }

    /// The port an endpoint listens on for `service_port`.
    pub fn target_port(endpoint: &Endpoint, port: &ServicePort) -> u16 {
        endpoint
            .ports
            .get(&port.port)
            .copied()
            .unwrap_or(port.target_port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv4_mapped_vip_is_its_ipv4_address() {
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("address");
        let v4: IpAddr = "10.0.0.1".parse().expect("address");
        let service = Service::from_proto(
            "service/egress/partner",
            config::Service {
                vips: vec![
                    warren_api::addr::to_bytes(mapped),
                    warren_api::addr::to_bytes(v4),
                ],
                ..Default::default()
            },
        )
        .expect("valid");
        assert_eq!(service.vips, [v4]);
        assert!(service.has_address(v4) && service.has_address(mapped));
    }

    fn port(name: &str, app_protocol: &str) -> ServicePort {
        ServicePort {
            port: 80,
            target_port: 80,
            name: name.into(),
            app_protocol: app_protocol.into(),
        }
    }

    #[test]
    fn protocol_from_app_protocol_then_port_name() {
        assert_eq!(port("tcp", "").protocol(), Protocol::Tcp);
        assert_eq!(port("tcp-db", "").protocol(), Protocol::Tcp);
        assert_eq!(port("mysql", "").protocol(), Protocol::Tcp);
        assert_eq!(port("http", "").protocol(), Protocol::Http);
        assert_eq!(port("grpc-api", "").protocol(), Protocol::Http);
        assert_eq!(port("", "").protocol(), Protocol::Http);
        // appProtocol wins over the name.
        assert_eq!(port("http", "TCP").protocol(), Protocol::Tcp);
        assert_eq!(port("tcp", "kubernetes.io/h2c").protocol(), Protocol::Http);
    }

    #[test]
    fn declared_http_version() {
        assert_eq!(port("http-web", "").declared_http(), DeclaredHttp::Http1);
        assert_eq!(port("HTTP", "").declared_http(), DeclaredHttp::Http1);
        assert_eq!(port("grpc", "").declared_http(), DeclaredHttp::Http2);
        assert_eq!(port("http2-api", "").declared_http(), DeclaredHttp::Http2);
        assert_eq!(
            port("web", "kubernetes.io/h2c").declared_http(),
            DeclaredHttp::Http2
        );
        assert_eq!(
            port("http", "grpc-web").declared_http(),
            DeclaredHttp::Http2
        );
        assert_eq!(
            port("ws", "kubernetes.io/ws").declared_http(),
            DeclaredHttp::Http1
        );
        assert_eq!(port("h2c", "").declared_http(), DeclaredHttp::Undeclared);
        assert_eq!(port("", "").declared_http(), DeclaredHttp::Undeclared);
        assert_eq!(port("web", "").declared_http(), DeclaredHttp::Undeclared);
    }

    fn prefer_close() -> LoadBalancing {
        LoadBalancing {
            preference: vec![Scope::Region, Scope::Zone],
            strict: false,
        }
    }

    #[test]
    fn closeness_counts_shared_levels_in_order() {
        let here = warren_api::Locality::parse("r1/z1/s1");
        let client = Place {
            locality: &here,
            node: "n1",
        };
        let at = |text: &str, node: &'static str| (warren_api::Locality::parse(text), node);
        let rank = |lb: &LoadBalancing, (locality, node): &(warren_api::Locality, &str)| {
            lb.closeness(&client, Some(&Place { locality, node }))
        };
        let close = prefer_close();
        assert_eq!(rank(&close, &at("r1/z1/s9", "n2")), Some(2));
        assert_eq!(rank(&close, &at("r1/z2", "n1")), Some(1));
        // A zone of the same name in another region is not close.
        assert_eq!(rank(&close, &at("r2/z1", "n2")), Some(0));
        assert_eq!(close.closeness(&client, None), Some(0));
        let same_node = LoadBalancing {
            preference: vec![Scope::Region, Scope::Zone, Scope::Subzone, Scope::Node],
            strict: false,
        };
        assert_eq!(rank(&same_node, &at("r1/z1/s1", "n1")), Some(4));
        assert_eq!(rank(&same_node, &at("r1/z1/s1", "n2")), Some(3));
        let node_local = LoadBalancing {
            preference: vec![Scope::Node],
            strict: true,
        };
        assert_eq!(rank(&node_local, &at("r9", "n1")), Some(1));
        assert_eq!(rank(&node_local, &at("r1/z1/s1", "n2")), None);
        assert_eq!(node_local.closeness(&client, None), None);
    }

    #[test]
    fn pick_takes_the_closest_ready_endpoints_round_robin() {
        let endpoint = |last: u8, ready: bool| Endpoint {
            workload: Some(format!("w{last}")),
            address: Address::Ip(IpAddr::from([10, 0, 0, last])),
            ready,
            ports: BTreeMap::new(),
            ready_since: None,
            labels: BTreeMap::new(),
            locality: Locality::default(),
            weight: 1,
        };
        let service = Service {
            key: "svc".into(),
            name: "svc".into(),
            namespace: "ns".into(),
            hostname: "svc.ns.svc.cluster.local".into(),
            vips: Vec::new(),
            ports: Vec::new(),
            // 1 and 2 are close, 3 is far, 4 close but not ready.
            endpoints: vec![
                endpoint(1, true),
                endpoint(2, true),
                endpoint(3, true),
                endpoint(4, false),
            ],
            waypoint: None,
            load_balancing: None,
            passthrough: false,
            dns_first_address: false,
            vips_allocated: false,
            export_to: Vec::new(),
            vip_ranges: Vec::new(),
            subject_alt_names: Vec::new(),
            next: AtomicUsize::new(0),
        };
        let closeness = |far: u8| {
            move |e: &Endpoint| match e.address {
                Address::Ip(IpAddr::V4(a)) if a.octets()[3] == far => Some(0),
                _ => Some(2),
            }
        };
        let last = |e: &Endpoint| match e.address {
            Address::Ip(IpAddr::V4(a)) => a.octets()[3],
            _ => 0,
        };
        // Narrowed to the closest: at random among them (a shared cursor
        // would line up with other clients' turns).
        let picked: BTreeMap<u8, usize> = (0..400)
            .filter_map(|_| service.pick(|_| true, closeness(3), Pick::Take))
            .fold(BTreeMap::new(), |mut seen, e| {
                *seen.entry(last(e)).or_default() += 1;
                seen
            });
        assert_eq!(picked.keys().copied().collect::<Vec<_>>(), vec![1, 2]);
        assert!(picked.values().all(|n| *n > 100), "{picked:?}");
        // Everyone equally close: round robin.
        let even: Vec<u8> = (0..3)
            .filter_map(|_| service.pick(|_| true, |_| Some(0), Pick::Take))
            .map(last)
            .collect();
        let mut sorted = even.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, vec![1, 2, 3], "each ready endpoint once: {even:?}");
        // A look leaves the turn to the next connection.
        let all_close = |_: &Endpoint| Some(0);
        let peeked = service.pick(|_| true, all_close, Pick::Peek).map(last);
        assert_eq!(
            service.pick(|_| true, all_close, Pick::Peek).map(last),
            peeked
        );
        assert_eq!(
            service.pick(|_| true, all_close, Pick::Take).map(last),
            peeked
        );
        assert_ne!(
            service.pick(|_| true, all_close, Pick::Peek).map(last),
            peeked
        );
        // The close ones unusable: the far one.
        let third = Address::Ip(IpAddr::from([10, 0, 0, 3]));
        let far = service.pick(|e| e.address == third, closeness(3), Pick::Take);
        assert_eq!(far.map(|e| &e.address), Some(&third));
        // Every endpoint ruled out: none.
        assert!(service.pick(|_| true, |_| None, Pick::Take).is_none());
    }
}
