//! The configuration model: Kubernetes and Istio objects, typed and
//! validated, whichever source they came from.
//!
//! - [`object`]: the kinds Warren reads, parsing and keys.
//! - [`cluster`]: Kubernetes' own kinds, reduced to the fields Warren reads.
//! - [`labels`]: labels as objects keep them, shared between equal sets.
//! - [`intern`]: one copy of strings that repeat across objects.
//! - [`istio`]: Istio's networking and security API types.
//! - [`gateway`]: the Gateway API's Gateway, which asks for a waypoint.
//! - [`http_route`]: the Gateway API's HTTPRoute for Services, and the
//!   VirtualService it amounts to.
//! - [`grpc_route`]: the Gateway API's GRPCRoute, read as an HTTPRoute.
//! - [`l4_route`]: the Gateway API's TCPRoute and TLSRoute for Services, as
//!   VirtualService `tcp` and `tls` rules.
//! - [`reference_grant`]: the Gateway API's ReferenceGrant, which lets
//!   routes send to another namespace's Services.
//! - [`log_format`]: Envoy's access-line formats (`logFormat`,
//!   `accessLogFormat`), read and checked.
//! - [`validate`]: per-kind checks, each error naming field path and reason.
//! - [`error`]: the errors an operator sees.
pub mod backend_tls_policy;
pub mod cluster;
pub mod error;
pub mod gateway;
pub mod grpc_route;
pub mod http_route;
pub mod intern;
pub mod istio;
pub mod l4_route;
pub mod labels;
pub mod log_format;
pub mod object;
pub mod reference_grant;
pub mod validate;

pub use error::{ConfigError, FieldError};
pub use labels::Labels;
pub use object::{Kind, Object, ObjectKey};
