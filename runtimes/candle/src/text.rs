//! Text to token ids in the server, with the model's own `tokenizer.json`: truncated to the model's maximum
//! length and padded to the longest sequence of the batch.

use std::path::Path;

use ferroserve_runtime::RuntimeError;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::files::load_error;

/// A batch of token sequences, row-major `[rows, len]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tokens {
    pub(crate) rows: usize,
    pub(crate) len: usize,
    pub(crate) ids: Vec<u32>,
    pub(crate) type_ids: Vec<u32>,
    pub(crate) mask: Vec<u32>,
}

/// The tokenizer of one instance.
pub(crate) struct TextEncoder {
    tokenizer: Tokenizer,
}

impl std::fmt::Debug for TextEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextEncoder").finish_non_exhaustive()
    }
}

impl TextEncoder {
    /// Loads `tokenizer.json`, truncating to `max_length` tokens and padding with the tokenizer's own padding
    /// settings, else with `pad_id` (the model's `pad_token_id`: 0 for BERT, 1 for RoBERTa).
    pub(crate) fn load(path: &Path, max_length: usize, pad_id: u32) -> Result<Self, RuntimeError> {
        let mut tokenizer = Tokenizer::from_file(path).map_err(|e| load_error(path, e.to_string()))?;
        let (pad_id, pad_token) = match tokenizer.get_padding() {
            Some(p) => (p.pad_id, p.pad_token.clone()),
            None => (pad_id, tokenizer.id_to_token(pad_id).unwrap_or_else(|| "[PAD]".into())),
        };
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            pad_id,
            pad_token,
            ..PaddingParams::default()
        }));
        tokenizer
            .with_truncation(Some(TruncationParams { max_length, ..TruncationParams::default() }))
            .map_err(|e| load_error(path, e.to_string()))?;
        Ok(TextEncoder { tokenizer })
    }

    /// Tokenizes one batch of UTF-8 texts.
    pub(crate) fn encode(&self, texts: &[&str]) -> Result<Tokens, RuntimeError> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| RuntimeError::InvalidInput(format!("text could not be tokenized: {e}")))?;
        let len = encodings.first().map_or(0, |e| e.get_ids().len());
        let mut tokens = Tokens {
            rows: encodings.len(),
            len,
            ids: Vec::with_capacity(encodings.len() * len),
            type_ids: Vec::with_capacity(encodings.len() * len),
            mask: Vec::with_capacity(encodings.len() * len),
        };
        for e in &encodings {
            tokens.ids.extend_from_slice(e.get_ids());
            tokens.type_ids.extend_from_slice(e.get_type_ids());
            tokens.mask.extend_from_slice(e.get_attention_mask());
        }
        Ok(tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer(name: &str) -> std::path::PathBuf {
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../models/candle_archs/repository")
            .join(name)
            .join("1/tokenizer.json")
    }

    #[test]
    fn rows_are_padded_with_the_models_pad_id_unless_the_tokenizer_sets_its_own() {
        // (fixture, pad id the config gives, pad id expected): roberta's tokenizer has no padding settings,
        // xlm_roberta's pads with 1 itself, whatever the caller passes.
        for (name, given, expected) in [("roberta", 1, 1), ("xlm_roberta", 0, 1), ("distilbert", 0, 0)] {
            let tokens =
                TextEncoder::load(&tokenizer(name), 64, given).unwrap().encode(&["hello", "hello world"]).unwrap();
            assert_eq!((tokens.rows, tokens.mask[..tokens.len].iter().filter(|&&m| m == 0).count()), (2, 1), "{name}");
            let padded = tokens.mask.iter().position(|&m| m == 0).unwrap();
            assert_eq!(tokens.ids[padded], expected, "{name}");
        }
    }

    #[test]
    fn text_is_truncated_to_the_maximum_length() {
        let tokens = TextEncoder::load(&tokenizer("xlm_roberta"), 5, 1)
            .unwrap()
            .encode(&["hello world ".repeat(20).as_str()])
            .unwrap();
        assert_eq!((tokens.rows, tokens.len), (1, 5));
    }
}
