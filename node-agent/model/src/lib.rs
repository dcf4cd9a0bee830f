//! The configuration model: Kubernetes and Istio objects, typed and
//! validated, whichever source they came from.
//!
//! - [`object`]: the kinds Warren reads, parsing and keys.
//! - [`istio`]: Istio's networking and security API types.
//! - [`gateway`]: the Gateway API's Gateway, which asks for a waypoint.
//! - [`validate`]: per-kind checks, each error naming field path and reason.
//! - [`error`]: the errors an operator sees.
pub mod error;
pub mod gateway;
pub mod istio;
pub mod object;
pub mod validate;

pub use error::{ConfigError, FieldError};
pub use object::{Kind, Object, ObjectKey};
