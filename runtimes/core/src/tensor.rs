//! [`Tensor`]: a data type, a concrete shape and elements in one canonical byte layout.

use bytes::Bytes;

use crate::DataType;

/// The elements of a tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// Fixed-size elements, little-endian, row-major, `element_count * size_of` bytes. BOOL is one byte 0/1.
    Fixed(Bytes),
    /// One byte string per element, row-major (`BYTES`).
    Strings(Vec<Bytes>),
}

/// Why a tensor could not be built from its parts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TensorError {
    /// The shape's element count overflows `usize`.
    #[error("shape {shape:?} has too many elements")]
    ShapeOverflow {
        /// The offending shape.
        shape: Vec<usize>,
    },
    /// The byte length does not match the shape.
    #[error("shape {shape:?} of {datatype} needs {expected} bytes, got {actual}")]
    ByteLength {
        /// The data type.
        datatype: DataType,
        /// The shape.
        shape: Vec<usize>,
        /// Bytes the shape needs.
        expected: usize,
        /// Bytes supplied.
        actual: usize,
    },
    /// The number of strings does not match the shape.
    #[error("shape {shape:?} needs {expected} elements, got {actual}")]
    ElementCount {
        /// The shape.
        shape: Vec<usize>,
        /// Elements the shape needs.
        expected: usize,
        /// Elements supplied.
        actual: usize,
    },
    /// Fixed-size data given for BYTES or strings for a fixed-size type.
    #[error("{datatype} data in the wrong layout")]
    Layout {
        /// The data type.
        datatype: DataType,
    },
}

/// A dense tensor with a concrete shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    datatype: DataType,
    shape: Vec<usize>,
    data: TensorData,
}

/// Multiplies out a shape, `None` on overflow.
pub(crate) fn checked_element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

impl Tensor {
    /// Builds a tensor, checking that the data fits the shape and type exactly.
    pub fn new(datatype: DataType, shape: Vec<usize>, data: TensorData) -> Result<Self, TensorError> {
        let count = checked_element_count(&shape).ok_or_else(|| TensorError::ShapeOverflow { shape: shape.clone() })?;
        match (&data, datatype.size_of()) {
            (TensorData::Fixed(bytes), Some(size)) => {
                let expected =
                    count.checked_mul(size).ok_or_else(|| TensorError::ShapeOverflow { shape: shape.clone() })?;
                if bytes.len() != expected {
                    return Err(TensorError::ByteLength { datatype, shape, expected, actual: bytes.len() });
                }
            }
            (TensorData::Strings(items), None) => {
                if items.len() != count {
                    return Err(TensorError::ElementCount { shape, expected: count, actual: items.len() });
                }
            }
            _ => return Err(TensorError::Layout { datatype }),
        }
        Ok(Tensor { datatype, shape, data })
    }

    /// Builds a fixed-size tensor from typed values (a convenience for tests and backends).
    pub fn from_le_bytes(datatype: DataType, shape: Vec<usize>, bytes: impl Into<Bytes>) -> Result<Self, TensorError> {
        Tensor::new(datatype, shape, TensorData::Fixed(bytes.into()))
    }

    /// Builds an FP32 tensor from values.
    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Result<Self, TensorError> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Tensor::from_le_bytes(DataType::Fp32, shape, bytes)
    }

    /// The element type.
    pub fn datatype(&self) -> DataType {
        self.datatype
    }

    /// The concrete shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The elements.
    pub fn data(&self) -> &TensorData {
        &self.data
    }

    /// Takes the elements out.
    pub fn into_data(self) -> TensorData {
        self.data
    }

    /// The same elements under another shape with the same element count (a config `reshape`); the data is
    /// not touched. Hands the tensor back unchanged when the counts differ.
    pub fn reshape(mut self, shape: Vec<usize>) -> Result<Tensor, Tensor> {
        if checked_element_count(&shape) != Some(self.element_count()) {
            return Err(self);
        }
        self.shape = shape;
        Ok(self)
    }

    /// Number of elements (the product of the shape).
    pub fn element_count(&self) -> usize {
        // `new` checked that this does not overflow.
        self.shape.iter().product()
    }

    /// Bytes of payload: the raw size, or for BYTES the sum of string lengths plus a 4-byte prefix each
    /// (the size of the binary wire form).
    pub fn wire_size(&self) -> usize {
        match &self.data {
            TensorData::Fixed(b) => b.len(),
            TensorData::Strings(items) => items.iter().map(|s| 4 + s.len()).sum(),
        }
    }

    /// Bytes of memory the tensor holds: its data, and for BYTES a handle per element besides (a runtime's own
    /// copy, such as ONNX Runtime's `std::string`s, takes about as much again).
    pub fn memory_size(&self) -> usize {
        match &self.data {
            TensorData::Fixed(b) => b.len(),
            TensorData::Strings(items) => items.iter().map(|s| std::mem::size_of::<Bytes>() + s.len()).sum(),
        }
    }

    /// The fixed-size bytes, if this is not a BYTES tensor.
    pub fn as_fixed(&self) -> Option<&Bytes> {
        match &self.data {
            TensorData::Fixed(b) => Some(b),
            TensorData::Strings(_) => None,
        }
    }

    /// The byte strings, if this is a BYTES tensor.
    pub fn as_strings(&self) -> Option<&[Bytes]> {
        match &self.data {
            TensorData::Fixed(_) => None,
            TensorData::Strings(s) => Some(s),
        }
    }

    /// Reads FP32 elements (tests and reference checks).
    pub fn to_f32_vec(&self) -> Option<Vec<f32>> {
        if self.datatype != DataType::Fp32 {
            return None;
        }
        let bytes = self.as_fixed()?;
        Some(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }
}

/// Why tensors could not be joined into a batch or split back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// Nothing to concatenate.
    #[error("no tensors to concatenate")]
    Empty,
    /// The tensors differ in type or in a non-batch dim.
    #[error("tensors differ in type or in a dim after the first: {0}")]
    Mismatch(String),
    /// The first dim does not split into the requested row counts.
    #[error("cannot split {rows} rows into {requested} rows")]
    Split {
        /// Rows available.
        rows: usize,
        /// Rows requested in total.
        requested: usize,
    },
    /// A scalar (rank-0) tensor has no batch dim.
    #[error("a rank-0 tensor has no batch dim")]
    Rank0,
}

impl Tensor {
    /// Concatenates tensors along dim 0 (they must agree on type and every other dim).
    pub fn concat(parts: &[Tensor]) -> Result<Tensor, BatchError> {
        let first = parts.first().ok_or(BatchError::Empty)?;
        if first.shape.is_empty() {
            return Err(BatchError::Rank0);
        }
        if parts.len() == 1 {
            return Ok(first.clone());
        }
        let mut rows = 0usize;
        for p in parts {
            if p.datatype != first.datatype || p.shape.len() != first.shape.len() || p.shape[1..] != first.shape[1..] {
                return Err(BatchError::Mismatch(format!(
                    "{} {:?} vs {} {:?}",
                    first.datatype, first.shape, p.datatype, p.shape
                )));
            }
            rows += p.shape[0];
        }
        let mut shape = first.shape.clone();
        shape[0] = rows;
        let data = match &first.data {
            TensorData::Fixed(_) => {
                let total: usize = parts.iter().map(|p| p.as_fixed().map_or(0, Bytes::len)).sum();
                let mut out = Vec::with_capacity(total);
                for p in parts {
                    out.extend_from_slice(p.as_fixed().ok_or_else(|| BatchError::Mismatch("layout".into()))?);
                }
                TensorData::Fixed(Bytes::from(out))
            }
            TensorData::Strings(_) => {
                let mut out = Vec::with_capacity(parts.iter().map(Tensor::element_count).sum());
                for p in parts {
                    out.extend_from_slice(p.as_strings().ok_or_else(|| BatchError::Mismatch("layout".into()))?);
                }
                TensorData::Strings(out)
            }
        };
        Ok(Tensor { datatype: first.datatype, shape, data })
    }

    /// Splits along dim 0 into consecutive pieces of `rows[i]` rows each (zero-copy for fixed-size types).
    pub fn split_rows(&self, rows: &[usize]) -> Result<Vec<Tensor>, BatchError> {
        let total = *self.shape.first().ok_or(BatchError::Rank0)?;
        let requested: usize = rows.iter().sum();
        if requested != total {
            return Err(BatchError::Split { rows: total, requested });
        }
        let row_elements: usize = self.shape[1..].iter().product();
        let mut pieces = Vec::with_capacity(rows.len());
        let mut start = 0usize;
        for &n in rows {
            let mut shape = self.shape.clone();
            shape[0] = n;
            let (from, to) = (start * row_elements, (start + n) * row_elements);
            let data = match &self.data {
                TensorData::Fixed(b) => {
                    let size = self.datatype.size_of().unwrap_or(1);
                    TensorData::Fixed(b.slice(from * size..to * size))
                }
                TensorData::Strings(items) => TensorData::Strings(items[from..to].to_vec()),
            };
            pieces.push(Tensor { datatype: self.datatype, shape, data });
            start += n;
        }
        Ok(pieces)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reshape_keeps_the_data_and_needs_the_same_element_count() {
        let t = Tensor::from_f32(vec![2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let r = t.reshape(vec![3, 1, 2]).unwrap();
        assert_eq!(r.shape(), &[3, 1, 2]);
        assert_eq!(r.to_f32_vec().unwrap(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let back = r.reshape(vec![4]).unwrap_err();
        assert_eq!(back.shape(), &[3, 1, 2]);
    }

    #[test]
    fn rejects_wrong_byte_length() {
        let err = Tensor::from_le_bytes(DataType::Fp32, vec![2, 3], vec![0u8; 20]).unwrap_err();
        assert_eq!(err.to_string(), "shape [2, 3] of FP32 needs 24 bytes, got 20");
    }

    #[test]
    fn rejects_layout_mismatch() {
        assert!(Tensor::new(DataType::Bytes, vec![1], TensorData::Fixed(Bytes::from_static(b"x"))).is_err());
        assert!(Tensor::new(DataType::Int8, vec![1], TensorData::Strings(vec![Bytes::new()])).is_err());
    }

    #[test]
    fn rejects_overflowing_shape() {
        let err = Tensor::from_le_bytes(DataType::Fp64, vec![usize::MAX, 2], Vec::new()).unwrap_err();
        assert!(matches!(err, TensorError::ShapeOverflow { .. }));
    }

    #[test]
    fn zero_sized_and_strings() {
        let t = Tensor::from_le_bytes(DataType::Fp32, vec![0, 4], Vec::new()).unwrap();
        assert_eq!(t.element_count(), 0);
        let s =
            Tensor::new(DataType::Bytes, vec![2], TensorData::Strings(vec![Bytes::from_static(b"ab"), Bytes::new()]))
                .unwrap();
        assert_eq!(s.wire_size(), 10);
    }

    #[test]
    fn concat_and_split_round_trip() {
        let a = Tensor::from_f32(vec![1, 2], &[1.0, 2.0]).unwrap();
        let b = Tensor::from_f32(vec![2, 2], &[3.0, 4.0, 5.0, 6.0]).unwrap();
        let joined = Tensor::concat(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(joined.shape(), &[3, 2]);
        assert_eq!(joined.to_f32_vec().unwrap(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(joined.split_rows(&[1, 2]).unwrap(), vec![a, b]);
        assert!(joined.split_rows(&[1, 1]).is_err());
        let c = Tensor::from_f32(vec![1, 3], &[0.0; 3]).unwrap();
        assert!(matches!(Tensor::concat(&[joined, c]), Err(BatchError::Mismatch(_))));
        let s1 = Tensor::new(DataType::Bytes, vec![1], TensorData::Strings(vec![Bytes::from_static(b"a")])).unwrap();
        let s2 =
            Tensor::new(DataType::Bytes, vec![2], TensorData::Strings(vec![Bytes::new(), Bytes::from_static(b"c")]))
                .unwrap();
        let s = Tensor::concat(&[s1.clone(), s2.clone()]).unwrap();
        assert_eq!(s.split_rows(&[1, 2]).unwrap(), vec![s1, s2]);
    }

    proptest::proptest! {
        #[test]
        fn split_inverts_concat(rows in proptest::collection::vec(0usize..5, 1..6), width in 1usize..4) {
            let parts: Vec<Tensor> = rows.iter().enumerate().map(|(i, &r)| {
                let values: Vec<f32> = (0..r * width).map(|j| (i * 100 + j) as f32).collect();
                Tensor::from_f32(vec![r, width], &values).unwrap()
            }).collect();
            let joined = Tensor::concat(&parts).unwrap();
            proptest::prop_assert_eq!(joined.shape()[0], rows.iter().sum::<usize>());
            proptest::prop_assert_eq!(joined.split_rows(&rows).unwrap(), parts);
        }
    }

    proptest::proptest! {
        #[test]
        fn f32_round_trip(values in proptest::collection::vec(proptest::num::f32::NORMAL, 0..64)) {
            let t = Tensor::from_f32(vec![values.len()], &values).unwrap();
            proptest::prop_assert_eq!(t.to_f32_vec().unwrap(), values);
        }
    }
}
