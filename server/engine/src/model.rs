//! A loaded model version: its signature, effective configuration, instance pool and statistics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferroserve_runtime::{ModelSignature, Tensor};
use tokio::sync::oneshot;

use crate::InferError;
use crate::batcher::Pending;
use crate::batcher::state::Entry;
use crate::config::ModelConfig;
use crate::instance::InstancePool;
use crate::request::{InferOutput, InferRequest, InferResponse, Parameters};
use crate::stats::ModelStats;
use crate::validate::validate;

/// Per-request scheduling rules of a version (Triton's `schedule_policy` parameters).
#[derive(Debug, Clone, Default)]
pub struct Scheduling {
    /// Priority levels (0 = one level; the `priority` parameter is then ignored).
    pub priority_levels: u32,
    /// Level used when a request names none (1 = highest; 0 = the lowest level).
    pub default_priority_level: u32,
    /// Queue timeout of requests without a `timeout` parameter.
    pub default_timeout: Option<Duration>,
}

/// The config's `reshape`s, in signature order: `None` where a tensor keeps its shape.
#[derive(Debug, Clone, Default)]
pub(crate) struct Reshapes {
    /// Per input: the model's dims (batch dim excluded) that the request's tensor is reshaped to.
    pub(crate) inputs: Vec<Option<Vec<i64>>>,
    /// Per output: the client-facing dims (batch dim excluded) that the model's tensor is reshaped to.
    pub(crate) outputs: Vec<Option<Vec<i64>>>,
}

/// Gives `tensor` the dims `dims` (after the batch dim, if `batched`), resolving at most one -1 from its
/// element count. The config was checked at load time, so a failure here is a bad request or a model that
/// broke its own signature.
fn apply_reshape(tensor: Tensor, batched: bool, dims: &[i64], name: &str) -> Result<Tensor, InferError> {
    let elements = tensor.element_count();
    let mut shape: Vec<usize> = Vec::with_capacity(dims.len() + 1);
    if batched {
        shape.push(tensor.shape().first().copied().unwrap_or(0));
    }
    let known: usize = shape.iter().copied().chain(dims.iter().filter(|&&d| d >= 0).map(|&d| d as usize)).product();
    let variable = elements.checked_div(known).unwrap_or(0);
    shape.extend(dims.iter().map(|&d| if d < 0 { variable } else { d as usize }));
    tensor.reshape(shape).map_err(|t| {
        InferError::InvalidInput(format!("tensor `{name}` of shape {:?} does not reshape to {dims:?}", t.shape()))
    })
}

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
    scheduling: Scheduling,
    reshapes: Reshapes,
    pool: InstancePool,
}

/// Everything [`ModelVersion::new`] needs.
pub(crate) struct VersionParts {
    pub(crate) name: String,
    pub(crate) version: u64,
    pub(crate) platform: String,
    pub(crate) signature: ModelSignature,
    pub(crate) config: ModelConfig,
    pub(crate) scheduling: Scheduling,
    pub(crate) reshapes: Reshapes,
    pub(crate) stats: Arc<ModelStats>,
    pub(crate) pool: InstancePool,
}

impl ModelVersion {
    pub(crate) fn new(parts: VersionParts) -> Self {
        let max_batch_size = parts.config.max_batch_size.unwrap_or(0);
        ModelVersion {
            name: parts.name,
            version: parts.version,
            platform: parts.platform,
            signature: parts.signature,
            config: parts.config,
            max_batch_size,
            stats: parts.stats,
            scheduling: parts.scheduling,
            reshapes: parts.reshapes,
            pool: parts.pool,
        }
    }

    /// Validates and runs one request through the batcher.
    pub async fn infer(&self, request: InferRequest) -> Result<InferResponse, InferError> {
        let start = Instant::now();
        let id = request.id.clone();
        let deadline = self.deadline(&request.parameters, start)?;
        let priority = self.priority_index(&request.parameters)?;
        let batched = self.max_batch_size > 0;
        let (request, model_shaped) = self.accept_model_shapes(request, batched)?;
        let mut validated = validate(&self.name, &self.signature, self.max_batch_size, request)?;
        if self.reshapes.inputs.iter().any(Option::is_some) {
            let inputs = std::mem::take(&mut validated.inputs);
            validated.inputs = inputs
                .into_iter()
                .zip(&self.reshapes.inputs)
                .zip(&self.signature.inputs)
                .map(|((tensor, reshape), spec)| match reshape {
                    Some(dims) => apply_reshape(tensor, batched, dims, &spec.name),
                    None => Ok(tensor),
                })
                .collect::<Result<_, _>>()?;
        }
        let key = batch_key(&validated.inputs, batched);
        let (reply, outputs) = oneshot::channel();
        let ticket = self.pool.submit(Entry {
            items: validated.batch_size as usize,
            key,
            enqueued: start,
            deadline,
            priority,
            payload: Pending::new(validated.inputs, reply),
        })?;
        let answered = match deadline {
            None => outputs.await,
            Some(deadline) => {
                let mut outputs = outputs;
                tokio::select! {
                    answered = &mut outputs => answered,
                    () = tokio::time::sleep_until(deadline.into()) => {
                        // Still queued at its deadline: answer now rather than when an instance frees up.
                        if self.pool.cancel(ticket) {
                            self.stats.fail.record(start.elapsed());
                            return Err(InferError::Timeout(
                                "the request timed out in the queue before it could run".into(),
                            ));
                        }
                        outputs.await // already running: its answer comes
                    }
                }
            }
        };
        let result = answered
            .map_err(|_| InferError::Internal(format!("model `{}` stopped before answering", self.name)))
            .and_then(|r| r);
        let all = match result {
            Ok(all) if all.len() == self.signature.outputs.len() => all,
            Ok(all) => {
                self.stats.fail.record(start.elapsed());
                tracing::error!(model = %self.name, got = all.len(), "runtime returned the wrong number of outputs");
                return Err(InferError::Internal("the model returned an unexpected number of outputs".into()));
            }
            Err(e) => {
                self.stats.fail.record(start.elapsed());
                return Err(e);
            }
        };
        let mut taken: Vec<Option<Tensor>> = all.into_iter().map(Some).collect();
        let outputs = validated
            .outputs
            .iter()
            .filter_map(|&i| {
                let tensor = taken[i].take()?;
                let name = &self.signature.outputs[i].name;
                let reshape = self.reshapes.outputs.get(i).and_then(Option::as_ref).filter(|_| !model_shaped);
                let tensor = match reshape {
                    Some(dims) => match apply_reshape(tensor, batched, dims, name) {
                        Ok(t) => t,
                        Err(e) => return Some(Err(e)),
                    },
                    None => tensor,
                };
                Some(Ok(InferOutput { name: name.clone(), tensor }))
            })
            .collect::<Result<Vec<_>, InferError>>();
        let outputs = match outputs {
            Ok(outputs) => outputs,
            Err(e) => {
                self.stats.fail.record(start.elapsed());
                tracing::error!(model = %self.name, error = %e, "an output does not fit its configured reshape");
                return Err(InferError::Internal("the model's output does not fit its configured reshape".into()));
            }
        };
        self.stats.success.record(start.elapsed());
        Ok(InferResponse { model_name: self.name.clone(), model_version: self.version.to_string(), id, outputs })
    }

    /// Where the config reshapes an input, a client may also send it in the model's own shape (a different
    /// rank, so there is no ambiguity): `[batch]` for `dims: [ 1 ] reshape: { shape: [ ] }`. Such inputs are
    /// given the client shape here, so validation and the reshape back to the model treat both alike. Returns
    /// whether any input came that way: its outputs then keep the model's shapes too, so a client of the
    /// model's own shapes sees no reshape at all.
    fn accept_model_shapes(
        &self,
        mut request: InferRequest,
        batched: bool,
    ) -> Result<(InferRequest, bool), InferError> {
        if self.reshapes.inputs.iter().all(Option::is_none) {
            return Ok((request, false));
        }
        let mut model_shaped = false;
        let skip = usize::from(batched);
        let inputs = std::mem::take(&mut request.inputs);
        request.inputs = inputs
            .into_iter()
            .map(|mut input| {
                let Some(index) = self.signature.inputs.iter().position(|s| s.name == input.name) else {
                    return Ok(input); // validation reports it
                };
                let public = &self.signature.inputs[index].dims;
                let rank = input.tensor.shape().len();
                if let Some(Some(model_dims)) = self.reshapes.inputs.get(index)
                    && rank == model_dims.len() + skip
                    && rank != public.len()
                {
                    input.tensor = apply_reshape(input.tensor, batched, &public[skip..], &input.name)?;
                    model_shaped = true;
                }
                Ok(input)
            })
            .collect::<Result<_, InferError>>()?;
        Ok((request, model_shaped))
    }

    /// The queue deadline from the `timeout` parameter (microseconds) or the model's default.
    fn deadline(&self, parameters: &Parameters, now: Instant) -> Result<Option<Instant>, InferError> {
        let timeout = match parameters.get("timeout") {
            None => self.scheduling.default_timeout,
            Some(p) => match p.as_u64() {
                Some(0) => None,
                Some(us) => Some(Duration::from_micros(us)),
                None => {
                    return Err(InferError::invalid(
                        "parameter `timeout` must be a non-negative integer (microseconds)",
                    ));
                }
            },
        };
        Ok(timeout.map(|t| now + t))
    }

    /// The batcher queue index (0 = most urgent) from the `priority` parameter (1 = highest, 0 = default).
    fn priority_index(&self, parameters: &Parameters) -> Result<usize, InferError> {
        let levels = self.scheduling.priority_levels;
        let requested = match parameters.get("priority") {
            None => 0,
            Some(p) => {
                p.as_u64().ok_or_else(|| InferError::invalid("parameter `priority` must be a non-negative integer"))?
            }
        };
        if levels == 0 {
            return Ok(0);
        }
        if requested > u64::from(levels) {
            return Err(InferError::invalid(format!(
                "parameter `priority` is {requested}; model `{}` has priority levels 1 to {levels}",
                self.name
            )));
        }
        let level = if requested == 0 {
            match self.scheduling.default_priority_level {
                0 => levels,
                d => d.min(levels),
            }
        } else {
            requested as u32
        };
        Ok(level as usize - 1)
    }
}

/// The non-batch dims of every input: requests batch together only when these match.
fn batch_key(inputs: &[Tensor], batching: bool) -> Vec<usize> {
    if !batching {
        return Vec::new();
    }
    let mut key = Vec::with_capacity(inputs.len() * 3);
    for t in inputs {
        key.extend_from_slice(t.shape().get(1..).unwrap_or(&[]));
        key.push(usize::MAX); // separator: [2],[3] differs from [2,3]
    }
    key
}
