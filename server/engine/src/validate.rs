//! Checks a request against a model's signature before it reaches an instance, producing the inputs in
//! signature order. Every message names the tensor, what it has and what the model wants.

use ferroserve_runtime::{ModelSignature, Tensor};

use crate::InferError;
use crate::request::InferRequest;

/// A request that fits the model.
#[derive(Debug)]
pub struct ValidatedRequest {
    /// Inputs in signature order.
    pub inputs: Vec<Tensor>,
    /// Items in the batch (1 when the model does not batch).
    pub batch_size: u64,
    /// Indices into the signature's outputs, in the order to return them.
    pub outputs: Vec<usize>,
}

/// Validates `request` for a model with `signature` and `max_batch_size` (0 = no batching).
pub fn validate(
    model: &str,
    signature: &ModelSignature,
    max_batch_size: u32,
    request: InferRequest,
) -> Result<ValidatedRequest, InferError> {
    let mut slots: Vec<Option<Tensor>> = vec![None; signature.inputs.len()];
    let mut batch: Option<(usize, usize)> = None; // (size, index of the input that set it)
    for input in request.inputs {
        let index = signature.input_index(&input.name).ok_or_else(|| {
            let expected: Vec<&str> = signature.inputs.iter().map(|s| s.name.as_str()).collect();
            InferError::invalid(format!(
                "unexpected inference input `{}` for model `{model}`; the model's inputs are {expected:?}",
                input.name
            ))
        })?;
        if slots[index].is_some() {
            return Err(InferError::invalid(format!("input `{}` is given more than once", input.name)));
        }
        let spec = &signature.inputs[index];
        let tensor = input.tensor;
        if tensor.datatype() != spec.datatype {
            return Err(InferError::invalid(format!(
                "input `{}` has datatype {}, the model expects {}",
                spec.name,
                tensor.datatype(),
                spec.datatype
            )));
        }
        let shape = tensor.shape();
        let fits = shape.len() == spec.dims.len()
            && shape.iter().zip(&spec.dims).all(|(&got, &want)| want < 0 || got as i64 == want);
        if !fits {
            return Err(InferError::invalid(format!(
                "input `{}` has shape {:?}, the model expects {:?} (-1 = any size)",
                spec.name, shape, spec.dims
            )));
        }
        if max_batch_size > 0 {
            let size = shape[0];
            if size == 0 || size > max_batch_size as usize {
                return Err(InferError::invalid(format!(
                    "input `{}` has batch size {size}; model `{model}` takes 1 to {max_batch_size}",
                    spec.name
                )));
            }
            match &batch {
                Some((first, at)) if *first != size => {
                    return Err(InferError::invalid(format!(
                        "inputs disagree on the batch size: `{}` has {first}, `{}` has {size}",
                        signature.inputs[*at].name, spec.name
                    )));
                }
                Some(_) => {}
                None => batch = Some((size, index)),
            }
        }
        slots[index] = Some(tensor);
    }
    let missing: Vec<&str> = signature
        .inputs
        .iter()
        .zip(&slots)
        .filter(|(_, slot)| slot.is_none())
        .map(|(spec, _)| spec.name.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(InferError::invalid(format!(
            "model `{model}` expects {} inputs, {} missing: {missing:?}",
            signature.inputs.len(),
            missing.len()
        )));
    }
    let inputs: Vec<Tensor> = slots.into_iter().flatten().collect();

    let outputs = if request.outputs.is_empty() {
        (0..signature.outputs.len()).collect()
    } else {
        let mut indices = Vec::with_capacity(request.outputs.len());
        for wanted in &request.outputs {
            let index = signature.output_index(&wanted.name).ok_or_else(|| {
                let known: Vec<&str> = signature.outputs.iter().map(|s| s.name.as_str()).collect();
                InferError::invalid(format!(
                    "unexpected inference output `{}` for model `{model}`; the model's outputs are {known:?}",
                    wanted.name
                ))
            })?;
            if indices.contains(&index) {
                return Err(InferError::invalid(format!("output `{}` is requested more than once", wanted.name)));
            }
            indices.push(index);
        }
        indices
    };
    Ok(ValidatedRequest { inputs, batch_size: batch.map_or(1, |(size, _)| size as u64), outputs })
}

#[cfg(test)]
mod tests {
    use ferroserve_runtime::{DataType, TensorSpec};

    use super::*;
    use crate::request::{InferInput, Parameters, RequestedOutput};

    fn signature() -> ModelSignature {
        ModelSignature {
            inputs: vec![
                TensorSpec { name: "a".into(), datatype: DataType::Fp32, dims: vec![-1, 2] },
                TensorSpec { name: "b".into(), datatype: DataType::Fp32, dims: vec![-1, 2] },
            ],
            outputs: vec![
                TensorSpec { name: "x".into(), datatype: DataType::Fp32, dims: vec![-1, 2] },
                TensorSpec { name: "y".into(), datatype: DataType::Fp32, dims: vec![-1] },
            ],
        }
    }

    fn input(name: &str, shape: Vec<usize>) -> InferInput {
        let n: usize = shape.iter().product();
        InferInput {
            name: name.into(),
            tensor: Tensor::from_f32(shape, &vec![0.0; n]).unwrap(),
            parameters: Parameters::new(),
        }
    }

    fn request(inputs: Vec<InferInput>, outputs: &[&str]) -> InferRequest {
        InferRequest {
            model_name: "m".into(),
            model_version: None,
            id: None,
            parameters: Parameters::new(),
            inputs,
            outputs: outputs
                .iter()
                .map(|n| RequestedOutput { name: (*n).into(), parameters: Parameters::new() })
                .collect(),
        }
    }

    fn error(req: InferRequest) -> String {
        validate("m", &signature(), 8, req).unwrap_err().to_string()
    }

    #[test]
    fn orders_inputs_and_outputs() {
        let v =
            validate("m", &signature(), 8, request(vec![input("b", vec![3, 2]), input("a", vec![3, 2])], &["y", "x"]))
                .unwrap();
        assert_eq!(v.batch_size, 3);
        assert_eq!(v.outputs, vec![1, 0]);
        assert_eq!(v.inputs.len(), 2);
    }

    #[test]
    fn names_each_mistake() {
        assert!(error(request(vec![input("zz", vec![1, 2])], &[])).contains("unexpected inference input `zz`"));
        assert!(error(request(vec![input("a", vec![1, 2])], &[])).contains("1 missing: [\"b\"]"));
        assert!(error(request(vec![input("a", vec![1, 3]), input("b", vec![1, 2])], &[])).contains("shape [1, 3]"));
        assert!(error(request(vec![input("a", vec![2]), input("b", vec![1, 2])], &[])).contains("shape [2]"));
        assert!(error(request(vec![input("a", vec![9, 2]), input("b", vec![9, 2])], &[])).contains("takes 1 to 8"));
        assert!(error(request(vec![input("a", vec![1, 2]), input("b", vec![2, 2])], &[])).contains("disagree"));
        assert!(error(request(vec![input("a", vec![1, 2]), input("a", vec![1, 2])], &[])).contains("more than once"));
        assert!(error(request(vec![input("a", vec![1, 2]), input("b", vec![1, 2])], &["q"])).contains("output `q`"));
        let mut wrong_type = request(vec![input("a", vec![1, 2]), input("b", vec![1, 2])], &[]);
        wrong_type.inputs[0].tensor = Tensor::from_le_bytes(DataType::Int32, vec![1, 2], vec![0u8; 8]).unwrap();
        assert!(error(wrong_type).contains("datatype INT32, the model expects FP32"));
    }
}
