//! The kinds Warren reads, and turning a YAML/JSON document into one.
//!
//! Istio's groups are accepted at `v1`, `v1beta1` and `v1alpha3`: the fields
//! are the same, so every version is read into the `v1` types.

use std::fmt;

use k8s_openapi::api::{
    core::v1::{Namespace, Pod, Service},
    discovery::v1::EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde_yaml::Value;

use super::{
    ConfigError, FieldError,
    gateway::{self, Gateway},
    istio::{
        AuthorizationPolicy, DestinationRule, PeerAuthentication, ServiceEntry, VirtualService,
    },
    validate,
};

/// Every kind Warren reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Kind {
    Namespace,
    Pod,
    Service,
    EndpointSlice,
    VirtualService,
    DestinationRule,
    ServiceEntry,
    AuthorizationPolicy,
    PeerAuthentication,
    Gateway,
}

impl Kind {
    /// The kind with the API groups it may come from.
    fn from_type(api_version: &str, kind: &str) -> Result<Self, String> {
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        let version = api_version.rsplit_once('/').map_or(api_version, |(_, v)| v);
        let istio_version = matches!(version, "v1" | "v1beta1" | "v1alpha3");
        let found = match (group, kind) {
            ("", "Namespace") if version == "v1" => Kind::Namespace,
            ("", "Pod") if version == "v1" => Kind::Pod,
            ("", "Service") if version == "v1" => Kind::Service,
            ("discovery.k8s.io", "EndpointSlice") if version == "v1" => Kind::EndpointSlice,
            ("networking.istio.io", "VirtualService") if istio_version => Kind::VirtualService,
            ("networking.istio.io", "DestinationRule") if istio_version => Kind::DestinationRule,
            ("networking.istio.io", "ServiceEntry") if istio_version => Kind::ServiceEntry,
            ("security.istio.io", "AuthorizationPolicy") if istio_version => {
                Kind::AuthorizationPolicy
            }
            ("security.istio.io", "PeerAuthentication") if istio_version => {
                Kind::PeerAuthentication
            }
            ("gateway.networking.k8s.io", "Gateway") if matches!(version, "v1" | "v1beta1") => {
                Kind::Gateway
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
        self != Kind::Namespace
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::Gateway => "Gateway",
        }
    }
}

/// Identifies an object: kind, namespace (none for cluster-scoped kinds), name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind.name(), self.name),
            None => write!(f, "{} {}", self.kind.name(), self.name),
        }
    }
}

/// One object of a kind Warren reads.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Namespace(Box<Namespace>),
    Pod(Box<Pod>),
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    VirtualService(Box<VirtualService>),
    DestinationRule(Box<DestinationRule>),
    ServiceEntry(Box<ServiceEntry>),
    AuthorizationPolicy(Box<AuthorizationPolicy>),
    PeerAuthentication(Box<PeerAuthentication>),
    Gateway(Box<Gateway>),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Namespace(_) => Kind::Namespace,
            Object::Pod(_) => Kind::Pod,
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::VirtualService(_) => Kind::VirtualService,
            Object::DestinationRule(_) => Kind::DestinationRule,
            Object::ServiceEntry(_) => Kind::ServiceEntry,
            Object::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Object::PeerAuthentication(_) => Kind::PeerAuthentication,
            Object::Gateway(_) => Kind::Gateway,
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Namespace(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::VirtualService(o) => &o.metadata,
            Object::DestinationRule(o) => &o.metadata,
            Object::ServiceEntry(o) => &o.metadata,
            Object::AuthorizationPolicy(o) => &o.metadata,
            Object::PeerAuthentication(o) => &o.metadata,
            Object::Gateway(o) => &o.metadata,
        }
    }

    pub fn key(&self) -> ObjectKey {
        let meta = self.metadata();
        let kind = self.kind();
        ObjectKey {
            kind,
            namespace: kind
                .namespaced()
                .then(|| meta.namespace.clone().unwrap_or_else(|| "default".into())),
            name: meta.name.clone().unwrap_or_default(),
        }
    }

    /// Checks that need only this object.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let meta = self.metadata();
        match meta.name.as_deref() {
            None | Some("") => errors.push(FieldError::new("metadata.name", "required")),
            Some(name) if !is_dns_subdomain(name) => errors.push(FieldError::new(
                "metadata.name",
                format!("{name:?} is not a valid name (lowercase letters, digits, '-' and '.', at most 253)"),
            )),
            _ => {}
        }
        if let Some(labels) = &meta.labels {
            errors.extend(validate::label_selector("metadata.labels", labels));
        }
        errors.extend(match self {
            Object::VirtualService(o) => validate::virtual_service(o),
            Object::DestinationRule(o) => validate::destination_rule(o),
            Object::ServiceEntry(o) => validate::service_entry(o),
            Object::AuthorizationPolicy(o) => validate::authorization_policy(o),
            Object::PeerAuthentication(o) => validate::peer_authentication(o),
            Object::Gateway(o) => gateway::validate(o),
            Object::Pod(o) => pod_annotations(o),
            Object::Namespace(_) | Object::Service(_) | Object::EndpointSlice(_) => Vec::new(),
        });
        errors
    }
}

/// Annotation: destination ports a pod keeps out of the mesh.
pub const EXCLUDE_OUTBOUND_PORTS: &str = "warren.io/exclude-outbound-ports";

/// The pod's excluded outbound ports, from its annotation.
pub fn excluded_ports(pod: &Pod) -> Result<Vec<u16>, FieldError> {
    let Some(value) = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(EXCLUDE_OUTBOUND_PORTS))
    else {
        return Ok(Vec::new());
    };
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|p| match p.parse::<u16>() {
            Ok(port) if port > 0 => Ok(port),
            _ => Err(FieldError::new(
                format!("metadata.annotations[{EXCLUDE_OUTBOUND_PORTS}]"),
                format!("{p:?} is not a port (1-65535)"),
            )),
        })
        .collect()
}

fn pod_annotations(pod: &Pod) -> Vec<FieldError> {
    excluded_ports(pod).err().into_iter().collect()
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
    Some(ObjectKey {
        kind,
        namespace: kind
            .namespaced()
            .then(|| text(meta, "namespace").unwrap_or_else(|| "default".into())),
        name: text(meta, "name")?,
    })
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
    let object = match kind {
        Kind::Namespace => typed(doc).map(|o| Object::Namespace(Box::new(o))),
        Kind::Pod => typed(doc).map(|o| Object::Pod(Box::new(o))),
        Kind::Service => typed(doc).map(|o| Object::Service(Box::new(o))),
        Kind::EndpointSlice => typed(doc).map(|o| Object::EndpointSlice(Box::new(o))),
        Kind::VirtualService => typed(doc).map(|o| Object::VirtualService(Box::new(o))),
        Kind::DestinationRule => typed(doc).map(|o| Object::DestinationRule(Box::new(o))),
        Kind::ServiceEntry => typed(doc).map(|o| Object::ServiceEntry(Box::new(o))),
        Kind::AuthorizationPolicy => typed(doc).map(|o| Object::AuthorizationPolicy(Box::new(o))),
        Kind::PeerAuthentication => typed(doc).map(|o| Object::PeerAuthentication(Box::new(o))),
        Kind::Gateway => typed(doc).map(|o| Object::Gateway(Box::new(o))),
    }
    .map_err(|e| refuse(kind.name(), vec![e]))?;
    let errors = object.validate();
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
