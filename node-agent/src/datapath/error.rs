use std::path::PathBuf;

use aya::{EbpfError, maps::MapError, pin::PinError, programs::ProgramError};

/// Why the datapath could not do what it was asked. Each variant names the
/// program, map, pod or path involved.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(
        "this binary was built without its eBPF object (AYA_BUILD_SKIP was set); rebuild after `cargo xtask setup`"
    )]
    NoObject,
    #[error(
        "loading the eBPF object (needs root, or CAP_BPF and CAP_SYS_ADMIN, and a kernel with BTF)"
    )]
    Load(#[source] EbpfError),
    #[error("the eBPF object has no program named {0}")]
    MissingProgram(&'static str),
    #[error("no pinned map {name} at {path} (is the datapath installed? `warren-node-agent run`)")]
    MissingPin { name: &'static str, path: PathBuf },
    #[error("program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("attaching program {name} to {target}")]
    Attach {
        name: &'static str,
        target: String,
        #[source]
        source: ProgramError,
    },
    #[error("pinning {what} at {path}")]
    Pin {
        what: String,
        path: PathBuf,
        #[source]
        source: PinError,
    },
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the eBPF maps do not have the shape this build expects: {0}")]
    Layout(String),
    #[error("pod {pod}: {reason}")]
    Pod { pod: String, reason: String },
    #[error(
        "{0} is not a cgroup v2 folder (--cgroup); on a host with both cgroup versions, cgroup v2 is often at /sys/fs/cgroup/unified"
    )]
    NotCgroup2(PathBuf),
}

impl DatapathError {
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { what, path, source }
    }

    pub(crate) fn map(name: &'static str) -> impl FnOnce(MapError) -> Self {
        move |source| Self::Map { name, source }
    }
}
