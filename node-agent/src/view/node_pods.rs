//! This node's pods, as the view holds them, shared with whoever must
//! follow them outside the view: the distribution's peer check, which
//! believes a subscriber's hello only while its process runs in the right
//! pod. The view sets them as it processes a change, before it publishes
//! what follows from it, so a subscription whose pod has gone is checked
//! again before the next update is sent to it.

use std::sync::Arc;

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
pub struct NodePods(Arc<watch::Sender<Vec<LocalPod>>>);

impl Default for NodePods {
    fn default() -> Self {
        Self(Arc::new(watch::Sender::new(Vec::new())))
    }
}

impl NodePods {
    /// The pods now (held briefly: the view waits for it).
    pub fn read(&self) -> watch::Ref<'_, Vec<LocalPod>> {
        self.0.borrow()
    }

    /// Tells of each change, which has been written when it is told.
    pub fn changes(&self) -> watch::Receiver<Vec<LocalPod>> {
        self.0.subscribe()
    }

    /// Replaces the pods (the view's own doing; tests stand in for it).
    pub fn set(&self, pods: Vec<LocalPod>) {
        self.0.send_if_modified(|known| {
            if *known == pods {
                return false;
            }
            *known = pods;
            true
        });
    }
}
