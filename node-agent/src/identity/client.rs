//! The node agent's side of the CA's gRPC service: TLS to the CA (trusting
//! the roots in `--ca-root-file`) and the bearer token from
//! `--ca-token-file`. Both files are re-read: the root file whenever a
//! connection is made (so a rotated bundle is picked up), the token on
//! every request (projected ServiceAccount tokens are refreshed by the
//! kubelet).

use std::{path::PathBuf, time::Duration};

use tonic::{
    Request,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};
use warren_api::{
    Identity,
    ca::{
        SignRequest, SignResponse, TrustBundleRequest,
        certificate_authority_client::CertificateAuthorityClient,
    },
};

use crate::config::IdentityArgs;

/// How to reach the CA and what to ask it for.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// `https://host:port`.
    pub addr: String,
    pub root_file: PathBuf,
    pub token_file: PathBuf,
    /// Name the CA's serving certificate must carry.
    pub server_name: String,
    /// Lifetime requested for each certificate.
    pub ttl: Duration,
    /// How often the trust bundle is fetched between issuances.
    pub trust_bundle_every: Duration,
}

impl ClientConfig {
    /// None without `--ca-addr`: the agent runs without identities.
    pub fn from_args(args: &IdentityArgs) -> Result<Option<Self>, ClientError> {
        let Some(addr) = &args.ca_addr else {
            return Ok(None);
        };
        let missing = |flag: &str| ClientError::Config(format!("--ca-addr needs {flag}"));
        Ok(Some(Self {
            addr: if addr.contains("://") {
                addr.clone()
            } else {
                format!("https://{addr}")
            },
            root_file: args
                .ca_root_file
                .clone()
                .ok_or_else(|| missing("--ca-root-file"))?,
            token_file: args
                .ca_token_file
                .clone()
                .ok_or_else(|| missing("--ca-token-file"))?,
            server_name: args.ca_server_name.clone(),
            ttl: args.cert_ttl,
            trust_bundle_every: args.trust_bundle_every,
        }))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Config(String),
    #[error("reading {}: {source}", path.display())]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} holds no token", path.display())]
    EmptyToken { path: PathBuf },
    #[error("the CA address {addr:?}: {source}")]
    Endpoint {
        addr: String,
        source: tonic::transport::Error,
    },
    #[error("the CA refused: {}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
}

/// A connection to the CA, rebuilt when the root file changes.
pub struct CaClient {
    config: ClientConfig,
    connected: Option<(Vec<u8>, Channel)>,
}

impl CaClient {
    pub fn new(config: ClientConfig) -> Self {
        Self {
            config,
            connected: None,
        }
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    async fn client(&mut self) -> Result<CertificateAuthorityClient<Channel>, ClientError> {
        let roots = read(&self.config.root_file).await?;
        if let Some((known, channel)) = &self.connected
            && *known == roots
        {
            return Ok(CertificateAuthorityClient::new(channel.clone()));
        }
        let endpoint_err = |source| ClientError::Endpoint {
            addr: self.config.addr.clone(),
            source,
        };
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&roots))
            .domain_name(self.config.server_name.clone());
        let channel = Endpoint::from_shared(self.config.addr.clone())
            .map_err(endpoint_err)?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            .tls_config(tls)
            .map_err(endpoint_err)?
            .connect_lazy();
        self.connected = Some((roots, channel.clone()));
        Ok(CertificateAuthorityClient::new(channel))
    }

    async fn request<T>(&self, message: T) -> Result<Request<T>, ClientError> {
        let token = read(&self.config.token_file).await?;
        let token = String::from_utf8_lossy(&token).trim().to_owned();
        if token.is_empty() {
            return Err(ClientError::EmptyToken {
                path: self.config.token_file.clone(),
            });
        }
        let mut request = Request::new(message);
        let value = format!("Bearer {token}").parse().map_err(|_| {
            ClientError::Config("the token has characters not allowed in metadata".into())
        })?;
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }

    /// Asks the CA to sign `csr_pem` for `identity`.
    pub async fn sign(
        &mut self,
        csr_pem: String,
        identity: &Identity,
    ) -> Result<SignResponse, ClientError> {
        let request = self
            .request(SignRequest {
                csr_pem,
                identity: identity.to_string(),
                ttl_seconds: self.config.ttl.as_secs(),
            })
            .await?;
        Ok(self.client().await?.sign(request).await?.into_inner())
    }

    /// The roots the CA says to trust now.
    pub async fn trust_bundle(&mut self) -> Result<Vec<String>, ClientError> {
        let request = self.request(TrustBundleRequest {}).await?;
        Ok(self
            .client()
            .await?
            .trust_bundle(request)
            .await?
            .into_inner()
            .roots_pem)
    }
}

async fn read(path: &PathBuf) -> Result<Vec<u8>, ClientError> {
    tokio::fs::read(path)
        .await
        .map_err(|source| ClientError::File {
            path: path.clone(),
            source,
        })
}
