//! Warren's node agent: the per-node control plane.
//!
//! - [`datapath`] installs Warren's eBPF programs and owns their maps: the
//!   only code that touches kernel state.
//! - [`config`] holds every setting of the agent binary.
pub mod config;
pub mod datapath;
