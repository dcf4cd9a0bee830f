//! Warren's node agent: the per-node control plane.
//!
//! Data flows one way: [`source`] → [`model`] → [`store`] → [`enrollment`]
//! (and, later, the per-node view pushed to proxies) → [`datapath`].
//!
//! - [`source`]: where configuration comes from (a folder; Kubernetes later).
//! - [`model`]: the kinds Warren reads, typed and validated.
//! - [`store`]: the last good version of every object.
//! - [`enrollment`]: which pods of this node are captured, and how.
//! - [`cni`]: the CNI plugin (`warren-cni`), through which the container
//!   runtime has a starting pod captured before its containers run.
//! - [`netns`]: running code inside another network namespace.
//! - [`sandbox`]: on a Kubernetes node, a pod's network namespace and veth,
//!   found from its UID.
//! - [`datapath`]: the eBPF programs and maps; the only code that touches
//!   kernel state.
//! - [`ca`]: the mesh certificate authority (`warren-node-agent ca`).
//! - [`identity`]: the agent's workload certificates, obtained from the CA
//!   and renewed before they expire.
//! - [`waypoints`]: in local mode, the waypoint processes of this node's
//!   waypoint pods (what a Gateway controller and kubelet do on a cluster).
//! - [`waypoint_controller`]: that Gateway controller, on a cluster: a
//!   Deployment per waypoint Gateway (`warren-node-agent waypoint-controller`).
//! - [`config`]: every setting of the agent binary.
//! - [`memory`]: freed memory handed back after configuration changes, and
//!   big sets kept packed.
pub mod ca;
pub mod cni;
pub mod config;
pub mod datapath;
pub mod distribution;
pub mod enrollment;
pub mod identity;
pub mod memory;
pub mod netns;
pub mod sandbox;
pub mod source;
pub mod store;
#[cfg(test)]
mod test_pki;
pub mod view;
pub mod waypoint_controller;
pub mod waypoints;

/// The configuration model lives in its own crate so the waypoint reads the
/// same Istio types the agent validates; `crate::model` keeps its old path.
pub use warren_model as model;
