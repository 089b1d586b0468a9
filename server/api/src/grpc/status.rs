//! The one mapping from [`InferError`] to a gRPC status (same table as HTTP's in `http::error`).

use ferroserve_engine::InferError;
use tonic::{Code, Status};

/// The gRPC code for an engine error.
pub fn code_of(error: &InferError) -> Code {
    match error {
        InferError::NotFound(_) => Code::NotFound,
        InferError::NotReady(_) => Code::Unavailable,
        InferError::InvalidInput(_) => Code::InvalidArgument,
        InferError::Overloaded(_) => Code::ResourceExhausted,
        InferError::Timeout(_) => Code::DeadlineExceeded,
        InferError::Unsupported(_) => Code::Unimplemented,
        _ => Code::Internal,
    }
}

/// Converts an engine error to a status, logging server faults once.
pub fn to_status(error: InferError) -> Status {
    let code = code_of(&error);
    if code == Code::Internal {
        tracing::error!(kind = error.kind(), error = %error, "grpc request failed");
    } else {
        tracing::debug!(kind = error.kind(), error = %error, "grpc request rejected");
    }
    Status::new(code, error.to_string())
}
