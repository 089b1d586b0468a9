//! KServe v2 REST inference bodies: JSON, and the binary tensor data extension in both directions.
//!
//! A request body is a JSON header, optionally followed by raw tensors when `Inference-Header-Content-Length`
//! says where the JSON ends. Inputs with a `binary_data_size` parameter take their bytes from the tail in
//! input order. The response uses binary for an output when the request asked (`binary_data` on the output,
//! or `binary_data_output` on the request) and always for FP16/BF16, which have no JSON form.

use std::collections::{BTreeMap, HashMap};

use bytes::{BufMut, Bytes, BytesMut};
use ferroserve_engine::{InferError, InferInput, InferRequest, InferResponse, Parameter, Parameters, RequestedOutput};
use ferroserve_runtime::{DataType, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::limits;
use crate::json_data::{
    DataPacker, NonFiniteTokens, PackAllowance, TokenDataView, concrete_shape, tensor_from_json_text,
};
use crate::raw::{Split, tensor_from_raw, tensor_to_raw};
use crate::shm::{OutputSlots, SharedMemory};

/// The header that splits the JSON part from the binary part of a body.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

struct JsonRequest<'a> {
    id: Option<String>,
    parameters: Option<serde_json::Map<String, serde_json::Value>>,
    inputs: Vec<JsonInput<'a>>,
    outputs: Option<Vec<JsonRequestedOutput>>,
}

/// Reads a request whose inputs share one [`PackAllowance`]: what the data packed in the one pass takes from it
/// is no longer there for the inputs after them.
#[derive(Clone, Copy)]
struct RequestSeed<'b>(&'b PackAllowance);

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum RequestField {
    Id,
    Parameters,
    Inputs,
    Outputs,
    #[serde(other)]
    Other,
}

/// A request's `outputs`, read through [`limits::outputs`].
#[derive(Deserialize)]
#[serde(transparent)]
struct RequestedOutputs(#[serde(deserialize_with = "limits::outputs")] Option<Vec<JsonRequestedOutput>>);

impl<'de> serde::de::DeserializeSeed<'de> for RequestSeed<'_> {
    type Value = JsonRequest<'de>;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<JsonRequest<'de>, D::Error> {
        const FIELDS: &[&str] = &["id", "parameters", "inputs", "outputs"];
        deserializer.deserialize_struct("JsonRequest", FIELDS, self)
    }
}

impl<'de> serde::de::Visitor<'de> for RequestSeed<'_> {
    type Value = JsonRequest<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an inference request object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<JsonRequest<'de>, A::Error> {
        use serde::de::Error;
        let (mut id, mut parameters, mut inputs, mut outputs) = (None, None, None, None);
        while let Some(field) = map.next_key()? {
            match field {
                RequestField::Id => once(&mut id, "id", map.next_value::<Option<String>>()?)?,
                RequestField::Parameters => {
                    once(&mut parameters, "parameters", map.next_value::<limits::Parameters>()?.0)?
                }
                RequestField::Inputs => {
                    once(&mut inputs, "inputs", map.next_value_seed(limits::inputs_with(InputSeed(self.0)))?)?
                }
                RequestField::Outputs => once(&mut outputs, "outputs", map.next_value::<RequestedOutputs>()?.0)?,
                RequestField::Other => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(JsonRequest {
            id: id.flatten(),
            parameters: parameters.flatten(),
            inputs: inputs.ok_or_else(|| A::Error::missing_field("inputs"))?,
            outputs: outputs.flatten(),
        })
    }
}

/// Sets a field read once; a repeated key is an error, as serde's derive reports it.
fn once<T, E: serde::de::Error>(slot: &mut Option<T>, field: &'static str, value: T) -> Result<(), E> {
    if slot.is_some() {
        return Err(E::duplicate_field(field));
    }
    *slot = Some(value);
    Ok(())
}

struct JsonInput<'a> {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    parameters: Option<serde_json::Map<String, serde_json::Value>>,
    data: Option<JsonData<'a>>,
}

/// An input's `data`. Packed into the tensor in the one pass that parses the request when `name`, `shape` and
/// `datatype` came before it (as tritonclient, perf_analyzer and the KServe SDK write them): reading it as text
/// first and packing it afterwards scans it twice, which cost 10 % of HTTP JSON throughput on a 16-value tensor.
/// Otherwise (keys sorted, `data` first, as Go maps and `serde_json::json!` write them) its text, packed once the
/// datatype and shape are known.
enum JsonData<'a> {
    Packed(Result<Tensor, InferError>),
    Text(&'a serde_json::value::RawValue),
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum InputField {
    Name,
    Shape,
    Datatype,
    Parameters,
    Data,
    #[serde(other)]
    Other,
}

/// Reads one input, packing its data with what is left of the request's allowance.
#[derive(Clone, Copy)]
struct InputSeed<'b>(&'b PackAllowance);

impl<'de> serde::de::DeserializeSeed<'de> for InputSeed<'_> {
    type Value = JsonInput<'de>;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<JsonInput<'de>, D::Error> {
        const FIELDS: &[&str] = &["name", "shape", "datatype", "parameters", "data"];
        deserializer.deserialize_struct("JsonInput", FIELDS, self)
    }
}

impl<'de> serde::de::Visitor<'de> for InputSeed<'_> {
    type Value = JsonInput<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an input object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<JsonInput<'de>, A::Error> {
        use serde::de::Error;
        let (mut name, mut shape, mut datatype, mut parameters) = (None, None, None, None);
        let mut data = None;
        while let Some(field) = map.next_key()? {
            match field {
                InputField::Name => once(&mut name, "name", map.next_value::<String>()?)?,
                InputField::Shape => once(&mut shape, "shape", map.next_value::<limits::Shape>()?.0)?,
                InputField::Datatype => once(&mut datatype, "datatype", map.next_value::<String>()?)?,
                InputField::Parameters => {
                    once(&mut parameters, "parameters", map.next_value::<limits::Parameters>()?.0)?
                }
                InputField::Data => {
                    let packer = packer_for(name.as_deref(), shape.as_deref(), datatype.as_deref(), self.0);
                    let value = match packer {
                        Some(mut packer) => match map.next_value_seed(limits::Optional(packer.seed()))? {
                            Some(()) => Some(JsonData::Packed(packer.finish())),
                            // `"data": null` (beside binary or shared-memory data) packs nothing, and takes nothing.
                            None => {
                                self.0.give_back(packer.claimed());
                                None
                            }
                        },
                        None => map.next_value::<Option<&'de serde_json::value::RawValue>>()?.map(JsonData::Text),
                    };
                    once(&mut data, "data", value)?;
                }
                InputField::Other => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(JsonInput {
            name: name.ok_or_else(|| A::Error::missing_field("name"))?,
            shape: shape.ok_or_else(|| A::Error::missing_field("shape"))?,
            datatype: datatype.ok_or_else(|| A::Error::missing_field("datatype"))?,
            parameters: parameters.flatten(),
            data: data.flatten(),
        })
    }
}

/// A packer for an input's `data` when what it needs came first and is valid; `None` leaves the data as text,
/// for the checks in [`decode_request_charged`] to report in their order (a claim past the allowance takes
/// nothing from it, and is refused there in its turn).
fn packer_for<'a>(
    name: Option<&'a str>,
    shape: Option<&[i64]>,
    datatype: Option<&str>,
    allowance: &PackAllowance,
) -> Option<DataPacker<'a>> {
    let name = name?;
    let datatype = DataType::parse(datatype?)?;
    // BYTES elements are handles in a vector that would grow by copying here; their text is counted first
    // instead, so the vector is reserved once (its size is what the request is charged for).
    if datatype == DataType::Bytes {
        return None;
    }
    let shape = concrete_shape(name, shape?).ok()?;
    // A value takes at least one character and a separator; room for more is made as they arrive.
    DataPacker::new(name, datatype, shape, ONE_PASS_ROOM, true, allowance).ok()
}

/// The elements a one-pass packer reserves before it has seen any (a shape's claim is not trusted with more).
const ONE_PASS_ROOM: usize = 256;

#[derive(Deserialize)]
struct JsonRequestedOutput {
    name: String,
    #[serde(default, deserialize_with = "limits::parameters")]
    parameters: Option<serde_json::Map<String, serde_json::Value>>,
}

/// How the response should encode each output, decided from the request.
#[derive(Debug, Clone, Default)]
pub struct ResponseFormat {
    /// `binary_data_output: true` on the request.
    all_binary: bool,
    /// Per requested output: `binary_data` if stated.
    per_output: HashMap<String, bool>,
    /// Outputs the client asked to be written into a shared-memory region instead of the body.
    shm_outputs: OutputSlots,
}

impl ResponseFormat {
    /// The outputs to be written into shared memory instead of the body.
    pub fn shm_outputs(&self) -> &OutputSlots {
        &self.shm_outputs
    }

    /// Every output in binary (what `binary_data_output: true` asks for).
    pub fn all_binary() -> Self {
        ResponseFormat { all_binary: true, ..ResponseFormat::default() }
    }

    fn binary(&self, name: &str, datatype: DataType) -> bool {
        !datatype.has_json_form() || self.per_output.get(name).copied().unwrap_or(self.all_binary)
    }
}

/// Converts JSON parameters to engine parameters.
pub fn parameters_from_json(map: Option<serde_json::Map<String, serde_json::Value>>) -> Result<Parameters, InferError> {
    let mut out = BTreeMap::new();
    for (key, value) in map.unwrap_or_default() {
        let p = match value {
            serde_json::Value::Bool(b) => Parameter::Bool(b),
            serde_json::Value::String(s) => Parameter::String(s),
            serde_json::Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Parameter::Int(i)
                } else if let Some(u) = n.as_u64() {
                    Parameter::Uint(u)
                } else {
                    Parameter::Double(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            other => {
                return Err(InferError::invalid(format!(
                    "parameter `{key}` must be a bool, number or string, got {other}"
                )));
            }
        };
        out.insert(key, p);
    }
    Ok(out)
}

/// Splits a body into its JSON header and binary tail using the header-length value, if any.
pub fn split_body(header_length: Option<&str>, body: Bytes) -> Result<(Bytes, Bytes), InferError> {
    match header_length {
        None => Ok((body, Bytes::new())),
        Some(value) => {
            let n: usize = value.trim().parse().map_err(|_| {
                InferError::invalid(format!("Inference-Header-Content-Length `{value}` is not a byte count"))
            })?;
            if n > body.len() {
                return Err(InferError::invalid(format!(
                    "Inference-Header-Content-Length is {n} but the body has only {} bytes",
                    body.len()
                )));
            }
            let tail = body.slice(n..);
            Ok((body.slice(..n), tail))
        }
    }
}

/// Decodes a v2 inference request body. Inputs that name a shared-memory region are read from `shm`.
pub fn decode_request(
    model_name: &str,
    model_version: Option<&str>,
    json: &[u8],
    binary: Bytes,
    shm: &SharedMemory,
) -> Result<(InferRequest, ResponseFormat), InferError> {
    decode_request_charged(model_name, model_version, json, binary, shm, &mut |_| Ok(()))
}

/// [`decode_request`], calling `charge` before a binary BYTES input is split (see [`crate::raw::Split`]): a
/// body of empty strings becomes 8 times its size in handles, which the server refuses when the model cannot
/// take that many elements, and otherwise charges to its memory budget before allocating them.
pub fn decode_request_charged(
    model_name: &str,
    model_version: Option<&str>,
    json: &[u8],
    mut binary: Bytes,
    shm: &SharedMemory,
    charge: crate::raw::Charge<'_>,
) -> Result<(InferRequest, ResponseFormat), InferError> {
    // What decoding may build beside the body (the JSON and binary parts are views of one buffer): the rewrite
    // of bare tokens first, then the tensors packed from JSON, all inputs together.
    let body_len = json.len() + binary.len();
    // Python clients write NaN and ±Infinity as bare tokens; they are read as those floats.
    let room = ferroserve_proto::limits::decode_growth_allowed(body_len);
    let rewritten = crate::json_data::non_finite_tokens_as_markers(json, room)?;
    let allowance = PackAllowance::for_body(body_len + rewritten.as_ref().map_or(0, Vec::len));
    let mut parser = serde_json::Deserializer::from_slice(rewritten.as_deref().unwrap_or(json));
    let request = serde::de::DeserializeSeed::deserialize(RequestSeed(&allowance), &mut parser)
        .and_then(|request| parser.end().map(|()| request))
        .map_err(|e| InferError::invalid(format!("malformed inference request JSON: {e}")))?;
    let parameters = parameters_from_json(request.parameters)?;
    let all_binary = match parameters.get("binary_data_output") {
        None => false,
        Some(b) => b.as_bool().ok_or_else(|| InferError::invalid("binary_data_output must be true or false"))?,
    };
    let mut format = ResponseFormat { all_binary, per_output: HashMap::new(), shm_outputs: HashMap::new() };
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for input in request.inputs {
        let datatype = DataType::parse(&input.datatype).ok_or_else(|| {
            InferError::invalid(format!("input `{}` has unknown datatype `{}`", input.name, input.datatype))
        })?;
        let shape = concrete_shape(&input.name, &input.shape)?;
        let params = parameters_from_json(input.parameters)?;
        let slot = shm.slot(&input.name, &params)?;
        let binary_size = match params.get("binary_data_size") {
            None => None,
            Some(p) => Some(p.as_u64().ok_or_else(|| {
                InferError::invalid(format!("input `{}`: binary_data_size must be a non-negative integer", input.name))
            })?),
        };
        let tensor = match (slot, binary_size, input.data) {
            (Some(slot), None, None) => slot.read_tensor(&input.name, datatype, shape)?,
            (Some(_), _, _) => {
                return Err(InferError::invalid(format!(
                    "input `{}` names a shared memory region and also carries data; give one",
                    input.name
                )));
            }
            (None, Some(_), Some(_)) => {
                return Err(InferError::invalid(format!(
                    "input `{}` has both `data` and binary_data_size; give one",
                    input.name
                )));
            }
            (None, Some(size), None) => {
                let size = usize::try_from(size).unwrap_or(usize::MAX);
                if size > binary.len() {
                    return Err(InferError::invalid(format!(
                        "input `{}` has binary_data_size {size} but only {} bytes of binary data remain",
                        input.name,
                        binary.len()
                    )));
                }
                let raw = binary.split_to(size);
                if let Some(split) = Split::of(model_name, model_version, &input.name, datatype, &shape, &raw) {
                    charge(split)?;
                }
                tensor_from_raw(&input.name, datatype, shape, raw)?
            }
            (None, None, Some(JsonData::Packed(tensor))) => tensor?,
            (None, None, Some(JsonData::Text(text))) => {
                tensor_from_json_text(&input.name, datatype, shape, text.get(), true, &allowance)?
            }
            (None, None, None) => {
                return Err(InferError::invalid(format!(
                    "input `{}` has neither `data` nor binary_data_size",
                    input.name
                )));
            }
        };
        inputs.push(InferInput { name: input.name, tensor, parameters: params });
    }
    if !binary.is_empty() {
        return Err(InferError::invalid(format!(
            "{} bytes of binary data are not claimed by any input's binary_data_size",
            binary.len()
        )));
    }
    let mut outputs = Vec::new();
    for output in request.outputs.unwrap_or_default() {
        let params = parameters_from_json(output.parameters)?;
        if let Some(slot) = shm.slot(&output.name, &params)? {
            format.shm_outputs.insert(output.name.clone(), slot);
        }
        if let Some(b) = params.get("binary_data") {
            let b = b.as_bool().ok_or_else(|| {
                InferError::invalid(format!("output `{}`: binary_data must be true or false", output.name))
            })?;
            format.per_output.insert(output.name.clone(), b);
        }
        outputs.push(RequestedOutput { name: output.name, parameters: params });
    }
    let request = InferRequest {
        model_name: model_name.to_string(),
        model_version: model_version.map(str::to_owned),
        id: request.id,
        parameters,
        inputs,
        outputs,
    };
    Ok((request, format))
}

#[derive(Serialize)]
struct JsonResponse<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: Vec<JsonOutput<'a>>,
}

#[derive(Serialize)]
struct JsonOutput<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [usize],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<TokenDataView<'a>>,
}

/// An encoded response body: JSON alone, or JSON plus binary with the JSON length.
#[derive(Debug)]
pub struct EncodedResponse {
    /// The full body.
    pub body: Bytes,
    /// `Some(json length)` when binary data follows the JSON.
    pub json_length: Option<usize>,
}

/// Whether every element of a BYTES tensor is UTF-8 text (other types are always representable).
fn is_utf8_text(tensor: &Tensor) -> bool {
    match tensor.data() {
        TensorData::Strings(items) => items.iter().all(|s| std::str::from_utf8(s).is_ok()),
        TensorData::Fixed(_) => true,
    }
}

/// How one output of an answer goes out.
pub enum OutputForm {
    /// Its elements in the JSON `data` array.
    Json,
    /// Its bytes after the JSON (`binary_data_size`).
    Binary(Bytes),
    /// Written into a shared-memory region: name, datatype and shape only, as Triton answers (its C++ client,
    /// perf_analyzer's, reads any output `parameters` for `binary_data_size`).
    Elsewhere,
}

/// Decides how each output of `response` goes out, in order, and writes those bound for shared memory.
pub fn output_forms(response: &InferResponse, format: &ResponseFormat) -> Result<Vec<OutputForm>, InferError> {
    let mut forms = Vec::with_capacity(response.outputs.len());
    for output in &response.outputs {
        let tensor = &output.tensor;
        // BYTES that are not UTF-8 text cannot be a JSON string without loss: such an output goes in binary
        // (which Triton's clients and the KServe SDK read whatever was asked), never mangled.
        let binary = format.binary(&output.name, tensor.datatype()) || !is_utf8_text(tensor);
        forms.push(if let Some(slot) = format.shm_outputs.get(&output.name) {
            slot.write(&output.name, &tensor_to_raw(tensor))?;
            OutputForm::Elsewhere
        } else if binary {
            OutputForm::Binary(tensor_to_raw(tensor))
        } else {
            OutputForm::Json
        });
    }
    Ok(forms)
}

/// At most how many bytes the answer's body takes: its JSON data (6 characters a string byte, 25 a number) and
/// its binary parts; what decides whether it is written whole or in chunks.
pub fn answer_size_bound(response: &InferResponse, forms: &[OutputForm]) -> usize {
    let data = response.outputs.iter().zip(forms).map(|(output, form)| match (form, output.tensor.data()) {
        (OutputForm::Json, TensorData::Strings(items)) => items.iter().map(|s| s.len() * 6 + 3).sum(),
        (OutputForm::Json, TensorData::Fixed(_)) => output.tensor.element_count() * 25,
        (OutputForm::Binary(bytes), _) => bytes.len(),
        (OutputForm::Elsewhere, _) => 0,
    });
    data.fold(256, usize::saturating_add)
}

/// Encodes a v2 inference response.
pub fn encode_response(response: &InferResponse, format: &ResponseFormat) -> Result<EncodedResponse, InferError> {
    encode_whole(response, output_forms(response, format)?)
}

/// Encodes a v2 inference response whose outputs go out as `forms` say, into one buffer.
pub fn encode_whole(response: &InferResponse, forms: Vec<OutputForm>) -> Result<EncodedResponse, InferError> {
    let mut binary_parts = Vec::new();
    let mut outputs = Vec::with_capacity(response.outputs.len());
    for (output, form) in response.outputs.iter().zip(forms) {
        let tensor = &output.tensor;
        let (parameters, data) = match form {
            OutputForm::Elsewhere => (None, None),
            OutputForm::Binary(raw) => {
                let mut p = serde_json::Map::new();
                p.insert("binary_data_size".into(), raw.len().into());
                binary_parts.push(raw);
                (Some(p), None)
            }
            OutputForm::Json => (None, Some(TokenDataView(tensor))),
        };
        outputs.push(JsonOutput {
            name: &output.name,
            datatype: tensor.datatype().as_str(),
            shape: tensor.shape(),
            parameters,
            data,
        });
    }
    let json = JsonResponse {
        model_name: &response.model_name,
        model_version: &response.model_version,
        id: response.id.as_deref(),
        outputs,
    };
    let binary_len: usize = binary_parts.iter().map(Bytes::len).sum();
    let mut body = BytesMut::with_capacity(256 + binary_len);
    // NaN and ±Infinity go out as bare tokens, as Triton writes them and Python's json reads them.
    let mut serializer = serde_json::Serializer::with_formatter((&mut body).writer(), NonFiniteTokens);
    serde::Serialize::serialize(&json, &mut serializer)
        .map_err(|e| InferError::Internal(format!("cannot encode the response: {e}")))?;
    if binary_parts.is_empty() {
        return Ok(EncodedResponse { body: body.freeze(), json_length: None });
    }
    let json_length = body.len();
    for part in binary_parts {
        body.put_slice(&part);
    }
    Ok(EncodedResponse { body: body.freeze(), json_length: Some(json_length) })
}

#[cfg(test)]
mod tests {
    use ferroserve_engine::InferOutput;
    use ferroserve_runtime::Tensor;

    use super::*;

    #[test]
    fn bytes_that_are_not_utf8_go_out_binary_and_non_finite_floats_as_tokens() {
        let strings = Tensor::new(
            DataType::Bytes,
            vec![2],
            TensorData::Strings(vec![Bytes::from_static(b"\xff\xfe"), Bytes::from_static(b"ok")]),
        )
        .unwrap();
        let text = Tensor::new(DataType::Bytes, vec![1], TensorData::Strings(vec![Bytes::from_static(b"ok")])).unwrap();
        let floats = Tensor::new(
            DataType::Fp64,
            vec![2],
            TensorData::Fixed(Bytes::from([f64::NAN, -1.5].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())),
        )
        .unwrap();
        let response = InferResponse {
            model_name: "m".into(),
            model_version: "1".into(),
            id: None,
            outputs: vec![
                InferOutput { name: "raw".into(), tensor: strings },
                InferOutput { name: "text".into(), tensor: text },
                InferOutput { name: "f".into(), tensor: floats },
            ],
        };
        let encoded = encode_response(&response, &ResponseFormat::default()).unwrap();
        let json_length = encoded.json_length.expect("the non-UTF-8 output goes in binary");
        let head = std::str::from_utf8(&encoded.body[..json_length]).unwrap();
        assert!(
            head.contains(r#""name":"raw","datatype":"BYTES","shape":[2],"parameters":{"binary_data_size":12}"#),
            "{head}"
        );
        assert!(head.contains(r#""name":"text","datatype":"BYTES","shape":[1],"data":["ok"]"#), "{head}");
        assert!(head.contains(r#""data":[NaN,-1.5]"#), "{head}");
        assert_eq!(&encoded.body[json_length..], b"\x02\0\0\0\xff\xfe\x02\0\0\0ok");
    }

    #[test]
    fn decodes_json_and_binary_inputs() {
        let json = br#"{"id":"7","inputs":[
            {"name":"a","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}},
            {"name":"b","shape":[1,2],"datatype":"INT32","data":[[1,2]]}],
            "outputs":[{"name":"y","parameters":{"binary_data":true}}]}"#;
        let mut body = BytesMut::from(&json[..]);
        body.put_f32_le(1.0);
        body.put_f32_le(2.0);
        let len = json.len().to_string();
        let (head, tail) = split_body(Some(&len), body.freeze()).unwrap();
        let (req, format) = decode_request("m", Some("1"), &head, tail, &SharedMemory::default()).unwrap();
        assert_eq!(req.id.as_deref(), Some("7"));
        assert_eq!(req.inputs[0].tensor.to_f32_vec().unwrap(), vec![1.0, 2.0]);
        assert_eq!(req.inputs[1].tensor.shape(), &[1, 2]);
        assert!(format.binary("y", DataType::Fp32));
        assert!(!format.binary("z", DataType::Fp32));
        assert!(format.binary("z", DataType::Fp16));
    }

    #[test]
    fn rejects_malformed_bodies() {
        let err = |json: &str, tail: &'static [u8]| {
            decode_request("m", None, json.as_bytes(), Bytes::from_static(tail), &SharedMemory::default())
                .unwrap_err()
                .to_string()
        };
        assert!(err("{", b"").contains("malformed"));
        assert!(
            err(r#"{"inputs":[{"name":"a","shape":[1],"datatype":"F32","data":[1]}]}"#, b"")
                .contains("unknown datatype")
        );
        assert!(
            err(r#"{"inputs":[{"name":"a","shape":[-1],"datatype":"FP32","data":[1]}]}"#, b"").contains("negative")
        );
        assert!(err(r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32"}]}"#, b"").contains("neither"));
        let short = r#"{"inputs":[{"name":"a","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}}]}"#;
        assert!(err(short, b"1234").contains("only 4 bytes"));
        let extra = r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","data":[1]}]}"#;
        assert!(err(extra, b"xx").contains("not claimed"));
        assert!(split_body(Some("99"), Bytes::from_static(b"{}")).is_err());
        assert!(split_body(Some("x"), Bytes::from_static(b"{}")).is_err());
    }

    #[test]
    fn encodes_mixed_json_and_binary() {
        let response = InferResponse {
            model_name: "m".into(),
            model_version: "1".into(),
            id: None,
            outputs: vec![
                InferOutput { name: "j".into(), tensor: Tensor::from_f32(vec![2], &[1.0, 2.5]).unwrap() },
                InferOutput { name: "b".into(), tensor: Tensor::from_f32(vec![1], &[3.0]).unwrap() },
            ],
        };
        let format = ResponseFormat {
            all_binary: false,
            per_output: HashMap::from([("b".to_string(), true)]),
            ..ResponseFormat::default()
        };
        let encoded = encode_response(&response, &format).unwrap();
        let n = encoded.json_length.unwrap();
        let head: serde_json::Value = serde_json::from_slice(&encoded.body[..n]).unwrap();
        assert_eq!(head["outputs"][0]["data"], serde_json::json!([1.0, 2.5]));
        assert_eq!(head["outputs"][1]["parameters"]["binary_data_size"], 4);
        assert_eq!(&encoded.body[n..], &3.0f32.to_le_bytes());
    }

    #[test]
    fn the_request_object_reads_as_the_derived_one_did() {
        let decode = |json: &str| {
            decode_request("m", None, json.as_bytes(), Bytes::new(), &SharedMemory::default()).map(|(r, _)| r)
        };
        let input = r#"{"name":"x","shape":[1],"datatype":"FP32","data":[1]}"#;
        let request = decode(&format!(
            r#"{{"id":"a","future":{{"x":[1]}},"parameters":{{"p":1}},"inputs":[{input}],"outputs":null}}"#
        ))
        .unwrap();
        assert_eq!((request.id.as_deref(), request.inputs.len(), request.outputs.len()), (Some("a"), 1, 0));
        assert!(decode(&format!(r#"{{"id":null,"inputs":[{input}]}}"#)).unwrap().id.is_none());
        for (json, error) in [
            (r#"{"id":"a"}"#.to_string(), "missing field `inputs`"),
            (format!(r#"{{"inputs":[{input}],"inputs":[{input}]}}"#), "duplicate field `inputs`"),
            (format!(r#"{{"inputs":[{input}]}} x"#), "trailing characters"),
            (r#"["a", null, []]"#.to_string(), "an inference request object"),
        ] {
            let e = decode(&json).unwrap_err().to_string();
            assert!(e.contains("malformed inference request JSON") && e.contains(error), "{json}: {e}");
        }
    }

    #[test]
    fn data_after_its_signature_is_packed_in_the_one_pass_and_before_it_read_as_text() {
        let allowance = PackAllowance::for_body(0);
        let read = |json: &str| -> Result<JsonInput<'static>, serde_json::Error> {
            let mut parser = serde_json::Deserializer::from_str(Box::leak(json.to_string().into_boxed_str()));
            serde::de::DeserializeSeed::deserialize(InputSeed(&allowance), &mut parser)
        };
        let input = |json: &str| read(json).unwrap();
        let packed = input(r#"{"name":"x","shape":[2],"datatype":"INT32","data":[[1],[2]]}"#);
        let Some(JsonData::Packed(Ok(tensor))) = packed.data else { panic!("not packed in the one pass") };
        assert_eq!(&tensor.as_fixed().unwrap()[..], &[1u8, 0, 0, 0, 2, 0, 0, 0]);
        let refused = input(r#"{"name":"x","shape":[2],"datatype":"INT8","data":[1, 300, {"a": [1]}]}"#);
        let Some(JsonData::Packed(Err(e))) = refused.data else { panic!("not packed in the one pass") };
        assert!(e.to_string().contains("element 1: 300 is not a valid INT8 value"), "{e}");
        let sorted = input(r#"{"data":[1,2],"datatype":"INT32","name":"x","shape":[2]}"#);
        assert!(matches!(sorted.data, Some(JsonData::Text(t)) if t.get() == "[1,2]"));
        // What the one pass cannot pack yet (an unknown datatype, a negative dim, FP16) is kept as text.
        for json in [
            r#"{"name":"x","shape":[2],"datatype":"F32","data":[1,2]}"#,
            r#"{"name":"x","shape":[-2],"datatype":"FP32","data":[1,2]}"#,
            r#"{"name":"x","shape":[2],"datatype":"FP16","data":[1,2]}"#,
        ] {
            assert!(matches!(input(json).data, Some(JsonData::Text(_))), "{json}");
        }
        assert!(input(r#"{"name":"x","shape":[2],"datatype":"FP32","data":null}"#).data.is_none());
        // A shape past what is left of the request's allowance is kept as text (refused at its turn), and takes
        // nothing from it: the same claim fits once.
        let big = format!(r#"{{"name":"x","shape":[{}],"datatype":"FP64","data":[1]}}"#, 13 << 20);
        assert!(matches!(input(&big).data, Some(JsonData::Packed(Err(_)))));
        assert!(matches!(input(&big).data, Some(JsonData::Text(_))));
        // `"data": null` takes nothing: the whole allowance is there for a claim of all of it after one.
        let fresh = PackAllowance::for_body(0);
        let read_fresh = |json: &str| -> JsonInput<'static> {
            let mut parser = serde_json::Deserializer::from_str(Box::leak(json.to_string().into_boxed_str()));
            serde::de::DeserializeSeed::deserialize(InputSeed(&fresh), &mut parser).unwrap()
        };
        let all = format!(r#"{{"name":"x","shape":[{}],"datatype":"FP64","data":"#, 24 << 20);
        assert!(read_fresh(&format!("{all}null}}")).data.is_none());
        assert!(matches!(read_fresh(&format!("{all}[1]}}")).data, Some(JsonData::Packed(Err(_)))));
        for duplicate in [
            r#"{"name":"x","shape":[1],"datatype":"FP32","data":[1],"data":[2]}"#,
            r#"{"name":"x","name":"y","shape":[1],"datatype":"FP32"}"#,
        ] {
            let e = read(duplicate).err().unwrap();
            assert!(e.to_string().contains("duplicate field"), "{e}");
        }
    }
}
