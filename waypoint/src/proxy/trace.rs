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

/// What the request brought: a trace to continue, or only a sampling
/// decision (`b3: 0`, `x-b3-sampled: 1` without a trace id).
struct Incoming {
    /// `None`: a decision alone.
    trace: Option<(String, u64)>,
    /// `None`: the caller left the decision to us (B3 without one).
    sampled: Option<bool>,
}

/// Continues the request's trace with a new span id of this waypoint's;
/// with a `plan`, starts one when there is none and returns the span to
/// report. Without a plan, as ever: headers continued, nothing started.
pub fn continue_or_start(headers: &mut HeaderMap, plan: Option<&TracingPlan>) -> Option<Span> {
    let mut rng = rand::rng();
    let Some(plan) = plan else {
        if ["traceparent", "x-b3-traceid", "b3"]
            .iter()
            .any(|name| headers.contains_key(*name))
        {
            rewrite(
                headers,
                &format!("{:016x}", rng.random::<u64>().max(1)),
                None,
            );
        }
        return None;
    };
    let id = rng.random::<u64>().max(1);
    let span_hex = format!("{id:016x}");
    let incoming = read(headers);
    let decided = incoming.as_ref().and_then(|i| i.sampled);
    let sampled = decided.unwrap_or_else(|| rng.random::<f64>() * 100.0 < plan.sampling);
    let (trace_id, parent) = match incoming.and_then(|i| i.trace) {
        Some((trace_id, parent)) => {
            // Headers of no valid trace, or of another trace, beside the
            // one continued would contradict it downstream.
            drop_invalid(headers, &trace_id);
            // The decision, in every header that carries none.
            rewrite(headers, &span_hex, Some(sampled));
            (trace_id, Some(parent))
        }
        None => {
            // A new trace: what the caller sent of another goes.
            for stale in ["b3", "x-b3-parentspanid", "x-b3-flags", "tracestate"] {
                headers.remove(stale);
            }
            let trace_id = if plan.short_trace_ids {
                format!("{:016x}", rng.random::<u64>().max(1))
            } else {
                format!("{:032x}", rng.random::<u128>().max(1))
            };
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
            (trace_id, None)
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

/// Hex digits of one of `lengths`, not all zeros (W3C and B3 refuse a zero
/// id), in lowercase.
fn hex_id(s: &str, lengths: &[usize]) -> Option<String> {
    (lengths.contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_hexdigit())
        && s.bytes().any(|b| b != b'0'))
    .then(|| s.to_ascii_lowercase())
}

/// A 64-bit span id: 16 hex digits, not zero.
fn span_id(s: &str) -> Option<u64> {
    hex_id(s, &[16]).and_then(|h| u64::from_str_radix(&h, 16).ok())
}

fn b3_state(s: &str) -> Option<bool> {
    match s {
        "1" | "d" => Some(true),
        "0" => Some(false),
        _ => None,
    }
}

/// `traceparent`: version (not `ff`; `00` has exactly four fields),
/// trace id, parent id, two hex digits of flags.
fn w3c(value: &str) -> Option<Incoming> {
    let fields: Vec<&str> = value.split('-').collect();
    let version = *fields.first()?;
    if version.len() != 2
        || !version.bytes().all(|b| b.is_ascii_hexdigit())
        || version.eq_ignore_ascii_case("ff")
        || fields.len() < 4
        || (version == "00" && fields.len() != 4)
    {
        return None;
    }
    let trace_id = hex_id(fields[1], &[32])?;
    let parent = span_id(fields[2])?;
    let flags = fields[3];
    if flags.len() != 2 || !flags.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(Incoming {
        trace: Some((trace_id, parent)),
        sampled: Some(flags & 1 == 1),
    })
}

fn text<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A `b3` header's fields.
fn b3_fields(headers: &HeaderMap) -> Option<Vec<&str>> {
    text(headers, "b3").map(|b3| b3.split('-').collect())
}

/// `b3`'s trace, span and state, when it names a trace.
fn b3_trace(fields: &[&str]) -> Option<(String, u64, Option<bool>)> {
    let [trace, span, rest @ ..] = fields else {
        return None;
    };
    Some((
        hex_id(trace, &[16, 32])?,
        span_id(span)?,
        rest.first().and_then(|s| b3_state(s)),
    ))
}

/// `x-b3-traceid` and `x-b3-spanid`, when both are valid.
fn b3_multi_trace(headers: &HeaderMap) -> Option<(String, u64)> {
    Some((
        text(headers, "x-b3-traceid").and_then(|t| hex_id(t, &[16, 32]))?,
        text(headers, "x-b3-spanid").and_then(span_id)?,
    ))
}

/// The trace (or decision) the request's headers carry, the first valid
/// one of `traceparent`, `b3`, `x-b3-*`; a decision of one B3 form counts
/// for the other.
fn read(headers: &HeaderMap) -> Option<Incoming> {
    if let Some(incoming) = text(headers, "traceparent").and_then(w3c) {
        return Some(incoming);
    }
    let b3 = b3_fields(headers);
    let lone_state = match b3.as_deref() {
        Some([state]) => b3_state(state),
        _ => None,
    };
    let multi_sampled = match (text(headers, "x-b3-flags"), text(headers, "x-b3-sampled")) {
        (Some("1"), _) => Some(true),
        (_, Some("1" | "true")) => Some(true),
        (_, Some("0" | "false")) => Some(false),
        _ => None,
    };
    if let Some((trace_id, parent, state)) = b3.as_deref().and_then(b3_trace) {
        // The multi headers' decision counts only for their own trace.
        let multi_ours = text(headers, "x-b3-traceid")
            .and_then(|t| hex_id(t, &[16, 32]))
            .is_none_or(|id| same_trace(&id, &trace_id));
        return Some(Incoming {
            trace: Some((trace_id, parent)),
            sampled: state.or(multi_sampled.filter(|_| multi_ours)),
        });
    }
    if let Some(trace) = b3_multi_trace(headers) {
        return Some(Incoming {
            trace: Some(trace),
            sampled: multi_sampled.or(lone_state),
        });
    }
    // A decision alone: `b3: 0|1|d`, or `x-b3-sampled` without a trace.
    Some(Incoming {
        trace: None,
        sampled: Some(lone_state.or(multi_sampled)?),
    })
}

/// Takes out the trace headers that name no valid trace, or another trace
/// than `trace` (the one continued; a `tracestate` goes with its
/// `traceparent`).
fn drop_invalid(headers: &mut HeaderMap, trace: &str) {
    let ours = |id: &str| same_trace(id, trace);
    let w3c_ours = text(headers, "traceparent")
        .and_then(w3c)
        .and_then(|i| i.trace)
        .is_some_and(|(id, _)| ours(&id));
    if !w3c_ours {
        headers.remove("traceparent");
        headers.remove("tracestate");
    }
    let b3_ours = b3_fields(headers).is_none_or(|fields| match fields.as_slice() {
        [state] => b3_state(state).is_some(),
        fields => b3_trace(fields).is_some_and(|(id, _, _)| ours(&id)),
    });
    if !b3_ours {
        headers.remove("b3");
    }
    if headers.contains_key("x-b3-traceid")
        && !b3_multi_trace(headers).is_some_and(|(id, _)| ours(&id))
    {
        // The decision goes with its trace: left behind, it would speak
        // for the continued one.
        for name in B3_MULTI {
            headers.remove(name);
        }
    }
}

/// B3's multi-header form: a trace's id, span, parent and decision.
const B3_MULTI: [&str; 5] = [
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
];

/// Whether two trace ids (lowercase hex) are one trace: a 64-bit B3 id is
/// the 128-bit one with its upper half zero.
fn same_trace(a: &str, b: &str) -> bool {
    a.trim_start_matches('0') == b.trim_start_matches('0')
}

/// The request's trace headers, continued with span `span`; `decision`
/// goes into the B3 headers that carry none.
fn rewrite(headers: &mut HeaderMap, span: &str, decision: Option<bool>) {
    if let Some(parent) = text(headers, "traceparent") {
        // Written as version 00, the one this waypoint speaks.
        let fields: Vec<&str> = parent.split('-').collect();
        // Lowercase, as W3C writes ids (a caller's uppercase was read).
        if let [_, trace, _parent, flags, ..] = fields.as_slice()
            && trace.len() == 32
            && let Ok(value) = HeaderValue::from_str(&format!(
                "00-{}-{span}-{}",
                trace.to_ascii_lowercase(),
                flags.to_ascii_lowercase()
            ))
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
        if let Some(sampled) = decision
            && !headers.contains_key("x-b3-sampled")
            && !headers.contains_key("x-b3-flags")
        {
            headers.insert("x-b3-sampled", bit(sampled));
        }
    }
    if let Some(fields) = b3_fields(headers) {
        // `trace-span[-state[-parent]]`: the caller's span becomes the
        // parent, which B3 writes only after a sampling state.
        if let [trace, caller, rest @ ..] = fields.as_slice() {
            let state = rest
                .first()
                .copied()
                .filter(|s| b3_state(s).is_some())
                .or(decision.map(|d| if d { "1" } else { "0" }));
            let rebuilt = match state {
                Some(state) => format!("{trace}-{span}-{state}-{caller}"),
                None => format!("{trace}-{span}"),
            };
            if let Ok(value) = HeaderValue::from_str(&rebuilt) {
                headers.insert("b3", value);
            }
        }
    }
}

/// The longest a custom tag's value may be: a header a client sends must
/// not make the span queue large.
const CUSTOM_TAG_MAX: usize = 256;

/// The plan's `customTags` for this request: literals, the waypoint's
/// environment, the request's headers (each with its default); empty
/// values left out, as Envoy leaves them out.
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
            (!value.is_empty()).then(|| {
                (
                    name.clone(),
                    crate::telemetry::span::cut(&value, CUSTOM_TAG_MAX),
                )
            })
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
            protocol: crate::telemetry::TraceProtocol::Zipkin,
            path: "/api/v2/spans".into(),
            timeout: std::time::Duration::from_secs(5),
            max_tag_length: 256,
            short_trace_ids: false,
            sampling,
            custom_tags: vec![(
                "user".into(),
                serde_yaml::from_str("{header: {name: x-user, defaultValue: nobody}}")
                    .expect("a tag"),
            )],
            headers: Vec::new(),
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
            (
                "traceparent",
                "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            ),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            ),
            (
                "traceparent",
                "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1",
            ),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-+7ad6b7169203331-01",
            ),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x",
            ),
            ("b3", "0af7651916cd43dd8448eb211c80319c"),
        ] {
            let mut h = HeaderMap::new();
            h.insert(
                http::header::HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
            h.insert(
                "x-b3-parentspanid",
                HeaderValue::from_static("a2fb4a1d1a96d312"),
            );
            let span = continue_or_start(&mut h, Some(&plan(100.0))).expect("a new trace");
            assert!(span.parent.is_none(), "{name}: {value}");
            assert_ne!(
                span.trace_id, "0af7651916cd43dd8448eb211c80319c",
                "{name}: {value}"
            );
            assert_eq!(h["x-b3-traceid"], span.trace_id.as_str(), "{name}: {value}");
            assert!(
                !h.contains_key("b3") && !h.contains_key("x-b3-parentspanid"),
                "stale headers of another trace stay: {h:?}"
            );
        }
        // A later version may add fields.
        let mut h = headers(&[(
            "traceparent",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        )]);
        let span = continue_or_start(&mut h, Some(&plan(0.0))).expect("a span");
        assert_eq!(span.parent, Some(0xb7ad6b7169203331));
        // Sent on as version 00, with the waypoint's span as the parent.
        assert_eq!(
            h["traceparent"],
            format!("00-0af7651916cd43dd8448eb211c80319c-{:016x}-01", span.id).as_str()
        );
    }

    #[test]
    fn one_forms_decision_holds_for_the_other() {
        // `b3` without a state, `x-b3-sampled: 0` beside it.
        let mut h = headers(&[
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1"),
            ("x-b3-sampled", "0"),
        ]);
        let span = continue_or_start(&mut h, Some(&plan(100.0))).expect("a span");
        assert!(!span.sampled);
        assert!(
            h["b3"]
                .to_str()
                .unwrap_or_default()
                .contains("-0-e457b5a2e4d86bd1")
        );
        // A W3C decision goes into B3 headers that carry none; B3 headers
        // of no valid trace go.
        let mut h = headers(&[
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("x-b3-traceid", "0af7651916cd43dd8448eb211c80319c"),
            ("x-b3-spanid", "b7ad6b7169203331"),
            ("b3", "garbage-x"),
        ]);
        let span = continue_or_start(&mut h, Some(&plan(0.0))).expect("a span");
        assert!(span.sampled);
        assert_eq!(h["x-b3-sampled"], "1");
        assert!(!h.contains_key("b3"));
    }

    #[test]
    fn a_b3_decision_alone_is_the_callers() {
        for (pairs, sampled) in [
            (&[("b3", "0")][..], false),
            (&[("b3", "d")][..], true),
            (&[("x-b3-sampled", "1")][..], true),
            (&[("x-b3-flags", "1")][..], true),
        ] {
            let mut h = headers(pairs);
            let at = if sampled { 0.0 } else { 100.0 };
            let span = continue_or_start(&mut h, Some(&plan(at))).expect("a span");
            assert_eq!(span.sampled, sampled, "{pairs:?}");
            assert!(span.parent.is_none());
            assert!(!h.contains_key("b3"));
            assert_eq!(h["x-b3-sampled"], if sampled { "1" } else { "0" });
        }
    }

    #[test]
    fn a_b3_single_header_keeps_its_form() {
        // Without a decision: the waypoint's goes in, the caller's span
        // after it as the parent.
        let mut h = headers(&[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1")]);
        let span = continue_or_start(&mut h, Some(&plan(100.0))).expect("a span");
        assert_eq!(
            h["b3"],
            format!(
                "80f198ee56343ba864fe8b2a57d3eff7-{:016x}-1-e457b5a2e4d86bd1",
                span.id
            )
            .as_str()
        );
        // Without a plan: no decision to write, no parent either.
        let mut h = headers(&[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1")]);
        assert!(continue_or_start(&mut h, None).is_none());
        let b3 = h["b3"].to_str().unwrap_or_default();
        assert!(
            b3.starts_with("80f198ee56343ba864fe8b2a57d3eff7-") && b3.len() == 32 + 1 + 16,
            "{b3}"
        );
    }

    #[test]
    fn custom_tags_leave_out_empty_values_and_are_cut() {
        let mut p = plan(100.0);
        p.custom_tags.push((
            "empty".into(),
            serde_yaml::from_str("{header: {name: x-none}}").expect("a tag"),
        ));
        let long = "x".repeat(1000);
        let mut h = HeaderMap::new();
        h.insert("x-user", HeaderValue::from_str(&long).expect("a value"));
        let span = continue_or_start(&mut h, Some(&p)).expect("a span");
        assert_eq!(span.tags.len(), 1, "{:?}", span.tags);
        assert_eq!(span.tags[0].1.len(), CUSTOM_TAG_MAX);
    }

    /// Any trace headers a caller sends, well formed, cut short or garbled,
    /// are continued, replaced or left alone: never a panic, and with a
    /// tracing plan the request always leaves with a well-formed
    /// `traceparent` of the span's trace. Seeded and bounded.
    #[test]
    fn any_trace_headers_leave_a_well_formed_trace() {
        use rand::{Rng as _, SeedableRng as _, rngs::StdRng, seq::IndexedRandom as _};

        let mut rng = StdRng::seed_from_u64(0x7ace);
        let hex = |rng: &mut StdRng, n: usize| -> String {
            (0..n)
                .map(|_| *b"0123456789abcdefABCDEF".choose(rng).unwrap_or(&b'0') as char)
                .collect()
        };
        let names: Vec<&str> = ["traceparent", "tracestate", "b3"]
            .into_iter()
            .chain(B3_MULTI)
            .collect();
        let well_formed = |value: &str, trace_id: &str| {
            let parts: Vec<&str> = value.split('-').collect();
            parts.len() == 4
                && parts[0] == "00"
                && parts[1].len() == 32
                && parts[1].ends_with(trace_id)
                && parts[2].len() == 16
                && matches!(parts[3], "00" | "01")
                && parts[1..3]
                    .iter()
                    .all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
        };
        // Two valid traces at once, W3C's and B3's: the W3C one is
        // continued, and the other must not go on beside it.
        let mut h = headers(&[
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("b3", "463ac35c9f6413ad48485a3953bb6124-a2fb4a1d1a96d312-1"),
        ]);
        h.insert("x-b3-sampled", HeaderValue::from_static("0"));
        let span = continue_or_start(&mut h, Some(&plan(100.0))).expect("a span");
        assert_eq!(span.trace_id, "0af7651916cd43dd8448eb211c80319c");
        assert!(span.sampled, "the W3C trace's decision");
        assert!(
            h.get("x-b3-sampled").is_none_or(|v| v == "1"),
            "the other trace's decision went with it: {h:?}"
        );
        for name in ["x-b3-traceid", "b3"] {
            let value = h
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            assert!(
                value.is_empty() || value.starts_with(span.trace_id.as_str()),
                "{name}: {value}"
            );
        }

        for round in 0..5_000u32 {
            let mut h = HeaderMap::new();
            for &name in &names {
                if !rng.random_bool(0.5) {
                    continue;
                }
                let pieces: Vec<String> = (0..rng.random_range(0..6))
                    .map(|_| match rng.random_range(0..6) {
                        0 => hex(&mut rng, 32),
                        1 => hex(&mut rng, 16),
                        2 => {
                            let n = rng.random_range(0..40);
                            hex(&mut rng, n)
                        }
                        3 => ["0", "1", "d", "00", "01", "ff", ""]
                            .choose(&mut rng)
                            .copied()
                            .unwrap_or_default()
                            .to_owned(),
                        4 => "0".repeat(rng.random_range(1..33)),
                        _ => (0..rng.random_range(0..8))
                            .map(|_| char::from(rng.random_range(0x21u8..0x7f)))
                            .collect(),
                    })
                    .collect();
                let separator = if rng.random_bool(0.8) { "-" } else { "," };
                if let Ok(value) = HeaderValue::from_str(&pieces.join(separator)) {
                    h.insert(name, value);
                }
            }
            let seen = format!("{h:?}");
            let mut untraced = h.clone();
            assert!(continue_or_start(&mut untraced, None).is_none(), "{seen}");
            let sampling = f64::from(round % 3) * 50.0;
            let span = continue_or_start(&mut h, Some(&plan(sampling))).expect("a span");
            assert!(
                matches!(span.trace_id.len(), 16 | 32)
                    && span.trace_id.bytes().all(|b| b.is_ascii_hexdigit()),
                "{seen} → {span:?}"
            );
            // Every trace header the request leaves with names the span's
            // trace, and one at least does.
            let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok());
            let same_trace = |id: &str| {
                let (ours, theirs) = (span.trace_id.to_ascii_lowercase(), id.to_ascii_lowercase());
                ours.trim_start_matches('0') == theirs.trim_start_matches('0')
            };
            let mut carried = 0;
            if let Some(parent) = text("traceparent") {
                assert!(
                    well_formed(parent, &span.trace_id.to_ascii_lowercase())
                        || parent.split('-').nth(1).is_some_and(same_trace),
                    "{seen} → traceparent {parent:?}, trace {}",
                    span.trace_id
                );
                carried += 1;
            }
            if let Some(trace) = text("x-b3-traceid") {
                assert!(
                    same_trace(trace),
                    "{seen} → x-b3-traceid {trace:?}, trace {}",
                    span.trace_id
                );
                carried += 1;
            }
            if let Some(b3) = text("b3").filter(|b3| b3.contains('-')) {
                let trace = b3.split('-').next().unwrap_or_default();
                assert!(
                    same_trace(trace),
                    "{seen} → b3 {b3:?}, trace {}",
                    span.trace_id
                );
                carried += 1;
            }
            assert!(carried > 0, "{seen} → no trace header left");
        }
    }
}
