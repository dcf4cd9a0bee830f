//! Keys of the per-node view's resources: `<kind>/<namespace>/<name>` for
//! namespaced ones, so a key says what it is about when it shows up in a
//! NACK or a log line.

use crate::Identity;

pub const MESH: &str = "mesh";
pub const TRUST_BUNDLE: &str = "trust-bundle";

pub fn workload(namespace: &str, name: &str) -> String {
    format!("workload/{namespace}/{name}")
}

/// A WorkloadEntry's workload. `:` never appears in a pod's name, so the
/// two never share a key; it is a workload's key all the same
/// ([`is_workload`]).
pub fn workload_entry(namespace: &str, name: &str) -> String {
    format!("workload/{namespace}/workloadentry:{name}")
}

/// Whether a workload key is a WorkloadEntry's ([`workload_entry`]).
pub fn is_workload_entry(key: &str) -> bool {
    is_workload(key) && key.contains("/workloadentry:")
}

/// Whether a key is a workload's ([`workload`]): a waypoint serves a pod
/// addressed directly as a Service keyed so.
pub fn is_workload(key: &str) -> bool {
    key.starts_with("workload/")
}

pub fn service(namespace: &str, name: &str) -> String {
    format!("service/{namespace}/{name}")
}

/// A ServiceEntry's host, published as a Service. `:` never appears in a
/// Kubernetes Service's name, so the two never share a key.
pub fn service_entry(namespace: &str, host: &str) -> String {
    format!("service/{namespace}/serviceentry:{host}")
}

/// Whether a Service key is a ServiceEntry host's ([`service_entry`]): where
/// one shares an address or a hostname with a Kubernetes Service, the
/// Kubernetes Service wins, so an entry never takes over its traffic.
pub fn is_service_entry(key: &str) -> bool {
    key.contains("/serviceentry:")
}

pub fn authorization(namespace: &str, name: &str) -> String {
    format!("authorization/{namespace}/{name}")
}

pub fn certificate(identity: &Identity) -> String {
    format!("certificate/{identity}")
}

pub fn virtual_service(namespace: &str, name: &str) -> String {
    format!("virtualservice/{namespace}/{name}")
}

/// The VirtualService a Service's Gateway API HTTP (or gRPC) routes make
/// together.
pub fn service_routes(namespace: &str, service: &str) -> String {
    format!("{SERVICE_ROUTES_PREFIX}{namespace}/{service}")
}

/// The VirtualService a Service's Gateway API TCP and TLS routes make
/// together.
pub fn service_l4_routes(namespace: &str, service: &str) -> String {
    format!("{SERVICE_ROUTES_PREFIX}{namespace}/{service}/l4")
}

/// The VirtualService a ServiceEntry's Gateway API HTTP (or gRPC) routes
/// make (Istio's routes for egress); apart from any Service's.
pub fn service_entry_routes(namespace: &str, entry: &str) -> String {
    // `:` is in no Service's name: no key of a Service's is one of these.
    format!("{SERVICE_ROUTES_PREFIX}{namespace}/serviceentry:{entry}")
}

/// The VirtualService a ServiceEntry's TCP and TLS routes make.
pub fn service_entry_l4_routes(namespace: &str, entry: &str) -> String {
    format!("{SERVICE_ROUTES_PREFIX}{namespace}/serviceentry:{entry}/l4")
}

/// What [`service_routes`] keys begin with.
pub const SERVICE_ROUTES_PREFIX: &str = "routes/";

pub fn destination_rule(namespace: &str, name: &str) -> String {
    format!("destinationrule/{namespace}/{name}")
}

/// An AuthorizationPolicy the namespace's waypoint enforces.
pub fn l7_authorization(namespace: &str, name: &str) -> String {
    format!("l7authorization/{namespace}/{name}")
}

/// A RequestAuthentication the namespace's waypoint enforces.
pub fn l7_authentication(namespace: &str, name: &str) -> String {
    format!("l7authentication/{namespace}/{name}")
}

/// An external authorizer of the mesh config.
pub fn extension_provider(name: &str) -> String {
    format!("{EXTENSION_PROVIDER_PREFIX}{name}")
}

/// A Telemetry for waypoints.
pub fn telemetry(namespace: &str, name: &str) -> String {
    format!("{TELEMETRY_PREFIX}{namespace}/{name}")
}

/// What [`telemetry`] keys begin with.
pub const TELEMETRY_PREFIX: &str = "telemetry/";

/// The mesh config's default telemetry providers.
pub const TELEMETRY_DEFAULTS: &str = "telemetrydefaults";

/// What [`extension_provider`] keys begin with.
pub const EXTENSION_PROVIDER_PREFIX: &str = "extensionprovider/";

/// A Secret's TLS material, for the waypoints of its namespace.
pub fn credential(namespace: &str, name: &str) -> String {
    format!("{CREDENTIAL_PREFIX}{namespace}/{name}")
}

/// What [`credential`] keys begin with.
pub const CREDENTIAL_PREFIX: &str = "credential/";

/// The BackendTLSPolicies in force on a Service.
pub fn backend_tls(namespace: &str, service: &str) -> String {
    format!("{BACKEND_TLS_PREFIX}{namespace}/{service}")
}

/// The BackendTLSPolicies in force on a ServiceEntry.
pub fn service_entry_backend_tls(namespace: &str, entry: &str) -> String {
    // `:` is in no Service's name, as for routes.
    format!("{BACKEND_TLS_PREFIX}{namespace}/serviceentry:{entry}")
}

/// What [`backend_tls`] keys begin with.
pub const BACKEND_TLS_PREFIX: &str = "backendtls/";

/// The namespace of a [`credential`] key.
pub fn credential_namespace(key: &str) -> Option<&str> {
    key.strip_prefix(CREDENTIAL_PREFIX)?
        .split_once('/')
        .map(|(namespace, _)| namespace)
}

/// Whether `key` is of L7 routing or policy, which only waypoints use: a
/// ztunnel is not sent it.
pub fn is_l7(key: &str) -> bool {
    [
        "virtualservice/",
        SERVICE_ROUTES_PREFIX,
        "destinationrule/",
        "l7authorization/",
        "l7authentication/",
        EXTENSION_PROVIDER_PREFIX,
        TELEMETRY_PREFIX,
        TELEMETRY_DEFAULTS,
        CREDENTIAL_PREFIX,
        BACKEND_TLS_PREFIX,
    ]
    .iter()
    .any(|prefix| key.starts_with(prefix))
}
