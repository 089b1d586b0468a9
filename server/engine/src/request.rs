//! Protocol-neutral inference requests and responses: what both HTTP and gRPC decode into and encode from.

use std::collections::BTreeMap;

use ferroserve_runtime::Tensor;

/// A request or tensor parameter value.
#[derive(Debug, Clone, PartialEq)]
pub enum Parameter {
    /// `true` / `false`.
    Bool(bool),
    /// A signed integer.
    Int(i64),
    /// An unsigned integer too large for `Int`.
    Uint(u64),
    /// A floating-point number.
    Double(f64),
    /// A string.
    String(String),
}

impl Parameter {
    /// The value as a bool, if it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Parameter::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The value as a non-negative integer, if it is one.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Parameter::Int(i) => u64::try_from(*i).ok(),
            Parameter::Uint(u) => Some(*u),
            _ => None,
        }
    }
}

/// Named parameters, sorted by name for stable output.
pub type Parameters = BTreeMap<String, Parameter>;

/// One input tensor of a request.
#[derive(Debug, Clone, PartialEq)]
pub struct InferInput {
    /// Input name.
    pub name: String,
    /// The decoded tensor (datatype and shape as the client declared them).
    pub tensor: Tensor,
    /// Tensor parameters.
    pub parameters: Parameters,
}

/// One output the client asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestedOutput {
    /// Output name.
    pub name: String,
    /// Output parameters: `binary_data` (read by the codecs), `classification` (read by the engine, see
    /// [`crate::classify`]), ...
    pub parameters: Parameters,
}

/// An inference request, decoded from any protocol.
#[derive(Debug, Clone, PartialEq)]
pub struct InferRequest {
    /// Target model.
    pub model_name: String,
    /// Target version; `None` = the newest ready version.
    pub model_version: Option<String>,
    /// Client's request id, echoed back.
    pub id: Option<String>,
    /// Request parameters.
    pub parameters: Parameters,
    /// Inputs in the client's order.
    pub inputs: Vec<InferInput>,
    /// Outputs wanted, in the order to return them; empty = all, in model order.
    pub outputs: Vec<RequestedOutput>,
}

/// One output tensor of a response.
#[derive(Debug, Clone, PartialEq)]
pub struct InferOutput {
    /// Output name.
    pub name: String,
    /// The tensor.
    pub tensor: Tensor,
}

/// The result of an inference.
#[derive(Debug, Clone, PartialEq)]
pub struct InferResponse {
    /// Model that ran.
    pub model_name: String,
    /// Version that ran.
    pub model_version: String,
    /// Echo of the request id.
    pub id: Option<String>,
    /// Outputs, in requested order (or model order when none were requested).
    pub outputs: Vec<InferOutput>,
}
