//! `/explain` on the admin port: what ztunnel would do with a connection from
//! one of its node's pods to a destination, step by step, and why.
//!
//! The answer comes from the calls the data path makes (`State::resolve`,
//! `State::authorize`) on the state it holds, so it cannot drift from what a
//! connection meets. It holds for a connection opened now: a Service's endpoint
//! is the one its balancer picks next (asking takes that turn), and a
//! destination on another node is checked against the policies this ztunnel
//! holds for it, which are the ones the agent sends that node's ztunnel too.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use serde::Serialize;

use crate::{
    rbac,
    state::{State, Target, Upstream, Workload},
};

/// One step of the path, in the order the data path takes them.
#[derive(Debug, Serialize)]
pub struct Step {
    /// `source`, `name`, `destination`, `route` or `policy`.
    pub stage: &'static str,
    pub detail: String,
}

/// How the connection ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Carried to its destination, its policies allowing.
    Allowed,
    /// Carried to a waypoint, whose policies decide.
    ToWaypoint,
    /// Refused by an AuthorizationPolicy.
    Denied,
    /// Refused before any policy (the last step says why).
    Refused,
}

#[derive(Debug, Serialize)]
pub struct Explanation {
    pub steps: Vec<Step>,
    pub verdict: Verdict,
}

/// Why a question could not be answered here.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("usage: /explain?from=<pod address or namespace/name>&to=<address:port or host:port>")]
    Usage,
    #[error("no pod {0:?} is known to this ztunnel")]
    UnknownSource(String),
    #[error("{pod} runs on node {node:?}, not on this one: ask that node's ztunnel")]
    OtherNode { pod: String, node: String },
    #[error("{0:?} is neither address:port nor host:port")]
    BadDestination(String),
    #[error(
        "{host} is no name of the mesh that namespace {namespace} sees: the pod's DNS server resolves it; explain the address it gives"
    )]
    UnknownName { host: String, namespace: String },
}

/// Explains a connection from `from` (a pod of this node: an address, or
/// `namespace/name`) to `to` (`address:port`, or `host:port` for a name the DNS
/// proxy answers).
pub fn explain(
    state: &State,
    prefer_same_node: bool,
    from: &str,
    to: &str,
) -> Result<Explanation, ExplainError> {
    let source = source(state, from)?;
    let mut steps = Vec::new();
    let mut step = |stage: &'static str, detail: String| steps.push(Step { stage, detail });
    step(
        "source",
        format!(
            "pod {} ({}) of this node, {}",
            name(&source),
            list(&source.addresses),
            match &source.identity {
                Some(identity) => format!("identity {identity}"),
                None => "no identity".to_owned(),
            }
        ),
    );
    let dst = match to.parse::<SocketAddr>() {
        Ok(dst) => dst,
        Err(_) => {
            let (host, port) = to
                .rsplit_once(':')
                .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
                .ok_or_else(|| ExplainError::BadDestination(to.to_owned()))?;
            let unknown = || ExplainError::UnknownName {
                host: host.to_owned(),
                namespace: source.namespace.clone(),
            };
            let service = state
                .service_by_dns_name(host, &source.namespace)
                .ok_or_else(unknown)?;
            // The DNS proxy's A answer: what a resolver asking both dials first.
            let ip = service
                .vips
                .iter()
                .copied()
                .find(IpAddr::is_ipv4)
                .or_else(|| service.vips.first().copied())
                .ok_or_else(unknown)?;
            step(
                "name",
                format!(
                    "{host} is {}: the DNS proxy answers {}",
                    service.key,
                    list(&service.vips)
                ),
            );
            SocketAddr::new(ip, port)
        }
    };
    let resolved = match state.resolve(dst, Some(&source), prefer_same_node) {
        Ok(resolved) => resolved,
        Err(error) => {
            step("destination", format!("{dst}: refused ({error})"));
            return Ok(Explanation {
                steps,
                verdict: Verdict::Refused,
            });
        }
    };
    if let Some(service) = &resolved.service {
        step(
            "destination",
            format!("{dst} is an address of {}", service.key),
        );
    }
    let upstream = match resolved.target {
        Target::Upstream(upstream) => upstream,
        Target::Named { host, port, .. } => {
            step(
                "route",
                format!(
                    "its endpoint is named {host}: resolved by DNS as the connection opens, then port {port} there, as to any address"
                ),
            );
            return Ok(Explanation {
                steps,
                verdict: Verdict::Allowed,
            });
        }
    };
    let source_ip = source
        .addresses
        .iter()
        .copied()
        .find(|ip| ip.is_ipv4() == dst.is_ipv4())
        .or_else(|| source.addresses.first().copied())
        .unwrap_or(dst.ip());
    let verdict = match upstream {
        Upstream::Hbone {
            gateway,
            authority,
            identity,
            workload,
            waypoint,
        } => {
            let Some(source_identity) = &source.identity else {
                step(
                    "route",
                    format!("refused: {} has no identity for mutual TLS", name(&source)),
                );
                return Ok(Explanation {
                    steps,
                    verdict: Verdict::Refused,
                });
            };
            if state.certificate(source_identity).is_none() {
                step(
                    "route",
                    format!(
                        "no certificate for {source_identity} yet: a connection waits for it (--catch-up-wait), then is refused"
                    ),
                );
            }
            if waypoint {
                let by = workload
                    .as_deref()
                    .map_or_else(|| identity.to_string(), name);
                step(
                    "route",
                    format!(
                        "through waypoint {by} at {gateway}: HBONE (mutual TLS, expecting {identity}), CONNECT {authority}"
                    ),
                );
                step(
                    "policy",
                    "the waypoint applies its L4 and L7 AuthorizationPolicies (and picks a Service's endpoint)".to_owned(),
                );
                Verdict::ToWaypoint
            } else {
                let node = workload.as_deref().map_or("", |w| w.node.as_str());
                step(
                    "route",
                    format!(
                        "HBONE to node {node:?} at {gateway}: mutual TLS expecting {identity}, CONNECT {authority}{}",
                        workload
                            .as_deref()
                            .map(|w| format!(" (pod {})", name(w)))
                            .unwrap_or_default()
                    ),
                );
                match workload {
                    Some(w) => policy(
                        state,
                        &w,
                        &source,
                        source_ip,
                        authority,
                        "at the destination's ztunnel",
                        &mut step,
                    ),
                    None => Verdict::Allowed,
                }
            }
        }
        Upstream::SameNode { addr, workload } => {
            step(
                "route",
                format!(
                    "straight to pod {} at {addr} on this node (no TLS within the node)",
                    name(&workload)
                ),
            );
            policy(
                state, &workload, &source, source_ip, addr, "here", &mut step,
            )
        }
        Upstream::Plain { addr, workload } => {
            step(
                "route",
                match workload {
                    Some(w) => format!(
                        "plain TCP to pod {} at {addr}, which is not in the mesh: no mutual TLS, no policy of the mesh",
                        name(&w)
                    ),
                    None => format!(
                        "plain TCP to {addr}, outside the mesh (outbound policy ALLOW_ANY or a ServiceEntry): no mutual TLS, no policy of the mesh"
                    ),
                },
            );
            Verdict::Allowed
        }
    };
    Ok(Explanation { steps, verdict })
}

/// The destination workload's L4 policies, as its ztunnel applies them.
fn policy(
    state: &State,
    workload: &Workload,
    source: &Workload,
    source_ip: IpAddr,
    dst: SocketAddr,
    at: &str,
    step: &mut impl FnMut(&'static str, String),
) -> Verdict {
    let conn = rbac::Connection {
        src_identity: source.identity.as_ref(),
        src_ip: source_ip,
        dst,
    };
    let policies = &workload.authorization_policies;
    match state.authorize(workload, &conn) {
        Ok(()) if policies.is_empty() => {
            step(
                "policy",
                format!(
                    "{at}: no AuthorizationPolicy applies to {}: allowed",
                    name(workload)
                ),
            );
            Verdict::Allowed
        }
        Ok(()) => {
            step(
                "policy",
                format!(
                    "{at}: allowed by the policies of {} ({})",
                    name(workload),
                    policies.join(", ")
                ),
            );
            Verdict::Allowed
        }
        Err(denied) => {
            step("policy", format!("{at}: {denied}"));
            Verdict::Denied
        }
    }
}

/// The pod `from` names, which must be of this node.
fn source(state: &State, from: &str) -> Result<Arc<Workload>, ExplainError> {
    let found = match from.parse::<IpAddr>() {
        Ok(ip) => state.workload_by_ip(ip.to_canonical()),
        Err(_) => from.split_once('/').and_then(|(namespace, pod)| {
            state.find_workload(|w| w.namespace == namespace && w.name == pod)
        }),
    }
    .ok_or_else(|| ExplainError::UnknownSource(from.to_owned()))?;
    if !state.is_local(&found) {
        return Err(ExplainError::OtherNode {
            pod: name(&found),
            node: found.node.clone(),
        });
    }
    Ok(found)
}

fn name(workload: &Workload) -> String {
    format!("{}/{}", workload.namespace, workload.name)
}

fn list(addresses: &[IpAddr]) -> String {
    addresses
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
