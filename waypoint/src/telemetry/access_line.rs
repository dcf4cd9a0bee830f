//! Access lines in an operator's format ([`warren_model::log_format`]): the
//! values of Envoy's command operators for one request or connection, filled
//! in from what the waypoint reports of it ([`Facts`]).
//!
//! As Envoy writes them: a value the request does not have is `-` in text
//! and `null` in JSON; a JSON label that is one command alone keeps the
//! command's type (`%RESPONSE_CODE%` is a number).

use std::{
    borrow::Cow,
    collections::HashMap,
    sync::LazyLock,
    time::{SystemTime, UNIX_EPOCH},
};

use http::HeaderMap;
use serde_json::{Map, Value as Json};
use warren_model::{
    istio::mesh::Stream,
    log_format::{Command, HeaderRef, Label, Labels, LogFormat, Piece, Template},
};

use super::attributes::{Attributes, Expr, Facts};

/// The machine's name (`%HOSTNAME%`), read once.
static HOSTNAME: LazyLock<String> = LazyLock::new(|| {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_default()
});

/// A format ready to write lines in: its CEL expressions compiled, its
/// environment variables read.
#[derive(Debug)]
pub struct AccessFormat {
    format: LogFormat,
    cel: HashMap<String, Expr>,
    environment: HashMap<String, Option<String>>,
    /// What the lines need kept of each request.
    pub reads: Reads,
}

/// What of a request a format reads, beyond what every request keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reads {
    /// The request's own fields (method, path, host, protocol).
    pub request: bool,
    pub request_headers: HeaderNeed,
    pub response_headers: HeaderNeed,
    pub response_trailers: bool,
}

/// Which of a message's headers must be kept for what reads them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum HeaderNeed {
    #[default]
    None,
    /// These (lowercase), and no others.
    Some(Vec<http::HeaderName>),
    /// All of them (an expression may read any).
    All,
}

impl HeaderNeed {
    /// Adds what `other` needs.
    pub fn and(&mut self, other: &HeaderNeed) {
        match (&mut *self, other) {
            (_, HeaderNeed::None) | (HeaderNeed::All, _) => {}
            (_, HeaderNeed::All) => *self = HeaderNeed::All,
            (HeaderNeed::None, HeaderNeed::Some(names)) => *self = HeaderNeed::Some(names.clone()),
            (HeaderNeed::Some(mine), HeaderNeed::Some(names)) => {
                for name in names {
                    if !mine.contains(name) {
                        mine.push(name.clone());
                    }
                }
            }
        }
    }

    fn name(&mut self, name: &str) {
        if let Ok(name) = http::HeaderName::from_bytes(name.as_bytes()) {
            self.and(&HeaderNeed::Some(vec![name]));
        }
    }

    pub fn is_none(&self) -> bool {
        matches!(self, HeaderNeed::None)
    }

    /// The headers of `from` it needs, copied.
    pub fn keep(&self, from: &HeaderMap) -> Option<HeaderMap> {
        match self {
            HeaderNeed::None => None,
            HeaderNeed::All => Some(from.clone()),
            HeaderNeed::Some(names) => {
                let mut kept = HeaderMap::new();
                for name in names {
                    for value in from.get_all(name) {
                        kept.append(name.clone(), value.clone());
                    }
                }
                Some(kept)
            }
        }
    }
}

/// Request headers every request keeps in its own fields: reading them
/// needs no copy of the headers.
const KEPT_ANYWAY: [&str; 4] = ["host", "user-agent", "referer", "x-request-id"];

/// One command's value.
enum Value<'a> {
    Missing,
    Text(Cow<'a, str>),
    Number(u64),
}

impl AccessFormat {
    pub fn compile(format: LogFormat) -> Result<AccessFormat, String> {
        let mut cel = HashMap::new();
        let mut environment = HashMap::new();
        let mut reads = Reads::default();
        for command in format.commands() {
            match command {
                Command::Cel(text) => {
                    let expr = Expr::compile(text)?;
                    reads.request |= expr.reads("request");
                    if expr.reads_headers_of("request") {
                        reads.request_headers = HeaderNeed::All;
                    }
                    if expr.reads_headers_of("response") {
                        reads.response_headers = HeaderNeed::All;
                    }
                    cel.insert(text.clone(), expr);
                }
                Command::Environment(name) => {
                    environment.insert(name.clone(), std::env::var(name).ok());
                }
                Command::RequestHeader(h) | Command::RequestHeaderWithoutQuery(h) => {
                    reads.request = true;
                    for name in std::iter::once(&h.name).chain(&h.fallback) {
                        if !is_pseudo(name) && !KEPT_ANYWAY.contains(&name.as_str()) {
                            reads.request_headers.name(name);
                        }
                    }
                }
                Command::ResponseHeader(h) => {
                    for name in std::iter::once(&h.name).chain(&h.fallback) {
                        reads.response_headers.name(name);
                    }
                }
                Command::ResponseTrailer(_) => reads.response_trailers = true,
                // The cluster's protocol is the request's: HTTP when there
                // is one.
                Command::Protocol | Command::UpstreamCluster => reads.request = true,
                _ => {}
            }
        }
        Ok(AccessFormat {
            format,
            cel,
            environment,
            reads,
        })
    }

    /// Whether its lines are JSON objects.
    pub fn is_json(&self) -> bool {
        matches!(self.format, LogFormat::Json(_))
    }

    /// The operators it writes as `-`, for the waypoint to say once.
    pub fn not_reported(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .format
            .commands()
            .into_iter()
            .filter(|c| matches!(c, Command::NotReported(_)))
            .map(ToString::to_string)
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The line for one request or connection, newline included.
    pub fn line(&self, facts: &Facts<'_>, attributes: &Attributes<'_, '_>) -> String {
        match &self.format {
            LogFormat::Text(template) => self.text(template, facts, attributes),
            LogFormat::Json(labels) => {
                let mut line = Json::Object(self.json(labels, facts, attributes)).to_string();
                line.push('\n');
                line
            }
        }
    }

    fn text(
        &self,
        template: &Template,
        facts: &Facts<'_>,
        attributes: &Attributes<'_, '_>,
    ) -> String {
        let mut out = String::new();
        for piece in &template.0 {
            match piece {
                Piece::Literal(text) => out.push_str(text),
                Piece::Command { command, max_len } => {
                    match self.value(command, facts, attributes) {
                        Value::Missing => out.push('-'),
                        Value::Text(text) => out.push_str(cut(&text, *max_len)),
                        Value::Number(n) => out.push_str(cut(&n.to_string(), *max_len)),
                    }
                }
            }
        }
        out
    }

    fn json(
        &self,
        labels: &Labels,
        facts: &Facts<'_>,
        attributes: &Attributes<'_, '_>,
    ) -> Map<String, Json> {
        let mut object = Map::new();
        for (key, label) in &labels.0 {
            object.insert(key.clone(), self.label(label, facts, attributes));
        }
        object
    }

    fn label(&self, label: &Label, facts: &Facts<'_>, attributes: &Attributes<'_, '_>) -> Json {
        match label {
            Label::Constant(value) => value.clone(),
            Label::Nested(inner) => Json::Object(self.json(inner, facts, attributes)),
            Label::List(items) => Json::Array(
                items
                    .iter()
                    .map(|item| self.label(item, facts, attributes))
                    .collect(),
            ),
            Label::Template(template) => match template.single() {
                Some((command, max_len)) => match self.value(command, facts, attributes) {
                    Value::Missing => Json::Null,
                    Value::Number(n) if max_len.is_none() => Json::from(n),
                    Value::Number(n) => Json::from(cut(&n.to_string(), max_len)),
                    Value::Text(text) => Json::from(cut(&text, max_len)),
                },
                None => Json::from(self.text(template, facts, attributes)),
            },
        }
    }

    fn value<'f>(
        &'f self,
        command: &Command,
        facts: &'f Facts<'_>,
        attributes: &Attributes<'_, '_>,
    ) -> Value<'f> {
        let text = |s: &'f str| Value::Text(Cow::Borrowed(s));
        let owned = |s: String| Value::Text(Cow::Owned(s));
        let present = |s: Option<&'f str>| s.filter(|s| !s.is_empty()).map_or(Value::Missing, text);
        match command {
            Command::StartTime(format) => facts
                .start
                .and_then(|at| start_time(at, format.as_deref()))
                .map_or(Value::Missing, owned),
            Command::RequestHeader(h) => request_header(facts, h),
            Command::RequestHeaderWithoutQuery(h) => match request_header(facts, h) {
                Value::Text(Cow::Borrowed(text)) => {
                    Value::Text(Cow::Borrowed(text.split_once('?').map_or(text, |(p, _)| p)))
                }
                Value::Text(Cow::Owned(text)) => Value::Text(Cow::Owned(
                    text.split_once('?')
                        .map_or(text.as_str(), |(p, _)| p)
                        .to_owned(),
                )),
                other => other,
            },
            Command::ResponseHeader(h) => header(facts.response_headers, h),
            Command::ResponseTrailer(h) => header(facts.response_trailers, h),
            Command::Protocol => present(facts.request.map(|r| r.protocol)),
            // 0 without an answer (a TCP connection, a client gone), as
            // Envoy writes it.
            Command::ResponseCode => Value::Number(u64::from(facts.response_code.unwrap_or(0))),
            // Envoy's details are one token: spaces become underscores.
            Command::ResponseCodeDetails { whitespace } => match facts.details {
                Some("") | None => Value::Missing,
                Some(d) if *whitespace => text(d),
                Some(d) => owned(d.replace(char::is_whitespace, "_")),
            },
            Command::ResponseFlags => text(if facts.flags.is_empty() {
                "-"
            } else {
                facts.flags
            }),
            Command::BytesReceived => Value::Number(facts.request_bytes),
            Command::BytesSent => Value::Number(facts.response_bytes),
            Command::Duration => facts.duration.map_or(Value::Missing, |d| {
                Value::Number(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            }),
            Command::UpstreamHost => facts
                .upstream
                .map_or(Value::Missing, |a| owned(a.to_string())),
            Command::UpstreamHostWithoutPort => facts
                .upstream
                .map_or(Value::Missing, |a| owned(a.ip().to_string())),
            Command::UpstreamPort => facts
                .upstream
                .map_or(Value::Missing, |a| Value::Number(u64::from(a.port()))),
            Command::GrpcStatus { number } => match facts.grpc_status.and_then(|v| v.to_str().ok())
            {
                Some(code) if *number => code.parse().map_or(Value::Missing, Value::Number),
                Some(code) => code
                    .parse::<u8>()
                    .ok()
                    .and_then(grpc_status_name)
                    .map_or_else(|| text(code), text),
                None => Value::Missing,
            },
            Command::UpstreamCluster => match (facts.service, facts.destination) {
                // Istio's name for a waypoint's cluster of a Service.
                (Some(host), Some(addr)) => {
                    let protocol = if facts.request.is_some() {
                        "http"
                    } else {
                        "tcp"
                    };
                    owned(format!("inbound-vip|{}|{protocol}|{host}", addr.port()))
                }
                _ => Value::Missing,
            },
            Command::UpstreamPeerUriSan => present(facts.upstream_principal.as_deref()),
            Command::DownstreamLocalAddress => facts
                .destination
                .map_or(Value::Missing, |a| owned(a.to_string())),
            Command::DownstreamLocalAddressWithoutPort => facts
                .destination
                .map_or(Value::Missing, |a| owned(a.ip().to_string())),
            Command::DownstreamLocalPort => facts
                .destination
                .map_or(Value::Missing, |a| Value::Number(u64::from(a.port()))),
            // The client's port stays with its node's ztunnel: as Envoy
            // writes an address learned without one.
            Command::DownstreamRemoteAddress => facts.source.map_or(Value::Missing, |ip| {
                owned(std::net::SocketAddr::new(ip, 0).to_string())
            }),
            Command::DownstreamRemoteAddressWithoutPort => facts
                .source
                .map_or(Value::Missing, |ip| owned(ip.to_string())),
            Command::DownstreamPeerUriSan => present(facts.principal.as_deref()),
            Command::RequestedServerName => present(facts.server_name),
            Command::RouteName => present(facts.route),
            Command::UpstreamRequestAttemptCount => facts
                .attempts
                .map_or(Value::Missing, |n| Value::Number(u64::from(n))),
            Command::Hostname => present(Some(HOSTNAME.as_str())),
            Command::Environment(name) => {
                present(self.environment.get(name).and_then(|v| v.as_deref()))
            }
            Command::Cel(expr) => self
                .cel
                .get(expr)
                .and_then(|e| e.text_value(attributes))
                .map_or(Value::Missing, owned),
            Command::ConnectionTerminationDetails
            | Command::UpstreamTransportFailureReason
            | Command::UpstreamLocalAddress
            | Command::NotReported(_) => Value::Missing,
        }
    }
}

/// Writes a line to the stream its provider's path names. A failed write
/// is said once per stream, not per request.
pub fn write(line: &str, stream: Stream) {
    use std::{io::Write as _, sync::atomic::AtomicBool};
    static FAILED: [AtomicBool; 2] = [AtomicBool::new(false), AtomicBool::new(false)];
    let (written, failed) = match stream {
        Stream::Stdout => (
            std::io::stdout().lock().write_all(line.as_bytes()),
            &FAILED[0],
        ),
        Stream::Stderr => (
            std::io::stderr().lock().write_all(line.as_bytes()),
            &FAILED[1],
        ),
    };
    if let Err(error) = written
        && !failed.swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        tracing::warn!(%error, ?stream, "cannot write access lines");
    }
}

/// gRPC's name for a status code, as Envoy writes `%GRPC_STATUS%`.
fn grpc_status_name(code: u8) -> Option<&'static str> {
    const NAMES: [&str; 17] = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    NAMES.get(usize::from(code)).copied()
}

fn is_pseudo(name: &str) -> bool {
    name.starts_with(':')
}

/// A request header or pseudo-header, else its fallback.
fn request_header<'f>(facts: &'f Facts<'_>, h: &HeaderRef) -> Value<'f> {
    let Some(request) = facts.request else {
        return Value::Missing;
    };
    let one = |name: &str| -> Option<Cow<'f, str>> {
        let value: Cow<'f, str> = match name {
            ":method" => Cow::Borrowed(request.method.as_str()),
            ":path" => Cow::Borrowed(request.path.as_str()),
            ":authority" | "host" => Cow::Borrowed(request.host.as_str()),
            ":scheme" => Cow::Borrowed(request.scheme.as_str()),
            "x-request-id" => Cow::Borrowed(facts.request_id?),
            "user-agent" => Cow::Borrowed(request.useragent.as_str()),
            "referer" => Cow::Borrowed(request.referer.as_str()),
            name if name.starts_with(':') => return None,
            name => first(&request.headers, name)?,
        };
        (!value.is_empty()).then_some(value)
    };
    one(&h.name)
        .or_else(|| h.fallback.as_deref().and_then(one))
        .map_or(Value::Missing, Value::Text)
}

fn header<'f>(headers: Option<&'f HeaderMap>, h: &HeaderRef) -> Value<'f> {
    let Some(headers) = headers else {
        return Value::Missing;
    };
    first(headers, &h.name)
        .or_else(|| h.fallback.as_deref().and_then(|f| first(headers, f)))
        .map_or(Value::Missing, Value::Text)
}

/// A header's first value, as Envoy writes a header that came several
/// times.
fn first<'f>(headers: &'f HeaderMap, name: &str) -> Option<Cow<'f, str>> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(Cow::Borrowed)
}

/// `at` in `format` (strftime), or Envoy's default: RFC 3339 in UTC with
/// milliseconds.
fn start_time(at: SystemTime, format: Option<&str>) -> Option<String> {
    let since = at.duration_since(UNIX_EPOCH).ok()?;
    let timestamp = jiff::Timestamp::new(
        i64::try_from(since.as_secs()).ok()?,
        i32::try_from(since.subsec_nanos()).ok()?,
    )
    .ok()?;
    let format = format.unwrap_or("%Y-%m-%dT%H:%M:%S%.3fZ");
    jiff::fmt::strtime::format(format, timestamp).ok()
}

/// `text` cut to `max_len` characters.
fn cut(text: &str, max_len: Option<usize>) -> &str {
    match max_len.and_then(|n| text.char_indices().nth(n)) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use std::{net::SocketAddr, time::Duration};

    use http::HeaderValue;

    use super::*;
    use crate::telemetry::attributes::RequestFacts;

    fn request() -> RequestFacts {
        RequestFacts::example()
    }

    fn facts<'a>(request: &'a RequestFacts, response: &'a HeaderMap) -> Facts<'a> {
        Facts {
            request: Some(request),
            request_id: Some("req-1"),
            request_bytes: 12,
            response_code: Some(503),
            response_headers: Some(response),
            response_bytes: 345,
            flags: "URX",
            source: Some("10.0.0.1".parse().expect("an address")),
            principal: Some("spiffe://cluster.local/ns/demo/sa/client".into()),
            destination: Some(SocketAddr::from(([10, 96, 0, 5], 80))),
            upstream: Some(SocketAddr::from(([10, 1, 0, 7], 8080))),
            start: Some(UNIX_EPOCH + Duration::from_millis(1_765_000_000_123)),
            duration: Some(Duration::from_micros(4_700)),
            route: Some("demo.app.0"),
            details: Some("upstream reset before headers"),
            attempts: Some(3),
            service: Some("app.demo.svc.cluster.local"),
            upstream_principal: Some("spiffe://cluster.local/ns/demo/sa/app".into()),
            ..Facts::default()
        }
    }

    fn render(format: LogFormat) -> String {
        let request = request();
        let mut response = HeaderMap::new();
        response.insert("content-type", HeaderValue::from_static("text/plain"));
        let facts = facts(&request, &response);
        let attributes = Attributes::of(&facts);
        AccessFormat::compile(format)
            .expect("compiles")
            .line(&facts, &attributes)
    }

    #[test]
    fn istios_default_text_line() {
        let line = render(LogFormat::of_mesh("", "").expect("a format"));
        assert_eq!(
            line,
            "[2025-12-06T05:46:40.123Z] \"GET /api/items?page=2 HTTP/1.1\" 503 URX \
             upstream_reset_before_headers - \"-\" 12 345 4 - \"-\" \"curl/8\" \"req-1\" \
             \"app.demo.svc.cluster.local\" \"10.1.0.7:8080\" \
             inbound-vip|80|http|app.demo.svc.cluster.local - 10.96.0.5:80 10.0.0.1:0 - demo.app.0\n"
        );
    }

    #[test]
    fn json_labels_keep_types_and_write_null_for_missing_values() {
        let format = LogFormat::of_mesh(
            r#"{"code": "%RESPONSE_CODE%", "bytes": "%BYTES_SENT%", "sni": "%REQUESTED_SERVER_NAME%",
                "who": "%DOWNSTREAM_PEER_URI_SAN%", "both": "%RESPONSE_CODE%/%RESPONSE_FLAGS%",
                "tags": "%REQ(X-TAG)%", "type": "%RESP(CONTENT-TYPE):4%", "team": "shop",
                "n": {"attempts": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%"}, "one": 1,
                "long": "%CEL(request.url_path + '!')%", "cut": "%RESPONSE_CODE:2%"}"#,
            "JSON",
        )
        .expect("a format");
        let line = render(format);
        assert!(line.ends_with('\n'), "{line:?}");
        let got: Json = serde_json::from_str(&line).expect("one JSON object");
        assert_eq!(
            got,
            serde_json::json!({
                "code": 503, "bytes": 345, "sni": null,
                "who": "spiffe://cluster.local/ns/demo/sa/client",
                "both": "503/URX", "tags": "a", "type": "text", "team": "shop",
                "n": {"attempts": 3}, "one": 1, "long": "/api/items!", "cut": "50"
            })
        );
    }

    #[test]
    fn text_commands_fall_back_cut_and_format_time() {
        let text = "%REQ(X-MISSING?:AUTHORITY)% %REQ(X-MISSING)% %START_TIME(%s)% \
                    %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %UPSTREAM_PEER_URI_SAN:14% \
                    %DOWNSTREAM_TLS_VERSION% %ENVIRONMENT(WARREN_NO_SUCH_VARIABLE)% %%";
        let format = LogFormat::Text(Template::parse(text).expect("parses"));
        assert_eq!(
            render(format),
            "app.demo.svc.cluster.local - 1765000000 10.0.0.1 spiffe://clust - - %"
        );
    }

    #[test]
    fn reads_say_what_requests_must_keep() {
        let reads = |text: &str| {
            AccessFormat::compile(LogFormat::Text(Template::parse(text).expect("parses")))
                .expect("compiles")
                .reads
        };
        let names = |names: &[&'static str]| {
            HeaderNeed::Some(
                names
                    .iter()
                    .map(|n| http::HeaderName::from_static(n))
                    .collect(),
            )
        };
        assert_eq!(reads("%RESPONSE_CODE% %DURATION%"), Reads::default());
        // The request's own fields: no headers copied for them.
        let own =
            reads("%REQ(:METHOD)% %REQ(:PATH)% %REQ(USER-AGENT)% %REQ(X-REQUEST-ID)% %PROTOCOL%");
        assert!(own.request && own.request_headers.is_none());
        // Only the headers named are kept.
        let some = reads("%REQ(X-A)% %REQ(:PATH?X-B)% %RESP(X-C)%");
        assert_eq!(some.request_headers, names(&["x-a", "x-b"]));
        assert_eq!(some.response_headers, names(&["x-c"]));
        assert_eq!(
            reads("%CEL(request.headers['a'])%").request_headers,
            HeaderNeed::All
        );
        assert!(reads("%TRAILER(GRPC-MESSAGE)%").response_trailers);
        // And keeping copies those alone, every value of each.
        let mut headers = HeaderMap::new();
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        headers.append("x-z", HeaderValue::from_static("3"));
        let kept = some.request_headers.keep(&headers).expect("kept");
        assert_eq!(kept.len(), 2);
        assert!(kept.get("x-z").is_none());
        assert!(HeaderNeed::None.keep(&headers).is_none());
    }

    #[test]
    fn the_user_agent_is_written_whatever_other_headers_are_kept() {
        let format = AccessFormat::compile(LogFormat::Text(
            Template::parse("%REQ(USER-AGENT)% %REQ(X-FORWARDED-FOR)% %UPSTREAM_CLUSTER%")
                .expect("parses"),
        ))
        .expect("compiles");
        assert!(
            format.reads.request,
            "the cluster's protocol needs the request"
        );
        let mut all = HeaderMap::new();
        all.insert("user-agent", HeaderValue::from_static("curl/8"));
        all.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.9"));
        all.insert("x-other", HeaderValue::from_static("no"));
        let request = RequestFacts {
            headers: format.reads.request_headers.keep(&all).unwrap_or_default(),
            ..request()
        };
        assert_eq!(request.headers.len(), 1, "only x-forwarded-for is copied");
        let response = HeaderMap::new();
        let facts = facts(&request, &response);
        let attributes = Attributes::of(&facts);
        assert_eq!(
            format.line(&facts, &attributes),
            "curl/8 10.0.0.9 inbound-vip|80|http|app.demo.svc.cluster.local"
        );
    }

    #[test]
    fn grpc_statuses_by_name_and_number() {
        let format = AccessFormat::compile(LogFormat::Text(
            Template::parse("%GRPC_STATUS% %GRPC_STATUS_NUMBER% %UPSTREAM_REMOTE_PORT%")
                .expect("parses"),
        ))
        .expect("compiles");
        let status = HeaderValue::from_static("5");
        let facts = Facts {
            grpc_status: Some(&status),
            upstream: Some(SocketAddr::from(([10, 1, 0, 7], 8080))),
            ..Facts::default()
        };
        let attributes = Attributes::of(&facts);
        assert_eq!(format.line(&facts, &attributes), "NotFound 5 8080");
    }

    #[test]
    fn a_path_without_its_query_and_details_with_their_spaces() {
        let text =
            "%REQ_WITHOUT_QUERY(:PATH)% %RESPONSE_CODE_DETAILS(ALLOW_WHITESPACES)% %TRACE_ID%";
        let format = LogFormat::Text(Template::parse(text).expect("parses"));
        assert_eq!(render(format), "/api/items upstream reset before headers -");
    }

    #[test]
    fn a_connection_has_no_request() {
        let facts = Facts {
            source: Some("10.0.0.1".parse().expect("an address")),
            server_name: Some("db.example.com"),
            request_bytes: 10,
            response_bytes: 20,
            flags: "-",
            ..Facts::default()
        };
        let attributes = Attributes::of(&facts);
        let format =
            AccessFormat::compile(LogFormat::of_mesh("", "").expect("a format")).expect("compiles");
        assert_eq!(
            format.line(&facts, &attributes),
            "[-] \"- - -\" 0 - - - \"-\" 10 20 - - \"-\" \"-\" \"-\" \"-\" \"-\" - - - 10.0.0.1:0 db.example.com -\n"
        );
    }
}
