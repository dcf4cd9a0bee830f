//! The waypoint's data path.
//!
//! - [`connect`]: upstream connections (HBONE to the endpoint's node, or TCP).
//! - [`multiplex`]: the HTTP/2 upstream pool, one connection per endpoint.
//! - [`names`]: endpoints known by name (ServiceEntry `resolution: DNS`),
//!   resolved into one endpoint per address.
//! - [`http`]: one request: route, fault, retries and timeouts, load
//!   balancing, mirrors, headers, telemetry.
//! - [`replay`]: a request body streamed to every attempt and mirror, kept
//!   for retries up to a limit.
//! - `report`: a request's metrics and access line, once its answer is sent.
//! - [`upgrade`]: HTTP/1.1 upgrades (WebSocket) spliced once switched.
//! - [`tcp`]: a connection to a TCP port: routed once, then spliced.
//!
//! Traffic arrives as HBONE CONNECT streams from ztunnels, for a service VIP
//! and port; inside each stream the client's HTTP (1.1 or 2) is served.

pub mod connect;
pub mod destination;
mod external;
mod hello;
pub mod http;
pub mod keepalive;
mod lifetime;
pub mod multiplex;
pub mod names;
mod prefixed;
pub mod replay;
mod report;
pub mod spans;
pub mod tcp;
pub mod trace;
pub mod upgrade;

use std::{net::SocketAddr, sync::Arc};

use ::http::{Method, Request, StatusCode};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tracing::{debug, warn};
use warren_ztunnel::{
    drain,
    proxy::hbone::{
        Tunnel, original_source,
        server::{ConnectHandler, Peer, Stream},
    },
    state::{Service, State, Workload, service::Protocol},
};

use crate::{
    app::Context,
    authz::{self, AtConnect},
};

const DIRECTION: &str = "waypoint";

/// Who sent a CONNECT stream, and for which service.
pub struct Downstream {
    pub peer: Arc<Peer>,
    /// The names the peer answers to in AuthorizationPolicy principals (its
    /// own, then under the mesh's other trust domains).
    pub principals: Vec<String>,
    /// The source workload, when the ztunnel's `Forwarded` names one with the
    /// peer's identity.
    pub source: Option<Arc<Workload>>,
    pub source_ip: std::net::IpAddr,
    pub service: Arc<Service>,
    /// The service address and port the CONNECT asked for.
    pub vip: std::net::IpAddr,
    pub port: u16,
    /// The request metrics this connection has reported to.
    pub metrics: crate::metrics::RequestMetricsCache,
    /// A random id of this connection (a new hash cookie's seed).
    pub connection: u64,
}

impl Downstream {
    /// Who calls and where, as AuthorizationPolicies read it.
    pub fn authz_peer(&self) -> authz::Peer<'_> {
        authz::Peer {
            identity: &self.peer.identity,
            principals: &self.principals,
            source_ip: self.source_ip,
            destination_ip: self.vip,
            service: &self.service.name,
            service_namespace: &self.service.namespace,
            port: self.port,
        }
    }

    /// The client as load balancing sees it (what it dialled as its
    /// connection was made; see [`Client::dialled_now`]).
    pub fn client(&self) -> Client {
        Client {
            addr: SocketAddr::new(self.source_ip, 0),
            connection: self.connection,
            dialled: Some(Dialled {
                addr: SocketAddr::new(self.vip, self.port),
                service: Arc::clone(&self.service),
            }),
        }
    }
}

/// The client of a request, as load balancing sees it: its address
/// (`useSourceIp`; the port is not known past ztunnel), its connection, and
/// what it dialled (where an original-destination cluster sends it; `None`
/// for the waypoint's own calls).
#[derive(Clone, Debug)]
pub struct Client {
    pub addr: SocketAddr,
    pub connection: u64,
    pub dialled: Option<Dialled>,
}

/// The address a client dialled, and the Service its ztunnel sent the
/// connection to this waypoint for.
#[derive(Clone, Debug)]
pub struct Dialled {
    pub addr: SocketAddr,
    pub service: Arc<Service>,
}

impl Client {
    /// What it dialled, with the entry as it is now: a kept-alive connection
    /// made while its entry had endpoints (`STATIC`) meets it resolved
    /// `NONE` later, and must go where it dialled then, as a new one would.
    /// `None` once the entry is gone: nothing it dialled may be reached.
    pub fn dialled_now(&self, state: &State) -> Option<(SocketAddr, Arc<Service>)> {
        let dialled = self.dialled.as_ref()?;
        Some((dialled.addr, state.service(&dialled.service.key)?))
    }
}

/// An answer's body, at most `limit` bytes, and its trailers: the answers
/// to the waypoint's own calls (an authorizer's, a span collector's).
pub(super) async fn read_whole(
    mut body: crate::app::Body,
    limit: usize,
) -> Result<(bytes::Bytes, Option<::http::HeaderMap>), String> {
    use http_body_util::BodyExt as _;
    let mut data = bytes::BytesMut::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading the answer: {e}"))?;
        match frame.into_data() {
            Ok(chunk) => {
                if data.len() + chunk.len() > limit {
                    return Err(format!("the answer is longer than {limit} bytes"));
                }
                data.extend_from_slice(&chunk);
            }
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    Ok((data.freeze(), trailers))
}

/// The waypoint's answer to a CONNECT: serve HTTP inside it.
#[derive(Clone)]
pub struct Waypoint(pub Arc<Context>);

impl ConnectHandler for Waypoint {
    async fn handle(
        &self,
        request: Request<()>,
        stream: Stream,
        peer: Arc<Peer>,
        drain: drain::Watch,
    ) {
        let ctx = &self.0;
        let refuse = |stream: Stream, status: StatusCode, reason: &'static str, detail: String| {
            warn!(peer = %peer.addr, identity = %peer.identity, reason, %detail, "waypoint refused a CONNECT");
            ctx.inputs.metrics.refuse(DIRECTION, reason);
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
        let state = &ctx.inputs.state;
        // The service (or pod) the client's ztunnel sent it to, seen from
        // the client's namespace (from its certificate).
        let Some(service) = destination::of_connect(state, dst, &peer.identity.namespace) else {
            return refuse(
                stream,
                StatusCode::NOT_FOUND,
                "unknown_destination",
                format!(
                    "{} is not the address of a service or pod using a waypoint",
                    dst.ip()
                ),
            );
        };
        // Only the Services bound to this waypoint: another waypoint's would
        // get this one's Gateway policies instead of their own.
        let me = ctx.identity();
        if !serves(&service, &me) {
            return refuse(
                stream,
                StatusCode::FORBIDDEN,
                "not_this_waypoint",
                format!(
                    "{} uses another waypoint ({}), not {me}",
                    service.key,
                    service
                        .waypoint
                        .as_ref()
                        .map_or_else(String::new, |w| w.identity.to_string())
                ),
            );
        }
        let Some((protocol, tls_port)) = service
            .port(dst.port())
            .map(|p| (p.protocol(), p.carries_tls()))
        else {
            return refuse(
                stream,
                StatusCode::NOT_FOUND,
                "unknown_service_port",
                format!("service {} has no port {}", service.key, dst.port()),
            );
        };
        // The original source, read as ztunnel inbound reads it.
        let (source_ip, source) = original_source(state, request.headers(), &peer);
        let principals = state.trust_domains().principals(&peer.identity);
        // A TCP port has no requests to decide: the policies decide the
        // connection, before it is accepted (as ztunnel's are); or, when one
        // reads the server name on a TLS port, once the hello tells it.
        let mut policy = tcp::Policy::Decided;
        let compiled = ctx.tables.current();
        if protocol == Protocol::Tcp {
            let who = authz::Peer {
                identity: &peer.identity,
                principals: &principals,
                source_ip,
                destination_ip: dst.ip(),
                service: &service.name,
                service_namespace: &service.namespace,
                port: dst.port(),
            };
            // CUSTOM first: their authorizers are asked about the connection.
            let customs = authz::custom_connection(&compiled.authz, &who);
            if !customs.is_empty() {
                let caller = external::Caller {
                    identity: &peer.identity,
                    source_ip,
                    destination: dst,
                    service: &service.hostname,
                    client: Client {
                        addr: SocketAddr::new(source_ip, 0),
                        connection: rand::random(),
                        dialled: None,
                    },
                };
                if let Err((reason, details)) =
                    external::ask_connection(ctx, &compiled, &caller, &customs).await
                {
                    return refuse(
                        stream,
                        StatusCode::FORBIDDEN,
                        reason,
                        format!("{} to {dst}: {details}", peer.identity),
                    );
                }
            }
            match authz::at_connect(&compiled.authz, &who, tls_port) {
                AtConnect::Allowed => {}
                AtConnect::AfterHello => policy = tcp::Policy::AfterHello,
                AtConnect::Denied(denial) => {
                    return refuse(
                        stream,
                        StatusCode::FORBIDDEN,
                        "deny_policy",
                        format!("{} to {dst}: {denial}", peer.identity),
                    );
                }
            }
        }
        let downstream = Arc::new(Downstream {
            source_ip,
            source,
            principals,
            peer,
            service,
            vip: dst.ip(),
            port: dst.port(),
            metrics: Default::default(),
            connection: rand::random(),
        });
        let tunnel = match stream.accept() {
            Ok(tunnel) => tunnel,
            Err(error) => {
                debug!(%error, "the CONNECT stream was gone before its answer");
                return;
            }
        };
        match protocol {
            Protocol::Http => serve_http(Arc::clone(ctx), downstream, tunnel, drain).await,
            Protocol::Tcp => {
                tcp::serve(Arc::clone(ctx), downstream, tunnel, policy, compiled, drain).await
            }
        }
    }
}

/// Whether `service` sends its traffic to the waypoint of identity `me`.
pub fn serves(service: &Service, me: &warren_api::Identity) -> bool {
    service.waypoint.as_ref().is_some_and(|w| w.identity == *me)
}

/// Serves the HTTP a client speaks inside one CONNECT stream.
async fn serve_http(
    ctx: Arc<Context>,
    downstream: Arc<Downstream>,
    tunnel: Tunnel,
    mut drain: drain::Watch,
) {
    let service = hyper::service::service_fn(move |request| {
        let ctx = Arc::clone(&ctx);
        let downstream = Arc::clone(&downstream);
        async move { Ok::<_, std::convert::Infallible>(http::handle(ctx, downstream, request).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .max_buf_size(64 << 10)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(30));
    builder.http2().max_header_list_size(64 << 10);
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(tunnel), service);
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                debug!(%error, "downstream HTTP connection ended with an error");
            }
        }
        () = drain.draining() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// Closes the upstream pools' connections that are idle past their timeout
/// or maximum duration, closed by the peer, or started with TLS that the
/// tables in force and the ServiceEntries of `state` no longer ask for,
/// every second until the drain. One task for both pools: each TLS setting
/// is looked up once a sweep.
pub async fn sweep_pools(
    drain: drain::Watch,
    tables: Arc<crate::tables::Tables>,
    state: Arc<warren_ztunnel::state::State>,
    http1: Arc<keepalive::KeepAlive>,
    http2: Arc<multiplex::Multiplexed>,
) {
    lifetime::sweep(drain, tables, state, |now, in_force| {
        http1.evict(now, in_force);
        http2.evict(now, in_force);
    })
    .await;
}

#[cfg(test)]
mod tests {
    use warren_api::{Identity, config};
    use warren_ztunnel::state::Service;

    use super::serves;

    fn service(waypoint_identity: Option<&str>) -> Service {
        Service::from_proto(
            "service/shop/app",
            config::Service {
                name: "app".into(),
                namespace: "shop".into(),
                waypoint: waypoint_identity.map(|identity| config::GatewayAddress {
                    workload: "workload/infra/shared-0".into(),
                    address: vec![10, 0, 0, 9],
                    hbone_port: 15008,
                    identity: identity.into(),
                }),
                ..Default::default()
            },
        )
        .expect("a valid service")
    }

    #[test]
    fn a_waypoint_serves_only_the_services_bound_to_it() {
        let shared: Identity = "spiffe://cluster.local/ns/infra/sa/shared"
            .parse()
            .expect("identity");
        let own: Identity = "spiffe://cluster.local/ns/shop/sa/waypoint"
            .parse()
            .expect("identity");
        let bound = service(Some(&shared.to_string()));
        assert!(serves(&bound, &shared));
        assert!(!serves(&bound, &own), "another waypoint's Service");
        assert!(
            !serves(&service(None), &own),
            "a Service without a waypoint"
        );
    }
}
