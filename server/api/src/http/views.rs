//! JSON views of engine state: model metadata, model configuration (Triton's JSON form, which perf_analyzer
//! reads) and statistics (Triton's statistics extension).

use ferroserve_engine::config::ModelConfig;
use ferroserve_engine::config::schema::{Field, Kind, Label};
use ferroserve_engine::config::value::{Message, Value as ConfigValue};
use ferroserve_engine::stats::StatsSnapshot;
use ferroserve_engine::{ModelEntry, ModelVersion};
use serde_json::{Value, json};

/// `GET /v2/models/{m}[/versions/{v}]`.
pub(crate) fn model_metadata(entry: &ModelEntry, version: &ModelVersion, only_this_version: bool) -> Value {
    let versions: Vec<String> = if only_this_version {
        vec![version.version.to_string()]
    } else {
        entry.ready_versions().map(|v| v.version.to_string()).collect()
    };
    let tensors = |specs: &[ferroserve_runtime::TensorSpec]| -> Vec<Value> {
        specs.iter().map(|s| json!({"name": s.name, "datatype": s.datatype.as_str(), "shape": s.dims})).collect()
    };
    json!({
        "name": version.name,
        "versions": versions,
        "platform": version.platform,
        "inputs": tensors(&version.signature.inputs),
        "outputs": tensors(&version.signature.outputs),
    })
}

/// `GET /v2/models/{m}/config`: the configuration in force ([`ModelConfig::report`]) in Triton's JSON form:
/// protobuf's JSON mapping with the proto field names, enums by name, 64-bit integers as numbers, and every
/// scalar, repeated and map field of a message that is present printed even at its default (what Triton's
/// `always_print_primitive_fields` does; unset messages and oneof members stay out).
pub(crate) fn model_config(config: &ModelConfig, name: &str) -> Value {
    message_json(&config.report(name))
}

fn message_json(m: &Message) -> Value {
    let mut out = serde_json::Map::new();
    for field in m.schema.fields {
        let value = match m.get(field.name) {
            Some(value) => Some(value_json(&field.kind, value)),
            None => default_json(field),
        };
        if let Some(value) = value {
            out.insert(field.name.to_string(), value);
        }
    }
    Value::Object(out)
}

fn default_json(field: &Field) -> Option<Value> {
    match (field.label, &field.kind) {
        (Label::Oneof(_), _) => None,
        (Label::Repeated, _) => Some(json!([])),
        (_, Kind::Message(_)) => None,
        (_, Kind::Map(..)) => Some(json!({})),
        (_, Kind::Bool) => Some(json!(false)),
        (_, Kind::Int32 | Kind::Int64 | Kind::UInt32 | Kind::UInt64) => Some(json!(0)),
        (_, Kind::Double) => Some(json!(0.0)),
        (_, Kind::String) => Some(json!("")),
        (_, Kind::Enum(e)) => Some(json!(e.values[0].0)),
    }
}

fn value_json(kind: &Kind, value: &ConfigValue) -> Value {
    match value {
        ConfigValue::List(items) => Value::Array(items.iter().map(|v| value_json(kind, v)).collect()),
        ConfigValue::Map(entries) => {
            let value_kind = match kind {
                Kind::Map(_, value_kind) => value_kind,
                other => other,
            };
            let entries = entries.iter().map(|(k, v)| {
                let key = match k {
                    ConfigValue::Str(s) => s.clone(),
                    ConfigValue::UInt(n) => n.to_string(),
                    other => format!("{other:?}"),
                };
                (key, value_json(value_kind, v))
            });
            Value::Object(entries.collect())
        }
        ConfigValue::Message(m) => message_json(m),
        ConfigValue::Enum(n) => match kind {
            Kind::Enum(e) => e.name_of(*n).map_or_else(|| json!(n), |name| json!(name)),
            _ => json!(n),
        },
        ConfigValue::Bool(b) => json!(b),
        ConfigValue::Int(n) => json!(n),
        ConfigValue::UInt(n) => json!(n),
        // protobuf's JSON mapping writes the non-finite doubles as these strings.
        ConfigValue::Double(x) if x.is_nan() => json!("NaN"),
        ConfigValue::Double(x) if x.is_infinite() => json!(if *x > 0.0 { "Infinity" } else { "-Infinity" }),
        ConfigValue::Double(x) => json!(x),
        ConfigValue::Str(s) => json!(s),
    }
}

fn duration((count, ns): (u64, u64)) -> Value {
    json!({"count": count, "ns": ns})
}

/// One entry of `GET /v2/models[/{m}[/versions/{v}]]/stats`.
pub(crate) fn model_stats(name: &str, version: u64, s: &StatsSnapshot) -> Value {
    json!({
        "name": name,
        "version": version.to_string(),
        "last_inference": s.last_inference_ms,
        "inference_count": s.inference_count,
        "execution_count": s.execution_count,
        "inference_stats": {
            "success": duration(s.success),
            "fail": duration(s.fail),
            "queue": duration(s.queue),
            "compute_input": duration(s.compute_input),
            "compute_infer": duration(s.compute_infer),
            "compute_output": duration(s.compute_output),
            "cache_hit": duration((0, 0)),
            "cache_miss": duration((0, 0)),
        },
        "response_stats": {},
        "batch_stats": s.batches.iter().map(|(size, b)| json!({
            "batch_size": size,
            "compute_input": duration((b.count, b.compute_input_ns)),
            "compute_infer": duration((b.count, b.compute_infer_ns)),
            "compute_output": duration((b.count, b.compute_output_ns)),
        })).collect::<Vec<_>>(),
        "memory_usage": [],
        // ferroserve's own: why batches ran (`full`, `preferred`, `window`, `adaptive`, `unbatched`, `flush`).
        "batch_reasons": ferroserve_engine::batcher::state::RunReason::ALL
            .iter()
            .map(|r| (r.as_str().to_string(), json!(s.batch_reasons[r.index()])))
            .collect::<serde_json::Map<String, Value>>(),
        // ferroserve's own: successful requests by latency inside the server, for percentiles, as
        // [exclusive upper bound in ns, requests] per bucket (about 6 % wide) that counted any, shortest first.
        "success_latency_buckets": s.success_latency,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_triton_json_with_every_field_the_file_sets() {
        let mut config = ModelConfig::from_pbtxt(
            r#"
            name: "m"
            platform: "onnxruntime_onnx"
            max_batch_size: 8
            input [{ name: "INPUT" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [3, 8, 8] }]
            output [{ name: "OUTPUT" data_type: TYPE_FP32 dims: [10] }]
            dynamic_batching { priority_levels: 2 priority_queue_policy { key: 1 value { max_queue_size: 4 } } }
            optimization { execution_accelerators { cpu_execution_accelerator [{ name: "openvino" }] } }
            model_warmup [{ name: "w" inputs { key: "INPUT" value { data_type: TYPE_FP32 dims: [3] zero_data: true } } }]
            metric_tags { key: "team" value: "search" }
            "#,
        )
        .unwrap();
        // As completion leaves it: the backend and model file found, one default instance group.
        config.backend = Some("onnxruntime".into());
        config.default_model_filename = Some("model.onnx".into());
        config.instance_groups = vec![ferroserve_engine::config::InstanceGroup {
            count: 1,
            kind: ferroserve_engine::config::InstanceKind::Cpu,
            gpus: vec![],
        }];
        let queue = |max_queue_size: u32| {
            json!({"timeout_action": "REJECT", "default_timeout_microseconds": 0, "allow_timeout_override": false,
                   "max_queue_size": max_queue_size})
        };
        let expected = json!({
            "name": "m", "platform": "onnxruntime_onnx", "backend": "onnxruntime", "runtime": "",
            "version_policy": {"latest": {"num_versions": 1}},
            "max_batch_size": 8,
            "input": [{"name": "INPUT", "data_type": "TYPE_FP32", "format": "FORMAT_NCHW", "dims": [3, 8, 8],
                       "is_shape_tensor": false, "allow_ragged_batch": false, "optional": false,
                       "is_non_linear_format_io": false}],
            "output": [{"name": "OUTPUT", "data_type": "TYPE_FP32", "dims": [10], "label_filename": "",
                        "is_shape_tensor": false, "is_non_linear_format_io": false}],
            "batch_input": [], "batch_output": [],
            "optimization": {"priority": "PRIORITY_DEFAULT", "gather_kernel_buffer_threshold": 0,
                             "eager_batching": false,
                             "execution_accelerators": {"gpu_execution_accelerator": [],
                                                        "cpu_execution_accelerator": [{"name": "openvino", "parameters": {}}]}},
            "dynamic_batching": {"preferred_batch_size": [], "max_queue_delay_microseconds": 0,
                                 "preserve_ordering": false, "priority_levels": 2, "default_priority_level": 0,
                                 "default_queue_policy": queue(0), "priority_queue_policy": {"1": queue(4)}},
            "instance_group": [{"name": "m_0", "kind": "KIND_CPU", "count": 1, "gpus": [], "secondary_devices": [],
                                "profile": [], "passive": false, "host_policy": ""}],
            "default_model_filename": "model.onnx",
            "cc_model_filenames": {}, "metric_tags": {"team": "search"}, "parameters": {},
            "model_warmup": [{"name": "w", "batch_size": 0, "count": 0,
                              "inputs": {"INPUT": {"data_type": "TYPE_FP32", "dims": [3], "zero_data": true}}}],
            "model_transaction_policy": {"decoupled": false},
        });
        assert_eq!(model_config(&config, "m"), expected);
    }
}
