//! Retries: Istio's `HTTPRetry` with the decisions Envoy makes for it.
//!
//! Without `retries` a rule gets Istio's default policy (2 retries on
//! `connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes`
//! with 503 retriable). With `retries`, `attempts` of 0 (or absent) disables
//! retries; otherwise the default is overridden field by field: `retryOn`
//! replaces the conditions and the status code list (a bare code such as
//! `503` implies `retriable-status-codes`), `perTryTimeout` and `backoff`
//! are taken as given.

use std::time::Duration;

use http::{HeaderMap, StatusCode};
use rand::Rng;
use warren_model::istio::HttpRetry;
use warren_model::validate;

use super::CompileError;

/// Istio's default `retryOn` (pilot's `retry.DefaultPolicy`).
const ISTIO_DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";
/// Istio's default retries.
const ISTIO_DEFAULT_ATTEMPTS: u32 = 2;
/// Envoy's default base interval; the cap is ten times the base.
const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(25);

/// Why an attempt ended without a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// No connection: refused, unreachable, connect timeout. Nothing was
    /// sent.
    ConnectFailure,
    /// The stream or connection was reset (or closed) after the request was
    /// at least partly sent and before a response.
    Reset,
    /// Reset before any byte of the request was sent upstream.
    ResetBeforeRequest,
    /// HTTP/2 `REFUSED_STREAM`: the upstream did not process the request.
    RefusedStream,
    /// The upstream answered with bytes that are no valid HTTP response
    /// (Envoy's `UPE`); retried like a reset.
    ProtocolError,
    /// The per-try timeout expired.
    Timeout,
    /// Refused before any connection, for settings the proxy cannot honour
    /// (the DestinationRule's `tls`): another try would be refused alike.
    Unusable,
}

/// The conditions of `retryOn`: Envoy's `x-envoy-retry-on` and
/// `x-envoy-retry-grpc-on` names, and HTTP status codes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// `5xx`: any 5xx response, and any failure without a response.
    pub five_xx: bool,
    /// `gateway-error`: 502, 503, 504, and any failure without a response.
    pub gateway_error: bool,
    /// `reset`: any failure without a response (including timeouts).
    pub reset: bool,
    /// `reset-before-request`: a failure before the request was sent.
    pub reset_before_request: bool,
    /// `connect-failure`.
    pub connect_failure: bool,
    /// `envoy-ratelimited`: a response carrying `x-envoy-ratelimited`.
    pub envoy_ratelimited: bool,
    /// `retriable-4xx`: 409.
    pub retriable_4xx: bool,
    /// `refused-stream`.
    pub refused_stream: bool,
    /// `retriable-status-codes`: the codes in [`RetryOn::status_codes`].
    pub retriable_status_codes: bool,
    /// `retriable-headers`: Istio cannot name the headers, so it never
    /// applies.
    pub retriable_headers: bool,
    /// `http3-post-connect-failure`: the waypoint does not speak HTTP/3
    /// upstream, so it never applies.
    pub http3_post_connect_failure: bool,
    /// gRPC `cancelled` (1).
    pub grpc_cancelled: bool,
    /// gRPC `deadline-exceeded` (4).
    pub grpc_deadline_exceeded: bool,
    /// gRPC `internal` (13).
    pub grpc_internal: bool,
    /// gRPC `resource-exhausted` (8).
    pub grpc_resource_exhausted: bool,
    /// gRPC `unavailable` (14).
    pub grpc_unavailable: bool,
    /// The status codes listed in `retryOn`.
    pub status_codes: Vec<u16>,
}

impl std::fmt::Display for RetryOn {
    /// The conditions as `retryOn` names them, comma-separated.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let named = [
            (self.five_xx, "5xx"),
            (self.gateway_error, "gateway-error"),
            (self.reset, "reset"),
            (self.reset_before_request, "reset-before-request"),
            (self.connect_failure, "connect-failure"),
            (self.envoy_ratelimited, "envoy-ratelimited"),
            (self.retriable_4xx, "retriable-4xx"),
            (self.refused_stream, "refused-stream"),
            (self.retriable_status_codes, "retriable-status-codes"),
            (self.retriable_headers, "retriable-headers"),
            (
                self.http3_post_connect_failure,
                "http3-post-connect-failure",
            ),
            (self.grpc_cancelled, "cancelled"),
            (self.grpc_deadline_exceeded, "deadline-exceeded"),
            (self.grpc_internal, "internal"),
            (self.grpc_resource_exhausted, "resource-exhausted"),
            (self.grpc_unavailable, "unavailable"),
        ];
        let mut names: Vec<String> = named
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, name)| (*name).to_owned())
            .collect();
        names.extend(self.status_codes.iter().map(u16::to_string));
        if names.is_empty() {
            return f.write_str("nothing");
        }
        f.write_str(&names.join(","))
    }
}

impl RetryOn {
    /// Reads a comma-separated `retryOn`. Blank entries are skipped (as
    /// Istio does); an unknown name is an error. Listing a status code turns
    /// on `retriable-status-codes`, as Istio does.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut on = RetryOn::default();
        for token in list.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if let Ok(code) = token.parse::<u16>() {
                if !(100..=599).contains(&code) {
                    return Err(format!("{code} is not an HTTP status code"));
                }
                on.status_codes.push(code);
                on.retriable_status_codes = true;
                continue;
            }
            let flag = match token {
                "5xx" => &mut on.five_xx,
                "gateway-error" => &mut on.gateway_error,
                "reset" => &mut on.reset,
                "reset-before-request" => &mut on.reset_before_request,
                "connect-failure" => &mut on.connect_failure,
                "envoy-ratelimited" => &mut on.envoy_ratelimited,
                "retriable-4xx" => &mut on.retriable_4xx,
                "refused-stream" => &mut on.refused_stream,
                "retriable-status-codes" => &mut on.retriable_status_codes,
                "retriable-headers" => &mut on.retriable_headers,
                "http3-post-connect-failure" => &mut on.http3_post_connect_failure,
                "cancelled" => &mut on.grpc_cancelled,
                "deadline-exceeded" => &mut on.grpc_deadline_exceeded,
                "internal" => &mut on.grpc_internal,
                "resource-exhausted" => &mut on.grpc_resource_exhausted,
                "unavailable" => &mut on.grpc_unavailable,
                other => return Err(format!("{other:?} is not a retry condition")),
            };
            *flag = true;
        }
        Ok(on)
    }

    /// Istio's default conditions, with 503 retriable.
    pub fn istio_default() -> Self {
        let mut on = Self::parse(ISTIO_DEFAULT_RETRY_ON)
            .unwrap_or_else(|e| unreachable!("the built-in retryOn parses: {e}"));
        on.status_codes = vec![503];
        on
    }
}

/// Exponential back-off with full jitter (Envoy's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// Envoy's: `max` is ten times `base`.
    pub fn with_base(base: Duration) -> Self {
        Self {
            base,
            max: base.saturating_mul(10),
        }
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::with_base(DEFAULT_BACKOFF_BASE)
    }
}

/// A rule's retry policy. [`RetryPolicy::default`] is Istio's default
/// (used when a rule has no `retries`, and for hosts without a
/// VirtualService).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt; 0 means no retries.
    pub attempts: u32,
    /// Timeout of each attempt; `None`: only the rule's timeout applies.
    pub per_try_timeout: Option<Duration>,
    pub retry_on: RetryOn,
    pub backoff: Backoff,
    /// Prefer endpoints not tried yet (`retryIgnorePreviousHosts`); `None`
    /// when not set, see [`RetryPolicy::avoids_previous_hosts`].
    pub ignore_previous_hosts: Option<bool>,
    /// Retry in other localities (`retryRemoteLocalities`).
    pub retry_remote_localities: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: ISTIO_DEFAULT_ATTEMPTS,
            per_try_timeout: None,
            retry_on: RetryOn::istio_default(),
            backoff: Backoff::default(),
            ignore_previous_hosts: None,
            retry_remote_localities: false,
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn disabled() -> Self {
        Self {
            attempts: 0,
            ..Self::default()
        }
    }

    /// Istio's `retry.ConvertPolicy`.
    pub(super) fn compile(path: &str, retries: Option<&HttpRetry>) -> Result<Self, CompileError> {
        let Some(retries) = retries else {
            return Ok(Self::default());
        };
        let attempts = retries.attempts.unwrap_or(0);
        if attempts <= 0 {
            return Ok(Self::disabled());
        }
        let mut policy = Self {
            attempts: attempts.unsigned_abs(),
            ..Self::default()
        };
        if !retries.retry_on.is_empty() {
            policy.retry_on = RetryOn::parse(&retries.retry_on)
                .map_err(|reason| CompileError::new(format!("{path}.retryOn"), reason))?;
        }
        let duration = |field: &str, value: &str| {
            validate::duration(&format!("{path}.{field}"), value)
                .map_err(|e| CompileError::new(e.path, e.reason))
        };
        if let Some(timeout) = &retries.per_try_timeout {
            let timeout = duration("perTryTimeout", timeout)?;
            policy.per_try_timeout = (!timeout.is_zero()).then_some(timeout);
        }
        if let Some(base) = &retries.backoff {
            let base = duration("backoff", base)?;
            if base.is_zero() {
                return Err(CompileError::new(
                    format!("{path}.backoff"),
                    "must be at least 1ms",
                ));
            }
            policy.backoff = Backoff::with_base(base);
        }
        policy.ignore_previous_hosts = retries.retry_ignore_previous_hosts;
        policy.retry_remote_localities = retries.retry_remote_localities.unwrap_or(false);
        Ok(policy)
    }

    /// Whether a retry avoids the endpoints already tried. Istio's default:
    /// yes, unless the destination balances by consistent hash, where the
    /// same key belongs on the same endpoint.
    pub fn avoids_previous_hosts(&self, consistent_hash: bool) -> bool {
        self.ignore_previous_hosts.unwrap_or(!consistent_hash)
    }

    /// Whether a response with this status (and gRPC status, read from its
    /// headers or trailers-only response) is worth another attempt.
    /// Attempts left are the caller's count.
    pub fn should_retry_status(&self, status: StatusCode, grpc_status: Option<u32>) -> bool {
        if self.attempts == 0 {
            return false;
        }
        let on = &self.retry_on;
        let code = status.as_u16();
        (on.five_xx && status.is_server_error())
            || (on.gateway_error && matches!(code, 502..=504))
            || (on.retriable_4xx && code == 409)
            || (on.retriable_status_codes && on.status_codes.contains(&code))
            || grpc_status.is_some_and(|grpc| match grpc {
                1 => on.grpc_cancelled,
                4 => on.grpc_deadline_exceeded,
                8 => on.grpc_resource_exhausted,
                13 => on.grpc_internal,
                14 => on.grpc_unavailable,
                _ => false,
            })
    }

    /// [`RetryPolicy::should_retry_status`] for a response's status and
    /// headers: reads `grpc-status`, and, as Envoy, retries a response
    /// marked `x-envoy-ratelimited` only under `envoy-ratelimited`.
    pub fn should_retry_response(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        if headers.contains_key("x-envoy-ratelimited") {
            return self.attempts > 0 && self.retry_on.envoy_ratelimited;
        }
        let grpc_status = headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        self.should_retry_status(status, grpc_status)
    }

    /// Whether a failure without a response is worth another attempt.
    /// Follows Envoy's `wouldRetryFromReset`: `reset`, `5xx` and
    /// `gateway-error` retry every kind; the narrower conditions only their
    /// own.
    pub fn should_retry_error(&self, kind: FailureKind) -> bool {
        if self.attempts == 0 || kind == FailureKind::Unusable {
            return false;
        }
        let on = &self.retry_on;
        if on.reset || on.five_xx || on.gateway_error {
            return true;
        }
        match kind {
            FailureKind::ConnectFailure => on.connect_failure || on.reset_before_request,
            FailureKind::ResetBeforeRequest => on.reset_before_request,
            FailureKind::RefusedStream => on.refused_stream,
            FailureKind::Reset
            | FailureKind::ProtocolError
            | FailureKind::Timeout
            | FailureKind::Unusable => false,
        }
    }

    /// How long to wait before retry number `retry` (1 for the first
    /// retry): a uniformly random time below `base × 2^(retry-1)`, that
    /// bound capped at `max` (Envoy's jittered exponential back-off).
    pub fn backoff<R: Rng + ?Sized>(&self, retry: u32, rng: &mut R) -> Duration {
        let base = u64::try_from(self.backoff.base.as_nanos()).unwrap_or(u64::MAX);
        let max = u64::try_from(self.backoff.max.as_nanos()).unwrap_or(u64::MAX);
        let doublings = retry.saturating_sub(1).min(63);
        let bound = base.saturating_mul(1u64 << doublings).min(max);
        if bound == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(rng.random_range(0..bound))
    }
}
