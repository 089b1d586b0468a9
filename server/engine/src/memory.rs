//! What a request will hold in memory while it runs, estimated once it is decoded and before it is queued, so
//! the server-wide budget of bytes in flight (`--max-inflight-bytes`, kept by the API) counts the work a request
//! causes and not only its body.
//!
//! A body is the smallest part of what a request holds. Its decoded inputs are joined into a batch and copied
//! into the runtime's own tensors (ONNX Runtime makes a `std::string` of every BYTES element); the runtime's
//! outputs are copied into ours and encoded into the answer. A model whose outputs are larger than its inputs
//! (an upsampler, a decoder) holds far more than it was sent: a 64 MiB BYTES request to an echo model held about
//! five times its body, and a server with a 1 GiB budget reached 4.4 GB.
//!
//! The outputs' size comes from the signature when every dim except the batch is fixed (exact), and otherwise
//! from what this version's executions produced per input byte ([`OutputRatio`], learned as it serves, quick
//! to rise and slow to fall). Until a version has run, a variable output is assumed as large as its inputs.

use std::sync::atomic::{AtomicU32, Ordering};

use ferroserve_runtime::{ModelSignature, TensorSpec};

/// Fixed-point scale of a ratio: 256 = one output byte per input byte.
const ONE: u32 = 256;

/// The largest ratio believed (4096 output bytes per input byte), so one odd execution (a handful of input
/// bytes) cannot make every later request look too large for the budget.
const MAX_RATIO: u32 = 4096 * ONE;

/// Copies of its inputs a request holds beside its body while it runs: the batch it joins and the runtime's.
pub const INPUT_COPIES: usize = 2;

/// Copies of its outputs a request holds: the runtime's, ours, and the encoded answer.
pub const OUTPUT_COPIES: usize = 3;

/// Output bytes per input byte that a version's executions produced, learned as it serves. It follows a rise
/// at once and decays by a sixteenth of the gap per execution, so a burst of large answers keeps its charge
/// while it lasts.
#[derive(Debug, Default)]
pub struct OutputRatio {
    /// Fixed point ([`ONE`] = 1.0); 0 = nothing observed yet.
    learned: AtomicU32,
}

impl OutputRatio {
    /// Records one execution that took `input_bytes` and produced `output_bytes`.
    pub fn observe(&self, input_bytes: usize, output_bytes: usize) {
        if input_bytes == 0 {
            return;
        }
        let ratio = (output_bytes as u128 * ONE as u128 / input_bytes as u128).clamp(1, MAX_RATIO as u128) as u32;
        let _ = self.learned.fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| {
            Some(if ratio >= old { ratio } else { old - (old - ratio).div_ceil(16) })
        });
    }

    /// The learned ratio in fixed point, if any execution was observed.
    fn learned(&self) -> Option<u32> {
        match self.learned.load(Ordering::Acquire) {
            0 => None,
            r => Some(r),
        }
    }
}

/// Output bytes per input byte that the signature fixes (fixed point), when every input and output has a
/// fixed-size datatype and no variable dim besides the batch dim; otherwise the ratio depends on the request.
pub fn static_ratio(signature: &ModelSignature, batched: bool) -> Option<u32> {
    let row_bytes = |specs: &[TensorSpec]| -> Option<u128> {
        specs.iter().try_fold(0u128, |sum, spec| {
            let dims = if batched { spec.dims.get(1..)? } else { &spec.dims[..] };
            let count = dims.iter().try_fold(1u128, |n, &d| n.checked_mul(u128::try_from(d).ok()?))?;
            sum.checked_add(count.checked_mul(spec.datatype.size_of()? as u128)?)
        })
    };
    let inputs = row_bytes(&signature.inputs)?;
    let outputs = row_bytes(&signature.outputs)?;
    if inputs == 0 {
        return None;
    }
    Some((outputs.saturating_mul(ONE as u128) / inputs).clamp(1, MAX_RATIO as u128) as u32)
}

/// Bytes a request whose inputs take `input_bytes` holds while it runs, beside its body: its inputs' copies and
/// its outputs' (sized by `fixed`, the signature's ratio, else by what `learned` saw, else as large as the inputs).
pub fn working_bytes(input_bytes: usize, fixed: Option<u32>, learned: &OutputRatio) -> usize {
    let ratio = fixed.or_else(|| learned.learned()).unwrap_or(ONE) as u128;
    let outputs = input_bytes as u128 * ratio / ONE as u128;
    let total = input_bytes as u128 * INPUT_COPIES as u128 + outputs * OUTPUT_COPIES as u128;
    usize::try_from(total).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use ferroserve_runtime::DataType;

    use super::*;

    fn spec(datatype: DataType, dims: &[i64]) -> TensorSpec {
        TensorSpec { name: "t".into(), datatype, dims: dims.to_vec() }
    }

    #[test]
    fn a_fixed_signature_gives_the_exact_ratio() {
        // 16 FP32 in, 4 FP32 out per row: a quarter.
        let mlp = ModelSignature {
            inputs: vec![spec(DataType::Fp32, &[-1, 16])],
            outputs: vec![spec(DataType::Fp32, &[-1, 4])],
        };
        assert_eq!(static_ratio(&mlp, true), Some(ONE / 4));
        // An upsampler: 4x the pixels, FP32 to FP32.
        let up = ModelSignature {
            inputs: vec![spec(DataType::Fp32, &[-1, 3, 8, 8])],
            outputs: vec![spec(DataType::Fp32, &[-1, 3, 16, 16])],
        };
        assert_eq!(static_ratio(&up, true), Some(4 * ONE));
        assert_eq!(working_bytes(1000, static_ratio(&up, true), &OutputRatio::default()), 2000 + 12_000);
    }

    #[test]
    fn variable_dims_or_bytes_leave_the_ratio_to_learning() {
        let strings = ModelSignature {
            inputs: vec![spec(DataType::Bytes, &[-1, 1])],
            outputs: vec![spec(DataType::Bytes, &[-1, 1])],
        };
        assert_eq!(static_ratio(&strings, true), None);
        let variable = ModelSignature {
            inputs: vec![spec(DataType::Fp32, &[-1, -1])],
            outputs: vec![spec(DataType::Fp32, &[-1, 4])],
        };
        assert_eq!(static_ratio(&variable, true), None);
        // Not batched: the first dim counts.
        let fixed = ModelSignature {
            inputs: vec![spec(DataType::Fp32, &[2, 8])],
            outputs: vec![spec(DataType::Int64, &[2, 8])],
        };
        assert_eq!(static_ratio(&fixed, false), Some(2 * ONE));
        assert_eq!(static_ratio(&fixed, true), Some(2 * ONE));
    }

    #[test]
    fn the_learned_ratio_rises_at_once_and_falls_slowly() {
        let ratio = OutputRatio::default();
        // Nothing seen: outputs assumed as large as the inputs.
        assert_eq!(working_bytes(100, None, &ratio), 200 + 300);
        ratio.observe(100, 1000);
        assert_eq!(working_bytes(100, None, &ratio), 200 + 3000);
        ratio.observe(100, 100);
        let after_one = working_bytes(100, None, &ratio);
        assert!(after_one > 200 + 2700, "one small answer barely lowers it: {after_one}");
        for _ in 0..200 {
            ratio.observe(100, 100);
        }
        assert_eq!(working_bytes(100, None, &ratio), 200 + 300);
        // Empty inputs teach nothing; absurd ratios are capped.
        ratio.observe(0, 1 << 30);
        assert_eq!(working_bytes(100, None, &ratio), 200 + 300);
        ratio.observe(1, usize::MAX);
        assert_eq!(working_bytes(1, None, &ratio), 2 + 3 * 4096);
        assert_eq!(working_bytes(usize::MAX, None, &ratio), usize::MAX);
    }
}
