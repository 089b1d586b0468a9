//! The parameters of a repository load request, read once for both transports: Triton's `config` (a model
//! configuration in JSON, replacing `config.pbtxt` for this load) is honoured; `file:` parameters (model
//! files sent inline) are refused with the reason.
//!
//! Triton's JSON form of a configuration is protobuf's JSON mapping with the proto field names; it becomes
//! the same untyped tree `config.pbtxt` parses into: objects are messages, arrays are lists, scalars keep
//! their text (int64 fields arrive as strings, enums as their names). The `parameters` map becomes the
//! repeated `{ key, value }` messages of the text form.

use std::collections::HashMap;

use ferroserve_engine::InferError;
use ferroserve_engine::config::ModelConfig;
use ferroserve_engine::pbtxt::Node;
use ferroserve_proto as pb;
use serde_json::Value;

/// A parsed config override with the text it came from.
pub type ConfigOverride = Option<(ModelConfig, String)>;

/// The override from an HTTP load body (`{}` or empty: none) for loading `model`. Refusals start "failed to load
/// 'MODEL'", as Triton's do, which its client programs match on.
pub fn from_http_body(model: &str, body: &[u8]) -> Result<ConfigOverride, InferError> {
    http_body(body).map_err(|e| refused_load(model, e))
}

fn refused_load(model: &str, e: InferError) -> InferError {
    e.map_message(|m| format!("failed to load '{model}', {m}"))
}

fn http_body(body: &[u8]) -> Result<ConfigOverride, InferError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let request: Value = serde_json::from_slice(body)
        .map_err(|e| InferError::invalid(format!("malformed repository load JSON: {e}")))?;
    let Some(parameters) = request.get("parameters") else { return Ok(None) };
    let parameters = parameters
        .as_object()
        .ok_or_else(|| InferError::invalid("repository load `parameters` must be a JSON object"))?;
    refuse_files(parameters.keys())?;
    match parameters.get("config") {
        None => Ok(None),
        Some(Value::String(text)) => parse_config(text).map(Some),
        Some(_) => Err(InferError::invalid("repository load parameter `config` must be a string of JSON")),
    }
}

/// The override from a gRPC load request's parameters for loading `model` (refusals worded as for HTTP).
pub(crate) fn from_grpc(
    model: &str,
    parameters: &HashMap<String, pb::ModelRepositoryParameter>,
) -> Result<ConfigOverride, InferError> {
    grpc_parameters(parameters).map_err(|e| refused_load(model, e))
}

fn grpc_parameters(parameters: &HashMap<String, pb::ModelRepositoryParameter>) -> Result<ConfigOverride, InferError> {
    use pb::model_repository_parameter::ParameterChoice;
    refuse_files(parameters.keys())?;
    match parameters.get("config").and_then(|p| p.parameter_choice.as_ref()) {
        None => Ok(None),
        Some(ParameterChoice::StringParam(text)) => parse_config(text).map(Some),
        Some(_) => Err(InferError::invalid("repository load parameter `config` must be a string_param of JSON")),
    }
}

fn refuse_files<'a>(mut keys: impl Iterator<Item = &'a String>) -> Result<(), InferError> {
    match keys.find(|k| k.starts_with("file:")) {
        Some(key) => Err(InferError::Unsupported(format!(
            "repository load parameter `{key}`: model files sent in the request are not supported; put them in \
             the model repository"
        ))),
        None => Ok(()),
    }
}

/// Parses Triton's JSON model configuration.
fn parse_config(text: &str) -> Result<(ModelConfig, String), InferError> {
    let json: Value = serde_json::from_str(text)
        .map_err(|e| InferError::invalid(format!("repository load parameter `config` is not valid JSON: {e}")))?;
    if !json.is_object() {
        return Err(InferError::invalid("repository load parameter `config` must be a JSON object"));
    }
    let config = ModelConfig::from_tree(&tree(&json, None))
        .map_err(|e| InferError::invalid(format!("repository load parameter `config`: {e}")))?;
    Ok((config, text.to_string()))
}

/// JSON as the untyped config tree. `field` is the name the value sits under.
fn tree(value: &Value, field: Option<&str>) -> Node {
    match value {
        Value::Object(map) if field == Some("parameters") => {
            // Triton's map<string, ModelParameter> in JSON is an object; the text form repeats { key value }.
            Node::List(
                map.iter()
                    .map(|(k, v)| {
                        Node::Message(vec![
                            ("key".to_string(), Node::Scalar(k.clone())),
                            ("value".to_string(), tree(v, None)),
                        ])
                    })
                    .collect(),
            )
        }
        Value::Object(map) => Node::Message(map.iter().map(|(k, v)| (k.clone(), tree(v, Some(k)))).collect()),
        Value::Array(items) => Node::List(items.iter().map(|v| tree(v, None)).collect()),
        Value::String(s) => Node::Scalar(s.clone()),
        Value::Number(n) => Node::Scalar(n.to_string()),
        Value::Bool(b) => Node::Scalar(b.to_string()),
        Value::Null => Node::Message(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_triton_json_config() {
        let config = r#"{"name":"mlp","max_batch_size":"8","input":[{"name":"INPUT0","data_type":"TYPE_FP32","dims":["16"]}],
            "instance_group":[{"count":2,"kind":"KIND_CPU"}],"dynamic_batching":{"max_queue_delay_microseconds":"100"},
            "parameters":{"intra_op_thread_count":{"string_value":"1"}}}"#;
        let body = serde_json::to_vec(&serde_json::json!({"parameters": {"config": config}})).unwrap();
        let (parsed, text) = from_http_body("mlp", &body).unwrap().unwrap();
        assert_eq!(text, config);
        assert_eq!(parsed.max_batch_size, Some(8));
        assert_eq!(parsed.inputs[0].name, "INPUT0");
        assert_eq!(parsed.instance_groups[0].count, 2);
        assert_eq!(parsed.dynamic_batching.unwrap().max_queue_delay_microseconds, 100);
        assert_eq!(parsed.parameters.get("intra_op_thread_count").map(String::as_str), Some("1"));
    }

    #[test]
    fn empty_bodies_and_bad_parameters() {
        assert!(from_http_body("m", b"").unwrap().is_none());
        assert!(from_http_body("m", b"{}").unwrap().is_none());
        assert!(matches!(from_http_body("m", b"{"), Err(InferError::InvalidInput(_))));
        let refused = from_http_body("m", br#"{"parameters":{"config":"{nope"}}"#).unwrap_err();
        assert!(matches!(&refused, InferError::InvalidInput(m) if m.starts_with("failed to load 'm', ")), "{refused}");
        assert!(matches!(
            from_http_body("m", br#"{"parameters":{"config":"{\"max_batch_size\":\"x\"}"}}"#),
            Err(InferError::InvalidInput(_))
        ));
        assert!(matches!(
            from_http_body("m", br#"{"parameters":{"file:1/model.onnx":"AAAA"}}"#),
            Err(InferError::Unsupported(_))
        ));
        let mut grpc = HashMap::new();
        grpc.insert(
            "config".to_string(),
            pb::ModelRepositoryParameter {
                parameter_choice: Some(pb::model_repository_parameter::ParameterChoice::StringParam(
                    r#"{"max_batch_size": 4}"#.into(),
                )),
            },
        );
        assert_eq!(from_grpc("m", &grpc).unwrap().unwrap().0.max_batch_size, Some(4));
    }
}
