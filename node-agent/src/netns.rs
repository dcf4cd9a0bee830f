//! Running code inside another network namespace.

use std::{fs::File, io, os::fd::AsRawFd as _, path::Path};

/// Runs `f` on a thread of its own inside the network namespace at `netns` (e.g.
/// `/run/netns/NAME` or `/proc/PID/ns/net`) and returns what it returned. setns(2)
/// moves only the calling thread, so the caller's stays where it was; sockets `f`
/// makes live in that namespace. Fails if the namespace cannot be opened or entered.
pub fn run_in<R: Send>(netns: &Path, f: impl FnOnce() -> R + Send) -> io::Result<R> {
    let namespace = File::open(netns)?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns on a descriptor this thread keeps open for its
                // duration; it moves this thread only.
                if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(f())
            })
            .join()
            .unwrap_or_else(|_| {
                Err(io::Error::other(
                    "the thread inside the network namespace panicked",
                ))
            })
    })
}
