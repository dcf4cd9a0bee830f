use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
};

use warren_model::istio::mesh::ExtensionProvider;

use super::{attributes::RequestFacts, *};
use crate::metrics::{Metrics, Observed, RequestLabels};

/// How a Telemetry is attached, for [`input`].
enum At {
    Mesh,
    Namespace(&'static str),
    Waypoint,
    Service(&'static str),
}

fn input(name: &str, created: i64, at: At, spec: &str) -> TelemetryInput {
    let spec = serde_yaml::from_str(spec).expect("a Telemetry spec");
    let namespace = match at {
        At::Mesh => "istio-system",
        At::Namespace(ns) => ns,
        At::Waypoint | At::Service(_) => "demo",
    };
    let mut t = TelemetryInput::compile(namespace.into(), name.into(), spec).expect("compiles");
    t.created = created;
    match at {
        At::Mesh => {
            t.namespace_wide = true;
            t.mesh_wide = true;
        }
        At::Namespace(_) => t.namespace_wide = true,
        At::Waypoint => t.waypoint = true,
        At::Service(service) => t.services = vec![service.into()],
    }
    t
}

fn build(inputs: &[TelemetryInput]) -> Telemetries {
    build_with(inputs, &BTreeMap::new(), &Defaults::default())
}

fn build_with(
    inputs: &[TelemetryInput],
    providers: &BTreeMap<String, Arc<ExtensionProvider>>,
    defaults: &Defaults,
) -> Telemetries {
    Telemetries::build(inputs, providers, defaults, "demo")
}

/// The mesh config's providers, each given as its YAML.
fn providers(specs: &[&str]) -> BTreeMap<String, Arc<ExtensionProvider>> {
    specs
        .iter()
        .map(|yaml| {
            let spec: ExtensionProvider = serde_yaml::from_str(yaml).expect("a provider");
            (format!("extensionprovider/{}", spec.name), Arc::new(spec))
        })
        .collect()
}

fn facts(code: u16) -> Facts<'static> {
    Facts {
        response_code: Some(code),
        source: Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7))),
        ..Facts::default()
    }
}

/// Asserts the waypoint says `what` (once) of the Telemetry it was given.
#[track_caller]
fn says(t: &Telemetries, what: &str) {
    assert!(
        t.notes.iter().any(|n| n.contains(what)),
        "no note says {what:?}: {:?}",
        t.notes
    );
}

fn logs(resolved: &Resolved, code: u16) -> bool {
    let facts = facts(code);
    let mut any = false;
    resolved
        .access_log
        .for_each_line(Some(&Attributes::of(&facts)), |_| any = true);
    any
}

#[test]
fn without_telemetry_the_waypoint_logs_and_counts_as_always() {
    let t = build(&[]);
    let base = t.for_service("demo", "app");
    assert!(matches!(base.access_log, AccessLog::Default));
    assert!(base.metrics.is_plain());
    assert!(!base.reads_request && base.response_headers.is_none());
}

#[test]
fn the_mesh_filter_holds_until_a_namespace_turns_logs_off() {
    let mesh = input(
        "mesh-default",
        1,
        At::Mesh,
        "accessLogging: [{providers: [{name: envoy}], filter: {expression: 'response.code >= 400'}}]",
    );
    let t = build(std::slice::from_ref(&mesh));
    let base = t.for_service("demo", "app");
    assert!(logs(base, 503) && !logs(base, 200));
    // `response.code` alone: no headers kept for it.
    assert!(base.response_headers.is_none() && !base.reads_request);
    assert_eq!(base.sources, ["istio-system/mesh-default"]);

    // The namespace's entry names no provider: the mesh's (envoy) is
    // disabled.
    let quiet = input(
        "quiet",
        2,
        At::Namespace("demo"),
        "accessLogging: [{disabled: true}]",
    );
    let t = build(&[mesh.clone(), quiet.clone()]);
    assert!(t.for_service("demo", "app").access_log.is_off());

    // Another namespace's does not reach this waypoint.
    let elsewhere = input(
        "quiet",
        2,
        At::Namespace("shop"),
        "accessLogging: [{disabled: true}]",
    );
    let t = build(&[mesh.clone(), elsewhere]);
    assert!(logs(t.for_service("demo", "app"), 500));

    // Attached to this waypoint: every request logged again, no filter.
    let loud = input(
        "loud",
        3,
        At::Waypoint,
        "accessLogging: [{providers: [{name: envoy}]}]",
    );
    let t = build(&[mesh.clone(), quiet.clone(), loud]);
    assert!(logs(t.for_service("demo", "app"), 200));

    // Attached to one Service: only its requests.
    let one = input(
        "one",
        3,
        At::Service("app"),
        "accessLogging: [{providers: [{name: envoy}]}]",
    );
    let t = build(&[mesh, quiet, one]);
    assert!(logs(t.for_service("demo", "app"), 200));
    assert!(t.for_service("demo", "other").access_log.is_off());
    assert!(t.for_service("shop", "app").access_log.is_off());
}

#[test]
fn the_oldest_namespace_wide_telemetry_is_in_force() {
    let older = input(
        "a-older",
        1,
        At::Namespace("demo"),
        "accessLogging: [{providers: [{name: envoy}], disabled: true}]",
    );
    let newer = input(
        "b-newer",
        2,
        At::Namespace("demo"),
        "accessLogging: [{providers: [{name: envoy}]}]",
    );
    let t = build(&[newer, older]);
    let base = t.for_service("demo", "app");
    assert!(base.access_log.is_off());
    assert_eq!(base.sources, ["demo/a-older"]);
}

#[test]
fn an_entry_without_providers_takes_its_parents() {
    // Nothing above names a provider: nothing to disable, the default stays.
    let alone = input(
        "alone",
        1,
        At::Namespace("demo"),
        "accessLogging: [{disabled: true}]",
    );
    let t = build(std::slice::from_ref(&alone));
    assert!(matches!(
        t.for_service("demo", "app").access_log,
        AccessLog::Default
    ));
    // Under the mesh config's default provider it is that provider's.
    let defaults = Defaults {
        access_logging: vec!["envoy".into()],
        ..Defaults::default()
    };
    let t = build_with(&[alone], &BTreeMap::new(), &defaults);
    assert!(t.for_service("demo", "app").access_log.is_off());
}

#[test]
fn client_side_entries_leave_the_waypoint_as_it_was() {
    let client = input(
        "client",
        1,
        At::Mesh,
        "accessLogging: [{match: {mode: CLIENT}, disabled: true}]
metrics: [{overrides: [{match: {mode: CLIENT}, disabled: true}]}]",
    );
    let t = build(&[client]);
    let base = t.for_service("demo", "app");
    assert!(matches!(base.access_log, AccessLog::Default));
    assert!(base.metrics.is_plain());
}

#[test]
fn providers_decide_where_lines_go() {
    // Mesh defaults: every request logged.
    let defaults = Defaults {
        access_logging: vec!["envoy".into()],
        ..Defaults::default()
    };
    let t = build_with(&[], &BTreeMap::new(), &defaults);
    assert!(logs(t.for_service("demo", "app"), 200));

    // Only an OpenTelemetry sink named: nothing on stdout.
    // A provider of a kind not sent in full: its name alone.
    let with_otel = providers(&["{name: otel}"]);
    let otel = input(
        "otel",
        1,
        At::Mesh,
        "accessLogging: [{providers: [{name: otel}]}]",
    );
    let t = build_with(
        std::slice::from_ref(&otel),
        &with_otel,
        &Defaults::default(),
    );
    assert!(t.for_service("demo", "app").access_log.is_off());
    // A name the mesh config does not define is left out, as in Istio: the
    // waypoint logs as it would without the Telemetry, and says so.
    let t = build(std::slice::from_ref(&otel));
    assert!(matches!(
        t.for_service("demo", "app").access_log,
        AccessLog::Default
    ));
    says(&t, "\"otel\" is not defined");

    // `envoy` redefined to write a file: not this log; a provider writing
    // to /dev/stdout is.
    let files = providers(&[
        "{name: envoy, envoyFileAccessLog: {path: /var/log/access.log}}",
        "{name: stdout-json, envoyFileAccessLog: {path: /dev/stdout}}",
    ]);
    let envoy = input(
        "envoy",
        1,
        At::Mesh,
        "accessLogging: [{providers: [{name: envoy}]}]",
    );
    let t = build_with(std::slice::from_ref(&envoy), &files, &Defaults::default());
    assert!(t.for_service("demo", "app").access_log.is_off());
    let json = input(
        "json",
        1,
        At::Mesh,
        "accessLogging: [{providers: [{name: STDOUT-JSON}]}]",
    );
    let t = build_with(&[json], &files, &Defaults::default());
    assert!(
        logs(t.for_service("demo", "app"), 200),
        "names are matched ignoring case"
    );
}

/// The mesh config's access-log settings.
fn mesh_log(file: Option<&str>, format: &str, encoding: &str) -> Defaults {
    Defaults::new(
        Vec::new(),
        Vec::new(),
        Vec::new(),
        file.map(str::to_owned),
        format,
        encoding,
    )
    .expect("valid settings")
}

/// Each line `access_log` writes for a 200 from 10.0.0.7, as `None` (the
/// waypoint's own) or the formatted text.
fn lines(resolved: &Resolved) -> Vec<Option<String>> {
    let facts = facts(200);
    let attributes = Attributes::of(&facts);
    let mut lines = Vec::new();
    resolved
        .access_log
        .for_each_line(Some(&attributes), |line| {
            lines.push(match line {
                AccessLine::Own => None,
                AccessLine::Formatted(f, _) => Some(f.line(&facts, &attributes)),
            });
        });
    lines
}

#[test]
fn the_mesh_configs_access_log_file_decides_where_nothing_else_does() {
    // Unset: the waypoint's own line.
    let t = build_with(&[], &BTreeMap::new(), &mesh_log(None, "", ""));
    assert!(matches!(
        t.for_service("demo", "app").access_log,
        AccessLog::Default
    ));
    // Empty: none, as Istio's default profile.
    let t = build_with(&[], &BTreeMap::new(), &mesh_log(Some(""), "", ""));
    assert!(t.for_service("demo", "app").access_log.is_off());
    // /dev/stdout: Istio's text line, or the mesh's format.
    let t = build_with(
        &[],
        &BTreeMap::new(),
        &mesh_log(Some("/dev/stdout"), "", ""),
    );
    let written = lines(t.for_service("demo", "app"));
    assert!(
        matches!(written.as_slice(), [Some(line)] if line.starts_with("[-] \"- - -\" 200 ")),
        "{written:?}"
    );
    let t = build_with(
        &[],
        &BTreeMap::new(),
        &mesh_log(
            Some("/dev/stdout"),
            r#"{"code":"%RESPONSE_CODE%","peer":"%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}"#,
            "JSON",
        ),
    );
    assert_eq!(
        lines(t.for_service("demo", "app")),
        [Some("{\"code\":200,\"peer\":\"10.0.0.7\"}\n".to_owned())]
    );
    // /dev/stderr: the same, on the waypoint's stderr.
    let t = build_with(
        &[],
        &BTreeMap::new(),
        &mesh_log(Some("/dev/stderr"), "", ""),
    );
    let AccessLog::Filtered(sinks) = &t.for_service("demo", "app").access_log else {
        panic!("a sink");
    };
    assert!(matches!(
        sinks.as_slice(),
        [Sink {
            stream: Stream::Stderr,
            format: Some(_),
            ..
        }]
    ));
    // Another file: not written, and said.
    let t = build_with(
        &[],
        &BTreeMap::new(),
        &mesh_log(Some("/var/log/a.log"), "", ""),
    );
    assert!(t.for_service("demo", "app").access_log.is_off());
    says(&t, "\"/var/log/a.log\" is not /dev/stdout or /dev/stderr");
    // A format the mesh config gives without a file: `envoy`'s, when a
    // Telemetry names it; no line of its own.
    let defaults = mesh_log(None, "%RESPONSE_CODE% %DOWNSTREAM_TLS_VERSION%", "");
    let t = build_with(&[], &BTreeMap::new(), &defaults);
    assert!(matches!(
        t.for_service("demo", "app").access_log,
        AccessLog::Default
    ));
    let envoy = input(
        "envoy",
        1,
        At::Mesh,
        "accessLogging: [{providers: [{name: envoy}]}]",
    );
    let t = build_with(&[envoy], &BTreeMap::new(), &defaults);
    assert_eq!(
        lines(t.for_service("demo", "app")),
        [Some("200 -\n".to_owned())]
    );
    says(
        &t,
        "the mesh config's access log writes %DOWNSTREAM_TLS_VERSION% as '-'",
    );
    let bad = Defaults::new(
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Some("/dev/stdout".into()),
        "%NOPE%",
        "",
    );
    assert!(bad.is_err_and(|e| e.contains("%NOPE% is not a command operator")));
}

#[test]
fn each_provider_writes_its_own_format() {
    let files = providers(&[
        "{name: plain, envoyFileAccessLog: {path: /dev/stdout}}",
        "{name: codes, envoyFileAccessLog: {logFormat: {text: \"code=%RESPONSE_CODE%\"}}}",
        "{name: json, envoyFileAccessLog: {logFormat: {labels: {code: \"%RESPONSE_CODE%\", team: shop}}}}",
    ]);
    let all = input(
        "all",
        1,
        At::Mesh,
        "accessLogging: [{providers: [{name: plain}, {name: codes}, {name: json}, {name: envoy}]}]",
    );
    let t = build_with(&[all], &files, &Defaults::default());
    let written = lines(t.for_service("demo", "app"));
    // In the providers' name order: codes, envoy (the waypoint's own: no
    // mesh format), json, plain (Istio's text line).
    assert_eq!(written.len(), 4, "{written:?}");
    assert_eq!(written[0].as_deref(), Some("code=200\n"));
    assert_eq!(written[1], None);
    assert_eq!(
        written[2].as_deref(),
        Some("{\"code\":200,\"team\":\"shop\"}\n")
    );
    assert!(
        written[3]
            .as_deref()
            .is_some_and(|l| l.starts_with("[-] \"- - -\" 200 ")),
        "{written:?}"
    );
    let resolved = t.for_service("demo", "app");
    assert!(resolved.reads_request && resolved.access_log.reads_attributes());
    assert!(!resolved.reads_response_trailers);
    let described = resolved.describe().expect("says something");
    assert!(
        described.contains("a JSON access line for every request")
            && described.contains("a text access line for every request")
            && described.contains(", an access line for every request"),
        "{described}"
    );
}

#[test]
fn metrics_are_disabled_and_relabelled_as_istio_merges_them() {
    let all_off = input(
        "off",
        1,
        At::Mesh,
        "metrics: [{overrides: [{disabled: true}]}]",
    );
    let t = build(std::slice::from_ref(&all_off));
    assert!(t.for_service("demo", "app").metrics.off);

    // A lower level's override turns them back on, with its changes.
    let tags = input(
        "tags",
        2,
        At::Waypoint,
        "metrics:
- overrides:
  - match: {metric: REQUEST_COUNT}
    tagOverrides:
      destination_version: {operation: REMOVE}
      request_host: {value: request.host}
  - match: {customMetric: request_bytes, mode: SERVER}
    disabled: true",
    );
    let t = build(&[all_off, tags]);
    let plan = &t.for_service("demo", "app").metrics;
    assert!(!plan.off && !plan.is_plain());
    let count = plan.get(RequestMetric::Count);
    assert!(!count.disabled);
    assert!(matches!(
        count.tags.get("destination_version"),
        Some(TagChange::Remove)
    ));
    assert!(matches!(
        count.tags.get("request_host"),
        Some(TagChange::Upsert(_))
    ));
    assert!(plan.get(RequestMetric::RequestSize).disabled);
    assert!(!plan.get(RequestMetric::Duration).disabled);
    assert!(t.for_service("demo", "app").reads_request);

    // Providers that are not Prometheus take the metrics out of scope.
    let elsewhere = input(
        "sd",
        1,
        At::Mesh,
        "metrics: [{providers: [{name: stackdriver}]}]",
    );
    let t = build(&[elsewhere]);
    assert!(t.for_service("demo", "app").metrics.off);
    let defaults = Defaults {
        metrics: vec!["stackdriver".into()],
        ..Defaults::default()
    };
    let t = build_with(&[], &BTreeMap::new(), &defaults);
    assert!(t.for_service("demo", "app").metrics.off);
}

#[test]
fn expressions_read_the_request_and_fail_as_false_or_unknown() {
    let request = RequestFacts::example();
    let facts = Facts {
        request: Some(&request),
        response_code: Some(404),
        destination: Some(SocketAddr::from(([10, 96, 0, 1], 80))),
        principal: Some("spiffe://cluster.local/ns/demo/sa/client".into()),
        ..Facts::default()
    };
    let attributes = Attributes::of(&facts);
    let holds = |text: &str| Expr::compile(text).expect("compiles").holds(&attributes);
    assert!(holds("request.headers['x-user'] == 'jason'"));
    assert!(holds("request.headers['x-tag'] == 'a,b'"));
    assert!(holds(
        "request.url_path == '/api/items' && request.path.endsWith('page=2')"
    ));
    assert!(holds("response.code == 404 && request.method == 'GET'"));
    assert!(holds("request.useragent.startsWith('curl/')"));
    assert!(holds("destination.port == 80 && connection.mtls"));
    assert!(holds(
        "connection.uri_san_peer_certificate.endsWith('/sa/client')"
    ));
    assert!(holds("has(request.headers.x_missing) == false"));
    // A header not there is an error: not true.
    assert!(!holds("request.headers['x-missing'] == 'a'"));
    // Comparing unlike types is an error: not true.
    assert!(!holds("response.code == 'x'"));
    let label = |text: &str| Expr::compile(text).expect("compiles").label(&attributes);
    assert_eq!(label("request.host"), "app.demo.svc.cluster.local");
    assert_eq!(label("response.code"), "404");
    assert_eq!(label("request.headers['x-missing']"), "unknown");

    // A connection has no request or response: filters on them are false.
    let connection = Facts {
        server_name: Some("api.example.com"),
        ..Facts::default()
    };
    let connection = Attributes::of(&connection);
    let expr = Expr::compile("response.code >= 400").expect("compiles");
    assert!(!expr.holds(&connection));
    let sni =
        Expr::compile("connection.requested_server_name == 'api.example.com'").expect("compiles");
    assert!(sni.holds(&connection));
    // The absent response is an empty map: the rest of the expression counts.
    let either = Expr::compile(
        "response.code >= 500 || connection.requested_server_name == 'api.example.com'",
    )
    .expect("compiles");
    assert!(either.holds(&connection));
    let no_code = Expr::compile("!has(response.code)").expect("compiles");
    assert!(no_code.holds(&connection));
}

#[test]
fn planned_metrics_leave_out_disabled_ones_and_change_labels() {
    let l4 = warren_ztunnel::metrics::Metrics::new();
    let metrics = Metrics::register(&l4);
    let tags = input(
        "tags",
        1,
        At::Waypoint,
        "metrics:
- overrides:
  - match: {metric: REQUEST_COUNT}
    tagOverrides:
      destination_version: {operation: REMOVE}
      request_host: {value: request.host}
  - match: {metric: REQUEST_DURATION}
    disabled: true",
    );
    let t = build(&[tags]);
    let plan = &t.for_service("demo", "app").metrics;
    let request = RequestFacts {
        host: "app.demo".into(),
        ..RequestFacts::default()
    };
    let facts = Facts {
        request: Some(&request),
        ..Facts::default()
    };
    let attributes = Attributes::of(&facts);
    let labels = RequestLabels {
        reporter: "waypoint",
        source_workload: "client".into(),
        source_workload_namespace: "demo".into(),
        source_principal: "spiffe://cluster.local/ns/demo/sa/client".into(),
        source_canonical_service: "client".into(),
        destination_workload: "app".into(),
        destination_workload_namespace: "demo".into(),
        destination_principal: "spiffe://cluster.local/ns/demo/sa/app".into(),
        destination_canonical_service: "app".into(),
        destination_version: "v1".into(),
        destination_service: "app.demo.svc.cluster.local".into(),
        destination_service_name: "app".into(),
        destination_service_namespace: "demo".into(),
        request_protocol: "http",
        response_code: 200,
        grpc_response_status: String::new(),
        response_flags: "-",
        connection_security_policy: "mutual_tls",
    };
    let observed = Observed {
        duration_ms: 1.0,
        request_bytes: 0,
        response_bytes: 10,
    };
    metrics.record_planned(plan, &labels, &attributes, observed);
    metrics.record_planned(plan, &labels, &attributes, observed);
    let text = l4.encode();
    let requests: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .collect();
    assert_eq!(requests.len(), 1, "{text}");
    assert!(
        requests[0].contains("request_host=\"app.demo\""),
        "{}",
        requests[0]
    );
    assert!(
        !requests[0].contains("destination_version"),
        "{}",
        requests[0]
    );
    assert!(requests[0].ends_with(" 2"), "{}", requests[0]);
    assert!(
        !text.contains("istio_request_duration_milliseconds_count{"),
        "a disabled metric has no series: {text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("istio_response_bytes_count{")
                && l.contains("destination_version=\"v1\"")
                && !l.contains("request_host")),
        "the other metrics keep Istio's labels: {text}"
    );
}

#[test]
fn removing_a_label_the_waypoint_does_not_write_changes_nothing() {
    let trims = input(
        "trims",
        1,
        At::Mesh,
        "metrics: [{overrides: [{tagOverrides: {source_cluster: {operation: REMOVE}, destination_cluster: {operation: REMOVE}}}]}]",
    );
    let t = build(&[trims]);
    assert!(t.for_service("demo", "app").metrics.is_plain());
}

#[test]
fn only_the_waypoints_namespace_attaches_telemetry() {
    let mut elsewhere = input(
        "other",
        1,
        At::Service("app"),
        "accessLogging: [{disabled: true, providers: [{name: envoy}]}]",
    );
    elsewhere.namespace = "shop".into();
    let t = build(&[elsewhere]);
    assert!(matches!(
        t.for_service("shop", "app").access_log,
        AccessLog::Default
    ));
}

#[test]
fn label_values_from_requests_are_escaped() {
    let l4 = warren_ztunnel::metrics::Metrics::new();
    let metrics = Metrics::register(&l4);
    let host = input(
        "host",
        1,
        At::Waypoint,
        "metrics: [{overrides: [{match: {metric: REQUEST_COUNT}, tagOverrides: {request_host: {value: request.host}}}]}]",
    );
    let t = build(&[host]);
    let request = RequestFacts {
        host: "a\"b\\c\nd".into(),
        ..RequestFacts::default()
    };
    let facts = Facts {
        request: Some(&request),
        ..Facts::default()
    };
    let mut labels = sample_labels();
    labels.grpc_response_status = crate::metrics::escaped("1\"");
    let observed = Observed {
        duration_ms: 1.0,
        request_bytes: 0,
        response_bytes: 0,
    };
    metrics.record_planned(
        &t.for_service("demo", "a").metrics,
        &labels,
        &Attributes::of(&facts),
        observed,
    );
    let text = l4.encode();
    assert!(text.contains(r#"request_host="a\"b\\c\nd""#), "{text}");
    assert!(text.contains(r#"grpc_response_status="1\"""#), "{text}");
}

fn sample_labels() -> RequestLabels {
    RequestLabels {
        reporter: "waypoint",
        source_workload: "c".into(),
        source_workload_namespace: "demo".into(),
        source_principal: "p".into(),
        source_canonical_service: "c".into(),
        destination_workload: "a".into(),
        destination_workload_namespace: "demo".into(),
        destination_principal: "q".into(),
        destination_canonical_service: "a".into(),
        destination_version: "v1".into(),
        destination_service: "a.demo".into(),
        destination_service_name: "a".into(),
        destination_service_namespace: "demo".into(),
        request_protocol: "http",
        response_code: 200,
        grpc_response_status: String::new(),
        response_flags: "-",
        connection_security_policy: "mutual_tls",
    }
}

#[test]
fn tracing_takes_the_innermost_settings_and_a_zipkin_provider() {
    let collectors = providers(&[
        "{name: zipkin, zipkin: {service: observe/zipkin.observe.svc.cluster.local, port: 9411, maxTagLength: 8}}",
    ]);
    let mesh = input(
        "mesh",
        1,
        At::Mesh,
        "tracing: [{providers: [{name: zipkin}], randomSamplingPercentage: 10, customTags: {team: {literal: {value: shop}}}}]",
    );
    let t = build_with(
        std::slice::from_ref(&mesh),
        &collectors,
        &Defaults::default(),
    );
    let plan = t
        .for_service("demo", "app")
        .tracing
        .clone()
        .expect("a plan");
    assert_eq!(
        (
            plan.host.as_str(),
            plan.port,
            plan.protocol,
            plan.path.as_str()
        ),
        (
            "zipkin.observe.svc.cluster.local",
            9411,
            TraceProtocol::Zipkin,
            "/api/v2/spans"
        )
    );
    assert_eq!((plan.sampling, plan.max_tag_length), (10.0, 8));
    assert_eq!(plan.custom_tags.len(), 1);

    // The namespace's: another rate; the provider and tags stay.
    let rate = input(
        "rate",
        2,
        At::Namespace("demo"),
        "tracing: [{randomSamplingPercentage: 50}]",
    );
    let t = build_with(&[mesh.clone(), rate], &collectors, &Defaults::default());
    let plan = t
        .for_service("demo", "app")
        .tracing
        .clone()
        .expect("a plan");
    assert_eq!((plan.sampling, plan.custom_tags.len()), (50.0, 1));
    // Span reporting off: no tracing at all, as in Istio.
    let quiet = input(
        "quiet",
        2,
        At::Namespace("demo"),
        "tracing: [{disableSpanReporting: true}]",
    );
    let t = build_with(&[mesh.clone(), quiet], &collectors, &Defaults::default());
    assert!(t.for_service("demo", "app").tracing.is_none());

    // Client-side entries leave the waypoint alone; the default rate is
    // Istio's 1 %.
    let client = input(
        "client",
        2,
        At::Namespace("demo"),
        "tracing: [{match: {mode: CLIENT}, randomSamplingPercentage: 50}]",
    );
    let bare = input(
        "bare",
        1,
        At::Mesh,
        "tracing: [{providers: [{name: zipkin}]}]",
    );
    let t = build_with(&[bare, client], &collectors, &Defaults::default());
    let plan = t
        .for_service("demo", "app")
        .tracing
        .clone()
        .expect("a plan");
    assert_eq!(plan.sampling, DEFAULT_SAMPLING);

    // OpenTelemetry: gRPC, or HTTP with `http`.
    let otel = |http: &str| {
        providers(&[&format!(
            "{{name: zipkin, opentelemetry: {{service: otel.observe.svc.cluster.local, port: 4317{http}}}}}"
        )])
    };
    let t = build_with(std::slice::from_ref(&mesh), &otel(""), &Defaults::default());
    let plan = t
        .for_service("demo", "app")
        .tracing
        .clone()
        .expect("a plan");
    assert_eq!(
        (plan.protocol, plan.path.as_str()),
        (TraceProtocol::OtlpGrpc, otlp::EXPORT_PATH)
    );
    let t = build_with(
        std::slice::from_ref(&mesh),
        &otel(", http: {path: /otlp/v1/traces, timeout: 2s}"),
        &Defaults::default(),
    );
    let plan = t
        .for_service("demo", "app")
        .tracing
        .clone()
        .expect("a plan");
    assert_eq!(
        (plan.protocol, plan.path.as_str(), plan.timeout),
        (
            TraceProtocol::OtlpHttp,
            "/otlp/v1/traces",
            std::time::Duration::from_secs(2)
        )
    );

    let t = build_with(
        std::slice::from_ref(&mesh),
        &otel(
            ", grpc: {timeout: 1s, initialMetadata: [{name: X-Tenant, value: shop}, {name: authorization, envName: PATH}, {name: x-token, envName: WARREN_NO_SUCH_VARIABLE}]}",
        ),
        &Defaults::default(),
    );
    let plan = t
        .for_service("demo", "app")
        .tracing
        .clone()
        .expect("a plan");
    assert_eq!(plan.timeout, std::time::Duration::from_secs(1));
    // Headers sent with each export: values given or read from the
    // environment; one whose variable is not set is left out, and said.
    let path = std::env::var("PATH").unwrap_or_default();
    let sent: Vec<(&str, &str)> = plan
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.to_str().unwrap_or_default()))
        .collect();
    assert_eq!(
        sent,
        [("x-tenant", "shop"), ("authorization", path.as_str())]
    );
    says(
        &t,
        "header \"x-token\" left out: WARREN_NO_SUCH_VARIABLE is not set",
    );

    // A provider of another kind: no tracing, said why.
    let t = build_with(
        std::slice::from_ref(&mesh),
        &providers(&["{name: zipkin}"]),
        &Defaults::default(),
    );
    assert!(t.for_service("demo", "app").tracing.is_none());
    says(&t, "neither zipkin nor opentelemetry");

    // The mesh config's default provider, without any Telemetry.
    let defaults = Defaults {
        tracing: vec!["zipkin".into()],
        ..Defaults::default()
    };
    let t = build_with(&[], &collectors, &defaults);
    assert!(t.for_service("demo", "app").tracing.is_some());

    // No provider, an undefined one, or one of another kind: no tracing,
    // and the waypoint says why.
    assert!(build(&[]).for_service("demo", "app").tracing.is_none());
    let t = build(std::slice::from_ref(&mesh));
    assert!(t.for_service("demo", "app").tracing.is_none());
    says(&t, "\"zipkin\" is not defined");
}

fn record() -> span::Record {
    span::Record {
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        id: 0x00f0_67aa_0ba9_02b7,
        parent: Some(0x1),
        start: std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_700_000_000_123_456),
        duration: std::time::Duration::from_micros(1500),
        name: "app.demo.svc.cluster.local:80/*".into(),
        local_service: "waypoint.demo".into(),
        source: IpAddr::V6("fd00::7".parse().expect("an address")),
        tags: vec![
            ("http.status_code".into(), "503".into()),
            ("team".into(), span::cut("a long team name", 6)),
        ],
        error: true,
    }
}

#[test]
fn a_span_is_zipkins_json() {
    assert_eq!(
        zipkin::encode(&record()),
        serde_json::json!({
            "traceId": "4bf92f3577b34da6a3ce929d0e0e4736",
            "id": "00f067aa0ba902b7",
            "parentId": "0000000000000001",
            "name": "app.demo.svc.cluster.local:80/*",
            "kind": "SERVER",
            "timestamp": 1_700_000_000_123_456_u64,
            "duration": 1500,
            "localEndpoint": {"serviceName": "waypoint.demo"},
            "remoteEndpoint": {"ipv6": "fd00::7"},
            "tags": {"http.status_code": "503", "team": "a long"},
        })
    );
    // Cut on a character's boundary.
    assert_eq!(span::cut("héllo", 2), "h");
}

#[test]
fn spans_are_otlp_for_opentelemetry_collectors() {
    use prost::Message as _;
    use warren_api::otlp::{collector::ExportTraceServiceRequest, common::any_value};
    let mut short = record();
    short.trace_id = "00f067aa0ba902b7".into();
    short.parent = None;
    short.error = false;
    let bytes = otlp::encode(&[record(), short]);
    let request = ExportTraceServiceRequest::decode(bytes.as_slice()).expect("OTLP");
    let resource = &request.resource_spans[0];
    let attribute = |attributes: &[warren_api::otlp::common::KeyValue], key: &str| {
        attributes.iter().find(|kv| kv.key == key).and_then(|kv| {
            match kv.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(s) => Some(s.clone()),
                _ => None,
            }
        })
    };
    assert_eq!(
        attribute(
            &resource.resource.as_ref().expect("a resource").attributes,
            "service.name"
        ),
        Some("waypoint.demo".into())
    );
    let spans = &resource.scope_spans[0].spans;
    assert_eq!(spans.len(), 2);
    let first = &spans[0];
    assert_eq!(
        first.trace_id,
        [
            0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e,
            0x47, 0x36
        ]
    );
    assert_eq!(
        first.span_id,
        [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
    );
    assert_eq!(first.parent_span_id, [0, 0, 0, 0, 0, 0, 0, 1]);
    assert_eq!(first.kind, 2, "SERVER");
    assert_eq!(first.start_time_unix_nano, 1_700_000_000_123_456_000);
    assert_eq!(
        first.end_time_unix_nano - first.start_time_unix_nano,
        1_500_000
    );
    assert_eq!(
        attribute(&first.attributes, "http.status_code"),
        Some("503".into())
    );
    assert_eq!(first.status.as_ref().map(|s| s.code), Some(2), "ERROR");
    // OTLP's wire numbers, not only ours read back: `flags` is fixed32
    // field 16, the times fixed64 fields 7 and 8, the status field 15.
    let wire = otlp::encode(&[record()]);
    let has = |bytes: &[u8]| wire.windows(bytes.len()).any(|w| w == bytes);
    assert!(has(&[0x85, 0x01, 1, 0, 0, 0]), "flags");
    assert!(
        has(&[0x39, 0x00, 0xca, 0x85, 0x3d, 0xfe, 0x9c, 0x97, 0x17]),
        "start"
    );
    assert!(has(&[0x7a, 0x02, 0x18, 0x02]), "status ERROR");
    // A 64-bit trace id is padded on the left to OTLP's 16 bytes.
    assert_eq!(spans[1].trace_id[..8], [0; 8]);
    assert!(spans[1].parent_span_id.is_empty() && spans[1].status.is_none());
}
