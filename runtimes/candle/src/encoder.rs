//! A BERT-family model on candle-transformers' BERT: a sentence encoder (token vectors pooled and normalised as
//! the model's sentence-transformers files say) or a sequence classifier (the `[CLS]` vector through the
//! pooler and classifier: one logit per label).

use candle_core::{DType, IndexOp, Tensor as CTensor};
use candle_nn::{Linear, Module, VarBuilder};
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use ferroserve_runtime::{DataType, LoadSpec, ModelSignature, Runtime, RuntimeError, Tensor, TensorSpec};

use crate::files::{Head, ModelFiles, Pooling, load_error};
use crate::text::{TextEncoder, Tokens};

/// What the model takes in.
#[derive(Debug)]
enum Feed {
    /// UTF-8 text, one string per row, tokenized here.
    Text(Box<TextEncoder>),
    /// Token ids (and mask, and optionally type ids) the client tokenized itself.
    Tokens {
        /// Whether `token_type_ids` is an input (else all zeros).
        with_type_ids: bool,
    },
}

/// What the encoder's token vectors become.
enum Output {
    /// A sentence embedding `[rows, hidden]`.
    Embedding { pooling: Pooling, normalize: bool },
    /// Logits `[rows, labels]`: `classifier(tanh(pooler([CLS])))`, as `BertForSequenceClassification`.
    Logits { pooler: Linear, classifier: Linear },
}

/// One instance of a BERT model.
pub(crate) struct Encoder {
    model: BertModel,
    feed: Feed,
    output: Output,
    /// Values per output row (hidden size, or number of labels).
    width: usize,
    vocab: usize,
    /// Longest sequence the position embeddings cover.
    max_positions: usize,
    /// Token types the model knows.
    type_vocab: usize,
    device: candle_core::Device,
    signature: ModelSignature,
}

fn exec(e: candle_core::Error) -> RuntimeError {
    RuntimeError::Execution(e.to_string())
}

impl Encoder {
    pub(crate) fn load(spec: &LoadSpec, device: &candle_core::Device) -> Result<Self, RuntimeError> {
        let files = ModelFiles::read(&spec.version_dir, &spec.model_path)?;
        let config_path = spec.version_dir.join("config.json");
        if files.model_type != "bert" {
            return Err(load_error(
                &config_path,
                format!(
                    "model_type `{}` is not supported by the candle runtime yet (supported: bert)",
                    files.model_type
                ),
            ));
        }
        let config: BertConfig = serde_json::from_str(&files.config)
            .map_err(|e| load_error(&config_path, format!("not a BERT config: {e}")))?;
        // The weights are memory-mapped and read-only: nothing mutates the files while they are mapped.
        let vb = load_weights(&files, device)?;
        let model = BertModel::load(vb.clone(), &config).map_err(|e| load_error(&spec.model_path, e.to_string()))?;
        let hidden = config.hidden_size;
        let (output, width, default_name) = match &files.head {
            Head::Embedding => {
                (Output::Embedding { pooling: files.pooling, normalize: files.normalize }, hidden, "EMBEDDING")
            }
            Head::SequenceClassification { labels } => {
                let encoder = if vb.contains_tensor("bert.pooler.dense.weight") { vb.pp("bert") } else { vb.clone() };
                let layer = |vb: VarBuilder, out: usize, what: &str| {
                    candle_nn::linear(hidden, out, vb).map_err(|e| {
                        load_error(&spec.model_path, format!("a sequence classifier needs its {what} weights: {e}"))
                    })
                };
                let pooler = layer(encoder.pp("pooler").pp("dense"), hidden, "pooler")?;
                let classifier = layer(vb.pp("classifier"), labels.len(), "classifier")?;
                (Output::Logits { pooler, classifier }, labels.len(), "LOGITS")
            }
        };

        let declared = |name: &str| spec.declared.inputs.iter().any(|t| t.name == name);
        let token_spec = |name: &str| TensorSpec { name: name.into(), datatype: DataType::Int64, dims: vec![-1, -1] };
        let (feed, inputs) = if declared("input_ids") {
            let with_type_ids = declared("token_type_ids");
            let mut inputs = vec![token_spec("input_ids"), token_spec("attention_mask")];
            if with_type_ids {
                inputs.push(token_spec("token_type_ids"));
            }
            (Feed::Tokens { with_type_ids }, inputs)
        } else {
            let path = files.tokenizer.clone().ok_or_else(|| {
                load_error(&spec.version_dir, "text input needs tokenizer.json in the version directory")
            })?;
            let declared_text = spec.declared.inputs.iter().find(|t| t.datatype == DataType::Bytes);
            let name = declared_text.map_or_else(|| "TEXT".to_string(), |t| t.name.clone());
            // One string per row: `[batch, 1]`, or `[batch]` when the config declares the text input rank 1
            // (a model without batching whose dims are `[ -1 ]`).
            let dims = match declared_text.map(|t| t.dims.as_slice()) {
                Some([rows]) if *rows == -1 || *rows > 0 => vec![*rows],
                _ => vec![-1, 1],
            };
            let text = TensorSpec { name, datatype: DataType::Bytes, dims };
            (Feed::Text(Box::new(TextEncoder::load(&path, files.max_length)?)), vec![text])
        };
        let output_name = spec
            .declared
            .outputs
            .iter()
            .find(|t| t.datatype == DataType::Fp32)
            .map_or_else(|| default_name.to_string(), |t| t.name.clone());
        let signature = ModelSignature {
            inputs,
            outputs: vec![TensorSpec { name: output_name, datatype: DataType::Fp32, dims: vec![-1, width as i64] }],
        };
        Ok(Encoder {
            model,
            feed,
            output,
            width,
            vocab: config.vocab_size,
            max_positions: config.max_position_embeddings,
            type_vocab: config.type_vocab_size,
            device: device.clone(),
            signature,
        })
    }

    fn tokens(&self, inputs: &[Tensor]) -> Result<Tokens, RuntimeError> {
        match &self.feed {
            Feed::Text(encoder) => {
                let text = &inputs[0];
                let strings =
                    text.as_strings().ok_or_else(|| RuntimeError::InvalidInput("TEXT must be BYTES".into()))?;
                let rows = text.shape().first().copied().unwrap_or(0);
                if strings.len() != rows {
                    return Err(RuntimeError::InvalidInput(format!(
                        "text input shape {:?}: one string per row expected",
                        text.shape()
                    )));
                }
                let texts = strings
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        std::str::from_utf8(s)
                            .map_err(|_| RuntimeError::InvalidInput(format!("text of row {i} is not valid UTF-8")))
                    })
                    .collect::<Result<Vec<&str>, _>>()?;
                encoder.encode(&texts)
            }
            Feed::Tokens { with_type_ids } => {
                let ids = int64_rows(&inputs[0], "input_ids")?;
                let mask = int64_rows(&inputs[1], "attention_mask")?;
                let types = if *with_type_ids { Some(int64_rows(&inputs[2], "token_type_ids")?) } else { None };
                let (rows, len) = (ids.0, ids.1);
                if rows > 0 && (len == 0 || len > self.max_positions) {
                    return Err(RuntimeError::InvalidInput(format!(
                        "input_ids has {len} tokens per row; this model takes 1 to {}",
                        self.max_positions
                    )));
                }
                if (mask.0, mask.1) != (rows, len) || types.as_ref().is_some_and(|t| (t.0, t.1) != (rows, len)) {
                    return Err(RuntimeError::InvalidInput(
                        "input_ids, attention_mask and token_type_ids must have the same shape".into(),
                    ));
                }
                let vocab = self.vocab as i64;
                let to_u32 = |values: &[i64], name: &str, limit: i64| -> Result<Vec<u32>, RuntimeError> {
                    values
                        .iter()
                        .map(|&v| {
                            if (0..limit).contains(&v) {
                                Ok(v as u32)
                            } else {
                                Err(RuntimeError::InvalidInput(format!("{name} value {v} is outside 0..{limit}")))
                            }
                        })
                        .collect()
                };
                Ok(Tokens {
                    rows,
                    len,
                    ids: to_u32(&ids.2, "input_ids", vocab)?,
                    mask: to_u32(&mask.2, "attention_mask", 2)?,
                    type_ids: match types {
                        Some(t) => to_u32(&t.2, "token_type_ids", self.type_vocab as i64)?,
                        None => vec![0; rows * len],
                    },
                })
            }
        }
    }

    fn embed(&self, tokens: Tokens) -> Result<Vec<f32>, candle_core::Error> {
        let shape = (tokens.rows, tokens.len);
        let ids = CTensor::from_vec(tokens.ids, shape, &self.device)?;
        let type_ids = CTensor::from_vec(tokens.type_ids, shape, &self.device)?;
        let mask = CTensor::from_vec(tokens.mask, shape, &self.device)?;
        let states = self.model.forward(&ids, &type_ids, Some(&mask))?; // [rows, len, hidden]
        let (pooling, normalize) = match &self.output {
            Output::Embedding { pooling, normalize } => (*pooling, *normalize),
            Output::Logits { pooler, classifier } => {
                let pooled = pooler.forward(&states.i((.., 0))?)?.tanh()?;
                return classifier.forward(&pooled)?.flatten_all()?.to_vec1::<f32>();
            }
        };
        let pooled = match pooling {
            Pooling::Cls => states.i((.., 0))?,
            Pooling::Mean => {
                let weights = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // [rows, len, 1]
                let summed = states.broadcast_mul(&weights)?.sum(1)?;
                let counts = weights.sum(1)?.clamp(1e-9f32, f32::MAX)?;
                summed.broadcast_div(&counts)?
            }
        };
        let pooled = if normalize {
            let norms = pooled.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12f32, f32::MAX)?;
            pooled.broadcast_div(&norms)?
        } else {
            pooled
        };
        pooled.flatten_all()?.to_vec1::<f32>()
    }
}

/// An INT64 tensor as (rows, columns, values).
fn int64_rows(tensor: &Tensor, name: &str) -> Result<(usize, usize, Vec<i64>), RuntimeError> {
    let bytes = tensor
        .as_fixed()
        .filter(|_| tensor.datatype() == DataType::Int64)
        .ok_or_else(|| RuntimeError::InvalidInput(format!("{name} must be INT64")))?;
    let [rows, len] = tensor.shape() else {
        return Err(RuntimeError::InvalidInput(format!("{name} must be [batch, sequence]")));
    };
    let values = bytes.chunks_exact(8).map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]));
    Ok((*rows, *len, values.collect()))
}

fn load_weights(files: &ModelFiles, device: &candle_core::Device) -> Result<VarBuilder<'static>, RuntimeError> {
    let first = files.weights.first().cloned().unwrap_or_default();
    // SAFETY-free alternative: read the files into memory (mmap would need `unsafe`, which the workspace
    // denies); a sentence encoder's weights are tens to hundreds of MB.
    let mut tensors = std::collections::HashMap::new();
    for path in &files.weights {
        let loaded = candle_core::safetensors::load(path, device).map_err(|e| load_error(path, e.to_string()))?;
        tensors.extend(loaded);
    }
    if tensors.is_empty() {
        return Err(load_error(&first, "no tensors in the weights"));
    }
    Ok(VarBuilder::from_tensors(tensors, DType::F32, device))
}

impl Runtime for Encoder {
    fn signature(&self) -> &ModelSignature {
        &self.signature
    }

    fn infer(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, RuntimeError> {
        let tokens = self.tokens(&inputs)?;
        let rows = tokens.rows;
        let values = if rows == 0 || tokens.len == 0 { Vec::new() } else { self.embed(tokens).map_err(exec)? };
        let tensor = Tensor::from_f32(vec![rows, self.width], &values)
            .map_err(|e| RuntimeError::Execution(format!("the output has the wrong size: {e}")))?;
        Ok(vec![tensor])
    }
}
