//! The encoder architectures this runtime runs, chosen by `config.json`'s `model_type` as
//! text-embeddings-inference does, each on a candle-transformers model:
//!
//! - `bert`: candle's BERT.
//! - `distilbert`: candle's BERT too. DistilBERT is BERT without token types, with other tensor names; its
//!   tensors are renamed and given a zero token-type row. (candle's own DistilBERT applies the tanh
//!   approximation of GELU where Hugging Face applies the exact one, up to 5e-4 apart per activation: more
//!   than the 1e-4 the tests hold this runtime to.)
//! - `roberta` and `xlm-roberta`: candle's XLM-RoBERTa, one architecture under two tokenizers. Positions are
//!   counted from `pad_token_id + 1` over the non-padding tokens, as Hugging Face counts them, so a row means
//!   the same wherever its padding is.
//!
//! Every other `model_type` is refused at load with the list of those supported.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{self, BertModel};
use candle_transformers::models::xlm_roberta::{self, XLMRobertaModel};
use ferroserve_runtime::RuntimeError;
use serde::Deserialize;

use crate::files::load_error;
use crate::weights::Weights;

/// The `model_type` values this runtime runs.
pub(crate) const SUPPORTED: &str = "bert, distilbert, roberta, xlm-roberta";

/// One encoder, ready to turn token ids into token vectors.
pub(crate) struct Transformer {
    model: Model,
    /// Width of a token vector.
    pub(crate) hidden: usize,
    /// Token ids run `0..vocab`.
    pub(crate) vocab: usize,
    /// Token type ids run `0..type_vocab`.
    pub(crate) type_vocab: usize,
    /// Longest sequence the position embeddings cover.
    pub(crate) max_positions: usize,
    /// The id that pads a row, from `config.json`.
    pub(crate) pad_token_id: u32,
}

enum Model {
    Bert(BertModel),
    Roberta(XLMRobertaModel),
}

/// `config.json` of a DistilBERT (Hugging Face's names), with its defaults.
#[derive(Deserialize)]
struct DistilBertConfig {
    vocab_size: usize,
    dim: usize,
    n_layers: usize,
    n_heads: usize,
    hidden_dim: usize,
    #[serde(default = "gelu")]
    activation: String,
    #[serde(default = "positions_512")]
    max_position_embeddings: usize,
    #[serde(default)]
    pad_token_id: usize,
}

/// `config.json` of a RoBERTa or XLM-RoBERTa, with Hugging Face's defaults for what may be left out.
#[derive(Deserialize)]
struct RobertaConfig {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    #[serde(default)]
    hidden_act: candle_nn::Activation,
    #[serde(default = "positions_512")]
    max_position_embeddings: usize,
    #[serde(default = "two")]
    type_vocab_size: usize,
    #[serde(default = "layer_norm_eps")]
    layer_norm_eps: f64,
    #[serde(default = "one")]
    pad_token_id: u32,
    #[serde(default = "absolute")]
    position_embedding_type: String,
}

fn gelu() -> String {
    "gelu".into()
}
fn positions_512() -> usize {
    512
}
fn two() -> usize {
    2
}
fn one() -> u32 {
    1
}
fn layer_norm_eps() -> f64 {
    1e-12
}
fn absolute() -> String {
    "absolute".into()
}

impl Transformer {
    /// Builds the `model_type` encoder described by `config` (the text of `config_path`) from `weights`.
    pub(crate) fn load(
        model_type: &str,
        config: &str,
        config_path: &Path,
        weights: &Weights,
        model_path: &Path,
        device: &candle_core::Device,
    ) -> Result<Self, RuntimeError> {
        let parse_error = |e: serde_json::Error| load_error(config_path, format!("not a `{model_type}` config: {e}"));
        let weight_error = |e: candle_core::Error| load_error(model_path, e.to_string());
        match model_type {
            "bert" => {
                let config: bert::Config = serde_json::from_str(config).map_err(parse_error)?;
                let vb = VarBuilder::from_tensors(weights.tensors.clone(), DType::F32, device);
                Ok(Transformer {
                    model: Model::Bert(BertModel::load(vb, &config).map_err(weight_error)?),
                    hidden: config.hidden_size,
                    vocab: config.vocab_size,
                    type_vocab: config.type_vocab_size,
                    max_positions: config.max_position_embeddings,
                    pad_token_id: config.pad_token_id as u32,
                })
            }
            "distilbert" => {
                let c: DistilBertConfig = serde_json::from_str(config).map_err(parse_error)?;
                let hidden_act = match c.activation.as_str() {
                    "gelu" => bert::HiddenAct::Gelu,
                    "relu" => bert::HiddenAct::Relu,
                    other => {
                        return Err(load_error(
                            config_path,
                            format!("DistilBERT activation `{other}` is not supported (gelu, relu)"),
                        ));
                    }
                };
                let config = bert::Config {
                    vocab_size: c.vocab_size,
                    hidden_size: c.dim,
                    num_hidden_layers: c.n_layers,
                    num_attention_heads: c.n_heads,
                    intermediate_size: c.hidden_dim,
                    hidden_act,
                    hidden_dropout_prob: 0.0,
                    max_position_embeddings: c.max_position_embeddings,
                    type_vocab_size: 1,
                    initializer_range: 0.02,
                    layer_norm_eps: 1e-12,
                    pad_token_id: c.pad_token_id,
                    position_embedding_type: bert::PositionEmbeddingType::Absolute,
                    use_cache: false,
                    classifier_dropout: None,
                    model_type: None,
                };
                let tensors = distilbert_as_bert(&weights.tensors, c.dim, device).map_err(weight_error)?;
                let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
                Ok(Transformer {
                    model: Model::Bert(BertModel::load(vb, &config).map_err(weight_error)?),
                    hidden: c.dim,
                    vocab: c.vocab_size,
                    type_vocab: 1,
                    max_positions: c.max_position_embeddings,
                    pad_token_id: c.pad_token_id as u32,
                })
            }
            "roberta" | "xlm-roberta" => {
                let c: RobertaConfig = serde_json::from_str(config).map_err(parse_error)?;
                if c.position_embedding_type != "absolute" {
                    return Err(load_error(
                        config_path,
                        format!("position_embedding_type `{}` is not supported (absolute)", c.position_embedding_type),
                    ));
                }
                // Positions start after the padding id: `pad_token_id + 1` rows of the table are never a
                // token's position.
                let offset = c.pad_token_id as usize + 1;
                let max_positions =
                    c.max_position_embeddings.checked_sub(offset).filter(|&n| n > 0).ok_or_else(|| {
                        load_error(
                            config_path,
                            format!(
                                "max_position_embeddings {} leaves no position after pad_token_id {}",
                                c.max_position_embeddings, c.pad_token_id
                            ),
                        )
                    })?;
                let config = xlm_roberta::Config {
                    hidden_size: c.hidden_size,
                    layer_norm_eps: c.layer_norm_eps,
                    attention_probs_dropout_prob: 0.0,
                    hidden_dropout_prob: 0.0,
                    num_attention_heads: c.num_attention_heads,
                    position_embedding_type: c.position_embedding_type,
                    intermediate_size: c.intermediate_size,
                    hidden_act: c.hidden_act,
                    num_hidden_layers: c.num_hidden_layers,
                    vocab_size: c.vocab_size,
                    max_position_embeddings: c.max_position_embeddings,
                    type_vocab_size: c.type_vocab_size,
                    pad_token_id: c.pad_token_id,
                };
                let vb = VarBuilder::from_tensors(weights.tensors.clone(), DType::F32, device);
                // Saved alone (`XLMRobertaModel`) the encoder is at the root; under a head, below `roberta.`.
                let vb =
                    if vb.contains_tensor("roberta.embeddings.word_embeddings.weight") { vb.pp("roberta") } else { vb };
                Ok(Transformer {
                    model: Model::Roberta(XLMRobertaModel::new(&config, vb).map_err(weight_error)?),
                    hidden: c.hidden_size,
                    vocab: c.vocab_size,
                    type_vocab: c.type_vocab_size,
                    max_positions,
                    pad_token_id: c.pad_token_id,
                })
            }
            other => Err(load_error(
                config_path,
                format!("model_type `{other}` is not supported by the candle runtime (supported: {SUPPORTED})"),
            )),
        }
    }

    /// Token vectors `[rows, len, hidden]` for ids, type ids and mask `[rows, len]` (U32).
    pub(crate) fn forward(&self, ids: &Tensor, type_ids: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        match &self.model {
            Model::Bert(model) => model.forward(ids, type_ids, Some(mask)),
            Model::Roberta(model) => model.forward(ids, mask, type_ids, None, None, None),
        }
    }
}

/// DistilBERT's tensors under BERT's names (handles to the same storage, nothing copied), plus an all-zero
/// token-type embedding of one row so that BERT's embedding sum adds nothing.
fn distilbert_as_bert(
    tensors: &HashMap<String, Tensor>,
    dim: usize,
    device: &candle_core::Device,
) -> candle_core::Result<HashMap<String, Tensor>> {
    // Saved under a head (`DistilBertForSequenceClassification`...) the encoder is below `distilbert.`.
    let prefixed = tensors.keys().any(|k| k.starts_with("distilbert.embeddings."));
    let mut renamed = HashMap::with_capacity(tensors.len() + 1);
    for (name, tensor) in tensors {
        let name = if prefixed {
            match name.strip_prefix("distilbert.") {
                Some(rest) => rest,
                None => continue,
            }
        } else {
            name.as_str()
        };
        if let Some(bert_name) = bert_name(name) {
            renamed.insert(bert_name, tensor.clone());
        }
    }
    renamed.insert("embeddings.token_type_embeddings.weight".into(), Tensor::zeros((1, dim), DType::F32, device)?);
    Ok(renamed)
}

/// BERT's name for a DistilBERT encoder tensor; `None` for tensors outside the encoder (a head's).
fn bert_name(name: &str) -> Option<String> {
    if name.starts_with("embeddings.") {
        return Some(name.to_string());
    }
    let rest = name.strip_prefix("transformer.layer.")?;
    let (layer, part) = rest.split_once('.')?;
    const PARTS: [(&str, &str); 8] = [
        ("attention.q_lin.", "attention.self.query."),
        ("attention.k_lin.", "attention.self.key."),
        ("attention.v_lin.", "attention.self.value."),
        ("attention.out_lin.", "attention.output.dense."),
        ("sa_layer_norm.", "attention.output.LayerNorm."),
        ("ffn.lin1.", "intermediate.dense."),
        ("ffn.lin2.", "output.dense."),
        ("output_layer_norm.", "output.LayerNorm."),
    ];
    PARTS
        .iter()
        .find_map(|(from, to)| part.strip_prefix(from).map(|param| format!("encoder.layer.{layer}.{to}{param}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distilbert_names_map_onto_bert_names() {
        assert_eq!(
            bert_name("transformer.layer.3.attention.q_lin.weight").as_deref(),
            Some("encoder.layer.3.attention.self.query.weight")
        );
        assert_eq!(
            bert_name("transformer.layer.0.sa_layer_norm.bias").as_deref(),
            Some("encoder.layer.0.attention.output.LayerNorm.bias")
        );
        assert_eq!(
            bert_name("transformer.layer.1.output_layer_norm.weight").as_deref(),
            Some("encoder.layer.1.output.LayerNorm.weight")
        );
        assert_eq!(bert_name("embeddings.LayerNorm.weight").as_deref(), Some("embeddings.LayerNorm.weight"));
        assert_eq!(bert_name("vocab_projector.weight"), None);
        assert_eq!(bert_name("transformer.layer.0.unknown.weight"), None);
    }
}
