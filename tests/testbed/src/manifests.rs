//! The Kubernetes objects a cluster shows, written as YAML into its config
//! folder: what the API server would serve about the nodes, pods,
//! namespaces and services the testbed makes. The node agent's local config source reads
//! them exactly as it would read objects from a real cluster.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

use crate::cluster::{Node, Pod, Service};

/// Annotation carrying the pod's network namespace path.
pub const NETNS_ANNOTATION: &str = "warren.io/netns";
/// Annotation carrying the pod's cgroup v2 path.
pub const CGROUP_ANNOTATION: &str = "warren.io/cgroup";
/// Annotation naming the node-side end of the pod's veth.
pub const HOST_VETH_ANNOTATION: &str = "warren.io/host-veth";

/// File name of an object: `<kind>.<namespace>.<name>.yaml`.
fn file_name(kind: &str, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{}.{ns}.{name}.yaml", kind.to_lowercase()),
        None => format!("{}.{name}.yaml", kind.to_lowercase()),
    }
}

/// Writes `object` to `dir` atomically (a reader never sees half a file).
fn write(dir: &Path, file: String, object: &Value) -> Result<PathBuf> {
    let yaml = serde_yaml::to_string(object).context("encoding YAML")?;
    let path = dir.join(&file);
    let tmp = dir.join(format!(".{file}.tmp"));
    fs::write(&tmp, yaml).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(path)
}

/// Removes an object's file; a missing one is fine.
pub fn remove(dir: &Path, kind: &str, namespace: Option<&str>, name: &str) -> Result<()> {
    match fs::remove_file(dir.join(file_name(kind, namespace, name))) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err.into()),
        _ => Ok(()),
    }
}

pub fn write_namespace(
    dir: &Path,
    name: &str,
    labels: &BTreeMap<String, String>,
) -> Result<PathBuf> {
    let mut labels = labels.clone();
    labels.insert("kubernetes.io/metadata.name".into(), name.into());
    let object = json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": { "name": name, "labels": labels },
    });
    write(dir, file_name("Namespace", None, name), &object)
}

pub fn write_node(dir: &Path, name: &str, labels: &BTreeMap<String, String>) -> Result<PathBuf> {
    let mut labels = labels.clone();
    labels.insert("kubernetes.io/hostname".into(), name.into());
    let object = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "name": name, "labels": labels },
    });
    write(dir, file_name("Node", None, name), &object)
}

pub fn write_pod(dir: &Path, pod: &Pod, node: &Node) -> Result<PathBuf> {
    write_pod_as(dir, pod, node, true)
}

/// The Pod as the API server shows it while kubelet builds its sandbox: bound to
/// the node, no address yet (kubelet writes it once the CNI plugins have run).
pub fn write_starting_pod(dir: &Path, pod: &Pod, node: &Node) -> Result<PathBuf> {
    write_pod_as(dir, pod, node, false)
}

fn write_pod_as(dir: &Path, pod: &Pod, node: &Node, started: bool) -> Result<PathBuf> {
    // What only the testbed knows; a kubelet-shown pod is found by its UID.
    let annotations = if pod.kubelet {
        json!({})
    } else {
        json!({
            NETNS_ANNOTATION: pod.sandbox.netns,
            CGROUP_ANNOTATION: pod.sandbox.cgroup,
            HOST_VETH_ANNOTATION: pod.host_veth,
        })
    };
    let object = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod.name,
            "namespace": pod.namespace,
            "uid": pod.uid,
            "labels": pod.labels,
            "annotations": annotations,
        },
        "spec": {
            "nodeName": node.name,
            "serviceAccountName": pod.service_account,
            "containers": [{ "name": "main", "image": "warren-sample" }],
        },
        "status": if started {
            json!({
                "phase": "Running",
                "hostIP": node.ip,
                "podIP": pod.ip,
                "podIPs": [{ "ip": pod.ip }, { "ip": pod.ip6 }],
                "conditions": [{ "type": "Ready", "status": "True" }],
            })
        } else {
            json!({ "phase": "Pending", "hostIP": node.ip })
        },
    });
    write(
        dir,
        file_name("Pod", Some(&pod.namespace), &pod.name),
        &object,
    )
}

pub fn write_service(dir: &Path, svc: &Service) -> Result<PathBuf> {
    write_service_with(dir, svc, &json!({}))
}

/// [`write_service`] with more `spec` fields (`trafficDistribution`,
/// `internalTrafficPolicy`, …), which win over the testbed's.
pub fn write_service_with(dir: &Path, svc: &Service, extra_spec: &Value) -> Result<PathBuf> {
    let ports: Vec<Value> = svc
        .ports
        .iter()
        .map(|p| json!({ "name": p.name, "port": p.port, "targetPort": p.target_port, "protocol": "TCP" }))
        .collect();
    let mut object = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": svc.name, "namespace": svc.namespace, "labels": svc.labels },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": svc.cluster_ip,
            "clusterIPs": [svc.cluster_ip],
            "selector": svc.selector,
            "ports": ports,
        },
    });
    if let (Some(spec), Some(extra)) = (object["spec"].as_object_mut(), extra_spec.as_object()) {
        for (field, value) in extra {
            spec.insert(field.clone(), value.clone());
        }
    }
    write(
        dir,
        file_name("Service", Some(&svc.namespace), &svc.name),
        &object,
    )
}

/// The EndpointSlice of `svc` over the pods it selects, as the endpoint-slice
/// controller would write it.
pub fn write_endpoint_slice(dir: &Path, svc: &Service, pods: &[(&Pod, &Node)]) -> Result<PathBuf> {
    let name = format!("{}-warren", svc.name);
    let endpoints: Vec<Value> = pods
        .iter()
        .map(|(pod, node)| {
            json!({
                "addresses": [pod.ip],
                "conditions": { "ready": true, "serving": true, "terminating": false },
                "nodeName": node.name,
                "targetRef": { "kind": "Pod", "name": pod.name, "namespace": pod.namespace, "uid": pod.uid },
            })
        })
        .collect();
    let ports: Vec<Value> = svc
        .ports
        .iter()
        .map(|p| json!({ "name": p.name, "port": p.target_port, "protocol": "TCP" }))
        .collect();
    let object = json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": svc.namespace,
            "labels": { "kubernetes.io/service-name": svc.name },
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": ports,
    });
    write(
        dir,
        file_name("EndpointSlice", Some(&svc.namespace), &name),
        &object,
    )
}
