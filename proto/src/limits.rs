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
