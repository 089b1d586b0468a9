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

/// What the model puts on top of the encoder, from `config.json`'s `architectures`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Head {
    /// None: token vectors, pooled into a sentence embedding (`BertModel`, sentence-transformers).
    Embedding,
    /// `BertForSequenceClassification`: the `[CLS]` vector through the pooler (dense + tanh) and the classifier,
    /// one logit per label (labels in `id2label` order).
    SequenceClassification { labels: Vec<String> },
}

/// What the directory says about the model besides its weights.
#[derive(Debug)]
pub(crate) struct ModelFiles {
    /// `config.json` text (the architecture).
    pub(crate) config: String,
    /// `model_type` from `config.json`.
    pub(crate) model_type: String,
    /// What the model outputs.
    pub(crate) head: Head,
    /// The weight files (one, or the shards an index names).
    pub(crate) weights: Vec<PathBuf>,
    /// `tokenizer.json`, when present.
    pub(crate) tokenizer: Option<PathBuf>,
    pub(crate) pooling: Pooling,
    /// Whether sentence-transformers' `Normalize` module follows the pooling.
    pub(crate) normalize: bool,
    /// `sentence_bert_config.json`'s `max_seq_length`: text is truncated to it (and to the positions the
    /// architecture covers).
    pub(crate) max_seq_length: Option<usize>,
}

#[derive(Deserialize)]
struct ArchitectureHead {
    model_type: Option<String>,
    #[serde(default)]
    architectures: Vec<String>,
    /// Label names by class index (as text, as Hugging Face writes them).
    #[serde(default)]
    id2label: std::collections::BTreeMap<String, String>,
    num_labels: Option<usize>,
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
        let model_head = match head.architectures.iter().find(|a| !a.ends_with("Model")) {
            None => Head::Embedding,
            Some(a) if a == "BertForSequenceClassification" => {
                Head::SequenceClassification { labels: labels(&head.id2label, head.num_labels, &config_path)? }
            }
            Some(a) => {
                return Err(load_error(
                    &config_path,
                    format!(
                        "architecture `{a}` is not supported yet (encoders of model_type {}, and \
                         BertForSequenceClassification)",
                        crate::arch::SUPPORTED
                    ),
                ));
            }
        };

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
        let max_seq_length = sentence.and_then(|s| s.max_seq_length);
        let tokenizer = Some(dir.join("tokenizer.json")).filter(|p| p.is_file());
        Ok(ModelFiles { config, model_type, head: model_head, weights, tokenizer, pooling, normalize, max_seq_length })
    }
}

/// Label names in class order: `id2label` when it names every class `0..n` (n = `num_labels` or its size), else
/// `LABEL_i` as Hugging Face names them by default. A classifier has at least one class (default 2).
fn labels(
    id2label: &std::collections::BTreeMap<String, String>,
    num_labels: Option<usize>,
    config_path: &Path,
) -> Result<Vec<String>, RuntimeError> {
    let n = num_labels.unwrap_or(if id2label.is_empty() { 2 } else { id2label.len() });
    if n == 0 || n > 1 << 20 {
        return Err(load_error(config_path, format!("num_labels {n} is not a usable number of classes")));
    }
    let mut out: Vec<String> = (0..n).map(|i| format!("LABEL_{i}")).collect();
    for (index, label) in id2label {
        let i: usize =
            index.parse().ok().filter(|&i| i < n).ok_or_else(|| {
                load_error(config_path, format!("id2label key `{index}` is not a class index below {n}"))
            })?;
        out[i] = label.clone();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_id2label_and_default_to_hugging_face_names() {
        let path = Path::new("config.json");
        let map = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(labels(&map(&[]), None, path).unwrap(), ["LABEL_0", "LABEL_1"]);
        assert_eq!(labels(&map(&[("1", "pos"), ("0", "neg")]), None, path).unwrap(), ["neg", "pos"]);
        assert_eq!(labels(&map(&[("0", "a")]), Some(3), path).unwrap(), ["a", "LABEL_1", "LABEL_2"]);
        assert!(labels(&map(&[("7", "x")]), Some(2), path).is_err());
        assert!(labels(&map(&[("x", "x")]), None, path).is_err());
        assert!(labels(&map(&[]), Some(0), path).is_err());
    }
}
