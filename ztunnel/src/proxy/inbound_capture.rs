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
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use warren_ebpf_common::IpKey;

use super::{Inputs, inbound_passthrough, socket_in};
use crate::{drain, state::workload::Workload};

/// The port the listeners take in each pod's namespace (Istio's plaintext
/// inbound port, kept free by convention).
pub const PORT: u16 = 15006;
/// How often every registration is asserted again.
const REASSERT: Duration = Duration::from_secs(5);

/// Listeners of one pod.
struct PodListeners {
    netns: PathBuf,
    addresses: Vec<IpAddr>,
    /// One per family, with the accept loop that owns it.
    listeners: Vec<(Listening, JoinHandle<()>)>,
}

/// A listener's family and a descriptor of it, kept to register it again
/// (the accept loop owns the listener itself).
struct Listening {
    v4: bool,
    fd: OwnedFd,
}

impl Drop for PodListeners {
    fn drop(&mut self) {
        // The listener closes with its accept loop (and leaves the map).
        for (_, task) in &self.listeners {
            task.abort();
        }
    }
}

/// Keeps the node's pods' listeners as the state says, until the drain.
pub async fn run(inputs: Arc<Inputs>, mut drain: drain::Watch) {
    let mut changes = inputs.state.changes();
    let mut pods: HashMap<String, PodListeners> = HashMap::new();
    let mut map: Option<(PathBuf, SockHash<MapData, IpKey>)> = None;
    let mut tick = tokio::time::interval(REASSERT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let Some(path) = inputs.state.mesh().inbound_listeners else {
            // This node captures no inbound (or has not said yet).
            pods.clear();
            map = None;
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                () = drain.draining() => return,
            }
            continue;
        };
        if map.as_ref().is_none_or(|(open, _)| *open != path) {
            map = match open_map(&path) {
                Ok(opened) => {
                    info!(map = %path.display(), "plaintext inbound listeners go in the node's inbound capture");
                    Some((path.clone(), opened))
                }
                Err(error) => {
                    warn!(map = %path.display(), %error, "cannot open the inbound capture's map: connections from outside the mesh to this node's pods are dropped until it opens");
                    None
                }
            };
        }
        if let Some((_, sockets)) = &mut map {
            follow(&inputs, &mut pods, sockets, &drain).await;
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
            () = drain.draining() => return,
        }
    }
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
        let current = pods
            .get(&workload.key)
            .is_some_and(|p| p.netns == netns && p.addresses == workload.addresses);
        if !current {
            pods.remove(&workload.key);
            match listen(inputs, &workload, &netns, drain).await {
                Ok(made) => {
                    debug!(pod = %workload.key, "plaintext inbound listeners made");
                    pods.insert(workload.key.clone(), made);
                }
                Err(error) => {
                    warn!(pod = %workload.key, netns = %netns.display(), %error, "cannot listen in the pod's namespace: its plaintext inbound is dropped");
                    continue;
                }
            }
        }
        let Some(pod) = pods.get(&workload.key) else {
            continue;
        };
        for ip in &pod.addresses {
            let Some((listener, _)) = pod.listeners.iter().find(|(l, _)| l.v4 == ip.is_ipv4())
            else {
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
        let task = tokio::spawn(super::accept_loop(
            listener,
            drain.clone(),
            "inbound_capture",
            {
                let inputs = Arc::clone(inputs);
                move |stream, peer, drain| {
                    let inputs = Arc::clone(&inputs);
                    async move {
                        // Handed over by the capture: the connection's own
                        // address is where the client was going.
                        match stream.local_addr() {
                            Ok(dst) => {
                                inbound_passthrough::handle(inputs, stream, peer, dst, drain).await;
                            }
                            Err(error) => {
                                warn!(%peer, %error, "a captured connection without its address; resetting");
                                super::reset(stream);
                            }
                        }
                    }
                }
            },
        ));
        listeners.push((Listening { v4, fd }, task));
    }
    Ok(PodListeners {
        netns: netns.to_owned(),
        addresses: workload.addresses.clone(),
        listeners,
    })
}
