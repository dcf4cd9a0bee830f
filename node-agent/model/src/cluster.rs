//! Kubernetes' own kinds — Namespace, Node, Pod, Service, EndpointSlice,
//! ConfigMap, Secret — as the
//! agent keeps them: only the fields Warren reads.
//!
//! A k8s-openapi `Pod` is over 2 KB before any of its strings, and a mesh
//! has tens of thousands of them. Documents are still read (and refused,
//! with the path of the bad field) as the full Kubernetes types; once valid,
//! each is turned into one of these at the edge, so sources, store and view
//! hold only what they use. Addresses are parsed once, here, and names that
//! repeat across objects (namespaces, nodes, service accounts, label sets)
//! are shared ([`crate::intern`]).

use std::{collections::BTreeMap, fmt, net::IpAddr, sync::Arc};

use k8s_openapi::{
    api::{core::v1 as core, discovery::v1 as discovery},
    apimachinery::pkg::util::intstr::IntOrString,
};

use warren_api::{
    Locality,
    locality::{REGION_LABEL, SUBZONE_LABEL, ZONE_LABEL},
};

use crate::{
    FieldError, backend_tls_policy,
    intern::intern,
    istio::mesh::{MESH_KEY, MeshConfig},
    labels::Labels,
    validate,
};

/// Annotations under this prefix are kept; Warren reads no others (and some,
/// like kubectl's last-applied-configuration, are large).
pub const WARREN_ANNOTATION_PREFIX: &str = "warren.io/";

/// Annotation: destination ports a pod keeps out of the mesh.
pub const EXCLUDE_OUTBOUND_PORTS: &str = "warren.io/exclude-outbound-ports";

/// The namespace of an object that names none.
const DEFAULT_NAMESPACE: &str = "default";

fn namespace_of(namespace: Option<&str>) -> Arc<str> {
    intern(namespace.unwrap_or(DEFAULT_NAMESPACE))
}

fn name_of(name: Option<String>) -> Arc<str> {
    Arc::from(name.unwrap_or_default())
}

fn ip(text: &str) -> Option<IpAddr> {
    text.parse().ok()
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub name: Arc<str>,
    pub labels: Labels,
}

impl From<core::Namespace> for Namespace {
    fn from(ns: core::Namespace) -> Self {
        Self {
            labels: Labels::from_map(ns.metadata.labels.as_ref()),
            name: name_of(ns.metadata.name),
        }
    }
}

/// A node: Warren reads only its locality, from its topology labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub name: Arc<str>,
    pub locality: Locality,
}

impl From<core::Node> for Node {
    fn from(node: core::Node) -> Self {
        let labels = node.metadata.labels.unwrap_or_default();
        let level = |key: &str| labels.get(key).cloned().unwrap_or_default();
        // The deprecated beta labels, which older clusters still carry, as
        // istiod falls back to them.
        let or_beta = |level: String, beta: &str| {
            if level.is_empty() {
                labels.get(beta).cloned().unwrap_or_default()
            } else {
                level
            }
        };
        Self {
            locality: Locality {
                region: or_beta(
                    level(REGION_LABEL),
                    "failure-domain.beta.kubernetes.io/region",
                ),
                zone: or_beta(level(ZONE_LABEL), "failure-domain.beta.kubernetes.io/zone"),
                subzone: level(SUBZONE_LABEL),
            },
            name: name_of(node.metadata.name),
        }
    }
}

/// `status.phase`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

impl PodPhase {
    fn parse(phase: &str) -> Self {
        match phase {
            "Pending" => Self::Pending,
            "Running" => Self::Running,
            "Succeeded" => Self::Succeeded,
            "Failed" => Self::Failed,
            _ => Self::Unknown,
        }
    }
}

/// The first of `metadata.ownerReferences`, as one shared `Kind/name`
/// string: the replicas of a ReplicaSet name the same owner, and one
/// pointer keeps a pod small. A kind never contains `/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner(Arc<str>);

impl Owner {
    pub fn new(kind: &str, name: &str) -> Self {
        Self(intern(&format!("{kind}/{name}")))
    }

    pub fn kind(&self) -> &str {
        self.0.split_once('/').map_or(&self.0, |(kind, _)| kind)
    }

    pub fn name(&self) -> &str {
        self.0.split_once('/').map_or("", |(_, name)| name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub name: Arc<str>,
    pub namespace: Arc<str>,
    /// `metadata.uid`: names the pod's cgroup on a Kubernetes node, where the
    /// node agent finds its network namespace.
    pub uid: Option<Box<str>>,
    pub labels: Labels,
    /// The `warren.io/` annotations (see [`WARREN_ANNOTATION_PREFIX`]).
    pub annotations: Box<[(Box<str>, Box<str>)]>,
    pub owner: Option<Owner>,
    /// `spec.nodeName`.
    pub node_name: Option<Arc<str>>,
    /// `spec.serviceAccountName`.
    pub service_account_name: Option<Arc<str>>,
    /// `spec.hostNetwork`: the pod shares its node's network namespace.
    pub host_network: bool,
    /// `status.phase`.
    pub phase: Option<PodPhase>,
    /// `status.hostIP`, if it parses.
    pub host_ip: Option<IpAddr>,
    /// `status.podIP`, if it parses.
    pub pod_ip: Option<IpAddr>,
    /// `status.podIPs` that parse.
    pub pod_ips: Box<[IpAddr]>,
}

impl From<core::Pod> for Pod {
    fn from(pod: core::Pod) -> Self {
        let meta = pod.metadata;
        let spec = pod.spec.unwrap_or_default();
        let status = pod.status.unwrap_or_default();
        Self {
            namespace: namespace_of(meta.namespace.as_deref()),
            labels: Labels::from_map(meta.labels.as_ref()),
            annotations: meta
                .annotations
                .into_iter()
                .flatten()
                .filter(|(k, _)| k.starts_with(WARREN_ANNOTATION_PREFIX))
                .map(|(k, v)| (k.into_boxed_str(), v.into_boxed_str()))
                .collect(),
            owner: meta
                .owner_references
                .as_ref()
                .and_then(|o| o.first())
                .map(|o| Owner::new(&o.kind, &o.name)),
            name: name_of(meta.name),
            uid: meta.uid.map(String::into_boxed_str),
            node_name: spec.node_name.as_deref().map(intern),
            service_account_name: spec.service_account_name.as_deref().map(intern),
            host_network: spec.host_network.unwrap_or(false),
            phase: status.phase.as_deref().map(PodPhase::parse),
            host_ip: status.host_ip.as_deref().and_then(ip),
            pod_ip: status.pod_ip.as_deref().and_then(ip),
            pod_ips: status
                .pod_ips
                .iter()
                .flatten()
                .filter_map(|p| ip(&p.ip))
                .collect(),
        }
    }
}

impl Pod {
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations
            .iter()
            .find(|(k, _)| &**k == key)
            .map(|(_, v)| &**v)
    }

    /// The pod's addresses: `status.podIPs`, else `status.podIP`.
    pub fn addresses(&self) -> Vec<IpAddr> {
        if self.pod_ips.is_empty() {
            self.pod_ip.into_iter().collect()
        } else {
            self.pod_ips.to_vec()
        }
    }

    /// The service account it runs as; unset or empty means `default`.
    pub fn service_account(&self) -> &str {
        self.service_account_name
            .as_deref()
            .filter(|a| !a.is_empty())
            .unwrap_or("default")
    }

    /// Succeeded or Failed: its sandbox is gone.
    pub fn finished(&self) -> bool {
        matches!(self.phase, Some(PodPhase::Succeeded | PodPhase::Failed))
    }

    /// The pod's excluded outbound ports, from its annotation.
    pub fn excluded_ports(&self) -> Result<Vec<u16>, FieldError> {
        let Some(value) = self.annotation(EXCLUDE_OUTBOUND_PORTS) else {
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
}

/// `spec.ports[].targetPort`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    Number(i32),
    /// A container port's name, resolved per endpoint.
    Name(Arc<str>),
}

/// One of `spec.ports`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub name: Option<Arc<str>>,
    pub protocol: Option<Arc<str>>,
    pub port: i32,
    pub target_port: Option<TargetPort>,
    pub app_protocol: Option<Arc<str>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub name: Arc<str>,
    pub namespace: Arc<str>,
    pub labels: Labels,
    /// `spec.clusterIPs` then `spec.clusterIP`, parsed (`None` of a
    /// headless Service is not an address), each once.
    pub cluster_ips: Box<[IpAddr]>,
    pub ports: Box<[ServicePort]>,
    /// `spec.trafficDistribution`, else Istio's
    /// `networking.istio.io/traffic-distribution` annotation, which clusters
    /// without the field use.
    pub traffic_distribution: Option<TrafficDistribution>,
    /// `spec.internalTrafficPolicy: Local`: this node's endpoints only.
    pub node_local: bool,
    /// `spec.selector`, when it has labels: the pods it selects are in its
    /// EndpointSlices, and Warren adds the WorkloadEntries it selects, as
    /// istiod does. Without one, the Service selects nothing.
    pub selector: Option<BTreeMap<String, String>>,
}

/// The closeness a Service asks for, as Istio reads its values (case
/// insensitively; `PreferSameZone` is `PreferClose`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrafficDistribution {
    /// `PreferClose`, `PreferSameZone`: the client's zone first.
    PreferClose,
    /// `PreferSameNode`: the client's node first.
    PreferSameNode,
}

impl TrafficDistribution {
    /// `None` for a value this version does not know.
    pub fn parse(value: &str) -> Option<Self> {
        match value.to_ascii_lowercase().as_str() {
            "preferclose" | "prefersamezone" => Some(Self::PreferClose),
            "prefersamenode" => Some(Self::PreferSameNode),
            _ => None,
        }
    }
}

/// Istio's annotation standing in for `spec.trafficDistribution`.
pub const TRAFFIC_DISTRIBUTION_ANNOTATION: &str = "networking.istio.io/traffic-distribution";

impl From<core::Service> for Service {
    fn from(svc: core::Service) -> Self {
        let meta = svc.metadata;
        let spec = svc.spec.unwrap_or_default();
        let mut cluster_ips: Vec<IpAddr> = Vec::new();
        for ip in spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter())
            .filter_map(|a| ip(a))
        {
            if !cluster_ips.contains(&ip) {
                cluster_ips.push(ip);
            }
        }
        // A value this version does not know falls through to the
        // annotation, as in istiod.
        let traffic_distribution = spec
            .traffic_distribution
            .as_deref()
            .and_then(TrafficDistribution::parse)
            .or_else(|| {
                meta.annotations
                    .as_ref()?
                    .get(TRAFFIC_DISTRIBUTION_ANNOTATION)
                    .and_then(|v| TrafficDistribution::parse(v))
            });
        Self {
            traffic_distribution,
            node_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
            selector: spec.selector.filter(|s| !s.is_empty()),
            namespace: namespace_of(meta.namespace.as_deref()),
            labels: Labels::from_map(meta.labels.as_ref()),
            name: name_of(meta.name),
            cluster_ips: cluster_ips.into(),
            ports: spec
                .ports
                .into_iter()
                .flatten()
                .map(|p| ServicePort {
                    name: p.name.as_deref().map(intern),
                    protocol: p.protocol.as_deref().map(intern),
                    port: p.port,
                    target_port: p.target_port.map(|t| match t {
                        IntOrString::Int(n) => TargetPort::Number(n),
                        IntOrString::String(name) => TargetPort::Name(intern(&name)),
                    }),
                    app_protocol: p.app_protocol.as_deref().map(intern),
                })
                .collect(),
        }
    }
}

/// One of an EndpointSlice's `ports`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlicePort {
    pub name: Option<Arc<str>>,
    pub protocol: Option<Arc<str>>,
    pub port: Option<i32>,
}

/// One of an EndpointSlice's `endpoints`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The first of `addresses` that parses. The API defines no meaning for
    /// addresses after the first, and kube-proxy reads only that one.
    pub address: Option<IpAddr>,
    /// `conditions.ready`.
    pub ready: Option<bool>,
    /// `targetRef.name` when the target is a Pod (no other target is read).
    pub pod: Option<Box<str>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSlice {
    pub name: Arc<str>,
    pub namespace: Arc<str>,
    pub labels: Labels,
    pub ports: Box<[SlicePort]>,
    pub endpoints: Box<[Endpoint]>,
}

impl From<discovery::EndpointSlice> for EndpointSlice {
    fn from(slice: discovery::EndpointSlice) -> Self {
        let meta = slice.metadata;
        Self {
            namespace: namespace_of(meta.namespace.as_deref()),
            labels: Labels::from_map(meta.labels.as_ref()),
            name: name_of(meta.name),
            ports: slice
                .ports
                .into_iter()
                .flatten()
                .map(|p| SlicePort {
                    name: p.name.as_deref().map(intern),
                    protocol: p.protocol.as_deref().map(intern),
                    port: p.port,
                })
                .collect(),
            endpoints: slice
                .endpoints
                .into_iter()
                .map(|ep| Endpoint {
                    address: ep.addresses.iter().find_map(|a| ip(a)),
                    ready: ep.conditions.and_then(|c| c.ready),
                    pod: ep
                        .target_ref
                        .filter(|r| r.kind.as_deref() == Some("Pod"))
                        .and_then(|r| r.name)
                        .map(String::into_boxed_str),
                })
                .collect(),
        }
    }
}

/// A ConfigMap, as far as it holds Istio's mesh config (`data.mesh`; the
/// node agent reads the one named by `--mesh-config` in the root namespace)
/// or a CA bundle a BackendTLSPolicy may name (`data["ca.crt"]`, in the
/// namespaces whose TLS material the agent reads). Nothing else is kept.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigMap {
    pub name: Arc<str>,
    pub namespace: Arc<str>,
    /// `None` when it has no `mesh` key.
    pub mesh: Option<MeshConfig>,
    /// `data["ca.crt"]`, as written; `None` when not there.
    pub ca_certificates: Option<Arc<str>>,
}

impl ConfigMap {
    /// Reads `data.mesh` (YAML), checked: errors name the field under
    /// `data.mesh`.
    pub fn read(map: core::ConfigMap) -> (ConfigMap, Vec<FieldError>) {
        let mut errors = Vec::new();
        let text = map.data.as_ref().and_then(|d| d.get(MESH_KEY));
        let mesh = text.and_then(|text| {
            // An empty `mesh` key says nothing: every default.
            if text.trim().is_empty() {
                return Some(MeshConfig::default());
            }
            let de = serde_yaml::Deserializer::from_str(text);
            match serde_path_to_error::deserialize::<_, MeshConfig>(de) {
                Ok(mesh) => {
                    errors.extend(validate::mesh_config("data.mesh", &mesh));
                    Some(mesh)
                }
                Err(error) => {
                    let error = validate::from_serde(error);
                    let path = match error.path.as_str() {
                        "" => "data.mesh".to_owned(),
                        path => format!("data.mesh.{path}"),
                    };
                    errors.push(FieldError::new(path, error.reason));
                    None
                }
            }
        });
        let ca_certificates = map
            .data
            .as_ref()
            .and_then(|d| d.get(backend_tls_policy::CA_KEY))
            .map(|pem| Arc::from(pem.as_str()));
        let meta = map.metadata;
        let map = ConfigMap {
            namespace: namespace_of(meta.namespace.as_deref()),
            name: name_of(meta.name),
            mesh,
            ca_certificates,
        };
        (map, errors)
    }
}

/// A Secret, as far as it holds TLS material a DestinationRule's
/// `credentialName` may name: only the keys Istio reads are kept
/// ([`Credential`]), so the agent holds nothing else a Secret carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Secret {
    pub name: Arc<str>,
    pub namespace: Arc<str>,
    pub credential: Credential,
}

/// TLS material of a Secret, under Istio's keys and in Istio's order: the
/// certificate and key as a pair, a generic Secret's `cert` and `key` when
/// both are there, else a TLS Secret's `tls.crt` and `tls.key`; the CA and
/// its revocation lists likewise, `cacert` with `crl`, else `ca.crt` with
/// `ca.crl`. Each is the PEM text as stored; `None` when not there.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credential {
    pub certificate_chain: Option<Arc<[u8]>>,
    pub private_key: Option<Arc<[u8]>>,
    pub ca_certificates: Option<Arc<[u8]>>,
    pub ca_crl: Option<Arc<[u8]>>,
}

/// The suffix of a Secret holding only the CA of the credential named
/// without it (Istio's `<credentialName>-cacert`).
pub const CA_SECRET_SUFFIX: &str = "-cacert";

// Never the bytes: a key must not reach a log line.
impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let len = |v: &Option<Arc<[u8]>>| v.as_ref().map(|b| b.len());
        f.debug_struct("Credential")
            .field("certificate_chain_bytes", &len(&self.certificate_chain))
            .field("private_key_bytes", &len(&self.private_key))
            .field("ca_certificates_bytes", &len(&self.ca_certificates))
            .field("ca_crl_bytes", &len(&self.ca_crl))
            .finish()
    }
}

impl Credential {
    pub fn is_empty(&self) -> bool {
        *self == Credential::default()
    }
}

impl From<core::Secret> for Secret {
    fn from(secret: core::Secret) -> Self {
        // `stringData` is written over `data` by the API server; a file of
        // the local folder may still carry both.
        let mut data: BTreeMap<String, Vec<u8>> = secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        data.extend(
            secret
                .string_data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes())),
        );
        let value = |key: &str| {
            data.get(key)
                .filter(|v| !v.is_empty())
                .map(|v| Arc::from(&v[..]))
        };
        // The first pair whose first member is there.
        let pair = |pairs: [(&str, &str); 2], both: bool| {
            pairs.iter().find_map(|(a, b)| {
                let first = value(a)?;
                let second = value(b);
                (!both || second.is_some()).then_some((Some(first), second))
            })
        };
        let (certificate_chain, private_key) =
            pair([("cert", "key"), ("tls.crt", "tls.key")], true).unwrap_or_default();
        let (ca_certificates, ca_crl) =
            pair([("cacert", "crl"), ("ca.crt", "ca.crl")], false).unwrap_or_default();
        let credential = Credential {
            certificate_chain,
            private_key,
            ca_certificates,
            ca_crl,
        };
        let meta = secret.metadata;
        Secret {
            namespace: namespace_of(meta.namespace.as_deref()),
            name: name_of(meta.name),
            credential,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::object::{Object, parse_document, split_documents};

    fn parse(yaml: &str) -> Result<Object, crate::ConfigError> {
        let mut docs = split_documents(yaml).expect("test YAML");
        parse_document(docs.remove(0), "test")
    }

    #[test]
    fn a_secret_keeps_only_istios_tls_keys() {
        // `data` is base64: "CERT", "KEY", "SECRET".
        let yaml = r#"
apiVersion: v1
kind: Secret
metadata: { name: partner, namespace: egress }
type: kubernetes.io/tls
data: { tls.crt: Q0VSVA==, tls.key: S0VZ, password: U0VDUkVU }
stringData: { cacert: CA, ca.crt: "", crl: CRL }
"#;
        let Ok(Object::Secret(secret)) = parse(yaml) else {
            panic!("a Secret");
        };
        assert_eq!((&*secret.namespace, &*secret.name), ("egress", "partner"));
        let c = &secret.credential;
        assert_eq!(c.certificate_chain.as_deref(), Some(&b"CERT"[..]));
        assert_eq!(c.private_key.as_deref(), Some(&b"KEY"[..]));
        // The generic CA key first (and an empty value is none).
        assert_eq!(c.ca_certificates.as_deref(), Some(&b"CA"[..]));
        assert_eq!(c.ca_crl.as_deref(), Some(&b"CRL"[..]));
        // Nothing else is kept, and a log line never shows the bytes.
        let shown = format!("{secret:?}");
        assert!(!shown.contains("KEY") && !shown.contains("75"), "{shown}");
        assert!(shown.contains("private_key_bytes: Some(3)"), "{shown}");

        // Istio's order, pairs kept: a generic `cert` and `key` win over
        // the TLS keys, and `ca.crt` comes with `ca.crl`, not `crl`.
        let Ok(Object::Secret(both)) = parse(
            "apiVersion: v1\nkind: Secret\nmetadata: { name: both }\nstringData: { cert: C1, key: K1, tls.crt: C2, tls.key: K2, ca.crt: A2, ca.crl: R2, crl: R1 }\n",
        ) else {
            panic!("a Secret");
        };
        let c = &both.credential;
        assert_eq!(c.certificate_chain.as_deref(), Some(&b"C1"[..]));
        assert_eq!(c.private_key.as_deref(), Some(&b"K1"[..]));
        assert_eq!(c.ca_certificates.as_deref(), Some(&b"A2"[..]));
        assert_eq!(c.ca_crl.as_deref(), Some(&b"R2"[..]));
        let Ok(Object::Secret(lone)) = parse(
            "apiVersion: v1\nkind: Secret\nmetadata: { name: lone }\nstringData: { cert: C1, tls.crt: C2, tls.key: K2 }\n",
        ) else {
            panic!("a Secret");
        };
        assert_eq!(
            lone.credential.certificate_chain.as_deref(),
            Some(&b"C2"[..])
        );
        assert_eq!(lone.credential.private_key.as_deref(), Some(&b"K2"[..]));

        let Ok(Object::Secret(docker)) = parse(
            "apiVersion: v1\nkind: Secret\nmetadata: { name: pull }\ndata: { .dockerconfigjson: e30= }\n",
        ) else {
            panic!("a Secret");
        };
        assert!(docker.credential.is_empty());
        assert_eq!(&*docker.namespace, "default");
    }

    #[test]
    fn a_pod_keeps_what_warren_reads() {
        let yaml = r#"
apiVersion: v1
kind: Pod
metadata:
  name: web-7d9f-abcde
  namespace: shop
  labels: { app: web, pod-template-hash: 7d9f }
  annotations:
    warren.io/netns: /run/netns/web
    warren.io/exclude-outbound-ports: "25, 587"
    kubectl.kubernetes.io/last-applied-configuration: "{}"
  ownerReferences: [{ apiVersion: apps/v1, kind: ReplicaSet, name: web-7d9f, uid: u1 }]
spec:
  nodeName: node-a
  serviceAccountName: web
  containers: [{ name: main, image: web:1, ports: [{ containerPort: 8080 }] }]
status:
  phase: Running
  hostIP: 172.30.0.1
  podIP: 10.244.0.5
  podIPs: [{ ip: 10.244.0.5 }, { ip: "fd00::5" }]
"#;
        let Ok(Object::Pod(pod)) = parse(yaml) else {
            panic!("not a valid pod");
        };
        assert_eq!((&*pod.namespace, &*pod.name), ("shop", "web-7d9f-abcde"));
        assert_eq!(pod.labels.get("app"), Some("web"));
        assert_eq!(pod.annotation("warren.io/netns"), Some("/run/netns/web"));
        assert_eq!(
            pod.annotations.len(),
            2,
            "only warren.io/ annotations are kept"
        );
        assert_eq!(pod.excluded_ports(), Ok(vec![25, 587]));
        let owner = pod.owner.as_ref().expect("an owner");
        assert_eq!((owner.kind(), owner.name()), ("ReplicaSet", "web-7d9f"));
        assert_eq!(pod.node_name.as_deref(), Some("node-a"));
        assert_eq!(pod.service_account(), "web");
        assert_eq!(pod.phase, Some(PodPhase::Running));
        assert!(!pod.finished());
        assert_eq!(pod.host_ip, Some(IpAddr::V4(Ipv4Addr::new(172, 30, 0, 1))));
        assert_eq!(pod.addresses().len(), 2);
        assert_eq!(pod.pod_ip, Some(IpAddr::V4(Ipv4Addr::new(10, 244, 0, 5))));
    }

    #[test]
    fn a_pod_without_status_or_account() {
        let Ok(Object::Pod(pod)) =
            parse("apiVersion: v1\nkind: Pod\nmetadata: { name: p }\nspec: { containers: [] }\n")
        else {
            panic!("not a valid pod");
        };
        assert_eq!(&*pod.namespace, "default");
        assert_eq!(pod.service_account(), "default");
        assert!(pod.addresses().is_empty());
        assert!(pod.labels.is_empty());
    }

    #[test]
    fn pod_errors_name_the_field() {
        let bad_type = parse(
            "apiVersion: v1\nkind: Pod\nmetadata: { name: p, namespace: shop }\n\
             spec: { containers: [{ name: main, ports: [{ containerPort: http }] }] }\n",
        )
        .expect_err("a port that is not a number");
        assert_eq!(
            bad_type.errors[0].path,
            "spec.containers[0].ports[0].containerPort"
        );
        let bad_annotation = parse(
            "apiVersion: v1\nkind: Pod\nmetadata: { name: p, namespace: shop, \
             annotations: { warren.io/exclude-outbound-ports: \"25,smtp\" } }\n",
        )
        .expect_err("a port annotation that is not a port");
        assert_eq!(
            bad_annotation.errors[0].path,
            "metadata.annotations[warren.io/exclude-outbound-ports]"
        );
        let bad_label =
            parse("apiVersion: v1\nkind: Pod\nmetadata: { name: p, labels: { app: \"-web\" } }\n")
                .expect_err("a label value that Kubernetes refuses");
        assert_eq!(bad_label.errors[0].path, "metadata.labels.app");
    }

    #[test]
    fn services_and_slices_keep_addresses_ports_and_targets() {
        let Ok(Object::Service(svc)) = parse(
            "apiVersion: v1\nkind: Service\nmetadata: { name: web, namespace: shop }\n\
             spec: { clusterIP: 10.96.0.1, clusterIPs: [10.96.0.1, \"fd00::1\"], \
             ports: [{ name: http, port: 80, targetPort: web }, { port: 53, protocol: UDP }] }\n",
        ) else {
            panic!("not a valid service");
        };
        assert_eq!(svc.cluster_ips.len(), 2, "each address once");
        assert_eq!(
            svc.ports[0].target_port,
            Some(TargetPort::Name("web".into()))
        );
        assert_eq!(svc.ports[1].protocol.as_deref(), Some("UDP"));
        let Ok(Object::EndpointSlice(slice)) = parse(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: { name: web-1, namespace: shop, labels: { kubernetes.io/service-name: web } }\n\
             addressType: IPv4\nports: [{ name: http, port: 8080 }]\nendpoints:\n\
             - { addresses: [10.244.0.5], conditions: { ready: false }, targetRef: { kind: Pod, name: web-0 } }\n\
             - { addresses: [10.244.0.6], targetRef: { kind: Node, name: n } }\n",
        ) else {
            panic!("not a valid slice");
        };
        assert_eq!(slice.labels.get("kubernetes.io/service-name"), Some("web"));
        assert_eq!(slice.ports[0].port, Some(8080));
        assert_eq!(slice.endpoints[0].ready, Some(false));
        assert_eq!(slice.endpoints[0].pod.as_deref(), Some("web-0"));
        assert_eq!(slice.endpoints[1].pod, None, "only Pod targets are read");
    }
}
