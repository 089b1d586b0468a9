//! Triton's `ModelConfig` message, as a table: every message, field name, field number, type and label of
//! `model_config.proto` (triton-inference-server/common) that a model configuration may set, so that a
//! `config.pbtxt` (or a load request's JSON config) can be typed field by field and reported back through
//! both APIs: as protobuf JSON over HTTP and as the same fields on the wire over gRPC.
//!
//! The table is written by hand from Triton's published proto and checked against it from outside: the
//! end-to-end test `tests/e2e/test_model_config.py` writes a config setting every field of the descriptor
//! that `tritonclient` decodes with and compares what comes back; `proto/proto/inference.proto` declares the
//! same messages with the same numbers (checked by the gRPC conversion's tests). `sequence_batching` and
//! `ensemble_scheduling` are left out: ferroserve refuses a config that sets them (see [`super`]).

/// A message type: its name in `model_config.proto` and its fields.
#[derive(Debug, PartialEq)]
pub struct MessageType {
    /// The message name (nested messages as `Outer.Inner`).
    pub name: &'static str,
    /// Its fields, in the proto's order.
    pub fields: &'static [Field],
}

impl MessageType {
    /// The field called `name`.
    pub fn field(&self, name: &str) -> Option<&'static Field> {
        // The tables are statics, so their fields live for 'static; go through a 'static reference.
        let fields: &'static [Field] = self.fields;
        fields.iter().find(|f| f.name == name)
    }

    /// The message type of the message field `name` (single or repeated). Panics if there is no such field: the
    /// callers name fields of this table.
    pub fn message(&self, name: &str) -> &'static MessageType {
        match self.field(name).map(|f| &f.kind) {
            Some(Kind::Message(inner)) => inner,
            _ => panic!("{}.{name} is not a message field", self.name),
        }
    }

    /// The value type of the map field `name`, a message. Panics if there is no such field.
    pub fn map_value(&self, name: &str) -> &'static MessageType {
        match self.field(name).map(|f| &f.kind) {
            Some(Kind::Map(_, Kind::Message(inner))) => inner,
            _ => panic!("{}.{name} is not a map of messages", self.name),
        }
    }
}

/// An enum type: its value names and numbers.
#[derive(Debug, PartialEq)]
pub struct EnumType {
    /// The enum name.
    pub name: &'static str,
    /// `(name, number)` of every value; the first is the default (number 0).
    pub values: &'static [(&'static str, i32)],
}

impl EnumType {
    /// The name of the value numbered `number`.
    pub fn name_of(&self, number: i32) -> Option<&'static str> {
        self.values.iter().find(|(_, n)| *n == number).map(|(name, _)| *name)
    }
}

/// The type of a field (or of a map's key or value).
#[derive(Debug, PartialEq)]
pub enum Kind {
    /// `bool`.
    Bool,
    /// `int32`.
    Int32,
    /// `int64`.
    Int64,
    /// `uint32`.
    UInt32,
    /// `uint64`.
    UInt64,
    /// `double`.
    Double,
    /// `string`.
    String,
    /// An enum.
    Enum(&'static EnumType),
    /// A message.
    Message(&'static MessageType),
    /// `map<key, value>`: the key is `String` or `UInt64`, the value a scalar or a message.
    Map(&'static Kind, &'static Kind),
}

/// How often a field may occur.
#[derive(Debug, PartialEq, Clone, Copy)]
pub enum Label {
    /// Once (proto3 implicit presence for scalars, explicit for messages).
    Single,
    /// `repeated` (maps are `Single` with a `Map` kind).
    Repeated,
    /// A member of the named `oneof`: explicit presence, at most one member set.
    Oneof(&'static str),
}

/// One field of a message.
#[derive(Debug, PartialEq)]
pub struct Field {
    /// The proto field name (also its JSON name: Triton writes proto names).
    pub name: &'static str,
    /// The field number on the wire.
    pub number: u32,
    /// Its type.
    pub kind: Kind,
    /// Single, repeated or oneof member.
    pub label: Label,
}

const fn one(name: &'static str, number: u32, kind: Kind) -> Field {
    Field { name, number, kind, label: Label::Single }
}

const fn rep(name: &'static str, number: u32, kind: Kind) -> Field {
    Field { name, number, kind, label: Label::Repeated }
}

const fn oneof(group: &'static str, name: &'static str, number: u32, kind: Kind) -> Field {
    Field { name, number, kind, label: Label::Oneof(group) }
}

use Kind::{Bool, Double, Enum, Int32, Int64, Map, Message, String as Str, UInt32, UInt64};

/// `inference.DataType`.
pub static DATA_TYPE: EnumType = EnumType {
    name: "DataType",
    values: &[
        ("TYPE_INVALID", 0),
        ("TYPE_BOOL", 1),
        ("TYPE_UINT8", 2),
        ("TYPE_UINT16", 3),
        ("TYPE_UINT32", 4),
        ("TYPE_UINT64", 5),
        ("TYPE_INT8", 6),
        ("TYPE_INT16", 7),
        ("TYPE_INT32", 8),
        ("TYPE_INT64", 9),
        ("TYPE_FP16", 10),
        ("TYPE_FP32", 11),
        ("TYPE_FP64", 12),
        ("TYPE_STRING", 13),
        ("TYPE_BF16", 14),
    ],
};

static FORMAT: EnumType =
    EnumType { name: "ModelInput.Format", values: &[("FORMAT_NONE", 0), ("FORMAT_NHWC", 1), ("FORMAT_NCHW", 2)] };

static BATCH_INPUT_KIND: EnumType = EnumType {
    name: "BatchInput.Kind",
    values: &[
        ("BATCH_ELEMENT_COUNT", 0),
        ("BATCH_ACCUMULATED_ELEMENT_COUNT", 1),
        ("BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO", 2),
        ("BATCH_MAX_ELEMENT_COUNT_AS_SHAPE", 3),
        ("BATCH_ITEM_SHAPE", 4),
        ("BATCH_ITEM_SHAPE_FLATTEN", 5),
    ],
};

static BATCH_OUTPUT_KIND: EnumType =
    EnumType { name: "BatchOutput.Kind", values: &[("BATCH_SCATTER_WITH_INPUT_SHAPE", 0)] };

static MODEL_PRIORITY: EnumType = EnumType {
    name: "ModelOptimizationPolicy.ModelPriority",
    values: &[("PRIORITY_DEFAULT", 0), ("PRIORITY_MAX", 1), ("PRIORITY_MIN", 2)],
};

static TIMEOUT_ACTION: EnumType =
    EnumType { name: "ModelQueuePolicy.TimeoutAction", values: &[("REJECT", 0), ("DELAY", 1)] };

/// `inference.ModelInstanceGroup.Kind`.
pub static INSTANCE_KIND: EnumType = EnumType {
    name: "ModelInstanceGroup.Kind",
    values: &[("KIND_AUTO", 0), ("KIND_GPU", 1), ("KIND_CPU", 2), ("KIND_MODEL", 3)],
};

static SECONDARY_DEVICE_KIND: EnumType =
    EnumType { name: "ModelInstanceGroup.SecondaryDevice.SecondaryDeviceKind", values: &[("KIND_NVDLA", 0)] };

static VERSION_LATEST: MessageType =
    MessageType { name: "ModelVersionPolicy.Latest", fields: &[one("num_versions", 1, UInt32)] };
static VERSION_ALL: MessageType = MessageType { name: "ModelVersionPolicy.All", fields: &[] };
static VERSION_SPECIFIC: MessageType =
    MessageType { name: "ModelVersionPolicy.Specific", fields: &[rep("versions", 1, Int64)] };
static VERSION_POLICY: MessageType = MessageType {
    name: "ModelVersionPolicy",
    fields: &[
        oneof("policy_choice", "latest", 1, Message(&VERSION_LATEST)),
        oneof("policy_choice", "all", 2, Message(&VERSION_ALL)),
        oneof("policy_choice", "specific", 3, Message(&VERSION_SPECIFIC)),
    ],
};

static RESHAPE: MessageType = MessageType { name: "ModelTensorReshape", fields: &[rep("shape", 1, Int64)] };

static MODEL_INPUT: MessageType = MessageType {
    name: "ModelInput",
    fields: &[
        one("name", 1, Str),
        one("data_type", 2, Enum(&DATA_TYPE)),
        one("format", 3, Enum(&FORMAT)),
        rep("dims", 4, Int64),
        one("reshape", 5, Message(&RESHAPE)),
        one("is_shape_tensor", 6, Bool),
        one("allow_ragged_batch", 7, Bool),
        one("optional", 8, Bool),
        one("is_non_linear_format_io", 9, Bool),
    ],
};

static MODEL_OUTPUT: MessageType = MessageType {
    name: "ModelOutput",
    fields: &[
        one("name", 1, Str),
        one("data_type", 2, Enum(&DATA_TYPE)),
        rep("dims", 3, Int64),
        one("reshape", 5, Message(&RESHAPE)),
        one("label_filename", 4, Str),
        one("is_shape_tensor", 6, Bool),
        one("is_non_linear_format_io", 7, Bool),
    ],
};

static BATCH_INPUT: MessageType = MessageType {
    name: "BatchInput",
    fields: &[
        one("kind", 1, Enum(&BATCH_INPUT_KIND)),
        rep("target_name", 2, Str),
        one("data_type", 3, Enum(&DATA_TYPE)),
        rep("source_input", 4, Str),
    ],
};

static BATCH_OUTPUT: MessageType = MessageType {
    name: "BatchOutput",
    fields: &[rep("target_name", 1, Str), one("kind", 2, Enum(&BATCH_OUTPUT_KIND)), rep("source_input", 3, Str)],
};

static GRAPH: MessageType = MessageType { name: "ModelOptimizationPolicy.Graph", fields: &[one("level", 1, Int32)] };
static SHAPE: MessageType =
    MessageType { name: "ModelOptimizationPolicy.Cuda.GraphSpec.Shape", fields: &[rep("dim", 1, Int64)] };
static LOWER_BOUND: MessageType = MessageType {
    name: "ModelOptimizationPolicy.Cuda.GraphSpec.LowerBound",
    fields: &[one("batch_size", 1, Int32), one("input", 2, Map(&Str, &Message(&SHAPE)))],
};
static GRAPH_SPEC: MessageType = MessageType {
    name: "ModelOptimizationPolicy.Cuda.GraphSpec",
    fields: &[
        one("batch_size", 1, Int32),
        one("input", 2, Map(&Str, &Message(&SHAPE))),
        one("graph_lower_bound", 3, Message(&LOWER_BOUND)),
    ],
};
static CUDA: MessageType = MessageType {
    name: "ModelOptimizationPolicy.Cuda",
    fields: &[
        one("graphs", 1, Bool),
        one("busy_wait_events", 2, Bool),
        rep("graph_spec", 3, Message(&GRAPH_SPEC)),
        one("output_copy_stream", 4, Bool),
    ],
};
static ACCELERATOR: MessageType = MessageType {
    name: "ModelOptimizationPolicy.ExecutionAccelerators.Accelerator",
    fields: &[one("name", 1, Str), one("parameters", 2, Map(&Str, &Str))],
};
static EXECUTION_ACCELERATORS: MessageType = MessageType {
    name: "ModelOptimizationPolicy.ExecutionAccelerators",
    fields: &[
        rep("gpu_execution_accelerator", 1, Message(&ACCELERATOR)),
        rep("cpu_execution_accelerator", 2, Message(&ACCELERATOR)),
    ],
};
static PINNED_MEMORY: MessageType =
    MessageType { name: "ModelOptimizationPolicy.PinnedMemoryBuffer", fields: &[one("enable", 1, Bool)] };
static OPTIMIZATION: MessageType = MessageType {
    name: "ModelOptimizationPolicy",
    fields: &[
        one("graph", 1, Message(&GRAPH)),
        one("priority", 2, Enum(&MODEL_PRIORITY)),
        one("cuda", 3, Message(&CUDA)),
        one("execution_accelerators", 4, Message(&EXECUTION_ACCELERATORS)),
        one("input_pinned_memory", 5, Message(&PINNED_MEMORY)),
        one("output_pinned_memory", 6, Message(&PINNED_MEMORY)),
        one("gather_kernel_buffer_threshold", 7, UInt32),
        one("eager_batching", 8, Bool),
    ],
};

static QUEUE_POLICY: MessageType = MessageType {
    name: "ModelQueuePolicy",
    fields: &[
        one("timeout_action", 1, Enum(&TIMEOUT_ACTION)),
        one("default_timeout_microseconds", 2, UInt64),
        one("allow_timeout_override", 3, Bool),
        one("max_queue_size", 4, UInt32),
    ],
};

static DYNAMIC_BATCHING: MessageType = MessageType {
    name: "ModelDynamicBatching",
    fields: &[
        rep("preferred_batch_size", 1, Int32),
        one("max_queue_delay_microseconds", 2, UInt64),
        one("preserve_ordering", 3, Bool),
        one("priority_levels", 4, UInt64),
        one("default_priority_level", 5, UInt64),
        one("default_queue_policy", 6, Message(&QUEUE_POLICY)),
        one("priority_queue_policy", 7, Map(&UInt64, &Message(&QUEUE_POLICY))),
    ],
};

static RATE_LIMITER_RESOURCE: MessageType = MessageType {
    name: "ModelRateLimiter.Resource",
    fields: &[one("name", 1, Str), one("global", 2, Bool), one("count", 3, UInt32)],
};
static RATE_LIMITER: MessageType = MessageType {
    name: "ModelRateLimiter",
    fields: &[rep("resources", 1, Message(&RATE_LIMITER_RESOURCE)), one("priority", 2, UInt32)],
};
static SECONDARY_DEVICE: MessageType = MessageType {
    name: "ModelInstanceGroup.SecondaryDevice",
    fields: &[one("kind", 1, Enum(&SECONDARY_DEVICE_KIND)), one("device_id", 2, Int64)],
};
static INSTANCE_GROUP: MessageType = MessageType {
    name: "ModelInstanceGroup",
    fields: &[
        one("name", 1, Str),
        one("kind", 4, Enum(&INSTANCE_KIND)),
        one("count", 2, Int32),
        one("rate_limiter", 6, Message(&RATE_LIMITER)),
        rep("gpus", 3, Int32),
        rep("secondary_devices", 8, Message(&SECONDARY_DEVICE)),
        rep("profile", 5, Str),
        one("passive", 7, Bool),
        one("host_policy", 9, Str),
    ],
};

static PARAMETER: MessageType = MessageType { name: "ModelParameter", fields: &[one("string_value", 1, Str)] };

static WARMUP_INPUT: MessageType = MessageType {
    name: "ModelWarmup.Input",
    fields: &[
        one("data_type", 1, Enum(&DATA_TYPE)),
        rep("dims", 2, Int64),
        oneof("input_data_type", "zero_data", 3, Bool),
        oneof("input_data_type", "random_data", 4, Bool),
        oneof("input_data_type", "input_data_file", 5, Str),
    ],
};
static WARMUP: MessageType = MessageType {
    name: "ModelWarmup",
    fields: &[
        one("name", 1, Str),
        one("batch_size", 2, UInt32),
        one("inputs", 3, Map(&Str, &Message(&WARMUP_INPUT))),
        one("count", 4, UInt32),
    ],
};

static OPERATIONS: MessageType = MessageType { name: "ModelOperations", fields: &[rep("op_library_filename", 1, Str)] };
static TRANSACTION_POLICY: MessageType =
    MessageType { name: "ModelTransactionPolicy", fields: &[one("decoupled", 1, Bool)] };
static AGENT: MessageType = MessageType {
    name: "ModelRepositoryAgents.Agent",
    fields: &[one("name", 1, Str), one("parameters", 2, Map(&Str, &Str))],
};
static AGENTS: MessageType =
    MessageType { name: "ModelRepositoryAgents", fields: &[rep("agents", 1, Message(&AGENT))] };
static RESPONSE_CACHE: MessageType = MessageType { name: "ModelResponseCache", fields: &[one("enable", 1, Bool)] };

static METRIC_IDENTIFIER: MessageType =
    MessageType { name: "ModelMetrics.MetricControl.MetricIdentifier", fields: &[one("family", 1, Str)] };
static HISTOGRAM_OPTIONS: MessageType =
    MessageType { name: "ModelMetrics.MetricControl.HistogramOptions", fields: &[rep("buckets", 1, Double)] };
static METRIC_CONTROL: MessageType = MessageType {
    name: "ModelMetrics.MetricControl",
    fields: &[
        one("metric_identifier", 1, Message(&METRIC_IDENTIFIER)),
        oneof("metric_options", "histogram_options", 2, Message(&HISTOGRAM_OPTIONS)),
    ],
};
static METRICS: MessageType =
    MessageType { name: "ModelMetrics", fields: &[rep("metric_control", 1, Message(&METRIC_CONTROL))] };

/// `inference.ModelConfig`, less `sequence_batching` (13) and `ensemble_scheduling` (15).
pub static MODEL_CONFIG: MessageType = MessageType {
    name: "ModelConfig",
    fields: &[
        one("name", 1, Str),
        one("platform", 2, Str),
        one("backend", 17, Str),
        one("runtime", 25, Str),
        one("version_policy", 3, Message(&VERSION_POLICY)),
        one("max_batch_size", 4, Int32),
        rep("input", 5, Message(&MODEL_INPUT)),
        rep("output", 6, Message(&MODEL_OUTPUT)),
        rep("batch_input", 20, Message(&BATCH_INPUT)),
        rep("batch_output", 21, Message(&BATCH_OUTPUT)),
        one("optimization", 12, Message(&OPTIMIZATION)),
        oneof("scheduling_choice", "dynamic_batching", 11, Message(&DYNAMIC_BATCHING)),
        rep("instance_group", 7, Message(&INSTANCE_GROUP)),
        one("default_model_filename", 8, Str),
        one("cc_model_filenames", 9, Map(&Str, &Str)),
        one("metric_tags", 10, Map(&Str, &Str)),
        one("parameters", 14, Map(&Str, &Message(&PARAMETER))),
        rep("model_warmup", 16, Message(&WARMUP)),
        one("model_operations", 18, Message(&OPERATIONS)),
        one("model_transaction_policy", 19, Message(&TRANSACTION_POLICY)),
        one("model_repository_agents", 23, Message(&AGENTS)),
        one("response_cache", 24, Message(&RESPONSE_CACHE)),
        one("model_metrics", 26, Message(&METRICS)),
    ],
};

#[cfg(test)]
mod tests {
    use super::*;

    /// Every message reachable from `m`, once.
    fn messages(m: &'static MessageType, out: &mut Vec<&'static MessageType>) {
        if out.iter().any(|seen| std::ptr::eq(*seen, m)) {
            return;
        }
        out.push(m);
        for f in m.fields {
            let mut kind = &f.kind;
            if let Map(_, value) = kind {
                kind = value;
            }
            if let Message(inner) = kind {
                messages(inner, out);
            }
        }
    }

    #[test]
    fn field_names_and_numbers_are_unique_and_maps_are_well_formed() {
        let mut all = Vec::new();
        messages(&MODEL_CONFIG, &mut all);
        assert_eq!(all.len(), 37, "messages reachable from ModelConfig");
        for m in all {
            for (i, f) in m.fields.iter().enumerate() {
                let clash = m.fields[i + 1..].iter().find(|g| g.name == f.name || g.number == f.number);
                assert!(clash.is_none(), "{}.{} clashes with {:?}", m.name, f.name, clash);
                if let Map(key, value) = &f.kind {
                    assert!(matches!(key, Str | UInt64), "{}.{}", m.name, f.name);
                    assert!(!matches!(value, Map(..)), "{}.{}", m.name, f.name);
                    assert_eq!(f.label, Label::Single, "{}.{}", m.name, f.name);
                }
            }
        }
        for e in [&DATA_TYPE, &FORMAT, &BATCH_INPUT_KIND, &BATCH_OUTPUT_KIND, &MODEL_PRIORITY, &TIMEOUT_ACTION] {
            assert_eq!(e.values[0].1, 0, "{}", e.name);
        }
    }
}
