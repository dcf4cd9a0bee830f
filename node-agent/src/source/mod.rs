//! Where configuration comes from. A source turns what it watches into a
//! stream of [`SourceEvent`]s, so the rest of the agent does not know
//! whether objects came from a folder or an API server.
//!
//! - [`local`]: a folder of YAML/JSON, hot-reloaded (the default).
//! - [`kube`]: an API server, through kube-rs watchers.

pub mod kube;
pub mod local;

use std::future::Future;

use tokio::sync::mpsc;

use crate::model::{ConfigError, Object, ObjectKey};

/// A source of configuration. It sends every object it holds, then
/// [`SourceEvent::Synced`], then every change, until the receiver is gone.
pub trait Source: Send + 'static {
    fn run(
        self,
        events: mpsc::Sender<SourceEvent>,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
}

impl Source for local::LocalSource {
    fn run(
        self,
        events: mpsc::Sender<SourceEvent>,
    ) -> impl Future<Output = anyhow::Result<()>> + Send {
        local::LocalSource::run(self, events)
    }
}

impl Source for kube::KubeSource {
    fn run(
        self,
        events: mpsc::Sender<SourceEvent>,
    ) -> impl Future<Output = anyhow::Result<()>> + Send {
        kube::KubeSource::run(self, events)
    }
}

/// A change a source saw.
#[derive(Debug)]
pub enum SourceEvent {
    /// A valid object, new or changed. Shared: the local source keeps the
    /// same copy per file that holds it, so an object is in memory once.
    Upsert(Object),
    /// An object that failed parsing or validation; its last good version,
    /// if any, stays in force.
    Rejected {
        key: Option<ObjectKey>,
        error: ConfigError,
    },
    /// An object is gone.
    Delete(ObjectKey),
    /// A file that was refused as a whole parses again (local source): its
    /// file-level refusal no longer stands.
    FileParsed(String),
    /// The first complete listing has been sent: from here on, an object
    /// that was not listed does not exist.
    Synced,
}
