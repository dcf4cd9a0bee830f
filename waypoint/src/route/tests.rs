//! Scenarios: a VirtualService as an operator writes it, a request, and what
//! the waypoint must do with it.

use std::collections::BTreeMap;
use std::time::Duration;

use http::request::Parts;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::json;

use super::*;

const REVIEWS: &str = "reviews.demo.svc.cluster.local";
const RATINGS: &str = "ratings.demo.svc.cluster.local";
/// The namespaces whose VirtualServices route: the service's and the
/// waypoint's (both `demo` here).
const DEMO: Scope<'static> = Scope {
    service_namespace: "demo",
    waypoint_namespace: "demo",
};

fn vs(name: &str, hosts: &[&str], spec: serde_json::Value) -> VsInput {
    VsInput {
        namespace: "demo".into(),
        name: name.into(),
        created: 0,
        hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
        spec: serde_json::from_value(spec).expect("test spec parses"),
        from_routes: false,
    }
}

fn build(list: Vec<VsInput>) -> RouteTable {
    let (table, errors) = RouteTable::build(list);
    assert!(errors.is_empty(), "unexpected errors: {errors:?}");
    table
}

/// A table with one VirtualService for `reviews`.
fn reviews(spec: serde_json::Value) -> RouteTable {
    build(vec![vs("reviews", &[REVIEWS], spec)])
}

fn request(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
    let mut builder = Request::builder().method(method).uri(uri);
    if !uri.contains("://") {
        builder = builder.header("host", "reviews:9080");
    }
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(()).expect("test request").into_parts().0
}

fn get(uri: &str, headers: &[(&str, &str)]) -> Parts {
    request("GET", uri, headers)
}

/// Who is calling, and on which port.
struct Caller {
    labels: BTreeMap<String, String>,
    namespace: String,
    port: u16,
}

impl Default for Caller {
    fn default() -> Self {
        Self {
            labels: BTreeMap::new(),
            namespace: "demo".into(),
            port: 9080,
        }
    }
}

impl Caller {
    fn labelled(labels: &[(&str, &str)]) -> Self {
        Self {
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Self::default()
        }
    }

    fn info<'a>(&'a self, parts: &'a Parts) -> RequestInfo<'a> {
        RequestInfo::from_parts(parts, self.port, &self.labels, &self.namespace)
    }
}

/// The name of the route `parts` takes to `host`, from the default caller.
fn route_name(table: &RouteTable, host: &str, parts: &Parts) -> Option<String> {
    route_name_from(table, host, parts, &Caller::default())
}

fn route_name_from(
    table: &RouteTable,
    host: &str,
    parts: &Parts,
    caller: &Caller,
) -> Option<String> {
    table
        .route(host, DEMO, &caller.info(parts))
        .routed()
        .map(|r| r.route_name().to_owned())
}

fn rng() -> StdRng {
    StdRng::seed_from_u64(0x5eed)
}

/// Percentage of `n` trials for which `hit` holds.
fn share(n: u32, mut hit: impl FnMut() -> bool) -> f64 {
    let hits = (0..n).filter(|_| hit()).count();
    hits as f64 * 100.0 / f64::from(n)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().expect("test header is text"))
        .collect()
}

// ---------------------------------------------------------------------------
// Destinations
// ---------------------------------------------------------------------------

#[test]
fn weighted_split_80_20_holds_over_2000_picks() {
    let table = reviews(json!({"http": [{"route": [
        {"destination": {"host": REVIEWS, "subset": "v1"}, "weight": 80},
        {"destination": {"host": REVIEWS, "subset": "v2"}, "weight": 20},
    ]}]}));
    let parts = get("/", &[]);
    let caller = Caller::default();
    let routed = table
        .route(REVIEWS, DEMO, &caller.info(&parts))
        .routed()
        .expect("routed");
    let mut rng = rng();
    let v1 = share(2000, || {
        let dest = routed.rule.pick_destination(&mut rng).expect("forwards");
        dest.subset.as_deref() == Some("v1")
    });
    assert!((77.0..=83.0).contains(&v1), "v1 got {v1}%, expected 80±3");
}

#[test]
fn a_lone_destination_weighs_100_and_zero_weights_get_nothing() {
    let table = reviews(json!({"http": [
        {"name": "lone", "match": [{"uri": {"prefix": "/lone"}}],
         "route": [{"destination": {"host": RATINGS, "port": {"number": 9080}}}]},
        {"name": "split", "route": [
            {"destination": {"host": REVIEWS, "subset": "v1"}, "weight": 100},
            {"destination": {"host": REVIEWS, "subset": "v2"}, "weight": 0},
        ]},
    ]}));
    let lone = &table.virtual_services()[0].rules()[0];
    let Action::Forward(dests) = &lone.action else {
        panic!("lone forwards")
    };
    assert_eq!(dests.len(), 1);
    assert_eq!(dests[0].weight, 100);
    assert_eq!(dests[0].host, RATINGS);
    assert_eq!(dests[0].port, Some(9080));
    assert_eq!(dests[0].subset, None);

    let split = &table.virtual_services()[0].rules()[1];
    let Action::Forward(dests) = &split.action else {
        panic!("split forwards")
    };
    assert_eq!(dests.len(), 1, "a destination of weight 0 is left out");
    let mut rng = rng();
    for _ in 0..200 {
        let d = split.pick_destination(&mut rng).expect("forwards");
        assert_eq!(d.subset.as_deref(), Some("v1"));
    }
}

// ---------------------------------------------------------------------------
// Matching
// ---------------------------------------------------------------------------

#[test]
fn end_user_jason_goes_to_v2_ahead_of_the_default_rule() {
    let table = reviews(json!({"http": [
        {"name": "jason",
         "match": [{"headers": {"end-user": {"exact": "jason"}}}],
         "route": [{"destination": {"host": REVIEWS, "subset": "v2"}}]},
        {"name": "default",
         "route": [{"destination": {"host": REVIEWS, "subset": "v1"}}]},
    ]}));
    let subset = |headers: &[(&str, &str)]| {
        let parts = get("/reviews/0", headers);
        let caller = Caller::default();
        let routed = table
            .route(REVIEWS, DEMO, &caller.info(&parts))
            .routed()
            .expect("routed");
        let dest = routed.rule.pick_destination(&mut rng()).expect("forwards");
        (routed.route_name().to_owned(), dest.subset.clone())
    };
    assert_eq!(
        subset(&[("end-user", "jason")]),
        ("jason".into(), Some("v2".into()))
    );
    assert_eq!(
        subset(&[("end-user", "Jason")]),
        ("default".into(), Some("v1".into()))
    );
    assert_eq!(subset(&[]), ("default".into(), Some("v1".into())));
}

#[test]
fn header_matches_exact_prefix_regex_present_and_without() {
    let rule = |name: &str, m: serde_json::Value| json!({"name": name, "match": [m], "route": [{"destination": {"host": REVIEWS}}]});
    let table = reviews(json!({"http": [
        rule("exact", json!({"uri": {"prefix": "/exact"}, "headers": {"x-user": {"exact": "jason"}}})),
        rule("prefix", json!({"uri": {"prefix": "/prefix"}, "headers": {"x-user": {"prefix": "adm"}}})),
        rule("regex", json!({"uri": {"prefix": "/regex"}, "headers": {"x-user": {"regex": "u[0-9]+"}}})),
        rule("present", json!({"uri": {"prefix": "/present"}, "headers": {"x-debug": {}}})),
        rule("absent", json!({"uri": {"prefix": "/absent"}, "withoutHeaders": {"x-canary": {}}})),
        rule("not-prod", json!({"uri": {"prefix": "/not-prod"}, "withoutHeaders": {"x-env": {"exact": "prod"}}})),
    ]}));
    let check = |path: &str, headers: &[(&str, &str)], expected: Option<&str>| {
        assert_eq!(
            route_name(&table, REVIEWS, &get(path, headers)).as_deref(),
            expected,
            "{path} with {headers:?}"
        );
    };
    check("/exact", &[("x-user", "jason")], Some("exact"));
    check("/exact", &[("x-user", "jason2")], None);
    check("/exact", &[], None);
    check("/prefix", &[("x-user", "admin")], Some("prefix"));
    check("/prefix", &[("x-user", "xadmin")], None);
    check("/regex", &[("x-user", "u42")], Some("regex"));
    check("/regex", &[("x-user", "u42x")], None);
    check("/regex", &[("x-user", "xu42")], None);
    check("/present", &[("x-debug", "")], Some("present"));
    check("/present", &[], None);
    check("/absent", &[], Some("absent"));
    check("/absent", &[("x-canary", "1")], None);
    check("/not-prod", &[], Some("not-prod"));
    check("/not-prod", &[("x-env", "dev")], Some("not-prod"));
    check("/not-prod", &[("x-env", "prod")], None);
}

#[test]
fn uri_matches_path_without_query_and_ignore_uri_case() {
    let rule = |name: &str, m: serde_json::Value| json!({"name": name, "match": [m], "route": [{"destination": {"host": REVIEWS}}]});
    let table = reviews(json!({"http": [
        rule("exact", json!({"uri": {"exact": "/login"}})),
        rule("exact-nocase", json!({"uri": {"exact": "/Logout"}, "ignoreUriCase": true})),
        rule("prefix-nocase", json!({"uri": {"prefix": "/API/"}, "ignoreUriCase": true})),
        rule("regex", json!({"uri": {"regex": "/items/[0-9]+"}})),
        // ignoreUriCase does not apply to regexes.
        rule("regex-case", json!({"uri": {"regex": "/Case"}, "ignoreUriCase": true})),
        rule("prefix", json!({"uri": {"prefix": "/static"}})),
    ]}));
    let check = |path: &str, expected: Option<&str>| {
        assert_eq!(
            route_name(&table, REVIEWS, &get(path, &[])).as_deref(),
            expected,
            "{path}"
        );
    };
    check("/login", Some("exact"));
    check("/login?next=/home", Some("exact"));
    check("/login/", None);
    check("/LOGIN", None);
    check("/logout", Some("exact-nocase"));
    check("/api/v1", Some("prefix-nocase"));
    check("/Api/v1", Some("prefix-nocase"));
    check("/items/42", Some("regex"));
    check("/items/42?x=1", Some("regex"));
    check("/items/42/reviews", None);
    check("/case", None);
    check("/Case", Some("regex-case"));
    check("/static/app.js", Some("prefix"));
    check("/statics", Some("prefix"));
}

#[test]
fn method_authority_scheme_port_and_query_params() {
    let rule = |name: &str, m: serde_json::Value| json!({"name": name, "match": [m], "route": [{"destination": {"host": REVIEWS}}]});
    let table = reviews(json!({"http": [
        rule("post", json!({"method": {"exact": "POST"}})),
        rule("authority", json!({"authority": {"prefix": "reviews.demo"}})),
        rule("https", json!({"scheme": {"exact": "https"}})),
        rule("port", json!({"port": 9443})),
        rule("query", json!({"queryParams": {"debug": {"exact": "1"}, "v": {"regex": "v[12]"}}})),
        rule("query-present", json!({"queryParams": {"trace": {}}})),
    ]}));
    let caller = Caller::default();
    let name = |parts: &Parts, caller: &Caller| route_name_from(&table, REVIEWS, parts, caller);
    assert_eq!(
        name(&request("POST", "/", &[]), &caller).as_deref(),
        Some("post")
    );
    assert_eq!(
        name(&get("http://reviews.demo:9080/", &[]), &caller).as_deref(),
        Some("authority")
    );
    assert_eq!(
        name(&get("https://reviews/", &[]), &caller).as_deref(),
        Some("https")
    );
    let on_9443 = Caller {
        port: 9443,
        ..Caller::default()
    };
    assert_eq!(name(&get("/", &[]), &on_9443).as_deref(), Some("port"));
    assert_eq!(
        name(&get("/?v=v2&debug=1", &[]), &caller).as_deref(),
        Some("query")
    );
    assert_eq!(name(&get("/?debug=1&v=v3", &[]), &caller), None);
    assert_eq!(
        name(&get("/?debug=1", &[]), &caller),
        None,
        "both params are needed"
    );
    assert_eq!(
        name(&get("/?trace", &[]), &caller).as_deref(),
        Some("query-present")
    );
    assert_eq!(name(&get("/", &[]), &caller), None);
}

#[test]
fn alternatives_are_ored_and_fields_anded() {
    let table = reviews(json!({"http": [
        {"name": "r", "match": [
            {"name": "a", "uri": {"prefix": "/a"}, "method": {"exact": "GET"}},
            {"name": "b", "uri": {"prefix": "/b"}},
        ], "route": [{"destination": {"host": REVIEWS}}]},
    ]}));
    assert_eq!(
        route_name(&table, REVIEWS, &get("/a", &[])).as_deref(),
        Some("r.a")
    );
    assert_eq!(
        route_name(&table, REVIEWS, &request("PUT", "/a", &[])),
        None
    );
    assert_eq!(
        route_name(&table, REVIEWS, &request("PUT", "/b", &[])).as_deref(),
        Some("r.b")
    );
}

#[test]
fn source_labels_namespace_and_match_gateways() {
    let rule = |name: &str, m: serde_json::Value| json!({"name": name, "match": [m], "route": [{"destination": {"host": REVIEWS}}]});
    let table = reviews(json!({"http": [
        rule("gateway-only", json!({"uri": {"prefix": "/gw"}, "gateways": ["istio-system/ingress"]})),
        // With gateways given, Istio does not look at sourceLabels.
        rule("mesh", json!({"uri": {"prefix": "/gw"}, "gateways": ["mesh"], "sourceLabels": {"app": "nobody"}})),
        rule("productpage", json!({"sourceLabels": {"app": "productpage"}, "sourceNamespace": "demo"})),
        rule("other-ns", json!({"sourceNamespace": "other"})),
    ]}));
    let productpage = Caller::labelled(&[("app", "productpage"), ("version", "v1")]);
    let stranger = Caller::labelled(&[("app", "curl")]);
    let other_ns = Caller {
        namespace: "other".into(),
        ..Caller::labelled(&[("app", "productpage")])
    };
    let name =
        |path: &str, caller: &Caller| route_name_from(&table, REVIEWS, &get(path, &[]), caller);
    assert_eq!(name("/gw", &stranger).as_deref(), Some("mesh"));
    assert_eq!(name("/", &productpage).as_deref(), Some("productpage"));
    assert_eq!(name("/", &stranger), None);
    assert_eq!(name("/", &other_ns).as_deref(), Some("other-ns"));
}

#[test]
fn no_matching_rule_is_told_apart_from_no_virtual_service() {
    let table = reviews(json!({"http": [{"match": [{"uri": {"prefix": "/only"}}],
        "route": [{"destination": {"host": REVIEWS}}]}]}));
    let parts = get("/elsewhere", &[]);
    let caller = Caller::default();
    assert!(
        matches!(
            table.route(REVIEWS, DEMO, &caller.info(&parts)),
            Lookup::NoMatch(_)
        ),
        "reviews has routes and none fits: a 404"
    );
    assert!(
        matches!(
            table.route(RATINGS, DEMO, &caller.info(&parts)),
            Lookup::Default
        ),
        "ratings has none: default routing"
    );
}

#[test]
fn a_virtual_service_of_other_ports_leaves_this_one_to_the_service() {
    let table = reviews(json!({"http": [{"match": [{"port": 9080}],
        "route": [{"destination": {"host": REVIEWS, "subset": "v2"}}]}]}));
    let parts = get("/", &[]);
    let on = |port| {
        let caller = Caller {
            port,
            ..Caller::default()
        };
        matches!(
            table.route(REVIEWS, DEMO, &caller.info(&parts)),
            Lookup::Default
        )
    };
    assert!(on(8080), "no rule can match port 8080: the service itself");
    assert!(!on(9080));
}

#[test]
fn only_the_services_and_the_waypoints_namespaces_route() {
    let mut foreign = vs(
        "aaa",
        &[REVIEWS],
        json!({"http": [{"name": "stolen", "route": [{"destination": {"host": "collector.evil.svc.cluster.local"}}]}]}),
    );
    foreign.namespace = "evil".into();
    let own = vs(
        "reviews",
        &[REVIEWS],
        json!({"http": [{"name": "own", "route": [{"destination": {"host": REVIEWS}}]}]}),
    );
    let (table, errors) = RouteTable::build(vec![foreign, own]);
    assert!(errors.is_empty(), "{errors:?}");
    let parts = get("/", &[]);
    let caller = Caller::default();
    let name = |scope| {
        table
            .route(REVIEWS, scope, &caller.info(&parts))
            .routed()
            .map(|r| r.route_name().to_owned())
    };
    assert_eq!(name(DEMO).as_deref(), Some("own"));
    // In scope only when it is the waypoint's own namespace.
    let evil_waypoint = Scope {
        service_namespace: "demo",
        waypoint_namespace: "evil",
    };
    assert_eq!(name(evil_waypoint).as_deref(), Some("stolen"));
}

#[test]
fn a_service_of_another_namespace_routes_by_what_it_exports_to_the_waypoint() {
    let private = vs(
        "reviews",
        &[REVIEWS],
        json!({"exportTo": ["."], "http": [{"name": "private", "route": [{"destination": {"host": REVIEWS}}]}]}),
    );
    let (table, errors) = RouteTable::build(vec![private]);
    assert!(errors.is_empty(), "{errors:?}");
    let parts = get("/", &[]);
    let caller = Caller::default();
    let shared_waypoint = Scope {
        service_namespace: "demo",
        waypoint_namespace: "mesh-gw",
    };
    assert!(matches!(
        table.route(REVIEWS, shared_waypoint, &caller.info(&parts)),
        Lookup::Default
    ));
    assert!(
        table
            .route(REVIEWS, DEMO, &caller.info(&parts))
            .routed()
            .is_some()
    );
}

// ---------------------------------------------------------------------------
// Hosts and VirtualServices
// ---------------------------------------------------------------------------

fn named_route(name: &str) -> serde_json::Value {
    json!({"http": [{"name": name, "route": [{"destination": {"host": REVIEWS}}]}]})
}

#[test]
fn wildcard_hosts_rank_below_exact_and_by_length() {
    let table = build(vec![
        vs("wide", &["*.svc.cluster.local"], named_route("wide")),
        vs("demo", &["*.demo.svc.cluster.local"], named_route("demo")),
        vs("ratings", &[RATINGS], named_route("ratings")),
    ]);
    let parts = get("/", &[]);
    let name = |host: &str| route_name(&table, host, &parts);
    assert_eq!(name(REVIEWS).as_deref(), Some("demo"));
    assert_eq!(name(RATINGS).as_deref(), Some("ratings"));
    assert_eq!(
        name("details.other.svc.cluster.local").as_deref(),
        Some("wide")
    );
    assert_eq!(
        name("Reviews.Demo.svc.cluster.local.").as_deref(),
        Some("demo")
    );
    assert_eq!(name("demo.svc.cluster.local").as_deref(), Some("wide"));
    assert_eq!(name("svc.cluster.local"), None, "*.x does not match x");
    assert_eq!(name("example.com"), None);
}

#[test]
fn the_first_virtual_service_keeps_a_contested_host() {
    let (table, errors) = RouteTable::build(vec![
        vs("first", &[REVIEWS, RATINGS], named_route("first")),
        vs(
            "second",
            &[REVIEWS, "details.demo.svc.cluster.local"],
            named_route("second"),
        ),
    ]);
    let parts = get("/", &[]);
    assert_eq!(
        route_name(&table, REVIEWS, &parts).as_deref(),
        Some("first")
    );
    assert_eq!(
        route_name(&table, "details.demo.svc.cluster.local", &parts).as_deref(),
        Some("second")
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].virtual_service.to_string(), "demo/second");
    assert_eq!(errors[0].field, "hosts[0]");
    assert_eq!(
        errors[0].effect,
        ErrorEffect::HostIgnored {
            host: REVIEWS.into()
        }
    );
    assert!(errors[0].reason.contains("demo/first"), "{}", errors[0]);
}

#[test]
fn a_virtual_service_with_a_bad_regex_is_reported_and_the_others_still_route() {
    let (table, errors) = RouteTable::build(vec![
        vs(
            "broken",
            &[REVIEWS],
            json!({"http": [{
            "match": [{"headers": {"x-user": {"regex": "([a-z]"}}}],
            "route": [{"destination": {"host": REVIEWS}}]}]}),
        ),
        vs("ratings", &[RATINGS], named_route("ratings")),
    ]);
    assert_eq!(errors.len(), 1, "{errors:?}");
    let error = &errors[0];
    assert_eq!(error.virtual_service.to_string(), "demo/broken");
    assert_eq!(error.field, "spec.http[0].match[0].headers.x-user.regex");
    assert!(error.reason.contains("invalid regex"), "{error}");
    assert_eq!(error.effect, ErrorEffect::Skipped);

    let parts = get("/", &[]);
    assert!(table.for_host(REVIEWS, DEMO).is_none());
    assert_eq!(
        route_name(&table, RATINGS, &parts).as_deref(),
        Some("ratings")
    );
}

#[test]
fn gateway_only_and_tcp_only_virtual_services_are_skipped() {
    let (table, errors) = RouteTable::build(vec![
        vs(
            "ingress",
            &[REVIEWS],
            json!({"gateways": ["istio-system/ingress"],
            "http": [{"route": [{"destination": {"host": REVIEWS}}]}]}),
        ),
        vs(
            "tcp",
            &[RATINGS],
            json!({"tcp": [{"route": [{"destination": {"host": RATINGS}}]}]}),
        ),
        vs(
            "both",
            &["details.demo.svc.cluster.local"],
            json!({"gateways": ["mesh", "istio-system/ingress"],
            "http": [{"route": [{"destination": {"host": REVIEWS}}]}]}),
        ),
    ]);
    let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
    // The TCP-only one is the TCP table's, not an error here.
    assert_eq!(fields, ["spec.gateways"]);
    assert!(errors.iter().all(|e| e.effect == ErrorEffect::Skipped));
    assert!(table.for_host(REVIEWS, DEMO).is_none());
    assert!(table.for_host(RATINGS, DEMO).is_none());
    assert!(
        table
            .for_host("details.demo.svc.cluster.local", DEMO)
            .is_some()
    );
}

#[test]
fn a_virtual_service_without_hosts_is_reported() {
    let (table, errors) = RouteTable::build(vec![vs("nohosts", &[], named_route("x"))]);
    assert!(table.is_empty());
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].field, "hosts");
    assert_eq!(errors[0].effect, ErrorEffect::Skipped);
}

#[test]
fn unsupported_redirect_code_skips_the_virtual_service() {
    let (table, errors) = RouteTable::build(vec![vs(
        "r",
        &[REVIEWS],
        json!({"http": [
        {"redirect": {"uri": "/x", "redirectCode": 305}}]}),
    )]);
    assert!(table.is_empty());
    assert_eq!(errors[0].field, "spec.http[0].redirect.redirectCode");
}

// ---------------------------------------------------------------------------
// Rewrites and header changes
// ---------------------------------------------------------------------------

/// Routes `parts`, applies the rule to it for its first destination, and
/// returns the resulting path and query.
fn rewritten(table: &RouteTable, mut parts: Parts) -> String {
    let caller = Caller::default();
    let (rule, matched) = {
        let routed = table
            .route(REVIEWS, DEMO, &caller.info(&parts))
            .routed()
            .expect("routed");
        (routed.rule, routed.matched)
    };
    let dest = rule.pick_destination(&mut rng()).expect("forwards");
    rule.apply_request(dest, &mut parts, &matched)
        .expect("rewrite is valid");
    parts.uri.path_and_query().expect("has a path").to_string()
}

#[test]
fn uri_rewrite_replaces_the_matched_prefix() {
    let table = reviews(json!({"http": [
        {"match": [{"uri": {"prefix": "/wpcatalog"}}, {"uri": {"prefix": "/consumercatalog"}}],
         "rewrite": {"uri": "/newcatalog"},
         "route": [{"destination": {"host": REVIEWS, "subset": "v2"}}]},
        {"match": [{"uri": {"exact": "/old"}}],
         "rewrite": {"uri": "/new"},
         "route": [{"destination": {"host": REVIEWS}}]},
        {"match": [{"uri": {"prefix": "/API"}, "ignoreUriCase": true}],
         "rewrite": {"uri": "/svc"},
         "route": [{"destination": {"host": REVIEWS}}]},
        // No uri match: Istio matches the prefix "/", so that is what goes.
        {"match": [{"headers": {"x-v2": {}}}],
         "rewrite": {"uri": "/v2/"},
         "route": [{"destination": {"host": REVIEWS}}]},
    ]}));
    assert_eq!(
        rewritten(&table, get("/wpcatalog/item/1?ref=home", &[])),
        "/newcatalog/item/1?ref=home"
    );
    assert_eq!(
        rewritten(&table, get("/consumercatalog/item", &[])),
        "/newcatalog/item"
    );
    assert_eq!(rewritten(&table, get("/old?x=1", &[])), "/new?x=1");
    assert_eq!(rewritten(&table, get("/api/list", &[])), "/svc/list");
    assert_eq!(
        rewritten(&table, get("/books", &[("x-v2", "1")])),
        "/v2/books"
    );
}

#[test]
fn regex_rewrite_substitutes_groups_and_keeps_the_query() {
    let table = reviews(json!({"http": [{
        "rewrite": {"uriRegexRewrite": {"match": "^/service/([^/]+)(/.*)$", "rewrite": "\\2/instance/\\1"}},
        "route": [{"destination": {"host": REVIEWS}}]}]}));
    assert_eq!(
        rewritten(&table, get("/service/foo/v1/api?q=1", &[])),
        "/v1/api/instance/foo?q=1"
    );
    // No match: the path is left alone.
    assert_eq!(rewritten(&table, get("/other", &[])), "/other");
}

#[test]
fn authority_rewrite_sets_host_and_the_uri_authority() {
    let table = reviews(json!({"http": [{
        "rewrite": {"authority": "ratings.demo:9080"},
        "route": [{"destination": {"host": REVIEWS},
            "headers": {"request": {"set": {":authority": "ignored.demo"}}}}]}]}));
    let caller = Caller::default();

    let mut absolute = get("http://reviews:9080/x", &[]);
    let routed = table
        .route(REVIEWS, DEMO, &caller.info(&absolute))
        .routed()
        .expect("routed");
    let (rule, matched) = (routed.rule, routed.matched);
    let dest = rule.pick_destination(&mut rng()).expect("forwards");
    rule.apply_request(dest, &mut absolute, &matched)
        .expect("valid");
    assert_eq!(absolute.uri.to_string(), "http://ratings.demo:9080/x");
    assert_eq!(header(&absolute.headers, "host"), ["ratings.demo:9080"]);

    let mut origin_form = get("/x", &[]);
    rule.apply_request(dest, &mut origin_form, &matched)
        .expect("valid");
    assert_eq!(origin_form.uri.to_string(), "/x");
    assert_eq!(header(&origin_form.headers, "host"), ["ratings.demo:9080"]);
    // What explain reads as the host the request leaves with.
    assert_eq!(rule.rewritten_host(dest), Some("ratings.demo"));
}

#[test]
fn destination_authority_applies_when_the_rule_sets_none() {
    let table = reviews(
        json!({"http": [{"route": [{"destination": {"host": REVIEWS},
        "headers": {"request": {"add": {"host": "canary.demo"}}}}]}]}),
    );
    let caller = Caller::default();
    let mut parts = get("/", &[]);
    let routed = table
        .route(REVIEWS, DEMO, &caller.info(&parts))
        .routed()
        .expect("routed");
    let (rule, matched) = (routed.rule, routed.matched);
    let dest = rule.pick_destination(&mut rng()).expect("forwards");
    rule.apply_request(dest, &mut parts, &matched)
        .expect("valid");
    assert_eq!(header(&parts.headers, "host"), ["canary.demo"]);
    assert_eq!(rule.rewritten_host(dest), Some("canary.demo"));
}

#[test]
fn header_changes_run_removes_then_rule_then_destination() {
    let table = reviews(json!({"http": [{
    "headers": {
        "request": {"set": {"x-a": "rule", "x-set": "rule"}, "add": {"x-b": "rule"}, "remove": ["x-drop", "host"]},
        "response": {"set": {"x-served-by": "rule"}, "add": {"x-r": "rule"}, "remove": ["server"]},
    },
    "route": [{"destination": {"host": REVIEWS},
        "headers": {
            "request": {"set": {"x-a": "dest"}, "remove": ["x-b"]},
            "response": {"add": {"x-r": "dest"}},
        }}]}]}));
    let caller = Caller::default();
    let mut parts = get(
        "/",
        &[("x-b", "client"), ("x-drop", "1"), ("x-set", "client")],
    );
    let routed = table
        .route(REVIEWS, DEMO, &caller.info(&parts))
        .routed()
        .expect("routed");
    let (rule, matched) = (routed.rule, routed.matched);
    let dest = rule.pick_destination(&mut rng()).expect("forwards");
    rule.apply_request(dest, &mut parts, &matched)
        .expect("valid");
    assert_eq!(
        header(&parts.headers, "x-a"),
        ["dest"],
        "destination set wins"
    );
    // The destination's remove runs first, then the rule's add.
    assert_eq!(header(&parts.headers, "x-b"), ["rule"]);
    assert_eq!(header(&parts.headers, "x-set"), ["rule"]);
    assert!(parts.headers.get("x-drop").is_none());
    assert_eq!(
        header(&parts.headers, "host"),
        ["reviews:9080"],
        "Host cannot be removed"
    );

    let mut response = HeaderMap::new();
    response.insert("server", HeaderValue::from_static("upstream"));
    response.insert("x-r", HeaderValue::from_static("upstream"));
    rule.apply_response(Some(dest), &mut response);
    assert!(response.get("server").is_none());
    assert_eq!(header(&response, "x-served-by"), ["rule"]);
    assert_eq!(header(&response, "x-r"), ["upstream", "rule", "dest"]);

    let mut local = HeaderMap::new();
    rule.apply_response(None, &mut local);
    assert_eq!(header(&local, "x-r"), ["rule"]);
}

#[test]
fn with_several_destinations_the_rules_header_changes_come_last() {
    // Each destination's changes are its weighted cluster's, which Envoy
    // applies before the route's.
    let table = reviews(json!({"http": [{
    "headers": {"request": {"set": {"x-ver": "rule"}, "remove": ["x-debug"]}},
    "route": [
        {"destination": {"host": REVIEWS, "subset": "v1"}, "weight": 50,
         "headers": {"request": {"set": {"x-ver": "v1"}, "add": {"x-debug": "1"}}}},
        {"destination": {"host": REVIEWS, "subset": "v2"}, "weight": 50,
         "headers": {"request": {"set": {"x-ver": "v2"}, "add": {"x-debug": "1"}}}}
    ]}]}));
    let caller = Caller::default();
    let mut parts = get("/", &[]);
    let routed = table
        .route(REVIEWS, DEMO, &caller.info(&parts))
        .routed()
        .expect("routed");
    let dest = routed.rule.pick_destination(&mut rng()).expect("forwards");
    routed
        .rule
        .apply_request(dest, &mut parts, &routed.matched)
        .expect("valid");
    assert_eq!(header(&parts.headers, "x-ver"), ["rule"]);
    assert!(
        parts.headers.get("x-debug").is_none(),
        "the rule's remove runs last"
    );

    // A 100/0 canary lists two destinations: the same order, though only
    // one takes traffic (istiod decides before dropping the other).
    let table = reviews(json!({"http": [{
    "headers": {"request": {"set": {"x-ver": "rule"}}},
    "route": [
        {"destination": {"host": REVIEWS, "subset": "v1"}, "weight": 100,
         "headers": {"request": {"set": {"x-ver": "v1"}}}},
        {"destination": {"host": REVIEWS, "subset": "v2"}, "weight": 0}
    ]}]}));
    let mut parts = get("/", &[]);
    let routed = table
        .route(REVIEWS, DEMO, &caller.info(&parts))
        .routed()
        .expect("routed");
    let dest = routed.rule.pick_destination(&mut rng()).expect("forwards");
    routed
        .rule
        .apply_request(dest, &mut parts, &routed.matched)
        .expect("valid");
    assert_eq!(header(&parts.headers, "x-ver"), ["rule"]);
}

// ---------------------------------------------------------------------------
// Redirects and direct responses
// ---------------------------------------------------------------------------

fn redirect_of(table: &RouteTable, parts: &Parts, caller: &Caller) -> Response<bytes::Bytes> {
    let routed = table
        .route(REVIEWS, DEMO, &caller.info(parts))
        .routed()
        .expect("routed");
    let Action::Redirect(redirect) = &routed.rule.action else {
        panic!("a redirect rule")
    };
    redirect.response(&caller.info(parts))
}

fn location(response: &Response<bytes::Bytes>) -> &str {
    response
        .headers()
        .get(http::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .expect("a Location")
}

#[test]
fn redirect_builds_the_location_as_envoy_does() {
    let rule = |prefix: &str, redirect: serde_json::Value| json!({"match": [{"uri": {"prefix": prefix}}], "redirect": redirect});
    let table = reviews(json!({"http": [
        rule("/v1/getProductRatings", json!({"uri": "/v1/bookRatings", "authority": "newratings.default.svc.cluster.local"})),
        rule("/secure", json!({"scheme": "https", "redirectCode": 302})),
        rule("/port", json!({"scheme": "https", "port": 8443})),
        rule("/from-request", json!({"derivePort": "FROM_REQUEST_PORT"})),
        rule("/default-port", json!({"derivePort": "FROM_PROTOCOL_DEFAULT"})),
        rule("/query", json!({"uri": "/new?fresh=1"})),
        rule("/http-80", json!({"port": 80})),
    ]}));
    let caller = Caller::default();
    let go = |path: &str, host: &str| {
        let parts = request("GET", path, &[]);
        let mut parts = parts;
        parts
            .headers
            .insert("host", HeaderValue::from_str(host).expect("test host"));
        redirect_of(&table, &parts, &caller)
    };

    let r = go("/v1/getProductRatings?id=1", "ratings:9080");
    assert_eq!(r.status(), StatusCode::MOVED_PERMANENTLY, "301 by default");
    assert_eq!(
        location(&r),
        "http://newratings.default.svc.cluster.local/v1/bookRatings?id=1"
    );
    assert!(r.body().is_empty());

    let r = go("/secure/page", "reviews:80");
    assert_eq!(r.status(), StatusCode::FOUND);
    assert_eq!(
        location(&r),
        "https://reviews/secure/page",
        "http's :80 dropped"
    );
    assert_eq!(
        location(&go("/secure/page", "reviews:9080")),
        "https://reviews:9080/secure/page"
    );

    assert_eq!(
        location(&go("/port/x", "reviews:9080")),
        "https://reviews:8443/port/x"
    );
    assert_eq!(
        location(&go("/from-request", "reviews")),
        "http://reviews:9080/from-request"
    );
    assert_eq!(
        location(&go("/default-port", "reviews:9080")),
        "http://reviews/default-port"
    );
    assert_eq!(
        location(&go("/query?old=1", "reviews")),
        "http://reviews/new?fresh=1"
    );
    assert_eq!(
        location(&go("/http-80", "reviews:9080")),
        "http://reviews/http-80"
    );
}

#[test]
fn a_prefix_redirect_from_gateway_routes_replaces_the_matched_segments() {
    // As the agent writes a Gateway API `PathPrefix` match: the path
    // itself and the path with a `/` after it.
    let prefix_rule = |value: &str, replacement: &str| {
        let matches = if value == "/" {
            json!([{"uri": {"prefix": "/"}}])
        } else {
            json!([{"uri": {"exact": value}}, {"uri": {"prefix": format!("{value}/")}}])
        };
        json!({"match": matches, "redirect": {"uri": format!("%PREFIX()%{replacement}"), "redirectCode": 302}})
    };
    let spec = json!({"http": [
        prefix_rule("/api", "/v2"),
        prefix_rule("/strip", "/"),
        prefix_rule("/empty", ""),
        prefix_rule("/", "/root"),
    ]});
    let mut input = vs("reviews-routes", &[REVIEWS], spec.clone());
    input.from_routes = true;
    let (table, errors) = RouteTable::build(vec![input]);
    assert!(errors.is_empty(), "{errors:?}");
    let caller = Caller::default();
    let go =
        |path: &str| location(&redirect_of(&table, &request("GET", path, &[]), &caller)).to_owned();
    assert_eq!(go("/api/items?id=1"), "http://reviews:9080/v2/items?id=1");
    assert_eq!(go("/api"), "http://reviews:9080/v2");
    assert_eq!(go("/api/"), "http://reviews:9080/v2/");
    assert_eq!(go("/strip/a/b"), "http://reviews:9080/a/b");
    assert_eq!(go("/strip"), "http://reviews:9080/");
    assert_eq!(go("/empty/a/b"), "http://reviews:9080/a/b");
    assert_eq!(go("/empty"), "http://reviews:9080/");
    assert_eq!(go("/other/x"), "http://reviews:9080/root/other/x");
    assert_eq!(go("/"), "http://reviews:9080/root");

    // Written in a VirtualService by hand, the marker is a path like any
    // other (as in Istio, which reads it only in what it made from routes).
    let table = reviews(spec);
    assert_eq!(
        location(&redirect_of(
            &table,
            &request("GET", "/api/items", &[]),
            &caller
        )),
        "http://reviews:9080/%PREFIX()%/v2"
    );

    // From routes, a rule whose matches are not one prefix is refused.
    let mut input = vs(
        "reviews-routes",
        &[REVIEWS],
        json!({"http": [{"match": [{"uri": {"regex": "/a.*"}}], "redirect": {"uri": "%PREFIX()%/b"}}]}),
    );
    input.from_routes = true;
    let (_, errors) = RouteTable::build(vec![input]);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].to_string().contains("%PREFIX()%"),
        "{}",
        errors[0]
    );
}

#[test]
fn direct_response_with_text_or_base64_body() {
    let table = reviews(json!({"http": [
        {"match": [{"uri": {"prefix": "/text"}}],
         "directResponse": {"status": 503, "body": {"string": "unavailable"}}},
        {"match": [{"uri": {"prefix": "/bytes"}}],
         "directResponse": {"status": 200, "body": {"bytes": "aGVsbG8="}}},
        {"directResponse": {"status": 204}},
    ]}));
    let caller = Caller::default();
    let respond = |path: &str| {
        let parts = get(path, &[]);
        let routed = table
            .route(REVIEWS, DEMO, &caller.info(&parts))
            .routed()
            .expect("routed");
        assert!(routed.rule.pick_destination(&mut rng()).is_none());
        let Action::DirectResponse(direct) = &routed.rule.action else {
            panic!("a direct response")
        };
        direct.response()
    };
    let r = respond("/text");
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.body().as_ref(), b"unavailable");
    assert_eq!(header(r.headers(), "content-type"), ["text/plain"]);
    assert_eq!(respond("/bytes").body().as_ref(), b"hello");
    let r = respond("/empty");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(r.headers().get("content-type").is_none());
}

// ---------------------------------------------------------------------------
// Timeouts, retries, faults, mirrors
// ---------------------------------------------------------------------------

/// The only rule of a table built from one rule.
fn only_rule(rule: serde_json::Value) -> HttpRule {
    let table = reviews(json!({ "http": [rule] }));
    table.virtual_services()[0].rules()[0].clone()
}

fn forward() -> serde_json::Value {
    json!([{"destination": {"host": REVIEWS}}])
}

#[test]
fn timeout_is_parsed_and_absent_by_default() {
    let rule = only_rule(json!({"timeout": "1.5s", "route": forward()}));
    assert_eq!(rule.timeout, Some(Duration::from_millis(1500)));
    let rule = only_rule(json!({"route": forward()}));
    assert_eq!(rule.timeout, None, "Istio: no timeout for HTTP routes");
}

#[test]
fn no_retries_field_means_istios_default_policy() {
    let rule = only_rule(json!({"route": forward()}));
    let p = &rule.retries;
    assert_eq!(*p, RetryPolicy::default());
    assert_eq!(p.attempts, 2);
    assert_eq!(p.per_try_timeout, None);
    assert_eq!(p.backoff.base, Duration::from_millis(25));
    assert_eq!(p.backoff.max, Duration::from_millis(250));
    assert!(p.avoids_previous_hosts(false));
    assert!(
        !p.avoids_previous_hosts(true),
        "Istio: a consistent-hash destination keeps its endpoint on retry"
    );
    assert!(p.should_retry_status(StatusCode::SERVICE_UNAVAILABLE, None));
    assert!(!p.should_retry_status(StatusCode::INTERNAL_SERVER_ERROR, None));
    assert!(!p.should_retry_status(StatusCode::BAD_GATEWAY, None));
    assert!(
        p.should_retry_status(StatusCode::OK, Some(14)),
        "grpc unavailable"
    );
    assert!(
        p.should_retry_status(StatusCode::OK, Some(1)),
        "grpc cancelled"
    );
    assert!(
        !p.should_retry_status(StatusCode::OK, Some(13)),
        "grpc internal"
    );
    assert!(p.should_retry_error(FailureKind::ConnectFailure));
    assert!(p.should_retry_error(FailureKind::RefusedStream));
    assert!(!p.should_retry_error(FailureKind::Reset));
    assert!(!p.should_retry_error(FailureKind::Timeout));
}

#[test]
fn retries_override_the_default_field_by_field() {
    let rule = only_rule(json!({"route": forward(),
        "retries": {"attempts": 3, "perTryTimeout": "2s", "backoff": "100ms", "retryIgnorePreviousHosts": false}}));
    let p = &rule.retries;
    assert_eq!(p.attempts, 3);
    assert_eq!(p.per_try_timeout, Some(Duration::from_secs(2)));
    assert_eq!(p.backoff, Backoff::with_base(Duration::from_millis(100)));
    assert!(!p.avoids_previous_hosts(false));
    let rule = only_rule(json!({"route": forward(),
        "retries": {"attempts": 1, "retryIgnorePreviousHosts": true}}));
    assert!(
        rule.retries.avoids_previous_hosts(true),
        "set explicitly, it holds for a consistent-hash destination too"
    );
    assert_eq!(
        p.retry_on,
        RetryOn::istio_default(),
        "no retryOn: the default's"
    );

    let rule = only_rule(json!({"route": forward(), "retries": {"attempts": 0}}));
    assert_eq!(rule.retries.attempts, 0);
    assert!(
        !rule
            .retries
            .should_retry_status(StatusCode::SERVICE_UNAVAILABLE, None)
    );
    assert!(!rule.retries.should_retry_error(FailureKind::ConnectFailure));
}

/// A policy with three attempts and this `retryOn`.
fn retry_on(conditions: &str) -> RetryPolicy {
    only_rule(json!({"route": forward(), "retries": {"attempts": 3, "retryOn": conditions}}))
        .retries
}

#[test]
fn each_retry_on_condition_retries_what_envoy_retries() {
    use FailureKind::*;
    let all_failures = [
        ConnectFailure,
        Reset,
        ResetBeforeRequest,
        RefusedStream,
        Timeout,
    ];
    let status = |p: &RetryPolicy, code: u16| {
        p.should_retry_status(StatusCode::from_u16(code).expect("test status"), None)
    };
    let failures = |p: &RetryPolicy| -> Vec<FailureKind> {
        all_failures
            .into_iter()
            .filter(|k| p.should_retry_error(*k))
            .collect()
    };

    let p = retry_on("5xx");
    assert!(status(&p, 500) && status(&p, 503) && status(&p, 599));
    assert!(!status(&p, 409) && !status(&p, 200));
    assert_eq!(failures(&p), all_failures);

    let p = retry_on("gateway-error");
    assert!(status(&p, 502) && status(&p, 503) && status(&p, 504));
    assert!(!status(&p, 500) && !status(&p, 501));
    assert_eq!(failures(&p), all_failures);

    let p = retry_on("reset");
    assert!(!status(&p, 503));
    assert_eq!(failures(&p), all_failures);

    let p = retry_on("connect-failure");
    assert!(!status(&p, 503));
    assert_eq!(failures(&p), [ConnectFailure]);

    let p = retry_on("refused-stream");
    assert_eq!(failures(&p), [RefusedStream]);

    let p = retry_on("reset-before-request");
    assert_eq!(failures(&p), [ConnectFailure, ResetBeforeRequest]);

    let p = retry_on("retriable-4xx");
    assert!(status(&p, 409));
    assert!(!status(&p, 404) && !status(&p, 503));
    assert!(failures(&p).is_empty());

    let p = retry_on("retriable-status-codes");
    assert!(!status(&p, 503), "no codes listed, nothing to retry");
    let p = retry_on("retriable-status-codes,418");
    assert!(status(&p, 418) && !status(&p, 503));
    // A bare code implies retriable-status-codes (Istio adds it).
    let p = retry_on("503, 504");
    assert!(p.retry_on.retriable_status_codes);
    assert!(status(&p, 503) && status(&p, 504) && !status(&p, 502));

    for (condition, code) in [
        ("cancelled", 1),
        ("deadline-exceeded", 4),
        ("resource-exhausted", 8),
        ("internal", 13),
        ("unavailable", 14),
    ] {
        let p = retry_on(condition);
        for other in [0, 1, 2, 4, 8, 13, 14] {
            assert_eq!(
                p.should_retry_status(StatusCode::OK, Some(other)),
                other == code,
                "{condition} with grpc-status {other}"
            );
        }
        let mut headers = HeaderMap::new();
        headers.insert("grpc-status", HeaderValue::from(code));
        assert!(
            p.should_retry_response(StatusCode::OK, &headers),
            "{condition} from headers"
        );
        assert!(!status(&p, 503));
    }

    let mut limited = HeaderMap::new();
    limited.insert("x-envoy-ratelimited", HeaderValue::from_static("true"));
    let p = retry_on("envoy-ratelimited");
    assert!(p.should_retry_response(StatusCode::TOO_MANY_REQUESTS, &limited));
    assert!(!p.should_retry_response(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new()));
    let p = retry_on("5xx");
    assert!(
        !p.should_retry_response(StatusCode::SERVICE_UNAVAILABLE, &limited),
        "a rate-limited answer is only retried under envoy-ratelimited"
    );
    assert!(p.should_retry_response(StatusCode::SERVICE_UNAVAILABLE, &HeaderMap::new()));

    for inert in ["retriable-headers", "http3-post-connect-failure"] {
        let p = retry_on(inert);
        assert!(!status(&p, 503) && failures(&p).is_empty(), "{inert}");
    }
}

#[test]
fn unknown_retry_condition_skips_the_virtual_service() {
    let (_, errors) = RouteTable::build(vec![vs(
        "r",
        &[REVIEWS],
        json!({"http": [
        {"route": forward(), "retries": {"attempts": 2, "retryOn": "5xx,sometimes"}}]}),
    )]);
    assert_eq!(errors[0].field, "spec.http[0].retries.retryOn");
    assert!(errors[0].reason.contains("sometimes"), "{}", errors[0]);
}

#[test]
fn backoff_is_jittered_exponential_and_capped() {
    let policy = RetryPolicy::default();
    let mut rng = rng();
    let bounds = [(1, 25), (2, 50), (3, 100), (4, 200), (5, 250), (9, 250)];
    for (retry, bound_ms) in bounds {
        let samples: Vec<Duration> = (0..500).map(|_| policy.backoff(retry, &mut rng)).collect();
        let max = samples.iter().max().copied().unwrap_or_default();
        let min = samples.iter().min().copied().unwrap_or_default();
        let bound = Duration::from_millis(bound_ms);
        assert!(max < bound, "retry {retry}: {max:?} not below {bound:?}");
        assert!(
            max > bound * 9 / 10,
            "retry {retry}: max {max:?} should near {bound:?}"
        );
        assert!(
            min < bound / 10,
            "retry {retry}: min {min:?} shows no jitter"
        );
    }
}

#[test]
fn fault_delay_and_abort_at_50_percent_over_2000_requests() {
    let rule = only_rule(json!({"route": forward(), "fault": {
        "delay": {"fixedDelay": "5s", "percentage": {"value": 50.0}},
        "abort": {"httpStatus": 503, "percentage": {"value": 50.0}}}}));
    let fault = rule.fault.expect("a fault");
    let mut rng = rng();
    let decisions: Vec<FaultDecision> = (0..2000).map(|_| fault.decide(&mut rng)).collect();
    let pct = |f: &dyn Fn(&FaultDecision) -> bool| {
        decisions.iter().filter(|d| f(d)).count() as f64 * 100.0 / 2000.0
    };
    let delayed = pct(&|d| d.delay.is_some());
    let aborted = pct(&|d| d.abort.is_some());
    let both = pct(&|d| d.delay.is_some() && d.abort.is_some());
    assert!((46.0..=54.0).contains(&delayed), "delayed {delayed}%");
    assert!((46.0..=54.0).contains(&aborted), "aborted {aborted}%");
    assert!(
        (21.0..=29.0).contains(&both),
        "independent draws: both {both}%"
    );
    let d = decisions
        .iter()
        .find(|d| d.delay.is_some())
        .expect("some delayed");
    assert_eq!(d.delay, Some(Duration::from_secs(5)));
    let a = decisions
        .iter()
        .find_map(|d| d.abort)
        .expect("some aborted");
    assert_eq!(a, Abort::Http(StatusCode::SERVICE_UNAVAILABLE));
    let response = a.response();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.body().as_ref(), b"fault filter abort");
}

#[test]
fn fault_percentages_default_to_none_and_grpc_aborts_answer_as_grpc() {
    // Istio's reference: without a percentage, no request is faulted.
    let rule = only_rule(json!({"route": forward(), "fault": {
        "delay": {"fixedDelay": "1s"}, "abort": {"grpcStatus": "UNAVAILABLE"}}}));
    let fault = rule.fault.expect("a fault");
    let mut rng = rng();
    assert!((0..500).all(|_| fault.decide(&mut rng) == FaultDecision::default()));

    let rule = only_rule(json!({"route": forward(), "fault": {
        "abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 100}}}}));
    let fault = rule.fault.expect("a fault");
    let decision = fault.decide(&mut rng);
    assert_eq!(decision.abort, Some(Abort::Grpc(14)));
    assert_eq!(decision.delay, None);
    let response = Abort::Grpc(14).response();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(response.headers(), "grpc-status"), ["14"]);
    assert_eq!(
        header(response.headers(), "content-type"),
        ["application/grpc"]
    );
}

#[test]
fn mirrors_default_to_all_requests_and_honour_percentages() {
    let rule = only_rule(json!({"route": forward(),
        "mirror": {"host": RATINGS, "subset": "v2", "port": {"number": 9080}}}));
    assert_eq!(
        rule.mirrors,
        [MirrorTarget {
            host: RATINGS.into(),
            subset: Some("v2".into()),
            port: Some(9080),
            per_million: 1_000_000,
        }]
    );
    let mut rng = rng();
    assert!((0..100).all(|_| rule.mirrors_for(&mut rng).len() == 1));

    let rule = only_rule(json!({"route": forward(),
        "mirror": {"host": RATINGS}, "mirrorPercentage": {"value": 0.0}}));
    assert!(rule.mirrors.is_empty(), "an explicit 0% mirrors nothing");

    let rule = only_rule(json!({"route": forward(), "mirrors": [
        {"destination": {"host": RATINGS}, "percentage": {"value": 50.0}},
        {"destination": {"host": "details.demo.svc.cluster.local"}},
    ]}));
    let mirrored = share(2000, || {
        rule.mirrors_for(&mut rng).iter().any(|m| m.host == RATINGS)
    });
    assert!((46.0..=54.0).contains(&mirrored), "mirrored {mirrored}%");
    assert!(
        (0..100).all(|_| rule
            .mirrors_for(&mut rng)
            .iter()
            .any(|m| m.host == "details.demo.svc.cluster.local")),
        "no percentage: every request"
    );
}

// ---------------------------------------------------------------------------
// Request reading
// ---------------------------------------------------------------------------

#[test]
fn request_info_reads_absolute_and_origin_form() {
    let labels = BTreeMap::new();
    let absolute = get("https://reviews.demo:9443/a/b?x=1", &[]);
    let info = RequestInfo::from_parts(&absolute, 9443, &labels, "demo");
    assert_eq!(info.scheme, "https");
    assert_eq!(info.authority, "reviews.demo:9443");
    assert_eq!(info.path, "/a/b");
    assert_eq!(info.query, Some("x=1"));

    let origin = get("/a", &[]);
    let info = RequestInfo::from_parts(&origin, 9080, &labels, "demo");
    assert_eq!(info.scheme, "http");
    assert_eq!(info.authority, "reviews:9080", "from Host");
    assert_eq!(info.query, None);
}

// ---------------------------------------------------------------------------
// CORS
// ---------------------------------------------------------------------------

fn cors_rule(policy: serde_json::Value) -> crate::route::Cors {
    let table = reviews(
        json!({"http": [{"route": [{"destination": {"host": REVIEWS}}], "corsPolicy": policy}]}),
    );
    let caller = Caller::default();
    let routed = table
        .route(REVIEWS, DEMO, &caller.info(&get("/", &[])))
        .routed()
        .expect("routed");
    routed.rule.cors.clone().expect("a CORS policy")
}

fn cors_check(cors: &crate::route::Cors, method: &str, headers: &[(&str, &str)]) -> CorsCheck {
    let parts = request(method, "/", headers);
    cors.check(&parts.method, &parts.headers)
}

fn text<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[test]
fn a_cors_preflight_is_answered_as_envoy_answers_it() {
    let cors = cors_rule(json!({
        "allowOrigins": [{"exact": "https://shop.example"}, {"regex": "https://.*\\.partner\\.example"}],
        "allowMethods": ["GET", "POST"],
        "allowHeaders": ["x-token", "content-type"],
        "exposeHeaders": ["x-trace"],
        "maxAge": "24h",
        "allowCredentials": true,
    }));
    let preflight = |origin: &str| {
        cors_check(
            &cors,
            "OPTIONS",
            &[
                ("origin", origin),
                ("access-control-request-method", "POST"),
            ],
        )
    };
    let CorsCheck::Answer(answer) = preflight("https://a.partner.example") else {
        panic!("a preflight from an allowed origin is answered");
    };
    let h = answer.headers();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(
        text(h, "access-control-allow-origin"),
        Some("https://a.partner.example")
    );
    assert_eq!(text(h, "access-control-allow-methods"), Some("GET,POST"));
    assert_eq!(
        text(h, "access-control-allow-headers"),
        Some("x-token,content-type")
    );
    assert_eq!(text(h, "access-control-max-age"), Some("86400"));
    assert_eq!(text(h, "access-control-allow-credentials"), Some("true"));
    // Envoy's preflight answer is marked as any answer to the origin is.
    assert_eq!(text(h, "access-control-expose-headers"), Some("x-trace"));

    // Another origin: forwarded untouched (unmatchedPreflights FORWARD, the
    // default); not a CORS request without an Origin, nor a preflight
    // without the method it asks for.
    assert!(matches!(
        preflight("https://evil.example"),
        CorsCheck::Untouched
    ));
    assert!(matches!(
        preflight("https://partner.example"),
        CorsCheck::Untouched
    ));
    assert!(matches!(
        cors_check(&cors, "OPTIONS", &[]),
        CorsCheck::Untouched
    ));
    assert!(matches!(
        cors_check(&cors, "OPTIONS", &[("origin", "https://shop.example")]),
        CorsCheck::Allowed(_)
    ));

    // An actual request from an allowed origin: its answer is marked.
    let CorsCheck::Allowed(origin) =
        cors_check(&cors, "GET", &[("origin", "https://shop.example")])
    else {
        panic!("an allowed origin");
    };
    let mut answer = http::HeaderMap::new();
    cors.allow(origin, &mut answer);
    assert_eq!(
        text(&answer, "access-control-allow-origin"),
        Some("https://shop.example")
    );
    assert_eq!(
        text(&answer, "access-control-allow-credentials"),
        Some("true")
    );
    assert_eq!(
        text(&answer, "access-control-expose-headers"),
        Some("x-trace")
    );
    assert!(matches!(
        cors_check(&cors, "GET", &[("origin", "https://evil.example")]),
        CorsCheck::Untouched
    ));
}

#[test]
fn cors_wildcards_and_unmatched_preflights() {
    // `*` alone allows every origin, and echoes what a preflight asks for.
    let cors = cors_rule(json!({
        "allowOrigins": [{"exact": "*"}],
        "allowMethods": ["*"],
        "allowHeaders": ["*"],
    }));
    let CorsCheck::Answer(answer) = cors_check(
        &cors,
        "OPTIONS",
        &[
            ("origin", "https://anyone.example"),
            ("access-control-request-method", "PATCH"),
            ("access-control-request-headers", "x-a, x-b"),
        ],
    ) else {
        panic!("answered");
    };
    let h = answer.headers();
    assert_eq!(
        text(h, "access-control-allow-origin"),
        Some("https://anyone.example")
    );
    assert_eq!(text(h, "access-control-allow-methods"), Some("PATCH"));
    assert_eq!(text(h, "access-control-allow-headers"), Some("x-a, x-b"));
    assert!(h.get("access-control-allow-credentials").is_none());
    assert!(h.get("access-control-max-age").is_none());

    // IGNORE: a preflight from an origin not allowed is answered here too,
    // without saying it is allowed.
    let cors = cors_rule(json!({
        "allowOrigins": [{"prefix": "https://shop."}],
        "allowMethods": ["GET"],
        "unmatchedPreflights": "IGNORE",
    }));
    let CorsCheck::Answer(answer) = cors_check(
        &cors,
        "OPTIONS",
        &[
            ("origin", "https://evil.example"),
            ("access-control-request-method", "GET"),
        ],
    ) else {
        panic!("answered, not forwarded");
    };
    assert!(
        answer
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    assert_eq!(
        text(answer.headers(), "access-control-allow-methods"),
        Some("GET")
    );
}
