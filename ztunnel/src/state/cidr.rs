//! Address blocks: AuthorizationPolicy `ipBlocks` and ServiceEntry
//! `addresses` wider than one address.

use std::net::IpAddr;

use serde::Serialize;
use warren_api::config;

use super::ResourceError;

/// An address block (host bits may be set; they are not compared).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Cidr {
    pub address: IpAddr,
    pub prefix_len: u8,
}

impl Cidr {
    /// An IPv4 block written in the IPv4-mapped range (`::ffff:10.0.0.0/104`)
    /// as the IPv4 block it is (`10.0.0.0/8`), so that prefixes compare.
    pub fn canonical(self) -> Cidr {
        match self.address {
            IpAddr::V6(v6) if self.prefix_len >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => Cidr {
                    address: IpAddr::V4(v4),
                    prefix_len: self.prefix_len - 96,
                },
                None => self,
            },
            _ => self,
        }
    }

    /// An address (a block of one) or `address/prefix`, as Istio writes
    /// ipBlocks and destinationSubnets; `None` when `s` is neither.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip, Some(len.parse::<u8>().ok()?)),
            None => (s, None),
        };
        let address: IpAddr = ip.parse().ok()?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix_len = len.unwrap_or(max);
        (prefix_len <= max).then_some(Cidr {
            address,
            prefix_len,
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // Addresses are compared in their canonical form, so a block written in the
        // IPv4-mapped range (`::ffff:10.0.0.0/104`) is the IPv4 block it names.
        let (net, prefix_len) = match self.address {
            IpAddr::V6(v6) if self.prefix_len >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), self.prefix_len - 96),
                None => (self.address, self.prefix_len),
            },
            other => (other, self.prefix_len),
        };
        match (net, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(prefix_len))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(prefix_len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The blocks `values` name, for `field` of resource `key`.
pub(super) fn cidrs(
    key: &str,
    field: &'static str,
    values: &[config::Cidr],
) -> Result<Vec<Cidr>, ResourceError> {
    values
        .iter()
        .map(|c| {
            let address = warren_api::addr::from_bytes(&c.address).ok_or_else(|| {
                ResourceError::new(
                    key,
                    field,
                    format!("{} bytes is not an IPv4 or IPv6 address", c.address.len()),
                )
            })?;
            let max = if address.is_ipv4() { 32 } else { 128 };
            if c.prefix_len > max {
                return Err(ResourceError::new(
                    key,
                    field,
                    format!("prefix length {} is longer than {max}", c.prefix_len),
                ));
            }
            // Fits: at most 128.
            let prefix_len = c.prefix_len as u8;
            Ok(Cidr {
                address,
                prefix_len,
            }
            .canonical())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_contain_their_addresses() {
        let net = Cidr {
            address: "10.1.0.0".parse().unwrap(),
            prefix_len: 16,
        };
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(!net.contains("fd00::1".parse().unwrap()));
        let all = Cidr {
            address: "0.0.0.0".parse().unwrap(),
            prefix_len: 0,
        };
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        let host = Cidr {
            address: "fd00::7".parse().unwrap(),
            prefix_len: 128,
        };
        assert!(host.contains("fd00::7".parse().unwrap()));
        assert!(!host.contains("fd00::8".parse().unwrap()));
        // An IPv4 block written as IPv6 holds the IPv4 clients it names, as either form.
        let mapped = Cidr {
            address: "::ffff:10.1.0.0".parse().unwrap(),
            prefix_len: 112,
        };
        assert!(mapped.contains("10.1.7.7".parse().unwrap()));
        assert!(mapped.contains("::ffff:10.1.7.7".parse().unwrap()));
        assert!(!mapped.contains("10.2.0.1".parse().unwrap()));
        // Wider than the mapped range: an IPv6 block, as written.
        let wide = Cidr {
            address: "::".parse().unwrap(),
            prefix_len: 0,
        };
        assert!(wide.contains("fd00::1".parse().unwrap()));
        assert!(!wide.contains("10.1.0.1".parse().unwrap()));
    }
}
