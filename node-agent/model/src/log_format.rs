//! Access-line formats as Envoy writes them, which Istio's `logFormat`
//! (of an `envoyFileAccessLog` provider) and the mesh config's
//! `accessLogFormat` are written in: text with `%COMMAND(arg):N%`
//! substitutions, or labels written as one JSON object per line.
//!
//! This module reads the syntax and refuses what no proxy could write;
//! the waypoint fills the values in (`waypoint::telemetry::access_line`).

use std::fmt;

use serde_json::{Map, Value};

/// Istio's default text line (its `EnvoyTextLogFormat`).
pub const ISTIO_TEXT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

/// Istio's default JSON labels (its `EnvoyJSONLogFormatIstio`).
pub const ISTIO_JSON: [(&str, &str); 24] = [
    ("start_time", "%START_TIME%"),
    ("route_name", "%ROUTE_NAME%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("protocol", "%PROTOCOL%"),
    ("response_code", "%RESPONSE_CODE%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("response_code_details", "%RESPONSE_CODE_DETAILS%"),
    (
        "connection_termination_details",
        "%CONNECTION_TERMINATION_DETAILS%",
    ),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    ("duration", "%DURATION%"),
    (
        "upstream_service_time",
        "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    ),
    ("x_forwarded_for", "%REQ(X-FORWARDED-FOR)%"),
    ("user_agent", "%REQ(USER-AGENT)%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("authority", "%REQ(:AUTHORITY)%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER_RAW%"),
    ("upstream_local_address", "%UPSTREAM_LOCAL_ADDRESS%"),
    ("downstream_local_address", "%DOWNSTREAM_LOCAL_ADDRESS%"),
    ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    ("requested_server_name", "%REQUESTED_SERVER_NAME%"),
    (
        "upstream_transport_failure_reason",
        "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    ),
];

/// A whole access-line format.
#[derive(Clone, Debug, PartialEq)]
pub enum LogFormat {
    /// A text line; ends with a newline.
    Text(Template),
    /// One JSON object per line.
    Json(Labels),
}

/// JSON labels, by key (as JSON objects are read, and as Envoy writes
/// them).
#[derive(Clone, Debug, PartialEq)]
pub struct Labels(pub Vec<(String, Label)>);

/// One JSON label's value.
#[derive(Clone, Debug, PartialEq)]
pub enum Label {
    /// A string with substitutions. One substitution alone writes its value
    /// as it is typed (`%RESPONSE_CODE%` a number; a missing value `null`),
    /// as Envoy does.
    Template(Template),
    /// A number, boolean or null, written as given.
    Constant(Value),
    Nested(Labels),
    List(Vec<Label>),
}

/// Text with `%COMMAND%` substitutions.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Template(pub Vec<Piece>);

#[derive(Clone, Debug, PartialEq)]
pub enum Piece {
    Literal(String),
    /// A command's value, cut to `max_len` characters when given.
    Command {
        command: Command,
        max_len: Option<usize>,
    },
}

/// A header to read, with the one to read when it is absent
/// (`X-ENVOY-ORIGINAL-PATH?:PATH`). Lowercase; a pseudo-header keeps its
/// `:`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderRef {
    pub name: String,
    pub fallback: Option<String>,
}

/// The command operators Warren's proxies write.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// When the request began; a `strftime` format when given, else
    /// RFC 3339 with milliseconds, in UTC.
    StartTime(Option<String>),
    RequestHeader(HeaderRef),
    /// As `RequestHeader`, a path's query left out.
    RequestHeaderWithoutQuery(HeaderRef),
    ResponseHeader(HeaderRef),
    ResponseTrailer(HeaderRef),
    Protocol,
    ResponseCode,
    /// Spaces as `_` (Envoy's details are one token), unless
    /// `ALLOW_WHITESPACES` was asked for.
    ResponseCodeDetails {
        whitespace: bool,
    },
    ResponseFlags,
    ConnectionTerminationDetails,
    UpstreamTransportFailureReason,
    BytesReceived,
    BytesSent,
    /// Milliseconds from the request's start to its answer's end.
    Duration,
    UpstreamHost,
    UpstreamHostWithoutPort,
    UpstreamPort,
    /// The answer's gRPC status: its name (`OK`, `NotFound`, …), or its
    /// number.
    GrpcStatus {
        number: bool,
    },
    UpstreamCluster,
    UpstreamLocalAddress,
    UpstreamPeerUriSan,
    DownstreamLocalAddress,
    DownstreamLocalAddressWithoutPort,
    DownstreamLocalPort,
    DownstreamRemoteAddress,
    DownstreamRemoteAddressWithoutPort,
    DownstreamPeerUriSan,
    RequestedServerName,
    RouteName,
    UpstreamRequestAttemptCount,
    Hostname,
    /// An environment variable of the proxy.
    Environment(String),
    /// A CEL expression over the request's attributes.
    Cel(String),
    /// An operator Envoy has and Warren's proxies have no value for:
    /// written as `-` (`null` in JSON). As written, argument included.
    NotReported(String),
}

/// Envoy operators that need no argument, by name.
const PLAIN: [(&str, Command); 31] = [
    ("PROTOCOL", Command::Protocol),
    ("RESPONSE_CODE", Command::ResponseCode),
    (
        "RESPONSE_CODE_DETAILS",
        Command::ResponseCodeDetails { whitespace: false },
    ),
    ("RESPONSE_FLAGS", Command::ResponseFlags),
    (
        "CONNECTION_TERMINATION_DETAILS",
        Command::ConnectionTerminationDetails,
    ),
    (
        "UPSTREAM_TRANSPORT_FAILURE_REASON",
        Command::UpstreamTransportFailureReason,
    ),
    ("BYTES_RECEIVED", Command::BytesReceived),
    ("BYTES_SENT", Command::BytesSent),
    ("DURATION", Command::Duration),
    ("UPSTREAM_HOST", Command::UpstreamHost),
    ("UPSTREAM_REMOTE_ADDRESS", Command::UpstreamHost),
    (
        "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT",
        Command::UpstreamHostWithoutPort,
    ),
    ("UPSTREAM_REMOTE_PORT", Command::UpstreamPort),
    ("GRPC_STATUS", Command::GrpcStatus { number: false }),
    ("GRPC_STATUS_NUMBER", Command::GrpcStatus { number: true }),
    ("UPSTREAM_CLUSTER", Command::UpstreamCluster),
    ("UPSTREAM_CLUSTER_RAW", Command::UpstreamCluster),
    ("UPSTREAM_LOCAL_ADDRESS", Command::UpstreamLocalAddress),
    ("UPSTREAM_PEER_URI_SAN", Command::UpstreamPeerUriSan),
    ("DOWNSTREAM_LOCAL_ADDRESS", Command::DownstreamLocalAddress),
    (
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT",
        Command::DownstreamLocalAddressWithoutPort,
    ),
    ("DOWNSTREAM_LOCAL_PORT", Command::DownstreamLocalPort),
    (
        "DOWNSTREAM_REMOTE_ADDRESS",
        Command::DownstreamRemoteAddress,
    ),
    (
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT",
        Command::DownstreamRemoteAddressWithoutPort,
    ),
    (
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS",
        Command::DownstreamRemoteAddress,
    ),
    (
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT",
        Command::DownstreamRemoteAddressWithoutPort,
    ),
    ("DOWNSTREAM_PEER_URI_SAN", Command::DownstreamPeerUriSan),
    ("REQUESTED_SERVER_NAME", Command::RequestedServerName),
    ("ROUTE_NAME", Command::RouteName),
    (
        "UPSTREAM_REQUEST_ATTEMPT_COUNT",
        Command::UpstreamRequestAttemptCount,
    ),
    ("HOSTNAME", Command::Hostname),
];

/// Envoy operators accepted and written as `-`: a format written for
/// Envoy keeps working, with these empty (the waypoint warns once). Any
/// argument they take is read, not used.
const NOT_REPORTED: [&str; 58] = [
    "DYNAMIC_METADATA",
    "CLUSTER_METADATA",
    "UPSTREAM_METADATA",
    "METADATA",
    "FILTER_STATE",
    "UPSTREAM_FILTER_STATE",
    "TRACE_ID",
    "RESPONSE_FLAGS_LONG",
    "STREAM_ID",
    "UPSTREAM_CONNECTION_ID",
    "DOWNSTREAM_PEER_CERT",
    "DOWNSTREAM_PEER_URI_SAN_ALL",
    "UPSTREAM_PEER_SUBJECT",
    "UPSTREAM_TLS_VERSION",
    "DOWNSTREAM_LOCAL_URI_SAN",
    "REQUEST_DURATION",
    "REQUEST_TX_DURATION",
    "RESPONSE_DURATION",
    "RESPONSE_TX_DURATION",
    "ROUNDTRIP_DURATION",
    "UPSTREAM_WIRE_BYTES_SENT",
    "UPSTREAM_WIRE_BYTES_RECEIVED",
    "UPSTREAM_HEADER_BYTES_SENT",
    "UPSTREAM_HEADER_BYTES_RECEIVED",
    "DOWNSTREAM_WIRE_BYTES_SENT",
    "DOWNSTREAM_WIRE_BYTES_RECEIVED",
    "DOWNSTREAM_HEADER_BYTES_SENT",
    "DOWNSTREAM_HEADER_BYTES_RECEIVED",
    "UPSTREAM_TRANSPORT_FAILURE_TYPE",
    "DOWNSTREAM_TLS_VERSION",
    "DOWNSTREAM_TLS_CIPHER",
    "DOWNSTREAM_TLS_SESSION_ID",
    "DOWNSTREAM_PEER_SUBJECT",
    "DOWNSTREAM_PEER_ISSUER",
    "DOWNSTREAM_PEER_FINGERPRINT_256",
    "CONNECTION_ID",
    "VIRTUAL_CLUSTER_NAME",
    "UNIQUE_ID",
    "REQUEST_HEADERS_BYTES",
    "RESPONSE_HEADERS_BYTES",
    "RESPONSE_TRAILERS_BYTES",
    "UPSTREAM_TLS_CIPHER",
    "UPSTREAM_TLS_SESSION_ID",
    "UPSTREAM_PEER_ISSUER",
    "UPSTREAM_PEER_CERT",
    "UPSTREAM_LOCAL_PORT",
    "UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT",
    "UPSTREAM_HOST_NAME",
    "UPSTREAM_CONNECTION_POOL_READY_DURATION",
    "DOWNSTREAM_REMOTE_PORT",
    "DOWNSTREAM_DIRECT_REMOTE_PORT",
    "DOWNSTREAM_LOCAL_DNS_SAN",
    "DOWNSTREAM_PEER_DNS_SAN",
    "UPSTREAM_PEER_DNS_SAN",
    "DOWNSTREAM_TRANSPORT_FAILURE_REASON",
    "COMMON_DURATION",
    "LOCAL_REPLY_BODY",
    "ACCESS_LOG_TYPE",
];

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header = |f: &mut fmt::Formatter<'_>, op: &str, h: &HeaderRef| match &h.fallback {
            Some(other) => write!(f, "%{op}({}?{other})%", h.name),
            None => write!(f, "%{op}({})%", h.name),
        };
        match self {
            Command::StartTime(None) => f.write_str("%START_TIME%"),
            Command::StartTime(Some(format)) => write!(f, "%START_TIME({format})%"),
            Command::RequestHeader(h) => header(f, "REQ", h),
            Command::RequestHeaderWithoutQuery(h) => header(f, "REQ_WITHOUT_QUERY", h),
            Command::ResponseCodeDetails { whitespace: true } => {
                f.write_str("%RESPONSE_CODE_DETAILS(ALLOW_WHITESPACES)%")
            }
            Command::ResponseHeader(h) => header(f, "RESP", h),
            Command::ResponseTrailer(h) => header(f, "TRAILER", h),
            Command::Environment(name) => write!(f, "%ENVIRONMENT({name})%"),
            Command::Cel(expr) => write!(f, "%CEL({expr})%"),
            Command::NotReported(written) => write!(f, "%{written}%"),
            plain => {
                let name = PLAIN
                    .iter()
                    .find(|(_, c)| c == plain)
                    .map_or("?", |(name, _)| *name);
                write!(f, "%{name}%")
            }
        }
    }
}

impl Template {
    /// Reads Envoy's format string: `%%` is a `%`; `%NAME%`,
    /// `%NAME(arg)%` and either with `:N` before the closing `%` (cut to N
    /// characters) substitute.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(at) = rest.find('%') {
            literal.push_str(&rest[..at]);
            rest = &rest[at + 1..];
            if let Some(after) = rest.strip_prefix('%') {
                literal.push('%');
                rest = after;
                continue;
            }
            let (piece, after) = command(rest)?;
            if !literal.is_empty() {
                pieces.push(Piece::Literal(std::mem::take(&mut literal)));
            }
            pieces.push(piece);
            rest = after;
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        Ok(Template(pieces))
    }

    /// Its commands.
    pub fn commands(&self) -> impl Iterator<Item = &Command> {
        self.0.iter().filter_map(|p| match p {
            Piece::Command { command, .. } => Some(command),
            Piece::Literal(_) => None,
        })
    }

    /// The one command it is, when it is nothing else (a JSON label's value
    /// is then typed).
    pub fn single(&self) -> Option<(&Command, Option<usize>)> {
        match self.0.as_slice() {
            [Piece::Command { command, max_len }] => Some((command, *max_len)),
            _ => None,
        }
    }
}

/// One `%…%` after its opening `%`; the piece and what follows it.
fn command(text: &str) -> Result<(Piece, &str), String> {
    let name_len = text
        .bytes()
        .take_while(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_')
        .count();
    let name = &text[..name_len];
    if name.is_empty() {
        return Err(format!(
            "'%' at {:?} starts no command (write %% for a '%')",
            cut(text)
        ));
    }
    let mut rest = &text[name_len..];
    let mut argument = None;
    if let Some(inner) = rest.strip_prefix('(') {
        // The argument ends at the first ')' that closes the command (a
        // CEL expression may have parentheses of its own).
        let end = inner
            .match_indices(')')
            .map(|(i, _)| i)
            .find(|i| closes(&inner[i + 1..]))
            .ok_or_else(|| format!("%{name}(…: the argument has no closing \")%\""))?;
        argument = Some(&inner[..end]);
        rest = &inner[end + 1..];
    }
    let mut max_len = None;
    if let Some(after) = rest.strip_prefix(':') {
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        let len = after[..digits]
            .parse::<usize>()
            .map_err(|_| format!("%{name}: ':' must be followed by a length"))?;
        max_len = Some(len);
        rest = &after[digits..];
    }
    let Some(after) = rest.strip_prefix('%') else {
        return Err(format!("%{name}: no closing '%'"));
    };
    let command = resolve(name, argument)?;
    Ok((Piece::Command { command, max_len }, after))
}

/// Whether what follows a ')' ends the command: `%` or `:N%`.
fn closes(after: &str) -> bool {
    if after.starts_with('%') {
        return true;
    }
    after.strip_prefix(':').is_some_and(|rest| {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        digits > 0 && rest[digits..].starts_with('%')
    })
}

fn cut(text: &str) -> &str {
    match text.char_indices().nth(20) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

fn resolve(name: &str, argument: Option<&str>) -> Result<Command, String> {
    let needs = |what: &str| {
        argument
            .filter(|a| !a.is_empty())
            .ok_or_else(|| format!("%{name}% needs {what} in parentheses"))
    };
    let command = match name {
        "START_TIME" => {
            let format = argument.filter(|a| !a.is_empty());
            let translated = match format {
                Some(format) => {
                    Some(time_format(format).map_err(|e| format!("%START_TIME({format})%: {e}"))?)
                }
                None => None,
            };
            Command::StartTime(translated)
        }
        "REQ" => Command::RequestHeader(header(name, needs("a header name")?)?),
        "REQ_WITHOUT_QUERY" => {
            Command::RequestHeaderWithoutQuery(header(name, needs("a header name")?)?)
        }
        "RESPONSE_CODE_DETAILS" => match argument {
            None => Command::ResponseCodeDetails { whitespace: false },
            Some("ALLOW_WHITESPACES") => Command::ResponseCodeDetails { whitespace: true },
            Some(other) => {
                return Err(format!(
                    "%RESPONSE_CODE_DETAILS({other})%: the argument may be ALLOW_WHITESPACES"
                ));
            }
        },
        "RESP" => Command::ResponseHeader(header(name, needs("a header name")?)?),
        "TRAILER" => Command::ResponseTrailer(header(name, needs("a header name")?)?),
        "ENVIRONMENT" => Command::Environment(needs("a variable's name")?.to_owned()),
        "CEL" => {
            let expr = needs("an expression")?;
            crate::validate::telemetry::expression(expr).map_err(|e| format!("%CEL%: {e}"))?;
            Command::Cel(expr.to_owned())
        }
        _ if NOT_REPORTED.contains(&name) => Command::NotReported(match argument {
            Some(argument) => format!("{name}({argument})"),
            None => name.to_owned(),
        }),
        _ => {
            let command = PLAIN
                .iter()
                .find(|(known, _)| *known == name)
                .map(|(_, c)| c.clone())
                .ok_or_else(|| format!("%{name}% is not a command operator Warren knows"))?;
            if argument.is_some() {
                return Err(format!("%{name}% takes no argument"));
            }
            command
        }
    };
    Ok(command)
}

/// `NAME` or `NAME?FALLBACK`, each a header name or a pseudo-header.
fn header(op: &str, argument: &str) -> Result<HeaderRef, String> {
    let check = |name: &str| -> Result<String, String> {
        let lower = name.to_ascii_lowercase();
        let plain = lower.strip_prefix(':').unwrap_or(&lower);
        if http::HeaderName::from_bytes(plain.as_bytes()).is_err() {
            return Err(format!("%{op}({argument})%: {name:?} is not a header name"));
        }
        Ok(lower)
    };
    let (name, fallback) = match argument.split_once('?') {
        Some((name, fallback)) => (check(name)?, Some(check(fallback)?)),
        None => (check(argument)?, None),
    };
    Ok(HeaderRef { name, fallback })
}

/// Envoy's `strftime` format as the waypoint writes it (`jiff`'s), or why
/// it cannot be written. Envoy's own extensions are translated: `%E<n>S`
/// and `%E*S` (seconds with n or all fractional digits), `%Ez` (`+hh:mm`),
/// `%f` without a width (nine digits), `%Z` (`UTC`: start times are in
/// UTC).
fn time_format(format: &str) -> Result<String, String> {
    let mut out = String::with_capacity(format.len());
    let mut rest = format;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let directive = &rest[at + 1..];
        let (written, used) = match directive.as_bytes() {
            [b'E', b'*', b'S', ..] => ("%S%.f".to_owned(), 3),
            [b'E', b'0', b'S', ..] => ("%S".to_owned(), 3),
            [b'E', d, b'S', ..] if d.is_ascii_digit() => (format!("%S.%{}f", *d as char), 3),
            [b'E', b'z', ..] => ("%:z".to_owned(), 2),
            [b'f', ..] => ("%9f".to_owned(), 1),
            [b'Z', ..] => ("UTC".to_owned(), 1),
            [b'%', ..] => ("%%".to_owned(), 1),
            _ => ("%".to_owned(), 0),
        };
        out.push_str(&written);
        rest = &directive[used..];
    }
    out.push_str(rest);
    jiff::fmt::strtime::format(&out, jiff::Timestamp::UNIX_EPOCH)
        .map_err(|e| format!("not a strftime format: {e}"))?;
    Ok(out)
}

/// A label's value that is not a string at the top: a constant, nested
/// labels, or a list of values.
fn label(value: &Value) -> Result<Label, String> {
    Ok(match value {
        Value::String(text) => Label::Template(Template::parse(text)?),
        Value::Object(inner) => Label::Nested(Labels::parse(inner)?),
        Value::Array(items) => Label::List(items.iter().map(label).collect::<Result<_, _>>()?),
        constant => Label::Constant(constant.clone()),
    })
}

impl Labels {
    /// Istio's `labels`: each value a string with substitutions, a
    /// constant, or nested labels.
    pub fn parse(labels: &Map<String, Value>) -> Result<Labels, String> {
        let mut out = Vec::with_capacity(labels.len());
        for (key, value) in labels {
            let label = match value {
                Value::String(text) => {
                    Label::Template(Template::parse(text).map_err(|e| format!("{key}: {e}"))?)
                }
                Value::Object(inner) => {
                    Label::Nested(Labels::parse(inner).map_err(|e| format!("{key}.{e}"))?)
                }
                other => label(other).map_err(|e| format!("{key}: {e}"))?,
            };
            out.push((key.clone(), label));
        }
        Ok(Labels(out))
    }

    /// Istio's default JSON labels.
    pub fn istio() -> Labels {
        let labels = ISTIO_JSON
            .iter()
            .map(|(key, text)| {
                let template = Template::parse(text).unwrap_or_default();
                ((*key).to_owned(), Label::Template(template))
            })
            .collect();
        Labels(labels)
    }

    /// Every command of every label, nested ones included.
    pub fn commands(&self) -> Vec<&Command> {
        let mut all = Vec::new();
        for (_, label) in &self.0 {
            label.commands(&mut all);
        }
        all
    }
}

impl Label {
    fn commands<'l>(&'l self, all: &mut Vec<&'l Command>) {
        match self {
            Label::Template(t) => all.extend(t.commands()),
            Label::Nested(inner) => all.extend(inner.commands()),
            Label::List(items) => items.iter().for_each(|i| i.commands(all)),
            Label::Constant(_) => {}
        }
    }
}

impl LogFormat {
    /// An `envoyFileAccessLog` provider's `logFormat`: `text` or `labels`;
    /// Istio's default text line or JSON labels where the one given is
    /// empty, or neither is.
    pub fn of_provider(spec: &crate::istio::mesh::LogFormatSpec) -> Result<LogFormat, String> {
        match (&spec.text, &spec.labels) {
            (Some(_), Some(_)) => Err("only one of text and labels may be set".into()),
            (Some(text), None) if !text.is_empty() => Ok(LogFormat::Text(text_line(text)?)),
            (None, Some(labels)) if labels.is_empty() => Ok(LogFormat::Json(Labels::istio())),
            (None, Some(labels)) => Labels::parse(labels).map(LogFormat::Json),
            _ => text_line(ISTIO_TEXT).map(LogFormat::Text),
        }
    }

    /// The mesh config's `accessLogFormat` under its `accessLogEncoding`
    /// (`TEXT`, the default, or `JSON`); Istio's defaults where the format
    /// is empty.
    pub fn of_mesh(format: &str, encoding: &str) -> Result<LogFormat, String> {
        match encoding {
            "" | "TEXT" if format.is_empty() => text_line(ISTIO_TEXT).map(LogFormat::Text),
            "" | "TEXT" => text_line(format).map(LogFormat::Text),
            "JSON" if format.is_empty() => Ok(LogFormat::Json(Labels::istio())),
            "JSON" => {
                let labels: Map<String, Value> = serde_json::from_str(format)
                    .map_err(|e| format!("with JSON encoding, a JSON object of labels: {e}"))?;
                Labels::parse(&labels).map(LogFormat::Json)
            }
            other => Err(format!("{other:?} is not TEXT or JSON")),
        }
    }

    /// Every command it writes.
    pub fn commands(&self) -> Vec<&Command> {
        match self {
            LogFormat::Text(t) => t.commands().collect(),
            LogFormat::Json(labels) => labels.commands(),
        }
    }
}

/// A text format, ending with a newline as Istio ends it.
fn text_line(text: &str) -> Result<Template, String> {
    let mut template = Template::parse(text)?;
    if !text.ends_with('\n') {
        template.0.push(Piece::Literal("\n".to_owned()));
    }
    Ok(template)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(command: Command) -> Piece {
        Piece::Command {
            command,
            max_len: None,
        }
    }

    #[test]
    fn text_reads_commands_arguments_lengths_and_percent_signs() {
        let t = Template::parse(
            "[%START_TIME(%Y-%m-%dT%H:%M:%S%z)%] %REQ(X-ENVOY-ORIGINAL-PATH?:PATH):10% 100%% %CEL(size(request.headers['x']) > 2)%",
        )
        .expect("parses");
        assert_eq!(
            t.0,
            vec![
                Piece::Literal("[".into()),
                op(Command::StartTime(Some("%Y-%m-%dT%H:%M:%S%z".into()))),
                Piece::Literal("] ".into()),
                Piece::Command {
                    command: Command::RequestHeader(HeaderRef {
                        name: "x-envoy-original-path".into(),
                        fallback: Some(":path".into()),
                    }),
                    max_len: Some(10),
                },
                Piece::Literal(" 100% ".into()),
                op(Command::Cel("size(request.headers['x']) > 2".into())),
            ]
        );
    }

    #[test]
    fn istio_defaults_parse_whole() {
        let LogFormat::Text(text) = LogFormat::of_mesh("", "").expect("text") else {
            panic!("not text");
        };
        assert_eq!(text.commands().count(), 24);
        assert!(
            text.commands()
                .all(|c| !matches!(c, Command::NotReported(_)))
        );
        let LogFormat::Json(labels) = LogFormat::of_mesh("", "JSON").expect("json") else {
            panic!("not JSON");
        };
        assert_eq!(labels.0.len(), ISTIO_JSON.len());
        assert_eq!(labels.commands().len(), ISTIO_JSON.len());
        // Each label is exactly one command: written typed.
        assert!(
            labels
                .0
                .iter()
                .all(|(_, l)| matches!(l, Label::Template(t) if t.single().is_some()))
        );
    }

    #[test]
    fn mistakes_are_named() {
        let cases = [
            ("%FOO%", "%FOO% is not a command operator Warren knows"),
            (
                "%RESPONSE_CODE_DETAILS(X)%",
                "the argument may be ALLOW_WHITESPACES",
            ),
            ("%REQ%", "%REQ% needs a header name"),
            ("%REQ()%", "%REQ% needs a header name"),
            ("%REQ(bad header)%", "\"bad header\" is not a header name"),
            ("%DURATION(x)%", "%DURATION% takes no argument"),
            ("%DURATION", "%DURATION: no closing '%'"),
            ("%REQ(x", "the argument has no closing"),
            ("% x", "starts no command"),
            ("%BYTES_SENT:x%", "':' must be followed by a length"),
            ("%CEL(nope.x)%", "which a proxy does not know"),
            ("%START_TIME(%K)%", "not a strftime format"),
            ("%START_TIME(%Y%)%", "not a strftime format"),
        ];
        for (text, want) in cases {
            let error = Template::parse(text).expect_err(text);
            assert!(error.contains(want), "{text:?}: {error:?} lacks {want:?}");
        }
    }

    #[test]
    fn mesh_formats_follow_the_encoding() {
        let LogFormat::Json(labels) = LogFormat::of_mesh(
            r#"{"code":"%RESPONSE_CODE%","n":{"d":"%DURATION%"},"k":7}"#,
            "JSON",
        )
        .expect("json") else {
            panic!("not JSON");
        };
        assert_eq!(
            labels.commands(),
            vec![&Command::ResponseCode, &Command::Duration]
        );
        // In key order, as JSON objects are read.
        let keys: Vec<&str> = labels.0.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["code", "k", "n"]);
        assert!(matches!(&labels.0[1].1, Label::Constant(v) if v == 7));
        let error = LogFormat::of_mesh("%RESPONSE_CODE%", "JSON").expect_err("not JSON");
        assert!(error.contains("a JSON object of labels"), "{error}");
        let error = LogFormat::of_mesh("", "YAML").expect_err("no such encoding");
        assert!(error.contains("\"YAML\" is not TEXT or JSON"), "{error}");
        let LogFormat::Text(text) = LogFormat::of_mesh("%RESPONSE_CODE%", "TEXT").expect("text")
        else {
            panic!("not text");
        };
        assert_eq!(text.0.last(), Some(&Piece::Literal("\n".into())));
    }

    #[test]
    fn envoys_time_extensions_are_translated() {
        for (envoy, written) in [
            ("%Y-%m-%dT%H:%M:%E3SZ", "%Y-%m-%dT%H:%M:%S.%3fZ"),
            ("%s.%f %Ez %Z %%", "%s.%9f %:z UTC %%"),
            ("%E*S", "%S%.f"),
        ] {
            let t = Template::parse(&format!("%START_TIME({envoy})%")).expect(envoy);
            assert_eq!(
                t.0,
                vec![op(Command::StartTime(Some(written.into())))],
                "{envoy}"
            );
        }
    }

    #[test]
    fn empty_provider_formats_are_istios() {
        use crate::istio::mesh::LogFormatSpec;
        let text = |spec: LogFormatSpec| match LogFormat::of_provider(&spec) {
            Ok(LogFormat::Text(t)) => t.commands().count(),
            other => panic!("not text: {other:?}"),
        };
        assert_eq!(text(LogFormatSpec::default()), 24);
        assert_eq!(
            text(LogFormatSpec {
                text: Some(String::new()),
                labels: None
            }),
            24
        );
        let empty = LogFormatSpec {
            text: None,
            labels: Some(Map::new()),
        };
        assert!(matches!(
            LogFormat::of_provider(&empty),
            Ok(LogFormat::Json(labels)) if labels == Labels::istio()
        ));
    }

    #[test]
    fn envoys_other_operators_are_accepted_and_lists_are_labels() {
        let t = Template::parse(
            "%DYNAMIC_METADATA(istio.mixer:status):20% %TRACE_ID% %REQ_WITHOUT_QUERY(:PATH)% %RESPONSE_CODE_DETAILS(ALLOW_WHITESPACES)%",
        )
        .expect("parses");
        let printed: Vec<String> = t.commands().map(ToString::to_string).collect();
        assert_eq!(
            printed,
            [
                "%DYNAMIC_METADATA(istio.mixer:status)%",
                "%TRACE_ID%",
                "%REQ_WITHOUT_QUERY(:path)%",
                "%RESPONSE_CODE_DETAILS(ALLOW_WHITESPACES)%"
            ]
        );
        let LogFormat::Json(labels) = LogFormat::of_mesh(
            r#"{"codes": ["%RESPONSE_CODE%", 1, {"f": "%RESPONSE_FLAGS%"}]}"#,
            "JSON",
        )
        .expect("a list") else {
            panic!("not JSON");
        };
        assert_eq!(
            labels.commands(),
            vec![&Command::ResponseCode, &Command::ResponseFlags]
        );
    }

    #[test]
    fn commands_print_as_written() {
        let text = "%REQ(:authority)% %RESP(x-a?x-b)% %UPSTREAM_CLUSTER_RAW% %ROUTE_NAME% %DOWNSTREAM_TLS_VERSION%";
        let printed: Vec<String> = Template::parse(text)
            .expect("parses")
            .commands()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            printed,
            [
                "%REQ(:authority)%",
                "%RESP(x-a?x-b)%",
                "%UPSTREAM_CLUSTER%",
                "%ROUTE_NAME%",
                "%DOWNSTREAM_TLS_VERSION%"
            ]
        );
    }
}
