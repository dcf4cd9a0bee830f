//! Asking a proxy's admin endpoint, which listens on loopback inside the
//! proxy's own network namespace (a waypoint pod's): the request is made
//! from a thread that joins that namespace, so nothing needs to be exposed
//! beyond the pod.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

/// How long a proxy may take to answer.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Answers larger than this are refused (a `/clusters` of thousands of
/// clusters is a few MiB).
const MAX_ANSWER: u64 = 64 << 20;

/// `GET path` from `127.0.0.1:port` in the network namespace at `netns`
/// (e.g. `/run/netns/NAME`): the answer's body, or an error naming what
/// failed.
pub fn get_in_netns(netns: &Path, port: u16, path: &str) -> Result<Vec<u8>> {
    warren_node_agent::netns::run_in(netns, || {
        get(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), path)
    })
    .with_context(|| format!("entering network namespace {}", netns.display()))?
}

/// One HTTP/1.0 exchange: the server closes the connection after its
/// answer and sends no chunked encoding, so the body is what follows the
/// head.
pub fn get(addr: SocketAddr, path: &str) -> Result<Vec<u8>> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)
        .with_context(|| format!("connecting to the admin endpoint {addr}"))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")
        .with_context(|| format!("asking {addr}{path}"))?;
    let mut answer = Vec::new();
    stream
        .take(MAX_ANSWER)
        .read_to_end(&mut answer)
        .with_context(|| format!("reading the answer of {addr}{path}"))?;
    if answer.len() as u64 == MAX_ANSWER {
        bail!("the answer of {addr}{path} is over {MAX_ANSWER} bytes: not read");
    }
    split_answer(&answer).with_context(|| format!("the answer of {addr}{path}"))
}

/// A proxy that answered, with another status than 200: what it said, which
/// asking it again (or another pod of it) would not change.
#[derive(Debug, thiserror::Error)]
#[error("{status}: {body}")]
pub struct Answered {
    pub status: String,
    pub body: String,
}

/// The body of a `200` answer.
fn split_answer(answer: &[u8]) -> Result<Vec<u8>> {
    let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        bail!("no complete HTTP head in {} bytes", answer.len());
    };
    let head = String::from_utf8_lossy(&answer[..end]);
    let status = head.lines().next().unwrap_or_default();
    let body = answer[end + 4..].to_vec();
    match status.split_whitespace().nth(1) {
        Some("200") => Ok(body),
        Some(_) => Err(Answered {
            status: status.to_owned(),
            body: String::from_utf8_lossy(&body[..body.len().min(200)])
                .trim()
                .to_owned(),
        }
        .into()),
        None => bail!("not an HTTP status line: {status:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_of_a_200_answer() {
        let body =
            split_answer(b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n{}").expect("a 200 answer");
        assert_eq!(body, b"{}");
    }

    #[test]
    fn other_answers_say_what_came() {
        let error = split_answer(b"HTTP/1.0 404 Not Found\r\n\r\nno such page")
            .expect_err("a 404 is an error");
        assert_eq!(error.to_string(), "HTTP/1.0 404 Not Found: no such page");
        assert!(
            error.is::<Answered>(),
            "an answer, not a failure to get one"
        );
        let error = split_answer(b"HTTP/1.0 200 OK\r\n").expect_err("truncated");
        assert!(error.to_string().contains("no complete HTTP head"));
        let error = split_answer(b"garbage\r\n\r\n").expect_err("not HTTP");
        assert!(error.to_string().contains("not an HTTP status line"));
    }

    #[test]
    fn a_missing_namespace_is_named() {
        let error = get_in_netns(Path::new("/run/netns/warren-no-such-pod"), 15000, "/")
            .expect_err("no such namespace");
        assert!(
            error.to_string().contains("/run/netns/warren-no-such-pod"),
            "{error:#}"
        );
    }
}
