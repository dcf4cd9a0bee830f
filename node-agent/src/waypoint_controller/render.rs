//! What a waypoint Gateway turns into on a cluster, as plain objects: its
//! ServiceAccount, its Deployment and the Gateway's status. No API calls
//! here, so every field is checked by unit tests; [`super`] applies them.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec},
        core::v1::{
            Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
            HostPathVolumeSource, ObjectFieldSelector, PodSpec, PodTemplateSpec, Probe,
            ResourceRequirements, SecurityContext, ServiceAccount, Volume, VolumeMount,
        },
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{Condition, LabelSelector, ObjectMeta, Time},
        util::intstr::IntOrString,
    },
    jiff::Timestamp,
};
use kube::Resource as _;

use crate::{
    enrollment::{DATAPLANE_LABELS, NONE},
    model::gateway::{GATEWAY_NAME_LABEL, Gateway, GatewayStatus, WAYPOINT_HBONE_PORT, condition},
};

/// The field manager of every object the controller applies.
pub const FIELD_MANAGER: &str = "warren-waypoint-controller";
/// Gateway annotation overriding the waypoint's replica count.
pub const REPLICAS_ANNOTATION: &str = "warren.io/replicas";
/// Replicas when the annotation is absent.
pub const DEFAULT_REPLICAS: i32 = 1;
/// The largest replica count the annotation may ask for: a typo such as
/// `100` for `10` should not fill a cluster with waypoints.
pub const MAX_REPLICAS: i32 = 50;
/// The waypoint container's name.
pub const CONTAINER: &str = "warren-waypoint";
/// The waypoint's Prometheus port (`warren-waypoint --metrics-addr`).
pub const METRICS_PORT: u16 = 15020;
/// The waypoint's readiness port and path (`warren-waypoint
/// --readiness-addr`, served by waypoint/src/app.rs).
pub const READINESS_PORT: u16 = 15021;
pub const READINESS_PATH: &str = "/healthz/ready";
/// Label naming the controller on what it creates (`kubectl get -l`).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The volume holding the node agent's socket.
const SOCKET_VOLUME: &str = "warren-agent";

/// How waypoints are deployed (from
/// [`crate::config::WaypointControllerArgs`]).
#[derive(Clone, Debug)]
pub struct Settings {
    /// The `warren-waypoint` image.
    pub image: String,
    /// The node agent's socket, on the node; the pod mounts its folder at
    /// the same path, so the flag means the same thing inside and out.
    pub agent_socket: PathBuf,
}

/// A waypoint Gateway's objects, ready to apply.
#[derive(Clone, Debug, PartialEq)]
pub struct Waypoint {
    pub service_account: ServiceAccount,
    pub deployment: Deployment,
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// Set by the API server on every stored object: missing only for an
    /// object that did not come from one.
    #[error("Gateway {gateway}: metadata.{field} is missing")]
    Missing {
        gateway: String,
        field: &'static str,
    },
    #[error(
        "Gateway {gateway}: annotation {REPLICAS_ANNOTATION}: {value:?} is not a replica count \
         (a whole number from 0 to {MAX_REPLICAS})"
    )]
    Replicas { gateway: String, value: String },
    #[error("agent socket {}: no folder to mount (give an absolute path)", path.display())]
    Socket { path: PathBuf },
}

impl RenderError {
    /// Whether the Gateway itself is wrong (the operator must change it),
    /// rather than the controller's setup: reported in the Gateway's
    /// status, and not retried until the Gateway changes.
    pub fn is_invalid_gateway(&self) -> bool {
        matches!(self, RenderError::Replicas { .. })
    }
}

/// `namespace/name` of an object, for messages.
pub fn display_name(meta: &ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or("?"),
        meta.name.as_deref().unwrap_or("?")
    )
}

/// The replica count the Gateway asks for: [`DEFAULT_REPLICAS`] unless its
/// [`REPLICAS_ANNOTATION`] says otherwise.
pub fn replicas(gateway: &Gateway) -> Result<i32, RenderError> {
    let Some(value) = gateway
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REPLICAS_ANNOTATION))
    else {
        return Ok(DEFAULT_REPLICAS);
    };
    value
        .trim()
        .parse::<i32>()
        .ok()
        .filter(|n| (0..=MAX_REPLICAS).contains(n))
        .ok_or_else(|| RenderError::Replicas {
            gateway: display_name(&gateway.metadata),
            value: value.clone(),
        })
}

/// The ServiceAccount and Deployment of a waypoint Gateway. Both are named
/// like the Gateway and owned by it, so deleting the Gateway removes them
/// (Kubernetes' garbage collector), and the waypoint's identity is
/// `ns/<namespace>/sa/<gateway name>`.
pub fn render(gateway: &Gateway, settings: &Settings) -> Result<Waypoint, RenderError> {
    let missing = |field| RenderError::Missing {
        gateway: display_name(&gateway.metadata),
        field,
    };
    let name = gateway
        .metadata
        .name
        .clone()
        .ok_or_else(|| missing("name"))?;
    let namespace = gateway
        .metadata
        .namespace
        .clone()
        .ok_or_else(|| missing("namespace"))?;
    // The owner reference needs the uid; `controller: true` marks the
    // Gateway as the one object in charge (kubectl shows it, GC follows it).
    // No `blockOwnerDeletion`: setting it needs update rights on
    // gateways/finalizers, and background deletion is all that is wanted.
    let owner = gateway
        .controller_owner_ref(&())
        .ok_or_else(|| missing("uid"))?;
    let replicas = replicas(gateway)?;
    let socket_dir = settings
        .agent_socket
        .parent()
        .filter(|dir| dir.is_absolute() && *dir != Path::new("/"))
        .ok_or_else(|| RenderError::Socket {
            path: settings.agent_socket.clone(),
        })?
        .to_string_lossy()
        .into_owned();

    let selector = BTreeMap::from([(GATEWAY_NAME_LABEL.to_owned(), name.clone())]);
    let mut labels = selector.clone();
    labels.insert(MANAGED_BY_LABEL.into(), FIELD_MANAGER.into());
    let mut pod_labels = labels.clone();
    // The waypoint is not captured: ztunnel sends it HBONE, and the
    // waypoint opens HBONE itself (capturing it would loop).
    pod_labels.insert(DATAPLANE_LABELS[0].into(), NONE.into());

    let meta = ObjectMeta {
        name: Some(name.clone()),
        namespace: Some(namespace.clone()),
        labels: Some(labels),
        owner_references: Some(vec![owner]),
        ..ObjectMeta::default()
    };
    let service_account = ServiceAccount {
        metadata: meta.clone(),
        ..ServiceAccount::default()
    };

    let port = |name: &str, port: u16| ContainerPort {
        name: Some(name.into()),
        container_port: i32::from(port),
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    };
    let container = Container {
        name: CONTAINER.into(),
        image: Some(settings.image.clone()),
        args: Some(vec![
            "--namespace".into(),
            namespace.clone(),
            "--gateway".into(),
            name.clone(),
            "--service-account".into(),
            name.clone(),
            "--agent-socket".into(),
            settings.agent_socket.to_string_lossy().into_owned(),
        ]),
        // The agent lists its subscribers by client id: the pod's name
        // tells replicas apart.
        env: Some(vec![EnvVar {
            name: "WARREN_WAYPOINT_CLIENT_ID".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".into(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        }]),
        ports: Some(vec![
            port("hbone", WAYPOINT_HBONE_PORT),
            port("metrics", METRICS_PORT),
            port("readiness", READINESS_PORT),
        ]),
        // Ready means subscribed to the agent with config and certificate:
        // only then may ztunnels be sent to it.
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some(READINESS_PATH.into()),
                port: IntOrString::Int(i32::from(READINESS_PORT)),
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(5),
            failure_threshold: Some(3),
            ..Probe::default()
        }),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), Quantity("100m".into())),
                ("memory".into(), Quantity("64Mi".into())),
            ])),
            ..ResourceRequirements::default()
        }),
        // The waypoint needs no privilege: its ports are above 1024 and it
        // writes nothing to disk. It runs as the image's user (root in
        // Warren's image) because the agent's socket is root's, mode 0600;
        // without capabilities root is only the socket's owner.
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: SOCKET_VOLUME.into(),
            mount_path: socket_dir.clone(),
            // Connecting to a Unix socket is allowed on a read-only mount;
            // the waypoint cannot remove or replace the agent's socket.
            read_only: Some(true),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    };
    let deployment = Deployment {
        metadata: meta,
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(name),
                    containers: vec![container],
                    // The folder, not the socket file: a restarted agent
                    // makes a new socket, which a file mount would not see.
                    volumes: Some(vec![Volume {
                        name: SOCKET_VOLUME.into(),
                        host_path: Some(HostPathVolumeSource {
                            path: socket_dir,
                            type_: Some("DirectoryOrCreate".into()),
                        }),
                        ..Volume::default()
                    }]),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    };
    Ok(Waypoint {
        service_account,
        deployment,
    })
}

/// How far the controller got with a Gateway.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The Gateway cannot be deployed as it is; the message says why.
    Invalid(String),
    /// Its Deployment is applied, with this many ready pods.
    Deployed { ready_replicas: i32 },
}

/// The status of a Gateway at `generation` for `outcome`. A condition
/// keeps the `lastTransitionTime` it has in `previous` while its status
/// stays the same: the time says when it last flipped, and an unchanged
/// status writes nothing.
pub fn status(
    previous: Option<&GatewayStatus>,
    generation: Option<i64>,
    outcome: &Outcome,
    now: Timestamp,
) -> GatewayStatus {
    let previous = previous
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let make = |type_: &str, ok: bool, reason: &str, message: String| {
        let status = if ok { "True" } else { "False" };
        let since = previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map_or_else(|| Time(now), |c| c.last_transition_time.clone());
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: generation,
            last_transition_time: since,
        }
    };
    let conditions = match outcome {
        Outcome::Invalid(message) => vec![
            make(
                condition::ACCEPTED,
                false,
                condition::REASON_INVALID,
                message.clone(),
            ),
            make(
                condition::PROGRAMMED,
                false,
                condition::REASON_INVALID,
                "not deployed: the Gateway is not accepted".into(),
            ),
        ],
        Outcome::Deployed { ready_replicas } => vec![
            make(
                condition::ACCEPTED,
                true,
                condition::REASON_ACCEPTED,
                "deployed by warren-waypoint-controller".into(),
            ),
            if *ready_replicas > 0 {
                make(
                    condition::PROGRAMMED,
                    true,
                    condition::REASON_PROGRAMMED,
                    format!("{ready_replicas} waypoint pod(s) ready"),
                )
            } else {
                make(
                    condition::PROGRAMMED,
                    false,
                    condition::REASON_PENDING,
                    "waiting for a ready waypoint pod".into(),
                )
            },
        ],
    };
    GatewayStatus {
        conditions,
        // Left out: ztunnels reach a waypoint by its pods' addresses, which
        // the node agents learn from the pods themselves.
        addresses: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            image: "warren/waypoint:dev".into(),
            agent_socket: warren_api::socket::DEFAULT_PATH.into(),
        }
    }

    fn gateway() -> Gateway {
        let mut gateway = Gateway::waypoint("demo", "waypoint");
        gateway.metadata.uid = Some("1234-uid".into());
        gateway.metadata.generation = Some(3);
        gateway
    }

    fn with_replicas(value: &str) -> Gateway {
        let mut gateway = gateway();
        gateway.metadata.annotations =
            Some(BTreeMap::from([(REPLICAS_ANNOTATION.into(), value.into())]));
        gateway
    }

    #[test]
    fn objects_are_named_like_the_gateway_and_owned_by_it() {
        let waypoint = render(&gateway(), &settings()).expect("renders");
        for meta in [
            &waypoint.service_account.metadata,
            &waypoint.deployment.metadata,
        ] {
            assert_eq!(meta.name.as_deref(), Some("waypoint"));
            assert_eq!(meta.namespace.as_deref(), Some("demo"));
            let owners = meta.owner_references.as_ref().expect("owner");
            assert_eq!(owners.len(), 1);
            let owner = &owners[0];
            assert_eq!(owner.api_version, "gateway.networking.k8s.io/v1");
            assert_eq!(owner.kind, "Gateway");
            assert_eq!(owner.name, "waypoint");
            assert_eq!(owner.uid, "1234-uid");
            assert_eq!(owner.controller, Some(true));
        }
    }

    #[test]
    fn the_pod_runs_the_waypoint_uncaptured_with_its_identity() {
        let deployment = render(&gateway(), &settings()).expect("renders").deployment;
        let spec = deployment.spec.expect("spec");
        assert_eq!(spec.replicas, Some(1));
        let selector = spec.selector.match_labels.expect("selector");
        assert_eq!(
            selector.get(GATEWAY_NAME_LABEL).map(String::as_str),
            Some("waypoint")
        );
        let labels = spec
            .template
            .metadata
            .and_then(|m| m.labels)
            .expect("labels");
        assert_eq!(
            labels.get(GATEWAY_NAME_LABEL).map(String::as_str),
            Some("waypoint")
        );
        assert_eq!(
            labels.get("warren.io/dataplane-mode").map(String::as_str),
            Some("none")
        );
        // The selector must select the template's pods.
        assert!(selector.iter().all(|(k, v)| labels.get(k) == Some(v)));

        let pod = spec.template.spec.expect("pod spec");
        assert_eq!(pod.service_account_name.as_deref(), Some("waypoint"));
        let [container] = pod.containers.as_slice() else {
            panic!("one container: {:?}", pod.containers);
        };
        assert_eq!(container.name, "warren-waypoint");
        assert_eq!(container.image.as_deref(), Some("warren/waypoint:dev"));
        assert_eq!(
            container.args.as_deref().expect("args"),
            [
                "--namespace",
                "demo",
                "--gateway",
                "waypoint",
                "--service-account",
                "waypoint",
                "--agent-socket",
                "/var/run/warren/agent.sock"
            ]
        );
        let ports: Vec<(Option<&str>, i32)> = container
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.as_deref(), p.container_port))
            .collect();
        assert_eq!(
            ports,
            [
                (Some("hbone"), 15008),
                (Some("metrics"), 15020),
                (Some("readiness"), 15021)
            ]
        );
        let probe = container
            .readiness_probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("http readiness probe");
        assert_eq!(probe.path.as_deref(), Some("/healthz/ready"));
        assert_eq!(probe.port, IntOrString::Int(15021));

        let security = container
            .security_context
            .as_ref()
            .expect("securityContext");
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(security.allow_privilege_escalation, Some(false));
        assert_eq!(
            security
                .capabilities
                .as_ref()
                .and_then(|c| c.drop.as_deref()),
            Some(&["ALL".to_owned()][..])
        );
        assert!(
            container
                .resources
                .as_ref()
                .is_some_and(|r| r.requests.is_some())
        );

        // The socket's folder is mounted from the node at the same path.
        let mount = &container.volume_mounts.as_ref().expect("mounts")[0];
        assert_eq!(mount.mount_path, "/var/run/warren");
        let volume = &pod.volumes.as_ref().expect("volumes")[0];
        assert_eq!(volume.name, mount.name);
        assert_eq!(
            volume.host_path.as_ref().map(|h| h.path.as_str()),
            Some("/var/run/warren")
        );
    }

    #[test]
    fn the_replicas_annotation_is_validated() {
        assert_eq!(replicas(&gateway()).expect("default"), 1);
        assert_eq!(replicas(&with_replicas("3")).expect("3"), 3);
        assert_eq!(replicas(&with_replicas("0")).expect("0"), 0);
        let deployment = render(&with_replicas("2"), &settings())
            .expect("renders")
            .deployment;
        assert_eq!(deployment.spec.and_then(|s| s.replicas), Some(2));
        for bad in ["", "-1", "two", "1.5", "51", "99999999999"] {
            let err = render(&with_replicas(bad), &settings()).expect_err(bad);
            assert!(err.is_invalid_gateway(), "{bad}: {err}");
            let text = err.to_string();
            assert!(
                text.contains("demo/waypoint") && text.contains(REPLICAS_ANNOTATION),
                "{text}"
            );
        }
    }

    #[test]
    fn a_gateway_not_from_the_api_server_is_refused() {
        let mut gateway = gateway();
        gateway.metadata.uid = None;
        let err = render(&gateway, &settings()).expect_err("no uid");
        assert!(!err.is_invalid_gateway());
        assert!(err.to_string().contains("metadata.uid"), "{err}");

        let relative = Settings {
            agent_socket: "agent.sock".into(),
            ..settings()
        };
        let err = render(&self::gateway(), &relative).expect_err("relative socket");
        assert!(matches!(err, RenderError::Socket { .. }), "{err}");
    }

    #[test]
    fn status_follows_the_deployment_and_keeps_transition_times() {
        let t0 = Timestamp::from_second(1_000).expect("time");
        let t1 = Timestamp::from_second(2_000).expect("time");
        let pending = status(None, Some(3), &Outcome::Deployed { ready_replicas: 0 }, t0);
        let by_type = |s: &GatewayStatus, t: &str| {
            s.conditions
                .iter()
                .find(|c| c.type_ == t)
                .cloned()
                .expect(t)
        };
        assert_eq!(by_type(&pending, "Accepted").status, "True");
        let programmed = by_type(&pending, "Programmed");
        assert_eq!(programmed.status, "False");
        assert_eq!(programmed.observed_generation, Some(3));

        // Nothing changed: the same status, so nothing to write.
        let previous = Some(&pending);
        assert_eq!(
            status(
                previous,
                Some(3),
                &Outcome::Deployed { ready_replicas: 0 },
                t1
            ),
            pending
        );

        let ready = status(
            previous,
            Some(3),
            &Outcome::Deployed { ready_replicas: 2 },
            t1,
        );
        assert_eq!(by_type(&ready, "Accepted").last_transition_time, Time(t0));
        let programmed = by_type(&ready, "Programmed");
        assert_eq!(programmed.status, "True");
        assert_eq!(programmed.last_transition_time, Time(t1));

        let invalid = status(previous, Some(3), &Outcome::Invalid("bad".into()), t1);
        let accepted = by_type(&invalid, "Accepted");
        assert_eq!(
            (accepted.status.as_str(), accepted.message.as_str()),
            ("False", "bad")
        );
        assert_eq!(accepted.reason, "Invalid");
    }
}
