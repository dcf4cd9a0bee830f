//! Where a node's eBPF objects live on bpffs.
//!
//! ```text
//! /sys/fs/bpf/warren/<node>/
//!   maps/<MAP NAME>          every map (aya pins them by name)
//!   links/<program>          cgroup attachments (connect, sock_ops, getsockopt, getpeername, DNS)
//!   links/guard_<veth>       TC (TCX) attachment of the guard on one pod's veth
//!   progs/<program>          programs attached without a link (sk_msg) or
//!                            attached later (the guard, per pod)
//! ```
//!
//! Pinned links stay attached when the agent exits: capture keeps working
//! while it restarts, and a new agent adopts what it finds.

use std::path::{Path, PathBuf};

/// Default parent of every node's pin folder.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf/warren";

/// Links of the inbound capture, one per pod namespace: `inbound_<cookie>`.
pub const INBOUND_LINK_PREFIX: &str = "inbound_";

#[derive(Clone, Debug)]
pub struct Pins {
    root: PathBuf,
}

impl Pins {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    pub fn progs_dir(&self) -> PathBuf {
        self.root.join("progs")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    pub fn link(&self, program: &str) -> PathBuf {
        self.links_dir().join(program)
    }

    /// bpffs refuses names containing a dot (it keeps them for itself), and
    /// interface names may have one (`eth0.100`).
    pub fn guard_link(&self, veth: &str) -> PathBuf {
        self.links_dir()
            .join(format!("guard_{}", veth.replace('.', "_")))
    }

    /// The inbound capture's link in the pod namespace of this cookie.
    pub fn inbound_link(&self, netns_cookie: u64) -> PathBuf {
        self.links_dir()
            .join(format!("{INBOUND_LINK_PREFIX}{netns_cookie}"))
    }

    pub fn prog(&self, name: &str) -> PathBuf {
        self.progs_dir().join(name)
    }
}
