//! `inference.GRPCInferenceService` over the engine.

use std::pin::Pin;
use std::sync::Arc;

use ferroserve_engine::InferError;
use ferroserve_engine::stats::StatsSnapshot;
use ferroserve_proto as pb;
use ferroserve_proto::grpc_inference_service_server::GrpcInferenceService;
use futures::Stream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::codec;
use super::config::config_to_proto;
use super::status::{self, code_name, code_of, to_status};
use crate::state::{AppState, EXTENSIONS, SERVER_VERSION};
use crate::{admission, load_parameters};

/// The gRPC service; cheap to clone.
#[derive(Clone, Debug)]
pub struct InferenceService {
    state: AppState,
}

impl InferenceService {
    /// A service over `state`.
    pub fn new(state: AppState) -> Self {
        InferenceService { state }
    }
}

/// Requests of one `ModelStreamInfer` stream that may run at once; the stream is not read past it.
const MAX_IN_FLIGHT_PER_STREAM: usize = 128;

/// What the request metrics need of one gRPC inference, taken before the request is consumed.
struct Observed {
    start: std::time::Instant,
    model: String,
    version: String,
    bytes_in: usize,
}

impl Observed {
    fn start(request: &pb::ModelInferRequest) -> Self {
        Observed {
            start: std::time::Instant::now(),
            model: request.model_name.clone(),
            version: request.model_version.clone(),
            bytes_in: prost::Message::encoded_len(request),
        }
    }

    /// Records the request; `served` is the version routing sent it to when the request named none.
    fn finish(
        self,
        manager: &ferroserve_engine::ModelManager,
        served: Option<u64>,
        error: Option<&InferError>,
        bytes_out: usize,
    ) {
        let code = error.map_or(tonic::Code::Ok, code_of);
        let served = served.map(|v| v.to_string());
        let record = crate::metrics::RequestRecord {
            protocol: "grpc",
            model: &self.model,
            version: non_empty(&self.version).or(served.as_deref()),
            code: code_name(code),
            elapsed: self.start.elapsed(),
            bytes_in: self.bytes_in,
            bytes_out,
        };
        crate::metrics::record(manager, &record);
    }
}

fn non_empty(v: &str) -> Option<&str> {
    (!v.is_empty()).then_some(v)
}

type StreamResult = Pin<Box<dyn Stream<Item = Result<pb::ModelStreamInferResponse, Status>> + Send>>;

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(&self, _: Request<pb::ServerLiveRequest>) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: self.state.manager.device_faults().is_empty() }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse { ready: self.state.manager.is_ready() }))
    }

    async fn model_ready(
        &self,
        request: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let r = request.into_inner();
        let ready = match self.state.manager.model_ready(&r.name, non_empty(&r.version)) {
            Ok(ready) => ready,
            Err(InferError::NotFound(_)) => false,
            Err(e) => return Err(to_status(e)),
        };
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: self.state.server_name.clone(),
            version: SERVER_VERSION.into(),
            extensions: EXTENSIONS.iter().map(|s| s.to_string()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let r = request.into_inner();
        let manager = &self.state.manager;
        let entry = manager.entry(&r.name).map_err(to_status)?;
        let v = manager.version(&r.name, non_empty(&r.version)).map_err(to_status)?;
        let versions = if r.version.is_empty() {
            entry.ready_versions().map(|v| v.version.to_string()).collect()
        } else {
            vec![v.version.to_string()]
        };
        let tensors = |specs: &[ferroserve_runtime::TensorSpec]| {
            specs
                .iter()
                .map(|s| pb::model_metadata_response::TensorMetadata {
                    name: s.name.clone(),
                    datatype: s.datatype.as_str().into(),
                    shape: s.dims.clone(),
                })
                .collect()
        };
        Ok(Response::new(pb::ModelMetadataResponse {
            name: v.name.clone(),
            versions,
            platform: v.platform.clone(),
            inputs: tensors(&v.signature.inputs),
            outputs: tensors(&v.signature.outputs),
        }))
    }

    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let observed = Observed::start(request.get_ref());
        // Charged before decoding, held until the answer is built; a refusal is recorded like any error.
        let charge = self.state.budget.reserve(admission::grpc_cost(observed.bytes_in, request.get_ref()));
        let metadata = request.metadata();
        let keys = self
            .state
            .manager
            .route_keys(&request.get_ref().model_name, |h| metadata.get(h).and_then(|v| v.to_str().ok()));
        let decoded = charge.and_then(|charge| {
            ferroserve_engine::trace_span!("decode")
                .in_scope(|| decode_charged(request.into_inner(), &self.state.shm, &self.state.manager, charge))
        });
        let (served, result) = match decoded {
            Ok((_charge, (r, shm_outputs))) => {
                let routed = self.state.manager.infer_routed(r, keys);
                match admission::within_request_timeout(self.state.request_timeout, routed).await {
                    Ok((served, answer)) => {
                        let encoded = answer.and_then(|r| {
                            ferroserve_engine::trace_span!("encode")
                                .in_scope(|| codec::encode_response(r, &shm_outputs))
                        });
                        (served, encoded)
                    }
                    Err(timeout) => (None, Err(timeout)),
                }
            }
            Err(e) => (None, Err(e)),
        };
        // Sized once: for the message limit and the metrics.
        let bytes_out = result.as_ref().map_or(0, prost::Message::encoded_len);
        let limit = self.state.max_message_bytes;
        let result =
            result.and_then(|r| if bytes_out > limit { Err(reply_too_large(bytes_out, limit)) } else { Ok(r) });
        let bytes_out = if result.is_ok() { bytes_out } else { 0 };
        observed.finish(&self.state.manager, served, result.as_ref().err(), bytes_out);
        result.map(Response::new).map_err(to_status)
    }

    type ModelStreamInferStream = StreamResult;

    async fn model_stream_infer(
        &self,
        request: Request<Streaming<pb::ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let metadata = request.metadata().clone();
        let mut incoming = request.into_inner();
        let manager = self.state.manager.clone();
        let budget = self.state.budget.clone();
        let shm = self.state.shm.clone();
        let request_timeout = self.state.request_timeout;
        let max_message_bytes = self.state.max_message_bytes;
        let mut stopping = self.state.stopping.clone();
        // Answers travel with their memory charge, released when tonic takes the answer to write it.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<StreamAnswer, Status>>(64);
        let stream_span = tracing::Span::current();
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                // Requests on one stream run concurrently, and their answers go out in the order the requests
                // came, as Triton sends them for a model that is not decoupled: tritonclient hands a stream error
                // to its callback without the request id, so clients match answers to requests by position.
                // On shutdown the stream stops taking requests, answers those in flight, then ends with
                // UNAVAILABLE, so that a client holding a stream open does not hold up the drain and learns that
                // requests it sent after that were not taken.
                let mut pending = futures::stream::FuturesOrdered::new();
                let mut ended_by: Option<Status> = None;
                loop {
                    // At most MAX_IN_FLIGHT_PER_STREAM requests are running or waiting for their turn to be
                    // answered: past that the stream is not read, so HTTP/2 flow control holds the client back,
                    // and a client that never reads its answers parks at most that many.
                    // The select only says what happened: the watch's borrow must not be held across an await.
                    let event = tokio::select! {
                        biased;
                        Some(answer) = pending.next(), if !pending.is_empty() => StreamEvent::Answered(answer),
                        _ = stopping.wait_for(|s| *s) => StreamEvent::Stopping,
                        m = incoming.next(), if pending.len() < MAX_IN_FLIGHT_PER_STREAM => StreamEvent::Received(m),
                    };
                    let message = match event {
                        StreamEvent::Received(message) => message,
                        StreamEvent::Answered(answer) => {
                            if tx.send(Ok(answer)).await.is_err() {
                                break; // the client has gone
                            }
                            continue;
                        }
                        StreamEvent::Stopping => {
                            ended_by = Some(Status::unavailable(SHUTTING_DOWN));
                            break;
                        }
                    };
                    let request = match message {
                        Some(Ok(r)) => r,
                        Some(Err(unreadable)) => {
                            // A message that could not be read (over the size limit, corrupt) ends the stream with
                            // its error once the requests in flight are answered; a client that went away gets
                            // nothing, as no one is listening.
                            tracing::debug!(status = %unreadable, "stream ended by an unreadable message or the client");
                            ended_by = Some(status::inbound_message_error(unreadable));
                            break;
                        }
                        None => break,
                    };
                    let head = AnswerHead {
                        id: request.id.clone(),
                        model: request.model_name.clone(),
                        version: request.model_version.clone(),
                    };
                    let keys =
                        manager.route_keys(&request.model_name, |h| metadata.get(h).and_then(|v| v.to_str().ok()));
                    let context = (manager.clone(), budget.clone(), shm.clone(), request_timeout, max_message_bytes);
                    // Each stream request runs in the stream's span (its request id, and its trace when sampled).
                    let task = tokio::spawn(tracing::Instrument::instrument(
                        answer_stream_request(request, keys, context),
                        tracing::Span::current(),
                    ));
                    pending.push_back(async move {
                        task.await.unwrap_or_else(|_| {
                            let failed = InferError::Internal("the request's task failed".into());
                            (stream_answer(&head, Err(failed)), None)
                        })
                    });
                }
                while let Some(answer) = pending.next().await {
                    if tx.send(Ok(answer)).await.is_err() {
                        return;
                    }
                }
                if let Some(status) = ended_by {
                    let _ = tx.send(Err(status)).await;
                }
            },
            stream_span,
        ));
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(|item| item.map(|(answer, _charge)| answer));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn model_config(
        &self,
        request: Request<pb::ModelConfigRequest>,
    ) -> Result<Response<pb::ModelConfigResponse>, Status> {
        let r = request.into_inner();
        let v = self.state.manager.version(&r.name, non_empty(&r.version)).map_err(to_status)?;
        Ok(Response::new(pb::ModelConfigResponse { config: Some(config_to_proto(&v.config, &r.name)) }))
    }

    async fn model_statistics(
        &self,
        request: Request<pb::ModelStatisticsRequest>,
    ) -> Result<Response<pb::ModelStatisticsResponse>, Status> {
        let r = request.into_inner();
        let model_stats = self
            .state
            .manager
            .statistics_scope(non_empty(&r.name), non_empty(&r.version))
            .map_err(to_status)?
            .iter()
            .map(|v| stats_to_proto(&v.name, v.version, &v.stats.snapshot()))
            .collect();
        Ok(Response::new(pb::ModelStatisticsResponse { model_stats }))
    }

    async fn repository_index(
        &self,
        request: Request<pb::RepositoryIndexRequest>,
    ) -> Result<Response<pb::RepositoryIndexResponse>, Status> {
        let models = self
            .state
            .manager
            .index(request.into_inner().ready)
            .await
            .into_iter()
            .map(|row| pb::repository_index_response::ModelIndex {
                name: row.name,
                version: row.version,
                state: row.state.as_str().to_string(),
                reason: row.reason,
            })
            .collect();
        Ok(Response::new(pb::RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        request: Request<pb::RepositoryModelLoadRequest>,
    ) -> Result<Response<pb::RepositoryModelLoadResponse>, Status> {
        crate::admin::check_grpc(&self.state, &request)?;
        let request = request.into_inner();
        let config = load_parameters::from_grpc(&request.model_name, &request.parameters).map_err(to_status)?;
        self.state.manager.request_load(&request.model_name, config).await.map_err(to_status)?;
        Ok(Response::new(pb::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Result<Response<pb::RepositoryModelUnloadResponse>, Status> {
        crate::admin::check_grpc(&self.state, &request)?;
        self.state.manager.request_unload(&request.into_inner().model_name).await.map_err(to_status)?;
        Ok(Response::new(pb::RepositoryModelUnloadResponse {}))
    }

    async fn system_shared_memory_status(
        &self,
        request: Request<pb::SystemSharedMemoryStatusRequest>,
    ) -> Result<Response<pb::SystemSharedMemoryStatusResponse>, Status> {
        use pb::system_shared_memory_status_response::RegionStatus;
        let regions = self.state.shm.status(&request.into_inner().name).map_err(to_status)?;
        let regions = regions
            .into_iter()
            .map(|r| {
                let status =
                    RegionStatus { name: r.name.clone(), key: r.key, offset: r.offset, byte_size: r.byte_size };
                (r.name, status)
            })
            .collect();
        Ok(Response::new(pb::SystemSharedMemoryStatusResponse { regions }))
    }

    async fn system_shared_memory_register(
        &self,
        request: Request<pb::SystemSharedMemoryRegisterRequest>,
    ) -> Result<Response<pb::SystemSharedMemoryRegisterResponse>, Status> {
        crate::admin::check_grpc(&self.state, &request)?;
        let r = request.into_inner();
        let spec = crate::shm::RegionSpec { name: r.name, key: r.key, offset: r.offset, byte_size: r.byte_size };
        self.state.shm.register(spec).map_err(to_status)?;
        Ok(Response::new(pb::SystemSharedMemoryRegisterResponse {}))
    }

    async fn system_shared_memory_unregister(
        &self,
        request: Request<pb::SystemSharedMemoryUnregisterRequest>,
    ) -> Result<Response<pb::SystemSharedMemoryUnregisterResponse>, Status> {
        crate::admin::check_grpc(&self.state, &request)?;
        self.state.shm.unregister(&request.into_inner().name);
        Ok(Response::new(pb::SystemSharedMemoryUnregisterResponse {}))
    }

    async fn cuda_shared_memory_status(
        &self,
        request: Request<pb::CudaSharedMemoryStatusRequest>,
    ) -> Result<Response<pb::CudaSharedMemoryStatusResponse>, Status> {
        // There is never a CUDA region (see the HTTP routes): none listed, and none found by name.
        match request.into_inner().name.as_str() {
            "" => Ok(Response::new(pb::CudaSharedMemoryStatusResponse::default())),
            name => Err(to_status(crate::shm::unknown_cuda_region(name))),
        }
    }

    async fn cuda_shared_memory_register(
        &self,
        _: Request<pb::CudaSharedMemoryRegisterRequest>,
    ) -> Result<Response<pb::CudaSharedMemoryRegisterResponse>, Status> {
        Err(no_cuda_shared_memory())
    }

    async fn cuda_shared_memory_unregister(
        &self,
        request: Request<pb::CudaSharedMemoryUnregisterRequest>,
    ) -> Result<Response<pb::CudaSharedMemoryUnregisterResponse>, Status> {
        // Nothing to unregister; Triton's example programs call this before they start.
        crate::admin::check_grpc(&self.state, &request)?;
        Ok(Response::new(pb::CudaSharedMemoryUnregisterResponse {}))
    }

    async fn trace_setting(
        &self,
        _request: Request<pb::TraceSettingRequest>,
    ) -> Result<Response<pb::TraceSettingResponse>, Status> {
        Err(Status::unimplemented(crate::telemetry::NO_TRACE_SETTINGS))
    }

    async fn log_settings(
        &self,
        request: Request<pb::LogSettingsRequest>,
    ) -> Result<Response<pb::LogSettingsResponse>, Status> {
        use crate::log_settings::Setting;
        use pb::log_settings_request::setting_value::ParameterChoice as In;
        use pb::log_settings_response::setting_value::ParameterChoice as Out;
        let levels = if request.get_ref().settings.is_empty() {
            crate::log_settings::current()
        } else {
            crate::admin::check_grpc(&self.state, &request)?;
            let settings = &request.get_ref().settings;
            let mut updates = Vec::with_capacity(settings.len());
            for (name, value) in settings {
                let setting = match &value.parameter_choice {
                    Some(In::BoolParam(b)) => Setting::Bool(*b),
                    Some(In::Uint32Param(n)) => Setting::Uint(*n),
                    Some(In::StringParam(t)) => Setting::Text(t.clone()),
                    None => continue, // tritonclient's `None`: changes nothing
                };
                updates.push((name.as_str(), setting));
            }
            crate::log_settings::update(updates).map_err(to_status)?
        };
        let settings = crate::log_settings::settings(levels)
            .into_iter()
            .map(|(name, value)| {
                let choice = match value {
                    Setting::Bool(b) => Out::BoolParam(b),
                    Setting::Uint(n) => Out::Uint32Param(n),
                    Setting::Text(t) => Out::StringParam(t),
                };
                (name.to_string(), pb::log_settings_response::SettingValue { parameter_choice: Some(choice) })
            })
            .collect();
        Ok(Response::new(pb::LogSettingsResponse { settings }))
    }
}

/// How a stream ends when the server starts shutting down (Triton's words).
const SHUTTING_DOWN: &str = "GRPC server is shutting down and has stopped accepting new requests.";

/// What one `ModelStreamInfer` request needs beyond itself: the manager, the memory budget, the shared-memory
/// regions, `--request-timeout-secs` and `--max-message-bytes`.
type StreamContext = (
    Arc<ferroserve_engine::ModelManager>,
    Arc<admission::MemoryBudget>,
    Arc<crate::shm::SharedMemory>,
    Option<std::time::Duration>,
    usize,
);

/// A reply of `size` bytes past the message limit: RESOURCE_EXHAUSTED for its request alone, as grpc-core servers
/// answer an oversized message, rather than tonic's OUT_OF_RANGE for the call or, on a stream, the end of the
/// stream and every request in flight on it.
fn reply_too_large(size: usize, limit: usize) -> InferError {
    InferError::Overloaded(format!(
        "the response is {size} bytes, over the server's gRPC message limit of {limit} bytes (--max-message-bytes); \
         ask for fewer outputs, or put them in shared memory"
    ))
}

/// What woke a stream's loop.
enum StreamEvent {
    /// The oldest request's answer is ready.
    Answered(StreamAnswer),
    /// The server is shutting down.
    Stopping,
    /// The client sent a message, or ended the stream (`None`).
    Received(Option<Result<pb::ModelInferRequest, Status>>),
}

/// What a stream answer names of its request: its id, model and version (Triton sets all three on an error).
struct AnswerHead {
    id: String,
    model: String,
    version: String,
}

/// A stream's answer, with the memory charge of its request: held until tonic takes the answer to write it, since
/// an answer may wait behind a slower one that came first, and then in the stream's channel.
type StreamAnswer = (pb::ModelStreamInferResponse, Option<admission::Reservation>);

/// Runs one request of a stream to its answer.
async fn answer_stream_request(
    request: pb::ModelInferRequest,
    keys: ferroserve_engine::manager::traffic::RouteKeys,
    (manager, budget, shm, request_timeout, max_message_bytes): StreamContext,
) -> StreamAnswer {
    let observed = Observed::start(&request);
    let head = AnswerHead { id: request.id.clone(), model: observed.model.clone(), version: observed.version.clone() };
    // Charged before decoding (a refused request is not decoded).
    let charge = budget.reserve(admission::grpc_cost(observed.bytes_in, &request));
    let decoded = charge.and_then(|c| decode_charged(request, &shm, &manager, c));
    let (served, reply, charge) = match decoded {
        Err(e) => (None, Err(e), None),
        Ok((charge, (r, shm_outputs))) => {
            let routed = manager.infer_routed(r, keys);
            match admission::within_request_timeout(request_timeout, routed).await {
                Ok((served, answer)) => {
                    (served, answer.and_then(|r| codec::encode_response(r, &shm_outputs)), Some(charge))
                }
                Err(timeout) => (None, Err(timeout), Some(charge)),
            }
        }
    };
    // The whole stream message must fit, or tonic would end the stream.
    let message = reply.and_then(|r| {
        let message = stream_answer(&head, Ok(r));
        let size = prost::Message::encoded_len(&message);
        if size > max_message_bytes { Err(reply_too_large(size, max_message_bytes)) } else { Ok(message) }
    });
    observed.finish(&manager, served, message.as_ref().err(), 0);
    (message.unwrap_or_else(|e| stream_answer(&head, Err(e))), charge)
}

/// A stream's answer to the request `head` names. Every answer is the request's last (a model here is never
/// decoupled), and says so in `triton_final_response`, as Triton's do: clients written for decoupled models wait
/// for it.
fn stream_answer(head: &AnswerHead, reply: Result<pb::ModelInferResponse, InferError>) -> pb::ModelStreamInferResponse {
    let (error_message, mut response) = match reply {
        Ok(r) => (String::new(), r),
        Err(e) => {
            let (id, model_name, model_version) = (head.id.clone(), head.model.clone(), head.version.clone());
            (e.client_message(), pb::ModelInferResponse { id, model_name, model_version, ..Default::default() })
        }
    };
    let last = pb::InferParameter { parameter_choice: Some(pb::infer_parameter::ParameterChoice::BoolParam(true)) };
    response.parameters.insert("triton_final_response".into(), last);
    pb::ModelStreamInferResponse { error_message, infer_response: Some(response) }
}

/// Decodes an inference message charged `charge`, growing the charge by what the request will hold beside it
/// (inputs read from shared-memory regions, and the work the model does: see `ferroserve_engine::memory`), so
/// it is held with the message's until the answer is built.
fn decode_charged(
    request: pb::ModelInferRequest,
    shm: &crate::shm::SharedMemory,
    manager: &ferroserve_engine::ModelManager,
    mut charge: admission::Reservation,
) -> Result<(admission::Reservation, (ferroserve_engine::InferRequest, crate::shm::OutputSlots)), InferError> {
    let (request, slots) = codec::decode_request_charged(request, shm, &mut |split| {
        manager.check_input_elements(split.model, split.version, split.input, split.elements)?;
        charge.grow(split.bytes)
    })?;
    charge.grow(crate::shm::held_bytes(&request.inputs))?;
    charge.grow_estimate(manager.working_bytes(&request))?;
    Ok((charge, (request, slots)))
}

/// The CUDA shared-memory extension is not offered: its calls say so, with what to use instead.
fn no_cuda_shared_memory() -> Status {
    to_status(InferError::Unsupported(crate::shm::NO_CUDA_SHARED_MEMORY.into()))
}

fn duration((count, ns): (u64, u64)) -> Option<pb::StatisticDuration> {
    Some(pb::StatisticDuration { count, ns })
}

fn stats_to_proto(name: &str, version: u64, s: &StatsSnapshot) -> pb::ModelStatistics {
    pb::ModelStatistics {
        name: name.to_string(),
        version: version.to_string(),
        last_inference: s.last_inference_ms,
        inference_count: s.inference_count,
        execution_count: s.execution_count,
        inference_stats: Some(pb::InferStatistics {
            success: duration(s.success),
            fail: duration(s.fail),
            queue: duration(s.queue),
            compute_input: duration(s.compute_input),
            compute_infer: duration(s.compute_infer),
            compute_output: duration(s.compute_output),
            cache_hit: duration((0, 0)),
            cache_miss: duration((0, 0)),
        }),
        batch_stats: s
            .batches
            .iter()
            .map(|(size, b)| pb::InferBatchStatistics {
                batch_size: *size,
                compute_input: duration((b.count, b.compute_input_ns)),
                compute_infer: duration((b.count, b.compute_infer_ns)),
                compute_output: duration((b.count, b.compute_output_ns)),
            })
            .collect(),
        batch_reasons: ferroserve_engine::batcher::state::RunReason::ALL
            .iter()
            .map(|r| (r.as_str().to_string(), s.batch_reasons[r.index()]))
            .collect(),
        success_latency_buckets: s.success_latency.iter().copied().collect(),
    }
}
