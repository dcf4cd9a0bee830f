//! The eBPF object built by `build.rs` and embedded in the binary, so the
//! agent needs no files beside it.

use super::DatapathError;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/warren"));

/// The embedded object, or an error if the build skipped the eBPF part.
pub(super) fn bytes() -> Result<&'static [u8], DatapathError> {
    if OBJECT.is_empty() {
        return Err(DatapathError::NoObject);
    }
    Ok(OBJECT)
}
