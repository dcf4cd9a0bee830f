//! Istio's configuration API as Rust types: the kinds Warren reads, with
//! Istio's field names, so Istio YAML parses unchanged.
//!
//! - [`networking`]: VirtualService, DestinationRule, ServiceEntry,
//!   WorkloadEntry (`networking.istio.io`).
//! - [`security`]: AuthorizationPolicy, RequestAuthentication, PeerAuthentication
//!   (`security.istio.io`).
//! - [`common`]: pieces both groups use (selectors, string matches…).
//! - [`telemetry`]: Telemetry (`telemetry.istio.io`).
//! - [`mesh`]: MeshConfig's extension providers (the `istio` ConfigMap).
//!
//! The types are declared at `v1`; Istio's `v1beta1` and `v1alpha3` have the
//! same fields and are read into them. What each field means to Warren, and
//! which are enforced, is in `docs/configuration.md`; checks are in
//! [`crate::validate`].
pub mod common;
pub mod mesh;
pub mod networking;
pub mod security;
pub mod telemetry;

pub use common::*;
pub use networking::*;
pub use security::*;
