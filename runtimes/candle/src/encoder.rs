//! One instance of an encoder ([`crate::arch`]): a sentence encoder (token vectors pooled and normalised as the
//! model's sentence-transformers files say) or, for BERT, a sequence classifier (the `[CLS]` vector through
//! the pooler and classifier: one logit per label).
//!
//! The instance holds handles to its version's shared weights ([`crate::weights`]) and runs each batch,
//! tokenizing included, inside its own pool of intra-op threads ([`crate::threads`]).

use std::sync::Arc;

use candle_core::{DType, IndexOp, Tensor as CTensor};
use candle_nn::{Linear, Module, VarBuilder};
use ferroserve_runtime::{DataType, Device, LoadSpec, ModelSignature, Runtime, RuntimeError, Tensor, TensorSpec};

use crate::arch::Transformer;
use crate::files::{Head, ModelFiles, Pooling, load_error};
use crate::text::{TextEncoder, Tokens};
use crate::threads::IntraOp;
use crate::weights::Weights;

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

/// One instance of an encoder model.
pub(crate) struct Encoder {
    model: Transformer,
    /// The version's weights, which `model` holds handles to. Held (not read) so that the registry, which
    /// keeps weak references only, hands these same weights to the next instance of the version.
    #[cfg_attr(not(test), allow(dead_code))]
    weights: Arc<Weights>,
    /// Where this instance's parallel work runs.
    intra: IntraOp,
    feed: Feed,
    output: Output,
    /// Values per output row (hidden size, or number of labels).
    width: usize,
    device: candle_core::Device,
    signature: ModelSignature,
    /// `rayon::current_num_threads()` seen by the last forward pass.
    #[cfg(test)]
    forward_threads: std::sync::atomic::AtomicUsize,
}

fn exec(e: candle_core::Error) -> RuntimeError {
    RuntimeError::Execution(e.to_string())
}

impl Encoder {
    pub(crate) fn load(spec: &LoadSpec, device: &candle_core::Device) -> Result<Self, RuntimeError> {
        let files = ModelFiles::read(&spec.version_dir, &spec.model_path)?;
        let config_path = spec.version_dir.join("config.json");
        // On the CPU the instances of a version share one copy; on CUDA each has its own device (see weights.rs).
        let weights = match spec.device {
            Device::Cpu => Weights::shared_cpu(&files.weights)?,
            Device::Cuda(_) => Arc::new(Weights::read(&files.weights, device)?),
        };
        let model =
            Transformer::load(&files.model_type, &files.config, &config_path, &weights, &spec.model_path, device)?;
        let hidden = model.hidden;
        let (output, width, default_name) = match &files.head {
            Head::Embedding => {
                (Output::Embedding { pooling: files.pooling, normalize: files.normalize }, hidden, "EMBEDDING")
            }
            Head::SequenceClassification { .. } if files.model_type != "bert" => {
                return Err(load_error(
                    &config_path,
                    format!("a sequence classifier of model_type `{}` is not supported (bert)", files.model_type),
                ));
            }
            Head::SequenceClassification { labels } => {
                let vb = VarBuilder::from_tensors(weights.tensors.clone(), DType::F32, device);
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
            let max_length = files.max_seq_length.unwrap_or(model.max_positions).min(model.max_positions);
            (Feed::Text(Box::new(TextEncoder::load(&path, max_length, model.pad_token_id)?)), vec![text])
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
            weights,
            intra: IntraOp::new(spec.intra_op_threads)?,
            feed,
            output,
            width,
            device: device.clone(),
            signature,
            #[cfg(test)]
            forward_threads: std::sync::atomic::AtomicUsize::new(0),
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
                if rows > 0 && (len == 0 || len > self.model.max_positions) {
                    return Err(RuntimeError::InvalidInput(format!(
                        "input_ids has {len} tokens per row; this model takes 1 to {}",
                        self.model.max_positions
                    )));
                }
                if (mask.0, mask.1) != (rows, len) || types.as_ref().is_some_and(|t| (t.0, t.1) != (rows, len)) {
                    return Err(RuntimeError::InvalidInput(
                        "input_ids, attention_mask and token_type_ids must have the same shape".into(),
                    ));
                }
                let vocab = self.model.vocab as i64;
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
                        Some(t) => to_u32(&t.2, "token_type_ids", self.model.type_vocab as i64)?,
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
        #[cfg(test)]
        self.forward_threads.store(rayon::current_num_threads(), std::sync::atomic::Ordering::SeqCst);
        let states = self.model.forward(&ids, &type_ids, &mask)?; // [rows, len, hidden]
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

impl Encoder {
    /// One batch, tokenizing included: on the instance's intra-op threads.
    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError> {
        let tokens = self.tokens(inputs)?;
        let rows = tokens.rows;
        let values = if rows == 0 || tokens.len == 0 { Vec::new() } else { self.embed(tokens).map_err(exec)? };
        let tensor = Tensor::from_f32(vec![rows, self.width], &values)
            .map_err(|e| RuntimeError::Execution(format!("the output has the wrong size: {e}")))?;
        Ok(vec![tensor])
    }
}

impl Runtime for Encoder {
    fn signature(&self) -> &ModelSignature {
        &self.signature
    }

    fn infer(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, RuntimeError> {
        let this = &*self;
        this.intra.run(|| this.run(&inputs))
    }
}

#[cfg(test)]
mod tests {
    //! Threads and weight sharing, seen from inside an instance, on the tiny fixture models of
    //! models/candle_archs (models/generate_candle_archs.py).

    use std::path::PathBuf;
    use std::sync::atomic::Ordering;

    use bytes::Bytes;
    use ferroserve_runtime::TensorData;

    use super::*;

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/candle_archs/repository").join(name).join("1")
    }

    fn load(name: &str, threads: usize) -> Encoder {
        let spec = LoadSpec::new(fixture(name).join("model.safetensors"), Device::Cpu, threads);
        Encoder::load(&spec, &candle_core::Device::Cpu).unwrap()
    }

    fn texts(values: &[&str]) -> Tensor {
        let strings = values.iter().map(|v| Bytes::copy_from_slice(v.as_bytes())).collect();
        Tensor::new(DataType::Bytes, vec![values.len(), 1], TensorData::Strings(strings)).unwrap()
    }

    #[test]
    fn the_forward_pass_runs_on_the_configured_number_of_threads() {
        for threads in [1, 3] {
            let mut encoder = load("distilbert", threads);
            encoder.infer(vec![texts(&["hello world", "a man is eating food."])]).unwrap();
            assert_eq!(encoder.forward_threads.load(Ordering::SeqCst), threads);
        }
    }

    /// A private copy of a fixture: the weight registry is process-wide, and other tests hold the originals.
    fn private_copy(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ferroserve-shared-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
        for file in ["model.safetensors", "config.json", "tokenizer.json", "modules.json", "1_Pooling/config.json"] {
            std::fs::copy(fixture(name).join(file), dir.join(file)).unwrap();
        }
        dir
    }

    #[test]
    fn instances_of_a_version_share_one_copy_of_the_weights() {
        let dirs: Vec<PathBuf> = ["distilbert", "roberta", "xlm_roberta"].into_iter().map(private_copy).collect();
        let load = |dir: &PathBuf| {
            let spec = LoadSpec::new(dir.join("model.safetensors"), Device::Cpu, 1);
            Encoder::load(&spec, &candle_core::Device::Cpu).unwrap()
        };
        for dir in &dirs {
            let instances: Vec<Encoder> = (0..4).map(|_| load(dir)).collect();
            let first = &instances[0].weights;
            assert!(instances.iter().all(|e| Arc::ptr_eq(&e.weights, first)), "{dir:?}: one copy");
            assert_eq!(Arc::strong_count(first), 4, "{dir:?}: held by the four instances alone");
            let other = load(dirs.iter().find(|d| *d != dir).unwrap());
            assert!(!Arc::ptr_eq(&other.weights, first), "another model has its own weights");
            let weak = Arc::downgrade(first);
            drop((instances, other));
            assert!(weak.upgrade().is_none(), "{dir:?}: freed with its last instance");
        }
        for dir in dirs {
            std::fs::remove_dir_all(dir).unwrap();
        }
    }

    #[test]
    fn models_are_built_on_the_shared_tensors_without_copying_them() {
        let weights = Weights::shared_cpu(&[fixture("roberta").join("model.safetensors")]).unwrap();
        let name = "encoder.layer.0.attention.self.query.weight";
        let vb = VarBuilder::from_tensors(weights.tensors.clone(), DType::F32, &candle_core::Device::Cpu);
        let got = vb.get((32, 32), name).unwrap();
        assert_eq!(got.id(), weights.tensors[name].id(), "the model's tensor is the shared one, not a copy");
    }
}
