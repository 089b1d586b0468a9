//! JSON views of engine state: model metadata, model configuration (Triton's JSON form, which perf_analyzer
//! reads) and statistics (Triton's statistics extension).

use ferroserve_engine::config::{InstanceKind, ModelConfig, TensorConfig, VersionPolicy};
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

fn version_policy(policy: &VersionPolicy) -> Value {
    match policy {
        VersionPolicy::Latest(n) => json!({"latest": {"num_versions": n}}),
        VersionPolicy::All => json!({"all": {}}),
        VersionPolicy::Specific(v) => json!({"specific": {"versions": v}}),
    }
}

fn tensor_configs(tensors: &[TensorConfig], input: bool) -> Vec<Value> {
    tensors
        .iter()
        .map(|t| {
            let mut v = json!({
                "name": t.name,
                "data_type": t.datatype.map(|d| d.config_name()).unwrap_or("TYPE_INVALID"),
                "dims": t.dims,
                "is_shape_tensor": false,
            });
            if let Some(shape) = &t.reshape {
                v["reshape"] = json!({ "shape": shape });
            }
            if input {
                v["format"] = json!("FORMAT_NONE");
                v["allow_ragged_batch"] = json!(false);
                v["optional"] = json!(false);
            } else {
                v["label_filename"] = json!(t.label_filename.as_deref().unwrap_or_default());
            }
            v
        })
        .collect()
}

/// `GET /v2/models/{m}/config`: the configuration in force, in Triton's JSON field names.
pub(crate) fn model_config(config: &ModelConfig, name: &str) -> Value {
    let groups: Vec<Value> = config
        .instance_groups
        .iter()
        .enumerate()
        .map(|(i, g)| {
            json!({
                "name": format!("{name}_{i}"),
                "kind": match g.kind { InstanceKind::Gpu => "KIND_GPU", _ => "KIND_CPU" },
                "count": g.count,
                "gpus": g.gpus,
                "secondary_devices": [],
                "profile": [],
                "passive": false,
                "host_policy": "",
            })
        })
        .collect();
    let mut v = json!({
        "name": name,
        "platform": config.platform,
        "backend": config.backend,
        "version_policy": version_policy(&config.version_policy),
        "max_batch_size": config.max_batch_size.unwrap_or(0),
        "input": tensor_configs(&config.inputs, true),
        "output": tensor_configs(&config.outputs, false),
        "batch_input": [],
        "batch_output": [],
        "instance_group": groups,
        "default_model_filename": config.default_model_filename.clone().unwrap_or_default(),
        "cc_model_filenames": {},
        "metric_tags": {},
        "parameters": config.parameters.iter().map(|(k, v)| (k.clone(), json!({"string_value": v}))).collect::<serde_json::Map<_, _>>(),
        "model_warmup": [],
        "model_transaction_policy": {"decoupled": false},
    });
    if let Some(b) = &config.dynamic_batching {
        v["dynamic_batching"] = json!({
            "preferred_batch_size": b.preferred_batch_size,
            "max_queue_delay_microseconds": b.max_queue_delay_microseconds,
            "preserve_ordering": false,
            "priority_levels": 0,
            "default_priority_level": 0,
            "default_queue_policy": {
                "timeout_action": "REJECT",
                "default_timeout_microseconds": b.default_timeout_microseconds,
                "allow_timeout_override": false,
                "max_queue_size": b.max_queue_size,
            },
            "priority_queue_policy": {},
        });
    }
    v
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
    })
}
