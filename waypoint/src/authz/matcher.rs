//! The value forms an AuthorizationPolicy writes: Istio's string patterns
//! and IP blocks.

use std::net::IpAddr;

/// Istio's string match: `*` (present, any value), `abc*` (prefix), `*abc`
/// (suffix), else exact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pattern {
    Any,
    Prefix(String),
    Suffix(String),
    Exact(String),
}

impl Pattern {
    pub fn parse(s: &str) -> Pattern {
        if s == "*" {
            Pattern::Any
        } else if let Some(suffix) = s.strip_prefix('*') {
            Pattern::Suffix(suffix.to_owned())
        } else if let Some(prefix) = s.strip_suffix('*') {
            Pattern::Prefix(prefix.to_owned())
        } else {
            Pattern::Exact(s.to_owned())
        }
    }

    /// The same pattern, lower-cased: for attributes compared without case
    /// (hosts).
    pub fn lowercase(self) -> Pattern {
        match self {
            Pattern::Any => Pattern::Any,
            Pattern::Prefix(p) => Pattern::Prefix(p.to_ascii_lowercase()),
            Pattern::Suffix(s) => Pattern::Suffix(s.to_ascii_lowercase()),
            Pattern::Exact(e) => Pattern::Exact(e.to_ascii_lowercase()),
        }
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Prefix(p) => value.starts_with(p.as_str()),
            Pattern::Suffix(s) => value.ends_with(s.as_str()),
            Pattern::Exact(e) => value == e,
        }
    }
}

/// An address block; a bare address is a block of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    address: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    /// `None` when `s` is neither an address nor a CIDR (the agent validated
    /// it, so the caller treats that as a field it cannot evaluate).
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
        // A v4 client reached over a v6 socket appears v4-mapped.
        let ip = ip.to_canonical();
        match (self.address, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}
