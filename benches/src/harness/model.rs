//! Model discovery (v2 metadata, and `max_batch_size` from the config where the server has one) and the
//! construction of one request's inputs, random or from a JSON file.

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use serde_json::Value;

use super::cli::{Args, Protocol};

/// One tensor of the model's metadata.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// Name.
    pub name: String,
    /// Protocol datatype (`FP32`).
    pub datatype: String,
    /// Dims, `-1` where variable.
    pub shape: Vec<i64>,
}

/// What the harness knows of the model.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// Model name.
    pub name: String,
    /// Inputs.
    pub inputs: Vec<TensorInfo>,
    /// `max_batch_size` from the model config, if the server exposes one.
    pub max_batch_size: Option<i64>,
}

/// One input of the request the harness sends.
#[derive(Debug, Clone)]
pub struct InputData {
    /// Name.
    pub name: String,
    /// Datatype.
    pub datatype: String,
    /// Concrete shape, batch included.
    pub shape: Vec<usize>,
    /// The binary wire form (little-endian; BYTES length-prefixed).
    pub raw: Bytes,
    /// The JSON form: a flat array.
    pub json: Value,
}

fn model_path(args: &Args) -> String {
    match &args.model_version {
        Some(v) => format!("/v2/models/{}/versions/{v}", args.model),
        None => format!("/v2/models/{}", args.model),
    }
}

pub(crate) async fn http_get(url: &str) -> anyhow::Result<(u16, Bytes)> {
    let client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let response = client.get(url.parse()?).await.with_context(|| format!("GET {url}"))?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

fn tensors(v: &Value) -> anyhow::Result<Vec<TensorInfo>> {
    v.as_array()
        .ok_or_else(|| anyhow!("metadata lacks a tensor list"))?
        .iter()
        .map(|t| {
            Ok(TensorInfo {
                name: t["name"].as_str().ok_or_else(|| anyhow!("tensor without a name"))?.to_string(),
                datatype: t["datatype"].as_str().ok_or_else(|| anyhow!("tensor without a datatype"))?.to_string(),
                shape: t["shape"]
                    .as_array()
                    .ok_or_else(|| anyhow!("tensor without a shape"))?
                    .iter()
                    .map(|d| d.as_i64().or_else(|| d.as_str().and_then(|s| s.parse().ok())).unwrap_or(-1))
                    .collect(),
            })
        })
        .collect()
}

/// Reads the model's metadata (and config, when available) from the server.
pub async fn discover(args: &Args) -> anyhow::Result<ModelInfo> {
    match args.protocol {
        Protocol::HttpJson | Protocol::HttpBinary => {
            let base = format!("http://{}{}", args.url, model_path(args));
            let (status, body) = http_get(&base).await?;
            if status != 200 {
                bail!("model metadata: HTTP {status}: {}", String::from_utf8_lossy(&body));
            }
            let meta: Value = serde_json::from_slice(&body)?;
            let max_batch_size = match http_get(&format!("{base}/config")).await {
                Ok((200, body)) => {
                    serde_json::from_slice::<Value>(&body).ok().and_then(|c| c["max_batch_size"].as_i64())
                }
                _ => None,
            };
            Ok(ModelInfo { name: args.model.clone(), inputs: tensors(&meta["inputs"])?, max_batch_size })
        }
        Protocol::Grpc => {
            use ferroserve_proto::grpc_inference_service_client::GrpcInferenceServiceClient;
            let mut client = GrpcInferenceServiceClient::connect(format!("http://{}", args.url)).await?;
            let version = args.model_version.clone().unwrap_or_default();
            let meta = client
                .model_metadata(ferroserve_proto::ModelMetadataRequest {
                    name: args.model.clone(),
                    version: version.clone(),
                })
                .await
                .map_err(|s| anyhow!("model metadata: {}: {}", s.code(), s.message()))?
                .into_inner();
            let max_batch_size = client
                .model_config(ferroserve_proto::ModelConfigRequest { name: args.model.clone(), version })
                .await
                .ok()
                .and_then(|r| r.into_inner().config.map(|c| i64::from(c.max_batch_size)));
            Ok(ModelInfo {
                name: args.model.clone(),
                inputs: meta
                    .inputs
                    .into_iter()
                    .map(|t| TensorInfo { name: t.name, datatype: t.datatype, shape: t.shape })
                    .collect(),
                max_batch_size,
            })
        }
    }
}

/// Why binary requests may fail: the server's metadata lists its protocol extensions and
/// `binary_tensor_data` is not among them (MLServer, for one). `None` when it is listed or unknown.
pub async fn binary_extension_hint(args: &Args) -> Option<String> {
    let (status, body) = http_get(&format!("http://{}/v2", args.url)).await.ok()?;
    let meta: Value = serde_json::from_slice(&body).ok().filter(|_| status == 200)?;
    let extensions = meta["extensions"].as_array()?;
    if extensions.iter().any(|e| e.as_str() == Some("binary_tensor_data")) {
        return None;
    }
    Some(format!(
        "the server ({} {}) does not list the `binary_tensor_data` extension; use --protocol http-json",
        meta["name"].as_str().unwrap_or("unnamed"),
        meta["version"].as_str().unwrap_or("")
    ))
}

/// A small deterministic generator (xorshift64*) for input data and Poisson gaps.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded generator (seed 0 is remapped).
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn concrete_shape(args: &Args, model: &ModelInfo, t: &TensorInfo) -> anyhow::Result<Vec<usize>> {
    let batching = model.max_batch_size.map_or(t.shape.first() == Some(&-1), |m| m > 0);
    let mut rest: &[i64] = &t.shape;
    let mut shape = Vec::with_capacity(t.shape.len());
    if batching && !rest.is_empty() {
        shape.push(args.batch_size);
        rest = &rest[1..];
    }
    let given =
        args.shape.iter().find_map(|s| s.split_once(':').filter(|(n, _)| *n == t.name).map(|(_, d)| d.to_string()));
    if let Some(dims) = given {
        let dims: Vec<usize> = dims
            .split(',')
            .map(|d| d.trim().parse())
            .collect::<Result<_, _>>()
            .with_context(|| format!("--shape for `{}`", t.name))?;
        if dims.len() != rest.len() {
            bail!("--shape {}: the model has {} non-batch dims {:?}", t.name, rest.len(), rest);
        }
        shape.extend(dims);
        return Ok(shape);
    }
    for &d in rest {
        if d < 0 {
            bail!("input `{}` has variable dims {:?}: give --shape {}:d1,d2,...", t.name, t.shape, t.name);
        }
        shape.push(d as usize);
    }
    Ok(shape)
}

fn flatten(v: &Value, out: &mut Vec<Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        other => out.push(other.clone()),
    }
}

fn encode(datatype: &str, values: &[Value]) -> anyhow::Result<Bytes> {
    let mut out = Vec::new();
    for v in values {
        let f = || v.as_f64().ok_or_else(|| anyhow!("{v} is not a number"));
        let i = || v.as_i64().ok_or_else(|| anyhow!("{v} is not an integer"));
        match datatype {
            "FP32" => out.extend_from_slice(&(f()? as f32).to_le_bytes()),
            "FP64" => out.extend_from_slice(&f()?.to_le_bytes()),
            "INT8" => out.extend_from_slice(&(i()? as i8).to_le_bytes()),
            "INT16" => out.extend_from_slice(&(i()? as i16).to_le_bytes()),
            "INT32" => out.extend_from_slice(&(i()? as i32).to_le_bytes()),
            "INT64" => out.extend_from_slice(&i()?.to_le_bytes()),
            "UINT8" => out.extend_from_slice(&(i()? as u8).to_le_bytes()),
            "UINT16" => out.extend_from_slice(&(i()? as u16).to_le_bytes()),
            "UINT32" => out.extend_from_slice(&(i()? as u32).to_le_bytes()),
            "UINT64" => out.extend_from_slice(&(i()? as u64).to_le_bytes()),
            "BOOL" => out.push(u8::from(v.as_bool().ok_or_else(|| anyhow!("{v} is not a bool"))?)),
            "BYTES" => {
                let s = v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string());
                out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            other => bail!("datatype {other} cannot be generated from JSON values (use a JSON-capable type)"),
        }
    }
    Ok(Bytes::from(out))
}

fn random_values(datatype: &str, count: usize, rng: &mut Rng) -> Vec<Value> {
    (0..count)
        .map(|_| match datatype {
            "FP32" | "FP64" | "FP16" | "BF16" => Value::from(rng.unit() * 2.0 - 1.0),
            "BOOL" => Value::from(rng.next_u64() & 1 == 1),
            "BYTES" => Value::from((0..8).map(|_| (b'a' + (rng.next_u64() % 26) as u8) as char).collect::<String>()),
            "UINT8" | "UINT16" | "UINT32" | "UINT64" => Value::from(rng.next_u64() % 100),
            _ => Value::from((rng.next_u64() % 200) as i64 - 100),
        })
        .collect()
}

/// The input data of one request from an `--input-data` document: ours (`{"INPUT0": [...]}`) or
/// perf_analyzer's (`{"data": [{"INPUT0": [...] | {"content": [...], "shape": [...]}}, ...]}`), of which
/// the first entry is used: the harness sends one pre-encoded request. A list of objects tells the two apart,
/// so a model input that is itself named `data` still reads as ours.
fn request_data(doc: Value) -> anyhow::Result<Value> {
    match doc.get("data") {
        Some(Value::Array(entries)) if entries.first().is_some_and(Value::is_object) => {
            if entries.len() > 1 {
                eprintln!("note: --input-data has {} entries in `data`; every request uses the first", entries.len());
            }
            Ok(entries[0].clone())
        }
        _ => Ok(doc),
    }
}

/// Builds one request's inputs.
pub fn build_inputs(args: &Args, model: &ModelInfo) -> anyhow::Result<Vec<InputData>> {
    let file: Option<Value> = match &args.input_data {
        Some(path) => {
            let doc: Value =
                serde_json::from_slice(&std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)?;
            Some(request_data(doc)?)
        }
        None => None,
    };
    let mut rng = Rng::new(args.seed);
    model
        .inputs
        .iter()
        .map(|t| {
            let given = file.as_ref().and_then(|f| f.get(&t.name));
            // perf_analyzer's `{"content": [...], "shape": [...]}` names the shape (batch dim excluded).
            let shape = match given.and_then(|v| v.get("shape")) {
                Some(dims) => {
                    let dims: Vec<usize> = serde_json::from_value(dims.clone())
                        .with_context(|| format!("--input-data `{}`: shape must list sizes", t.name))?;
                    let batching = model.max_batch_size.map_or(t.shape.first() == Some(&-1), |m| m > 0);
                    if batching { std::iter::once(args.batch_size).chain(dims).collect() } else { dims }
                }
                None => concrete_shape(args, model, t)?,
            };
            let count: usize = shape.iter().product();
            let values = match given {
                Some(v) => {
                    if v.get("b64").is_some() {
                        bail!("--input-data `{}`: base64 (`b64`) content is not supported; give `content`", t.name);
                    }
                    let mut flat = Vec::new();
                    flatten(v.get("content").unwrap_or(v), &mut flat);
                    if flat.len() != count {
                        bail!("--input-data `{}` has {} values; shape {:?} needs {count}", t.name, flat.len(), shape);
                    }
                    flat
                }
                None => random_values(&t.datatype, count, &mut rng),
            };
            let raw = match t.datatype.as_str() {
                "FP16" => Bytes::from(
                    values
                        .iter()
                        .flat_map(|v| f32_to_f16_bits(v.as_f64().unwrap_or(0.0) as f32).to_le_bytes())
                        .collect::<Vec<u8>>(),
                ),
                "BF16" => Bytes::from(
                    values
                        .iter()
                        .flat_map(|v| (((v.as_f64().unwrap_or(0.0) as f32).to_bits() >> 16) as u16).to_le_bytes())
                        .collect::<Vec<u8>>(),
                ),
                dt => encode(dt, &values)?,
            };
            Ok(InputData { name: t.name.clone(), datatype: t.datatype.clone(), shape, raw, json: Value::Array(values) })
        })
        .collect()
}

/// IEEE half from f32 (round toward zero; enough for load-test data).
fn f32_to_f16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32 - 127 + 15;
    let mantissa = ((bits >> 13) & 0x3ff) as u16;
    if exp <= 0 {
        sign
    } else if exp >= 31 {
        sign | 0x7c00
    } else {
        sign | ((exp as u16) << 10) | mantissa
    }
}
