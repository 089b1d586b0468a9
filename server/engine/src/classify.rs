//! Triton's classification extension: an output requested with the parameter `classification: N` (HTTP) or
//! `class_count` (tritonclient's gRPC, sent as the same parameter) is answered, per batch item, by its top N
//! classes as BYTES elements `"VALUE:INDEX"`, or `"VALUE:INDEX:LABEL"` when the output has a `label_filename`.
//!
//! As in Triton: classes are sorted by value, highest first; VALUE is written as C++ `std::to_string` writes
//! it (six decimals for floating point, e.g. `15.346230`; plain digits for integers); N larger than the
//! number of classes is clamped to it; a batching model's output `[batch, C...]` answers `[batch, N]`, a
//! non-batching output (all of it one item) answers `[N]`. Equal values keep index order, and NaN sorts last.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use bytes::Bytes;
use ferroserve_runtime::{DataType, ModelSignature, Tensor, TensorData};

use crate::InferError;
use crate::request::{Parameter, RequestedOutput};

/// The output parameter that asks for classification.
pub const PARAMETER: &str = "classification";

/// The class counts asked for, by output name. Refuses a count that is not a positive integer, and an output
/// that is not numeric (BYTES, BOOL). Outputs the model does not have are left to request validation.
pub fn requested(
    signature: &ModelSignature,
    outputs: &[RequestedOutput],
) -> Result<BTreeMap<String, usize>, InferError> {
    let mut wanted = BTreeMap::new();
    for output in outputs {
        let Some(parameter) = output.parameters.get(PARAMETER) else { continue };
        let count = match parameter {
            Parameter::Int(n) if *n > 0 => u64::try_from(*n).unwrap_or(u64::MAX),
            Parameter::Uint(n) if *n > 0 => *n,
            other => {
                return Err(InferError::invalid(format!(
                    "output `{}`: parameter `{PARAMETER}` must be a positive integer (the number of classes to \
                     return), got {}",
                    output.name,
                    describe(other)
                )));
            }
        };
        if let Some(spec) = signature.outputs.iter().find(|s| s.name == output.name)
            && !is_numeric(spec.datatype)
        {
            return Err(InferError::invalid(format!(
                "output `{}` is {}: only numeric outputs can be classified",
                output.name, spec.datatype
            )));
        }
        wanted.insert(output.name.clone(), usize::try_from(count).unwrap_or(usize::MAX));
    }
    Ok(wanted)
}

fn describe(parameter: &Parameter) -> String {
    match parameter {
        Parameter::Bool(b) => b.to_string(),
        Parameter::Int(i) => i.to_string(),
        Parameter::Uint(u) => u.to_string(),
        Parameter::Double(d) => d.to_string(),
        Parameter::String(s) => format!("{s:?}"),
    }
}

fn is_numeric(datatype: DataType) -> bool {
    !matches!(datatype, DataType::Bytes | DataType::Bool)
}

/// The top `count` classes of `tensor` (output `name`) as a BYTES tensor; `batched`: the first dim is the
/// batch, and each item is classified alone. `labels[i]` names class `i` (an empty or missing label is left
/// out, as Triton does).
pub fn top_classes(
    name: &str,
    tensor: &Tensor,
    count: usize,
    batched: bool,
    labels: Option<&[Bytes]>,
) -> Result<Tensor, InferError> {
    let datatype = tensor.datatype();
    let (Some(bytes), Some(size), true) = (tensor.as_fixed(), datatype.size_of(), is_numeric(datatype)) else {
        return Err(InferError::invalid(format!(
            "output `{name}` is {datatype}: only numeric outputs can be classified"
        )));
    };
    let total = tensor.element_count();
    let (items, per_item) = match tensor.shape().first() {
        Some(&batch) if batched => (batch, total.checked_div(batch).unwrap_or(0)),
        _ => (1, total),
    };
    let kept = count.min(per_item);
    let mut classes = Vec::with_capacity(items.saturating_mul(kept));
    // An item without classes has nothing to chunk: its row is empty.
    let chunk = (per_item * size).max(1);
    for item in bytes.chunks_exact(chunk).take(if per_item == 0 { 0 } else { items }) {
        macro_rules! top {
            ($ty:ty, $text:expr) => {{
                let values: Vec<$ty> =
                    item.chunks_exact(size).map(|c| <$ty>::from_le_bytes(c.try_into().unwrap_or_default())).collect();
                push_top(&values, kept, $text, labels, &mut classes)
            }};
        }
        match datatype {
            DataType::Uint8 => top!(u8, |v: u8| v.to_string()),
            DataType::Uint16 => top!(u16, |v: u16| v.to_string()),
            DataType::Uint32 => top!(u32, |v: u32| v.to_string()),
            DataType::Uint64 => top!(u64, |v: u64| v.to_string()),
            DataType::Int8 => top!(i8, |v: i8| v.to_string()),
            DataType::Int16 => top!(i16, |v: i16| v.to_string()),
            DataType::Int32 => top!(i32, |v: i32| v.to_string()),
            DataType::Int64 => top!(i64, |v: i64| v.to_string()),
            DataType::Fp16 => top!(half::f16, |v: half::f16| c_float(v.to_f64())),
            DataType::Bf16 => top!(half::bf16, |v: half::bf16| c_float(v.to_f64())),
            DataType::Fp32 => top!(f32, |v: f32| c_float(f64::from(v))),
            DataType::Fp64 => top!(f64, c_float),
            DataType::Bool | DataType::Bytes => {}
        }
    }
    let shape = if batched && !tensor.shape().is_empty() { vec![items, kept] } else { vec![kept] };
    Tensor::new(DataType::Bytes, shape, TensorData::Strings(classes))
        .map_err(|e| InferError::Internal(format!("output `{name}`: classification result: {e}")))
}

/// Appends the `kept` highest of `values` as `VALUE:INDEX[:LABEL]`.
fn push_top<T: Copy + PartialOrd>(
    values: &[T],
    kept: usize,
    text: impl Fn(T) -> String,
    labels: Option<&[Bytes]>,
    out: &mut Vec<Bytes>,
) {
    let order = |&a: &usize, &b: &usize| descending(values, a, b);
    let mut indices: Vec<usize> = (0..values.len()).collect();
    if kept == 0 {
        return;
    }
    if kept < indices.len() {
        indices.select_nth_unstable_by(kept - 1, order);
        indices.truncate(kept);
    }
    // A total order (value, then index): the same classes and order as a full stable sort.
    indices.sort_unstable_by(order);
    for index in indices {
        let mut class = format!("{}:{index}", text(values[index])).into_bytes();
        if let Some(label) = labels.and_then(|l| l.get(index)).filter(|l| !l.is_empty()) {
            class.push(b':');
            class.extend_from_slice(label);
        }
        out.push(Bytes::from(class));
    }
}

/// Highest value first; NaN after every number; equal values in index order.
fn descending<T: PartialOrd>(values: &[T], a: usize, b: usize) -> Ordering {
    let (x, y) = (&values[a], &values[b]);
    let nan = |v: &T| v.partial_cmp(v).is_none();
    let by_value = match (nan(x), nan(y)) {
        (false, false) => y.partial_cmp(x).unwrap_or(Ordering::Equal),
        (x_nan, y_nan) => x_nan.cmp(&y_nan),
    };
    by_value.then(a.cmp(&b))
}

/// A floating-point value as C++ `std::to_string` (printf `%f`) writes it: six decimals, `inf`, `nan`.
pub fn c_float(value: f64) -> String {
    if value.is_nan() {
        if value.is_sign_negative() { "-nan".into() } else { "nan".into() }
    } else {
        format!("{value:.6}")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use ferroserve_runtime::TensorSpec;

    use super::*;
    use crate::request::Parameters;

    fn strings(t: &Tensor) -> Vec<String> {
        t.as_strings().unwrap().iter().map(|s| String::from_utf8(s.to_vec()).unwrap()).collect()
    }

    fn labels(names: &[&str]) -> Vec<Bytes> {
        names.iter().map(|n| Bytes::copy_from_slice(n.as_bytes())).collect()
    }

    #[test]
    fn formats_values_as_cpp_to_string() {
        assert_eq!(c_float(f64::from(15.34623_f32)), "15.346230");
        assert_eq!(c_float(0.1), "0.100000");
        assert_eq!(c_float(-2.5e-7), "-0.000000");
        assert_eq!(c_float(1234567.0), "1234567.000000");
        assert_eq!(c_float(0.0000005), "0.000000"); // 5e-7 is just below the half in binary
        assert_eq!(c_float(f64::INFINITY), "inf");
        assert_eq!(c_float(f64::NEG_INFINITY), "-inf");
        assert_eq!(c_float(f64::NAN), "nan");
    }

    #[test]
    fn top_n_sorted_descending_with_and_without_labels() {
        let t = Tensor::from_f32(vec![4], &[0.5, 2.25, -1.0, 2.25]).unwrap();
        let top = top_classes("y", &t, 3, false, None).unwrap();
        assert_eq!(top.datatype(), DataType::Bytes);
        assert_eq!(top.shape(), &[3]);
        // Equal values keep index order.
        assert_eq!(strings(&top), ["2.250000:1", "2.250000:3", "0.500000:0"]);
        let names = labels(&["zero", "one", "", "three"]);
        let top = top_classes("y", &t, 4, false, Some(&names)).unwrap();
        assert_eq!(strings(&top), ["2.250000:1:one", "2.250000:3:three", "0.500000:0:zero", "-1.000000:2"]);
        // Fewer labels than classes: the others have none.
        let short = labels(&["zero"]);
        assert_eq!(strings(&top_classes("y", &t, 1, false, Some(&short)).unwrap()), ["2.250000:1"]);
    }

    #[test]
    fn clamps_the_count_to_the_classes() {
        let t = Tensor::from_f32(vec![2], &[1.0, 3.0]).unwrap();
        let top = top_classes("y", &t, 10, false, None).unwrap();
        assert_eq!(top.shape(), &[2]);
        assert_eq!(strings(&top), ["3.000000:1", "1.000000:0"]);
        let t = Tensor::from_f32(vec![3, 2], &[1.0, 3.0, 4.0, 2.0, 0.0, 0.0]).unwrap();
        assert_eq!(top_classes("y", &t, 7, true, None).unwrap().shape(), &[3, 2]);
    }

    #[test]
    fn classifies_each_batch_item_alone() {
        let t = Tensor::from_f32(vec![3, 4], &[0.1, 0.4, 0.3, 0.2, 9.0, 8.0, 7.0, 6.0, -1.0, -2.0, -3.0, 5.0]).unwrap();
        let names = labels(&["a", "b", "c", "d"]);
        let top = top_classes("y", &t, 2, true, Some(&names)).unwrap();
        assert_eq!(top.shape(), &[3, 2]);
        assert_eq!(
            strings(&top),
            ["0.400000:1:b", "0.300000:2:c", "9.000000:0:a", "8.000000:1:b", "5.000000:3:d", "-1.000000:0:a"]
        );
        // Without batching the whole tensor is one item.
        let top = top_classes("y", &t, 2, false, None).unwrap();
        assert_eq!(top.shape(), &[2]);
        assert_eq!(strings(&top), ["9.000000:4", "8.000000:5"]);
        // Items with more dims: each item's elements, flattened.
        let t = Tensor::from_f32(vec![2, 2, 2], &[1.0, 4.0, 2.0, 3.0, 8.0, 5.0, 6.0, 7.0]).unwrap();
        assert_eq!(strings(&top_classes("y", &t, 1, true, None).unwrap()), ["4.000000:1", "8.000000:0"]);
    }

    #[test]
    fn integer_and_half_outputs_and_nan() {
        let t = Tensor::from_le_bytes(DataType::Int32, vec![3], [7i32, -2, 40].map(i32::to_le_bytes).concat()).unwrap();
        assert_eq!(strings(&top_classes("y", &t, 2, false, None).unwrap()), ["40:2", "7:0"]);
        let t = Tensor::from_le_bytes(DataType::Uint8, vec![1, 3], vec![3u8, 200, 1]).unwrap();
        assert_eq!(strings(&top_classes("y", &t, 1, true, None).unwrap()), ["200:1"]);
        let halves: Vec<u8> = [0.5f32, 1.5].iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect();
        let t = Tensor::from_le_bytes(DataType::Fp16, vec![2], halves).unwrap();
        assert_eq!(strings(&top_classes("y", &t, 2, false, None).unwrap()), ["1.500000:1", "0.500000:0"]);
        let t = Tensor::from_f32(vec![3], &[f32::NAN, 1.0, f32::INFINITY]).unwrap();
        assert_eq!(strings(&top_classes("y", &t, 3, false, None).unwrap()), ["inf:2", "1.000000:1", "nan:0"]);
    }

    #[test]
    fn refuses_bad_counts_and_non_numeric_outputs() {
        let signature = ModelSignature {
            inputs: vec![],
            outputs: vec![
                TensorSpec { name: "scores".into(), datatype: DataType::Fp32, dims: vec![-1, 4] },
                TensorSpec { name: "text".into(), datatype: DataType::Bytes, dims: vec![-1] },
            ],
        };
        let ask = |name: &str, p: Parameter| {
            let mut parameters = Parameters::new();
            parameters.insert(PARAMETER.into(), p);
            requested(&signature, &[RequestedOutput { name: name.into(), parameters }])
        };
        assert_eq!(ask("scores", Parameter::Int(3)).unwrap()["scores"], 3);
        assert_eq!(ask("scores", Parameter::Uint(u64::MAX)).unwrap()["scores"], usize::MAX);
        for bad in [Parameter::Int(0), Parameter::Int(-2), Parameter::Double(2.0), Parameter::String("3".into())] {
            let e = ask("scores", bad).unwrap_err();
            assert!(matches!(e, InferError::InvalidInput(_)) && e.to_string().contains("positive integer"), "{e}");
        }
        let e = ask("text", Parameter::Int(1)).unwrap_err();
        assert!(e.to_string().contains("BYTES: only numeric outputs can be classified"), "{e}");
        let plain = RequestedOutput { name: "scores".into(), parameters: Parameters::new() };
        assert!(requested(&signature, &[plain]).unwrap().is_empty());
        let strings = Tensor::new(DataType::Bytes, vec![1], TensorData::Strings(vec![Bytes::new()])).unwrap();
        assert!(top_classes("text", &strings, 1, false, None).is_err());
    }
}
