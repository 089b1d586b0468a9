//! Conversion between our raw little-endian [`Tensor`] layout and `ort` values.
//!
//! Bytes arriving from the network are not aligned for `f32`, so inputs are collected into typed vectors
//! (one copy) rather than reinterpreted in place. Outputs are copied once out of ONNX Runtime's buffer.
//! BYTES go through [`crate::strings`], which carries any bytes (NUL, non-UTF-8) unchanged.

use bytes::Bytes;
use ferroserve_runtime::{DataType, RuntimeError, Tensor, TensorData};
use ort::value::{DynValue, TensorElementType};

use crate::strings;

/// Our data type for an ONNX element type, if the protocol has one.
pub(crate) fn datatype_of(ty: TensorElementType) -> Option<DataType> {
    Some(match ty {
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::Uint8 => DataType::Uint8,
        TensorElementType::Uint16 => DataType::Uint16,
        TensorElementType::Uint32 => DataType::Uint32,
        TensorElementType::Uint64 => DataType::Uint64,
        TensorElementType::Int8 => DataType::Int8,
        TensorElementType::Int16 => DataType::Int16,
        TensorElementType::Int32 => DataType::Int32,
        TensorElementType::Int64 => DataType::Int64,
        TensorElementType::Float16 => DataType::Fp16,
        TensorElementType::Bfloat16 => DataType::Bf16,
        TensorElementType::Float32 => DataType::Fp32,
        TensorElementType::Float64 => DataType::Fp64,
        TensorElementType::String => DataType::Bytes,
        _ => return None,
    })
}

fn ort_error(e: ort::Error) -> RuntimeError {
    RuntimeError::InvalidInput(e.to_string())
}

/// Builds an `ort` value from one of our tensors.
pub(crate) fn to_value(tensor: Tensor) -> Result<DynValue, RuntimeError> {
    let shape: Vec<i64> = tensor.shape().iter().map(|&d| d as i64).collect();
    let datatype = tensor.datatype();
    macro_rules! primitive {
        ($ty:ty) => {{
            let bytes = tensor.as_fixed().ok_or_else(|| layout_error(datatype))?;
            let values: Vec<$ty> = bytemuck::pod_collect_to_vec(bytes);
            ort::value::Tensor::from_array((shape, values)).map_err(ort_error)?.into_dyn()
        }};
    }
    Ok(match datatype {
        DataType::Uint8 => primitive!(u8),
        DataType::Uint16 => primitive!(u16),
        DataType::Uint32 => primitive!(u32),
        DataType::Uint64 => primitive!(u64),
        DataType::Int8 => primitive!(i8),
        DataType::Int16 => primitive!(i16),
        DataType::Int32 => primitive!(i32),
        DataType::Int64 => primitive!(i64),
        DataType::Fp16 => primitive!(half::f16),
        DataType::Bf16 => primitive!(half::bf16),
        DataType::Fp32 => primitive!(f32),
        DataType::Fp64 => primitive!(f64),
        DataType::Bool => {
            let bytes = tensor.as_fixed().ok_or_else(|| layout_error(datatype))?;
            let values: Vec<bool> = bytes.iter().map(|&b| b != 0).collect();
            ort::value::Tensor::from_array((shape, values)).map_err(ort_error)?.into_dyn()
        }
        DataType::Bytes => {
            let items = tensor.as_strings().ok_or_else(|| layout_error(datatype))?;
            strings::to_string_value(&shape, items)?
        }
    })
}

fn layout_error(datatype: DataType) -> RuntimeError {
    RuntimeError::InvalidInput(format!("{datatype} tensor in the wrong layout"))
}

/// Copies an `ort` output value into one of our tensors.
pub(crate) fn from_value(value: &DynValue) -> Result<Tensor, RuntimeError> {
    let exec = |e: ort::Error| RuntimeError::Execution(e.to_string());
    let (ty, value_shape) = match value.dtype() {
        ort::value::ValueType::Tensor { ty, shape, .. } => (*ty, shape),
        other => return Err(RuntimeError::Unsupported(format!("output of type {other:?}"))),
    };
    let datatype = datatype_of(ty).ok_or_else(|| RuntimeError::Unsupported(format!("output element type {ty:?}")))?;
    macro_rules! primitive {
        ($ty:ty) => {{
            let (shape, data) = value.try_extract_tensor::<$ty>().map_err(exec)?;
            (dims(shape), TensorData::Fixed(Bytes::copy_from_slice(bytemuck::cast_slice(data))))
        }};
    }
    let (shape, data) = match datatype {
        DataType::Uint8 => primitive!(u8),
        DataType::Uint16 => primitive!(u16),
        DataType::Uint32 => primitive!(u32),
        DataType::Uint64 => primitive!(u64),
        DataType::Int8 => primitive!(i8),
        DataType::Int16 => primitive!(i16),
        DataType::Int32 => primitive!(i32),
        DataType::Int64 => primitive!(i64),
        DataType::Fp16 => primitive!(half::f16),
        DataType::Bf16 => primitive!(half::bf16),
        DataType::Fp32 => primitive!(f32),
        DataType::Fp64 => primitive!(f64),
        DataType::Bool => {
            let (shape, data) = value.try_extract_tensor::<bool>().map_err(exec)?;
            (dims(shape), TensorData::Fixed(data.iter().map(|&b| u8::from(b)).collect::<Vec<u8>>().into()))
        }
        DataType::Bytes => (dims(value_shape), TensorData::Strings(strings::strings_of(value)?)),
    };
    Tensor::new(datatype, shape, data).map_err(|e| RuntimeError::Execution(e.to_string()))
}

fn dims(shape: &[i64]) -> Vec<usize> {
    shape.iter().map(|&d| d.max(0) as usize).collect()
}
