//! The Istio config corpus: YAML that must parse, round-trip and validate
//! (`tests/config/valid/`), and YAML that must be refused with a given
//! field path and reason (`tests/config/invalid/`).
//!
//! Each valid file uses every field Warren models for its kind, so a field
//! the types drop or rename shows up as a round-trip difference. Each invalid
//! file holds one object whose first line says what must be reported:
//! `# expect: <path>: <reason substring>`.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use warren_node_agent::model::FieldError;
use warren_node_agent::model::backend_tls_policy::{self, BackendTLSPolicy};
use warren_node_agent::model::grpc_route::{self, GRPCRoute};
use warren_node_agent::model::http_route::{self, HTTPRoute};
use warren_node_agent::model::istio::*;
use warren_node_agent::model::l4_route::{self, TCPRoute, TLSRoute};
use warren_node_agent::model::reference_grant::{self, ReferenceGrant};
use warren_node_agent::model::validate;

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/config");

fn yaml_files(folder: &str) -> Vec<PathBuf> {
    let dir = Path::new(CORPUS).join(folder);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn kind_of(doc: &serde_yaml::Value) -> String {
    doc.get("kind")
        .and_then(serde_yaml::Value::as_str)
        .unwrap_or("?")
        .to_owned()
}

/// Deserializes with the path of the failing field, as the agent does.
fn typed<'de, T: DeserializeOwned, D: serde::Deserializer<'de>>(de: D) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(de).map_err(validate::from_serde)
}

/// What a document turned into: its re-serialized JSON and the validation
/// errors.
struct Checked {
    json: serde_json::Value,
    errors: Vec<FieldError>,
}

fn check_as<T: Serialize>(
    object: Result<T, FieldError>,
    rules: fn(&T) -> Vec<FieldError>,
) -> Result<Checked, FieldError> {
    let object = object?;
    Ok(Checked {
        json: serde_json::to_value(&object).expect("typed objects serialize"),
        errors: rules(&object),
    })
}

/// Deserializes into the typed object for the document's `kind` from any
/// serde deserializer (a YAML value, or text), then validates it.
macro_rules! check {
    ($kind:expr, $de:expr) => {
        match $kind {
            "VirtualService" => check_as::<VirtualService>(typed($de), validate::virtual_service),
            "DestinationRule" => {
                check_as::<DestinationRule>(typed($de), validate::destination_rule)
            }
            "ServiceEntry" => check_as::<ServiceEntry>(typed($de), validate::service_entry),
            "WorkloadEntry" => check_as::<WorkloadEntry>(typed($de), validate::workload_entry),
            "AuthorizationPolicy" => {
                check_as::<AuthorizationPolicy>(typed($de), validate::authorization_policy)
            }
            "PeerAuthentication" => {
                check_as::<PeerAuthentication>(typed($de), validate::peer_authentication)
            }
            "RequestAuthentication" => {
                check_as::<RequestAuthentication>(typed($de), validate::request_authentication)
            }
            "HTTPRoute" => check_as::<HTTPRoute>(typed($de), http_route::validate),
            "GRPCRoute" => check_as::<GRPCRoute>(typed($de), grpc_route::validate),
            "TCPRoute" => check_as::<TCPRoute>(typed($de), l4_route::validate_tcp),
            "TLSRoute" => check_as::<TLSRoute>(typed($de), l4_route::validate_tls),
            "ReferenceGrant" => check_as::<ReferenceGrant>(typed($de), reference_grant::validate),
            "BackendTLSPolicy" => {
                check_as::<BackendTLSPolicy>(typed($de), backend_tls_policy::validate)
            }
            "Telemetry" => check_as::<telemetry::Telemetry>(typed($de), validate::telemetry),
            other => panic!("the corpus holds no {other}"),
        }
    };
}

/// Every number as f64: `value: 50` in YAML is an integer, the typed f64
/// serializes as `50.0`; they are the same setting.
fn normalize(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Number(n) => n
            .as_f64()
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::Number(n), Value::Number),
        Value::Array(items) => Value::Array(items.into_iter().map(normalize).collect()),
        Value::Object(map) => {
            Value::Object(map.into_iter().map(|(k, v)| (k, normalize(v))).collect())
        }
        other => other,
    }
}

fn documents(text: &str) -> Vec<serde_yaml::Value> {
    use serde::Deserialize as _;
    serde_yaml::Deserializer::from_str(text)
        .map(|de| serde_yaml::Value::deserialize(de).expect("valid YAML"))
        .filter(|doc| !doc.is_null())
        .collect()
}

#[test]
fn valid_corpus_round_trips_and_validates() {
    let files = yaml_files("valid");
    let mut kinds_seen = Vec::new();
    for file in &files {
        let name = file.display();
        for (n, doc) in documents(&read(file)).into_iter().enumerate() {
            let kind = kind_of(&doc);
            let checked = check!(kind.as_str(), doc.clone())
                .unwrap_or_else(|e| panic!("{name} document {n}: {kind} did not parse: {e}"));
            let original = serde_json::to_value(&doc).expect("YAML converts to JSON");
            let original = normalize(original);
            let back = normalize(checked.json);
            assert_eq!(
                back, original,
                "{name} document {n}: the {kind} changed in a round trip (a field dropped or renamed?)\nread:    {original}\nwritten: {back}"
            );
            assert!(
                checked.errors.is_empty(),
                "{name} document {n}: valid {kind} refused: {:#?}",
                checked.errors
            );
            kinds_seen.push(kind);
        }
    }
    for kind in [
        "VirtualService",
        "DestinationRule",
        "ServiceEntry",
        "WorkloadEntry",
        "AuthorizationPolicy",
        "PeerAuthentication",
        "RequestAuthentication",
        "HTTPRoute",
        "GRPCRoute",
        "TCPRoute",
        "TLSRoute",
        "ReferenceGrant",
        "BackendTLSPolicy",
    ] {
        assert!(
            kinds_seen.iter().any(|k| k == kind),
            "no valid {kind} in the corpus"
        );
    }
}

#[test]
fn invalid_corpus_is_refused_with_path_and_reason() {
    let files = yaml_files("invalid");
    assert!(
        files.len() >= 15,
        "the invalid corpus has only {} files",
        files.len()
    );
    let mut failures = Vec::new();
    for file in &files {
        let name = file.display().to_string();
        let text = read(file);
        let expect = text
            .lines()
            .next()
            .and_then(|line| line.strip_prefix("# expect: "))
            .unwrap_or_else(|| {
                panic!("{name}: the first line must be `# expect: <path>: <reason>`")
            });
        let (path, reason) = expect
            .split_once(": ")
            .unwrap_or_else(|| panic!("{name}: expected `<path>: <reason>` after `# expect: `"));
        let docs = documents(&text);
        assert_eq!(docs.len(), 1, "{name}: one object per invalid file");
        let kind = kind_of(&docs[0]);
        // From the text itself, as a user's file is read, so serde errors
        // carry their line too.
        let errors = match check!(kind.as_str(), serde_yaml::Deserializer::from_str(&text)) {
            Ok(checked) => checked.errors,
            Err(parse_error) => vec![parse_error],
        };
        let found = errors
            .iter()
            .any(|e| e.path == path && e.reason.contains(reason));
        if !found {
            failures.push(format!(
                "{name}: expected `{path}: …{reason}…`, got {errors:#?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn unknown_subsets_name_the_defined_ones() {
    let text = read(&Path::new(CORPUS).join("valid/virtualservice.yaml"));
    let vs: VirtualService =
        typed(serde_yaml::Deserializer::from_str(&text)).expect("valid VirtualService");
    let subsets = |host: &str| match host {
        "reviews" => Some(vec!["v1".to_owned(), "v3".to_owned()]),
        "reviews-shadow" => Some(Vec::new()),
        _ => None,
    };
    let errors = validate::unknown_subsets(&vs, subsets);
    assert_eq!(
        errors,
        vec![
            FieldError::new(
                "spec.http[0].route[0].destination.subset",
                "unknown subset \"v2\" (DestinationRule for host reviews defines: v1, v3)",
            ),
            FieldError::new(
                "spec.http[0].mirror.subset",
                "unknown subset \"v3\" (DestinationRule for host reviews-shadow defines no subsets)",
            ),
        ]
    );
    // No DestinationRule for any host: nothing to check against.
    assert!(validate::unknown_subsets(&vs, |_| None).is_empty());
}

#[test]
fn port_level_mtls_reads_number_and_string_keys() {
    let from_json: PeerAuthentication = serde_json::from_str(
        r#"{"apiVersion":"security.istio.io/v1","kind":"PeerAuthentication",
            "metadata":{"name":"p","namespace":"n"},
            "spec":{"selector":{"matchLabels":{"app":"a"}},"portLevelMtls":{"8080":{"mode":"STRICT"}}}}"#,
    )
    .expect("JSON with string port keys");
    let from_yaml: PeerAuthentication = serde_yaml::from_str(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p, namespace: n}\n\
         spec: {selector: {matchLabels: {app: a}}, portLevelMtls: {8080: {mode: STRICT}}}\n",
    )
    .expect("YAML with number port keys");
    assert_eq!(from_json, from_yaml);
    assert_eq!(from_yaml.spec.port_level_mtls[&8080].mode, MtlsMode::Strict);
    let bad = serde_yaml::from_str::<PeerAuthentication>(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\n\
         spec: {portLevelMtls: {http: {mode: STRICT}}}\n",
    );
    assert!(bad.is_err_and(|e| e.to_string().contains("\"http\" is not a port number")));
}

#[test]
fn authorization_action_defaults_to_allow() {
    let ap: AuthorizationPolicy = serde_yaml::from_str(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\nspec: {}\n",
    )
    .expect("empty policy");
    assert_eq!(ap.spec.action(), Action::Allow);
    assert_eq!(ap.spec.action, None);
}

#[test]
fn crds_generate_for_every_kind() {
    use kube::CustomResourceExt;
    let names: Vec<String> = [
        VirtualService::crd(),
        DestinationRule::crd(),
        ServiceEntry::crd(),
        WorkloadEntry::crd(),
        AuthorizationPolicy::crd(),
        PeerAuthentication::crd(),
        RequestAuthentication::crd(),
        telemetry::Telemetry::crd(),
        HTTPRoute::crd(),
        GRPCRoute::crd(),
        TCPRoute::crd(),
        TLSRoute::crd(),
        ReferenceGrant::crd(),
        BackendTLSPolicy::crd(),
    ]
    .into_iter()
    .map(|crd| crd.metadata.name.unwrap_or_default())
    .collect();
    assert_eq!(
        names,
        [
            "virtualservices.networking.istio.io",
            "destinationrules.networking.istio.io",
            "serviceentries.networking.istio.io",
            "workloadentries.networking.istio.io",
            "authorizationpolicies.security.istio.io",
            "peerauthentications.security.istio.io",
            "requestauthentications.security.istio.io",
            "telemetries.telemetry.istio.io",
            "httproutes.gateway.networking.k8s.io",
            "grpcroutes.gateway.networking.k8s.io",
            "tcproutes.gateway.networking.k8s.io",
            "tlsroutes.gateway.networking.k8s.io",
            "referencegrants.gateway.networking.k8s.io",
            "backendtlspolicies.gateway.networking.k8s.io",
        ]
    );
}
