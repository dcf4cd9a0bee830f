//! The config stream end to end, in one process: the view served on a Unix
//! socket, and the subscription client proxies run. A proxy gets a
//! snapshot, then deltas; its ACKs and NACKs show in the status; and when
//! the agent restarts it resubscribes and starts over from a snapshot.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::{
    StreamExt as _,
    wrappers::{ReceiverStream, UnixListenerStream},
};
use warren_api::{
    config::{
        ClientMessage, Hello, Resource, Role, StatusRequest, Update, client_message::Message,
        config_distribution_client::ConfigDistributionClient, resource::Kind as RKind,
    },
    subscribe::{Handler, Refused, Subscriber},
};
use warren_node_agent::{
    distribution::{self, Distribution},
    enrollment::PodNetworks,
    model::{
        ObjectKey,
        object::{parse_document, split_documents},
    },
    source::SourceEvent,
    store::{Applied, Store},
    view::{Mesh, Publisher, View},
};

const OBJECTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: { name: demo, labels: { warren.io/dataplane-mode: ambient } }
---
apiVersion: v1
kind: Pod
metadata: { name: a, namespace: demo }
spec: { nodeName: n1, serviceAccountName: a, containers: [{ name: main }] }
status: { hostIP: 172.30.0.1, podIP: 10.244.0.5 }
---
apiVersion: v1
kind: Pod
metadata: { name: b, namespace: demo }
spec: { nodeName: n1, serviceAccountName: b, containers: [{ name: main }] }
status: { hostIP: 172.30.0.1, podIP: 10.244.0.6 }
"#;

struct Agent {
    store: Store,
    view: View,
    /// The server runs on its own runtime, so stopping the agent ends every
    /// connection and task it had, as the death of its process would.
    server: Option<tokio::runtime::Runtime>,
}

impl Agent {
    async fn start(socket: &Path, yaml: &str) -> Agent {
        Self::start_with(socket, yaml, false).await
    }

    /// An agent that believes a hello only of a process it can place, as
    /// the node agent does.
    async fn start_checking(socket: &Path, yaml: &str) -> Agent {
        Self::start_with(socket, yaml, true).await
    }

    async fn start_with(socket: &Path, yaml: &str, checking: bool) -> Agent {
        let mut store = Store::default();
        apply(&mut store, yaml);
        store.apply(SourceEvent::Synced);
        let publisher = Publisher::default();
        let mut view = View::new(
            Mesh {
                node: "n1".into(),
                node_addresses: vec!["172.30.0.1".parse().unwrap()],
                root_namespace: "istio-system".into(),
                mesh_config: "istio".into(),
                trust_domain: "cluster.local".into(),
                trust_domain_aliases: Vec::new(),
                cluster_domain: "cluster.local".into(),
                outbound_policy: Default::default(),
                captures_ipv6: false,
                inbound_listeners: None,
            },
            publisher.clone(),
        );
        view.rebuild(&store);
        let server = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let distribution = Distribution::new(publisher);
        let service = if checking {
            distribution.checking(distribution::Peers::new(
                PodNetworks::AnnotationsOrUid,
                None,
                view.node_pods(),
            ))
        } else {
            distribution
        }
        .into_service();
        let (bound_tx, bound) = tokio::sync::oneshot::channel();
        let socket = socket.to_owned();
        server.spawn(async move {
            let listener = distribution::bind(&socket).await.unwrap();
            let _ = bound_tx.send(());
            let incoming = UnixListenerStream::new(listener);
            let server = tonic::transport::Server::builder().add_service(service);
            if checking {
                // Each connection placed as it is accepted, as the agent does.
                server
                    .serve_with_incoming(
                        incoming.map(|accepted| accepted.map(distribution::PlacedStream::new)),
                    )
                    .await
            } else {
                server.serve_with_incoming(incoming).await
            }
            .unwrap();
        });
        bound.await.unwrap();
        Agent {
            store,
            view,
            server: Some(server),
        }
    }

    fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            // Wait until the runtime's threads are gone, and with them the
            // listener: a restarted agent must find the socket dead, as it
            // would after the process exited. Blocking shutdown is not
            // allowed on an async thread, hence the helper thread.
            std::thread::spawn(move || server.shutdown_timeout(Duration::from_secs(5)))
                .join()
                .expect("stopping the test agent's runtime");
        }
    }

    fn change(&mut self, yaml: &str) {
        let keys = apply(&mut self.store, yaml);
        self.view.changed(&self.store, &keys);
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

fn apply(store: &mut Store, yaml: &str) -> Vec<ObjectKey> {
    let mut keys = Vec::new();
    for doc in split_documents(yaml).unwrap() {
        let object = parse_document(doc, "test").unwrap();
        if let Applied::Changed(key) = store.apply(SourceEvent::Upsert(object)) {
            keys.push(key);
        }
    }
    keys
}

/// One update as the proxy saw it: version, snapshot or not, keys.
type Seen = (u64, bool, Vec<String>);

/// What a proxy would hold, and what it saw.
#[derive(Clone, Default)]
struct Recorder {
    state: Arc<Mutex<BTreeMap<String, Resource>>>,
    updates: Arc<Mutex<Vec<Seen>>>,
    /// Keys to refuse, as a proxy would a resource it cannot use.
    refuse: Arc<Mutex<Vec<String>>>,
}

impl Handler for Recorder {
    fn apply(&mut self, update: Update) -> Vec<Refused> {
        let refuse = self.refuse.lock().unwrap().clone();
        let mut state = self.state.lock().unwrap();
        if update.snapshot {
            state.clear();
        }
        let mut keys = Vec::new();
        let mut refused = Vec::new();
        for r in update.upserts {
            keys.push(r.key.clone());
            if refuse.contains(&r.key) {
                refused.push(Refused {
                    key: r.key.clone(),
                    reason: "test refuses it".into(),
                });
                continue;
            }
            state.insert(r.key.clone(), r);
        }
        for k in update.removals {
            keys.push(k.clone());
            state.remove(&k);
        }
        self.updates
            .lock()
            .unwrap()
            .push((update.version, update.snapshot, keys));
        refused
    }
}

impl Recorder {
    async fn wait_for(&self, what: &str, done: impl Fn(&Recorder) -> bool) {
        for _ in 0..500 {
            if done(self) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "timed out waiting for {what}; updates: {:?}",
            self.updates.lock().unwrap()
        );
    }

    fn service_account(&self, key: &str) -> Option<String> {
        match self
            .state
            .lock()
            .unwrap()
            .get(key)
            .and_then(|r| r.kind.clone())
        {
            Some(RKind::Workload(w)) => Some(w.service_account),
            _ => None,
        }
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("warren-dist-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn status(socket: &Path) -> warren_api::config::StatusResponse {
    ConfigDistributionClient::new(warren_api::socket::channel(socket))
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn snapshot_then_deltas_acks_nacks_and_resync_after_a_restart() {
    let dir = scratch("resync");
    let socket = dir.join("agent.sock");
    let mut agent = Agent::start(&socket, OBJECTS).await;

    let recorder = Recorder::default();
    let subscriber = Subscriber::new(
        socket.clone(),
        Hello {
            role: Role::Ztunnel as i32,
            client_id: "test-ztunnel".into(),
            ..Default::default()
        },
    )
    .with_backoff(Duration::from_millis(20), Duration::from_millis(200));
    let mut sub_status = subscriber.status();
    let client = tokio::spawn(subscriber.run(recorder.clone()));

    // Snapshot: both workloads and the mesh settings.
    recorder
        .wait_for("the snapshot", |r| {
            r.service_account("workload/demo/b").is_some()
        })
        .await;
    let first = recorder.updates.lock().unwrap()[0].clone();
    assert!(first.1, "the first update is a snapshot");
    assert!(first.2.contains(&"mesh".to_owned()));
    sub_status
        .wait_for(|s| s.synced)
        .await
        .expect("subscriber status");

    // A delta carries just the changed workload.
    agent.change(
        "apiVersion: v1\nkind: Pod\nmetadata: { name: a, namespace: demo }\n\
         spec: { nodeName: n1, serviceAccountName: a2, containers: [{ name: main }] }\n\
         status: { hostIP: 172.30.0.1, podIP: 10.244.0.5 }\n",
    );
    recorder
        .wait_for("the delta", |r| {
            r.service_account("workload/demo/a").as_deref() == Some("a2")
        })
        .await;
    let last = recorder.updates.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        (last.1, last.2),
        (false, vec!["workload/demo/a".to_owned()])
    );

    // Acknowledged: the status shows the client in sync.
    let version = agent.view.publisher().lock().version();
    let mut synced = false;
    for _ in 0..200 {
        let s = status(&socket).await;
        if let Some(c) = s.clients.iter().find(|c| c.client_id == "test-ztunnel")
            && c.acked_version == version
        {
            synced = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        synced,
        "the ACK of version {version} never showed in the status"
    );

    // A refused resource is NACKed with its reason; the proxy keeps its copy.
    recorder
        .refuse
        .lock()
        .unwrap()
        .push("workload/demo/b".into());
    agent.change(
        "apiVersion: v1\nkind: Pod\nmetadata: { name: b, namespace: demo }\n\
         spec: { nodeName: n1, serviceAccountName: b2, containers: [{ name: main }] }\n\
         status: { hostIP: 172.30.0.1, podIP: 10.244.0.6 }\n",
    );
    let mut nacked = None;
    for _ in 0..200 {
        let s = status(&socket).await;
        if let Some(c) = s.clients.iter().find(|c| c.nacks > 0) {
            nacked = Some(c.clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let nacked = nacked.expect("the NACK never showed in the status");
    assert!(
        nacked
            .nack_reason
            .contains("workload/demo/b: test refuses it"),
        "{}",
        nacked.nack_reason
    );
    assert_eq!(
        recorder.service_account("workload/demo/b").as_deref(),
        Some("b")
    );
    recorder.refuse.lock().unwrap().clear();

    // The agent restarts with pod b gone: the proxy resubscribes and a
    // snapshot replaces what it held.
    agent.stop();
    let updates_before = recorder.updates.lock().unwrap().len();
    let _agent = Agent::start(&socket, &OBJECTS[..OBJECTS.rfind("---").unwrap()]).await;
    recorder
        .wait_for("the resync", |r| {
            r.updates.lock().unwrap().len() > updates_before
                && r.service_account("workload/demo/b").is_none()
        })
        .await;
    let resync = recorder.updates.lock().unwrap()[updates_before].clone();
    assert!(resync.1, "after a restart the proxy gets a snapshot");
    assert_eq!(
        recorder.service_account("workload/demo/a").as_deref(),
        Some("a")
    );
    client.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_subscription_must_start_with_a_valid_hello() {
    let dir = scratch("hello");
    let socket = dir.join("agent.sock");
    let _agent = Agent::start(&socket, OBJECTS).await;
    let open = |first: Message| {
        let socket = socket.clone();
        async move {
            let (tx, rx) = mpsc::channel(1);
            tx.send(ClientMessage {
                message: Some(first),
            })
            .await
            .unwrap();
            let result = ConfigDistributionClient::new(warren_api::socket::channel(&socket))
                .subscribe(ReceiverStream::new(rx))
                .await;
            drop(tx);
            match result {
                Ok(_) => panic!("the agent should refuse this subscription"),
                Err(status) => status,
            }
        }
    };
    let err = open(Message::Ack(Default::default())).await;
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("must be a hello"),
        "{}",
        err.message()
    );
    let err = open(Message::Hello(Hello::default())).await;
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("not a role"), "{}", err.message());
    let err = open(Message::Hello(Hello {
        role: Role::Waypoint as i32,
        ..Default::default()
    }))
    .await;
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("names the namespace"),
        "{}",
        err.message()
    );

    // A live agent's socket is never taken over.
    let err = distribution::bind(&socket).await.unwrap_err();
    assert!(err.to_string().contains("another node agent"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client that did not ask for encoded resources (one from before them)
/// gets them decoded; one that did gets the same resources encoded.
#[tokio::test]
async fn resources_come_decoded_unless_the_client_reads_them_encoded() {
    let dir = scratch("forms");
    let socket = dir.join("agent.sock");
    let _agent = Agent::start(&socket, OBJECTS).await;
    let first_update = |encoded_resources: bool| {
        let socket = socket.clone();
        async move {
            let (tx, rx) = mpsc::channel(1);
            tx.send(ClientMessage {
                message: Some(Message::Hello(Hello {
                    role: Role::Ztunnel as i32,
                    client_id: format!("encoded-{encoded_resources}"),
                    encoded_resources,
                    ..Default::default()
                })),
            })
            .await
            .unwrap();
            let mut updates = ConfigDistributionClient::new(warren_api::socket::channel(&socket))
                .subscribe(ReceiverStream::new(rx))
                .await
                .unwrap()
                .into_inner();
            let update = tokio::time::timeout(Duration::from_secs(10), updates.message())
                .await
                .expect("a snapshot in time")
                .unwrap()
                .expect("a snapshot");
            drop(tx);
            update
        }
    };
    let decoded = first_update(false).await;
    assert!(decoded.snapshot);
    assert!(decoded.encoded_upserts.is_empty());
    assert!(!decoded.upserts.is_empty(), "the snapshot has resources");

    let encoded = first_update(true).await;
    assert!(encoded.snapshot);
    assert!(encoded.upserts.is_empty());
    let from_bytes: Vec<Resource> = encoded
        .encoded_upserts
        .iter()
        .map(|bytes| Resource::decode(bytes.clone()).expect("each encoded resource decodes"))
        .collect();
    assert_eq!(from_bytes, decoded.upserts);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A waypoint's namespace, its Gateway, and a pod of it on this node whose
/// network namespace (the testbed's annotation) is this process's: the test
/// is that waypoint.
const WAYPOINT: &str = r#"
apiVersion: v1
kind: Namespace
metadata: { name: demo, labels: { warren.io/dataplane-mode: ambient } }
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: { name: waypoint, namespace: demo }
spec:
  gatewayClassName: warren-waypoint
  listeners: [{ name: mesh, port: 15008, protocol: HBONE }]
---
apiVersion: v1
kind: Pod
metadata:
  name: waypoint-0
  namespace: demo
  labels: { gateway.networking.k8s.io/gateway-name: waypoint, warren.io/dataplane-mode: none }
  annotations: { warren.io/netns: /proc/self/ns/net }
spec: { nodeName: n1, serviceAccountName: waypoint, containers: [{ name: main }] }
status: { hostIP: 172.30.0.1, podIP: 10.244.0.9 }
"#;

/// Opens a subscription as `role` for `namespace`: its first update, or
/// the agent's refusal. The hello's sender is kept open with the stream.
async fn open_as(
    socket: &Path,
    role: Role,
    namespace: &str,
) -> Result<
    (
        tonic::Streaming<Update>,
        mpsc::Sender<ClientMessage>,
        Update,
    ),
    tonic::Status,
> {
    let (tx, rx) = mpsc::channel(1);
    tx.send(ClientMessage {
        message: Some(Message::Hello(Hello {
            role: role as i32,
            namespace: namespace.into(),
            client_id: format!("{}-{namespace}", role.as_str_name()),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut updates = ConfigDistributionClient::new(warren_api::socket::channel(socket))
        .subscribe(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), updates.message())
        .await
        .expect("a first update in time")?
        .expect("a first update");
    Ok((updates, tx, first))
}

/// A waypoint's subscription lasts only as long as its process runs in a
/// waypoint pod of its namespace on this node: when the pod stops being
/// one, its stream is ended (it would otherwise keep receiving the
/// namespace's keys until it reconnected), and a new hello is refused.
/// The ztunnel's subscription is not touched.
#[tokio::test]
async fn a_waypoint_subscription_ends_when_its_pod_stops_being_a_waypoints() {
    let dir = scratch("recheck");
    let socket = dir.join("agent.sock");
    let mut agent = Agent::start_checking(&socket, WAYPOINT).await;

    let (mut waypoint, _waypoint_tx, first) = open_as(&socket, Role::Waypoint, "demo")
        .await
        .expect("this process is demo's waypoint pod");
    assert!(first.snapshot);
    let refused = open_as(&socket, Role::Waypoint, "shop")
        .await
        .expect_err("not shop's waypoint");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    // (A test run inside a pod is no ztunnel's place: that part is left out.)
    let in_a_pod = distribution::Placement::read(std::process::id() as i32, Path::new("/proc"))
        .pod_uid
        .is_some();
    let ztunnel = if in_a_pod {
        None
    } else {
        Some(
            open_as(&socket, Role::Ztunnel, "")
                .await
                .expect("this process is on the agent's network, in no pod"),
        )
    };

    // Pods of the node change without touching the waypoint's: nothing
    // ends (each change's delta arrives, and the stream goes on after it).
    for (name, ip) in [("app", "10.244.0.5"), ("other", "10.244.0.6")] {
        agent.change(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{ name: {name}, namespace: demo }}\nspec: {{ nodeName: n1, serviceAccountName: app, containers: [{{ name: main }}] }}\nstatus: {{ hostIP: 172.30.0.1, podIP: {ip} }}\n"
        ));
        let update = tokio::time::timeout(Duration::from_secs(10), waypoint.message())
            .await
            .expect("a delta in time")
            .expect("the stream goes on");
        assert!(update.is_some_and(|u| !u.snapshot));
    }

    // The pod loses its Gateway's label: no longer a waypoint's.
    agent.change(&WAYPOINT.replace("gateway.networking.k8s.io/gateway-name: waypoint, ", ""));
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(10), waypoint.message())
            .await
            .expect("the stream ends in time")
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without saying why"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), tonic::Code::PermissionDenied);
    assert!(
        ended.message().contains("withdrawn")
            && ended
                .message()
                .contains("not in a waypoint pod of namespace demo"),
        "{}",
        ended.message()
    );
    let refused = open_as(&socket, Role::Waypoint, "demo")
        .await
        .expect_err("a new hello is refused too");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    // The status stops listing it (its task ends just after saying why).
    let mut listed = Vec::new();
    for _ in 0..200 {
        listed = status(&socket).await.clients;
        if listed.iter().all(|c| c.role != Role::Waypoint as i32) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        listed.iter().all(|c| c.role != Role::Waypoint as i32),
        "{listed:?}"
    );

    // The ztunnel's stream goes on, with the deltas.
    if let Some((mut ztunnel, _ztunnel_tx, _)) = ztunnel {
        let update = tokio::time::timeout(Duration::from_secs(10), ztunnel.message())
            .await
            .expect("a delta in time");
        assert!(matches!(update, Ok(Some(_))), "{update:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
