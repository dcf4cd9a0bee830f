//! L4 AuthorizationPolicies as the agent sends them, validated into matchable form.
//! Evaluation lives in [`crate::rbac`].

use serde::Serialize;
use warren_api::config::{self, Action as ProtoAction, string_match::Kind};

use super::{
    ResourceError,
    cidr::{Cidr, cidrs},
};

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
