//! The eBPF pipeline end to end: the object built by aya-build loads, the
//! connect hook attaches to a cgroup, a real connection from a process in
//! that cgroup passes through it, and its effect is read back from the maps.

use std::{
    io::Read as _,
    net::{Ipv4Addr, SocketAddrV4, TcpListener},
    process::Command,
};

use anyhow::{Context as _, Result, ensure};
use warren_ebpf_common::Counter;
use warren_node_agent::datapath::Datapath;
use warren_testbed::{cgroup::Cgroup, privilege::require_root};

#[test]
fn connect4_records_original_destination() -> Result<()> {
    require_root()?;
    let cgroup = Cgroup::create(&format!("warren-e2e-smoke-{}", std::process::id()))?;
    let mut datapath = Datapath::load().context("loading the eBPF object")?;
    datapath.attach_cgroup(cgroup.path())?;

    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let target = match listener.local_addr()? {
        std::net::SocketAddr::V4(addr) => addr,
        other => anyhow::bail!("listener bound to {other}, expected IPv4"),
    };

    // A shell that moves itself into the cgroup, then connects with bash's
    // /dev/tcp and writes one line: a real connect() from inside the cgroup.
    let procs = cgroup.path().join("cgroup.procs");
    let script = format!(
        "echo $$ > {procs} && exec 3<>/dev/tcp/{ip}/{port} && echo hello >&3",
        procs = procs.display(),
        ip = target.ip(),
        port = target.port(),
    );
    let mut client = Command::new("bash").arg("-c").arg(&script).spawn()?;
    let (mut conn, peer) = listener.accept()?;
    let mut got = String::new();
    conn.read_to_string(&mut got)?;
    let status = client.wait()?;
    ensure!(status.success(), "client failed: {status}");
    ensure!(got == "hello\n", "listener got {got:?}");

    let counters = datapath.counters()?;
    ensure!(
        counters.get(Counter::Connect4Seen) >= 1,
        "connect4 saw no connect: {counters:?}"
    );
    let recorded = datapath.original_destinations()?;
    ensure!(
        recorded.iter().any(|(_, dst)| *dst == target),
        "no original destination {target} recorded (client was {peer}); map holds {recorded:?}"
    );

    // A connect from outside the cgroup (this test process) is not seen.
    let before = datapath.counters()?.get(Counter::Connect4Seen);
    let _outside =
        std::net::TcpStream::connect(SocketAddrV4::new(Ipv4Addr::LOCALHOST, target.port()))?;
    let after = datapath.counters()?.get(Counter::Connect4Seen);
    ensure!(
        before == after,
        "connect4 saw a connect from outside its cgroup"
    );
    Ok(())
}
