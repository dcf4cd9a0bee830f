//! `istio.mesh.v1alpha1.MeshConfig`, the mesh-wide settings Istio keeps as
//! YAML under the `mesh` key of the `istio` ConfigMap in its root namespace.
//!
//! Warren reads its `extensionProviders` (the external authorizers that
//! CUSTOM AuthorizationPolicies name; the access-log, Prometheus and tracing
//! providers Telemetry objects name) and `defaultProviders`. Its other
//! settings have node-agent flags (`--trust-domain`, `--outbound-policy`, …)
//! and are left as they are, so a cluster's existing ConfigMap is read
//! unchanged.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, de::Error as _};

/// The ConfigMap key Istio keeps the mesh config under.
pub const MESH_KEY: &str = "mesh";

/// The part of MeshConfig Warren acts on.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MeshConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extension_providers: Vec<ExtensionProvider>,
    /// The telemetry providers in force where no Telemetry names any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_providers: Option<DefaultProviders>,
    /// Where proxies write access lines when no Telemetry or default
    /// provider says: empty for none. Unset: Warren's default, a line per
    /// request on the waypoint's log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log_file: Option<String>,
    /// The line's format under `accessLogEncoding`; Istio's when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub access_log_format: String,
    /// `TEXT` (the default) or `JSON`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub access_log_encoding: String,
    /// Istio's other settings: read so the YAML parses, not acted on.
    #[serde(flatten, skip_serializing)]
    pub other: BTreeMap<String, serde_yaml::Value>,
}

/// One named provider. Exactly one kind is set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionProvider {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoy_ext_authz_http: Option<ExtAuthzHttp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoy_ext_authz_grpc: Option<ExtAuthzGrpc>,
    /// An access log written to a file (the waypoint writes its access
    /// lines to stdout: `/dev/stdout` is the one path it honours).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoy_file_access_log: Option<FileAccessLog>,
    /// The proxies' Prometheus metrics (`/metrics`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<Prometheus>,
    /// A Zipkin collector, which waypoints send their spans to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zipkin: Option<Zipkin>,
    /// An OpenTelemetry collector (OTLP over gRPC, or over HTTP with
    /// `http`), which waypoints send their spans to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opentelemetry: Option<OpenTelemetry>,
    /// Other tracing, logging and metrics providers (`zipkin`,
    /// `opentelemetry`, `envoyOtelAls`, …), which Telemetry objects may
    /// name and Warren does not send to: kept so a mesh config that has
    /// them still parses.
    #[serde(flatten, skip_serializing)]
    pub other: BTreeMap<String, serde_yaml::Value>,
}

/// The provider kinds Istio defines besides the external authorizers;
/// any other key is a mistake worth refusing.
pub const OTHER_PROVIDER_KINDS: &[&str] = &[
    "lightstep",
    "datadog",
    "stackdriver",
    "opencensus",
    "skywalking",
    "envoyHttpAls",
    "envoyTcpAls",
    "envoyOtelAls",
    "sds",
];

/// `EnvoyExternalAuthorizationHttpProvider`: ask an HTTP service, whose
/// answer 200 allows and any other answer denies.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtAuthzHttp {
    /// `[<namespace>/]<hostname>`: a Service's or ServiceEntry's host.
    #[serde(default)]
    pub service: String,
    #[serde(default, deserialize_with = "number_or_text")]
    pub port: u32,
    /// How long to wait for the answer (Istio's default: 600s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Put before the request's path in the check request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Allow the request when the service cannot be asked.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fail_open: bool,
    /// The status a request gets when the service cannot be asked (and
    /// `failOpen` is false); `"403"` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_on_error: Option<String>,
    /// The request's headers (patterns) the check request carries, besides
    /// the ones it always does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include_request_headers_in_check: Vec<String>,
    /// Istio's deprecated name for `includeRequestHeadersInCheck`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include_headers_in_check: Vec<String>,
    /// Fixed headers added to the check request.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub include_additional_headers_in_check: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_request_body_in_check: Option<BodyInCheck>,
    /// Headers of an allowing answer (patterns) set on the request sent on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers_to_upstream_on_allow: Vec<String>,
    /// Headers of a denying answer (patterns) the client gets; all of them
    /// when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers_to_downstream_on_deny: Vec<String>,
    /// Headers of an allowing answer (patterns) added to the response the
    /// client gets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers_to_downstream_on_allow: Vec<String>,
}

/// `EnvoyExternalAuthorizationGrpcProvider`: ask a gRPC service
/// `envoy.service.auth.v3.Authorization`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtAuthzGrpc {
    #[serde(default)]
    pub service: String,
    #[serde(default, deserialize_with = "number_or_text")]
    pub port: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fail_open: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_on_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_request_body_in_check: Option<BodyInCheck>,
}

/// How much of the request's body the check carries.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BodyInCheck {
    /// At most this many bytes are buffered for the check.
    #[serde(default, deserialize_with = "number_or_text")]
    pub max_request_bytes: u32,
    /// A longer body is sent cut to `maxRequestBytes`, rather than the
    /// request refused with 413.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_partial_message: bool,
    /// gRPC: the body as bytes (`raw_body`) rather than as text.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pack_as_bytes: bool,
}

/// `defaultProviders`: the providers a level without Telemetry (or a
/// Telemetry entry naming none) uses.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DefaultProviders {
    /// Empty: `prometheus`, as in Istio's default mesh config (a repeated
    /// field merged over the default cannot be emptied).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tracing: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_logging: Vec<String>,
}

/// The provider Istio's default mesh config defines for metrics.
pub const PROMETHEUS: &str = "prometheus";

/// The provider Istio's default mesh config defines for access logs: a
/// file access log to `/dev/stdout`.
pub const ENVOY: &str = "envoy";

/// The access-log paths a Warren proxy writes to: its standard streams.
pub const STDOUT: &str = "/dev/stdout";
pub const STDERR: &str = "/dev/stderr";

/// Where access lines go: one of the proxy's standard streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    /// The stream a path names; `None` for a file.
    pub fn of_path(path: &str) -> Option<Stream> {
        match path {
            "" | STDOUT => Some(Stream::Stdout),
            STDERR => Some(Stream::Stderr),
            _ => None,
        }
    }
}

/// `EnvoyFileAccessLogProvider`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileAccessLog {
    /// Empty: `/dev/stdout`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// The line's format; Warren's own line when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormatSpec>,
}

/// `EnvoyFileAccessLogProvider.LogFormat`: one of the two.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogFormatSpec {
    /// Envoy's text format (`%COMMAND%` substitutions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Written as one JSON object per line; each value may substitute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<serde_json::Map<String, serde_json::Value>>,
}

/// `ZipkinTracingProvider`: spans sent as Zipkin's JSON (v2).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Zipkin {
    /// `[<namespace>/]<hostname>` of the collector.
    #[serde(default)]
    pub service: String,
    #[serde(default, deserialize_with = "number_or_text")]
    pub port: u32,
    /// The longest a tag's value may be (Istio's default: 256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tag_length: Option<u32>,
    /// New trace ids of 64 bits rather than 128.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub enable_64bit_trace_id: bool,
    /// Where spans are posted; `/api/v2/spans` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Sent with each post.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HttpHeader>,
    /// Other newer settings: read, not used.
    #[serde(flatten, skip_serializing)]
    pub other: BTreeMap<String, serde_yaml::Value>,
}

/// A header a provider sends with each call to its service: a value, or
/// one read from the proxy's environment. Other fields (newer Istio's) are
/// read and not used; one with neither value is refused.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HttpHeader {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The environment variable the value is read from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_name: Option<String>,
}

/// `OpenTelemetryTracingProvider`: spans sent as OTLP.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OpenTelemetry {
    /// `[<namespace>/]<hostname>` of the collector.
    #[serde(default)]
    pub service: String,
    #[serde(default, deserialize_with = "number_or_text")]
    pub port: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tag_length: Option<u32>,
    /// OTLP over HTTP (protobuf) rather than gRPC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<OtlpHttp>,
    /// OTLP over gRPC (the default): its timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<OtlpGrpc>,
    /// `resourceDetectors`, samplers: read, not used.
    #[serde(flatten, skip_serializing)]
    pub other: BTreeMap<String, serde_yaml::Value>,
}

/// `OpenTelemetryTracingProvider.grpc`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OtlpGrpc {
    /// How long an export may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Sent with each export, as headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub initial_metadata: Vec<HttpHeader>,
    /// Newer settings: read, not used.
    #[serde(flatten, skip_serializing)]
    pub other: BTreeMap<String, serde_yaml::Value>,
}

/// `OpenTelemetryTracingProvider.http`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OtlpHttp {
    /// Where spans are posted; `/v1/traces` when unset (a path without its
    /// leading `/` gets one, as Istio joins it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// How long a post may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Sent with each post.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HttpHeader>,
    /// Newer settings: read, not used.
    #[serde(flatten, skip_serializing)]
    pub other: BTreeMap<String, serde_yaml::Value>,
}

/// `PrometheusMetricsProvider`: no settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Prometheus {}

/// Which kind of external authorizer a provider is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthzProtocol {
    Http,
    Grpc,
}

impl FileAccessLog {
    /// The stream its lines go to; `None` for a file.
    pub fn stream(&self) -> Option<Stream> {
        Stream::of_path(&self.path)
    }
}

impl ExtensionProvider {
    /// The external authorizer's protocol, if the provider is one.
    pub fn authz_protocol(&self) -> Option<AuthzProtocol> {
        match (&self.envoy_ext_authz_http, &self.envoy_ext_authz_grpc) {
            (Some(_), _) => Some(AuthzProtocol::Http),
            (None, Some(_)) => Some(AuthzProtocol::Grpc),
            (None, None) => None,
        }
    }

    /// `(service, port)` of an external authorizer.
    pub fn authz_service(&self) -> Option<(&str, u32)> {
        match (&self.envoy_ext_authz_http, &self.envoy_ext_authz_grpc) {
            (Some(http), _) => Some((&http.service, http.port)),
            (None, Some(grpc)) => Some((&grpc.service, grpc.port)),
            (None, None) => None,
        }
    }
}

/// Splits a provider's `service` into its optional namespace and its host.
pub fn split_service(service: &str) -> (Option<&str>, &str) {
    match service.split_once('/') {
        Some((namespace, host)) => (Some(namespace), host),
        None => (None, service),
    }
}

/// A number, or a number written as text: Istio reads the mesh config as
/// protobuf JSON, which takes both (its docs write `port: "8000"`).
fn number_or_text<'de, D: Deserializer<'de>>(de: D) -> Result<u32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Number(u32),
        Text(String),
    }
    match Either::deserialize(de)? {
        Either::Number(n) => Ok(n),
        Either::Text(text) => text
            .trim()
            .parse()
            .map_err(|_| D::Error::custom(format!("{text:?} is not a number"))),
    }
}
