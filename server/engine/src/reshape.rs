//! Triton's `reshape` in config.pbtxt: a tensor that clients see with the config's `dims` while the model
//! has other dims with the same elements (`dims: [ 1 ] reshape: { shape: [ ] }` for a model input of shape
//! `[batch]`). Checked against the model when a version loads ([`crate::setup`]); applied per request here:
//! inputs go to the model's dims before batching, outputs come back in the client's dims.

use ferroserve_runtime::{ModelSignature, Tensor};

use crate::InferError;
use crate::request::InferInput;

/// A version's reshapes, in signature order: `None` where a tensor keeps its shape.
#[derive(Debug, Clone, Default)]
pub(crate) struct Reshapes {
    /// Per input: the model's dims (batch dim excluded) that the request's tensor is reshaped to.
    pub(crate) inputs: Vec<Option<Vec<i64>>>,
    /// Per output: the client-facing dims (batch dim excluded) that the model's tensor is reshaped to.
    pub(crate) outputs: Vec<Option<Vec<i64>>>,
    /// Whether the model has a batch dim first (then the dims above follow it).
    pub(crate) batched: bool,
}

impl Reshapes {
    fn any_input(&self) -> bool {
        self.inputs.iter().any(Option::is_some)
    }

    /// Where an input is reshaped, a client may also send it in the model's own shape (a different rank, so
    /// there is no ambiguity): `[batch]` for `dims: [ 1 ] reshape: { shape: [ ] }`. Such inputs are given the
    /// client shape here, so validation and the reshape to the model treat both alike. Returns whether any
    /// input came that way: the outputs then keep the model's shapes too (see [`Self::output`]), so a client
    /// of the model's own shapes sees no reshape at all.
    pub(crate) fn accept_model_shapes(
        &self,
        signature: &ModelSignature,
        inputs: Vec<InferInput>,
    ) -> Result<(Vec<InferInput>, bool), InferError> {
        if !self.any_input() {
            return Ok((inputs, false));
        }
        let skip = usize::from(self.batched);
        let mut model_shaped = false;
        let inputs = inputs
            .into_iter()
            .map(|mut input| {
                let Some(index) = signature.inputs.iter().position(|s| s.name == input.name) else {
                    return Ok(input); // validation reports it
                };
                let client = &signature.inputs[index].dims;
                let rank = input.tensor.shape().len();
                if let Some(Some(model)) = self.inputs.get(index)
                    && rank == model.len() + skip
                    && rank != client.len()
                {
                    input.tensor = self.apply(input.tensor, &client[skip..], &input.name)?;
                    model_shaped = true;
                }
                Ok(input)
            })
            .collect::<Result<_, InferError>>()?;
        Ok((inputs, model_shaped))
    }

    /// Gives validated inputs (in signature order) the model's dims.
    pub(crate) fn to_model(&self, signature: &ModelSignature, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, InferError> {
        if !self.any_input() {
            return Ok(inputs);
        }
        inputs
            .into_iter()
            .zip(&self.inputs)
            .zip(&signature.inputs)
            .map(|((tensor, reshape), spec)| match reshape {
                Some(dims) => self.apply(tensor, dims, &spec.name),
                None => Ok(tensor),
            })
            .collect()
    }

    /// Gives output `index` the client's dims, unless the request came in the model's shapes.
    pub(crate) fn output(
        &self,
        index: usize,
        tensor: Tensor,
        name: &str,
        model_shaped: bool,
    ) -> Result<Tensor, InferError> {
        match self.outputs.get(index).and_then(Option::as_ref).filter(|_| !model_shaped) {
            Some(dims) => self.apply(tensor, dims, name),
            None => Ok(tensor),
        }
    }

    /// Gives `tensor` the dims `dims` (after its batch dim, if the model batches), resolving at most one -1
    /// from its element count. The config was checked at load time, so a failure here is a bad request or a
    /// model that broke its own signature.
    fn apply(&self, tensor: Tensor, dims: &[i64], name: &str) -> Result<Tensor, InferError> {
        let elements = tensor.element_count();
        let mut shape: Vec<usize> = Vec::with_capacity(dims.len() + 1);
        if self.batched {
            shape.push(tensor.shape().first().copied().unwrap_or(0));
        }
        let known: usize = shape.iter().copied().chain(dims.iter().filter(|&&d| d >= 0).map(|&d| d as usize)).product();
        let variable = elements.checked_div(known).unwrap_or(0);
        shape.extend(dims.iter().map(|&d| if d < 0 { variable } else { d as usize }));
        tensor.reshape(shape).map_err(|t| {
            InferError::InvalidInput(format!("tensor `{name}` of shape {:?} does not reshape to {dims:?}", t.shape()))
        })
    }
}

#[cfg(test)]
mod tests {
    use ferroserve_runtime::{DataType, TensorSpec};

    use super::*;
    use crate::request::Parameters;

    fn signature() -> ModelSignature {
        // Clients see x as [batch, 1] and y as [batch, 2, 2]; the model has x [batch] and y [batch, 4].
        ModelSignature {
            inputs: vec![TensorSpec { name: "x".into(), datatype: DataType::Fp32, dims: vec![-1, 1] }],
            outputs: vec![TensorSpec { name: "y".into(), datatype: DataType::Fp32, dims: vec![-1, 2, 2] }],
        }
    }

    fn reshapes() -> Reshapes {
        Reshapes { inputs: vec![Some(vec![])], outputs: vec![Some(vec![2, 2])], batched: true }
    }

    fn input(shape: Vec<usize>) -> InferInput {
        let n = shape.iter().product();
        InferInput {
            name: "x".into(),
            tensor: Tensor::from_f32(shape, &vec![1.0; n]).unwrap(),
            parameters: Parameters::new(),
        }
    }

    #[test]
    fn client_shapes_go_to_the_model_and_back() {
        let (r, sig) = (reshapes(), signature());
        let (inputs, model_shaped) = r.accept_model_shapes(&sig, vec![input(vec![3, 1])]).unwrap();
        assert!(!model_shaped);
        let model = r.to_model(&sig, inputs.into_iter().map(|i| i.tensor).collect()).unwrap();
        assert_eq!(model[0].shape(), &[3]);
        let y = Tensor::from_f32(vec![3, 4], &[0.0; 12]).unwrap();
        assert_eq!(r.output(0, y, "y", false).unwrap().shape(), &[3, 2, 2]);
    }

    #[test]
    fn a_request_in_the_model_shape_is_answered_in_the_model_shape() {
        let (r, sig) = (reshapes(), signature());
        let (inputs, model_shaped) = r.accept_model_shapes(&sig, vec![input(vec![3])]).unwrap();
        assert!(model_shaped);
        assert_eq!(inputs[0].tensor.shape(), &[3, 1], "validated as the client shape");
        let y = Tensor::from_f32(vec![3, 4], &[0.0; 12]).unwrap();
        assert_eq!(r.output(0, y, "y", true).unwrap().shape(), &[3, 4]);
    }

    #[test]
    fn a_variable_dim_is_resolved_from_the_element_count() {
        let r = Reshapes { inputs: vec![], outputs: vec![Some(vec![-1, 2])], batched: true };
        let y = Tensor::from_f32(vec![2, 6], &[0.0; 12]).unwrap();
        assert_eq!(r.output(0, y, "y", false).unwrap().shape(), &[2, 3, 2]);
        let odd = Tensor::from_f32(vec![1, 5], &[0.0; 5]).unwrap();
        assert!(matches!(r.output(0, odd, "y", false), Err(InferError::InvalidInput(_))));
    }
}
