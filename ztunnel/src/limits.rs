//! Process limits a proxy needs raised before it serves.
//!
//! Every proxied connection holds at least one descriptor (two on the node
//! that terminates it), so the default soft limit of 1024 open files would
//! cap a node's ztunnel at a few hundred connections. The hard limit is the
//! operator's (or the container runtime's) ceiling; the soft one is ours to
//! raise to it, as Istio's ztunnel and Envoy do.

use std::io;

use tracing::{info, warn};

/// Raises the open-files soft limit to the hard limit; returns the new
/// limit.
pub fn raise_open_files() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let before = limit.rlim_cur;
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
        info!(
            from = before,
            to = limit.rlim_cur,
            "raised the open-files limit"
        );
    }
    Ok(limit.rlim_cur)
}

/// [`raise_open_files`], logging instead of failing: a proxy still serves
/// with the limit it has.
pub fn raise_open_files_or_warn() {
    if let Err(error) = raise_open_files() {
        warn!(%error, "could not raise the open-files limit; connections are capped by it");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_ends_at_the_hard_limit() {
        let raised = raise_open_files().expect("getrlimit works");
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as in raise_open_files.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        assert_eq!((raised, limit.rlim_cur), (limit.rlim_max, limit.rlim_max));
    }
}
