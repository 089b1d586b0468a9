//! `grpc.health.v1.Health`, answered from the engine's own readiness on every call, so it agrees with
//! `/v2/health/ready` and `ServerReady` at every moment (a status copied into a reporter could lag behind a
//! reload, an unload or the start of a shutdown).
//!
//! Services: `""` and `inference.GRPCInferenceService` are the server's readiness; a model name is that
//! model's readiness, exactly as `ModelReady` and `/v2/models/{m}/ready` report it; anything else is
//! NOT_FOUND (SERVICE_UNKNOWN in `Watch`).

use std::pin::Pin;
use std::sync::Arc;

use ferroserve_engine::ModelManager;
use futures::Stream;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// The health service over `manager`.
pub fn health_server(manager: Arc<ModelManager>) -> HealthServer<HealthService> {
    HealthServer::new(HealthService { manager })
}

/// Answers health checks from the engine's readiness.
#[derive(Debug)]
pub struct HealthService {
    manager: Arc<ModelManager>,
}

const INFERENCE_SERVICE: &str = "inference.GRPCInferenceService";

/// The status of `service`, or `None` for a service this server does not know.
fn status_of(manager: &ModelManager, service: &str) -> Option<ServingStatus> {
    let serving = |ready: bool| if ready { ServingStatus::Serving } else { ServingStatus::NotServing };
    match service {
        "" | INFERENCE_SERVICE => Some(serving(manager.is_ready())),
        model => manager.model_ready(model, None).ok().map(serving),
    }
}

fn response(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse { status: status as i32 }
}

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(&self, request: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        let service = request.into_inner().service;
        match status_of(&self.manager, &service) {
            Some(status) => Ok(Response::new(response(status))),
            None => Err(Status::not_found(format!("unknown service `{service}`"))),
        }
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send + 'static>>;

    /// Sends the current status, then a message whenever it changes; readiness changes wake it.
    async fn watch(&self, request: Request<HealthCheckRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let service = request.into_inner().service;
        let manager = Arc::clone(&self.manager);
        let changes = manager.readiness();
        let stream = futures::stream::unfold((manager, changes, None), move |(manager, mut changes, last)| {
            let service = service.clone();
            async move {
                loop {
                    let now = status_of(&manager, &service).unwrap_or(ServingStatus::ServiceUnknown);
                    if last != Some(now) {
                        return Some((Ok(response(now)), (manager, changes, Some(now))));
                    }
                    changes.changed().await.ok()?;
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
