//! A cluster made of network namespaces, cgroups and veths on one machine.
//!
//! Tests, the demo and the benchmarks all build their clusters from here, so
//! each test reads as a scenario rather than as setup.
//!
//! - [`cluster`]: nodes, pods and services, and the Kubernetes objects that
//!   describe them (written by [`manifests`]).
//! - [`sandbox`]: running processes inside a pod or a node.
//! - [`cleanup`]: teardown on drop, on Ctrl-C, and of killed runs' leftovers.
//! - [`addressing`]: the address plan.
//! - [`netns`], [`cgroup`]: the kernel objects underneath.
//! - [`privilege`]: the checks privileged tests start with, failing loudly.
//! - [`jwt`]: a token issuer, for tests of RequestAuthentication.
pub mod addressing;
pub mod binaries;
pub mod cgroup;
pub mod cleanup;
pub mod cluster;
pub mod jwt;
pub mod manifests;
pub mod netns;
pub mod pki;
pub mod privilege;
pub mod sandbox;

pub use cluster::{Cluster, Node, Pod, PodSpec, Service, ServicePort};
pub use sandbox::{Process, Sandbox};

/// Labels (of a pod, namespace or service) from `(key, value)` pairs.
pub fn labels(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}
