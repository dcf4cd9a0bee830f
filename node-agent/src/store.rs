//! The agent's view of configuration: the last good version of every
//! object, and what was refused and why.
//!
//! The store is the single owner of configuration state. A refused object
//! never replaces a good one: the last good version stays in force until a
//! valid version or a deletion arrives.

use std::{borrow::Borrow, collections::BTreeMap, sync::Arc};

use tracing::{info, warn};

use crate::{
    memory::DenseSet,
    model::{ConfigError, Kind, Object, ObjectKey},
    source::SourceEvent,
};

#[derive(Default)]
pub struct Store {
    /// Objects by kind, namespace (empty for cluster-scoped kinds) and
    /// name. Nested rather than keyed by [`ObjectKey`]: a map entry per
    /// object would repeat its kind and namespace and cost about 90 bytes
    /// in a mesh of 50 000 pods; a set entry is one pointer.
    objects: BTreeMap<Kind, BTreeMap<Arc<str>, DenseSet<ByName>>>,
    /// Objects in force.
    len: usize,
    /// Refusals still standing, by object (or by file for unparsable files),
    /// with the object's key when the document named one.
    rejected: BTreeMap<String, (Option<ObjectKey>, ConfigError)>,
    synced: bool,
    /// Bumped on every change that took effect.
    version: u64,
}

/// What one event changed, for whoever reacts to it.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    Changed(ObjectKey),
    /// A refusal of this object was recorded or withdrawn; the objects in
    /// force did not change.
    Refused(ObjectKey),
    Unchanged,
    Synced,
}

impl Store {
    /// A store holding the objects of a multi-document YAML text, synced: what unit
    /// tests start from. Panics on YAML that does not load (a broken test).
    #[cfg(test)]
    pub fn from_yaml(yaml: &str) -> Store {
        use crate::model::object::{parse_document, split_documents};
        let mut store = Store::default();
        for doc in split_documents(yaml).expect("test YAML") {
            store.apply(SourceEvent::Upsert(
                parse_document(doc, "test").expect("test object"),
            ));
        }
        store.apply(SourceEvent::Synced);
        store
    }

    pub fn apply(&mut self, event: SourceEvent) -> Applied {
        match event {
            SourceEvent::Upsert(object) => {
                let key = object.key();
                self.rejected.remove(&key.to_string());
                let named = self
                    .objects
                    .entry(key.kind)
                    .or_default()
                    .entry(key.namespace.clone().unwrap_or_else(|| "".into()))
                    .or_default();
                if named.get(&*key.name).is_some_and(|have| have.0 == object) {
                    return Applied::Unchanged;
                }
                if named.replace(ByName(object)).is_none() {
                    self.len += 1;
                }
                self.version += 1;
                Applied::Changed(key)
            }
            SourceEvent::Rejected { key, error } => {
                let kept = key.as_ref().is_some_and(|k| self.get(k).is_some());
                warn!(
                    error = %error,
                    last_good_kept = kept,
                    "configuration object rejected"
                );
                let id = key
                    .as_ref()
                    .map_or_else(|| error.object.clone(), |k| k.to_string());
                self.rejected.insert(id, (key.clone(), error));
                // Consumers that fail closed on refused objects must hear of it.
                key.map_or(Applied::Unchanged, Applied::Refused)
            }
            SourceEvent::Delete(key) => {
                let was_refused = self.rejected.remove(&key.to_string()).is_some();
                match self.remove(&key) {
                    Some(_) => {
                        self.len -= 1;
                        self.version += 1;
                        Applied::Changed(key)
                    }
                    None if was_refused => Applied::Refused(key),
                    None => Applied::Unchanged,
                }
            }
            SourceEvent::FileParsed(file) => {
                self.rejected.remove(&file);
                Applied::Unchanged
            }
            SourceEvent::Synced => {
                self.synced = true;
                info!(
                    objects = self.len,
                    rejected = self.rejected.len(),
                    "configuration synced"
                );
                Applied::Synced
            }
        }
    }

    pub fn synced(&self) -> bool {
        self.synced
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn get(&self, key: &ObjectKey) -> Option<&Object> {
        self.objects
            .get(&key.kind)?
            .get(key.namespace.as_deref().unwrap_or_default())?
            .get(&*key.name)
            .map(|o| &o.0)
    }

    fn remove(&mut self, key: &ObjectKey) -> Option<Object> {
        let namespaces = self.objects.get_mut(&key.kind)?;
        let namespace = key.namespace.as_deref().unwrap_or_default();
        let named = namespaces.get_mut(namespace)?;
        let removed = named.take(&*key.name)?;
        if named.is_empty() {
            namespaces.remove(namespace);
        }
        Some(removed.0)
    }

    /// Objects of one kind, by namespace and name.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Object> {
        self.objects
            .get(&kind)
            .into_iter()
            .flat_map(|namespaces| namespaces.values())
            .flatten()
            .map(|o| &o.0)
    }

    /// Objects of one kind in one namespace, by name.
    pub fn of_kind_in<'a>(
        &'a self,
        kind: Kind,
        namespace: &'a str,
    ) -> impl Iterator<Item = &'a Object> + 'a {
        self.objects
            .get(&kind)
            .and_then(|namespaces| namespaces.get(namespace))
            .into_iter()
            .flatten()
            .map(|o| &o.0)
    }

    /// Refusals still standing, with the object each is about when known.
    pub fn refusals(&self) -> impl Iterator<Item = (Option<&ObjectKey>, &ConfigError)> {
        self.rejected.values().map(|(k, e)| (k.as_ref(), e))
    }

    /// Refusals still standing.
    pub fn rejected(&self) -> impl Iterator<Item = &ConfigError> {
        self.rejected.values().map(|(_, e)| e)
    }

    /// Keys of refused objects of `kind` that have no good version in force:
    /// configuration someone meant, that Warren cannot know.
    pub fn refused_without_last_good(&self, kind: Kind) -> impl Iterator<Item = &ObjectKey> {
        self.rejected
            .values()
            .filter_map(|(key, _)| key.as_ref())
            .filter(move |k| k.kind == kind && self.get(k).is_none())
    }
}

/// An object in the set of its kind and namespace, ordered (and found) by
/// its name.
struct ByName(Object);

impl Borrow<str> for ByName {
    fn borrow(&self) -> &str {
        self.0.name()
    }
}

impl PartialEq for ByName {
    fn eq(&self, other: &Self) -> bool {
        self.0.name() == other.0.name()
    }
}

impl Eq for ByName {}

impl PartialOrd for ByName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ByName {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.name().cmp(other.0.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::FieldError;

    fn file_refusal(file: &str) -> SourceEvent {
        SourceEvent::Rejected {
            key: None,
            error: ConfigError {
                kind: "file".into(),
                object: file.into(),
                origin: None,
                errors: vec![FieldError::new("", "not valid YAML (yet?)")],
            },
        }
    }

    #[test]
    fn a_file_that_parses_again_is_no_longer_refused() {
        let mut store = Store::default();
        store.apply(file_refusal("/cfg/a.yaml"));
        store.apply(file_refusal("/cfg/b.yaml"));
        assert_eq!(store.rejected().count(), 2);
        store.apply(SourceEvent::FileParsed("/cfg/a.yaml".into()));
        let left: Vec<&str> = store.rejected().map(|e| e.object.as_str()).collect();
        assert_eq!(left, ["/cfg/b.yaml"]);
    }
}
