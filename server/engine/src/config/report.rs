//! What both APIs answer for a model's configuration ([`ModelConfig::report`]): every field of the source
//! tree typed by [`schema`], with the completed typed fields laid over them (they hold what was filled in from
//! the model: dims, data types, `max_batch_size`, backend, model file), and the one load warning that names
//! the fields ferroserve reads and reports but does not act on ([`ModelConfig::warn_not_acted_on`]).

use ferroserve_runtime::DataType;

use super::schema::{self, MODEL_CONFIG, MessageType};
use super::value::{self, Message, Problems, Value};
use super::{InstanceKind, ModelConfig, TensorConfig, VersionPolicy};

/// The fields ferroserve acts on, as paths of field names; a path covers the fields below it. Every other
/// field a config sets is reported back but changes nothing, and [`ModelConfig::warn_not_acted_on`] names it.
const ACTED_ON: &[&str] = &[
    "name",
    "platform",
    "backend",
    "version_policy",
    "max_batch_size",
    "input.name",
    "input.data_type",
    "input.dims",
    "input.reshape",
    "output.name",
    "output.data_type",
    "output.dims",
    "output.reshape",
    "output.label_filename",
    "instance_group.count",
    "instance_group.kind",
    "instance_group.gpus",
    "dynamic_batching.preferred_batch_size",
    "dynamic_batching.max_queue_delay_microseconds",
    "dynamic_batching.priority_levels",
    "dynamic_batching.default_priority_level",
    "dynamic_batching.default_queue_policy.max_queue_size",
    "dynamic_batching.default_queue_policy.default_timeout_microseconds",
    "dynamic_batching.default_queue_policy.allow_timeout_override",
    "default_model_filename",
    // Handed to the runtime of a GPU instance (ONNX: `tensorrt`).
    "optimization.execution_accelerators.gpu_execution_accelerator",
    // Handed to the runtime, which reads the keys it knows.
    "parameters",
    // `false` is what ferroserve does; `true` is refused (see `refuse_unsupported`).
    "model_transaction_policy.decoupled",
];

impl ModelConfig {
    /// Logs, once per load of `model`, the fields of the source that ferroserve reads and reports but does not
    /// act on, and apart from them any field Triton's `ModelConfig` does not have (ignored, not reported).
    pub fn warn_not_acted_on(&self, model: &str) {
        let mut problems = Problems::default();
        let source = value::typed(&MODEL_CONFIG, &self.source, &mut problems);
        let fields = not_acted_on(&source);
        if !fields.is_empty() {
            let fields = fields.join(", ");
            tracing::warn!(model, fields = fields.as_str(), "config.pbtxt fields ferroserve reads but does not act on");
        }
        if !problems.unknown.is_empty() {
            let fields = problems.unknown.join(", ");
            tracing::warn!(
                model,
                fields = fields.as_str(),
                "config.pbtxt fields that Triton's ModelConfig does not have, ignored"
            );
        }
    }

    /// The configuration both APIs report for `model`: every field of the source, with the typed fields laid
    /// over it (they hold what was completed from the model: dims, data types, max_batch_size, backend, ...).
    pub fn report(&self, model: &str) -> Message {
        let mut report = value::typed(&MODEL_CONFIG, &self.source, &mut Problems::default());
        report.overlay(self.typed_fields(model));
        // Triton names an unnamed instance group after the model and its position.
        if let Some(Value::List(groups)) = report.get("instance_group").cloned() {
            let named = groups.into_iter().enumerate().map(|(i, group)| match group {
                Value::Message(g) if g.get("name").is_none() => {
                    Value::Message(g.with("name", Value::Str(format!("{model}_{i}"))))
                }
                other => other,
            });
            report.set("instance_group", Value::List(named.collect()));
        }
        report
    }

    /// The typed fields as a message, as they stand after completion.
    fn typed_fields(&self, model: &str) -> Message {
        let text = |s: &Option<String>| Value::Str(s.clone().unwrap_or_default());
        let list = |items: &mut dyn Iterator<Item = Value>| Value::List(items.collect());
        let ints = |v: &[i64]| Value::List(v.iter().map(|&x| Value::Int(x)).collect());
        let tensor = |field: &str, t: &TensorConfig| {
            let mut m = child(
                &MODEL_CONFIG,
                field,
                [
                    ("name", Value::Str(t.name.clone())),
                    ("data_type", Value::Enum(t.datatype.map_or(0, data_type_number))),
                    ("dims", ints(&t.dims)),
                ],
            );
            if let Some(shape) = &t.reshape {
                m.set("reshape", Value::Message(child(m.schema, "reshape", [("shape", ints(shape))])));
            }
            if let Some(file) = &t.label_filename {
                m.set("label_filename", Value::Str(file.clone()));
            }
            Value::Message(m)
        };
        let policy_type = MODEL_CONFIG.message("version_policy");
        let (choice, fields) = match &self.version_policy {
            VersionPolicy::Latest(n) => ("latest", vec![("num_versions", Value::UInt((*n).into()))]),
            VersionPolicy::All => ("all", vec![]),
            VersionPolicy::Specific(v) => {
                ("specific", vec![("versions", Value::List(v.iter().map(|&x| Value::Int(x as i64)).collect()))])
            }
        };
        let policy = Message::new(policy_type).with(choice, Value::Message(child(policy_type, choice, fields)));
        let groups = self.instance_groups.iter().map(|g| {
            let kind = if g.kind == InstanceKind::Gpu { "KIND_GPU" } else { "KIND_CPU" };
            let gpus = g.gpus.iter().map(|&x| Value::Int(x.into()));
            Value::Message(child(
                &MODEL_CONFIG,
                "instance_group",
                [
                    ("kind", Value::Enum(enum_number(&schema::INSTANCE_KIND, kind))),
                    ("count", Value::Int(g.count.into())),
                    ("gpus", Value::List(gpus.collect())),
                ],
            ))
        });
        let parameters = self.parameters.iter().map(|(k, v)| {
            let value = Message::new(MODEL_CONFIG.map_value("parameters")).with("string_value", Value::Str(v.clone()));
            (Value::Str(k.clone()), Value::Message(value))
        });
        let decoupled = child(&MODEL_CONFIG, "model_transaction_policy", [("decoupled", Value::Bool(false))]);
        let mut config = Message::new(&MODEL_CONFIG)
            .with("name", Value::Str(model.to_string()))
            .with("platform", text(&self.platform))
            .with("backend", text(&self.backend))
            .with("version_policy", Value::Message(policy))
            .with("max_batch_size", Value::Int(self.max_batch_size.unwrap_or(0).into()))
            .with("input", list(&mut self.inputs.iter().map(|t| tensor("input", t))))
            .with("output", list(&mut self.outputs.iter().map(|t| tensor("output", t))))
            .with("instance_group", list(&mut groups.into_iter()))
            .with("default_model_filename", text(&self.default_model_filename))
            .with("parameters", Value::Map(parameters.collect()))
            .with("model_transaction_policy", Value::Message(decoupled));
        if let Some(b) = &self.dynamic_batching {
            let batching_type = MODEL_CONFIG.message("dynamic_batching");
            let queue = child(
                batching_type,
                "default_queue_policy",
                [
                    ("max_queue_size", Value::UInt(b.max_queue_size.into())),
                    ("default_timeout_microseconds", Value::UInt(b.default_timeout_microseconds)),
                ],
            );
            let preferred = b.preferred_batch_size.iter().map(|&x| Value::Int(x.into()));
            let batching = Message::new(batching_type)
                .with("preferred_batch_size", Value::List(preferred.collect()))
                .with("max_queue_delay_microseconds", Value::UInt(b.max_queue_delay_microseconds))
                .with("priority_levels", Value::UInt(b.priority_levels.into()))
                .with("default_priority_level", Value::UInt(b.default_priority_level.into()))
                .with("default_queue_policy", Value::Message(queue));
            config.set("dynamic_batching", Value::Message(batching));
        }
        config
    }
}

/// A message of the type of `parent`'s message field `field`, with `fields` set.
fn child<'a>(parent: &MessageType, field: &str, fields: impl IntoIterator<Item = (&'a str, Value)>) -> Message {
    fields.into_iter().fold(Message::new(parent.message(field)), |m, (name, value)| m.with(name, value))
}

/// The number of the value named `name` of enum `e`.
fn enum_number(e: &schema::EnumType, name: &str) -> i32 {
    e.values.iter().find(|(n, _)| *n == name).map_or(0, |(_, v)| *v)
}

/// `inference.DataType`'s number for a data type.
fn data_type_number(t: DataType) -> i32 {
    enum_number(&schema::DATA_TYPE, t.config_name())
}

/// The paths of the fields `source` sets that ferroserve does not act on, in file order: a message is named
/// whole unless some field below it is acted on, or it is a single message with fields set (then its fields are
/// named: `optimization.cuda.graphs`).
fn not_acted_on(source: &Message) -> Vec<String> {
    let mut out = Vec::new();
    collect_not_acted_on(source, "", &mut out);
    out
}

fn collect_not_acted_on(m: &Message, prefix: &str, out: &mut Vec<String>) {
    for (field, value) in &m.fields {
        let path = if prefix.is_empty() { field.name.to_string() } else { format!("{prefix}.{}", field.name) };
        let covered = ACTED_ON.iter().any(|a| path == *a || path.starts_with(&format!("{a}.")));
        if covered {
            continue;
        }
        let partly_acted_on = ACTED_ON.iter().any(|a| a.starts_with(&format!("{path}.")));
        match value {
            Value::Message(inner) if partly_acted_on || !inner.fields.is_empty() => {
                collect_not_acted_on(inner, &path, out)
            }
            Value::List(items) if partly_acted_on => {
                for item in items {
                    if let Value::Message(inner) = item {
                        collect_not_acted_on(inner, &path, out);
                    }
                }
            }
            _ if !out.contains(&path) => out.push(path),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pbtxt::Node;

    /// A config setting fields of every kind, most of which ferroserve does not act on.
    const WIDE: &str = r#"
        name: "wide"
        platform: "onnxruntime_onnx"
        runtime: "libonnxruntime.so"
        max_batch_size: 8
        input [{ name: "INPUT0" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [3, -1] optional: true
                 allow_ragged_batch: true }]
        output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [4] }]
        instance_group [{ name: "cpus" count: 2 kind: KIND_CPU host_policy: "numa0" }]
        dynamic_batching {
          preserve_ordering: true
          priority_levels: 3
          default_queue_policy { timeout_action: DELAY max_queue_size: 16 allow_timeout_override: true }
          priority_queue_policy { key: 2 value: { max_queue_size: 4 default_timeout_microseconds: 18446744073709551615 } }
        }
        optimization {
          graph { level: -1 }
          execution_accelerators { gpu_execution_accelerator [{ name: "tensorrt" parameters { key: "precision_mode" value: "FP16" } }] }
          input_pinned_memory { enable: false }
        }
        model_warmup [{ name: "zeros" batch_size: 1 inputs { key: "INPUT0" value: { data_type: TYPE_FP32 dims: [3, 2] zero_data: true } } }]
        response_cache { enable: true }
        cc_model_filenames { key: "sm86" value: "model_sm86.onnx" }
        metric_tags [{ key: "team" value: "search" }, { key: "tier" value: "gold" }]
        batch_input [{ kind: BATCH_ITEM_SHAPE target_name: ["SHAPE"] data_type: TYPE_INT64 source_input: ["INPUT0"] }]
        parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
        model_transaction_policy { decoupled: false }
    "#;

    /// The value at a dotted path (`input.0.format`: list items by position, map entries by key text).
    fn at<'a>(m: &'a Message, path: &str) -> &'a Value {
        let mut parts = path.split('.');
        let mut value = m.get(parts.next().unwrap()).unwrap_or_else(|| panic!("{path}: not set"));
        for part in parts {
            value = match value {
                Value::Message(m) => m.get(part),
                Value::List(items) => items.get(part.parse::<usize>().unwrap()),
                Value::Map(entries) => entries
                    .iter()
                    .find(|(k, _)| match k {
                        Value::Str(s) => s == part,
                        Value::UInt(n) => n.to_string() == part,
                        _ => false,
                    })
                    .map(|(_, v)| v),
                _ => None,
            }
            .unwrap_or_else(|| panic!("{path}: no `{part}`"));
        }
        value
    }

    #[test]
    fn reports_every_field_as_written_with_typed_fields_over_them() {
        let mut config = ModelConfig::from_pbtxt(WIDE).unwrap();
        // What completion from the model changes: the variable dim, the backend, the file name.
        config.inputs[0].dims = vec![3, 2];
        config.backend = Some("onnxruntime".into());
        config.default_model_filename = Some("model.onnx".into());
        let report = config.report("wide");
        let text = |s: &str| Value::Str(s.to_string());
        assert_eq!(at(&report, "name"), &text("wide"));
        assert_eq!(at(&report, "runtime"), &text("libonnxruntime.so"));
        assert_eq!(at(&report, "backend"), &text("onnxruntime"));
        assert_eq!(at(&report, "default_model_filename"), &text("model.onnx"));
        assert_eq!(at(&report, "max_batch_size"), &Value::Int(8));
        assert_eq!(at(&report, "input.0.dims"), &Value::List(vec![Value::Int(3), Value::Int(2)]));
        assert_eq!(at(&report, "input.0.format"), &Value::Enum(2));
        assert_eq!(at(&report, "input.0.data_type"), &Value::Enum(11));
        assert_eq!(at(&report, "input.0.optional"), &Value::Bool(true));
        assert_eq!(at(&report, "input.0.allow_ragged_batch"), &Value::Bool(true));
        assert_eq!(at(&report, "instance_group.0.name"), &text("cpus"));
        assert_eq!(at(&report, "instance_group.0.host_policy"), &text("numa0"));
        assert_eq!(at(&report, "instance_group.0.count"), &Value::Int(2));
        assert_eq!(at(&report, "instance_group.0.kind"), &Value::Enum(2));
        assert_eq!(at(&report, "dynamic_batching.preserve_ordering"), &Value::Bool(true));
        assert_eq!(at(&report, "dynamic_batching.priority_levels"), &Value::UInt(3));
        assert_eq!(at(&report, "dynamic_batching.default_queue_policy.timeout_action"), &Value::Enum(1));
        assert_eq!(at(&report, "dynamic_batching.default_queue_policy.max_queue_size"), &Value::UInt(16));
        assert_eq!(at(&report, "dynamic_batching.default_queue_policy.allow_timeout_override"), &Value::Bool(true));
        assert_eq!(
            at(&report, "dynamic_batching.priority_queue_policy.2.default_timeout_microseconds"),
            &Value::UInt(u64::MAX)
        );
        assert_eq!(at(&report, "optimization.graph.level"), &Value::Int(-1));
        assert_eq!(
            at(&report, "optimization.execution_accelerators.gpu_execution_accelerator.0.parameters.precision_mode"),
            &text("FP16")
        );
        assert_eq!(at(&report, "optimization.input_pinned_memory.enable"), &Value::Bool(false));
        // The accelerators are also read for GPU instances.
        let tensorrt = ferroserve_runtime::Accelerator {
            name: "tensorrt".into(),
            parameters: [("precision_mode".to_string(), "FP16".to_string())].into(),
        };
        assert_eq!(ModelConfig::from_pbtxt(WIDE).unwrap().gpu_accelerators, [tensorrt]);
        assert_eq!(at(&report, "model_warmup.0.inputs.INPUT0.zero_data"), &Value::Bool(true));
        assert_eq!(at(&report, "model_warmup.0.inputs.INPUT0.dims"), &Value::List(vec![Value::Int(3), Value::Int(2)]));
        assert_eq!(at(&report, "response_cache.enable"), &Value::Bool(true));
        assert_eq!(at(&report, "cc_model_filenames.sm86"), &text("model_sm86.onnx"));
        assert_eq!(at(&report, "metric_tags.tier"), &text("gold"));
        assert_eq!(at(&report, "batch_input.0.kind"), &Value::Enum(4));
        assert_eq!(at(&report, "batch_input.0.source_input"), &Value::List(vec![text("INPUT0")]));
        assert_eq!(at(&report, "parameters.intra_op_thread_count.string_value"), &text("1"));
        assert_eq!(at(&report, "model_transaction_policy.decoupled"), &Value::Bool(false));
        // A field the file leaves out and completion fills in is reported too; an unnamed group is named.
        let plain = ModelConfig::from_pbtxt("instance_group [{ count: 1 }]").unwrap().report("m");
        assert_eq!(at(&plain, "instance_group.0.name"), &text("m_0"));
        assert_eq!(at(&plain, "version_policy.latest.num_versions"), &Value::UInt(1));
    }

    #[test]
    fn names_the_fields_it_does_not_act_on() {
        let config = ModelConfig::from_pbtxt(WIDE).unwrap();
        let source = value::typed(&MODEL_CONFIG, &config.source, &mut Problems::default());
        assert_eq!(
            not_acted_on(&source),
            [
                "runtime",
                "input.format",
                "input.optional",
                "input.allow_ragged_batch",
                "instance_group.name",
                "instance_group.host_policy",
                "dynamic_batching.preserve_ordering",
                "dynamic_batching.default_queue_policy.timeout_action",
                "dynamic_batching.priority_queue_policy",
                "optimization.graph.level",
                "optimization.input_pinned_memory.enable",
                "model_warmup",
                "response_cache.enable",
                "cc_model_filenames",
                "metric_tags",
                "batch_input",
            ]
        );
        let acted_on = "name: \"m\" max_batch_size: 4 input [{ name: \"x\" dims: [1] }] parameters { key: \"k\" \
                        value { string_value: \"v\" } } model_transaction_policy { decoupled: false }";
        let config = ModelConfig::from_pbtxt(acted_on).unwrap();
        assert!(not_acted_on(&value::typed(&MODEL_CONFIG, &config.source, &mut Problems::default())).is_empty());
    }

    #[test]
    fn values_that_do_not_fit_their_field_fail_naming_it_and_unknown_fields_are_left_out() {
        for (text, error) in [
            (
                "input [{ name: \"x\" format: NCHW }]",
                "`input[0].format` must be one of FORMAT_NONE, FORMAT_NHWC, FORMAT_NCHW, got `NCHW`",
            ),
            (
                "optimization { graph { level: high } }",
                "`optimization.graph.level` must be a 32-bit integer, got `high`",
            ),
            ("response_cache { enable: yes }", "`response_cache.enable` must be true or false, got `yes`"),
            (
                "dynamic_batching { priority_queue_policy { key: -1 value {} } }",
                "`dynamic_batching.priority_queue_policy[\"-1\"] key` must be a non-negative 64-bit integer",
            ),
            (
                "model_warmup [{ batch_size: 4294967296 }]",
                "`model_warmup[0].batch_size` must be a non-negative 32-bit integer",
            ),
            ("runtime: [\"a\"]", "`runtime` takes one value, not a list"),
            ("optimization: 3", "`optimization` is a message"),
        ] {
            let got = ModelConfig::from_pbtxt(text).unwrap_err().to_string();
            assert!(got.contains(error), "{text}: {got}");
        }
        let config =
            ModelConfig::from_pbtxt("colour: \"red\" input [{ name: \"x\" shape: [1] }] max_batch_size: 2").unwrap();
        let mut problems = Problems::default();
        let source = value::typed(&MODEL_CONFIG, &config.source, &mut problems);
        assert_eq!(problems.unknown, ["colour", "input[0].shape"]);
        assert!(source.get("colour").is_none());
        assert_eq!(config.report("m").get("colour"), None);
    }

    #[test]
    fn reads_maps_in_text_and_json_form() {
        // Triton's JSON form (a load request's config): a map is one object; int64 values come as strings.
        let json = Node::Message(vec![
            ("metric_tags".into(), Node::Message(vec![("team".into(), Node::Scalar("search".into()))])),
            (
                "dynamic_batching".into(),
                Node::Message(vec![(
                    "priority_queue_policy".into(),
                    Node::Message(vec![(
                        "2".into(),
                        Node::Message(vec![("default_timeout_microseconds".into(), Node::Scalar("100".into()))]),
                    )]),
                )]),
            ),
            ("runtime".into(), Node::Message(vec![])), // JSON null: not set
        ]);
        let report = ModelConfig::from_tree(&json).unwrap().report("m");
        assert_eq!(at(&report, "metric_tags.team"), &Value::Str("search".into()));
        assert_eq!(
            at(&report, "dynamic_batching.priority_queue_policy.2.default_timeout_microseconds"),
            &Value::UInt(100)
        );
        assert_eq!(report.get("runtime"), None);
        // Text form: one entry per `{ key value }`, the last value of a key wins, `[...]` lists entries.
        let text = "metric_tags { key: \"a\" value: \"1\" } metric_tags [{ key: \"b\" value: \"2\" }, { key: \"a\" value: \"3\" }]";
        let report = ModelConfig::from_pbtxt(text).unwrap().report("m");
        assert_eq!(
            report.get("metric_tags"),
            Some(&Value::Map(vec![
                (Value::Str("b".into()), Value::Str("2".into())),
                (Value::Str("a".into()), Value::Str("3".into())),
            ]))
        );
    }
}
