//! The kinds Warren reads, and turning a YAML/JSON document into one.
//!
//! Istio's groups are accepted at `v1`, `v1beta1` and `v1alpha3`: the fields
//! are the same, so every version is read into the `v1` types.

use std::{fmt, sync::Arc};

use k8s_openapi::api::{core::v1 as core, discovery::v1 as discovery};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde_yaml::Value;

pub use super::cluster::EXCLUDE_OUTBOUND_PORTS;
use super::{
    ConfigError, FieldError,
    backend_tls_policy::{self, BackendTLSPolicy},
    cluster::{ConfigMap, EndpointSlice, Namespace, Node, Pod, Secret, Service},
    gateway::{self, Gateway},
    grpc_route::{self, GRPCRoute},
    http_route::{self, HTTPRoute, ParentReference},
    intern::intern,
    istio::{
        AuthorizationPolicy, DestinationRule, PeerAuthentication, RequestAuthentication,
        ServiceEntry, VirtualService, WorkloadEntry, telemetry::Telemetry,
    },
    l4_route::{self, TCPRoute, TLSRoute},
    reference_grant::{self, ReferenceGrant},
    validate,
};

/// Every kind Warren reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Kind {
    Namespace,
    Node,
    Pod,
    Service,
    EndpointSlice,
    ConfigMap,
    Secret,
    VirtualService,
    DestinationRule,
    ServiceEntry,
    WorkloadEntry,
    AuthorizationPolicy,
    PeerAuthentication,
    RequestAuthentication,
    Telemetry,
    Gateway,
    HttpRoute,
    GrpcRoute,
    TcpRoute,
    TlsRoute,
    ReferenceGrant,
    BackendTlsPolicy,
}

impl Kind {
    /// The Gateway API's route kinds, which make a Service's
    /// VirtualServices.
    pub const GATEWAY_ROUTES: [Kind; 4] = [
        Kind::HttpRoute,
        Kind::GrpcRoute,
        Kind::TcpRoute,
        Kind::TlsRoute,
    ];

    /// The kind with the API groups it may come from.
    fn from_type(api_version: &str, kind: &str) -> Result<Self, String> {
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        let version = api_version.rsplit_once('/').map_or(api_version, |(_, v)| v);
        let istio_version = matches!(version, "v1" | "v1beta1" | "v1alpha3");
        let found = match (group, kind) {
            ("", "Namespace") if version == "v1" => Kind::Namespace,
            ("", "Node") if version == "v1" => Kind::Node,
            ("", "Pod") if version == "v1" => Kind::Pod,
            ("", "Service") if version == "v1" => Kind::Service,
            ("discovery.k8s.io", "EndpointSlice") if version == "v1" => Kind::EndpointSlice,
            ("", "ConfigMap") if version == "v1" => Kind::ConfigMap,
            ("", "Secret") if version == "v1" => Kind::Secret,
            ("networking.istio.io", "VirtualService") if istio_version => Kind::VirtualService,
            ("networking.istio.io", "DestinationRule") if istio_version => Kind::DestinationRule,
            ("networking.istio.io", "ServiceEntry") if istio_version => Kind::ServiceEntry,
            ("networking.istio.io", "WorkloadEntry") if istio_version => Kind::WorkloadEntry,
            ("security.istio.io", "AuthorizationPolicy") if istio_version => {
                Kind::AuthorizationPolicy
            }
            ("security.istio.io", "PeerAuthentication") if istio_version => {
                Kind::PeerAuthentication
            }
            ("security.istio.io", "RequestAuthentication") if istio_version => {
                Kind::RequestAuthentication
            }
            ("telemetry.istio.io", "Telemetry") if matches!(version, "v1" | "v1alpha1") => {
                Kind::Telemetry
            }
            ("gateway.networking.k8s.io", "Gateway") if matches!(version, "v1" | "v1beta1") => {
                Kind::Gateway
            }
            ("gateway.networking.k8s.io", "HTTPRoute") if matches!(version, "v1" | "v1beta1") => {
                Kind::HttpRoute
            }
            ("gateway.networking.k8s.io", "GRPCRoute") if matches!(version, "v1" | "v1alpha2") => {
                Kind::GrpcRoute
            }
            ("gateway.networking.k8s.io", "TCPRoute") if version == "v1alpha2" => Kind::TcpRoute,
            ("gateway.networking.k8s.io", "ReferenceGrant")
                if matches!(version, "v1" | "v1beta1" | "v1alpha2") =>
            {
                Kind::ReferenceGrant
            }
            ("gateway.networking.k8s.io", "TLSRoute")
                if matches!(version, "v1" | "v1alpha3" | "v1alpha2") =>
            {
                Kind::TlsRoute
            }
            // `v1alpha3` (Gateway API 1.2 and 1.3) has the fields of `v1`;
            // `v1alpha2` had others and is not read.
            ("gateway.networking.k8s.io", "BackendTLSPolicy")
                if matches!(version, "v1" | "v1alpha3") =>
            {
                Kind::BackendTlsPolicy
            }
            _ => {
                return Err(format!(
                    "Warren does not read {kind} of apiVersion {api_version}"
                ));
            }
        };
        Ok(found)
    }

    pub fn namespaced(self) -> bool {
        !matches!(self, Kind::Namespace | Kind::Node)
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Node => "Node",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::ConfigMap => "ConfigMap",
            Kind::Secret => "Secret",
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::WorkloadEntry => "WorkloadEntry",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::RequestAuthentication => "RequestAuthentication",
            Kind::Telemetry => "Telemetry",
            Kind::Gateway => "Gateway",
            Kind::HttpRoute => "HTTPRoute",
            Kind::GrpcRoute => "GRPCRoute",
            Kind::TcpRoute => "TCPRoute",
            Kind::TlsRoute => "TLSRoute",
            Kind::ReferenceGrant => "ReferenceGrant",
            Kind::BackendTlsPolicy => "BackendTLSPolicy",
        }
    }
}

/// Identifies an object: kind, namespace (none for cluster-scoped kinds), name.
///
/// The strings are shared with the object (and the namespace with every
/// object of it): the source, the store and the view each keep keys, and
/// a copy costs no allocation.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: Option<Arc<str>>,
    pub name: Arc<str>,
}

impl ObjectKey {
    pub fn new(kind: Kind, namespace: Option<&str>, name: &str) -> Self {
        Self {
            kind,
            namespace: namespace.map(intern),
            name: Arc::from(name),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind.name(), self.name),
            None => write!(f, "{} {}", self.kind.name(), self.name),
        }
    }
}

/// One object of a kind Warren reads. Cheap to clone: the source, the
/// store and the view share one copy.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Namespace(Arc<Namespace>),
    Node(Arc<Node>),
    Pod(Arc<Pod>),
    Service(Arc<Service>),
    EndpointSlice(Arc<EndpointSlice>),
    ConfigMap(Arc<ConfigMap>),
    Secret(Arc<Secret>),
    VirtualService(Arc<VirtualService>),
    DestinationRule(Arc<DestinationRule>),
    ServiceEntry(Arc<ServiceEntry>),
    WorkloadEntry(Arc<WorkloadEntry>),
    AuthorizationPolicy(Arc<AuthorizationPolicy>),
    PeerAuthentication(Arc<PeerAuthentication>),
    RequestAuthentication(Arc<RequestAuthentication>),
    Telemetry(Arc<Telemetry>),
    Gateway(Arc<Gateway>),
    HttpRoute(Arc<HTTPRoute>),
    GrpcRoute(Arc<GRPCRoute>),
    TcpRoute(Arc<TCPRoute>),
    TlsRoute(Arc<TLSRoute>),
    ReferenceGrant(Arc<ReferenceGrant>),
    BackendTlsPolicy(Arc<BackendTLSPolicy>),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Namespace(_) => Kind::Namespace,
            Object::Node(_) => Kind::Node,
            Object::Pod(_) => Kind::Pod,
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::ConfigMap(_) => Kind::ConfigMap,
            Object::Secret(_) => Kind::Secret,
            Object::VirtualService(_) => Kind::VirtualService,
            Object::DestinationRule(_) => Kind::DestinationRule,
            Object::ServiceEntry(_) => Kind::ServiceEntry,
            Object::WorkloadEntry(_) => Kind::WorkloadEntry,
            Object::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Object::PeerAuthentication(_) => Kind::PeerAuthentication,
            Object::RequestAuthentication(_) => Kind::RequestAuthentication,
            Object::Telemetry(_) => Kind::Telemetry,
            Object::Gateway(_) => Kind::Gateway,
            Object::HttpRoute(_) => Kind::HttpRoute,
            Object::GrpcRoute(_) => Kind::GrpcRoute,
            Object::TcpRoute(_) => Kind::TcpRoute,
            Object::TlsRoute(_) => Kind::TlsRoute,
            Object::ReferenceGrant(_) => Kind::ReferenceGrant,
            Object::BackendTlsPolicy(_) => Kind::BackendTlsPolicy,
        }
    }

    /// A Gateway API route's `parentRefs`; `None` for other kinds.
    pub fn route_parents(&self) -> Option<&[ParentReference]> {
        match self {
            Object::HttpRoute(r) => Some(&r.spec.parent_refs),
            Object::GrpcRoute(r) => Some(&r.spec.parent_refs),
            Object::TcpRoute(r) => Some(&r.spec.parent_refs),
            Object::TlsRoute(r) => Some(&r.spec.parent_refs),
            _ => None,
        }
    }

    /// `metadata` of the kinds kept whole; Kubernetes' own kinds keep only
    /// what Warren reads ([`crate::cluster`]).
    fn metadata(&self) -> Option<&ObjectMeta> {
        match self {
            Object::Namespace(_)
            | Object::Node(_)
            | Object::Pod(_)
            | Object::Service(_)
            | Object::EndpointSlice(_)
            | Object::ConfigMap(_)
            | Object::Secret(_) => None,
            Object::VirtualService(o) => Some(&o.metadata),
            Object::DestinationRule(o) => Some(&o.metadata),
            Object::ServiceEntry(o) => Some(&o.metadata),
            Object::WorkloadEntry(o) => Some(&o.metadata),
            Object::AuthorizationPolicy(o) => Some(&o.metadata),
            Object::PeerAuthentication(o) => Some(&o.metadata),
            Object::RequestAuthentication(o) => Some(&o.metadata),
            Object::Telemetry(o) => Some(&o.metadata),
            Object::Gateway(o) => Some(&o.metadata),
            Object::HttpRoute(o) => Some(&o.metadata),
            Object::GrpcRoute(o) => Some(&o.metadata),
            Object::TcpRoute(o) => Some(&o.metadata),
            Object::TlsRoute(o) => Some(&o.metadata),
            Object::ReferenceGrant(o) => Some(&o.metadata),
            Object::BackendTlsPolicy(o) => Some(&o.metadata),
        }
    }

    /// `metadata.name`.
    pub fn name(&self) -> &str {
        match self {
            Object::Namespace(o) => &o.name,
            Object::Node(o) => &o.name,
            Object::Pod(o) => &o.name,
            Object::Service(o) => &o.name,
            Object::EndpointSlice(o) => &o.name,
            Object::ConfigMap(o) => &o.name,
            Object::Secret(o) => &o.name,
            _ => self
                .metadata()
                .and_then(|m| m.name.as_deref())
                .unwrap_or_default(),
        }
    }

    /// The namespace of a namespaced kind (`default` when unset).
    pub fn namespace(&self) -> Option<&str> {
        match self {
            Object::Namespace(_) | Object::Node(_) => None,
            Object::Pod(o) => Some(&o.namespace),
            Object::Service(o) => Some(&o.namespace),
            Object::EndpointSlice(o) => Some(&o.namespace),
            Object::ConfigMap(o) => Some(&o.namespace),
            Object::Secret(o) => Some(&o.namespace),
            _ => Some(
                self.metadata()
                    .and_then(|m| m.namespace.as_deref())
                    .unwrap_or("default"),
            ),
        }
    }

    pub fn key(&self) -> ObjectKey {
        let kind = self.kind();
        let (namespace, name) = match self {
            Object::Namespace(o) => (None, o.name.clone()),
            Object::Node(o) => (None, o.name.clone()),
            Object::Pod(o) => (Some(o.namespace.clone()), o.name.clone()),
            Object::Service(o) => (Some(o.namespace.clone()), o.name.clone()),
            Object::EndpointSlice(o) => (Some(o.namespace.clone()), o.name.clone()),
            Object::ConfigMap(o) => (Some(o.namespace.clone()), o.name.clone()),
            Object::Secret(o) => (Some(o.namespace.clone()), o.name.clone()),
            _ => {
                let meta = self.metadata();
                let namespace = meta.and_then(|m| m.namespace.as_deref());
                (
                    Some(intern(namespace.unwrap_or("default"))),
                    Arc::from(meta.and_then(|m| m.name.as_deref()).unwrap_or_default()),
                )
            }
        };
        ObjectKey {
            kind,
            namespace: namespace.filter(|_| kind.namespaced()),
            name,
        }
    }
}

/// Checks of the metadata every kind has: the name, and label syntax.
fn meta_errors(meta: &ObjectMeta) -> Vec<FieldError> {
    let mut errors = Vec::new();
    match meta.name.as_deref() {
        None | Some("") => errors.push(FieldError::new("metadata.name", "required")),
        Some(name) if !is_dns_subdomain(name) => errors.push(FieldError::new(
            "metadata.name",
            format!(
                "{name:?} is not a valid name (lowercase letters, digits, '-' and '.', at most 253)"
            ),
        )),
        _ => {}
    }
    if let Some(labels) = &meta.labels {
        errors.extend(validate::label_selector("metadata.labels", labels));
    }
    errors
}

/// Reads `doc` as `T`, then checks its metadata and applies `rules`.
fn checked<T: DeserializeOwned + kube::Resource>(
    doc: Value,
    rules: fn(&T) -> Vec<FieldError>,
) -> Result<(T, Vec<FieldError>), FieldError> {
    let object: T = typed(doc)?;
    let mut errors = meta_errors(object.meta());
    errors.extend(rules(&object));
    Ok((object, errors))
}

fn no_rules<T>(_: &T) -> Vec<FieldError> {
    Vec::new()
}

fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// The key a document claims, if it names a known kind and a name, even
/// when the rest of it is invalid.
pub fn document_key(doc: &Value) -> Option<ObjectKey> {
    let text = |v: &Value, field: &str| v.get(field).and_then(Value::as_str).map(str::to_owned);
    let kind = Kind::from_type(&text(doc, "apiVersion")?, &text(doc, "kind")?).ok()?;
    let meta = doc.get("metadata")?;
    let namespace = kind
        .namespaced()
        .then(|| text(meta, "namespace").unwrap_or_else(|| "default".into()));
    Some(ObjectKey::new(
        kind,
        namespace.as_deref(),
        &text(meta, "name")?,
    ))
}

/// Turns one document into a validated object. `source` names where it came
/// from, for the error.
pub fn parse_document(doc: Value, source: &str) -> Result<Object, ConfigError> {
    let text = |v: &Value, field: &str| v.get(field).and_then(Value::as_str).map(str::to_owned);
    let api_version = text(&doc, "apiVersion");
    let kind_name = text(&doc, "kind");
    let meta = doc.get("metadata");
    let name = meta
        .and_then(|m| text(m, "name"))
        .unwrap_or_else(|| "?".into());
    let namespace = meta.and_then(|m| text(m, "namespace"));
    let refuse = |kind: &str, errors: Vec<FieldError>| ConfigError {
        kind: kind.to_owned(),
        object: match &namespace {
            Some(ns) => format!("{ns}/{name}"),
            None => name.clone(),
        },
        origin: Some(source.to_owned()),
        errors,
    };
    let (Some(api_version), Some(kind_name)) = (api_version, kind_name) else {
        return Err(refuse(
            "?",
            vec![FieldError::new("apiVersion/kind", "both are required")],
        ));
    };
    let kind = Kind::from_type(&api_version, &kind_name)
        .map_err(|reason| refuse(&kind_name, vec![FieldError::new("kind", reason)]))?;
    // Kubernetes' own kinds are checked whole, then kept compact.
    let (object, errors) =
        match kind {
            Kind::Namespace => checked::<core::Namespace>(doc, no_rules)
                .map(|(o, e)| (Object::Namespace(Arc::new(o.into())), e)),
            Kind::Node => checked::<core::Node>(doc, no_rules)
                .map(|(o, e)| (Object::Node(Arc::new(o.into())), e)),
            Kind::Pod => checked::<core::Pod>(doc, no_rules).map(|(o, mut e)| {
                let pod = Pod::from(o);
                e.extend(pod.excluded_ports().err());
                (Object::Pod(Arc::new(pod)), e)
            }),
            Kind::Service => checked::<core::Service>(doc, no_rules)
                .map(|(o, e)| (Object::Service(Arc::new(o.into())), e)),
            Kind::EndpointSlice => checked::<discovery::EndpointSlice>(doc, no_rules)
                .map(|(o, e)| (Object::EndpointSlice(Arc::new(o.into())), e)),
            Kind::ConfigMap => checked::<core::ConfigMap>(doc, no_rules).map(|(o, mut e)| {
                let (map, errors) = ConfigMap::read(o);
                e.extend(errors);
                (Object::ConfigMap(Arc::new(map)), e)
            }),
            Kind::Secret => checked::<core::Secret>(doc, no_rules)
                .map(|(o, e)| (Object::Secret(Arc::new(o.into())), e)),
            Kind::VirtualService => checked(doc, validate::virtual_service)
                .map(|(o, e)| (Object::VirtualService(Arc::new(o)), e)),
            Kind::DestinationRule => checked(doc, validate::destination_rule)
                .map(|(o, e)| (Object::DestinationRule(Arc::new(o)), e)),
            Kind::ServiceEntry => checked(doc, validate::service_entry)
                .map(|(o, e)| (Object::ServiceEntry(Arc::new(o)), e)),
            Kind::WorkloadEntry => checked(doc, validate::workload_entry)
                .map(|(o, e)| (Object::WorkloadEntry(Arc::new(o)), e)),
            Kind::AuthorizationPolicy => checked(doc, validate::authorization_policy)
                .map(|(o, e)| (Object::AuthorizationPolicy(Arc::new(o)), e)),
            Kind::PeerAuthentication => checked(doc, validate::peer_authentication)
                .map(|(o, e)| (Object::PeerAuthentication(Arc::new(o)), e)),
            Kind::RequestAuthentication => checked(doc, validate::request_authentication)
                .map(|(o, e)| (Object::RequestAuthentication(Arc::new(o)), e)),
            Kind::Telemetry => {
                checked(doc, validate::telemetry).map(|(o, e)| (Object::Telemetry(Arc::new(o)), e))
            }
            Kind::Gateway => {
                checked(doc, gateway::validate).map(|(o, e)| (Object::Gateway(Arc::new(o)), e))
            }
            Kind::HttpRoute => {
                checked(doc, http_route::validate).map(|(o, e)| (Object::HttpRoute(Arc::new(o)), e))
            }
            Kind::GrpcRoute => {
                checked(doc, grpc_route::validate).map(|(o, e)| (Object::GrpcRoute(Arc::new(o)), e))
            }
            Kind::TcpRoute => checked(doc, l4_route::validate_tcp)
                .map(|(o, e)| (Object::TcpRoute(Arc::new(o)), e)),
            Kind::TlsRoute => checked(doc, l4_route::validate_tls)
                .map(|(o, e)| (Object::TlsRoute(Arc::new(o)), e)),
            Kind::ReferenceGrant => checked(doc, reference_grant::validate)
                .map(|(o, e)| (Object::ReferenceGrant(Arc::new(o)), e)),
            Kind::BackendTlsPolicy => checked(doc, backend_tls_policy::validate)
                .map(|(o, e)| (Object::BackendTlsPolicy(Arc::new(o)), e)),
        }
        .map_err(|e| refuse(kind.name(), vec![e]))?;
    if !errors.is_empty() {
        return Err(refuse(kind.name(), errors));
    }
    Ok(object)
}

/// Deserializes into `T`, reporting the path of the first bad field. The
/// apiVersion is normalised first: older Istio versions read as v1.
fn typed<T: DeserializeOwned>(mut doc: Value) -> Result<T, FieldError> {
    if let Some(Value::String(api_version)) = doc.get_mut("apiVersion")
        && let Some((group, _)) = api_version.split_once('/')
        && group.ends_with(".istio.io")
    {
        *api_version = format!("{group}/v1");
    }
    serde_path_to_error::deserialize(doc).map_err(|err| {
        let path = err.path().to_string();
        let path = if path == "." { String::new() } else { path };
        FieldError::new(path, err.into_inner().to_string())
    })
}

/// Splits multi-document YAML (JSON is YAML too) into documents; empty
/// documents are skipped.
pub fn split_documents(text: &str) -> Result<Vec<Value>, String> {
    use serde::Deserialize as _;
    let mut docs = Vec::new();
    for de in serde_yaml::Deserializer::from_str(text) {
        let value = Value::deserialize(de).map_err(|e| e.to_string())?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}
