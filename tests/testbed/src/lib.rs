//! A cluster made of network namespaces, cgroups and veths on one machine.
//!
//! Tests, the demo and the benchmarks all build their clusters from here, so
//! each test reads as a scenario rather than as setup.
//!
//! - [`cgroup`]: cgroup v2 folders that clean themselves up.
//! - [`privilege`]: the checks privileged tests start with, failing loudly.
pub mod cgroup;
pub mod privilege;
