//! The plugin's requests and the agent's answers: one JSON line each way.
//!
//! JSON rather than the agent's gRPC: the plugin is a short-lived process the
//! runtime starts for every pod, and a blocking Unix socket keeps it small and
//! quick to start.

use std::{net::IpAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

/// Which pod, from the runtime's CNI arguments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    /// `K8S_POD_UID`: containerd and CRI-O pass it; older runtimes do not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    /// CNI ADD: the runtime built this pod's network; its containers start once
    /// the plugin answers.
    Add {
        pod: PodRef,
        container_id: String,
        /// The pod's network namespace, as the runtime names it (`CNI_NETNS`).
        netns: PathBuf,
        /// The addresses the network plugin before this one gave the pod.
        addresses: Vec<IpAddr>,
    },
    /// CNI DEL: the runtime tears the pod's sandbox down.
    Del { pod: PodRef, container_id: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Answer {
    /// The pod is captured (inbound mode `mode`): it may start.
    Enrolled { mode: String },
    /// The pod is not for the mesh: it may start as it is.
    Outside { why: String },
    /// The pod is for the mesh and is not captured: it must not start.
    Refused { why: String },
    /// A DEL was taken.
    Done,
}
