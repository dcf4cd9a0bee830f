//! Warren's privileged end-to-end tests live in `tests/`; they need root,
//! BPF and network namespaces, and `cargo xtask test` runs them after the
//! unit tests. Cluster setup lives in `warren-testbed`; this crate holds the
//! steps several scenarios share.
//!
//! - [`workload`]: sample servers in pods and the load client's reports.
//! - [`agent`]: node agents on testbed nodes, and enrolling pods.
//! - [`cni`]: the container runtime's side of the CNI plugin.
//! - [`dns`]: a pod's resolver.
pub mod agent;
pub mod cni;
pub mod dns;
pub mod mesh;
pub mod workload;
