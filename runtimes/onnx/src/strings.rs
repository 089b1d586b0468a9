//! BYTES tensors as ONNX string tensors, byte for byte in both directions.
//!
//! ONNX Runtime keeps each string element as a `std::string`, which holds any bytes: NUL and non-UTF-8
//! included. Only some of its C entry points treat them as C strings, and `ort`'s helpers take those:
//! `Tensor::from_string_array` copies every element into a `CString` for `FillStringTensor` (refusing NUL
//! bytes, and only accepting `str`), and `try_extract_strings` reads the elements length-aware but then
//! decodes each one with `String::from_utf8` (refusing non-UTF-8). So this module calls the length-aware
//! entry points directly:
//!
//! - in: `CreateTensorAsOrtValue` (through [`DynTensor::new`]) makes a tensor of empty strings, then
//!   `GetResizedStringTensorElementBuffer` sizes each element and hands back its buffer, which we fill with
//!   one `memcpy`. No per-element allocation on our side.
//! - out: `GetStringTensorDataLength` and `GetStringTensorContent` copy every element into one buffer with
//!   their offsets; each output element is a [`Bytes`] slice of that one buffer.
//!
//! This is the one module of the crate with `unsafe`: raw calls through [`ort::api()`] on values we own.

#![allow(unsafe_code, reason = "ONNX Runtime's length-aware string API is only reachable through raw `ort_sys` calls")]

use std::ffi::c_char;
use std::ptr;

use bytes::Bytes;
use ferroserve_runtime::RuntimeError;
use ort::AsPointer;
use ort::memory::Allocator;
use ort::value::{DynTensor, DynTensorValueType, DynValue, TensorElementType, ValueType};

/// Builds an ONNX string tensor of `shape` holding `items` unchanged, in row-major order.
pub(crate) fn to_string_value(shape: &[i64], items: &[Bytes]) -> Result<DynValue, RuntimeError> {
    let internal = |e: ort::Error| RuntimeError::Execution(format!("building a BYTES input: {e}"));
    let mut tensor = DynTensor::new(&Allocator::default(), TensorElementType::String, shape).map_err(internal)?;
    let elements = element_count(tensor.dtype());
    if elements != items.len() {
        let n = items.len();
        return Err(RuntimeError::InvalidInput(format!("BYTES shape {shape:?} needs {elements} elements, has {n}")));
    }
    let value = tensor.ptr_mut();
    for (index, item) in items.iter().enumerate() {
        let mut buffer: *mut c_char = ptr::null_mut();
        // SAFETY: `value` is the live string tensor created above, in CPU memory from the default allocator;
        // nothing else holds it, and it outlives this loop. ONNX Runtime checks `index` against the element
        // count and the element type, resizes that element's `std::string` to `item.len()` bytes and writes a
        // pointer to its buffer into `buffer`, a valid out-pointer. The returned status is owned by
        // `result_from_status`, which releases it.
        unsafe {
            ort::Error::result_from_status((ort::api().GetResizedStringTensorElementBuffer)(
                value,
                index,
                item.len(),
                &mut buffer,
            ))
        }
        .map_err(internal)?;
        if item.is_empty() {
            continue;
        }
        if buffer.is_null() {
            return Err(RuntimeError::Execution(format!("ONNX Runtime gave no buffer for BYTES element {index}")));
        }
        // SAFETY: `buffer` points at `item.len()` writable bytes (the element was just resized to that length)
        // and stays valid until the element is resized again or the tensor is released, neither of which
        // happens before this copy. `item` is our own memory, so the two ranges cannot overlap.
        unsafe { ptr::copy_nonoverlapping(item.as_ptr(), buffer.cast::<u8>(), item.len()) };
    }
    Ok(tensor.into_dyn())
}

/// Copies the elements of an ONNX string tensor out unchanged, as slices of one buffer.
pub(crate) fn strings_of(value: &DynValue) -> Result<Vec<Bytes>, RuntimeError> {
    let fail = |e: ort::Error| RuntimeError::Execution(format!("reading a BYTES output: {e}"));
    match value.dtype() {
        ValueType::Tensor { ty: TensorElementType::String, .. } => {}
        other => return Err(RuntimeError::Execution(format!("expected a string tensor, got {other:?}"))),
    }
    let tensor = value.view().downcast::<DynTensorValueType>().map_err(fail)?;
    if !tensor.memory_info().is_cpu_accessible() {
        return Err(RuntimeError::Execution("a BYTES output outside CPU memory".into()));
    }
    let elements = element_count(tensor.dtype());
    let ptr = tensor.ptr();
    let mut total = 0usize;
    // SAFETY: `ptr` is the live tensor `value` borrows for this whole function, checked above to be a string
    // tensor in CPU memory (ONNX Runtime checks the type again and fails with a status otherwise); it is an
    // output of a finished run, so nothing writes to it meanwhile. `total` is a valid out-pointer. The status
    // is released by `result_from_status`.
    unsafe { ort::Error::result_from_status((ort::api().GetStringTensorDataLength)(ptr, &mut total)) }.map_err(fail)?;
    let mut content = vec![0u8; total];
    // One more slot than elements: the end of the last element goes there, so every element is a window.
    let mut offsets = vec![0usize; elements + 1];
    // SAFETY: as above for `ptr`. `content` has exactly `total` writable bytes and we pass that length:
    // ONNX Runtime fails with a status if the elements need more. `offsets` has room for `elements + 1`
    // values and we pass `elements`, which ONNX Runtime requires to equal the tensor's element count.
    unsafe {
        ort::Error::result_from_status((ort::api().GetStringTensorContent)(
            ptr,
            content.as_mut_ptr().cast(),
            total,
            offsets.as_mut_ptr(),
            elements,
        ))
    }
    .map_err(fail)?;
    offsets[elements] = total;
    let content = Bytes::from(content);
    offsets
        .windows(2)
        .map(|w| match (w[0], w[1]) {
            (start, end) if start <= end && end <= total => Ok(content.slice(start..end)),
            (start, end) => Err(RuntimeError::Execution(format!(
                "ONNX Runtime gave string offsets {start}..{end} outside its {total}-byte content"
            ))),
        })
        .collect()
}

/// The first element of a string tensor that is not UTF-8 text; `None` for other values. For explaining a
/// failed run, so it copies the elements out rather than adding a scan to every request.
pub(crate) fn first_non_utf8(value: &DynValue) -> Option<usize> {
    match value.dtype() {
        ValueType::Tensor { ty: TensorElementType::String, .. } => {
            strings_of(value).ok()?.iter().position(|item| std::str::from_utf8(item).is_err())
        }
        _ => None,
    }
}

fn element_count(dtype: &ValueType) -> usize {
    match dtype {
        ValueType::Tensor { shape, .. } => shape.num_elements(),
        _ => 0,
    }
}
