//! Asking the kernel where an accepted connection was going before it was redirected to
//! this proxy, the two ways Warren answers:
//!
//! - `SO_ORIGINAL_DST` (and `IP6T_SO_ORIGINAL_DST`), the question every transparent proxy
//!   already asks netfilter; Warren's `cgroup/getsockopt` program answers it for the
//!   connections its connect hook captured.
//! - `SO_WARREN_ORIGIN`, Warren's own option: the destination and the client pod's
//!   network-namespace cookie, so the proxy learns from the kernel who connected.
//!
//! Transparent proxies (ztunnel, the sample's stand-in) share this one copy, next to the
//! `OrigDst` layout it decodes.
//!
//! With no program attached both fail (typically `ENOPROTOOPT`, or `ENOENT` from
//! conntrack); callers report the error rather than give up.

use std::{
    io,
    mem::MaybeUninit,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::{AsRawFd as _, BorrowedFd},
};

use thiserror::Error;

use crate::{AF_INET, AF_INET6, OrigDst, SO_ORIGINAL_DST, SO_WARREN_ORIGIN, SOL_IP, SOL_IPV6};

/// What `SO_WARREN_ORIGIN` answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub dst: SocketAddr,
    /// Network-namespace cookie of the connecting pod.
    pub netns_cookie: u64,
}

#[derive(Debug, Error)]
pub enum LookupError {
    #[error("getsockopt({option}) failed")]
    Getsockopt {
        option: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("getsockopt({option}) answered {len} bytes, not the {expected} of its answer")]
    Short {
        option: &'static str,
        len: usize,
        expected: usize,
    },
    #[error("getsockopt({option}) answered address family {family}, not AF_INET or AF_INET6")]
    Family { option: &'static str, family: u16 },
    #[error(
        "getsockopt({option}) answered {dst}, this proxy's own address (conntrack with no \
         redirect): the connection was not redirected"
    )]
    NotRedirected {
        option: &'static str,
        dst: SocketAddr,
    },
}

const ORIGINAL_DST_V4: &str = "SOL_IP, SO_ORIGINAL_DST";
const ORIGINAL_DST_V6: &str = "SOL_IPV6, SO_ORIGINAL_DST";
const WARREN_ORIGIN: &str = "SOL_IP, SO_WARREN_ORIGIN";

/// The original destination by `SO_ORIGINAL_DST`, of the accepted connection `socket`
/// whose client is `peer` and whose local end is `local`.
///
/// The question's level follows the client's address, not the socket's family: an IPv4
/// client of a dual-stack listener (a v4-mapped peer) was captured as IPv4, and `SOL_IP`
/// works on such a socket for netfilter and Warren alike.
pub fn original_dst(
    socket: BorrowedFd<'_>,
    peer: SocketAddr,
    local: SocketAddr,
) -> Result<SocketAddr, LookupError> {
    if peer.ip().to_canonical().is_ipv4() {
        let option = ORIGINAL_DST_V4;
        let answer: libc::sockaddr_in = getsockopt(socket, SOL_IP, SO_ORIGINAL_DST, option)?;
        if answer.sin_family != libc::sa_family_t::from(AF_INET) {
            return Err(LookupError::Family {
                option,
                family: answer.sin_family,
            });
        }
        let dst = SocketAddr::V4(SocketAddrV4::new(
            // `s_addr` is in network order: its bytes in memory are the address's octets.
            Ipv4Addr::from(answer.sin_addr.s_addr.to_ne_bytes()),
            u16::from_be(answer.sin_port),
        ));
        not_local(dst, local, option)
    } else {
        let option = ORIGINAL_DST_V6;
        let answer: libc::sockaddr_in6 = getsockopt(socket, SOL_IPV6, SO_ORIGINAL_DST, option)?;
        if answer.sin6_family != libc::sa_family_t::from(AF_INET6) {
            return Err(LookupError::Family {
                option,
                family: answer.sin6_family,
            });
        }
        let ip = Ipv6Addr::from(answer.sin6_addr.s6_addr);
        let port = u16::from_be(answer.sin6_port);
        let dst = match ip.to_ipv4_mapped() {
            // Warren answers an IPv6 question about an IPv4 destination v4-mapped.
            Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, port)),
            None => SocketAddr::V6(SocketAddrV6::new(
                ip,
                port,
                answer.sin6_flowinfo,
                answer.sin6_scope_id,
            )),
        };
        not_local(dst, local, option)
    }
}

/// The original destination and the client's netns cookie by `SO_WARREN_ORIGIN`.
pub fn origin(socket: BorrowedFd<'_>, local: SocketAddr) -> Result<Origin, LookupError> {
    let option = WARREN_ORIGIN;
    let answer: OrigDst = getsockopt(socket, SOL_IP, SO_WARREN_ORIGIN, option)?;
    let dst = decode_sock_addr(&answer, option)?;
    Ok(Origin {
        dst: not_local(dst, local, option)?,
        netns_cookie: answer.netns_cookie,
    })
}

/// Reads Warren's address layout: IPv4 in network order in `addr[0]`, IPv6 as four
/// network-order words, the port in host order.
fn decode_sock_addr(answer: &OrigDst, option: &'static str) -> Result<SocketAddr, LookupError> {
    let dst = &answer.dst;
    dst.to_socket_addr()
        .map(|a| SocketAddr::new(a.ip().to_canonical(), a.port()))
        .ok_or(LookupError::Family {
            option,
            family: dst.family,
        })
}

/// Conntrack answers `SO_ORIGINAL_DST` for any connection it tracks, redirected or not;
/// for one that was not, the answer is this socket's own address, and connecting there
/// would be a loop through this proxy.
fn not_local(
    dst: SocketAddr,
    local: SocketAddr,
    option: &'static str,
) -> Result<SocketAddr, LookupError> {
    let canonical = |addr: SocketAddr| SocketAddr::new(addr.ip().to_canonical(), addr.port());
    if canonical(dst) == canonical(local) {
        Err(LookupError::NotRedirected { option, dst })
    } else {
        Ok(dst)
    }
}

/// C structs the kernel fills in, byte by byte.
///
/// # Safety
///
/// Implementors are `#[repr(C)]` and made only of integers and arrays of integers, so
/// every bit pattern, all zeros included, is a valid value.
unsafe trait PlainData: Copy {}

// SAFETY: integers and integer arrays only (see each type's definition).
unsafe impl PlainData for libc::sockaddr_in {}
// SAFETY: as above.
unsafe impl PlainData for libc::sockaddr_in6 {}
// SAFETY: `OrigDst` is `#[repr(C)]`: a `SockAddr` (u16, u16, [u32; 4]), a u32, a u64.
unsafe impl PlainData for OrigDst {}

/// `getsockopt` into a `T`, failing unless the kernel filled all of it.
fn getsockopt<T: PlainData>(
    socket: BorrowedFd<'_>,
    level: i32,
    name: i32,
    option: &'static str,
) -> Result<T, LookupError> {
    let expected = size_of::<T>();
    let mut value = MaybeUninit::<T>::zeroed();
    // The types above are at most a few dozen bytes.
    let mut len = expected as libc::socklen_t;
    // SAFETY: the fd is open for the borrow's lifetime; the kernel writes at most `len`
    // bytes into `value`, which has room for exactly that many.
    let result = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            level,
            name,
            value.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if result != 0 {
        return Err(LookupError::Getsockopt {
            option,
            source: io::Error::last_os_error(),
        });
    }
    let len = len as usize;
    if len < expected {
        return Err(LookupError::Short {
            option,
            len,
            expected,
        });
    }
    // SAFETY: zero-initialised and then (partly) overwritten by the kernel; any bytes are
    // a valid `T` (`PlainData`).
    Ok(unsafe { value.assume_init() })
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd as _;

    // The crate is `no_std`: the std prelude's traits are not in scope by themselves.
    use std::string::ToString as _;

    use super::*;
    use crate::SockAddr;

    #[test]
    fn the_answer_buffers_have_the_kernel_sizes() {
        assert_eq!(size_of::<libc::sockaddr_in>(), 16);
        assert_eq!(size_of::<libc::sockaddr_in6>(), 28);
        assert_eq!(size_of::<OrigDst>(), 32);
    }

    #[test]
    fn decodes_warren_addresses() {
        let v4 = OrigDst {
            // 10.1.2.3 as the kernel stores it: network order, read as a native u32.
            dst: SockAddr::v4(u32::from_ne_bytes([10, 1, 2, 3]), 8080),
            _pad: 0,
            netns_cookie: 4096,
        };
        assert_eq!(
            decode_sock_addr(&v4, WARREN_ORIGIN).unwrap(),
            "10.1.2.3:8080".parse().unwrap()
        );

        let words = |ip: Ipv6Addr| {
            let octets = ip.octets();
            std::array::from_fn(|i| {
                u32::from_ne_bytes(octets[4 * i..4 * i + 4].try_into().unwrap())
            })
        };
        let v6 = OrigDst {
            dst: SockAddr::v6(words("fd00::1:2".parse().unwrap()), 443),
            ..v4
        };
        assert_eq!(
            decode_sock_addr(&v6, WARREN_ORIGIN).unwrap(),
            "[fd00::1:2]:443".parse().unwrap()
        );
        let mapped = OrigDst {
            dst: SockAddr::v6(words("::ffff:10.0.0.9".parse().unwrap()), 80),
            ..v4
        };
        assert_eq!(
            decode_sock_addr(&mapped, WARREN_ORIGIN).unwrap(),
            "10.0.0.9:80".parse().unwrap()
        );

        let unknown = OrigDst {
            dst: SockAddr {
                family: 1,
                ..v4.dst
            },
            ..v4
        };
        let error = decode_sock_addr(&unknown, WARREN_ORIGIN).unwrap_err();
        assert!(
            matches!(error, LookupError::Family { family: 1, .. }),
            "{error}"
        );
    }

    #[test]
    fn an_answer_naming_this_socket_is_no_redirect() {
        let local: SocketAddr = "10.0.0.1:15001".parse().unwrap();
        let error = not_local(local, local, ORIGINAL_DST_V4).unwrap_err();
        assert!(error.to_string().contains("not redirected"), "{error}");
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:15001".parse().unwrap();
        assert!(not_local(local, mapped, ORIGINAL_DST_V4).is_err());
        let elsewhere: SocketAddr = "10.0.0.2:80".parse().unwrap();
        assert_eq!(
            not_local(elsewhere, local, ORIGINAL_DST_V4).unwrap(),
            elsewhere
        );
    }

    /// Without Warren's programs (or a netfilter redirect) neither question has an
    /// answer, and asking is an error, not a crash.
    #[test]
    fn an_unredirected_loopback_connection_has_no_original_destination() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, peer) = listener.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        let local = accepted.local_addr().unwrap();

        let error = original_dst(accepted.as_fd(), peer, local).unwrap_err();
        assert!(
            matches!(
                error,
                LookupError::Getsockopt { .. } | LookupError::NotRedirected { .. }
            ),
            "{error}"
        );
        let error = origin(accepted.as_fd(), local).unwrap_err();
        assert!(matches!(error, LookupError::Getsockopt { .. }), "{error}");
    }
}
