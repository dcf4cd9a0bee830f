//! A Service as the proxies see it: its cluster IPs and ports, and the
//! endpoints its EndpointSlices list.

use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::{
    api::{core::v1::Service as KubeService, discovery::v1::EndpointSlice},
    apimachinery::pkg::util::intstr::IntOrString,
};
use warren_api::{
    addr,
    config::{Endpoint, Service, ServicePort},
    key,
};

use super::Mesh;

/// The label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The Service an EndpointSlice belongs to, if it names one.
pub fn service_of(slice: &EndpointSlice) -> Option<&str> {
    slice
        .metadata
        .labels
        .as_ref()?
        .get(SERVICE_NAME_LABEL)
        .map(String::as_str)
}

pub fn service(mesh: &Mesh, svc: &KubeService, slices: &[&EndpointSlice]) -> Service {
    let name = svc.metadata.name.clone().unwrap_or_default();
    let namespace = svc
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let spec = svc.spec.clone().unwrap_or_default();
    let vips: Vec<Vec<u8>> = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .map(addr::to_bytes)
        .fold(Vec::new(), |mut all, ip| {
            if !all.contains(&ip) {
                all.push(ip);
            }
            all
        });
    let ports: Vec<ServicePort> = spec
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| {
            Some(ServicePort {
                port: u32::try_from(p.port).ok()?,
                // A named target port is resolved per endpoint, from the slices.
                target_port: match &p.target_port {
                    Some(IntOrString::Int(n)) => u32::try_from(*n).unwrap_or(0),
                    Some(IntOrString::String(_)) => 0,
                    None => u32::try_from(p.port).ok()?,
                },
                name: p.name.clone().unwrap_or_default(),
                app_protocol: p.app_protocol.clone().unwrap_or_default(),
            })
        })
        .collect();
    let mut endpoints = Vec::new();
    for slice in slices {
        // Service port → the port the slice says endpoints listen on, by
        // port name (the controller names slice ports after service ports).
        let slice_ports: BTreeMap<u32, u32> = ports
            .iter()
            .filter_map(|sp| {
                let found = slice.ports.iter().flatten().find(|p| {
                    p.name.as_deref().unwrap_or_default() == sp.name
                        && p.protocol.as_deref().unwrap_or("TCP") == "TCP"
                })?;
                Some((sp.port, u32::try_from(found.port?).ok()?))
            })
            .filter(|(sp, target)| {
                ports
                    .iter()
                    .find(|p| p.port == *sp)
                    .is_none_or(|p| p.target_port != *target)
            })
            .collect();
        for ep in &slice.endpoints {
            let ready = ep
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                // Kubernetes: a missing `ready` is to be read as ready.
                .unwrap_or(true);
            let workload = ep
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.name.as_deref())
                .map(|pod| key::workload(&namespace, pod))
                .unwrap_or_default();
            for ip in ep.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
                endpoints.push(Endpoint {
                    workload: workload.clone(),
                    address: addr::to_bytes(ip),
                    ready,
                    ports: slice_ports.clone(),
                });
            }
        }
    }
    // Slices arrive in any order; a stable order keeps equal views equal.
    endpoints.sort_by(|a, b| (&a.address, &a.workload).cmp(&(&b.address, &b.workload)));
    endpoints.dedup_by(|a, b| a.address == b.address);
    Service {
        hostname: format!("{name}.{namespace}.svc.{}", mesh.cluster_domain),
        name,
        namespace,
        vips,
        ports,
        endpoints,
        waypoint: None,
    }
}
