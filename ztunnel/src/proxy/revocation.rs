//! Connections that passed a destination's policies, checked again whenever
//! the mesh state changes: one the policies in force would now refuse is
//! closed, as Istio's ztunnel does. A DENY added, an ALLOW narrowed, a pod
//! relabelled into a policy or turned STRICT under a plaintext client: each
//! takes effect on the connections already open, not only on new ones.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::sync::oneshot;
use tracing::info;
use warren_api::Identity;

use crate::{
    drain, rbac,
    state::{State, workload::Mode},
};

/// The open connections a destination's policies admitted, by id.
#[derive(Clone, Default)]
pub struct Authorized {
    held: Arc<Mutex<HashMap<u64, Held>>>,
    next: Arc<AtomicU64>,
}

/// What a connection was admitted as: enough to ask the policies again.
struct Held {
    /// The destination workload's key (read again at each check).
    workload: String,
    src_identity: Option<Identity>,
    src_ip: IpAddr,
    dst: SocketAddr,
    /// Plaintext: refused too once its port turns STRICT.
    plaintext: bool,
    /// Fired once, with why, when the policies now refuse it.
    revoke: Option<oneshot::Sender<String>>,
}

/// One admitted connection, for as long as it is relayed.
pub struct Admitted {
    id: u64,
    held: Arc<Mutex<HashMap<u64, Held>>>,
    revoked: oneshot::Receiver<String>,
}

impl Admitted {
    /// Resolves, with why, once the policies in force refuse the connection;
    /// never otherwise.
    pub async fn revoked(&mut self) -> String {
        match (&mut self.revoked).await {
            Ok(why) => why,
            Err(_) => std::future::pending().await,
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        lock(&self.held).remove(&self.id);
    }
}

impl Authorized {
    /// Keeps `conn` to `workload` (a key) to be checked again; `plaintext`
    /// for a connection without mTLS.
    pub fn admit(&self, workload: &str, conn: &rbac::Connection<'_>, plaintext: bool) -> Admitted {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (revoke, revoked) = oneshot::channel();
        lock(&self.held).insert(
            id,
            Held {
                workload: workload.to_owned(),
                src_identity: conn.src_identity.cloned(),
                src_ip: conn.src_ip,
                dst: conn.dst,
                plaintext,
                revoke: Some(revoke),
            },
        );
        Admitted {
            id,
            held: Arc::clone(&self.held),
            revoked,
        }
    }

    /// Connections admitted and still open.
    pub fn len(&self) -> usize {
        lock(&self.held).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Asks the policies of `state` again about every open connection, and
    /// closes those they now refuse. Returns how many it closed. A workload
    /// no longer in the state is left alone: its connections end with it.
    pub fn recheck(&self, state: &State) -> usize {
        let mut closed = 0;
        for held in lock(&self.held).values_mut() {
            if held.revoke.is_none() {
                continue;
            }
            let Some(workload) = state.workload(&held.workload) else {
                continue;
            };
            let conn = rbac::Connection {
                src_identity: held.src_identity.as_ref(),
                src_ip: held.src_ip,
                dst: held.dst,
            };
            let why = if held.plaintext
                && workload.hbone
                && workload.mode_on(held.dst.port()) == Mode::Strict
            {
                Some(format!(
                    "{} now requires mTLS (STRICT) on port {}",
                    workload.key,
                    held.dst.port()
                ))
            } else {
                state
                    .authorize(&workload, &conn)
                    .err()
                    .map(|denied| format!("{conn}: {denied}"))
            };
            if let Some(why) = why
                && let Some(revoke) = held.revoke.take()
            {
                info!(%why, "closing a connection the policies now refuse");
                let _ = revoke.send(format!("closed: the policies now refuse it ({why})"));
                closed += 1;
            }
        }
        closed
    }

    /// Checks again after every change of `state`, until the drain.
    pub async fn run(self, state: Arc<State>, mut drain: drain::Watch) {
        let mut changes = state.changes();
        loop {
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if !self.is_empty() {
                        self.recheck(&state);
                    }
                }
                () = drain.draining() => return,
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use warren_api::config::{self, InboundMode, TunnelProtocol};

    use super::*;
    use crate::state::{Resource, workload::Workload};

    fn put(state: &State, mode: InboundMode) {
        let w = config::Workload {
            name: "app-0".into(),
            namespace: "demo".into(),
            service_account: "app".into(),
            addresses: vec![vec![10, 244, 0, 5]],
            node_address: vec![172, 30, 0, 1],
            protocol: TunnelProtocol::Hbone as i32,
            inbound_mode: mode as i32,
            ..Default::default()
        };
        let w = Workload::from_proto("workload/demo/app-0", w, "cluster.local").expect("workload");
        state.update(|inner| inner.upsert(w.key.clone(), Resource::Workload(Arc::new(w))));
    }

    /// A plaintext connection admitted under PERMISSIVE is closed once its
    /// pod turns STRICT; a connection with an identity is not (no policy
    /// refuses it), and one already closed is no longer checked.
    #[tokio::test]
    async fn plaintext_is_closed_once_its_port_turns_strict() {
        let state = State::new(None, 15008);
        put(&state, InboundMode::Permissive);
        let authorized = Authorized::default();
        let dst: SocketAddr = "10.244.0.5:8080".parse().expect("addr");
        let plain = rbac::Connection {
            src_identity: None,
            src_ip: "10.244.9.9".parse().expect("ip"),
            dst,
        };
        let identity: Identity = "spiffe://cluster.local/ns/demo/sa/client"
            .parse()
            .expect("identity");
        let mesh = rbac::Connection {
            src_identity: Some(&identity),
            ..plain
        };
        let mut plaintext = authorized.admit("workload/demo/app-0", &plain, true);
        let _meshed = authorized.admit("workload/demo/app-0", &mesh, false);
        assert_eq!(authorized.recheck(&state), 0, "PERMISSIVE admits both");

        put(&state, InboundMode::Strict);
        assert_eq!(authorized.recheck(&state), 1);
        let why = tokio::time::timeout(std::time::Duration::from_secs(1), plaintext.revoked())
            .await
            .expect("revoked");
        assert!(why.contains("STRICT"), "{why}");
        assert_eq!(authorized.recheck(&state), 0, "closed once");
        drop(plaintext);
        assert_eq!(authorized.len(), 1, "a closed connection is forgotten");
    }
}
