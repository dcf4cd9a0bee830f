//! Asking the external authorizers of CUSTOM policies about a request (as
//! Envoy's HTTP ext_authz filter does) or a TCP connection at its CONNECT
//! (as its network filter does), before DENY and ALLOW are decided.
//!
//! A check travels like any request the waypoint sends: through the
//! authorizer's upstream cluster (its Service's endpoints, load balancing,
//! outlier detection, HBONE to their nodes), one try, within the provider's
//! timeout. Its answer decides ([`crate::ext_authz`]); when there is none
//! to be had, `failOpen` lets the request go on or `statusOnError` answers.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, Version, header, request::Parts};
use tracing::debug;

use warren_api::Identity;

use super::{
    Client, Downstream,
    http::{Attempt, Outgoing, Tries, attempt, full},
    prefixed::{Ahead, Prefixed},
};
use crate::{
    app::{Body, ClusterKey, Context},
    authz::{self, Custom},
    ext_authz::{Changes, MAX_ANSWER, Protocol, Provider, Verdict, grpc},
    metrics::ExtAuthzLabels,
    tables::Compiled,
};

/// How Envoy marks a request an external authorizer refused.
pub const FLAG: &str = "UAEX";

/// A request the authorizers did not let through.
pub struct Refused {
    pub response: Response<Body>,
    /// The access log's `details`.
    pub details: String,
}

impl Refused {
    /// The provider could not decide and does not fail open: its
    /// `statusOnError`, with an empty body.
    fn on_error(provider: &Provider, reason: &str) -> Refused {
        let mut response = Response::new(full(Bytes::new()));
        *response.status_mut() = provider.status_on_error;
        Refused {
            response,
            details: format!("ext_authz_error: {}: {reason}", provider.name),
        }
    }
}

/// Asks the provider of each of `customs` in turn; each allowing answer's
/// changes are made to `parts` before the next is asked. `Ok` with the
/// changes for the response when every one allows.
pub async fn ask(
    ctx: &Arc<Context>,
    compiled: &Compiled,
    down: &Downstream,
    customs: &[Custom],
    parts: &mut Parts,
    body: &mut Prefixed<hyper::body::Incoming>,
    request_id: &HeaderValue,
) -> Result<Changes, Refused> {
    let mut on_response = Changes::default();
    for custom in customs {
        let Some(provider) = compiled.ext_authz.get(&custom.provider) else {
            // As Istio: a policy whose provider is not there denies what
            // its rules match.
            count(ctx, &custom.provider, "undefined");
            return Err(Refused {
                response: authz::forbidden().map(full),
                details: format!(
                    "ext_authz_error: {custom} names provider {:?}, which the mesh config does not define",
                    custom.provider
                ),
            });
        };
        let ahead = match &provider.body {
            None => None,
            Some(wanted) => {
                let limit = wanted.max_request_bytes as usize;
                match body.read_ahead(limit, provider.timeout).await {
                    // Envoy's answer to a body past the buffer, whatever
                    // `failOpen` says: it cannot be checked as asked.
                    Ok(ahead) if !ahead.whole && !wanted.allow_partial_message => {
                        count(ctx, &provider.name, "error");
                        let mut response =
                            Response::new(full(Bytes::from_static(b"Payload Too Large")));
                        *response.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
                        return Err(Refused {
                            response,
                            details: format!(
                                "ext_authz_error: {}: the body is longer than maxRequestBytes ({limit})",
                                provider.name
                            ),
                        });
                    }
                    Ok(ahead) => Some(ahead),
                    Err(reason) => {
                        // The client's body failed or stalled: nothing to
                        // forward either.
                        count(ctx, &provider.name, "error");
                        return Err(Refused::on_error(provider, &reason));
                    }
                }
            }
        };
        let pack_as_bytes = provider.body.as_ref().is_some_and(|b| b.pack_as_bytes);
        let asked = Asked {
            parts,
            ahead: ahead.as_ref().map(|a| (a, pack_as_bytes)),
            request_id,
        };
        let verdict = check(ctx, compiled, &Caller::of(down), provider, Some(asked)).await;
        match verdict {
            Verdict::Allow(changes) => {
                count(ctx, &provider.name, "ok");
                changes.apply_to_request(parts);
                on_response.response.extend(changes.response);
            }
            Verdict::Deny(answer) => {
                count(ctx, &provider.name, "denied");
                return Err(Refused {
                    response: answer.map(full),
                    details: format!("ext_authz_denied: {} ({custom})", provider.name),
                });
            }
            Verdict::Error(reason) if provider.fail_open => {
                count(ctx, &provider.name, "failure_mode_allowed");
                debug!(provider = %provider.name, %reason, "external authorizer failed; failOpen lets the request go on");
            }
            Verdict::Error(reason) => {
                count(ctx, &provider.name, "error");
                return Err(Refused::on_error(provider, &reason));
            }
        }
    }
    Ok(on_response)
}

fn count(ctx: &Context, provider: &str, result: &'static str) {
    ctx.metrics
        .ext_authz
        .get_or_create(&ExtAuthzLabels {
            provider: provider.to_owned(),
            result,
        })
        .inc();
}

/// Who calls, and where: what a check tells of both ends.
pub struct Caller<'a> {
    pub identity: &'a Identity,
    pub source_ip: IpAddr,
    /// The address and port dialled.
    pub destination: SocketAddr,
    /// The destination Service's host.
    pub service: &'a str,
    /// For load balancing the check, as the request itself would be.
    pub client: Client,
}

impl<'a> Caller<'a> {
    fn of(down: &'a Downstream) -> Caller<'a> {
        Caller {
            identity: &down.peer.identity,
            source_ip: down.source_ip,
            destination: SocketAddr::new(down.vip, down.port),
            service: &down.service.hostname,
            // A check is the waypoint's own call: never where the client
            // dialled.
            client: Client {
                dialled: None,
                ..down.client()
            },
        }
    }
}

/// The request a check is about.
struct Asked<'a> {
    parts: &'a Parts,
    /// The body read ahead, and whether it goes as bytes.
    ahead: Option<(&'a Ahead, bool)>,
    request_id: &'a HeaderValue,
}

/// Asks the gRPC providers of `customs` about a TCP connection at its
/// CONNECT (Envoy's network ext_authz: who, from where, to where; no
/// request). `Err((reason, details))` refuses it: a denial, an authorizer
/// that cannot answer (unless `failOpen`), an undefined provider, or an
/// HTTP one, which has no request to be shown (fail closed).
pub async fn ask_connection(
    ctx: &Arc<Context>,
    compiled: &Compiled,
    caller: &Caller<'_>,
    customs: &[Custom],
) -> Result<(), (&'static str, String)> {
    for custom in customs {
        let Some(provider) = compiled.ext_authz.get(&custom.provider) else {
            count(ctx, &custom.provider, "undefined");
            return Err((
                "ext_authz_error",
                format!(
                    "{custom} names provider {:?}, which the mesh config does not define",
                    custom.provider
                ),
            ));
        };
        if !provider.asks_about_connections() {
            count(ctx, &provider.name, "error");
            return Err((
                "ext_authz_error",
                format!(
                    "{custom} names {}, an HTTP authorizer, which cannot be asked about a TCP connection",
                    provider.name
                ),
            ));
        }
        match check(ctx, compiled, caller, provider, None).await {
            Verdict::Allow(_) => count(ctx, &provider.name, "ok"),
            Verdict::Deny(_) => {
                count(ctx, &provider.name, "denied");
                return Err((
                    "ext_authz_denied",
                    format!("{} denied the connection ({custom})", provider.name),
                ));
            }
            Verdict::Error(reason) if provider.fail_open => {
                count(ctx, &provider.name, "failure_mode_allowed");
                debug!(provider = %provider.name, %reason, "external authorizer failed; failOpen lets the connection go on");
            }
            Verdict::Error(reason) => {
                count(ctx, &provider.name, "error");
                return Err(("ext_authz_error", format!("{}: {reason}", provider.name)));
            }
        }
    }
    Ok(())
}

/// One check: sent, answered, read.
async fn check(
    ctx: &Arc<Context>,
    compiled: &Compiled,
    caller: &Caller<'_>,
    provider: &Provider,
    asked: Option<Asked<'_>>,
) -> Verdict {
    let (check, body) = match (&provider.protocol, &asked) {
        (Protocol::Http(_), None) => {
            return Verdict::Error("an HTTP authorizer has no request to be shown".into());
        }
        (Protocol::Http(settings), Some(Asked { parts, ahead, .. })) => {
            let host = request_host(parts, caller);
            let body = ahead.map(|(a, _)| (a.bytes.len(), !a.whole));
            match settings.check(parts, &host, body) {
                Ok(check) => (
                    check,
                    ahead.map(|(a, _)| a.bytes.clone()).unwrap_or_default(),
                ),
                Err(reason) => return Verdict::Error(reason),
            }
        }
        (Protocol::Grpc, _) => {
            let source_principal = caller.identity.to_string();
            let destination_principal = ctx.identity().to_string();
            let host = asked.as_ref().map(|a| request_host(a.parts, caller));
            let attributes = match (&asked, &host) {
                (Some(asked), Some(host)) => Some(grpc::HttpAttributes {
                    id: asked.request_id.to_str().unwrap_or_default(),
                    parts: asked.parts,
                    host,
                    body: asked.ahead.map(|(a, _)| a.bytes.as_ref()),
                    pack_as_bytes: asked.ahead.is_some_and(|(_, pack)| pack),
                }),
                _ => None,
            };
            let message = grpc::check(
                &grpc::Peer {
                    ip: caller.source_ip,
                    port: 0,
                    principal: &source_principal,
                    service: "",
                },
                &grpc::Peer {
                    ip: caller.destination.ip(),
                    port: caller.destination.port(),
                    principal: &destination_principal,
                    service: caller.service,
                },
                attributes.as_ref(),
            );
            (
                grpc_call(&provider.host, provider.port),
                crate::grpc::frame(&message),
            )
        }
    };
    let key = ClusterKey::new(&provider.host, None, Some(provider.port), provider.port);
    let body = match provider.protocol {
        Protocol::Http(_) => Outgoing::Fixed(body),
        Protocol::Grpc => Outgoing::Grpc(body),
    };
    let mut once = Tries::mirror(caller.client.clone());
    let sent = attempt(ctx, compiled, &key, &check, body, &mut once);
    let answer = match tokio::time::timeout(provider.timeout, async {
        match sent.await {
            Attempt::Answered { response, .. } => {
                let (parts, body) = response.into_parts();
                let (body, trailers) = super::read_whole(body, MAX_ANSWER).await?;
                Ok((parts, body, trailers))
            }
            Attempt::Failed { detail, .. } => Err(detail),
            Attempt::Local(done) => Err(format!(
                "no answer from {}:{} ({} {})",
                provider.host,
                provider.port,
                done.response.status(),
                done.flags
            )),
        }
    })
    .await
    {
        Ok(Ok(answer)) => answer,
        Ok(Err(reason)) => return Verdict::Error(reason),
        Err(_) => {
            return Verdict::Error(format!("no answer within {:?}", provider.timeout));
        }
    };
    let (head, body, trailers) = answer;
    match &provider.protocol {
        Protocol::Http(settings) => settings.verdict(Response::from_parts(head, body)),
        Protocol::Grpc => {
            if head.status != StatusCode::OK {
                return Verdict::Error(format!("the authorizer answered {}", head.status));
            }
            // A failed call may come as headers alone (trailers-only).
            let status = trailers
                .as_ref()
                .and_then(|t| t.get(super::report::GRPC_STATUS))
                .or_else(|| head.headers.get(super::report::GRPC_STATUS));
            match status.map(|s| s.as_bytes()) {
                Some(b"0") => {}
                Some(code) => {
                    let message = trailers
                        .as_ref()
                        .and_then(|t| t.get("grpc-message"))
                        .or_else(|| head.headers.get("grpc-message"))
                        .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
                        .unwrap_or_default();
                    return Verdict::Error(format!(
                        "the authorizer failed the call: grpc-status {} {message}",
                        String::from_utf8_lossy(code)
                    ));
                }
                None => return Verdict::Error("the answer has no grpc-status".into()),
            }
            match crate::grpc::unframe::<warren_api::ext_authz::CheckResponse>(
                &body,
                "CheckResponse",
            ) {
                Ok(answer) => grpc::verdict(answer),
                Err(reason) => Verdict::Error(reason),
            }
        }
    }
}

/// The host a request names: its authority, else its Service's.
fn request_host(parts: &Parts, caller: &Caller<'_>) -> String {
    super::http::request_authority(parts)
        .map(|a| a.to_string())
        .unwrap_or_else(|| caller.service.to_owned())
}

/// The head of a unary call to `Authorization/Check`.
fn grpc_call(host: &str, port: u16) -> Parts {
    let (mut parts, ()) = http::Request::builder()
        .method(http::Method::POST)
        .uri(grpc::CHECK_PATH)
        .version(Version::HTTP_2)
        .body(())
        .unwrap_or_else(|_| http::Request::new(()))
        .into_parts();
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    // `attempt` adds `te: trailers` over HTTP/2 for a request that asks.
    parts
        .headers
        .insert(header::TE, HeaderValue::from_static("trailers"));
    if let Ok(authority) = HeaderValue::from_str(&format!("{host}:{port}")) {
        parts.headers.insert(header::HOST, authority);
    }
    parts
}
