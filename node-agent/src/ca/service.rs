//! The `CertificateAuthority` gRPC service: authenticate the caller, check
//! the identity and that the caller's node runs it, check the CSR, sign.
//! Every refusal is a status whose message names the reason, a warning in
//! the log and a count under its reason.

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use time::OffsetDateTime;
use tonic::{Code, Request, Response, Status};
use tracing::{info, warn};
use warren_api::ca::{
    SignRequest, SignResponse, TrustBundleRequest, TrustBundleResponse,
    certificate_authority_server::CertificateAuthority,
};

use super::{
    authn::{self, Authenticator, Caller},
    authority::{Authority, SignError},
    counters::Counters,
    placement::Placement,
};

/// The authority in force; replaced as a whole when the signing material
/// changes (a root rotation), so a request sees one consistent signer.
pub type SharedAuthority = Arc<RwLock<Arc<Authority>>>;

pub struct CaService {
    authority: SharedAuthority,
    authn: Authenticator,
    placement: Placement,
    counters: Arc<Counters>,
}

impl CaService {
    pub fn new(
        authority: SharedAuthority,
        authn: Authenticator,
        placement: Placement,
        counters: Arc<Counters>,
    ) -> Self {
        Self {
            authority,
            authn,
            placement,
            counters,
        }
    }

    fn authority(&self) -> Result<Arc<Authority>, Status> {
        self.authority
            .read()
            .map(|a| Arc::clone(&a))
            .map_err(|_| Status::internal("the CA's signing state is poisoned"))
    }

    async fn authenticate<T>(&self, request: &Request<T>, rpc: &str) -> Result<Caller, Status> {
        let peer = request.remote_addr();
        let result = match authn::bearer(request.metadata()) {
            Ok(token) => self.authn.authenticate(token).await,
            Err(err) => Err(err),
        };
        result.map_err(|err| {
            self.counters.refused(err.reason());
            warn!(rpc, ?peer, reason = err.reason(), error = %err, "request refused");
            Status::new(err.code(), err.to_string())
        })
    }

    fn refuse(
        &self,
        caller: &Caller,
        identity: &str,
        reason: &'static str,
        code: Code,
        message: String,
    ) -> Status {
        self.counters.refused(reason);
        warn!(
            node = caller.node,
            caller = caller.principal,
            identity,
            reason,
            error = message,
            "signing refused"
        );
        Status::new(code, message)
    }
}

fn sign_code(err: &SignError) -> Code {
    match err {
        SignError::SignerExpired(_) => Code::FailedPrecondition,
        SignError::Signing(_) => Code::Internal,
        _ => Code::InvalidArgument,
    }
}

#[tonic::async_trait]
impl CertificateAuthority for CaService {
    async fn sign(&self, request: Request<SignRequest>) -> Result<Response<SignResponse>, Status> {
        let caller = self.authenticate(&request, "Sign").await?;
        let request = request.into_inner();
        let authority = self.authority()?;
        let identity = authority.identity(&request.identity).map_err(|err| {
            let code = sign_code(&err);
            self.refuse(
                &caller,
                &request.identity,
                err.reason(),
                code,
                err.to_string(),
            )
        })?;
        self.placement
            .check(&caller.node, &identity)
            .await
            .map_err(|err| {
                self.refuse(
                    &caller,
                    &request.identity,
                    err.reason(),
                    err.code(),
                    err.to_string(),
                )
            })?;
        let issued = authority
            .sign(
                &request.csr_pem,
                &identity,
                Duration::from_secs(request.ttl_seconds),
                OffsetDateTime::now_utc(),
            )
            .map_err(|err| {
                let code = sign_code(&err);
                self.refuse(
                    &caller,
                    &request.identity,
                    err.reason(),
                    code,
                    err.to_string(),
                )
            })?;
        self.counters.issued();
        info!(
            node = caller.node,
            identity = %identity,
            serial = issued.serial,
            not_after = %issued.not_after,
            "certificate issued"
        );
        Ok(Response::new(SignResponse {
            chain_pem: issued.chain_pem,
            not_before: issued.not_before.unix_timestamp(),
            not_after: issued.not_after.unix_timestamp(),
            roots_pem: authority.roots_pem(),
        }))
    }

    async fn trust_bundle(
        &self,
        request: Request<TrustBundleRequest>,
    ) -> Result<Response<TrustBundleResponse>, Status> {
        self.authenticate(&request, "TrustBundle").await?;
        Ok(Response::new(TrustBundleResponse {
            roots_pem: self.authority()?.roots_pem(),
        }))
    }
}
