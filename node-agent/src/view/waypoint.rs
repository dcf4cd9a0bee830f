//! Which waypoint a Service's traffic goes through.
//!
//! A namespace gets a waypoint from a Gateway of a waypoint class; its pods
//! (labelled with the Gateway's name, as a Gateway controller labels the
//! Deployment it makes) are where the traffic goes. Every Service of the
//! namespace then uses it, unless the Service or the namespace says
//! `istio.io/use-waypoint: none`. A Gateway without a running pod still
//! claims the traffic: ztunnel refuses it rather than bypass the L7 policy.

use warren_api::{Identity, addr, config::GatewayAddress, key};

use super::Mesh;
use crate::{
    model::{
        Kind, Labels, Object,
        gateway::{GATEWAY_NAME_LABEL, USE_WAYPOINT_LABEL, WAYPOINT_HBONE_PORT},
    },
    store::Store,
};

/// The waypoint of `namespace`, if a waypoint Gateway exists there.
pub fn of_namespace(mesh: &Mesh, store: &Store, namespace: &str) -> Option<GatewayAddress> {
    // Several waypoint Gateways in one namespace: the first by name serves,
    // so the choice is stable across restarts.
    let gateway = store
        .of_kind_in(Kind::Gateway, namespace)
        .filter_map(|o| match o {
            Object::Gateway(g) if g.is_waypoint() => g.metadata.name.clone(),
            _ => None,
        })
        .min()?;
    let pod = store
        .of_kind_in(Kind::Pod, namespace)
        .filter_map(|o| match o {
            Object::Pod(p) => Some(p),
            _ => None,
        })
        .filter(|p| p.labels.get(GATEWAY_NAME_LABEL) == Some(gateway.as_str()))
        .filter_map(|p| Some((p, p.addresses().first().copied()?)))
        .min_by(|a, b| a.0.name.cmp(&b.0.name));
    Some(match pod {
        Some((pod, ip)) => GatewayAddress {
            workload: key::workload(namespace, &pod.name),
            address: addr::to_bytes(ip),
            hbone_port: u32::from(WAYPOINT_HBONE_PORT),
            identity: Identity::new(&mesh.trust_domain, namespace, pod.service_account())
                .to_string(),
        },
        // Claimed but not running: no address, and ztunnel fails closed.
        None => GatewayAddress {
            workload: String::new(),
            address: Vec::new(),
            hbone_port: u32::from(WAYPOINT_HBONE_PORT),
            identity: String::new(),
        },
    })
}

/// Whether an object's labels opt it out of its namespace's waypoint.
pub fn opts_out(labels: &Labels) -> bool {
    labels.get(USE_WAYPOINT_LABEL) == Some("none")
}
