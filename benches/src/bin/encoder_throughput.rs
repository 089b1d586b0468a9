//! Raw in-process throughput of a sentence encoder taking token ids (`input_ids`, `attention_mask`), on ONNX
//! Runtime, candle or libtorch (TorchScript, with the `torch` feature): one thread, batch-B inferences of S tokens for a fixed time. The ceiling that served
//! throughput of the same model is compared against (benches/minilm.py runs both side by side).
//!
//! `encoder_throughput --runtime onnx|candle|torch --dir VERSION_DIR [--batch B] [--seq S] [--seconds N]
//!  [--intra-op-threads T]`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ferroserve_benches::ort_dylib;
use ferroserve_runtime::{DataType, Device, LoadSpec, ModelSignature, RuntimeLoader, Tensor, TensorSpec};

fn main() -> anyhow::Result<()> {
    let (mut runtime_name, mut dir) = (String::from("onnx"), PathBuf::new());
    let (mut batch, mut seq, mut seconds, mut intra) = (1usize, 128usize, 10u64, 0usize);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| anyhow::anyhow!("{arg} needs a value"));
        match arg.as_str() {
            "--runtime" => runtime_name = value()?,
            "--dir" => dir = value()?.into(),
            "--batch" => batch = value()?.parse()?,
            "--seq" => seq = value()?.parse()?,
            "--seconds" => seconds = value()?.parse()?,
            "--intra-op-threads" => intra = value()?.parse()?,
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    let ids = |name: &str| TensorSpec { name: name.into(), datatype: DataType::Int64, dims: vec![-1, -1] };
    let declared = ModelSignature {
        inputs: vec![ids("input_ids"), ids("attention_mask")],
        outputs: vec![TensorSpec { name: "EMBEDDING".into(), datatype: DataType::Fp32, dims: vec![-1, -1] }],
    };
    let (loader, file): (Box<dyn RuntimeLoader>, &str) = match runtime_name.as_str() {
        "onnx" => (Box::new(ferroserve_runtime_onnx::OnnxLoader::new(&ort_dylib()?)?), "model.onnx"),
        "candle" => (Box::new(ferroserve_runtime_candle::CandleLoader), "model.safetensors"),
        #[cfg(feature = "torch")]
        "torch" => (Box::new(ferroserve_runtime_torch::TorchLoader::default()), "model.pt"),
        other => anyhow::bail!("unknown runtime {other} (onnx, candle, or torch in a build with the torch feature)"),
    };
    let spec = LoadSpec { declared, max_batch_size: batch as u32, ..LoadSpec::new(dir.join(file), Device::Cpu, intra) };
    let mut runtime = loader.load(&spec)?;
    // Valid ids: [CLS] (101), words from the vocabulary's middle, [SEP] (102).
    let row: Vec<i64> = (0..seq)
        .map(|i| {
            if i == 0 {
                101
            } else if i + 1 == seq {
                102
            } else {
                2000 + (i as i64 * 37) % 20000
            }
        })
        .collect();
    let tensor = |values: Vec<i64>| {
        Tensor::from_le_bytes(
            DataType::Int64,
            vec![batch, seq],
            values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
        )
    };
    let inputs = vec![tensor(row.repeat(batch))?, tensor(vec![1; batch * seq])?];
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_secs(1) {
        runtime.infer(inputs.clone())?;
    }
    let (start, mut done) = (Instant::now(), 0u64);
    while start.elapsed() < Duration::from_secs(seconds) {
        runtime.infer(inputs.clone())?;
        done += 1;
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "raw {runtime_name}: batch={batch} seq={seq}: {:.1} infer/s, {:.1} rows/s",
        done as f64 / elapsed,
        done as f64 * batch as f64 / elapsed
    );
    Ok(())
}
