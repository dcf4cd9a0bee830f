//! The per-node view as the proxies see it: every resource with the version
//! at which it last changed, so a subscriber at version `v` is brought up to
//! date with exactly the keys changed after `v` — however many changes
//! happened in between, each key is sent once, in its latest state.
//!
//! The view writes; the distribution server reads. A delta is a scan of the
//! resources for versions after the subscriber's (a few milliseconds at
//! 60 000 resources, far less than a change log's memory would cost), and
//! removals are remembered as tombstones until compacted; a subscriber
//! older than the oldest tombstone kept gets a snapshot instead.

use std::{
    borrow::Borrow,
    cmp::Ordering,
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use bytes::Bytes;
use prost::Message as _;
use tokio::sync::watch;
use tracing::error;
use warren_api::config::{Refusal, Resource, Update};

use crate::memory::DenseSet;

/// Tombstones kept before the oldest half is dropped.
const MAX_TOMBSTONES: usize = 16_384;

/// The view's resources, kept encoded: a decoded workload is some twenty
/// allocations (a kilobyte and more), its encoding a couple of hundred
/// bytes in one. Subscribers that read encoded resources get copies of
/// these bytes; others get decoded copies ([`Form`]).
#[derive(Default)]
pub struct Published {
    version: u64,
    /// Every resource, by key.
    resources: DenseSet<Entry>,
    /// Key → version of its removal.
    tombstones: HashMap<Box<str>, u64>,
    /// Deltas can be computed from any version at or after this one.
    horizon: u64,
    /// Objects the agent refused, for `warrenctl config dump`.
    refusals: Vec<Refusal>,
    /// This node's pods that should be captured and are not, and why.
    uncaptured: Vec<Refusal>,
}

/// How a subscriber takes resources: the client's choice in its hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// In `Update.upserts` (clients from before encoded resources).
    Decoded,
    /// In `Update.encoded_upserts`, as kept: nothing decoded, so a snapshot
    /// costs its encoded size in memory, not the decoded mesh.
    Encoded,
}

/// One resource: the version of its last change, and the resource encoded.
/// Ordered and found by its key, read back from the encoding: the key is
/// the message's first field, so it leads the bytes.
struct Entry {
    version: u64,
    encoded: Box<[u8]>,
}

/// The tag of `Resource.key` (field 1, length-delimited).
const KEY_TAG: u8 = 0x0a;

impl Entry {
    fn new(version: u64, resource: &Resource) -> Self {
        Self {
            version,
            encoded: resource.encode_to_vec().into_boxed_slice(),
        }
    }

    fn key(&self) -> &str {
        // Written by prost from a String: the field comes first and is
        // UTF-8. Anything else would be a bug here, read as an empty key.
        let Some((&KEY_TAG, mut rest)) = self.encoded.split_first() else {
            return "";
        };
        let Ok(len) = prost::encoding::decode_varint(&mut rest) else {
            return "";
        };
        let key = usize::try_from(len)
            .ok()
            .and_then(|len| rest.get(..len))
            .unwrap_or_default();
        std::str::from_utf8(key).unwrap_or_default()
    }

    /// The resource, decoded. Only [`Entry::new`] wrote these bytes: a
    /// failure would be a bug here, logged, and the resource left out.
    fn decode(&self) -> Option<Resource> {
        match Resource::decode(&*self.encoded) {
            Ok(resource) => Some(resource),
            Err(err) => {
                error!(key = self.key(), error = %err, "a published resource does not decode; left out");
                None
            }
        }
    }
}

/// Adds `entries` to `update`'s upserts, in `form`.
fn fill<'a>(update: &mut Update, entries: impl Iterator<Item = &'a Entry>, form: Form) {
    match form {
        Form::Decoded => update.upserts.extend(entries.filter_map(Entry::decode)),
        Form::Encoded => update
            .encoded_upserts
            .extend(entries.map(|e| Bytes::copy_from_slice(&e.encoded))),
    }
}

impl Borrow<str> for Entry {
    fn borrow(&self) -> &str {
        self.key()
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(other.key())
    }
}

/// What a subscriber needs next.
pub enum Pending {
    UpToDate,
    Update(Update),
}

impl Published {
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn len(&self) -> usize {
        self.resources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }

    pub fn get(&self, key: &str) -> Option<Resource> {
        self.resources.get(key).and_then(Entry::decode)
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.resources.iter().map(Entry::key)
    }

    /// Every resource `audience` receives, decoded.
    pub fn resources<'a>(&'a self, audience: &'a Audience) -> impl Iterator<Item = Resource> + 'a {
        self.resources
            .iter()
            .filter(|e| audience.receives(e.key()))
            .filter_map(Entry::decode)
    }

    pub fn refusals(&self) -> &[Refusal] {
        &self.refusals
    }

    pub fn uncaptured(&self) -> &[Refusal] {
        &self.uncaptured
    }

    /// Sets `key` to `resource`; true if that changed anything.
    pub fn upsert(&mut self, resource: Resource) -> bool {
        let entry = Entry::new(self.version + 1, &resource);
        if let Some(old) = self.resources.get(resource.key.as_str()) {
            if old.encoded == entry.encoded {
                return false;
            }
        } else {
            self.tombstones.remove(resource.key.as_str());
        }
        self.version += 1;
        self.resources.replace(entry);
        true
    }

    /// Removes `key`; true if it was there.
    pub fn remove(&mut self, key: &str) -> bool {
        if self.resources.take(key).is_none() {
            return false;
        }
        self.version += 1;
        self.tombstones.insert(key.into(), self.version);
        if self.tombstones.len() > MAX_TOMBSTONES {
            self.compact();
        }
        true
    }

    pub fn set_refusals(&mut self, refusals: Vec<Refusal>) {
        self.refusals = refusals;
    }

    pub fn set_uncaptured(&mut self, uncaptured: Vec<Refusal>) {
        self.uncaptured = uncaptured;
    }

    /// Forgets the oldest half of the tombstones; subscribers from before
    /// the newest one forgotten get a snapshot.
    fn compact(&mut self) {
        let mut versions: Vec<u64> = self.tombstones.values().copied().collect();
        versions.sort_unstable();
        let cut = versions[versions.len() / 2];
        self.tombstones.retain(|_, v| *v > cut);
        self.horizon = cut;
    }

    /// Everything `audience` receives, as a snapshot.
    pub fn snapshot(&self, audience: &Audience, form: Form) -> Update {
        let mut update = Update {
            version: self.version,
            snapshot: true,
            ..Update::default()
        };
        let entries = self.resources.iter().filter(|e| audience.receives(e.key()));
        fill(&mut update, entries, form);
        update
    }

    /// What a subscriber of `audience` that has `sent` (None: nothing yet)
    /// needs next. Its version moves with every change, received or not, so
    /// its ACKs compare with the agent's version.
    pub fn pending(&self, sent: Option<u64>, audience: &Audience) -> Pending {
        self.pending_as(sent, audience, Form::Decoded)
    }

    /// [`Published::pending`], with the resources in `form`.
    pub fn pending_as(&self, sent: Option<u64>, audience: &Audience, form: Form) -> Pending {
        let Some(sent) = sent.filter(|s| *s >= self.horizon) else {
            return Pending::Update(self.snapshot(audience, form));
        };
        if sent >= self.version {
            return Pending::UpToDate;
        }
        let mut update = Update {
            version: self.version,
            snapshot: false,
            ..Update::default()
        };
        let changed = self
            .resources
            .iter()
            .filter(|e| e.version > sent && audience.receives(e.key()));
        fill(&mut update, changed, form);
        update.removals.extend(
            self.tombstones
                .iter()
                .filter(|(k, v)| **v > sent && audience.receives(k))
                .map(|(k, _)| k.to_string()),
        );
        // Tombstones are hashed: a stable order keeps equal deltas equal.
        update.removals.sort_unstable();
        Pending::Update(update)
    }
}

/// Who a subscription serves, and so which resources it receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Audience {
    /// A node's ztunnel: everything but L7 routing.
    Ztunnel,
    /// The waypoint of a namespace: everything but other namespaces' keys
    /// (of identities, and of Secrets).
    Waypoint { namespace: String },
    /// Every resource (dumps).
    All,
}

impl Audience {
    pub fn receives(&self, key: &str) -> bool {
        match self {
            Audience::All => true,
            Audience::Ztunnel => !warren_api::key::is_l7(key),
            Audience::Waypoint { namespace } => {
                if let Some(identity) = key.strip_prefix("certificate/") {
                    // A waypoint holds only keys of its own namespace's identities.
                    return identity
                        .parse::<warren_api::Identity>()
                        .is_ok_and(|id| id.namespace == *namespace);
                }
                if key.starts_with(warren_api::key::CREDENTIAL_PREFIX) {
                    // Nor other namespaces' Secrets.
                    return warren_api::key::credential_namespace(key) == Some(namespace);
                }
                // Every attached policy: one attached to Services binds
                // whichever waypoint serves them, which may be another
                // namespace's; the waypoint itself tells which Gateway it is.
                true
            }
        }
    }
}

/// The view's handle on what it publishes: writes under the lock, then one
/// wake-up for every subscriber.
#[derive(Clone)]
pub struct Publisher {
    published: Arc<Mutex<Published>>,
    version: Arc<watch::Sender<u64>>,
}

impl Default for Publisher {
    fn default() -> Self {
        Self {
            published: Arc::default(),
            version: Arc::new(watch::Sender::new(0)),
        }
    }
}

impl Publisher {
    /// Read access. Held briefly: the view waits for it.
    pub fn lock(&self) -> MutexGuard<'_, Published> {
        // A panic while holding the lock leaves valid data behind (every
        // write is a single insert or remove), so poisoning is ignored.
        self.published.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `change` and wakes subscribers if the version moved.
    pub fn write<T>(&self, change: impl FnOnce(&mut Published) -> T) -> T {
        let (out, version) = {
            let mut published = self.lock();
            let out = change(&mut published);
            (out, published.version())
        };
        self.version.send_if_modified(|v| {
            let moved = *v != version;
            *v = version;
            moved
        });
        out
    }

    /// Follows the version.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_api::config::{MeshSettings, resource::Kind};

    fn resource(key: &str, node: &str) -> Resource {
        Resource {
            key: key.into(),
            kind: Some(Kind::Mesh(MeshSettings {
                node: node.into(),
                ..Default::default()
            })),
        }
    }

    fn keys(update: &Update) -> (Vec<&str>, Vec<&str>) {
        (
            update.upserts.iter().map(|r| r.key.as_str()).collect(),
            update.removals.iter().map(String::as_str).collect(),
        )
    }

    fn update(p: &Published, sent: Option<u64>) -> Update {
        match p.pending(sent, &Audience::All) {
            Pending::Update(u) => u,
            Pending::UpToDate => panic!("expected an update"),
        }
    }

    #[test]
    fn a_delta_carries_each_changed_key_once_in_its_latest_state() {
        let mut p = Published::default();
        assert!(p.upsert(resource("a", "1")));
        assert!(p.upsert(resource("b", "1")));
        let v = p.version();
        assert!(!p.upsert(resource("a", "1")), "same content is no change");
        assert_eq!(p.version(), v);
        p.upsert(resource("a", "2"));
        p.upsert(resource("a", "3"));
        p.upsert(resource("c", "1"));
        p.remove("b");
        let delta = update(&p, Some(v));
        assert!(!delta.snapshot);
        assert_eq!(keys(&delta), (vec!["a", "c"], vec!["b"]));
        assert_eq!(delta.upserts[0], resource("a", "3"));
        assert!(matches!(
            p.pending(Some(p.version()), &Audience::All),
            Pending::UpToDate
        ));
    }

    #[test]
    fn entries_are_found_by_the_key_their_encoding_leads_with() {
        let long = "k".repeat(300);
        for key in ["a", long.as_str()] {
            let entry = Entry::new(7, &resource(key, "n"));
            assert_eq!(entry.key(), key);
            assert_eq!(entry.decode(), Some(resource(key, "n")));
        }
        let mut p = Published::default();
        p.upsert(resource(&long, "1"));
        assert_eq!(p.get(&long), Some(resource(&long, "1")));
    }

    #[test]
    fn a_new_subscriber_gets_a_snapshot_without_tombstones() {
        let mut p = Published::default();
        p.upsert(resource("a", "1"));
        p.upsert(resource("b", "1"));
        p.remove("a");
        let snap = update(&p, None);
        assert!(snap.snapshot);
        assert_eq!(keys(&snap), (vec!["b"], vec![]));
    }

    #[test]
    fn a_removed_then_recreated_key_is_an_upsert() {
        let mut p = Published::default();
        p.upsert(resource("a", "1"));
        let v = p.version();
        p.remove("a");
        p.upsert(resource("a", "2"));
        assert_eq!(keys(&update(&p, Some(v))), (vec!["a"], vec![]));
    }

    #[test]
    fn subscribers_behind_compacted_tombstones_get_a_snapshot() {
        let mut p = Published::default();
        p.upsert(resource("keep", "1"));
        let early = p.version();
        for i in 0..=MAX_TOMBSTONES {
            let key = format!("k{i}");
            p.upsert(resource(&key, "1"));
            p.remove(&key);
        }
        assert!(p.tombstones.len() <= MAX_TOMBSTONES);
        assert!(update(&p, Some(early)).snapshot);
        // A recent subscriber still gets a delta.
        let recent = p.version();
        p.remove("keep");
        let delta = update(&p, Some(recent));
        assert_eq!(keys(&delta), (vec![], vec!["keep"]));
    }
}
