//! HBONE: TCP carried in HTTP/2 CONNECT streams over mutual TLS, as Istio ambient
//! speaks it. [`client`] opens tunnels, [`server`] terminates them, [`tunnel`] is one
//! CONNECT stream as a byte stream, [`keepalive`] notices a peer that went silent.
//!
//! HTTP/2 is spoken with the `h2` crate directly rather than through hyper's upgrades:
//! a tunnel then writes into its stream's own flow-control window, with no channel and
//! no extra task per direction, and its back-pressure is HTTP/2's.

pub mod client;
mod keepalive;
pub mod server;
mod tunnel;

pub use tunnel::Tunnel;

/// Bytes read from an HBONE connection's TCP socket per `read`, under TLS.
///
/// rustls asks its transport for at most 4 KiB at a time, so a 16 KiB record took four
/// `read` syscalls and a bulk stream spent more time entering the kernel than copying;
/// a buffer underneath turns those into one `read` per 64 KiB. Writes pass straight
/// through it.
const READ_AHEAD: usize = 64 << 10;

/// The TCP socket under an HBONE connection's TLS.
type Wire = tokio::io::BufReader<tokio::net::TcpStream>;

fn wire(tcp: tokio::net::TcpStream) -> Wire {
    tokio::io::BufReader::with_capacity(READ_AHEAD, tcp)
}

/// Header the client puts the original source address in (`for=<ip>`), as Istio does.
pub const FORWARDED: &str = "forwarded";

/// Reads the address of `Forwarded: for=...` (quoted, bracketed IPv6, or bare).
pub fn forwarded_for(value: &str) -> Option<std::net::IpAddr> {
    value.split([';', ',']).find_map(|part| {
        let (name, v) = part.trim().split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("for") {
            return None;
        }
        let v = v.trim().trim_matches('"');
        let v = v
            .strip_prefix('[')
            .and_then(|v| v.split_once(']'))
            .map_or(v, |(ip, _)| ip);
        v.parse().ok()
    })
}

/// Where a CONNECT's connection really comes from: the address its `Forwarded: for=`
/// claims, with that address's workload, believed only when the workload's identity is
/// the peer's own (a ztunnel speaking for its pod). Any other claim, another identity's
/// workload or an address that is no workload's, would let any holder of a mesh
/// certificate pick the address an ipBlocks rule allows or escape one that denies: the
/// peer's own address stands instead.
pub fn original_source(
    state: &crate::state::State,
    headers: &http::HeaderMap,
    peer: &server::Peer,
) -> (
    std::net::IpAddr,
    Option<std::sync::Arc<crate::state::Workload>>,
) {
    let claimed = headers
        .get(FORWARDED)
        .and_then(|v| v.to_str().ok())
        .and_then(forwarded_for)
        .map(|ip| ip.to_canonical());
    let workload = claimed
        .and_then(|ip| state.workload_by_ip(ip))
        .filter(|w| w.identity.as_ref() == Some(&peer.identity));
    match (claimed, workload) {
        (Some(ip), Some(workload)) => (ip, Some(workload)),
        (claimed, _) => {
            if let Some(ip) = claimed {
                tracing::debug!(claimed = %ip, identity = %peer.identity, "Forwarded names no workload of the peer's identity; using the peer address");
            }
            (peer.addr.ip().to_canonical(), None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_forwarded_for() {
        assert_eq!(
            forwarded_for("for=10.0.0.1"),
            Some("10.0.0.1".parse().unwrap())
        );
        assert_eq!(
            forwarded_for("proto=http;for=\"[fd00::1]:80\""),
            Some("fd00::1".parse().unwrap())
        );
        assert_eq!(
            forwarded_for("for=\"[fd00::2]\""),
            Some("fd00::2".parse().unwrap())
        );
        assert_eq!(forwarded_for("by=x"), None);
        assert_eq!(forwarded_for("for=garbage"), None);
    }
}
