//! `/explain` on the waypoint's admin port: what this waypoint would do with
//! one request, step by step: who calls, which destination it serves, what its
//! AuthorizationPolicies decide, which VirtualService rule routes it, what
//! that rule does, and the TLS the waypoint starts to the endpoints (a
//! DestinationRule's `tls`, or a BackendTLSPolicy).
//!
//! Decided by the calls a request goes through (`destination::of_connect`,
//! `serves`, `authz::authorize`, `RouteTable::route`) on the tables the
//! waypoint routes with now. Chances (a fault's share, weighted destinations, a
//! mirror's share) are told as the shares they are, not drawn; which endpoint
//! answers is the cluster's (`warrenctl waypoint clusters`).

use std::net::{IpAddr, SocketAddr};

use http::{Method, StatusCode, Uri};
use serde::Serialize;
use warren_model::l4_route::REJECTED;
use warren_ztunnel::{
    explain::Step,
    http_endpoint::{Reply, json, text},
    state::service::Protocol,
};

use crate::{
    app::{ClusterKey, Context},
    authz,
    proxy::{
        destination,
        http::{grpc_timeout, is_grpc},
        serves,
    },
    route::{
        Abort, Action, CorsCheck, FaultAbort, HttpRule, Lookup, RequestInfo, RouteDestination,
        Scope,
        tcp::{ConnectionInfo, TcpRouted},
    },
};

/// The request to explain, as `/explain`'s query gives it.
#[derive(Debug, Default)]
pub struct Question {
    /// The calling pod: `namespace/name`.
    pub from: String,
    pub method: String,
    /// `http://host[:port]/path?query`: a Service's name, or an address.
    pub url: String,
    /// `name: value` each.
    pub headers: Vec<String>,
    /// On a TLS port, the server name of the client's hello; `None`: the
    /// URL's host, when it is a name.
    pub sni: Option<String>,
}

/// How the request ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Sent on to a destination (faults and retries as the steps say).
    Forwarded,
    /// Answered by the waypoint itself: a redirect, a direct response, or a
    /// fault abort for every request.
    Answered,
    /// 401: a JWT the RequestAuthentications refuse.
    Unauthenticated,
    /// 403 from an AuthorizationPolicy.
    Denied,
    /// 404: the host's VirtualService has no rule for it.
    NotRouted,
    /// Not this waypoint's to serve (the step says why).
    Refused,
}

/// The steps (stages `caller`, `destination`, `telemetry`, `note`, `authentication`,
/// `policy`, `route`,
/// `fault`, `action`, `timeout`, `retries`, `mirror`) and the verdict, as
/// ztunnel's `/explain` gives a connection's.
pub type Explanation = warren_ztunnel::explain::Explanation<Verdict>;

/// Why a question could not be answered here.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error(
        "usage: /explain?from=<namespace/pod>&url=<http://host[:port]/path>[&method=GET][&header=name:value]...[&sni=name]"
    )]
    Usage,
    #[error("no pod {0:?} is known to this waypoint")]
    UnknownCaller(String),
    #[error("{0} has no mesh identity: it reaches no waypoint")]
    NotInMesh(String),
    #[error("{0} has no address")]
    NoAddress(String),
    #[error("{url:?} is not a request this waypoint can read: {why}")]
    BadRequest { url: String, why: String },
    #[error(
        "{host} is no name of the mesh that namespace {namespace} sees; give the address it resolves to"
    )]
    UnknownName { host: String, namespace: String },
}

impl Question {
    /// Reads `/explain`'s query: `from`, `url`, `method`, `header` (repeated),
    /// `sni`.
    pub fn from_query(query: &str) -> Result<Question, ExplainError> {
        let mut question = Question::default();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "from" => question.from = value.into_owned(),
                "url" => question.url = value.into_owned(),
                "method" => question.method = value.into_owned(),
                "header" => question.headers.push(value.into_owned()),
                "sni" => question.sni = Some(value.into_owned()),
                _ => return Err(ExplainError::Usage),
            }
        }
        if question.from.is_empty() || question.url.is_empty() {
            return Err(ExplainError::Usage);
        }
        Ok(question)
    }
}

/// `/explain`'s answer to `query`: the explanation as JSON, or 400 and why.
pub async fn answer(ctx: &Context, query: Option<&str>) -> Reply {
    let explained = match Question::from_query(query.unwrap_or_default()) {
        Ok(question) => explain(ctx, &question).await,
        Err(error) => Err(error),
    };
    match explained.map(serde_json::to_value) {
        Ok(Ok(explanation)) => json(&explanation),
        Ok(Err(error)) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")),
        Err(error) => text(StatusCode::BAD_REQUEST, format!("{error}\n")),
    }
}

/// Explains `question`'s request as this waypoint would take it.
pub async fn explain(ctx: &Context, question: &Question) -> Result<Explanation, ExplainError> {
    let state = &ctx.inputs.state;
    let caller = state
        .pod(&question.from)
        .ok_or_else(|| ExplainError::UnknownCaller(question.from.clone()))?;
    let identity = caller
        .identity
        .clone()
        .ok_or_else(|| ExplainError::NotInMesh(question.from.clone()))?;
    let (mut parts, url) = request_parts(question)?;
    let mut steps = Vec::new();
    let mut step = |stage: &'static str, detail: String| steps.push(Step { stage, detail });
    step("caller", format!("pod {} as {identity}", question.from));
    let dst = destination_address(state, &url, &caller.namespace)?;
    let source_ip = caller
        .address_toward(dst.ip())
        .ok_or_else(|| ExplainError::NoAddress(question.from.clone()))?;
    let done = |steps, verdict| Ok(Explanation { steps, verdict });
    let Some(service) = destination::of_connect(state, dst, &caller.namespace) else {
        step(
            "destination",
            format!("{dst} is neither a Service nor a pod whose traffic goes through a waypoint"),
        );
        return done(steps, Verdict::Refused);
    };
    let me = ctx.identity();
    if !serves(&service, &me) {
        step(
            "destination",
            format!("{} uses another waypoint, not {me}", service.key),
        );
        return done(steps, Verdict::Refused);
    }
    let Some(port) = service.port(dst.port()) else {
        step(
            "destination",
            format!("{} has no port {}", service.key, dst.port()),
        );
        return done(steps, Verdict::Refused);
    };
    step(
        "destination",
        format!(
            "{} ({}) port {}, {:?}",
            service.key,
            service.hostname,
            dst.port(),
            port.protocol()
        ),
    );
    let compiled = ctx.tables.current();
    if let Some(asked) = compiled
        .telemetry
        .for_service(&service.namespace, &service.name)
        .describe()
    {
        step("telemetry", asked);
    }
    // The service's own VirtualServices, and the waypoint's namespace's.
    let scope = Scope {
        service_namespace: &service.namespace,
        waypoint_namespace: &ctx.config.namespace,
    };
    let principals = state.trust_domains().principals(&identity);
    let peer = authz::Peer {
        identity: &identity,
        principals: &principals,
        source_ip,
        destination_ip: dst.ip(),
        service: &service.name,
        service_namespace: &service.namespace,
        port: dst.port(),
    };
    if port.protocol() == Protocol::Tcp {
        // No requests on a TCP port: the policies decide the connection. On
        // a TLS port, the server name of the client's hello is the one
        // asked, else the URL's host (an address names none).
        let tls = port.carries_tls();
        let server_name = question
            .sni
            .as_deref()
            .filter(|name| !name.is_empty())
            .or_else(|| {
                url.host()
                    .filter(|h| h.parse::<std::net::IpAddr>().is_err() && !h.starts_with('['))
            })
            .filter(|_| tls);
        let mut info = ConnectionInfo {
            port: dst.port(),
            destination: dst.ip(),
            source_labels: &caller.labels,
            source_namespace: &identity.namespace,
            tls: tls.then_some(None),
        };
        // CUSTOM first, at the CONNECT.
        let customs = authz::custom_connection(&compiled.authz, &peer);
        if !customs_allow(&mut step, &compiled, &customs, true) {
            return done(steps, Verdict::Denied);
        }
        // The hello is read only for a policy or a rule that looks at it.
        let at_connect = authz::at_connect(&compiled.authz, &peer, tls);
        let decided = at_connect == authz::AtConnect::AfterHello;
        let routed = tls
            && compiled
                .tcp_routes
                .reads_sni(&service.hostname, scope, &info);
        if decided || routed {
            let uses = match (decided, routed) {
                (true, true) => "decided and routed",
                (true, false) => "decided",
                _ => "routed",
            };
            let without = [
                decided.then_some("matches no connection.sni value"),
                routed.then_some("fits no tls rule"),
            ];
            let without: Vec<&str> = without.into_iter().flatten().collect();
            step(
                "tls",
                match server_name {
                    Some(name) => format!(
                        "a TLS port: {uses} on the server name {name}, read from the client's hello"
                    ),
                    None => format!(
                        "a TLS port: a hello without a server name {}",
                        without.join(" and ")
                    ),
                },
            );
        }
        let denial = match at_connect {
            authz::AtConnect::Allowed => None,
            authz::AtConnect::Denied(denial) => Some(denial),
            authz::AtConnect::AfterHello => {
                let name = authz::ServerName::Read(server_name);
                authz::authorize_connection(&compiled.authz, &peer, name)
            }
        };
        if let Some(denial) = denial {
            step(
                "policy",
                format!("a TCP port: the connection is refused: {}", denied(&denial)),
            );
            return done(steps, Verdict::Denied);
        }
        step("policy", "a TCP port: the connection is allowed".to_owned());
        info.tls = tls.then_some(server_name);
        // The TLS the waypoint starts to where the bytes go; none from a
        // BackendTLSPolicy over the client's own TLS, as the proxy does.
        let upstream_tls = |d: &RouteDestination| {
            let key = ClusterKey::new(&d.host, d.subset.as_deref(), d.port, dst.port());
            let carried = Carried::Bytes { client_tls: tls };
            tls_to(ctx, &compiled, &key, carried)
        };
        match compiled.tcp_routes.route(&service.hostname, scope, &info) {
            TcpRouted::Default => {
                step(
                    "route",
                    format!(
                        "no VirtualService tcp or tls rule fits: the bytes go to {}",
                        service.hostname
                    ),
                );
                if let Some(said) = upstream_tls(&RouteDestination::to_host(&service.hostname)) {
                    step("upstream tls", said);
                }
            }
            TcpRouted::Rule(vs, rule) => {
                step(
                    "route",
                    format!("VirtualService {vs}, rule {:?}", rule.name),
                );
                step(
                    "action",
                    format!("relay to {}", shares(rule.destinations())),
                );
                // A Gateway API route's rejected share (a backend it may not
                // send to, or every weight 0): refused, not relayed.
                let rejected = |d: &RouteDestination| d.host == REJECTED;
                if rule.destinations().iter().any(rejected) {
                    step(
                        "note",
                        format!(
                            "{REJECTED} is the route's rejected share: those connections are refused (NR)"
                        ),
                    );
                }
                if !rule.destinations().is_empty() && rule.destinations().iter().all(rejected) {
                    return done(steps, Verdict::Refused);
                }
                for d in rule.destinations().iter().filter(|d| !rejected(d)) {
                    if let Some(said) = upstream_tls(d) {
                        step("upstream tls", said);
                    }
                }
            }
        }
        return done(steps, Verdict::Forwarded);
    }
    if is_grpc(&parts.headers) {
        step(
            "note",
            "a gRPC call: what the waypoint answers itself (403, 404, an abort) reaches the caller as HTTP 200 with a grpc-status".to_owned(),
        );
    }
    let verified = if compiled.authn.applies(&service.namespace, &service.name) {
        match compiled
            .authn
            .authenticate(&service.namespace, &service.name, &mut parts)
            .await
        {
            Err(rejection) => {
                step("authentication", format!("401: {rejection}"));
                return done(steps, Verdict::Unauthenticated);
            }
            Ok(Some(verified)) => {
                step(
                    "authentication",
                    match &verified.principal {
                        Some(principal) => format!("JWT verified: request principal {principal}"),
                        None => format!(
                            "JWT of {} verified, without a subject: no request principal",
                            verified.issuer
                        ),
                    },
                );
                Some(verified)
            }
            Ok(None) => {
                step(
                    "authentication",
                    "no JWT: the request goes on unauthenticated (no request principal)".to_owned(),
                );
                None
            }
        }
    } else {
        None
    };
    // CUSTOM first, as a request meets them.
    let customs = authz::custom(&compiled.authz, &peer, &mut parts, verified.as_deref());
    if !customs_allow(&mut step, &compiled, &customs, false) {
        return done(steps, Verdict::Denied);
    }
    if let Some(denial) = authz::authorize(&compiled.authz, &peer, &mut parts, verified.as_deref())
    {
        step("policy", format!("403: {}", denied(&denial)));
        return done(steps, Verdict::Denied);
    }
    step(
        "policy",
        if compiled.authz.is_empty() {
            "no AuthorizationPolicy applies here: allowed".to_owned()
        } else {
            "allowed by this waypoint's AuthorizationPolicies".to_owned()
        },
    );
    let info = RequestInfo::from_parts(&parts, dst.port(), &caller.labels, &identity.namespace);
    // The request's host, as the proxy reads it for a wildcard host's TLS.
    let request_host = crate::proxy::http::request_authority(&parts).map(|a| a.host().to_owned());
    let rule = match compiled.routes.route(&service.hostname, scope, &info) {
        Lookup::Routed(routed) => {
            step(
                "route",
                format!(
                    "VirtualService {}, route {:?}",
                    routed.virtual_service,
                    routed.route_name()
                ),
            );
            routed.rule
        }
        Lookup::Default => {
            step(
                "route",
                format!(
                    "no VirtualService for {}: to the Service itself, with Istio's default retries",
                    service.hostname
                ),
            );
            step("action", format!("forward to {}", service.hostname));
            let host = &service.hostname;
            if let Some(tls) = tls_to(
                ctx,
                &compiled,
                &ClusterKey::new(host, None, None, dst.port()),
                Carried::Requests(request_host.as_deref()),
            ) {
                step("upstream tls", tls);
            }
            return done(steps, Verdict::Forwarded);
        }
        Lookup::NoMatch(vs) => {
            step(
                "route",
                format!("404: no route of VirtualService {vs} matches"),
            );
            return done(steps, Verdict::NotRouted);
        }
    };
    let verdict = describe(rule, &parts.method, &parts.headers, &mut step);
    if let (Verdict::Forwarded, Action::Forward(destinations)) = (&verdict, &rule.action) {
        for d in destinations {
            let key = ClusterKey::new(&d.host, d.subset.as_deref(), d.port, dst.port());
            if let Some(tls) = tls_to(
                ctx,
                &compiled,
                &key,
                // The host it leaves with, rewritten or not.
                Carried::Requests(rule.rewritten_host(d).or(request_host.as_deref())),
            ) {
                step("upstream tls", tls);
            }
        }
    }
    done(steps, verdict)
}

/// What the waypoint relays to a destination.
#[derive(Clone, Copy)]
enum Carried<'a> {
    /// Requests, with their host (a wildcard host's TLS asks for it).
    Requests(Option<&'a str>),
    /// A TCP connection's bytes; `client_tls` when they are the client's own
    /// TLS (it dialled a TLS port), which no BackendTLSPolicy wraps.
    Bytes { client_tls: bool },
}

/// The TLS the waypoint starts (or refuses to) on its connections to a
/// destination's endpoints, and who asks for it; `None` when it starts none
/// (HBONE, the mesh's mutual TLS, still carries meshed traffic).
fn tls_to(
    ctx: &Context,
    compiled: &crate::tables::Compiled,
    key: &ClusterKey,
    carried: Carried<'_>,
) -> Option<String> {
    // The cluster requests use: what it holds is what they meet.
    let cluster = ctx.cluster(compiled, key).ok()?;
    let at = format!("{}:{}", key.host, cluster.port());
    let rules = || format!("DestinationRule {}", cluster.resolved().rules.join(", "));
    let client_tls = matches!(carried, Carried::Bytes { client_tls: true });
    let limits = crate::proxy::tcp::relaying(cluster.limits(), client_tls);
    let limits = match carried {
        Carried::Requests(Some(host)) => {
            std::borrow::Cow::Owned(limits.for_request(host).into_owned())
        }
        _ => limits,
    };
    if limits.mesh_tls_only {
        return Some(format!(
            "{at}: ISTIO_MUTUAL ({}): meshed endpoints only, over HBONE",
            rules()
        ));
    }
    let origination = limits.tls.as_ref()?;
    let tls = origination.describe();
    let from = match tls["backend_tls_policy"].as_str() {
        Some(policy) => format!("BackendTLSPolicy {policy}"),
        None => rules(),
    };
    // A TCP connection has no request to name a wildcard host's server.
    let error = match carried {
        Carried::Bytes { .. } => origination.client(crate::upstream::Speaks::Bytes).err(),
        Carried::Requests(_) => None,
    };
    if let Some(error) = tls["error"].as_str().map(str::to_owned).or(error) {
        let refused = match carried {
            Carried::Requests(_) => "requests refused (503)",
            Carried::Bytes { .. } => "connections closed (UF), no byte sent to the endpoint",
        };
        return Some(format!(
            "{at}: {refused}, as {from} asks what cannot be done: {error}"
        ));
    }
    let names: Vec<&str> = tls["subject_alt_names"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n.as_str())
        .collect();
    let checked = match names.as_slice() {
        _ if tls["insecure_skip_verify"] == true => "not checked (insecureSkipVerify)".to_owned(),
        [] => "checked for the server name".to_owned(),
        [one] => format!("checked for {one}"),
        many => format!("checked for one of {}", many.join(", ")),
    };
    Some(format!(
        "{at}: TLS started by the waypoint ({from}): server name {}, certificate {checked}",
        tls["server_name"].as_str().unwrap_or("?"),
    ))
}

/// What a routed request meets: faults, the action, timeout, retries, mirrors.
fn describe(
    rule: &HttpRule,
    method: &Method,
    headers: &http::HeaderMap,
    step: &mut impl FnMut(&'static str, String),
) -> Verdict {
    if let Some(fault) = &rule.fault {
        if let Some(delay) = &fault.delay {
            step(
                "fault",
                format!(
                    "delay of {:?} for {} of requests",
                    delay.duration,
                    share(delay.per_million)
                ),
            );
        }
        if let Some(FaultAbort { abort, per_million }) = &fault.abort {
            let with = match abort {
                Abort::Http(status) => format!("HTTP {status}"),
                Abort::Grpc(code) => format!("gRPC status {code}"),
            };
            step(
                "fault",
                format!("abort with {with} for {} of requests", share(*per_million)),
            );
            // Every request aborted: none gets further.
            if *per_million >= 1_000_000 {
                return Verdict::Answered;
            }
        }
    }
    // CORS after the faults, on a rule that forwards: a preflight it
    // answers gets no further.
    if let (Action::Forward(_), Some(cors)) = (&rule.action, &rule.cors) {
        match cors.check(method, headers) {
            CorsCheck::Answer(answer) => {
                step(
                    "cors",
                    format!("preflight answered {} by the waypoint", answer.status()),
                );
                return Verdict::Answered;
            }
            CorsCheck::Allowed(origin) => step(
                "cors",
                format!("origin {origin:?} allowed: the answer says so"),
            ),
            CorsCheck::Untouched => step(
                "cors",
                "no allowed Origin: the request and its answer are left as they are".into(),
            ),
        }
    }
    match &rule.action {
        Action::Forward(destinations) => {
            step("action", format!("forward to {}", shares(destinations)));
        }
        // Answered here: no upstream, so no timeout, retries or mirrors.
        Action::Redirect(redirect) => {
            let to = format!(
                "{}{}",
                redirect.authority.as_deref().unwrap_or("the same host"),
                redirect
                    .path
                    .as_ref()
                    .map_or(" (same path)".into(), |p| p.describe())
            );
            step(
                "action",
                format!("answered with redirect {} to {to}", redirect.status),
            );
            return Verdict::Answered;
        }
        Action::DirectResponse(direct) => {
            step(
                "action",
                format!("answered directly with {}", direct.status),
            );
            return Verdict::Answered;
        }
    }
    step(
        "timeout",
        // A gRPC client's deadline counts too, as the data path counts it.
        match (rule.timeout, grpc_timeout(headers)) {
            (Some(route), Some(grpc)) if grpc < route => {
                format!(
                    "{grpc:?}, the call's grpc-timeout (the route's is {route:?}), retries included"
                )
            }
            (Some(limit), _) => format!("{limit:?} for the whole exchange, retries included"),
            (None, Some(grpc)) => format!("{grpc:?}, the call's grpc-timeout, retries included"),
            (None, None) => "none".to_owned(),
        },
    );
    let retries = &rule.retries;
    step(
        "retries",
        if retries.attempts == 0 {
            "none".to_owned()
        } else {
            format!(
                "up to {} on {}{}",
                retries.attempts,
                retries.retry_on,
                retries
                    .per_try_timeout
                    .map(|t| format!(", {t:?} each"))
                    .unwrap_or_default()
            )
        },
    );
    for mirror in &rule.mirrors {
        step(
            "mirror",
            format!(
                "{} of requests copied to {}{} (answers dropped)",
                share(mirror.per_million),
                mirror.host,
                mirror
                    .subset
                    .as_deref()
                    .map(|s| format!(" subset {s}"))
                    .unwrap_or_default()
            ),
        );
    }
    Verdict::Forwarded
}

/// Says whom the CUSTOM policies that match would ask, without asking (an
/// explanation changes nothing and calls no one); false when one of them
/// cannot be asked at all, which denies.
fn customs_allow(
    step: &mut impl FnMut(&'static str, String),
    compiled: &crate::tables::Compiled,
    customs: &[authz::Custom],
    connection: bool,
) -> bool {
    for custom in customs {
        let policy = format!(
            "CUSTOM policy {}/{} (rule {})",
            custom.namespace, custom.name, custom.rule
        );
        let Some(provider) = compiled.ext_authz.get(&custom.provider) else {
            step(
                "policy",
                format!(
                    "refused: {policy} names provider {:?}, which the mesh config does not define: fail closed",
                    custom.provider
                ),
            );
            return false;
        };
        if connection && !provider.asks_about_connections() {
            step(
                "policy",
                format!(
                    "refused: {policy} names {}, an HTTP authorizer, which cannot be asked about a TCP connection: fail closed",
                    provider.name
                ),
            );
            return false;
        }
        step(
            "policy",
            format!(
                "{policy}: asks {} ({}, {}:{}), whose answer decides; {}; what follows is if it allows",
                provider.name,
                provider.kind(),
                provider.host,
                provider.port,
                if provider.fail_open {
                    "if it cannot answer, this goes on (failOpen)".to_owned()
                } else if connection {
                    "if it cannot answer, the connection is refused".to_owned()
                } else {
                    format!("if it cannot answer, {}", provider.status_on_error)
                },
            ),
        );
    }
    true
}

/// Why a request was refused, in words, with Envoy's detail the access log
/// carries.
fn denied(denial: &authz::Denial) -> String {
    match denial {
        authz::Denial::Matched {
            namespace,
            name,
            rule,
        } => {
            format!("denied by DENY policy {namespace}/{name}, its rule {rule} matched ({denial})")
        }
        authz::Denial::NoAllowMatched => {
            format!("ALLOW policies apply and none matched ({denial})")
        }
    }
}

/// Weighted destinations, each with its share of the traffic.
fn shares(destinations: &[RouteDestination]) -> String {
    let total: u64 = destinations.iter().map(|d| u64::from(d.weight)).sum();
    destinations
        .iter()
        .map(|d| format!("{} ({})", target(d), share_of(u64::from(d.weight), total)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn target(destination: &RouteDestination) -> String {
    let mut out = destination.host.clone();
    if let Some(port) = destination.port {
        out.push_str(&format!(":{port}"));
    }
    if let Some(subset) = &destination.subset {
        out.push_str(&format!(" subset {subset}"));
    }
    out
}

fn share(per_million: u32) -> String {
    format!("{}%", f64::from(per_million) / 10_000.0)
}

fn share_of(weight: u64, total: u64) -> String {
    if total == 0 {
        return "0%".to_owned();
    }
    // Weights are small; a share to one decimal is what a reader needs.
    let tenths = (weight * 1000 + total / 2) / total;
    match tenths % 10 {
        0 => format!("{}%", tenths / 10),
        tenth => format!("{}.{tenth}%", tenths / 10),
    }
}

/// The request as the waypoint receives it over HTTP/1.1: in origin form,
/// its host in `Host` (the URL's, unless a header names another), and the
/// URL it was sent to.
fn request_parts(question: &Question) -> Result<(http::request::Parts, Uri), ExplainError> {
    let bad = |why: String| ExplainError::BadRequest {
        url: question.url.clone(),
        why,
    };
    let url: Uri = question
        .url
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(e.to_string()))?;
    let authority = url
        .authority()
        .ok_or_else(|| bad("no host: give http://host/path".to_owned()))?
        .clone();
    let method = if question.method.is_empty() {
        Method::GET
    } else {
        Method::from_bytes(question.method.as_bytes()).map_err(|e| bad(e.to_string()))?
    };
    let path = url.path_and_query().map_or("/", |p| p.as_str());
    let mut request = http::Request::builder().method(method).uri(path);
    let mut has_host = false;
    for header in &question.headers {
        let (name, value) = header
            .split_once(':')
            .ok_or_else(|| bad(format!("header {header:?} is not name:value")))?;
        has_host |= name.trim().eq_ignore_ascii_case("host");
        request = request.header(name.trim(), value.trim());
    }
    if !has_host {
        request = request.header(http::header::HOST, authority.as_str());
    }
    let (parts, ()) = request
        .body(())
        .map_err(|e| bad(e.to_string()))?
        .into_parts();
    Ok((parts, url))
}

/// The address a request for `uri` reaches the waypoint at: the host's own,
/// or the Service's its name resolves to for `namespace`.
fn destination_address(
    state: &warren_ztunnel::state::State,
    uri: &Uri,
    namespace: &str,
) -> Result<SocketAddr, ExplainError> {
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip.to_canonical(), port));
    }
    let unknown = || ExplainError::UnknownName {
        host: host.to_owned(),
        namespace: namespace.to_owned(),
    };
    let service = state
        .service_by_dns_name(host, namespace)
        .ok_or_else(unknown)?;
    let ip = warren_api::addr::ipv4_first(&service.vips).ok_or_else(unknown)?;
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn question(url: &str, headers: &[&str]) -> Question {
        Question {
            from: "demo/client".into(),
            method: String::new(),
            url: url.into(),
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            sni: None,
        }
    }

    #[test]
    fn the_query_names_the_request() {
        let asked = Question::from_query(
            "from=demo%2Fclient&url=http%3A%2F%2Fapp%2Fx%3Fa%3D1&method=POST&header=end-user%3A+jason&header=x-a%3A+b&sni=db.example",
        )
        .expect("a question");
        assert_eq!(asked.sni.as_deref(), Some("db.example"));
        assert_eq!(asked.from, "demo/client");
        assert_eq!(asked.url, "http://app/x?a=1");
        assert_eq!(asked.method, "POST");
        assert_eq!(asked.headers, ["end-user: jason", "x-a: b"]);
        for bad in [
            "",
            "from=demo%2Fclient",
            "url=http%3A%2F%2Fapp%2F",
            "from=a%2Fb&url=x&color=red",
        ] {
            assert!(
                matches!(Question::from_query(bad), Err(ExplainError::Usage)),
                "{bad:?}"
            );
        }
    }

    /// As HTTP/1.1 brings it: origin form, the host in `Host` unless a header
    /// names another.
    #[test]
    fn the_request_arrives_as_http1_brings_it() {
        let (parts, url) = request_parts(&question(
            "http://app.demo:8080/a/b?c=d",
            &["end-user: jason"],
        ))
        .expect("a request");
        assert_eq!(parts.method, Method::GET);
        assert_eq!(parts.uri, "/a/b?c=d");
        assert_eq!(parts.headers[http::header::HOST], "app.demo:8080");
        assert_eq!(parts.headers["end-user"], "jason");
        assert_eq!(url.port_u16(), Some(8080));
        let (parts, _) = request_parts(&question("http://10.96.0.10/", &["Host: other.example"]))
            .expect("a request");
        assert_eq!(parts.headers[http::header::HOST], "other.example");
        for (url, headers) in [
            ("/no-host", &[][..]),
            ("http://app/", &["no colon"][..]),
            ("http://app/", &["bad name: x"][..]),
            ("not a url at all", &[][..]),
        ] {
            assert!(
                matches!(
                    request_parts(&question(url, headers)),
                    Err(ExplainError::BadRequest { .. })
                ),
                "{url} {headers:?}"
            );
        }
    }

    #[test]
    fn shares_are_given_to_a_tenth() {
        assert_eq!(share_of(80, 100), "80%");
        assert_eq!(share_of(1, 3), "33.3%");
        assert_eq!(share_of(2, 3), "66.7%");
        assert_eq!(
            share_of(u64::from(u32::MAX), 2 * u64::from(u32::MAX)),
            "50%"
        );
        assert_eq!(share_of(0, 0), "0%");
        assert_eq!(share(500_000), "50%");
        assert_eq!(share(1_000_000), "100%");
    }
}
