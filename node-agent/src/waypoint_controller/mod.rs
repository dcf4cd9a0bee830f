//! The waypoint controller (`warren-node-agent waypoint-controller`): on a
//! cluster, turns each Gateway of a waypoint class into a ServiceAccount and
//! a Deployment of `warren-waypoint`, and reports back in the Gateway's
//! status. In local mode the node agent runs waypoints itself
//! ([`crate::waypoints`]); this is what replaces that on Kubernetes.
//!
//! One cluster-wide instance is enough (it only writes objects). It is a
//! kube-rs [`Controller`]: it reconciles a Gateway when it changes, when a
//! Deployment it owns changes (its pods became ready), and every
//! [`RESYNC`] in case something it made was deleted by hand. Objects are
//! server-side applied, so a reconcile that finds nothing to change writes
//! nothing, and fields set by others (an autoscaler's replicas excepted)
//! are left alone.
//!
//! Gateways are watched as untyped objects and parsed one by one: a
//! Gateway of another controller's class may carry fields Warren's model
//! refuses, and it must not stop the watch for the others.

mod policy_status;
pub mod render;
pub mod route_status;

#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt as _;
use k8s_openapi::{
    api::{apps::v1::Deployment, core::v1::ServiceAccount},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, Patch, PatchParams},
    runtime::{
        Controller,
        controller::{Action, Error as ControllerError},
        watcher,
    },
};
use serde_json::json;
use tracing::{debug, info, warn};

use self::render::{FIELD_MANAGER, MANAGED_BY_LABEL, Outcome, RenderError, Settings};
use crate::model::gateway::{self, Gateway, GatewayStatus, WAYPOINT_CLASSES};

/// How often a deployed Gateway is reconciled without any change seen.
pub const RESYNC: Duration = Duration::from_secs(300);
/// First retry after a failed reconcile; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error("Gateway {gateway}: applying its {kind}: {source}")]
    Apply {
        gateway: String,
        kind: &'static str,
        source: kube::Error,
    },
    #[error("Gateway {gateway}: writing its status: {source}")]
    Status {
        gateway: String,
        source: kube::Error,
    },
}

/// What every reconcile shares.
pub struct Context {
    client: Client,
    settings: Settings,
    /// Failed reconciles in a row, by `namespace/name`: the retry backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(client: Client, settings: Settings) -> Self {
        Self {
            client,
            settings,
            failures: Mutex::default(),
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        // A panic elsewhere while holding it leaves counters only: usable.
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The Gateway kind as the API server serves it.
pub fn gateway_resource() -> ApiResource {
    ApiResource::erase::<Gateway>(&())
}

/// Runs the controller until `shutdown` resolves. Watches Gateways in
/// `namespace`, or in every namespace.
pub async fn run(
    client: Client,
    settings: Settings,
    status: route_status::Settings,
    namespace: Option<&str>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let resource = gateway_resource();
    let (gateways, deployments) = match namespace {
        Some(ns) => (
            Api::<DynamicObject>::namespaced_with(client.clone(), ns, &resource),
            Api::<Deployment>::namespaced(client.clone(), ns),
        ),
        None => (
            Api::<DynamicObject>::all_with(client.clone(), &resource),
            Api::<Deployment>::all(client.clone()),
        ),
    };
    // Only the Deployments this controller made: their metadata is enough
    // to find the owning Gateway.
    let owned = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={FIELD_MANAGER}"));
    info!(
        namespace = namespace.unwrap_or("(all)"),
        image = %settings.image,
        "waypoint controller starting"
    );
    // Route status is cluster-wide: routes name Services of their own
    // namespace, but grants come from any.
    let statuses = tokio::spawn(route_status::run(client.clone(), status));
    let context = Arc::new(Context::new(client, settings));
    Controller::new_with(gateways, watcher::Config::default(), resource)
        .owns(deployments, owned)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            match result {
                Ok((gateway, action)) => debug!(%gateway, ?action, "reconciled"),
                // Logged with its backoff by `error_policy`.
                Err(ControllerError::ReconcilerFailed(..)) => {}
                // A reconcile queued for a Gateway deleted meanwhile.
                Err(ControllerError::ObjectNotFound(gateway)) => {
                    debug!(%gateway, "gone before its reconcile")
                }
                // Watch errors (RBAC, the CRD not installed) are retried
                // by the watcher with its own backoff.
                Err(err) => warn!(error = %err, "waypoint controller watch"),
            }
        })
        .await;
    statuses.abort();
    info!("waypoint controller stopped");
}

/// The waypoint class of an untyped Gateway, if it has one.
fn waypoint_class(object: &DynamicObject) -> Option<&str> {
    object
        .data
        .pointer("/spec/gatewayClassName")
        .and_then(serde_json::Value::as_str)
        .filter(|class| WAYPOINT_CLASSES.contains(class))
}

/// Reads an untyped Gateway as Warren's model, with the field at fault
/// when it does not fit, then validates it.
fn parse(object: &DynamicObject) -> Result<Gateway, String> {
    let value = serde_json::to_value(object).map_err(|err| err.to_string())?;
    let gateway: Gateway = serde_path_to_error::deserialize(value)
        .map_err(|err| format!("{}: {}", err.path(), err.inner()))?;
    let errors = gateway::validate(&gateway);
    if errors.is_empty() {
        Ok(gateway)
    } else {
        Err(errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "))
    }
}

/// Makes one Gateway's waypoint what the Gateway asks for.
pub async fn reconcile(
    object: Arc<DynamicObject>,
    context: Arc<Context>,
) -> Result<Action, ReconcileError> {
    // Another controller's Gateway: not ours to deploy or to report on.
    if waypoint_class(&object).is_none() {
        return Ok(Action::await_change());
    }
    // Being deleted: the garbage collector removes what it owns.
    if object.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let result = deploy(&object, &context).await;
    if result.is_ok() {
        context
            .failures()
            .remove(&render::display_name(&object.metadata));
    }
    result
}

async fn deploy(object: &DynamicObject, context: &Context) -> Result<Action, ReconcileError> {
    let gateway_name = render::display_name(&object.metadata);
    let refused = |reason: String| {
        warn!(gateway = %gateway_name, %reason, "waypoint Gateway refused");
        write_status(context, object, Outcome::Invalid(reason))
    };
    let gateway = match parse(object) {
        Ok(gateway) => gateway,
        Err(reason) => {
            refused(reason).await?;
            return Ok(Action::await_change());
        }
    };
    let waypoint = match render::render(&gateway, &context.settings) {
        Ok(waypoint) => waypoint,
        // The operator's to fix: retrying would change nothing.
        Err(err) if err.is_invalid_gateway() => {
            refused(err.to_string()).await?;
            return Ok(Action::await_change());
        }
        Err(err) => return Err(err.into()),
    };
    let namespace = gateway.metadata.namespace.as_deref().unwrap_or_default();
    let name = gateway.metadata.name.as_deref().unwrap_or_default();
    // Forced: these fields are the controller's; an edit by hand is undone.
    let params = PatchParams::apply(FIELD_MANAGER).force();

    Api::<ServiceAccount>::namespaced(context.client.clone(), namespace)
        .patch(name, &params, &Patch::Apply(&waypoint.service_account))
        .await
        .map_err(|source| ReconcileError::Apply {
            gateway: gateway_name.clone(),
            kind: "ServiceAccount",
            source,
        })?;
    let deployment = Api::<Deployment>::namespaced(context.client.clone(), namespace)
        .patch(name, &params, &Patch::Apply(&waypoint.deployment))
        .await
        .map_err(|source| ReconcileError::Apply {
            gateway: gateway_name.clone(),
            kind: "Deployment",
            source,
        })?;
    let ready_replicas = deployment
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    debug!(gateway = %gateway_name, ready_replicas, "waypoint applied");
    write_status(context, object, Outcome::Deployed { ready_replicas }).await?;
    Ok(Action::requeue(RESYNC))
}

/// Writes the Gateway's status for `outcome`, unless it says so already
/// (each write is a Gateway change, so writing always would loop).
async fn write_status(
    context: &Context,
    object: &DynamicObject,
    outcome: Outcome,
) -> Result<(), ReconcileError> {
    // Read leniently: another writer's odd status must not block ours.
    let previous: Option<GatewayStatus> = object
        .data
        .get("status")
        .and_then(|s| serde_json::from_value(s.clone()).ok());
    let status = render::status(
        previous.as_ref(),
        object.metadata.generation,
        &outcome,
        Timestamp::now(),
    );
    if previous.as_ref() == Some(&status) {
        return Ok(());
    }
    let gateway_name = render::display_name(&object.metadata);
    let namespace = object.metadata.namespace.as_deref().unwrap_or_default();
    let name = object.metadata.name.as_deref().unwrap_or_default();
    let resource = gateway_resource();
    let patch = json!({
        "apiVersion": resource.api_version,
        "kind": resource.kind,
        "metadata": { "name": name, "namespace": namespace },
        "status": status,
    });
    Api::<DynamicObject>::namespaced_with(context.client.clone(), namespace, &resource)
        .patch_status(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(|source| ReconcileError::Status {
            gateway: gateway_name.clone(),
            source,
        })?;
    info!(gateway = %gateway_name, ?outcome, "Gateway status written");
    Ok(())
}

/// A failed reconcile is retried after a delay that doubles with each
/// failure in a row (an API server in trouble is not hammered).
pub fn error_policy(
    object: Arc<DynamicObject>,
    error: &ReconcileError,
    context: Arc<Context>,
) -> Action {
    let name = render::display_name(&object.metadata);
    let failures = {
        let mut failures = context.failures();
        let count = failures.entry(name).or_insert(0);
        *count = count.saturating_add(1);
        *count
    };
    let delay = backoff(failures);
    warn!(error = %error, failures, retry_in = ?delay, "waypoint reconcile failed");
    Action::requeue(delay)
}

/// The retry delay after `failures` failures in a row.
fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    MIN_BACKOFF.saturating_mul(1 << exponent).min(MAX_BACKOFF)
}
