//! MeshConfig checks: the extension providers CUSTOM policies name.

use std::collections::BTreeSet;

use crate::error::FieldError;
use crate::istio::mesh::{
    BodyInCheck, ExtAuthzGrpc, ExtAuthzHttp, HttpHeader, MeshConfig, OTHER_PROVIDER_KINDS,
    OpenTelemetry, Zipkin, split_service,
};
use crate::log_format::LogFormat;

use super::{Report, duration, host_name, is_dns1123_label, port};

/// Checks a mesh config; `path` is where it sits (`data.mesh`).
pub fn mesh_config(path: &str, mesh: &MeshConfig) -> Vec<FieldError> {
    let mut r = Report::default();
    let mut names = BTreeSet::new();
    for (i, provider) in mesh.extension_providers.iter().enumerate() {
        let path = format!("{path}.extensionProviders[{i}]");
        if provider.name.is_empty() {
            r.error(format!("{path}.name"), "required");
        } else if !names.insert(provider.name.as_str()) {
            r.error(
                format!("{path}.name"),
                format!(
                    "{:?} is already the name of an earlier provider",
                    provider.name
                ),
            );
        }
        let mut kinds: Vec<&str> = Vec::new();
        if let Some(http) = &provider.envoy_ext_authz_http {
            kinds.push("envoyExtAuthzHttp");
            ext_authz_http(&mut r, &format!("{path}.envoyExtAuthzHttp"), http);
        }
        if let Some(grpc) = &provider.envoy_ext_authz_grpc {
            kinds.push("envoyExtAuthzGrpc");
            ext_authz_grpc(&mut r, &format!("{path}.envoyExtAuthzGrpc"), grpc);
        }
        if let Some(log) = &provider.envoy_file_access_log {
            kinds.push("envoyFileAccessLog");
            if let Some(format) = &log.log_format
                && let Err(error) = LogFormat::of_provider(format)
            {
                r.error(format!("{path}.envoyFileAccessLog.logFormat"), error);
            }
        }
        if provider.prometheus.is_some() {
            kinds.push("prometheus");
        }
        if let Some(z) = &provider.zipkin {
            kinds.push("zipkin");
            zipkin(&mut r, &format!("{path}.zipkin"), z);
        }
        if let Some(otel) = &provider.opentelemetry {
            kinds.push("opentelemetry");
            opentelemetry(&mut r, &format!("{path}.opentelemetry"), otel);
        }
        for key in provider.other.keys() {
            if OTHER_PROVIDER_KINDS.contains(&key.as_str()) {
                kinds.push(key);
            } else {
                r.error(
                    format!("{path}.{key}"),
                    "not a kind of extension provider Istio defines",
                );
            }
        }
        match kinds.len() {
            0 if provider.other.is_empty() => r.error(
                path,
                "needs one provider kind (envoyExtAuthzHttp, envoyExtAuthzGrpc, or one of Istio's telemetry providers)",
            ),
            0 | 1 => {}
            _ => r.error(
                path,
                format!("has {} provider kinds; give exactly one", kinds.join(" and ")),
            ),
        }
    }
    let encoding = &mesh.access_log_encoding;
    if !matches!(encoding.as_str(), "" | "TEXT" | "JSON") {
        r.error(
            format!("{path}.accessLogEncoding"),
            format!("{encoding:?} is not TEXT or JSON"),
        );
    } else if let Err(error) = LogFormat::of_mesh(&mesh.access_log_format, encoding) {
        r.error(format!("{path}.accessLogFormat"), error);
    }
    r.into_errors()
}

fn ext_authz_http(r: &mut Report, path: &str, http: &ExtAuthzHttp) {
    common(
        r,
        path,
        &http.service,
        http.port,
        http.timeout.as_deref(),
        http.status_on_error.as_deref(),
        http.include_request_body_in_check.as_ref(),
    );
    if let Some(prefix) = &http.path_prefix
        && !prefix.starts_with('/')
    {
        r.error(
            format!("{path}.pathPrefix"),
            format!("{prefix:?} must begin with '/'"),
        );
    }
    for (field, patterns) in [
        (
            "includeRequestHeadersInCheck",
            &http.include_request_headers_in_check,
        ),
        ("includeHeadersInCheck", &http.include_headers_in_check),
        (
            "headersToUpstreamOnAllow",
            &http.headers_to_upstream_on_allow,
        ),
        (
            "headersToDownstreamOnDeny",
            &http.headers_to_downstream_on_deny,
        ),
        (
            "headersToDownstreamOnAllow",
            &http.headers_to_downstream_on_allow,
        ),
    ] {
        for (i, pattern) in patterns.iter().enumerate() {
            if let Err(reason) = header_pattern(pattern) {
                r.error(format!("{path}.{field}[{i}]"), reason);
            }
        }
    }
    for (name, value) in &http.include_additional_headers_in_check {
        let at = format!("{path}.includeAdditionalHeadersInCheck.{name}");
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() || name.starts_with(':') {
            r.error(&at, format!("{name:?} is not a valid header name"));
        } else if http::HeaderValue::from_str(value).is_err() {
            r.error(&at, format!("{value:?} is not a valid header value"));
        } else if is_command_operator(value) {
            // Istio lets Envoy fill such values from the request; sent as
            // written they would tell the authorizer something false.
            r.error(
                &at,
                format!("{value:?}: values taken from the request (%…%) are not supported; give a fixed value"),
            );
        }
    }
}

fn ext_authz_grpc(r: &mut Report, path: &str, grpc: &ExtAuthzGrpc) {
    common(
        r,
        path,
        &grpc.service,
        grpc.port,
        grpc.timeout.as_deref(),
        grpc.status_on_error.as_deref(),
        grpc.include_request_body_in_check.as_ref(),
    );
}

/// What both kinds of external authorizer have.
fn common(
    r: &mut Report,
    path: &str,
    service: &str,
    number: u32,
    timeout: Option<&str>,
    status_on_error: Option<&str>,
    body: Option<&BodyInCheck>,
) {
    service_and_port(r, path, service, number);
    if let Some(timeout) = timeout {
        positive(r, &format!("{path}.timeout"), timeout);
    }
    if let Some(status) = status_on_error
        && status_code(status).is_none()
    {
        r.error(
            format!("{path}.statusOnError"),
            format!("{status:?} is not an HTTP status code (200-599)"),
        );
    }
    if let Some(body) = body
        && body.max_request_bytes == 0
    {
        r.error(
            format!("{path}.includeRequestBodyInCheck.maxRequestBytes"),
            "required: how many bytes of the body the check carries (at least 1)",
        );
    }
}

fn zipkin(r: &mut Report, path: &str, zipkin: &Zipkin) {
    service_and_port(r, path, &zipkin.service, zipkin.port);
    if let Some(p) = &zipkin.path {
        post_path(r, &format!("{path}.path"), p);
    }
    headers(r, &format!("{path}.headers"), &zipkin.headers);
}

/// Headers a provider sends: names a request may carry (not the ones the
/// proxy writes itself), each with a value or an environment variable.
fn headers(r: &mut Report, path: &str, headers: &[HttpHeader]) {
    /// What the proxy sets on each post itself.
    const OWN: [&str; 6] = [
        "host",
        "content-type",
        "content-length",
        "te",
        "connection",
        "transfer-encoding",
    ];
    for (i, header) in headers.iter().enumerate() {
        let path = format!("{path}[{i}]");
        let lower = header.name.to_ascii_lowercase();
        if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
            r.error(
                format!("{path}.name"),
                format!("{:?} is not a header name", header.name),
            );
        } else if OWN.contains(&lower.as_str()) {
            r.error(
                format!("{path}.name"),
                format!("{:?} is set by the proxy itself", header.name),
            );
        }
        match (&header.value, &header.env_name) {
            (Some(value), None) => {
                if http::HeaderValue::from_str(value).is_err() {
                    r.error(
                        format!("{path}.value"),
                        "not a header value (control characters?)",
                    );
                }
            }
            (None, Some(name)) if name.is_empty() || name.contains('=') => {
                r.error(
                    format!("{path}.envName"),
                    format!("{name:?} is not a variable's name"),
                );
            }
            (None, Some(_)) => {}
            _ => r.error(path, "give one of value and envName"),
        }
    }
}

/// Where spans are posted: a path a request can have.
fn post_path(r: &mut Report, path: &str, value: &str) {
    if !value.starts_with('/') {
        r.error(path, format!("{value:?} must begin with '/'"));
    } else if value.parse::<http::uri::PathAndQuery>().is_err() {
        r.error(path, format!("{value:?} is not a path a request can have"));
    }
}

fn opentelemetry(r: &mut Report, path: &str, otel: &OpenTelemetry) {
    service_and_port(r, path, &otel.service, otel.port);
    if otel.http.is_some() && otel.grpc.is_some() {
        r.error(path, "only one of http and grpc may be set");
    }
    if let Some(http) = &otel.http {
        if let Some(p) = &http.path {
            // Istio joins the path to the collector's address: a missing
            // leading `/` is one it adds.
            let rooted = if p.starts_with('/') {
                p.clone()
            } else {
                format!("/{p}")
            };
            post_path(r, &format!("{path}.http.path"), &rooted);
        }
        if let Some(timeout) = &http.timeout {
            positive(r, &format!("{path}.http.timeout"), timeout);
        }
        headers(r, &format!("{path}.http.headers"), &http.headers);
    }
    if let Some(grpc) = &otel.grpc {
        if let Some(timeout) = &grpc.timeout {
            positive(r, &format!("{path}.grpc.timeout"), timeout);
        }
        headers(
            r,
            &format!("{path}.grpc.initialMetadata"),
            &grpc.initial_metadata,
        );
    }
}

fn positive(r: &mut Report, path: &str, value: &str) {
    match duration(path, value) {
        Ok(limit) if limit.is_zero() => r.error(path, "must be longer than 0"),
        Ok(_) => {}
        Err(error) => r.push(error),
    }
}

/// Where a provider is: `[<namespace>/]<hostname>` and a port.
fn service_and_port(r: &mut Report, path: &str, service: &str, number: u32) {
    let service_path = format!("{path}.service");
    match split_service(service) {
        (_, "") => r.error(
            &service_path,
            "required: the provider's host, `[<namespace>/]<hostname>`",
        ),
        (Some(namespace), host) => {
            if !is_dns1123_label(namespace) {
                r.error(
                    &service_path,
                    format!("{namespace:?} is not a namespace name"),
                );
            }
            authorizer_host(r, &service_path, host);
        }
        (None, host) => authorizer_host(r, &service_path, host),
    }
    if number == 0 {
        r.error(format!("{path}.port"), "required");
    } else {
        port(r, &format!("{path}.port"), number);
    }
}

/// A provider's host: a fully qualified name, as Istio asks, without a
/// wildcard (it names one service).
fn authorizer_host(r: &mut Report, path: &str, host: &str) {
    if host.contains('*') {
        r.error(path, format!("{host:?}: a wildcard names no one service"));
    } else if !host.contains('.') {
        r.error(
            path,
            format!("{host:?} is not fully qualified (e.g. \"ext-authz.auth.svc.cluster.local\")"),
        );
    } else {
        host_name(r, path, host);
    }
}

/// `statusOnError` as a status code.
pub fn status_code(text: &str) -> Option<u16> {
    text.parse::<u16>()
        .ok()
        .filter(|code| (200..=599).contains(code))
}

/// A header name pattern as Istio's provider lists take them: exact,
/// `prefix*` or `*suffix`, without case.
fn header_pattern(pattern: &str) -> Result<(), String> {
    let name = pattern
        .strip_suffix('*')
        .or_else(|| pattern.strip_prefix('*'))
        .unwrap_or(pattern);
    if name.is_empty() {
        return Err(format!(
            "{pattern:?}: give a header name, `prefix*` or `*suffix`"
        ));
    }
    if name.contains('*') {
        return Err(format!("{pattern:?}: '*' may only begin or end a pattern"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'+-.^_`|~:".contains(&b))
    {
        return Err(format!("{pattern:?} is not a header name pattern"));
    }
    Ok(())
}

/// Whether `value` uses Envoy's `%COMMAND%` substitution.
fn is_command_operator(value: &str) -> bool {
    let Some(rest) = value.strip_prefix('%') else {
        return value.contains("%REQ(") || value.contains("%DOWNSTREAM_");
    };
    rest.bytes()
        .take_while(|b| b.is_ascii_uppercase() || *b == b'_')
        .count()
        > 0
        && value.ends_with('%')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> Vec<String> {
        let mesh: MeshConfig = serde_yaml::from_str(yaml).expect("parses");
        mesh_config("data.mesh", &mesh)
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn providers_istio_accepts() {
        let errors = check(
            r#"
accessLogFile: /dev/stdout
accessLogEncoding: JSON
accessLogFormat: '{"code": "%RESPONSE_CODE%", "path": "%REQ(:PATH):64%"}'
extensionProviders:
- name: text-stdout
  envoyFileAccessLog:
    path: /dev/stdout
    logFormat: {text: "[%START_TIME(%Y-%m-%d)%] %REQ(:METHOD)% %CEL(request.url_path)% %DOWNSTREAM_TLS_VERSION%"}
- name: sample-http
  envoyExtAuthzHttp:
    service: ext-authz.foo.svc.cluster.local
    port: "8000"
    timeout: 2s
    pathPrefix: /check
    failOpen: true
    statusOnError: "503"
    includeRequestHeadersInCheck: ["x-ext-authz", "x-user-*", "*-id"]
    includeAdditionalHeadersInCheck: {x-from: waypoint}
    headersToUpstreamOnAllow: ["x-ext-authz-check-result"]
    headersToDownstreamOnDeny: ["x-ext-authz-check-result", "content-type"]
- name: sample-grpc
  envoyExtAuthzGrpc:
    service: foo/ext-authz.example.com
    port: 9000
    includeRequestBodyInCheck: {maxRequestBytes: 4096, allowPartialMessage: true}
- name: tracing
  zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411, maxTagLength: 100, path: /api/v2/spans}
- name: otel
  opentelemetry: {service: otel.observe.svc.cluster.local, port: 4317, resourceDetectors: {environment: {}}}
- name: otel-http
  opentelemetry:
    service: observe/otel.observe.svc.cluster.local
    port: "4318"
    http: {path: v1/traces, timeout: 2s, headers: [{name: x-tenant, value: shop}, {name: authorization, envName: OTEL_TOKEN}]}
- name: otel-grpc
  opentelemetry: {service: otel.observe.svc.cluster.local, port: 4317, grpc: {initialMetadata: [{name: x-tenant, value: shop}]}}
- name: zipkin-auth
  zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411, headers: [{name: x-scope, value: all}]}
- name: stdout
  envoyFileAccessLog: {path: /dev/stdout, logFormat: {labels: {code: "%RESPONSE_CODE%"}}}
- name: prom
  prometheus: {}
defaultProviders: {metrics: [prom], accessLogging: [stdout], tracing: [otel]}
"#,
        );
        assert!(errors.is_empty(), "{errors:?}");
    }

    #[test]
    fn mistakes_are_named() {
        let errors = check(
            r#"
extensionProviders:
- name: a
  envoyExtAuthzHttp: {service: ext-authz, port: 0, pathPrefix: check, statusOnError: "42",
                      headersToUpstreamOnAllow: ["*"], includeRequestHeadersInCheck: ["x-*-y"]}
- name: a
  envoyExtAuthzGrpc: {service: "*.example.com", port: 70000, timeout: 0s,
                      includeRequestBodyInCheck: {allowPartialMessage: true}}
- name: b
  envoyExtAuthzHttp: {service: Bad_NS/x.example.com, port: 80,
                      includeAdditionalHeadersInCheck: {x-client: "%DOWNSTREAM_REMOTE_ADDRESS%"}}
  envoyExtAuthzGrpc: {service: x.example.com, port: 80}
- name: c
  zipkn: {service: z.example.com}
- name: d
- name: e
  zipkin: {service: zipkin, port: 9411, path: "/a b"}
- name: f
  opentelemetry: {service: otel.observe.svc.cluster.local, http: {path: "v1/a b", timeout: 0s}, grpc: {}}
- name: g
  envoyFileAccessLog: {logFormat: {text: "%RESPONSE_CODE% %NO_SUCH%"}}
- name: h
  envoyFileAccessLog: {logFormat: {text: "x", labels: {a: b}}}
- name: i
  opentelemetry:
    service: otel.observe.svc.cluster.local
    port: 4318
    http: {headers: [{name: "bad name", value: x}, {name: content-type, value: x}, {name: x-a}, {name: x-b, value: a, envName: B}]}
accessLogEncoding: YAML
"#,
        );
        let expect = [
            "extensionProviders[0].envoyExtAuthzHttp.service: \"ext-authz\" is not fully qualified",
            "extensionProviders[0].envoyExtAuthzHttp.port: required",
            "extensionProviders[0].envoyExtAuthzHttp.statusOnError: \"42\" is not an HTTP status code",
            "extensionProviders[0].envoyExtAuthzHttp.pathPrefix: \"check\" must begin with '/'",
            "extensionProviders[0].envoyExtAuthzHttp.includeRequestHeadersInCheck[0]: \"x-*-y\": '*' may only begin or end",
            "extensionProviders[0].envoyExtAuthzHttp.headersToUpstreamOnAllow[0]: \"*\": give a header name",
            "extensionProviders[1].name: \"a\" is already the name of an earlier provider",
            "extensionProviders[1].envoyExtAuthzGrpc.service: \"*.example.com\": a wildcard",
            "extensionProviders[1].envoyExtAuthzGrpc.port: port 70000 is out of range",
            "extensionProviders[1].envoyExtAuthzGrpc.timeout: must be longer than 0",
            "extensionProviders[1].envoyExtAuthzGrpc.includeRequestBodyInCheck.maxRequestBytes: required",
            "extensionProviders[2].envoyExtAuthzHttp.service: \"Bad_NS\" is not a namespace name",
            "extensionProviders[2].envoyExtAuthzHttp.includeAdditionalHeadersInCheck.x-client: \"%DOWNSTREAM_REMOTE_ADDRESS%\": values taken from the request",
            "extensionProviders[2]: has envoyExtAuthzHttp and envoyExtAuthzGrpc provider kinds",
            "extensionProviders[3].zipkn: not a kind of extension provider",
            "extensionProviders[4]: needs one provider kind",
            "extensionProviders[5].zipkin.service: \"zipkin\" is not fully qualified",
            "extensionProviders[5].zipkin.path: \"/a b\" is not a path a request can have",
            "extensionProviders[6].opentelemetry.port: required",
            "extensionProviders[6].opentelemetry: only one of http and grpc may be set",
            "extensionProviders[6].opentelemetry.http.path: \"/v1/a b\" is not a path a request can have",
            "extensionProviders[6].opentelemetry.http.timeout: must be longer than 0",
            "extensionProviders[7].envoyFileAccessLog.logFormat: %NO_SUCH% is not a command operator Warren knows",
            "extensionProviders[8].envoyFileAccessLog.logFormat: only one of text and labels",
            "data.mesh.accessLogEncoding: \"YAML\" is not TEXT or JSON",
            "extensionProviders[9].opentelemetry.http.headers[0].name: \"bad name\" is not a header name",
            "extensionProviders[9].opentelemetry.http.headers[1].name: \"content-type\" is set by the proxy itself",
            "extensionProviders[9].opentelemetry.http.headers[2]: give one of value and envName",
            "extensionProviders[9].opentelemetry.http.headers[3]: give one of value and envName",
        ];
        for want in expect {
            assert!(
                errors.iter().any(|e| e.contains(want)),
                "missing {want:?} in {errors:#?}"
            );
        }
        assert_eq!(errors.len(), expect.len(), "{errors:#?}");
    }
}
