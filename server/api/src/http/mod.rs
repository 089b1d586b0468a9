//! The HTTP/REST front end (axum): KServe v2 and v1 routes over one engine.

pub mod codec;
pub mod error;
mod routes;
mod v1;
mod views;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::decompression::RequestDecompressionLayer;

use crate::state::AppState;

/// Builds the router; `max_body_bytes` bounds a request body (after decompression).
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v2/health/live", get(routes::live))
        .route("/v2/health/ready", get(routes::ready))
        .route("/v2", get(routes::server_metadata))
        .route("/v2/models/stats", get(routes::all_stats))
        .route("/v2/models/{model}", get(routes::model_metadata))
        .route("/v2/models/{model}/ready", get(routes::model_ready))
        .route("/v2/models/{model}/config", get(routes::model_config))
        .route("/v2/models/{model}/stats", get(routes::model_stats))
        .route("/v2/models/{model}/infer", post(routes::infer))
        .route("/v2/models/{model}/versions/{version}", get(routes::version_metadata))
        .route("/v2/models/{model}/versions/{version}/ready", get(routes::version_ready))
        .route("/v2/models/{model}/versions/{version}/config", get(routes::version_config))
        .route("/v2/models/{model}/versions/{version}/stats", get(routes::version_stats))
        .route("/v2/models/{model}/versions/{version}/infer", post(routes::version_infer))
        .route("/v2/repository/index", post(routes::repository_index))
        .route("/v2/repository/models/{model}/load", post(routes::repository_load))
        .route("/v2/repository/models/{model}/unload", post(routes::repository_unload))
        .route("/v1/models", get(v1::list))
        .route("/v1/models/{model}", get(v1::status).post(v1::post))
        .fallback(routes::not_found)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(RequestDecompressionLayer::new())
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(axum::middleware::map_response(json_errors))
        .with_state(state)
}

/// Every error leaves as `{"error": "..."}`, including the ones axum and tower-http produce themselves
/// (413 body too large, 405, undecodable bodies, bad path segments), which are plain text otherwise.
async fn json_errors(response: axum::response::Response) -> axum::response::Response {
    use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
    let status = response.status();
    let is_json = response.headers().get(CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_string() } else { text };
    let mut json =
        axum::response::IntoResponse::into_response((status, axum::Json(serde_json::json!({"error": message}))));
    for (name, value) in parts.headers.iter() {
        if name != CONTENT_TYPE && name != CONTENT_LENGTH {
            json.headers_mut().insert(name.clone(), value.clone());
        }
    }
    json
}

/// A handler that panicked answers 500 with the usual error body; the panic is logged, the server lives on.
fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    tracing::error!("a request handler panicked");
    axum::response::IntoResponse::into_response((
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        axum::Json(serde_json::json!({"error": "internal error"})),
    ))
}
