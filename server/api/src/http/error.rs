//! The one mapping from [`InferError`] to an HTTP status and a `{"error": "..."}` body.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ferroserve_engine::InferError;

/// An error on its way to an HTTP client.
#[derive(Debug)]
pub struct ApiError(pub InferError);

impl From<InferError> for ApiError {
    fn from(e: InferError) -> Self {
        ApiError(e)
    }
}

/// The HTTP status for an engine error (same table as gRPC's in `grpc::status`).
pub fn status_of(error: &InferError) -> StatusCode {
    match error {
        InferError::NotFound(_) => StatusCode::NOT_FOUND,
        InferError::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
        InferError::InvalidInput(_) | InferError::AlreadyExists(_) => StatusCode::BAD_REQUEST,
        InferError::Overloaded(_) => StatusCode::TOO_MANY_REQUESTS,
        InferError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        InferError::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = status_of(&self.0);
        // Only faults of our own are errors in the log; a client asking for something not offered (501), a
        // model not ready (503) or a deadline passed (504) is the client's to act on.
        if matches!(self.0, InferError::Internal(_)) {
            tracing::error!(kind = self.0.kind(), error = %self.0, "request failed");
        } else {
            tracing::debug!(kind = self.0.kind(), error = %self.0, "request rejected");
        }
        (status, Json(serde_json::json!({ "error": self.0.client_message() }))).into_response()
    }
}
