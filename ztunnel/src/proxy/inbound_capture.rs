//! Plaintext inbound listeners, one in each enrolled pod's network
//! namespace (127.0.0.1:15006, and [::1]:15006 for a pod with an IPv6
//! address), registered by the pod's address in the node's `INBOUND`
//! SOCKHASH. The node's inbound capture (an `sk_lookup` program on the pod's
//! namespace) hands them every connection to the pod from outside the mesh,
//! so PeerAuthentication and the pod's L4 policies decide on it as on mesh
//! traffic ([`super::inbound_passthrough::handle`]).
//!
//! The listeners follow the node's pods; every registration is asserted
//! again every few seconds, so a successor ztunnel (or a map entry its
//! predecessor's closing removed) is never left without its listeners for
//! long.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use aya::maps::{MapData, SockHash};
use tokio::{
    net::TcpStream,
    sync::{Notify, watch},
    task::JoinHandle,
};
use tracing::{debug, info, warn};
use warren_ebpf_common::IpKey;

use super::{Inputs, inbound_passthrough, socket_in};
use crate::{drain, state::workload::Workload};

/// The port the listeners take in each pod's namespace (Istio's plaintext
/// inbound port, kept free by convention).
pub const PORT: u16 = 15006;
/// How often every registration is asserted again.
const REASSERT: Duration = Duration::from_secs(5);

/// What the rest of ztunnel asks of the capture's task: whether it has
/// registered the node's pods yet (a successor waits for it before its
/// predecessor drains), and to register them again now (once the
/// predecessor's listeners, closing, took their entries with them).
#[derive(Default)]
pub struct Control {
    passes: watch::Sender<u64>,
    reassert: Notify,
}

impl Control {
    /// Whether the task has gone over the node's pods once, waiting up to
    /// `within` for it.
    pub async fn registered(&self, within: Duration) -> bool {
        let mut passes = self.passes.subscribe();
        tokio::time::timeout(within, passes.wait_for(|n| *n > 0))
            .await
            .is_ok_and(|seen| seen.is_ok())
    }

    /// Registers every listener again, without waiting for the next tick.
    pub fn reassert(&self) {
        self.reassert.notify_one();
    }
}

/// Listeners of one pod.
struct PodListeners {
    netns: PathBuf,
    /// The namespace's cookie: a namespace made again at the same path is
    /// another one.
    netns_cookie: u64,
    addresses: Vec<IpAddr>,
    /// One per family, with the accept loop that owns it.
    listeners: Vec<Listening>,
}

/// A listener's family, a descriptor of it (kept to register it again), and
/// its accept loop, which owns the listener and ends with this.
struct Listening {
    v4: bool,
    fd: OwnedFd,
    _task: AbortOnDrop,
}

/// A task aborted when its handle goes: a listener made before a later one
/// failed must not keep accepting.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The inbound capture's map, and which pin it was opened from (a datapath
/// installed again pins a new map at the same path).
struct OpenMap {
    path: PathBuf,
    inode: u64,
    sockets: SockHash<MapData, IpKey>,
}

/// Keeps the node's pods' listeners as the state says, until the drain.
pub async fn run(inputs: Arc<Inputs>, mut drain: drain::Watch) {
    let control = Arc::clone(&inputs.capture);
    let mut changes = inputs.state.changes();
    let mut pods: HashMap<String, PodListeners> = HashMap::new();
    let mut map: Option<OpenMap> = None;
    // Why the map did not open, last time it did not.
    let mut unopened: Option<String> = None;
    let mut tick = tokio::time::interval(REASSERT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        match inputs.state.mesh().inbound_listeners {
            // This node captures no inbound (or has not said yet).
            None => {
                pods.clear();
                map = None;
            }
            Some(path) => {
                let inode = pin_inode(&path);
                if map
                    .as_ref()
                    .is_none_or(|open| open.path != path || Some(open.inode) != inode)
                {
                    map = match (open_map(&path), inode) {
                        (Ok(sockets), Some(inode)) => {
                            unopened = None;
                            info!(map = %path.display(), "plaintext inbound listeners go in the node's inbound capture");
                            Some(OpenMap {
                                path: path.clone(),
                                inode,
                                sockets,
                            })
                        }
                        (Err(error), _) => {
                            // Said once per cause, not at every retry.
                            if unopened.as_ref() != Some(&error) {
                                warn!(map = %path.display(), %error, "cannot open the inbound capture's map (is bpffs mounted?): no pod of this node gets its capture until it opens; retrying");
                                unopened = Some(error);
                            }
                            None
                        }
                        (Ok(_), None) => None,
                    };
                }
                if let Some(open) = &mut map {
                    follow(&inputs, &mut pods, &mut open.sockets, &drain).await;
                }
            }
        }
        control.passes.send_modify(|n| *n += 1);
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
            () = control.reassert.notified() => {}
            () = drain.draining() => return,
        }
    }
}

/// The pin's inode: another one after the datapath was installed again.
fn pin_inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

fn open_map(path: &Path) -> Result<SockHash<MapData, IpKey>, String> {
    let data = MapData::from_pin(path).map_err(|e| e.to_string())?;
    SockHash::try_from(aya::maps::Map::SockHash(data)).map_err(|e| e.to_string())
}

/// Makes `pods` the node's enrolled pods, and registers each listener.
async fn follow(
    inputs: &Arc<Inputs>,
    pods: &mut HashMap<String, PodListeners>,
    sockets: &mut SockHash<MapData, IpKey>,
    drain: &drain::Watch,
) {
    let wanted: Vec<Arc<Workload>> = inputs
        .state
        .local_workloads()
        .into_iter()
        .filter(|w| w.hbone && !w.is_waypoint && w.netns.is_some())
        .collect();
    pods.retain(|key, _| wanted.iter().any(|w| w.key == *key));
    for workload in wanted {
        let Some(netns) = workload.netns.clone() else {
            continue;
        };
        let current = pods.get(&workload.key).is_some_and(|p| {
            p.netns == netns
                && p.netns_cookie == workload.netns_cookie
                && p.addresses == workload.addresses
        });
        if !current {
            pods.remove(&workload.key);
            match listen(inputs, &workload, &netns, drain).await {
                Ok(made) => {
                    debug!(pod = %workload.key, "plaintext inbound listeners made");
                    pods.insert(workload.key.clone(), made);
                }
                Err(error) => {
                    warn!(pod = %workload.key, netns = %netns.display(), %error, "cannot listen in the pod's namespace: its plaintext clients are refused once its capture is on");
                    continue;
                }
            }
        }
        let Some(pod) = pods.get(&workload.key) else {
            continue;
        };
        for ip in &pod.addresses {
            let Some(listener) = pod.listeners.iter().find(|l| l.v4 == ip.is_ipv4()) else {
                continue;
            };
            if let Err(error) = sockets.insert(IpKey::from_ip(*ip), listener.fd.as_raw_fd(), 0) {
                warn!(pod = %workload.key, %ip, %error, "cannot register the pod's plaintext inbound listener");
            }
        }
    }
}

/// Listens in the pod's namespace, one listener per family its addresses
/// have, each with its accept loop.
async fn listen(
    inputs: &Arc<Inputs>,
    workload: &Workload,
    netns: &Path,
    drain: &drain::Watch,
) -> std::io::Result<PodListeners> {
    let mut listeners = Vec::new();
    for v4 in [true, false] {
        if !workload.addresses.iter().any(|ip| ip.is_ipv4() == v4) {
            continue;
        }
        let socket = socket_in(netns, v4).await?;
        // A successor ztunnel binds the same port while its predecessor
        // drains; the map says which listener takes the connections.
        socket.set_reuseport(true)?;
        let loopback: IpAddr = if v4 {
            Ipv4Addr::LOCALHOST.into()
        } else {
            Ipv6Addr::LOCALHOST.into()
        };
        socket.bind(SocketAddr::new(loopback, PORT))?;
        let listener = socket.listen(1024)?;
        let fd = listener.as_fd().try_clone_to_owned()?;
        let inputs = Arc::clone(inputs);
        let task = tokio::spawn(super::accept_loop(
            listener,
            drain.clone(),
            "inbound_capture",
            move |stream, peer, drain| captured(Arc::clone(&inputs), stream, peer, drain),
        ));
        listeners.push(Listening {
            v4,
            fd,
            _task: AbortOnDrop(task),
        });
    }
    Ok(PodListeners {
        netns: netns.to_owned(),
        netns_cookie: workload.netns_cookie,
        addresses: workload.addresses.clone(),
        listeners,
    })
}

/// One connection the capture handed over: its own address is where the
/// client was going.
async fn captured(inputs: Arc<Inputs>, stream: TcpStream, peer: SocketAddr, drain: drain::Watch) {
    // From this host (an address of the node's that the agent was not given
    // as one): ztunnel's own connect to the pod would be captured again, and
    // again. Refused, saying what to do, rather than looping.
    if is_local_address(peer.ip()) {
        warn!(%peer, "a connection from this node itself was captured: its address must be one of the agent's --node-addr (ztunnel's connections to pods come from it)");
        inputs
            .metrics
            .refuse("inbound_passthrough", "from_unlisted_node_address");
        super::reset(stream);
        return;
    }
    match stream.local_addr() {
        Ok(dst) => inbound_passthrough::handle(inputs, stream, peer, dst, drain).await,
        Err(error) => {
            warn!(%peer, %error, "a captured connection without its address; resetting");
            super::reset(stream);
        }
    }
}

/// Whether `ip` is an address of this network namespace (ztunnel's, the
/// node's): only a local address can be bound.
fn is_local_address(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}
