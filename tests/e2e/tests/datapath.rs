//! The eBPF datapath on a testbed cluster, with real processes and real
//! traffic: capture of enrolled pods, the original destination and source
//! pod recovered from the kernel, exemptions, the STRICT guard, the socket
//! shortcut, and pins that outlive the agent.
//!
//! ztunnel's place on port 15001 is taken by `warren-sample transparent`, a
//! minimal transparent proxy that asks the kernel where each connection was
//! going (`SO_ORIGINAL_DST` and Warren's `SO_WARREN_ORIGIN`), prints it, and
//! forwards the bytes with ztunnel's socket mark.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;
use warren_e2e::{
    agent::{
        attached_programs, datapath, enroll, expected_programs, register_local_pods,
        start_agent_with, start_proxy, unenroll, warrenctl,
    },
    mesh::eventually,
    workload::{count_status, load, start_echo, start_http_server, wait_listening},
};
use warren_ebpf_common::{Counter, Mode, program};
use warren_node_agent::datapath::PodEnrollment;
use warren_testbed::{Cluster, Node, Pod, Process, binaries, privilege::require_root};

/// The agent's flags in these tests: the socket shortcut is opt-in, and
/// these tests cover it; the inbound capture is left out, since the stand-in
/// proxy has no plaintext inbound listeners (e2e `mesh` covers it, with
/// ztunnel).
const AGENT_ARGS: &[&str] = &["--socket-shortcut", "--inbound-capture=false"];

/// A cluster with the node agent and the stand-in proxy on node 0.
struct Mesh {
    // Field order is drop order: processes stop before the cluster goes.
    proxy: Process,
    agent: Process,
    cluster: Cluster,
}

impl Mesh {
    fn up(nodes: usize, pods_per_node: usize) -> Result<Self> {
        require_root()?;
        let cluster = Cluster::builder()
            .nodes(nodes)
            .pods_per_node(pods_per_node)
            .up()?;
        let node = cluster.node(0)?;
        let agent = start_agent_with(&cluster, node, AGENT_ARGS)?;
        register_local_pods(&cluster, node)?;
        let proxy = start_proxy(&cluster, node)?;
        Ok(Self {
            proxy,
            agent,
            cluster,
        })
    }

    fn node(&self) -> &Node {
        &self.cluster.nodes()[0]
    }

    fn pod(&self, name: &str) -> Result<&Pod> {
        self.cluster.pod(name)
    }

    /// Connections the proxy has seen so far, one JSON object each.
    fn captured(&self) -> Vec<Value> {
        self.proxy
            .output()
            .lines()
            .filter(|l| l.starts_with('{'))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Captured connections that came from `pod` (over IPv4).
    fn captured_from(&self, pod: &Pod) -> Vec<Value> {
        self.captured_from_ip(&pod.ip.to_string())
    }

    /// Captured connections whose peer address is `ip`. The proxy listens
    /// on [::], so IPv4 peers show as v4-mapped or plain; both count.
    fn captured_from_ip(&self, ip: &str) -> Vec<Value> {
        let forms = [
            format!("{ip}:"),
            format!("[{ip}]:"),
            format!("[::ffff:{ip}]:"),
        ];
        self.captured()
            .into_iter()
            .filter(|c| {
                c["peer"]
                    .as_str()
                    .is_some_and(|p| forms.iter().any(|f| p.starts_with(f.as_str())))
            })
            .collect()
    }

    fn counter(&self, counter: Counter) -> Result<u64> {
        Ok(datapath(self.node())?.counters()?.get(counter))
    }
}

fn url(pod: &Pod, port: u16) -> String {
    format!("http://{}:{port}/", pod.ip)
}

/// The peer of a connection from `client` to `target` (`ip:port`, `[ip6]:port`),
/// as the client's `getpeername` says, `ip:port` or `[ip6]:port`.
fn peer_seen(client: &Pod, host: &str, port: u16) -> Result<String> {
    const PEER: &str = r#"
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.create_connection((host, port), timeout=5)
peer = s.getpeername()
print(f"[{peer[0]}]:{peer[1]}" if ":" in peer[0] else f"{peer[0]}:{peer[1]}")
"#;
    let out = client
        .sandbox
        .exec("python3", ["-c", PEER, host, &port.to_string()])?;
    ensure!(
        out.status.success(),
        "connecting from {} to {host}:{port}: {}",
        client.name,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `n` requests from `client` to `url` over one keep-alive connection, all
/// of which must succeed.
fn all_ok(client: &Pod, url: &str, n: u64) -> Result<()> {
    let report = load(client, url, &["-n", &n.to_string(), "-c", "1"])?;
    ensure!(
        count_status(&report, 200) == n,
        "from {} to {url}: {report}",
        client.name
    );
    Ok(())
}

#[test]
fn enrolled_pods_are_captured_with_original_destination_and_source() -> Result<()> {
    let mesh = Mesh::up(2, 3)?;
    let (client, same_node, not_enrolled) =
        (mesh.pod("n0-p0")?, mesh.pod("n0-p1")?, mesh.pod("n0-p2")?);
    let remote = mesh.pod("n1-p0")?;
    let _remote_http = start_http_server(&mesh.cluster, remote, 8080, &[])?;
    let _excluded_http = start_http_server(&mesh.cluster, remote, 8081, &[])?;
    let _local_http = start_http_server(&mesh.cluster, same_node, 8080, &[])?;
    let _loopback_http = start_http_server(&mesh.cluster, client, 8082, &[])?;
    let cookie = enroll(&mesh.cluster, client, Mode::Permissive, &[8081])?;

    // Across nodes and on the same node: through the proxy, which learns
    // the original destination and the source pod from the kernel.
    for server in [remote, same_node] {
        let before = mesh.captured_from(client).len();
        all_ok(client, &url(server, 8080), 3)?;
        let seen = mesh.captured_from(client);
        let new = &seen[before..];
        ensure!(
            new.len() == 1,
            "proxy saw {} connections, want 1 (keep-alive): {new:?}",
            new.len()
        );
        let want = format!("{}:8080", server.ip);
        for c in new {
            ensure!(c["orig_dst"] == want.as_str(), "SO_ORIGINAL_DST gave {c}");
            ensure!(
                c["origin_dst"] == want.as_str(),
                "SO_WARREN_ORIGIN gave {c}"
            );
            ensure!(
                c["netns_cookie"].as_u64() == Some(cookie),
                "source pod cookie {c}, want {cookie}"
            );
        }
    }
    ensure!(mesh.counter(Counter::ConnectRedirected)? >= 2);
    ensure!(mesh.counter(Counter::GetsockoptAnswered)? >= 4);

    // The client, asking whom it is connected to, hears the server it dialled,
    // not the proxy's listener the connection was sent to.
    for server in [remote, same_node] {
        let before = mesh.captured_from(client).len();
        let peer = peer_seen(client, &server.ip.to_string(), 8080)?;
        // The client's connect completes in the kernel, before the proxy
        // accepts and records it: the client may be gone first.
        eventually(Duration::from_secs(5), "the connection captured", || {
            Ok(mesh.captured_from(client).len() > before)
        })?;
        ensure!(
            mesh.captured_from(client).len() == before + 1,
            "one connection, one capture"
        );
        ensure!(
            peer == format!("{}:8080", server.ip),
            "getpeername gave {peer}"
        );
    }
    ensure!(mesh.counter(Counter::PeerRestored)? >= 2);

    // Left alone: a pod that is not enrolled, an excluded port, loopback.
    let before = mesh.captured().len();
    let exempt_before = mesh.counter(Counter::ConnectExempt)?;
    all_ok(not_enrolled, &url(remote, 8080), 2)?;
    all_ok(client, &url(remote, 8081), 2)?;
    all_ok(client, "http://127.0.0.1:8082/", 2)?;
    ensure!(
        mesh.captured().len() == before,
        "exempt traffic reached the proxy: {:?}",
        &mesh.captured()[before..]
    );
    ensure!(mesh.counter(Counter::ConnectExempt)? >= exempt_before + 2);

    // The proxy's own connects carry ztunnel's mark: even with its own
    // namespace enrolled, they are not sent back to it (no loop).
    let node = mesh.node();
    let self_enrollment = PodEnrollment {
        name: "node/self".into(),
        netns: node.sandbox.netns.clone(),
        ip4: None,
        host_veth: None,
        mode: Mode::Permissive,
        port_modes: Vec::new(),
        excluded_ports: Vec::new(),
    };
    let bpffs = node.bpffs.clone();
    let node_cookie = node.sandbox.in_netns(move || {
        let mut datapath = warren_node_agent::datapath::Datapath::open(&bpffs)?;
        datapath.set_inbound_capture(false);
        Ok(datapath.enroll(&self_enrollment)?)
    })?;
    let before = mesh.captured().len();
    all_ok(client, &url(remote, 8080), 2)?;
    ensure!(
        mesh.captured().len() == before + 1,
        "looped or lost: {:?}",
        &mesh.captured()[before..]
    );
    datapath(node)?.unenroll(node_cookie)?;
    Ok(())
}

#[test]
fn strict_guard_admits_only_the_node() -> Result<()> {
    let mesh = Mesh::up(2, 3)?;
    let (mesh_client, guarded, outsider) =
        (mesh.pod("n0-p0")?, mesh.pod("n0-p1")?, mesh.pod("n0-p2")?);
    let remote_outsider = mesh.pod("n1-p0")?;
    let _http = start_http_server(&mesh.cluster, guarded, 8080, &[])?;
    enroll(&mesh.cluster, mesh_client, Mode::Strict, &[])?;
    enroll(&mesh.cluster, guarded, Mode::Strict, &[])?;
    let target = url(guarded, 8080);

    let refused = |from: &Pod| -> Result<()> {
        let report = load(from, &target, &["-n", "2", "-c", "1", "--timeout", "1s"])?;
        ensure!(
            count_status(&report, 200) == 0,
            "STRICT let {} in: {report}",
            from.name
        );
        Ok(())
    };
    refused(outsider)?;
    refused(remote_outsider)?;
    ensure!(mesh.counter(Counter::GuardDropped)? > 0);

    // Mesh traffic arrives from the node (through the proxy), and so do
    // kubelet-style probes.
    all_ok(mesh_client, &target, 2)?;
    let sample = binaries::path("warren-sample")?;
    let probe = mesh.node().sandbox.exec(
        &sample.to_string_lossy(),
        ["load", "--url", &target, "-n", "2", "--json"],
    )?;
    let probe: Value = serde_json::from_slice(&probe.stdout).context("probe report")?;
    ensure!(
        count_status(&probe, 200) == 2,
        "probe from the node refused: {probe}"
    );

    // PERMISSIVE lets plaintext in.
    enroll(&mesh.cluster, guarded, Mode::Permissive, &[])?;
    all_ok(outsider, &target, 2)?;
    all_ok(remote_outsider, &target, 2)?;
    Ok(())
}

/// Runs `warren-sample stream` from `client` to `target` and checks the echo
/// came back byte-exact.
/// An echo server on `port` of `pod` that waits 2 s before reading each
/// connection.
fn start_slow_echo(cluster: &Cluster, pod: &Pod, port: u16) -> Result<Process> {
    let sample = binaries::path("warren-sample")?;
    let listen = format!("[::]:{port}");
    let mut echo = cluster.spawn(
        &pod.sandbox,
        &sample.to_string_lossy(),
        &["echo", "--listen", &listen, "--read-after", "2s"],
    )?;
    wait_listening(pod, port, &mut echo)?;
    Ok(echo)
}

/// Runs `warren-sample pingpong` (1 KiB round trips) from `client` to
/// `target`; returns how many it made.
fn pingpong(client: &Pod, target: &str, round_trips: &str) -> Result<u64> {
    let out = warren_e2e::workload::pingpong(client, target, &["--round-trips", round_trips])?;
    let report: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("pingpong report: {}", String::from_utf8_lossy(&out.stderr)))?;
    ensure!(out.status.success(), "pingpong failed: {report}");
    report["round_trips"]
        .as_u64()
        .with_context(|| format!("no round_trips in {report}"))
}

fn stream(client: &Pod, target: &str, bytes: &str, max_write: &str) -> Result<Value> {
    let sample = binaries::path("warren-sample")?;
    let out = client.sandbox.exec(
        &sample.to_string_lossy(),
        [
            "stream",
            "--connect",
            target,
            "--bytes",
            bytes,
            "--max-write",
            max_write,
            "--json",
        ],
    )?;
    let report: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("stream report: {}", String::from_utf8_lossy(&out.stderr)))?;
    ensure!(
        out.status.success() && report["ok"] == true,
        "stream of {bytes} not byte-exact: {report}"
    );
    Ok(report)
}

#[test]
fn shortcut_carries_streams_byte_exact() -> Result<()> {
    let mesh = Mesh::up(1, 2)?;
    let (client, server) = (mesh.pod("n0-p0")?, mesh.pod("n0-p1")?);
    let _echo = start_echo(&mesh.cluster, server, 9000)?;
    enroll(&mesh.cluster, client, Mode::Permissive, &[])?;
    let target = format!("{}:9000", server.ip);
    let hits_before = mesh.counter(Counter::ShortcutHit)?;
    let spent_before = mesh.counter(Counter::ShortcutBudgetSpent)?;

    // Ping-pong stays even: its sockets keep the shortcut, however long.
    let rounds = pingpong(client, &target, "20000")?;
    ensure!(
        mesh.counter(Counter::ShortcutBudgetSpent)? == spent_before,
        "a ping-pong of {rounds} round trips left the shortcut"
    );

    // client → proxy and proxy → server are both local pairs. A reader
    // that keeps up keeps every socket even: this 1 GiB echo stays on the
    // shortcut.
    let report = stream(client, &target, "1G", "65536")?;
    eprintln!("1 GiB through the shortcut: {report}");

    // A reader that waits 2 s before its first read: the proxy's socket gets
    // SHORTCUT_BUDGET_BYTES ahead and moves to TCP, then TCP's window holds
    // the proxy back and the client's socket moves too, each with shortcut
    // bytes still queued at its peer. The echo must come back byte-exact
    // and in order anyway.
    let _slow = start_slow_echo(&mesh.cluster, server, 9001)?;
    let slow = format!("{}:9001", server.ip);
    let report = stream(client, &slow, "64M", "65536")?;
    eprintln!("64 MiB into a slow reader, switching to TCP: {report}");
    let spent = mesh.counter(Counter::ShortcutBudgetSpent)? - spent_before;
    ensure!(
        spent >= 2,
        "{spent} sockets moved to TCP with a slow reader (expected the client's and the proxy's)"
    );
    // Many small messages of random sizes.
    stream(client, &target, "32M", "1500")?;

    let hits = mesh.counter(Counter::ShortcutHit)? - hits_before;
    ensure!(hits > 100, "only {hits} shortcut hits");
    ensure!(
        mesh.captured_from(client).len() == 4,
        "the ping-pong and the three streams did not all go through the proxy"
    );
    ensure!(mesh.counter(Counter::ShortcutInserted)? >= 4);
    Ok(())
}

#[test]
fn shortcut_is_off_without_the_flag() -> Result<()> {
    let mut mesh = Mesh::up(1, 2)?;
    // Restarted without --socket-shortcut: it adopts the pinned datapath and
    // turns the shortcut off for connections from now on.
    mesh.agent.stop()?;
    mesh.agent = start_agent_with(&mesh.cluster, mesh.node(), &["--inbound-capture=false"])?;
    let (client, server) = (mesh.pod("n0-p0")?, mesh.pod("n0-p1")?);
    let _echo = start_echo(&mesh.cluster, server, 9000)?;
    enroll(&mesh.cluster, client, Mode::Permissive, &[])?;
    let inserted = mesh.counter(Counter::ShortcutInserted)?;
    stream(client, &format!("{}:9000", server.ip), "16M", "65536")?;
    ensure!(
        mesh.captured_from(client).len() == 1,
        "the stream did not go through the proxy"
    );
    let joined = mesh.counter(Counter::ShortcutInserted)? - inserted;
    ensure!(
        joined == 0,
        "{joined} sockets joined the shortcut while it is off"
    );
    Ok(())
}

fn bpftool_cgroup_programs(node: &Node) -> Result<usize> {
    let out = Command::new("bpftool")
        .arg("cgroup")
        .arg("show")
        .arg(&node.cgroup)
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("warren"))
        .count())
}

#[test]
fn pins_outlive_the_agent_and_a_restart_adopts_them() -> Result<()> {
    let mut mesh = Mesh::up(2, 1)?;
    let (client, remote) = (mesh.pod("n0-p0")?.clone(), mesh.pod("n1-p0")?.clone());
    let _http = start_http_server(&mesh.cluster, &remote, 8080, &[])?;
    enroll(&mesh.cluster, &client, Mode::Permissive, &[])?;
    all_ok(&client, &url(&remote, 8080), 2)?;
    let redirected = mesh.counter(Counter::ConnectRedirected)?;
    // Every program of the object, plus the guard's link on the enrolled
    // pod's veth.
    let installed = attached_programs(mesh.node())?;
    let mut want = expected_programs();
    want.push("warren_guard".into());
    want.sort();
    ensure!(installed == want, "installed programs: {installed:?}");

    // Agent gone: capture goes on.
    mesh.agent.stop()?;
    all_ok(&client, &url(&remote, 8080), 2)?;
    ensure!(
        mesh.captured_from(&client).len() == 2,
        "capture stopped with the agent"
    );

    // With no agent running, warrenctl explains the node from its pins.
    let pods = warrenctl(mesh.node(), &["bpf", "pods"])?;
    let row = pods
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["pod"] == "default/n0-p0"))
        .with_context(|| format!("enrolled pod missing from warrenctl bpf pods: {pods}"))?;
    ensure!(
        row["mode"] == "PERMISSIVE" && row["redirected"].as_u64() >= Some(2),
        "pod row {row}"
    );
    let progs = warrenctl(mesh.node(), &["bpf", "prog", "list"])?;
    ensure!(
        progs.as_array().map(Vec::len) == Some(installed.len()),
        "prog list {progs}"
    );
    let maps = warrenctl(mesh.node(), &["bpf", "map", "list"])?;
    ensure!(
        maps.as_array().map(Vec::len) == Some(warren_ebpf_common::map::ALL.len()),
        "map list {maps}"
    );
    let counters = warrenctl(mesh.node(), &["bpf", "map", "dump", "warren_counters"])?;
    let redirected_now = counters
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["key"] == "connect_redirected"))
        .and_then(|r| r["value"].as_u64());
    ensure!(
        redirected_now == Some(redirected + 1),
        "decoded counters {counters}"
    );

    // A new agent adopts the pins: nothing attached twice, counters go on.
    mesh.agent = start_agent_with(&mesh.cluster, mesh.node(), AGENT_ARGS)?;
    ensure!(
        mesh.agent.output().contains("Adopted"),
        "restart did not adopt:\n{}",
        mesh.agent.output()
    );
    let adopted = attached_programs(mesh.node())?;
    ensure!(
        adopted == installed,
        "after restart: {adopted:?}, before: {installed:?}"
    );
    ensure!(
        bpftool_cgroup_programs(mesh.node())? == program::CGROUP.len(),
        "cgroup has {} warren programs",
        bpftool_cgroup_programs(mesh.node())?
    );
    all_ok(&client, &url(&remote, 8080), 1)?;
    ensure!(
        mesh.counter(Counter::ConnectRedirected)? >= redirected + 2,
        "counters restarted"
    );

    // Restarted with another --cgroup (here the node's pods' subtree, which
    // the stand-in proxy is outside of), then with the first one again: the
    // links follow --cgroup each time, and capture works where they are.
    mesh.agent.stop()?;
    let mut moved = mesh.node().clone();
    moved.cgroup = moved.pods_cgroup.clone();
    mesh.agent = start_agent_with(&mesh.cluster, &moved, AGENT_ARGS)?;
    let on = |node: &Node| bpftool_cgroup_programs(node);
    ensure!(
        mesh.agent.output().contains("attached elsewhere")
            && on(&moved)? == program::CGROUP.len()
            && on(mesh.node())? == 0,
        "programs on the new cgroup: {}, on the old: {}\n{}",
        on(&moved)?,
        on(mesh.node())?,
        mesh.agent.output()
    );
    mesh.agent.stop()?;
    mesh.agent = start_agent_with(&mesh.cluster, mesh.node(), AGENT_ARGS)?;
    ensure!(
        on(mesh.node())? == program::CGROUP.len() && on(&moved)? == 0,
        "programs back on the node's cgroup: {}, left on the pods': {}",
        on(mesh.node())?,
        on(&moved)?
    );
    let before = mesh.captured_from(&client).len();
    all_ok(&client, &url(&remote, 8080), 1)?;
    ensure!(
        mesh.captured_from(&client).len() == before + 1,
        "not captured after the links came back"
    );

    // Uninstall removes everything; traffic then goes direct.
    mesh.agent.stop()?;
    let agent = binaries::path("warren-node-agent")?;
    let node = mesh.node();
    let bpffs = node.bpffs.to_string_lossy().into_owned();
    let out = node.sandbox.exec(
        &agent.to_string_lossy(),
        ["uninstall", "--node", &node.name, "--bpffs", &bpffs],
    )?;
    ensure!(
        out.status.success(),
        "uninstall failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(!node.bpffs.exists(), "pins left after uninstall");
    ensure!(
        bpftool_cgroup_programs(node)? == 0,
        "programs still attached after uninstall"
    );
    let before = mesh.captured().len();
    all_ok(&client, &url(&remote, 8080), 2)?;
    ensure!(mesh.captured().len() == before, "captured after uninstall");
    Ok(())
}

#[test]
fn unenroll_stops_new_captures_and_spares_open_connections() -> Result<()> {
    let mesh = Mesh::up(2, 1)?;
    let (client, remote) = (mesh.pod("n0-p0")?, mesh.pod("n1-p0")?);
    let _echo = start_echo(&mesh.cluster, remote, 9000)?;
    let cookie = enroll(&mesh.cluster, client, Mode::Permissive, &[])?;

    // A connection that is open across the unenrollment: it exchanges one
    // line, then waits on a fifo that the test opens only after unenrolling,
    // then exchanges a second line on the same connection.
    let fifo = mesh.cluster.log_dir().join("held.go");
    let made = Command::new("mkfifo").arg(&fifo).status()?;
    ensure!(made.success(), "mkfifo failed");
    let script = format!(
        "exec 3<>/dev/tcp/{}/9000; echo one >&3; read -r a <&3; echo up; read -r go < {}; echo two >&3; read -r b <&3; echo \"$a $b\"",
        remote.ip,
        fifo.display()
    );
    let mut held = mesh
        .cluster
        .spawn(&client.sandbox, "bash", &["-c", &script])?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !held.output().contains("up") {
        held.check_running()?;
        ensure!(Instant::now() < deadline, "held connection never came up");
        std::thread::sleep(Duration::from_millis(20));
    }
    ensure!(
        mesh.captured_from(client).len() == 1,
        "held connection not captured"
    );
    unenroll(&mesh.cluster, client, cookie)?;
    std::fs::write(&fifo, "go\n")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while held.check_running().is_ok() {
        if Instant::now() > deadline {
            bail!("held connection hung:\n{}", held.output());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    ensure!(
        held.output().trim() == "up\none two",
        "held connection broke: {:?}",
        held.output()
    );

    // New connections go direct.
    stream(client, &format!("{}:9000", remote.ip), "1M", "4096")?;
    ensure!(
        mesh.captured_from(client).len() == 1,
        "captured after unenroll"
    );
    Ok(())
}

/// The ifindex of `ifname` inside the node's namespace (`ip -o link`
/// prints "<index>: <name>: …").
fn ifindex_in(node: &Node, ifname: &str) -> Result<u64> {
    let out = node.sandbox.exec("ip", ["-o", "link", "show", ifname])?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split(':')
        .next()
        .and_then(|i| i.trim().parse().ok())
        .with_context(|| format!("no interface {ifname} in {}: {text}", node.name))
}

#[test]
fn guard_pins_follow_the_interface_not_its_name() -> Result<()> {
    let mut mesh = Mesh::up(1, 2)?;
    let victim = mesh.pod("n0-p0")?.clone();
    let other = mesh.pod("n0-p1")?.clone();
    let node = mesh.node().clone();
    enroll(&mesh.cluster, &victim, Mode::Strict, &[])?;

    // The pod dies without being unenrolled: its veth goes, the pin stays.
    mesh.cluster.remove_pod("n0-p0")?;
    let guards = |mesh: &Mesh| -> Result<Vec<Value>> {
        let progs = warrenctl(mesh.node(), &["bpf", "prog", "list"])?;
        Ok(progs
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| {
                p["pin"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("links/guard_"))
            })
            .cloned()
            .collect())
    };
    // The kernel destroys a deleted namespace (and its veths) a moment
    // later, in the background; the link is detached then.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stale = guards(&mesh)?;
        if stale.len() == 1 && stale[0]["ifindex"] == 0 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "expected one guard whose interface is gone: {stale:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // A new interface takes the old name. Enrolling a pod behind it must
    // attach a fresh guard, not adopt the dead one.
    let veth = victim.host_veth.clone();
    node.sandbox.in_netns({
        let veth = veth.clone();
        move || {
            warren_testbed::netns::ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "impostor",
            ])?;
            Ok(())
        }
    })?;
    let new_ifindex = ifindex_in(&node, &veth)?;
    let enrollment = PodEnrollment {
        name: "default/newcomer".into(),
        netns: other.sandbox.netns.clone(),
        ip4: None,
        host_veth: Some(veth.clone()),
        mode: Mode::Strict,
        port_modes: Vec::new(),
        excluded_ports: Vec::new(),
    };
    let bpffs = node.bpffs.clone();
    let cookie = node.sandbox.in_netns(move || {
        Ok(warren_node_agent::datapath::Datapath::open(&bpffs)?.enroll(&enrollment)?)
    })?;
    let fresh = guards(&mesh)?;
    ensure!(
        fresh.len() == 1 && fresh[0]["ifindex"].as_u64() == Some(new_ifindex),
        "guard not on the new {veth} (ifindex {new_ifindex}): {fresh:?}"
    );

    // Unenrolling finds the guard by interface and removes it.
    let bpffs = node.bpffs.clone();
    node.sandbox.in_netns(move || {
        Ok(warren_node_agent::datapath::Datapath::open(&bpffs)?.unenroll(cookie)?)
    })?;
    ensure!(
        guards(&mesh)?.is_empty(),
        "guard left after unenroll: {:?}",
        guards(&mesh)?
    );
    Ok(())
}

/// Programs and links as warrenctl lists them: (pin, link id, program id).
fn attachments(node: &Node) -> Result<Vec<(String, Option<u64>, u64)>> {
    let progs = warrenctl(node, &["bpf", "prog", "list"])?;
    let mut rows: Vec<(String, Option<u64>, u64)> = progs
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["pin"].as_str().unwrap_or_default().to_owned(),
                p["link_id"].as_u64(),
                p["id"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    rows.sort();
    Ok(rows)
}

fn bpftool(args: &[&str]) -> Result<()> {
    let out = Command::new("bpftool").args(args).output()?;
    ensure!(
        out.status.success(),
        "bpftool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn another_version_is_upgraded_in_place_or_reinstalled() -> Result<()> {
    let mut mesh = Mesh::up(2, 1)?;
    let (client, remote) = (mesh.pod("n0-p0")?.clone(), mesh.pod("n1-p0")?.clone());
    let _http = start_http_server(&mesh.cluster, &remote, 8080, &[])?;
    enroll(&mesh.cluster, &client, Mode::Strict, &[])?;
    all_ok(&client, &url(&remote, 8080), 1)?;
    let before = attachments(mesh.node())?;
    let meta = mesh.node().bpffs.join("maps/WARREN_META");
    let meta = meta.to_string_lossy().into_owned();

    // Pins left by another version of the agent (another object hash).
    mesh.agent.stop()?;
    bpftool(&[
        "map", "update", "pinned", &meta, "key", "0", "0", "0", "0", "value", "1", "0", "0", "0",
        "0", "0", "0", "0",
    ])?;
    // New connections keep being captured while the new agent upgrades.
    let sample = binaries::path("warren-sample")?;
    let loop_script = format!(
        "for i in $(seq 30); do {} load --url {} -n 1 --json; sleep 0.02; done",
        sample.display(),
        url(&remote, 8080)
    );
    let mut traffic = mesh
        .cluster
        .spawn(&client.sandbox, "bash", &["-c", &loop_script])?;
    std::thread::sleep(Duration::from_millis(200));
    mesh.agent = start_agent_with(&mesh.cluster, mesh.node(), AGENT_ARGS)?;
    ensure!(
        mesh.agent.output().contains("Upgraded"),
        "no upgrade:\n{}",
        mesh.agent.output()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while traffic.check_running().is_ok() {
        ensure!(Instant::now() < deadline, "traffic loop hung");
        std::thread::sleep(Duration::from_millis(50));
    }
    let reports: Vec<Value> = traffic
        .output()
        .lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let ok: u64 = reports.iter().map(|r| count_status(r, 200)).sum();
    ensure!(
        reports.len() == 30 && ok == 30,
        "{ok}/30 requests answered across the upgrade"
    );
    ensure!(
        mesh.captured_from(&client).len() == 31,
        "not every connection was captured across the upgrade"
    );
    // Same links (same ids), new programs inside them; the pod stays enrolled.
    let after = attachments(mesh.node())?;
    ensure!(
        after.len() == before.len(),
        "attachments {before:?} → {after:?}"
    );
    for ((pin_a, link_a, prog_a), (pin_b, link_b, prog_b)) in before.iter().zip(&after) {
        ensure!(
            pin_a == pin_b && link_a == link_b,
            "{pin_a} changed: {link_a:?} → {link_b:?}"
        );
        ensure!(prog_a != prog_b, "{pin_a} still runs program {prog_a}");
    }
    ensure!(
        datapath(mesh.node())?.pods()?.len() == 1,
        "enrollment lost in the upgrade"
    );
    ensure!(bpftool_cgroup_programs(mesh.node())? == program::CGROUP.len());

    // An older build: without a program this one has, with a program under
    // a name this one no longer uses, with fewer counters and a map this one
    // does not have. Upgraded all the same: the missing program attached,
    // the renamed one's old link gone (else both would run), the counters
    // started over, the stray map unpinned, the rest kept (the pod's
    // enrollment, its STRICT guard).
    mesh.agent.stop()?;
    let bpffs = mesh.node().bpffs.clone();
    let links = bpffs.join("links");
    std::fs::remove_file(links.join(program::GETPEERNAME6))?;
    std::fs::rename(
        links.join(program::GETPEERNAME4),
        links.join("warren_getpeername4"),
    )?;
    let stray_map = bpffs.join("maps/WARREN_SHORTCUT_BUDGET");
    bpftool(&[
        "map",
        "create",
        &stray_map.to_string_lossy(),
        "type",
        "array",
        "key",
        "4",
        "value",
        "8",
        "entries",
        "1",
        "name",
        "WARREN_OLD",
    ])?;
    let counters = bpffs.join("maps/WARREN_COUNTERS");
    std::fs::remove_file(&counters)?;
    let counters = counters.to_string_lossy().into_owned();
    bpftool(&[
        "map",
        "create",
        &counters,
        "type",
        "percpu_array",
        "key",
        "4",
        "value",
        "8",
        "entries",
        "3",
        "name",
        "WARREN_COUNTERS",
    ])?;
    mesh.agent = start_agent_with(&mesh.cluster, mesh.node(), AGENT_ARGS)?;
    ensure!(
        mesh.agent.output().contains("Upgraded"),
        "no upgrade:\n{}",
        mesh.agent.output()
    );
    ensure!(bpftool_cgroup_programs(mesh.node())? == program::CGROUP.len());
    ensure!(
        !links.join("warren_getpeername4").exists() && !stray_map.exists(),
        "an older build's pins were left"
    );
    ensure!(
        attachments(mesh.node())?.len() == before.len(),
        "attachments {before:?} → {:?}",
        attachments(mesh.node())?
    );
    ensure!(
        datapath(mesh.node())?.pods()?.len() == 1,
        "enrollment lost in the upgrade"
    );
    all_ok(&client, &url(&remote, 8080), 1)?;
    ensure!(
        mesh.counter(Counter::ConnectRedirected)? >= 1,
        "the counters did not start over in a map of this build's shape"
    );

    // Maps of another shape: not reused, everything installed afresh.
    mesh.agent.stop()?;
    std::fs::remove_file(&meta)?;
    bpftool(&[
        "map",
        "create",
        &meta,
        "type",
        "array",
        "key",
        "4",
        "value",
        "16",
        "entries",
        "1",
        "name",
        "WARREN_META",
    ])?;
    mesh.agent = start_agent_with(&mesh.cluster, mesh.node(), AGENT_ARGS)?;
    ensure!(
        mesh.agent.output().contains("Reinstalled"),
        "no reinstall:\n{}",
        mesh.agent.output()
    );
    ensure!(
        bpftool_cgroup_programs(mesh.node())? == program::CGROUP.len(),
        "after reinstall: {} programs",
        bpftool_cgroup_programs(mesh.node())?
    );
    ensure!(
        datapath(mesh.node())?.pods()?.is_empty(),
        "maps were reused"
    );
    Ok(())
}

#[test]
fn ipv6_is_captured_and_guarded_too() -> Result<()> {
    let mesh = Mesh::up(2, 2)?;
    let (client, guarded) = (mesh.pod("n0-p0")?, mesh.pod("n0-p1")?);
    let (remote, outsider) = (mesh.pod("n1-p0")?, mesh.pod("n1-p1")?);
    let _remote_http = start_http_server(&mesh.cluster, remote, 8080, &[])?;
    let _guarded_http = start_http_server(&mesh.cluster, guarded, 8080, &[])?;
    let cookie = enroll(&mesh.cluster, client, Mode::Permissive, &[])?;
    let url6 = |pod: &Pod| format!("http://[{}]:8080/", pod.ip6);

    // connect6 sends it to ztunnel's IPv6 listener; the proxy gets the
    // original IPv6 destination (IP6T_SO_ORIGINAL_DST) and the source pod.
    all_ok(client, &url6(remote), 2)?;
    let seen = mesh.captured_from_ip(&client.ip6.to_string());
    let want = format!("[{}]:8080", remote.ip6);
    ensure!(
        seen.len() == 1,
        "IPv6 connection not captured once: {seen:?}"
    );
    ensure!(
        seen[0]["orig_dst"] == want.as_str() && seen[0]["origin_dst"] == want.as_str(),
        "{}",
        seen[0]
    );
    ensure!(
        seen[0]["netns_cookie"].as_u64() == Some(cookie),
        "{}",
        seen[0]
    );
    // Its peer, as the client asks it, is the server it dialled.
    let peer = peer_seen(client, &remote.ip6.to_string(), 8080)?;
    ensure!(peer == want, "getpeername gave {peer}, want {want}");

    // STRICT over IPv6: an outsider is refused, mesh traffic from the node passes.
    enroll(&mesh.cluster, guarded, Mode::Strict, &[])?;
    let report = load(
        outsider,
        &url6(guarded),
        &["-n", "2", "-c", "1", "--timeout", "1s"],
    )?;
    ensure!(
        count_status(&report, 200) == 0,
        "STRICT let an IPv6 outsider in: {report}"
    );
    all_ok(client, &url6(guarded), 2)?;
    Ok(())
}

#[test]
fn port_level_modes_override_the_pods_mode() -> Result<()> {
    let mesh = Mesh::up(2, 2)?;
    let (guarded, outsider) = (mesh.pod("n0-p1")?, mesh.pod("n1-p0")?);
    let _http_a = start_http_server(&mesh.cluster, guarded, 8080, &[])?;
    let _http_b = start_http_server(&mesh.cluster, guarded, 8081, &[])?;
    let node = mesh.node().clone();
    let enroll_with = |mode: Mode, port_modes: Vec<(u16, Mode)>| -> Result<u64> {
        let enrollment = PodEnrollment {
            name: "default/n0-p1".into(),
            netns: guarded.sandbox.netns.clone(),
            ip4: Some(guarded.ip),
            host_veth: Some(guarded.host_veth.clone()),
            mode,
            port_modes,
            excluded_ports: Vec::new(),
        };
        let bpffs = node.bpffs.clone();
        node.sandbox.in_netns(move || {
            let mut datapath = warren_node_agent::datapath::Datapath::open(&bpffs)?;
            datapath.set_inbound_capture(false);
            Ok(datapath.enroll(&enrollment)?)
        })
    };
    let reachable = |port: u16| -> Result<bool> {
        let report = load(
            outsider,
            &url(guarded, port),
            &["-n", "1", "-c", "1", "--timeout", "1s"],
        )?;
        Ok(count_status(&report, 200) == 1)
    };

    // A STRICT port on a PERMISSIVE pod.
    enroll_with(Mode::Permissive, vec![(8080, Mode::Strict)])?;
    ensure!(
        !reachable(8080)? && reachable(8081)?,
        "PERMISSIVE pod, STRICT 8080"
    );
    // A PERMISSIVE exception on a STRICT pod; the old 8080 entry goes.
    enroll_with(Mode::Strict, vec![(8081, Mode::Permissive)])?;
    ensure!(
        !reachable(8080)? && reachable(8081)?,
        "STRICT pod, PERMISSIVE 8081"
    );
    // No port modes left: the pod's mode alone.
    enroll_with(Mode::Permissive, Vec::new())?;
    ensure!(
        reachable(8080)? && reachable(8081)?,
        "PERMISSIVE pod, no port modes"
    );
    let entries = datapath(&node)?.dump("WARREN_GUARD_PORTS")?.entries;
    ensure!(entries.is_empty(), "stale port entries: {entries:?}");
    Ok(())
}
