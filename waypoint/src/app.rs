//! Starting the waypoint: bind the listeners, share one [`Context`] with
//! every request, and stop with a drain. The binary and the tests start it
//! the same way.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use tokio::net::TcpListener;
use tracing::info;
use warren_api::Identity;
use warren_ztunnel::{
    admin::{self, LogControl},
    drain,
    http_endpoint::{self, text},
    metrics::Metrics as L4Metrics,
    proxy::{Inputs, accept_loop, hbone::server},
    state::{Service, State},
};

use crate::{
    config::Config,
    metrics::Metrics,
    proxy::{Waypoint, connect::Connector, keepalive::KeepAlive, multiplex::Multiplexed},
    tables::Tables,
    upstream::Cluster,
};

pub type Body = BoxBody<Bytes, crate::proxy::replay::BoxError>;

/// What an upstream cluster is: a destination host, subset and port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClusterKey {
    pub host: String,
    pub subset: Option<String>,
    /// The destination's `port`, else the port the request came in on.
    pub port: u16,
    /// Whether the destination named its port: where it did not, a service
    /// with a single port is reached on that one (Istio: a destination of
    /// such a service needs none), whatever port the request came in on.
    pub port_named: bool,
}

impl ClusterKey {
    /// For a destination of `host` and `subset` on `port`, or, without one,
    /// on `incoming`, the request's.
    pub fn new(host: &str, subset: Option<&str>, port: Option<u16>, incoming: u16) -> Self {
        ClusterKey {
            host: host.to_owned(),
            subset: subset.map(str::to_owned),
            port: port.unwrap_or(incoming),
            port_named: port.is_some(),
        }
    }
}

/// What every request shares.
pub struct Context {
    pub config: Arc<Config>,
    pub inputs: Arc<Inputs>,
    pub tables: Arc<Tables>,
    pub metrics: Metrics,
    /// Live upstream clusters with the routing generation they were built
    /// for (load balancer, pool and outlier state live here).
    pub clusters: Mutex<HashMap<ClusterKey, (u64, Arc<Cluster>)>>,
    pub http1: Arc<KeepAlive>,
    pub http2: Arc<Multiplexed>,
    /// Upstream connections for TCP routes (the HTTP pools own theirs).
    pub connector: Connector,
    /// The waypoint's own place (locality-aware balancing) and the state
    /// generation it was found for.
    pub proximity: Mutex<Option<(u64, Option<crate::upstream::Proximity>)>>,
    /// What endpoints known by name resolved to.
    pub names: crate::proxy::names::Names,
    /// Sampled spans on their way to their collectors.
    pub spans: crate::proxy::spans::Spans,
}

impl Context {
    /// A pod addressed directly (at `ip`, on `port`) whose traffic goes
    /// through this waypoint, as the Service of its own it is served as
    /// ([`Service::of_pod`]); `None` for an address of no such pod.
    pub fn pod_destination(&self, ip: IpAddr, port: u16) -> Option<Arc<Service>> {
        let me = self.identity();
        crate::proxy::destination::pod(&self.inputs.state, ip, port)
            .filter(|s| crate::proxy::serves(s, &me))
    }

    /// Nothing under this lock panics on input: a poisoned lock is a bug
    /// the panic already reported, and the map is still sound.
    pub fn lock_clusters(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<ClusterKey, (u64, Arc<Cluster>)>> {
        self.clusters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The waypoint's own identity, in the mesh's trust domain.
    pub fn identity(&self) -> Identity {
        identity(&self.inputs.state, &self.config)
    }

    /// The live upstream clusters, for the admin endpoint `/clusters`.
    /// Clusters are rebuilt by the next request after a change; the dump
    /// brings each up to date first, so it shows what that request would
    /// get, and drops those whose service or subset is gone.
    pub fn dump_clusters(&self) -> serde_json::Value {
        let compiled = self.tables.current();
        let seen: Vec<(ClusterKey, Arc<Cluster>)> = self
            .lock_clusters()
            .iter()
            .map(|(key, (_, cluster))| (key.clone(), Arc::clone(cluster)))
            .collect();
        for (key, before) in seen {
            if self.cluster(&compiled, &key).is_err() {
                // Gone from the config; unless a request rebuilt it since.
                let mut clusters = self.lock_clusters();
                if clusters
                    .get(&key)
                    .is_some_and(|(_, now)| Arc::ptr_eq(now, &before))
                {
                    clusters.remove(&key);
                }
            }
        }
        let now = std::time::Instant::now();
        let clusters = self.lock_clusters();
        let mut live: Vec<(&ClusterKey, &Arc<Cluster>)> = clusters
            .iter()
            .map(|(key, (_, cluster))| (key, cluster))
            .collect();
        live.sort_by(|(a, _), (b, _)| {
            (&a.host, &a.subset, a.port).cmp(&(&b.host, &b.subset, b.port))
        });
        let dump: Vec<serde_json::Value> = live
            .into_iter()
            .map(|(key, cluster)| {
                let mut entry = cluster.dump(now);
                entry["host"] = key.host.clone().into();
                entry["subset"] = key.subset.clone().into();
                entry["port"] = key.port.into();
                entry
            })
            .collect();
        serde_json::json!({
            "clusters": dump,
            "http1_idle_connections": self.http1.idle(),
            "http2_endpoints": self.http2.len(),
            "http2_connections": self.http2.connections(),
        })
    }
}

fn identity(state: &State, config: &Config) -> Identity {
    Identity::new(
        &state.mesh().trust_domain,
        &config.namespace,
        &config.service_account,
    )
}

pub struct Addresses {
    pub hbone: SocketAddr,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
    pub readiness: SocketAddr,
}

pub struct App {
    pub addresses: Addresses,
    pub context: Arc<Context>,
    trigger: drain::Trigger,
    quit: Arc<admin::Quit>,
    /// The span exporter, flushed once the requests are done.
    spans: tokio::task::JoinHandle<()>,
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {what} listener to {addr}"))
}

impl App {
    pub async fn start(
        config: Config,
        state: Arc<State>,
        tables: Arc<Tables>,
        log: Option<LogControl>,
    ) -> anyhow::Result<App> {
        let config = Arc::new(config);
        let proxy = Arc::new(config.proxy());
        let hbone = bind(config.hbone_addr, "HBONE").await?;
        let admin_listener = bind(config.admin_addr, "admin").await?;
        let metrics_listener = bind(config.metrics_addr, "metrics").await?;
        let readiness_listener = bind(config.readiness_addr, "readiness").await?;
        let addresses = Addresses {
            hbone: hbone.local_addr()?,
            admin: admin_listener.local_addr()?,
            metrics: metrics_listener.local_addr()?,
            readiness: readiness_listener.local_addr()?,
        };
        let l4_metrics = Arc::new(L4Metrics::new());
        let metrics = Metrics::register(&l4_metrics);
        let inputs = Inputs::new(proxy, Arc::clone(&state), Arc::clone(&l4_metrics));
        let connector = Connector {
            inputs: Arc::clone(&inputs),
            identity: {
                let state = Arc::clone(&state);
                let config = Arc::clone(&config);
                Arc::new(move || identity(&state, &config))
            },
        };
        let http1 = Arc::new(KeepAlive::new(connector.clone()));
        let http2 = Arc::new(Multiplexed::new(connector.clone()));
        let context = Arc::new(Context {
            config: Arc::clone(&config),
            inputs: Arc::clone(&inputs),
            tables,
            metrics,
            clusters: Mutex::new(HashMap::new()),
            http1,
            http2,
            connector,
            proximity: Mutex::new(None),
            names: Default::default(),
            spans: Default::default(),
        });
        let trigger = drain::Trigger::new();
        let spans = tokio::spawn(crate::proxy::spans::run(Arc::clone(&context)));
        let quit = Arc::new(admin::Quit::default());

        let handler = Waypoint(Arc::clone(&context));
        {
            let inputs = Arc::clone(&inputs);
            info!(addr = %addresses.hbone, "HBONE listener ready");
            tokio::spawn(accept_loop(
                hbone,
                trigger.watch(),
                "hbone",
                move |stream, peer, drain| {
                    server::serve(Arc::clone(&inputs), stream, peer, drain, handler.clone())
                },
            ));
        }
        tokio::spawn(inputs.pool.clone().run_eviction(trigger.watch()));
        tokio::spawn(crate::proxy::sweep_pools(
            trigger.watch(),
            Arc::clone(&context.tables),
            Arc::clone(&inputs.state),
            Arc::clone(&context.http1),
            Arc::clone(&context.http2),
        ));
        tokio::spawn(Arc::clone(&context.tables).watch_tls_files(trigger.watch()));
        // ztunnel's admin endpoints, and `/clusters`.
        let admin_handler: http_endpoint::Handler = {
            let l4 = admin::handler(
                Arc::clone(&inputs),
                log,
                Arc::clone(&quit),
                "warren-waypoint",
            );
            let context = Arc::clone(&context);
            Arc::new(move |request| match request.uri().path() {
                "/clusters" => {
                    let dump = context.dump_clusters();
                    Box::pin(async move { http_endpoint::json(&dump) })
                }
                "/explain" => {
                    let context = Arc::clone(&context);
                    let query = request.uri().query().map(str::to_owned);
                    Box::pin(
                        async move { crate::explain::answer(&context, query.as_deref()).await },
                    )
                }
                _ => l4(request),
            })
        };
        tokio::spawn(http_endpoint::serve(
            admin_listener,
            trigger.watch(),
            "admin",
            admin_handler,
        ));
        let metrics_handler: http_endpoint::Handler = Arc::new(move |request| {
            let l4_metrics = Arc::clone(&l4_metrics);
            Box::pin(async move {
                match request.uri().path() {
                    "/metrics" | "/stats/prometheus" => {
                        text(http::StatusCode::OK, l4_metrics.encode())
                    }
                    other => text(
                        http::StatusCode::NOT_FOUND,
                        format!("no endpoint {other}\n"),
                    ),
                }
            })
        });
        tokio::spawn(http_endpoint::serve(
            metrics_listener,
            trigger.watch(),
            "metrics",
            metrics_handler,
        ));
        let ready = {
            let state = Arc::clone(&state);
            let config = Arc::clone(&config);
            move || -> Result<(), String> {
                // Not `ready()`: the node's other workloads' keys never reach a
                // waypoint (another namespace's, or any when it runs off-node).
                state.configured()?;
                let me = identity(&state, &config);
                match state.certificate(&me) {
                    Some(_) => Ok(()),
                    None => Err(format!("no certificate yet for {me}")),
                }
            }
        };
        let readiness_handler: http_endpoint::Handler = {
            let ready = ready.clone();
            Arc::new(move |request| {
                let result = ready();
                Box::pin(async move {
                    match (request.uri().path(), result) {
                        ("/healthz/ready", Ok(())) => text(http::StatusCode::OK, "ready\n"),
                        ("/healthz/ready", Err(missing)) => text(
                            http::StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: {missing}\n"),
                        ),
                        (other, _) => text(
                            http::StatusCode::NOT_FOUND,
                            format!("no endpoint {other}\n"),
                        ),
                    }
                })
            })
        };
        tokio::spawn(http_endpoint::serve(
            readiness_listener,
            trigger.watch(),
            "readiness",
            readiness_handler,
        ));
        // The line tests and operators wait for.
        tokio::spawn(async move {
            let mut changes = state.changes();
            loop {
                if ready().is_ok() {
                    info!(identity = %identity(&state, &config), "waypoint ready");
                    return;
                }
                if changes.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(App {
            addresses,
            context,
            trigger,
            quit,
            spans,
        })
    }

    pub async fn quit_requested(&self) {
        self.quit.requested().await;
    }

    pub async fn drain(self) -> drain::Outcome {
        let timeout = self.context.config.drain_timeout;
        self.context.inputs.pool.clear();
        let outcome = self
            .trigger
            .drain(timeout, std::time::Duration::from_secs(1))
            .await;
        // The last requests' spans too: sent after them, within its bound.
        self.context.spans.flush();
        let _ = tokio::time::timeout(crate::proxy::spans::FLUSH, self.spans).await;
        outcome
    }
}
