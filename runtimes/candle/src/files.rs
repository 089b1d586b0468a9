//! The companion files of a Hugging Face model directory: which weight files, the architecture, and how
//! sentence-transformers pools and normalises. Missing optional files mean the defaults sentence-transformers
//! itself would use (mean pooling, no normalisation, the model's own maximum length).

use std::path::{Path, PathBuf};

use ferroserve_runtime::RuntimeError;
use serde::Deserialize;

/// How token vectors become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pooling {
    /// Average of the unmasked tokens.
    Mean,
    /// The first (`[CLS]`) token.
    Cls,
}

/// What the directory says about the model besides its weights.
#[derive(Debug)]
pub(crate) struct ModelFiles {
    /// `config.json` text (the architecture).
    pub(crate) config: String,
    /// `model_type` from `config.json`.
    pub(crate) model_type: String,
    /// The weight files (one, or the shards an index names).
    pub(crate) weights: Vec<PathBuf>,
    /// `tokenizer.json`, when present.
    pub(crate) tokenizer: Option<PathBuf>,
    pub(crate) pooling: Pooling,
    /// Whether sentence-transformers' `Normalize` module follows the pooling.
    pub(crate) normalize: bool,
    /// Longest token sequence: `sentence_bert_config.json`'s `max_seq_length`, else the position embeddings.
    pub(crate) max_length: usize,
}

#[derive(Deserialize)]
struct ArchitectureHead {
    model_type: Option<String>,
    max_position_embeddings: Option<usize>,
    #[serde(default)]
    architectures: Vec<String>,
}

#[derive(Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

#[derive(Deserialize)]
struct Module {
    #[serde(rename = "type", default)]
    kind: String,
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: std::collections::BTreeMap<String, String>,
}

pub(crate) fn load_error(path: &Path, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::Load { path: path.to_path_buf(), reason: reason.into() }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, RuntimeError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| load_error(path, format!("invalid JSON: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(load_error(path, e.to_string())),
    }
}

impl ModelFiles {
    /// Reads the directory of `model_path`.
    pub(crate) fn read(dir: &Path, model_path: &Path) -> Result<Self, RuntimeError> {
        let config_path = dir.join("config.json");
        let config = std::fs::read_to_string(&config_path)
            .map_err(|e| load_error(&config_path, format!("a safetensors model needs its config.json: {e}")))?;
        let head: ArchitectureHead =
            serde_json::from_str(&config).map_err(|e| load_error(&config_path, format!("invalid JSON: {e}")))?;
        let model_type = head.model_type.unwrap_or_else(|| "bert".into());
        // A head this runtime does not run would be silently dropped (candle's BERT loads the encoder alone):
        // refuse it rather than serve embeddings where logits are expected.
        if let Some(head) = head.architectures.iter().find(|a| !a.ends_with("Model")) {
            return Err(load_error(
                &config_path,
                format!("architecture `{head}` is not supported yet (BERT encoders only)"),
            ));
        }

        let index_path = dir.join("model.safetensors.index.json");
        let weights = if model_path.is_file() {
            vec![model_path.to_path_buf()]
        } else if let Some(index) = read_json::<ShardIndex>(&index_path)? {
            let mut shards: Vec<PathBuf> = index.weight_map.values().map(|f| dir.join(f)).collect();
            shards.sort();
            shards.dedup();
            shards
        } else {
            return Err(load_error(model_path, "no model.safetensors nor model.safetensors.index.json"));
        };

        let pooling_path = dir.join("1_Pooling").join("config.json");
        let pooling = match read_json::<PoolingConfig>(&pooling_path)? {
            None => Pooling::Mean,
            Some(p)
                if p.pooling_mode_max_tokens
                    || p.pooling_mode_mean_sqrt_len_tokens
                    || p.pooling_mode_weightedmean_tokens
                    || p.pooling_mode_lasttoken
                    || (p.pooling_mode_cls_token && p.pooling_mode_mean_tokens) =>
            {
                return Err(load_error(&pooling_path, "only one of mean and CLS pooling is supported"));
            }
            Some(p) if p.pooling_mode_cls_token => Pooling::Cls,
            Some(_) => Pooling::Mean,
        };
        let modules: Vec<Module> = read_json(&dir.join("modules.json"))?.unwrap_or_default();
        let normalize = modules.iter().any(|m| m.kind.ends_with("Normalize"));
        let known = ["Transformer", "Pooling", "Normalize"];
        if let Some(other) = modules.iter().find(|m| !known.iter().any(|k| m.kind.ends_with(k))) {
            return Err(load_error(
                &dir.join("modules.json"),
                format!(
                    "sentence-transformers module `{}` is not supported (Transformer, Pooling, Normalize)",
                    other.kind
                ),
            ));
        }
        let sentence: Option<SentenceBertConfig> = read_json(&dir.join("sentence_bert_config.json"))?;
        let position_limit = head.max_position_embeddings.unwrap_or(512);
        let max_length = sentence.and_then(|s| s.max_seq_length).unwrap_or(position_limit).min(position_limit);
        let tokenizer = Some(dir.join("tokenizer.json")).filter(|p| p.is_file());
        Ok(ModelFiles { config, model_type, weights, tokenizer, pooling, normalize, max_length })
    }
}
