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
