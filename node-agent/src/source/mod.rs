//! Where configuration comes from. A source turns what it watches into a
//! stream of [`SourceEvent`]s, so the rest of the agent does not know
//! whether objects came from a folder or an API server.
//!
//! - [`local`]: a folder of YAML/JSON, hot-reloaded (the default).

pub mod local;

use crate::model::{ConfigError, Object, ObjectKey};

/// A change a source saw.
#[derive(Debug)]
pub enum SourceEvent {
    /// A valid object, new or changed.
    Upsert(Object),
    /// An object that failed parsing or validation; its last good version,
    /// if any, stays in force.
    Rejected {
        key: Option<ObjectKey>,
        error: ConfigError,
    },
    /// An object is gone.
    Delete(ObjectKey),
    /// The first complete listing has been sent: from here on, an object
    /// that was not listed does not exist.
    Synced,
}
