//! The KServe v1 protocol: `GET /v1/models`, `GET /v1/models/{m}`, `POST /v1/models/{m}:predict`.
//!
//! `instances` (row form) and `inputs` (columnar form) both map onto the model's inputs; the data type comes
//! from the model, the shape from the nesting of the JSON arrays. `predictions` are rows of the single output,
//! or one object per row when the model has several outputs.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ferroserve_engine::{InferError, InferInput, InferRequest, Parameters};
use ferroserve_runtime::{DataType, ModelSignature, Tensor, TensorSpec};
use serde_json::{Value, json};

use super::error::ApiError;
use crate::json_data::{
    DataView, FlatData, JsonScalar, PackAllowance, narrow_floats, shape_of_json_text, tensor_from_json,
    tensor_from_json_text,
};
use crate::state::AppState;

/// `GET /v1/models`.
pub(crate) async fn list(State(state): State<AppState>) -> Json<Value> {
    let names: Vec<String> = state.manager.wanted_entries().iter().map(|e| e.name.clone()).collect();
    Json(json!({"models": names}))
}

/// `GET /v1/models/{m}`.
pub(crate) async fn status(State(state): State<AppState>, Path(model): Path<String>) -> Result<Response, ApiError> {
    let ready = state.manager.model_ready(&model, None)?;
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    Ok((code, Json(json!({"name": model, "ready": ready}))).into_response())
}

/// `POST /v1/models/{m}:predict` (routed as `/v1/models/{rest}`).
pub(crate) async fn post(
    State(state): State<AppState>,
    Path(rest): Path<String>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let Some(model) = rest.strip_suffix(":predict") else {
        if let Some(model) = rest.strip_suffix(":explain") {
            // As KServe answers a model without an explainer: the model is there, the verb is not.
            state.manager.version(model, None)?;
            return Err(InferError::Unsupported(format!(
                "model '{model}' has no explainer: :explain is not supported"
            ))
            .into());
        }
        return Err(InferError::NotFound(format!("no such endpoint: POST /v1/models/{rest}")).into());
    };
    let version = state.manager.version(model, None)?;
    if body.len() > state.max_json_bytes {
        return Err(InferError::invalid(format!(
            "the request has {} bytes of JSON, more than the limit of {} (--max-json-bytes)",
            body.len(),
            state.max_json_bytes
        ))
        .into());
    }
    let inputs = match tensors_from_text(&version.signature, &body)? {
        Some(inputs) => inputs,
        None => {
            // Not JSON: said so first (a pass that builds nothing), rather than charged for a tree.
            serde_json::from_slice::<serde::de::IgnoredAny>(&body)
                .map_err(|e| InferError::invalid(format!("malformed predict JSON: {e}")))?;
            // A JSON tree takes 33 to 41 times its text (see `TREE_EXPANSION`);
            // charged beside what admission charged for the body, so it is refused when it cannot fit.
            let held = crate::admission::http_cost(body.len(), body.len());
            let tree = body.len().saturating_mul(TREE_EXPANSION);
            let growth = ferroserve_proto::limits::decode_growth_allowed(body.len());
            if (held + tree).saturating_sub(body.len()) > growth {
                return Err(InferError::invalid(format!(
                    "the predict body would take about {} bytes as a JSON tree, more than {} MiB beyond its {} bytes; \
                     send a one-input model's rows as an array of arrays, or use the v2 protocol",
                    held + tree,
                    growth >> 20,
                    body.len()
                ))
                .into());
            }
            let _tree = state.budget.reserve_beside(held, tree)?;
            let body: Value = serde_json::from_slice(&body)
                .map_err(|e| InferError::invalid(format!("malformed predict JSON: {e}")))?;
            inputs_from_body(&version.signature, body)?
        }
    };
    let request = InferRequest {
        model_name: model.to_string(),
        model_version: None,
        id: None,
        parameters: Parameters::new(),
        inputs,
        outputs: Vec::new(),
    };
    // Inputs are read with the newest version's signature; the model's traffic policy then picks the version.
    let keys = state.manager.route_keys(model, |h| headers.get(h).and_then(|v| v.to_str().ok()));
    let routed = state.manager.infer_routed(request, keys);
    let (_, answer) = crate::admission::within_request_timeout(state.request_timeout, routed).await?;
    let response = answer?;
    let outputs: Vec<(String, Value)> = response.outputs.iter().map(|o| (o.name.clone(), nested(&o.tensor))).collect();
    let predictions = match outputs.as_slice() {
        [(_, single)] => single.clone(),
        many => {
            let rows = many.iter().map(|(_, v)| v.as_array().map_or(0, Vec::len)).min().unwrap_or(0);
            Value::Array(
                (0..rows)
                    .map(|i| Value::Object(many.iter().map(|(n, v)| (n.clone(), v[i].clone())).collect()))
                    .collect(),
            )
        }
    };
    Ok(Json(json!({"predictions": predictions})))
}

/// How many bytes of memory one byte of predict JSON may become when read as a `serde_json::Value` tree, beyond
/// the admission charge (`JSON_EXPANSION`, 12): measured with `benches/peak_rss.py`, 62 MiB of zeros in one row grew
/// the server by 2 GiB (33x) and 19 MiB of rows keyed by input name by 787 MiB (41x), so 48x in all.
const TREE_EXPANSION: usize = 36;

/// The body of a predict call, with `instances` and `inputs` left as text (a `null` one too: present, so the
/// other is not read in its place).
#[derive(serde::Deserialize)]
struct PredictBody<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    instances: Option<&'a serde_json::value::RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    inputs: Option<&'a serde_json::value::RawValue>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de serde_json::value::RawValue>, D::Error> {
    <&serde_json::value::RawValue as serde::Deserialize>::deserialize(d).map(Some)
}

/// The common forms, read without a JSON tree and packed straight into the tensors from the text: a model of one
/// input with `instances` (or `inputs`) an array of its rows, and `inputs` as columns keyed by input name (the
/// columnar form, any number of inputs). `None` for every other form (rows keyed by input name), which
/// [`inputs_from_body`] reads as a tree, and for what it reports (an unknown input name, a value holding objects).
fn tensors_from_text(signature: &ModelSignature, body: &[u8]) -> Result<Option<Vec<InferInput>>, InferError> {
    // Only an object is a predict body (a derived struct would read an array too).
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Ok(None);
    }
    let parsed = match serde_json::from_slice::<PredictBody<'_>>(body) {
        Ok(parsed) => parsed,
        // Not JSON: said so now, rather than charged for a tree it cannot become.
        Err(e) if matches!(e.classify(), serde_json::error::Category::Syntax | serde_json::error::Category::Eof) => {
            return Err(InferError::invalid(format!("malformed predict JSON: {e}")));
        }
        Err(_) => return Ok(None),
    };
    let columns: Vec<(&TensorSpec, &str)> = match (parsed.instances, parsed.inputs) {
        (Some(_), Some(_)) => return Err(both_forms()),
        (Some(rows), None) | (None, Some(rows)) if rows.get().starts_with('[') => match signature.inputs.as_slice() {
            [spec] => vec![(spec, rows.get())],
            _ => return Ok(None),
        },
        (None, Some(columns)) if columns.get().starts_with('{') => {
            let Ok(found) = read_columns(signature, columns.get()) else { return Ok(None) };
            found.into_values().map(|(i, text)| (&signature.inputs[i], text)).collect()
        }
        _ => return Ok(None),
    };
    let allowance = PackAllowance::for_body(body.len());
    let mut inputs = Vec::with_capacity(columns.len());
    for (spec, text) in columns {
        let Some(shape) = shape_of_json_text(&spec.name, text)? else { return Ok(None) };
        let read_as = json_datatype(spec.datatype);
        let tensor = tensor_from_json_text(&spec.name, read_as, shape, text, false, &allowance)?;
        let tensor = narrow_floats(&spec.name, tensor, spec.datatype)?;
        inputs.push(InferInput { name: spec.name.clone(), tensor, parameters: Parameters::new() });
    }
    Ok(Some(inputs))
}

/// The columns of a columnar `inputs` object: the index of each input's spec and its value's text, in name order
/// (as the tree reads them; a repeated name keeps its last value, as the tree does). A name the model does not
/// have stops the read (the tree path reports it), so no more entries are kept than the model has inputs.
fn read_columns<'a>(signature: &'a ModelSignature, text: &'a str) -> Result<Columns<'a>, serde_json::Error> {
    let mut parser = serde_json::Deserializer::from_str(text);
    let columns = serde::Deserializer::deserialize_map(&mut parser, ColumnsVisitor { signature })?;
    parser.end()?;
    Ok(columns)
}

/// Input name → (index of its spec, text of its value).
type Columns<'a> = std::collections::BTreeMap<&'a str, (usize, &'a str)>;

struct ColumnsVisitor<'a> {
    signature: &'a ModelSignature,
}

impl<'de: 'a, 'a> serde::de::Visitor<'de> for ColumnsVisitor<'a> {
    type Value = Columns<'a>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object of the model's inputs")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Columns<'a>, A::Error> {
        let mut found = Columns::new();
        while let Some(name) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let Some(index) = self.signature.inputs.iter().position(|s| s.name == name) else {
                return Err(serde::de::Error::custom("not an input of the model"));
            };
            let value = map.next_value::<&'de serde_json::value::RawValue>()?;
            found.insert(self.signature.inputs[index].name.as_str(), (index, value.get()));
        }
        Ok(found)
    }
}

/// A body with both forms is ambiguous: refused, as TensorFlow Serving's REST API (where v1 comes from) refuses it.
fn both_forms() -> InferError {
    InferError::invalid("predict body has both `instances` and `inputs`; send one of them")
}

fn inputs_from_body(signature: &ModelSignature, body: Value) -> Result<Vec<InferInput>, InferError> {
    let mut object = match body {
        Value::Object(o) => o,
        _ => return Err(InferError::invalid("predict body must be a JSON object with `instances` or `inputs`")),
    };
    if object.contains_key("instances") && object.contains_key("inputs") {
        return Err(both_forms());
    }
    let columns: Vec<(String, Value)> = if let Some(instances) = object.remove("instances") {
        let Value::Array(rows) = instances else {
            return Err(InferError::invalid("`instances` must be a list"));
        };
        match signature.inputs.as_slice() {
            [only] if !rows.iter().all(|r| r.as_object().is_some_and(|o| o.contains_key(&only.name))) => {
                vec![(only.name.clone(), Value::Array(rows))]
            }
            specs => specs
                .iter()
                .map(|s| {
                    let column = rows
                        .iter()
                        .map(|r| {
                            r.get(&s.name).cloned().ok_or_else(|| {
                                InferError::invalid(format!("every instance needs a value for input `{}`", s.name))
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok((s.name.clone(), Value::Array(column)))
                })
                .collect::<Result<_, InferError>>()?,
        }
    } else if let Some(inputs) = object.remove("inputs") {
        match (inputs, signature.inputs.as_slice()) {
            (Value::Object(map), _) => map.into_iter().collect(),
            (list @ Value::Array(_), [only]) => vec![(only.name.clone(), list)],
            _ => return Err(InferError::invalid("`inputs` must be an object keyed by input name")),
        }
    } else {
        return Err(InferError::invalid("predict body needs `instances` or `inputs`"));
    };
    columns
        .into_iter()
        .map(|(name, value)| {
            let spec = signature
                .inputs
                .iter()
                .find(|s| s.name == name)
                .ok_or_else(|| InferError::invalid(format!("unexpected input `{name}`")))?;
            let shape = shape_of(&name, &value)?;
            let mut flat = FlatData::Empty;
            flatten(&name, &value, &mut flat)?;
            let tensor = tensor_from_json(&name, json_datatype(spec.datatype), shape, flat)?;
            let tensor = narrow_floats(&name, tensor, spec.datatype)?;
            Ok(InferInput { name, tensor, parameters: Parameters::new() })
        })
        .collect()
}

fn shape_of(name: &str, value: &Value) -> Result<Vec<usize>, InferError> {
    let mut shape = Vec::new();
    let mut cursor = value;
    while let Value::Array(items) = cursor {
        shape.push(items.len());
        if shape.len() > 32 {
            return Err(InferError::invalid(format!("input `{name}` is nested too deeply")));
        }
        match items.first() {
            Some(first) => cursor = first,
            None => break,
        }
    }
    Ok(shape)
}

fn flatten(name: &str, value: &Value, out: &mut FlatData) -> Result<(), InferError> {
    fn walk(name: &str, value: &Value, shape: &[usize], out: &mut FlatData) -> Result<(), InferError> {
        let push = |out: &mut FlatData, v: JsonScalar| {
            out.push(v).map_err(|e| InferError::invalid(format!("input `{name}`: {e}")))
        };
        match (value, shape.split_first()) {
            (Value::Array(items), Some((&len, rest))) if items.len() == len => {
                items.iter().try_for_each(|item| walk(name, item, rest, out))
            }
            (Value::Array(_), _) | (_, Some(_)) => {
                Err(InferError::invalid(format!("input `{name}` is not a rectangular array")))
            }
            (Value::Bool(b), None) => push(out, JsonScalar::Bool(*b)),
            // NaN, as the text path reads it for float inputs (an integer input refuses it there).
            (Value::Null, None) => push(out, JsonScalar::Float(f64::NAN)),
            (Value::Number(n), None) => push(
                out,
                if let Some(u) = n.as_u64() {
                    JsonScalar::Uint(u)
                } else if let Some(i) = n.as_i64() {
                    JsonScalar::Int(i)
                } else {
                    JsonScalar::Float(n.as_f64().unwrap_or(f64::NAN))
                },
            ),
            (Value::String(s), None) => push(out, JsonScalar::Str(s.clone())),
            _ => Err(InferError::invalid(format!("input `{name}` holds a value that is not a number, bool or string"))),
        }
    }
    let shape = shape_of(name, value)?;
    walk(name, value, &shape, out)
}

/// The datatype v1 reads an input's JSON numbers as: FP16 and BF16 as FP32, narrowed after (v1 has no binary
/// form, so JSON is the only way in for them); every other as itself.
fn json_datatype(datatype: DataType) -> DataType {
    match datatype {
        DataType::Fp16 | DataType::Bf16 => DataType::Fp32,
        other => other,
    }
}

/// A tensor as nested JSON arrays following its shape.
fn nested(tensor: &Tensor) -> Value {
    let flat = match serde_json::to_value(DataView(tensor)) {
        Ok(Value::Array(items)) => items,
        _ => Vec::new(),
    };
    fn build(items: &mut std::vec::IntoIter<Value>, shape: &[usize]) -> Value {
        match shape.split_first() {
            None => items.next().unwrap_or(Value::Null),
            Some((&n, rest)) => Value::Array((0..n).map(|_| build(items, rest)).collect()),
        }
    }
    build(&mut flat.into_iter(), tensor.shape())
}
