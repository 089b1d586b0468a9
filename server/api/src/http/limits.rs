//! The request's structural limits (`ferroserve_proto::limits`) applied while its JSON is parsed, so a body of
//! a million inputs, a shape of a million dims or a `parameters` map of a million entries is refused when the
//! limit is passed instead of being built (a long shape grew the server 11.5 times its JSON) and then refused.

use std::fmt;
use std::marker::PhantomData;

use ferroserve_proto::limits::{MAX_DIMS, MAX_PARAMETERS, MAX_TENSORS};
use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// A request's `inputs`.
#[cfg(test)]
pub(crate) fn inputs<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    d.deserialize_seq(Bounded { limit: MAX_TENSORS, what: "inputs", seed: PhantomData })
}

/// A request's `inputs`, each read with `seed` (for inputs that share what the request may take while parsed).
pub(crate) fn inputs_with<'de, S: DeserializeSeed<'de> + Copy>(seed: S) -> Bounded<S> {
    Bounded { limit: MAX_TENSORS, what: "inputs", seed }
}

/// A request's `outputs`, when given.
pub(crate) fn outputs<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Vec<T>>, D::Error> {
    d.deserialize_option(Optional(Bounded { limit: MAX_TENSORS, what: "requested outputs", seed: PhantomData }))
}

/// An input's `shape`.
pub(crate) fn shape<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<i64>, D::Error> {
    d.deserialize_seq(Bounded { limit: MAX_DIMS, what: "dims in a shape", seed: PhantomData })
}

/// A `parameters` object, when given.
pub(crate) fn parameters<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Map<String, Value>>, D::Error> {
    d.deserialize_option(Optional(BoundedMap))
}

/// An input's `shape`, read through [`shape`], for hand-written visitors.
pub(crate) struct Shape(pub Vec<i64>);

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        shape(d).map(Shape)
    }
}

/// A `parameters` object, read through [`parameters`], for hand-written visitors.
pub(crate) struct Parameters(pub Option<Map<String, Value>>);

impl<'de> Deserialize<'de> for Parameters {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parameters(d).map(Parameters)
    }
}

/// An array of at most `limit` items, each read with `seed` (`PhantomData<T>` for a plain `T`).
pub(crate) struct Bounded<S> {
    limit: usize,
    what: &'static str,
    seed: S,
}

impl<'de, S: DeserializeSeed<'de> + Copy> DeserializeSeed<'de> for Bounded<S> {
    type Value = Vec<S::Value>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, S: DeserializeSeed<'de> + Copy> Visitor<'de> for Bounded<S> {
    type Value = Vec<S::Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an array of at most {} {}", self.limit, self.what)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self.seed)? {
            if items.len() == self.limit {
                return Err(de::Error::custom(format!("more than {} {}", self.limit, self.what)));
            }
            items.push(item);
        }
        Ok(items)
    }
}

/// An object of at most `MAX_PARAMETERS` entries.
struct BoundedMap;

impl<'de> Visitor<'de> for BoundedMap {
    type Value = Map<String, Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an object of at most {MAX_PARAMETERS} parameters")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut entries = Map::new();
        while let Some((key, value)) = map.next_entry::<String, Value>()? {
            if entries.len() == MAX_PARAMETERS && !entries.contains_key(&key) {
                return Err(de::Error::custom(format!("more than {MAX_PARAMETERS} entries in a `parameters` object")));
            }
            entries.insert(key, value);
        }
        Ok(entries)
    }
}

/// `null` or what the inner visitor reads; also a seed, for a value read with `next_value_seed`.
pub(crate) struct Optional<V>(pub V);

impl<'de, V: Visitor<'de>> DeserializeSeed<'de> for Optional<V> {
    type Value = Option<V::Value>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Optional<V> {
    type Value = Option<V::Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "null or ")?;
        self.0.expecting(f)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self.0).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Probe {
        #[serde(default, deserialize_with = "super::shape")]
        shape: Vec<i64>,
        #[serde(default, deserialize_with = "super::inputs")]
        inputs: Vec<u8>,
        #[serde(default, deserialize_with = "super::outputs")]
        outputs: Option<Vec<u8>>,
        #[serde(default, deserialize_with = "super::parameters")]
        parameters: Option<serde_json::Map<String, serde_json::Value>>,
    }

    fn parse(json: &str) -> Result<Probe, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    fn array(n: usize) -> String {
        format!("[{}]", vec!["1"; n].join(","))
    }

    fn object(n: usize) -> String {
        format!("{{{}}}", (0..n).map(|i| format!("\"{i}\":true")).collect::<Vec<_>>().join(","))
    }

    #[test]
    fn at_the_limits_parses() {
        let json = format!(
            r#"{{"shape":{},"inputs":{},"outputs":{},"parameters":{}}}"#,
            array(64),
            array(4096),
            array(4096),
            object(1024)
        );
        let probe = parse(&json).expect("parses");
        assert_eq!((probe.shape.len(), probe.inputs.len()), (64, 4096));
        assert_eq!(probe.outputs.map(|o| o.len()), Some(4096));
        assert_eq!(probe.parameters.map(|p| p.len()), Some(1024));
        let absent = parse(r#"{"outputs":null,"parameters":null}"#).expect("parses");
        assert!(absent.outputs.is_none() && absent.parameters.is_none());
        // A repeated key replaces its value and is not a new entry.
        let repeated = format!(r#"{{"parameters":{}}}"#, object(1024).replacen('}', r#","0":false}"#, 1));
        assert_eq!(parse(&repeated).expect("parses").parameters.map(|p| p.len()), Some(1024));
    }

    #[test]
    fn past_a_limit_is_refused_naming_it() {
        let cases = [
            (format!(r#"{{"shape":{}}}"#, array(65)), "more than 64 dims in a shape"),
            (format!(r#"{{"inputs":{}}}"#, array(4097)), "more than 4096 inputs"),
            (format!(r#"{{"outputs":{}}}"#, array(4097)), "more than 4096 requested outputs"),
            (format!(r#"{{"parameters":{}}}"#, object(1025)), "more than 1024 entries"),
            (r#"{"parameters":[1]}"#.to_string(), "an object of at most 1024 parameters"),
        ];
        for (json, message) in cases {
            let error = parse(&json).err().expect("refused");
            assert!(error.contains(message), "{error}");
        }
    }
}
