//! The one mapping from [`InferError`] to a gRPC status (same table as HTTP's in `http::error`).

use ferroserve_engine::InferError;
use tonic::{Code, Status};

/// The gRPC code for an engine error.
pub fn code_of(error: &InferError) -> Code {
    match error {
        InferError::NotFound(_) => Code::NotFound,
        InferError::NotReady(_) => Code::Unavailable,
        InferError::InvalidInput(_) => Code::InvalidArgument,
        InferError::AlreadyExists(_) => Code::AlreadyExists,
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
    Status::new(code, error.client_message())
}

/// The status to end a stream with when one of its messages could not be read: tonic's OUT_OF_RANGE for an
/// over-limit message becomes RESOURCE_EXHAUSTED, as for unary calls (see below); anything else stays.
pub fn inbound_message_error(status: Status) -> Status {
    if status.code() == Code::OutOfRange && status.message().contains("decoded message length too large") {
        Status::resource_exhausted(status.message().to_string())
    } else {
        status
    }
}

/// tonic refuses a request message over the size limit with OUT_OF_RANGE, where grpc-core servers (Triton's
/// among them) answer RESOURCE_EXHAUSTED, the code clients check for. Such a refusal is a trailers-only reply
/// (the status sits in the headers), so this rewrites that one status there and leaves every other reply as
/// it is. Installed as a layer around the whole gRPC router.
pub fn oversized_request_as_resource_exhausted<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    let out_of_range = headers.get("grpc-status").is_some_and(|v| v.as_bytes() == b"11");
    let too_large = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|m| m.replace("%20", " ").contains("decoded message length too large"));
    if out_of_range && too_large {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    response
}

/// The canonical name of a gRPC code, as the `code` label of request metrics.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
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
            (InferError::AlreadyExists("x".into()), StatusCode::BAD_REQUEST, Code::AlreadyExists),
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

    #[test]
    fn only_an_oversized_request_becomes_resource_exhausted() {
        let reply = |status: &'static str, message: &'static str| {
            let mut r = http::Response::new(());
            r.headers_mut().insert("grpc-status", http::HeaderValue::from_static(status));
            r.headers_mut().insert("grpc-message", http::HeaderValue::from_static(message));
            oversized_request_as_resource_exhausted(r).headers()["grpc-status"].clone()
        };
        let limit = "Error,%20decoded%20message%20length%20too%20large:%20found%202097174%20bytes";
        assert_eq!(reply("11", limit), "8");
        assert_eq!(reply("11", "batch%20index%20out%20of%20range"), "11");
        assert_eq!(reply("3", limit), "3");
    }

    #[test]
    fn an_oversized_stream_message_ends_the_stream_with_resource_exhausted() {
        let over =
            Status::out_of_range("Error, decoded message length too large: found 9 bytes, the limit is: 4 bytes");
        assert_eq!(inbound_message_error(over).code(), Code::ResourceExhausted);
        assert_eq!(inbound_message_error(Status::cancelled("gone")).code(), Code::Cancelled);
    }
}
