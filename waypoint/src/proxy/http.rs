//! One request through the waypoint: check its JWTs (RequestAuthentication)
//! and authorize it (AuthorizationPolicy attached to the waypoint or the
//! Service), route it (VirtualService), inject
//! faults, pick an upstream cluster and endpoint (DestinationRule), send it
//! with retries under the route's timeout, copy it to mirrors, and report it.
//!
//! Response flags follow Envoy's, so operators read them as they would
//! Istio's: `NR` no route, `NC` no cluster (an unknown subset or service),
//! `UO` pool overflow, `UH` no healthy endpoint, `UF` connect failure, `UT`
//! timeout, `URX` retries exhausted, `FI` fault abort, `DI` fault delay, `UC`
//! upstream reset.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, Version, header};
use http_body_util::{BodyExt as _, Full};
use hyper::{
    body::{Body as _, Incoming},
    upgrade::OnUpgrade,
};
use tracing::{debug, warn};
use warren_ztunnel::state::{Workload, service::Address};

use super::{
    Client, Downstream,
    connect::SendError,
    external,
    prefixed::Prefixed,
    replay::{BoxError, ReadCount, Source},
    report::{Arrived, Finished, GRPC_STATUS, Measured, Unanswered},
    trace, upgrade,
};
use crate::{
    app::{Body, ClusterKey, Context},
    authz,
    metrics::ClusterLabels,
    route::{
        Action, CorsCheck, FailureKind, HttpRule, Lookup, Matched, RequestInfo, RetryPolicy,
        RouteDestination, Scope,
    },
    tables::Compiled,
    telemetry::{HeaderNeed, attributes::RequestFacts},
    upstream::{
        self, Cluster, Endpoint, HashInput, LoadBalancer, Outcome, RetryPermit, Unpicked,
        UpstreamHttp,
    },
};

const REQUEST_ID: &str = "x-request-id";

/// How long a mirror's copy may take when its route sets no timeout.
const MIRROR_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

pub(crate) fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

fn reply(status: StatusCode, body: &str) -> Response<Body> {
    let mut response = Response::new(full(Bytes::from(format!("{body}\n"))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

fn boxed(response: Response<Bytes>) -> Response<Body> {
    response.map(full)
}

/// What became of a request, for telemetry.
pub(super) struct Done {
    pub(super) response: Response<Body>,
    pub(super) flags: &'static str,
    route: String,
    /// The endpoint that answered, if any.
    upstream: Option<SocketAddr>,
    destination: Option<Arc<Workload>>,
    attempts: u32,
    /// The bytes read of the request body (its size is reported once the
    /// answer is done: the body may stream on meanwhile).
    request_body: Option<ReadCount>,
    /// Made by the waypoint, not the upstream (a gRPC caller gets it as a
    /// gRPC status).
    local: bool,
}

impl Done {
    fn local(response: Response<Body>, flags: &'static str, route: String) -> Done {
        Done {
            response,
            flags,
            route,
            upstream: None,
            destination: None,
            attempts: 0,
            request_body: None,
            local: true,
        }
    }
}

pub async fn handle(
    ctx: Arc<Context>,
    down: Arc<Downstream>,
    request: Request<Incoming>,
) -> Response<Body> {
    let start = Instant::now();
    let (mut parts, body) = request.into_parts();
    // Read ahead only for an authorizer that asks for the body.
    let mut body = Prefixed::new(body);
    // Kept aside for the splice, should the upstream switch protocols.
    let downstream_upgrade = upgrade::requested(parts.version, &parts.headers)
        .and_then(|_| parts.extensions.remove::<OnUpgrade>());
    let request_id = ensure_request_id(&mut parts.headers);
    // JWTs first: AuthorizationPolicy reads the caller they name.
    let compiled = ctx.tables.current();
    let telemetry = Arc::clone(
        compiled
            .telemetry
            .for_service(&down.service.namespace, &down.service.name),
    );
    let span = trace::continue_or_start(&mut parts.headers, telemetry.tracing.as_deref());
    let grpc = is_grpc(&parts.headers);
    let method = parts.method.clone();
    // What the client declared; the body's real size once read.
    let declared_bytes = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .unwrap_or(0);
    // Before routing and faults, as Envoy's RBAC filter runs ahead of them.
    let peer = down.authz_peer();
    // Changes an external authorizer asks of the response.
    let mut on_response = None;
    let authenticated = compiled
        .authn
        .authenticate(&down.service.namespace, &down.service.name, &mut parts)
        .await;
    let refusal = match authenticated {
        Err(rejection) => Some((boxed(rejection.response(&parts)), rejection.details(), "-")),
        Ok(verified) => {
            // What is checked must be what is sent on: a request naming
            // its authority in its target (absolute form, `:authority`)
            // goes there, whatever its `Host` says (RFC 9112 3.2.2).
            if let Some(authority) = parts.uri.authority()
                && let Ok(host) = HeaderValue::from_str(authority.as_str())
            {
                parts.headers.insert(header::HOST, host);
            }
            // CUSTOM first: an authorizer's headers are what DENY and
            // ALLOW then see, as in Envoy's filter chain.
            let customs = authz::custom(&compiled.authz, &peer, &mut parts, verified.as_deref());
            let asked = match customs.is_empty() {
                true => Ok(None),
                false => external::ask(
                    &ctx,
                    &compiled,
                    &down,
                    &customs,
                    &mut parts,
                    &mut body,
                    &request_id,
                )
                .await
                .map(Some),
            };
            match asked {
                Err(refused) => Some((refused.response, refused.details, external::FLAG)),
                Ok(changes) => {
                    on_response = changes.filter(|c| !c.response.is_empty());
                    authz::authorize(&compiled.authz, &peer, &mut parts, verified.as_deref())
                        .map(|denial| (boxed(authz::forbidden()), denial.to_string(), "-"))
                }
            }
        }
    };
    drop(compiled);
    // Kept for the access line only when it may be written, and for a
    // sampled span.
    let path = if (tracing::enabled!(target: "access", tracing::Level::INFO)
        && !telemetry.access_log.is_off())
        || span.as_ref().is_some_and(|s| s.sampled)
    {
        parts.uri.path().to_owned()
    } else {
        String::new()
    };
    let facts = telemetry
        .reads_request
        .then(|| Box::new(request_facts(&parts, &telemetry.request_headers)));
    // Reports the request should the client leave before its answer.
    let unanswered = Unanswered::new(Finished {
        ctx: Arc::clone(&ctx),
        down: Arc::clone(&down),
        request: Arrived {
            start,
            request_id: request_id.clone(),
            method,
            path,
            grpc,
            request_bytes: declared_bytes,
            facts,
            span,
        },
        response_code: 0,
        grpc_status: None,
        flags: "-",
        route: String::new(),
        upstream: None,
        destination: None,
        attempts: 0,
        details: refusal.as_ref().map(|(_, details, _)| details.clone()),
        request_body: None,
        telemetry,
        response_headers: None,
        response_trailers: None,
    });
    let mut done = match refusal {
        Some((response, _, flags)) => Done::local(response, flags, String::new()),
        None => route_and_forward(&ctx, &down, parts, body).await,
    };
    if let Some(changes) = &on_response {
        changes.apply_to_response(done.response.headers_mut());
    }
    if grpc && done.local {
        done.response = grpc_local_reply(done.response).await;
    }
    done.response
        .headers_mut()
        .entry(REQUEST_ID)
        .or_insert(request_id);
    let upstream_upgrade = done.response.extensions_mut().remove::<OnUpgrade>();
    let hold = done.response.extensions_mut().remove::<upgrade::Hold>();
    upgrade::splice(
        done.response.status(),
        downstream_upgrade,
        upstream_upgrade,
        hold,
    );
    let (parts, body) = done.response.into_parts();
    // Always there: only this takes it.
    let Some(mut finished) = unanswered.answered() else {
        return Response::from_parts(parts, body);
    };
    finished.response_code = parts.status.as_u16();
    finished.grpc_status = parts.headers.get(GRPC_STATUS).cloned();
    finished.flags = done.flags;
    finished.route = done.route;
    finished.upstream = done.upstream;
    finished.destination = done.destination;
    finished.attempts = done.attempts;
    finished.request_body = done.request_body;
    finished.response_headers = finished.telemetry.response_headers.keep(&parts.headers);
    Response::from_parts(parts, Measured::new(body, finished).boxed())
}

/// What a Telemetry expression may read of a request (`request.*`); its
/// headers only those something reads.
fn request_facts(parts: &http::request::Parts, headers: &HeaderNeed) -> RequestFacts {
    RequestFacts {
        headers: headers.keep(&parts.headers).unwrap_or_default(),
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path(), |p| p.as_str())
            .to_owned(),
        host: parts
            .headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
        scheme: parts.uri.scheme_str().unwrap_or("http").to_owned(),
        method: parts.method.as_str().to_owned(),
        protocol: match parts.version {
            http::Version::HTTP_2 => "HTTP/2",
            http::Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        },
        referer: header_text(&parts.headers, header::REFERER),
        useragent: header_text(&parts.headers, header::USER_AGENT),
    }
}

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Resolves when a route's timeout of `limit` expires: `limit` after the
/// client's request was complete (`arrived`, for a request without a body).
fn deadline(body: Option<Arc<Source>>, arrived: Instant, limit: std::time::Duration) -> Expiry {
    Box::pin(async move {
        let complete = match body {
            Some(body) => body.completed_at().await,
            None => arrived.into(),
        };
        tokio::time::sleep_until(complete + limit).await;
    })
}

type Expiry = std::pin::Pin<Box<dyn Future<Output = ()> + Send + Sync>>;

/// The route's timeout ran out while the answer's body was on its way.
#[derive(Debug, thiserror::Error)]
#[error("upstream request timeout (the route's timeout ended the response)")]
pub(super) struct RouteTimeout;

/// An answer's body cut off when its route's timeout expires (Envoy resets
/// the stream then: the client sees the answer end early, not complete).
struct Deadline {
    body: Body,
    expiry: Expiry,
}

impl hyper::body::Body for Deadline {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.expiry.as_mut().poll(cx).is_ready() {
            return std::task::Poll::Ready(Some(Err(RouteTimeout.into())));
        }
        std::pin::Pin::new(&mut this.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// An upstream answer's body with what must last as long as it.
struct Held<T> {
    body: Body,
    _held: T,
}

impl<T: Unpin> hyper::body::Body for Held<T> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        std::pin::Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

async fn route_and_forward(
    ctx: &Arc<Context>,
    down: &Downstream,
    parts: http::request::Parts,
    body: Prefixed<Incoming>,
) -> Done {
    let compiled = ctx.tables.current();
    let empty = BTreeMap::new();
    let source_labels = down.source.as_ref().map_or(&empty, |w| &w.labels);
    let source_namespace = down.peer.identity.namespace.as_str();
    let host = down.service.hostname.as_str();
    // The service's own VirtualServices, and the waypoint's namespace's.
    let scope = Scope {
        service_namespace: &down.service.namespace,
        waypoint_namespace: &ctx.config.namespace,
    };
    let lookup = {
        let info = RequestInfo::from_parts(&parts, down.port, source_labels, source_namespace);
        compiled.routes.route(host, scope, &info)
    };
    let (rule, matched, route_name) = match lookup {
        Lookup::Routed(routed) => (
            Some(routed.rule),
            Some(routed.matched),
            routed.route_name().to_owned(),
        ),
        // No VirtualService for the host: straight to the service, with
        // Istio's default retry policy.
        Lookup::Default => (None, None, "default".to_owned()),
        Lookup::NoMatch(vs) => {
            return Done::local(
                reply(
                    StatusCode::NOT_FOUND,
                    &format!("no route of VirtualService {vs} matched"),
                ),
                "NR",
                String::new(),
            );
        }
    };
    // Faults first, as Envoy's fault filter runs before the CORS filter
    // (Istio's order) and the router.
    let mut delayed = false;
    if let Some(fault) = rule.and_then(|r| r.fault.as_ref()) {
        let decision = fault.decide(&mut rand::rng());
        if let Some(delay) = decision.delay {
            tokio::time::sleep(delay).await;
            delayed = true;
        }
        if let Some(abort) = decision.abort {
            let mut response = boxed(abort.response());
            if let Some(rule) = rule {
                rule.apply_response(None, response.headers_mut());
            }
            return Done::local(response, "FI", route_name);
        }
    }
    // Then CORS, on rules that forward (Envoy's filter leaves a redirect or
    // a direct response alone): a preflight may be answered here, and the
    // answer to an allowed origin's request (the upstream's, or one the
    // waypoint gives: a timeout, no route) says it is allowed.
    let cors = rule
        .filter(|r| matches!(r.action, Action::Forward(_)))
        .and_then(|r| r.cors.as_ref());
    let allowed = match cors.map(|c| c.check(&parts.method, &parts.headers)) {
        Some(CorsCheck::Answer(response)) => {
            let mut response = boxed(response);
            if let Some(rule) = rule {
                rule.apply_response(None, response.headers_mut());
            }
            let flags = if delayed { "DI" } else { "-" };
            let mut done = Done::local(response, flags, route_name);
            // An answer, not an error: not turned into a gRPC status.
            done.local = false;
            return done;
        }
        Some(CorsCheck::Allowed(origin)) => Some(origin),
        Some(CorsCheck::Untouched) | None => None,
    };
    let routing = Routing {
        rule,
        matched,
        route_name,
        delayed,
    };
    let mut done = forward_routed(ctx, &compiled, down, parts, body, routing).await;
    if let (Some(cors), Some(origin)) = (cors, allowed) {
        cors.allow(origin, done.response.headers_mut());
    }
    done
}

/// The rule a request matched (none: the service's default route), what
/// matched, and the route's name for the access line.
struct Routing<'a> {
    rule: Option<&'a HttpRule>,
    matched: Option<Matched>,
    route_name: String,
    /// A fault delayed it (flag `DI`).
    delayed: bool,
}

/// The rule's action: a local answer, or the request sent to the picked
/// destination (with mirrors, retries and the route's timeout).
async fn forward_routed(
    ctx: &Arc<Context>,
    compiled: &Compiled,
    down: &Downstream,
    mut parts: http::request::Parts,
    body: Prefixed<Incoming>,
    routing: Routing<'_>,
) -> Done {
    let Routing {
        rule,
        matched,
        route_name,
        delayed,
    } = routing;
    let empty = BTreeMap::new();
    let source_labels = down.source.as_ref().map_or(&empty, |w| &w.labels);
    let source_namespace = down.peer.identity.namespace.as_str();
    let host = down.service.hostname.as_str();
    let default_destination;

    let destination = match rule.map(|r| &r.action) {
        None => {
            default_destination = RouteDestination::to_host(host);
            &default_destination
        }
        Some(Action::Redirect(redirect)) => {
            let info = RequestInfo::from_parts(&parts, down.port, source_labels, source_namespace);
            let mut response = boxed(redirect.response(&info));
            if let Some(rule) = rule {
                rule.apply_response(None, response.headers_mut());
            }
            return Done::local(response, "-", route_name);
        }
        Some(Action::DirectResponse(direct)) => {
            let mut response = boxed(direct.response());
            if let Some(rule) = rule {
                rule.apply_response(None, response.headers_mut());
            }
            return Done::local(response, "-", route_name);
        }
        Some(Action::Forward(_)) => {
            let picked = rule.and_then(|r| r.pick_destination(&mut rand::rng()));
            match picked {
                Some(d) => d,
                None => {
                    return Done::local(
                        reply(StatusCode::SERVICE_UNAVAILABLE, "no route destination"),
                        "NR",
                        route_name,
                    );
                }
            }
        }
    };
    if let (Some(rule), Some(matched)) = (rule, matched)
        && let Err(error) = rule.apply_request(destination, &mut parts, &matched)
    {
        return Done::local(
            reply(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string()),
            "-",
            route_name,
        );
    }

    // Streamed to the upstream as it arrives, and kept (up to a limit) so a
    // retry or a mirror can send it again.
    let body = (!body.is_end_stream()).then(|| Source::new(body, ctx.config.max_request_body));
    // However this ends (answer, timeout, client gone), no attempt follows.
    let _settling = body.as_ref().map(Source::settling);
    // A gRPC client's deadline counts as Envoy counts it with Istio's
    // settings (`max_grpc_timeout` = the route's timeout): the shorter wins.
    let timeout = match (rule.and_then(|r| r.timeout), grpc_timeout(&parts.headers)) {
        (Some(route), Some(grpc)) => Some(route.min(grpc)),
        (route, grpc) => route.or(grpc),
    };

    // An upgrade cannot be copied: the mirror would switch protocols too.
    let upgrading = upgrade::requested(parts.version, &parts.headers).is_some();
    if let Some(rule) = rule.filter(|_| !upgrading) {
        for mirror in rule.mirrors_for(&mut rand::rng()) {
            let key = ClusterKey::new(
                &mirror.host,
                mirror.subset.as_deref(),
                mirror.port,
                down.port,
            );
            let mut copy = clone_parts(&parts);
            shadow(&mut copy);
            ctx.metrics
                .mirrored
                .get_or_create(&ClusterLabels {
                    destination_service: key.host.clone(),
                    subset: key.subset.clone().unwrap_or_default(),
                })
                .inc();
            let body = body.clone();
            let ctx_mirror = Arc::clone(ctx);
            let client = down.client();
            // A copy never delays or fails the primary: it runs on its own
            // and its answer is dropped. Bounded, so that a shadow that
            // never answers does not hold a pool slot and the body forever.
            let limit = timeout.unwrap_or(MIRROR_TIMEOUT);
            tokio::spawn(async move {
                let compiled = ctx_mirror.tables.current();
                let mut once = Tries::mirror(client);
                let copy = attempt(
                    &ctx_mirror,
                    &compiled,
                    &key,
                    &copy,
                    Outgoing::Client(body.as_ref()),
                    &mut once,
                );
                if tokio::time::timeout(limit, copy).await.is_err() {
                    debug!(host = %key.host, ?limit, "mirror gave no answer in time");
                }
            });
        }
    }

    let key = ClusterKey::new(
        &destination.host,
        destination.subset.as_deref(),
        destination.port,
        down.port,
    );
    let default_retries;
    let retries = match rule {
        Some(rule) => &rule.retries,
        None => {
            default_retries = RetryPolicy::default();
            &default_retries
        }
    };
    // After the faults, as Envoy's router starts its timer after them.
    let forwarded = Instant::now();
    let route_timed_out = AtomicBool::new(false);
    let tried = Tries::request(down.client(), retries, &route_timed_out);
    let send = send_with_retries(ctx, compiled, &key, &parts, body.as_ref(), retries, tried);
    let mut done = match timeout {
        // Envoy's route timeout: from the end of the client's request to the
        // end of the answer, retries included. An upload is not cut short by
        // its own length, and a streamed answer is by the timeout.
        Some(limit) => {
            let mut done = tokio::select! {
                done = send => done,
                // Set while `send` is still alive (select! drops the losing
                // future before running the winning branch), so the try in
                // flight can tell it was cut short.
                () = async {
                    deadline(body.clone(), forwarded, limit).await;
                    route_timed_out.store(true, Ordering::Release);
                } => Done::local(
                    reply(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout"),
                    "UT",
                    String::new(),
                ),
            };
            if done.flags != "UT" {
                done.response = done.response.map(|answer| {
                    Deadline {
                        body: answer,
                        expiry: deadline(body.clone(), forwarded, limit),
                    }
                    .boxed()
                });
            }
            done
        }
        None => send.await,
    };
    if let Some(rule) = rule {
        rule.apply_response(Some(destination), done.response.headers_mut());
    }
    if delayed && done.flags == "-" {
        done.flags = "DI";
    }
    done.route = route_name;
    done.request_body = body.as_ref().map(|b| b.read_count());
    done
}

/// Marks a mirror's copy as Envoy does: `-shadow` after the host, in the
/// `Host` header (HTTP/1.1) and the URI's authority (HTTP/2's `:authority`).
fn shadow(copy: &mut http::request::Parts) {
    use crate::route::MirrorTarget;
    if let Some(host) = copy.headers.get(header::HOST).and_then(|h| h.to_str().ok())
        && let Ok(value) = HeaderValue::from_str(&MirrorTarget::shadow_authority(host))
    {
        copy.headers.insert(header::HOST, value);
    }
    if let Some(authority) = copy.uri.authority() {
        let mut uri = copy.uri.clone().into_parts();
        uri.authority =
            http::uri::Authority::try_from(MirrorTarget::shadow_authority(authority.as_str())).ok();
        if let Ok(shadowed) = Uri::from_parts(uri) {
            copy.uri = shadowed;
        }
    }
}

fn clone_parts(parts: &http::request::Parts) -> http::request::Parts {
    let mut builder = Request::builder()
        .method(parts.method.clone())
        .uri(parts.uri.clone())
        .version(parts.version);
    if let Some(headers) = builder.headers_mut() {
        *headers = parts.headers.clone();
    }
    // Method, URI and version come from a valid request.
    builder
        .body(())
        .map(|r| r.into_parts().0)
        .unwrap_or_else(|_| {
            let (p, ()) = Request::new(()).into_parts();
            p
        })
}

async fn send_with_retries(
    ctx: &Context,
    compiled: &Compiled,
    key: &ClusterKey,
    parts: &http::request::Parts,
    body: Option<&Arc<Source>>,
    retries: &RetryPolicy,
    mut tried: Tries<'_>,
) -> Done {
    let mut tries = 0u32;
    // Held from the decision to retry until that retry has its answer, backoff
    // included: `maxRetries` bounds the retries in flight, as Envoy's breaker does.
    let mut in_flight: Option<RetryPermit> = None;
    loop {
        tries += 1;
        let result = attempt(
            ctx,
            compiled,
            key,
            parts,
            Outgoing::Client(body),
            &mut tried,
        )
        .await;
        let retryable = match &result {
            Attempt::Answered { response, .. } => {
                retries.should_retry_response(response.status(), response.headers())
            }
            Attempt::Failed { kind, .. } => retries.should_retry_error(*kind),
            Attempt::Local(_) => false,
        };
        // The retry before this answer (if any) is over: its slot is free again.
        drop(in_flight.take());
        // A body streamed past the retry buffer cannot be sent again.
        let replayable = body.is_none_or(|b| b.replayable());
        // A retry wanted but refused by `maxRetries` or the retry budget:
        // Envoy's `UO`, not `URX` (the attempts are not used up).
        let mut overflowed = false;
        in_flight = if retryable && replayable && tries <= retries.attempts {
            let permit = ctx.cluster(compiled, key).ok().and_then(|c| c.try_retry());
            if permit.is_none() {
                overflowed = true;
                ctx.metrics
                    .retry_overflows
                    .get_or_create(&ClusterLabels {
                        destination_service: key.host.clone(),
                        subset: key.subset.clone().unwrap_or_default(),
                    })
                    .inc();
            }
            permit
        } else {
            None
        };
        // The attempt just answered stops reading the body (its connection
        // may still poll it), unless it went past the buffer meanwhile.
        if in_flight.is_some() && !body.is_none_or(|b| b.hold_for_retry()) {
            in_flight = None;
        }
        if in_flight.is_none() {
            let exhausted = retryable && tries > 1;
            let retry_flag = if overflowed {
                Some("UO")
            } else {
                exhausted.then_some("URX")
            };
            return match result {
                Attempt::Answered {
                    response,
                    endpoint,
                    destination,
                } => Done {
                    response,
                    flags: retry_flag.unwrap_or("-"),
                    route: String::new(),
                    upstream: Some(endpoint),
                    destination,
                    attempts: tries,
                    request_body: None,
                    local: false,
                },
                Attempt::Failed {
                    kind,
                    detail,
                    endpoint,
                } => {
                    let (status, flags) = match kind {
                        FailureKind::Timeout => (StatusCode::GATEWAY_TIMEOUT, "UT"),
                        FailureKind::ConnectFailure | FailureKind::Unusable => {
                            (StatusCode::SERVICE_UNAVAILABLE, "UF")
                        }
                        FailureKind::ProtocolError => (StatusCode::BAD_GATEWAY, "UPE"),
                        _ => (StatusCode::SERVICE_UNAVAILABLE, "UC"),
                    };
                    Done {
                        response: reply(status, &detail),
                        flags: retry_flag.unwrap_or(flags),
                        route: String::new(),
                        upstream: endpoint,
                        destination: None,
                        attempts: tries,
                        request_body: None,
                        local: true,
                    }
                }
                Attempt::Local(mut done) => {
                    done.attempts = tries;
                    *done
                }
            };
        }
        ctx.metrics
            .retries
            .get_or_create(&ClusterLabels {
                destination_service: key.host.clone(),
                subset: key.subset.clone().unwrap_or_default(),
            })
            .inc();
        // Not held through the backoff: its connection goes back to the pool.
        drop(result);
        let pause = retries.backoff(tries, &mut rand::rng());
        debug!(host = %key.host, tries, ?pause, "retrying");
        tokio::time::sleep(pause).await;
    }
}

pub(super) enum Attempt {
    Answered {
        response: Response<Body>,
        endpoint: SocketAddr,
        destination: Option<Arc<Workload>>,
    },
    Failed {
        kind: FailureKind,
        detail: String,
        endpoint: Option<SocketAddr>,
    },
    /// Answered by the waypoint itself (no route, overflow, no endpoint).
    Local(Box<Done>),
}

/// What one request's attempts share.
pub(super) struct Tries<'a> {
    /// The downstream connection, for hashing and the access log.
    client: Client,
    /// `None` for a mirror's copy: a single attempt, sending the body the
    /// request's own attempts read.
    retries: Option<&'a RetryPolicy>,
    /// The ids of the endpoints tried so far.
    endpoints: Vec<String>,
    /// Set when the route's timeout fired (not for a mirror's copy).
    route_timed_out: Option<&'a AtomicBool>,
}

impl<'a> Tries<'a> {
    /// A request's own tries, under its retry policy and route timeout.
    fn request(client: Client, retries: &'a RetryPolicy, timed_out: &'a AtomicBool) -> Self {
        Self {
            client,
            retries: Some(retries),
            endpoints: Vec::new(),
            route_timed_out: Some(timed_out),
        }
    }

    /// A mirror's copy: one try, no retries, no route timeout to report.
    pub(super) fn mirror(client: Client) -> Self {
        Self {
            client,
            retries: None,
            endpoints: Vec::new(),
            route_timed_out: None,
        }
    }
}

/// What an attempt sends as its body.
pub(super) enum Outgoing<'a> {
    /// The client's (if it has one), as read so far and on.
    Client(Option<&'a Arc<Source>>),
    /// A body of the waypoint's own (an authorizer's check).
    Fixed(Bytes),
    /// A gRPC message of the waypoint's own: HTTP/2 whatever the port says.
    Grpc(Bytes),
}

/// One try: a cluster, a pool permit, an endpoint, the exchange.
pub(super) async fn attempt(
    ctx: &Context,
    compiled: &Compiled,
    key: &ClusterKey,
    parts: &http::request::Parts,
    body: Outgoing<'_>,
    tries: &mut Tries<'_>,
) -> Attempt {
    let client = tries.client.clone();
    let local = |status, text: &str, flags| {
        Attempt::Local(Box::new(Done::local(
            reply(status, text),
            flags,
            String::new(),
        )))
    };
    let cluster = match ctx.resolved_cluster(compiled, key).await {
        Ok(cluster) => cluster,
        Err(reason) => return local(StatusCode::SERVICE_UNAVAILABLE, &reason, "NC"),
    };
    // An upgrade (WebSocket) stays on HTTP/1.1: it takes its connection over.
    let upgrading = upgrade::requested(parts.version, &parts.headers);
    let h2 = match cluster.upstream_http() {
        _ if matches!(body, Outgoing::Grpc(_)) => true,
        UpstreamHttp::Http2 => upgrading.is_none(),
        UpstreamHttp::Http1 => false,
        UpstreamHttp::Client => parts.version == Version::HTTP_2,
    };
    let permit = if h2 {
        cluster.admit_multiplexed()
    } else {
        cluster.admit().await
    };
    // The pool is full: admission, or (HTTP/2) the pending queue.
    let overflowed = || {
        ctx.metrics
            .overflows
            .get_or_create(&ClusterLabels {
                destination_service: key.host.clone(),
                subset: key.subset.clone().unwrap_or_default(),
            })
            .inc();
        local(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream connect error or disconnect/reset before headers. reset reason: overflow",
            "UO",
        )
    };
    let Ok(permit) = permit else {
        return overflowed();
    };
    let hash = HashInput::new(
        &parts.headers,
        &parts.uri,
        Some(client.addr),
        Some(client.connection),
    );
    let hashing = matches!(
        cluster.resolved().load_balancer,
        LoadBalancer::ConsistentHash(_)
    );
    let avoid: &[String] = match tries.retries {
        Some(retries) if retries.avoids_previous_hosts(hashing) => &tries.endpoints,
        _ => &[],
    };
    // `retryRemoteLocalities`: retries leave the priorities tried so far.
    let leave: &[String] = match tries.retries {
        Some(retries) if retries.retry_remote_localities => &tries.endpoints,
        _ => &[],
    };
    let dialled = || client.dialled_now(&ctx.inputs.state);
    let picked = match cluster.pick_for(dialled, &hash, avoid, leave, Instant::now()) {
        Ok(picked) => picked,
        Err(Unpicked::NotDialled(reason)) => {
            return local(StatusCode::SERVICE_UNAVAILABLE, &reason, "UH");
        }
        Err(Unpicked::NoEndpoint) => {
            return local(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream", "UH");
        }
    };
    let endpoint = picked.endpoint.address;
    tries.endpoints.push(picked.endpoint.id.clone());
    // Over HTTP/2 the URI's authority is the `:authority` the endpoint
    // reads, so it stays the request's; HTTP/1.1 sends the path alone
    // (origin form) and `Host` says whom for.
    let uri = if h2 {
        let authority = match request_authority(parts) {
            Some(authority) => Ok(authority),
            None => http::uri::Authority::try_from(endpoint.to_string()).map_err(http::Error::from),
        };
        authority.and_then(|authority| upstream_uri(authority, &parts.uri))
    } else {
        Ok(Uri::from(origin_form(&parts.uri)))
    };
    let uri = match uri {
        Ok(uri) => uri,
        Err(error) => return local(StatusCode::BAD_REQUEST, &error.to_string(), "-"),
    };
    // The client's body, whose end starts the try's timeout.
    let uploaded = match &body {
        Outgoing::Client(Some(source)) => Some(Arc::clone(source)),
        _ => None,
    };
    let mut request = Request::new(match body {
        Outgoing::Client(Some(source)) if tries.retries.is_none() => source.mirror().boxed(),
        Outgoing::Client(Some(source)) => source.attempt().boxed(),
        Outgoing::Client(None) => full(Bytes::new()),
        Outgoing::Fixed(bytes) | Outgoing::Grpc(bytes) => full(bytes),
    });
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = uri;
    *request.headers_mut() = parts.headers.clone();
    if h2 {
        // `:authority` carries it (RFC 9113 asks intermediaries to move it
        // there, and lets a server refuse a `Host` that disagrees).
        request.headers_mut().remove(header::HOST);
    } else if !request.headers().contains_key(header::HOST) {
        // HTTP/1.1 needs one: the client's `:authority` (HTTP/2), else the
        // destination service (an HTTP/1.0 client may send none).
        let host = match parts.uri.authority() {
            Some(authority) => HeaderValue::from_str(authority.as_str()),
            None if key.port == 80 => HeaderValue::from_str(&key.host),
            None => HeaderValue::from_str(&format!("{}:{}", key.host, key.port)),
        };
        if let Ok(host) = host {
            request.headers_mut().insert(header::HOST, host);
        }
    }
    strip_hop_by_hop(request.headers_mut());
    // The one hop-by-hop value HTTP/2 allows, which gRPC servers expect.
    // (Over HTTP/1.1 it would need `Connection: TE`; no HTTP/1.1 server
    // needs it.)
    if h2 && wants_trailers(&parts.headers) {
        request
            .headers_mut()
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let Some(protocol) = &upgrading {
        upgrade::restore(request.headers_mut(), protocol);
    }
    // A wildcard host's TLS names the request's host (Istio's auto SNI);
    // any other cluster's limits are taken as they are.
    let names_by_request = (cluster.limits().tls.as_ref()).is_some_and(|t| t.names_by_request());
    let limits = match names_by_request.then(|| request_authority(parts)).flatten() {
        Some(host) => cluster.limits().for_request(host.host()),
        None => std::borrow::Cow::Borrowed(cluster.limits()),
    };
    let limits = limits.as_ref();
    let report = |outcome| report_outcome(ctx, &cluster, key, &picked.endpoint.id, outcome);
    let failed = |error: SendError| {
        // TLS settings the waypoint cannot honour are the rule's fault, not
        // the endpoint's: no outlier should be ejected for them.
        if !error.is_unusable_settings() {
            report(Outcome::LocalFailure);
        }
        let kind = failure_kind(&error);
        let detail = match std::error::Error::source(&error) {
            Some(source) => format!("upstream {endpoint}: {error}: {source}"),
            None => format!("upstream {endpoint}: {error}"),
        };
        debug!(%detail, ?kind, "upstream attempt failed");
        Attempt::Failed {
            kind,
            detail,
            endpoint: Some(endpoint),
        }
    };
    // HTTP/2: a stream first, waiting in the pending queue if need be. As
    // in Envoy, the try's timeout starts once the pool hands one over, and
    // time spent waiting is not the endpoint's failure.
    let reserved = if h2 {
        match ctx.http2.reserve(endpoint, cluster.pool(), limits).await {
            Ok(reserved) => Some(reserved),
            Err(SendError::Overflow) => return overflowed(),
            Err(error) => return failed(error),
        }
    } else {
        None
    };
    // The try's timeout starts once a connection is in hand and the
    // client's request is complete, as Envoy's does: neither a slow connect
    // nor a slow upload counts against it (nor against the endpoint).
    let ready = tokio::sync::Notify::new();
    let sent = async {
        match reserved {
            Some(reserved) => {
                ready.notify_one();
                let (response, stream) = ctx
                    .http2
                    .send_on(endpoint, request, reserved, cluster.pool(), limits)
                    .await?;
                Ok((response, Some(stream)))
            }
            None => {
                let response = ctx
                    .http1
                    .send_once_ready(endpoint, request, limits, || ready.notify_one())
                    .await?;
                Ok::<_, SendError>((response, None))
            }
        }
    };
    let try_expired = |limit| {
        let (ready, uploaded) = (&ready, uploaded);
        async move {
            ready.notified().await;
            if let Some(source) = uploaded {
                source.completed_at().await;
            }
            tokio::time::sleep(limit).await;
        }
    };
    let mut cut_short = CutShort {
        ctx,
        cluster: &cluster,
        key,
        endpoint: &picked.endpoint.id,
        route_timed_out: tries.route_timed_out,
        armed: true,
    };
    let result = match tries.retries.and_then(|r| r.per_try_timeout) {
        Some(limit) => {
            tokio::select! {
                sent = sent => Some(sent),
                () = try_expired(limit) => None,
            }
        }
        None => Some(sent.await),
    };
    cut_short.armed = false;
    drop(cut_short);
    let destination = ctx.inputs.state.workload_by_ip(endpoint.ip());
    match result {
        None => {
            report(Outcome::LocalFailure);
            Attempt::Failed {
                kind: FailureKind::Timeout,
                detail: "upstream request timeout".into(),
                endpoint: Some(endpoint),
            }
        }
        Some(Ok((response, stream))) => {
            let status = response.status().as_u16();
            report(if status >= 500 {
                Outcome::Status(status)
            } else {
                Outcome::Success
            });
            let set_cookie = picked.set_cookie.clone();
            let held = (permit, picked, stream);
            let switching =
                upgrading.is_some() && response.status() == StatusCode::SWITCHING_PROTOCOLS;
            // The pool slot and the endpoint's active-request count last as
            // long as the answer's body: a connection streaming a body is
            // still busy (maxConnections, LEAST_REQUEST). An upgraded one is
            // busy until its splice ends, as Envoy counts it.
            let mut response = if switching {
                let mut response = response.map(|body| body.map_err(BoxError::from).boxed());
                response.extensions_mut().insert(upgrade::Hold::new(held));
                response
            } else {
                response.map(|body| {
                    Held {
                        body: body.map_err(BoxError::from).boxed(),
                        _held: held,
                    }
                    .boxed()
                })
            };
            let switched = response.headers().get(header::UPGRADE).cloned();
            strip_hop_by_hop(response.headers_mut());
            if let (true, Some(protocol)) = (switching, &switched) {
                upgrade::restore(response.headers_mut(), protocol);
            }
            if let Some(cookie) = &set_cookie
                && let Ok(value) = HeaderValue::from_str(&self::set_cookie(cookie))
            {
                response.headers_mut().append(header::SET_COOKIE, value);
            }
            Attempt::Answered {
                response,
                endpoint,
                destination,
            }
        }
        // Refused by the pool before any upstream was tried: not the
        // endpoint's failure.
        Some(Err(SendError::Overflow)) => overflowed(),
        Some(Err(error)) => failed(error),
    }
}

/// Tells outlier detection how a try went, and counts an ejection it causes.
fn report_outcome(
    ctx: &Context,
    cluster: &Cluster,
    key: &ClusterKey,
    endpoint: &str,
    outcome: Outcome,
) {
    if cluster.report(endpoint, outcome, Instant::now()) {
        ctx.metrics
            .ejections
            .get_or_create(&ClusterLabels {
                destination_service: key.host.clone(),
                subset: key.subset.clone().unwrap_or_default(),
            })
            .inc();
    }
}

/// A try waiting for its answer's headers when the route's timeout ends the
/// request counts against its endpoint, as Envoy reports a local-origin
/// timeout: with a route `timeout` and no `perTryTimeout` (the usual
/// setting), an endpoint that hangs must still be ejectable. A try dropped
/// because the client left is not the endpoint's fault and is not reported.
struct CutShort<'a> {
    ctx: &'a Context,
    cluster: &'a Cluster,
    key: &'a ClusterKey,
    endpoint: &'a str,
    route_timed_out: Option<&'a AtomicBool>,
    armed: bool,
}

impl Drop for CutShort<'_> {
    fn drop(&mut self) {
        if self.armed
            && self
                .route_timed_out
                .is_some_and(|fired| fired.load(Ordering::Acquire))
        {
            report_outcome(
                self.ctx,
                self.cluster,
                self.key,
                self.endpoint,
                Outcome::LocalFailure,
            );
        }
    }
}

/// A local answer to a gRPC call, as Envoy sends it: HTTP 200, trailers only,
/// with the gRPC status the HTTP status maps to (gRPC's own table) and the
/// text as `grpc-message`. gRPC clients read these, and Istio's metrics
/// count them by `grpc_response_status`. One already in gRPC form (a fault
/// abort with `grpcStatus`) is left as it is.
async fn grpc_local_reply(response: Response<Body>) -> Response<Body> {
    if response.headers().contains_key(GRPC_STATUS) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let code = match parts.status.as_u16() {
        400 => 13,             // INTERNAL
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 => 12,             // UNIMPLEMENTED
        429 | 502..=504 => 14, // UNAVAILABLE
        _ => 2,                // UNKNOWN
    };
    // A local answer's body is already in memory.
    let text = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    parts.status = StatusCode::OK;
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    parts.headers.insert(GRPC_STATUS, HeaderValue::from(code));
    if let Ok(message) = HeaderValue::from_str(&grpc_message(text.trim_ascii())) {
        parts.headers.insert("grpc-message", message);
    }
    Response::from_parts(parts, full(Bytes::new()))
}

/// gRPC's percent-encoding of `grpc-message`: printable ASCII but `%` as
/// is, every other byte as `%XX`.
fn grpc_message(text: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The authority a request names: its URI's (HTTP/2's `:authority`, or an
/// absolute-form HTTP/1.1 target), else its `Host` header's.
pub(crate) fn request_authority(parts: &http::request::Parts) -> Option<http::uri::Authority> {
    match parts.uri.authority() {
        Some(authority) => Some(authority.clone()),
        None => parts
            .headers
            .get(header::HOST)
            .and_then(|host| http::uri::Authority::try_from(host.as_bytes()).ok()),
    }
}

/// `http://<authority><path and query of the request>`.
fn upstream_uri(authority: http::uri::Authority, request: &Uri) -> Result<Uri, http::Error> {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = Some(authority);
    parts.path_and_query = Some(origin_form(request));
    Ok(Uri::from_parts(parts)?)
}

/// The path and query a request line carries (`/` when there is none).
fn origin_form(request: &Uri) -> http::uri::PathAndQuery {
    request
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"))
}

/// How an upstream attempt failed, for `retryOn` and the response flags.
fn failure_kind(error: &SendError) -> FailureKind {
    let hyper = match error {
        _ if error.is_unusable_settings() => return FailureKind::Unusable,
        // (An overflow is answered locally before a try is judged.)
        SendError::Connect(_) | SendError::Overflow => return FailureKind::ConnectFailure,
        SendError::Request(error) => error,
    };
    if is_refused_stream(error) {
        FailureKind::RefusedStream
    } else if hyper.is_parse() || hyper.is_parse_status() {
        // The upstream's bytes were no valid HTTP response, as opposed to
        // the connection failing.
        FailureKind::ProtocolError
    } else {
        FailureKind::Reset
    }
}

/// Whether an HTTP/2 upstream did not process the request, so a retry is
/// safe (Istio's default `retryOn` has `refused-stream`): it refused the
/// stream (REFUSED_STREAM), or sent a GOAWAY whose last stream id is below
/// it (h2 fails only those streams with the peer's GOAWAY; RFC 9113 §6.8
/// says they were not processed, and Envoy's codec reports them refused).
fn is_refused_stream(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(h2) = error.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (h2.is_go_away() && h2.is_remote());
        }
        next = error.source();
    }
    false
}

impl Context {
    /// The live cluster for `key`, rebuilt when the routing generation or the
    /// mesh state moved (keeping load-balancer and outlier state of the
    /// endpoints that stay).
    pub fn cluster(&self, compiled: &Compiled, key: &ClusterKey) -> Result<Arc<Cluster>, String> {
        let state_generation = *self.inputs.state.changes().borrow();
        let generation = compiled.generation << 32 | (state_generation & 0xffff_ffff);
        // Read before the build: an answer changing meanwhile rebuilds again.
        let names_generation = self.names.generation();
        let mut clusters = self.lock_clusters();
        // Built for this generation or a later one (the packed number
        // orders by config, then state; a retry holding an older config
        // snapshot must not rebuild a cluster back), and, when its endpoints
        // came from names, for their current answers.
        if let Some((built, cluster)) = clusters.get(key)
            && *built >= generation
            && !cluster.names_outdated(names_generation)
        {
            return Ok(Arc::clone(cluster));
        }
        // A pod addressed directly goes by its address.
        let service = self
            .inputs
            .state
            .service_by_hostname(&key.host, Some(&self.config.namespace))
            .or_else(|| {
                let ip = key.host.parse::<IpAddr>().ok()?;
                self.pod_destination(ip, key.port)
            })
            .ok_or_else(|| format!("no service {}", key.host))?;
        let port = match (service.port(key.port), service.ports.as_slice()) {
            (Some(port), _) => port,
            (None, [only]) if !key.port_named => only,
            (None, _) => return Err(format!("service {} has no port {}", key.host, key.port)),
        };
        let mut resolved = compiled
            .policies
            .resolve(
                &key.host,
                &service.namespace,
                key.subset.as_deref(),
                port.port,
            )
            .map_err(|e| e.to_string())?;
        if resolved.locality.is_none() {
            resolved.locality = closeness(service.load_balancing.as_ref());
        }
        // A ServiceEntry's names check its endpoints' certificates where the
        // rule lists none (Istio's rule for an entry's host).
        resolved.pool.tls = resolved
            .pool
            .tls
            .take()
            .map(|tls| tls.with_entry_names(&service.key, &service.subject_alt_names));
        let declared = port.declared_http();
        let mut endpoints: Vec<Endpoint> = Vec::with_capacity(service.endpoints.len());
        // Names the endpoints came from, and when the first answer expires
        // (the past for a name not resolved yet).
        let mut names: Vec<String> = Vec::new();
        let mut valid_until: Option<Instant> = None;
        for e in service.endpoints.iter().filter(|e| e.ready) {
            let target_port = warren_ztunnel::state::Service::target_port(e, port);
            let ip = match &e.address {
                Address::Ip(ip) if !upstream::dialable(*ip) => {
                    warn!(service = %service.key, %ip, "an endpoint on the waypoint's own host (loopback, link-local or unspecified); left out");
                    continue;
                }
                Address::Ip(ip) => *ip,
                // Each address of the name is an endpoint (Envoy's
                // STRICT_DNS); outside the mesh, so no labels to select.
                Address::Hostname(host) => {
                    let (addresses, until) = self
                        .names
                        .addresses(host)
                        .unwrap_or_else(|| (Vec::new(), Instant::now()));
                    valid_until = Some(valid_until.map_or(until, |v| v.min(until)));
                    names.push(host.clone());
                    // IPv4 first, as Istio's waypoints (V4_PREFERRED); never an
                    // address of another Service that `fronts_mesh` (as a plain
                    // address it would skip that Service's waypoint and mutual
                    // TLS).
                    let mut addresses = warren_ztunnel::dns::preferring(addresses, true);
                    // DNS_ROUND_ROBIN: the answer's first address only (Envoy's
                    // LOGICAL_DNS); DNS: every address.
                    if service.dns_first_address {
                        addresses.truncate(1);
                    }
                    let (addresses, refused): (Vec<IpAddr>, Vec<IpAddr>) =
                        addresses.into_iter().partition(|ip| {
                            upstream::dialable(*ip)
                                && self
                                    .inputs
                                    .state
                                    .service_by_vip(*ip)
                                    .is_none_or(|s| s.key == service.key || !s.fronts_mesh())
                        });
                    if !refused.is_empty() {
                        warn!(%host, addresses = ?refused, "an endpoint name resolves to addresses the waypoint does not dial (its own host's, or a Service's: name the Service instead); left out");
                    }
                    // Each address is the entry's endpoint, with its labels,
                    // locality and weight (as Envoy's DNS clusters).
                    if upstream::selects(&resolved.selector, &e.labels) {
                        endpoints.extend(addresses.into_iter().map(|ip| Endpoint {
                            locality: e.locality.clone(),
                            node: String::new(),
                            ready_since: e.ready_since,
                            // An entry may list one name (or address) on
                            // several ports: each is an endpoint of its own.
                            id: format!("{host}/{}", SocketAddr::new(ip, target_port)),
                            address: SocketAddr::new(ip, target_port),
                            labels: e.labels.clone(),
                            weight: e.weight,
                        }));
                    }
                    continue;
                }
            };
            // A pod's labels and locality are its workload's; a ServiceEntry
            // endpoint's its own, where it gives them (an entry's endpoint
            // may be a pod's address too).
            let workload = self.inputs.state.workload_by_ip(ip);
            let labels = match &workload {
                Some(w) if e.labels.is_empty() => w.labels.clone(),
                _ => e.labels.clone(),
            };
            let (mut locality, node) = workload
                .as_ref()
                .map(|w| (w.locality.clone(), w.node.clone()))
                .unwrap_or_default();
            if !e.locality.is_empty() {
                locality = e.locality.clone();
            }
            if upstream::selects(&resolved.selector, &labels) {
                endpoints.push(Endpoint {
                    locality,
                    node,
                    ready_since: e.ready_since,
                    id: e
                        .workload
                        .clone()
                        .unwrap_or_else(|| SocketAddr::new(ip, target_port).to_string()),
                    address: SocketAddr::new(ip, target_port),
                    labels,
                    weight: e.weight,
                });
            }
        }
        // A ServiceEntry resolved `NONE` has no endpoints: requests go where
        // their clients dialled (Envoy's ORIGINAL_DST).
        let original = service.passthrough;
        let proximity = self.proximity(state_generation);
        let cluster = match clusters.get(key) {
            Some((_, cluster))
                if cluster.resolved() == &resolved && cluster.declared_http() == declared =>
            {
                // In the order that leaves no moment without a way to go
                // (requests on other workers pick meanwhile): the flag set
                // before the endpoints go, cleared after they come.
                if original {
                    cluster.set_original_destination(true);
                    cluster.update(endpoints);
                } else {
                    cluster.update(endpoints);
                    cluster.set_original_destination(false);
                }
                Arc::clone(cluster)
            }
            _ => {
                let cluster =
                    Cluster::new(resolved, endpoints, Instant::now()).for_port(port.port, declared);
                cluster.set_original_destination(original);
                Arc::new(cluster)
            }
        };
        cluster.place(proximity);
        cluster.named(names, valid_until, names_generation);
        clusters.insert(key.clone(), (generation, Arc::clone(&cluster)));
        Ok(cluster)
    }

    /// [`Context::cluster`], with the endpoint names it was built from
    /// resolved first when any is missing or expired (then rebuilt).
    pub async fn resolved_cluster(
        &self,
        compiled: &Compiled,
        key: &ClusterKey,
    ) -> Result<Arc<Cluster>, String> {
        let cluster = self.cluster(compiled, key)?;
        let Some(stale) = cluster.stale_names(Instant::now()) else {
            return Ok(cluster);
        };
        let limit = self.config.connect_timeout;
        self.names.refresh(&self.inputs.dns, &stale, limit).await;
        let cluster = self.cluster(compiled, key)?;
        // Answers that did not change rebuild nothing: the cluster learns
        // when they expire now (after a failed lookup: when to try again).
        let valid_until = stale
            .iter()
            .filter_map(|host| self.names.addresses(host).map(|(_, until)| until))
            .min();
        cluster.renew_names(&stale, valid_until);
        Ok(cluster)
    }

    /// Where this waypoint runs, for locality-aware balancing: the locality,
    /// node and labels of its own pod (a waypoint workload of its namespace
    /// and Gateway on this node), looked up once per state generation;
    /// `None` until that pod is known (then no locality preference).
    fn proximity(&self, generation: u64) -> Option<upstream::Proximity> {
        let mut cached = self.proximity.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((seen, proximity)) = cached.as_ref()
            && *seen == generation
        {
            return proximity.clone();
        }
        let state = &self.inputs.state;
        let node = state.node();
        let gateway = self.config.gateway.as_deref();
        let found = state
            .find_workload(|w| {
                w.is_waypoint
                    && w.node == node
                    && w.namespace == self.config.namespace
                    && gateway.is_none_or(|g| {
                        w.labels
                            .get(warren_model::gateway::GATEWAY_NAME_LABEL)
                            .map(String::as_str)
                            == Some(g)
                    })
            })
            .map(|w| upstream::Proximity {
                locality: w.locality.clone(),
                node: w.node.clone(),
                labels: w.labels.clone(),
            });
        if found.is_none() && cached.as_ref().is_none_or(|(_, before)| before.is_some()) {
            warn!(
                namespace = %self.config.namespace,
                node = %node,
                "the waypoint's own pod is not in the mesh state: no locality preference until it is"
            );
        }
        *cached = Some((generation, found.clone()));
        found
    }
}

/// The locality setting istiod gives a Service that asks for closeness
/// (`trafficDistribution`) and has no DestinationRule `localityLbSetting`: a
/// `failoverPriority` of the topology labels (and the node's name for
/// `PreferSameNode`) that applies without outlier detection. Istio's
/// leading network label is left out: Warren has one network.
fn closeness(
    lb: Option<&warren_ztunnel::state::service::LoadBalancing>,
) -> Option<upstream::LocalityLb> {
    use warren_api::locality::{REGION_LABEL, SUBZONE_LABEL, ZONE_LABEL};
    use warren_ztunnel::state::service::Scope;
    let lb = lb.filter(|lb| !lb.strict)?;
    let mut labels = vec![REGION_LABEL, ZONE_LABEL, SUBZONE_LABEL];
    if lb.preference.contains(&Scope::Node) {
        labels.push(upstream::HOSTNAME_LABEL);
    }
    Some(upstream::LocalityLb {
        failover_priority: labels
            .into_iter()
            .map(upstream::PriorityLabel::parse)
            .collect(),
        forced: true,
        ..upstream::LocalityLb::default()
    })
}

/// The `grpc-timeout` header: up to 8 digits and a unit (`H`, `M`, `S`,
/// `m`, `u`, `n`); `None` when absent or malformed (then ignored, as Envoy
/// does).
pub(crate) fn grpc_timeout(headers: &HeaderMap) -> Option<std::time::Duration> {
    use std::time::Duration;
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Whether a request or an answer is gRPC (its content type).
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// The request's `x-request-id`, made when the client sent none.
fn ensure_request_id(headers: &mut HeaderMap) -> HeaderValue {
    if let Some(id) = headers.get(REQUEST_ID) {
        return id.clone();
    }
    let value = HeaderValue::from_bytes(&uuid_v4(&mut rand::rng()))
        .unwrap_or_else(|_| HeaderValue::from_static("-"));
    headers.insert(REQUEST_ID, value.clone());
    value
}

/// A random (version 4) UUID in its hyphenated form, written without
/// `format!`: one per request that came without an id.
fn uuid_v4(rng: &mut impl rand::Rng) -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bits: u128 = rng.random();
    // Version 4, variant 10.
    bits = (bits & !(0xf << 76)) | (0x4 << 76);
    bits = (bits & !(0x3 << 62)) | (0x2 << 62);
    let mut out = [b'-'; 36];
    let mut nibble = 32;
    for (i, slot) in out.iter_mut().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            continue;
        }
        nibble -= 1;
        *slot = HEX[((bits >> (nibble * 4)) & 0xf) as usize];
    }
    out
}

/// Whether the client's `TE` lists `trailers`.
fn wants_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .eq_ignore_ascii_case("trailers")
        })
}

/// Removes the headers that describe one hop and must not be forwarded.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
}

/// The `Set-Cookie` a consistent-hash cookie policy asks for.
fn set_cookie(cookie: &upstream::SetCookie) -> String {
    let mut value = format!("{}=\"{}\"", cookie.name, cookie.value);
    if let Some(path) = &cookie.path {
        value.push_str(&format!("; Path={path}"));
    }
    if let Some(age) = cookie.max_age {
        value.push_str(&format!("; Max-Age={}", age.as_secs()));
    }
    value.push_str("; HttpOnly");
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_version_4_uuids() {
        let mut rng = rand::rng();
        for _ in 0..100 {
            let id = uuid_v4(&mut rng);
            let id = std::str::from_utf8(&id).unwrap();
            let groups: Vec<&str> = id.split('-').collect();
            assert_eq!(
                groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
                [8, 4, 4, 4, 12],
                "{id}"
            );
            assert!(id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
            assert!(groups[2].starts_with('4'), "{id}");
            assert!(groups[3].starts_with(['8', '9', 'a', 'b']), "{id}");
        }
    }

    fn traced(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        super::super::trace::continue_or_start(&mut headers, None);
        headers
    }

    fn get<'h>(headers: &'h HeaderMap, name: &str) -> &'h str {
        headers.get(name).unwrap().to_str().unwrap()
    }

    fn is_span_id(id: &str) -> bool {
        id.len() == 16 && id.chars().all(|c| c.is_ascii_hexdigit())
    }

    #[test]
    fn w3c_traceparent_gets_the_waypoints_span_as_parent() {
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let h = traced(&[("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01"))]);
        let fields: Vec<&str> = get(&h, "traceparent").split('-').collect();
        assert_eq!(fields[0], "00");
        assert_eq!(fields[1], trace, "the trace id is kept");
        assert!(is_span_id(fields[2]), "{fields:?}");
        assert_ne!(
            fields[2], "00f067aa0ba902b7",
            "a span of the waypoint's own"
        );
        assert_eq!(fields[3], "01", "the sampling flag is kept");
    }

    #[test]
    fn b3_multi_headers_get_a_new_span_whose_parent_is_the_callers() {
        let h = traced(&[
            ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-sampled", "1"),
        ]);
        assert_eq!(get(&h, "x-b3-traceid"), "80f198ee56343ba864fe8b2a57d3eff7");
        assert_eq!(get(&h, "x-b3-parentspanid"), "e457b5a2e4d86bd1");
        let span = get(&h, "x-b3-spanid");
        assert!(is_span_id(span) && span != "e457b5a2e4d86bd1", "{span}");
        assert_eq!(get(&h, "x-b3-sampled"), "1");
    }

    #[test]
    fn b3_single_header_keeps_trace_and_sampling_with_a_new_span() {
        let trace = "80f198ee56343ba864fe8b2a57d3eff7";
        let h = traced(&[(
            "b3",
            &format!("{trace}-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90"),
        )]);
        let fields: Vec<&str> = get(&h, "b3").split('-').collect();
        assert_eq!(fields.len(), 4, "{fields:?}");
        assert_eq!(fields[0], trace);
        assert!(is_span_id(fields[1]) && fields[1] != "e457b5a2e4d86bd1");
        assert_eq!(fields[2], "1");
        assert_eq!(
            fields[3], "e457b5a2e4d86bd1",
            "the caller's span is the parent"
        );
        // A sampling-only b3 ("0", "1", "d") names no span: left as it is.
        assert_eq!(get(&traced(&[("b3", "0")]), "b3"), "0");
    }

    #[test]
    fn untraced_requests_get_no_trace_headers_and_bad_ones_are_left_alone() {
        let h = traced(&[("x-request-id", "abc")]);
        for name in ["traceparent", "b3", "x-b3-traceid", "x-b3-spanid"] {
            assert!(!h.contains_key(name), "{name} added to an untraced request");
        }
        let bad = "00-short-00f067aa0ba902b7-01";
        assert_eq!(get(&traced(&[("traceparent", bad)]), "traceparent"), bad);
    }

    #[test]
    fn a_mirrors_copy_is_marked_shadow_in_host_and_authority() {
        let (mut h1, ()) = Request::get("/x")
            .header(header::HOST, "reviews:9080")
            .body(())
            .unwrap()
            .into_parts();
        shadow(&mut h1);
        assert_eq!(h1.headers[header::HOST], "reviews-shadow:9080");
        let (mut h2, ()) = Request::get("http://reviews.demo:9080/x?y=1")
            .version(Version::HTTP_2)
            .body(())
            .unwrap()
            .into_parts();
        shadow(&mut h2);
        assert_eq!(h2.uri.to_string(), "http://reviews.demo-shadow:9080/x?y=1");
    }

    #[tokio::test]
    async fn an_http2_stream_refused_by_the_upstream_is_told_apart() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // An HTTP/2 server that refuses every stream.
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let mut connection = h2::server::handshake(socket).await.unwrap();
            while let Some(Ok((_, mut respond))) = connection.accept().await {
                respond.send_reset(h2::Reason::REFUSED_STREAM);
            }
        });
        let pool = super::super::multiplex::tests::pool();
        let request = Request::get("http://app.shop:80/")
            .body(full(Bytes::new()))
            .unwrap();
        let limits = crate::upstream::PoolLimits::default();
        let error = pool
            .send(
                addr,
                request,
                super::super::multiplex::tests::cluster(&limits, 0),
            )
            .await
            .expect_err("refused");
        assert_eq!(
            failure_kind(&error),
            FailureKind::RefusedStream,
            "{error:?}"
        );

        // Nobody listening: a connect failure.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gone = closed.local_addr().unwrap();
        drop(closed);
        let request = Request::get("http://app.shop:80/")
            .body(full(Bytes::new()))
            .unwrap();
        let error = pool
            .send(
                gone,
                request,
                super::super::multiplex::tests::cluster(&limits, 0),
            )
            .await
            .expect_err("no listener");
        assert_eq!(
            failure_kind(&error),
            FailureKind::ConnectFailure,
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn a_stream_above_a_goaways_last_stream_id_counts_as_refused() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // A bare HTTP/2 server: once the request's HEADERS arrive, it says
        // GOAWAY with last stream id 0, so stream 1 was not processed.
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut preface = [0u8; 24];
            socket.read_exact(&mut preface).await.unwrap();
            // An empty SETTINGS frame.
            socket
                .write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
                .await
                .unwrap();
            loop {
                let mut head = [0u8; 9];
                socket.read_exact(&mut head).await.unwrap();
                let length =
                    usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
                let mut payload = vec![0u8; length];
                socket.read_exact(&mut payload).await.unwrap();
                if head[3] == 0x1 {
                    break;
                }
            }
            // GOAWAY: last stream id 0, NO_ERROR.
            let goaway = [0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            socket.write_all(&goaway).await.unwrap();
            let mut rest = Vec::new();
            let _ = socket.read_to_end(&mut rest).await;
        });
        let pool = super::super::multiplex::tests::pool();
        let request = Request::post("http://app.shop:80/orders")
            .body(full(Bytes::from_static(b"{}")))
            .unwrap();
        let limits = crate::upstream::PoolLimits::default();
        let error = pool
            .send(
                addr,
                request,
                super::super::multiplex::tests::cluster(&limits, 0),
            )
            .await
            .expect_err("not processed");
        assert_eq!(
            failure_kind(&error),
            FailureKind::RefusedStream,
            "{error:?}"
        );
    }

    /// A body fed by the test: ends when the sender is dropped.
    struct Fed(tokio::sync::mpsc::UnboundedReceiver<Bytes>);

    impl hyper::body::Body for Fed {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
            self.0
                .poll_recv(cx)
                .map(|data| data.map(|d| Ok(hyper::body::Frame::data(d))))
        }
    }

    fn fed() -> (tokio::sync::mpsc::UnboundedSender<Bytes>, Fed) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (tx, Fed(rx))
    }

    #[tokio::test(start_paused = true)]
    async fn the_route_timeout_cuts_a_streamed_answer_counted_from_the_requests_end() {
        let arrived = Instant::now();
        let clock = tokio::time::Instant::now();
        // An answer that sends one frame, then stalls.
        let (upstream, stalled) = fed();
        upstream.send(Bytes::from_static(b"first")).unwrap();
        let mut answer = Deadline {
            body: stalled.boxed(),
            expiry: deadline(None, arrived, std::time::Duration::from_secs(5)),
        };
        let first = answer.frame().await.expect("a frame").expect("data");
        assert_eq!(first.into_data().ok().as_deref(), Some(&b"first"[..]));
        let cut = answer
            .frame()
            .await
            .expect("an end")
            .expect_err("cut short");
        assert!(cut.is::<RouteTimeout>(), "{cut}");
        assert!(clock.elapsed() >= std::time::Duration::from_secs(5));

        // With a body, the clock starts when the client's request is whole.
        let (feed, incoming) = fed();
        let source = Source::new(incoming, 1024);
        let started = tokio::time::Instant::now();
        let expiry = deadline(
            Some(Arc::clone(&source)),
            Instant::now(),
            std::time::Duration::from_secs(5),
        );
        let mut reader = source.attempt();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
            let _ = feed.send(Bytes::from_static(b"upload"));
        });
        // A 30 s upload: the request is whole at 30 s.
        while reader.frame().await.is_some() {}
        expiry.await;
        assert!(started.elapsed() >= std::time::Duration::from_secs(35));
    }

    #[test]
    fn grpc_timeouts_are_read_as_grpc_writes_them() {
        use std::time::Duration;
        let read = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("grpc-timeout", HeaderValue::from_str(value).unwrap());
            grpc_timeout(&headers)
        };
        assert_eq!(read("2S"), Some(Duration::from_secs(2)));
        assert_eq!(read("250m"), Some(Duration::from_millis(250)));
        assert_eq!(read("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(read("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "S", "123456789S", "2s", "-1S", "1.5S", "2"] {
            assert_eq!(read(bad), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&HeaderMap::new()), None);
    }

    #[tokio::test]
    async fn a_local_answer_to_a_grpc_call_is_a_grpc_status() {
        let unavailable = grpc_local_reply(reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "no healthy upstream",
        ))
        .await;
        assert_eq!(unavailable.status(), StatusCode::OK);
        let headers = unavailable.headers();
        assert_eq!(headers[GRPC_STATUS], "14");
        assert_eq!(headers["grpc-message"], "no healthy upstream");
        assert_eq!(headers[header::CONTENT_TYPE], "application/grpc");
        assert!(unavailable.into_body().is_end_stream(), "trailers only");

        let denied = grpc_local_reply(boxed(authz::forbidden())).await;
        assert_eq!(denied.headers()[GRPC_STATUS], "7");
        let other = grpc_local_reply(reply(StatusCode::IM_A_TEAPOT, "50% off\n")).await;
        assert_eq!(other.headers()[GRPC_STATUS], "2");
        assert_eq!(other.headers()["grpc-message"], "50%25 off");
    }

    #[test]
    fn upstream_uri_keeps_path_and_query() {
        let endpoint = |a: &str| http::uri::Authority::try_from(a).unwrap();
        let uri = upstream_uri(
            endpoint("10.0.0.7:8080"),
            &"/api/items?x=1".parse().unwrap(),
        );
        assert_eq!(
            uri.unwrap().to_string(),
            "http://10.0.0.7:8080/api/items?x=1"
        );
        let uri = upstream_uri(endpoint("10.0.0.7:8080"), &"http://app/".parse().unwrap());
        assert_eq!(uri.unwrap().to_string(), "http://10.0.0.7:8080/");
        let uri = upstream_uri(endpoint("[fd00::1]:80"), &"/x".parse().unwrap());
        assert_eq!(uri.unwrap().to_string(), "http://[fd00::1]:80/x");
    }

    #[test]
    fn te_trailers_is_recognised_among_other_codings() {
        let te = |values: &[&'static str]| {
            let mut headers = HeaderMap::new();
            for v in values {
                headers.append(header::TE, HeaderValue::from_static(v));
            }
            wants_trailers(&headers)
        };
        assert!(te(&["trailers"]));
        assert!(te(&["gzip;q=0.5, Trailers"]));
        assert!(te(&["deflate", "trailers;q=1"]));
        assert!(!te(&["gzip"]));
        assert!(!te(&[]));
    }

    #[test]
    fn a_requests_authority_is_its_uris_else_its_host() {
        let h2 = Request::get("http://reviews.shop:9080/x")
            .header(header::HOST, "other")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        assert_eq!(request_authority(&h2).unwrap(), "reviews.shop:9080");
        let h1 = Request::get("/x")
            .header(header::HOST, "reviews")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        assert_eq!(request_authority(&h1).unwrap(), "reviews");
        let neither = Request::get("/x").body(()).unwrap().into_parts().0;
        assert_eq!(request_authority(&neither), None);
    }
}
