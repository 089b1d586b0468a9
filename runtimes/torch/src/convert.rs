//! Tensors between ferroserve and libtorch: element types, bytes both ways (one copy each), and the shapes a
//! module's result may take.

use ferroserve_runtime::{DataType, RuntimeError, Tensor, TensorSpec};
use tch::Kind;

/// The libtorch element type of a protocol datatype.
pub(crate) fn kind(datatype: DataType) -> Result<Kind, String> {
    Ok(match datatype {
        DataType::Bool => Kind::Bool,
        DataType::Uint8 => Kind::Uint8,
        DataType::Int8 => Kind::Int8,
        DataType::Int16 => Kind::Int16,
        DataType::Int32 => Kind::Int,
        DataType::Int64 => Kind::Int64,
        DataType::Fp16 => Kind::Half,
        DataType::Bf16 => Kind::BFloat16,
        DataType::Fp32 => Kind::Float,
        DataType::Fp64 => Kind::Double,
        other => return Err(format!("datatype {other:?} is not supported by the TorchScript runtime")),
    })
}

/// A request tensor as a libtorch tensor on `device`.
pub(crate) fn to_torch(tensor: &Tensor, device: tch::Device) -> Result<tch::Tensor, RuntimeError> {
    let kind = kind(tensor.datatype()).map_err(RuntimeError::InvalidInput)?;
    let bytes = tensor.as_fixed().ok_or_else(|| {
        RuntimeError::InvalidInput("BYTES tensors are not supported by the TorchScript runtime".into())
    })?;
    let shape: Vec<i64> = tensor.shape().iter().map(|&d| d as i64).collect();
    let host =
        tch::Tensor::f_from_data_size(bytes, &shape, kind).map_err(|e| RuntimeError::InvalidInput(e.to_string()))?;
    if device == tch::Device::Cpu {
        return Ok(host);
    }
    host.f_to_device(device).map_err(|e| RuntimeError::Execution(e.to_string()))
}

/// The tensors of a module's result: one tensor, or a tuple or list of them.
pub(crate) fn flatten(value: tch::IValue) -> Result<Vec<tch::Tensor>, RuntimeError> {
    match value {
        tch::IValue::Tensor(t) => Ok(vec![t]),
        tch::IValue::TensorList(list) => Ok(list),
        tch::IValue::Tuple(items) | tch::IValue::GenericList(items) => {
            items.into_iter().map(flatten).collect::<Result<Vec<_>, _>>().map(|v| v.into_iter().flatten().collect())
        }
        _ => Err(RuntimeError::Unsupported("the module must return a tensor, or a tuple or list of tensors".into())),
    }
}

/// A result tensor back on the host, checked against its declared type.
pub(crate) fn from_torch(tensor: &tch::Tensor, spec: &TensorSpec) -> Result<Tensor, RuntimeError> {
    let execution = |e: tch::TchError| RuntimeError::Execution(e.to_string());
    let expected = kind(spec.datatype).map_err(RuntimeError::Unsupported)?;
    let actual = tensor.f_kind().map_err(execution)?;
    if actual != expected {
        return Err(RuntimeError::Execution(format!(
            "output `{}` is {actual:?}; config.pbtxt declares {:?}",
            spec.name, spec.datatype
        )));
    }
    let host = tensor.f_to_device(tch::Device::Cpu).map_err(execution)?.f_contiguous().map_err(execution)?;
    // Defined here (the conversions above succeeded), so `size` cannot fail.
    let shape: Vec<usize> = host.size().iter().map(|&d| usize::try_from(d).unwrap_or(0)).collect();
    let numel = host.numel();
    let mut bytes = vec![0u8; numel * spec.datatype.size_of().unwrap_or(1)];
    host.f_copy_data_u8(&mut bytes, numel).map_err(execution)?;
    Tensor::from_le_bytes(spec.datatype, shape, bytes).map_err(|e| RuntimeError::Execution(e.to_string()))
}
