//! `--tls-cert`/`--tls-key` for the HTTP server: a server outside the mesh that
//! speaks HTTPS, as the hosts a mesh reaches through egress do. Each answer
//! says what the handshake was (the server name asked for, the protocol
//! agreed, whether a client certificate came), so a test can see what TLS a
//! proxy started towards it.

use std::{path::Path, sync::Arc};

use anyhow::{Context as _, Result, bail};
use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, server::TlsStream};

/// What a connection's handshake was; every request on it carries a copy.
#[derive(Clone, Debug, Serialize)]
pub struct Session {
    pub sni: Option<String>,
    pub alpn: Option<String>,
    pub client_certificate: bool,
}

#[derive(Clone)]
pub struct ServerTls {
    acceptor: TlsAcceptor,
}

impl ServerTls {
    /// A certificate chain and key (PEM files); with `client_ca`, a client
    /// certificate from that authority is required.
    pub fn load(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<ServerTls> {
        let chain = certificates(cert)?;
        let key = PrivateKeyDer::from_pem_file(key)
            .with_context(|| format!("reading the TLS key {}", key.display()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()?;
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for root in certificates(ca)? {
                    roots.add(root)?;
                }
                builder.with_client_cert_verifier(
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()?,
                )
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .context("the TLS certificate and key do not go together")?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(ServerTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    pub async fn accept(
        &self,
        stream: TcpStream,
    ) -> std::io::Result<(TlsStream<TcpStream>, Session)> {
        let tls = self.acceptor.accept(stream).await?;
        let (_, connection) = tls.get_ref();
        let session = Session {
            sni: connection.server_name().map(str::to_owned),
            alpn: connection
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
            client_certificate: connection.peer_certificates().is_some(),
        };
        Ok((tls, session))
    }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading certificates from {}", path.display()))?;
    if certificates.is_empty() {
        bail!("no PEM certificate in {}", path.display());
    }
    Ok(certificates)
}
