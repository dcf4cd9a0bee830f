//! CEL expressions of Telemetry objects, and the attributes of a request
//! they read, by Envoy's names (`request.headers['x-user']`,
//! `response.code`, `source.address`, …).
//!
//! Only the top-level attributes an expression names are built, once per
//! request whatever the number of expressions; an attribute the request
//! does not have (`response` of a TCP connection) is an empty map. An
//! expression that fails (a header that is not there, a comparison of
//! unlike types) is false for a filter and `unknown` for a label, as Envoy
//! treats it.

use std::{
    cell::OnceCell,
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, LazyLock},
    time::{Duration, SystemTime},
};

use cel::{Context, Env, Program, Value, objects::Key};
use http::{HeaderMap, HeaderValue};

/// The standard CEL environment, built once.
static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| Arc::new(Env::stdlib()));

/// A compiled expression with the attributes it reads.
#[derive(Clone)]
pub struct Expr {
    text: Arc<str>,
    program: Arc<Program>,
    /// Which of [`warren_model::validate::telemetry::ATTRIBUTES`] it reads.
    reads: Vec<&'static str>,
    /// Whether it may read headers (`request.headers`, `response.headers`):
    /// only then are they kept for it.
    reads_headers: bool,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Expr").field(&self.text).finish()
    }
}

impl Expr {
    /// Compiles `text`, refusing attributes a request does not have.
    pub fn compile(text: &str) -> Result<Expr, String> {
        let program = warren_model::validate::telemetry::expression(text)?;
        let references = program.references();
        let reads = warren_model::validate::telemetry::ATTRIBUTES
            .into_iter()
            .filter(|a| references.has_variable(a))
            .collect();
        Ok(Expr {
            text: Arc::from(text),
            program: Arc::new(program),
            reads,
            reads_headers: text.contains("headers"),
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether it reads the top-level attribute `root`.
    pub fn reads(&self, root: &str) -> bool {
        self.reads.contains(&root)
    }

    /// Whether it reads `root`'s headers.
    pub fn reads_headers_of(&self, root: &str) -> bool {
        self.reads_headers && self.reads(root)
    }

    fn evaluate(&self, attributes: &Attributes<'_, '_>) -> Option<Value> {
        let mut context = Context::with_env(Arc::clone(&ENV));
        for root in &self.reads {
            let value: Box<dyn cel::common::value::Val> =
                attributes.get(root).clone().try_into().ok()?;
            context.add_variable_as_val(*root, value);
        }
        self.program.execute(&context).ok()
    }

    /// As a filter: true only when it evaluates to `true`.
    pub fn holds(&self, attributes: &Attributes<'_, '_>) -> bool {
        matches!(self.evaluate(attributes), Some(Value::Bool(true)))
    }

    /// As an access line's value: its text; `None` when it fails or is
    /// null.
    pub fn text_value(&self, attributes: &Attributes<'_, '_>) -> Option<String> {
        match self.evaluate(attributes)? {
            Value::String(s) => Some(s.to_string()),
            Value::Int(i) => Some(i.to_string()),
            Value::UInt(u) => Some(u.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// As a label's value: its text; `unknown` when it fails.
    pub fn label(&self, attributes: &Attributes<'_, '_>) -> String {
        self.text_value(attributes)
            .unwrap_or_else(|| "unknown".to_owned())
    }
}

/// What a request kept for expressions that read `request.*`.
#[derive(Clone, Debug, Default)]
pub struct RequestFacts {
    pub headers: HeaderMap,
    /// Path and query, as sent.
    pub path: String,
    pub host: String,
    pub scheme: String,
    pub method: String,
    /// `HTTP/1.1`, `HTTP/2`.
    pub protocol: &'static str,
    /// Kept apart from `headers`, which are kept only for an expression
    /// that reads them.
    pub referer: String,
    pub useragent: String,
}

#[cfg(test)]
impl RequestFacts {
    /// What tests read of a request: `GET /api/items?page=2` from curl,
    /// with `x-user: jason` and `x-tag` sent twice (`a`, `b`).
    pub(crate) fn example() -> RequestFacts {
        let mut headers = HeaderMap::new();
        headers.insert("user-agent", HeaderValue::from_static("curl/8"));
        headers.insert("x-user", HeaderValue::from_static("jason"));
        headers.append("x-tag", HeaderValue::from_static("a"));
        headers.append("x-tag", HeaderValue::from_static("b"));
        RequestFacts {
            headers,
            path: "/api/items?page=2".into(),
            host: "app.demo.svc.cluster.local".into(),
            scheme: "http".into(),
            method: "GET".into(),
            protocol: "HTTP/1.1",
            referer: String::new(),
            useragent: "curl/8".into(),
        }
    }
}

/// Everything an expression may read of one request (or connection, whose
/// `request` and `response` are absent).
#[derive(Default)]
pub struct Facts<'a> {
    pub request: Option<&'a RequestFacts>,
    pub request_id: Option<&'a str>,
    /// Bytes of the request's body.
    pub request_bytes: u64,
    /// None for a TCP connection.
    pub response_code: Option<u16>,
    pub response_headers: Option<&'a HeaderMap>,
    pub response_bytes: u64,
    pub grpc_status: Option<&'a HeaderValue>,
    pub flags: &'a str,
    pub source: Option<IpAddr>,
    /// The peer's SPIFFE URI (`spiffe://td/ns/NS/sa/SA`).
    pub principal: Option<String>,
    /// The address and port the client dialled.
    pub destination: Option<SocketAddr>,
    pub upstream: Option<SocketAddr>,
    /// A TLS hello's server name (TCP connections).
    pub server_name: Option<&'a str>,
    // What access-line formats read besides.
    /// When it began.
    pub start: Option<SystemTime>,
    /// From its start to the end of its answer (or of the connection).
    pub duration: Option<Duration>,
    /// The route that took it.
    pub route: Option<&'a str>,
    /// Why it was refused or failed, in words.
    pub details: Option<&'a str>,
    /// Tries upstream.
    pub attempts: Option<u32>,
    /// The Service it was addressed to (its hostname).
    pub service: Option<&'a str>,
    /// The answering workload's SPIFFE URI.
    pub upstream_principal: Option<String>,
    pub response_trailers: Option<&'a HeaderMap>,
}

/// [`Facts`] as expressions read them: each top-level attribute built the
/// first time one is read, then shared by every expression of the request.
pub struct Attributes<'f, 'a> {
    facts: &'f Facts<'a>,
    /// By their index in [`warren_model::validate::telemetry::ATTRIBUTES`].
    built: [OnceCell<Value>; 6],
}

impl<'f, 'a> Attributes<'f, 'a> {
    pub fn of(facts: &'f Facts<'a>) -> Self {
        Attributes {
            facts,
            built: Default::default(),
        }
    }

    /// The top-level attribute `root`, built the first time it is read; an
    /// empty map when the request has none.
    fn get(&self, root: &str) -> &Value {
        let index = warren_model::validate::telemetry::ATTRIBUTES
            .iter()
            .position(|a| *a == root)
            .unwrap_or(0);
        self.built[index].get_or_init(|| {
            self.facts
                .build(root)
                .unwrap_or_else(|| Value::from(HashMap::<Key, Value>::new()))
        })
    }
}

fn map(entries: Vec<(&str, Value)>) -> Value {
    let map: HashMap<Key, Value> = entries
        .into_iter()
        .map(|(k, v)| (Key::from(k.to_owned()), v))
        .collect();
    Value::from(map)
}

fn text(s: &str) -> Value {
    Value::String(Arc::new(s.to_owned()))
}

fn headers(headers: &HeaderMap) -> Value {
    let mut joined: HashMap<Key, Value> = HashMap::new();
    for name in headers.keys() {
        // Several values of one header read as one, comma-separated (as
        // Envoy joins them).
        let values: Vec<&str> = headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        joined.insert(Key::from(name.as_str().to_owned()), text(&values.join(",")));
    }
    Value::from(joined)
}

fn address(entries: &mut Vec<(&str, Value)>, addr: SocketAddr) {
    entries.push(("address", text(&addr.to_string())));
    entries.push(("port", Value::Int(i64::from(addr.port()))));
}

impl Facts<'_> {
    /// `root` of this request; `None` when it has none (`response` of a TCP
    /// connection).
    fn build(&self, root: &str) -> Option<Value> {
        let value = match root {
            "request" => {
                let request = self.request?;
                let (url_path, _) = request.path.split_once('?').unwrap_or((&request.path, ""));
                map(vec![
                    ("path", text(&request.path)),
                    ("url_path", text(url_path)),
                    ("host", text(&request.host)),
                    ("scheme", text(&request.scheme)),
                    ("method", text(&request.method)),
                    ("headers", headers(&request.headers)),
                    ("referer", text(&request.referer)),
                    ("useragent", text(&request.useragent)),
                    ("id", text(self.request_id.unwrap_or_default())),
                    ("protocol", text(request.protocol)),
                    ("size", Value::Int(saturating(self.request_bytes))),
                ])
            }
            "response" => {
                let code = self.response_code?;
                let mut entries = vec![
                    ("code", Value::Int(i64::from(code))),
                    ("flags", text(self.flags)),
                    ("size", Value::Int(saturating(self.response_bytes))),
                    (
                        "headers",
                        self.response_headers
                            .map_or_else(|| Value::from(HashMap::<Key, Value>::new()), headers),
                    ),
                ];
                if let Some(status) = self
                    .grpc_status
                    .and_then(|v| v.to_str().ok()?.parse::<i64>().ok())
                {
                    entries.push(("grpc_status", Value::Int(status)));
                }
                map(entries)
            }
            "source" => {
                let mut entries = Vec::new();
                if let Some(ip) = self.source {
                    entries.push(("address", text(&ip.to_string())));
                }
                map(entries)
            }
            "destination" => {
                let mut entries = Vec::new();
                if let Some(addr) = self.destination {
                    address(&mut entries, addr);
                }
                map(entries)
            }
            "upstream" => {
                let mut entries = Vec::new();
                if let Some(addr) = self.upstream {
                    address(&mut entries, addr);
                }
                map(entries)
            }
            "connection" => {
                let mut entries = vec![("mtls", Value::Bool(true))];
                if let Some(principal) = &self.principal {
                    entries.push(("uri_san_peer_certificate", text(principal)));
                }
                if let Some(name) = self.server_name {
                    entries.push(("requested_server_name", text(name)));
                }
                map(entries)
            }
            _ => return None,
        };
        Some(value)
    }
}

fn saturating(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
