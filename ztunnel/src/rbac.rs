//! L4 authorization: does a connection match a policy, and may it pass.
//!
//! Istio's order: any DENY policy that matches denies; else, when no ALLOW policy applies
//! to the workload, the connection is allowed; else it is allowed only if some ALLOW
//! policy matches. A policy the workload names but ztunnel does not hold denies
//! (fail closed).

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
};

use warren_api::{Identity, identity::TrustDomains};

use crate::state::{
    Cidr,
    policy::{Action, Authorization, Match, StringMatch},
};

/// What a policy can see of a connection.
#[derive(Clone, Copy, Debug)]
pub struct Connection<'a> {
    /// The peer's verified identity; `None` for plaintext.
    pub src_identity: Option<&'a Identity>,
    pub src_ip: IpAddr,
    pub dst: SocketAddr,
}

impl fmt::Display for Connection<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.src_identity {
            Some(id) => write!(f, "{}({id})->{}", self.src_ip, self.dst),
            None => write!(f, "{}(no identity)->{}", self.src_ip, self.dst),
        }
    }
}

/// Why a connection was denied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("denied by DENY policy {0}")]
    DenyPolicy(String),
    #[error("no ALLOW policy matched (of {0})")]
    NotAllowed(String),
    #[error("policy {0} applies to the workload but is unknown to ztunnel (fail closed)")]
    MissingPolicy(String),
}

impl Denied {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Denied::DenyPolicy(_) => "deny_policy",
            Denied::NotAllowed(_) => "not_allowed",
            Denied::MissingPolicy(_) => "missing_policy",
        }
    }
}

/// Decides with the policies that apply to the destination workload. `policies` yields
/// each key the workload names, with the policy if ztunnel holds it.
pub fn authorize<'p>(
    conn: &Connection<'_>,
    domains: &TrustDomains,
    policies: impl IntoIterator<Item = (&'p str, Option<&'p Authorization>)>,
) -> Result<(), Denied> {
    // Every name the peer answers to in a policy (its trust domain's aliases).
    let principals = conn
        .src_identity
        .map(|id| domains.principals(id))
        .unwrap_or_default();
    let matches = |policy: &Authorization| matches(policy, conn, &principals);
    let mut allows = Vec::new();
    for (key, policy) in policies {
        let Some(policy) = policy else {
            return Err(Denied::MissingPolicy(key.to_owned()));
        };
        match policy.action {
            Action::Deny if matches(policy) => {
                return Err(Denied::DenyPolicy(policy.key.clone()));
            }
            Action::Deny => {}
            Action::Allow => allows.push(policy),
        }
    }
    if allows.is_empty() || allows.iter().any(|p| matches(p)) {
        Ok(())
    } else {
        Err(Denied::NotAllowed(
            allows
                .iter()
                .map(|p| p.key.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        ))
    }
}

/// Whether any rule of `policy` matches (a policy with no rule never does);
/// `principals` are the names the peer answers to (none without identity).
fn matches(policy: &Authorization, conn: &Connection<'_>, principals: &[String]) -> bool {
    let namespace = conn.src_identity.map(|id| id.namespace.as_str());
    let attrs = Attributes {
        principals,
        namespace,
        src_ip: conn.src_ip.to_canonical(),
        dst_ip: conn.dst.ip().to_canonical(),
        dst_port: conn.dst.port(),
    };
    policy.rules.iter().any(|rule| {
        rule.clauses
            .iter()
            .all(|clause| clause.matches.iter().any(|m| match_one(m, &attrs)))
    })
}

struct Attributes<'a> {
    principals: &'a [String],
    namespace: Option<&'a str>,
    src_ip: IpAddr,
    dst_ip: IpAddr,
    dst_port: u16,
}

fn match_one(m: &Match, a: &Attributes<'_>) -> bool {
    let strings =
        |values: &[StringMatch], value: Option<&str>| values.iter().any(|s| s.matches(value));
    let ips = |values: &[Cidr], ip: IpAddr| values.iter().any(|c| c.contains(ip));
    // A peer matches a principal by any of its names; without identity, as
    // an absent value.
    let principal = |values: &[StringMatch]| match a.principals {
        [] => strings(values, None),
        names => names.iter().any(|n| strings(values, Some(n))),
    };
    field(&m.principals, &m.not_principals, principal)
        && field(&m.namespaces, &m.not_namespaces, |v| {
            strings(v, a.namespace)
        })
        && field(&m.source_ips, &m.not_source_ips, |v| ips(v, a.src_ip))
        && field(&m.destination_ips, &m.not_destination_ips, |v| {
            ips(v, a.dst_ip)
        })
        && field(&m.destination_ports, &m.not_destination_ports, |v| {
            v.contains(&a.dst_port)
        })
}

/// An empty field matches; otherwise any positive value must match and no negative one.
fn field<T>(positive: &[T], negative: &[T], any: impl Fn(&[T]) -> bool) -> bool {
    (positive.is_empty() || any(positive)) && (negative.is_empty() || !any(negative))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::policy::{Clause, Rule};

    fn policy(action: Action, rules: Vec<Rule>) -> Authorization {
        Authorization {
            key: "authorization/demo/p".into(),
            name: "p".into(),
            namespace: "demo".into(),
            action,
            rules,
            notes: vec![],
        }
    }

    fn rule(m: Match) -> Rule {
        Rule {
            clauses: vec![Clause { matches: vec![m] }],
        }
    }

    /// `super::matches` in a mesh of Istio's default trust domain.
    fn matches(policy: &Authorization, conn: &Connection<'_>) -> bool {
        let principals = conn
            .src_identity
            .map(|id| TrustDomains::default().principals(id))
            .unwrap_or_default();
        super::matches(policy, conn, &principals)
    }

    fn authorize<'p>(
        conn: &Connection<'_>,
        policies: impl IntoIterator<Item = (&'p str, Option<&'p Authorization>)>,
    ) -> Result<(), Denied> {
        super::authorize(conn, &TrustDomains::default(), policies)
    }

    fn conn(id: Option<&Identity>) -> Connection<'_> {
        Connection {
            src_identity: id,
            src_ip: "10.0.0.1".parse().unwrap(),
            dst: "10.0.1.1:80".parse().unwrap(),
        }
    }

    #[test]
    fn not_principals_match_a_peer_without_identity() {
        let m = Match {
            not_principals: vec![StringMatch::Presence],
            ..Default::default()
        };
        let deny = policy(Action::Deny, vec![rule(m)]);
        assert!(matches(&deny, &conn(None)));
        let id = Identity::new("cluster.local", "a", "b");
        assert!(!matches(&deny, &conn(Some(&id))));
    }

    #[test]
    fn rules_clauses_and_matches_combine_as_documented() {
        let id = Identity::new("cluster.local", "demo", "client");
        let ns = |n: &str| Match {
            namespaces: vec![StringMatch::Exact(n.into())],
            ..Default::default()
        };
        let port = |p| Match {
            destination_ports: vec![p],
            ..Default::default()
        };
        // Clause = any match: namespace other OR demo.
        let any = Rule {
            clauses: vec![Clause {
                matches: vec![ns("other"), ns("demo")],
            }],
        };
        assert!(matches(&policy(Action::Allow, vec![any]), &conn(Some(&id))));
        // Rule = all clauses: demo AND port 81.
        let all = Rule {
            clauses: vec![
                Clause {
                    matches: vec![ns("demo")],
                },
                Clause {
                    matches: vec![port(81)],
                },
            ],
        };
        assert!(!matches(
            &policy(Action::Allow, vec![all]),
            &conn(Some(&id))
        ));
        // A rule with no clause always matches; a policy with no rule never.
        assert!(matches(
            &policy(Action::Allow, vec![Rule::default()]),
            &conn(None)
        ));
        assert!(!matches(&policy(Action::Allow, vec![]), &conn(None)));
        // An empty match matches (a DENY that lost its HTTP conditions denies everything).
        assert!(matches(
            &policy(Action::Deny, vec![rule(Match::default())]),
            &conn(None)
        ));
    }

    #[test]
    fn deny_wins_and_allow_without_rules_allows_nothing() {
        let id = Identity::new("cluster.local", "demo", "client");
        let allow_all = policy(Action::Allow, vec![Rule::default()]);
        let mut deny = policy(
            Action::Deny,
            vec![rule(Match {
                destination_ports: vec![80],
                ..Default::default()
            })],
        );
        deny.key = "authorization/demo/deny".into();
        let c = conn(Some(&id));
        assert_eq!(
            authorize(&c, [("a", Some(&allow_all)), ("d", Some(&deny))]),
            Err(Denied::DenyPolicy("authorization/demo/deny".into()))
        );
        assert_eq!(authorize(&c, [("a", Some(&allow_all))]), Ok(()));
        assert_eq!(authorize(&c, []), Ok(()));
        let allow_nothing = policy(Action::Allow, vec![]);
        assert!(matches!(
            authorize(&c, [("a", Some(&allow_nothing))]),
            Err(Denied::NotAllowed(_))
        ));
        assert!(matches!(
            authorize(&c, [("x", None)]),
            Err(Denied::MissingPolicy(_))
        ));
    }

    #[test]
    fn cluster_local_and_aliases_name_the_meshs_own_peers() {
        let domains = TrustDomains {
            trust_domain: "corp.example".into(),
            aliases: vec!["old.example".into()],
        };
        let named = |principal: &str| {
            policy(
                Action::Deny,
                vec![rule(Match {
                    principals: vec![StringMatch::Exact(principal.into())],
                    ..Default::default()
                })],
            )
        };
        let deny_batch = named("cluster.local/ns/demo/sa/batch");
        let batch = Identity::new("corp.example", "demo", "batch");
        let migrating = Identity::new("old.example", "demo", "batch");
        for peer in [&batch, &migrating] {
            assert!(
                super::authorize(&conn(Some(peer)), &domains, [("d", Some(&deny_batch))]).is_err(),
                "a DENY naming cluster.local must deny {peer} in this mesh"
            );
        }
        // Another mesh's trust domain names nobody here.
        let other = named("elsewhere.example/ns/demo/sa/batch");
        assert!(super::authorize(&conn(Some(&batch)), &domains, [("d", Some(&other))]).is_ok());
    }
}
