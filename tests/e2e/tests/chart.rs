//! The Helm chart (`helm/warren`) renders into objects the programs accept: every
//! container's arguments parse as the program parses them, the names and paths the
//! templates share agree (the CA trusts the agents' ServiceAccount, the agents mount
//! the CA's trust bundle and a token of the audience it requires, everyone finds the
//! agent's socket), every workload's ServiceAccount is bound to the rules it needs
//! (the node agent may read every kind it watches), and ztunnel can surge on a node
//! (no host ports, a readiness probe that asks its own process). Needs `helm`
//! (`cargo xtask setup` installs it).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};
use clap::Parser as _;
use serde::Deserialize as _;
use serde_yaml::Value;
use warren_node_agent::{
    ca::root_store::SECRET_BUNDLE,
    config::{Cli, Command as AgentCommand},
    source::kube::watched_resources,
    waypoint_controller::route_status,
};

const NAMESPACE: &str = "warren-system";

/// `helm lint` passes, and `helm template` gives these objects (`--set` each of `sets`).
fn render(sets: &[&str]) -> Result<Vec<Value>> {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../helm/warren");
    let helm = |args: &[&str]| -> Result<String> {
        let out = Command::new("helm")
            .args(args)
            .output()
            .context("running helm (cargo xtask setup installs it)")?;
        ensure!(
            out.status.success(),
            "helm {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    };
    let chart = chart.to_string_lossy();
    let sets: Vec<&str> = sets.iter().flat_map(|set| ["--set", set]).collect();
    helm(&[&["lint", "--strict", &chart][..], &sets].concat())?;
    let text = helm(
        &[
            &["template", "warren", &chart, "--namespace", NAMESPACE][..],
            &sets,
        ]
        .concat(),
    )?;
    let mut objects = Vec::new();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let value = Value::deserialize(document)?;
        if !value.is_null() {
            objects.push(value);
        }
    }
    Ok(objects)
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> Result<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .with_context(|| format!("no {kind} {name} in the rendered chart"))
}

fn text(value: &Value) -> Result<&str> {
    value
        .as_str()
        .with_context(|| format!("not a string: {value:?}"))
}

fn list(value: &Value) -> &[Value] {
    value.as_sequence().map_or(&[], Vec::as_slice)
}

/// A workload's one container, by name.
fn container<'a>(workload: &'a Value, name: &str) -> Result<&'a Value> {
    list(&workload["spec"]["template"]["spec"]["containers"])
        .iter()
        .find(|c| c["name"] == name)
        .with_context(|| format!("no container {name}"))
}

/// The container's arguments as the program gets them: `$(VAR)` expanded from its
/// environment, the downward API's fields given stand-in values.
fn args_of(container: &Value) -> Result<Vec<String>> {
    let mut env = BTreeMap::new();
    for var in list(&container["env"]) {
        let name = text(&var["name"])?.to_owned();
        let value = match (
            var["value"].as_str(),
            var["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        ) {
            (Some(value), _) => value.to_owned(),
            (None, Some("spec.nodeName")) => "node-1".to_owned(),
            (None, Some("status.hostIP")) => "10.0.0.7".to_owned(),
            (None, Some("metadata.name")) => "pod-1".to_owned(),
            (None, Some("metadata.namespace")) => NAMESPACE.to_owned(),
            other => bail!("env {name}: no stand-in for {other:?}"),
        };
        env.insert(name, value);
    }
    list(&container["args"])
        .iter()
        .map(|arg| {
            let mut arg = text(arg)?.to_owned();
            while let Some(start) = arg.find("$(") {
                let end = arg[start..].find(')').context("unclosed $(")? + start;
                let name = &arg[start + 2..end];
                let value = env
                    .get(name)
                    .with_context(|| format!("{arg}: no env {name} in the container"))?;
                arg.replace_range(start..=end, value);
            }
            Ok(arg)
        })
        .collect()
}

fn agent_cli(container: &Value) -> Result<AgentCommand> {
    let args = args_of(container)?;
    let cli =
        Cli::try_parse_from(std::iter::once("warren-node-agent".to_owned()).chain(args.clone()))
            .with_context(|| format!("warren-node-agent {}", args.join(" ")))?;
    Ok(cli.command)
}

/// The volume mounted at `dir` in the container, as the pod declares it.
fn volume_at<'a>(workload: &'a Value, container: &Value, dir: &Path) -> Result<&'a Value> {
    let mount = list(&container["volumeMounts"])
        .iter()
        .find(|m| m["mountPath"].as_str().map(Path::new) == Some(dir))
        .with_context(|| format!("nothing mounted at {}", dir.display()))?;
    list(&workload["spec"]["template"]["spec"]["volumes"])
        .iter()
        .find(|v| v["name"] == mount["name"])
        .with_context(|| format!("no volume {:?}", mount["name"]))
}

fn parent(path: &Path) -> Result<&Path> {
    path.parent()
        .with_context(|| format!("{} has no folder", path.display()))
}

#[test]
fn the_helm_chart_renders_what_the_programs_accept() -> Result<()> {
    let objects = render(&[])?;
    for object in &objects {
        let spec = &object["spec"]["template"]["spec"];
        // Every mount names a volume of its pod.
        for container in list(&spec["containers"]) {
            for mount in list(&container["volumeMounts"]) {
                ensure!(
                    list(&spec["volumes"])
                        .iter()
                        .any(|v| v["name"] == mount["name"]),
                    "{:?}: mount {:?} has no volume",
                    object["metadata"]["name"],
                    mount["name"]
                );
            }
        }
        // On the host network a containerPort is a host port: a surging successor
        // could not be scheduled beside the running pod.
        if spec["hostNetwork"] == true {
            for container in list(&spec["containers"]) {
                ensure!(
                    container["ports"].is_null(),
                    "{:?} declares ports on the host network",
                    object["metadata"]["name"]
                );
            }
        }
    }

    // The node agent.
    let agent = find(&objects, "DaemonSet", "warren-node-agent")?;
    let agent_container = container(agent, "node-agent")?;
    let AgentCommand::Run(run) = agent_cli(agent_container)? else {
        bail!("the node agent does not `run`");
    };
    ensure!(run.kube, "the node agent does not read the API server");
    let agent_spec = &agent["spec"]["template"]["spec"];
    ensure!(
        agent_spec["hostNetwork"] == true && agent_spec["hostPID"] == true,
        "the agent finds pods' namespaces in the host's /proc and must be in the node's own"
    );
    ensure!(
        agent_container["securityContext"]["privileged"] == true,
        "the agent loads eBPF programs"
    );

    // The CA trusts the agents' ServiceAccount, and the agents its root and audience.
    let ca = find(&objects, "Deployment", "warren-ca")?;
    let AgentCommand::Ca(ca_args) = agent_cli(container(ca, "ca")?)? else {
        bail!("the CA container does not run `ca`");
    };
    ensure!(ca_args.serve.kube, "the CA does not use TokenReview");
    let agent_account = format!("{NAMESPACE}/{}", text(&agent_spec["serviceAccountName"])?);
    ensure!(
        ca_args.serve.node_agent_accounts == [agent_account.clone()],
        "the CA trusts {:?}, the agents run as {agent_account}",
        ca_args.serve.node_agent_accounts
    );
    let ca_service = find(&objects, "Service", "warren-ca")?;
    let ca_port = ca_service["spec"]["ports"][0]["port"]
        .as_u64()
        .context("the CA Service's port")?;
    ensure!(
        run.identity.ca_addr.as_deref()
            == Some(&*format!("https://warren-ca.{NAMESPACE}.svc:{ca_port}")),
        "the agents dial {:?}",
        run.identity.ca_addr
    );
    ensure!(
        u64::from(ca_args.serve.listen.port()) == ca_port,
        "the CA listens on {}, its Service sends to {ca_port}",
        ca_args.serve.listen
    );
    let root_file = run
        .identity
        .ca_root_file
        .clone()
        .context("no --ca-root-file")?;
    let trust = volume_at(agent, agent_container, parent(&root_file)?)?;
    ensure!(
        trust["secret"]["secretName"] == ca_args.secret.secret_name.as_str(),
        "the agents read the trust bundle from {:?}, the CA keeps it in {}",
        trust["secret"]["secretName"],
        ca_args.secret.secret_name
    );
    let file_name = root_file.file_name().and_then(|n| n.to_str());
    ensure!(
        list(&trust["secret"]["items"])
            .iter()
            .map(|i| (i["key"].as_str(), i["path"].as_str()))
            .eq([(Some(SECRET_BUNDLE), file_name)]),
        "the agents must mount the CA's trust bundle and nothing else of its Secret: {trust:?}"
    );
    let token_file = run
        .identity
        .ca_token_file
        .clone()
        .context("no --ca-token-file")?;
    let token = volume_at(agent, agent_container, parent(&token_file)?)?;
    let source = &token["projected"]["sources"][0]["serviceAccountToken"];
    ensure!(
        ca_args.serve.token_audiences == [text(&source["audience"])?.to_owned()]
            && source["path"].as_str() == token_file.file_name().and_then(|n| n.to_str()),
        "the agents' token {source:?} is not what the CA asks ({:?})",
        ca_args.serve.token_audiences
    );
    let ca_account = text(&ca["spec"]["template"]["spec"]["serviceAccountName"])?;
    let ca_rules = granted(&objects, "ClusterRole", "warren-ca", ca_account)?;
    ensure!(
        allows(
            ca_rules,
            "authentication.k8s.io",
            "tokenreviews",
            "create",
            None
        ),
        "the CA may not create TokenReviews"
    );
    let ca_role = granted(&objects, "Role", "warren-ca", ca_account)?;
    for verb in ["get", "create", "update"] {
        ensure!(
            allows(
                ca_role,
                "",
                "secrets",
                verb,
                Some(&ca_args.secret.secret_name)
            ),
            "the CA may not {verb} its root's Secret {}",
            ca_args.secret.secret_name
        );
    }

    // ztunnel: where the agent sends captured connections, and the agent's socket.
    let ztunnel = find(&objects, "DaemonSet", "warren-ztunnel")?;
    let ztunnel_container = container(ztunnel, "ztunnel")?;
    let args = args_of(ztunnel_container)?;
    let config = warren_ztunnel::Config::try_parse_from(
        std::iter::once("warren-ztunnel".to_owned()).chain(args.clone()),
    )
    .with_context(|| format!("warren-ztunnel {}", args.join(" ")))?;
    let outbound = run
        .ztunnel
        .context("the agent captures nothing (no --ztunnel)")?;
    ensure!(
        config.outbound_addrs == [std::net::SocketAddr::V4(outbound)],
        "the agent sends captured connections to {outbound}, ztunnel listens on {:?}",
        config.outbound_addrs
    );
    // DNS capture: where the agent sends pods' queries, ztunnel's DNS proxy listens.
    let dns_port = run.ztunnel_dns_port.context("no --ztunnel-dns-port")?;
    ensure!(
        config.dns_proxy_addrs == [std::net::SocketAddr::new((*outbound.ip()).into(), dns_port)],
        "the agent sends DNS queries to {}:{dns_port}, ztunnel's proxy listens on {:?}",
        outbound.ip(),
        config.dns_proxy_addrs
    );
    ensure!(
        config.linger_after_handover,
        "a drained ztunnel must wait to be deleted, or kubelet restarts it"
    );
    // Its readiness asks this very process (a file in the pod's own folder), not the
    // node's port 15021, which the old ztunnel answers during a surge.
    let probe: Vec<String> = list(&ztunnel_container["readinessProbe"]["exec"]["command"])
        .iter()
        .map(|a| text(a).map(str::to_owned))
        .collect::<Result<_>>()?;
    ensure!(
        probe.first().map(String::as_str) == Some("warren-ztunnel"),
        "ztunnel's readiness probe is not its own check: {:?}",
        ztunnel_container["readinessProbe"]
    );
    let check = warren_ztunnel::Config::try_parse_from(&probe)
        .with_context(|| format!("the probe {}", probe.join(" ")))?;
    let ready_file = config
        .ready_file
        .clone()
        .context("ztunnel writes no --ready-file")?;
    ensure!(
        check.check_ready_file.as_ref() == Some(&ready_file),
        "the probe checks {:?}, ztunnel writes {}",
        check.check_ready_file,
        ready_file.display()
    );
    let own = volume_at(ztunnel, ztunnel_container, parent(&ready_file)?)?;
    ensure!(
        !own["emptyDir"].is_null(),
        "the ready file must be the pod's own, not the node's: {own:?}"
    );
    let controller = find(&objects, "Deployment", "warren-waypoint-controller")?;
    let AgentCommand::WaypointController(controller_args) =
        agent_cli(container(controller, "waypoint-controller")?)?
    else {
        bail!("the waypoint controller does not run `waypoint-controller`");
    };
    // The waypoint controller may read what route status depends on, and
    // write the routes' status.
    let controller_rules = granted(
        &objects,
        "ClusterRole",
        "warren-waypoint-controller",
        text(&controller["spec"]["template"]["spec"]["serviceAccountName"])?,
    )?;
    let access = route_status::needed_access();
    for (group, resource) in access.read {
        for verb in ["get", "list", "watch"] {
            ensure!(
                allows(controller_rules, group, resource, verb, None),
                "the waypoint controller may not {verb} {resource} ({group:?})"
            );
        }
    }
    for (group, resource) in access.status {
        for verb in ["get", "patch"] {
            ensure!(
                allows(controller_rules, group, &resource, verb, None),
                "the waypoint controller may not {verb} {resource} ({group:?})"
            );
        }
    }
    for (who, socket) in [
        ("ztunnel", &config.agent_socket),
        ("waypoints", &controller_args.agent_socket),
    ] {
        ensure!(
            socket == &run.socket,
            "{who} look for the agent at {}, it listens on {}",
            socket.display(),
            run.socket.display()
        );
    }
    for (workload, container) in [(agent, agent_container), (ztunnel, ztunnel_container)] {
        let volume = volume_at(workload, container, parent(&run.socket)?)?;
        ensure!(
            volume["hostPath"]["path"]
                .as_str()
                .map(PathBuf::from)
                .as_deref()
                == Some(parent(&run.socket)?),
            "the socket's folder is not the node's: {volume:?}"
        );
    }

    // The CNI plugin: the agent writes into the node's own CNI folders, serves the
    // plugin on a socket at the path the node sees, in a folder no other pod mounts
    // (what the plugin reports decides what is captured).
    let values: Value = serde_yaml::from_str(&std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../helm/warren/values.yaml"),
    )?)?;
    let cni_socket = run.cni_socket.clone().context("no --cni-socket")?;
    for (dir, value) in [
        (&run.cni_dirs.cni_conf_dir, "confDir"),
        (&run.cni_dirs.cni_bin_dir, "binDir"),
    ] {
        let dir = dir
            .as_deref()
            .with_context(|| format!("no folder for cni.{value}"))?;
        let volume = volume_at(agent, agent_container, dir)?;
        ensure!(
            volume["hostPath"]["path"] == values["cni"][value],
            "{} is not the node's {value}: {volume:?}",
            dir.display()
        );
    }
    let cni_dir = parent(&cni_socket)?;
    let volume = volume_at(agent, agent_container, cni_dir)?;
    ensure!(
        volume["hostPath"]["path"].as_str().map(Path::new) == Some(cni_dir),
        "the plugin (on the node) would not find the agent's socket {}: {volume:?}",
        cni_socket.display()
    );
    ensure!(
        cni_dir != parent(&run.socket)?,
        "the CNI socket shares the proxies' socket folder"
    );
    for object in &objects {
        let spec = &object["spec"]["template"]["spec"];
        if object["metadata"]["name"] == "warren-node-agent" {
            continue;
        }
        // Nor any folder above it (`/var/run` would do as well).
        ensure!(
            !list(&spec["volumes"]).iter().any(|v| v["hostPath"]["path"]
                .as_str()
                .is_some_and(|p| cni_dir.starts_with(p))),
            "{:?} mounts the CNI socket's folder",
            object["metadata"]["name"]
        );
    }
    ensure!(
        run.cni_exclude_namespaces
            .iter()
            .any(|n| n == "kube-system"),
        "{:?}",
        run.cni_exclude_namespaces
    );

    // The node agent may read every kind it watches.
    let agent_rules = granted(
        &objects,
        "ClusterRole",
        "warren-node-agent",
        text(&agent_spec["serviceAccountName"])?,
    )?;
    for (group, resource) in watched_resources() {
        for verb in ["get", "list", "watch"] {
            ensure!(
                allows(agent_rules, group, resource, verb, None),
                "the node agent may not {verb} {resource} ({group:?})"
            );
        }
    }
    // And the mesh config's ConfigMap, in the root namespace, by name only.
    let mesh_role = granted(
        &objects,
        "Role",
        "warren-node-agent-mesh-config",
        text(&agent_spec["serviceAccountName"])?,
    )?;
    let role = find(&objects, "Role", "warren-node-agent-mesh-config")?;
    ensure!(
        role["metadata"]["namespace"] == run.root_namespace.as_str(),
        "the mesh config's Role is not in the root namespace {}: {:?}",
        run.root_namespace,
        role["metadata"]
    );
    for verb in ["get", "list", "watch"] {
        ensure!(
            allows(mesh_role, "", "configmaps", verb, Some(&run.mesh_config)),
            "the node agent may not {verb} the ConfigMap {}",
            run.mesh_config
        );
        ensure!(
            !allows(mesh_role, "", "configmaps", verb, Some("another")),
            "the node agent may {verb} ConfigMaps other than the mesh config"
        );
    }
    Ok(())
}

/// Whether RBAC `rules` allow `verb` on `resource` of `group` (on the object `name`,
/// when given: a rule limited by `resourceNames` must list it).
fn allows(rules: &Value, group: &str, resource: &str, verb: &str, name: Option<&str>) -> bool {
    let has = |field: &Value, want: &str| list(field).iter().any(|v| v == want || v == "*");
    list(rules).iter().any(|rule| {
        let names = list(&rule["resourceNames"]);
        has(&rule["apiGroups"], group)
            && has(&rule["resources"], resource)
            && has(&rule["verbs"], verb)
            && (names.is_empty() || name.is_some_and(|n| names.iter().any(|v| v == n)))
    })
}

/// The rules `account` (a ServiceAccount in the release's namespace) gets from the
/// `kind` (`ClusterRole` or `Role`) named `role`, through a binding of the chart.
fn granted<'a>(objects: &'a [Value], kind: &str, role: &str, account: &str) -> Result<&'a Value> {
    let binding_kind = if kind == "ClusterRole" {
        "ClusterRoleBinding"
    } else {
        "RoleBinding"
    };
    let bound = objects.iter().any(|o| {
        o["kind"] == binding_kind
            && o["roleRef"]["kind"] == kind
            && o["roleRef"]["name"] == role
            && list(&o["subjects"]).iter().any(|s| {
                s["kind"] == "ServiceAccount" && s["name"] == account && s["namespace"] == NAMESPACE
            })
    });
    ensure!(bound, "no {binding_kind} gives {account} the {kind} {role}");
    ensure!(
        objects
            .iter()
            .any(|o| o["kind"] == "ServiceAccount" && o["metadata"]["name"] == account),
        "no ServiceAccount {account}"
    );
    Ok(&find(objects, kind, role)?["rules"])
}

/// The namespaces where a Role bound to `account` lets it get, list and
/// watch `resource` (of the core group).
fn namespaces_granting(objects: &[Value], account: &str, resource: &str) -> Result<Vec<String>> {
    let mut namespaces = Vec::new();
    for role in objects.iter().filter(|o| o["kind"] == "Role") {
        let ns = text(&role["metadata"]["namespace"])?;
        let name = &role["metadata"]["name"];
        let bound = objects.iter().any(|b| {
            b["kind"] == "RoleBinding"
                && b["metadata"]["namespace"] == ns
                && b["roleRef"]["kind"] == "Role"
                && b["roleRef"]["name"] == *name
                && list(&b["subjects"])
                    .iter()
                    .any(|s| s["name"] == account && s["namespace"] == NAMESPACE)
        });
        if bound
            && ["get", "list", "watch"]
                .iter()
                .all(|verb| allows(&role["rules"], "", resource, verb, None))
        {
            namespaces.push(ns.to_owned());
        }
    }
    namespaces.sort();
    Ok(namespaces)
}

/// Without the CA and the waypoint controller (an operator's own CA, Gateways handled
/// elsewhere), the chart still renders a node agent that runs, without identities.
#[test]
fn the_chart_renders_without_the_optional_parts() -> Result<()> {
    let objects = render(&["ca.enabled=false", "waypointController.enabled=false"])?;
    for name in ["warren-ca", "warren-waypoint-controller"] {
        ensure!(
            !objects.iter().any(|o| o["metadata"]["name"] == name),
            "{name} rendered though disabled"
        );
    }
    let agent = find(&objects, "DaemonSet", "warren-node-agent")?;
    let AgentCommand::Run(run) = agent_cli(container(agent, "node-agent")?)? else {
        bail!("the node agent does not `run`");
    };
    ensure!(
        run.identity.ca_addr.is_none(),
        "the agent dials a CA that is not there: {:?}",
        run.identity.ca_addr
    );
    let volumes = list(&agent["spec"]["template"]["spec"]["volumes"]);
    ensure!(
        !volumes
            .iter()
            .any(|v| !v["secret"].is_null() || !v["projected"].is_null()),
        "the agent mounts the absent CA's Secret or token: {volumes:?}"
    );

    // Without the CNI plugin: no socket, and the node's CNI folders left alone.
    let objects = render(&["cni.enabled=false"])?;
    let agent = find(&objects, "DaemonSet", "warren-node-agent")?;
    let AgentCommand::Run(run) = agent_cli(container(agent, "node-agent")?)? else {
        bail!("the node agent does not `run`");
    };
    ensure!(
        run.cni_socket.is_none() && run.cni_dirs.cni_conf_dir.is_none(),
        "{run:?}"
    );
    let volumes = list(&agent["spec"]["template"]["spec"]["volumes"]);
    ensure!(
        !volumes.iter().any(|v| v["hostPath"]["path"]
            .as_str()
            .is_some_and(|p| p.contains("cni"))),
        "the agent mounts CNI folders it does not use: {volumes:?}"
    );
    Ok(())
}

/// The agent reads Secrets only in the namespaces the chart names for
/// `credentialName`s: a Role in each, none cluster-wide, and none by default.
#[test]
fn secrets_are_readable_only_in_the_credential_namespaces() -> Result<()> {
    let secrets_readable = |objects: &[Value]| -> Result<(Vec<String>, Vec<String>)> {
        let agent = find(objects, "DaemonSet", "warren-node-agent")?;
        let AgentCommand::Run(run) = agent_cli(container(agent, "node-agent")?)? else {
            bail!("the node agent does not `run`");
        };
        let account = text(&agent["spec"]["template"]["spec"]["serviceAccountName"])?;
        let cluster_wide = granted(objects, "ClusterRole", "warren-node-agent", account)?;
        ensure!(
            ["get", "list", "watch"].iter().all(|verb| !allows(
                cluster_wide,
                "",
                "secrets",
                verb,
                None
            )),
            "the node agent may read Secrets cluster-wide"
        );
        let namespaces = namespaces_granting(objects, account, "secrets")?;
        Ok((namespaces, run.secret_namespaces))
    };
    // The agent knows its own namespace: a ztunnel in a pod is believed only
    // if its pod is of it.
    let objects = render(&[])?;
    let agent = container(
        find(&objects, "DaemonSet", "warren-node-agent")?,
        "node-agent",
    )?;
    ensure!(
        list(&agent["env"])
            .iter()
            .any(|v| v["name"] == "WARREN_SYSTEM_NAMESPACE"
                && v["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"),
        "the node agent is not told its namespace: {:?}",
        agent["env"]
    );
    let (roles, read) = secrets_readable(&objects)?;
    ensure!(
        roles.is_empty() && read.is_empty(),
        "by default: Roles {roles:?}, --secret-namespace {read:?}"
    );
    let objects = render(&["nodeAgent.credentialNamespaces={egress,partners,egress}"])?;
    let (roles, read) = secrets_readable(&objects)?;
    ensure!(
        roles == ["egress", "partners"] && read == ["egress", "partners"],
        "Roles {roles:?}, --secret-namespace {read:?}"
    );
    // The waypoint controller reads the ConfigMaps there (for BackendTLSPolicy
    // status), never the Secrets.
    let controller = find(&objects, "Deployment", "warren-waypoint-controller")?;
    let AgentCommand::WaypointController(args) =
        agent_cli(container(controller, "waypoint-controller")?)?
    else {
        bail!("the waypoint controller does not run `waypoint-controller`");
    };
    let account = text(&controller["spec"]["template"]["spec"]["serviceAccountName"])?;
    let bundles = namespaces_granting(&objects, account, "configmaps")?;
    let secrets = namespaces_granting(&objects, account, "secrets")?;
    ensure!(
        bundles == ["egress", "partners"]
            && args.secret_namespaces == ["egress", "partners"]
            && secrets.is_empty(),
        "the controller reads ConfigMaps in {bundles:?} (told {:?}), Secrets in {secrets:?}",
        args.secret_namespaces
    );
    // Never the release's namespace: the CA's root key is a Secret there.
    let refused = render(&[&format!(
        "nodeAgent.credentialNamespaces={{egress,{NAMESPACE}}}"
    )]);
    ensure!(
        refused
            .as_ref()
            .is_err_and(|e| format!("{e:#}").contains("mesh CA's root key")),
        "the release's namespace is refused: {:?}",
        refused.map(|o| o.len())
    );
    Ok(())
}
