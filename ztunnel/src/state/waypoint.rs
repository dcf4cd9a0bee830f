//! Where traffic that must pass a waypoint goes: a Service's (traffic to its
//! addresses) or a pod's (traffic to the pod's own address).

use std::net::IpAddr;

use serde::Serialize;
use warren_api::{Identity, config};

use super::{
    ResourceError,
    service::{address, port},
};

#[derive(Clone, Debug, Serialize)]
pub struct Waypoint {
    pub workload: String,
    /// None while the waypoint has no running pod: its policy cannot be
    /// enforced, so connections are refused rather than sent around it.
    pub address: Option<IpAddr>,
    pub hbone_port: u16,
    #[serde(serialize_with = "super::serialize_display")]
    pub identity: Identity,
}

impl Waypoint {
    /// The waypoint of resource `key` (of `namespace`), validated.
    pub(super) fn from_proto(
        key: &str,
        namespace: &str,
        w: config::GatewayAddress,
    ) -> Result<Waypoint, ResourceError> {
        Ok(Waypoint {
            address: if w.address.is_empty() {
                None
            } else {
                Some(address(key, "waypoint.address", &w.address)?)
            },
            hbone_port: match w.hbone_port {
                0 => 15008,
                p => port(key, "waypoint.hbone_port", p)?,
            },
            identity: w
                .identity
                .parse()
                .or_else(|e| {
                    if w.address.is_empty() {
                        // No pod yet, so no identity either; never dialled.
                        Ok(Identity::new("unavailable", namespace, "waypoint"))
                    } else {
                        Err(e)
                    }
                })
                .map_err(|e: warren_api::identity::IdentityError| {
                    ResourceError::new(key, "waypoint.identity", e.to_string())
                })?,
            workload: w.workload,
        })
    }
}
