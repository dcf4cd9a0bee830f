//! `warren-sample authz`: an external authorizer for CUSTOM
//! AuthorizationPolicies, speaking both of Envoy's protocols, with the
//! convention of Istio's sample ext-authz server: a request carrying
//! `x-ext-authz: allow` is allowed, any other is denied.
//!
//! - HTTP (`--http`): the check is a copy of the request's head. 200 with
//!   `x-ext-authz-check-result: allowed` allows; 403 with `denied` and a body
//!   denies. `x-ext-authz: fail` is answered 500 and `x-ext-authz: slow`
//!   after 3 s, so tests can see an authorizer fail. Every answer says what
//!   the check asked for in `x-ext-authz-check-path`.
//! - gRPC (`--grpc`): `envoy.service.auth.v3.Authorization/Check`. An allow
//!   sets `x-ext-authz-check-result: allowed` and `x-ext-authz-principal`
//!   (the caller's identity the check carried) on the request; a denial is
//!   PERMISSION_DENIED with a 403, the header and a body. A check about a
//!   TCP connection (no request) is allowed when the caller's identity is
//!   of service account `--allow-service-account`.

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tracing::{debug, info};
use warren_api::ext_authz::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
    authorization_server::{Authorization, AuthorizationServer},
    check_response::HttpResponse,
    envoy::{
        config::core::v3::{HeaderValue as ProtoHeader, HeaderValueOption},
        r#type::v3::HttpStatus,
    },
    google::rpc::Status,
};

use crate::shutdown::Shutdown;

/// The header a request is decided by, and its allowing value.
pub const DECIDING: &str = "x-ext-authz";
pub const ALLOW: &str = "allow";
/// What the authorizer decided, on the request (allowed) or the answer.
pub const RESULT: &str = "x-ext-authz-check-result";
/// The path the HTTP check asked about (with the provider's prefix).
pub const CHECKED_PATH: &str = "x-ext-authz-check-path";
/// The caller's identity a gRPC check carried.
pub const PRINCIPAL: &str = "x-ext-authz-principal";
/// The body the check carried (when the provider asks for it), and over
/// HTTP whether it was only the body's first bytes.
pub const CHECKED_BODY: &str = "x-ext-authz-check-body";
pub const CHECKED_PARTIAL: &str = "x-ext-authz-check-partial";
/// The denial's body.
pub const DENIED_BODY: &str = "denied by ext_authz: the request has no `x-ext-authz: allow`";

pub async fn serve(
    http: SocketAddr,
    grpc: SocketAddr,
    allow_service_account: Option<String>,
) -> Result<()> {
    let mut shutdown = Shutdown::install()?;
    let http_listener = tokio::net::TcpListener::bind(http)
        .await
        .with_context(|| format!("binding the HTTP authorizer to {http}"))?;
    let grpc_listener = tokio::net::TcpListener::bind(grpc)
        .await
        .with_context(|| format!("binding the gRPC authorizer to {grpc}"))?;
    info!(%http, %grpc, "external authorizer listening");
    let grpc_server = tonic::transport::Server::builder()
        .add_service(AuthorizationServer::new(Sample {
            allow_service_account,
        }))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(
            grpc_listener,
        ));
    let http_server = async move {
        loop {
            let (stream, _) = match http_listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    debug!(%error, "accept");
                    continue;
                }
            };
            tokio::spawn(async move {
                let served = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service_fn(check_http))
                    .await;
                if let Err(error) = served {
                    debug!(%error, "authorizer connection");
                }
            });
        }
    };
    tokio::select! {
        served = grpc_server => served.context("serving gRPC checks"),
        () = http_server => Ok(()),
        signal = shutdown.recv() => {
            info!(signal, "authorizer stopping");
            Ok(())
        }
    }
}

async fn check_http(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (head, body) = request.into_parts();
    // A check is small; one that is not is cut, not buffered whole.
    let checked = http_body_util::Limited::new(body, 64 * 1024)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let partial = head.headers.get("x-envoy-auth-partial-body").cloned();
    let request = Request::from_parts(head, ());
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let asked = request
        .headers()
        .get(DECIDING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let (status, result, body) = match asked.as_str() {
        ALLOW => (StatusCode::OK, "allowed", ""),
        "fail" => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "failed",
            "the authorizer failed",
        ),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            (StatusCode::OK, "allowed", "")
        }
        _ => (StatusCode::FORBIDDEN, "denied", DENIED_BODY),
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(RESULT, HeaderValue::from_static(result));
    if let Ok(path) = HeaderValue::from_str(&path) {
        headers.insert(CHECKED_PATH, path);
    }
    if !checked.is_empty()
        && let Ok(checked) = HeaderValue::from_bytes(&checked)
    {
        headers.insert(CHECKED_BODY, checked);
    }
    if let Some(partial) = partial {
        headers.insert(CHECKED_PARTIAL, partial);
    }
    Ok(response)
}

struct Sample {
    /// Connections of this service account are allowed.
    allow_service_account: Option<String>,
}

fn header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(ProtoHeader {
            key: key.into(),
            value: value.into(),
            raw_value: Vec::new(),
        }),
        append: None,
        append_action: 0,
        keep_empty_value: false,
    }
}

#[tonic::async_trait]
impl Authorization for Sample {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let attributes = request.into_inner().attributes.unwrap_or_default();
        let principal = attributes.source.map(|s| s.principal).unwrap_or_default();
        let request = attributes.request.and_then(|r| r.http);
        let allowed = match &request {
            Some(http) => http.headers.get(DECIDING).map(String::as_str) == Some(ALLOW),
            None => self
                .allow_service_account
                .as_ref()
                .is_some_and(|sa| principal.ends_with(&format!("/sa/{sa}"))),
        };
        let http = request.unwrap_or_default();
        let body = if http.raw_body.is_empty() {
            http.body
        } else {
            String::from_utf8_lossy(&http.raw_body).into_owned()
        };
        let answer = if allowed {
            CheckResponse {
                status: Some(Status {
                    code: 0,
                    message: String::new(),
                }),
                http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                    headers: vec![
                        header(RESULT, "allowed"),
                        header(PRINCIPAL, &principal),
                        header(CHECKED_BODY, &body),
                    ],
                    ..OkHttpResponse::default()
                })),
            }
        } else {
            CheckResponse {
                status: Some(Status {
                    code: 7,
                    message: "denied".into(),
                }),
                http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                    status: Some(HttpStatus { code: 403 }),
                    headers: vec![header(RESULT, "denied")],
                    body: DENIED_BODY.into(),
                })),
            }
        };
        Ok(tonic::Response::new(answer))
    }
}
