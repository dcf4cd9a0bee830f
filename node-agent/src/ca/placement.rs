//! Which identities a node may obtain: those of the pods scheduled on it.
//! A node agent speaks for its node only, so a compromised node cannot
//! obtain the identities of workloads that never ran there.
//!
//! - Local mode: the CA's own configuration [`Store`], fed by the folder
//!   source (the same Pods the node agents read).
//! - Kubernetes: a list of the namespace's pods on that node (field
//!   selector `spec.nodeName`) at each request. Asking the API server
//!   rather than a watch means a pod scheduled a moment ago is found; the
//!   node agent's own watch may well be ahead of any cache the CA keeps.
//!
//! A pod counts if it runs as the identity's ServiceAccount (none given:
//! `default`) and has not finished (phase Succeeded or Failed).

use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::ListParams};
use tonic::Code;
use warren_api::Identity;

use crate::{
    model::{self, Kind, Object},
    store::Store,
};

#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    #[error(
        "node {node} may not obtain {identity}: no pod on node {node} runs as service account {namespace}/{service_account}"
    )]
    NotOnNode {
        node: String,
        identity: String,
        namespace: String,
        service_account: String,
    },
    #[error("the CA has not read its configuration yet; retry")]
    NotSynced,
    #[error("listing the pods of node {node}: {reason}")]
    Lookup { node: String, reason: String },
}

impl PlacementError {
    pub fn reason(&self) -> &'static str {
        match self {
            PlacementError::NotOnNode { .. } => "identity_not_on_node",
            PlacementError::NotSynced => "not_synced",
            PlacementError::Lookup { .. } => "pod_lookup_failed",
        }
    }

    pub fn code(&self) -> Code {
        match self {
            PlacementError::NotOnNode { .. } => Code::PermissionDenied,
            PlacementError::NotSynced | PlacementError::Lookup { .. } => Code::Unavailable,
        }
    }
}

/// Where the CA learns which pods run where.
#[derive(Clone)]
pub enum Placement {
    Store(Arc<RwLock<Store>>),
    Kube(kube::Client),
}

impl Placement {
    /// Ok if a pod on `node` runs as `identity`.
    pub async fn check(&self, node: &str, identity: &Identity) -> Result<(), PlacementError> {
        let found = match self {
            Placement::Store(store) => {
                let store = store.read().map_err(|_| PlacementError::Lookup {
                    node: node.to_owned(),
                    reason: "the configuration store is poisoned".into(),
                })?;
                if !store.synced() {
                    return Err(PlacementError::NotSynced);
                }
                store.of_kind(Kind::Pod).any(|object| match object {
                    Object::Pod(pod) => runs_as(pod, node, identity),
                    _ => false,
                })
            }
            Placement::Kube(client) => {
                let api: Api<Pod> = Api::namespaced(client.clone(), &identity.namespace);
                let params = ListParams::default().fields(&format!("spec.nodeName={node}"));
                let pods = api
                    .list(&params)
                    .await
                    .map_err(|e| PlacementError::Lookup {
                        node: node.to_owned(),
                        reason: e.to_string(),
                    })?;
                pods.items
                    .into_iter()
                    .any(|pod| runs_as(&model::cluster::Pod::from(pod), node, identity))
            }
        };
        if found {
            Ok(())
        } else {
            Err(PlacementError::NotOnNode {
                node: node.to_owned(),
                identity: identity.to_string(),
                namespace: identity.namespace.clone(),
                service_account: identity.service_account.clone(),
            })
        }
    }
}

/// The pod is on `node`, still running or about to, as `identity`.
fn runs_as(pod: &model::cluster::Pod, node: &str, identity: &Identity) -> bool {
    pod.node_name.as_deref() == Some(node)
        && !pod.finished()
        && *pod.namespace == identity.namespace
        && pod.service_account() == identity.service_account
}
