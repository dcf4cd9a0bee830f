//! The CA served in-process over TLS on loopback, with a local config
//! folder saying which pods run on which node: a node agent obtains the
//! identity of its own pod, and every other request is refused with the
//! code and reason an operator would need; the renewal task replaces a
//! short-lived certificate before it expires; a restart keeps the root; a
//! rotation keeps serving.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use tempfile::TempDir;
use tokio::time::{Instant, sleep, timeout};
use tonic::{
    Code, Request,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};
use warren_api::{
    Identity,
    ca::{SignRequest, certificate_authority_client::CertificateAuthorityClient},
};
use warren_node_agent::{
    ca::{
        material,
        server::{self, RunningCa},
        tokens::Tokens,
        x509::{self, Usage},
    },
    config::{CaServeArgs, CaStateArgs},
    identity::{self, CaClient, ClientConfig, ClientError, Manager},
};

const PODS: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: demo
  labels: { warren.io/dataplane-mode: ambient }
---
apiVersion: v1
kind: Pod
metadata: { name: web-1, namespace: demo }
spec:
  nodeName: node-a
  serviceAccountName: web
  containers: [{ name: web, image: web }]
status: { hostIP: 10.0.0.1 }
---
apiVersion: v1
kind: Pod
metadata: { name: db-1, namespace: demo }
spec:
  nodeName: node-b
  serviceAccountName: db
  containers: [{ name: db, image: db }]
status: { hostIP: 10.0.0.2 }
"#;

fn web() -> Identity {
    Identity::new("cluster.local", "demo", "web")
}

fn db() -> Identity {
    Identity::new("cluster.local", "demo", "db")
}

/// A state folder, a config folder, and the CA's flags over them.
struct Setup {
    state: TempDir,
    _config: TempDir,
    args: CaServeArgs,
}

impl Setup {
    fn new(max_ttl: Duration) -> Self {
        let state = tempfile::tempdir().unwrap();
        let config = tempfile::tempdir().unwrap();
        std::fs::write(config.path().join("pods.yaml"), PODS).unwrap();
        let args = CaServeArgs {
            state: CaStateArgs {
                state_dir: state.path().to_owned(),
            },
            listen: "127.0.0.1:0".parse().unwrap(),
            sans: vec![],
            trust_domain: "cluster.local".into(),
            default_ttl: max_ttl,
            max_ttl,
            cert_file: None,
            key_file: None,
            chain_file: None,
            root_file: None,
            config_dir: Some(config.path().to_owned()),
            kube: false,
            node_agent_accounts: vec![],
            token_audiences: vec![],
            rescan_every: Duration::from_secs(1),
            reload_every: Duration::from_millis(100),
            report_every: Duration::from_secs(60),
        };
        Self {
            state,
            _config: config,
            args,
        }
    }

    fn state_dir(&self) -> &Path {
        self.state.path()
    }

    fn bundle_file(&self) -> PathBuf {
        self.state_dir().join(material::BUNDLE_FILE)
    }

    /// A token file for `node`, valid for `ttl`.
    fn token_file(&self, node: &str, ttl: Duration) -> PathBuf {
        let token = Tokens::new(self.state_dir())
            .issue(node, ttl, SystemTime::now())
            .unwrap();
        let path = self
            .state_dir()
            .join(format!("{node}-{}.token", ttl.as_secs()));
        std::fs::write(&path, token).unwrap();
        path
    }

    fn client_config(&self, ca: &RunningCa, token_file: PathBuf, ttl: Duration) -> ClientConfig {
        ClientConfig {
            addr: format!("https://{}", ca.addr()),
            root_file: self.bundle_file(),
            token_file,
            server_name: "warren-ca".into(),
            ttl,
            trust_bundle_every: Duration::from_secs(60),
        }
    }

    /// A raw client, to send what a well-behaved agent would not.
    async fn raw_client(&self, ca: &RunningCa) -> CertificateAuthorityClient<Channel> {
        let roots = std::fs::read(self.bundle_file()).unwrap();
        let channel = Endpoint::from_shared(format!("https://{}", ca.addr()))
            .unwrap()
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(roots))
                    .domain_name("warren-ca"),
            )
            .unwrap()
            .connect()
            .await
            .unwrap();
        CertificateAuthorityClient::new(channel)
    }
}

fn request(identity: &Identity, csr_for: &Identity, token: Option<&str>) -> Request<SignRequest> {
    let mut request = Request::new(SignRequest {
        csr_pem: identity::csr::generate(csr_for).unwrap().csr_pem,
        identity: identity.to_string(),
        ttl_seconds: 0,
    });
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

/// Signs until the CA has read its config folder (it answers Unavailable
/// before), then returns the answer.
async fn sign_when_synced(
    client: &mut CaClient,
    identity: &Identity,
) -> Result<warren_api::ca::SignResponse, ClientError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let csr = identity::csr::generate(identity).unwrap().csr_pem;
        match client.sign(csr, identity).await {
            Err(ClientError::Status(status))
                if status.code() == Code::Unavailable && Instant::now() < deadline =>
            {
                sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

fn chain_verifies(chain_pem: &[String], roots_pem: &[String]) -> Result<(), String> {
    let chain = x509::certs_from_pem(&chain_pem.concat()).unwrap();
    let roots = x509::certs_from_pem(&roots_pem.concat()).unwrap();
    x509::verify_chain(
        &chain,
        &roots,
        time::OffsetDateTime::now_utc(),
        Usage::Client,
    )
}

#[tokio::test]
async fn a_node_obtains_its_own_pods_identity_and_nothing_else() {
    let setup = Setup::new(Duration::from_secs(24 * 3600));
    let ca = server::start(&setup.args).await.unwrap();
    let token_a = setup.token_file("node-a", Duration::from_secs(3600));
    let mut client = CaClient::new(setup.client_config(&ca, token_a.clone(), Duration::ZERO));

    let answer = sign_when_synced(&mut client, &web()).await.unwrap();
    chain_verifies(&answer.chain_pem, &answer.roots_pem).unwrap();
    let summary = identity::describe(&answer.chain_pem).unwrap();
    assert_eq!(summary.uris, ["spiffe://cluster.local/ns/demo/sa/web"]);
    assert_eq!(answer.not_after, summary.not_after.unix_timestamp());
    assert_eq!(
        answer.roots_pem.concat(),
        std::fs::read_to_string(setup.bundle_file()).unwrap()
    );

    let token = std::fs::read_to_string(&token_a).unwrap();
    let mut raw = setup.raw_client(&ca).await;
    let refused = |result: Result<_, tonic::Status>| result.map(|_| ()).unwrap_err();

    // A pod on another node.
    let status = refused(raw.sign(request(&db(), &db(), Some(&token))).await);
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status
            .message()
            .contains("node node-a may not obtain spiffe://cluster.local/ns/demo/sa/db")
            && status
                .message()
                .contains("no pod on node node-a runs as service account demo/db"),
        "{status:?}"
    );

    // No token, a forged one, an expired one.
    let status = refused(raw.sign(request(&web(), &web(), None)).await);
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("no bearer token"), "{status:?}");
    let forged = format!("warren-bootstrap-{}", "0".repeat(64));
    let status = refused(raw.sign(request(&web(), &web(), Some(&forged))).await);
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("unknown token"), "{status:?}");
    let expired = std::fs::read_to_string(setup.token_file("node-a", Duration::ZERO)).unwrap();
    let status = refused(raw.sign(request(&web(), &web(), Some(&expired))).await);
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("token of node node-a expired"),
        "{status:?}"
    );

    // A CSR for another identity than the one asked for.
    let status = refused(raw.sign(request(&web(), &db(), Some(&token))).await);
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("names URI:spiffe://cluster.local/ns/demo/sa/db, not the requested identity spiffe://cluster.local/ns/demo/sa/web"),
        "{status:?}"
    );

    // An identity in another trust domain.
    let other = Identity::new("other.domain", "demo", "web");
    let status = refused(raw.sign(request(&other, &other, Some(&token))).await);
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("trust domain"), "{status:?}");

    // A request past the size limit is refused before it is decoded.
    let mut huge = request(&web(), &web(), Some(&token));
    huge.get_mut().csr_pem = "A".repeat(server::MAX_REQUEST_BYTES + 1);
    let status = refused(raw.sign(huge).await);
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");

    let counters = ca.counters();
    assert_eq!(counters.issued, 1, "{counters}");
    for reason in [
        "identity_not_on_node",
        "no_token",
        "bad_token",
        "expired_token",
        "csr_san_mismatch",
        "wrong_trust_domain",
    ] {
        assert_eq!(counters.refused(reason), 1, "{reason}: {counters}");
    }
    ca.shutdown().await.unwrap();
}

#[tokio::test]
async fn clients_verify_the_ca_against_the_root_file() {
    let setup = Setup::new(Duration::from_secs(3600));
    let ca = server::start(&setup.args).await.unwrap();
    // Roots of another CA: the handshake must fail.
    let stranger = tempfile::tempdir().unwrap();
    material::Material::load_or_create(stranger.path(), time::OffsetDateTime::now_utc()).unwrap();
    let mut config = setup.client_config(
        &ca,
        setup.token_file("node-a", Duration::from_secs(60)),
        Duration::ZERO,
    );
    config.root_file = stranger.path().join(material::BUNDLE_FILE);
    let mut client = CaClient::new(config);
    let err = client
        .sign(identity::csr::generate(&web()).unwrap().csr_pem, &web())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Status(s) if s.code() == Code::Unavailable),
        "{err}"
    );
    assert_eq!(ca.counters().issued, 0);
    ca.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_manager_renews_before_expiry_and_drops_what_is_not_wanted() {
    let setup = Setup::new(Duration::from_secs(6));
    let ca = server::start(&setup.args).await.unwrap();
    let token_a = setup.token_file("node-a", Duration::from_secs(3600));
    let handle = Manager::spawn(setup.client_config(&ca, token_a, Duration::from_secs(6)));
    let mut certs = handle.certificates();
    // db runs on node B: refused and retried, never published.
    handle.want(BTreeSet::from([web(), db()]));

    let first = timeout(Duration::from_secs(15), async {
        loop {
            certs.changed().await.unwrap();
            if let Some(cert) = certs.borrow_and_update().by_identity.get(&web()) {
                return cert.clone();
            }
        }
    })
    .await
    .expect("a first certificate");
    let first_serial = identity::describe(&first.chain_pem).unwrap().serial;
    assert!(first.private_key_pem.contains("PRIVATE KEY"));
    assert_eq!(first.identity, web().to_string());

    let renewed = timeout(Duration::from_secs(10), async {
        loop {
            certs.changed().await.unwrap();
            let current = certs.borrow_and_update().clone();
            let cert = current.by_identity.get(&web()).cloned();
            if let Some(cert) = cert
                && identity::describe(&cert.chain_pem).unwrap().serial != first_serial
            {
                return (cert, current);
            }
        }
    })
    .await
    .expect("a renewed certificate");
    let (second, published) = renewed;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        now < first.not_after,
        "renewed at {now}, after the first expired at {}",
        first.not_after
    );
    assert!(second.not_after >= first.not_after);
    assert_ne!(second.private_key_pem, first.private_key_pem, "a fresh key");
    chain_verifies(&second.chain_pem, &published.roots_pem).unwrap();
    assert!(!published.by_identity.contains_key(&db()));
    assert!(ca.counters().refused("identity_not_on_node") >= 1);

    handle.want(BTreeSet::new());
    timeout(Duration::from_secs(5), async {
        while !certs.borrow_and_update().by_identity.is_empty() {
            certs.changed().await.unwrap();
        }
    })
    .await
    .expect("certificates dropped");
    ca.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_restart_keeps_the_root_and_a_rotation_keeps_serving() {
    let setup = Setup::new(Duration::from_secs(3600));
    let token_a = setup.token_file("node-a", Duration::from_secs(3600));
    let ca = server::start(&setup.args).await.unwrap();
    let root_serial = ca.signer_serial();
    let mut client = CaClient::new(setup.client_config(&ca, token_a.clone(), Duration::ZERO));
    let before = sign_when_synced(&mut client, &web()).await.unwrap();
    ca.shutdown().await.unwrap();

    // Same state folder: same root; earlier certificates still verify.
    let ca = server::start(&setup.args).await.unwrap();
    assert_eq!(ca.signer_serial(), root_serial);
    assert_eq!(ca.roots_pem(), before.roots_pem);
    let mut client = CaClient::new(setup.client_config(&ca, token_a.clone(), Duration::ZERO));
    let after = sign_when_synced(&mut client, &web()).await.unwrap();
    assert_eq!(after.roots_pem, before.roots_pem);
    chain_verifies(&before.chain_pem, &after.roots_pem).unwrap();

    // Rotate while serving: the CA picks the new root up, serves with a
    // certificate from it, and the bundle holds both roots.
    let rotated =
        material::rotate_root(setup.state_dir(), time::OffsetDateTime::now_utc()).unwrap();
    timeout(Duration::from_secs(10), async {
        while ca.signer_serial() != rotated.new_serial {
            sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the CA follows the rotation");
    let rotated_answer = timeout(Duration::from_secs(10), async {
        loop {
            match client
                .sign(identity::csr::generate(&web()).unwrap().csr_pem, &web())
                .await
            {
                Ok(answer) => return answer,
                // The listener restarts with its new certificate.
                Err(_) => sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await
    .expect("signing after the rotation");
    assert_eq!(rotated_answer.roots_pem.len(), 2);
    assert_eq!(rotated_answer.roots_pem, rotated.bundle);
    let new_root = &rotated_answer.roots_pem[..1];
    chain_verifies(&rotated_answer.chain_pem, new_root).unwrap();
    assert!(chain_verifies(&before.chain_pem, new_root).is_err());
    chain_verifies(&before.chain_pem, &rotated_answer.roots_pem).unwrap();
    ca.shutdown().await.unwrap();
}
