//! A model configuration typed by [`schema`]: the untyped tree of a `config.pbtxt` (or of a load request's
//! JSON config) read field by field into [`Value`]s, and the merge of two such configurations.
//!
//! The HTTP API renders a [`Message`] as Triton's JSON, the gRPC API encodes it as protobuf; both walk the same
//! value with the same schema, so the two answers carry the same fields.

use super::schema::{Field, Kind, Label, MessageType};
use crate::pbtxt::Node;

/// A typed field value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `bool`.
    Bool(bool),
    /// `int32` or `int64`.
    Int(i64),
    /// `uint32` or `uint64`.
    UInt(u64),
    /// `double`.
    Double(f64),
    /// `string`.
    Str(String),
    /// An enum value's number (a name of its type, checked).
    Enum(i32),
    /// A message.
    Message(Message),
    /// The values of a repeated field, in order.
    List(Vec<Value>),
    /// The entries of a map field, in order, keys unique (the last one written wins).
    Map(Vec<(Value, Value)>),
}

/// A message value: the fields that are set, each once, in the order first set.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Its type.
    pub schema: &'static MessageType,
    /// The set fields.
    pub fields: Vec<(&'static Field, Value)>,
}

impl Message {
    /// A message with no field set.
    pub fn new(schema: &'static MessageType) -> Self {
        Message { schema, fields: Vec::new() }
    }

    /// The value of field `name`, if set.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.fields.iter().find(|(f, _)| f.name == name).map(|(_, v)| v)
    }

    /// Sets field `name` (replacing its value); a name the schema lacks is a programming error.
    pub fn set(&mut self, name: &str, value: Value) {
        let field = self.schema.field(name).unwrap_or_else(|| panic!("{} has no field `{name}`", self.schema.name));
        if let Label::Oneof(group) = field.label {
            // Setting a oneof member clears the others.
            self.fields.retain(|(f, _)| f.label != Label::Oneof(group) || f.name == name);
        }
        match self.fields.iter_mut().find(|(f, _)| f.name == name) {
            Some(slot) => slot.1 = value,
            None => self.fields.push((field, value)),
        }
    }

    /// Builder form of [`Message::set`].
    pub fn with(mut self, name: &str, value: Value) -> Self {
        self.set(name, value);
        self
    }

    /// Lays `top` over `self`: a field `top` sets replaces this one's, except that messages merge field by
    /// field, and repeated messages element by element, matched by their `name` where `top`'s element has one
    /// (inputs, outputs) and by position otherwise (instance groups). Elements only `self` has are dropped:
    /// `top` lists what exists.
    pub fn overlay(&mut self, top: Message) {
        for (field, value) in top.fields {
            let merged = match (self.get(field.name).cloned(), value) {
                (Some(Value::Message(mut base)), Value::Message(top)) => {
                    base.overlay(top);
                    Value::Message(base)
                }
                (Some(Value::List(base)), Value::List(top)) if matches!(field.kind, Kind::Message(_)) => {
                    Value::List(top.into_iter().enumerate().map(|(i, top)| overlay_element(&base, i, top)).collect())
                }
                (_, value) => value,
            };
            self.set(field.name, merged);
        }
    }
}

fn overlay_element(base: &[Value], index: usize, top: Value) -> Value {
    let Value::Message(top) = top else { return top };
    let found = match top.get("name") {
        Some(name) => base.iter().find(|b| matches!(b, Value::Message(m) if m.get("name") == Some(name))),
        None => base.get(index),
    };
    match found {
        Some(Value::Message(base)) => {
            let mut base = base.clone();
            base.overlay(top);
            Value::Message(base)
        }
        _ => Value::Message(top),
    }
}

/// What typing a tree found wrong.
#[derive(Debug, Default)]
pub struct Problems {
    /// Paths of fields that Triton's `ModelConfig` does not have (`input[0].colour`).
    pub unknown: Vec<String>,
    /// A value that does not fit its field: the path and the reason.
    pub invalid: Vec<String>,
}

/// Reads a tree as a message of type `schema`: fields the schema lacks are left out (and listed in
/// `problems.unknown`), values that do not fit their field are left out (and listed in `problems.invalid`).
pub fn typed(schema: &'static MessageType, node: &Node, problems: &mut Problems) -> Message {
    message(schema, node, "", problems)
}

fn message(schema: &'static MessageType, node: &Node, path: &str, problems: &mut Problems) -> Message {
    let mut out = Message::new(schema);
    let mut seen: Vec<&str> = Vec::new();
    for name in node.field_names() {
        if seen.contains(&name) {
            continue;
        }
        seen.push(name);
        let at = if path.is_empty() { name.to_string() } else { format!("{path}.{name}") };
        let Some(field) = schema.field(name) else {
            problems.unknown.push(at);
            continue;
        };
        let value = match (&field.kind, field.label) {
            (Kind::Map(key, value), _) => map(key, value, node.all(name), &at, problems),
            (kind, Label::Repeated) => {
                let items = node.all(name).enumerate().filter_map(|(i, n)| {
                    let at = format!("{at}[{i}]");
                    single(kind, n, &at, problems)
                });
                Some(Value::List(items.collect()))
            }
            (kind, _) => match node.get(name) {
                Some(Node::List(_)) => {
                    problems.invalid.push(format!("`{at}` takes one value, not a list"));
                    None
                }
                Some(n) => single(kind, n, &at, problems),
                None => None,
            },
        };
        if let Some(value) = value {
            out.set(name, value);
        }
    }
    out
}

/// A map's entries: in text format each entry is a `{ key: .. value: .. }` message (the field repeated, or a
/// list of them); in Triton's JSON form (a load request's config) the map is one object, its members the
/// entries. An object whose only members are `key` and `value` is read as one entry of the text form.
fn map<'a>(
    key: &Kind,
    value: &Kind,
    nodes: impl Iterator<Item = &'a Node>,
    at: &str,
    problems: &mut Problems,
) -> Option<Value> {
    let mut entries: Vec<(Value, Value)> = Vec::new();
    for node in nodes {
        let names = node.field_names();
        let pairs: Vec<(Node, Option<&Node>)> = match node {
            Node::Message(_) if names.contains(&"key") && names.iter().all(|n| ["key", "value"].contains(n)) => {
                vec![(node.get("key").cloned().unwrap_or_default(), node.get("value"))]
            }
            Node::Message(fields) => fields.iter().map(|(k, v)| (Node::Scalar(k.clone()), Some(v))).collect(),
            _ => {
                problems.invalid.push(format!("`{at}` is a map: it takes `{{ key: .. value: .. }}` entries"));
                continue;
            }
        };
        for (k, v) in pairs {
            let key_text = k.scalar().unwrap_or_default().to_string();
            let Some(k) = single(key, &k, &format!("{at}[{key_text:?}] key"), problems) else { continue };
            let v = match v {
                Some(v) => single(value, v, &format!("{at}[{key_text:?}]"), problems),
                None => Some(default_of(value)),
            };
            let Some(v) = v else { continue };
            entries.retain(|(existing, _)| *existing != k);
            entries.push((k, v));
        }
    }
    Some(Value::Map(entries))
}

/// The value of an entry a map lists without its `value`.
fn default_of(kind: &Kind) -> Value {
    match kind {
        Kind::Message(m) => Value::Message(Message::new(m)),
        Kind::UInt64 | Kind::UInt32 => Value::UInt(0),
        _ => Value::Str(String::new()),
    }
}

/// One value of `kind`; `None` (with a problem noted) when it does not fit, or for JSON's `null`.
fn single(kind: &Kind, node: &Node, at: &str, problems: &mut Problems) -> Option<Value> {
    if let Kind::Message(schema) = kind {
        return match node {
            Node::Message(_) => Some(Value::Message(message(schema, node, at, problems))),
            _ => {
                problems.invalid.push(format!("`{at}` is a message: it takes `{{ ... }}`"));
                None
            }
        };
    }
    let text = match node {
        Node::Scalar(text) => text.as_str(),
        // JSON `null` (an empty message in the tree): the field's default, i.e. not set.
        Node::Message(fields) if fields.is_empty() => return None,
        _ => {
            problems.invalid.push(format!("`{at}` takes a single value"));
            return None;
        }
    };
    let parsed = match kind {
        Kind::Bool => match text {
            "true" | "True" | "t" | "1" => Some(Value::Bool(true)),
            "false" | "False" | "f" | "0" => Some(Value::Bool(false)),
            _ => None,
        },
        Kind::Int32 => text.parse::<i32>().ok().map(|v| Value::Int(v.into())),
        Kind::Int64 => text.parse::<i64>().ok().map(Value::Int),
        Kind::UInt32 => text.parse::<u32>().ok().map(|v| Value::UInt(v.into())),
        Kind::UInt64 => text.parse::<u64>().ok().map(Value::UInt),
        Kind::Double => text.parse::<f64>().ok().map(Value::Double),
        Kind::String => Some(Value::Str(text.to_string())),
        Kind::Enum(e) => {
            let by_name = e.values.iter().find(|(name, _)| *name == text).map(|(_, n)| *n);
            let by_number = text.parse::<i32>().ok().filter(|n| e.name_of(*n).is_some());
            by_name.or(by_number).map(Value::Enum)
        }
        Kind::Message(_) | Kind::Map(..) => None,
    };
    if parsed.is_none() {
        let expected = match kind {
            Kind::Bool => "true or false".to_string(),
            Kind::Int32 => "a 32-bit integer".to_string(),
            Kind::Int64 => "a 64-bit integer".to_string(),
            Kind::UInt32 => "a non-negative 32-bit integer".to_string(),
            Kind::UInt64 => "a non-negative 64-bit integer".to_string(),
            Kind::Double => "a number".to_string(),
            Kind::Enum(e) => format!("one of {}", e.values.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")),
            _ => "a value".to_string(),
        };
        problems.invalid.push(format!("`{at}` must be {expected}, got `{text}`"));
    }
    parsed
}
