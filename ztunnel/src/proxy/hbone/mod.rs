//! HBONE: TCP carried in HTTP/2 CONNECT streams over mutual TLS, as Istio ambient
//! speaks it. [`client`] opens tunnels, [`server`] terminates them.

pub mod client;
pub mod server;

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

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

/// One CONNECT stream as a byte stream. Holds what must live as long as it does (the
/// pool's count of streams on its connection).
pub struct Tunnel {
    io: TokioIo<Upgraded>,
    _guard: Option<client::StreamGuard>,
}

impl Tunnel {
    pub fn new(upgraded: Upgraded, guard: Option<client::StreamGuard>) -> Self {
        Tunnel {
            io: TokioIo::new(upgraded),
            _guard: guard,
        }
    }
}

impl AsyncRead for Tunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
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
