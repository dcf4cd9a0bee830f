//! A pod as the proxies see it: addresses, identity, node, whether it is in
//! the mesh, and the policies that apply to it.

use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::api::core::v1::Pod;
use warren_api::{
    addr,
    config::{InboundMode, TunnelProtocol, Workload},
};
use warren_ebpf_common::Mode;

use super::Mesh;
use crate::{
    enrollment::{self, inbound_mode},
    model::gateway::GATEWAY_NAME_LABEL,
    store::Store,
};

/// Labels naming the app and its version, most specific first (Istio's
/// canonical-service rules).
const NAME_LABELS: &[&str] = &[
    "service.istio.io/canonical-name",
    "app.kubernetes.io/name",
    "app",
];
const REVISION_LABELS: &[&str] = &[
    "service.istio.io/canonical-revision",
    "app.kubernetes.io/version",
    "version",
];

/// The pod's addresses: `status.podIPs`, else `status.podIP`.
pub fn pod_addresses(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    let mut ips: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    if ips.is_empty()
        && let Some(ip) = status.pod_ip.as_deref().and_then(|ip| ip.parse().ok())
    {
        ips.push(ip);
    }
    ips
}

/// The workload of `pod`, or `None` while it has no address (nothing can
/// reach it yet).
pub fn workload(
    mesh: &Mesh,
    store: &Store,
    pod: &Pod,
    netns_cookie: Option<u64>,
    authorization_policies: Vec<String>,
) -> Option<Workload> {
    let addresses = pod_addresses(pod);
    if addresses.is_empty() {
        return None;
    }
    let name = pod.metadata.name.clone().unwrap_or_default();
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let spec = pod.spec.as_ref();
    let node = spec.and_then(|s| s.node_name.clone()).unwrap_or_default();
    let labels: BTreeMap<String, String> = pod.metadata.labels.clone().unwrap_or_default();
    let pick = |candidates: &[&str]| candidates.iter().find_map(|l| labels.get(*l).cloned());
    let node_address = pod
        .status
        .as_ref()
        .and_then(|s| s.host_ip.as_deref())
        .and_then(|ip| ip.parse::<IpAddr>().ok())
        .or_else(|| {
            (node == mesh.node)
                .then(|| mesh.node_addresses.first().copied())
                .flatten()
        })
        .map(addr::to_bytes)
        .unwrap_or_default();
    let in_mesh =
        enrollment::is_enrolled_namespace(store, &namespace) && !enrollment::pod_opts_out(pod);
    let (mode, ports) = inbound_mode(store, &mesh.root_namespace, &namespace, pod);
    let proto_mode = |m: Mode| match m {
        Mode::Strict => InboundMode::Strict,
        _ => InboundMode::Permissive,
    };
    Some(Workload {
        uid: format!("{namespace}/{name}"),
        service_account: spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        node,
        addresses: addresses.into_iter().map(addr::to_bytes).collect(),
        node_address,
        protocol: if in_mesh {
            TunnelProtocol::Hbone
        } else {
            TunnelProtocol::None
        } as i32,
        trust_domain: mesh.trust_domain.clone(),
        canonical_name: pick(NAME_LABELS).unwrap_or_else(|| name.clone()),
        canonical_revision: pick(REVISION_LABELS).unwrap_or_else(|| "latest".into()),
        workload_name: owner_name(pod).unwrap_or_else(|| name.clone()),
        is_waypoint: labels.contains_key(GATEWAY_NAME_LABEL),
        labels,
        authorization_policies,
        inbound_mode: proto_mode(mode) as i32,
        port_modes: ports
            .into_iter()
            .map(|(p, m)| (u32::from(p), proto_mode(m) as i32))
            .collect(),
        netns_cookie: netns_cookie.unwrap_or_default(),
        name,
        namespace,
    })
}

/// The pod's workload name for telemetry: its Deployment's name when the
/// owner is a ReplicaSet (`<deployment>-<hash>`), else the owner's name.
fn owner_name(pod: &Pod) -> Option<String> {
    let owner = pod.metadata.owner_references.as_ref()?.first()?;
    if owner.kind == "ReplicaSet"
        && let Some((deployment, _hash)) = owner.name.rsplit_once('-')
    {
        return Some(deployment.to_owned());
    }
    Some(owner.name.clone())
}
