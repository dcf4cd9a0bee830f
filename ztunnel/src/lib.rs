//! Warren's ztunnel: the node-local L4 proxy (see README.md).
//!
//! - [`config`]: every knob, with its flag, environment variable and default.
//! - [`state`]: what ztunnel knows (workloads, services, policies, certificates), fed by
//!   [`subscription`] from the node agent's config stream.
//! - [`proxy`]: the data path (outbound capture, HBONE in and out, plaintext inbound).
//! - [`tls`], [`rbac`]: mTLS by SPIFFE identity and L4 authorization.
//! - [`dns`]: resolving endpoints known by name (ServiceEntry `resolution: DNS`).
//! - [`metrics`], [`admin`] (with [`explain`]), [`readiness`], [`drain`]: operating it.
//! - [`app`]: binding the listeners and starting it all, for the binary and tests;
//!   [`handover`]: taking a node over from a running ztunnel without losing a connection.

pub mod admin;
pub mod app;
pub mod config;
pub mod dns;
pub mod drain;
pub mod explain;
pub mod handover;
pub mod http_endpoint;
pub mod limits;
pub mod malloc;
pub mod metrics;
pub mod process;
pub mod proxy;
pub mod rbac;
pub mod readiness;
pub mod state;
pub mod subscription;
pub mod tls;

pub use app::{Addresses, Ztunnel};
pub use config::Config;
