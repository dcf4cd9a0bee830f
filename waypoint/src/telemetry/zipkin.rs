//! A waypoint's span in Zipkin's JSON (v2), as its collectors (Zipkin,
//! Jaeger, the OpenTelemetry Collector's zipkin receiver) take it.

use std::{net::IpAddr, time::SystemTime};

use serde_json::{Map, Value, json};

use crate::proxy::trace::Span;

/// What a span tells of its request, besides its ids and times.
pub struct Reported<'a> {
    pub span: &'a Span,
    pub duration: std::time::Duration,
    /// `<service host>:<port>/*`, as Istio names a waypoint's spans.
    pub name: String,
    /// The waypoint: `<gateway>.<namespace>`.
    pub local_service: &'a str,
    pub source: IpAddr,
    /// Istio's and Envoy's tags (`http.method`, `http.status_code`,
    /// `response_flags`, `upstream_cluster`, …).
    pub tags: Vec<(&'static str, String)>,
    pub max_tag_length: usize,
}

fn micros(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn cut(value: &str, max: usize) -> String {
    if value.len() <= max {
        return value.to_owned();
    }
    let mut end = max;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value[..end].to_owned()
}

/// The span as one element of a Zipkin v2 JSON array.
pub fn encode(r: &Reported<'_>) -> Value {
    let mut tags = Map::new();
    for (name, value) in r
        .tags
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .chain(r.span.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    {
        tags.insert(name.to_owned(), Value::String(cut(value, r.max_tag_length)));
    }
    let remote = match r.source {
        IpAddr::V4(ip) => json!({ "ipv4": ip.to_string() }),
        IpAddr::V6(ip) => json!({ "ipv6": ip.to_string() }),
    };
    let mut span = json!({
        "traceId": r.span.trace_id,
        "id": format!("{:016x}", r.span.id),
        "name": r.name,
        "kind": "SERVER",
        "timestamp": micros(r.span.start),
        // Zipkin reads 0 as "not known": a request takes a microsecond at least.
        "duration": u64::try_from(r.duration.as_micros()).unwrap_or(u64::MAX).max(1),
        "localEndpoint": { "serviceName": r.local_service },
        "remoteEndpoint": remote,
        "tags": tags,
    });
    if let (Some(parent), Some(fields)) = (r.span.parent, span.as_object_mut()) {
        fields.insert("parentId".into(), Value::String(format!("{parent:016x}")));
    }
    span
}
