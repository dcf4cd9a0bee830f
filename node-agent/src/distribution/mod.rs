//! Serving the per-node view to the proxies of this node over gRPC on a
//! Unix socket: each subscriber gets a snapshot, then deltas as the view
//! changes, and answers each with an ACK or a NACK.
//!
//! A subscriber is never sent more than it can take: its stream holds at
//! most one update in flight, and the next one is computed when it can be
//! sent, from what the subscriber was last sent to what the view holds then.
//! A slow proxy therefore gets fewer, larger deltas, never a backlog.

mod peer;
mod socket;

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};
use warren_api::config::{
    ClientMessage, ClientStatus, DumpRequest, DumpResponse, Hello, Resource, Role, StatusRequest,
    StatusResponse, Update,
    client_message::Message,
    config_distribution_server::{ConfigDistribution, ConfigDistributionServer},
    resource::Kind,
};

pub use peer::{Peers, PlacedStream, Placement};
pub use socket::{SocketError, bind};

use crate::view::{Audience, Form, LocalPod, Pending, Publisher};

/// How long a new stream may take to say who it is.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest message a proxy may send (ACKs and NACKs are small).
const MAX_REQUEST: usize = 1 << 20;
/// Largest update sent: a snapshot of a big mesh.
const MAX_UPDATE: usize = 512 << 20;

pub struct Distribution {
    publisher: Publisher,
    clients: Arc<Mutex<BTreeMap<u64, ClientStatus>>>,
    next_id: AtomicU64,
    /// Whom a hello is believed of; `None` believes every hello (a test's
    /// server, where the test is every peer).
    peers: Option<Peers>,
}

impl Distribution {
    pub fn new(publisher: Publisher) -> Self {
        Self {
            publisher,
            clients: Arc::default(),
            next_id: AtomicU64::new(1),
            peers: None,
        }
    }

    /// Believes a hello only of a process placed by `peers` ([`peer`]).
    pub fn checking(mut self, peers: Peers) -> Self {
        self.peers = Some(peers);
        self
    }

    /// Whether the peer placed `at` may subscribe as `role` for `namespace`.
    fn check_peer(&self, at: &Placement, role: Role, namespace: &str) -> Result<(), Status> {
        let Some(peers) = &self.peers else {
            return Ok(());
        };
        peers.check(at, role, namespace).map_err(|reason| {
            warn!(role = role.as_str_name(), namespace, pid = ?at.pid, %reason, "subscription refused");
            Status::permission_denied(format!(
                "a {} hello{} is not believed: {reason}",
                role.as_str_name(),
                if namespace.is_empty() {
                    String::new()
                } else {
                    format!(" for namespace {namespace}")
                }
            ))
        })
    }

    pub fn into_service(self) -> ConfigDistributionServer<Self> {
        ConfigDistributionServer::new(self)
            .max_decoding_message_size(MAX_REQUEST)
            .max_encoding_message_size(MAX_UPDATE)
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Checks a Hello; the error says what a client must send instead.
fn check_hello(hello: &Hello) -> Result<(Role, Audience), Status> {
    match Role::try_from(hello.role) {
        Ok(Role::Ztunnel) => Ok((Role::Ztunnel, Audience::Ztunnel)),
        Ok(Role::Waypoint) if hello.namespace.is_empty() => Err(Status::invalid_argument(
            "a WAYPOINT hello names the namespace it serves (hello.namespace)",
        )),
        Ok(Role::Waypoint) => Ok((
            Role::Waypoint,
            Audience::Waypoint {
                namespace: hello.namespace.clone(),
            },
        )),
        Ok(Role::Unspecified) | Err(_) => Err(Status::invalid_argument(format!(
            "hello.role {} is not a role (ZTUNNEL = 1, WAYPOINT = 2)",
            hello.role
        ))),
    }
}

/// Which resources a dump shows for the role it asks about.
fn dump_audience(request: &DumpRequest) -> Result<Audience, Status> {
    match Role::try_from(request.role) {
        Ok(Role::Unspecified) => Ok(Audience::All),
        Ok(Role::Ztunnel) => Ok(Audience::Ztunnel),
        Ok(Role::Waypoint) => Ok(Audience::Waypoint {
            namespace: request.namespace.clone(),
        }),
        Err(_) => Err(Status::invalid_argument(format!(
            "role {} is not a role",
            request.role
        ))),
    }
}

#[tonic::async_trait]
impl ConfigDistribution for Distribution {
    type SubscribeStream = ReceiverStream<Result<Update, Status>>;

    async fn subscribe(
        &self,
        request: Request<Streaming<ClientMessage>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        // Where the connection's peer was placed when it was accepted
        // (none on a server that does not place its peers).
        let placement = request
            .extensions()
            .get::<Placement>()
            .cloned()
            .unwrap_or_default();
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 10 s"))??;
        let Some(ClientMessage {
            message: Some(Message::Hello(hello)),
        }) = first
        else {
            return Err(Status::invalid_argument(
                "the first message of a subscription must be a hello",
            ));
        };
        let (role, audience) = check_hello(&hello)?;
        // Watched from before the check, so that no change of this node's
        // pods can fall between the check and the watch.
        let changes = self.peers.as_ref().map(Peers::changes);
        self.check_peer(&placement, role, &hello.namespace)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let client_id = if hello.client_id.is_empty() {
            format!("client-{id}")
        } else {
            hello.client_id.clone()
        };
        info!(client = %client_id, role = role.as_str_name(), "proxy subscribed");
        lock(&self.clients).insert(
            id,
            ClientStatus {
                client_id: client_id.clone(),
                role: role as i32,
                namespace: hello.namespace.clone(),
                connected_at: now(),
                ..Default::default()
            },
        );
        let (tx, rx) = mpsc::channel(1);
        let recheck = self
            .peers
            .clone()
            .zip(changes)
            .map(|(peers, changes)| Recheck {
                changes,
                peers,
                placement,
                role,
                namespace: hello.namespace.clone(),
            });
        let subscriber = Subscriber {
            id,
            client_id,
            audience,
            form: if hello.encoded_resources {
                Form::Encoded
            } else {
                Form::Decoded
            },
            publisher: self.publisher.clone(),
            version: self.publisher.watch(),
            clients: self.clients.clone(),
            tx,
            recheck,
        };
        tokio::spawn(subscriber.serve(inbound));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        Ok(Response::new(StatusResponse {
            version: self.publisher.lock().version(),
            clients: lock(&self.clients).values().cloned().collect(),
        }))
    }

    async fn dump(&self, request: Request<DumpRequest>) -> Result<Response<DumpResponse>, Status> {
        let audience = dump_audience(request.get_ref())?;
        let published = self.publisher.lock();
        Ok(Response::new(DumpResponse {
            version: published.version(),
            resources: published.resources(&audience).map(redacted).collect(),
            refusals: published.refusals().to_vec(),
            uncaptured: published.uncaptured().to_vec(),
        }))
    }
}

/// What a dump holds of `resource`: never a private key (a certificate's
/// or a credential's). A dump is for reading: anything that may reach the
/// socket may ask for one, while keys go only to the subscriptions of the
/// proxies they are for. A key is replaced by [`REDACTED`], so that a dump
/// still shows there is one.
fn redacted(mut resource: Resource) -> Resource {
    match &mut resource.kind {
        Some(Kind::Certificate(c)) if !c.private_key_pem.is_empty() => {
            c.private_key_pem = REDACTED.to_owned();
        }
        Some(Kind::Credential(c)) if !c.private_key.is_empty() => {
            c.private_key = REDACTED.as_bytes().to_vec();
        }
        _ => {}
    }
    resource
}

/// What a dump shows in place of a private key.
pub const REDACTED: &str = "(redacted)";

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Ends a subscription whose peer no longer passes its check, saying why;
/// the reason it ended. A proxy that does not read is not waited for long:
/// its stream ends either way.
async fn withdraw(
    tx: &mpsc::Sender<Result<Update, Status>>,
    client: &str,
    reason: String,
) -> String {
    warn!(%client, %reason, "subscription withdrawn");
    let status = Status::permission_denied(format!("the subscription is withdrawn: {reason}"));
    let _ = tokio::time::timeout(WITHDRAW_TIMEOUT, tx.send(Err(status))).await;
    format!("withdrawn: {reason}")
}

/// How long a withdrawal waits for room in a subscriber's stream.
const WITHDRAW_TIMEOUT: Duration = Duration::from_secs(1);

/// One subscription's task.
struct Subscriber {
    id: u64,
    client_id: String,
    audience: Audience,
    form: Form,
    publisher: Publisher,
    version: watch::Receiver<u64>,
    clients: Arc<Mutex<BTreeMap<u64, ClientStatus>>>,
    tx: mpsc::Sender<Result<Update, Status>>,
    /// How its peer is checked again as this node's pods change; `None`
    /// where peers are not checked.
    recheck: Option<Recheck>,
}

/// What a subscription was believed on, to check again: a waypoint's pod
/// may be deleted, or stop being a waypoint's, while its stream runs, and
/// it must stop receiving its namespace's keys then, not at its next
/// reconnect.
struct Recheck {
    peers: Peers,
    changes: watch::Receiver<Vec<LocalPod>>,
    placement: Placement,
    role: Role,
    namespace: String,
}

impl Recheck {
    fn check(&self) -> Result<(), String> {
        self.peers
            .check(&self.placement, self.role, &self.namespace)
    }

    /// Why the peer no longer passes its check, if this node's pods changed
    /// since it was last checked and it does not.
    fn refused_now(recheck: &mut Option<Recheck>) -> Option<String> {
        let recheck = recheck.as_mut()?;
        if !recheck.changes.has_changed().unwrap_or(false) {
            return None;
        }
        recheck.changes.mark_unchanged();
        recheck.check().err()
    }

    /// Resolves with the reason once the peer no longer passes its check;
    /// never, where nothing is checked.
    async fn refused(recheck: &mut Option<Recheck>) -> String {
        let Some(recheck) = recheck else {
            return std::future::pending().await;
        };
        loop {
            if recheck.changes.changed().await.is_err() {
                return std::future::pending().await;
            }
            if let Err(reason) = recheck.check() {
                return reason;
            }
        }
    }
}

impl Subscriber {
    async fn serve(mut self, mut inbound: Streaming<ClientMessage>) {
        let mut sent: Option<u64> = None;
        let reason = loop {
            // Nothing is served before the view's first build: a proxy
            // must not take an empty mesh for the real one.
            let ready = *self.version.borrow_and_update() > 0;
            let (refused, pending) = {
                let published = self.publisher.lock();
                // The view shares a pod's change before it publishes what
                // follows from it: checked under the lock the publishing
                // takes, a subscriber whose pod is gone gets nothing
                // computed after that.
                match Recheck::refused_now(&mut self.recheck) {
                    Some(reason) => (Some(reason), Pending::UpToDate),
                    None if ready => (None, published.pending_as(sent, &self.audience, self.form)),
                    None => (None, Pending::UpToDate),
                }
            };
            if let Some(reason) = refused {
                break withdraw(&self.tx, &self.client_id, reason).await;
            }
            if let Pending::Update(update) = pending {
                let resources = update.upserts.len() + update.encoded_upserts.len();
                let version = update.version;
                self.record(|s| {
                    s.sent_version = version;
                    if update.snapshot {
                        s.resources = resources as u64;
                    }
                });
                if self.tx.send(Ok(update)).await.is_err() {
                    break "stream closed".to_owned();
                }
                sent = Some(version);
            }
            tokio::select! {
                // A withdrawal before anything else that is ready.
                biased;
                reason = Recheck::refused(&mut self.recheck) => {
                    break withdraw(&self.tx, &self.client_id, reason).await;
                }
                changed = self.version.changed() => {
                    if changed.is_err() {
                        break "agent stopping".to_owned();
                    }
                }
                message = inbound.message() => match message {
                    Ok(Some(ClientMessage { message: Some(Message::Ack(ack)) })) => {
                        self.record(|s| s.acked_version = s.acked_version.max(ack.version));
                    }
                    Ok(Some(ClientMessage { message: Some(Message::Nack(nack)) })) => {
                        warn!(
                            client = %self.client_id,
                            version = nack.version,
                            reason = %nack.reason,
                            refused = ?nack.refused,
                            "proxy refused part of an update"
                        );
                        self.record(|s| {
                            s.nacked_version = nack.version;
                            s.nack_reason = nack.reason.clone();
                            s.nacks += 1;
                        });
                    }
                    Ok(Some(_)) => {
                        let _ = self
                            .tx
                            .send(Err(Status::invalid_argument(
                                "after the hello, a subscriber sends only ACKs and NACKs",
                            )))
                            .await;
                        break "protocol error".to_owned();
                    }
                    Ok(None) => break "closed by the proxy".to_owned(),
                    Err(status) => break format!("stream error: {}", status.message()),
                },
            }
        };
        info!(client = %self.client_id, %reason, "proxy unsubscribed");
        lock(&self.clients).remove(&self.id);
    }

    fn record(&self, change: impl FnOnce(&mut ClientStatus)) {
        if let Some(status) = lock(&self.clients).get_mut(&self.id) {
            change(status);
        }
    }
}

#[cfg(test)]
mod tests {
    use warren_api::config::{Certificate, Credential};

    use super::*;

    #[tokio::test]
    async fn a_dump_never_carries_a_private_key() {
        let publisher = Publisher::default();
        publisher.write(|p| {
            p.upsert(Resource {
                key: "certificate/spiffe://cluster.local/ns/demo/sa/app".into(),
                kind: Some(Kind::Certificate(Certificate {
                    identity: "spiffe://cluster.local/ns/demo/sa/app".into(),
                    chain_pem: vec!["CHAIN".into()],
                    private_key_pem: "SECRET KEY".into(),
                    ..Default::default()
                })),
            });
            p.upsert(Resource {
                key: warren_api::key::credential("demo", "partner"),
                kind: Some(Kind::Credential(Credential {
                    name: "partner".into(),
                    namespace: "demo".into(),
                    certificate_chain: b"CHAIN".to_vec(),
                    private_key: b"SECRET KEY".to_vec(),
                    ..Default::default()
                })),
            });
        });
        let distribution = Distribution::new(publisher);
        for (role, namespace) in [(Role::Unspecified, ""), (Role::Waypoint, "demo")] {
            let dump = distribution
                .dump(Request::new(DumpRequest {
                    role: role as i32,
                    namespace: namespace.into(),
                }))
                .await
                .expect("a dump")
                .into_inner();
            let keys: Vec<String> = dump
                .resources
                .iter()
                .filter_map(|r| match &r.kind {
                    Some(Kind::Certificate(c)) => Some(c.private_key_pem.clone()),
                    Some(Kind::Credential(c)) => {
                        Some(String::from_utf8_lossy(&c.private_key).into_owned())
                    }
                    _ => None,
                })
                .collect();
            assert_eq!(keys, [REDACTED, REDACTED], "{role:?}");
        }
    }
}
