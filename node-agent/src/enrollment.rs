//! Which pods of this node the datapath captures, from configuration.
//!
//! A pod is enrolled when it runs on this node, its namespace is labelled
//! `warren.io/dataplane-mode=ambient` (or Istio's
//! `istio.io/dataplane-mode=ambient`), and it does not opt out with the pod
//! label `warren.io/dataplane-mode=none`. Its inbound mode comes from
//! PeerAuthentication: a workload policy in its namespace, else the
//! namespace's policy, else the mesh-wide policy in the root namespace,
//! else PERMISSIVE (Istio's default).

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf};

use tracing::{debug, info, warn};
use warren_ebpf_common::Mode;

use crate::{
    datapath::{Datapath, DatapathError, PodEnrollment, netns_cookie},
    model::{
        Kind, Labels, Object, ObjectKey,
        cluster::{Pod, PodPhase},
        istio::{MtlsMode, PeerAuthentication},
    },
    sandbox::{Locator, Sandboxes},
    store::Store,
};

/// Labels that opt a namespace in (value `ambient`) or a pod out (`none`).
pub const DATAPLANE_LABELS: &[&str] = &["warren.io/dataplane-mode", "istio.io/dataplane-mode"];
pub const AMBIENT: &str = "ambient";
/// Pod label value that opts one pod out.
pub const NONE: &str = "none";
/// Pod annotations Warren reads in local mode; on a cluster, [`crate::sandbox`]
/// finds the same facts from the pod's UID.
pub const NETNS_ANNOTATION: &str = "warren.io/netns";
pub const HOST_VETH_ANNOTATION: &str = "warren.io/host-veth";

/// Where the agent learns a pod's network namespace and veth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodNetworks {
    /// Local mode: the testbed's annotations (the config folder is the operator's
    /// own), else the pod's UID as on a Kubernetes node.
    AnnotationsOrUid,
    /// Kubernetes: the pod's UID only. Annotations are written by whoever creates the
    /// pod; trusting one would let it point the capture and the guard at another
    /// namespace or veth, even the node's.
    UidOnly,
}

/// Where to look for one pod's network namespace.
#[derive(Debug, PartialEq, Eq)]
enum Lookup<'a> {
    /// Local mode's annotations.
    Annotated {
        netns: &'a str,
        host_veth: Option<&'a str>,
    },
    /// On the node, by the pod's UID.
    Uid(&'a str),
    /// Not yet: kubelet gives a pod its address once its sandbox is up, and a pod
    /// that has finished has no processes left.
    NotStarted,
    Nowhere,
}

/// `reported`: whether the container runtime reported the pod's sandbox through
/// the CNI plugin, which it does before kubelet publishes the address.
fn lookup(networks: PodNetworks, pod: &Pod, reported: impl Fn(&str) -> bool) -> Lookup<'_> {
    if networks == PodNetworks::AnnotationsOrUid
        && let Some(netns) = pod.annotation(NETNS_ANNOTATION)
    {
        return Lookup::Annotated {
            netns,
            host_veth: pod.annotation(HOST_VETH_ANNOTATION),
        };
    }
    let finished = matches!(pod.phase, Some(PodPhase::Succeeded | PodPhase::Failed));
    match pod.uid.as_deref() {
        Some(_) if finished => Lookup::NotStarted,
        Some(uid) if pod.pod_ip.is_none() && !reported(uid) => Lookup::NotStarted,
        Some(uid) => Lookup::Uid(uid),
        None => Lookup::Nowhere,
    }
}

/// An enrolled pod's network namespace: the cookie the kernel programs know
/// it by, and a path that opens it (for ztunnel, to connect from the pod).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNetns {
    pub cookie: u64,
    pub path: PathBuf,
    /// The addresses the container runtime reported (CNI), for a pod whose
    /// status does not show them yet; empty otherwise.
    pub addresses: Vec<IpAddr>,
}

/// One pod the datapath captures.
#[derive(Clone, Debug)]
struct Enrolled {
    request: PodEnrollment,
    cookie: u64,
    /// The runtime's report of its addresses (see [`PodNetns::addresses`]).
    addresses: Vec<IpAddr>,
    /// Whether its inbound capture is on ([`Enrollment::capture_inbound`]).
    inbound: bool,
}

/// What the CNI plugin is told about a pod whose sandbox the runtime is building.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Captured from now on: its containers may start.
    Enrolled { mode: Mode },
    /// Not for the mesh (its namespace, an opt-out label, hostNetwork).
    Outside(String),
    /// Not decided yet (the Pod object not seen yet, or configuration not synced).
    NotYet(String),
    /// For the mesh but cannot be captured: the pod must not start uncaptured.
    Failed(String),
}

/// A pod's sandbox as the container runtime reports it through the CNI plugin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxReport {
    pub namespace: String,
    pub name: String,
    /// Absent from older runtimes' CNI arguments: the name decides then.
    pub uid: Option<String>,
    /// The sandbox's ID: a pod whose sandbox is built again gets a new one.
    pub container_id: String,
    pub netns: PathBuf,
    pub addresses: Vec<IpAddr>,
}

impl SandboxReport {
    /// `namespace/name`.
    pub fn pod(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// What configuration says of a pod whose sandbox the runtime reports: its key and
/// UID when it is to be captured, else the answer.
fn decide(
    store: &Store,
    node: &str,
    report: &SandboxReport,
) -> Result<(ObjectKey, String), Admission> {
    let name = report.pod();
    if !store.synced() {
        return Err(Admission::NotYet(
            "the agent has not read all of its configuration yet".into(),
        ));
    }
    if !is_enrolled_namespace(store, &report.namespace) {
        return Err(Admission::Outside(format!(
            "namespace {} is not in the ambient mesh",
            report.namespace
        )));
    }
    let key = ObjectKey::new(Kind::Pod, Some(&report.namespace), &report.name);
    let Some(Object::Pod(pod)) = store.get(&key) else {
        return Err(Admission::NotYet(format!(
            "pod {name} not seen by the agent yet"
        )));
    };
    // A pod deleted and created again under the same name, or bound to this node
    // after the agent's copy was taken: the agent's copy is behind, not wrong.
    let uid = match (report.uid.as_deref(), pod.uid.as_deref()) {
        (Some(started), Some(seen)) if started != seen => {
            return Err(Admission::NotYet(format!(
                "pod {name} seen with UID {seen}, the runtime starts UID {started}"
            )));
        }
        (_, Some(uid)) | (Some(uid), None) => uid.to_owned(),
        (None, None) => return Err(Admission::Failed(format!("pod {name} has no UID"))),
    };
    if pod.node_name.as_deref() != Some(node) {
        return Err(Admission::NotYet(format!(
            "pod {name} seen bound to node {}, not to this one ({node})",
            pod.node_name.as_deref().unwrap_or("(none)"),
        )));
    }
    if pod_outside_mesh(pod) {
        return Err(Admission::Outside(format!(
            "pod {name} opts out of the mesh or uses the host's network"
        )));
    }
    Ok((key, uid))
}

/// Keeps the datapath's enrolled pods equal to what configuration asks.
pub struct Enrollment {
    node: String,
    root_namespace: String,
    /// Enrolled pods: what was asked, and the netns cookie it got.
    enrolled: BTreeMap<ObjectKey, Enrolled>,
    /// Pods' namespaces and veths found on a Kubernetes node (no annotations).
    sandboxes: Sandboxes,
    networks: PodNetworks,
    /// Pods configuration puts in the mesh that are not captured, and why: what
    /// `warrenctl config dump` shows (the logs say it once).
    uncaptured: BTreeMap<ObjectKey, String>,
    /// Pods enrolled by an earlier agent (netns cookie → name): reconciled
    /// once after the first sync, then forgotten. Keyed by cookie because
    /// the name the kernel stores may be truncated.
    adopted: Option<BTreeMap<u64, String>>,
}

impl Enrollment {
    pub fn new(
        node: impl Into<String>,
        root_namespace: impl Into<String>,
        networks: PodNetworks,
        datapath: &Datapath,
    ) -> Result<Self, DatapathError> {
        // What the kernel holds from before a restart, by pod name.
        let adopted = datapath
            .pods()?
            .into_iter()
            .map(|p| (p.netns_cookie, p.pod))
            .collect();
        Ok(Self {
            node: node.into(),
            root_namespace: root_namespace.into(),
            enrolled: BTreeMap::new(),
            sandboxes: Sandboxes::new(Locator::default()),
            networks,
            uncaptured: BTreeMap::new(),
            adopted: Some(adopted),
        })
    }

    /// The network namespace of every enrolled pod.
    pub fn namespaces(&self) -> BTreeMap<ObjectKey, PodNetns> {
        self.enrolled
            .iter()
            .map(|(k, pod)| {
                let netns = PodNetns {
                    cookie: pod.cookie,
                    path: pod.request.netns.clone(),
                    addresses: pod.addresses.clone(),
                };
                (k.clone(), netns)
            })
            .collect()
    }

    /// Pods configuration puts in the mesh that are not captured, and why.
    pub fn uncaptured(&self) -> &BTreeMap<ObjectKey, String> {
        &self.uncaptured
    }

    /// Whether a change of this kind can change enrollment.
    pub fn cares_about(kind: Kind) -> bool {
        matches!(kind, Kind::Pod | Kind::Namespace | Kind::PeerAuthentication)
    }

    /// Enrolls, updates and unenrolls pods so the datapath matches the
    /// store. Errors about one pod are logged and do not stop the others.
    pub fn reconcile(&mut self, store: &Store, datapath: &mut Datapath) {
        let desired = self.desired(store);
        let stale: Vec<ObjectKey> = self
            .enrolled
            .keys()
            .filter(|k| !desired.contains_key(*k))
            .cloned()
            .collect();
        for key in stale {
            if let Some(pod) = self.enrolled.remove(&key) {
                let name = &pod.request.name;
                match datapath.unenroll(pod.cookie) {
                    Ok(()) => info!(pod = %name, "unenrolled"),
                    Err(err) => warn!(pod = %name, error = %format!("{err:#}"), "unenrolling"),
                }
            }
        }
        for (key, (want, addresses)) in desired {
            if let Some(have) = self.enrolled.get_mut(&key)
                && have.request == want
                // Same request; but a namespace recreated at the same path
                // (a restarted pod sandbox) has a new cookie.
                && netns_cookie(&want.netns).is_ok_and(|now| now == have.cookie)
            {
                have.addresses = addresses;
                continue;
            }
            match datapath.enroll(&want) {
                Ok(cookie) => {
                    let inbound = self
                        .enrolled
                        .get(&key)
                        .is_some_and(|old| old.cookie == cookie && old.inbound);
                    let now = Enrolled {
                        request: want,
                        cookie,
                        addresses,
                        inbound,
                    };
                    if let Some(old) = self.enrolled.insert(key, now)
                        && old.cookie != cookie
                        && let Err(err) = datapath.unenroll(old.cookie)
                    {
                        // The pod's previous namespace: nothing uses it now.
                        warn!(error = %format!("{err:#}"), "unenrolling a pod's previous namespace");
                    }
                }
                // Retried on the next reconcile (the agent runs one
                // periodically): the namespace or veth may not exist yet.
                Err(err) => {
                    let why = format!("{err:#}");
                    warn!(pod = %want.name, error = %why, "enrolling");
                    self.uncaptured.insert(key, why);
                }
            }
        }
        // After the first sync, pods a previous agent enrolled that
        // configuration no longer asks for are unenrolled.
        if store.synced()
            && let Some(adopted) = self.adopted.take()
        {
            let wanted: Vec<u64> = self.enrolled.values().map(|pod| pod.cookie).collect();
            for (cookie, name) in adopted {
                if !wanted.contains(&cookie) {
                    match datapath.unenroll(cookie) {
                        Ok(()) => info!(pod = %name, "unenrolled (left by an earlier agent)"),
                        Err(err) => warn!(pod = %name, error = %format!("{err:#}"), "unenrolling"),
                    }
                }
            }
        }
    }

    /// Turns the inbound capture on for the enrolled pods ztunnel now has a
    /// plaintext listener for (cheap when every pod has it on: the agent runs
    /// it every second). Until then their plaintext clients reach them
    /// directly, as before the capture (and with a ztunnel of a version
    /// without it); once on, it stays on, failing closed if ztunnel goes.
    pub fn capture_inbound(&mut self, datapath: &mut Datapath) {
        if self.enrolled.values().all(|pod| pod.inbound) {
            return;
        }
        let listening = match datapath.inbound_listeners() {
            Ok(listening) => listening,
            Err(err) => {
                warn!(error = %format!("{err:#}"), "reading ztunnel's inbound listeners");
                return;
            }
        };
        for pod in self.enrolled.values_mut().filter(|pod| !pod.inbound) {
            match datapath.capture_inbound(&pod.request, pod.cookie, &listening) {
                Ok(true) => {
                    info!(pod = %pod.request.name, "inbound capture on: plaintext clients go through ztunnel");
                    pod.inbound = true;
                }
                Ok(false) => {}
                Err(err) => {
                    warn!(pod = %pod.request.name, error = %format!("{err:#}"), "turning the inbound capture on");
                }
            }
        }
    }

    /// Decides for pods whose sandbox the container runtime is building (the CNI
    /// plugin's calls, before any of their containers runs), and captures those that
    /// belong in the mesh before answering: their first connections are captured too.
    /// One reconcile serves every call decided together.
    pub fn admit(
        &mut self,
        store: &Store,
        datapath: &mut Datapath,
        reports: &[&SandboxReport],
    ) -> Vec<Admission> {
        let decided: Vec<Result<ObjectKey, Admission>> = reports
            .iter()
            .map(|report| {
                let (key, uid) = decide(store, &self.node, report)?;
                self.sandboxes
                    .report(&uid, report)
                    .map_err(|error| Admission::Failed(format!("pod {}: {error}", report.pod())))?;
                Ok(key)
            })
            .collect();
        if decided.iter().any(Result::is_ok) {
            self.reconcile(store, datapath);
        }
        decided
            .into_iter()
            .map(|decision| match decision {
                Err(admission) => admission,
                Ok(key) => match self.enrolled.get(&key) {
                    Some(pod) => Admission::Enrolled {
                        mode: pod.request.mode,
                    },
                    None => Admission::Failed(
                        self.uncaptured
                            .get(&key)
                            .cloned()
                            .unwrap_or_else(|| format!("{key} was not enrolled")),
                    ),
                },
            })
            .collect()
    }

    /// The runtime tore a sandbox down (CNI DEL): what it reported for it is
    /// forgotten, unless a newer sandbox of the pod replaced it (runtimes repeat
    /// DELs). Unenrolling follows the Pod object, or the namespace's removal, which
    /// the next reconcile notices.
    pub fn forget(
        &mut self,
        store: &Store,
        namespace: &str,
        name: &str,
        uid: Option<&str>,
        container_id: &str,
    ) {
        let key = ObjectKey::new(Kind::Pod, Some(namespace), name);
        let seen = match store.get(&key) {
            Some(Object::Pod(pod)) => pod.uid.as_deref(),
            _ => None,
        };
        if let Some(uid) = uid.or(seen) {
            self.sandboxes.forget(uid, container_id);
        }
    }

    /// Pods of this node that configuration says to enroll, with the addresses the
    /// runtime reported for them.
    fn desired(&mut self, store: &Store) -> BTreeMap<ObjectKey, (PodEnrollment, Vec<IpAddr>)> {
        let mut out = BTreeMap::new();
        let mut uids = Vec::new();
        self.sandboxes.begin_round();
        self.uncaptured.clear();
        for object in store.of_kind(Kind::Pod) {
            let Object::Pod(pod) = object else { continue };
            if pod.node_name.as_deref() != Some(self.node.as_str()) {
                continue;
            }
            let namespace = &*pod.namespace;
            if !is_enrolled_namespace(store, namespace) || pod_outside_mesh(pod) {
                continue;
            }
            let name = format!("{namespace}/{}", pod.name);
            let sandboxes = &self.sandboxes;
            let (netns, host_veth, reported) = match lookup(self.networks, pod, |uid| {
                sandboxes.is_reported(uid)
            }) {
                Lookup::Annotated { netns, host_veth } => (
                    PathBuf::from(netns),
                    host_veth.map(str::to_owned),
                    Vec::new(),
                ),
                // Nothing to capture: not worth a line in the dump either.
                Lookup::NotStarted => continue,
                Lookup::Uid(uid) => {
                    uids.push(uid.to_owned());
                    match self.sandboxes.find(uid) {
                        Ok(sandbox) => (sandbox.netns, sandbox.host_veth, sandbox.addresses),
                        // Retried on the next reconcile (one runs on a timer too).
                        Err(error) => {
                            self.uncaptured.insert(object.key(), error.to_string());
                            if self.sandboxes.worth_a_warning(uid, &error) {
                                warn!(pod = %name, %error, "cannot find the pod's network namespace; it is not captured");
                            } else {
                                debug!(pod = %name, %error, "pod's network namespace not found (yet)");
                            }
                            continue;
                        }
                    }
                }
                Lookup::Nowhere => {
                    let why = format!(
                        "neither a {NETNS_ANNOTATION} annotation nor a UID: its network namespace cannot be found"
                    );
                    warn!(pod = %name, "{why}");
                    self.uncaptured.insert(object.key(), why);
                    continue;
                }
            };
            // The runtime's report, when there is one, is the freshest: kubelet
            // publishes the address only after the CNI plugins ran (and, for a
            // sandbox built again, still shows the old one for a while).
            let ip4 = if reported.is_empty() {
                match pod.pod_ip {
                    Some(IpAddr::V4(ip)) => Some(ip),
                    _ => None,
                }
            } else {
                reported.iter().find_map(|ip| match ip {
                    IpAddr::V4(ip) => Some(*ip),
                    IpAddr::V6(_) => None,
                })
            };
            let (mode, port_modes) = inbound_mode(store, &self.root_namespace, namespace, pod);
            let request = PodEnrollment {
                name,
                netns,
                ip4,
                host_veth,
                mode,
                port_modes,
                // Validation refused pods with a bad annotation.
                excluded_ports: pod.excluded_ports().unwrap_or_default(),
            };
            out.insert(object.key(), (request, reported));
        }
        self.sandboxes.retain(uids.iter().map(String::as_str));
        out
    }
}

/// The inbound mode of `pod` — workload policy, else namespace policy, else
/// mesh-wide policy, else PERMISSIVE — and the modes of ports whose matching
/// workload policy sets one (`portLevelMtls`; UNSET ports inherit).
pub fn inbound_mode(
    store: &Store,
    root_namespace: &str,
    namespace: &str,
    pod: &Pod,
) -> (Mode, Vec<(u16, Mode)>) {
    // A refused policy with no good version in force (say, an agent
    // restarted on a broken file) might have asked for STRICT: the guard
    // fails closed for its namespace (all of the mesh for the root
    // namespace) until the policy is fixed.
    if let Some(key) = store
        .refused_without_last_good(Kind::PeerAuthentication)
        .find(|k| {
            k.namespace
                .as_deref()
                .is_some_and(|ns| ns == namespace || ns == root_namespace)
        })
    {
        warn!(policy = %key, pod = %pod.name, "refused PeerAuthentication: STRICT until it is fixed");
        return (Mode::Strict, Vec::new());
    }
    let labels = &pod.labels;
    let policies: Vec<&PeerAuthentication> = store
        .of_kind(Kind::PeerAuthentication)
        .filter_map(|o| match o {
            Object::PeerAuthentication(pa) => Some(pa.as_ref()),
            _ => None,
        })
        .collect();
    // Oldest first: when two policies of the same level apply, Istio uses
    // the oldest (then the name, for objects created in the same second).
    let in_ns = |ns: &str| -> Vec<&PeerAuthentication> {
        let mut found: Vec<&PeerAuthentication> = policies
            .iter()
            .copied()
            .filter(|pa| pa.metadata.namespace.as_deref().unwrap_or("default") == ns)
            .collect();
        found.sort_by_key(|pa| {
            (
                pa.metadata.creation_timestamp.as_ref().map(|t| t.0),
                pa.metadata.name.clone(),
            )
        });
        found
    };
    // A selector in the root namespace selects nothing, not even its own
    // pods (as Istio's ambient mode reads it): only its policy without one,
    // the mesh's, counts.
    let workload = (namespace != root_namespace)
        .then(|| {
            in_ns(namespace).into_iter().find(|pa| {
                pa.spec.selector.as_ref().is_some_and(|sel| {
                    !sel.match_labels.is_empty() && labels.matches(&sel.match_labels)
                })
            })
        })
        .flatten();
    let unselected = |ns: &str| {
        in_ns(ns).into_iter().find(|pa| {
            pa.spec
                .selector
                .as_ref()
                .is_none_or(|s| s.match_labels.is_empty())
        })
    };
    let chain = [workload, unselected(namespace), unselected(root_namespace)];
    let mut mode = MtlsMode::Unset;
    for pa in chain.into_iter().flatten() {
        if let Some(m) = pa.spec.mtls.as_ref().map(|m| m.mode)
            && m != MtlsMode::Unset
        {
            mode = m;
            break;
        }
    }
    let guard_mode = |m: MtlsMode| {
        if m == MtlsMode::Strict {
            Mode::Strict
        } else {
            Mode::Permissive
        }
    };
    let pod_mode = guard_mode(mode);
    let ports = workload
        .into_iter()
        .flat_map(|pa| pa.spec.port_level_mtls.iter())
        .filter(|(_, m)| m.mode != MtlsMode::Unset)
        .filter_map(|(port, m)| u16::try_from(*port).ok().map(|p| (p, guard_mode(m.mode))))
        .collect();
    (pod_mode, ports)
}

/// Whether `namespace` is labelled into the mesh.
pub fn is_enrolled_namespace(store: &Store, namespace: &str) -> bool {
    let key = ObjectKey::new(Kind::Namespace, None, namespace);
    let Some(Object::Namespace(ns)) = store.get(&key) else {
        return false;
    };
    dataplane_mode_is(&ns.labels, AMBIENT)
}

/// Every namespace labelled into the mesh.
pub fn ambient_namespaces(store: &Store) -> std::collections::BTreeSet<String> {
    store
        .of_kind(Kind::Namespace)
        .filter_map(|o| match o {
            Object::Namespace(ns) if dataplane_mode_is(&ns.labels, AMBIENT) => {
                Some(ns.name.to_string())
            }
            _ => None,
        })
        .collect()
}

fn dataplane_mode_is(labels: &Labels, mode: &str) -> bool {
    DATAPLANE_LABELS.iter().any(|l| labels.get(l) == Some(mode))
}

/// Whether a pod stays out of the mesh in an ambient namespace: either label,
/// Warren's or Istio's, set to `none` opts it out; a pod on the host network is out
/// too, as in Istio (its namespace is the node's: there is nothing of its own to
/// capture or guard).
pub fn pod_outside_mesh(pod: &Pod) -> bool {
    pod.host_network || dataplane_mode_is(&pod.labels, NONE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::object::{parse_document, split_documents},
        source::SourceEvent,
    };

    fn store(yaml: &str) -> Store {
        let mut store = Store::default();
        for doc in split_documents(yaml).expect("test YAML") {
            let event = match parse_document(doc, "test") {
                Ok(o) => SourceEvent::Upsert(o),
                Err(error) => SourceEvent::Rejected {
                    key: Some(ObjectKey {
                        kind: Kind::PeerAuthentication,
                        namespace: Some("shop".into()),
                        name: "broken".into(),
                    }),
                    error,
                },
            };
            store.apply(event);
        }
        store.apply(SourceEvent::Synced);
        store
    }

    fn pod(app: &str) -> Pod {
        let mut pod = k8s_openapi::api::core::v1::Pod::default();
        pod.metadata.name = Some("p".into());
        pod.metadata.namespace = Some("shop".into());
        pod.metadata.labels = Some([("app".to_owned(), app.to_owned())].into());
        Pod::from(pod)
    }

    fn pa(
        ns: &str,
        name: &str,
        selector: Option<&str>,
        mode: &str,
        port: Option<(u16, &str)>,
    ) -> String {
        let selector = selector.map_or(String::new(), |app| {
            format!("  selector:\n    matchLabels:\n      app: {app}\n")
        });
        let port = port.map_or(String::new(), |(p, m)| {
            format!("  portLevelMtls:\n    {p}:\n      mode: {m}\n")
        });
        format!(
            "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n{selector}  mtls:\n    mode: {mode}\n{port}"
        )
    }

    fn mode(yaml: &str, app: &str) -> Mode {
        inbound_mode(&store(yaml), "istio-system", "shop", &pod(app)).0
    }

    #[test]
    fn precedence_workload_then_namespace_then_mesh() {
        assert_eq!(mode("", "web"), Mode::Permissive, "Istio's default");
        let mesh = pa("istio-system", "mesh", None, "STRICT", None);
        assert_eq!(mode(&mesh, "web"), Mode::Strict);
        let ns = pa("shop", "ns", None, "PERMISSIVE", None);
        assert_eq!(
            mode(&format!("{mesh}{ns}"), "web"),
            Mode::Permissive,
            "namespace over mesh"
        );
        let workload = pa("shop", "w", Some("web"), "STRICT", None);
        assert_eq!(
            mode(&format!("{mesh}{ns}{workload}"), "web"),
            Mode::Strict,
            "workload over namespace"
        );
        assert_eq!(
            mode(&format!("{mesh}{ns}{workload}"), "db"),
            Mode::Permissive,
            "selector does not match"
        );
        // UNSET inherits from the next level.
        let unset = pa("shop", "w", Some("web"), "UNSET", None);
        assert_eq!(mode(&format!("{mesh}{unset}"), "web"), Mode::Strict);
        // Two namespace policies: the oldest wins, whatever the names.
        let older = pa("shop", "zeta", None, "STRICT", None).replace(
            "  name: zeta\n",
            "  name: zeta\n  creationTimestamp: \"2026-01-01T00:00:00Z\"\n",
        );
        let newer = pa("shop", "alpha", None, "PERMISSIVE", None).replace(
            "  name: alpha\n",
            "  name: alpha\n  creationTimestamp: \"2026-06-01T00:00:00Z\"\n",
        );
        assert_eq!(
            mode(&format!("{newer}{older}"), "web"),
            Mode::Strict,
            "oldest policy wins"
        );
        // Another namespace's policy does not apply.
        let other = pa("billing", "ns", None, "STRICT", None);
        assert_eq!(mode(&other, "web"), Mode::Permissive);
        // A selector in the root namespace selects nothing, there either.
        let root_selector = pa("istio-system", "w", Some("web"), "STRICT", None);
        assert_eq!(mode(&root_selector, "web"), Mode::Permissive);
        let in_root = inbound_mode(
            &store(&root_selector),
            "istio-system",
            "istio-system",
            &pod("web"),
        );
        assert_eq!(in_root.0, Mode::Permissive, "not even its own pods");
        assert_eq!(
            inbound_mode(&store(&mesh), "istio-system", "istio-system", &pod("web")).0,
            Mode::Strict,
            "the mesh's policy applies there too"
        );
    }

    #[test]
    fn port_level_modes_and_refusals_fail_closed() {
        let port = pa(
            "shop",
            "w",
            Some("web"),
            "PERMISSIVE",
            Some((8080, "STRICT")),
        );
        let (pod_mode, ports) = inbound_mode(&store(&port), "istio-system", "shop", &pod("web"));
        assert_eq!(
            (pod_mode, ports),
            (Mode::Permissive, vec![(8080, Mode::Strict)])
        );
        let exception = pa(
            "shop",
            "w",
            Some("web"),
            "STRICT",
            Some((9090, "PERMISSIVE")),
        );
        let (pod_mode, ports) =
            inbound_mode(&store(&exception), "istio-system", "shop", &pod("web"));
        assert_eq!(
            (pod_mode, ports),
            (Mode::Strict, vec![(9090, Mode::Permissive)])
        );
        let unset = pa("shop", "w", Some("web"), "STRICT", Some((9090, "UNSET")));
        assert_eq!(
            inbound_mode(&store(&unset), "istio-system", "shop", &pod("web")).1,
            vec![]
        );
        let broken = "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: broken\n  namespace: shop\nspec:\n  mtls:\n    mode: SORTOF\n";
        let s = store(broken);
        assert_eq!(
            s.refused_without_last_good(Kind::PeerAuthentication)
                .count(),
            1
        );
        assert_eq!(
            inbound_mode(&s, "istio-system", "shop", &pod("web")).0,
            Mode::Strict
        );
    }

    /// A pod as kubelet shows it, with the testbed's annotations on top.
    fn annotated_pod(phase: &str, ip: Option<&str>) -> Pod {
        let yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: shop\n  uid: 6f1c2d3e-0a1b-4c5d-8e9f-001122334455\n  annotations: {{ warren.io/netns: /proc/1/ns/net, warren.io/host-veth: eth0 }}\nspec: {{ nodeName: n }}\nstatus: {{ phase: {phase}{} }}\n",
            ip.map_or(String::new(), |ip| format!(", podIP: {ip}"))
        );
        let object: k8s_openapi::api::core::v1::Pod = serde_yaml::from_str(&yaml).unwrap();
        Pod::from(object)
    }

    #[test]
    fn on_a_cluster_a_pods_annotations_never_name_its_namespace() {
        let running = annotated_pod("Running", Some("10.244.0.9"));
        // Local mode: the config folder is the operator's own.
        assert_eq!(
            lookup(PodNetworks::AnnotationsOrUid, &running, |_| false),
            Lookup::Annotated {
                netns: "/proc/1/ns/net",
                host_veth: Some("eth0")
            }
        );
        // Kubernetes: whoever creates a pod writes its annotations; the UID decides.
        let uid = "6f1c2d3e-0a1b-4c5d-8e9f-001122334455";
        assert_eq!(
            lookup(PodNetworks::UidOnly, &running, |_| false),
            Lookup::Uid(uid)
        );
        // Not looked for before it has an address, nor once it has finished.
        for pod in [
            annotated_pod("Pending", None),
            annotated_pod("Succeeded", Some("10.244.0.9")),
            annotated_pod("Failed", Some("10.244.0.9")),
        ] {
            assert_eq!(
                lookup(PodNetworks::UidOnly, &pod, |_| true),
                if pod.phase == Some(PodPhase::Pending) {
                    Lookup::Uid(uid)
                } else {
                    Lookup::NotStarted
                },
                "once the runtime reported the sandbox of {:?}",
                pod.phase
            );
            assert_eq!(
                lookup(PodNetworks::UidOnly, &pod, |_| false),
                Lookup::NotStarted
            );
        }
    }
}

#[cfg(test)]
mod admission_tests {
    use super::*;

    const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: { name: shop, labels: { istio.io/dataplane-mode: ambient } }
---
apiVersion: v1
kind: Namespace
metadata: { name: plain }
---
apiVersion: v1
kind: Pod
metadata: { name: web, namespace: shop, uid: 11111111-2222-4333-8444-555555555555 }
spec: { nodeName: n0, containers: [{ name: main }] }
status: { phase: Pending }
---
apiVersion: v1
kind: Pod
metadata: { name: batch, namespace: shop, uid: 21111111-2222-4333-8444-555555555555, labels: { istio.io/dataplane-mode: none } }
spec: { nodeName: n0, containers: [{ name: main }] }
---
apiVersion: v1
kind: Pod
metadata: { name: elsewhere, namespace: shop, uid: 31111111-2222-4333-8444-555555555555 }
spec: { nodeName: n1, containers: [{ name: main }] }
"#;

    fn store(synced: bool) -> Store {
        if synced {
            Store::from_yaml(MESH)
        } else {
            Store::default()
        }
    }

    fn report(namespace: &str, name: &str, uid: Option<&str>) -> SandboxReport {
        SandboxReport {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.map(str::to_owned),
            container_id: "c1".into(),
            netns: "/run/netns/cni-1".into(),
            addresses: vec!["10.244.0.9".parse().unwrap()],
        }
    }

    fn why(decision: Result<(ObjectKey, String), Admission>) -> Admission {
        decision.expect_err("a decision without capture")
    }

    #[test]
    fn the_runtime_is_answered_from_configuration_or_asked_to_wait() {
        let uid = "11111111-2222-4333-8444-555555555555";
        let synced = store(true);
        // A pod of the mesh, bound here: captured, by the UID the agent knows.
        let (key, found) = decide(&synced, "n0", &report("shop", "web", Some(uid))).unwrap();
        assert_eq!(
            (key.to_string().as_str(), found.as_str()),
            ("Pod shop/web", uid)
        );
        // Older runtimes pass no UID: the name decides.
        assert!(decide(&synced, "n0", &report("shop", "web", None)).is_ok());

        assert!(matches!(
            why(decide(
                &store(false),
                "n0",
                &report("shop", "web", Some(uid))
            )),
            Admission::NotYet(_)
        ));
        assert!(matches!(
            why(decide(&synced, "n0", &report("plain", "db", None))),
            Admission::Outside(w) if w.contains("plain")
        ));
        assert!(matches!(
            why(decide(&synced, "n0", &report("shop", "batch", None))),
            Admission::Outside(w) if w.contains("opts out")
        ));
        // The agent's copy is behind: a pod not seen yet, one created again under the
        // same name, one whose binding to this node has not arrived.
        for (name, uid) in [
            ("new", None),
            ("web", Some("99999999-2222-4333-8444-555555555555")),
            ("elsewhere", None),
        ] {
            assert!(
                matches!(
                    why(decide(&synced, "n0", &report("shop", name, uid))),
                    Admission::NotYet(_)
                ),
                "{name}"
            );
        }
    }
}
