//! The local source: a folder of Kubernetes YAML or JSON (multi-document
//! files welcome), watched with inotify and hot-reloaded.
//!
//! Each file is re-read on its own when it changes, and only the objects it
//! holds are re-sent; objects a file no longer holds are deleted. A file
//! that does not parse as YAML, or is empty, is most likely being written:
//! its previous objects stay until it parses again (to remove a file's
//! objects, remove the file). Hidden files (editors' and atomic writers'
//! temporaries) are ignored. A periodic rescan catches events the watcher
//! missed.
//!
//! Two files may hold the same object (a rename is briefly that): the
//! object is deleted only when no file holds it any more, and if one of
//! them still does, its version is sent again.

use std::{
    collections::{BTreeSet, HashMap},
    hash::{DefaultHasher, Hash as _, Hasher as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result};
use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::SourceEvent;
use crate::model::{
    ConfigError, FieldError, Kind, Object, ObjectKey,
    object::{document_key, parse_document, split_documents},
};

/// How long to wait for more filesystem events before acting: one editor
/// save is often several events.
const SETTLE: Duration = Duration::from_millis(20);

pub struct LocalSource {
    dir: PathBuf,
    rescan_every: Duration,
}

/// What the source last sent for one file: each object it holds, sorted
/// by key.
#[derive(Default)]
struct FileState {
    hash: u64,
    objects: Box<[Held]>,
}

impl FileState {
    fn get(&self, key: &ObjectKey) -> Option<&Held> {
        let key = (key.kind, key.namespace.as_deref(), &*key.name);
        self.objects
            .binary_search_by(|held| held.sort_key().cmp(&key))
            .ok()
            .map(|i| &self.objects[i])
    }
}

/// One object a file holds: the version sent, or the key of a version
/// refused. The object knows its own key, so nothing else is kept for it.
enum Held {
    Good(Object),
    Refused(Box<ObjectKey>),
}

impl Held {
    /// The key's parts, borrowed: (kind, namespace, name).
    fn sort_key(&self) -> (Kind, Option<&str>, &str) {
        match self {
            Held::Good(o) => (o.kind(), o.namespace(), o.name()),
            Held::Refused(k) => (k.kind, k.namespace.as_deref(), &k.name),
        }
    }

    fn key(&self) -> ObjectKey {
        match self {
            Held::Good(o) => o.key(),
            Held::Refused(k) => (**k).clone(),
        }
    }
}

/// Everything the source knows about the folder: per file, what it held.
///
/// Which other files hold an object is asked only when a file stops
/// holding it (an edit removed it, or the file is gone), by searching the
/// other files' sorted lists then. No index by key is kept: a big mesh's
/// folder holds tens of thousands of objects, nearly each in one file, and
/// such an index cost more memory than the lists themselves.
#[derive(Default)]
struct Folder {
    files: HashMap<Arc<Path>, FileState>,
}

impl LocalSource {
    pub fn new(dir: impl Into<PathBuf>, rescan_every: Duration) -> Self {
        Self {
            dir: dir.into(),
            rescan_every,
        }
    }

    /// Sends the folder's objects, then `Synced`, then every change, until
    /// the receiver goes away.
    pub async fn run(self, events: mpsc::Sender<SourceEvent>) -> Result<()> {
        let (raw_tx, mut raw_rx) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let _ = raw_tx.send(res);
        })
        .context("starting the folder watcher")?;
        watcher
            .watch(&self.dir, RecursiveMode::Recursive)
            .with_context(|| format!("watching {}", self.dir.display()))?;

        let mut folder = Folder::default();
        let mut out = Vec::new();
        folder.rescan(&self.dir, &mut out)?;
        out.push(SourceEvent::Synced);
        if !send_all(&events, &mut out).await {
            return Ok(());
        }

        let mut rescan_tick = tokio::time::interval(self.rescan_every);
        rescan_tick.tick().await;
        loop {
            tokio::select! {
                first = raw_rx.recv() => {
                    let Some(first) = first else { return Ok(()) };
                    let mut changed = BTreeSet::new();
                    collect_paths(first, &mut changed);
                    // Let a burst of events settle, then handle each file once.
                    tokio::time::sleep(SETTLE).await;
                    while let Ok(more) = raw_rx.try_recv() {
                        collect_paths(more, &mut changed);
                    }
                    // Files that exist first, then files that vanished: a
                    // rename then never deletes what it moved.
                    let (present, gone): (Vec<PathBuf>, Vec<PathBuf>) =
                        changed.into_iter().partition(|p| p.exists());
                    for path in present.into_iter().chain(gone) {
                        folder.reload(&path, &mut out);
                    }
                }
                _ = rescan_tick.tick() => {
                    if let Err(err) = folder.rescan(&self.dir, &mut out) {
                        warn!(dir = %self.dir.display(), error = %format!("{err:#}"), "rescanning the config folder");
                    }
                }
            }
            if !send_all(&events, &mut out).await {
                return Ok(());
            }
        }
    }
}

async fn send_all(events: &mpsc::Sender<SourceEvent>, out: &mut Vec<SourceEvent>) -> bool {
    // Taken, not drained: a first listing of a big folder is tens of
    // thousands of events, and a drained Vec would keep their room.
    for event in std::mem::take(out) {
        if events.send(event).await.is_err() {
            return false;
        }
    }
    true
}

fn collect_paths(event: notify::Result<notify::Event>, into: &mut BTreeSet<PathBuf>) {
    match event {
        Ok(event) => into.extend(event.paths),
        Err(err) => warn!(error = %err, "folder watcher error; the next rescan catches up"),
    }
}

impl Folder {
    /// Re-reads every config file under `dir` and forgets files that are gone.
    fn rescan(&mut self, dir: &Path, out: &mut Vec<SourceEvent>) -> Result<()> {
        let mut present = BTreeSet::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(folder) = stack.pop() {
            let entries = std::fs::read_dir(&folder)
                .with_context(|| format!("reading {}", folder.display()))?;
            for entry in entries.filter_map(|e| e.ok()) {
                let path = entry.path();
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    if !is_hidden(&path) {
                        stack.push(path);
                    }
                } else if is_config_file(&path) {
                    present.insert(path);
                }
            }
        }
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !present.contains(&***p))
            .map(|p| p.to_path_buf())
            .collect();
        for path in present.into_iter().chain(gone) {
            self.reload(&path, out);
        }
        Ok(())
    }

    /// Brings one file's objects up to date.
    fn reload(&mut self, path: &Path, out: &mut Vec<SourceEvent>) {
        if !is_config_file(path) {
            return;
        }
        let source = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                if let Some(state) = self.files.remove(path) {
                    debug!(file = %source, objects = state.objects.len(), "config file removed");
                    let keys = state.objects.iter().map(Held::key).collect();
                    self.release(keys, out);
                }
                return;
            }
            Err(err) => {
                warn!(file = %source, error = %err, "reading config file; keeping its previous objects");
                return;
            }
        };
        let mut hasher = DefaultHasher::new();
        text.hash(&mut hasher);
        let hash = hasher.finish();
        if self.files.get(path).is_some_and(|state| state.hash == hash) {
            return;
        }
        let docs = match split_documents(&text) {
            // Empty: truncated by a writer that has not written yet.
            Ok(docs) if docs.is_empty() && text.trim().is_empty() => return,
            Ok(docs) => docs,
            Err(reason) => {
                // Probably half-written: keep what the file held before, and
                // do not record the hash so the next event re-reads it.
                out.push(SourceEvent::Rejected {
                    key: None,
                    error: ConfigError {
                        kind: "file".into(),
                        object: source.clone(),
                        origin: None,
                        errors: vec![FieldError::new(
                            "",
                            format!("not valid YAML (yet?): {reason}"),
                        )],
                    },
                });
                return;
            }
        };
        out.push(SourceEvent::FileParsed(source.clone()));
        let mut objects = Vec::with_capacity(docs.len());
        for doc in docs {
            let key = document_key(&doc);
            match parse_document(doc, &source) {
                Ok(object) => {
                    objects.push(Held::Good(object.clone()));
                    out.push(SourceEvent::Upsert(object));
                }
                Err(error) => {
                    // The file still holds this object: its last good version
                    // stays, and removing the file removes it.
                    if let Some(key) = &key {
                        objects.push(Held::Refused(Box::new(key.clone())));
                    }
                    out.push(SourceEvent::Rejected { key, error });
                }
            }
        }
        // One entry per key, the file's last document for it (as sent last).
        objects.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        objects.dedup_by(|later, kept| {
            let same = later.sort_key() == kept.sort_key();
            if same {
                std::mem::swap(later, kept);
            }
            same
        });
        let (path, before) = match self.files.remove_entry(path) {
            Some((path, state)) => (path, state.objects),
            None => (Arc::from(path), Box::default()),
        };
        let state = FileState {
            hash,
            objects: objects.into_boxed_slice(),
        };
        let dropped: Vec<ObjectKey> = before
            .iter()
            .map(Held::key)
            .filter(|key| state.get(key).is_none())
            .collect();
        self.files.insert(path, state);
        self.release(dropped, out);
    }

    /// A file no longer holds `keys` (and is already recorded so): delete
    /// each object no file holds, else send the version another file holds
    /// (the first by path that has a good one).
    fn release(&self, keys: Vec<ObjectKey>, out: &mut Vec<SourceEvent>) {
        for key in keys {
            let mut held = false;
            let mut good: Option<(&Arc<Path>, &Object)> = None;
            for (path, state) in &self.files {
                let Some(version) = state.get(&key) else {
                    continue;
                };
                held = true;
                if let Held::Good(object) = version
                    && good.is_none_or(|(first, _)| path < first)
                {
                    good = Some((path, object));
                }
            }
            match good {
                Some((_, object)) => out.push(SourceEvent::Upsert(object.clone())),
                None if !held => out.push(SourceEvent::Delete(key)),
                // Only refused versions left: the last good one stays.
                None => {}
            }
        }
    }
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

fn is_config_file(path: &Path) -> bool {
    !is_hidden(path)
        && path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::{sync::mpsc, time::timeout};

    use super::*;
    use crate::model::{Kind, Object};

    /// A folder under the temp dir, removed on drop.
    struct Folder(PathBuf);

    impl Folder {
        fn new(name: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("warren-local-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).expect("creating a temp folder");
            Self(path)
        }

        /// Writes atomically, as kubectl-like tools and the testbed do.
        fn write(&self, file: &str, text: &str) {
            let tmp = self.0.join(format!(".{file}.tmp"));
            std::fs::write(&tmp, text).expect("writing");
            std::fs::rename(&tmp, self.0.join(file)).expect("renaming");
        }
    }

    impl Drop for Folder {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels:\n    warren.io/dataplane-mode: ambient\n";

    fn pod(version: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: shop\n  labels:\n    version: {version}\nspec:\n  nodeName: n0\n  containers: []\n"
        )
    }

    /// The next event that is not bookkeeping (`FileParsed`).
    async fn next(rx: &mut mpsc::Receiver<SourceEvent>) -> SourceEvent {
        loop {
            let event = timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("no event within 5s")
                .expect("source stopped");
            if !matches!(event, SourceEvent::FileParsed(_)) {
                return event;
            }
        }
    }

    fn upserted(event: SourceEvent) -> Object {
        match event {
            SourceEvent::Upsert(o) => o,
            other => panic!("expected an upsert, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn lists_then_follows_changes() {
        let folder = Folder::new("follow");
        folder.write("shop.yaml", &format!("{NS}---\n{}", pod("v1")));
        folder.write(".hidden.yaml", "this: is ignored");
        let (tx, mut rx) = mpsc::channel(64);
        tokio::spawn(LocalSource::new(&folder.0, Duration::from_secs(3600)).run(tx));

        // Initial listing: both documents of the file, then Synced.
        let mut kinds = vec![
            upserted(next(&mut rx).await).kind(),
            upserted(next(&mut rx).await).kind(),
        ];
        kinds.sort();
        assert_eq!(kinds, [Kind::Namespace, Kind::Pod]);
        assert!(matches!(next(&mut rx).await, SourceEvent::Synced));

        // A change re-sends that file's objects (the store skips unchanged ones).
        folder.write("shop.yaml", &format!("{NS}---\n{}", pod("v2")));
        let mut changed = Vec::new();
        for _ in 0..2 {
            changed.push(upserted(next(&mut rx).await));
        }
        let Some(Object::Pod(p)) = changed.iter().find(|o| o.kind() == Kind::Pod) else {
            panic!("pod not re-sent: {changed:?}");
        };
        assert_eq!(p.labels.get("version"), Some("v2"));

        // Half-written: refused as a file, nothing deleted.
        std::fs::write(folder.0.join("shop.yaml"), "apiVersion: v1\nkind: [").expect("writing");
        match next(&mut rx).await {
            SourceEvent::Rejected { key: None, error } => {
                assert!(error.to_string().contains("not valid YAML"), "{error}")
            }
            other => panic!("expected a file rejection, got {other:?}"),
        }
        // Completed: the pod comes back as it now reads; the namespace is gone
        // from the file, so it is deleted.
        folder.write("shop.yaml", &pod("v3"));
        let mut saw_delete = false;
        let mut saw_pod = false;
        while !(saw_delete && saw_pod) {
            match next(&mut rx).await {
                SourceEvent::Delete(key) => {
                    assert_eq!(key.kind, Kind::Namespace);
                    saw_delete = true;
                }
                SourceEvent::Upsert(Object::Pod(_)) => saw_pod = true,
                SourceEvent::Upsert(_) | SourceEvent::Rejected { .. } => {}
                SourceEvent::Synced => panic!("second Synced"),
                SourceEvent::FileParsed(_) => {}
            }
        }

        // An invalid object is refused with its key; the valid one the file
        // no longer holds is deleted.
        folder.write(
            "shop.yaml",
            &pod("v3").replace("name: web", "name: Web_Bad"),
        );
        let (mut rejected, mut deleted) = (false, false);
        while !(rejected && deleted) {
            match next(&mut rx).await {
                SourceEvent::Rejected {
                    key: Some(key),
                    error,
                } => {
                    assert_eq!(&*key.name, "Web_Bad");
                    assert!(error.to_string().contains("metadata.name"), "{error}");
                    rejected = true;
                }
                SourceEvent::Delete(key) => {
                    assert_eq!(&*key.name, "web");
                    deleted = true;
                }
                other => panic!("unexpected {other:?}"),
            }
        }

        // Removing the file deletes what it held.
        std::fs::remove_file(folder.0.join("shop.yaml")).expect("removing");
        match next(&mut rx).await {
            SourceEvent::Delete(key) => assert_eq!(&*key.name, "Web_Bad"),
            other => panic!("expected a delete, got {other:?}"),
        }
    }

    /// Events until none arrives for `quiet`.
    async fn drain(rx: &mut mpsc::Receiver<SourceEvent>, quiet: Duration) -> Vec<SourceEvent> {
        let mut events = Vec::new();
        while let Ok(Some(e)) = timeout(quiet, rx.recv()).await {
            events.push(e);
        }
        events
    }

    async fn no_delete(rx: &mut mpsc::Receiver<SourceEvent>, what: &str) {
        let events = drain(rx, Duration::from_millis(200)).await;
        assert!(
            !events.iter().any(|e| matches!(e, SourceEvent::Delete(_))),
            "{what} deleted the object: {events:?}"
        );
    }

    #[tokio::test]
    async fn renames_and_truncation_delete_nothing() {
        let folder = Folder::new("rename");
        folder.write("a.yaml", &pod("v1"));
        let (tx, mut rx) = mpsc::channel(64);
        tokio::spawn(LocalSource::new(&folder.0, Duration::from_secs(3600)).run(tx));
        upserted(next(&mut rx).await);
        assert!(matches!(next(&mut rx).await, SourceEvent::Synced));

        // Renamed, either way round in the alphabet, then truncated by a
        // writer that has not written yet: none of it deletes the object.
        let path = |name: &str| folder.0.join(name);
        std::fs::rename(path("a.yaml"), path("b.yaml")).expect("renaming");
        no_delete(&mut rx, "rename a → b").await;
        std::fs::rename(path("b.yaml"), path("0.yaml")).expect("renaming");
        no_delete(&mut rx, "rename b → 0").await;
        std::fs::write(path("0.yaml"), "").expect("truncating");
        no_delete(&mut rx, "truncation").await;

        // A second file with the same object: removing one keeps it.
        folder.write("0.yaml", &pod("v1"));
        folder.write("copy.yaml", &pod("v1"));
        drain(&mut rx, Duration::from_millis(300)).await;
        std::fs::remove_file(folder.0.join("copy.yaml")).expect("removing");
        let events = drain(&mut rx, Duration::from_millis(300)).await;
        assert!(
            !events.iter().any(|e| matches!(e, SourceEvent::Delete(_))),
            "{events:?}"
        );
        std::fs::remove_file(folder.0.join("0.yaml")).expect("removing");
        match next(&mut rx).await {
            SourceEvent::Delete(key) => assert_eq!(&*key.name, "web"),
            other => panic!("expected a delete, got {other:?}"),
        }

        // Two files with different versions: removing the one read last
        // brings back the other's.
        folder.write("a.yaml", &pod("v1"));
        drain(&mut rx, Duration::from_millis(300)).await;
        folder.write("b.yaml", &pod("v2"));
        drain(&mut rx, Duration::from_millis(300)).await;
        std::fs::remove_file(folder.0.join("b.yaml")).expect("removing");
        let Object::Pod(p) = upserted(next(&mut rx).await) else {
            panic!("expected the pod");
        };
        assert_eq!(p.labels.get("version"), Some("v1"));
    }
}
