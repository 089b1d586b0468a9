//! Conversion between gRPC `ModelInferRequest`/`ModelInferResponse` and engine types.
//!
//! Inputs arrive either as typed `contents` or as `raw_input_contents` (one entry per input, in order); a
//! request that mixes the two is refused. Responses always use `raw_output_contents`, as Triton does.

use std::collections::HashMap;

use bytes::Bytes;
use ferroserve_engine::{InferError, InferInput, InferRequest, InferResponse, Parameter, Parameters, RequestedOutput};
use ferroserve_proto::infer_parameter::ParameterChoice;
use ferroserve_proto::model_infer_request::InferInputTensor;
use ferroserve_proto::model_infer_response::InferOutputTensor;
use ferroserve_proto::{InferParameter, InferTensorContents, ModelInferRequest, ModelInferResponse};
use ferroserve_runtime::{DataType, Tensor, TensorData};

use crate::json_data::concrete_shape;
use crate::raw::{Split, tensor_from_raw, tensor_to_raw};
use crate::shm::{OutputSlots, SharedMemory};

/// Converts protobuf parameters to engine parameters.
pub fn parameters_from_proto(map: HashMap<String, InferParameter>) -> Parameters {
    map.into_iter()
        .filter_map(|(k, v)| {
            let p = match v.parameter_choice? {
                ParameterChoice::BoolParam(b) => Parameter::Bool(b),
                ParameterChoice::Int64Param(i) => Parameter::Int(i),
                ParameterChoice::Uint64Param(u) => Parameter::Uint(u),
                ParameterChoice::DoubleParam(d) => Parameter::Double(d),
                ParameterChoice::StringParam(s) => Parameter::String(s),
            };
            Some((k, p))
        })
        .collect()
}

fn has_contents(contents: &Option<InferTensorContents>) -> bool {
    contents.as_ref().is_some_and(|c| {
        !(c.bool_contents.is_empty()
            && c.int_contents.is_empty()
            && c.int64_contents.is_empty()
            && c.uint_contents.is_empty()
            && c.uint64_contents.is_empty()
            && c.fp32_contents.is_empty()
            && c.fp64_contents.is_empty()
            && c.bytes_contents.is_empty())
    })
}

/// Decodes a gRPC inference request, reading inputs that name a shared-memory region from `shm`, and
/// returns it with the outputs to be written into shared memory.
///
/// `raw_input_contents` holds one entry per input that is not in shared memory, in input order (what
/// tritonclient sends and Triton reads).
pub fn decode_request(
    request: ModelInferRequest,
    shm: &SharedMemory,
) -> Result<(InferRequest, OutputSlots), InferError> {
    decode_request_charged(request, shm, &mut |_| Ok(()))
}

/// [`decode_request`], calling `charge` before a raw BYTES input is split (see [`crate::raw::Split`]).
pub fn decode_request_charged(
    request: ModelInferRequest,
    shm: &SharedMemory,
    charge: crate::raw::Charge<'_>,
) -> Result<(InferRequest, OutputSlots), InferError> {
    let raw = request.raw_input_contents;
    let use_raw = !raw.is_empty();
    // Each input's parameters are converted once; the region an input names is looked up from them before
    // any raw entry is matched to an input, since inputs in shared memory take none.
    let mut tensors = Vec::with_capacity(request.inputs.len());
    for input in request.inputs {
        let InferInputTensor { name, datatype, shape, parameters, contents } = input;
        let parameters = parameters_from_proto(parameters);
        let slot = shm.slot(&name, &parameters)?;
        tensors.push((name, datatype, shape, parameters, contents, slot));
    }
    if use_raw {
        if let Some(mixed) = tensors.iter().find(|t| has_contents(&t.4)) {
            // Triton's own words, which client scripts match on.
            return Err(InferError::invalid(format!(
                "contents field must not be specified when using raw_input_contents for '{}' for model '{}'",
                mixed.0, request.model_name
            )));
        }
        let in_request = tensors.iter().filter(|t| t.5.is_none()).count();
        if raw.len() != in_request {
            return Err(InferError::invalid(format!(
                "the request has {in_request} inputs outside shared memory but {} raw_input_contents entries; they \
                 must match one to one",
                raw.len()
            )));
        }
    }
    let mut raw = raw.into_iter();
    let mut inputs = Vec::with_capacity(tensors.len());
    for (name, datatype, shape, parameters, contents, slot) in tensors {
        let dt = DataType::parse(&datatype)
            .ok_or_else(|| InferError::invalid(format!("input `{name}` has unknown datatype `{datatype}`")))?;
        let dims = concrete_shape(&name, &shape)?;
        let tensor = match slot {
            Some(slot) => {
                if has_contents(&contents) {
                    return Err(InferError::invalid(format!(
                        "input `{name}` names a shared memory region and also carries contents; give one"
                    )));
                }
                slot.read_tensor(&name, dt, dims)?
            }
            None if use_raw => {
                let raw = raw.next().unwrap_or_default();
                let version = Some(request.model_version.as_str()).filter(|v| !v.is_empty());
                if let Some(split) = Split::of(&request.model_name, version, &name, dt, &dims, &raw) {
                    charge(split)?;
                }
                tensor_from_raw(&name, dt, dims, raw)?
            }
            None => tensor_from_contents(&name, dt, dims, contents.unwrap_or_default())?,
        };
        inputs.push(InferInput { name, tensor, parameters });
    }
    let mut shm_outputs = OutputSlots::new();
    let mut outputs = Vec::with_capacity(request.outputs.len());
    for o in request.outputs {
        let parameters = parameters_from_proto(o.parameters);
        if let Some(slot) = shm.slot(&o.name, &parameters)? {
            shm_outputs.insert(o.name.clone(), slot);
        }
        outputs.push(RequestedOutput { name: o.name, parameters });
    }
    let request = InferRequest {
        model_name: request.model_name,
        model_version: (!request.model_version.is_empty()).then_some(request.model_version),
        id: (!request.id.is_empty()).then_some(request.id),
        parameters: parameters_from_proto(request.parameters),
        inputs,
        outputs,
    };
    Ok((request, shm_outputs))
}

fn tensor_from_contents(
    name: &str,
    datatype: DataType,
    shape: Vec<usize>,
    contents: InferTensorContents,
) -> Result<Tensor, InferError> {
    let expected: usize = shape.iter().product();
    let count_error = |got: usize, field: &str| {
        InferError::invalid(format!("input `{name}` shape {shape:?} needs {expected} elements, `{field}` has {got}"))
    };
    macro_rules! pack {
        ($field:ident, $ty:ty) => {{
            let values = &contents.$field;
            if values.len() != expected {
                return Err(count_error(values.len(), stringify!($field)));
            }
            let mut out = Vec::with_capacity(expected * std::mem::size_of::<$ty>());
            for (i, &v) in values.iter().enumerate() {
                let x = <$ty>::try_from(v).map_err(|_| {
                    InferError::invalid(format!("input `{name}` element {i}: {v} is out of range for {datatype}"))
                })?;
                out.extend_from_slice(&x.to_le_bytes());
            }
            TensorData::Fixed(Bytes::from(out))
        }};
    }
    let data = match datatype {
        DataType::Bool => {
            if contents.bool_contents.len() != expected {
                return Err(count_error(contents.bool_contents.len(), "bool_contents"));
            }
            TensorData::Fixed(contents.bool_contents.iter().map(|&b| u8::from(b)).collect::<Vec<u8>>().into())
        }
        DataType::Int8 => pack!(int_contents, i8),
        DataType::Int16 => pack!(int_contents, i16),
        DataType::Int32 => pack!(int_contents, i32),
        DataType::Int64 => pack!(int64_contents, i64),
        DataType::Uint8 => pack!(uint_contents, u8),
        DataType::Uint16 => pack!(uint_contents, u16),
        DataType::Uint32 => pack!(uint_contents, u32),
        DataType::Uint64 => pack!(uint64_contents, u64),
        DataType::Fp32 => {
            if contents.fp32_contents.len() != expected {
                return Err(count_error(contents.fp32_contents.len(), "fp32_contents"));
            }
            TensorData::Fixed(contents.fp32_contents.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>().into())
        }
        DataType::Fp64 => {
            if contents.fp64_contents.len() != expected {
                return Err(count_error(contents.fp64_contents.len(), "fp64_contents"));
            }
            TensorData::Fixed(contents.fp64_contents.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>().into())
        }
        DataType::Fp16 | DataType::Bf16 => {
            return Err(InferError::invalid(format!(
                "input `{name}`: {datatype} has no typed `contents` field; send it in raw_input_contents"
            )));
        }
        DataType::Bytes => {
            if contents.bytes_contents.len() != expected {
                return Err(count_error(contents.bytes_contents.len(), "bytes_contents"));
            }
            TensorData::Strings(contents.bytes_contents.into_iter().map(Bytes::from).collect())
        }
    };
    Tensor::new(datatype, shape, data).map_err(|e| InferError::invalid(format!("input `{name}`: {e}")))
}

/// Encodes an engine response with raw output contents, writing the outputs in `shm_outputs` into their
/// shared-memory regions instead. Every output keeps a `raw_output_contents` entry (empty for one in shared
/// memory), so clients can find an output's contents by its position, as with Triton.
pub fn encode_response(response: InferResponse, shm_outputs: &OutputSlots) -> Result<ModelInferResponse, InferError> {
    let mut outputs = Vec::with_capacity(response.outputs.len());
    let mut raw = Vec::with_capacity(response.outputs.len());
    for output in response.outputs {
        let contents = tensor_to_raw(&output.tensor);
        match shm_outputs.get(&output.name) {
            Some(slot) => {
                slot.write(&output.name, &contents)?;
                raw.push(Bytes::new());
            }
            None => raw.push(contents),
        }
        outputs.push(InferOutputTensor {
            name: output.name,
            datatype: output.tensor.datatype().as_str().to_string(),
            shape: output.tensor.shape().iter().map(|&d| d as i64).collect(),
            parameters: HashMap::new(),
            contents: None,
        });
    }
    Ok(ModelInferResponse {
        model_name: response.model_name,
        model_version: response.model_version,
        id: response.id.unwrap_or_default(),
        parameters: HashMap::new(),
        outputs,
        raw_output_contents: raw,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(name: &str, datatype: &str, shape: Vec<i64>, contents: Option<InferTensorContents>) -> InferInputTensor {
        InferInputTensor { name: name.into(), datatype: datatype.into(), shape, parameters: HashMap::new(), contents }
    }

    #[test]
    fn decodes_typed_and_raw() {
        let typed = ModelInferRequest {
            model_name: "m".into(),
            inputs: vec![input(
                "a",
                "INT16",
                vec![2],
                Some(InferTensorContents { int_contents: vec![-2, 300], ..Default::default() }),
            )],
            ..Default::default()
        };
        let req = decode_request(typed, &SharedMemory::default()).unwrap().0;
        assert_eq!(req.inputs[0].tensor.as_fixed().unwrap().as_ref(), &[0xfe, 0xff, 0x2c, 0x01]);
        assert_eq!(req.model_version, None);

        let raw = ModelInferRequest {
            model_name: "m".into(),
            inputs: vec![input("a", "FP32", vec![1], None)],
            raw_input_contents: vec![Bytes::from_static(&[0, 0, 128, 63])],
            ..Default::default()
        };
        assert_eq!(
            decode_request(raw, &SharedMemory::default()).unwrap().0.inputs[0].tensor.to_f32_vec().unwrap(),
            vec![1.0]
        );
    }

    #[test]
    fn rejects_mixed_and_out_of_range() {
        let mixed = ModelInferRequest {
            inputs: vec![
                input(
                    "a",
                    "FP32",
                    vec![1],
                    Some(InferTensorContents { fp32_contents: vec![1.0], ..Default::default() }),
                ),
                input("b", "FP32", vec![1], None),
            ],
            raw_input_contents: vec![Bytes::from_static(&[0, 0, 0, 0])],
            ..Default::default()
        };
        assert!(
            decode_request(mixed, &SharedMemory::default())
                .unwrap_err()
                .to_string()
                .contains("must not be specified when using raw_input_contents")
        );
        let range = ModelInferRequest {
            inputs: vec![input(
                "a",
                "INT8",
                vec![1],
                Some(InferTensorContents { int_contents: vec![200], ..Default::default() }),
            )],
            ..Default::default()
        };
        assert!(
            decode_request(range, &SharedMemory::default()).unwrap_err().to_string().contains("out of range for INT8")
        );
        let count = ModelInferRequest {
            inputs: vec![input(
                "a",
                "FP32",
                vec![2],
                Some(InferTensorContents { fp32_contents: vec![1.0], ..Default::default() }),
            )],
            ..Default::default()
        };
        assert!(decode_request(count, &SharedMemory::default()).unwrap_err().to_string().contains("needs 2 elements"));
    }
}
