//! A loaded model version: its signature, effective configuration, instance pool and statistics.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferroserve_runtime::{ModelSignature, Tensor};
use tokio::sync::oneshot;

use crate::InferError;
use crate::batcher::Pending;
use crate::batcher::state::Entry;
use crate::config::ModelConfig;
use crate::instance::InstancePool;
use crate::metrics::InFlight;
use crate::repository::Labels;
use crate::request::{InferOutput, InferRequest, InferResponse, Parameters};
use crate::reshape::Reshapes;
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
    /// Whether a request's `timeout` parameter may shorten `default_timeout` (Triton's
    /// `allow_timeout_override`).
    pub allow_timeout_override: bool,
}

impl Scheduling {
    /// The queue deadline: the model's default queue timeout, or the request's `timeout` parameter (microseconds)
    /// where the queue policy allows an override and it is shorter, as Triton's queue policy has it. A request
    /// can never lengthen or lift the timeout its model's owner set; `0` asks for no override. (With no default
    /// timeout Triton ignores the parameter even when overrides are allowed; here any non-zero timeout is shorter
    /// than none, as the model config documentation reads.)
    fn deadline(&self, parameters: &Parameters, now: Instant) -> Result<Option<Instant>, InferError> {
        let default = self.default_timeout;
        let requested = match parameters.get("timeout") {
            None => None,
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
        let timeout = match requested {
            Some(t) if self.allow_timeout_override && default.is_none_or(|d| t < d) => Some(t),
            _ => default,
        };
        Ok(timeout.map(|t| now + t))
    }

    /// The batcher queue index (0 = most urgent) from the `priority` parameter (1 = highest, 0 = default).
    fn priority_index(&self, parameters: &Parameters) -> Result<usize, InferError> {
        let levels = self.priority_levels;
        let requested = match parameters.get("priority") {
            None => 0,
            Some(p) => {
                p.as_u64().ok_or_else(|| InferError::invalid("parameter `priority` must be a non-negative integer"))?
            }
        };
        if levels == 0 {
            return Ok(0);
        }
        // Past the last level, the default level, as Triton does.
        let level = if requested == 0 || requested > u64::from(levels) {
            match self.default_priority_level {
                0 => levels,
                d => d.min(levels),
            }
        } else {
            requested as u32
        };
        Ok(level as usize - 1)
    }
}

/// The request parameters starting with `triton_` that a client may send (Triton's `TRITON_RESERVED_REQUEST_PARAMS`).
const ALLOWED_TRITON_PARAMETERS: &[&str] = &["triton_enable_empty_final_response"];

/// Refuses request parameters that Triton reserves for itself (named `triton_...`), as Triton does: a client that
/// sets one expects a behaviour this server would silently not have.
fn check_reserved(parameters: &Parameters) -> Result<(), InferError> {
    match parameters.keys().find(|k| k.starts_with("triton_") && !ALLOWED_TRITON_PARAMETERS.contains(&k.as_str())) {
        None => Ok(()),
        Some(key) => Err(InferError::invalid(format!(
            "parameter keys starting with 'triton_' are reserved for Triton usage. Only the following keys starting \
             with 'triton_' are allowed: {} (got `{key}`)",
            ALLOWED_TRITON_PARAMETERS.join(" ")
        ))),
    }
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
    labels: BTreeMap<String, Labels>,
    pool: InstancePool,
    /// Output bytes per input byte when the signature fixes them (see [`crate::memory`]).
    fixed_output_ratio: Option<u32>,
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
    pub(crate) labels: BTreeMap<String, Labels>,
    pub(crate) stats: Arc<ModelStats>,
    pub(crate) pool: InstancePool,
}

impl ModelVersion {
    pub(crate) fn new(parts: VersionParts) -> Self {
        let max_batch_size = parts.config.max_batch_size.unwrap_or(0);
        let fixed_output_ratio = crate::memory::static_ratio(&parts.signature, max_batch_size > 0);
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
            labels: parts.labels,
            pool: parts.pool,
            fixed_output_ratio,
        }
    }

    /// Bytes a request whose inputs hold `input_bytes` holds while it runs, beside its body: see
    /// [`crate::memory`].
    pub fn working_bytes(&self, input_bytes: usize) -> usize {
        crate::memory::working_bytes(input_bytes, self.fixed_output_ratio, &self.stats.output_ratio)
    }

    /// The most elements input `name` can hold in one request to this version: the largest batch times the
    /// fixed dims; `None` where a dim is free, or there is no such input.
    pub fn max_input_elements(&self, name: &str) -> Option<usize> {
        let spec = self.signature.inputs.iter().find(|s| s.name == name)?;
        let batched = self.max_batch_size > 0;
        spec.dims.iter().enumerate().try_fold(1usize, |most, (i, &dim)| {
            let dim = if batched && i == 0 { i64::from(self.max_batch_size) } else { dim };
            usize::try_from(dim).ok().and_then(|dim| most.checked_mul(dim))
        })
    }

    /// Why this version no longer serves: every instance stopped on a device failure. `None` while it serves.
    pub fn failed(&self) -> Option<String> {
        self.pool.failed()
    }

    /// Refuses new requests; queued and running ones still finish.
    pub(crate) fn close(&self) {
        self.pool.close();
    }

    /// Stops the version for good once nothing can reach it any more: the queue closes, queued and running
    /// requests finish, and the instance threads exit and are joined (blocking).
    pub(crate) fn retire(self) {
        self.pool.shutdown();
    }

    /// Validates and runs one request through the batcher.
    pub async fn infer(&self, request: InferRequest) -> Result<InferResponse, InferError> {
        let start = Instant::now();
        let _in_flight = InFlight::enter(&self.stats.metrics.in_flight);
        let id = request.id.clone();
        check_reserved(&request.parameters)?;
        let deadline = self.scheduling.deadline(&request.parameters, start)?;
        let priority = self.scheduling.priority_index(&request.parameters)?;
        let batched = self.max_batch_size > 0;
        let mut request = request;
        // Checked before the model runs: a bad class count or a BYTES output costs no inference.
        let classes = crate::classify::requested(&self.signature, &request.outputs)?;
        let (inputs, model_shaped) =
            self.reshapes.accept_model_shapes(&self.signature, std::mem::take(&mut request.inputs))?;
        request.inputs = inputs;
        let mut validated = validate(&self.name, &self.signature, self.max_batch_size, request)?;
        validated.inputs = self.reshapes.to_model(&self.signature, std::mem::take(&mut validated.inputs))?;
        let key = batch_key(&validated.inputs, batched);
        let (reply, outputs) = oneshot::channel();
        let ticket = self.pool.submit(Entry {
            items: validated.batch_size as usize,
            key,
            enqueued: start,
            deadline,
            priority,
            payload: Pending::traced(validated.inputs, reply, crate::trace::QueuedTrace::start()),
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
                            return Err(InferError::queue_timeout());
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
                Some(
                    self.reshapes
                        .output(i, tensor, name, model_shaped)
                        .map(|tensor| InferOutput { name: name.clone(), tensor }),
                )
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
        let outputs = match self.classify(outputs, &classes, batched) {
            Ok(outputs) => outputs,
            Err(e) => {
                self.stats.fail.record(start.elapsed());
                return Err(e);
            }
        };
        self.stats.record_success(start.elapsed());
        Ok(InferResponse { model_name: self.name.clone(), model_version: self.version.to_string(), id, outputs })
    }

    /// Replaces each output asked for with the `classification` parameter by its top classes (this request's
    /// own outputs: a batch the request shared with others was already split back).
    fn classify(
        &self,
        outputs: Vec<InferOutput>,
        classes: &BTreeMap<String, usize>,
        batched: bool,
    ) -> Result<Vec<InferOutput>, InferError> {
        if classes.is_empty() {
            return Ok(outputs);
        }
        outputs
            .into_iter()
            .map(|output| match classes.get(&output.name) {
                None => Ok(output),
                Some(&count) => {
                    let labels = self.labels.get(&output.name).map(|l| &l[..]);
                    let tensor = crate::classify::top_classes(&output.name, &output.tensor, count, batched, labels)?;
                    Ok(InferOutput { name: output.name, tensor })
                }
            })
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::Parameter;

    fn with(name: &str, value: i64) -> Parameters {
        [(name.to_string(), Parameter::Int(value))].into_iter().collect()
    }

    #[test]
    fn a_request_timeout_only_shortens_the_queue_timeout_and_only_where_allowed() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        let at = |s: &Scheduling, p: &Parameters| s.deadline(p, now).unwrap().map(|d| d - now);
        let strict = Scheduling { default_timeout: Some(ms(50)), ..Scheduling::default() };
        assert_eq!(at(&strict, &Parameters::new()), Some(ms(50)));
        assert_eq!(at(&strict, &with("timeout", 1_000)), Some(ms(50)), "no override allowed");
        let open = Scheduling { allow_timeout_override: true, ..strict.clone() };
        assert_eq!(at(&open, &with("timeout", 1_000)), Some(ms(1)), "shorter");
        assert_eq!(at(&open, &with("timeout", 900_000)), Some(ms(50)), "never longer");
        assert_eq!(at(&open, &with("timeout", 0)), Some(ms(50)), "0 is no override, not no timeout");
        let unbounded = Scheduling { allow_timeout_override: true, ..Scheduling::default() };
        assert_eq!(at(&unbounded, &with("timeout", 2_000)), Some(ms(2)), "any timeout is shorter than none");
        assert_eq!(at(&Scheduling::default(), &with("timeout", 2_000)), None, "no dynamic batching: ignored");
        for bad in [with("timeout", -1), [("timeout".to_string(), Parameter::Double(1.5))].into_iter().collect()] {
            assert!(matches!(strict.deadline(&bad, now), Err(InferError::InvalidInput(_))), "{bad:?}");
        }
    }

    #[test]
    fn parameters_reserved_by_triton_are_refused() {
        assert!(check_reserved(&with("priority", 1)).is_ok());
        assert!(check_reserved(&with("triton_enable_empty_final_response", 1)).is_ok());
        let error = check_reserved(&with("triton_x", 1)).unwrap_err().to_string();
        assert!(error.contains("reserved for Triton usage") && error.contains("triton_x"), "{error}");
    }

    #[test]
    fn priorities_past_the_levels_take_the_default_level() {
        let scheduling = Scheduling { priority_levels: 3, default_priority_level: 2, ..Scheduling::default() };
        let index = |p: &Parameters| scheduling.priority_index(p).unwrap();
        assert_eq!(index(&Parameters::new()), 1);
        assert_eq!(index(&with("priority", 1)), 0);
        assert_eq!(index(&with("priority", 3)), 2);
        assert_eq!(index(&with("priority", 4)), 1, "Triton: past the last level is the default level");
        assert_eq!(index(&with("priority", 0)), 1);
        assert!(scheduling.priority_index(&with("priority", -2)).is_err());
        assert_eq!(Scheduling::default().priority_index(&with("priority", 9)).unwrap(), 0, "one level");
    }
}
