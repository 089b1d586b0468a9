//! Shadow requests: a copy of a primary request run on a candidate version after the primary has answered.
//! The client never waits for it; its outcome, latency and divergence from the primary's outputs are recorded
//! per version. Each copy holds one slot of the model's shadow budget until it finishes, so shadow work in
//! flight is bounded and is the first thing dropped under load.

use std::sync::Arc;
use std::time::Instant;

use ferroserve_runtime::{DataType, Tensor};
use metrics::{counter, histogram};
use tokio::sync::OwnedSemaphorePermit;

use crate::metrics::{SHADOW_ABS_DIFF, SHADOW_DURATION, SHADOW_REL_ERROR, SHADOW_REQUESTS};
use crate::model::ModelVersion;
use crate::request::{InferOutput, InferRequest};

/// Counts one shadow request by outcome (`ok`, `error`, `dropped`).
pub(crate) fn count(model: &str, version: u64, outcome: &'static str) {
    counter!(SHADOW_REQUESTS, "model" => model.to_string(), "version" => version.to_string(), "outcome" => outcome)
        .increment(1);
}

/// A shadow copy waiting for its primary to answer.
pub(crate) struct ShadowRun {
    target: Arc<ModelVersion>,
    request: InferRequest,
    slot: OwnedSemaphorePermit,
}

impl ShadowRun {
    pub(crate) fn new(target: Arc<ModelVersion>, request: InferRequest, slot: OwnedSemaphorePermit) -> Self {
        ShadowRun { target, request, slot }
    }

    /// Runs the copy in the background; `primary` holds the primary's outputs when it succeeded.
    pub(crate) fn run(self, primary: Option<Vec<InferOutput>>) {
        let ShadowRun { target, request, slot } = self;
        tokio::spawn(async move {
            let _slot = slot;
            let start = Instant::now();
            let answer = target.infer(request).await;
            let (model, version) = (target.name.as_str(), target.version);
            let labels = [("model", model.to_string()), ("version", version.to_string())];
            histogram!(SHADOW_DURATION, &labels).record(start.elapsed().as_secs_f64());
            match answer {
                Err(e) => {
                    count(model, version, "error");
                    tracing::debug!(model, version, error = %e, "shadow request failed");
                }
                Ok(shadow) => {
                    count(model, version, "ok");
                    if let Some(primary) = primary {
                        let d = divergence(&primary, &shadow.outputs);
                        histogram!(SHADOW_ABS_DIFF, &labels).record(d.max_abs);
                        if let Some(rel) = d.max_rel {
                            histogram!(SHADOW_REL_ERROR, &labels).record(rel);
                        }
                    }
                }
            }
        });
    }
}

/// How far a shadow's outputs are from the primary's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Divergence {
    /// Largest absolute difference over every numeric output element (infinite when shapes, types or the set
    /// of outputs differ, or BYTES outputs differ; NaN against NaN counts as equal).
    pub(crate) max_abs: f64,
    /// Largest relative error `|s - p| / max(|p|, 1e-12)` over floating-point outputs, when there are any.
    pub(crate) max_rel: Option<f64>,
}

/// Compares outputs by name.
pub(crate) fn divergence(primary: &[InferOutput], shadow: &[InferOutput]) -> Divergence {
    let mut d = Divergence { max_abs: 0.0, max_rel: None };
    for p in primary {
        let Some(s) = shadow.iter().find(|s| s.name == p.name) else {
            d.max_abs = f64::INFINITY;
            continue;
        };
        if p.tensor.datatype() != s.tensor.datatype() || p.tensor.shape() != s.tensor.shape() {
            d.max_abs = f64::INFINITY;
            continue;
        }
        if let (Some(a), Some(b)) = (p.tensor.as_strings(), s.tensor.as_strings()) {
            if a != b {
                d.max_abs = f64::INFINITY;
            }
            continue;
        }
        let (Some(a), Some(b)) = (values(&p.tensor), values(&s.tensor)) else { continue };
        let float = matches!(p.tensor.datatype(), DataType::Fp16 | DataType::Bf16 | DataType::Fp32 | DataType::Fp64);
        for (x, y) in a.iter().zip(&b) {
            if x.is_nan() && y.is_nan() {
                continue;
            }
            let abs = (y - x).abs();
            let abs = if abs.is_nan() { f64::INFINITY } else { abs };
            d.max_abs = d.max_abs.max(abs);
            if float {
                let rel = abs / x.abs().max(1e-12);
                d.max_rel = Some(d.max_rel.unwrap_or(0.0).max(rel));
            }
        }
        if float && d.max_rel.is_none() {
            d.max_rel = Some(0.0);
        }
    }
    d
}

/// A numeric tensor's elements as f64.
fn values(t: &Tensor) -> Option<Vec<f64>> {
    let bytes = t.as_fixed()?;
    let v = match t.datatype() {
        DataType::Bool => bytes.iter().map(|&b| f64::from(u8::from(b != 0))).collect(),
        DataType::Uint8 => bytes.iter().map(|&b| f64::from(b)).collect(),
        DataType::Int8 => bytes.iter().map(|&b| f64::from(b as i8)).collect(),
        DataType::Uint16 => bytes.chunks_exact(2).map(|c| f64::from(u16::from_le_bytes([c[0], c[1]]))).collect(),
        DataType::Int16 => bytes.chunks_exact(2).map(|c| f64::from(i16::from_le_bytes([c[0], c[1]]))).collect(),
        DataType::Fp16 => bytes.chunks_exact(2).map(|c| f64::from(half::f16::from_le_bytes([c[0], c[1]]))).collect(),
        DataType::Bf16 => bytes.chunks_exact(2).map(|c| f64::from(half::bf16::from_le_bytes([c[0], c[1]]))).collect(),
        DataType::Uint32 => {
            bytes.chunks_exact(4).map(|c| f64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect()
        }
        DataType::Int32 => {
            bytes.chunks_exact(4).map(|c| f64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect()
        }
        DataType::Fp32 => {
            bytes.chunks_exact(4).map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect()
        }
        DataType::Uint64 => {
            bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()) as f64).collect()
        }
        DataType::Int64 => {
            bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or_default()) as f64).collect()
        }
        DataType::Fp64 => bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or_default())).collect(),
        _ => return None,
    };
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(name: &str, values: &[f32]) -> InferOutput {
        InferOutput { name: name.into(), tensor: Tensor::from_f32(vec![values.len()], values).unwrap() }
    }

    #[test]
    fn identical_outputs_do_not_diverge() {
        let d = divergence(&[out("y", &[1.0, -2.0])], &[out("y", &[1.0, -2.0])]);
        assert_eq!(d, Divergence { max_abs: 0.0, max_rel: Some(0.0) });
    }

    #[test]
    fn differences_are_measured_absolutely_and_relatively() {
        let d = divergence(&[out("y", &[1.0, -2.0, 100.0])], &[out("y", &[1.5, -2.0, 100.1])]);
        assert!((d.max_abs - 0.5).abs() < 1e-6);
        assert!((d.max_rel.unwrap() - 0.5).abs() < 1e-6);
    }

    #[test]
    fn shape_or_name_mismatches_are_infinitely_divergent() {
        assert_eq!(divergence(&[out("y", &[1.0])], &[out("z", &[1.0])]).max_abs, f64::INFINITY);
        assert_eq!(divergence(&[out("y", &[1.0])], &[out("y", &[1.0, 2.0])]).max_abs, f64::INFINITY);
        let nan = divergence(&[out("y", &[f32::NAN, 1.0])], &[out("y", &[f32::NAN, f32::NAN])]);
        assert_eq!(nan.max_abs, f64::INFINITY);
    }
}
