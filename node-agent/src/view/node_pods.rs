//! This node's pods, as the view holds them, shared with whoever must
//! follow them outside the view: the distribution's peer check, which
//! believes a subscriber's hello only while its process runs in the right
//! pod. The view sets them as it processes a change, before it publishes
//! what follows from it, so a subscription whose pod has gone is checked
//! again before the next update is sent to it.

use std::sync::{Arc, RwLock, RwLockReadGuard};

use tokio::sync::watch;

/// A pod on this node that has not finished, as `distribution::Peers`
/// places subscribers against it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalPod {
    pub namespace: String,
    pub uid: Option<String>,
    /// Its `warren.io/netns` annotation (local mode's; not to be believed on
    /// a cluster).
    pub netns: Option<String>,
    /// It runs one of its namespace's waypoint Gateways.
    pub waypoint: bool,
}

/// A handle on this node's pods: the view writes them, readers take a look
/// and watch for changes.
#[derive(Clone)]
pub struct NodePods {
    pods: Arc<RwLock<Vec<LocalPod>>>,
    /// Counts the changes of `pods`.
    generation: Arc<watch::Sender<u64>>,
}

impl Default for NodePods {
    fn default() -> Self {
        Self {
            pods: Arc::default(),
            generation: Arc::new(watch::Sender::new(0)),
        }
    }
}

impl NodePods {
    /// The pods now.
    pub fn read(&self) -> RwLockReadGuard<'_, Vec<LocalPod>> {
        self.pods
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Tells of each change, which has been written when it is told.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Replaces the pods (the view's own doing; tests stand in for it).
    pub fn set(&self, pods: Vec<LocalPod>) {
        {
            let mut known = self
                .pods
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *known == pods {
                return;
            }
            *known = pods;
        }
        self.generation.send_modify(|g| *g += 1);
    }
}
