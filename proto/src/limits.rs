//! Structural limits of an inference request, the same over gRPC and HTTP/JSON, checked while the request is
//! parsed (before what it describes is allocated). No model needs more; a request past one is hostile or
//! broken, and is refused with a message naming the limit instead of being decoded and charged to the
//! memory budget (a million empty inputs are 2 MB of protobuf and 600 MB once decoded).

/// Inputs, and requested outputs, per request.
pub const MAX_TENSORS: usize = 4096;

/// Dimensions of a shape (numpy's limit, so no numpy client can build more).
pub const MAX_DIMS: usize = 64;

/// Entries of one `parameters` map (the request's, an input's, an output's).
pub const MAX_PARAMETERS: usize = 1024;

/// Bytes a request may take once decoded beyond its own size: a gRPC message by the decode estimate, a KServe
/// v1 body read as a JSON tree. Typed contents and repeated messages decode to many times their wire size (an
/// empty `bytes_contents` entry is 2 bytes and a 32-byte handle in a vector grown by doubling); past this a
/// request must carry its tensors in `raw_input_contents` (views of the message once decoded). The estimate of
/// listed strings is 64 bytes an entry where 78 were measured, so this keeps the real growth under 256 MB
/// (4 Mi empty entries, estimated at 248 MiB beyond their 8 MiB, grew a release server by 313 MiB).
pub const MAX_DECODE_GROWTH: usize = 192 << 20;

/// Bytes one request may take in all while it is decoded: its own bytes (the message, the JSON body) and what
/// decoding builds beside them. With the default `--max-message-bytes` of 192 MiB, no single request, refused or
/// served, grows the server by more than 256 MB (244 MiB) on its way in: a 64 MiB JSON body of FP64 `0,` would
/// otherwise hold its body and 192 MiB of tensors, 256 MiB (268 MB).
pub const MAX_REQUEST_FOOTPRINT: usize = 224 << 20;

/// What decoding may always build beside a request, however large the request (a deployment may allow
/// messages past [`MAX_REQUEST_FOOTPRINT`] with `--max-message-bytes`): enough for the handles of raw contents,
/// which are views of the message.
pub const MIN_DECODE_GROWTH: usize = 8 << 20;

/// Bytes a request of `wire` bytes may take once decoded beyond them: [`MAX_DECODE_GROWTH`], less what would
/// carry the whole past [`MAX_REQUEST_FOOTPRINT`], and never under [`MIN_DECODE_GROWTH`].
pub fn decode_growth_allowed(wire: usize) -> usize {
    MAX_DECODE_GROWTH.min(MAX_REQUEST_FOOTPRINT.saturating_sub(wire)).max(MIN_DECODE_GROWTH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_growth_shrinks_as_the_request_grows() {
        assert_eq!(decode_growth_allowed(0), MAX_DECODE_GROWTH);
        assert_eq!(decode_growth_allowed(32 << 20), MAX_DECODE_GROWTH);
        assert_eq!(decode_growth_allowed(64 << 20), 160 << 20);
        assert_eq!(decode_growth_allowed(192 << 20), 32 << 20);
        assert_eq!(decode_growth_allowed(220 << 20), MIN_DECODE_GROWTH);
        assert_eq!(decode_growth_allowed(usize::MAX), MIN_DECODE_GROWTH);
        for wire in [0, 1 << 20, 100 << 20, 216 << 20] {
            assert!(wire + decode_growth_allowed(wire) <= MAX_REQUEST_FOOTPRINT, "{wire}");
        }
    }
}
