//! gRPC's framing of the unary calls the waypoint makes itself (external
//! authorizers' checks, OTLP span exports).

use bytes::{BufMut as _, Bytes, BytesMut};

/// A message in gRPC's framing: uncompressed, its length, itself.
pub fn frame(message: &impl prost::Message) -> Bytes {
    let length = message.encoded_len();
    let mut out = BytesMut::with_capacity(5 + length);
    out.put_u8(0);
    out.put_u32(u32::try_from(length).unwrap_or(u32::MAX));
    // Encoding into a buffer with room for it cannot fail.
    let _ = message.encode(&mut out);
    out.freeze()
}

/// The one message of a unary answer's body; `what` names it in the error.
pub fn unframe<M: prost::Message + Default>(body: &[u8], what: &str) -> Result<M, String> {
    let [compressed, a, b, c, d, rest @ ..] = body else {
        return Err(format!(
            "the answer is {} bytes, too short for a gRPC message",
            body.len()
        ));
    };
    if *compressed != 0 {
        return Err("the answer is compressed, which was not asked for".into());
    }
    let length = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
    let message = rest.get(..length).ok_or_else(|| {
        format!(
            "the answer's message is cut short ({} of {length} bytes)",
            rest.len()
        )
    })?;
    M::decode(message).map_err(|e| format!("the answer is no {what}: {e}"))
}
