//! gRPC `ModelConfig`: the configuration a version reports ([`ModelConfig::report`], the same value the HTTP
//! `/config` renders as JSON), encoded field by field with the numbers and types of Triton's
//! `model_config.proto` ([`schema`]) and decoded as our `inference.ModelConfig`, which declares the same
//! messages. Going through the wire format keeps one mapping for every field, set or not acted on, instead of a
//! second hand-written copy of the schema; the tests check that no field is lost on the way.
//!
//! [`schema`]: ferroserve_engine::config::schema

use ferroserve_engine::config::ModelConfig;
use ferroserve_engine::config::schema::{Field, Kind, Label};
use ferroserve_engine::config::value::{Message, Value};
use ferroserve_proto as pb;
use prost::Message as _;
use prost::encoding::{WireType, encode_key, encode_varint};

/// The `ModelConfig` reply for `name`.
pub(super) fn config_to_proto(config: &ModelConfig, name: &str) -> pb::ModelConfig {
    let bytes = encode(&config.report(name));
    pb::ModelConfig::decode(bytes.as_slice()).unwrap_or_else(|e| {
        // The encoder and inference.proto follow one schema (see the tests): a failure here is our bug.
        tracing::error!(model = name, error = %e, "model config does not decode as inference.ModelConfig");
        pb::ModelConfig { name: name.to_string(), ..Default::default() }
    })
}

/// A message in protobuf binary form.
fn encode(m: &Message) -> Vec<u8> {
    let mut buf = Vec::new();
    for (field, value) in &m.fields {
        encode_field(field, value, &mut buf);
    }
    buf
}

fn encode_field(field: &Field, value: &Value, buf: &mut Vec<u8>) {
    match (value, &field.kind) {
        (Value::Map(entries), Kind::Map(..)) => {
            for (key, value) in entries {
                // A map entry is a message { key = 1; value = 2; }, its defaults left out as prost does.
                let mut entry = Vec::new();
                encode_value(1, key, false, &mut entry);
                encode_value(2, value, false, &mut entry);
                length_delimited(field.number, &entry, buf);
            }
        }
        (Value::List(items), kind) if packed(kind) => {
            // proto3 packs repeated numbers, bools and enums into one length-delimited record.
            if !items.is_empty() {
                let mut payload = Vec::new();
                for item in items {
                    scalar(item, &mut payload);
                }
                length_delimited(field.number, &payload, buf);
            }
        }
        (Value::List(items), _) => {
            for item in items {
                encode_value(field.number, item, true, buf);
            }
        }
        // A oneof member is written even at its default: being set is what it says.
        (value, _) => encode_value(field.number, value, matches!(field.label, Label::Oneof(_)), buf),
    }
}

fn packed(kind: &Kind) -> bool {
    !matches!(kind, Kind::String | Kind::Message(_) | Kind::Map(..))
}

/// One value under field `number`; a default scalar (or an empty message in a map entry) is left out unless
/// `present`, as proto3 does for fields without presence.
fn encode_value(number: u32, value: &Value, present: bool, buf: &mut Vec<u8>) {
    match value {
        Value::Message(m) => {
            if present || !m.fields.is_empty() {
                length_delimited(number, &encode(m), buf);
            }
        }
        Value::Str(s) => {
            if present || !s.is_empty() {
                length_delimited(number, s.as_bytes(), buf);
            }
        }
        Value::List(_) | Value::Map(_) => {
            debug_assert!(false, "a list or map value inside a list or map: the schema has none");
        }
        scalar_value => {
            if present || !is_default(scalar_value) {
                let wire =
                    if matches!(scalar_value, Value::Double(_)) { WireType::SixtyFourBit } else { WireType::Varint };
                encode_key(number, wire, buf);
                scalar(scalar_value, buf);
            }
        }
    }
}

fn is_default(value: &Value) -> bool {
    match value {
        Value::Bool(b) => !b,
        Value::Int(n) => *n == 0,
        Value::UInt(n) => *n == 0,
        Value::Enum(n) => *n == 0,
        Value::Double(x) => *x == 0.0,
        _ => false,
    }
}

/// The payload of a varint or fixed64 scalar (int32 and enums sign-extended to 64 bits, as protobuf does).
fn scalar(value: &Value, buf: &mut Vec<u8>) {
    match value {
        Value::Bool(b) => encode_varint(u64::from(*b), buf),
        Value::Int(n) => encode_varint(*n as u64, buf),
        Value::UInt(n) => encode_varint(*n, buf),
        Value::Enum(n) => encode_varint(i64::from(*n) as u64, buf),
        Value::Double(x) => buf.extend_from_slice(&x.to_le_bytes()),
        _ => debug_assert!(false, "not a scalar: {value:?}"),
    }
}

fn length_delimited(number: u32, payload: &[u8], buf: &mut Vec<u8>) {
    encode_key(number, WireType::LengthDelimited, buf);
    encode_varint(payload.len() as u64, buf);
    buf.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use ferroserve_engine::config::schema::{MODEL_CONFIG, MessageType};
    use ferroserve_engine::config::value::{Problems, typed};
    use ferroserve_engine::pbtxt::Node;

    use super::*;

    /// A tree setting every field of `m` (the first member of each oneof) to a value other than its default.
    fn every_field(m: &MessageType) -> Node {
        let mut fields = Vec::new();
        let mut groups = Vec::new();
        for f in m.fields {
            if let Label::Oneof(group) = f.label {
                if groups.contains(&group) {
                    continue;
                }
                groups.push(group);
            }
            let value = match (&f.kind, f.label) {
                (Kind::Map(key, value), _) => Node::List(
                    [("1", sample(value)), ("2", sample(value))]
                        .into_iter()
                        .map(|(k, v)| {
                            let key = if matches!(key, Kind::String) { format!("key{k}") } else { k.to_string() };
                            Node::Message(vec![("key".into(), Node::Scalar(key)), ("value".into(), v)])
                        })
                        .collect(),
                ),
                (kind, Label::Repeated) => Node::List(vec![sample(kind), sample(kind)]),
                (kind, _) => sample(kind),
            };
            fields.push((f.name.to_string(), value));
        }
        Node::Message(fields)
    }

    fn sample(kind: &Kind) -> Node {
        let text = match kind {
            Kind::Bool => "true".to_string(),
            Kind::Int32 => "-7".to_string(),
            Kind::Int64 => (-(1i64 << 40)).to_string(),
            Kind::UInt32 => u32::MAX.to_string(),
            Kind::UInt64 => u64::MAX.to_string(),
            Kind::Double => "0.25".to_string(),
            Kind::String => "text".to_string(),
            Kind::Enum(e) => e.values[e.values.len() - 1].0.to_string(),
            Kind::Message(m) => return every_field(m),
            Kind::Map(..) => unreachable!("maps are fields, not values"),
        };
        Node::Scalar(text)
    }

    #[test]
    fn every_schema_field_survives_our_proto_declarations() {
        let mut problems = Problems::default();
        let config = typed(&MODEL_CONFIG, &every_field(&MODEL_CONFIG), &mut problems);
        assert!(problems.unknown.is_empty() && problems.invalid.is_empty(), "{problems:?}");
        let bytes = encode(&config);
        let decoded = pb::ModelConfig::decode(bytes.as_slice()).unwrap();
        // prost keeps no unknown fields: a field inference.proto lacks, or declares with another wire type, would
        // be dropped (or fail the decode) and change the length.
        assert_eq!(decoded.encoded_len(), bytes.len());
        let warmup_input = &decoded.model_warmup[0].inputs["key1"];
        assert_eq!(warmup_input.dims, [-(1i64 << 40), -(1i64 << 40)]);
        assert_eq!(warmup_input.input_data_type, Some(pb::model_warmup::input::InputDataType::ZeroData(true)));
        let batching = match decoded.scheduling_choice {
            Some(pb::model_config::SchedulingChoice::DynamicBatching(b)) => b,
            None => panic!("no dynamic_batching"),
        };
        assert_eq!(batching.priority_queue_policy[&2].default_timeout_microseconds, u64::MAX);
        assert_eq!(decoded.optimization.unwrap().graph.unwrap().level, -7);
        let metrics = &decoded.model_metrics.unwrap().metric_control[0];
        assert!(matches!(
            &metrics.metric_options,
            Some(pb::model_metrics::metric_control::MetricOptions::HistogramOptions(h)) if h.buckets == [0.25, 0.25]
        ));
    }

    #[test]
    fn reports_the_fields_config_pbtxt_sets() {
        let mut config = ModelConfig::from_pbtxt(
            r#"
            name: "wide"
            platform: "onnxruntime_onnx"
            max_batch_size: 8
            input [{ name: "INPUT0" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [3, 8, 8] optional: true }]
            output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [10] label_filename: "labels.txt" }]
            instance_group [{ name: "cpus" count: 2 kind: KIND_CPU host_policy: "numa0" }]
            dynamic_batching {
              preserve_ordering: true
              default_queue_policy { timeout_action: DELAY max_queue_size: 16 }
              priority_queue_policy { key: 1 value { max_queue_size: 4 } }
            }
            optimization { graph { level: -1 } input_pinned_memory { enable: true } }
            model_warmup [{ name: "w" batch_size: 1 inputs { key: "INPUT0" value { data_type: TYPE_FP32 dims: [3, 8, 8] random_data: true } } }]
            response_cache { enable: true }
            cc_model_filenames { key: "sm86" value: "model_sm86.onnx" }
            metric_tags { key: "team" value: "search" }
            batch_input [{ kind: BATCH_ELEMENT_COUNT target_name: "COUNT" data_type: TYPE_INT32 source_input: "INPUT0" }]
            parameters { key: "intra_op_thread_count" value { string_value: "1" } }
            "#,
        )
        .unwrap();
        config.backend = Some("onnxruntime".into());
        let got = config_to_proto(&config, "wide");
        use pb::model_config::SchedulingChoice;
        let input = &got.input[0];
        assert_eq!(input.format, pb::model_input::Format::Nchw as i32);
        assert_eq!(
            (input.data_type, input.dims.as_slice(), input.optional),
            (pb::DataType::TypeFp32 as i32, &[3, 8, 8][..], true)
        );
        assert_eq!(got.output[0].label_filename, "labels.txt");
        assert_eq!(got.backend, "onnxruntime");
        assert_eq!(got.max_batch_size, 8);
        let group = &got.instance_group[0];
        assert_eq!((group.name.as_str(), group.count, group.host_policy.as_str()), ("cpus", 2, "numa0"));
        assert_eq!(group.kind, pb::model_instance_group::Kind::Cpu as i32);
        let Some(SchedulingChoice::DynamicBatching(batching)) = &got.scheduling_choice else { panic!("no batching") };
        assert!(batching.preserve_ordering);
        let queue = batching.default_queue_policy.as_ref().unwrap();
        assert_eq!(
            (queue.timeout_action, queue.max_queue_size),
            (pb::model_queue_policy::TimeoutAction::Delay as i32, 16)
        );
        assert_eq!(batching.priority_queue_policy[&1].max_queue_size, 4);
        let optimization = got.optimization.as_ref().unwrap();
        assert_eq!(optimization.graph.as_ref().unwrap().level, -1);
        assert!(optimization.input_pinned_memory.as_ref().unwrap().enable);
        assert_eq!(got.model_warmup[0].name, "w");
        assert_eq!(
            got.model_warmup[0].inputs["INPUT0"].input_data_type,
            Some(pb::model_warmup::input::InputDataType::RandomData(true))
        );
        assert!(got.response_cache.as_ref().unwrap().enable);
        assert_eq!(got.cc_model_filenames["sm86"], "model_sm86.onnx");
        assert_eq!(got.metric_tags["team"], "search");
        assert_eq!(got.batch_input[0].source_input, ["INPUT0"]);
        assert_eq!(got.batch_input[0].data_type, pb::DataType::TypeInt32 as i32);
        assert_eq!(got.parameters["intra_op_thread_count"].string_value, "1");
        assert!(!got.model_transaction_policy.as_ref().unwrap().decoupled);
        assert!(matches!(
            got.version_policy.and_then(|p| p.policy_choice),
            Some(pb::model_version_policy::PolicyChoice::Latest(pb::model_version_policy::Latest { num_versions: 1 }))
        ));
    }
}
