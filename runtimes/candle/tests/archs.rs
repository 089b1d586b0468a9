//! DistilBERT, RoBERTa and XLM-RoBERTa on candle: tiny random-weight models (models/candle_archs, made by
//! models/generate_candle_archs.py) whose embeddings Hugging Face transformers computed in PyTorch, compared
//! with a stated tolerance (cosine > 0.9999, largest difference < 1e-4), from text and from token ids, alone
//! and in a padded batch; and a `model_type` this runtime does not run, refused at load with the reason.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use bytes::Bytes;
use ferroserve_runtime::{
    DataType, Device, LoadSpec, ModelSignature, Runtime, RuntimeError, RuntimeLoader, Tensor, TensorData, TensorSpec,
};
use ferroserve_runtime_candle::CandleLoader;
use ferroserve_runtime_conformance as suite;
use serde::Deserialize;

const ARCHS: [&str; 3] = ["distilbert", "roberta", "xlm_roberta"];

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/candle_archs")
}

fn model_dir(name: &str) -> PathBuf {
    fixtures().join("repository").join(name).join("1")
}

/// What transformers answered (models/candle_archs/reference/<name>.json).
#[derive(Deserialize)]
struct Reference {
    texts: Vec<String>,
    embeddings: Vec<Vec<f32>>,
    input_ids: Vec<Vec<i64>>,
    attention_mask: Vec<Vec<i64>>,
    max_length: usize,
}

fn reference(name: &str) -> Reference {
    let path = fixtures().join("reference").join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn load(name: &str) -> Box<dyn Runtime> {
    CandleLoader.load(&LoadSpec::new(model_dir(name).join("model.safetensors"), Device::Cpu, 2)).unwrap()
}

fn load_token_model(name: &str) -> Box<dyn Runtime> {
    let ids = |name: &str| TensorSpec { name: name.into(), datatype: DataType::Int64, dims: vec![-1, -1] };
    let declared = ModelSignature { inputs: vec![ids("input_ids"), ids("attention_mask")], outputs: vec![] };
    let spec = LoadSpec { declared, ..LoadSpec::new(model_dir(name).join("model.safetensors"), Device::Cpu, 1) };
    CandleLoader.load(&spec).unwrap()
}

fn texts(values: &[&str]) -> Tensor {
    let strings = values.iter().map(|v| Bytes::copy_from_slice(v.as_bytes())).collect();
    Tensor::new(DataType::Bytes, vec![values.len(), 1], TensorData::Strings(strings)).unwrap()
}

fn int64(rows: &[Vec<i64>]) -> Tensor {
    let bytes: Vec<u8> = rows.iter().flatten().flat_map(|v| v.to_le_bytes()).collect();
    Tensor::from_le_bytes(DataType::Int64, vec![rows.len(), rows[0].len()], bytes).unwrap()
}

/// Each row of `got` against the reference: cosine > 0.9999 and no value off by 1e-4 or more.
fn check(name: &str, got: &Tensor, want: &[Vec<f32>]) {
    let width = want[0].len();
    assert_eq!(got.shape(), [want.len(), width], "{name}");
    let values = got.to_f32_vec().unwrap();
    for (row, (g, w)) in values.chunks(width).zip(want).enumerate() {
        let dot: f64 = g.iter().zip(w).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum();
        let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        let cosine = dot / (norm(g) * norm(w));
        let diff = g.iter().zip(w).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(cosine > 0.9999 && diff < 1e-4, "{name} row {row}: cosine {cosine}, largest difference {diff}");
    }
}

#[test]
fn text_embeddings_match_transformers() {
    for name in ARCHS {
        let want = reference(name);
        let mut runtime = load(name);
        let signature = runtime.signature().clone();
        assert_eq!((signature.inputs[0].name.as_str(), signature.inputs[0].datatype), ("TEXT", DataType::Bytes));
        assert_eq!(
            (signature.outputs[0].name.as_str(), signature.outputs[0].dims.as_slice()),
            ("EMBEDDING", &[-1, 32][..])
        );
        let all: Vec<&str> = want.texts.iter().map(String::as_str).collect();
        let out = suite::outputs_fit_the_signature(runtime.as_mut(), vec![texts(&all)]);
        check(name, &out[0], &want.embeddings);
        // Each row alone gives what it gave inside the padded batch.
        let singles: Vec<Vec<Tensor>> = all.iter().map(|t| vec![texts(&[t])]).collect();
        suite::batch_matches_single_rows(runtime.as_mut(), &singles, 1e-5);
    }
}

#[test]
fn token_id_embeddings_match_transformers() {
    for name in ARCHS {
        let want = reference(name);
        let mut runtime = load_token_model(name);
        let out = runtime.infer(vec![int64(&want.input_ids), int64(&want.attention_mask)]).unwrap();
        check(name, &out[0], &want.embeddings);
    }
}

#[test]
fn xlm_roberta_positions_count_from_the_first_real_token_wherever_the_padding_is() {
    // Hugging Face numbers a RoBERTa row's positions from pad_token_id + 1 over its non-padding tokens, so a
    // row padded on the left means what it means unpadded. (Mean pooling: CLS pooling takes the first token,
    // which assumes padding on the right, in sentence-transformers as here.)
    let name = "xlm_roberta";
    let want = reference(name);
    let mut runtime = load_token_model(name);
    let real: Vec<i64> =
        want.input_ids[1].iter().zip(&want.attention_mask[1]).filter(|(_, m)| **m == 1).map(|(i, _)| *i).collect();
    let pad = 4;
    let ids = [vec![1; pad], real.clone()].concat();
    let mask = [vec![0; pad], vec![1; real.len()]].concat();
    let out = runtime.infer(vec![int64(&[ids]), int64(&[mask])]).unwrap();
    check(name, &out[0], &want.embeddings[1..2]);
}

#[test]
fn sequences_longer_than_the_positions_are_refused_and_text_is_truncated() {
    for name in ARCHS {
        let want = reference(name);
        let mut runtime = load_token_model(name);
        // distilbert: 64 positions; roberta: 66 rows less pad_token_id + 1; xlm_roberta: 66 likewise.
        let fits = vec![vec![5i64; 64]];
        suite::outputs_fit_the_signature(runtime.as_mut(), vec![int64(&fits), int64(&[vec![1; 64]])]);
        let error = suite::refuses_then_serves(
            runtime.as_mut(),
            vec![int64(&[vec![5; 65]]), int64(&[vec![1; 65]])],
            vec![int64(&fits), int64(&[vec![1; 64]])],
        );
        assert!(matches!(&error, RuntimeError::InvalidInput(m) if m.contains("1 to 64")), "{name}: {error:?}");
        // The long text was cut at the model's length by transformers' tokenizer too (16 for xlm_roberta).
        assert_eq!(want.attention_mask[5].iter().sum::<i64>() as usize, want.max_length, "{name}");
    }
}

#[test]
fn other_model_types_are_refused_with_the_supported_ones() {
    let source = model_dir("roberta");
    let dir = std::env::temp_dir().join(format!("ferroserve-gpt2-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(source.join(file), dir.join(file)).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(source.join("config.json")).unwrap()).unwrap();
    config["model_type"] = "gpt2".into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let result = CandleLoader.load(&LoadSpec::new(dir.join("model.safetensors"), Device::Cpu, 1));
    let Err(RuntimeError::Load { reason, .. }) = result else { panic!("gpt2 must be refused") };
    assert!(reason.contains("model_type `gpt2` is not supported"), "{reason}");
    assert!(reason.contains("distilbert, roberta, xlm-roberta"), "{reason}");
    std::fs::remove_dir_all(dir).unwrap();
}
