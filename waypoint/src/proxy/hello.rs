//! A TLS client's hello, read without terminating TLS: the server name it
//! asks for, which `tls` rules route on and `connection.sni` policies decide
//! on (Envoy's TLS inspector). What was read is kept, to be sent to the
//! upstream before the splice.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _};
use tracing::debug;

/// How long a client may take to send its hello (it sends it first).
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// A hello is a few hundred bytes, a post-quantum one a few KiB: past this
/// the bytes are not read as one.
const MAX_HELLO: usize = 64 * 1024;

/// What a client's first bytes turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// A whole TLS hello, and the server name it asks for (`None`: it names
    /// none, as for an address).
    Read(Option<String>),
    /// No hello this waypoint can read, and why: other bytes, a hello cut
    /// short or past the size limit, or one rustls refuses. Routing goes on
    /// without a name; a policy on the name cannot be decided.
    Unreadable(String),
}

impl Hello {
    /// The server name, if a hello named one.
    pub fn server_name(&self) -> Option<&str> {
        match self {
            Hello::Read(name) => name.as_deref(),
            Hello::Unreadable(_) => None,
        }
    }
}

/// Reads from `io` into `bytes` until the client's hello is complete, or
/// the bytes cannot be one.
pub async fn read<R: AsyncRead + Unpin>(io: &mut R, bytes: &mut Vec<u8>) -> std::io::Result<Hello> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut chunk = [0u8; 4096];
    let unreadable = |why: String| {
        debug!(%why, "no TLS hello to read a server name from");
        Ok(Hello::Unreadable(why))
    };
    loop {
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return unreadable("the client stopped sending before its hello was whole".into());
        }
        bytes.extend_from_slice(&chunk[..n]);
        let mut rest = &chunk[..n];
        while !rest.is_empty() {
            if let Err(error) = acceptor.read_tls(&mut rest) {
                return unreadable(format!("not a TLS hello: {error}"));
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                return Ok(Hello::Read(
                    accepted.client_hello().server_name().map(str::to_owned),
                ));
            }
            Ok(None) if bytes.len() < MAX_HELLO => {}
            Ok(None) => return unreadable(format!("no whole hello in {MAX_HELLO} bytes")),
            // Not TLS, or a hello rustls will not read (it is stricter than
            // Envoy's inspector: a hello without signature algorithms, as
            // some TLS 1.0 clients send, is refused).
            Err((error, _)) => return unreadable(format!("not a TLS hello rustls reads: {error}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// The first bytes a rustls client sends for `name`.
    fn hello_for(name: &str) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let mut client = rustls::ClientConnection::new(
            Arc::new(config),
            name.to_owned().try_into().expect("a server name"),
        )
        .expect("a client");
        let mut bytes = Vec::new();
        client.write_tls(&mut bytes).expect("the hello");
        bytes
    }

    #[tokio::test]
    async fn the_server_name_is_read_and_the_bytes_kept() {
        let hello = hello_for("api.example.com");
        // Sent in pieces, as a slow client would.
        let mut io = tokio_test_io(&hello, 7);
        let mut bytes_read = Vec::new();
        let hello_read = read(&mut io, &mut bytes_read).await.expect("read");
        assert_eq!(hello_read, Hello::Read(Some("api.example.com".into())));
        assert_eq!(bytes_read, hello);
    }

    #[tokio::test]
    async fn bytes_that_are_no_hello_are_told_at_once() {
        // The client keeps its side open: only the bytes tell.
        use tokio::io::AsyncWriteExt as _;
        for bytes in [
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            b"SSH-2.0-OpenSSH_9.2\r\n".to_vec(),
        ] {
            let (mut reader, mut writer) = tokio::io::duplex(1024);
            writer.write_all(&bytes).await.expect("write");
            let mut bytes_read = Vec::new();
            let hello_read =
                tokio::time::timeout(Duration::from_secs(2), read(&mut reader, &mut bytes_read))
                    .await
                    .expect("told without waiting for more")
                    .expect("read");
            assert!(matches!(hello_read, Hello::Unreadable(_)), "{hello_read:?}");
            assert_eq!(bytes_read, bytes);
            drop(writer);
        }
    }

    #[tokio::test]
    async fn what_is_not_a_hello_names_nothing() {
        for bytes in [
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            vec![0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3],
            Vec::new(),
        ] {
            let mut io = tokio_test_io(&bytes, 3);
            let mut bytes_read = Vec::new();
            let hello_read = read(&mut io, &mut bytes_read).await.expect("read");
            assert!(
                matches!(hello_read, Hello::Unreadable(_)),
                "{bytes:?}: {hello_read:?}"
            );
            assert_eq!(hello_read.server_name(), None);
            // What was read is kept, to go first; the rest is still to
            // be read by the splice.
            assert!(
                bytes.starts_with(&bytes_read),
                "{bytes_read:?} of {bytes:?}"
            );
        }
        // A hello cut short is no hello either.
        let hello = hello_for("api.example.com");
        let mut io = tokio_test_io(&hello[..hello.len() / 2], 16);
        let mut bytes_read = Vec::new();
        assert!(matches!(
            read(&mut io, &mut bytes_read).await.expect("read"),
            Hello::Unreadable(_)
        ));
        // An address names no server: a client sends no SNI for one, but
        // the hello is whole.
        let hello = hello_for("10.0.0.1");
        let mut io = tokio_test_io(&hello, 4096);
        let mut bytes_read = Vec::new();
        assert_eq!(
            read(&mut io, &mut bytes_read).await.expect("read"),
            Hello::Read(None)
        );
    }

    /// A reader handing out `bytes` `step` at a time, then the end.
    fn tokio_test_io(bytes: &[u8], step: usize) -> impl AsyncRead + Unpin {
        use tokio::io::AsyncWriteExt as _;
        let (reader, mut writer) = tokio::io::duplex(256 * 1024);
        let chunks: Vec<Vec<u8>> = bytes.chunks(step).map(<[u8]>::to_vec).collect();
        tokio::spawn(async move {
            for chunk in chunks {
                if writer.write_all(&chunk).await.is_err() {
                    return;
                }
                tokio::task::yield_now().await;
            }
        });
        reader
    }
}
