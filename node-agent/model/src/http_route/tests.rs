use crate::reference_grant::ReferenceGrant;
use serde_json::json;

use super::*;

fn route(name: &str, spec: serde_json::Value) -> HTTPRoute {
    let mut route = HTTPRoute::new(name, serde_json::from_value(spec).expect("a route spec"));
    route.metadata.namespace = Some("shop".into());
    route
}

fn reviews(rules: serde_json::Value) -> HTTPRoute {
    route(
        "reviews",
        json!({
            "parentRefs": [{ "group": "", "kind": "Service", "name": "reviews", "port": 9080 }],
            "rules": rules,
        }),
    )
}

fn errors(route: &HTTPRoute) -> Vec<String> {
    validate(route)
        .into_iter()
        .map(|e| format!("{}: {}", e.path, e.reason))
        .collect()
}

/// The VirtualService `routes` make for `reviews`, which must pass the
/// checks a written one does.
fn converted(routes: &[&HTTPRoute]) -> VirtualServiceSpec {
    let vs = virtual_service(
        "shop",
        &crate::http_route::Target::service("shop", "reviews", "cluster.local"),
        "cluster.local",
        routes,
        &Grants::default(),
    )
    .expect("a VirtualService");
    let problems = validate::virtual_service(&vs);
    assert!(problems.is_empty(), "{problems:?}");
    vs.spec
}

#[test]
fn weights_become_percentages_and_prefixes_whole_segments() {
    let r = reviews(json!([{
        "matches": [{ "path": { "type": "PathPrefix", "value": "/api/" } }],
        "backendRefs": [
            { "name": "reviews-v1", "port": 9080, "weight": 2 },
            { "name": "reviews-v2", "port": 9080, "weight": 1 },
            { "name": "reviews-v3", "port": 9080, "weight": 0 },
        ],
    }]));
    assert_eq!(errors(&r), Vec::<String>::new());
    let vs = converted(&[&r]);
    assert_eq!(vs.hosts, ["reviews.shop.svc.cluster.local"]);
    let rule = &vs.http[0];
    assert_eq!(rule.name, "reviews.rules[0].matches[0]");
    // `/api` itself and what is under it; not `/apix`.
    let uris: Vec<_> = rule
        .r#match
        .iter()
        .map(|m| m.uri.clone().expect("a uri"))
        .collect();
    assert_eq!(uris[0].exact.as_deref(), Some("/api"));
    assert_eq!(uris[1].prefix.as_deref(), Some("/api/"));
    assert!(
        rule.r#match.iter().all(|m| m.port == Some(9080)),
        "the parentRef's port"
    );
    let weights: Vec<_> = rule
        .route
        .iter()
        .map(|d| (d.destination.host.as_str(), d.weight))
        .collect();
    assert_eq!(
        weights,
        [
            ("reviews-v1.shop.svc.cluster.local", Some(67)),
            ("reviews-v2.shop.svc.cluster.local", Some(33))
        ]
    );
}

fn created_at(mut route: HTTPRoute, when: &str) -> HTTPRoute {
    route.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        when.parse().expect("a time"),
    ));
    route
}

/// The first label of each rule's first destination, in order.
fn order(vs: &VirtualServiceSpec) -> Vec<String> {
    vs.http
        .iter()
        .map(|r| {
            let host = &r.route[0].destination.host;
            host.split('.').next().unwrap_or_default().to_owned()
        })
        .collect()
}

#[test]
fn matches_are_ordered_by_gateway_api_precedence() {
    let older = created_at(
        reviews(json!([
            { "backendRefs": [{ "name": "catch-all", "port": 80 }] },
            { "matches": [{ "path": { "value": "/a" } }], "backendRefs": [{ "name": "old-a", "port": 80 }] },
        ])),
        "2026-01-01T00:00:00Z",
    );
    let newer = created_at(
        route(
            "newer",
            json!({
                "parentRefs": [{ "group": "", "kind": "Service", "name": "reviews" }],
                "rules": [
                    { "matches": [{ "path": { "value": "/a/b" } }], "backendRefs": [{ "name": "long", "port": 80 }] },
                    { "matches": [{ "path": { "type": "Exact", "value": "/a" } }], "backendRefs": [{ "name": "exact", "port": 80 }] },
                    { "matches": [{ "path": { "value": "/a" }, "headers": [{ "name": "x-canary", "value": "1" }] }],
                      "backendRefs": [{ "name": "canary", "port": 80 }] },
                    { "matches": [{ "path": { "value": "/a" }, "method": "POST" }], "backendRefs": [{ "name": "post", "port": 80 }] },
                    { "matches": [{ "path": { "value": "/a/" } }], "backendRefs": [{ "name": "new-a", "port": 80 }] },
                    { "matches": [{ "path": { "type": "RegularExpression", "value": "/a/.*/c" } }],
                      "backendRefs": [{ "name": "regex", "port": 80 }] },
                ],
            }),
        ),
        "2026-06-01T00:00:00Z",
    );
    // Exact; the longest prefix; a method; more headers; then, among equal
    // matches (`/a` and `/a/` are one prefix), the older route; the
    // catch-all `/`; regular expressions after every prefix (Istio's order).
    let expected = [
        "exact",
        "long",
        "post",
        "canary",
        "old-a",
        "new-a",
        "catch-all",
        "regex",
    ];
    assert_eq!(order(&converted(&[&newer, &older])), expected);
    assert_eq!(
        order(&converted(&[&older, &newer])),
        expected,
        "whatever the input order"
    );
}

#[test]
fn timeouts_and_retries_as_the_gateway_api_means_them() {
    let timeouts = |timeouts: serde_json::Value, retry: Option<serde_json::Value>| {
        let mut rule =
            json!({ "backendRefs": [{ "name": "reviews", "port": 9080 }], "timeouts": timeouts });
        if let Some(retry) = retry {
            rule["retry"] = retry;
        }
        let r = reviews(json!([rule]));
        assert_eq!(errors(&r), Vec::<String>::new());
        let rule = converted(&[&r]).http.remove(0);
        (rule.timeout, rule.retries)
    };
    // A backend timeout without `retry` bounds the request (Istio's
    // default retries then stay as they are).
    assert_eq!(
        timeouts(json!({ "backendRequest": "2s" }), None),
        (Some("2s".into()), None)
    );
    assert_eq!(
        timeouts(json!({ "request": "1s", "backendRequest": "2s" }), None),
        (Some("1s".into()), None)
    );
    // `0s` disables a timeout.
    assert_eq!(timeouts(json!({ "request": "0s" }), None), (None, None));
    // No retries at all.
    let (timeout, retries) = timeouts(
        json!({ "backendRequest": "3s" }),
        Some(json!({ "attempts": 0 })),
    );
    assert_eq!(timeout.as_deref(), Some("3s"));
    assert_eq!(
        retries.map(|r| (r.attempts, r.retry_on)),
        Some((Some(0), String::new()))
    );
    // With retries, each try has the backend timeout.
    let (timeout, retries) = timeouts(
        json!({ "request": "10s", "backendRequest": "1s" }),
        Some(json!({ "attempts": 2, "codes": [503] })),
    );
    assert_eq!(timeout.as_deref(), Some("10s"));
    let retries = retries.expect("retries");
    assert_eq!(retries.per_try_timeout.as_deref(), Some("1s"));
    assert_eq!(retries.retry_on, "connect-failure,refused-stream,503");
}

#[test]
fn several_ports_of_a_service_redirect_ports_and_small_weights() {
    // Two parentRefs to one Service: the rules once per port, named apart.
    let r = route(
        "ports",
        json!({
            "parentRefs": [
                { "group": "", "kind": "Service", "name": "reviews", "port": 9080 },
                { "group": "", "kind": "Service", "name": "reviews", "port": 9081 },
            ],
            "rules": [{ "backendRefs": [
                { "name": "big", "port": 80, "weight": 999 },
                { "name": "small", "port": 80, "weight": 1 },
            ] }],
        }),
    );
    assert_eq!(errors(&r), Vec::<String>::new());
    let vs = converted(&[&r]);
    let names: Vec<_> = vs.http.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "ports.rules[0].matches[0].port[9080]",
            "ports.rules[0].matches[0].port[9081]"
        ]
    );
    // A small weight keeps 1 %, a VirtualService's step, not 0.
    let weights: Vec<_> = vs.http[0].route.iter().map(|d| d.weight).collect();
    assert_eq!(weights, [Some(99), Some(1)]);

    // A redirect's port: as given; the scheme's default when the scheme
    // changes; else the request's.
    let redirect = |filter: serde_json::Value| {
        let r = reviews(
            json!([{ "filters": [{ "type": "RequestRedirect", "requestRedirect": filter }] }]),
        );
        assert_eq!(errors(&r), Vec::<String>::new());
        converted(&[&r])
            .http
            .remove(0)
            .redirect
            .expect("a redirect")
    };
    let given = redirect(json!({ "port": 8443 }));
    assert_eq!((given.port, given.derive_port), (Some(8443), None));
    let scheme = redirect(json!({ "scheme": "https" }));
    assert_eq!(
        scheme.derive_port,
        Some(crate::istio::RedirectPortSelection::FromProtocolDefault)
    );
    let host = redirect(json!({ "hostname": "elsewhere.example" }));
    assert_eq!(
        host.derive_port,
        Some(crate::istio::RedirectPortSelection::FromRequestPort)
    );
    let status_only = redirect(json!({ "statusCode": 301 }));
    assert_eq!(status_only.redirect_code, Some(301));
    // A prefix replacement, with Istio's marker for the waypoint.
    let prefix =
        redirect(json!({ "path": { "type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2" } }));
    assert_eq!(prefix.uri, "%PREFIX()%/v2");
    let strip =
        redirect(json!({ "path": { "type": "ReplacePrefixMatch", "replacePrefixMatch": "" } }));
    assert_eq!(strip.uri, "%PREFIX()%");
    let query = reviews(
        json!([{ "filters": [{ "type": "RequestRedirect", "requestRedirect":
        { "path": { "type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2?x=1" } } }] }]),
    );
    assert!(
        errors(&query)
            .iter()
            .any(|e| e.contains("no query or fragment")),
        "{:?}",
        errors(&query)
    );
    let full =
        redirect(json!({ "path": { "type": "ReplaceFullPath", "replaceFullPath": "/new" } }));
    assert_eq!(full.uri, "/new");

    // A CORS filter is the rule's corsPolicy; a wildcard origin a regex.
    let r = reviews(json!([{ "filters": [{ "type": "CORS", "cors": {
        "allowOrigins": ["https://shop.example", "https://*.partner.example:8443", "*"],
        "allowMethods": ["GET", "POST"], "allowHeaders": ["x-token"],
        "exposeHeaders": ["x-trace"], "maxAge": 600, "allowCredentials": true,
    } }] }]));
    assert_eq!(errors(&r), Vec::<String>::new());
    let cors = converted(&[&r])
        .http
        .remove(0)
        .cors_policy
        .expect("a corsPolicy");
    assert_eq!(
        cors.allow_origins[0].exact.as_deref(),
        Some("https://shop.example")
    );
    let wildcard = regex::Regex::new(&format!(
        "^(?:{})$",
        cors.allow_origins[1].regex.as_deref().expect("a regex")
    ))
    .expect("a valid regex");
    assert!(wildcard.is_match("https://a.partner.example:8443"));
    assert!(wildcard.is_match("https://a.b.partner.example:8443"));
    assert!(!wildcard.is_match("https://partner.example:8443"));
    assert!(!wildcard.is_match("https://a.partner.example"));
    assert!(!wildcard.is_match("http://a.partner.example:8443"));
    assert!(!wildcard.is_match("https://evil.example/.partner.example:8443"));
    assert_eq!(cors.allow_origins[2].exact.as_deref(), Some("*"));
    assert_eq!(cors.allow_methods, ["GET", "POST"]);
    assert_eq!(cors.max_age.as_deref(), Some("600s"));
    assert_eq!(cors.allow_credentials, Some(true));
    let bad = reviews(json!([{ "filters": [{ "type": "CORS", "cors": {
        "allowOrigins": ["shop.example", "https://a.*.example"],
        "allowMethods": ["BREW"], "allowHeaders": ["bad header"], "maxAge": 0,
    } }] }]));
    let found = errors(&bad);
    for expected in [
        "spec.rules[0].filters[0].cors.allowOrigins[0]: \"shop.example\" is not",
        "spec.rules[0].filters[0].cors.allowOrigins[1]: \"https://a.*.example\" is not",
        "spec.rules[0].filters[0].cors.allowMethods[0]: \"BREW\" is not",
        "spec.rules[0].filters[0].cors.allowHeaders[0]: \"bad header\" is not",
        "spec.rules[0].filters[0].cors.maxAge: at least 1",
    ] {
        assert!(
            found.iter().any(|f| f.starts_with(expected)),
            "missing {expected:?} in {found:#?}"
        );
    }

    // A Hostname backend keeps its name; the first header match of a name
    // counts.
    let r = reviews(json!([{
        "matches": [{ "headers": [
            { "name": "X-Env", "value": "first" },
            { "name": "x-env", "value": "second" },
        ] }],
        "backendRefs": [{ "group": "networking.istio.io", "kind": "Hostname", "name": "httpbin.org", "port": 443 }],
    }]));
    let rule = converted(&[&r]).http.remove(0);
    assert_eq!(rule.route[0].destination.host, "httpbin.org");
    assert_eq!(
        rule.r#match[0].headers["x-env"].exact.as_deref(),
        Some("first")
    );
}

#[test]
fn filters_become_the_virtual_service_fields() {
    let r = reviews(json!([{
        "matches": [{ "path": { "value": "/v1" } }],
        "filters": [
            { "type": "RequestHeaderModifier", "requestHeaderModifier": {
                "set": [{ "name": "X-Env", "value": "prod" }], "remove": ["x-debug"] } },
            { "type": "URLRewrite", "urlRewrite": { "hostname": "api.internal",
                "path": { "type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2" } } },
            { "type": "RequestMirror", "requestMirror": {
                "backendRef": { "name": "shadow", "port": 80 }, "percent": 10 } },
        ],
        "backendRefs": [{ "name": "reviews", "port": 9080, "filters": [
            { "type": "ResponseHeaderModifier", "responseHeaderModifier": {
                "add": [{ "name": "x-served-by", "value": "reviews" }] } },
        ] }],
        "timeouts": { "request": "3s", "backendRequest": "1s" },
        "retry": { "attempts": 2, "codes": [503], "backoff": "100ms" },
    }]));
    assert_eq!(errors(&r), Vec::<String>::new());
    let rule = &converted(&[&r]).http[0];
    let request = rule
        .headers
        .as_ref()
        .and_then(|h| h.request.clone())
        .expect("request headers");
    assert_eq!(request.set["x-env"], "prod");
    assert_eq!(request.remove, ["x-debug"]);
    let rewrite = rule.rewrite.clone().expect("a rewrite");
    assert_eq!(rewrite.authority, "api.internal");
    let regex_rewrite = rewrite.uri_regex_rewrite.expect("a path rewrite");
    let re = regex::Regex::new(&regex_rewrite.r#match).expect("a regex");
    for (path, want) in [("/v1", "/v2"), ("/v1/items/7", "/v2/items/7")] {
        let got = re.replace(path, regex_rewrite.rewrite.replace("\\1", "${1}").as_str());
        assert_eq!(got, want, "{path}");
    }
    assert_eq!(
        rule.mirrors[0].destination.host,
        "shadow.shop.svc.cluster.local"
    );
    assert_eq!(
        rule.mirrors[0].percentage.as_ref().map(|p| p.value),
        Some(10.0)
    );
    let response = rule.route[0]
        .headers
        .as_ref()
        .and_then(|h| h.response.clone())
        .expect("backend headers");
    assert_eq!(response.add["x-served-by"], "reviews");
    assert_eq!(rule.timeout.as_deref(), Some("3s"));
    let retries = rule.retries.clone().expect("retries");
    assert_eq!(retries.attempts, Some(2));
    assert_eq!(retries.per_try_timeout.as_deref(), Some("1s"));
    assert_eq!(retries.retry_on, "connect-failure,refused-stream,503");
}

#[test]
fn a_prefix_replaced_by_slash_keeps_what_follows() {
    let rewrite = url_rewrite(
        &UrlRewriteFilter {
            hostname: None,
            path: Some(PathModifier {
                kind: "ReplacePrefixMatch".into(),
                replace_full_path: None,
                replace_prefix_match: Some("/".into()),
            }),
        },
        "PathPrefix",
        "/old/",
    )
    .and_then(|r| r.uri_regex_rewrite)
    .expect("a rewrite");
    let re = regex::Regex::new(&rewrite.r#match).expect("a regex");
    for (path, want) in [("/old", "/"), ("/old/x/y", "/x/y")] {
        assert_eq!(
            re.replace(path, rewrite.rewrite.replace("\\1", "${1}").as_str()),
            want
        );
    }
}

#[test]
fn no_backend_answers_500_and_a_redirect_needs_none() {
    let r = reviews(json!([
        { "matches": [{ "path": { "value": "/gone" } }] },
        { "matches": [{ "path": { "value": "/old" } }], "filters": [{ "type": "RequestRedirect",
            "requestRedirect": { "hostname": "new.example", "path": { "type": "ReplaceFullPath", "replaceFullPath": "/new" } } }] },
    ]));
    assert_eq!(errors(&r), Vec::<String>::new());
    let vs = converted(&[&r]);
    let by_name = |n: &str| {
        vs.http
            .iter()
            .find(|r| r.name.starts_with(n))
            .expect("a rule")
    };
    assert_eq!(
        by_name("reviews.rules[0]")
            .direct_response
            .as_ref()
            .map(|d| d.status),
        Some(500)
    );
    let redirect = by_name("reviews.rules[1]")
        .redirect
        .clone()
        .expect("a redirect");
    assert_eq!(
        (
            redirect.authority.as_str(),
            redirect.uri.as_str(),
            redirect.redirect_code
        ),
        ("new.example", "/new", Some(302))
    );
}

#[test]
fn ingress_routes_are_not_warrens_and_mesh_routes_are_checked() {
    let ingress = route(
        "web",
        json!({ "parentRefs": [{ "name": "public-gateway" }], "rules": [{ "filters": [{ "type": "ExtensionRef" }] }] }),
    );
    assert!(ingress.service_parents().is_empty());
    assert_eq!(
        errors(&ingress),
        Vec::<String>::new(),
        "left to its controller"
    );
    assert!(
        virtual_service(
            "shop",
            &crate::http_route::Target::service("shop", "reviews", "cluster.local"),
            "cluster.local",
            &[&ingress],
            &Grants::default()
        )
        .is_none()
    );

    let bad = route(
        "bad",
        json!({
            "parentRefs": [{ "group": "", "kind": "Service", "name": "reviews", "namespace": "other", "port": 70000 }],
            "rules": [{
                "matches": [
                    { "path": { "type": "RegularExpression", "value": "/(" } },
                    { "path": { "value": "no-slash" }, "method": "BREW", "headers": [{ "name": "bad header", "value": "x" }] },
                ],
                "filters": [
                    { "type": "ExtensionRef" },
                    { "type": "RequestRedirect", "requestRedirect": { "statusCode": 307, "path": { "type": "ReplacePrefixMatch", "replacePrefixMatch": "/x" } } },
                    { "type": "URLRewrite", "urlRewrite": { "hostname": "x" } },
                ],
                "backendRefs": [
                    { "group": "networking.istio.io", "kind": "Hostname", "name": "api.example.com", "namespace": "other" },
                    { "name": "no-port" },
                    { "kind": "Pod", "name": "p", "port": 80, "weight": -1 },
                ],
                "timeouts": { "request": "soon" },
                "retry": { "codes": [200] },
            }],
        }),
    );
    // The API server reads an omitted group as gateway.networking.k8s.io:
    // a Service parent without one is refused, not silently ignored.
    let groupless = route(
        "groupless",
        json!({ "parentRefs": [{ "kind": "Service", "name": "reviews" }], "rules": [] }),
    );
    assert!(groupless.service_parents().is_empty());
    assert!(
        errors(&groupless)
            .iter()
            .any(|e| e.starts_with("spec.parentRefs[0].group:")),
        "{:?}",
        errors(&groupless)
    );

    let found = errors(&bad);
    for expected in [
        "spec.parentRefs[0].namespace: a route for another namespace's Service",
        "spec.parentRefs[0].port: 70000 is not a port",
        "spec.rules[0].matches[0].path.value: not a regular expression",
        "spec.rules[0].matches[1].path.value: \"no-slash\" does not start with /",
        "spec.rules[0].matches[1].method: \"BREW\" is not an HTTP method",
        "spec.rules[0].matches[1].headers[0].name: \"bad header\" is not a header name",
        "spec.rules[0].filters: RequestRedirect and URLRewrite cannot be used together",
        "spec.rules[0].backendRefs: a rule that redirects sends nothing to backends",
        "spec.rules[0].filters[0].type: \"ExtensionRef\" is not supported",
        "spec.rules[0].filters[1].requestRedirect.statusCode: 307 is not 301 or 302",
        "spec.rules[0].filters[1].requestRedirect.path.type: ReplacePrefixMatch needs every match of the rule to be a PathPrefix",
        "spec.rules[0].backendRefs[0].namespace: a Hostname is not in a namespace",
        "spec.rules[0].backendRefs[1].port: required for a Service backend",
        "spec.rules[0].backendRefs[2].kind: /Pod is not a backend",
        "spec.rules[0].backendRefs[2].weight: -1 is not within",
        "spec.rules[0].timeouts.request: \"soon\" is not a duration",
        "spec.rules[0].retry.codes[0]: 200 is not an HTTP error status",
    ] {
        assert!(
            found.iter().any(|f| f.starts_with(expected)),
            "missing {expected:?} in {found:#?}"
        );
    }
}

#[test]
fn another_namespaces_backend_needs_a_reference_grant() {
    let r = reviews(json!([{
        "filters": [{ "type": "RequestMirror", "requestMirror": {
            "backendRef": { "name": "audit", "namespace": "data", "port": 80 },
        }}],
        "backendRefs": [
            { "name": "reviews-v1", "port": 9080, "weight": 3 },
            { "name": "ratings", "namespace": "data", "port": 9080, "weight": 1 },
        ],
    }]));
    // Another namespace's Service is no error in itself: grants come and
    // go on their own.
    assert_eq!(errors(&r), Vec::<String>::new());
    let convert = |grants: &Grants| {
        let vs = virtual_service(
            "shop",
            &crate::http_route::Target::service("shop", "reviews", "cluster.local"),
            "cluster.local",
            &[&r],
            grants,
        )
        .expect("a VirtualService");
        assert!(validate::virtual_service(&vs).is_empty());
        vs.spec.http[0].clone()
    };

    // Without a grant: its share answered 500 (a fault abort of 25 %),
    // the rest to the permitted backend, and no copies to another
    // namespace's Service.
    let rule = convert(&Grants::default());
    let hosts: Vec<(&str, Option<i32>)> = rule
        .route
        .iter()
        .map(|d| (d.destination.host.as_str(), d.weight))
        .collect();
    assert_eq!(hosts, [("reviews-v1.shop.svc.cluster.local", Some(100))]);
    let abort = rule.fault.and_then(|f| f.abort).expect("an abort");
    assert_eq!(abort.http_status, Some(500));
    assert_eq!(abort.percentage.map(|p| p.value), Some(25.0));
    assert!(rule.mirrors.is_empty());

    // With one in `data` for HTTPRoutes of `shop`: sent there, by its name
    // in its own namespace.
    let mut grant = ReferenceGrant::new(
        "from-shop",
        serde_json::from_value(json!({
            "from": [{ "group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "shop" }],
            "to": [{ "group": "", "kind": "Service" }],
        }))
        .expect("a grant"),
    );
    grant.metadata.namespace = Some("data".into());
    let rule = convert(&Grants::new([&grant]));
    let hosts: Vec<(&str, Option<i32>)> = rule
        .route
        .iter()
        .map(|d| (d.destination.host.as_str(), d.weight))
        .collect();
    assert_eq!(
        hosts,
        [
            ("reviews-v1.shop.svc.cluster.local", Some(75)),
            ("ratings.data.svc.cluster.local", Some(25)),
        ]
    );
    assert!(rule.fault.is_none());
    assert_eq!(
        rule.mirrors[0].destination.host,
        "audit.data.svc.cluster.local"
    );

    // Every backend refused: the rule answers 500.
    let only_other = reviews(json!([{ "backendRefs": [
        { "name": "ratings", "namespace": "data", "port": 9080 },
    ]}]));
    let vs = virtual_service(
        "shop",
        &crate::http_route::Target::service("shop", "reviews", "cluster.local"),
        "cluster.local",
        &[&only_other],
        &Grants::default(),
    )
    .expect("a VirtualService");
    assert_eq!(
        vs.spec.http[0].direct_response.as_ref().map(|d| d.status),
        Some(500)
    );
    assert!(vs.spec.http[0].route.is_empty());
}

#[test]
fn a_hostname_naming_another_namespaces_service_needs_a_grant_too() {
    // The waypoint resolves a Service's cluster name to the Service: as a
    // Hostname it must not reach another namespace without a grant.
    let r = reviews(json!([{
        "filters": [{ "type": "RequestMirror", "requestMirror": { "backendRef": {
            "group": "networking.istio.io", "kind": "Hostname", "name": "Audit.Data.svc.cluster.local.",
        }}}],
        "backendRefs": [
            { "name": "reviews-v1", "port": 9080 },
            { "group": "networking.istio.io", "kind": "Hostname", "name": "ratings.data.svc.cluster.local", "port": 9080 },
            { "group": "networking.istio.io", "kind": "Hostname", "name": "api.example.com", "port": 443 },
        ],
    }]));
    assert_eq!(errors(&r), Vec::<String>::new());
    let vs = virtual_service(
        "shop",
        &crate::http_route::Target::service("shop", "reviews", "cluster.local"),
        "cluster.local",
        &[&r],
        &Grants::default(),
    )
    .expect("a VirtualService");
    let rule = &vs.spec.http[0];
    let hosts: Vec<&str> = rule
        .route
        .iter()
        .map(|d| d.destination.host.as_str())
        .collect();
    assert_eq!(
        hosts,
        ["reviews-v1.shop.svc.cluster.local", "api.example.com"],
        "a ServiceEntry host is in no namespace; a Service's cluster name is"
    );
    assert!(rule.fault.as_ref().and_then(|f| f.abort.as_ref()).is_some());
    assert!(rule.mirrors.is_empty());
    // Its own namespace's Service by cluster name needs nothing.
    let own = BackendReference {
        group: Some("networking.istio.io".into()),
        kind: Some("Hostname".into()),
        name: "reviews.shop.svc.cluster.local".into(),
        namespace: None,
        port: None,
    };
    assert_eq!(own.service("shop"), Some(("shop".into(), "reviews".into())));

    // An address is no host name (and would reach the pod behind it).
    let by_address = reviews(json!([{ "backendRefs": [
        { "group": "networking.istio.io", "kind": "Hostname", "name": "10.1.2.3", "port": 80 },
    ]}]));
    assert!(
        errors(&by_address)
            .iter()
            .any(|e| e.starts_with("spec.rules[0].backendRefs[0].name: \"10.1.2.3\" is an address")),
        "{:?}",
        errors(&by_address)
    );
}

#[test]
fn a_section_name_is_a_port_of_the_service_by_name() {
    let mut r = route(
        "named",
        json!({
            "parentRefs": [
                { "group": "", "kind": "Service", "name": "reviews", "sectionName": "http" },
                { "group": "", "kind": "Service", "name": "reviews", "sectionName": "grpc", "port": 9999 },
                { "group": "", "kind": "Service", "name": "reviews", "sectionName": "admin" },
            ],
            "rules": [{ "backendRefs": [{ "name": "reviews-v1", "port": 9080 }] }],
        }),
    );
    assert_eq!(errors(&r), Vec::<String>::new());
    // Before its names are resolved it attaches to nothing.
    assert!(r.service_parents().is_empty());
    resolve_sections(&mut r.spec.parent_refs, |_, service, name| {
        assert_eq!(service, "reviews");
        match name {
            "http" => Some(9080),
            "grpc" => Some(9090),
            _ => None,
        }
    });
    // `http` is port 9080; `grpc` is 9090, not the 9999 also given; the
    // Service has no `admin`.
    assert_eq!(
        r.service_parents(),
        [ServiceParent {
            kind: ParentKind::Service,
            service: "reviews".into(),
            port: Some(9080)
        }]
    );
    let vs = converted(&[&r]);
    assert_eq!(vs.http[0].r#match[0].port, Some(9080));
    // Not a port name at all: refused.
    let bad = route(
        "bad-name",
        json!({
            "parentRefs": [{ "group": "", "kind": "Service", "name": "reviews", "sectionName": "Not_A_Name" }],
            "rules": [],
        }),
    );
    assert!(
        errors(&bad)
            .iter()
            .any(|e| e.starts_with("spec.parentRefs[0].sectionName:")),
        "{:?}",
        errors(&bad)
    );
}

#[test]
fn what_a_route_by_port_name_would_make_is_checked_before_it_attaches() {
    // Removing `host` passes the route's own checks but makes a
    // VirtualService no waypoint takes: refused even though the port name
    // is only resolved once the route attaches.
    for parent in [
        json!({ "group": "", "kind": "Service", "name": "reviews", "sectionName": "http" }),
        json!({ "group": "", "kind": "Service", "name": "reviews", "sectionName": "http", "port": 9080 }),
        json!({ "group": "", "kind": "Service", "name": "reviews", "port": 9080 }),
    ] {
        let r = route(
            "strip-host",
            json!({
                "parentRefs": [parent],
                "rules": [{
                    "filters": [{ "type": "RequestHeaderModifier", "requestHeaderModifier": { "remove": ["host"] } }],
                    "backendRefs": [{ "name": "reviews-v1", "port": 9080 }],
                }],
            }),
        );
        let found = errors(&r);
        assert!(
            found
                .iter()
                .any(|e| e.starts_with("spec: makes a VirtualService Warren cannot route with")),
            "{parent}: {found:?}"
        );
    }
}

#[test]
fn a_service_entry_parent_attaches_a_route_to_its_hosts() {
    let good = route(
        "egress",
        json!({
            "parentRefs": [{ "group": "networking.istio.io", "kind": "ServiceEntry", "name": "httpbin", "port": 443 }],
            "rules": [{ "backendRefs": [{ "group": "networking.istio.io", "kind": "Hostname", "name": "httpbin.org", "port": 443 }] }],
        }),
    );
    assert!(errors(&good).is_empty(), "{:?}", errors(&good));
    assert_eq!(
        good.service_parents(),
        [ServiceParent {
            kind: ParentKind::ServiceEntry,
            service: "httpbin".into(),
            port: Some(443),
        }]
    );
    let target = Target::service_entry("httpbin", vec!["httpbin.org".into()]);
    let vs = virtual_service(
        "shop",
        &target,
        "cluster.local",
        &[&good],
        &Grants::default(),
    )
    .expect("a VirtualService for the entry");
    assert_eq!(vs.metadata.name.as_deref(), Some("httpbin.entry-routes"));
    assert_eq!(vs.spec.hosts, ["httpbin.org"]);
    assert_eq!(vs.spec.http[0].r#match[0].port, Some(443));
    // Not a Service of the same name.
    let service = Target::service("shop", "httpbin", "cluster.local");
    assert!(
        virtual_service(
            "shop",
            &service,
            "cluster.local",
            &[&good],
            &Grants::default()
        )
        .is_none()
    );

    // The wrong group, and another namespace's entry (a consumer route).
    let bad = route(
        "bad",
        json!({
            "parentRefs": [
                { "group": "gateway.networking.k8s.io", "kind": "ServiceEntry", "name": "httpbin" },
                { "group": "networking.istio.io", "kind": "ServiceEntry", "name": "httpbin", "namespace": "other" },
            ],
            "rules": [],
        }),
    );
    let found = errors(&bad);
    assert!(
        found.iter().any(
            |e| e.starts_with("spec.parentRefs[0].group:") && e.contains("networking.istio.io")
        ) && found
            .iter()
            .any(|e| e.starts_with("spec.parentRefs[1].namespace:") && e.contains("ServiceEntry")),
        "{found:?}"
    );
}

/// The routes' VirtualService is as old as the oldest route attached to its
/// Service: another Service's older route does not make it older (the
/// waypoint ranks VirtualServices of a host by age).
#[test]
fn the_routes_virtual_service_is_as_old_as_the_services_own_routes() {
    let mine = created_at(
        reviews(json!([{ "backendRefs": [{ "name": "reviews", "port": 9080 }] }])),
        "2026-03-01T00:00:00Z",
    );
    let other = created_at(
        route(
            "ratings",
            json!({
                "parentRefs": [{ "group": "", "kind": "Service", "name": "ratings" }],
                "rules": [{ "backendRefs": [{ "name": "ratings", "port": 9080 }] }],
            }),
        ),
        "2026-01-01T00:00:00Z",
    );
    let vs = virtual_service(
        "shop",
        &crate::http_route::Target::service("shop", "reviews", "cluster.local"),
        "cluster.local",
        &[&other, &mine],
        &Grants::default(),
    )
    .expect("a VirtualService");
    assert_eq!(
        vs.metadata.creation_timestamp,
        mine.metadata.creation_timestamp
    );
}
