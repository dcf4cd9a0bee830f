//! An object's labels as the agent keeps them: one shared string per
//! distinct label set.
//!
//! A map of owned strings costs a table and two allocations per label, for
//! each of tens of thousands of pods whose labels mostly repeat (every
//! replica of a Deployment has the same ones). Packed as `k1\0v1\0k2\0v2`
//! (sorted by key) and interned, a pod's labels are one pointer to a string
//! its siblings share. Objects have a handful of labels, so lookups scan.

use std::{collections::BTreeMap, fmt, sync::Arc};

use crate::intern::intern;

/// Separates keys and values. Kubernetes (and validation) allow only
/// letters, digits and `-_./` in label keys and values, never NUL.
const SEP: char = '\0';

#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Labels(Arc<str>);

impl Default for Labels {
    fn default() -> Self {
        Self(intern(""))
    }
}

impl Labels {
    /// Packs `pairs`; a pair containing NUL (which neither the API server
    /// nor validation lets through) is dropped.
    pub fn new<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut pairs: Vec<(&str, &str)> = pairs
            .into_iter()
            .filter(|(k, v)| !k.contains(SEP) && !v.contains(SEP))
            .collect();
        pairs.sort_unstable();
        pairs.dedup_by(|a, b| a.0 == b.0);
        let mut packed =
            String::with_capacity(pairs.iter().map(|(k, v)| k.len() + v.len() + 2).sum());
        for (i, (k, v)) in pairs.iter().enumerate() {
            if i > 0 {
                packed.push(SEP);
            }
            packed.push_str(k);
            packed.push(SEP);
            packed.push_str(v);
        }
        Self(intern(&packed))
    }

    /// From a Kubernetes `metadata.labels` map.
    pub fn from_map(map: Option<&BTreeMap<String, String>>) -> Self {
        Self::new(
            map.into_iter()
                .flatten()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        )
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut parts = (!self.0.is_empty())
            .then(|| self.0.split(SEP))
            .into_iter()
            .flatten();
        std::iter::from_fn(move || Some((parts.next()?, parts.next()?)))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether every label of `selector` is here with the same value.
    pub fn matches(&self, selector: &BTreeMap<String, String>) -> bool {
        selector
            .iter()
            .all(|(k, v)| self.get(k) == Some(v.as_str()))
    }

    /// Whether every label of `other` is here with the same value.
    pub fn includes(&self, other: &Labels) -> bool {
        other.iter().all(|(k, v)| self.get(k) == Some(v))
    }

    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_and_reads_back() {
        let labels = Labels::new([("version", "v1"), ("app", "web"), ("empty", "")]);
        assert_eq!(labels.get("app"), Some("web"));
        assert_eq!(labels.get("empty"), Some(""));
        assert_eq!(labels.get("missing"), None);
        let pairs: Vec<(&str, &str)> = labels.iter().collect();
        assert_eq!(pairs, [("app", "web"), ("empty", ""), ("version", "v1")]);
        assert!(labels.matches(&[("app".into(), "web".into())].into()));
        assert!(!labels.matches(&[("app".into(), "db".into())].into()));
        assert!(labels.includes(&Labels::new([("app", "web"), ("version", "v1")])));
        assert!(!labels.includes(&Labels::new([("app", "web"), ("tier", "front")])));
        assert_eq!(Labels::from_map(Some(&labels.to_map())), labels);
    }

    #[test]
    fn no_labels_and_shared_sets() {
        let none = Labels::from_map(None);
        assert!(none.is_empty());
        assert_eq!(none.iter().count(), 0);
        assert!(none.matches(&BTreeMap::new()));
        let a = Labels::new([("app", "web")]);
        let b = Labels::new([("app", "web")]);
        assert!(Arc::ptr_eq(&a.0, &b.0), "equal label sets share one string");
        assert_eq!(Labels::new([("bad\0key", "x")]), none);
    }
}
