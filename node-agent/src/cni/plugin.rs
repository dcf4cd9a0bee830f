//! The `warren-cni` binary: a chained CNI plugin (specification 0.3.0 to 1.1.0).
//!
//! It changes nothing in the pod's network. On ADD it tells the agent which pod
//! the runtime is starting, its namespace and the addresses the plugin before it
//! assigned, waits until the agent has captured it (or found it outside the mesh),
//! and passes the previous plugin's result on. A pod that is for the mesh and
//! cannot be captured is refused: the runtime retries rather than starting it
//! uncaptured. DEL never fails, as the specification asks.
//!
//! Written against the specification directly: the result is passed through as
//! JSON untouched, so fields of any version survive, and the whole plugin is a
//! function of its environment and stdin that tests drive without a runtime.

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader, Write as _},
    net::IpAddr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    DEFAULT_SOCKET,
    wire::{Answer, PodRef, Request},
};

/// Versions of the specification this plugin speaks (its result is the previous
/// plugin's, so any of them).
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Namespaces never asked about: the cluster's own pods must start even while
/// the agent is down.
const DEFAULT_EXCLUDED: &[&str] = &["kube-system"];

// Error codes of the specification, and one of ours (100 and up are the plugin's).
const INCOMPATIBLE_VERSION: u32 = 1;
const INVALID_ENVIRONMENT: u32 = 4;
const DECODING_FAILURE: u32 = 6;
const INVALID_CONFIG: u32 = 7;
const TRY_AGAIN_LATER: u32 = 11;
const REFUSED_BY_MESH: u32 = 100;

/// This plugin's entry in a network configuration list.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NetConf {
    #[serde(default = "default_version")]
    cni_version: String,
    #[serde(default)]
    agent_socket: Option<PathBuf>,
    #[serde(default)]
    exclude_namespaces: Option<Vec<String>>,
    /// How long to wait for the agent's answer (it may wait for the Pod object).
    #[serde(default)]
    timeout_seconds: Option<u64>,
    /// The namespaces in the mesh, as the agent last wrote them: while the agent
    /// cannot be asked, only their pods wait for it.
    #[serde(default)]
    mesh_namespaces: Option<Vec<String>>,
    #[serde(default)]
    prev_result: Option<Value>,
}

fn default_version() -> String {
    "0.3.1".into()
}

/// What the runtime reads back: stdout and the exit code.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub exit_code: i32,
}

/// A failure as the specification has plugins report it.
#[derive(Debug)]
struct Failure {
    code: u32,
    msg: String,
    details: String,
}

impl Failure {
    fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Failure {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }
}

/// Runs one invocation: `env` reads the runtime's `CNI_*` variables, `stdin` is
/// the network configuration.
pub fn run(env: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Outcome {
    let command = env("CNI_COMMAND").unwrap_or_default();
    if command == "VERSION" {
        return success(json!({
            "cniVersion": SUPPORTED_VERSIONS.last(),
            "supportedVersions": SUPPORTED_VERSIONS,
        }));
    }
    let conf: NetConf = match serde_json::from_slice(stdin) {
        Ok(conf) => conf,
        Err(error) => {
            return failure(
                &default_version(),
                Failure::new(
                    DECODING_FAILURE,
                    "cannot decode the network configuration",
                    error.to_string(),
                ),
            );
        }
    };
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return failure(
            &conf.cni_version,
            Failure::new(
                INCOMPATIBLE_VERSION,
                format!("cniVersion {} is not supported", conf.cni_version),
                format!("supported: {}", SUPPORTED_VERSIONS.join(", ")),
            ),
        );
    }
    let result = match command.as_str() {
        "ADD" => add(&env, &conf),
        // Never fails: the runtime could not tear the sandbox down otherwise.
        "DEL" => {
            del(&env, &conf);
            Ok(None)
        }
        "CHECK" => conf
            .prev_result
            .is_some()
            .then_some(None)
            .ok_or_else(chained_only),
        // Pods outside the mesh can be added whatever the agent's state, and
        // containerd reports the node's network not ready on a failed STATUS: ready.
        "STATUS" => Ok(None),
        "GC" => Ok(None),
        other => Err(Failure::new(
            INVALID_ENVIRONMENT,
            format!("unknown CNI_COMMAND {other:?}"),
            "expected ADD, DEL, CHECK, STATUS, GC or VERSION",
        )),
    };
    match result {
        Ok(Some(out)) => success(out),
        Ok(None) => Outcome {
            stdout: String::new(),
            exit_code: 0,
        },
        Err(error) => failure(&conf.cni_version, error),
    }
}

fn chained_only() -> Failure {
    Failure::new(
        INVALID_CONFIG,
        "warren-cni is a chained plugin: it needs the result of the network plugin before it (prevResult)",
        "list it after the node's network plugin in a .conflist",
    )
}

fn add(env: &impl Fn(&str) -> Option<String>, conf: &NetConf) -> Result<Option<Value>, Failure> {
    let mut result = conf.prev_result.clone().ok_or_else(chained_only)?;
    // The result goes back in the version the runtime asked in.
    if let Some(object) = result.as_object_mut() {
        object.insert("cniVersion".into(), conf.cni_version.clone().into());
    }
    let Some(pod) = pod_of(env) else {
        // Not a Kubernetes pod (no K8S_POD_* arguments): nothing to capture.
        return Ok(Some(result));
    };
    if excluded(conf, &pod.namespace) {
        return Ok(Some(result));
    }
    let netns = env("CNI_NETNS")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| Failure::new(INVALID_ENVIRONMENT, "CNI_NETNS is not set", ""))?;
    let request = Request::Add {
        container_id: env("CNI_CONTAINERID").unwrap_or_default(),
        netns: PathBuf::from(netns),
        addresses: addresses(&result),
        pod: pod.clone(),
    };
    let name = format!("{}/{}", pod.namespace, pod.name);
    let answer = match ask(conf, &request) {
        Ok(answer) => answer,
        // No agent to ask: only a pod of the mesh must wait for one.
        Err(error) if error.code == TRY_AGAIN_LATER => match &conf.mesh_namespaces {
            Some(mesh) if !mesh.contains(&pod.namespace) => {
                eprintln!(
                    "warren-cni: {}: {}; {name} starts: its namespace is not in the mesh",
                    error.msg, error.details
                );
                return Ok(Some(result));
            }
            // In the mesh, or no list to tell: the pod waits for the agent.
            _ => return Err(error),
        },
        Err(error) => return Err(error),
    };
    match answer {
        Answer::Enrolled { .. } | Answer::Outside { .. } | Answer::Done => Ok(Some(result)),
        Answer::Refused { why } => Err(Failure::new(
            REFUSED_BY_MESH,
            format!("pod {name} is in the mesh and cannot be captured"),
            why,
        )),
    }
}

fn del(env: &impl Fn(&str) -> Option<String>, conf: &NetConf) {
    let Some(pod) = pod_of(env) else { return };
    if excluded(conf, &pod.namespace) {
        return;
    }
    let request = Request::Del {
        pod,
        container_id: env("CNI_CONTAINERID").unwrap_or_default(),
    };
    // The agent forgets the sandbox on its own when the pod goes; telling it is a
    // courtesy, so an agent that is down is no reason to fail.
    if let Err(error) = ask(conf, &request) {
        eprintln!(
            "warren-cni: DEL not delivered: {}: {}",
            error.msg, error.details
        );
    }
}

fn socket_of(conf: &NetConf) -> &Path {
    conf.agent_socket
        .as_deref()
        .unwrap_or(Path::new(DEFAULT_SOCKET))
}

fn excluded(conf: &NetConf, namespace: &str) -> bool {
    match &conf.exclude_namespaces {
        Some(list) => list.iter().any(|n| n == namespace),
        None => DEFAULT_EXCLUDED.contains(&namespace),
    }
}

/// The pod, from `CNI_ARGS` (`K=V;K=V`, as kubelet's runtimes pass them).
fn pod_of(env: &impl Fn(&str) -> Option<String>) -> Option<PodRef> {
    let args = env("CNI_ARGS")?;
    let args: HashMap<&str, &str> = args
        .split(';')
        .filter_map(|pair| pair.split_once('='))
        .collect();
    let field = |key| {
        args.get(key)
            .filter(|v| !v.is_empty())
            .map(|v| v.to_string())
    };
    Some(PodRef {
        namespace: field("K8S_POD_NAMESPACE")?,
        name: field("K8S_POD_NAME")?,
        uid: field("K8S_POD_UID"),
    })
}

/// The pod's addresses in a result: `ips[].address` (`10.244.0.5/24`) in every
/// version since 0.3.0.
fn addresses(result: &Value) -> Vec<IpAddr> {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .filter_map(|cidr| cidr.split('/').next()?.parse().ok())
        .collect()
}

/// One request, one answer.
fn ask(conf: &NetConf, request: &Request) -> Result<Answer, Failure> {
    let socket = socket_of(conf);
    let timeout = Duration::from_secs(conf.timeout_seconds.unwrap_or(30).max(1));
    let unreachable = |error: std::io::Error| {
        Failure::new(
            TRY_AGAIN_LATER,
            "cannot reach the Warren node agent",
            format!("{}: {error}", socket.display()),
        )
    };
    let mut stream = UnixStream::connect(socket).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(unreachable)?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(unreachable)?;
    let mut line = serde_json::to_vec(request)
        .map_err(|e| Failure::new(DECODING_FAILURE, "encoding the request", e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(unreachable)?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(unreachable)?;
    if answer.is_empty() {
        return Err(unreachable(std::io::ErrorKind::UnexpectedEof.into()));
    }
    serde_json::from_str(&answer).map_err(|e| {
        Failure::new(
            DECODING_FAILURE,
            "cannot decode the agent's answer",
            format!("{e}: {answer:?}"),
        )
    })
}

fn success(out: Value) -> Outcome {
    Outcome {
        stdout: out.to_string(),
        exit_code: 0,
    }
}

fn failure(version: &str, error: Failure) -> Outcome {
    Outcome {
        stdout: json!({
            "cniVersion": version,
            "code": error.code,
            "msg": error.msg,
            "details": error.details,
        })
        .to_string(),
        exit_code: 1,
    }
}

#[cfg(test)]
mod tests {
    use std::{io::BufRead as _, os::unix::net::UnixListener, thread};

    use super::*;

    /// A network configuration as the runtime hands it over after a bridge plugin.
    fn conf(socket: &Path, extra: &str) -> Vec<u8> {
        format!(
            r#"{{"cniVersion":"1.0.0","name":"k8s","type":"warren-cni","agentSocket":{socket:?}{extra},
               "prevResult":{{"cniVersion":"1.0.0",
                 "interfaces":[{{"name":"cni0"}},{{"name":"veth1a2b"}},{{"name":"eth0","sandbox":"/var/run/netns/cni-1"}}],
                 "ips":[{{"address":"10.244.0.7/24","gateway":"10.244.0.1","interface":2}},
                        {{"address":"fd00:244::7/64","interface":2}}],
                 "dns":{{}}}}}}"#
        )
        .into_bytes()
    }

    fn env(command: &str) -> impl Fn(&str) -> Option<String> {
        let command = command.to_owned();
        move |key| {
            match key {
            "CNI_COMMAND" => Some(command.clone()),
            "CNI_CONTAINERID" => Some("abc123".into()),
            "CNI_NETNS" => Some("/var/run/netns/cni-1".into()),
            "CNI_IFNAME" => Some("eth0".into()),
            "CNI_ARGS" => Some(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc123;K8S_POD_UID=6f1c2d3e-0a1b-4c5d-8e9f-001122334455".into(),
            ),
            _ => None,
        }
        }
    }

    /// An agent that answers one request with `answer` and hands back the request.
    fn agent(answer: Answer) -> (tempfile::TempDir, PathBuf, thread::JoinHandle<Request>) {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("cni.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let handle = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line).unwrap();
            let mut out = serde_json::to_vec(&answer).unwrap();
            out.push(b'\n');
            (&stream).write_all(&out).unwrap();
            serde_json::from_str(&line).unwrap()
        });
        (dir, socket, handle)
    }

    fn error_of(outcome: &Outcome) -> Value {
        assert_eq!(outcome.exit_code, 1, "{outcome:?}");
        serde_json::from_str(&outcome.stdout).unwrap()
    }

    #[test]
    fn add_passes_the_previous_result_on_once_the_agent_has_captured_the_pod() {
        let (_dir, socket, agent) = agent(Answer::Enrolled {
            mode: "STRICT".into(),
        });
        let stdin = conf(&socket, "");
        let outcome = run(env("ADD"), &stdin);
        assert_eq!(outcome.exit_code, 0, "{outcome:?}");
        let result: Value = serde_json::from_str(&outcome.stdout).unwrap();
        let given: Value = serde_json::from_slice(&stdin).unwrap();
        assert_eq!(
            result, given["prevResult"],
            "the result is passed on untouched"
        );
        assert_eq!(
            agent.join().unwrap(),
            Request::Add {
                pod: PodRef {
                    namespace: "shop".into(),
                    name: "web-0".into(),
                    uid: Some("6f1c2d3e-0a1b-4c5d-8e9f-001122334455".into()),
                },
                container_id: "abc123".into(),
                netns: "/var/run/netns/cni-1".into(),
                addresses: vec![
                    "10.244.0.7".parse().unwrap(),
                    "fd00:244::7".parse().unwrap()
                ],
            }
        );
    }

    #[test]
    fn a_pod_the_mesh_cannot_capture_does_not_start() {
        let (_dir, socket, _agent) = agent(Answer::Refused {
            why: "no veth".into(),
        });
        let error = error_of(&run(env("ADD"), &conf(&socket, "")));
        assert_eq!(error["code"], REFUSED_BY_MESH);
        assert_eq!(error["cniVersion"], "1.0.0");
        assert!(
            error["msg"].as_str().unwrap().contains("shop/web-0"),
            "{error}"
        );
        assert_eq!(error["details"], "no veth");
    }

    #[test]
    fn an_agent_that_is_down_means_try_again_later_but_never_fails_a_delete() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("nobody.sock");
        let error = error_of(&run(env("ADD"), &conf(&socket, "")));
        assert_eq!(error["code"], TRY_AGAIN_LATER);
        assert!(
            error["details"].as_str().unwrap().contains("nobody.sock"),
            "{error}"
        );
        // The node's network stays ready: pods outside the mesh can start.
        assert_eq!(run(env("STATUS"), &conf(&socket, "")).exit_code, 0);
        let del = run(env("DEL"), &conf(&socket, ""));
        assert_eq!(del.exit_code, 0, "{del:?}");
    }

    #[test]
    fn while_the_agent_is_down_only_pods_of_the_mesh_wait() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("cni.sock");
        // No list (an entry the agent did not write): every pod waits.
        assert_eq!(
            error_of(&run(env("ADD"), &conf(&socket, "")))["code"],
            TRY_AGAIN_LATER
        );
        // `shop` is not in the mesh: its pod starts.
        let outside = conf(&socket, r#","meshNamespaces":["pay"]"#);
        let outcome = run(env("ADD"), &outside);
        assert_eq!(outcome.exit_code, 0, "{outcome:?}");
        // Now it is: its pod waits for the agent.
        let inside = conf(&socket, r#","meshNamespaces":["pay","shop"]"#);
        assert_eq!(error_of(&run(env("ADD"), &inside))["code"], TRY_AGAIN_LATER);
    }

    #[test]
    fn excluded_namespaces_and_pods_outside_kubernetes_are_not_asked_about() {
        let dir = tempfile::tempdir().unwrap();
        // Nobody listens: asking would fail.
        let socket = dir.path().join("nobody.sock");
        let stdin = conf(&socket, r#","excludeNamespaces":["shop"]"#);
        assert_eq!(run(env("ADD"), &stdin).exit_code, 0);
        let no_pod = |key: &str| match key {
            "CNI_ARGS" => Some("IgnoreUnknown=1".into()),
            other => env("ADD")(other),
        };
        assert_eq!(run(no_pod, &conf(&socket, "")).exit_code, 0);
        // kube-system is excluded unless the list says otherwise.
        let system = |key: &str| match key {
            "CNI_ARGS" => Some("K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-0".into()),
            other => env("ADD")(other),
        };
        assert_eq!(run(system, &conf(&socket, "")).exit_code, 0);
    }

    #[test]
    fn bad_input_gets_the_specifications_errors() {
        let socket = Path::new("/nonexistent/cni.sock");
        let decoding = error_of(&run(env("ADD"), b"{not json"));
        assert_eq!(decoding["code"], DECODING_FAILURE);
        let alone = br#"{"cniVersion":"1.0.0","name":"k8s","type":"warren-cni"}"#;
        let error = error_of(&run(env("ADD"), alone));
        assert_eq!(error["code"], INVALID_CONFIG);
        assert!(
            error["msg"].as_str().unwrap().contains("chained"),
            "{error}"
        );
        assert_eq!(error_of(&run(env("CHECK"), alone))["code"], INVALID_CONFIG);
        assert_eq!(
            error_of(&run(env("FROB"), &conf(socket, "")))["code"],
            INVALID_ENVIRONMENT
        );
        let ancient = br#"{"cniVersion":"0.2.0","name":"k8s","type":"warren-cni","prevResult":{}}"#;
        assert_eq!(
            error_of(&run(env("ADD"), ancient))["code"],
            INCOMPATIBLE_VERSION
        );
        let version = run(env("VERSION"), b"");
        assert_eq!(version.exit_code, 0);
        let version: Value = serde_json::from_str(&version.stdout).unwrap();
        assert!(
            version["supportedVersions"]
                .as_array()
                .unwrap()
                .contains(&"1.0.0".into())
        );
    }
}
