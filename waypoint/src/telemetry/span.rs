//! A waypoint's span of one request, as it is reported: what the trace
//! context made of it ([`crate::proxy::trace::Span`]) and what the request
//! came to, ready for a collector's format ([`super::zipkin`],
//! [`super::otlp`]).

use std::{
    net::IpAddr,
    time::{Duration, SystemTime},
};

#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// Hex: 32 digits, or 16 for a 64-bit trace id.
    pub trace_id: String,
    pub id: u64,
    pub parent: Option<u64>,
    pub start: SystemTime,
    pub duration: Duration,
    /// `<service host>:<port>/*`, as Istio names a waypoint's spans.
    pub name: String,
    /// The waypoint: `<gateway>.<namespace>`.
    pub local_service: String,
    pub source: IpAddr,
    /// Istio's and Envoy's tags (`http.method`, `http.status_code`, …) and
    /// the Telemetry's custom ones, each cut to the provider's length.
    pub tags: Vec<(String, String)>,
    /// The request failed (a 5xx, or no answer).
    pub error: bool,
}

/// `value`, at most `max` bytes of it (on a character's boundary).
pub fn cut(value: &str, max: usize) -> String {
    if value.len() <= max {
        return value.to_owned();
    }
    let mut end = max;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value[..end].to_owned()
}

/// Time since the epoch (zero for a clock set before it).
pub fn since_epoch(at: SystemTime) -> Duration {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
}

/// A count of time units (`as_micros`, `as_nanos`) as the `u64` the wire
/// formats carry, saturating.
pub fn units(n: u128) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}
