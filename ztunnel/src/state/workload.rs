//! Pods as ztunnel knows them: addresses, identity, node, and the policies that guard them.

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf};

use serde::Serialize;
use warren_api::{
    Identity, Locality,
    config::{self, InboundMode, TunnelProtocol},
};

use super::{ResourceError, Waypoint};

/// A workload, validated: every address parsed, identity well formed.
#[derive(Clone, Debug, Serialize)]
pub struct Workload {
    /// Resource key (`workload/<ns>/<name>`).
    pub key: String,
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub node: String,
    pub addresses: Vec<IpAddr>,
    pub node_address: Option<IpAddr>,
    /// Reached over HBONE (in the mesh) or plain TCP.
    pub hbone: bool,
    #[serde(serialize_with = "super::serialize_display")]
    pub identity: Option<Identity>,
    pub canonical_name: String,
    pub canonical_revision: String,
    pub workload_name: String,
    pub authorization_policies: Vec<String>,
    pub inbound_mode: Mode,
    pub port_modes: BTreeMap<u16, Mode>,
    pub is_waypoint: bool,
    pub netns_cookie: u64,
    /// For enrolled pods of this node: their network namespace, where
    /// connections to destinations outside the mesh are opened.
    pub netns: Option<PathBuf>,
    /// The pod's labels: subsets and `sourceLabels` matches (waypoint).
    pub labels: BTreeMap<String, String>,
    /// Where it runs (locality-aware load balancing in the waypoint).
    #[serde(serialize_with = "super::serialize_display")]
    pub locality: Locality,
    /// The waypoint that traffic addressed to the pod itself goes through.
    pub waypoint: Option<Waypoint>,
    /// Destination ports its connections to are not captured.
    pub excluded_ports: Vec<u16>,
}

/// PeerAuthentication's mode for one workload (or port).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Mode {
    Permissive,
    Strict,
    Disable,
}

impl Mode {
    fn from_proto(value: i32) -> Mode {
        match InboundMode::try_from(value) {
            Ok(InboundMode::Strict) => Mode::Strict,
            Ok(InboundMode::Disable) => Mode::Disable,
            // Unspecified is Istio's default, PERMISSIVE. An unknown value from a newer
            // agent is taken as STRICT: a proxy fails closed on what it cannot read.
            Ok(InboundMode::Permissive | InboundMode::Unspecified) => Mode::Permissive,
            Err(_) => Mode::Strict,
        }
    }
}

impl Workload {
    /// The address it connects to `dst` from: one of `dst`'s family, else
    /// its first.
    pub fn address_toward(&self, dst: IpAddr) -> Option<IpAddr> {
        self.addresses
            .iter()
            .copied()
            .find(|ip| ip.is_ipv4() == dst.is_ipv4())
            .or_else(|| self.addresses.first().copied())
    }

    pub fn from_proto(
        key: &str,
        w: config::Workload,
        trust_domain: &str,
    ) -> Result<Workload, ResourceError> {
        let fail = |field: &'static str, reason: String| ResourceError::new(key, field, reason);
        let addresses = w
            .addresses
            .iter()
            .map(|bytes| {
                warren_api::addr::from_bytes(bytes).ok_or_else(|| {
                    fail(
                        "addresses",
                        format!("{} bytes is not an IPv4 or IPv6 address", bytes.len()),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let node_address = match w.node_address.as_slice() {
            [] => None,
            bytes => Some(warren_api::addr::from_bytes(bytes).ok_or_else(|| {
                fail(
                    "node_address",
                    format!("{} bytes is not an IPv4 or IPv6 address", bytes.len()),
                )
            })?),
        };
        let hbone = match TunnelProtocol::try_from(w.protocol) {
            Ok(TunnelProtocol::Hbone) => true,
            Ok(TunnelProtocol::None) => false,
            Err(_) => {
                return Err(fail(
                    "protocol",
                    format!("unknown tunnel protocol {}", w.protocol),
                ));
            }
        };
        let identity = if w.service_account.is_empty() {
            None
        } else {
            let td = if w.trust_domain.is_empty() {
                trust_domain
            } else {
                &w.trust_domain
            };
            let uri = format!("spiffe://{td}/ns/{}/sa/{}", w.namespace, w.service_account);
            Some(
                uri.parse::<Identity>()
                    .map_err(|e| fail("service_account", e.to_string()))?,
            )
        };
        if hbone && identity.is_none() {
            return Err(fail(
                "service_account",
                "a workload in the mesh (HBONE) needs a service account for its identity".into(),
            ));
        }
        if hbone && node_address.is_none() {
            return Err(fail(
                "node_address",
                "a workload in the mesh (HBONE) needs its node's address".into(),
            ));
        }
        let port_modes = w
            .port_modes
            .iter()
            .map(|(port, mode)| {
                u16::try_from(*port)
                    .map(|port| (port, Mode::from_proto(*mode)))
                    .map_err(|_| fail("port_modes", format!("{port} is not a port")))
            })
            .collect::<Result<_, _>>()?;
        let netns = match PathBuf::from(&w.netns) {
            _ if w.netns.is_empty() => None,
            path if path.is_absolute() => Some(path),
            _ => {
                return Err(fail(
                    "netns",
                    format!("{:?} is not an absolute path", w.netns),
                ));
            }
        };
        let waypoint = w
            .waypoint
            .map(|wp| Waypoint::from_proto(key, &w.namespace, wp))
            .transpose()?;
        Ok(Workload {
            key: key.to_owned(),
            name: w.name,
            namespace: w.namespace,
            service_account: w.service_account,
            node: w.node,
            addresses,
            node_address,
            hbone,
            identity,
            canonical_name: w.canonical_name,
            canonical_revision: w.canonical_revision,
            workload_name: w.workload_name,
            authorization_policies: w.authorization_policies,
            inbound_mode: Mode::from_proto(w.inbound_mode),
            port_modes,
            is_waypoint: w.is_waypoint,
            netns_cookie: w.netns_cookie,
            netns,
            labels: w.labels.into_iter().collect(),
            locality: Locality::parse(&w.locality),
            waypoint,
            excluded_ports: w
                .excluded_ports
                .iter()
                .filter_map(|p| u16::try_from(*p).ok())
                .collect(),
        })
    }

    /// The PeerAuthentication mode on `port`: a port-level override wins.
    pub fn mode_on(&self, port: u16) -> Mode {
        self.port_modes
            .get(&port)
            .copied()
            .unwrap_or(self.inbound_mode)
    }

    /// The name telemetry shows: the owner's when known.
    pub fn telemetry_name(&self) -> &str {
        if self.workload_name.is_empty() {
            &self.name
        } else {
            &self.workload_name
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_netns(netns: &str) -> Result<Workload, ResourceError> {
        let w = config::Workload {
            name: "app-0".into(),
            namespace: "demo".into(),
            service_account: "app".into(),
            addresses: vec![vec![10, 244, 0, 5]],
            node_address: vec![172, 30, 0, 1],
            protocol: TunnelProtocol::Hbone as i32,
            netns: netns.into(),
            ..Default::default()
        };
        Workload::from_proto("workload/demo/app-0", w, "cluster.local")
    }

    #[test]
    fn a_pods_namespace_is_taken_only_as_an_absolute_path() {
        assert_eq!(with_netns("").unwrap().netns, None);
        assert_eq!(
            with_netns("/run/netns/app-0").unwrap().netns,
            Some(PathBuf::from("/run/netns/app-0"))
        );
        let error = with_netns("run/netns/app-0").unwrap_err().to_string();
        assert!(
            error.contains("netns") && error.contains("absolute"),
            "{error}"
        );
    }
}
