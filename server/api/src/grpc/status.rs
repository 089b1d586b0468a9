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

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::*;
    use crate::http::error::status_of;

    /// HTTP and gRPC map every error kind through the same table.
    #[test]
    fn http_and_grpc_tables_agree() {
        let table = [
            (InferError::NotFound("x".into()), StatusCode::NOT_FOUND, Code::NotFound),
            (InferError::NotReady("x".into()), StatusCode::SERVICE_UNAVAILABLE, Code::Unavailable),
            (InferError::InvalidInput("x".into()), StatusCode::BAD_REQUEST, Code::InvalidArgument),
            (InferError::Overloaded("x".into()), StatusCode::TOO_MANY_REQUESTS, Code::ResourceExhausted),
            (InferError::Timeout("x".into()), StatusCode::GATEWAY_TIMEOUT, Code::DeadlineExceeded),
            (InferError::Unsupported("x".into()), StatusCode::NOT_IMPLEMENTED, Code::Unimplemented),
            (InferError::Internal("x".into()), StatusCode::INTERNAL_SERVER_ERROR, Code::Internal),
        ];
        for (error, http, grpc) in table {
            assert_eq!((status_of(&error), code_of(&error)), (http, grpc), "{}", error.kind());
            assert_eq!(to_status(error).message(), "x");
        }
    }
}
