//! A loaded model version: its signature, effective configuration, instance pool and statistics.

use std::sync::Arc;
use std::time::Instant;

use ferroserve_runtime::ModelSignature;
use tokio::sync::oneshot;

use crate::InferError;
use crate::config::ModelConfig;
use crate::instance::{InstancePool, Job};
use crate::request::{InferOutput, InferRequest, InferResponse};
use crate::stats::ModelStats;
use crate::validate::validate;

/// One servable version of a model.
#[derive(Debug)]
pub struct ModelVersion {
    /// Model name.
    pub name: String,
    /// Version number.
    pub version: u64,
    /// Platform (`onnxruntime_onnx`).
    pub platform: String,
    /// Inputs and outputs with full dims (batch dim included as -1 when the model batches).
    pub signature: ModelSignature,
    /// The configuration in force, completed from the model file.
    pub config: ModelConfig,
    /// Largest batch a request may carry (0 = the model does not batch).
    pub max_batch_size: u32,
    /// Statistics.
    pub stats: Arc<ModelStats>,
    pool: InstancePool,
}

impl ModelVersion {
    pub(crate) fn new(
        name: String,
        version: u64,
        platform: String,
        signature: ModelSignature,
        config: ModelConfig,
        stats: Arc<ModelStats>,
        pool: InstancePool,
    ) -> Self {
        let max_batch_size = config.max_batch_size.unwrap_or(0);
        ModelVersion { name, version, platform, signature, config, max_batch_size, stats, pool }
    }

    /// Requests waiting for an instance.
    pub fn queue_len(&self) -> usize {
        self.pool.queue_len()
    }

    /// Validates and runs one request on a free instance.
    pub async fn infer(&self, request: InferRequest) -> Result<InferResponse, InferError> {
        let start = Instant::now();
        let id = request.id.clone();
        let validated = validate(&self.name, &self.signature, self.max_batch_size, request)?;
        let (reply, outputs) = oneshot::channel();
        self.pool.try_submit(Job {
            inputs: validated.inputs,
            batch_size: validated.batch_size,
            enqueued: start,
            reply,
        })?;
        let result = outputs
            .await
            .map_err(|_| InferError::Internal(format!("model `{}` stopped before answering", self.name)))
            .and_then(|r| r);
        let mut all = match result {
            Ok(all) => all,
            Err(e) => {
                self.stats.fail.record(start.elapsed());
                return Err(e);
            }
        };
        if all.len() != self.signature.outputs.len() {
            self.stats.fail.record(start.elapsed());
            tracing::error!(model = %self.name, got = all.len(), "runtime returned the wrong number of outputs");
            return Err(InferError::Internal("the model returned an unexpected number of outputs".into()));
        }
        let mut taken: Vec<Option<ferroserve_runtime::Tensor>> = all.drain(..).map(Some).collect();
        let outputs = validated
            .outputs
            .iter()
            .filter_map(|&i| {
                taken[i].take().map(|tensor| InferOutput { name: self.signature.outputs[i].name.clone(), tensor })
            })
            .collect();
        self.stats.success.record(start.elapsed());
        Ok(InferResponse { model_name: self.name.clone(), model_version: self.version.to_string(), id, outputs })
    }
}
