//! Outbound (15001): connections the eBPF connect hook redirected from local pods. The
//! kernel says where each was going and which pod opened it; ztunnel resolves the
//! destination (resolving an endpoint known by name) and carries the bytes: HBONE to
//! another node (or a waypoint), straight to a pod of this node after its policy, or
//! plain TCP outside the mesh.

use std::{
    net::{IpAddr, SocketAddr},
    os::fd::AsFd as _,
    path::Path,
    sync::Arc,
};

use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};
use warren_ebpf_common::origin::{self, Origin};

use super::{
    Inputs, connect, connect_in,
    connection::{AccessLog, Report, TunnelEnd, relay, relay_tunnel},
    hbone::client::Establish,
    pool::PoolKey,
    reset,
    revocation::Admitted,
};
use crate::{
    drain,
    metrics::{ConnectionLabels, Reporter, SecurityPolicy},
    rbac,
    state::{Pick, Service, State, Target, Upstream, Workload},
};

const DIRECTION: &str = "outbound";

/// Accepts captured connections until draining starts.
pub async fn serve(inputs: Arc<Inputs>, listener: TcpListener, drain: drain::Watch) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "outbound listener ready");
    }
    super::accept_loop(listener, drain, "outbound", move |stream, peer, drain| {
        let inputs = Arc::clone(&inputs);
        async move {
            match lookup_origin(&stream, peer) {
                Ok(origin) => handle(inputs, stream, peer, origin, drain).await,
                Err(error) => {
                    warn!(%peer, %error, "captured connection without an original destination; resetting");
                    inputs.metrics.refuse(DIRECTION, "no_original_destination");
                    reset(stream);
                }
            }
        }
    })
    .await;
}

/// Asks the kernel: Warren's own option first (destination and the pod's netns cookie),
/// then the standard `SO_ORIGINAL_DST` (destination only).
fn lookup_origin(stream: &TcpStream, peer: SocketAddr) -> Result<Origin, origin::LookupError> {
    let local = stream
        .local_addr()
        .map_err(|source| origin::LookupError::Getsockopt {
            option: "getsockname",
            source,
        })?;
    match origin::origin(stream.as_fd(), local) {
        Ok(found) => Ok(found),
        Err(error) => {
            debug!(%peer, %error, "SO_WARREN_ORIGIN unanswered; asking SO_ORIGINAL_DST");
            let dst = origin::original_dst(stream.as_fd(), peer, local)?;
            Ok(Origin {
                dst,
                netns_cookie: 0,
            })
        }
    }
}

/// Which pod opened the connection: by the kernel's netns cookie, else (cookie 0 or
/// unknown) by source address, among this node's workloads only: a captured connection
/// comes from a pod of this node, and an address of another node's pod would lend its
/// identity to whoever could send from it.
///
/// A cookie not known yet is waited for (up to `--catch-up-wait`): the agent captures
/// a starting pod before its containers run, and publishes it in the same breath, but
/// the pod's first connection can still arrive here before the update does.
async fn source_workload(inputs: &Inputs, peer: SocketAddr, cookie: u64) -> Option<Arc<Workload>> {
    if cookie != 0 {
        let by_cookie = |state: &State| state.workload_by_cookie(cookie);
        if let Some(w) = by_cookie(&inputs.state) {
            return Some(w);
        }
        let since = std::time::Instant::now();
        if let Some(w) = inputs
            .state
            .wait_for(inputs.config.catch_up_wait, by_cookie)
            .await
        {
            info!(%peer, cookie, waited = ?since.elapsed(), "source pod known after waiting for the agent's update");
            return Some(w);
        }
        info!(%peer, cookie, "netns cookie unknown to ztunnel; identifying the source by address");
    } else {
        debug!(%peer, "no netns cookie from the kernel; identifying the source by address");
    }
    inputs.state.local_workload_by_ip(peer.ip())
}

/// Where a connection goes, as [`route`] found it.
#[derive(Debug)]
pub struct Route {
    /// The Service whose address was dialled.
    pub service: Option<Arc<Service>>,
    pub upstream: Upstream,
    /// The endpoint's name and the address DNS gave it, for an endpoint known
    /// by name.
    pub named: Option<(String, IpAddr)>,
}

/// Why [`route`] found nowhere to go: a reason for metrics, and what it was.
#[derive(Debug)]
pub struct Refusal {
    pub reason: &'static str,
    pub detail: String,
}

/// Where a connection from `source` to `dst` goes: the state's choice
/// ([`State::resolve`]), an endpoint known by name resolved per connection,
/// outside the state's lock. `pick` says whether a Service's endpoint is taken
/// (a connection) or only looked at (`/explain`).
pub async fn route(
    inputs: &Inputs,
    dst: SocketAddr,
    source: &Workload,
    pick: Pick,
) -> Result<Route, Refusal> {
    let refusal = |reason: &'static str, detail: &dyn std::fmt::Display| Refusal {
        reason,
        detail: detail.to_string(),
    };
    let resolved = inputs
        .state
        .resolve(dst, Some(source), inputs.config.prefer_same_node, pick)
        .map_err(|error| refusal(error.reason(), &error))?;
    let (upstream, named) = match resolved.target {
        Target::Upstream(upstream) => (upstream, None),
        Target::Named {
            host,
            port,
            first_address,
        } => {
            let ip = inputs
                .dns
                .pick(
                    &host,
                    first_address,
                    dst.is_ipv4(),
                    inputs.config.connect_timeout,
                )
                .await
                .map_err(|error| refusal("dns", &error))?;
            debug!(%dst, %host, %ip, "endpoint name resolved");
            let upstream = inputs
                .state
                .to_address(&host, SocketAddr::new(ip, port))
                .map_err(|error| refusal(error.reason(), &error))?;
            (upstream, Some((host, ip)))
        }
    };
    Ok(Route {
        service: resolved.service,
        upstream,
        named,
    })
}

/// Proxies one captured connection whose origin is known. Public so tests (and tools)
/// can drive the outbound path without the eBPF capture.
pub async fn handle(
    inputs: Arc<Inputs>,
    client: TcpStream,
    peer: SocketAddr,
    origin: Origin,
    mut drain: drain::Watch,
) {
    let dst = SocketAddr::new(origin.dst.ip().to_canonical(), origin.dst.port());
    // Refused before it was opened: the refusal counter, a warning and an access line
    // (the connection metrics never saw it).
    let refuse = |client: TcpStream,
                  source: Option<&Workload>,
                  reason: &'static str,
                  detail: &dyn std::fmt::Display| {
        warn!(%peer, %dst, reason, %detail, "outbound connection refused");
        inputs.metrics.refuse(DIRECTION, reason);
        AccessLog {
            direction: DIRECTION,
            src: peer,
            dst,
            src_identity: source.and_then(|w| w.identity.clone()),
            dst_identity: None,
            dst_service: None,
            path: "refused",
        }
        .refused(&format!("{reason}: {detail}"));
        reset(client);
    };
    let Some(source) = source_workload(&inputs, peer, origin.netns_cookie).await else {
        return refuse(
            client,
            None,
            "unknown_source",
            &format_args!(
                "no workload with cookie {} or address {}",
                origin.netns_cookie,
                peer.ip()
            ),
        );
    };
    let Route {
        service, upstream, ..
    } = match route(&inputs, dst, &source, Pick::Take).await {
        Ok(route) => route,
        Err(refusal) => return refuse(client, Some(&source), refusal.reason, &refusal.detail),
    };
    let buffer = inputs.config.buffer_size;
    let metrics = &inputs.metrics;
    match upstream {
        Upstream::Hbone {
            gateway,
            authority,
            identity,
            workload,
            waypoint,
        } => {
            let Some(source_identity) = source.identity.clone() else {
                return refuse(
                    client,
                    Some(&source),
                    "no_source_identity",
                    &format_args!("{} has no identity", source.key),
                );
            };
            // A pod new to the node: its certificate is being issued.
            let cert = inputs
                .state
                .wait_for(inputs.config.catch_up_wait, |state| {
                    state.certificate(&source_identity)
                })
                .await;
            let Some(cert) = cert else {
                return refuse(
                    client,
                    Some(&source),
                    "no_certificate",
                    &format_args!("no certificate for {source_identity}"),
                );
            };
            let Some(trust) = inputs.state.trust_bundle() else {
                return refuse(client, Some(&source), "no_trust_bundle", &"no trust bundle");
            };
            let labels = ConnectionLabels::new(
                Reporter::source,
                Some(&source),
                None,
                workload.as_deref(),
                service.as_deref(),
                SecurityPolicy::mutual_tls,
            );
            let log = AccessLog {
                direction: DIRECTION,
                src: peer,
                dst: authority,
                src_identity: Some(source_identity.clone()),
                dst_identity: Some(identity.clone()),
                dst_service: service.as_deref().map(|s| s.telemetry_host().to_owned()),
                path: if waypoint { "waypoint" } else { "hbone" },
            };
            let report = Report::open(metrics, vec![labels], log);
            let key = PoolKey {
                source: source_identity,
                gateway,
                expected: identity,
            };
            match inputs
                .pool
                .tunnel(
                    &key,
                    &cert,
                    &trust,
                    authority,
                    Some(peer.ip().to_canonical()),
                    Establish::SendEarly,
                )
                .await
            {
                Ok(tunnel) => {
                    let relayed = relay_tunnel(
                        client,
                        tunnel,
                        TunnelEnd::Upstream,
                        buffer,
                        &mut drain,
                        None,
                    )
                    .await;
                    if relayed.sent_again {
                        metrics.sent_again.inc();
                    }
                    match &relayed.failed_connect {
                        // Failed after the client's first bytes left: reported as a
                        // failed open all the same (relay_tunnel reset the client).
                        Some(error) => {
                            warn!(%peer, %dst, %gateway, reason = error.reason(), %error, "HBONE tunnel failed");
                            metrics.refuse(DIRECTION, error.reason());
                            report.fail(&error.to_string());
                        }
                        None => report.finish(&relayed),
                    }
                }
                Err(error) => {
                    warn!(%peer, %dst, %gateway, reason = error.reason(), %error, "HBONE tunnel failed");
                    metrics.refuse(DIRECTION, error.reason());
                    report.fail(&error.to_string());
                    reset(client);
                }
            }
        }
        Upstream::SameNode { addr, workload } => {
            // No TLS on the node, but the destination's policy all the same: the
            // source's identity comes from the kernel (its netns cookie).
            let conn = rbac::Connection {
                src_identity: source.identity.as_ref(),
                src_ip: peer.ip().to_canonical(),
                dst: addr,
            };
            if let Err(denied) = inputs.state.authorize(&workload, &conn) {
                return refuse(
                    client,
                    Some(&source),
                    denied.reason(),
                    &format_args!("{conn}: {denied}"),
                );
            }
            let admitted = inputs.authorized.admit(&workload.key, &conn, false);
            let labels = [Reporter::source, Reporter::destination]
                .into_iter()
                .map(|reporter| {
                    ConnectionLabels::new(
                        reporter,
                        Some(&source),
                        None,
                        Some(&workload),
                        service.as_deref(),
                        SecurityPolicy::mutual_tls,
                    )
                })
                .collect();
            let log = AccessLog {
                direction: DIRECTION,
                src: peer,
                dst: addr,
                src_identity: source.identity.clone(),
                dst_identity: workload.identity.clone(),
                dst_service: service.as_deref().map(|s| s.telemetry_host().to_owned()),
                path: "direct",
            };
            // From the node, as HBONE would deliver it: the pod is in the mesh.
            let report = Report::open(&inputs.metrics, labels, log);
            plain(
                &inputs,
                client,
                addr,
                None,
                Some(admitted),
                report,
                &mut drain,
            )
            .await;
        }
        Upstream::Plain { addr, workload } => {
            let labels = vec![ConnectionLabels::new(
                Reporter::source,
                Some(&source),
                None,
                workload.as_deref(),
                service.as_deref(),
                SecurityPolicy::unknown,
            )];
            let log = AccessLog {
                direction: DIRECTION,
                src: peer,
                dst: addr,
                src_identity: source.identity.clone(),
                dst_identity: None,
                dst_service: service.as_deref().map(|s| s.telemetry_host().to_owned()),
                path: if workload.is_some() || service.is_some() {
                    "plain"
                } else {
                    "passthrough"
                },
            };
            // Outside the mesh: from the pod, as without the mesh.
            let netns = source.netns.as_deref();
            let report = Report::open(&inputs.metrics, labels, log);
            plain(&inputs, client, addr, netns, None, report, &mut drain).await;
        }
    }
}

/// A direct TCP connection from ztunnel (marked) and the relay; made in
/// `netns` (the source pod's) when given.
async fn plain(
    inputs: &Inputs,
    client: TcpStream,
    addr: SocketAddr,
    netns: Option<&Path>,
    mut admitted: Option<Admitted>,
    report: Report<'_>,
    drain: &mut drain::Watch,
) {
    let (mark, timeout) = (inputs.config.socket_mark(), inputs.config.connect_timeout);
    let connected = match netns {
        Some(netns) => connect_in(netns, addr, mark, timeout).await,
        None => connect(addr, mark, timeout).await,
    };
    match connected {
        Ok(upstream) => {
            let relayed = relay(
                client,
                upstream,
                inputs.config.buffer_size,
                drain,
                admitted.as_mut(),
            )
            .await;
            if relayed.revoked {
                inputs.metrics.refuse(DIRECTION, "policy_changed");
            }
            report.finish(&relayed);
        }
        Err(error) => {
            warn!(%addr, %error, "outbound connect failed");
            inputs.metrics.refuse(DIRECTION, "connect");
            report.fail(&error.to_string());
            reset(client);
        }
    }
}
