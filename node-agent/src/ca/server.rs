//! Running the CA: load the signing material, serve the gRPC service over
//! TLS, follow rotations, log what happened.
//!
//! The serving certificate is issued from the CA's own signer at start
//! (DNS `warren-ca`, the listen address, `--san`s), so clients verify the
//! CA with the trust bundle file alone. The signing material is re-read
//! every `--reload-every`: after a `rotate-root` (or new plug-in files) the
//! new signer takes over and the listener restarts with a serving
//! certificate from it, without dropping the listening socket.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, RwLock},
    time::Duration,
};

use futures::StreamExt as _;
use time::OffsetDateTime;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tonic::transport::{Server, ServerTlsConfig};
use tracing::{error, info, warn};
use warren_api::ca::certificate_authority_server::CertificateAuthorityServer;

use super::{
    CaError,
    authn::{Authenticator, TokenReviewer},
    authority::{Authority, Policy},
    counters::{Counters, Snapshot},
    material::{self, Material, PluginFiles},
    placement::Placement,
    root_store::RootStore,
    service::{CaService, SharedAuthority},
    tokens::Tokens,
};
use crate::{
    config::{CaSecretArgs, CaServeArgs},
    source::local::LocalSource,
    store::Store,
};

/// Largest gRPC message the CA decodes: a CSR is a few hundred bytes.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bounds a request, a TokenReview or pod list included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the signing material comes from.
#[derive(Clone, Debug)]
enum Origin {
    SelfManaged(RootStore),
    Plugin(PluginFiles),
}

impl Origin {
    fn of(args: &CaServeArgs, secret: &CaSecretArgs, client: Option<kube::Client>) -> Self {
        match (&args.cert_file, &args.key_file, &args.root_file) {
            (Some(cert), Some(key), Some(roots)) => Origin::Plugin(PluginFiles {
                cert: cert.clone(),
                key: key.clone(),
                chain: args.chain_file.clone(),
                roots: roots.clone(),
            }),
            _ => Origin::SelfManaged(RootStore::of(&args.state.state_dir, secret, client)),
        }
    }

    async fn load(&self, now: OffsetDateTime) -> Result<Material, CaError> {
        Ok(match self {
            Origin::SelfManaged(store) => material::load(store, now).await?,
            Origin::Plugin(files) => Material::load_plugin(files, now)?,
        })
    }
}

/// A CA serving in the background.
pub struct RunningCa {
    addr: SocketAddr,
    counters: Arc<Counters>,
    authority: SharedAuthority,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), CaError>>,
}

impl RunningCa {
    /// Where it listens (the port is known even for `:0`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn counters(&self) -> Snapshot {
        self.counters.snapshot()
    }

    /// Serial of the certificate the CA signs with now.
    pub fn signer_serial(&self) -> String {
        self.authority
            .read()
            .map(|a| a.material().signer_serial())
            .unwrap_or_default()
    }

    /// The trust bundle served now.
    pub fn roots_pem(&self) -> Vec<String> {
        self.authority
            .read()
            .map(|a| a.roots_pem())
            .unwrap_or_default()
    }

    /// Stops serving and waits for the listener to close.
    pub async fn shutdown(self) -> Result<(), CaError> {
        let _ = self.stop.send(true);
        self.task.await.map_err(|e| CaError::Task(e.to_string()))?
    }

    /// Waits until the CA stops on its own (an error).
    pub async fn wait(&mut self) -> Result<(), CaError> {
        (&mut self.task)
            .await
            .map_err(|e| CaError::Task(e.to_string()))?
    }
}

/// [`start_with`] the default Secret settings.
pub async fn start(args: &CaServeArgs) -> Result<RunningCa, CaError> {
    start_with(args, &CaSecretArgs::default()).await
}

/// Loads (or creates) the signing material, binds the listener and serves
/// in the background. Logs `ca ready` once it accepts connections.
pub async fn start_with(args: &CaServeArgs, secret: &CaSecretArgs) -> Result<RunningCa, CaError> {
    // tonic's TLS acceptor asks rustls for the process-wide provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let now = OffsetDateTime::now_utc();
    let state_dir = args.state.state_dir.clone();
    // With --kube the root lives in a Secret, so the client comes first.
    let client = if args.kube {
        Some(kube::Client::try_default().await.map_err(CaError::Kube)?)
    } else {
        None
    };
    let origin = Origin::of(args, secret, client.clone());
    let material = match &origin {
        Origin::SelfManaged(store) => {
            let (material, created) = material::load_or_create(store, now).await?;
            if created {
                info!(
                    %store,
                    serial = material.signer_serial(),
                    "generated a new mesh root"
                );
            }
            material
        }
        Origin::Plugin(files) => Material::load_plugin(files, now)?,
    };
    let policy = Policy {
        trust_domain: args.trust_domain.clone(),
        default_ttl: args.default_ttl,
        max_ttl: args.max_ttl,
    };
    let authority = Authority::new(material, policy.clone(), now).map_err(CaError::Authority)?;
    write_bundle(&state_dir, &authority.roots_pem())?;

    let counters = Arc::new(Counters::default());
    let (authn, placement) = if let Some(client) = client {
        let reviewer = TokenReviewer::new(
            client.clone(),
            args.node_agent_accounts.clone(),
            args.token_audiences.clone(),
        )
        .with_counters(Arc::clone(&counters));
        (Authenticator::Kube(reviewer), Placement::Kube(client))
    } else if let Some(dir) = &args.config_dir {
        let store = Arc::new(RwLock::new(Store::default()));
        spawn_store(
            LocalSource::new(dir, args.rescan_every.max(Duration::from_millis(100))),
            Arc::clone(&store),
        );
        (
            Authenticator::Bootstrap(Tokens::new(&state_dir)),
            Placement::Store(store),
        )
    } else {
        return Err(CaError::NoPlacement);
    };

    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|source| CaError::Listen {
            addr: args.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| CaError::Listen {
        addr: args.listen,
        source,
    })?;
    let authority: SharedAuthority = Arc::new(RwLock::new(Arc::new(authority)));
    let (stop, stopped) = watch::channel(false);
    let (changed_tx, changed_rx) = mpsc::channel(1);
    tokio::spawn(reload(
        origin,
        policy,
        state_dir,
        Arc::clone(&authority),
        args.reload_every.max(Duration::from_millis(100)),
        changed_tx,
        stopped.clone(),
    ));
    tokio::spawn(report(
        Arc::clone(&counters),
        args.report_every.max(Duration::from_secs(1)),
        stopped.clone(),
    ));
    let serving = Serving {
        listener: Arc::new(listener),
        authority: Arc::clone(&authority),
        authn,
        placement,
        counters: Arc::clone(&counters),
        sans: args.sans.clone(),
    };
    {
        let current = read(&authority)?;
        info!(
            listen = %addr,
            trust_domain = current.policy().trust_domain,
            signer_serial = current.material().signer_serial(),
            root_fingerprint = current.material().root_fingerprint(),
            roots = current.material().roots().len(),
            "ca ready"
        );
    }
    let task = tokio::spawn(serving.run(stopped, changed_rx));
    Ok(RunningCa {
        addr,
        counters,
        authority,
        stop,
        task,
    })
}

fn read(authority: &SharedAuthority) -> Result<Arc<Authority>, CaError> {
    authority
        .read()
        .map(|a| Arc::clone(&a))
        .map_err(|_| CaError::Task("the signing state is poisoned".into()))
}

fn write_bundle(state_dir: &std::path::Path, roots_pem: &[String]) -> Result<(), CaError> {
    match material::write_bundle(state_dir, roots_pem) {
        Ok(true) => {
            info!(path = %state_dir.join(material::BUNDLE_FILE).display(), roots = roots_pem.len(), "trust bundle written");
            Ok(())
        }
        Ok(false) => Ok(()),
        Err(source) => Err(CaError::Bundle {
            path: state_dir.join(material::BUNDLE_FILE),
            source,
        }),
    }
}

/// Feeds the CA's store from a config source (local mode).
fn spawn_store(source: LocalSource, store: Arc<RwLock<Store>>) {
    let (tx, mut rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        if let Err(err) = source.run(tx).await {
            error!(error = %format!("{err:#}"), "the CA's config source stopped");
        }
    });
    tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            match store.write() {
                Ok(mut store) => {
                    store.apply(event);
                }
                Err(_) => return,
            }
        }
    });
}

/// The listener and what each incarnation of the server needs.
struct Serving {
    listener: Arc<TcpListener>,
    authority: SharedAuthority,
    authn: Authenticator,
    placement: Placement,
    counters: Arc<Counters>,
    sans: Vec<String>,
}

impl Serving {
    /// Serves until stopped; starts over with a fresh serving certificate
    /// each time the signer changes.
    async fn run(
        self,
        mut stopped: watch::Receiver<bool>,
        mut changed: mpsc::Receiver<()>,
    ) -> Result<(), CaError> {
        loop {
            let authority = read(&self.authority)?;
            let listen_ip = self
                .listener
                .local_addr()
                .map(|a| a.ip())
                .map_err(|source| CaError::Listen {
                    addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                    source,
                })?;
            let (chain, key) = authority
                .serving_identity(listen_ip, &self.sans, OffsetDateTime::now_utc())
                .map_err(CaError::Serving)?;
            let tls = ServerTlsConfig::new()
                .identity(tonic::transport::Identity::from_pem(chain.concat(), key))
                // A peer that opens a connection and never finishes the
                // handshake must not hold resources for long.
                .timeout(HANDSHAKE_TIMEOUT);
            let service = CertificateAuthorityServer::new(CaService::new(
                Arc::clone(&self.authority),
                self.authn.clone(),
                self.placement.clone(),
                Arc::clone(&self.counters),
            ))
            .max_decoding_message_size(MAX_REQUEST_BYTES);
            let incoming = accept_stream(Arc::clone(&self.listener));
            let mut restart = false;
            let signal = async {
                tokio::select! {
                    _ = stopped.wait_for(|s| *s) => {}
                    Some(()) = changed.recv() => restart = true,
                }
            };
            Server::builder()
                .timeout(REQUEST_TIMEOUT)
                .tls_config(tls)
                .map_err(CaError::Tls)?
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, signal)
                .await
                .map_err(CaError::Serve)?;
            if !restart {
                return Ok(());
            }
            info!("serving certificate re-issued from the new signer");
        }
    }
}

/// Connections from a listener shared by successive servers. Errors such
/// as running out of descriptors are logged and retried, not fatal.
fn accept_stream(
    listener: Arc<TcpListener>,
) -> impl futures::Stream<Item = Result<TcpStream, std::io::Error>> {
    futures::stream::unfold(listener, |listener| async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    return Some((Ok(stream), listener));
                }
                Err(err) => {
                    warn!(error = %err, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
    .boxed()
}

/// Re-reads the signing material; swaps the authority when it changed.
async fn reload(
    origin: Origin,
    policy: Policy,
    state_dir: PathBuf,
    authority: SharedAuthority,
    every: Duration,
    changed: mpsc::Sender<()>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        let now = OffsetDateTime::now_utc();
        let material = match origin.load(now).await {
            Ok(material) => material,
            Err(err) => {
                // A half-done rotation, or an operator mid-copy: the
                // current material stays in force.
                warn!(error = %err, "re-reading the signing material; keeping the current one");
                continue;
            }
        };
        let Ok(current) = read(&authority) else {
            return;
        };
        if current.material().same_as(&material) {
            continue;
        }
        let next = match Authority::new(material, policy.clone(), now) {
            Ok(next) => next,
            Err(err) => {
                warn!(error = %err, "new signing material refused; keeping the current one");
                continue;
            }
        };
        let signer_changed = next.material().signer_serial() != current.material().signer_serial();
        info!(
            signer_serial = next.material().signer_serial(),
            root_fingerprint = next.material().root_fingerprint(),
            roots = next.material().roots().len(),
            "signing material reloaded"
        );
        if let Err(err) = write_bundle(&state_dir, &next.roots_pem()) {
            warn!(error = %err, "writing the trust bundle");
        }
        match authority.write() {
            Ok(mut slot) => *slot = Arc::new(next),
            Err(_) => return,
        }
        if signer_changed {
            let _ = changed.try_send(());
        }
    }
}

/// Logs the counters when they changed.
async fn report(counters: Arc<Counters>, every: Duration, mut stopped: watch::Receiver<bool>) {
    let mut last = Snapshot::default();
    let mut ticker = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        let now = counters.snapshot();
        if now != last {
            info!(counters = %now, "ca");
            last = now;
        }
    }
}
