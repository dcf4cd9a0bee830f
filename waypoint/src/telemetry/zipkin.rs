//! A waypoint's span in Zipkin's JSON (v2), as its collectors (Zipkin,
//! Jaeger, the OpenTelemetry Collector's zipkin receiver) take it.

use std::net::IpAddr;

use serde_json::{Map, Value, json};

use super::span::{Record, since_epoch, units};

/// The span as one element of a Zipkin v2 JSON array.
pub fn encode(r: &Record) -> Value {
    let tags: Map<String, Value> = r
        .tags
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let remote = match r.source {
        IpAddr::V4(ip) => json!({ "ipv4": ip.to_string() }),
        IpAddr::V6(ip) => json!({ "ipv6": ip.to_string() }),
    };
    let mut span = json!({
        "traceId": r.trace_id,
        "id": format!("{:016x}", r.id),
        "name": r.name,
        "kind": "SERVER",
        "timestamp": units(since_epoch(r.start).as_micros()),
        // Zipkin reads 0 as "not known": a request takes a microsecond at least.
        "duration": units(r.duration.as_micros()).max(1),
        "localEndpoint": { "serviceName": r.local_service },
        "remoteEndpoint": remote,
        "tags": tags,
    });
    if let (Some(parent), Some(fields)) = (r.parent, span.as_object_mut()) {
        fields.insert("parentId".into(), Value::String(format!("{parent:016x}")));
    }
    span
}
