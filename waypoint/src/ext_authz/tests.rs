use ::http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use warren_api::ext_authz::{
    CheckResponse, DeniedHttpResponse, OkHttpResponse,
    check_response::HttpResponse,
    envoy::{
        config::core::v3::{HeaderValue as ProtoHeader, HeaderValueOption, QueryParameter},
        r#type::v3::HttpStatus,
    },
    google::rpc::Status,
};
use warren_model::istio::mesh::ExtensionProvider;

use super::*;

fn provider(yaml: &str) -> Provider {
    let spec: ExtensionProvider = serde_yaml::from_str(yaml).expect("test provider");
    Provider::compile(&spec).expect("compiles")
}

fn http_settings(yaml: &str) -> http::Settings {
    match provider(yaml).protocol {
        Protocol::Http(settings) => settings,
        Protocol::Grpc => unreachable!("an HTTP provider"),
    }
}

fn request(uri: &str, headers: &[(&'static str, &'static str)]) -> ::http::request::Parts {
    let mut builder = Request::builder().method("POST").uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(()).expect("test request").into_parts().0
}

fn answer(
    status: u16,
    headers: &[(&'static str, &'static str)],
    body: &'static str,
) -> Response<Bytes> {
    let mut response = Response::new(Bytes::from_static(body.as_bytes()));
    *response.status_mut() = StatusCode::from_u16(status).expect("status");
    for (name, value) in headers {
        response
            .headers_mut()
            .append(*name, HeaderValue::from_static(value));
    }
    response
}

const HTTP: &str = r#"
name: sample
envoyExtAuthzHttp:
  service: ext-authz.auth.svc.cluster.local
  port: "8000"
  pathPrefix: /check
  includeRequestHeadersInCheck: ["x-ext-authz", "x-user-*"]
  includeAdditionalHeadersInCheck: {x-from: waypoint, x-ext-authz: overridden}
  headersToUpstreamOnAllow: ["x-ext-authz-check-result", "x-auth-*"]
  headersToDownstreamOnAllow: ["x-trace-*"]
"#;

#[test]
fn providers_take_istios_defaults() {
    let p = provider(
        "{name: p, envoyExtAuthzGrpc: {service: opa/opa.opa.svc.cluster.local., port: 9191}}",
    );
    assert_eq!(
        (p.host.as_str(), p.port),
        ("opa.opa.svc.cluster.local", 9191)
    );
    assert_eq!(p.timeout, DEFAULT_TIMEOUT);
    assert_eq!(p.status_on_error, StatusCode::FORBIDDEN);
    assert!(!p.fail_open);
    let p = provider(
        "{name: p, envoyExtAuthzHttp: {service: a.b.svc.cluster.local, port: 80, timeout: 250ms, statusOnError: '503', failOpen: true}}",
    );
    assert_eq!(p.timeout, Duration::from_millis(250));
    assert_eq!(p.status_on_error, StatusCode::SERVICE_UNAVAILABLE);
    assert!(p.fail_open);
    assert_eq!(p.kind(), "http");
}

#[test]
fn an_http_check_copies_what_the_provider_names() {
    let settings = http_settings(HTTP);
    let parts = request(
        "http://app.demo/orders/7?full=1",
        &[
            ("authorization", "Bearer t"),
            ("x-ext-authz", "allow"),
            ("x-user-id", "7"),
            ("x-user-name", "ann"),
            ("cookie", "secret"),
            ("content-length", "12"),
        ],
    );
    let check = settings
        .check(&parts, "app.demo:8080", None)
        .expect("a check");
    assert_eq!(check.method, "POST");
    assert_eq!(check.uri, "/check/orders/7?full=1");
    let h = &check.headers;
    assert_eq!(h[header::HOST], "app.demo:8080");
    assert_eq!(h[header::AUTHORIZATION], "Bearer t");
    assert_eq!(h["x-user-id"], "7");
    assert_eq!(h["x-user-name"], "ann");
    // Fixed headers replace the request's.
    assert_eq!(h["x-ext-authz"], "overridden");
    assert_eq!(h["x-from"], "waypoint");
    // Not named: not sent. The length is the check's own (no body).
    assert!(!h.contains_key(header::COOKIE));
    assert_eq!(h[header::CONTENT_LENGTH], "0");
}

#[test]
fn an_http_answer_allows_only_with_200() {
    let settings = http_settings(HTTP);
    let Verdict::Allow(changes) = settings.verdict(answer(
        200,
        &[
            ("x-ext-authz-check-result", "allowed"),
            ("x-auth-user", "ann"),
            ("x-trace-id", "abc"),
            ("x-envoy-auth-headers-to-remove", "x-remove-me, cookie"),
            ("content-length", "0"),
            ("x-other", "ignored"),
        ],
        "",
    )) else {
        panic!("200 allows");
    };
    let mut parts = request(
        "/",
        &[
            ("x-auth-user", "forged"),
            ("cookie", "c"),
            ("x-remove-me", "1"),
            ("x-keep", "1"),
        ],
    );
    changes.apply_to_request(&mut parts);
    assert_eq!(parts.headers["x-auth-user"], "ann");
    assert_eq!(parts.headers["x-ext-authz-check-result"], "allowed");
    assert!(!parts.headers.contains_key("cookie") && !parts.headers.contains_key("x-remove-me"));
    assert!(!parts.headers.contains_key("x-other"));
    assert_eq!(parts.headers["x-keep"], "1");
    let mut response = HeaderMap::new();
    response.insert("x-trace-id", HeaderValue::from_static("upstream"));
    changes.apply_to_response(&mut response);
    let traces: Vec<_> = response.get_all("x-trace-id").iter().collect();
    assert_eq!(traces, ["upstream", "abc"]);

    // 5xx: the authorizer could not decide.
    assert!(matches!(
        settings.verdict(answer(503, &[], "")),
        Verdict::Error(_)
    ));
    // Anything else is its answer to the client, with its headers but the host.
    let Verdict::Deny(denied) = settings.verdict(answer(
        302,
        &[
            ("location", "https://login.example/"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("host", "x"),
        ],
        "log in first",
    )) else {
        panic!("302 denies");
    };
    assert_eq!(denied.status(), StatusCode::FOUND);
    assert_eq!(denied.headers()["location"], "https://login.example/");
    assert_eq!(denied.headers().get_all("set-cookie").iter().count(), 2);
    assert!(!denied.headers().contains_key("host"));
    assert_eq!(denied.body().as_ref(), b"log in first");
}

#[test]
fn headers_to_the_client_on_deny_keep_what_a_client_needs() {
    let settings = http_settings(
        "{name: p, envoyExtAuthzHttp: {service: a.b.svc.cluster.local, port: 80, headersToDownstreamOnDeny: [x-reason]}}",
    );
    let Verdict::Deny(denied) = settings.verdict(answer(
        401,
        &[
            ("x-reason", "expired"),
            ("www-authenticate", "Bearer"),
            ("x-internal", "no"),
        ],
        "",
    )) else {
        panic!("401 denies");
    };
    assert_eq!(denied.headers()["x-reason"], "expired");
    assert_eq!(denied.headers()["www-authenticate"], "Bearer");
    assert!(!denied.headers().contains_key("x-internal"));
}

fn option(key: &str, value: &str, append: Option<bool>, action: i32) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(ProtoHeader {
            key: key.into(),
            value: value.into(),
            raw_value: Vec::new(),
        }),
        append,
        append_action: action,
        keep_empty_value: false,
    }
}

#[test]
fn a_grpc_answer_round_trips_and_decides() {
    let ok = CheckResponse {
        status: Some(Status {
            code: 0,
            message: String::new(),
        }),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers: vec![
                option("x-user", "ann", None, 0),
                option("x-groups", "ops", Some(true), 0),
                option("host", "elsewhere", None, 0),
            ],
            headers_to_remove: vec!["authorization".into()],
            response_headers_to_add: vec![
                option("x-a", "1", None, 0),
                option("x-b", "2", None, 1),
                option("x-c", "3", Some(false), 0),
                option("x-d", "4", None, 3),
            ],
            query_parameters_to_set: vec![QueryParameter {
                key: "tenant".into(),
                value: "t 1".into(),
            }],
            query_parameters_to_remove: vec!["debug".into()],
        })),
    };
    // Framed and read back as a server's answer would be.
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(prost::Message::encoded_len(&ok) as u32).to_be_bytes());
    framed.extend_from_slice(&prost::Message::encode_to_vec(&ok));
    let read = unframe(&framed).expect("a message");
    assert_eq!(read, ok);
    let Verdict::Allow(changes) = grpc::verdict(read) else {
        panic!("code 0 allows");
    };
    let mut parts = request(
        "/orders?debug=1&tenant=x&page=2&flag&q=%FF",
        &[("authorization", "t"), ("x-groups", "dev"), ("host", "app")],
    );
    changes.apply_to_request(&mut parts);
    assert_eq!(parts.headers["x-user"], "ann");
    assert_eq!(parts.headers["x-groups"], "dev,ops");
    assert_eq!(parts.headers["host"], "app");
    assert!(!parts.headers.contains_key("authorization"));
    // Only the parameters named change; the rest go on as written.
    assert_eq!(parts.uri, "/orders?page=2&flag&q=%FF&tenant=t+1");
    let mut response = HeaderMap::new();
    for name in ["x-a", "x-b", "x-c"] {
        response.insert(name, HeaderValue::from_static("old"));
    }
    changes.apply_to_response(&mut response);
    assert_eq!(response.get_all("x-a").iter().count(), 2);
    assert_eq!(response["x-b"], "old");
    assert_eq!(response["x-c"], "3");
    assert!(!response.contains_key("x-d"));

    let denied = CheckResponse {
        status: Some(Status {
            code: 7,
            message: "no".into(),
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: 401 }),
            headers: vec![
                option("x-why", "expired", None, 0),
                option("x-skip", "1", Some(true), 0),
            ],
            body: "token expired".into(),
        })),
    };
    let Verdict::Deny(response) = grpc::verdict(denied) else {
        panic!("code 7 denies");
    };
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()["x-why"], "expired");
    assert!(!response.headers().contains_key("x-skip"));
    assert_eq!(response.body().as_ref(), b"token expired");
    // A denial that says no more is a 403.
    let bare = CheckResponse {
        status: Some(Status {
            code: 16,
            message: String::new(),
        }),
        http_response: None,
    };
    let Verdict::Deny(response) = grpc::verdict(bare) else {
        panic!("denies");
    };
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
}

/// A CheckResponse read as the waypoint reads an authorizer's answer.
fn unframe(body: &[u8]) -> Result<CheckResponse, String> {
    crate::grpc::unframe(body, "CheckResponse")
}

#[test]
fn grpc_framing_refuses_what_is_not_one_message() {
    assert!(unframe(&[0, 0, 0]).is_err());
    assert!(unframe(&[1, 0, 0, 0, 0]).is_err());
    assert!(
        unframe(&[0, 0, 0, 0, 9, 1])
            .unwrap_err()
            .contains("cut short")
    );
    // Not a CheckResponse: field 1 as a varint where a message belongs.
    assert!(unframe(&[0, 0, 0, 0, 2, 0x08, 0x01]).is_err());
}

#[test]
fn a_grpc_check_describes_the_request() {
    let parts = request(
        "/orders/7?full=1",
        &[("x-a", "1"), ("x-a", "2"), ("content-length", "3")],
    );
    let attributes = grpc::HttpAttributes {
        id: "req-1",
        parts: &parts,
        host: "app.demo",
        body: Some(b"{\"order\": 7}"),
        pack_as_bytes: false,
    };
    let check = grpc::check(
        &grpc::Peer {
            ip: "10.0.0.1".parse().expect("ip"),
            port: 0,
            principal: "spiffe://cluster.local/ns/demo/sa/web",
            service: "",
        },
        &grpc::Peer {
            ip: "10.96.0.9".parse().expect("ip"),
            port: 8080,
            principal: "spiffe://cluster.local/ns/demo/sa/waypoint",
            service: "app.demo.svc.cluster.local",
        },
        Some(&attributes),
    );
    let framed = crate::grpc::frame(&check);
    assert_eq!(framed[0], 0);
    assert_eq!(
        u32::from_be_bytes([framed[1], framed[2], framed[3], framed[4]]) as usize,
        framed.len() - 5
    );
    let attributes = check.attributes.expect("attributes");
    let source = attributes.source.expect("source");
    assert_eq!(source.principal, "spiffe://cluster.local/ns/demo/sa/web");
    let http = attributes.request.and_then(|r| r.http).expect("http");
    assert_eq!(http.path, "/orders/7?full=1");
    assert_eq!(http.host, "app.demo");
    assert_eq!(http.size, 3);
    assert_eq!(http.headers["x-a"], "1,2");
    assert_eq!(http.headers[":path"], "/orders/7?full=1");
    assert_eq!(http.headers[":method"], "POST");
    assert_eq!(http.id, "req-1");
    assert_eq!(http.body, "{\"order\": 7}");
    assert!(http.raw_body.is_empty());
}

#[test]
fn patterns_are_exact_prefix_or_suffix_without_case() {
    let p = |t: &str| Pattern::new(t);
    assert!(p("X-User").matches("x-user") && !p("x-user").matches("x-user-id"));
    assert!(p("x-user-*").matches("x-user-id") && !p("x-user-*").matches("x-use"));
    assert!(p("*-id").matches("x-request-id") && !p("*-id").matches("x-identity"));
}

/// The wire bytes of Envoy's messages, field numbers and all, written out by
/// hand from its protos: a wrong number here would still round-trip through
/// prost, but no real authorizer would understand it.
#[test]
fn messages_have_envoys_field_numbers() {
    use prost::Message as _;
    use warren_api::ext_authz::{AttributeContext, CheckRequest, attribute_context};
    // attributes(1) { request(4) { http(2) { path(4): "/p" } } }
    let check = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    path: "/p".into(),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
    };
    assert_eq!(
        check.encode_to_vec(),
        [0x0a, 0x08, 0x22, 0x06, 0x12, 0x04, 0x22, 0x02, b'/', b'p']
    );
    // status(1) { code(1): 7 }, denied_response(2) { status(1) { code(1): 401 }, body(3): "x" }
    let denied = [
        0x0a, 0x02, 0x08, 0x07, 0x12, 0x08, 0x0a, 0x03, 0x08, 0x91, 0x03, 0x1a, 0x01, b'x',
    ];
    let Verdict::Deny(response) =
        grpc::verdict(CheckResponse::decode(&denied[..]).expect("decodes"))
    else {
        panic!("code 7 denies");
    };
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.body().as_ref(), b"x");
    // ok_response(3) { headers(2) { header(1) { key(1): "k", value(2): "v" } },
    //                  headers_to_remove(5): "r", response_headers_to_add(6) { header(1) { key "a", value "b" } } }
    let ok = [
        0x1a, 0x17, 0x12, 0x08, 0x0a, 0x06, 0x0a, 0x01, b'k', 0x12, 0x01, b'v', 0x2a, 0x01, b'r',
        0x32, 0x08, 0x0a, 0x06, 0x0a, 0x01, b'a', 0x12, 0x01, b'b',
    ];
    let Verdict::Allow(changes) = grpc::verdict(CheckResponse::decode(&ok[..]).expect("decodes"))
    else {
        panic!("no status allows");
    };
    assert_eq!(
        changes.set,
        [(
            ::http::HeaderName::from_static("k"),
            HeaderValue::from_static("v")
        )]
    );
    assert_eq!(changes.remove, [::http::HeaderName::from_static("r")]);
    assert_eq!(changes.response.len(), 1);

    // attributes(1) { source(1) { principal(4): "p" },
    //                 request(4) { http(2) { headers(3) { "a": "b" }, raw_body(12): "z" } } }
    let check = CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(attribute_context::Peer {
                principal: "p".into(),
                ..Default::default()
            }),
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    headers: [("a".to_owned(), "b".to_owned())].into(),
                    raw_body: b"z".to_vec(),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
    };
    assert_eq!(
        check.encode_to_vec(),
        [
            0x0a, 0x14, 0x0a, 0x03, 0x22, 0x01, b'p', 0x22, 0x0d, 0x12, 0x0b, 0x1a, 0x06, 0x0a,
            0x01, b'a', 0x12, 0x01, b'b', 0x62, 0x01, b'z'
        ]
    );
    // ok_response(3) { query_parameters_to_set(7) { key "q", value "1" },
    //                  query_parameters_to_remove(8): "r" }
    let query = [
        0x1a, 0x0b, 0x3a, 0x06, 0x0a, 0x01, b'q', 0x12, 0x01, b'1', 0x42, 0x01, b'r',
    ];
    let Verdict::Allow(changes) =
        grpc::verdict(CheckResponse::decode(&query[..]).expect("decodes"))
    else {
        panic!("no status allows");
    };
    assert_eq!(changes.query_set, [("q".to_owned(), "1".to_owned())]);
    assert_eq!(changes.query_remove, ["r"]);
}
