//! Warren's waypoint: the L7 proxy of one namespace.
//!
//! - [`route`]: VirtualService `http` rules compiled into a table a request is
//!   matched against (matches, weighted destinations, rewrites, header
//!   operations, timeouts, retries, faults, mirrors).
//! - [`upstream`]: DestinationRule policies compiled per destination, and the
//!   live state of each upstream cluster (load balancing, connection pool
//!   limits, outlier detection).

pub mod route;
pub mod upstream;
