//! The Telemetry API as a waypoint applies it: which access lines it writes,
//! how it counts requests, and which it traces and where their spans go,
//! per Service.
//!
//! Telemetry objects come in layers, merged as Istio merges them for a proxy
//! receiving requests (mode `SERVER`): the root namespace's namespace-wide
//! one (the mesh's), then the waypoint's namespace's, then those attached by
//! `targetRefs` to this waypoint or to the request's Service, oldest first.
//! A later layer overrides an earlier one, provider by provider; an entry
//! that names no provider uses the previous level's (at the top, the mesh
//! config's `defaultProviders`).
//!
//! Only what this proxy reports can be shaped:
//! - access lines go to stdout, so a provider counts as this log when it is
//!   the built-in `envoy` or an `envoyFileAccessLog` writing to
//!   `/dev/stdout`; others (OpenTelemetry, gRPC ALS, other files) are not
//!   sent to. A provider's `logFormat` (for `envoy`, the mesh config's
//!   `accessLogFormat` and `accessLogEncoding`) gives the line's format
//!   ([`access_line`]); a provider without one writes Istio's text line,
//!   and `envoy` without a mesh format the waypoint's own line;
//! - metrics are the Prometheus ones (`prometheus`, built in, or a provider
//!   of that kind): the four `istio_request*` families;
//! - spans go to a `zipkin` provider (Zipkin's JSON, v2) or an
//!   `opentelemetry` one (OTLP over gRPC or HTTP); the waypoint starts
//!   traces for requests that come without one, samples them, and reports
//!   its own span of each sampled request ([`TracingPlan`]).
//!
//! Without any Telemetry or default provider for access logging, the mesh
//! config's `accessLogFile` decides: unset, the waypoint writes its own
//! line per request ([`AccessLog::Default`]); empty, none; `/dev/stdout`,
//! a line in the mesh's format.

pub mod access_line;
pub mod attributes;
pub mod otlp;
pub mod span;
#[cfg(test)]
mod tests;
pub mod zipkin;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use warren_model::{
    istio::{
        mesh::{ENVOY, ExtensionProvider, HttpHeader, PROMETHEUS, Stream, split_service},
        telemetry::{
            AccessLogging, CustomTag, IstioMetric, MetricSelector, Metrics, ProviderRef,
            TagOperation, TelemetrySpec,
        },
    },
    log_format::LogFormat,
};

use crate::attachment::applies;
pub use access_line::{AccessFormat, HeaderNeed};
pub use attributes::{Attributes, Expr, Facts};

/// A Telemetry as the agent sent it, its expressions compiled.
#[derive(Clone, Debug)]
pub struct TelemetryInput {
    pub namespace: String,
    pub name: String,
    pub created: i64,
    pub namespace_wide: bool,
    pub mesh_wide: bool,
    /// Attached to this waypoint by a targetRef to its Gateway.
    pub waypoint: bool,
    /// Services of `namespace` it is attached to.
    pub services: Vec<String>,
    pub spec: TelemetrySpec,
    /// `accessLogging[i].filter`, compiled.
    pub filters: Vec<Option<Expr>>,
    /// `metrics[i].overrides[j].tagOverrides[tag].value`, compiled.
    pub tag_values: BTreeMap<(usize, usize, String), Expr>,
}

impl TelemetryInput {
    /// Compiles `spec`'s expressions; the error names the one that fails.
    pub fn compile(
        namespace: String,
        name: String,
        spec: TelemetrySpec,
    ) -> Result<TelemetryInput, String> {
        let mut filters = Vec::new();
        for (i, logging) in spec.access_logging.iter().enumerate() {
            filters.push(match &logging.filter {
                Some(filter) => Some(
                    Expr::compile(&filter.expression)
                        .map_err(|e| format!("accessLogging[{i}].filter.expression: {e}"))?,
                ),
                None => None,
            });
        }
        let mut tag_values = BTreeMap::new();
        for (i, metrics) in spec.metrics.iter().enumerate() {
            for (j, o) in metrics.overrides.iter().enumerate() {
                for (tag, change) in &o.tag_overrides {
                    if let (TagOperation::Upsert, Some(value)) = (change.operation, &change.value) {
                        let expr = Expr::compile(value).map_err(|e| {
                            format!("metrics[{i}].overrides[{j}].tagOverrides.{tag}.value: {e}")
                        })?;
                        tag_values.insert((i, j, tag.clone()), expr);
                    }
                }
            }
        }
        Ok(TelemetryInput {
            namespace,
            name,
            created: 0,
            namespace_wide: false,
            mesh_wide: false,
            waypoint: false,
            services: Vec::new(),
            spec,
            filters,
            tag_values,
        })
    }

    fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The mesh config's `defaultProviders`, and its own access log.
#[derive(Clone, Debug, Default)]
pub struct Defaults {
    pub metrics: Vec<String>,
    pub access_logging: Vec<String>,
    pub tracing: Vec<String>,
    /// `accessLogFile`: where lines go when nothing else says; unset, the
    /// waypoint's own line.
    pub access_log_file: Option<String>,
    /// The format of the mesh's log and of the built-in `envoy` provider,
    /// when the mesh config gives one (or a file, whose lines are then
    /// Istio's); else the waypoint's own line.
    pub access_log_format: Option<Arc<AccessFormat>>,
}

impl Defaults {
    /// The mesh config's telemetry settings; the error names a format that
    /// cannot be written.
    pub fn new(
        metrics: Vec<String>,
        access_logging: Vec<String>,
        tracing: Vec<String>,
        access_log_file: Option<String>,
        access_log_format: &str,
        access_log_encoding: &str,
    ) -> Result<Defaults, String> {
        let says = access_log_file.is_some()
            || !access_log_format.is_empty()
            || !access_log_encoding.is_empty();
        let access_log_format = if says {
            let format = LogFormat::of_mesh(access_log_format, access_log_encoding)
                .and_then(AccessFormat::compile)
                .map_err(|e| format!("the mesh config's access log format: {e}"))?;
            Some(Arc::new(format))
        } else {
            None
        };
        Ok(Defaults {
            metrics,
            access_logging,
            tracing,
            access_log_file,
            access_log_format,
        })
    }

    /// The log when no Telemetry or default provider speaks.
    fn access_log(&self, notes: &mut BTreeSet<String>) -> AccessLog {
        match self.access_log_file.as_deref() {
            None => AccessLog::Default,
            Some("") => AccessLog::Filtered(Vec::new()),
            Some(path) => match Stream::of_path(path) {
                Some(stream) => AccessLog::Filtered(vec![Sink {
                    filter: None,
                    format: self.access_log_format.clone(),
                    stream,
                }]),
                None => {
                    notes.insert(format!("the mesh config's accessLogFile {path:?} is not /dev/stdout or /dev/stderr: the waypoint writes its access lines to those only; none written"));
                    AccessLog::Filtered(Vec::new())
                }
            },
        }
    }

    fn metrics(&self) -> Vec<String> {
        if self.metrics.is_empty() {
            vec![PROMETHEUS.to_owned()]
        } else {
            self.metrics.clone()
        }
    }
}

/// What the providers a Telemetry may name are, to this waypoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ProviderKind {
    /// Its access lines on the waypoint's stdout or stderr.
    Stream(Stream),
    /// A file: not written.
    OtherFile,
    Prometheus,
    /// A provider this waypoint does not send to (OpenTelemetry, …).
    Elsewhere,
    /// No provider by that name: left out, as Istio leaves it out.
    Undefined,
}

fn provider_kind(name: &str, providers: &BTreeMap<String, Arc<ExtensionProvider>>) -> ProviderKind {
    // Istio looks providers up ignoring case.
    let defined = providers
        .values()
        .find(|p| p.name.eq_ignore_ascii_case(name));
    match defined {
        Some(p) => match (&p.envoy_file_access_log, &p.prometheus) {
            (Some(log), _) => log
                .stream()
                .map_or(ProviderKind::OtherFile, ProviderKind::Stream),
            (None, Some(_)) => ProviderKind::Prometheus,
            (None, None) => ProviderKind::Elsewhere,
        },
        // Istio's default mesh config defines both.
        None if name.eq_ignore_ascii_case(ENVOY) => ProviderKind::Stream(Stream::Stdout),
        None if name.eq_ignore_ascii_case(PROMETHEUS) => ProviderKind::Prometheus,
        None => ProviderKind::Undefined,
    }
}

/// Whether (and which of) the waypoint's access lines are written.
#[derive(Clone, Debug, Default)]
pub enum AccessLog {
    /// Nothing says: the waypoint's own line per request and connection,
    /// as the log filter (`access` target) allows.
    #[default]
    Default,
    /// A line for each provider whose filter holds. Empty: none at all.
    Filtered(Vec<Sink>),
}

/// One provider's lines.
#[derive(Clone, Debug)]
pub struct Sink {
    /// Which requests it writes a line for; `None`: all.
    pub filter: Option<Expr>,
    /// `None`: the waypoint's own line.
    pub format: Option<Arc<AccessFormat>>,
    /// Where a formatted line goes (the waypoint's own goes to its log).
    pub stream: Stream,
}

/// One access line to write.
#[derive(Clone, Copy, Debug)]
pub enum AccessLine<'a> {
    /// The waypoint's own, on its log.
    Own,
    Formatted(&'a AccessFormat, Stream),
}

impl Sink {
    /// Whether it writes a line for this request; `attributes` are there
    /// when [`AccessLog::reads_attributes`].
    pub fn admits(&self, attributes: Option<&Attributes<'_, '_>>) -> bool {
        match &self.filter {
            None => true,
            Some(expr) => attributes.is_some_and(|a| expr.holds(a)),
        }
    }
}

impl AccessLog {
    /// Whether nothing is logged.
    pub fn is_off(&self) -> bool {
        matches!(self, AccessLog::Filtered(sinks) if sinks.is_empty())
    }

    /// Whether a line needs the request's attributes: a filter that may
    /// pass or not, or a format that writes them.
    pub fn reads_attributes(&self) -> bool {
        match self {
            AccessLog::Default => false,
            AccessLog::Filtered(sinks) => sinks
                .iter()
                .any(|s| s.filter.is_some() || s.format.is_some()),
        }
    }

    /// Calls `write` for each line to write for a request or connection:
    /// one per provider whose filter holds, the waypoint's own at most
    /// once; `attributes` are there when [`AccessLog::reads_attributes`].
    pub fn for_each_line(
        &self,
        attributes: Option<&Attributes<'_, '_>>,
        mut write: impl FnMut(AccessLine<'_>),
    ) {
        let sinks = match self {
            AccessLog::Default => return write(AccessLine::Own),
            AccessLog::Filtered(sinks) => sinks,
        };
        let mut own_written = false;
        for sink in sinks.iter().filter(|s| s.admits(attributes)) {
            match &sink.format {
                Some(format) => write(AccessLine::Formatted(format, sink.stream)),
                None if own_written => {}
                None => {
                    own_written = true;
                    write(AccessLine::Own);
                }
            }
        }
    }

    /// Writes a request's or connection's lines: the formatted ones here,
    /// the waypoint's own (at most once) by calling `own`. `facts` and
    /// `attributes` are there when [`AccessLog::reads_attributes`].
    pub fn write(
        &self,
        facts: Option<&Facts<'_>>,
        attributes: Option<&Attributes<'_, '_>>,
        mut own: impl FnMut(),
    ) {
        self.for_each_line(attributes, |line| match (line, facts, attributes) {
            (AccessLine::Formatted(format, stream), Some(facts), Some(attributes)) => {
                access_line::write(&format.line(facts, attributes), stream);
            }
            (AccessLine::Formatted(..), _, _) => {}
            (AccessLine::Own, _, _) => own(),
        });
    }

    /// What lines need kept of each request.
    fn reads(&self) -> access_line::Reads {
        let mut reads = access_line::Reads::default();
        if let AccessLog::Filtered(sinks) = self {
            for format in sinks.iter().filter_map(|s| s.format.as_ref()) {
                reads.request |= format.reads.request;
                reads.request_headers.and(&format.reads.request_headers);
                reads.response_headers.and(&format.reads.response_headers);
                reads.response_trailers |= format.reads.response_trailers;
            }
        }
        reads
    }
}

/// The labels a waypoint writes on its request metrics (Istio's, less
/// those of clusters and apps it has no value for).
pub const STANDARD_LABELS: [&str; 18] = [
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_canonical_service",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_canonical_service",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
];

/// One of the four request metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestMetric {
    Count = 0,
    Duration = 1,
    RequestSize = 2,
    ResponseSize = 3,
}

impl RequestMetric {
    pub const EACH: [RequestMetric; 4] = [
        RequestMetric::Count,
        RequestMetric::Duration,
        RequestMetric::RequestSize,
        RequestMetric::ResponseSize,
    ];

    fn of(metric: IstioMetric) -> Option<RequestMetric> {
        match metric {
            IstioMetric::RequestCount => Some(RequestMetric::Count),
            IstioMetric::RequestDuration => Some(RequestMetric::Duration),
            IstioMetric::RequestSize => Some(RequestMetric::RequestSize),
            IstioMetric::ResponseSize => Some(RequestMetric::ResponseSize),
            _ => None,
        }
    }
}

/// A label changed by `tagOverrides`.
#[derive(Clone, Debug)]
pub enum TagChange {
    Remove,
    Upsert(Expr),
}

/// How one request metric is counted.
#[derive(Clone, Debug, Default)]
pub struct MetricPlan {
    pub disabled: bool,
    /// Label → change, by label name.
    pub tags: BTreeMap<String, TagChange>,
}

/// How requests are counted.
#[derive(Clone, Debug, Default)]
pub struct MetricsPlan {
    /// No Prometheus provider in scope, or `ALL_METRICS` disabled.
    pub off: bool,
    pub each: [MetricPlan; 4],
}

impl MetricsPlan {
    pub fn get(&self, metric: RequestMetric) -> &MetricPlan {
        &self.each[metric as usize]
    }

    /// Every request metric counted with Istio's labels (as without any
    /// Telemetry): the connection's cached series serve.
    pub fn is_plain(&self) -> bool {
        !self.off && self.each.iter().all(|m| !m.disabled && m.tags.is_empty())
    }
}

/// The telemetry in force for one scope (this waypoint, or one Service
/// through it).
#[derive(Clone, Debug, Default)]
pub struct Resolved {
    pub access_log: AccessLog,
    pub metrics: MetricsPlan,
    /// Where spans go and which are sampled; `None`: no tracing provider
    /// in force (traces are continued, none started, no span sent).
    pub tracing: Option<Arc<TracingPlan>>,
    /// The Telemetry objects that made it, in the order applied.
    pub sources: Vec<String>,
    /// Some expression or format reads the request's own fields: requests
    /// keep them.
    pub reads_request: bool,
    /// The request headers an expression or a format reads: requests keep
    /// those.
    pub request_headers: HeaderNeed,
    /// Likewise the answer's.
    pub response_headers: HeaderNeed,
    /// An access-line format reads trailers: answers keep theirs.
    pub reads_response_trailers: bool,
}

impl Resolved {
    /// What it asks, in words (`warrenctl waypoint explain`); `None` when
    /// it leaves the waypoint's defaults alone.
    pub fn describe(&self) -> Option<String> {
        let logs = match &self.access_log {
            AccessLog::Default => None,
            AccessLog::Filtered(sinks) if sinks.is_empty() => Some("no access line".to_owned()),
            AccessLog::Filtered(sinks) => Some(
                sinks
                    .iter()
                    .map(|sink| {
                        let format = match &sink.format {
                            None => "an",
                            Some(f) if f.is_json() => "a JSON",
                            Some(_) => "a text",
                        };
                        match &sink.filter {
                            None => format!("{format} access line for every request"),
                            Some(e) => format!("{format} access line when `{}`", e.text()),
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
        };
        let metrics = if self.metrics.off {
            Some("no request metrics".to_owned())
        } else if self.metrics.is_plain() {
            None
        } else {
            let names = [
                "istio_requests_total",
                "istio_request_duration_milliseconds",
                "istio_request_bytes",
                "istio_response_bytes",
            ];
            let changes: Vec<String> = RequestMetric::EACH
                .iter()
                .map(|m| (names[*m as usize], self.metrics.get(*m)))
                .filter_map(|(name, plan)| {
                    if plan.disabled {
                        return Some(format!("{name} off"));
                    }
                    if plan.tags.is_empty() {
                        return None;
                    }
                    let tags: Vec<String> = plan
                        .tags
                        .iter()
                        .map(|(tag, change)| match change {
                            TagChange::Remove => format!("-{tag}"),
                            TagChange::Upsert(e) => format!("{tag}=`{}`", e.text()),
                        })
                        .collect();
                    Some(format!("{name} labels {}", tags.join(" ")))
                })
                .collect();
            Some(changes.join("; "))
        };
        let tracing = self.tracing.as_ref().map(|t| {
            format!(
                "spans to {} ({}:{}), {}% of new traces sampled",
                t.provider, t.host, t.port, t.sampling
            )
        });
        if logs.is_none() && metrics.is_none() && tracing.is_none() {
            return None;
        }
        let from = if self.sources.is_empty() {
            "the mesh config's default providers".to_owned()
        } else {
            format!("Telemetry {}", self.sources.join(", "))
        };
        let asked: Vec<String> = [logs, metrics, tracing].into_iter().flatten().collect();
        Some(format!("{from}: {}", asked.join("; ")))
    }
}

/// The telemetry in force through this waypoint.
#[derive(Debug, Default)]
pub struct Telemetries {
    base: Arc<Resolved>,
    /// Service namespace → name → its own, where a Telemetry is attached
    /// to it.
    by_service: HashMap<String, HashMap<String, Arc<Resolved>>>,
    /// What could not be done as asked (a provider not defined, a file
    /// not written, tracing), for the waypoint to say once.
    pub notes: BTreeSet<String>,
}

impl Telemetries {
    /// Merges `inputs` for the waypoint of `namespace` and the root
    /// namespace's mesh-wide one.
    pub fn build<'a>(
        inputs: impl IntoIterator<Item = &'a TelemetryInput>,
        providers: &BTreeMap<String, Arc<ExtensionProvider>>,
        defaults: &Defaults,
        namespace: &str,
    ) -> Telemetries {
        let mut inputs: Vec<&TelemetryInput> = inputs.into_iter().collect();
        // Oldest first, then by name: which namespace-wide one is in force,
        // and the order attached ones apply in.
        inputs.sort_by(|a, b| {
            (a.created, &a.namespace, &a.name).cmp(&(b.created, &b.namespace, &b.name))
        });
        let mesh = inputs.iter().copied().find(|t| t.mesh_wide);
        let own = inputs
            .iter()
            .copied()
            .find(|t| t.namespace_wide && !t.mesh_wide && t.namespace == namespace);
        // As Istio: only the waypoint's namespace's attach to it (a
        // Service of another namespace it serves takes that namespace's
        // mesh-wide and the waypoint's, not its own namespace's).
        let attached: Vec<&TelemetryInput> = inputs
            .iter()
            .copied()
            .filter(|t| !t.namespace_wide && t.namespace == namespace)
            .collect();
        let layers = |service: Option<(&str, &str)>| -> Vec<&TelemetryInput> {
            mesh.into_iter()
                .chain(own)
                .chain(attached.iter().copied().filter(|t| match service {
                    None => t.waypoint,
                    Some((ns, name)) => applies(t.waypoint, &t.namespace, &t.services, ns, name),
                }))
                .collect()
        };
        let mut notes = BTreeSet::new();
        let formats = formats(providers, defaults, &mut notes);
        let base = Arc::new(resolve(
            &layers(None),
            providers,
            &formats,
            defaults,
            &mut notes,
        ));
        let mut by_service: HashMap<String, HashMap<String, Arc<Resolved>>> = HashMap::new();
        let named: BTreeSet<(&str, &str)> = attached
            .iter()
            .flat_map(|t| {
                t.services
                    .iter()
                    .map(|s| (t.namespace.as_str(), s.as_str()))
            })
            .collect();
        for (ns, name) in named {
            let resolved = resolve(
                &layers(Some((ns, name))),
                providers,
                &formats,
                defaults,
                &mut notes,
            );
            by_service
                .entry(ns.to_owned())
                .or_default()
                .insert(name.to_owned(), Arc::new(resolved));
        }
        Telemetries {
            base,
            by_service,
            notes,
        }
    }

    /// What applies to a request for `name` of `namespace`.
    pub fn for_service(&self, namespace: &str, name: &str) -> &Arc<Resolved> {
        if self.by_service.is_empty() {
            return &self.base;
        }
        self.by_service
            .get(namespace)
            .and_then(|names| names.get(name))
            .unwrap_or(&self.base)
    }
}

/// Merges the layers (outermost first) for a proxy receiving requests;
/// what cannot be done as asked goes to `notes`.
fn resolve(
    layers: &[&TelemetryInput],
    providers: &BTreeMap<String, Arc<ExtensionProvider>>,
    formats: &Formats,
    defaults: &Defaults,
    notes: &mut BTreeSet<String>,
) -> Resolved {
    let access_log = merge_logs(layers, providers, formats, defaults, notes);
    let tracing = merge_tracing(layers, providers, defaults, notes).map(Arc::new);
    let metrics = merge_metrics(layers, providers, defaults);
    let sinks = match &access_log {
        AccessLog::Default => &[][..],
        AccessLog::Filtered(sinks) => &sinks[..],
    };
    let formats_read = access_log.reads();
    let exprs: Vec<&Expr> = sinks
        .iter()
        .filter_map(|s| s.filter.as_ref())
        .chain(metrics.each.iter().flat_map(|m| {
            m.tags.values().filter_map(|c| match c {
                TagChange::Upsert(e) => Some(e),
                TagChange::Remove => None,
            })
        }))
        .collect();
    let mut request_headers = formats_read.request_headers;
    if exprs.iter().any(|e| e.reads_headers_of("request")) {
        request_headers = HeaderNeed::All;
    }
    let mut response_headers = formats_read.response_headers;
    if exprs.iter().any(|e| e.reads_headers_of("response")) {
        response_headers = HeaderNeed::All;
    }
    Resolved {
        reads_request: formats_read.request
            || !request_headers.is_none()
            || exprs.iter().any(|e| e.reads("request")),
        request_headers,
        response_headers,
        reads_response_trailers: formats_read.response_trailers,
        sources: layers.iter().map(|t| t.id()).collect(),
        tracing,
        access_log,
        metrics,
    }
}

/// Each file access-log provider's format, by its name; `None`: the
/// waypoint's own line.
type Formats = BTreeMap<String, Option<Arc<AccessFormat>>>;

/// Compiles the providers' formats once per build: a provider without one
/// writes Istio's text line. What cannot be written goes to `notes`.
fn formats(
    providers: &BTreeMap<String, Arc<ExtensionProvider>>,
    defaults: &Defaults,
    notes: &mut BTreeSet<String>,
) -> Formats {
    let mut istio_text: Option<Arc<AccessFormat>> = None;
    let mut formats = Formats::new();
    for provider in providers.values() {
        let Some(log) = &provider.envoy_file_access_log else {
            continue;
        };
        let name = &provider.name;
        let compiled = match &log.log_format {
            Some(spec) => LogFormat::of_provider(spec).and_then(AccessFormat::compile),
            None => match &istio_text {
                Some(format) => {
                    formats.insert(name.clone(), Some(Arc::clone(format)));
                    continue;
                }
                None => LogFormat::of_mesh("", "").and_then(AccessFormat::compile),
            },
        };
        let format = match compiled {
            Ok(format) => Arc::new(format),
            Err(error) => {
                notes.insert(format!("access-log provider {name:?}: {error}; the waypoint's own line is written instead"));
                formats.insert(name.clone(), None);
                continue;
            }
        };
        say_not_reported(&format!("access-log provider {name:?}"), &format, notes);
        if log.log_format.is_none() {
            istio_text = Some(Arc::clone(&format));
        }
        formats.insert(name.clone(), Some(format));
    }
    if let Some(format) = &defaults.access_log_format {
        say_not_reported("the mesh config's access log", format, notes);
    }
    formats
}

fn say_not_reported(whose: &str, format: &AccessFormat, notes: &mut BTreeSet<String>) {
    let names = format.not_reported();
    if !names.is_empty() {
        notes.insert(format!(
            "{whose} writes {} as '-': the waypoint has no value for them",
            names.join(", ")
        ));
    }
}

/// The format `name`'s lines are written in.
fn provider_format(
    name: &str,
    providers: &BTreeMap<String, Arc<ExtensionProvider>>,
    formats: &Formats,
    defaults: &Defaults,
) -> Option<Arc<AccessFormat>> {
    match providers
        .values()
        .find(|p| p.name.eq_ignore_ascii_case(name))
    {
        Some(p) => formats.get(&p.name).cloned().flatten(),
        // The built-in `envoy`, as the mesh config's own log.
        None => defaults.access_log_format.clone(),
    }
}

fn names(providers: &[ProviderRef]) -> Vec<String> {
    providers.iter().map(|p| p.name.clone()).collect()
}

fn for_server(logging: &AccessLogging) -> bool {
    logging
        .r#match
        .as_ref()
        .is_none_or(|m| m.mode.applies_to_server())
}

/// Istio's `mergeLogs` for mode SERVER: which providers log, each with its
/// filter or disabled; then what of it reaches stdout.
fn merge_logs(
    layers: &[&TelemetryInput],
    providers: &BTreeMap<String, Arc<ExtensionProvider>>,
    formats: &Formats,
    defaults: &Defaults,
    notes: &mut BTreeSet<String>,
) -> AccessLog {
    let layers: Vec<&TelemetryInput> = layers
        .iter()
        .copied()
        .filter(|t| !t.spec.access_logging.is_empty())
        .collect();
    if layers.is_empty() && defaults.access_logging.is_empty() {
        return defaults.access_log(notes);
    }
    // provider → (disabled, filter)
    let mut merged: BTreeMap<String, (bool, Option<Expr>)> = BTreeMap::new();
    if layers.is_empty() {
        for name in &defaults.access_logging {
            merged.insert(name.clone(), (false, None));
        }
    } else {
        // The providers in scope: those the innermost level that names any
        // names; and the filter each was last given.
        let mut in_scope = defaults.access_logging.clone();
        let mut filters: BTreeMap<String, Option<Expr>> = BTreeMap::new();
        for layer in &layers {
            let mut named = Vec::new();
            for (i, logging) in layer.spec.access_logging.iter().enumerate() {
                if !for_server(logging) {
                    continue;
                }
                for name in names(&logging.providers) {
                    filters.insert(name.clone(), layer.filters.get(i).cloned().flatten());
                    named.push(name);
                }
            }
            if !named.is_empty() {
                in_scope = named;
            }
        }
        let mut parent = defaults.access_logging.clone();
        for layer in &layers {
            for logging in &layer.spec.access_logging {
                let mut named = names(&logging.providers);
                if named.is_empty() {
                    named = parent.clone();
                }
                parent = named.clone();
                if !for_server(logging) {
                    continue;
                }
                for name in named.into_iter().filter(|n| in_scope.contains(n)) {
                    let entry = if logging.disabled == Some(true) {
                        (true, None)
                    } else {
                        (false, filters.get(&name).cloned().flatten())
                    };
                    merged.insert(name, entry);
                }
            }
        }
    }
    // Providers the mesh config does not define are left out, as Istio
    // leaves them out.
    merged.retain(|name, _| {
        let defined = provider_kind(name, providers) != ProviderKind::Undefined;
        if !defined {
            notes.insert(format!(
                "access-log provider {name:?} is not defined in the mesh config: left out"
            ));
        }
        defined
    });
    // Nothing said for this side: as if no Telemetry spoke (Istio then
    // falls back to the mesh config's access log).
    if merged.is_empty() {
        return defaults.access_log(notes);
    }
    let mut sinks = Vec::new();
    for (name, (disabled, filter)) in merged {
        match provider_kind(&name, providers) {
            ProviderKind::Stream(stream) if !disabled => sinks.push(Sink {
                stream,
                filter,
                format: provider_format(&name, providers, formats, defaults),
            }),
            ProviderKind::OtherFile if !disabled => {
                notes.insert(format!("access-log provider {name:?} writes to a file, not /dev/stdout or /dev/stderr: the waypoint writes its access lines to those only; not used"));
            }
            _ => {}
        }
    }
    AccessLog::Filtered(sinks)
}

/// Where a waypoint's spans go, and which requests it samples.
#[derive(Clone, Debug, PartialEq)]
pub struct TracingPlan {
    /// The provider's name (metrics, explain).
    pub provider: String,
    /// The collector: a Service's (or ServiceEntry's) host and port.
    pub host: String,
    pub port: u16,
    pub protocol: TraceProtocol,
    /// Where spans are posted (Zipkin, OTLP over HTTP).
    pub path: String,
    /// How long a post may take.
    pub timeout: std::time::Duration,
    /// The longest the `http.url` tag may be (Envoy's path tag length).
    pub max_tag_length: usize,
    /// New trace ids of 64 bits.
    pub short_trace_ids: bool,
    /// Percent of the traces the waypoint starts (or is left to decide)
    /// that are sampled.
    pub sampling: f64,
    pub custom_tags: Vec<(String, CustomTag)>,
    /// Sent with each post (`headers`, `initialMetadata`).
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

/// How spans reach their collector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TraceProtocol {
    /// Zipkin's JSON (v2), posted.
    Zipkin,
    /// OTLP's export over gRPC.
    OtlpGrpc,
    /// OTLP's export request (protobuf), posted.
    OtlpHttp,
}

/// The longest `http.url` tag, whatever `maxTagLength` says.
const MAX_PATH_TAG: u32 = 8192;

/// How long a post of spans may take, unless the provider says.
const POST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A provider's `timeout` (checked when the mesh config was read), or
/// [`POST_TIMEOUT`].
fn post_timeout(timeout: Option<&str>) -> std::time::Duration {
    timeout
        .and_then(|t| warren_model::validate::duration("timeout", t).ok())
        .unwrap_or(POST_TIMEOUT)
}

/// Istio's sampling when no Telemetry says (its `PILOT_TRACE_SAMPLING`
/// default).
pub const DEFAULT_SAMPLING: f64 = 1.0;

/// Istio's `Tracing()` for mode SERVER: the first provider of the innermost
/// entry that names one (else the mesh config's first default), each other
/// field the innermost entry's that sets it.
fn merge_tracing(
    layers: &[&TelemetryInput],
    providers: &BTreeMap<String, Arc<ExtensionProvider>>,
    defaults: &Defaults,
    notes: &mut BTreeSet<String>,
) -> Option<TracingPlan> {
    let mut provider = defaults.tracing.first().cloned();
    let mut disabled = false;
    let mut sampling = None;
    let mut custom_tags = None;
    for tracing in layers.iter().flat_map(|t| &t.spec.tracing) {
        if !tracing
            .r#match
            .as_ref()
            .is_none_or(|m| m.mode.applies_to_server())
        {
            continue;
        }
        if let Some(first) = tracing.providers.first() {
            provider = Some(first.name.clone());
        }
        if let Some(value) = tracing.disable_span_reporting {
            disabled = value;
        }
        if let Some(value) = tracing.random_sampling_percentage {
            sampling = Some(value);
        }
        if !tracing.custom_tags.is_empty() {
            custom_tags = Some(&tracing.custom_tags);
        }
    }
    // As Istio: no span reporting is no tracing (no trace started either).
    let name = provider.filter(|_| !disabled)?;
    let defined = providers
        .values()
        .find(|p| p.name.eq_ignore_ascii_case(&name));
    let (service, port, protocol, path, timeout, max_tag_length, short_trace_ids, headers) =
        match defined.map(|p| (&p.zipkin, &p.opentelemetry)) {
            Some((Some(zipkin), _)) => (
                &zipkin.service,
                zipkin.port,
                TraceProtocol::Zipkin,
                zipkin
                    .path
                    .clone()
                    .unwrap_or_else(|| "/api/v2/spans".to_owned()),
                POST_TIMEOUT,
                zipkin.max_tag_length,
                zipkin.enable_64bit_trace_id,
                &zipkin.headers[..],
            ),
            Some((None, Some(otel))) => {
                let (protocol, path, timeout, headers) = match &otel.http {
                    Some(http) => (
                        TraceProtocol::OtlpHttp,
                        match &http.path {
                            Some(p) if p.starts_with('/') => p.clone(),
                            Some(p) => format!("/{p}"),
                            None => otlp::HTTP_PATH.to_owned(),
                        },
                        post_timeout(http.timeout.as_deref()),
                        &http.headers[..],
                    ),
                    None => (
                        TraceProtocol::OtlpGrpc,
                        otlp::EXPORT_PATH.to_owned(),
                        post_timeout(otel.grpc.as_ref().and_then(|g| g.timeout.as_deref())),
                        otel.grpc
                            .as_ref()
                            .map_or(&[][..], |g| &g.initial_metadata[..]),
                    ),
                };
                (
                    &otel.service,
                    otel.port,
                    protocol,
                    path,
                    timeout,
                    otel.max_tag_length,
                    false,
                    headers,
                )
            }
            Some((None, None)) => {
                notes.insert(format!("tracing provider {name:?} is neither zipkin nor opentelemetry, the kinds a waypoint sends spans to: no spans"));
                return None;
            }
            None => {
                notes.insert(format!(
                    "tracing provider {name:?} is not defined in the mesh config: no spans"
                ));
                return None;
            }
        };
    let (_, host) = split_service(service);
    let headers = post_headers(&name, headers, notes);
    Some(TracingPlan {
        provider: name,
        host: host.to_owned(),
        port: u16::try_from(port).unwrap_or_default(),
        protocol,
        path,
        timeout,
        // Envoy's path tag length: 0 is the default, and so is nothing.
        max_tag_length: max_tag_length
            .filter(|n| *n > 0)
            .map_or(256, |n| n.min(MAX_PATH_TAG) as usize),
        short_trace_ids,
        sampling: sampling.unwrap_or(DEFAULT_SAMPLING),
        custom_tags: custom_tags
            .map(|tags| tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default(),
        headers,
    })
}

/// The headers a provider sends with each post, values from the
/// environment read now; one that cannot be sent is left out, and said.
fn post_headers(
    provider: &str,
    headers: &[HttpHeader],
    notes: &mut BTreeSet<String>,
) -> Vec<(http::HeaderName, http::HeaderValue)> {
    let mut out = Vec::new();
    for header in headers {
        let value = match (&header.value, &header.env_name) {
            (Some(value), _) => Ok(value.clone()),
            (None, Some(variable)) => std::env::var(variable)
                .map_err(|_| format!("{variable} is not set in the waypoint's environment")),
            (None, None) => Err("it has no value".to_owned()),
        };
        let parsed = value.and_then(|v| {
            let name = http::HeaderName::from_bytes(header.name.to_ascii_lowercase().as_bytes())
                .map_err(|_| "not a header name".to_owned())?;
            let value = http::HeaderValue::from_str(&v)
                .map_err(|_| "its value is not a header value".to_owned())?;
            Ok((name, value))
        });
        match parsed {
            Ok(pair) => out.push(pair),
            Err(why) => {
                notes.insert(format!(
                    "tracing provider {provider:?}: header {:?} left out: {why}",
                    header.name
                ));
            }
        }
    }
    out
}

/// The request metrics a selector picks: `None` for all of them (Istio's
/// `ALL_METRICS`, or no match).
fn selected(selector: Option<&MetricSelector>) -> Option<Vec<RequestMetric>> {
    let selector = selector?;
    match (&selector.metric, &selector.custom_metric) {
        (Some(IstioMetric::AllMetrics), _) | (None, None) => None,
        (Some(metric), _) => Some(RequestMetric::of(*metric).into_iter().collect()),
        (None, Some(name)) => Some(
            IstioMetric::by_prometheus_name(name)
                .and_then(RequestMetric::of)
                .into_iter()
                .collect(),
        ),
    }
}

/// Istio's `mergeMetrics` for mode SERVER and the Prometheus providers.
fn merge_metrics(
    layers: &[&TelemetryInput],
    providers: &BTreeMap<String, Arc<ExtensionProvider>>,
    defaults: &Defaults,
) -> MetricsPlan {
    let entries: Vec<(&TelemetryInput, usize, &Metrics)> = layers
        .iter()
        .flat_map(|t| {
            t.spec
                .metrics
                .iter()
                .enumerate()
                .map(move |(i, m)| (*t, i, m))
        })
        .collect();
    let mut in_scope = defaults.metrics();
    for (_, _, metrics) in &entries {
        if !metrics.providers.is_empty() {
            in_scope = names(&metrics.providers);
        }
    }
    let prometheus_in_scope = |names: &[String]| {
        names.iter().any(|n| {
            in_scope.contains(n) && provider_kind(n, providers) == ProviderKind::Prometheus
        })
    };
    let mut plan = MetricsPlan {
        off: !prometheus_in_scope(&in_scope),
        ..MetricsPlan::default()
    };
    if plan.off {
        return plan;
    }
    let mut parent = defaults.metrics();
    let mut disabled: [Option<bool>; 4] = [None; 4];
    for (layer, i, metrics) in entries {
        let mut named = names(&metrics.providers);
        if named.is_empty() {
            named = parent.clone();
        }
        parent = named.clone();
        if !prometheus_in_scope(&named) {
            continue;
        }
        for (j, o) in metrics.overrides.iter().enumerate() {
            let selector = o.r#match.as_ref();
            if !selector.is_none_or(|s| s.mode.applies_to_server()) {
                continue;
            }
            let picked = selected(selector);
            if picked.is_none() && o.disabled == Some(true) {
                plan.off = true;
                continue;
            }
            // A later level's override of any metric turns them back on.
            plan.off = false;
            for metric in picked.unwrap_or_else(|| RequestMetric::EACH.to_vec()) {
                let each = &mut plan.each[metric as usize];
                if let Some(value) = o.disabled {
                    disabled[metric as usize] = Some(value);
                }
                for (tag, change) in &o.tag_overrides {
                    let change = match change.operation {
                        // A label the waypoint does not write: nothing to
                        // remove (and the series stay Istio's own).
                        TagOperation::Remove if !STANDARD_LABELS.contains(&tag.as_str()) => {
                            continue;
                        }
                        TagOperation::Remove => TagChange::Remove,
                        TagOperation::Upsert => match layer.tag_values.get(&(i, j, tag.clone())) {
                            Some(expr) => TagChange::Upsert(expr.clone()),
                            None => continue,
                        },
                    };
                    each.tags.insert(tag.clone(), change);
                }
            }
        }
    }
    for (each, disabled) in plan.each.iter_mut().zip(disabled) {
        each.disabled = disabled.unwrap_or(false);
    }
    plan
}
