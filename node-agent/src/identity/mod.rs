//! The node agent's workload certificates: obtained from the mesh CA
//! ([`crate::ca`]) for the identities of the pods on this node, renewed
//! before they expire, and published for the proxies.
//!
//! ```text
//! let handle = identity::Manager::spawn(config);        // ClientConfig::from_args(&IdentityArgs)
//! handle.want(BTreeSet<Identity>);                       // whenever the node's pods change
//! let mut certs = handle.certificates();                 // watch::Receiver<Certificates>
//! certs.changed().await; certs.borrow().by_identity      // Identity -> Arc<config::Certificate>
//! ```
//!
//! [`Certificates`] holds, per identity, the proto `warren.config.v1`
//! `Certificate` (chain leaf first, PKCS#8 key, validity), ready to push
//! to ztunnel unchanged, and the trust bundle (`roots_pem`; old and new
//! roots during a rotation).
//!
//! For each wanted identity a fresh P-256 key and a CSR naming only the
//! identity are sent to the CA; the answer is checked (our key, our
//! identity, chains to the CA's roots) before it is published. Renewal is
//! at half the remaining lifetime ±10 %; failures are logged with the CA's
//! reason and retried with exponential backoff (0.5 s to 60 s) while the
//! current certificate stays in force until it expires. The trust bundle
//! comes with every answer and is fetched on its own every
//! `--trust-bundle-every`.
//!
//! - [`client`]: the CA's gRPC client (TLS, bearer token).
//! - [`csr`]: a key and a CSR for one identity.
//! - [`renew`]: the task that owns the certificates.
//! - [`describe`](describe()): what a chain says (`warrenctl certs`).

pub mod client;
pub mod csr;
mod describe;
pub mod renew;

pub use client::{CaClient, ClientConfig, ClientError};
pub use describe::{CertSummary, DescribeError, describe};
pub use renew::{Certificates, Handle, Manager};
