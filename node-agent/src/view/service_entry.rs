//! A ServiceEntry as ztunnel sees it: one Service per host, as Istio's
//! workload API publishes them, so that its addresses resolve like a
//! Service's cluster IPs (and count as registered under `REGISTRY_ONLY`).
//!
//! - `addresses` are the VIPs: single IPs (a CIDR of one address counts as
//!   that address), and blocks (wider CIDRs), which ztunnel matches by
//!   prefix for an address no Service has exactly. Without any address, each
//!   host has the address [`super::auto_vip`] allocated it, which ztunnel's
//!   DNS proxy answers.
//! - With a `workloadSelector` (any resolution but `NONE`): the namespace's
//!   running pods and WorkloadEntries it selects, each reached as its
//!   workload says (a WorkloadEntry with an IP address is a workload; one
//!   with a name is an endpoint by name for `DNS` and `DNS_ROUND_ROBIN`
//!   entries, and left out of `STATIC` ones).
//! - `resolution: STATIC`: the endpoints with an IP address (names and
//!   `unix://` paths are left out).
//! - `DNS` and `DNS_ROUND_ROBIN`: the endpoints, by address or by name, or
//!   without endpoints the host itself; ztunnel resolves a name when a
//!   connection picks it, and goes to one of its addresses (`DNS`) or the
//!   first (`DNS_ROUND_ROBIN`). Hosts resolving themselves cannot share the
//!   entry's addresses at L4: the first host keeps them.
//! - `resolution: NONE` (the default): no endpoints; connections go to the
//!   address the client dialled.
//!
//! An entry never takes over a Kubernetes Service's address or hostname, nor
//! a pod's address (ztunnel's precedence), and one without a port leaves the
//! address's other ports to the rest of the registry.
//!
//! `exportTo` says which namespaces' clients see the entry (ztunnel and the
//! waypoint leave it out for the others).
//!
//! An entry labelled `istio.io/use-waypoint` (or in a namespace so labelled)
//! sends its hosts' traffic through that waypoint, which the caller sets
//! ([`super::waypoint::of_entry`]).
//!
//! Two entries of a namespace naming the same host: the first by name
//! publishes it (Istio merges them; Warren keeps one, predictably).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use warren_api::{
    Identity, addr,
    config::{Cidr, Endpoint, Service, ServicePort},
    key,
};

use super::service::{overrides, settle, workload_entry_endpoint};
use crate::model::{
    cluster::{Pod, PodPhase},
    istio::{Resolution, ServiceEntry, WorkloadEntry, WorkloadEntrySpec},
};

/// The Services `entry` (of `namespace`) publishes, one per host, given the
/// pods and WorkloadEntries of its namespace (for a `workloadSelector`), the
/// mesh's trust domains (its own first, then its aliases: the names of the
/// endpoints' identities) and the addresses allocated to hosts without any.
/// Their keys are [`key::service_entry`].
pub fn services(
    namespace: &str,
    entry: &ServiceEntry,
    pods: &[&Pod],
    workload_entries: &[&WorkloadEntry],
    trust_domains: &[&str],
    auto_vip: impl Fn(&str) -> Vec<IpAddr>,
) -> Vec<Service> {
    let spec = &entry.spec;
    // A block of one address is a VIP; a wider one stays a block.
    let (vips, vip_ranges): (Vec<Cidr>, Vec<Cidr>) = spec
        .addresses
        .iter()
        .filter_map(|a| block(a))
        .partition(|c| c.prefix_len as usize == c.address.len() * 8);
    let vips: Vec<Vec<u8>> = vips.into_iter().map(|c| c.address).collect();
    // Istio allocates addresses only to entries that give none.
    let allocate = spec.addresses.is_empty();
    let ports: Vec<ServicePort> = spec
        .ports
        .iter()
        .map(|p| ServicePort {
            port: p.number,
            target_port: p.target_port.unwrap_or(p.number),
            name: p.name.clone(),
            app_protocol: p.protocol.to_ascii_lowercase(),
        })
        .collect();
    let resolution = spec.resolution.unwrap_or(Resolution::None);
    // `.` is the entry's own namespace; `*`, `~` and names stay.
    let export_to: Vec<String> = spec
        .export_to
        .iter()
        .map(|ns| if ns == "." { namespace } else { ns.as_str() }.to_owned())
        .collect();
    let by_name = matches!(resolution, Resolution::Dns | Resolution::DnsRoundRobin);
    // What the `workloadSelector` picks: running pods, and WorkloadEntries.
    let (selected_pods, selected_entries): (Vec<&Pod>, Vec<&WorkloadEntry>) =
        match &spec.workload_selector {
            Some(selector) => (
                pods.iter()
                    .filter(|pod| !pod.finished() && pod.labels.matches(&selector.labels))
                    .copied()
                    .collect(),
                workload_entries
                    .iter()
                    .filter(|e| e.labels().matches(&selector.labels))
                    .copied()
                    .collect(),
            ),
            None => (Vec::new(), Vec::new()),
        };
    // Endpoints shared by every host: selected workloads, or listed
    // endpoints (`None`: each host resolves itself).
    let mut shared = match (resolution, &spec.workload_selector) {
        (Resolution::None, _) => Some(Vec::new()),
        (_, Some(_)) => {
            let pods = selected_pods.iter().filter_map(|pod| {
                Some(Endpoint {
                    workload: key::workload(namespace, &pod.name),
                    address: addr::to_bytes(pod.addresses().first().copied()?),
                    ready: pod.phase == Some(PodPhase::Running),
                    ..Endpoint::default()
                })
            });
            // An entry with an address is its workload; one with a name is
            // resolved as a listed endpoint's name would be.
            let entries = selected_entries.iter().filter_map(|e| match e.ip() {
                Some(_) => workload_entry_endpoint(namespace, e, by_port_name(&ports, &e.spec)),
                None => listed(&e.spec, e.labels().to_map(), &ports, by_name),
            });
            Some(pods.chain(entries).collect())
        }
        (_, None) if by_name && spec.endpoints.is_empty() => None,
        (_, None) => Some(
            spec.endpoints
                .iter()
                .filter_map(|e| listed(e, e.labels.clone(), &ports, by_name))
                .collect(),
        ),
    };
    if let Some(endpoints) = &mut shared {
        settle(endpoints);
    }
    // Istio's names for the entry's endpoints: its `subjectAltNames`, then
    // the identities of its endpoints' service accounts (a listed
    // endpoint's, a selected pod's, a selected WorkloadEntry's given one),
    // in each of `trust_domains`, once each.
    let accounts: BTreeSet<&str> = spec
        .endpoints
        .iter()
        .map(|e| e.service_account.as_str())
        .chain(selected_pods.iter().map(|pod| pod.service_account()))
        .chain(
            selected_entries
                .iter()
                .map(|e| e.spec.service_account.as_str()),
        )
        .filter(|account| !account.is_empty())
        .collect();
    let identities: BTreeSet<String> = trust_domains
        .iter()
        .flat_map(|domain| {
            accounts
                .iter()
                .map(move |account| Identity::new(domain, namespace, account).to_string())
        })
        .collect();
    let mut subject_alt_names = spec.subject_alt_names.clone();
    for name in identities {
        if !subject_alt_names.contains(&name) {
            subject_alt_names.push(name);
        }
    }
    spec.hosts
        .iter()
        .enumerate()
        .map(|(i, host)| Service {
            name: host.clone(),
            namespace: namespace.to_owned(),
            hostname: host.clone(),
            // Hosts that each resolve themselves cannot share addresses at
            // L4 (Envoy tells them apart by Host or SNI; ztunnel and the
            // waypoint pick a Service by address): the first keeps them,
            // the others get none (give each its own entry).
            vips_allocated: allocate,
            vips: if allocate {
                auto_vip(host).into_iter().map(addr::to_bytes).collect()
            } else if shared.is_none() && i > 0 {
                Vec::new()
            } else {
                vips.clone()
            },
            // Blocks are only with `NONE` and `STATIC` resolution, where the
            // hosts share the endpoints: every host has them.
            vip_ranges: vip_ranges.clone(),
            ports: ports.clone(),
            endpoints: shared.clone().unwrap_or_else(|| {
                vec![Endpoint {
                    hostname: host.clone(),
                    ready: true,
                    ..Endpoint::default()
                }]
            }),
            waypoint: None,
            load_balancing: None,
            passthrough: resolution == Resolution::None,
            dns_first_address: resolution == Resolution::DnsRoundRobin,
            export_to: export_to.clone(),
            subject_alt_names: subject_alt_names.clone(),
        })
        .collect()
}

/// The endpoint a listed entry (a ServiceEntry's `endpoints[]` item, or a
/// selected WorkloadEntry without an IP) makes with `labels`: its IP, or its
/// name where the entry resolves names (`by_name`); none on another network
/// (no address) or for a `unix://` path (no TCP destination).
fn listed(
    spec: &WorkloadEntrySpec,
    labels: BTreeMap<String, String>,
    ports: &[ServicePort],
    by_name: bool,
) -> Option<Endpoint> {
    let address = spec.address.as_str();
    let (address, hostname) = match address.parse::<IpAddr>() {
        Ok(ip) => (addr::to_bytes(ip), String::new()),
        Err(_) if by_name && !address.is_empty() && !address.starts_with("unix://") => {
            (Vec::new(), address.to_owned())
        }
        Err(_) => return None,
    };
    Some(Endpoint {
        address,
        hostname,
        ready: true,
        labels: labels.into_iter().collect(),
        locality: spec.locality.clone(),
        weight: spec.weight.unwrap_or(0),
        ports: by_port_name(ports, spec),
        ..Endpoint::default()
    })
}

/// Service port → the entry's port of the same name, where it differs.
fn by_port_name(ports: &[ServicePort], spec: &WorkloadEntrySpec) -> BTreeMap<u32, u32> {
    overrides(
        ports,
        ports
            .iter()
            .filter_map(|p| Some((p.port, *spec.ports.get(&p.name)?))),
    )
}

/// An address or a CIDR, as a block (an address is a block of one).
fn block(text: &str) -> Option<Cidr> {
    let (ip, bits) = match text.split_once('/') {
        Some((ip, bits)) => (ip, Some(bits)),
        None => (text, None),
    };
    let ip: IpAddr = ip.parse().ok()?;
    let full = if ip.is_ipv4() { 32 } else { 128 };
    let prefix_len = match bits {
        Some(bits) => bits.parse().ok().filter(|b| *b <= full)?,
        None => full,
    };
    Some(Cidr {
        address: addr::to_bytes(ip),
        prefix_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cidr_of_one_address_is_a_vip_and_a_wider_one_a_block() {
        let one = |ip: &str| {
            let ip: IpAddr = ip.parse().expect("an address");
            Some(Cidr {
                address: addr::to_bytes(ip),
                prefix_len: if ip.is_ipv4() { 32 } else { 128 },
            })
        };
        assert_eq!(block("10.9.0.1"), one("10.9.0.1"));
        assert_eq!(block("10.9.0.1/32"), one("10.9.0.1"));
        assert_eq!(block("fd00::1/128"), one("fd00::1"));
        assert_eq!(block("api.example.com"), None);
        assert_eq!(block("10.9.0.0/33"), None);
        assert_eq!(
            block("10.9.0.0/24"),
            Some(Cidr {
                address: vec![10, 9, 0, 0],
                prefix_len: 24
            })
        );
        assert_eq!(block("fd00::/8").map(|c| c.prefix_len), Some(8));
    }
}
