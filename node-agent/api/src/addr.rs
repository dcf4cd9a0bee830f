//! IP addresses travel as 4 or 16 raw bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The bytes of an address as the protos carry it.
pub fn to_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// The address a client that asks for both families dials first: the first
/// IPv4 one (resolvers ask for A first), else the first.
pub fn ipv4_first(addresses: &[IpAddr]) -> Option<IpAddr> {
    addresses
        .iter()
        .copied()
        .find(IpAddr::is_ipv4)
        .or_else(|| addresses.first().copied())
}

/// An address from the protos; `None` when the length is neither 4 nor 16.
pub fn from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes)
            .ok()
            .map(|b| Ipv4Addr::from(b).into()),
        16 => <[u8; 16]>::try_from(bytes)
            .ok()
            .map(|b| Ipv6Addr::from(b).into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_both_families() {
        for ip in ["10.244.1.7", "fd00:244:1::7"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(from_bytes(&to_bytes(ip)), Some(ip));
        }
    }

    #[test]
    fn refuses_other_lengths() {
        assert_eq!(from_bytes(&[]), None);
        assert_eq!(from_bytes(&[10, 0, 0]), None);
        assert_eq!(from_bytes(&[0; 17]), None);
    }
}
