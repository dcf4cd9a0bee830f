//! A request's trace context: W3C `traceparent` and Zipkin's B3 headers
//! (several `x-b3-*`, or one `b3`), continued with the waypoint's own span
//! id; and, when a Telemetry puts a tracing provider in force, started for
//! a request that comes without one and sampled as it asks.

use std::time::SystemTime;

use http::{HeaderMap, HeaderValue};
use rand::Rng as _;

use crate::telemetry::TracingPlan;

/// The waypoint's span of one request, reported when sampled.
#[derive(Clone, Debug)]
pub struct Span {
    /// Hex: 32 digits, or 16 for a 64-bit trace id.
    pub trace_id: String,
    pub id: u64,
    /// The caller's span.
    pub parent: Option<u64>,
    pub sampled: bool,
    pub start: SystemTime,
    /// The plan's `customTags`, read from the request as it arrived.
    pub tags: Vec<(String, String)>,
}

/// What the request brought.
struct Incoming {
    trace_id: String,
    parent: Option<u64>,
    /// `None`: the caller left the decision to us (B3 without `sampled`).
    sampled: Option<bool>,
}

/// Continues the request's trace with a new span id of this waypoint's;
/// with a `plan`, starts one when there is none and returns the span to
/// report. Without a plan, as ever: headers continued, nothing started.
pub fn continue_or_start(headers: &mut HeaderMap, plan: Option<&TracingPlan>) -> Option<Span> {
    let incoming = read(headers);
    if incoming.is_none() && plan.is_none() {
        return None;
    }
    let mut rng = rand::rng();
    let id = rng.random::<u64>().max(1);
    let span_hex = format!("{id:016x}");
    let Some(plan) = plan else {
        rewrite(headers, &span_hex);
        return None;
    };
    let sample = |rng: &mut rand::rngs::ThreadRng| rng.random::<f64>() * 100.0 < plan.sampling;
    let (trace_id, parent, sampled) = match incoming {
        Some(Incoming {
            trace_id,
            parent,
            sampled,
        }) => {
            rewrite(headers, &span_hex);
            let sampled = match sampled {
                Some(sampled) => sampled,
                None => {
                    let sampled = sample(&mut rng);
                    if headers.contains_key("x-b3-traceid") {
                        headers.insert("x-b3-sampled", bit(sampled));
                    }
                    sampled
                }
            };
            (trace_id, parent, sampled)
        }
        None => {
            let trace_id = if plan.short_trace_ids {
                format!("{:016x}", rng.random::<u64>().max(1))
            } else {
                format!("{:032x}", rng.random::<u128>().max(1))
            };
            let sampled = sample(&mut rng);
            let flags = if sampled { "01" } else { "00" };
            for (name, value) in [
                (
                    "traceparent",
                    format!("00-{trace_id:0>32}-{span_hex}-{flags}"),
                ),
                ("x-b3-traceid", trace_id.clone()),
                ("x-b3-spanid", span_hex.clone()),
            ] {
                if let Ok(value) = HeaderValue::from_str(&value) {
                    headers.insert(name, value);
                }
            }
            headers.insert("x-b3-sampled", bit(sampled));
            (trace_id, None, sampled)
        }
    };
    let tags = if sampled {
        custom_tags(plan, headers)
    } else {
        Vec::new()
    };
    Some(Span {
        trace_id,
        id,
        parent,
        sampled,
        start: SystemTime::now(),
        tags,
    })
}

fn bit(on: bool) -> HeaderValue {
    HeaderValue::from_static(if on { "1" } else { "0" })
}

/// The trace the request is part of, if its headers say.
fn read(headers: &HeaderMap) -> Option<Incoming> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let hex64 = |s: &str| {
        (s.len() == 16)
            .then(|| u64::from_str_radix(s, 16).ok())
            .flatten()
    };
    let trace_hex = |s: &str| {
        (matches!(s.len(), 16 | 32) && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| s.to_ascii_lowercase())
    };
    if let Some(parent) = text("traceparent")
        && let [_, trace, span, flags] = parent.split('-').collect::<Vec<_>>().as_slice()
        && trace.len() == 32
        && let (Some(trace_id), Some(span), Ok(flags)) =
            (trace_hex(trace), hex64(span), u8::from_str_radix(flags, 16))
    {
        return Some(Incoming {
            trace_id,
            parent: Some(span),
            sampled: Some(flags & 1 == 1),
        });
    }
    if let Some(trace_id) = text("x-b3-traceid").and_then(trace_hex) {
        let sampled = match (text("x-b3-flags"), text("x-b3-sampled")) {
            (Some("1"), _) => Some(true),
            (_, Some("1" | "true")) => Some(true),
            (_, Some("0" | "false")) => Some(false),
            _ => None,
        };
        return Some(Incoming {
            trace_id,
            parent: text("x-b3-spanid").and_then(hex64),
            sampled,
        });
    }
    if let Some(b3) = text("b3") {
        let fields: Vec<&str> = b3.split('-').collect();
        if let [trace, span, rest @ ..] = fields.as_slice()
            && let (Some(trace_id), Some(span)) = (trace_hex(trace), hex64(span))
        {
            let sampled = match rest.first() {
                Some(&"1" | &"d") => Some(true),
                Some(&"0") => Some(false),
                _ => None,
            };
            return Some(Incoming {
                trace_id,
                parent: Some(span),
                sampled,
            });
        }
    }
    None
}

/// The request's trace headers, continued with span `span`.
fn rewrite(headers: &mut HeaderMap, span: &str) {
    if let Some(parent) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
        let fields: Vec<&str> = parent.split('-').collect();
        if let [version, trace, _parent, flags] = fields.as_slice()
            && trace.len() == 32
            && let Ok(value) = HeaderValue::from_str(&format!("{version}-{trace}-{span}-{flags}"))
        {
            headers.insert("traceparent", value);
        }
    }
    if headers.contains_key("x-b3-traceid") {
        if let Some(caller) = headers.get("x-b3-spanid").cloned() {
            headers.insert("x-b3-parentspanid", caller);
        }
        if let Ok(value) = HeaderValue::from_str(span) {
            headers.insert("x-b3-spanid", value);
        }
    }
    if let Some(b3) = headers.get("b3").and_then(|v| v.to_str().ok()) {
        let fields: Vec<&str> = b3.split('-').collect();
        if fields.len() >= 2 {
            let sampled = fields.get(2).map_or(String::new(), |s| format!("-{s}"));
            let rebuilt = format!("{}-{span}{sampled}-{}", fields[0], fields[1]);
            if let Ok(value) = HeaderValue::from_str(&rebuilt) {
                headers.insert("b3", value);
            }
        }
    }
}

/// The plan's `customTags` for this request: literals, the waypoint's
/// environment, the request's headers (each with its default).
fn custom_tags(plan: &TracingPlan, headers: &HeaderMap) -> Vec<(String, String)> {
    plan.custom_tags
        .iter()
        .filter_map(|(name, tag)| {
            let value = if let Some(literal) = &tag.literal {
                literal.value.clone()
            } else if let Some(env) = &tag.environment {
                std::env::var(&env.name).unwrap_or_else(|_| env.default_value.clone())
            } else if let Some(header) = &tag.header {
                headers
                    .get(header.name.as_str())
                    .and_then(|v| v.to_str().ok())
                    .map_or_else(|| header.default_value.clone(), str::to_owned)
            } else {
                return None;
            };
            Some((name.clone(), value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(sampling: f64) -> TracingPlan {
        TracingPlan {
            provider: "zipkin".into(),
            host: "zipkin.observe.svc.cluster.local".into(),
            port: 9411,
            path: "/api/v2/spans".into(),
            max_tag_length: 256,
            short_trace_ids: false,
            sampling,
            disabled: false,
            custom_tags: vec![(
                "user".into(),
                serde_yaml::from_str("{header: {name: x-user, defaultValue: nobody}}")
                    .expect("a tag"),
            )],
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::header::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn without_a_plan_traces_are_continued_and_none_started() {
        let mut none = HeaderMap::new();
        assert!(continue_or_start(&mut none, None).is_none());
        assert!(none.is_empty());
        let mut w3c = headers(&[(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )]);
        assert!(continue_or_start(&mut w3c, None).is_none());
        let parent = w3c["traceparent"].to_str().unwrap_or_default();
        assert!(parent.starts_with("00-0af7651916cd43dd8448eb211c80319c-"));
        assert!(parent.ends_with("-01") && !parent.contains("b7ad6b7169203331"));
    }

    #[test]
    fn a_request_without_a_trace_starts_one_sampled_as_asked() {
        let mut h = headers(&[("x-user", "jason")]);
        let span = continue_or_start(&mut h, Some(&plan(100.0))).expect("a span");
        assert!(span.sampled && span.parent.is_none());
        assert_eq!(span.trace_id.len(), 32);
        let parent = h["traceparent"].to_str().unwrap_or_default();
        assert_eq!(parent, format!("00-{}-{:016x}-01", span.trace_id, span.id));
        assert_eq!(h["x-b3-traceid"], span.trace_id.as_str());
        assert_eq!(h["x-b3-sampled"], "1");
        assert_eq!(span.tags, [("user".to_owned(), "jason".to_owned())]);

        let mut h = HeaderMap::new();
        let span = continue_or_start(&mut h, Some(&plan(0.0))).expect("a span");
        assert!(!span.sampled && span.tags.is_empty());
        assert!(
            h["traceparent"]
                .to_str()
                .unwrap_or_default()
                .ends_with("-00")
        );
        assert_eq!(h["x-b3-sampled"], "0");
    }

    #[test]
    fn the_callers_decision_holds() {
        for (flags, sampled) in [("01", true), ("00", false)] {
            let value = format!("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-{flags}");
            let mut h = HeaderMap::new();
            h.insert(
                "traceparent",
                HeaderValue::from_str(&value).expect("a value"),
            );
            let span = continue_or_start(
                &mut h,
                Some(&plan(100.0 - 100.0 * f64::from(u8::from(sampled)))),
            )
            .expect("a span");
            assert_eq!(span.sampled, sampled, "{flags}");
            assert_eq!(span.trace_id, "0af7651916cd43dd8448eb211c80319c");
            assert_eq!(span.parent, Some(0xb7ad6b7169203331));
        }
        // B3 without a decision: the waypoint decides and says so.
        let mut h = headers(&[
            ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
        ]);
        let span = continue_or_start(&mut h, Some(&plan(100.0))).expect("a span");
        assert!(span.sampled);
        assert_eq!(span.parent, Some(0xa2fb4a1d1a96d312));
        assert_eq!(h["x-b3-sampled"], "1");
        assert_eq!(h["x-b3-parentspanid"], "a2fb4a1d1a96d312");
        assert_eq!(h["x-b3-spanid"], format!("{:016x}", span.id).as_str());
        // A single `b3` header.
        let mut h = headers(&[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")]);
        let span = continue_or_start(&mut h, Some(&plan(0.0))).expect("a span");
        assert!(span.sampled);
        assert_eq!(span.trace_id, "80f198ee56343ba864fe8b2a57d3eff7");
    }

    #[test]
    fn garbage_is_no_trace() {
        for (name, value) in [
            ("traceparent", "00-zz-b7ad6b7169203331-01"),
            ("x-b3-traceid", "not-hex"),
            ("b3", "1"),
        ] {
            let mut h = HeaderMap::new();
            h.insert(
                http::header::HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
            let span = continue_or_start(&mut h, Some(&plan(100.0))).expect("a new trace");
            assert!(span.parent.is_none(), "{name}: {value}");
        }
    }
}
