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

#[cfg(test)]
mod tests {
    use super::*;

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

    proptest::proptest! {
        #[test]
        fn f32_round_trip(values in proptest::collection::vec(proptest::num::f32::NORMAL, 0..64)) {
            let t = Tensor::from_f32(vec![values.len()], &values).unwrap();
            proptest::prop_assert_eq!(t.to_f32_vec().unwrap(), values);
        }
    }
}
