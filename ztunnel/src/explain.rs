//! `/explain` on the admin port: what ztunnel would do with a connection from
//! one of its node's pods to a destination, step by step, and why.
//!
//! The route is the data path's own ([`outbound::route`]: the state's choice,
//! a named endpoint resolved by DNS), followed by the checks `outbound::handle`
//! makes before it carries a connection, and the destination's policy as its
//! ztunnel applies it ([`State::authorize`]). It holds for a connection opened
//! now: a Service's endpoint is the one its balancer gives the next connection
//! (looked at, not taken), and a destination on another node is judged with
//! the policies this ztunnel holds for it, which the agent sends that node's
//! ztunnel too. A port the pod excludes from capture is said to go past
//! ztunnel, as the agent configured the kernel. What it cannot see: whether
//! the node captures DNS (port 53 then goes to the DNS proxy; it notes that)
//! and what a waypoint decides.

use std::net::{IpAddr, SocketAddr};

use serde::Serialize;
use warren_api::addr::ipv4_first;

use crate::{
    proxy::{
        Inputs,
        outbound::{self, Route},
    },
    rbac,
    state::{Pick, State, Upstream, Workload, workload::Mode},
};

/// One step of the path, in the order the data path takes them (the
/// waypoint's `/explain` tells its steps the same way).
#[derive(Debug, Serialize)]
pub struct Step {
    /// Here `source`, `name`, `destination`, `route`, `policy` or `note`.
    pub stage: &'static str,
    /// What happens there, in words.
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
    /// Not captured: it goes to its destination past ztunnel, outside the
    /// mesh's mTLS and policies.
    NotCaptured,
}

/// The steps and how they end: a [`Verdict`] here, a request's verdict in
/// the waypoint.
#[derive(Debug, Serialize)]
pub struct Explanation<V = Verdict> {
    pub steps: Vec<Step>,
    pub verdict: V,
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
    #[error("{0} is not in the mesh: its connections are not captured")]
    NotInMesh(String),
    #[error("{0} has no address")]
    NoAddress(String),
    #[error(
        "{0:?} is neither address:port, host:port nor namespace/pod:port (an IPv6 address goes in brackets)"
    )]
    BadDestination(String),
    #[error("no pod {0:?} is known to this ztunnel")]
    UnknownDestination(String),
    #[error("{host} is no name of the mesh that namespace {namespace} sees: {why}")]
    NotMeshName {
        host: String,
        namespace: String,
        why: &'static str,
    },
}

/// How an explanation ends when the connection is refused (the last step
/// says why).
fn refused(steps: Vec<Step>) -> Explanation {
    Explanation {
        steps,
        verdict: Verdict::Refused,
    }
}

/// Explains a connection from `from` (a pod of this node: an address, or
/// `namespace/name`) to `to` (`address:port`, `host:port` for a name the
/// DNS proxy answers, or `namespace/pod:port` for a pod's own address).
pub async fn explain(inputs: &Inputs, from: &str, to: &str) -> Result<Explanation, ExplainError> {
    let state = &inputs.state;
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
    let dst = destination(state, &source, to, &mut step)?;
    let source_ip = source
        .address_toward(dst.ip())
        .ok_or_else(|| ExplainError::NoAddress(name(&source)))?;
    if source.excluded_ports.contains(&dst.port()) {
        step(
            "capture",
            format!(
                "port {} is excluded from capture for this pod (annotation warren.io/exclude-outbound-ports): the kernel lets the connection go straight to {dst}; ztunnel never sees it, so no mTLS, policy or waypoint applies",
                dst.port()
            ),
        );
        // Plaintext meets the destination's guard: a STRICT pod of the
        // mesh drops it.
        let strict = |w: &Workload| w.hbone && w.mode_on(dst.port()) == Mode::Strict;
        if let Some(pod) = state.workload_by_ip(dst.ip()) {
            if strict(&pod) {
                step(
                    "policy",
                    format!(
                        "pod {} is STRICT on port {}: its guard drops the plaintext connection",
                        name(&pod),
                        dst.port()
                    ),
                );
                return Ok(refused(steps));
            }
        } else if state.service_by_vip(dst.ip()).is_some() {
            step(
                "note",
                "an endpoint of the Service that is a STRICT pod of the mesh drops the plaintext connection".to_owned(),
            );
        }
        return Ok(Explanation {
            steps,
            verdict: Verdict::NotCaptured,
        });
    }
    if dst.port() == 53 && !inputs.config.dns_proxy_addrs.is_empty() {
        step(
            "note",
            "port 53: where the node captures DNS (--ztunnel-dns-port), this connection goes to the DNS proxy instead".to_owned(),
        );
    }

    let Route {
        service,
        upstream,
        named,
    } = match outbound::route(inputs, dst, &source, Pick::Peek).await {
        Ok(route) => route,
        Err(refusal) => {
            step(
                "destination",
                format!("{dst}: refused ({})", refusal.detail),
            );
            return Ok(refused(steps));
        }
    };
    if let Some(service) = &service {
        step(
            "destination",
            format!("{dst} is an address of {}", service.key),
        );
    }
    if let Some((host, ip)) = named {
        step(
            "destination",
            format!(
                "its endpoint is named {host}: DNS gives {ip} now (a connection picks among the addresses as the ServiceEntry's resolution says)"
            ),
        );
    }
    let verdict = match upstream {
        Upstream::Hbone {
            gateway,
            authority,
            identity,
            workload,
            waypoint,
        } => {
            // As `outbound::handle` checks before it opens the tunnel.
            let Some(source_identity) = &source.identity else {
                step(
                    "route",
                    format!("refused: {} has no identity for mutual TLS", name(&source)),
                );
                return Ok(refused(steps));
            };
            if state.certificate(source_identity).is_none() {
                step(
                    "route",
                    format!(
                        "refused: no certificate for {source_identity} yet (a connection waits --catch-up-wait for it)"
                    ),
                );
                return Ok(refused(steps));
            }
            if state.trust_bundle().is_none() {
                step("route", "refused: no trust bundle yet".to_owned());
                return Ok(refused(steps));
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
                    "the waypoint applies its AuthorizationPolicies (and picks a Service's endpoint)"
                        .to_owned(),
                );
                Verdict::ToWaypoint
            } else {
                let node = workload.as_deref().map_or("", |w| w.node.as_str());
                let pod = workload
                    .as_deref()
                    .map(|w| format!(" ({})", what(w)))
                    .unwrap_or_default();
                // A WorkloadEntry on no node terminates HBONE itself.
                let to = if node.is_empty() {
                    "its own HBONE endpoint".to_owned()
                } else {
                    format!("node {node:?}")
                };
                step(
                    "route",
                    format!(
                        "HBONE to {to} at {gateway}: mutual TLS expecting {identity}, CONNECT {authority}{pod}"
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
                        "plain TCP to {} at {addr}, which is not in the mesh: no mutual TLS, no policy of the mesh",
                        what(&w)
                    ),
                    None => format!(
                        "plain TCP to {addr}, outside the mesh: no mutual TLS, no policy of the mesh"
                    ),
                },
            );
            Verdict::Allowed
        }
    };
    Ok(Explanation { steps, verdict })
}

/// The pod `from` names: of this node, and in the mesh.
fn source(state: &State, from: &str) -> Result<std::sync::Arc<Workload>, ExplainError> {
    let found = match from.parse::<IpAddr>() {
        Ok(ip) => state.workload_by_ip(ip),
        Err(_) => state.pod(from),
    }
    .ok_or_else(|| ExplainError::UnknownSource(from.to_owned()))?;
    if !state.is_local(&found) {
        return Err(ExplainError::OtherNode {
            pod: name(&found),
            node: found.node.clone(),
        });
    }
    if !found.hbone {
        return Err(ExplainError::NotInMesh(name(&found)));
    }
    Ok(found)
}

/// The address `to` names: as given, or a name as the DNS proxy answers `source`.
fn destination(
    state: &State,
    source: &Workload,
    to: &str,
    step: &mut impl FnMut(&'static str, String),
) -> Result<SocketAddr, ExplainError> {
    if let Ok(dst) = to.parse::<SocketAddr>() {
        return Ok(SocketAddr::new(dst.ip().to_canonical(), dst.port()));
    }
    let bad = || ExplainError::BadDestination(to.to_owned());
    let (host, port) = to.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    // An address without its brackets, or a name with a port of its own.
    if host.parse::<IpAddr>().is_ok() || host.contains(':') {
        return Err(bad());
    }
    // A pod by name, dialled at its own address.
    if host.contains('/') {
        let pod = state
            .pod(host)
            .ok_or_else(|| ExplainError::UnknownDestination(host.to_owned()))?;
        let ip =
            ipv4_first(&pod.addresses).ok_or_else(|| ExplainError::NoAddress(host.to_owned()))?;
        step("name", format!("pod {host} is at {ip}"));
        return Ok(SocketAddr::new(ip, port));
    }
    let not_mesh = |why| ExplainError::NotMeshName {
        host: host.to_owned(),
        namespace: source.namespace.clone(),
        why,
    };
    let service = state
        .service_by_dns_name(host, &source.namespace)
        .ok_or_else(|| {
            not_mesh("the pod's DNS server resolves it; explain the address it gives")
        })?;
    // The DNS proxy's answer a resolver asking for both dials first.
    let ip = ipv4_first(&service.vips).ok_or_else(|| {
            not_mesh("a ServiceEntry host without addresses, which the pod's DNS server resolves; explain the address it gives")
        })?;
    step(
        "name",
        format!("{host} is {}: the DNS proxy answers {ip}", service.key),
    );
    Ok(SocketAddr::new(ip, port))
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

fn name(workload: &Workload) -> String {
    format!("{}/{}", workload.namespace, workload.name)
}

/// What a workload is, with its name: a pod, or a WorkloadEntry (a VM or a
/// server outside Kubernetes).
fn what(workload: &Workload) -> String {
    if warren_api::key::is_workload_entry(&workload.key) {
        format!("WorkloadEntry {}", name(workload))
    } else {
        format!("pod {}", name(workload))
    }
}

fn list(addresses: &[IpAddr]) -> String {
    addresses
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
