//! The socket mark (`SO_MARK`) a transparent proxy puts on its own outbound sockets.
//!
//! Warren's connect hook leaves marked sockets alone ([`warren_ebpf_common::ZTUNNEL_MARK`]
//! by default): without the mark, the proxy's connect to the original destination would be
//! captured and sent back to the proxy, forever.

use std::{io, os::fd::AsFd};

use thiserror::Error;

/// Why a mark did not parse; the CLI prints it next to the flag's name.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("`{0}` is not a socket mark: use a 32-bit number, decimal or hex (e.g. 1337 or 0x539)")]
pub struct MarkError(String);

/// Parses a 32-bit mark, hex with `0x` (as iptables and `ip rule` print marks) or decimal.
pub fn parse(input: &str) -> Result<u32, MarkError> {
    let text = input.trim();
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| MarkError(input.to_owned()))
}

/// Sets `SO_MARK` on a socket, before it connects. Needs `CAP_NET_ADMIN`.
pub fn set(socket: &impl AsFd, mark: u32) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;

    const LEN: libc::socklen_t = size_of::<u32>() as libc::socklen_t;
    // SAFETY: the fd is open for the borrow's lifetime, and the kernel reads exactly
    // `LEN` bytes from a live `u32`.
    let result = unsafe {
        libc::setsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&raw const mark).cast(),
            LEN,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use warren_ebpf_common::ZTUNNEL_MARK;

    use super::*;

    #[test]
    fn parses_hex_and_decimal() {
        assert_eq!(parse("0x539"), Ok(ZTUNNEL_MARK));
        assert_eq!(parse("0X539"), Ok(ZTUNNEL_MARK));
        assert_eq!(parse("1337"), Ok(ZTUNNEL_MARK));
        assert_eq!(parse("0"), Ok(0));
        assert_eq!(parse("0xffffffff"), Ok(u32::MAX));
        assert_eq!(parse(" 0x10 "), Ok(16));
    }

    #[test]
    fn rejects_what_is_not_a_32_bit_mark() {
        for bad in [
            "",
            "0x",
            "x539",
            "0x1_0000_0000",
            "0x100000000",
            "4294967296",
            "-1",
            "0b1",
            "mark",
        ] {
            let error = parse(bad).unwrap_err();
            assert!(
                error.to_string().contains("not a socket mark"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn setting_a_mark_fails_cleanly_on_what_is_not_a_socket() {
        let file = std::fs::File::open("/dev/null").unwrap();
        let error = set(&file, ZTUNNEL_MARK).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::ENOTSOCK), "{error}");
    }
}
