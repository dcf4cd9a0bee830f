//! Plaintext inbound (15006): a connection from outside the mesh to a pod of this node.
//! Allowed only where PeerAuthentication is PERMISSIVE (or DISABLE) for that port, and
//! then only as the pod's policies allow a peer with no identity.

use std::{net::SocketAddr, os::fd::AsFd as _, sync::Arc};

use tokio::net::{TcpListener, TcpStream};
use tracing::{info, warn};
use warren_ebpf_common::origin;

use super::{
    Inputs, connect,
    connection::{AccessLog, Report, relay},
    reset,
};
use crate::{
    drain,
    metrics::{ConnectionLabels, Reporter, SecurityPolicy},
    rbac,
    state::workload::Mode,
};

const DIRECTION: &str = "inbound_passthrough";

pub async fn serve(inputs: Arc<Inputs>, listener: TcpListener, drain: drain::Watch) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "inbound plaintext listener ready");
    }
    super::accept_loop(listener, drain, "inbound_passthrough", move |stream, peer, drain| {
        let inputs = Arc::clone(&inputs);
        async move {
            let dst = stream
                .local_addr()
                .map_err(|source| origin::LookupError::Getsockopt { option: "getsockname", source })
                .and_then(|local| origin::original_dst(stream.as_fd(), peer, local));
            match dst {
                Ok(dst) => handle(inputs, stream, peer, dst, drain).await,
                Err(error) => {
                    warn!(%peer, %error, "plaintext inbound without an original destination; resetting");
                    inputs.metrics.refuse(DIRECTION, "no_original_destination");
                    reset(stream);
                }
            }
        }
    })
    .await;
}

/// Proxies one plaintext inbound connection to `dst`. Public so tests can drive it
/// without a redirect.
pub async fn handle(
    inputs: Arc<Inputs>,
    client: TcpStream,
    peer: SocketAddr,
    dst: SocketAddr,
    mut drain: drain::Watch,
) {
    let dst = SocketAddr::new(dst.ip().to_canonical(), dst.port());
    let refuse = |client: TcpStream, reason: &'static str, detail: String| {
        warn!(%peer, %dst, reason, %detail, "plaintext inbound refused");
        inputs.metrics.refuse(DIRECTION, reason);
        reset(client);
    };
    let state = &inputs.state;
    let Some(workload) = state.local_workload_by_ip(dst.ip()) else {
        return refuse(
            client,
            "unknown_destination",
            format!("{} is not a workload of this node", dst.ip()),
        );
    };
    let service = state.inbound_service(&workload, dst.port());
    let log = AccessLog {
        direction: DIRECTION,
        src: peer,
        dst,
        src_identity: None,
        dst_identity: workload.identity.clone(),
        dst_service: service.as_deref().map(|s| s.telemetry_host().to_owned()),
        path: "passthrough",
    };
    if workload.hbone && workload.mode_on(dst.port()) == Mode::Strict {
        let detail = format!(
            "{} requires mTLS (STRICT) on port {}",
            workload.key,
            dst.port()
        );
        log.refused(&detail);
        return refuse(client, "strict_mtls", detail);
    }
    let src_ip = peer.ip().to_canonical();
    let conn = rbac::Connection {
        src_identity: None,
        src_ip,
        dst,
    };
    if let Err(denied) = state.authorize(&workload, &conn) {
        let detail = format!("{conn}: {denied}");
        log.refused(&detail);
        return refuse(client, denied.reason(), detail);
    }
    let mut admitted = inputs.authorized.admit(&workload.key, &conn, true);
    let source = state.workload_by_ip(src_ip);
    let labels = vec![ConnectionLabels::new(
        Reporter::destination,
        source.as_deref(),
        None,
        Some(&workload),
        service.as_deref(),
        SecurityPolicy::unknown,
    )];
    let report = Report::open(&inputs.metrics, labels, log);
    match connect(
        dst,
        inputs.config.socket_mark(),
        inputs.config.connect_timeout,
    )
    .await
    {
        Ok(pod) => {
            let relayed = relay(
                client,
                pod,
                inputs.config.buffer_size,
                &mut drain,
                Some(&mut admitted),
            )
            .await;
            if relayed.revoked {
                inputs.metrics.refuse(DIRECTION, "policy_changed");
            }
            report.finish(&relayed);
        }
        Err(error) => {
            inputs.metrics.refuse(DIRECTION, "pod_connect");
            report.fail(&error.to_string());
            reset(client);
        }
    }
}
