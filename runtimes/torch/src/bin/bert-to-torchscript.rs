//! Writes a BERT sentence encoder (a Hugging Face safetensors directory: `model.safetensors` + `config.json`) as
//! a TorchScript module, traced through libtorch from the same weights: `input_ids` and `attention_mask` (INT64
//! `[batch, seq]`) in, mean-pooled, L2-normalised FP32 `[batch, hidden]` out. No Python: the tests use it to
//! serve one model in three formats (ONNX Runtime, TorchScript, candle) and compare them with a numpy reference.
//!
//!     bert-to-torchscript <model dir> <out model.pt>
//!
//! The forward pass uses only shape-free operations (positions from a cumulative sum of ones, heads split with
//! `unflatten` over the hidden dimension), so the traced module takes any batch size and sequence length.

use std::collections::HashMap;
use std::path::Path;

use tch::{CModule, Kind, Tensor};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: bert-to-torchscript <model dir> <out model.pt>");
        std::process::exit(2);
    }
    if let Err(e) = convert(Path::new(&args[1]), Path::new(&args[2])) {
        eprintln!("bert-to-torchscript: {e}");
        std::process::exit(1);
    }
}

struct Bert {
    w: HashMap<String, Tensor>,
    layers: i64,
    heads: i64,
    hidden: i64,
    eps: f64,
}

impl Bert {
    fn get(&self, name: &str) -> &Tensor {
        self.w.get(name).unwrap_or_else(|| panic!("weight `{name}` is missing"))
    }

    fn linear(&self, x: &Tensor, prefix: &str) -> Tensor {
        x.linear(self.get(&format!("{prefix}.weight")), Some(self.get(&format!("{prefix}.bias"))))
    }

    fn norm(&self, x: &Tensor, prefix: &str) -> Tensor {
        x.layer_norm(
            [self.hidden],
            Some(self.get(&format!("{prefix}.weight"))),
            Some(self.get(&format!("{prefix}.bias"))),
            self.eps,
            false,
        )
    }

    fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Tensor {
        let positions = input_ids.ones_like().cumsum(1, Kind::Int64) - 1;
        let types = input_ids.zeros_like();
        let x = Tensor::embedding(self.get("embeddings.word_embeddings.weight"), input_ids, -1, false, false)
            + Tensor::embedding(self.get("embeddings.position_embeddings.weight"), &positions, -1, false, false)
            + Tensor::embedding(self.get("embeddings.token_type_embeddings.weight"), &types, -1, false, false);
        let mut x = self.norm(&x, "embeddings.LayerNorm");
        let mask = attention_mask.to_kind(Kind::Float);
        // [batch, 1, 1, seq]: 0 where attended, a large negative number where padded.
        let bias = ((mask.ones_like() - &mask) * -1e9).unsqueeze(1).unsqueeze(2);
        let head_dim = self.hidden / self.heads;
        let scale = 1.0 / (head_dim as f64).sqrt();
        for i in 0..self.layers {
            let p = format!("encoder.layer.{i}.");
            let split = |t: Tensor| t.unflatten(-1, [self.heads, head_dim]).transpose(1, 2);
            let q = split(self.linear(&x, &format!("{p}attention.self.query")));
            let k = split(self.linear(&x, &format!("{p}attention.self.key")));
            let v = split(self.linear(&x, &format!("{p}attention.self.value")));
            let scores = q.matmul(&k.transpose(-1, -2)) * scale + &bias;
            let ctx = scores.softmax(-1, Kind::Float).matmul(&v).transpose(1, 2).flatten(2, 3);
            let attn = self.linear(&ctx, &format!("{p}attention.output.dense"));
            x = self.norm(&(attn + &x), &format!("{p}attention.output.LayerNorm"));
            let h = self.linear(&x, &format!("{p}intermediate.dense")).gelu("none");
            let out = self.linear(&h, &format!("{p}output.dense"));
            x = self.norm(&(out + &x), &format!("{p}output.LayerNorm"));
        }
        let m = mask.unsqueeze(-1);
        let pooled =
            (x * &m).sum_dim_intlist(1, false, Kind::Float) / m.sum_dim_intlist(1, false, Kind::Float).clamp_min(1e-9);
        let length = pooled.square().sum_dim_intlist(-1, true, Kind::Float).sqrt();
        pooled / length
    }
}

fn convert(dir: &Path, out: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)?;
    let number = |key: &str| config[key].as_i64().ok_or_else(|| format!("config.json has no integer `{key}`"));
    let mut w = HashMap::new();
    for (name, tensor) in Tensor::read_safetensors(dir.join("model.safetensors"))? {
        let name = name.strip_prefix("bert.").map(str::to_string).unwrap_or(name);
        w.insert(name, tensor.to_kind(Kind::Float));
    }
    let bert = Bert {
        w,
        layers: number("num_hidden_layers")?,
        heads: number("num_attention_heads")?,
        hidden: number("hidden_size")?,
        eps: config["layer_norm_eps"].as_f64().unwrap_or(1e-12),
    };
    let _no_grad = tch::no_grad_guard();
    let example = [
        Tensor::from_slice2(&[[101i64, 7592, 2088, 102], [101, 7592, 102, 0]]),
        Tensor::from_slice2(&[[1i64, 1, 1, 1], [1, 1, 1, 0]]),
    ];
    let mut module = CModule::create_by_tracing("BertSentenceEncoder", "forward", &example, &mut |inputs| {
        vec![bert.forward(&inputs[0], &inputs[1])]
    })?;
    module.set_eval();
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    module.save(out)?;
    Ok(())
}
