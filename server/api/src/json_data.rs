//! The JSON form of tensor data, shared by the v2 and v1 REST codecs.
//!
//! Decoding flattens nested or flat `data` arrays in one pass into [`JsonScalar`]s and then packs them into
//! the tensor's raw little-endian layout, checking each value's range for the declared type. Encoding
//! serializes straight from the raw bytes through [`DataView`], without an intermediate `serde_json::Value`.

use std::fmt;

use bytes::Bytes;
use ferroserve_engine::InferError;
use ferroserve_runtime::{DataType, Tensor, TensorData};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};

/// One leaf of a JSON `data` array.
#[derive(Debug, Clone, PartialEq)]
pub enum JsonScalar {
    /// `true` / `false`.
    Bool(bool),
    /// A negative integer.
    Int(i64),
    /// A non-negative integer.
    Uint(u64),
    /// A number with a fraction or exponent.
    Float(f64),
    /// A string (BYTES elements).
    Str(String),
}

/// A `data` field flattened in row-major order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlatData(pub Vec<JsonScalar>);

impl<'de> de::Deserialize<'de> for FlatData {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut out = Vec::new();
        deserializer.deserialize_any(Flatten { out: &mut out, depth: 0 })?;
        Ok(FlatData(out))
    }
}

/// Nesting deeper than this is refused (tensors of such rank are not real; a deep stack is an attack).
const MAX_DEPTH: usize = 64;

struct Flatten<'a> {
    out: &'a mut Vec<JsonScalar>,
    depth: usize,
}

impl<'de> de::DeserializeSeed<'de> for Flatten<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Flatten<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number, bool, string or (nested) array of them")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.out.push(JsonScalar::Bool(v));
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.out.push(if v >= 0 { JsonScalar::Uint(v as u64) } else { JsonScalar::Int(v) });
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.out.push(JsonScalar::Uint(v));
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.out.push(JsonScalar::Float(v));
        Ok(())
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.out.push(JsonScalar::Str(v.to_owned()));
        Ok(())
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<(), E> {
        self.out.push(JsonScalar::Str(v));
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.depth >= MAX_DEPTH {
            return Err(de::Error::custom(format!("`data` is nested deeper than {MAX_DEPTH} levels")));
        }
        if let Some(hint) = seq.size_hint() {
            self.out.reserve(hint);
        }
        while seq.next_element_seed(Flatten { out: &mut *self.out, depth: self.depth + 1 })?.is_some() {}
        Ok(())
    }
}

/// Multiplies out a client-supplied shape, refusing negative dims and overflow.
pub fn concrete_shape(name: &str, shape: &[i64]) -> Result<Vec<usize>, InferError> {
    let dims = shape
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Vec<usize>, _>>()
        .map_err(|_| InferError::invalid(format!("input `{name}` has a negative dim in shape {shape:?}")))?;
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| InferError::invalid(format!("input `{name}` shape {shape:?} has too many elements")))?;
    Ok(dims)
}

/// Packs JSON scalars into a tensor of `datatype` and `shape`.
pub fn tensor_from_json(
    name: &str,
    datatype: DataType,
    shape: Vec<usize>,
    data: Vec<JsonScalar>,
) -> Result<Tensor, InferError> {
    let expected: usize = shape.iter().product();
    if data.len() != expected {
        return Err(InferError::invalid(format!(
            "input `{name}` shape {shape:?} needs {expected} elements, `data` has {}",
            data.len()
        )));
    }
    let bad = |i: usize, v: &JsonScalar| {
        InferError::invalid(format!("input `{name}` element {i}: {} is not a valid {datatype} value", describe(v)))
    };
    macro_rules! pack_int {
        ($ty:ty) => {{
            let mut out = Vec::with_capacity(expected * std::mem::size_of::<$ty>());
            for (i, v) in data.iter().enumerate() {
                let x: $ty = match v {
                    JsonScalar::Uint(u) => <$ty>::try_from(*u).map_err(|_| bad(i, v))?,
                    JsonScalar::Int(s) => <$ty>::try_from(*s).map_err(|_| bad(i, v))?,
                    _ => return Err(bad(i, v)),
                };
                out.extend_from_slice(&x.to_le_bytes());
            }
            TensorData::Fixed(Bytes::from(out))
        }};
    }
    macro_rules! pack_float {
        ($ty:ty) => {{
            let mut out = Vec::with_capacity(expected * std::mem::size_of::<$ty>());
            for (i, v) in data.iter().enumerate() {
                let x: $ty = match v {
                    JsonScalar::Float(f) => *f as $ty,
                    JsonScalar::Uint(u) => *u as $ty,
                    JsonScalar::Int(s) => *s as $ty,
                    _ => return Err(bad(i, v)),
                };
                out.extend_from_slice(&x.to_le_bytes());
            }
            TensorData::Fixed(Bytes::from(out))
        }};
    }
    let packed = match datatype {
        DataType::Bool => {
            let mut out = Vec::with_capacity(expected);
            for (i, v) in data.iter().enumerate() {
                match v {
                    JsonScalar::Bool(b) => out.push(u8::from(*b)),
                    _ => return Err(bad(i, v)),
                }
            }
            TensorData::Fixed(Bytes::from(out))
        }
        DataType::Uint8 => pack_int!(u8),
        DataType::Uint16 => pack_int!(u16),
        DataType::Uint32 => pack_int!(u32),
        DataType::Uint64 => pack_int!(u64),
        DataType::Int8 => pack_int!(i8),
        DataType::Int16 => pack_int!(i16),
        DataType::Int32 => pack_int!(i32),
        DataType::Int64 => pack_int!(i64),
        DataType::Fp32 => pack_float!(f32),
        DataType::Fp64 => pack_float!(f64),
        DataType::Fp16 | DataType::Bf16 => {
            return Err(InferError::invalid(format!(
                "input `{name}`: {datatype} data must use the binary tensor extension, not JSON"
            )));
        }
        DataType::Bytes => {
            let mut out = Vec::with_capacity(expected);
            for (i, v) in data.into_iter().enumerate() {
                match v {
                    JsonScalar::Str(s) => out.push(Bytes::from(s)),
                    other => return Err(bad(i, &other)),
                }
            }
            TensorData::Strings(out)
        }
    };
    Tensor::new(datatype, shape, packed).map_err(|e| InferError::invalid(format!("input `{name}`: {e}")))
}

fn describe(v: &JsonScalar) -> String {
    match v {
        JsonScalar::Bool(b) => b.to_string(),
        JsonScalar::Int(i) => i.to_string(),
        JsonScalar::Uint(u) => u.to_string(),
        JsonScalar::Float(f) => f.to_string(),
        JsonScalar::Str(s) => format!("{:?}", s.chars().take(32).collect::<String>()),
    }
}

/// Serializes a tensor's elements as a flat JSON array, straight from its raw bytes.
pub struct DataView<'a>(pub &'a Tensor);

impl serde::Serialize for DataView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let tensor = self.0;
        let mut seq = serializer.serialize_seq(Some(tensor.element_count()))?;
        match tensor.data() {
            TensorData::Strings(items) => {
                for s in items {
                    seq.serialize_element(&String::from_utf8_lossy(s))?;
                }
            }
            TensorData::Fixed(bytes) => {
                macro_rules! each {
                    ($ty:ty, $n:expr) => {
                        for c in bytes.chunks_exact($n) {
                            let mut a = [0u8; $n];
                            a.copy_from_slice(c);
                            seq.serialize_element(&<$ty>::from_le_bytes(a))?;
                        }
                    };
                }
                match tensor.datatype() {
                    DataType::Bool => {
                        for &b in bytes.iter() {
                            seq.serialize_element(&(b != 0))?;
                        }
                    }
                    DataType::Uint8 => each!(u8, 1),
                    DataType::Uint16 => each!(u16, 2),
                    DataType::Uint32 => each!(u32, 4),
                    DataType::Uint64 => each!(u64, 8),
                    DataType::Int8 => each!(i8, 1),
                    DataType::Int16 => each!(i16, 2),
                    DataType::Int32 => each!(i32, 4),
                    DataType::Int64 => each!(i64, 8),
                    DataType::Fp32 => each!(f32, 4),
                    DataType::Fp64 => each!(f64, 8),
                    // The codecs send these in binary; keep JSON valid if one slips through.
                    DataType::Fp16 => each!(u16, 2),
                    DataType::Bf16 => each!(u16, 2),
                    DataType::Bytes => {}
                }
            }
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(json: &str) -> Vec<JsonScalar> {
        serde_json::from_str::<FlatData>(json).unwrap().0
    }

    #[test]
    fn flattens_nested_arrays() {
        assert_eq!(
            flat("[[1, 2], [3, -4]]"),
            vec![JsonScalar::Uint(1), JsonScalar::Uint(2), JsonScalar::Uint(3), JsonScalar::Int(-4)]
        );
        assert_eq!(flat("[true, [\"a\"], 1.5]").len(), 3);
        let deep = format!("{}1{}", "[".repeat(100), "]".repeat(100));
        assert!(serde_json::from_str::<FlatData>(&deep).is_err());
    }

    #[test]
    fn packs_with_range_checks() {
        let t = tensor_from_json("x", DataType::Int8, vec![2], flat("[-128, 127]")).unwrap();
        assert_eq!(t.as_fixed().unwrap().as_ref(), &[0x80, 0x7f]);
        let e = tensor_from_json("x", DataType::Int8, vec![1], flat("[128]")).unwrap_err();
        assert!(e.to_string().contains("128 is not a valid INT8"));
        assert!(tensor_from_json("x", DataType::Uint32, vec![1], flat("[-1]")).is_err());
        assert!(tensor_from_json("x", DataType::Int32, vec![1], flat("[1.5]")).is_err());
        assert!(tensor_from_json("x", DataType::Bool, vec![1], flat("[1]")).is_err());
        assert!(tensor_from_json("x", DataType::Fp16, vec![1], flat("[1]")).is_err());
        let e = tensor_from_json("x", DataType::Fp32, vec![2, 3], flat("[1,2,3,4,5]")).unwrap_err();
        assert_eq!(e.to_string(), "input `x` shape [2, 3] needs 6 elements, `data` has 5");
    }

    #[test]
    fn serializes_from_raw_bytes() {
        let t = Tensor::from_f32(vec![3], &[1.5, -2.0, 0.1]).unwrap();
        assert_eq!(serde_json::to_string(&DataView(&t)).unwrap(), "[1.5,-2.0,0.1]");
        let b = Tensor::from_le_bytes(DataType::Bool, vec![2], vec![1u8, 0]).unwrap();
        assert_eq!(serde_json::to_string(&DataView(&b)).unwrap(), "[true,false]");
    }

    proptest::proptest! {
        #[test]
        fn int64_json_round_trip(values in proptest::collection::vec(proptest::num::i64::ANY, 0..32)) {
            let json = serde_json::to_string(&values).unwrap();
            let t = tensor_from_json("x", DataType::Int64, vec![values.len()], flat(&json)).unwrap();
            proptest::prop_assert_eq!(serde_json::to_string(&DataView(&t)).unwrap(), json);
        }
    }
}
