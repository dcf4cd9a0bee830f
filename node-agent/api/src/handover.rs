//! What a ztunnel hand-over needs of the node, set by whichever of ztunnel and the
//! node agent may: ztunnel in a container without a writable `/proc/sys` cannot.

use std::io;

/// The sysctl that moves a closing listener's queued connections to another listener
/// of its `SO_REUSEPORT` group (Linux 5.14). Per network namespace; it covers TCP over
/// IPv6 too.
const MIGRATE_REQ: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

/// Sets `net.ipv4.tcp_migrate_req` in this network namespace, so that connections
/// queued on a closing SO_REUSEPORT listener (the old ztunnel's) move to another of
/// the group (the new one's) instead of being reset. `Ok(false)` when it already was.
pub fn migrate_queued_connections() -> io::Result<bool> {
    let now = std::fs::read_to_string(MIGRATE_REQ)?;
    if now.trim() == "1" {
        return Ok(false);
    }
    std::fs::write(MIGRATE_REQ, "1")?;
    Ok(true)
}
