//! A TLS client's hello, read without terminating TLS: the server name it
//! asks for, which `tls` rules route on (Envoy's TLS inspector). What was
//! read is kept, to be sent to the upstream before the splice.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _};
use tracing::debug;

/// How long a client may take to send its hello (it sends it first).
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// A hello is a few hundred bytes, a post-quantum one a few KiB: past this
/// the bytes are not read as one.
const MAX_HELLO: usize = 64 * 1024;

/// Reads from `io` into `read` until the client's hello is complete, and
/// returns the server name it asks for: `None` when it names none, or the
/// bytes are not a TLS hello, or the client stops sending first.
pub async fn server_name<R: AsyncRead + Unpin>(
    io: &mut R,
    read: &mut Vec<u8>,
) -> std::io::Result<Option<String>> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut chunk = [0u8; 4096];
    loop {
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        read.extend_from_slice(&chunk[..n]);
        let mut rest = &chunk[..n];
        while !rest.is_empty() {
            if let Err(error) = acceptor.read_tls(&mut rest) {
                debug!(%error, "not a TLS hello: routed without a server name");
                return Ok(None);
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                return Ok(accepted.client_hello().server_name().map(str::to_owned));
            }
            Ok(None) if read.len() < MAX_HELLO => {}
            Ok(None) => return Ok(None),
            // Not TLS, or a hello rustls will not read (it is stricter than
            // Envoy's inspector: a hello without signature algorithms, as
            // some TLS 1.0 clients send, is refused).
            Err((error, _)) => {
                debug!(%error, "not a TLS hello rustls reads: routed without a server name");
                return Ok(None);
            }
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
        let mut read = Vec::new();
        let name = server_name(&mut io, &mut read).await.expect("read");
        assert_eq!(name.as_deref(), Some("api.example.com"));
        assert_eq!(read, hello);
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
            let mut read = Vec::new();
            let name =
                tokio::time::timeout(Duration::from_secs(2), server_name(&mut reader, &mut read))
                    .await
                    .expect("told without waiting for more")
                    .expect("read");
            assert_eq!(name, None);
            assert_eq!(read, bytes);
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
            let mut read = Vec::new();
            let name = server_name(&mut io, &mut read).await.expect("read");
            assert_eq!(name, None, "{bytes:?}");
            // What was read is kept, to go first; the rest is still to
            // be read by the splice.
            assert!(bytes.starts_with(&read), "{read:?} of {bytes:?}");
        }
        // An address names no server: a client sends no SNI for one.
        let hello = hello_for("10.0.0.1");
        let mut io = tokio_test_io(&hello, 4096);
        let mut read = Vec::new();
        assert_eq!(server_name(&mut io, &mut read).await.expect("read"), None);
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
