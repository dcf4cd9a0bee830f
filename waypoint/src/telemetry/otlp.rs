//! A waypoint's spans as OTLP, as an OpenTelemetry collector takes them:
//! one export request per batch, the waypoint as its resource
//! (`service.name`).

use prost::Message as _;
use warren_api::otlp::{
    collector::ExportTraceServiceRequest,
    common::{AnyValue, InstrumentationScope, KeyValue, any_value},
    resource::Resource,
    trace::{ResourceSpans, ScopeSpans, Span, Status, span::SpanKind, status::StatusCode},
};

use super::span::{Record, since_epoch, units};

/// The gRPC method a collector answers.
pub const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Where OTLP over HTTP posts when the provider does not say.
pub const HTTP_PATH: &str = "/v1/traces";

fn text(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
    }
}

/// Hex digits as bytes; OTLP's trace ids are 16 bytes, so a 64-bit one is
/// padded on the left, as W3C pads it.
fn trace_bytes(hex: &str) -> Vec<u8> {
    let padded = format!("{hex:0>32}");
    (0..16)
        .filter_map(|i| u8::from_str_radix(padded.get(i * 2..i * 2 + 2)?, 16).ok())
        .collect()
}

fn span(r: &Record) -> Span {
    let start = units(since_epoch(r.start).as_nanos());
    let mut attributes: Vec<KeyValue> = r.tags.iter().map(|(k, v)| text(k, v)).collect();
    attributes.push(text("net.peer.ip", &r.source.to_string()));
    Span {
        trace_id: trace_bytes(&r.trace_id),
        span_id: r.id.to_be_bytes().to_vec(),
        parent_span_id: r
            .parent
            .map(|p| p.to_be_bytes().to_vec())
            .unwrap_or_default(),
        // Sampled: only sampled spans are sent.
        flags: 1,
        name: r.name.clone(),
        kind: SpanKind::Server.into(),
        start_time_unix_nano: start,
        end_time_unix_nano: start.saturating_add(units(r.duration.as_nanos())),
        attributes,
        status: r.error.then(|| Status {
            code: StatusCode::Error.into(),
            ..Status::default()
        }),
        ..Span::default()
    }
}

/// One export request of `records`, all of one waypoint.
pub fn request(records: &[Record]) -> ExportTraceServiceRequest {
    let service = records
        .first()
        .map(|r| r.local_service.as_str())
        .unwrap_or_default();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![text("service.name", service)],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "warren-waypoint".to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                }),
                spans: records.iter().map(span).collect(),
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
}

/// The export request's bytes.
pub fn encode(records: &[Record]) -> Vec<u8> {
    request(records).encode_to_vec()
}
