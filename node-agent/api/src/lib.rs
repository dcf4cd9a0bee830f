//! Warren's control-plane API, shared by every component.
//!
//! - [`config`]: what the node agent streams to the proxies on its node
//!   (the per-node view), and [`subscribe`], the client side of that stream
//!   that ztunnel and waypoints run.
//! - [`ca`]: the mesh certificate authority's signing service.
//! - [`ext_authz`]: Envoy's external authorization API, for CUSTOM policies.
//! - [`handover`]: what a ztunnel hand-over needs of the node.
//! - [`identity`]: SPIFFE identities as every component names them.
//! - [`key`]: how resources of the per-node view are addressed.
//! - [`locality`]: where a workload runs (region/zone/subzone).

pub mod addr;
pub mod handover;
pub mod identity;
pub mod key;
pub mod locality;
pub mod socket;
pub mod subscribe;

/// Generated from `proto/warren/config/v1/config.proto`.
// `Resource.kind` is as large as a Workload. The view keeps resources
// encoded and proxies turn them into their own types at once, so a decoded
// Resource is short-lived and boxing its variants would buy nothing.
#[allow(clippy::large_enum_variant)]
pub mod config {
    tonic::include_proto!("warren.config.v1");

    // A Secret's key must not reach a log line or a test's failure message:
    // the parts by their size.
    impl std::fmt::Debug for Credential {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Credential")
                .field("name", &self.name)
                .field("namespace", &self.namespace)
                .field("certificate_chain_bytes", &self.certificate_chain.len())
                .field("private_key_bytes", &self.private_key.len())
                .field("ca_certificates_bytes", &self.ca_certificates.len())
                .field("ca_crl_bytes", &self.ca_crl.len())
                .finish()
        }
    }
}

/// Generated from `proto/warren/ca/v1/ca.proto`.
pub mod ca {
    tonic::include_proto!("warren.ca.v1");
}

/// OTLP's trace export (the subset a waypoint sends, with OTLP's field
/// numbers), for tracing providers of kind `opentelemetry`.
pub mod otlp {
    pub use self::opentelemetry::proto::{
        collector::trace::v1 as collector, common::v1 as common, resource::v1 as resource,
        trace::v1 as trace,
    };

    pub mod opentelemetry {
        pub mod proto {
            pub mod collector {
                pub mod trace {
                    pub mod v1 {
                        tonic::include_proto!("opentelemetry.proto.collector.trace.v1");
                    }
                }
            }
            pub mod common {
                pub mod v1 {
                    tonic::include_proto!("opentelemetry.proto.common.v1");
                }
            }
            pub mod resource {
                pub mod v1 {
                    tonic::include_proto!("opentelemetry.proto.resource.v1");
                }
            }
            pub mod trace {
                pub mod v1 {
                    tonic::include_proto!("opentelemetry.proto.trace.v1");
                }
            }
        }
    }
}

/// Envoy's external authorization API, which waypoints speak to the
/// providers of CUSTOM AuthorizationPolicies (`proto/envoy`, the parts
/// Warren uses, with Envoy's field numbers).
pub mod ext_authz {
    pub use self::envoy::service::auth::v3::*;

    pub mod envoy {
        pub mod config {
            pub mod core {
                pub mod v3 {
                    tonic::include_proto!("envoy.config.core.v3");
                }
            }
        }
        pub mod r#type {
            pub mod v3 {
                tonic::include_proto!("envoy.r#type.v3");
            }
        }
        pub mod service {
            pub mod auth {
                pub mod v3 {
                    tonic::include_proto!("envoy.service.auth.v3");
                }
            }
        }
    }

    pub mod google {
        pub mod rpc {
            tonic::include_proto!("google.rpc");
        }
    }
}

pub use identity::Identity;
pub use locality::Locality;
