//! A pod as the proxies see it: addresses, identity, node, whether it is in
//! the mesh, and the policies that apply to it.

use std::collections::BTreeMap;

use warren_api::{
    Locality, addr,
    config::{InboundMode, TunnelProtocol, Workload},
    locality::POD_LOCALITY_LABEL,
};
use warren_ebpf_common::Mode;

use super::{Mesh, waypoint};
use crate::{
    enrollment::{self, PodNetns, inbound_mode},
    model::{
        Kind, Labels, Object, ObjectKey, cluster::Pod, gateway::GATEWAY_NAME_LABEL,
        istio::WorkloadEntry,
    },
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

/// The workload of `pod`, or `None` while it has no address (nothing can
/// reach it yet). A pod this node captured as its sandbox was built has the
/// addresses the runtime reported: fresher than its status, which kubelet
/// writes only after the CNI plugins ran.
pub fn workload(
    mesh: &Mesh,
    store: &Store,
    pod: &Pod,
    netns: Option<&PodNetns>,
    authorization_policies: Vec<String>,
    waypoints: &BTreeMap<String, waypoint::Waypoints>,
) -> Option<Workload> {
    let addresses = match netns {
        Some(netns) if !netns.addresses.is_empty() => netns.addresses.clone(),
        _ => pod.addresses(),
    };
    if addresses.is_empty() {
        return None;
    }
    let name = pod.name.to_string();
    let namespace = pod.namespace.to_string();
    let node = pod.node_name.as_deref().unwrap_or_default().to_owned();
    let labels = &pod.labels;
    let node_address = pod
        .host_ip
        .or_else(|| {
            (node == mesh.node)
                .then(|| mesh.node_addresses.first().copied())
                .flatten()
        })
        .map(addr::to_bytes)
        .unwrap_or_default();
    let in_mesh =
        enrollment::is_enrolled_namespace(store, &namespace) && !enrollment::pod_outside_mesh(pod);
    let is_waypoint = labels.contains_key(GATEWAY_NAME_LABEL);
    // Only a pod of the mesh can be reached through a waypoint (its node's
    // ztunnel captures the clients), and a waypoint's own pod never is.
    let waypoint = (in_mesh && !is_waypoint)
        .then(|| waypoint::of_pod(store, waypoints, pod))
        .flatten();
    let (mode, ports) = inbound_mode(store, &mesh.root_namespace, &namespace, pod);
    let proto_mode = |m: Mode| match m {
        Mode::Strict => InboundMode::Strict,
        _ => InboundMode::Permissive,
    };
    Some(Workload {
        uid: format!("{namespace}/{name}"),
        service_account: pod.service_account().to_owned(),
        node,
        addresses: addresses.into_iter().map(addr::to_bytes).collect(),
        node_address,
        protocol: protocol(in_mesh),
        trust_domain: mesh.trust_domain.clone(),
        canonical_name: canonical(labels, NAME_LABELS).unwrap_or_else(|| name.clone()),
        canonical_revision: canonical(labels, REVISION_LABELS).unwrap_or_else(|| "latest".into()),
        workload_name: owner_name(pod).unwrap_or_else(|| name.clone()),
        is_waypoint,
        labels: labels.to_map(),
        authorization_policies,
        inbound_mode: proto_mode(mode) as i32,
        port_modes: ports
            .into_iter()
            .map(|(p, m)| (u32::from(p), proto_mode(m) as i32))
            .collect(),
        locality: locality(store, pod).to_string(),
        netns_cookie: netns.map_or(0, |n| n.cookie),
        // Only for pods enrolled here: ztunnel opens connections from the pod in it.
        netns: netns
            .map(|n| n.path.display().to_string())
            .unwrap_or_default(),
        waypoint,
        // A bad annotation was refused with the pod; none are excluded then.
        excluded_ports: pod
            .excluded_ports()
            .unwrap_or_default()
            .into_iter()
            .map(u32::from)
            .collect(),
        name,
        namespace,
    })
}

/// The workload of a WorkloadEntry (a VM, a server outside Kubernetes), or
/// `None` while it has no IP address here (a DNS name, which only a
/// DNS-resolved ServiceEntry selecting it reaches, or another network's).
/// It runs on no node of the mesh: ztunnel reaches it in plain TCP, or over
/// HBONE to its own address when it speaks HBONE itself
/// ([`WorkloadEntry::speaks_hbone`]). No ztunnel here serves its inbound
/// side, so PeerAuthentication and its L4 policies are its own proxy's to
/// enforce; the policies are listed all the same, for dumps.
pub fn workload_entry(
    mesh: &Mesh,
    store: &Store,
    entry: &WorkloadEntry,
    authorization_policies: Vec<String>,
    waypoints: &BTreeMap<String, waypoint::Waypoints>,
) -> Option<Workload> {
    let address = entry.ip()?;
    let name = entry.metadata.name.clone().unwrap_or_default();
    let namespace = entry
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let labels = entry.labels();
    let hbone = entry.speaks_hbone();
    // As for pods: only a workload in the mesh is reached through a
    // waypoint for its own address.
    let waypoint = hbone
        .then(|| waypoint::of_workload(store, waypoints, &namespace, &name, &labels))
        .flatten();
    Some(Workload {
        uid: format!("{namespace}/workloadentry:{name}"),
        // As for a pod, and as Istio's ztunnel reads an entry without one.
        service_account: if entry.spec.service_account.is_empty() {
            "default".to_owned()
        } else {
            entry.spec.service_account.clone()
        },
        node: String::new(),
        addresses: vec![addr::to_bytes(address)],
        // Its own HBONE port takes the tunnel, on its address.
        node_address: if hbone {
            addr::to_bytes(address)
        } else {
            Vec::new()
        },
        protocol: protocol(hbone),
        trust_domain: mesh.trust_domain.clone(),
        canonical_name: canonical(&labels, NAME_LABELS).unwrap_or_else(|| name.clone()),
        canonical_revision: canonical(&labels, REVISION_LABELS).unwrap_or_else(|| "latest".into()),
        workload_name: name.clone(),
        is_waypoint: false,
        labels: labels.to_map(),
        authorization_policies,
        inbound_mode: InboundMode::Permissive as i32,
        port_modes: BTreeMap::new(),
        locality: Locality::parse(&entry.spec.locality).to_string(),
        netns_cookie: 0,
        netns: String::new(),
        waypoint,
        excluded_ports: Vec::new(),
        name,
        namespace,
    })
}

/// The first of `candidates` (most specific first) that `labels` give.
fn canonical(labels: &Labels, candidates: &[&str]) -> Option<String> {
    candidates
        .iter()
        .find_map(|l| labels.get(l))
        .map(str::to_owned)
}

/// HBONE in the mesh, plain TCP outside it.
fn protocol(in_mesh: bool) -> i32 {
    if in_mesh {
        TunnelProtocol::Hbone as i32
    } else {
        TunnelProtocol::None as i32
    }
}

/// Where the pod runs: its own `istio-locality` label, else its node's
/// topology labels (Istio's order).
fn locality(store: &Store, pod: &Pod) -> Locality {
    if let Some(label) = pod.labels.get(POD_LOCALITY_LABEL) {
        return Locality::from_pod_label(label);
    }
    let Some(node) = pod.node_name.as_deref() else {
        return Locality::default();
    };
    match store.get(&ObjectKey::new(Kind::Node, None, node)) {
        Some(Object::Node(node)) => node.locality.clone(),
        _ => Locality::default(),
    }
}

/// The pod's workload name for telemetry: its Deployment's name when the
/// owner is a ReplicaSet (`<deployment>-<hash>`), else the owner's name.
fn owner_name(pod: &Pod) -> Option<String> {
    let owner = pod.owner.as_ref()?;
    if owner.kind() == "ReplicaSet"
        && let Some((deployment, _hash)) = owner.name().rsplit_once('-')
    {
        return Some(deployment.to_owned());
    }
    Some(owner.name().to_owned())
}
