//! The HTTP/REST front end (axum): KServe v2 and v1 routes over one engine.

pub mod codec;
pub mod error;
mod limits;
mod raw_input;
mod routes;
pub mod streamed;
mod v1;
mod views;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{any, get, post};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::decompression::RequestDecompressionLayer;

use crate::state::AppState;

/// A router with `/metrics` alone, for `--metrics-port`.
pub fn metrics_router(state: AppState) -> Router {
    Router::new().route("/metrics", get(routes::metrics)).with_state(state)
}

/// Builds the router; `max_body_bytes` bounds a request body (after decompression), `max_inflated_bytes` one that
/// came compressed, once inflated.
pub fn router(state: AppState, max_body_bytes: usize, max_inflated_bytes: usize) -> Router {
    let limits = crate::admission::BodyLimits {
        budget: state.budget.clone(),
        max_body_bytes,
        max_inflated_bytes,
        read_timeout: state.read_timeout,
    };
    let admission = axum::middleware::from_fn_with_state(limits, crate::admission::admit_http);
    Router::new()
        .route("/metrics", get(routes::metrics))
        .route("/", get(routes::root_live))
        .route("/v2/health/live", get(routes::live))
        .route("/v2/health/ready", get(routes::ready))
        .route("/v2", get(routes::server_metadata))
        .route("/v2/models/stats", get(routes::all_stats))
        .route("/v2/models/{model}", get(routes::model_metadata))
        .route("/v2/models/{model}/ready", get(routes::model_ready))
        .route("/v2/models/{model}/config", get(routes::model_config))
        .route("/v2/models/{model}/stats", get(routes::model_stats))
        .route(
            "/v2/models/{model}/traffic",
            get(routes::traffic_get).put(routes::traffic_put).delete(routes::traffic_reset),
        )
        .route("/v2/models/{model}/infer", post(routes::infer))
        .route("/v2/models/{model}/versions/{version}", get(routes::version_metadata))
        .route("/v2/models/{model}/versions/{version}/ready", get(routes::version_ready))
        .route("/v2/models/{model}/versions/{version}/config", get(routes::version_config))
        .route("/v2/models/{model}/versions/{version}/stats", get(routes::version_stats))
        .route("/v2/models/{model}/versions/{version}/infer", post(routes::version_infer))
        .route("/v2/repository/index", post(routes::repository_index))
        .route("/v2/logging", get(routes::log_settings_get).post(routes::log_settings_post))
        .route("/v2/trace/setting", any(routes::no_trace_settings))
        .route("/v2/models/{model}/trace/setting", any(routes::no_trace_settings))
        .route("/v2/repository/models/{model}/load", post(routes::repository_load))
        .route("/v2/repository/models/{model}/unload", post(routes::repository_unload))
        .route("/v2/systemsharedmemory/status", get(routes::shm_status))
        .route("/v2/systemsharedmemory/unregister", post(routes::shm_unregister_all))
        .route("/v2/systemsharedmemory/region/{name}/status", get(routes::shm_region_status))
        .route("/v2/systemsharedmemory/region/{name}/register", post(routes::shm_register))
        .route("/v2/systemsharedmemory/region/{name}/unregister", post(routes::shm_unregister))
        .route("/v2/cudasharedmemory/status", get(routes::cuda_shm_status))
        .route("/v2/cudasharedmemory/region/{name}/status", get(routes::cuda_shm_region_status))
        .route("/v2/cudasharedmemory/unregister", post(routes::cuda_shm_unregister))
        .route("/v2/cudasharedmemory/region/{name}/unregister", post(routes::cuda_shm_unregister))
        .route("/v2/cudasharedmemory", any(routes::no_cuda_shared_memory))
        .route("/v2/cudasharedmemory/{*rest}", any(routes::no_cuda_shared_memory))
        .route("/v1/models", get(v1::list))
        .route("/v1/models/{model}", get(v1::status).post(v1::post))
        .fallback(routes::not_found)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(admission)
        .layer(RequestDecompressionLayer::new())
        .layer(tower::util::MapRequestLayer::new(crate::admission::mark_compressed))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(axum::middleware::map_response(json_errors))
        .layer(crate::request_id::RequestIdLayer)
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

#[cfg(test)]
mod tests {
    //! Routing and error shapes through `oneshot`, with an engine over an empty repository (no runtime
    //! needed); inference itself is covered end to end with real clients in tests/.

    use std::sync::Arc;

    use axum::body::{Body, to_bytes};
    use axum::http::{Request, StatusCode};
    use ferroserve_engine::files::Files;
    use ferroserve_engine::{EngineOptions, ModelControlMode, ModelManager, Repository, Root, StartupModels};
    use tower::ServiceExt;

    use super::*;

    async fn app() -> Router {
        let root = std::env::temp_dir().join(format!("ferroserve-router-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        let repository =
            Repository::new(vec![Root::models(Files::open(&root.to_string_lossy(), Default::default()).unwrap())]);
        let manager =
            Arc::new(ModelManager::new(repository, Vec::new(), EngineOptions::default(), ModelControlMode::None));
        manager.start(StartupModels::All).await.unwrap();
        let (_tx, stopping) = tokio::sync::watch::channel(false);
        router(
            AppState::new(crate::state::Shared {
                manager,
                max_json_bytes: 1024,
                max_message_bytes: 4096,
                stopping,
                admin: Default::default(),
                budget: crate::admission::MemoryBudget::new(0),
                request_timeout: None,
                metrics: None,
                shm: Default::default(),
                server_name: "triton".into(),
                read_timeout: std::time::Duration::from_secs(30),
            }),
            4096,
            4096,
        )
    }

    async fn call(method: &str, uri: &str, body: &'static str) -> (StatusCode, serde_json::Value) {
        let response = app()
            .await
            .oneshot(Request::builder().method(method).uri(uri).body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
    }

    #[tokio::test]
    async fn health_and_metadata() {
        assert_eq!(call("GET", "/v2/health/live", "").await.0, StatusCode::OK);
        assert_eq!(call("GET", "/v2/health/ready", "").await, (StatusCode::OK, serde_json::json!({"ready": true})));
        let (status, meta) = call("GET", "/v2", "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(meta["name"], "triton");
        assert_eq!(call("GET", "/v1/models", "").await.1, serde_json::json!({"models": []}));
        assert_eq!(call("GET", "/", "").await, (StatusCode::OK, serde_json::json!({"status": "alive"})));
    }

    #[tokio::test]
    async fn errors_are_json_with_the_right_status() {
        let (status, body) = call("POST", "/v2/models/nope/infer", r#"{"inputs": []}"#).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body["error"].as_str().unwrap().contains("unknown model"));
        let (status, body) = call("GET", "/v2/models/nope/infer", "").await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert!(body["error"].is_string());
        let (status, body) = call("GET", "/no/such/path", "").await;
        assert_eq!((status, body["error"].as_str()), (StatusCode::NOT_FOUND, Some("no such endpoint")));
        let big: &'static str = Box::leak("x".repeat(5000).into_boxed_str());
        let (status, body) = call("POST", "/v2/models/nope/infer", big).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(body["error"].is_string());
        let (status, body) = call("POST", "/v2/models/m/infer", Box::leak("{".repeat(2000).into_boxed_str())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body["error"].as_str().unwrap().contains("--max-json-bytes"));
    }

    #[tokio::test]
    async fn cuda_shared_memory_is_refused_and_system_shared_memory_answers() {
        let (status, body) = call("POST", "/v2/cudasharedmemory/region/r0/register", "{}").await;
        assert_eq!(status, StatusCode::NOT_IMPLEMENTED);
        assert!(body["error"].as_str().unwrap().contains("CUDA shared memory is not supported"));
        assert_eq!(call("POST", "/v2/cudasharedmemory/unregister", "").await.0, StatusCode::OK);
        assert_eq!(call("POST", "/v2/cudasharedmemory/region/r0/unregister", "").await.0, StatusCode::OK);
        assert_eq!(call("GET", "/v2/cudasharedmemory/status", "").await, (StatusCode::OK, serde_json::json!([])));
        let (status, body) = call("GET", "/v2/cudasharedmemory/region/r0/status", "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body["error"].as_str().unwrap().contains("cuda shared memory region: 'r0'"));
        let (status, body) = call("GET", "/v2/systemsharedmemory/status", "").await;
        assert_eq!((status, body), (StatusCode::OK, serde_json::json!([])));
        let (status, body) = call("GET", "/v2/systemsharedmemory/region/r0/status", "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body["error"].as_str().unwrap().contains("'r0'"));
        let (status, body) =
            call("POST", "/v2/systemsharedmemory/region/r0/register", r#"{"key":"/../x","byte_size":1}"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body["error"].as_str().unwrap().contains("not a POSIX shared memory name"));
        let (status, body) = call("POST", "/v2/systemsharedmemory/region/r0/register", r#"{"key":1}"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body["error"].as_str().unwrap().contains("byte_size"));
        let (status, _) = call("POST", "/v2/systemsharedmemory/unregister", "").await;
        assert_eq!(status, StatusCode::OK);
    }
}
