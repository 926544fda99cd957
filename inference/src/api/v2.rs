//! The Open Inference Protocol (KServe v2) REST endpoints. Inputs are either an FP32 tensor
//! `[N, 3, S, S]` (already preprocessed) or a BYTES tensor `[N]` of base64-encoded images,
//! because one 224×224 image as JSON floats is 1–2 MB.

use std::time::Instant;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::error::ApiError;
use crate::model::InputImage;
use crate::state::{AppState, ModelEntry};

/// Most images one v2 request may carry; larger batches should be split by the client.
const MAX_V2_BATCH: usize = 256;

#[derive(Debug, Deserialize)]
pub(super) struct InferRequest {
    id: Option<String>,
    inputs: Vec<InputTensor>,
    /// The outputs the client asks for (all of them when absent).
    #[serde(default)]
    outputs: Vec<RequestedOutput>,
}

#[derive(Debug, Deserialize)]
struct RequestedOutput {
    name: String,
    #[serde(default)]
    parameters: Parameters,
}

/// The protocol's per-tensor parameters; only the ones that change the answer are read.
#[derive(Debug, Default, Deserialize)]
struct Parameters {
    #[serde(default)]
    binary_data: bool,
}

/// Header of the binary tensor data extension, which this server does not implement.
const BINARY_HEADER: &str = "inference-header-content-length";

#[derive(Debug, Deserialize)]
struct InputTensor {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    data: Value,
}

#[derive(Debug, Serialize)]
pub(super) struct InferResponse {
    model_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    outputs: Vec<OutputTensor>,
}

#[derive(Debug, Serialize)]
struct OutputTensor {
    name: String,
    shape: Vec<usize>,
    datatype: &'static str,
    data: Vec<f32>,
}

pub(super) async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": "imageclassifier-inference",
        "version": env!("CARGO_PKG_VERSION"),
        // None of the protocol's optional extensions (binary_tensor_data, classification,
        // model_repository, statistics, …) is implemented: tensors travel as JSON.
        "extensions": [],
    }))
}

pub(super) async fn model_metadata(
    State(state): State<AppState>,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let entry = state.models()?.get(Some(&model))?;
    let c = &entry.classifier;
    let size = i64::from(c.spec().preprocess.input_size);
    Ok(Json(json!({
        "name": c.name(),
        "versions": ["1"],
        // The engine that runs it: `onnx-native` (our CPU kernels) or burn's backend.
        "platform": format!("onnx-{}", c.backend()),
        "inputs": [
            {"name": c.network().input_name(), "datatype": "FP32", "shape": [-1, 3, size, size]},
            {"name": "image", "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": [
            {"name": c.network().output_name(), "datatype": "FP32", "shape": [-1, c.labels().len()]},
        ],
    })))
}

pub(super) async fn model_ready(
    State(state): State<AppState>,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let entry = state.models()?.get(Some(&model))?;
    Ok(Json(
        json!({ "name": entry.classifier.name(), "ready": true }),
    ))
}

pub(super) async fn infer(
    State(state): State<AppState>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<InferResponse>, ApiError> {
    let received = Instant::now();
    let entry = state.models()?.get(Some(&model))?.clone();
    let request = parse_request(&headers, &body)?;
    let output_name = entry.classifier.network().output_name();
    check_outputs(&request.outputs, output_name)?;
    let [input] = <[InputTensor; 1]>::try_from(request.inputs).map_err(|inputs| {
        ApiError::bad_request(format!(
            "expected exactly one input tensor, got {}",
            inputs.len()
        ))
    })?;
    let images = decode_input(&entry, input).await?;
    let deadline = received + state.limits.request_timeout;
    let count = images.len();
    let output = entry.batcher.infer(images, deadline).await?;
    let classes = entry.classifier.labels().len();
    Ok(Json(InferResponse {
        model_name: entry.classifier.name().to_string(),
        id: request.id,
        outputs: vec![OutputTensor {
            name: output_name.to_string(),
            shape: vec![count, classes],
            datatype: "FP32",
            data: output.rows.concat(),
        }],
    }))
}

/// The JSON inference request. The protocol's body is JSON whatever the `Content-Type`
/// says, and common clients (`tritonclient`) send none, so only a type that is not JSON is
/// refused.
fn parse_request(headers: &HeaderMap, body: &[u8]) -> Result<InferRequest, ApiError> {
    if headers.contains_key(BINARY_HEADER) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "binary tensor data (the binary_tensor_data extension) is not supported: send \
             tensors as JSON (tritonclient: binary_data=False)",
        ));
    }
    if let Some(value) = headers.get(header::CONTENT_TYPE) {
        let essence = value
            .to_str()
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        if essence != "application/json" && !essence.ends_with("+json") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "unsupported content type '{essence}': the inference request is JSON \
                     (application/json, or no Content-Type)"
                ),
            ));
        }
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid inference request JSON: {e}")))
}

/// Requested outputs must exist and be wanted as JSON.
fn check_outputs(requested: &[RequestedOutput], available: &str) -> Result<(), ApiError> {
    for output in requested {
        if output.name != available {
            return Err(ApiError::bad_request(format!(
                "unknown output '{}'; the model has '{available}'",
                output.name
            )));
        }
        if output.parameters.binary_data {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "output '{}' asks for binary data (the binary_tensor_data extension), which \
                     is not supported: ask for JSON (tritonclient: binary_data=False)",
                    output.name
                ),
            ));
        }
    }
    Ok(())
}

/// Turns the one input tensor into preprocessed images, validating shape and datatype.
async fn decode_input(entry: &ModelEntry, input: InputTensor) -> Result<Vec<InputImage>, ApiError> {
    let size = entry.classifier.spec().preprocess.input_size;
    match input.datatype.as_str() {
        "FP32" => {
            let s = i64::from(size);
            let n = match input.shape.as_slice() {
                [n, 3, h, w] if *h == s && *w == s && *n >= 1 => *n as usize,
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "input '{}' must have shape [N, 3, {size}, {size}], got {:?}",
                        input.name, input.shape
                    )));
                }
            };
            check_batch(n)?;
            let values = flatten_numbers(&input.data)
                .ok_or_else(|| ApiError::bad_request("FP32 data must be an array of numbers"))?;
            let per_image = 3 * (size * size) as usize;
            if values.len() != n * per_image {
                return Err(ApiError::bad_request(format!(
                    "shape {:?} needs {} values, got {}",
                    input.shape,
                    n * per_image,
                    values.len()
                )));
            }
            Ok(values
                .chunks(per_image)
                .map(|chunk| InputImage {
                    size,
                    data: chunk.to_vec(),
                })
                .collect())
        }
        "BYTES" => {
            let encoded: Vec<String> = serde_json::from_value(input.data).map_err(|_| {
                ApiError::bad_request("BYTES data must be an array of base64-encoded images")
            })?;
            if input.shape.as_slice() != [encoded.len() as i64] {
                return Err(ApiError::bad_request(format!(
                    "BYTES input shape must be [{}] for {} images, got {:?}",
                    encoded.len(),
                    encoded.len(),
                    input.shape
                )));
            }
            check_batch(encoded.len())?;
            let classifier = entry.classifier.clone();
            tokio::task::spawn_blocking(move || {
                encoded
                    .iter()
                    .enumerate()
                    .map(|(i, text)| {
                        let bytes = base64::engine::general_purpose::STANDARD
                            .decode(text)
                            .map_err(|e| {
                                ApiError::bad_request(format!("image {i} is not valid base64: {e}"))
                            })?;
                        classifier.preprocess(&bytes).map_err(|e| {
                            let status = ApiError::from(e.clone()).status();
                            ApiError::new(status, format!("image {i}: {e}"))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .await
            .map_err(ApiError::internal)?
        }
        other => Err(ApiError::bad_request(format!(
            "unsupported datatype '{other}': use FP32 (preprocessed tensor) or BYTES (encoded images)"
        ))),
    }
}

fn check_batch(n: usize) -> Result<(), ApiError> {
    if n == 0 || n > MAX_V2_BATCH {
        return Err(ApiError::bad_request(format!(
            "a request carries 1 to {MAX_V2_BATCH} images, got {n}"
        )));
    }
    Ok(())
}

/// Row-major flattening of a (possibly nested) JSON array of numbers.
fn flatten_numbers(value: &Value) -> Option<Vec<f32>> {
    fn walk(value: &Value, out: &mut Vec<f32>) -> Option<()> {
        match value {
            Value::Number(n) => out.push(n.as_f64()? as f32),
            Value::Array(items) => {
                for item in items {
                    walk(item, out)?;
                }
            }
            _ => return None,
        }
        Some(())
    }
    let mut out = Vec::new();
    walk(value, &mut out)?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_and_flat_arrays_flatten_the_same() {
        let flat = flatten_numbers(&json!([1, 2.5, 3, 4])).expect("numbers");
        let nested = flatten_numbers(&json!([[1, 2.5], [3, 4]])).expect("numbers");
        assert_eq!(flat, vec![1.0, 2.5, 3.0, 4.0]);
        assert_eq!(flat, nested);
        assert!(flatten_numbers(&json!([1, "two"])).is_none());
    }
}
