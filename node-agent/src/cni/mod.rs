//! Capture from a pod's first connection: the CNI plugin entry point.
//!
//! The agent enrolls a pod it sees in configuration once it finds the pod's
//! network namespace, which on its own it can do only after kubelet publishes
//! the pod's address — by then the pod's containers run, and their first
//! connections may have left uncaptured. The container runtime calls the node's
//! CNI plugins while it builds a pod's sandbox, before any container starts:
//! `warren-cni`, chained after the node's own network plugin, hands the agent the
//! new namespace and addresses and waits until the agent has captured the pod.
//!
//! - [`wire`]: what plugin and agent say to each other (one JSON line each way
//!   over a root-only Unix socket).
//! - [`plugin`]: the `warren-cni` binary, as the CNI specification defines a
//!   plugin (environment, network configuration on stdin, result on stdout).
//! - [`server`]: the agent's end of the socket, feeding the agent's loop, which
//!   decides with [`crate::enrollment::Enrollment::admit`].
//! - [`install`]: the plugin's place in the node's CNI configuration, with the
//!   mesh's namespaces, so the plugin lets other pods start while the agent is
//!   down.

pub mod install;
pub mod plugin;
pub mod server;
pub mod wire;

/// The plugin binary's name, and its `type` in a CNI network configuration.
pub const PLUGIN_NAME: &str = "warren-cni";

/// Where the agent listens for the plugin unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/var/run/warren/cni.sock";
