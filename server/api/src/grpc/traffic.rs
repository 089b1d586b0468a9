//! `ferroserve.traffic.v1.TrafficControl`: the gRPC form of the traffic-control API (`crate::traffic`).

use ferroserve_proto::traffic as pb;
use ferroserve_proto::traffic::traffic_control_server::{TrafficControl, TrafficControlServer};
use tonic::{Request, Response, Status};

use super::status::to_status;
use crate::state::AppState;

/// Reads and changes a model's traffic policy.
#[derive(Debug, Clone)]
pub struct TrafficService {
    state: AppState,
}

/// The service, ready to mount.
pub fn traffic_server(state: AppState) -> TrafficControlServer<TrafficService> {
    TrafficControlServer::new(TrafficService { state })
}

fn answer(state: serde_json::Value) -> Response<pb::TrafficState> {
    Response::new(pb::TrafficState { state_json: state.to_string() })
}

#[tonic::async_trait]
impl TrafficControl for TrafficService {
    async fn get_traffic(&self, request: Request<pb::GetTrafficRequest>) -> Result<Response<pb::TrafficState>, Status> {
        crate::traffic::get(&self.state, &request.get_ref().model).map(answer).map_err(to_status)
    }

    async fn set_traffic(&self, request: Request<pb::SetTrafficRequest>) -> Result<Response<pb::TrafficState>, Status> {
        crate::admin::check_grpc(&self.state, &request)?;
        let r = request.into_inner();
        crate::traffic::set(&self.state, &r.model, r.policy_json.as_bytes()).await.map(answer).map_err(to_status)
    }

    async fn reset_traffic(
        &self,
        request: Request<pb::ResetTrafficRequest>,
    ) -> Result<Response<pb::TrafficState>, Status> {
        crate::admin::check_grpc(&self.state, &request)?;
        crate::traffic::reset(&self.state, &request.get_ref().model).await.map(answer).map_err(to_status)
    }
}
