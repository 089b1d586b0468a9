//! Triton's raw binary request: an inference body sent with `Inference-Header-Content-Length: 0` has no JSON
//! header at all; the whole body is the data of the model's one input, whose datatype and shape come from the
//! model (a batching model gets a batch of 1; one variable dim is deduced from the byte count; a BYTES input must be
//! of shape `[1]`, and the body is its one element). Every output is answered in binary, as Triton does. Scripts
//! post files this way (`curl --data-binary @image.raw`) without a client library.
//!
//! The request is rewritten into the header the client would have sent, so it is decoded, checked and charged as
//! any other; the refusals use Triton's words.

use axum::body::Bytes;
use ferroserve_engine::{InferError, ModelVersion};
use ferroserve_runtime::DataType;
use serde_json::json;

/// Whether a raw request to `version` copies its body (a BYTES input gets the element's length prefixed).
pub(crate) fn copies_body(version: &ModelVersion) -> bool {
    matches!(version.signature.inputs.as_slice(), [spec] if spec.datatype == DataType::Bytes)
}

/// The JSON header and binary part equivalent to a raw request of `body` to `version`.
pub(crate) fn as_request(version: &ModelVersion, body: Bytes) -> Result<(Bytes, Bytes), InferError> {
    let inputs = &version.signature.inputs;
    let [spec] = inputs.as_slice() else {
        return Err(InferError::invalid(format!(
            "Raw request must only have 1 input (found 1) to be deduced but got {} inputs in '{}' model configuration",
            inputs.len(),
            version.name
        )));
    };
    let batching = version.max_batch_size > 0;
    let item_dims = if batching { spec.dims.get(1..).unwrap_or_default() } else { &spec.dims[..] };
    let mut shape: Vec<i64> = if batching { vec![1] } else { Vec::new() };
    let binary = if spec.datatype == DataType::Bytes {
        // One element, as Triton requires: no variable dim, and the dims multiply to 1.
        if item_dims.iter().any(|&d| d != 1) {
            return Err(InferError::invalid(format!(
                "For BYTE datatype raw input '{}', the model must have input shape [1]",
                spec.name
            )));
        }
        shape.extend_from_slice(item_dims);
        let length = u32::try_from(body.len())
            .map_err(|_| InferError::invalid("a BYTES element is at most 4 GiB - 1 bytes".to_string()))?;
        let mut element = Vec::with_capacity(4 + body.len());
        element.extend_from_slice(&length.to_le_bytes());
        element.extend_from_slice(&body);
        Bytes::from(element)
    } else {
        shape.extend(deduced_dims(&spec.name, spec.datatype, item_dims, body.len())?);
        body
    };
    let header = json!({
        "inputs": [{
            "name": spec.name,
            "shape": shape,
            "datatype": spec.datatype.as_str(),
            "parameters": {"binary_data_size": binary.len()},
        }],
        "parameters": {"binary_data_output": true},
    });
    Ok((Bytes::from(header.to_string()), binary))
}

/// `dims` with its one variable dim (if any) set so that the tensor holds `bytes` bytes of `datatype`.
fn deduced_dims(name: &str, datatype: DataType, dims: &[i64], bytes: usize) -> Result<Vec<i64>, InferError> {
    let variable = dims.iter().filter(|&&d| d < 0).count();
    if variable > 1 {
        return Err(InferError::invalid(format!(
            "The shape of the raw input '{name}' can not be deduced because there are more than one variable-sized \
             dimension"
        )));
    }
    if variable == 0 {
        return Ok(dims.to_vec()); // a byte count that does not match is refused when the data is read
    }
    let element = datatype.size_of().unwrap_or(1) as u64;
    let row = dims.iter().filter(|&&d| d >= 0).try_fold(element, |n, &d| n.checked_mul(d as u64));
    let bytes = bytes as u64;
    match row {
        Some(row) if row > 0 && bytes.is_multiple_of(row) => {
            let deduced = i64::try_from(bytes / row).unwrap_or(i64::MAX);
            Ok(dims.iter().map(|&d| if d < 0 { deduced } else { d }).collect())
        }
        _ => Err(InferError::invalid(format!(
            "the shape of the raw input '{name}' can not be deduced: {bytes} bytes are not a whole number of its \
             {datatype} elements of dims {dims:?}",
            datatype = datatype.as_str()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_variable_dim_is_deduced_from_the_byte_count() {
        assert_eq!(deduced_dims("X", DataType::Fp32, &[-1, 4], 48).unwrap(), [3, 4]);
        assert_eq!(deduced_dims("X", DataType::Fp16, &[2, 2], 8).unwrap(), [2, 2]);
        assert_eq!(deduced_dims("X", DataType::Uint8, &[-1], 5).unwrap(), [5]);
        let two = deduced_dims("INPUT0", DataType::Fp16, &[-1, -1], 8).unwrap_err().to_string();
        assert!(two.contains("more than one variable-sized dimension"), "{two}");
        assert!(deduced_dims("X", DataType::Fp32, &[-1, 4], 50).is_err(), "not whole rows");
        assert!(deduced_dims("X", DataType::Fp32, &[-1, 0], 0).is_err(), "rows of no bytes");
    }
}
