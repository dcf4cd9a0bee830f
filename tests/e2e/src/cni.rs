//! Playing the container runtime for the CNI plugin: what containerd or CRI-O do
//! after the node's network plugin has given a pod its interface and addresses.

use std::{
    io::Write as _,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};
use warren_testbed::{Cluster, Node, Pod};

/// What the runtime reads back from one plugin run.
#[derive(Debug)]
pub struct Ran {
    pub code: Option<i32>,
    /// The result (on success) or the specification's error object.
    pub stdout: Value,
    pub stderr: String,
}

impl Ran {
    pub fn succeeded(&self) -> bool {
        self.code == Some(0)
    }
}

/// A node's runtime folders (`{node_dir}/host/…`), as the agent is told with
/// [`agent_args`].
pub struct Runtime {
    pub conf_dir: PathBuf,
    pub bin_dir: PathBuf,
    /// Where the node's agent serves the plugin.
    pub socket: PathBuf,
}

/// The agent arguments that serve and install the plugin in [`Runtime::of`]'s
/// folders (`{node_dir}` is each node's own folder, see `MeshOptions::agent_args`).
pub fn agent_args() -> Vec<String> {
    [
        "--cni-socket",
        "{node_dir}/cni.sock",
        "--cni-conf-dir",
        "{node_dir}/host/etc/cni/net.d",
        "--cni-bin-dir",
        "{node_dir}/host/opt/cni/bin",
    ]
    .map(str::to_owned)
    .to_vec()
}

impl Runtime {
    /// Node `node`'s runtime, with a network plugin's configuration in place (what
    /// the agent chains the plugin after).
    pub fn of(cluster: &Cluster, node: &Node) -> Result<Runtime> {
        let dir = cluster.node_dir(node)?;
        let runtime = Runtime {
            conf_dir: dir.join("host/etc/cni/net.d"),
            bin_dir: dir.join("host/opt/cni/bin"),
            socket: dir.join("cni.sock"),
        };
        std::fs::create_dir_all(&runtime.conf_dir)?;
        std::fs::write(
            runtime.network_config(),
            r#"{"cniVersion":"1.0.0","name":"testbed","plugins":[{"type":"bridge","bridge":"cni0"}]}"#,
        )?;
        Ok(runtime)
    }

    pub fn network_config(&self) -> PathBuf {
        self.conf_dir.join("10-testbed.conflist")
    }

    /// The installed plugin.
    pub fn plugin(&self) -> PathBuf {
        self.bin_dir.join("warren-cni")
    }

    /// The plugin's entry in the network configuration, as the agent wrote it.
    pub fn entry(&self) -> Result<Value> {
        let path = self.network_config();
        let list: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
        list["plugins"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["type"] == "warren-cni")
            .cloned()
            .with_context(|| format!("no warren-cni entry in {}: {list}", path.display()))
    }

    /// Runs the installed plugin for `pod` with CNI command `command` (ADD, DEL…).
    pub fn run(&self, command: &str, pod: &Pod) -> Result<Ran> {
        let mut conf = self.entry()?;
        conf["cniVersion"] = "1.0.0".into();
        conf["name"] = "testbed".into();
        conf["prevResult"] = previous_result(pod);
        let plugin = self.plugin();
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID=sandbox-{};K8S_POD_UID={}",
            pod.namespace, pod.name, pod.name, pod.uid
        );
        let mut child = Command::new(&plugin)
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", format!("sandbox-{}", pod.name))
            .env("CNI_NETNS", &pod.sandbox.netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_ARGS", args)
            .env("CNI_PATH", &self.bin_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {}", plugin.display()))?;
        child
            .stdin
            .take()
            .context("the plugin's stdin")?
            .write_all(conf.to_string().as_bytes())?;
        let out = child.wait_with_output()?;
        let stdout = if out.stdout.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&out.stdout)
                .with_context(|| format!("stdout: {}", String::from_utf8_lossy(&out.stdout)))?
        };
        Ok(Ran {
            code: out.status.code(),
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// The network plugin's result for `pod`: what the runtime hands the next plugin.
pub fn previous_result(pod: &Pod) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [
            { "name": pod.host_veth },
            { "name": "eth0", "sandbox": pod.sandbox.netns },
        ],
        "ips": [
            { "address": format!("{}/24", pod.ip), "interface": 1 },
            { "address": format!("{}/64", pod.ip6), "interface": 1 },
        ],
    })
}
