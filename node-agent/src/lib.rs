//! Warren's node agent: the per-node control plane.
//!
//! - [`datapath`] loads Warren's eBPF programs, attaches them and reads and
//!   writes their maps. It is the only owner of kernel state.
pub mod datapath;
