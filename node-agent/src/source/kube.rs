//! The Kubernetes source: kube-rs watchers on the API server, turned into
//! the same [`SourceEvent`]s as the folder.
//!
//! Objects are watched untyped and parsed by the same code as the folder's
//! documents ([`parse_document`]): one invalid object is refused on its own,
//! with the same errors, instead of failing a typed watch for its whole
//! kind. Every kind is watched cluster-wide, pods included: the per-node
//! view describes every workload a local pod may call (its identity and its
//! node's address come from its Pod), as Istio's control plane does for
//! ztunnel; enrollment picks this node's pods itself. After a watch is lost (`410 Gone`, a disconnect) the
//! watcher lists again, and objects that vanished meanwhile are deleted.
//!
//! A kind whose CRDs differ between releases is watched at the version the
//! API server serves; while that watch finds nothing there (`404`: the CRD
//! installed, upgraded or downgraded since), discovery is asked again and
//! the watch follows the version served now, without a restart.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use anyhow::Result;
use futures::StreamExt as _;
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, GroupVersionKind, TypeMeta},
    runtime::{WatchStreamExt as _, watcher},
};
use tokio::{sync::mpsc, task::JoinSet};
use tracing::{debug, info, warn};

use super::SourceEvent;
use crate::model::{
    Kind, ObjectKey,
    istio::mesh::MESH_KEY,
    object::{document_key, parse_document},
};

/// Every kind Warren reads, with where the API server serves it.
const KINDS: &[(Kind, &str, &str, &str, &str)] = &[
    // (kind, group, version, API kind, plural)
    (Kind::Namespace, "", "v1", "Namespace", "namespaces"),
    (Kind::Node, "", "v1", "Node", "nodes"),
    (Kind::Pod, "", "v1", "Pod", "pods"),
    (Kind::Service, "", "v1", "Service", "services"),
    (Kind::ConfigMap, "", "v1", "ConfigMap", "configmaps"),
    (Kind::Secret, "", "v1", "Secret", "secrets"),
    (
        Kind::EndpointSlice,
        "discovery.k8s.io",
        "v1",
        "EndpointSlice",
        "endpointslices",
    ),
    (
        Kind::VirtualService,
        "networking.istio.io",
        "v1",
        "VirtualService",
        "virtualservices",
    ),
    (
        Kind::DestinationRule,
        "networking.istio.io",
        "v1",
        "DestinationRule",
        "destinationrules",
    ),
    (
        Kind::ServiceEntry,
        "networking.istio.io",
        "v1",
        "ServiceEntry",
        "serviceentries",
    ),
    (
        Kind::WorkloadEntry,
        "networking.istio.io",
        "v1",
        "WorkloadEntry",
        "workloadentries",
    ),
    (
        Kind::AuthorizationPolicy,
        "security.istio.io",
        "v1",
        "AuthorizationPolicy",
        "authorizationpolicies",
    ),
    (
        Kind::PeerAuthentication,
        "security.istio.io",
        "v1",
        "PeerAuthentication",
        "peerauthentications",
    ),
    (
        Kind::RequestAuthentication,
        "security.istio.io",
        "v1",
        "RequestAuthentication",
        "requestauthentications",
    ),
    (
        Kind::Telemetry,
        "telemetry.istio.io",
        "v1",
        "Telemetry",
        "telemetries",
    ),
    (
        Kind::Gateway,
        "gateway.networking.k8s.io",
        "v1",
        "Gateway",
        "gateways",
    ),
    (
        Kind::HttpRoute,
        "gateway.networking.k8s.io",
        "v1",
        "HTTPRoute",
        "httproutes",
    ),
    (
        Kind::GrpcRoute,
        "gateway.networking.k8s.io",
        "v1",
        "GRPCRoute",
        "grpcroutes",
    ),
    (
        Kind::ReferenceGrant,
        "gateway.networking.k8s.io",
        "v1beta1",
        "ReferenceGrant",
        "referencegrants",
    ),
    (
        Kind::TcpRoute,
        "gateway.networking.k8s.io",
        "v1alpha2",
        "TCPRoute",
        "tcproutes",
    ),
    (
        Kind::BackendTlsPolicy,
        "gateway.networking.k8s.io",
        "v1",
        "BackendTLSPolicy",
        "backendtlspolicies",
    ),
    (
        Kind::TlsRoute,
        "gateway.networking.k8s.io",
        "v1alpha2",
        "TLSRoute",
        "tlsroutes",
    ),
];

/// What the agent reads cluster-wide from the API server, as RBAC names it:
/// (API group, resource). The Helm chart's ClusterRole must allow get, list
/// and watch on each. The mesh config's ConfigMap is read in the root
/// namespace alone, by name, and Secrets and ConfigMaps (CA bundles) in the
/// namespaces named for credentials alone (Roles).
pub fn watched_resources() -> impl Iterator<Item = (&'static str, &'static str)> {
    KINDS
        .iter()
        .filter(|k| !matches!(k.0, Kind::ConfigMap | Kind::Secret))
        .map(|&(_, group, _, _, plural)| (group, plural))
}

/// Keeps of a ConfigMap read for its CA bundle (from a namespace's watch,
/// never the mesh config, which has a watch of its own) no `mesh` key: an
/// application's ConfigMap may well have one, and parsed as mesh config it
/// would be refused, with the bundle beside it.
fn only_bundles(object: &mut DynamicObject) {
    if let Some(data) = object.data.get_mut("data").and_then(|d| d.as_object_mut()) {
        data.remove(MESH_KEY);
    }
}

/// Secrets never read: Helm's release records (large, and never TLS) and
/// service account tokens.
pub const SECRET_FIELDS: &str =
    "type!=helm.sh/release.v1,type!=kubernetes.io/service-account-token";

/// `kind` as RBAC names it: (API group, resource).
pub fn resource_of(kind: Kind) -> Option<(&'static str, &'static str)> {
    KINDS
        .iter()
        .find(|k| k.0 == kind)
        .map(|&(_, group, _, _, plural)| (group, plural))
}

/// The versions a kind may be served at, newest first, for kinds whose
/// CRDs differ between releases (of the Gateway API, of Istio): the first the API server
/// serves the kind at is watched ([`served_version`]); the version in
/// [`KINDS`], the most widely served, when discovery cannot tell.
const VERSIONS: &[(Kind, &[&str])] = &[
    (Kind::Gateway, &["v1", "v1beta1"]),
    (Kind::HttpRoute, &["v1", "v1beta1"]),
    (Kind::GrpcRoute, &["v1", "v1alpha2"]),
    (Kind::TlsRoute, &["v1", "v1alpha3", "v1alpha2"]),
    (Kind::ReferenceGrant, &["v1", "v1beta1", "v1alpha2"]),
    // `v1` since Gateway API 1.4; 1.2 and 1.3 serve `v1alpha3`.
    (Kind::BackendTlsPolicy, &["v1", "v1alpha3"]),
    // `v1` since Istio 1.22; older control planes' CRDs serve `v1alpha1`.
    (Kind::Telemetry, &["v1", "v1alpha1"]),
];

/// How long the API server's discovery of one version may take.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Rounds of discovery when the API server fails to answer (not when it
/// says a version is not served), a second apart, then twice that, ….
const DISCOVERY_ROUNDS: u32 = 3;

/// How long a versioned kind not found where it is watched waits before
/// discovery is asked again.
const REDISCOVERY: Duration = Duration::from_secs(60);

/// One watch's event, as the merged stream carries it.
type WatchEvent = (
    Watch,
    std::result::Result<watcher::Event<DynamicObject>, watcher::Error>,
);

/// Whether a kind's listing refused with `code` (an HTTP status) may let
/// the first sync go on without it, the kind coming in when it can (the
/// watcher keeps trying).
fn optional(kind: Kind, code: u16) -> bool {
    match kind {
        // Without Nodes, workloads just have no locality, e.g. for an
        // agent whose ClusterRole predates reading them.
        Kind::Node => matches!(code, 403 | 404),
        // Not served: the Gateway API's experimental CRDs, which many
        // clusters do not install. Forbidden still holds the sync: these
        // change where connections go.
        Kind::TcpRoute | Kind::TlsRoute => code == 404,
        // A ClusterRole from before the mesh config was read: without its
        // providers CUSTOM policies fail closed, so nothing is let through.
        // A namespace's Role missing: its CA bundles fail closed.
        Kind::ConfigMap => code == 403,
        // Telemetry shapes what is reported, never where traffic goes or
        // who may send it: without its CRD (a cluster without Istio's) or
        // its RBAC, the proxies report as they do by default.
        Kind::Telemetry => matches!(code, 403 | 404),
        // A cluster without Istio's WorkloadEntry CRD has none. Forbidden
        // holds the sync: an entry decides how a workload is reached
        // (HBONE or plain) and which waypoint guards it.
        Kind::WorkloadEntry => code == 404,
        // A namespace's Role missing: its `credentialName`s fail closed.
        Kind::Secret => code == 403,
        // A cluster without the Gateway API's CRD for it has none.
        // Forbidden holds the sync: a policy decides whether servers are
        // reached over TLS.
        Kind::BackendTlsPolicy => code == 404,
        _ => false,
    }
}

pub struct KubeSource {
    client: Client,
    kinds: Vec<Kind>,
    /// (namespace, name) of the one ConfigMap read: the mesh config.
    mesh_config: Option<(String, String)>,
    /// The namespaces whose Secrets (for `credentialName`) and ConfigMaps
    /// (CA bundles of BackendTLSPolicies) are read.
    secret_namespaces: Vec<String>,
    /// What is watched in each of `secret_namespaces`.
    namespaced_kinds: &'static [Kind],
    /// Kinds whose listing, forbidden (403) or not served (404), lets the
    /// first sync go on, besides what [`optional`] lets go: for a reader
    /// that writes status rather than routes traffic.
    optional_kinds: &'static [Kind],
}

/// One watch: a kind, cluster-wide or in one namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Watch {
    kind: Kind,
    namespace: Option<String>,
}

/// What one kind's watcher saw, before relist bookkeeping.
enum Seen {
    Listing,
    Object(Box<DynamicObject>),
    Gone(Box<DynamicObject>),
    Listed,
}

impl KubeSource {
    /// Watches every kind Warren reads, and of ConfigMaps the one named
    /// `name` in `namespace` (Istio's mesh config).
    pub fn new(client: Client, mesh_config: (String, String)) -> Self {
        let (namespace, name) = mesh_config;
        Self::with_kinds(client, KINDS.iter().map(|k| k.0).collect())
            .with_mesh_config(namespace, name)
    }

    /// Also watches the ConfigMap `name` of `namespace`, and no other.
    pub fn with_mesh_config(mut self, namespace: String, name: String) -> Self {
        self.kinds.push(Kind::ConfigMap);
        self.mesh_config = Some((namespace, name));
        self
    }

    /// Also watches the Secrets of `namespaces` (but those of
    /// [`SECRET_FIELDS`]) and their ConfigMaps, each namespace on its own:
    /// the agent may read no other namespace's.
    pub fn with_secret_namespaces(mut self, namespaces: Vec<String>) -> Self {
        // An empty name would ask for every namespace's.
        let mut namespaces: Vec<String> = namespaces
            .into_iter()
            .map(|ns| ns.trim().to_owned())
            .filter(|ns| !ns.is_empty())
            .collect();
        namespaces.sort();
        namespaces.dedup();
        self.secret_namespaces = namespaces;
        self.namespaced_kinds = &[Kind::Secret, Kind::ConfigMap];
        self
    }

    /// Lets a listing of any of `kinds` that is forbidden or not served not
    /// hold the first sync back (for a reader whose work on the other kinds
    /// should go on).
    pub fn with_optional_kinds(mut self, kinds: &'static [Kind]) -> Self {
        self.optional_kinds = kinds;
        self
    }

    /// Also watches the ConfigMaps of `namespaces` (not their Secrets), each
    /// namespace on its own: the CA bundles BackendTLSPolicies name there.
    pub fn with_bundle_namespaces(self, namespaces: Vec<String>) -> Self {
        let mut source = self.with_secret_namespaces(namespaces);
        source.namespaced_kinds = &[Kind::ConfigMap];
        source
    }

    /// Watches only `kinds` (a cluster without Istio's CRDs, or a test);
    /// no ConfigMap, no Secret.
    pub fn with_kinds(client: Client, kinds: Vec<Kind>) -> Self {
        let kinds = kinds
            .into_iter()
            .filter(|&k| !matches!(k, Kind::ConfigMap | Kind::Secret))
            .collect();
        Self {
            client,
            kinds,
            mesh_config: None,
            secret_namespaces: Vec::new(),
            namespaced_kinds: &[],
            optional_kinds: &[],
        }
    }

    fn watches(&self) -> Vec<Watch> {
        let mut watches: Vec<Watch> = self
            .kinds
            .iter()
            .filter(|&&kind| KINDS.iter().any(|k| k.0 == kind))
            .map(|&kind| Watch {
                kind,
                namespace: None,
            })
            .collect();
        for ns in &self.secret_namespaces {
            for &kind in self.namespaced_kinds {
                watches.push(Watch {
                    kind,
                    namespace: Some(ns.clone()),
                });
            }
        }
        watches
    }

    /// Sends every listed object, then `Synced` once every kind is listed,
    /// then every change, until the receiver goes away.
    pub async fn run(self, events: mpsc::Sender<SourceEvent>) -> Result<()> {
        // A task per kind, all discovering at once (a slow API server delays
        // the start once); dropped with this, they stop.
        let (merged_tx, mut merged) = mpsc::channel::<WatchEvent>(256);
        let mut tasks = JoinSet::new();
        let watches = self.watches();
        for watch in &watches {
            tasks.spawn(follow(
                self.client.clone(),
                watch.clone(),
                self.mesh_config.clone(),
                merged_tx.clone(),
            ));
        }
        drop(merged_tx);
        // Per watch: the keys last known, and those seen in a relist.
        let mut known: BTreeMap<Watch, BTreeSet<ObjectKey>> = BTreeMap::new();
        let mut relisting: BTreeMap<Watch, BTreeSet<ObjectKey>> = BTreeMap::new();
        let mut listed: BTreeSet<Watch> = BTreeSet::new();
        // Optional watches already reported as refused: their retries are
        // not worth a warning each.
        let mut reported: BTreeSet<Watch> = BTreeSet::new();
        let mut synced = false;
        while let Some((watch, event)) = merged.recv().await {
            let kind = watch.kind;
            let in_namespace = watch.namespace.as_deref().unwrap_or("(all)");
            let seen = match event {
                Ok(watcher::Event::Init) => Seen::Listing,
                Ok(watcher::Event::InitApply(o)) | Ok(watcher::Event::Apply(o)) => {
                    Seen::Object(Box::new(o))
                }
                Ok(watcher::Event::Delete(o)) => Seen::Gone(Box::new(o)),
                Ok(watcher::Event::InitDone) => Seen::Listed,
                Err(err) => {
                    // A namespace whose Secrets (or CA bundles) may no
                    // longer be read (its Role taken away): what was read
                    // there is withdrawn, so that its credentials fail
                    // closed.
                    if watch.namespace.is_some() && refusal(&err) == Some(403) {
                        let gone = known.get_mut(&watch).map(std::mem::take);
                        for key in gone.into_iter().flatten() {
                            if events.send(SourceEvent::Delete(key)).await.is_err() {
                                return Ok(());
                            }
                        }
                    }
                    // The watcher retries with backoff; the last good
                    // objects stay in force meanwhile (but the Secrets above).
                    let optional = refusal(&err).is_some_and(|code| {
                        optional(kind, code)
                            || (matches!(code, 403 | 404) && self.optional_kinds.contains(&kind))
                    });
                    if optional && reported.contains(&watch) {
                        debug!(kind = kind.name(), namespace = in_namespace, error = %err, "watching the API server");
                    } else {
                        warn!(kind = kind.name(), namespace = in_namespace, error = %err, "watching the API server");
                    }
                    // A kind that may be missing must not hold the first
                    // sync back; it comes in when it can.
                    if optional && !listed.contains(&watch) {
                        warn!(
                            kind = kind.name(),
                            namespace = in_namespace,
                            "going on without it until it can be listed (is its CRD installed? does the agent's ClusterRole, or Role there, allow list and watch?)"
                        );
                        reported.insert(watch.clone());
                        // Counted as listed, with nothing it had dropped.
                        relisting.remove(&watch);
                        Seen::Listed
                    } else {
                        continue;
                    }
                }
            };
            let mut out = Vec::new();
            match seen {
                Seen::Listing => {
                    relisting.insert(watch.clone(), BTreeSet::new());
                }
                Seen::Object(mut object) => {
                    if watch.kind == Kind::ConfigMap && watch.namespace.is_some() {
                        only_bundles(&mut object);
                    }
                    let doc = match serde_json::to_value(&*object).and_then(serde_json::from_value)
                    {
                        Ok(doc) => doc,
                        Err(err) => {
                            warn!(kind = kind.name(), error = %err, "object from the API server is not a document");
                            continue;
                        }
                    };
                    let key = document_key(&doc);
                    if let Some(key) = &key {
                        known.entry(watch.clone()).or_default().insert(key.clone());
                        if let Some(seen) = relisting.get_mut(&watch) {
                            seen.insert(key.clone());
                        }
                    }
                    out.push(match parse_document(doc, "kube") {
                        Ok(object) => SourceEvent::Upsert(object),
                        Err(error) => SourceEvent::Rejected { key, error },
                    });
                }
                Seen::Gone(object) => {
                    let doc = serde_json::to_value(&*object)
                        .and_then(serde_json::from_value)
                        .ok();
                    if let Some(key) = doc.as_ref().and_then(document_key) {
                        known.entry(watch.clone()).or_default().remove(&key);
                        out.push(SourceEvent::Delete(key));
                    }
                }
                Seen::Listed => {
                    // What was known but not listed again vanished while the
                    // watch was down.
                    if let Some(seen) = relisting.remove(&watch) {
                        let kind_known = known.entry(watch.clone()).or_default();
                        let vanished: Vec<ObjectKey> =
                            kind_known.difference(&seen).cloned().collect();
                        for key in vanished {
                            kind_known.remove(&key);
                            out.push(SourceEvent::Delete(key));
                        }
                    }
                    listed.insert(watch.clone());
                    if !synced && listed.len() == watches.len() {
                        synced = true;
                        info!(
                            kinds = listed.len(),
                            "every kind listed from the API server"
                        );
                        out.push(SourceEvent::Synced);
                    }
                }
            }
            for event in out {
                if events.send(event).await.is_err() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

/// Watches `kind` at the version the API server serves it at, and follows
/// it: while the watch finds nothing there (`404`), discovery is asked again
/// every [`REDISCOVERY`], and a version served now starts a new watch there
/// (its listing replaces what the old one had, as a relist does). Events go
/// to `merged` until it closes.
async fn follow(
    client: Client,
    watch: Watch,
    mesh_config: Option<(String, String)>,
    merged: mpsc::Sender<WatchEvent>,
) {
    let kind = watch.kind;
    let Some(&(_, group, fallback, api_kind, plural)) = KINDS.iter().find(|k| k.0 == kind) else {
        return;
    };
    let versioned = VERSIONS.iter().any(|(k, v)| *k == kind && v.len() > 1);
    let (mut version, _) = served_version(&client, kind, group, fallback, plural).await;
    loop {
        let resource = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(group, version, api_kind),
            plural,
        );
        let (api, config) = match (kind, &mesh_config, &watch.namespace) {
            // The ConfigMaps of a namespace named for credentials; in the
            // mesh config's namespace, all but the mesh config, which its
            // own watch (by name, with a Role of its own) reads: one watch
            // per object, so that neither deletes what the other holds.
            (Kind::ConfigMap, mesh, Some(namespace)) => {
                let config = match mesh {
                    Some((mesh_namespace, name)) if mesh_namespace == namespace => {
                        watcher::Config::default().fields(&format!("metadata.name!={name}"))
                    }
                    _ => watcher::Config::default(),
                };
                (
                    Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &resource),
                    config,
                )
            }
            // One object, by name: the agent may read no other ConfigMap
            // cluster-wide.
            (Kind::ConfigMap, Some((namespace, name)), None) => (
                Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &resource),
                watcher::Config::default().fields(&format!("metadata.name={name}")),
            ),
            (Kind::ConfigMap, None, None) => return,
            // Secrets of one namespace, never cluster-wide.
            (Kind::Secret, _, Some(namespace)) => (
                Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &resource),
                watcher::Config::default().fields(SECRET_FIELDS),
            ),
            (Kind::Secret, _, None) => return,
            _ => (
                Api::all_with(client.clone(), &resource),
                watcher::Config::default(),
            ),
        };
        let types = TypeMeta {
            api_version: resource.api_version.clone(),
            kind: resource.kind.clone(),
        };
        let mut stream = watcher(api, config).default_backoff().boxed();
        let mut asked = tokio::time::Instant::now();
        let moved_to = loop {
            let Some(event) = stream.next().await else {
                return;
            };
            let event = event.map(|e| e.modify(|o| fill_types(o, &types)));
            let missing = matches!(&event, Err(err) if refusal(err) == Some(404));
            if merged.send((watch.clone(), event)).await.is_err() {
                return;
            }
            if missing && versioned && asked.elapsed() >= REDISCOVERY {
                asked = tokio::time::Instant::now();
                let (now, served) = served_version(&client, kind, group, fallback, plural).await;
                if served && now != version {
                    break now;
                }
            }
        };
        info!(
            kind = kind.name(),
            from = version,
            to = moved_to,
            "the API server serves the kind at another version now: watching it there"
        );
        version = moved_to;
    }
}

/// The status the API server refused the request with, if it answered at
/// all (rather than failing it for a while): only a refusal may let an
/// optional kind stop holding the first sync back ([`optional`]).
fn refusal(err: &watcher::Error) -> Option<u16> {
    match err {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => Some(status.code),
        watcher::Error::WatchError(status) => Some(status.code),
        _ => None,
    }
}

/// Where the API server serves `kind`, at the version it is watched at.
/// Also whether the version is known to be served, not a fallback.
pub async fn api_resource(client: &Client, kind: Kind) -> Option<(ApiResource, bool)> {
    let &(_, group, fallback, api_kind, plural) = KINDS.iter().find(|k| k.0 == kind)?;
    let (version, served) = served_version(client, kind, group, fallback, plural).await;
    let resource =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, api_kind), plural);
    Some((resource, served))
}

/// The version to watch `kind` at: the first of its [`VERSIONS`] at which
/// the API server's discovery lists `plural` (CRDs installed from an older
/// Gateway API release serve only older ones). `fallback` when no version
/// lists it (the kind is then not installed, and its watch tells) or when
/// discovery keeps failing; with whether the version is known to be served
/// (a kind of one version always is).
async fn served_version(
    client: &Client,
    kind: Kind,
    group: &str,
    fallback: &'static str,
    plural: &str,
) -> (&'static str, bool) {
    let Some(&(_, versions)) = VERSIONS.iter().find(|(k, _)| *k == kind) else {
        return (fallback, true);
    };
    for round in 0..DISCOVERY_ROUNDS {
        if round > 0 {
            tokio::time::sleep(Duration::from_secs(1 << (round - 1))).await;
        }
        // Whether some version could not be asked about: then a later
        // round may find it.
        let mut unsure = false;
        for &version in versions {
            let listed = tokio::time::timeout(
                DISCOVERY_TIMEOUT,
                client.list_api_group_resources(&format!("{group}/{version}")),
            )
            .await;
            match listed {
                Ok(Ok(resources)) if resources.resources.iter().any(|r| r.name == plural) => {
                    if version != versions[0] {
                        info!(kind = kind.name(), version, "watching an older version");
                    }
                    return (version, true);
                }
                Ok(Ok(_)) => {}
                // Not served at this version: an answer.
                Ok(Err(kube::Error::Api(status))) if status.code == 404 => {}
                Ok(Err(err)) => {
                    unsure = true;
                    debug!(kind = kind.name(), version, error = %err, "discovery");
                }
                Err(_) => {
                    unsure = true;
                    debug!(kind = kind.name(), version, "discovery timed out");
                }
            }
        }
        if !unsure {
            break;
        }
    }
    (fallback, false)
}

/// The API server leaves `apiVersion` and `kind` out of a list's items; the
/// document parser needs them, and the watcher knows them.
fn fill_types(object: &mut DynamicObject, types: &TypeMeta) {
    if object.types.is_none() {
        object.types = Some(types.clone());
    }
}
