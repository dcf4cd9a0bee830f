//! A Service as the proxies see it: its cluster IPs and ports, and the
//! endpoints its EndpointSlices list, with the WorkloadEntries its selector
//! picks (as istiod adds them).

use std::collections::BTreeMap;

use warren_api::{
    addr,
    config::{
        Endpoint, LoadBalancing, Service, ServicePort,
        load_balancing::{Mode, Scope},
    },
    key,
};

use super::Mesh;
use crate::model::{
    cluster::{EndpointSlice, Service as KubeService, TargetPort, TrafficDistribution},
    istio::WorkloadEntry,
};

/// The label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The Service an EndpointSlice belongs to, if it names one.
pub fn service_of(slice: &EndpointSlice) -> Option<&str> {
    slice.labels.get(SERVICE_NAME_LABEL)
}

/// `svc` with the endpoints of its `slices` and of the WorkloadEntries its
/// selector picks (`entries`, of its namespace).
pub fn service(
    mesh: &Mesh,
    svc: &KubeService,
    slices: &[&EndpointSlice],
    entries: &[&WorkloadEntry],
) -> Service {
    let name = svc.name.to_string();
    let namespace = svc.namespace.to_string();
    let vips: Vec<Vec<u8>> = svc
        .cluster_ips
        .iter()
        .map(|ip| addr::to_bytes(*ip))
        .collect();
    let is_tcp = |protocol: Option<&str>| protocol.unwrap_or("TCP") == "TCP";
    let ports: Vec<ServicePort> = svc
        .ports
        .iter()
        .filter(|p| is_tcp(p.protocol.as_deref()))
        .filter_map(|p| {
            Some(ServicePort {
                port: u32::try_from(p.port).ok()?,
                // A named target port is resolved per endpoint, from the slices.
                target_port: match &p.target_port {
                    Some(TargetPort::Number(n)) => u32::try_from(*n).unwrap_or(0),
                    Some(TargetPort::Name(_)) => 0,
                    None => u32::try_from(p.port).ok()?,
                },
                name: p.name.as_deref().unwrap_or_default().to_owned(),
                app_protocol: p.app_protocol.as_deref().unwrap_or_default().to_owned(),
            })
        })
        .collect();
    let mut endpoints = Vec::new();
    for slice in slices {
        // Service port → the port the slice says endpoints listen on, by
        // port name (the controller names slice ports after service ports).
        let slice_ports = overrides(
            &ports,
            ports.iter().filter_map(|sp| {
                let found = slice.ports.iter().find(|p| {
                    p.name.as_deref().unwrap_or_default() == sp.name
                        && is_tcp(p.protocol.as_deref())
                })?;
                Some((sp.port, u32::try_from(found.port?).ok()?))
            }),
        );
        for ep in &slice.endpoints {
            // Kubernetes: a missing `ready` is to be read as ready.
            let ready = ep.ready.unwrap_or(true);
            let workload = ep
                .pod
                .as_deref()
                .map(|pod| key::workload(&namespace, pod))
                .unwrap_or_default();
            if let Some(ip) = ep.address {
                endpoints.push(Endpoint {
                    workload,
                    address: addr::to_bytes(ip),
                    ready,
                    ports: slice_ports.clone(),
                    // A pod's labels and locality are its Workload's.
                    ..Endpoint::default()
                });
            }
        }
    }
    for entry in entries {
        // Service port → the entry's port, as istiod maps them: a named
        // `targetPort` is the entry's port of that name; otherwise the
        // entry's port named as the service port is. Neither: the target
        // port.
        let tcp = svc.ports.iter().filter(|p| is_tcp(p.protocol.as_deref()));
        let found = tcp.filter_map(|p| {
            let port = u32::try_from(p.port).ok()?;
            let name = match &p.target_port {
                Some(TargetPort::Name(target)) => Some(&**target),
                _ => p.name.as_deref(),
            };
            Some((port, *entry.spec.ports.get(name?)?))
        });
        if let Some(endpoint) = workload_entry_endpoint(&namespace, entry, overrides(&ports, found))
        {
            endpoints.push(endpoint);
        }
    }
    // Slices arrive in any order.
    settle(&mut endpoints);
    Service {
        hostname: format!("{name}.{namespace}.svc.{}", mesh.cluster_domain),
        name,
        namespace,
        vips,
        ports,
        endpoints,
        waypoint: None,
        load_balancing: load_balancing(svc),
        passthrough: false,
        dns_first_address: false,
        export_to: Vec::new(),
        vips_allocated: false,
        vip_ranges: Vec::new(),
        subject_alt_names: Vec::new(),
    }
}

/// The endpoint a WorkloadEntry of `namespace` with an IP address makes,
/// listening on `ports` where they differ from the service's. Its labels and
/// locality are its workload's; its weight travels with it.
pub(super) fn workload_entry_endpoint(
    namespace: &str,
    entry: &WorkloadEntry,
    ports: BTreeMap<u32, u32>,
) -> Option<Endpoint> {
    Some(Endpoint {
        workload: key::workload_entry(namespace, entry.metadata.name.as_deref()?),
        address: addr::to_bytes(entry.ip()?),
        // Istio counts a WorkloadEntry healthy: nothing here probes it.
        ready: true,
        ports,
        weight: entry.spec.weight.unwrap_or(0),
        ..Endpoint::default()
    })
}

/// An endpoint's ports (service port → where it listens) where they differ
/// from the service's `targetPort`: only those travel with the endpoint.
pub(super) fn overrides(
    ports: &[ServicePort],
    found: impl Iterator<Item = (u32, u32)>,
) -> BTreeMap<u32, u32> {
    found
        .filter(|(port, target)| {
            ports
                .iter()
                .find(|p| p.port == *port)
                .is_none_or(|p| p.target_port != *target)
        })
        .collect()
}

/// One endpoint per address (or name), in a stable order, so that equal
/// views encode equally (and publish no change). A pod in two EndpointSlices
/// is one endpoint (the first's ports); an address that is no pod's counts
/// once per port map and set of labels, locality and weight, so that a
/// ServiceEntry's address listed on two ports, or twice with other labels
/// (one server in two subsets, each of which finds it), is two endpoints.
pub(super) fn settle(endpoints: &mut Vec<Endpoint>) {
    type Order<'a> = (
        &'a [u8],
        &'a str,
        &'a str,
        &'a BTreeMap<u32, u32>,
        &'a BTreeMap<String, String>,
        &'a str,
        u32,
    );
    fn order(e: &Endpoint) -> Order<'_> {
        (
            &e.address,
            &e.hostname,
            &e.workload,
            &e.ports,
            &e.labels,
            &e.locality,
            e.weight,
        )
    }
    endpoints.sort_by(|a, b| order(a).cmp(&order(b)));
    endpoints.dedup_by(|a, b| {
        a.address == b.address
            && a.hostname == b.hostname
            && a.workload == b.workload
            && (!a.workload.is_empty()
                || (a.ports == b.ports
                    && a.labels == b.labels
                    && a.locality == b.locality
                    && a.weight == b.weight))
    });
}

/// How ztunnel should weigh closeness, as istiod maps a Service's fields:
/// `internalTrafficPolicy: Local` keeps to the client's node; a
/// `trafficDistribution` prefers the client's zone (`PreferClose`,
/// `PreferSameZone`) or node (`PreferSameNode`), spilling further when none
/// is ready. Istio's leading network scope is left out: Warren has one.
fn load_balancing(svc: &KubeService) -> Option<LoadBalancing> {
    let scopes = |scopes: &[Scope], mode: Mode| LoadBalancing {
        routing_preference: scopes.iter().map(|s| *s as i32).collect(),
        mode: mode as i32,
    };
    if svc.node_local {
        return Some(scopes(&[Scope::Node], Mode::Strict));
    }
    Some(match svc.traffic_distribution? {
        TrafficDistribution::PreferClose => scopes(&[Scope::Region, Scope::Zone], Mode::Failover),
        TrafficDistribution::PreferSameNode => scopes(
            &[Scope::Region, Scope::Zone, Scope::Subzone, Scope::Node],
            Mode::Failover,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(last: u8, workload: &str, ports: &[(u32, u32)]) -> Endpoint {
        Endpoint {
            workload: workload.into(),
            address: vec![10, 0, 0, last],
            ready: true,
            ports: ports.iter().copied().collect(),
            ..Endpoint::default()
        }
    }

    /// A pod listed twice (two EndpointSlices) is one endpoint; two pods
    /// sharing an address, a pod and an address that is no pod's, and an
    /// address listed on two port maps are each two.
    #[test]
    fn settle_keeps_one_endpoint_per_pod_and_per_address_and_ports() {
        let mut endpoints = vec![
            endpoint(1, "workload/ns/a", &[(80, 8080)]),
            endpoint(1, "workload/ns/a", &[]),
            endpoint(2, "workload/ns/old", &[]),
            endpoint(2, "workload/ns/new", &[]),
            endpoint(3, "", &[]),
            endpoint(3, "workload/ns/c", &[]),
            endpoint(4, "", &[(80, 8091)]),
            endpoint(4, "", &[(80, 8092)]),
            endpoint(4, "", &[(80, 8092)]),
        ];
        settle(&mut endpoints);
        let kept: Vec<(u8, &str, usize)> = endpoints
            .iter()
            .map(|e| (e.address[3], e.workload.as_str(), e.ports.len()))
            .collect();
        assert_eq!(
            kept,
            [
                (1, "workload/ns/a", 0),
                (2, "workload/ns/new", 0),
                (2, "workload/ns/old", 0),
                (3, "", 0),
                (3, "workload/ns/c", 0),
                (4, "", 1),
                (4, "", 1),
            ]
        );
    }
}
