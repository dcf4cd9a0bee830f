//! The mesh certificate authority (`warren-node-agent ca`): issues
//! short-lived X.509 SVIDs (`spiffe://<trust-domain>/ns/<ns>/sa/<sa>`) to
//! node agents, for the pods scheduled on their node.
//!
//! A request goes through, in order:
//! 1. [`authn`]: the bearer token names the caller's node (bootstrap token
//!    in local mode, TokenReview in Kubernetes);
//! 2. [`authority::Authority::identity`]: the identity parses and is in the
//!    CA's trust domain;
//! 3. [`placement`]: a pod on that node runs as that identity;
//! 4. [`csr`]: the CSR parses, its signature verifies, and its only name is
//!    the identity;
//! 5. [`authority`]: the leaf is signed with the CA's [`material`].
//!
//! [`service`] is the gRPC glue (with [`counters`] of refusals by reason),
//! [`server`] runs it over TLS and follows root rotations, [`tokens`] keeps
//! the bootstrap tokens, [`persist`] writes state files safely and
//! [`x509`] holds certificate helpers shared with [`crate::identity`].
//!
//! State folder (`--state-dir`): `signer.pem` (the self-managed root and
//! its key, mode 0600), `retired-roots.pem` (roots still trusted after a
//! rotation), `root-cert.pem` (the trust bundle clients read) and
//! `tokens/` (hashes of bootstrap tokens). With `--kube` the root lives in
//! a Secret instead ([`root_store`]); the bundle file is still written.

pub mod authn;
pub mod authority;
pub mod counters;
pub mod csr;
pub mod material;
pub mod persist;
pub mod placement;
pub mod review_cache;
pub mod root_store;
pub mod server;
pub mod service;
pub mod tokens;
pub mod x509;

use std::{io, net::SocketAddr, path::PathBuf, time::SystemTime};

use time::OffsetDateTime;
use tracing::info;

use crate::config::{CaArgs, CaCommand, CaSecretArgs, CaServeArgs, CaStateArgs};

/// Why the CA (or one of its commands) could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error(transparent)]
    Material(#[from] material::MaterialError),
    #[error("the signing material is not usable: {0}")]
    Authority(String),
    #[error(transparent)]
    Token(#[from] tokens::TokenError),
    #[error(
        "the CA needs --config-dir (local mode) or --kube to know which pods run on which node"
    )]
    NoPlacement,
    #[error("connecting to the Kubernetes API server (in-cluster or kubeconfig): {0}")]
    Kube(kube::Error),
    #[error("listening on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("writing the trust bundle {}: {source}", path.display())]
    Bundle { path: PathBuf, source: io::Error },
    #[error("issuing the CA's serving certificate: {0}")]
    Serving(authority::SignError),
    #[error("TLS configuration: {0}")]
    Tls(tonic::transport::Error),
    #[error("serving: {0}")]
    Serve(tonic::transport::Error),
    #[error("installing the signal handler: {0}")]
    Signal(io::Error),
    #[error("the CA stopped: {0}")]
    Task(String),
}

/// `warren-node-agent ca …`: serves, or runs one state-folder command.
pub async fn run(args: CaArgs) -> Result<(), CaError> {
    match args.command {
        None => serve(args.serve, args.secret).await,
        Some(CaCommand::IssueToken(args)) => {
            let token = tokens::Tokens::new(&args.state.state_dir).issue(
                &args.node,
                args.ttl,
                SystemTime::now(),
            )?;
            // The token alone on stdout, for scripts; the rest in the log.
            println!("{token}");
            info!(node = args.node, ttl = ?args.ttl, "bootstrap token issued");
            Ok(())
        }
        Some(CaCommand::RotateRoot(args)) => {
            let store = root_store(&args.state, &args.secret, args.kube).await?;
            let rotated = material::rotate_in(&store, OffsetDateTime::now_utc()).await?;
            println!(
                "new root {} (valid until {}); previous root {} stays trusted until removed",
                rotated.new_serial,
                rotated.new_not_after.date(),
                rotated.previous_serial.as_deref().unwrap_or("(none)"),
            );
            Ok(())
        }
        Some(CaCommand::RemoveRoot(args)) => {
            let store = root_store(&args.state, &args.secret, args.kube).await?;
            material::remove_in(&store, &args.serial, OffsetDateTime::now_utc()).await?;
            println!("root {} removed from the trust bundle", args.serial);
            Ok(())
        }
    }
}

/// Where `rotate-root` and `remove-root` find the root.
async fn root_store(
    state: &CaStateArgs,
    secret: &CaSecretArgs,
    kube: bool,
) -> Result<root_store::RootStore, CaError> {
    let client = if kube {
        Some(kube::Client::try_default().await.map_err(CaError::Kube)?)
    } else {
        None
    };
    Ok(root_store::RootStore::of(&state.state_dir, secret, client))
}

async fn serve(args: CaServeArgs, secret: CaSecretArgs) -> Result<(), CaError> {
    let mut ca = server::start_with(&args, &secret).await?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(CaError::Signal)?;
    tokio::select! {
        result = ca.wait() => return result,
        _ = tokio::signal::ctrl_c() => {}
        _ = sigterm.recv() => {}
    }
    info!("ca stopping");
    ca.shutdown().await
}

#[cfg(test)]
mod kube_tests;
#[cfg(test)]
mod tests;
