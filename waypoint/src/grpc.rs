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
