//! Warren's waypoint: the L7 proxy of one namespace.
//!
//! - [`route`]: VirtualService `http` rules compiled into a table a request is
//!   matched against (matches, weighted destinations, rewrites, header
//!   operations, timeouts, retries, faults, mirrors).
//! - [`upstream`]: DestinationRule policies compiled per destination, and the
//!   live state of each upstream cluster (load balancing, connection pool
//!   limits, outlier detection).
//! - [`authz`]: AuthorizationPolicies attached to the waypoint or its
//!   Services, decided per request before routing.
//! - [`ext_authz`]: the external authorizers CUSTOM policies ask.
//! - [`telemetry`]: what Telemetry objects ask of access lines and metrics.
//! - [`tables`] and [`subscription`]: that configuration as the node agent
//!   streams it.
//! - [`proxy`]: HBONE in, HTTP inside, HBONE out.
//! - [`metrics`], [`config`], [`app`]: operating it.
//!
//! The L4 pieces (mTLS with SPIFFE identities, the HBONE server and client
//! pool, the state of workloads and services) are ztunnel's, used as a
//! library.

pub mod app;
pub mod attachment;
pub mod authn;
pub mod authz;
pub mod config;
pub mod explain;
pub mod ext_authz;
pub mod grpc;
pub mod metrics;
pub mod proxy;
pub mod route;
pub mod subscription;
pub mod tables;
pub mod telemetry;
pub mod upstream;

pub use app::App;
pub use config::Config;
