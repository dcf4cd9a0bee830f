//! Playing a pod's resolver: one A (or AAAA) query, as glibc or musl send it.

use std::net::IpAddr;

use anyhow::{Context as _, Result, ensure};
use warren_testbed::Pod;

/// How the resolver sends its query.
#[derive(Clone, Copy, Debug)]
pub enum Send {
    /// On a connected UDP socket (glibc).
    Connected,
    /// With `sendto` on an unconnected one (musl).
    SendTo,
    /// Over TCP, the query after its two length bytes (a resolver asking again
    /// after a truncated answer, or told `use-vc`).
    Tcp,
}

/// The record asked for.
#[derive(Clone, Copy, Debug)]
pub enum Record {
    A,
    Aaaa,
}

/// The answer the pod received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The address and port the answer came from, as the pod sees it.
    pub from: (IpAddr, u16),
    pub addresses: Vec<IpAddr>,
}

/// Asks `server` (IP) for NAME's record of type QTYPE (1: A, 28: AAAA) and prints
/// `<answering ip> <port> <address>…`, or exits 3 without an answer (none
/// within 3 s, or the server unreachable).
/// Over TCP the answering address is the connection's peer (`getpeername`).
const RESOLVER: &str = r#"
import socket, struct, sys
server, name, mode, qtype = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
query = struct.pack(">HHHHHH", 0x5157, 0x0100, 1, 0, 0, 0)
query += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
query += struct.pack(">HH", qtype, 1)
family = socket.AF_INET6 if ":" in server else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM if mode == "tcp" else socket.SOCK_DGRAM)
s.settimeout(3)
def read_exactly(n):
    got = b""
    while len(got) < n:
        more = s.recv(n - len(got))
        if not more:
            sys.exit(3)
        got += more
    return got
try:
    if mode == "tcp":
        s.connect((server, 53))
        s.sendall(struct.pack(">H", len(query)) + query)
        (length,) = struct.unpack(">H", read_exactly(2))
        data, sender = read_exactly(length), s.getpeername()
    elif mode == "connected":
        s.connect((server, 53))
        s.send(query)
        data, sender = s.recvfrom(4096)
    else:
        s.sendto(query, (server, 53))
        data, sender = s.recvfrom(4096)
except OSError:
    # No answer in time, or none to be had (refused, unreachable).
    sys.exit(3)
def skip_name(at):
    while True:
        n = data[at]
        if n == 0:
            return at + 1
        if n & 0xC0 == 0xC0:
            return at + 2
        at += n + 1
(ident, flags, qd, an) = struct.unpack(">HHHH", data[:8])
at = 12
for _ in range(qd):
    at = skip_name(at) + 4
found = []
for _ in range(an):
    at = skip_name(at)
    (kind, _, _, length) = struct.unpack(">HHIH", data[at:at + 10])
    at += 10
    if kind == 1:
        found.append(socket.inet_ntoa(data[at:at + 4]))
    elif kind == 28:
        found.append(socket.inet_ntop(socket.AF_INET6, data[at:at + 16]))
    at += length
assert ident == 0x5157, ident
print(sender[0], sender[1], *found)
"#;

/// Asks `server` in `pod` for `name`'s IPv4 addresses; `None` when no answer came
/// within 3 s.
pub fn resolve(
    pod: &Pod,
    server: impl Into<IpAddr>,
    name: &str,
    send: Send,
) -> Result<Option<Answer>> {
    resolve_record(pod, server, name, send, Record::A)
}

/// [`resolve`] for `record`.
pub fn resolve_record(
    pod: &Pod,
    server: impl Into<IpAddr>,
    name: &str,
    send: Send,
    record: Record,
) -> Result<Option<Answer>> {
    let mode = match send {
        Send::Connected => "connected",
        Send::SendTo => "sendto",
        Send::Tcp => "tcp",
    };
    let qtype = match record {
        Record::A => "1",
        Record::Aaaa => "28",
    };
    let server = server.into().to_string();
    let out = pod
        .sandbox
        .exec("python3", ["-c", RESOLVER, &server, name, mode, qtype])?;
    if !out.status.success() {
        // 3: no answer in time; anything else is the resolver failing.
        ensure!(
            out.status.code() == Some(3),
            "the resolver failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    let mut next = || words.next().context("a short answer line");
    let from = (next()?.parse()?, next()?.parse()?);
    let addresses = words.map(str::parse).collect::<Result<_, _>>()?;
    Ok(Some(Answer { from, addresses }))
}
