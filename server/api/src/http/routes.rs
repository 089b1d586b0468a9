//! REST handlers for the KServe v2 protocol (health, metadata, infer, config, stats, repository).

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ferroserve_engine::{IndexState, InferError};
use serde_json::{Value, json};

use super::codec::{self, HEADER_LENGTH};
use super::error::ApiError;
use super::views;
use crate::admin::AdminAccess;
use crate::load_parameters;
use crate::state::{AppState, EXTENSIONS, SERVER_VERSION};

type ApiResult<T> = Result<T, ApiError>;

/// `GET /v2/health/live`: 200, or 503 once a GPU has failed in a way only a restart clears (a liveness probe
/// then restarts the server).
pub(crate) async fn live(State(state): State<AppState>) -> Response {
    match device_faults(&state) {
        None => Json(json!({"live": true})).into_response(),
        Some(reason) => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"live": false, "error": reason}))).into_response()
        }
    }
}

/// Why the server is not live (its GPUs that failed), or `None` when it is.
fn device_faults(state: &AppState) -> Option<String> {
    let faults = state.manager.device_faults();
    (!faults.is_empty())
        .then(|| faults.iter().map(|(gpu, why)| format!("GPU {gpu} failed: {why}")).collect::<Vec<_>>().join("; "))
}

/// `GET /v2/health/ready`: 200 only when every model is ready and no shutdown has begun.
pub(crate) async fn ready(State(state): State<AppState>) -> Response {
    let ready = state.manager.is_ready();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({"ready": ready}))).into_response()
}

/// `GET /v2`.
pub(crate) async fn server_metadata(State(state): State<AppState>) -> Json<Value> {
    Json(json!({"name": state.server_name, "version": SERVER_VERSION, "extensions": EXTENSIONS}))
}

/// `GET /`: KServe's liveness check (its SDK's v1 `is_server_live`, and a transformer's check of a v1
/// predictor), answered as `/v2/health/live` is, in KServe's words.
pub(crate) async fn root_live(State(state): State<AppState>) -> Response {
    match device_faults(&state) {
        None => Json(json!({"status": "alive"})).into_response(),
        Some(reason) => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "not alive", "error": reason}))).into_response()
        }
    }
}

/// `GET /v2/models/{m}`.
pub(crate) async fn model_metadata(State(state): State<AppState>, Path(model): Path<String>) -> ApiResult<Json<Value>> {
    metadata(&state, &model, None)
}

/// `GET /v2/models/{m}/versions/{v}`.
pub(crate) async fn version_metadata(
    State(state): State<AppState>,
    Path((model, version)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    metadata(&state, &model, Some(&version))
}

fn metadata(state: &AppState, model: &str, version: Option<&str>) -> ApiResult<Json<Value>> {
    let entry = state.manager.entry(model)?;
    let v = state.manager.version(model, version)?;
    Ok(Json(views::model_metadata(&entry, &v, version.is_some())))
}

/// `GET /v2/models/{m}/ready`.
pub(crate) async fn model_ready(State(state): State<AppState>, Path(model): Path<String>) -> ApiResult<Response> {
    readiness(&state, &model, None)
}

/// `GET /v2/models/{m}/versions/{v}/ready`.
pub(crate) async fn version_ready(
    State(state): State<AppState>,
    Path((model, version)): Path<(String, String)>,
) -> ApiResult<Response> {
    readiness(&state, &model, Some(&version))
}

fn readiness(state: &AppState, model: &str, version: Option<&str>) -> ApiResult<Response> {
    let ready = state.manager.model_ready(model, version)?;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    Ok((status, Json(json!({"name": model, "ready": ready}))).into_response())
}

/// `GET /v2/models/{m}/config`.
pub(crate) async fn model_config(State(state): State<AppState>, Path(model): Path<String>) -> ApiResult<Json<Value>> {
    let v = state.manager.version(&model, None)?;
    Ok(Json(views::model_config(&v.config, &model)))
}

/// `GET /v2/models/{m}/versions/{v}/config`.
pub(crate) async fn version_config(
    State(state): State<AppState>,
    Path((model, version)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let v = state.manager.version(&model, Some(&version))?;
    Ok(Json(views::model_config(&v.config, &model)))
}

/// `POST /v2/models/{m}/infer`.
pub(crate) async fn infer(
    State(state): State<AppState>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    run_infer(&state, &model, None, &headers, body).await
}

/// `POST /v2/models/{m}/versions/{v}/infer`.
pub(crate) async fn version_infer(
    State(state): State<AppState>,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    run_infer(&state, &model, Some(&version), &headers, body).await
}

/// `GET /metrics`: Prometheus text format. Rendered off the async workers: it formats every series, and reads
/// NVML (a driver call per GPU and figure) and `/proc`, none of which may hold up requests on the same worker.
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    let Some(handle) = state.metrics.clone() else {
        return ApiError(InferError::Unsupported("metrics are not enabled in this process".into())).into_response();
    };
    match tokio::task::spawn_blocking(move || crate::metrics::render(&handle)).await {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "rendering the metrics failed");
            ApiError(InferError::Internal("rendering the metrics failed".into())).into_response()
        }
    }
}

async fn run_infer(
    state: &AppState,
    model: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let start = std::time::Instant::now();
    let bytes_in = body.len();
    let work = decode_run_encode(state, model, version, headers, body);
    let (served, result) = match crate::admission::within_request_timeout(state.request_timeout, work).await {
        Ok(done) => done,
        Err(timeout) => (None, Err(timeout.into())),
    };
    let served = served.map(|v| v.to_string());
    let (code, bytes_out) = match &result {
        Ok(response) => (StatusCode::OK, http_body::Body::size_hint(response.body()).exact().unwrap_or(0) as usize),
        Err(e) => (super::error::status_of(&e.0), 0),
    };
    let record = crate::metrics::RequestRecord {
        protocol: "http",
        model,
        version: version.or(served.as_deref()),
        code: crate::metrics::http_code(code),
        elapsed: start.elapsed(),
        bytes_in,
        bytes_out,
    };
    crate::metrics::record(&state.manager, &record);
    result
}

async fn decode_run_encode(
    state: &AppState,
    model: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: Bytes,
) -> (Option<u64>, ApiResult<Response>) {
    let mut served = None;
    let result = decode_route_encode(state, model, version, headers, body, &mut served).await;
    (served, result)
}

async fn decode_route_encode(
    state: &AppState,
    model: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: Bytes,
    served: &mut Option<u64>,
) -> ApiResult<Response> {
    let header_length = match headers.get(HEADER_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| InferError::invalid("Inference-Header-Content-Length is not valid text".to_string()))?,
        ),
    };
    let decoding = ferroserve_engine::trace_span!("decode").entered();
    let body_length = body.len();
    let (json, binary) = if header_length.is_some_and(|v| v.trim() == "0") {
        // Triton's raw binary request: the body is the one input's data (see `raw_input`). Rewriting a BYTES
        // body copies it, so the body is charged twice while that happens.
        let target = state.manager.version(model, version)?;
        let _copy = if super::raw_input::copies_body(&target) {
            Some(state.budget.reserve_beside(body.len(), body.len())?)
        } else {
            None
        };
        super::raw_input::as_request(&target, body)?
    } else {
        codec::split_body(header_length, body)?
    };
    let json_length = json.len();
    if json.len() > state.max_json_bytes {
        return Err(InferError::invalid(format!(
            "the JSON part of the request has {} bytes, more than the limit of {} (--max-json-bytes); send tensors \
             with the binary tensor data extension",
            json.len(),
            state.max_json_bytes
        ))
        .into());
    }
    // What the request holds beside its body (which the admission layer charged): BYTES handles as they are
    // decoded, inputs read from shared memory and the model's work (`ferroserve_engine::memory`). Held until
    // the answer is sent; the request as a whole must fit in the budget.
    let mut work_charge = state.budget.reserve_beside(crate::admission::http_cost(body_length, json_length), 0)?;
    let (request, format) = codec::decode_request_charged(model, version, &json, binary, &state.shm, &mut |split| {
        state.manager.check_input_elements(split.model, split.version, split.input, split.elements)?;
        work_charge.grow(split.bytes)
    })?;
    work_charge.grow(crate::shm::held_bytes(&request.inputs))?;
    work_charge.grow_estimate(state.manager.working_bytes(&request))?;
    drop(decoding);
    let keys = state.manager.route_keys(model, |h| headers.get(h).and_then(|v| v.to_str().ok()));
    let (version, answer) = state.manager.infer_routed(request, keys).await;
    *served = version;
    let response = answer?;
    let encoding = ferroserve_engine::trace_span!("encode").entered();
    let forms = codec::output_forms(&response, &format)?;
    // A large answer is written as it is sent, never held whole beside its outputs (JSON text can be six times
    // their size); a small one in one buffer, which is faster.
    let (body, json_length) = if codec::answer_size_bound(&response, &forms) > super::streamed::STREAM_ABOVE {
        let answer = super::streamed::StreamedAnswer::new(response, forms)?;
        let json_length = answer.json_length;
        (Body::new(answer), json_length)
    } else {
        let encoded = codec::encode_whole(&response, forms)?;
        (Body::from(encoded.body), encoded.json_length)
    };
    drop(encoding);
    let mut http = Response::new(crate::admission::held_body(body, work_charge));
    let headers = http.headers_mut();
    match json_length {
        Some(n) => {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
            headers.insert(HEADER_LENGTH, HeaderValue::from(n));
        }
        None => {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
    }
    Ok(http)
}

/// `GET /v2/models/stats`.
pub(crate) async fn all_stats(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    stats(&state, None, None)
}

/// `GET /v2/models/{m}/stats`.
pub(crate) async fn model_stats(State(state): State<AppState>, Path(model): Path<String>) -> ApiResult<Json<Value>> {
    stats(&state, Some(&model), None)
}

/// `GET /v2/models/{m}/versions/{v}/stats`.
pub(crate) async fn version_stats(
    State(state): State<AppState>,
    Path((model, version)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    stats(&state, Some(&model), Some(&version))
}

fn stats(state: &AppState, model: Option<&str>, version: Option<&str>) -> ApiResult<Json<Value>> {
    let stats: Vec<Value> = state
        .manager
        .statistics_scope(model, version)?
        .iter()
        .map(|v| views::model_stats(&v.name, v.version, &v.stats.snapshot()))
        .collect();
    Ok(Json(json!({"model_stats": stats})))
}

/// `POST /v2/repository/index`.
pub(crate) async fn repository_index(State(state): State<AppState>, body: Bytes) -> ApiResult<Json<Value>> {
    let ready_only = if body.is_empty() {
        false
    } else {
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| InferError::invalid(format!("malformed repository index JSON: {e}")))?;
        let Value::Object(fields) = v else {
            return Err(InferError::invalid("the repository index request must be a JSON object").into());
        };
        match fields.get("ready") {
            None => false,
            Some(Value::Bool(ready)) => *ready,
            Some(_) => return Err(InferError::invalid("repository index field `ready` must be a boolean").into()),
        }
    };
    let models: Vec<Value> = state
        .manager
        .index(ready_only)
        .await
        .into_iter()
        .map(|row| {
            if row.state == IndexState::NotLoaded {
                return json!({"name": row.name}); // Triton's form for a model never loaded
            }
            let mut v = json!({"name": row.name, "state": row.state.as_str(), "reason": row.reason});
            if !row.version.is_empty() {
                v["version"] = json!(row.version);
            }
            v
        })
        .collect();
    Ok(Json(Value::Array(models)))
}

/// `POST /v2/repository/models/{m}/load`: (re)loads a model from the repository; the body may carry Triton's
/// `{"parameters": {"config": "<model config JSON>"}}` override.
pub(crate) async fn repository_load(
    _: AdminAccess,
    State(state): State<AppState>,
    Path(model): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let config = load_parameters::from_http_body(&model, &body)?;
    state.manager.request_load(&model, config).await?;
    Ok(Json(json!({})))
}

/// `POST /v2/repository/models/{m}/unload`.
pub(crate) async fn repository_unload(
    _: AdminAccess,
    State(state): State<AppState>,
    Path(model): Path<String>,
) -> ApiResult<Json<Value>> {
    state.manager.request_unload(&model).await?;
    Ok(Json(json!({})))
}

/// The log settings as Triton's JSON object.
fn log_settings_json(levels: crate::log_settings::LogLevels) -> Json<Value> {
    use crate::log_settings::Setting;
    let fields = crate::log_settings::settings(levels).into_iter().map(|(name, value)| {
        let value = match value {
            Setting::Bool(b) => Value::Bool(b),
            Setting::Uint(n) => Value::from(n),
            Setting::Text(t) => Value::String(t),
        };
        (name.to_string(), value)
    });
    Json(Value::Object(fields.collect()))
}

/// `/v2/trace/setting` and a model's: 501 with the reason (traces go over OTLP, set at start).
pub(crate) async fn no_trace_settings() -> ApiError {
    ApiError::from(InferError::Unsupported(crate::telemetry::NO_TRACE_SETTINGS.into()))
}

/// `GET /v2/logging`: the log settings (Triton's logging extension, see `crate::log_settings`).
pub(crate) async fn log_settings_get() -> Json<Value> {
    log_settings_json(crate::log_settings::current())
}

/// `POST /v2/logging`: changes the settings the body names; answers with all of them.
pub(crate) async fn log_settings_post(_: AdminAccess, body: Bytes) -> ApiResult<Json<Value>> {
    use crate::log_settings::Setting;
    let v: Value =
        serde_json::from_slice(&body).map_err(|e| InferError::invalid(format!("malformed log settings JSON: {e}")))?;
    let Value::Object(fields) = v else {
        return Err(InferError::invalid("the log settings must be a JSON object").into());
    };
    let mut updates = Vec::with_capacity(fields.len());
    for (name, value) in &fields {
        let setting = match value {
            Value::Null => continue, // as Triton: changes nothing
            Value::Bool(b) => Setting::Bool(*b),
            Value::String(t) => Setting::Text(t.clone()),
            Value::Number(n) => match n.as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(n) => Setting::Uint(n),
                None => {
                    return Err(InferError::invalid(format!("log setting `{name}`: {n} is not a valid value")).into());
                }
            },
            _ => {
                return Err(
                    InferError::invalid(format!("log setting `{name}` must be a boolean, number or string")).into()
                );
            }
        };
        updates.push((name.as_str(), setting));
    }
    Ok(log_settings_json(crate::log_settings::update(updates)?))
}

/// `GET /v2/models/{m}/traffic`: the model's traffic policy in force (see `crate::traffic`).
pub(crate) async fn traffic_get(State(state): State<AppState>, Path(model): Path<String>) -> ApiResult<Json<Value>> {
    Ok(Json(crate::traffic::get(&state, &model)?))
}

/// `PUT /v2/models/{m}/traffic`: replaces it.
pub(crate) async fn traffic_put(
    _: AdminAccess,
    State(state): State<AppState>,
    Path(model): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    Ok(Json(crate::traffic::set(&state, &model, &body).await?))
}

/// `DELETE /v2/models/{m}/traffic`: back to the config's policy.
pub(crate) async fn traffic_reset(
    _: AdminAccess,
    State(state): State<AppState>,
    Path(model): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(crate::traffic::reset(&state, &model).await?))
}

/// The CUDA shared-memory extension (`/v2/cudasharedmemory/...`) is not offered: registering a region is
/// refused with the reason (perf_analyzer `--shared-memory cuda` says so). As on a Triton without GPUs,
/// there is never a CUDA region, so status lists none and unregistering succeeds: Triton's shared-memory
/// example programs unregister every CUDA region before they start.
pub(crate) async fn no_cuda_shared_memory() -> ApiError {
    ApiError(InferError::Unsupported(crate::shm::NO_CUDA_SHARED_MEMORY.into()))
}

/// `GET /v2/cudasharedmemory/status`: no regions.
pub(crate) async fn cuda_shm_status() -> Json<Value> {
    Json(Value::Array(Vec::new()))
}

/// `GET /v2/cudasharedmemory/region/{name}/status`: no such region.
pub(crate) async fn cuda_shm_region_status(Path(name): Path<String>) -> ApiError {
    ApiError(crate::shm::unknown_cuda_region(&name))
}

/// `POST /v2/cudasharedmemory[/region/{name}]/unregister`: nothing to unregister.
pub(crate) async fn cuda_shm_unregister(_: AdminAccess) -> Json<Value> {
    Json(Value::Object(Default::default()))
}

/// The body of `POST /v2/systemsharedmemory/region/{name}/register`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegisterRegion {
    key: String,
    #[serde(default)]
    offset: u64,
    byte_size: u64,
}

/// `POST /v2/systemsharedmemory/region/{name}/register`.
pub(crate) async fn shm_register(
    _: AdminAccess,
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let shape_error = |why: String| {
        InferError::invalid(format!(
            "a region registration is {{\"key\": string, \"offset\": integer, \"byte_size\": integer}}: {why}"
        ))
    };
    // Only an object: serde would also take the fields as an array.
    let value: Value = serde_json::from_slice(&body).map_err(|e| shape_error(e.to_string()))?;
    if !value.is_object() {
        return Err(shape_error("the body is not a JSON object".into()).into());
    }
    let r: RegisterRegion = serde_json::from_value(value).map_err(|e| shape_error(e.to_string()))?;
    let spec = crate::shm::RegionSpec { name, key: r.key, offset: r.offset, byte_size: r.byte_size };
    state.shm.register(spec)?;
    Ok(Json(Value::Object(Default::default())))
}

/// `POST /v2/systemsharedmemory/region/{name}/unregister`.
pub(crate) async fn shm_unregister(
    _: AdminAccess,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Json<Value> {
    state.shm.unregister(&name);
    Json(Value::Object(Default::default()))
}

/// `POST /v2/systemsharedmemory/unregister`: every region.
pub(crate) async fn shm_unregister_all(_: AdminAccess, State(state): State<AppState>) -> Json<Value> {
    state.shm.unregister("");
    Json(Value::Object(Default::default()))
}

/// `GET /v2/systemsharedmemory/region/{name}/status`.
pub(crate) async fn shm_region_status(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    shm_status_of(&state, &name)
}

/// `GET /v2/systemsharedmemory/status`.
pub(crate) async fn shm_status(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    shm_status_of(&state, "")
}

fn shm_status_of(state: &AppState, name: &str) -> ApiResult<Json<Value>> {
    let regions = state.shm.status(name)?;
    let list = regions
        .into_iter()
        .map(|r| json!({"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size}))
        .collect();
    Ok(Json(Value::Array(list)))
}

pub(crate) async fn not_found() -> ApiError {
    ApiError(InferError::NotFound("no such endpoint".into()))
}
