//! HBONE inbound (15008): a CONNECT from a peer ztunnel, already mutually
//! authenticated, for a pod of this node. PeerAuthentication is satisfied (HBONE is
//! mTLS); the pod's L4 AuthorizationPolicies decide; then the pod is dialled and bytes
//! flow through the CONNECT stream.

use std::{net::SocketAddr, sync::Arc};

use http::{Method, Request, StatusCode};
use tokio::net::TcpListener;
use tracing::{info, warn};

use super::{
    Inputs, connect,
    connection::{AccessLog, Report, TunnelEnd, relay_tunnel},
    hbone::{
        original_source,
        server::{ConnectHandler, Peer, Stream},
    },
};
use crate::{
    drain,
    metrics::{ConnectionLabels, Reporter, SecurityPolicy},
    rbac,
};

const DIRECTION: &str = "inbound";

/// Accepts HBONE connections until draining starts.
pub async fn serve(inputs: Arc<Inputs>, listener: TcpListener, drain: drain::Watch) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "HBONE listener ready");
    }
    let handler = Inbound(Arc::clone(&inputs));
    super::accept_loop(listener, drain, "hbone", move |stream, peer, drain| {
        super::hbone::server::serve(Arc::clone(&inputs), stream, peer, drain, handler.clone())
    })
    .await;
}

/// ztunnel's answer to a CONNECT: relay to a pod of this node.
#[derive(Clone)]
struct Inbound(Arc<Inputs>);

impl ConnectHandler for Inbound {
    async fn handle(
        &self,
        request: Request<()>,
        stream: Stream,
        peer: Arc<Peer>,
        drain: drain::Watch,
    ) {
        handle(Arc::clone(&self.0), request, stream, peer, drain).await
    }
}

/// Answers one request of an HBONE connection and relays its stream until it ends.
pub async fn handle(
    inputs: Arc<Inputs>,
    request: Request<()>,
    stream: Stream,
    peer: Arc<Peer>,
    mut drain: drain::Watch,
) {
    let refuse = |stream: Stream, status: StatusCode, reason: &'static str, detail: String| {
        warn!(peer = %peer.addr, identity = %peer.identity, reason, %detail, "HBONE request refused");
        inputs.metrics.refuse(DIRECTION, reason);
        stream.refuse(status, detail);
    };
    if request.method() != Method::CONNECT {
        return refuse(
            stream,
            StatusCode::BAD_REQUEST,
            "not_connect",
            format!("only CONNECT is served here, not {}", request.method()),
        );
    }
    let authority = request
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    let Ok(dst) = authority.parse::<SocketAddr>() else {
        return refuse(
            stream,
            StatusCode::BAD_REQUEST,
            "bad_authority",
            format!("the CONNECT authority {authority:?} is not an ip:port"),
        );
    };
    let dst = SocketAddr::new(dst.ip().to_canonical(), dst.port());
    let state = &inputs.state;
    let Some(workload) = state.local_workload_by_ip(dst.ip()) else {
        return refuse(
            stream,
            StatusCode::NOT_FOUND,
            "unknown_destination",
            format!("{} is not a workload of this node", dst.ip()),
        );
    };
    // Only a pod of the mesh is reached this way, as Istio's ztunnel checks
    // the tunnel's target: a pod outside it (or on the host network, whose
    // address is the node's) or a waypoint would let any holder of a mesh
    // certificate dial the node's own ports, or around a pod's own proxy.
    if !workload.hbone || workload.is_waypoint {
        let what = if workload.is_waypoint {
            "a waypoint, which terminates its own tunnels"
        } else {
            "outside the mesh"
        };
        return refuse(
            stream,
            StatusCode::NOT_FOUND,
            "unknown_destination",
            format!("{} ({}) is {what}", dst.ip(), workload.key),
        );
    }

    let (src_ip, source_workload) = original_source(state, request.headers(), &peer);
    let service = state.inbound_service(&workload, dst.port());

    let log = AccessLog {
        direction: DIRECTION,
        src: SocketAddr::new(src_ip, 0),
        dst,
        src_identity: Some(peer.identity.clone()),
        dst_identity: workload.identity.clone(),
        dst_service: service.as_deref().map(|s| s.telemetry_host().to_owned()),
        path: "hbone",
    };
    let conn = rbac::Connection {
        src_identity: Some(&peer.identity),
        src_ip,
        dst,
    };
    if let Err(denied) = state.authorize(&workload, &conn) {
        let detail = format!("{conn}: {denied}");
        log.refused(&detail);
        return refuse(stream, StatusCode::FORBIDDEN, denied.reason(), detail);
    }
    let mut admitted = inputs.authorized.admit(&workload.key, &conn, false);

    let labels = ConnectionLabels::new(
        Reporter::destination,
        source_workload.as_deref(),
        Some(&peer.identity),
        Some(&workload),
        service.as_deref(),
        SecurityPolicy::mutual_tls,
    );
    let pod = match connect(
        dst,
        inputs.config.socket_mark(),
        inputs.config.connect_timeout,
    )
    .await
    {
        Ok(pod) => pod,
        Err(error) => {
            let detail = format!("connecting to {dst}: {error}");
            log.refused(&detail);
            return refuse(
                stream,
                StatusCode::SERVICE_UNAVAILABLE,
                "pod_connect",
                detail,
            );
        }
    };
    let metrics = &inputs.metrics;
    let report = Report::open(metrics, vec![labels], log);
    match stream.accept() {
        Ok(tunnel) => {
            let buffer = inputs.config.buffer_size;
            let relayed = relay_tunnel(
                pod,
                tunnel,
                TunnelEnd::Downstream,
                buffer,
                &mut drain,
                Some(&mut admitted),
            )
            .await;
            if relayed.revoked {
                metrics.refuse(DIRECTION, "policy_changed");
            }
            report.finish(&relayed);
        }
        Err(error) => {
            metrics.refuse(DIRECTION, "stream_gone");
            report.fail(&format!(
                "the CONNECT stream was gone before its answer: {error}"
            ));
        }
    }
}
