//! Fault injection: Istio's `HTTPFaultInjection`.
//!
//! Delay and abort are decided independently, each with its own
//! `percentage`. As Istio's reference says, a fault without `percentage`
//! applies to no request. (Istio's legacy integer `percent` is not in the
//! model.) A delayed request is delayed first, then aborted if both apply.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use rand::Rng;
use warren_model::istio::HttpFaultInjection;
use warren_model::validate;

use super::{CompileError, chance, per_million};

/// Body of an injected abort (Envoy's text).
const ABORT_BODY: &str = "fault filter abort";

/// A rule's compiled `fault`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultDelay {
    pub duration: Duration,
    /// Share of requests delayed, in parts per million.
    pub per_million: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultAbort {
    pub abort: Abort,
    /// Share of requests aborted, in parts per million.
    pub per_million: u32,
}

/// How a request is aborted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Abort {
    /// Answer with this HTTP status.
    Http(StatusCode),
    /// Answer as gRPC: HTTP 200 with this `grpc-status`.
    Grpc(u32),
}

impl Abort {
    /// The response the caller receives instead of the upstream's.
    pub fn response(&self) -> Response<Bytes> {
        match *self {
            Abort::Http(status) => {
                let mut response = Response::new(Bytes::from_static(ABORT_BODY.as_bytes()));
                *response.status_mut() = status;
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain"),
                );
                response
            }
            Abort::Grpc(code) => {
                // A trailers-only gRPC response: status in the headers, no body.
                let mut response = Response::new(Bytes::new());
                let headers = response.headers_mut();
                headers.insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/grpc"),
                );
                headers.insert("grpc-status", HeaderValue::from(code));
                headers.insert("grpc-message", HeaderValue::from_static(ABORT_BODY));
                response
            }
        }
    }
}

/// What to do to one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultDecision {
    pub delay: Option<Duration>,
    pub abort: Option<Abort>,
}

impl Fault {
    pub(super) fn compile(
        path: &str,
        fault: &HttpFaultInjection,
    ) -> Result<Option<Self>, CompileError> {
        let delay = match &fault.delay {
            None => None,
            Some(delay) => {
                let p = format!("{path}.delay.fixedDelay");
                let Some(fixed) = &delay.fixed_delay else {
                    return Err(CompileError::new(p, "required"));
                };
                let duration = validate::duration(&p, fixed)
                    .map_err(|e| CompileError::new(e.path, e.reason))?;
                Some(FaultDelay {
                    duration,
                    per_million: delay
                        .percentage
                        .as_ref()
                        .map_or(0, |p| per_million(p.value)),
                })
            }
        };
        let abort = match &fault.abort {
            None => None,
            Some(abort) => {
                let p = format!("{path}.abort");
                let kind = match (abort.http_status, &abort.grpc_status) {
                    (Some(status), None) => u16::try_from(status)
                        .ok()
                        .and_then(|s| StatusCode::from_u16(s).ok())
                        .map(Abort::Http)
                        .ok_or_else(|| {
                            CompileError::new(
                                format!("{p}.httpStatus"),
                                format!("{status} is not an HTTP status"),
                            )
                        })?,
                    (None, Some(name)) => warren_model::validate::grpc_code(name)
                        .map(Abort::Grpc)
                        .ok_or_else(|| {
                            CompileError::new(
                                format!("{p}.grpcStatus"),
                                format!("{name:?} is not a gRPC status"),
                            )
                        })?,
                    _ => {
                        return Err(CompileError::new(
                            p,
                            "set exactly one of httpStatus and grpcStatus",
                        ));
                    }
                };
                Some(FaultAbort {
                    abort: kind,
                    per_million: abort
                        .percentage
                        .as_ref()
                        .map_or(0, |p| per_million(p.value)),
                })
            }
        };
        Ok((delay.is_some() || abort.is_some()).then_some(Fault { delay, abort }))
    }

    /// Draws, independently, whether this request is delayed and whether it
    /// is aborted.
    pub fn decide<R: Rng + ?Sized>(&self, rng: &mut R) -> FaultDecision {
        FaultDecision {
            delay: self
                .delay
                .as_ref()
                .filter(|d| chance(rng, d.per_million))
                .map(|d| d.duration),
            abort: self
                .abort
                .as_ref()
                .filter(|a| chance(rng, a.per_million))
                .map(|a| a.abort),
        }
    }
}
