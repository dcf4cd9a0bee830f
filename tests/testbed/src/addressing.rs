//! The address plan of a testbed cluster.
//!
//! Every address lives inside the cluster's own namespaces, so two clusters
//! can use the same plan without seeing each other.
//!
//! | what | IPv4 | IPv6 |
//! |---|---|---|
//! | fabric (node addresses) | 172.30.0.0/24, node i = .(i+1) | fd00:30::/64, node i = ::(i+1) |
//! | pods of node i | 10.244.i.0/24, bridge .1, pods from .2 | fd00:244:i::/64, bridge ::1, pods from ::2 |
//! | service ClusterIPs | 10.96.0.0/16, from 10.96.0.10 | — |

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{Result, bail};

/// Prefix length of the fabric and of each node's pod CIDR.
pub const PREFIX_LEN: u8 = 24;
/// Most nodes a plan can number (fabric addresses .1 to .250).
pub const MAX_NODES: usize = 250;
/// Most pods one node can hold (pod addresses .2 to .254).
pub const MAX_PODS_PER_NODE: usize = 253;

/// A node's address on the fabric: what Kubernetes calls its node IP.
pub fn node_ip(node: usize) -> Ipv4Addr {
    Ipv4Addr::new(172, 30, 0, (node + 1) as u8)
}

/// The network part of node `node`'s pod CIDR.
pub fn pod_cidr(node: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, node as u8, 0)
}

/// The node bridge's address: its pods' default gateway.
pub fn pod_gateway(node: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, node as u8, 1)
}

/// The hardware address of a bridge: node `node`'s pod bridge, or (`None`)
/// the fabric between nodes. Locally administered and fixed, so it never
/// follows the ports as a bridge's own address would.
pub fn bridge_mac(node: Option<usize>) -> String {
    match node {
        Some(node) => format!("02:77:72:00:{:02x}:01", node & 0xff),
        None => "02:77:72:ff:00:01".to_owned(),
    }
}

/// The address of the `slot`-th pod (0-based) on node `node`.
pub fn pod_ip(node: usize, slot: usize) -> Result<Ipv4Addr> {
    if slot >= MAX_PODS_PER_NODE {
        bail!("node {node} is full: at most {MAX_PODS_PER_NODE} pods per node");
    }
    Ok(Ipv4Addr::new(10, 244, node as u8, (slot + 2) as u8))
}

/// Prefix length of the IPv6 fabric and of each node's IPv6 pod CIDR.
pub const PREFIX_LEN6: u8 = 64;

/// A node's IPv6 address on the fabric.
pub fn node_ip6(node: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x30, 0, 0, 0, 0, 0, node as u16 + 1)
}

/// The network part of node `node`'s IPv6 pod CIDR.
pub fn pod_cidr6(node: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x244, node as u16, 0, 0, 0, 0, 0)
}

/// The node bridge's IPv6 address: its pods' IPv6 gateway.
pub fn pod_gateway6(node: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x244, node as u16, 0, 0, 0, 0, 1)
}

/// The IPv6 address of the `slot`-th pod on node `node`.
pub fn pod_ip6(node: usize, slot: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x244, node as u16, 0, 0, 0, 0, slot as u16 + 2)
}

/// Where the testbed's pods send DNS queries: an address of the service range that
/// no Service gets in practice and nothing listens on, so only ztunnel's DNS proxy
/// (which captures queries to any server) answers there.
pub const CLUSTER_DNS: Ipv4Addr = Ipv4Addr::new(10, 96, 255, 53);
/// The same over IPv6.
pub const CLUSTER_DNS6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x53);

/// The `n`-th ClusterIP (0-based).
pub fn cluster_ip(n: usize) -> Result<Ipv4Addr> {
    let offset = n + 10;
    if offset > 0xfffe {
        bail!("the service CIDR 10.96.0.0/16 is full");
    }
    Ok(Ipv4Addr::new(
        10,
        96,
        (offset >> 8) as u8,
        (offset & 0xff) as u8,
    ))
}

/// Checks a requested size against the plan.
pub fn check_size(nodes: usize, pods_per_node: usize) -> Result<()> {
    if nodes == 0 || nodes > MAX_NODES {
        bail!("--nodes must be between 1 and {MAX_NODES}, not {nodes}");
    }
    if pods_per_node > MAX_PODS_PER_NODE {
        bail!("--pods-per-node must be at most {MAX_PODS_PER_NODE}, not {pods_per_node}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_is_disjoint_and_bounded() -> Result<()> {
        assert_eq!(node_ip(0), Ipv4Addr::new(172, 30, 0, 1));
        assert_eq!(pod_ip(2, 0)?, Ipv4Addr::new(10, 244, 2, 2));
        assert_ne!(pod_ip(1, 0)?, pod_gateway(1));
        assert!(pod_ip(0, MAX_PODS_PER_NODE).is_err());
        assert_eq!(cluster_ip(0)?, Ipv4Addr::new(10, 96, 0, 10));
        assert_eq!(cluster_ip(300)?, Ipv4Addr::new(10, 96, 1, 54));
        assert!(check_size(0, 1).is_err());
        assert!(check_size(3, 10).is_ok());
        assert_eq!(pod_ip6(1, 0).to_string(), "fd00:244:1::2");
        assert_eq!(node_ip6(0).to_string(), "fd00:30::1");
        Ok(())
    }
}
