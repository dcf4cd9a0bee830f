use std::path::PathBuf;

use aya::{EbpfError, maps::MapError, programs::ProgramError};

/// Why the datapath could not do what it was asked. Each variant names the
/// program, map or path involved.
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
    #[error("the eBPF object has no map named {0}")]
    MissingMap(&'static str),
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
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("opening cgroup {path}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
