//! Enrollment follows configuration: the node agent reads the cluster's
//! config folder (what the API server would show) and captures exactly the
//! pods of labelled namespaces, in the mode PeerAuthentication asks for.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{Result, bail, ensure};
use warren_e2e::agent::{config_dump, datapath, start_agent_with_config};
use warren_node_agent::sandbox::{Locator, SandboxError};
use warren_testbed::{Cluster, Node, PodSpec, Process, Sandbox, labels, privilege::require_root};

/// Waits until the node's enrolled pods (name → mode) equal `want`.
fn wait_for_enrolled(node: &Node, agent: &mut Process, want: &[(&str, &str)]) -> Result<()> {
    let want: BTreeMap<String, String> = want
        .iter()
        .map(|(p, m)| ((*p).to_owned(), (*m).to_owned()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        agent.check_running()?;
        let have: BTreeMap<String, String> = datapath(node)?
            .pods()?
            .into_iter()
            .map(|p| (p.pod, p.mode))
            .collect();
        if have == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "enrolled pods are {have:?}, want {want:?}; agent log:\n{}",
                agent.output()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn enrollment_follows_namespace_labels_and_peer_authentication() -> Result<()> {
    require_root()?;
    let mut cluster = Cluster::builder().nodes(2).pods_per_node(2).up()?;
    let node = cluster.node(0)?.clone();
    let mut agent = start_agent_with_config(&cluster, &node)?;
    // Nothing is labelled yet: once the agent has read the folder, nothing
    // may be enrolled.
    agent.wait_for_output("configuration synced", Duration::from_secs(10))?;
    wait_for_enrolled(&node, &mut agent, &[])?;

    // Labelling the namespace enrolls its pods on this node (not node 1's).
    cluster.add_namespace("default", labels(&[("istio.io/dataplane-mode", "ambient")]))?;
    wait_for_enrolled(
        &node,
        &mut agent,
        &[
            ("default/n0-p0", "PERMISSIVE"),
            ("default/n0-p1", "PERMISSIVE"),
        ],
    )?;

    // A pod that opts out stays out; a new pod in the namespace comes in.
    cluster.add_pod(PodSpec {
        name: "opted-out".into(),
        namespace: "default".into(),
        node: 0,
        labels: labels(&[("warren.io/dataplane-mode", "none")]),
        service_account: None,
    })?;
    cluster.add_pod(PodSpec {
        name: "web".into(),
        namespace: "default".into(),
        node: 0,
        labels: labels(&[("app", "web")]),
        service_account: None,
    })?;
    wait_for_enrolled(
        &node,
        &mut agent,
        &[
            ("default/n0-p0", "PERMISSIVE"),
            ("default/n0-p1", "PERMISSIVE"),
            ("default/web", "PERMISSIVE"),
        ],
    )?;

    // PeerAuthentication: STRICT for the namespace, PERMISSIVE for app=web.
    let config = cluster.config_dir();
    std::fs::write(
        config.join("peerauthentication.default.strict.yaml"),
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: strict\n  namespace: default\nspec:\n  mtls:\n    mode: STRICT\n---\napiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata:\n  name: web\n  namespace: default\nspec:\n  selector:\n    matchLabels:\n      app: web\n  mtls:\n    mode: PERMISSIVE\n",
    )?;
    wait_for_enrolled(
        &node,
        &mut agent,
        &[
            ("default/n0-p0", "STRICT"),
            ("default/n0-p1", "STRICT"),
            ("default/web", "PERMISSIVE"),
        ],
    )?;

    // A bad object is refused with its field and reason; the last good
    // version of the same object stays in force.
    std::fs::write(
        config.join("peerauthentication.default.strict.yaml"),
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: strict\n  namespace: default\nspec:\n  mtls:\n    mode: SORTOF\n---\napiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata:\n  name: web\n  namespace: default\nspec:\n  selector:\n    matchLabels:\n      app: web\n  mtls:\n    mode: PERMISSIVE\n",
    )?;
    agent.wait_for_output("PeerAuthentication default/strict", Duration::from_secs(10))?;
    ensure!(
        agent.output().contains("spec.mtls.mode"),
        "rejection does not name the field:\n{}",
        agent.output()
    );
    // `warrenctl config dump` shows the view (its workloads) and the refusal.
    let dump = config_dump(&cluster, &node)?;
    let keys: Vec<&str> = dump["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["key"].as_str())
        .collect();
    ensure!(
        keys.contains(&"workload/default/web") && keys.contains(&"workload/default/n0-p0"),
        "the dump lacks the workloads: {keys:?}"
    );
    ensure!(
        dump["refused"].to_string().contains("spec.mtls.mode"),
        "the dump lacks the refusal: {}",
        dump["refused"]
    );
    wait_for_enrolled(
        &node,
        &mut agent,
        &[
            ("default/n0-p0", "STRICT"),
            ("default/n0-p1", "STRICT"),
            ("default/web", "PERMISSIVE"),
        ],
    )?;

    // Removing the label unenrolls everything.
    cluster.add_namespace("default", BTreeMap::new())?;
    wait_for_enrolled(&node, &mut agent, &[])?;

    // Labelled again: the last good STRICT policy is still in force.
    cluster.add_namespace(
        "default",
        labels(&[("warren.io/dataplane-mode", "ambient")]),
    )?;
    wait_for_enrolled(
        &node,
        &mut agent,
        &[
            ("default/n0-p0", "STRICT"),
            ("default/n0-p1", "STRICT"),
            ("default/web", "PERMISSIVE"),
        ],
    )?;

    // A restarted agent adopts what the kernel holds and unenrolls pods
    // that configuration no longer asks for. It has no last good version of
    // the broken policy, so its namespace fails closed: STRICT, even for
    // app=web, whose own policy might be overridden by what it cannot read.
    agent.stop()?;
    cluster.remove_pod("default/web")?;
    let mut agent = start_agent_with_config(&cluster, &node)?;
    wait_for_enrolled(
        &node,
        &mut agent,
        &[("default/n0-p0", "STRICT"), ("default/n0-p1", "STRICT")],
    )?;
    ensure!(
        agent.output().contains("STRICT until it is fixed"),
        "fail-closed not explained:\n{}",
        agent.output()
    );

    // Fixing the policy restores what it says.
    std::fs::write(
        config.join("peerauthentication.default.strict.yaml"),
        permissive_again(),
    )?;
    wait_for_enrolled(
        &node,
        &mut agent,
        &[
            ("default/n0-p0", "PERMISSIVE"),
            ("default/n0-p1", "PERMISSIVE"),
        ],
    )?;
    Ok(())
}

fn permissive_again() -> &'static str {
    "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: strict\n  namespace: default\nspec:\n  mtls:\n    mode: PERMISSIVE\n"
}

#[test]
fn enrollment_retries_and_follows_recreated_namespaces() -> Result<()> {
    require_root()?;
    let mut cluster = Cluster::builder().nodes(1).up()?;
    let node = cluster.node(0)?.clone();
    cluster.add_namespace(
        "default",
        labels(&[("warren.io/dataplane-mode", "ambient")]),
    )?;
    let mut agent = start_agent_with_config(&cluster, &node)?;

    // A pod whose object arrives before its network namespace exists.
    let netns_name = format!("{}-late", cluster.id());
    let netns_path = warren_testbed::netns::path(&netns_name);
    let pod_yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: late\n  namespace: default\n  annotations:\n    warren.io/netns: {}\nspec:\n  nodeName: {}\n  containers: []\n",
        netns_path.display(),
        node.name
    );
    std::fs::write(cluster.config_dir().join("pod.default.late.yaml"), pod_yaml)?;
    agent.wait_for_output("default/late", Duration::from_secs(10))?;
    // The namespace appears: the periodic reconcile enrolls the pod.
    warren_testbed::netns::create(&netns_name)?;
    wait_for_enrolled(&node, &mut agent, &[("default/late", "PERMISSIVE")])?;
    let first = cookie_of(&node, "default/late")?;

    // Recreated at the same path (a restarted sandbox): new cookie, enrolled
    // again, the old namespace's entry dropped.
    warren_testbed::netns::delete(&netns_name)?;
    warren_testbed::netns::create(&netns_name)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pods = datapath(&node)?.pods()?;
        if pods.len() == 1 && pods[0].netns_cookie != first {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "not re-enrolled after the namespace was recreated: {pods:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn cookie_of(node: &Node, pod: &str) -> Result<u64> {
    datapath(node)?
        .pods()?
        .into_iter()
        .find(|p| p.pod == pod)
        .map(|p| p.netns_cookie)
        .ok_or_else(|| anyhow::anyhow!("{pod} is not enrolled"))
}

/// On a Kubernetes node nothing writes the testbed's annotations: the agent finds
/// a pod's network namespace (the runtime's bind mount) and its veth from the
/// pod's UID, as kubelet names its cgroup; a pod sharing the node's namespace is
/// never taken for one to capture.
#[test]
fn a_pod_on_a_kubernetes_node_is_found_by_its_uid() -> Result<()> {
    require_root()?;
    let mut cluster = Cluster::builder().nodes(1).pods_per_node(0).up()?;
    let node = cluster.node(0)?.clone();
    cluster.add_namespace("default", labels(&[("istio.io/dataplane-mode", "ambient")]))?;
    std::fs::write(
        cluster
            .config_dir()
            .join("peerauthentication.default.strict.yaml"),
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: strict\n  namespace: default\nspec:\n  mtls:\n    mode: STRICT\n",
    )?;
    let pod = cluster
        .add_kubelet_pod(PodSpec {
            name: "web".into(),
            namespace: "default".into(),
            node: 0,
            labels: labels(&[("app", "web")]),
            service_account: None,
        })?
        .clone();
    let manifest = std::fs::read_to_string(cluster.config_dir().join("pod.default.web.yaml"))?;
    ensure!(
        !manifest.contains("warren.io/"),
        "a kubelet's pod carries no testbed annotation:\n{manifest}"
    );

    let mut agent = start_agent_with_config(&cluster, &node)?;
    wait_for_enrolled(&node, &mut agent, &[("default/web", "STRICT")])?;
    // The STRICT guard sits on the pod's veth.
    let row = datapath(&node)?
        .pods()?
        .into_iter()
        .find(|p| p.pod == "default/web")
        .ok_or_else(|| anyhow::anyhow!("default/web is not enrolled"))?;
    ensure!(
        row.veth.as_deref() == Some(pod.host_veth.as_str()) && row.ifindex != 0,
        "the guard is not on {}: {row:?}",
        pod.host_veth
    );
    // ztunnel is told the namespace to connect from the pod in: the runtime's
    // bind mount, which outlives any one process of the pod.
    let dump = config_dump(&cluster, &node)?;
    let netns = pod.sandbox.netns.display().to_string();
    let workload = dump["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["key"] == "workload/default/web");
    ensure!(
        workload.is_some_and(|w| w["spec"]["netns"] == netns.as_str()),
        "the workload's namespace is not {netns}: {workload:?}"
    );

    // A pod the API server shows running on this node but with no process the agent
    // can see (a kubelet layout it does not know, or an agent without hostPID): the
    // dump says which pod is not captured, and why.
    let ghost_uid = "00000000-0000-4000-8000-0000000000aa";
    std::fs::write(
        cluster.config_dir().join("pod.default.ghost.yaml"),
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{ name: ghost, namespace: default, uid: {ghost_uid} }}\n\
             spec: {{ nodeName: {}, containers: [{{ name: main }}] }}\n\
             status: {{ phase: Running, podIP: 10.244.0.250 }}\n",
            node.name
        ),
    )?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let dump = config_dump(&cluster, &node)?;
        let ghost = dump["uncaptured"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|u| u["pod"] == "Pod default/ghost")
            .cloned();
        if let Some(ghost) = ghost {
            ensure!(
                ghost["why"]
                    .as_str()
                    .is_some_and(|why| why.contains(ghost_uid) && why.contains("no process")),
                "the dump does not say why: {ghost}"
            );
            ensure!(
                !dump["uncaptured"].to_string().contains("default/web"),
                "the captured pod is listed as not captured: {}",
                dump["uncaptured"]
            );
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the dump never lists the pod it cannot capture: {}",
            dump["uncaptured"]
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A process in a pod's cgroup but in the node's namespace (hostNetwork): the
    // locator refuses it, whatever the Pod object says.
    let host_uid = "00000000-0000-4000-8000-00000000beef";
    let host_pod = Sandbox {
        label: "host-network pod".into(),
        netns: node.sandbox.netns.clone(),
        cgroup: node.pods_cgroup.join(format!(
            "kubepods.slice/kubepods-pod{}.slice",
            host_uid.replace('-', "_")
        )),
        env: Vec::new(),
    };
    std::fs::create_dir_all(&host_pod.cgroup)?;
    let status = host_pod
        .command("sh")?
        .args(["-c", "sleep infinity </dev/null >/dev/null 2>&1 &"])
        .status()?;
    ensure!(
        status.success(),
        "starting the host-network process: {status}"
    );
    let uid = pod.uid.clone();
    let (found, host, missing) = warren_testbed::netns::run_in(&node.sandbox.netns, move || {
        let locator = Locator::default();
        Ok((
            locator.find(&uid),
            locator.find(host_uid),
            locator.find("00000000-0000-4000-8000-000000000000"),
        ))
    })?;
    let found = found?;
    ensure!(
        found.netns == pod.sandbox.netns
            && found.host_veth.as_deref() == Some(pod.host_veth.as_str()),
        "found {found:?} for {}",
        pod.uid
    );
    ensure!(
        matches!(host, Err(SandboxError::HostNetwork(_))),
        "a process in the node's namespace was taken for a pod's: {host:?}"
    );
    ensure!(
        matches!(missing, Err(SandboxError::NotRunning(_))),
        "an unknown UID: {missing:?}"
    );
    Ok(())
}
