//! The raw binary tensor layout shared by the HTTP binary extension and gRPC raw contents: fixed-size
//! elements little-endian row-major; BYTES as a 4-byte little-endian length followed by the bytes, per element.

use bytes::{BufMut, Bytes, BytesMut};
use ferroserve_engine::InferError;
use ferroserve_runtime::{DataType, Tensor, TensorData};

/// A raw BYTES input about to be split into its elements: what the decoder asks of the server first.
#[derive(Debug, Clone, Copy)]
pub struct Split<'a> {
    /// The model the request names.
    pub model: &'a str,
    /// The version the request names, if any.
    pub version: Option<&'a str>,
    /// The input being split.
    pub input: &'a str,
    /// The elements its shape claims.
    pub elements: usize,
    /// What splitting allocates beside the raw bytes: a `Bytes` handle per element (32 bytes each, for
    /// elements that may take only 4 bytes: 8 times the data at most).
    pub bytes: usize,
}

impl<'a> Split<'a> {
    /// The split of `raw` as input `input` of `datatype` and `shape`; `None` for fixed-size types, whose
    /// tensor is a view of `raw` and allocates nothing.
    pub fn of(
        model: &'a str,
        version: Option<&'a str>,
        input: &'a str,
        datatype: DataType,
        shape: &[usize],
        raw: &Bytes,
    ) -> Option<Self> {
        if datatype.size_of().is_some() {
            return None;
        }
        let elements = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).unwrap_or(usize::MAX);
        let bytes = elements.min(raw.len() / 4).saturating_mul(std::mem::size_of::<Bytes>());
        Some(Split { model, version, input, elements, bytes })
    }
}

/// Called before a decoder splits a raw BYTES input, so the server can refuse it (more elements than the model
/// takes) or charge its handles to the memory budget before they are allocated.
pub type Charge<'a> = &'a mut dyn FnMut(Split<'_>) -> Result<(), InferError>;

/// Builds a tensor from its raw bytes (zero-copy for fixed-size types).
pub fn tensor_from_raw(name: &str, datatype: DataType, shape: Vec<usize>, raw: Bytes) -> Result<Tensor, InferError> {
    let count: usize = shape.iter().product();
    let data = match datatype.size_of() {
        Some(size) => {
            let expected = count
                .checked_mul(size)
                .ok_or_else(|| InferError::invalid(format!("input `{name}` shape {shape:?} has too many elements")))?;
            if raw.len() != expected {
                return Err(InferError::invalid(format!(
                    "input `{name}` shape {shape:?} of {datatype} needs {expected} bytes, the binary data has {}",
                    raw.len()
                )));
            }
            TensorData::Fixed(raw)
        }
        None => TensorData::Strings(split_bytes(name, count, raw)?),
    };
    Tensor::new(datatype, shape, data).map_err(|e| InferError::invalid(format!("input `{name}`: {e}")))
}

/// Splits length-prefixed BYTES elements, requiring exactly `count` of them and no trailing bytes.
fn split_bytes(name: &str, count: usize, raw: Bytes) -> Result<Vec<Bytes>, InferError> {
    // Each element takes at least 4 bytes: a count beyond that is a lie; don't pre-allocate for it.
    let mut items = Vec::with_capacity(count.min(raw.len() / 4));
    let mut pos = 0usize;
    while pos < raw.len() {
        let Some(prefix) = raw.get(pos..pos + 4) else {
            return Err(InferError::invalid(format!(
                "input `{name}`: BYTES element {} has a truncated 4-byte length prefix",
                items.len()
            )));
        };
        let len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        let start = pos + 4;
        let end = start.checked_add(len).filter(|&e| e <= raw.len()).ok_or_else(|| {
            InferError::invalid(format!(
                "input `{name}`: BYTES element {} claims {len} bytes, only {} remain",
                items.len(),
                raw.len() - start
            ))
        })?;
        items.push(raw.slice(start..end));
        pos = end;
    }
    if items.len() != count {
        return Err(InferError::invalid(format!(
            "input `{name}`: the shape needs {count} BYTES elements, the binary data has {}",
            items.len()
        )));
    }
    Ok(items)
}

/// The raw bytes of a tensor (a cheap clone for fixed-size types).
pub fn tensor_to_raw(tensor: &Tensor) -> Bytes {
    match tensor.data() {
        TensorData::Fixed(b) => b.clone(),
        TensorData::Strings(items) => {
            let mut out = BytesMut::with_capacity(tensor.wire_size());
            for s in items {
                out.put_u32_le(s.len() as u32);
                out.put_slice(s);
            }
            out.freeze()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip() {
        let t = Tensor::new(
            DataType::Bytes,
            vec![3],
            TensorData::Strings(vec![Bytes::from_static(b"ab"), Bytes::new(), Bytes::from_static(b"\xffz")]),
        )
        .unwrap();
        let raw = tensor_to_raw(&t);
        assert_eq!(raw.len(), 4 * 3 + 4);
        assert_eq!(tensor_from_raw("t", DataType::Bytes, vec![3], raw).unwrap(), t);
    }

    #[test]
    fn rejects_bad_bytes() {
        let e = tensor_from_raw("t", DataType::Bytes, vec![1], Bytes::from_static(&[5, 0, 0, 0, b'a'])).unwrap_err();
        assert!(e.to_string().contains("claims 5 bytes, only 1 remain"));
        assert!(tensor_from_raw("t", DataType::Bytes, vec![1], Bytes::from_static(&[1, 0])).is_err());
        let two = Bytes::from_static(&[0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(tensor_from_raw("t", DataType::Bytes, vec![1], two).unwrap_err().to_string().contains("has 2"));
        // A huge claimed count with a tiny body must not allocate for the claim.
        assert!(tensor_from_raw("t", DataType::Bytes, vec![1 << 40], Bytes::new()).is_err());
    }

    #[test]
    fn rejects_wrong_fixed_length() {
        let e = tensor_from_raw("x", DataType::Fp32, vec![2, 2], Bytes::from(vec![0u8; 15])).unwrap_err();
        assert_eq!(e.to_string(), "input `x` shape [2, 2] of FP32 needs 16 bytes, the binary data has 15");
    }

    proptest::proptest! {
        #[test]
        fn random_strings_round_trip(items in proptest::collection::vec(proptest::collection::vec(0u8..=255, 0..20), 0..10)) {
            let n = items.len();
            let t = Tensor::new(DataType::Bytes, vec![n], TensorData::Strings(items.into_iter().map(Bytes::from).collect())).unwrap();
            proptest::prop_assert_eq!(tensor_from_raw("t", DataType::Bytes, vec![n], tensor_to_raw(&t)).unwrap(), t);
        }
    }
}
