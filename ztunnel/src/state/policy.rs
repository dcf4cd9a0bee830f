//! L4 AuthorizationPolicies as the agent sends them, validated into matchable form.
//! Evaluation lives in [`crate::rbac`].

use std::net::IpAddr;

use serde::Serialize;
use warren_api::config::{self, Action as ProtoAction, string_match::Kind};

use super::ResourceError;

#[derive(Clone, Debug, Serialize)]
pub struct Authorization {
    pub key: String,
    pub name: String,
    pub namespace: String,
    pub action: Action,
    /// Any rule matching makes the policy apply.
    pub rules: Vec<Rule>,
    pub notes: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    Allow,
    Deny,
}

/// Matches when every clause does (no clause: always).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Rule {
    pub clauses: Vec<Clause>,
}

/// Matches when any of its matches does.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Clause {
    pub matches: Vec<Match>,
}

/// Every non-empty field must match; a field matches when any value does and no `not_`
/// value does.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Match {
    pub principals: Vec<StringMatch>,
    pub not_principals: Vec<StringMatch>,
    pub namespaces: Vec<StringMatch>,
    pub not_namespaces: Vec<StringMatch>,
    pub source_ips: Vec<Cidr>,
    pub not_source_ips: Vec<Cidr>,
    pub destination_ips: Vec<Cidr>,
    pub not_destination_ips: Vec<Cidr>,
    pub destination_ports: Vec<u16>,
    pub not_destination_ports: Vec<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    /// `*`: any value, as long as there is one.
    Presence,
}

impl StringMatch {
    /// Whether `value` (absent when the peer has no identity) matches.
    pub fn matches(&self, value: Option<&str>) -> bool {
        let Some(value) = value else { return false };
        match self {
            StringMatch::Exact(s) => value == s,
            StringMatch::Prefix(s) => value.starts_with(s.as_str()),
            StringMatch::Suffix(s) => value.ends_with(s.as_str()),
            StringMatch::Presence => !value.is_empty(),
        }
    }
}

/// An address block; host bits are cleared when parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Cidr {
    pub address: IpAddr,
    pub prefix_len: u8,
}

impl Cidr {
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

fn string_matches(
    key: &str,
    field: &'static str,
    values: &[config::StringMatch],
) -> Result<Vec<StringMatch>, ResourceError> {
    values
        .iter()
        .map(|m| match &m.kind {
            Some(Kind::Exact(s)) => Ok(StringMatch::Exact(s.clone())),
            Some(Kind::Prefix(s)) => Ok(StringMatch::Prefix(s.clone())),
            Some(Kind::Suffix(s)) => Ok(StringMatch::Suffix(s.clone())),
            Some(Kind::Presence(true)) => Ok(StringMatch::Presence),
            Some(Kind::Presence(false)) | None => Err(ResourceError::new(
                key,
                field,
                "a string match with no kind".into(),
            )),
        })
        .collect()
}

fn cidrs(
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
            })
        })
        .collect()
}

fn ports(key: &str, field: &'static str, values: &[u32]) -> Result<Vec<u16>, ResourceError> {
    values
        .iter()
        .map(|p| {
            u16::try_from(*p)
                .map_err(|_| ResourceError::new(key, field, format!("{p} is not a port")))
        })
        .collect()
}

impl Authorization {
    pub fn from_proto(key: &str, a: config::Authorization) -> Result<Authorization, ResourceError> {
        let action = match ProtoAction::try_from(a.action) {
            Ok(ProtoAction::Allow) => Action::Allow,
            Ok(ProtoAction::Deny) => Action::Deny,
            Err(_) => {
                return Err(ResourceError::new(
                    key,
                    "action",
                    format!("unknown action {}", a.action),
                ));
            }
        };
        let rules = a
            .rules
            .iter()
            .map(|rule| {
                let clauses = rule
                    .clauses
                    .iter()
                    .map(|clause| {
                        let matches = clause
                            .matches
                            .iter()
                            .map(|m| {
                                Ok(Match {
                                    principals: string_matches(key, "principals", &m.principals)?,
                                    not_principals: string_matches(
                                        key,
                                        "not_principals",
                                        &m.not_principals,
                                    )?,
                                    namespaces: string_matches(key, "namespaces", &m.namespaces)?,
                                    not_namespaces: string_matches(
                                        key,
                                        "not_namespaces",
                                        &m.not_namespaces,
                                    )?,
                                    source_ips: cidrs(key, "source_ips", &m.source_ips)?,
                                    not_source_ips: cidrs(
                                        key,
                                        "not_source_ips",
                                        &m.not_source_ips,
                                    )?,
                                    destination_ips: cidrs(
                                        key,
                                        "destination_ips",
                                        &m.destination_ips,
                                    )?,
                                    not_destination_ips: cidrs(
                                        key,
                                        "not_destination_ips",
                                        &m.not_destination_ips,
                                    )?,
                                    destination_ports: ports(
                                        key,
                                        "destination_ports",
                                        &m.destination_ports,
                                    )?,
                                    not_destination_ports: ports(
                                        key,
                                        "not_destination_ports",
                                        &m.not_destination_ports,
                                    )?,
                                })
                            })
                            .collect::<Result<Vec<_>, ResourceError>>()?;
                        Ok(Clause { matches })
                    })
                    .collect::<Result<Vec<_>, ResourceError>>()?;
                Ok(Rule { clauses })
            })
            .collect::<Result<Vec<_>, ResourceError>>()?;
        Ok(Authorization {
            key: key.to_owned(),
            name: a.name,
            namespace: a.namespace,
            action,
            rules,
            notes: a.notes,
        })
    }
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
