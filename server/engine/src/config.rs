//! Per-model configuration: Triton's `config.pbtxt`, typed where ferroserve acts on it and kept whole so that
//! every field it sets is reported back.
//!
//! A model directory may hold a `config.pbtxt`; everything in it is optional, and what is missing is
//! completed from the model file's own signature (as Triton's auto-complete does). [`ModelConfig`] types the
//! fields ferroserve acts on; the parsed tree ([`ModelConfig::source`]) keeps the rest. Every field is checked
//! against Triton's `ModelConfig` ([`schema`]): a value that does not fit its field fails the config, a field
//! Triton does not have is logged and ignored, and the fields ferroserve reads but does not act on are named in
//! one warning at load ([`ModelConfig::warn_not_acted_on`]). [`ModelConfig::report`] is what both APIs answer:
//! the completed typed config laid over the tree.
//!
//! Fields that change what a request means and that ferroserve cannot honour (`sequence_batching`,
//! `ensemble_scheduling`, `model_transaction_policy { decoupled: true }`) fail the config (and so the model's
//! load) with the reason, rather than loading a model that would refuse every request or leave a streaming
//! client waiting.

mod report;
pub mod schema;
pub mod value;

use std::collections::BTreeMap;

use ferroserve_runtime::{Accelerator, DataType};

use crate::pbtxt::{self, Node};
use schema::MODEL_CONFIG;
use value::Problems;

/// Most instances one instance group may ask for: each is a loaded model and an OS thread.
pub const MAX_GROUP_INSTANCES: u32 = 256;

/// Which versions of a model to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionPolicy {
    /// The newest `n` versions (Triton's default is 1).
    Latest(u32),
    /// Every version found.
    All,
    /// Exactly these versions.
    Specific(Vec<u64>),
}

impl Default for VersionPolicy {
    fn default() -> Self {
        VersionPolicy::Latest(1)
    }
}

/// Where a group of instances runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InstanceKind {
    /// GPU if one is usable, else CPU (Triton's KIND_AUTO).
    #[default]
    Auto,
    /// Host CPU.
    Cpu,
    /// The listed GPUs (or all).
    Gpu,
}

/// One `instance_group` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceGroup {
    /// Instances per device.
    pub count: u32,
    /// Device kind.
    pub kind: InstanceKind,
    /// GPU ordinals for `Gpu`.
    pub gpus: Vec<u32>,
}

/// A declared input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorConfig {
    /// Name.
    pub name: String,
    /// Element type, if declared.
    pub datatype: Option<DataType>,
    /// Dims without the batch dim when `max_batch_size > 0`: the shape clients see.
    pub dims: Vec<i64>,
    /// `reshape { shape: [...] }`: the model's own dims (batch dim excluded), when they differ from `dims`
    /// with the same elements, e.g. `dims: [1]` on clients for a model input of shape `[batch]`.
    pub reshape: Option<Vec<i64>>,
    /// `label_filename` of an output: a file in the model directory with one class label per line, used by
    /// the classification extension (read at load time; see [`crate::repository`]).
    pub label_filename: Option<String>,
}

/// `dynamic_batching { ... }`; the scheduler that uses it comes with the batcher.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DynamicBatching {
    /// Batch sizes the batcher should aim for.
    pub preferred_batch_size: Vec<u32>,
    /// How long a request may wait for others to join its batch.
    pub max_queue_delay_microseconds: u64,
    /// Queue limit (0 = the server default).
    pub max_queue_size: u32,
    /// Queue timeout (0 = none).
    pub default_timeout_microseconds: u64,
    /// Whether a request's `timeout` parameter may shorten the queue timeout.
    pub allow_timeout_override: bool,
    /// Priority levels (0 = one level).
    pub priority_levels: u32,
    /// Level of requests that name none (0 = the lowest level).
    pub default_priority_level: u32,
}

/// The typed subset of a Triton model configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModelConfig {
    /// `name`, if the file states one (it must then match the directory).
    pub name: Option<String>,
    /// `platform` (`onnxruntime_onnx`).
    pub platform: Option<String>,
    /// `backend` (`onnxruntime`).
    pub backend: Option<String>,
    /// `max_batch_size`: 0 = the model does not batch; `None` = decide from the model.
    pub max_batch_size: Option<u32>,
    /// Declared inputs.
    pub inputs: Vec<TensorConfig>,
    /// Declared outputs.
    pub outputs: Vec<TensorConfig>,
    /// Version policy.
    pub version_policy: VersionPolicy,
    /// Instance groups (empty = one CPU instance).
    pub instance_groups: Vec<InstanceGroup>,
    /// Dynamic batching, when enabled.
    pub dynamic_batching: Option<DynamicBatching>,
    /// `default_model_filename`.
    pub default_model_filename: Option<String>,
    /// Free-form `parameters { key: "k" value: { string_value: "v" } }`.
    pub parameters: BTreeMap<String, String>,
    /// `optimization.execution_accelerators.gpu_execution_accelerator`, for instances on a GPU (the ONNX
    /// runtime takes `tensorrt`); CPU instances ignore them, as in Triton.
    pub gpu_accelerators: Vec<Accelerator>,
    /// The tree this config was read from (`config.pbtxt`, or a load request's JSON config); its fields that
    /// the typed ones above do not carry are reported back as written (see [`ModelConfig::report`]).
    pub source: Node,
}

/// A config file that could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config.pbtxt: {0}")]
pub struct ConfigError(pub String);

/// Refuses the fields whose behaviour ferroserve does not implement and cannot ignore: a model that asks for
/// them would answer wrongly (or never), so its load fails with a reason that names the field.
fn refuse_unsupported(doc: &Node) -> Result<(), ConfigError> {
    if doc.get("sequence_batching").is_some() {
        return Err(ConfigError(
            "`sequence_batching` is not supported by ferroserve (it has no sequence batcher for stateful models); \
             remove it to serve the model without sequence state"
                .into(),
        ));
    }
    if doc.get("ensemble_scheduling").is_some() {
        return Err(ConfigError(
            "`ensemble_scheduling` is not supported by ferroserve (it does not run ensembles); serve the steps as \
             separate models and chain them in the client"
                .into(),
        ));
    }
    let decoupled = doc.get("model_transaction_policy").and_then(|p| p.get("decoupled")).and_then(Node::scalar);
    match decoupled {
        None => Ok(()),
        Some(v) if ["false", "False", "f", "0"].contains(&v) => Ok(()),
        Some(v) if ["true", "True", "t", "1"].contains(&v) => Err(ConfigError(
            "`model_transaction_policy { decoupled: true }` is not supported by ferroserve (every request gets \
             exactly one response)"
                .into(),
        )),
        Some(v) => Err(ConfigError(format!("`model_transaction_policy.decoupled` must be true or false, got `{v}`"))),
    }
}

impl ModelConfig {
    /// Parses the text of a `config.pbtxt`.
    pub fn from_pbtxt(text: &str) -> Result<Self, ConfigError> {
        let doc = pbtxt::parse(text).map_err(|e| ConfigError(e.to_string()))?;
        Self::from_tree(&doc)
    }

    /// Reads a parsed config tree: from `config.pbtxt`, or from the JSON form Triton's load request takes in
    /// `parameters.config` (objects as messages, arrays as lists, every scalar as its text).
    pub fn from_tree(doc: &pbtxt::Node) -> Result<Self, ConfigError> {
        refuse_unsupported(doc)?;
        let config = ModelConfig {
            name: string(doc, "name"),
            platform: string(doc, "platform"),
            backend: string(doc, "backend"),
            max_batch_size: number(doc, "max_batch_size")?,
            inputs: doc.all("input").map(tensor_config).collect::<Result<_, _>>()?,
            outputs: doc.all("output").map(tensor_config).collect::<Result<_, _>>()?,
            version_policy: match doc.get("version_policy") {
                Some(node) => version_policy(node)?,
                None => VersionPolicy::default(),
            },
            instance_groups: doc.all("instance_group").map(instance_group).collect::<Result<_, _>>()?,
            dynamic_batching: doc.get("dynamic_batching").map(dynamic_batching).transpose()?,
            default_model_filename: string(doc, "default_model_filename"),
            parameters: doc
                .all("parameters")
                .filter_map(|p| {
                    let key = string(p, "key")?;
                    let value = p.get("value").and_then(|v| string(v, "string_value")).unwrap_or_default();
                    Some((key, value))
                })
                .collect(),
            gpu_accelerators: gpu_accelerators(doc),
            source: doc.clone(),
        };
        let mut problems = Problems::default();
        value::typed(&MODEL_CONFIG, doc, &mut problems);
        if !problems.invalid.is_empty() {
            return Err(ConfigError(problems.invalid.join("; ")));
        }
        Ok(config)
    }
}

/// `optimization { execution_accelerators { gpu_execution_accelerator: [ { name: "tensorrt" parameters {..} } ] } }`.
fn gpu_accelerators(doc: &Node) -> Vec<Accelerator> {
    let Some(accelerators) = doc.get("optimization").and_then(|o| o.get("execution_accelerators")) else {
        return Vec::new();
    };
    accelerators
        .all("gpu_execution_accelerator")
        .map(|a| Accelerator {
            name: string(a, "name").unwrap_or_default(),
            parameters: a
                .all("parameters")
                .filter_map(|p| Some((string(p, "key")?, string(p, "value").unwrap_or_default())))
                .collect(),
        })
        .collect()
}

fn string(node: &Node, field: &str) -> Option<String> {
    node.get(field).and_then(Node::scalar).map(str::to_owned)
}

fn number<T: std::str::FromStr>(node: &Node, field: &str) -> Result<Option<T>, ConfigError> {
    match node.get(field) {
        None => Ok(None),
        Some(Node::Scalar(s)) => {
            s.parse().map(Some).map_err(|_| ConfigError(format!("`{field}` must be a non-negative integer, got `{s}`")))
        }
        Some(_) => Err(ConfigError(format!("`{field}` must be a number"))),
    }
}

/// A protobuf text-format bool.
fn boolean(node: &Node, field: &str) -> Result<Option<bool>, ConfigError> {
    match node.get(field).map(|n| n.scalar()) {
        None => Ok(None),
        Some(Some("true" | "True" | "t" | "1")) => Ok(Some(true)),
        Some(Some("false" | "False" | "f" | "0")) => Ok(Some(false)),
        Some(_) => Err(ConfigError(format!("`{field}` must be true or false"))),
    }
}

fn numbers<T: std::str::FromStr>(node: &Node, field: &str) -> Result<Vec<T>, ConfigError> {
    node.all(field)
        .map(|n| {
            let s = n.scalar().ok_or_else(|| ConfigError(format!("`{field}` must hold numbers")))?;
            s.parse().map_err(|_| ConfigError(format!("`{field}`: `{s}` is not a valid number")))
        })
        .collect()
}

fn tensor_config(node: &Node) -> Result<TensorConfig, ConfigError> {
    let name = string(node, "name").ok_or_else(|| ConfigError("every input/output needs a `name`".into()))?;
    let datatype = match string(node, "data_type") {
        None => None,
        Some(t) => Some(
            DataType::parse_config_name(&t).ok_or_else(|| ConfigError(format!("`{name}`: unknown data_type `{t}`")))?,
        ),
    };
    let reshape = node.get("reshape").map(|r| numbers(r, "shape")).transpose()?;
    // Triton's JSON form writes `label_filename: ""` for an output without labels.
    let label_filename = string(node, "label_filename").filter(|f| !f.is_empty());
    Ok(TensorConfig { name, datatype, dims: numbers(node, "dims")?, reshape, label_filename })
}

fn version_policy(node: &Node) -> Result<VersionPolicy, ConfigError> {
    if node.get("all").is_some() {
        Ok(VersionPolicy::All)
    } else if let Some(latest) = node.get("latest") {
        let n: u32 = number(latest, "num_versions")?.unwrap_or(1);
        if n == 0 {
            return Err(ConfigError("version_policy.latest.num_versions must be at least 1".into()));
        }
        Ok(VersionPolicy::Latest(n))
    } else if let Some(specific) = node.get("specific") {
        Ok(VersionPolicy::Specific(numbers(specific, "versions")?))
    } else {
        Err(ConfigError("version_policy needs `latest`, `all` or `specific`".into()))
    }
}

fn instance_group(node: &Node) -> Result<InstanceGroup, ConfigError> {
    let kind = match string(node, "kind").as_deref() {
        None | Some("KIND_AUTO") => InstanceKind::Auto,
        Some("KIND_CPU") => InstanceKind::Cpu,
        Some("KIND_GPU") => InstanceKind::Gpu,
        Some(other) => return Err(ConfigError(format!("instance_group kind `{other}` is not supported"))),
    };
    let count: u32 = number(node, "count")?.unwrap_or(1);
    if count == 0 || count > MAX_GROUP_INSTANCES {
        return Err(ConfigError(format!("instance_group count must be from 1 to {MAX_GROUP_INSTANCES}, not {count}")));
    }
    Ok(InstanceGroup { count, kind, gpus: numbers(node, "gpus")? })
}

fn dynamic_batching(node: &Node) -> Result<DynamicBatching, ConfigError> {
    let policy = node.get("default_queue_policy");
    Ok(DynamicBatching {
        preferred_batch_size: numbers(node, "preferred_batch_size")?,
        max_queue_delay_microseconds: number(node, "max_queue_delay_microseconds")?.unwrap_or(0),
        max_queue_size: match policy {
            Some(p) => number(p, "max_queue_size")?.unwrap_or(0),
            None => 0,
        },
        default_timeout_microseconds: match policy {
            Some(p) => number(p, "default_timeout_microseconds")?.unwrap_or(0),
            None => 0,
        },
        allow_timeout_override: match policy {
            Some(p) => boolean(p, "allow_timeout_override")?.unwrap_or(false),
            None => false,
        },
        priority_levels: number(node, "priority_levels")?.unwrap_or(0),
        default_priority_level: number(node, "default_priority_level")?.unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_triton_fields() {
        let config = ModelConfig::from_pbtxt(
            r#"
            name: "mlp"
            platform: "onnxruntime_onnx"
            max_batch_size: 64
            input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [16] }]
            output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [4] label_filename: "labels.txt" }]
            version_policy: { specific { versions: [1, 3] } }
            instance_group [{ count: 2 kind: KIND_CPU }]
            dynamic_batching {
              preferred_batch_size: [8, 16]
              max_queue_delay_microseconds: 200
              default_queue_policy { max_queue_size: 128 default_timeout_microseconds: 5000 }
            }
            parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
            "#,
        )
        .unwrap();
        assert_eq!(config.max_batch_size, Some(64));
        assert_eq!(config.inputs[0].datatype, Some(DataType::Fp32));
        assert_eq!(config.inputs[0].dims, vec![16]);
        assert_eq!(config.outputs[0].label_filename.as_deref(), Some("labels.txt"));
        assert_eq!(config.inputs[0].label_filename, None);
        assert_eq!(config.version_policy, VersionPolicy::Specific(vec![1, 3]));
        assert_eq!(config.instance_groups[0], InstanceGroup { count: 2, kind: InstanceKind::Cpu, gpus: vec![] });
        let batching = config.dynamic_batching.unwrap();
        assert_eq!(batching.preferred_batch_size, vec![8, 16]);
        assert_eq!(batching.max_queue_size, 128);
        assert_eq!(config.parameters["intra_op_thread_count"], "1");
    }

    #[test]
    fn rejects_bad_values() {
        assert!(ModelConfig::from_pbtxt("max_batch_size: -1").is_err());
        assert!(ModelConfig::from_pbtxt("input [{ name: \"x\" data_type: TYPE_NOPE }]").is_err());
        assert!(ModelConfig::from_pbtxt("instance_group [{ count: 0 }]").is_err());
        assert!(ModelConfig::from_pbtxt("instance_group [{ count: 257 }]").is_err());
        assert!(ModelConfig::from_pbtxt("instance_group [{ count: 256 }]").is_ok());
        assert!(ModelConfig::from_pbtxt("version_policy { latest { num_versions: 0 } }").is_err());
        assert!(ModelConfig::from_pbtxt("").unwrap().max_batch_size.is_none());
    }

    #[test]
    fn refuses_what_ferroserve_cannot_honour_naming_the_field() {
        let refused = [
            ("sequence_batching { max_sequence_idle_microseconds: 5000000 }", "`sequence_batching`"),
            ("sequence_batching: {}", "`sequence_batching`"),
            (
                "platform: \"ensemble\" ensemble_scheduling { step [{ model_name: \"a\" model_version: -1 }] }",
                "`ensemble_scheduling`",
            ),
            ("model_transaction_policy { decoupled: true }", "`model_transaction_policy { decoupled: true }`"),
            ("model_transaction_policy: { decoupled: True }", "`model_transaction_policy { decoupled: true }`"),
        ];
        for (text, field) in refused {
            let error = ModelConfig::from_pbtxt(text).unwrap_err().to_string();
            assert!(error.contains(field) && error.contains("not supported by ferroserve"), "{text}: {error}");
        }
        // The default transaction policy is what ferroserve does: accepted.
        assert!(ModelConfig::from_pbtxt("model_transaction_policy { decoupled: false }").is_ok());
        assert!(ModelConfig::from_pbtxt("model_transaction_policy {}").is_ok());
        assert!(ModelConfig::from_pbtxt("model_transaction_policy { decoupled: maybe }").is_err());
        // The JSON form of a load request's `parameters.config` goes through the same tree.
        let tree = pbtxt::Node::Message(vec![(
            "model_transaction_policy".into(),
            pbtxt::Node::Message(vec![("decoupled".into(), pbtxt::Node::Scalar("true".into()))]),
        )]);
        assert!(ModelConfig::from_tree(&tree).is_err());
    }
}
