//! One pre-encoded request per protocol, and connections that send it.
//!
//! The request is encoded once; each send only clones reference-counted bytes, so the generator spends its
//! time on the wire and not on encoding.

use std::collections::HashMap;

use anyhow::anyhow;
use bytes::Bytes;
use ferroserve_proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use ferroserve_proto::model_infer_request::InferInputTensor;
use ferroserve_proto::{InferParameter, ModelInferRequest};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;
use tonic::transport::Channel;

use super::cli::{Args, Protocol};
use super::model::{ModelInfo, build_inputs};

/// The request every worker sends.
#[derive(Debug, Clone)]
pub enum Payload {
    /// An HTTP POST body (JSON, or JSON plus binary with the header length).
    Http {
        /// Infer URL.
        uri: http::Uri,
        /// Full body.
        body: Bytes,
        /// `Inference-Header-Content-Length` for binary bodies.
        header_length: Option<usize>,
    },
    /// A gRPC request.
    Grpc {
        /// `http://host:port`.
        endpoint: String,
        /// The message.
        request: ModelInferRequest,
    },
}

impl Payload {
    /// Encodes the request for `args.protocol`.
    pub fn build(args: &Args, model: &ModelInfo) -> anyhow::Result<Payload> {
        let inputs = build_inputs(args, model)?;
        let path = match &args.model_version {
            Some(v) => format!("/v2/models/{}/versions/{v}/infer", model.name),
            None => format!("/v2/models/{}/infer", model.name),
        };
        Ok(match args.protocol {
            Protocol::HttpJson => {
                let body = json!({"inputs": inputs.iter().map(|i| json!({
                    "name": i.name, "shape": i.shape, "datatype": i.datatype, "data": i.json,
                })).collect::<Vec<_>>()});
                if inputs.iter().any(|i| i.datatype == "FP16" || i.datatype == "BF16") {
                    return Err(anyhow!("FP16/BF16 inputs need --protocol http-binary or grpc"));
                }
                Payload::Http {
                    uri: format!("http://{}{path}", args.url).parse()?,
                    body: Bytes::from(serde_json::to_vec(&body)?),
                    header_length: None,
                }
            }
            Protocol::HttpBinary => {
                let header = json!({
                    "inputs": inputs.iter().map(|i| json!({
                        "name": i.name, "shape": i.shape, "datatype": i.datatype,
                        "parameters": {"binary_data_size": i.raw.len()},
                    })).collect::<Vec<_>>(),
                    "parameters": {"binary_data_output": true},
                });
                let mut body = serde_json::to_vec(&header)?;
                let header_length = body.len();
                for i in &inputs {
                    body.extend_from_slice(&i.raw);
                }
                Payload::Http {
                    uri: format!("http://{}{path}", args.url).parse()?,
                    body: Bytes::from(body),
                    header_length: Some(header_length),
                }
            }
            Protocol::Grpc => Payload::Grpc {
                endpoint: format!("http://{}", args.url),
                request: ModelInferRequest {
                    model_name: model.name.clone(),
                    model_version: args.model_version.clone().unwrap_or_default(),
                    id: String::new(),
                    parameters: HashMap::<String, InferParameter>::new(),
                    inputs: inputs
                        .iter()
                        .map(|i| InferInputTensor {
                            name: i.name.clone(),
                            datatype: i.datatype.clone(),
                            shape: i.shape.iter().map(|&d| d as i64).collect(),
                            parameters: HashMap::new(),
                            contents: None,
                        })
                        .collect(),
                    outputs: Vec::new(),
                    raw_input_contents: inputs.iter().map(|i| i.raw.clone()).collect(),
                },
            },
        })
    }

    /// Opens a connection of its own for one worker.
    pub async fn connect(&self) -> anyhow::Result<Connection> {
        Ok(match self {
            Payload::Http { uri, body, header_length } => {
                let mut connector = HttpConnector::new();
                connector.set_nodelay(true);
                let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
                Connection::Http { client, uri: uri.clone(), body: body.clone(), header_length: *header_length }
            }
            Payload::Grpc { endpoint, request } => {
                let channel = Channel::from_shared(endpoint.clone())?.tcp_nodelay(true).connect().await?;
                let client = GrpcInferenceServiceClient::new(channel)
                    .max_decoding_message_size(usize::MAX)
                    .max_encoding_message_size(usize::MAX);
                Connection::Grpc { client, request: request.clone() }
            }
        })
    }
}

/// A worker's connection and the request it sends.
#[derive(Debug, Clone)]
pub enum Connection {
    /// HTTP/1.1 keep-alive.
    Http {
        /// Client with its own connection pool.
        client: Client<HttpConnector, Full<Bytes>>,
        /// Infer URL.
        uri: http::Uri,
        /// Body.
        body: Bytes,
        /// Header length for binary bodies.
        header_length: Option<usize>,
    },
    /// gRPC over its own HTTP/2 connection.
    Grpc {
        /// Client.
        client: GrpcInferenceServiceClient<Channel>,
        /// Request.
        request: ModelInferRequest,
    },
}

impl Connection {
    /// Sends the request once; `Err` carries the server's error.
    pub async fn send(&mut self) -> Result<(), String> {
        match self {
            Connection::Http { client, uri, body, header_length } => {
                let mut builder = http::Request::post(uri.clone());
                if let Some(n) = header_length {
                    builder = builder.header("inference-header-content-length", *n);
                } else {
                    builder = builder.header("content-type", "application/json");
                }
                let request = builder.body(Full::new(body.clone())).map_err(|e| e.to_string())?;
                let response = client.request(request).await.map_err(|e| format!("connection: {e}"))?;
                let status = response.status();
                let bytes = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
                if status.is_success() {
                    Ok(())
                } else {
                    Err(format!(
                        "HTTP {}: {}",
                        status.as_u16(),
                        String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                    ))
                }
            }
            Connection::Grpc { client, request } => match client.model_infer(request.clone()).await {
                Ok(_) => Ok(()),
                Err(status) => Err(format!("{:?}: {}", status.code(), status.message())),
            },
        }
    }
}
