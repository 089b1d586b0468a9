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
    pub(crate) fn load(path: &Path, max_length: usize) -> Result<Self, RuntimeError> {
        let mut tokenizer = Tokenizer::from_file(path).map_err(|e| load_error(path, e.to_string()))?;
        let pad_id = tokenizer.get_padding().map(|p| p.pad_id).unwrap_or(0);
        let pad_token = tokenizer.get_padding().map(|p| p.pad_token.clone()).unwrap_or_else(|| "[PAD]".into());
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
