//! Reading HTTP bodies with a size bound, so a peer cannot make the sample hold an
//! unbounded amount of memory (or read forever).
//!
//! Generic over the body type so the server's handler can be unit-tested with in-memory
//! bodies instead of a socket.

use std::pin::pin;

use bytes::{Buf as _, Bytes, BytesMut};
use http_body_util::BodyExt as _;
use hyper::body::Body;
use thiserror::Error;

/// The largest body the sample reads, in either direction.
pub const LIMIT: u64 = 16 * 1024 * 1024;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Error)]
pub enum BodyError {
    #[error("the body is over {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("reading the body failed")]
    Read(#[source] BoxError),
}

/// Reads the body to its end and returns its length, keeping none of it.
pub async fn count<B>(body: B, limit: u64) -> Result<u64, BodyError>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let mut total = 0;
    read(body, limit, |chunk| total += chunk.remaining() as u64).await?;
    Ok(total)
}

/// Reads the body to its end and returns it.
pub async fn collect<B>(body: B, limit: u64) -> Result<Bytes, BodyError>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let mut all = BytesMut::new();
    read(body, limit, |chunk| {
        all.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()))
    })
    .await?;
    Ok(all.freeze())
}

async fn read<B>(
    body: B,
    limit: u64,
    mut on_chunk: impl FnMut(&mut B::Data),
) -> Result<(), BodyError>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let mut body = pin!(body);
    let mut seen = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Read(e.into()))?;
        // Trailers carry no data; only data frames count towards the bound.
        if let Ok(mut chunk) = frame.into_data() {
            seen += chunk.remaining() as u64;
            if seen > limit {
                return Err(BodyError::TooLarge { limit });
            }
            on_chunk(&mut chunk);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use http_body_util::Full;

    use super::*;

    #[tokio::test]
    async fn counts_and_collects_within_the_limit() {
        let body = || Full::new(Bytes::from_static(b"hello"));
        assert_eq!(count(body(), 5).await.unwrap(), 5);
        assert_eq!(collect(body(), 5).await.unwrap(), "hello");
    }

    #[tokio::test]
    async fn refuses_a_body_over_the_limit() {
        let body = Full::new(Bytes::from_static(b"hello"));
        assert!(matches!(
            count(body, 4).await,
            Err(BodyError::TooLarge { limit: 4 })
        ));
    }
}
