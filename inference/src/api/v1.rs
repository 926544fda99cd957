//! `POST /v1/classify`: one encoded image in (raw body or multipart field `image`), the top-k
//! classes out.

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, Multipart, Query, Request, State};
use axum::http::header;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use crate::model::Prediction;
use crate::state::AppState;

/// Content types accepted as a raw image body. Anything else (JSON, text, TIFF…) is 415.
const IMAGE_TYPES: &[&str] = &[
    "image/jpeg",
    "image/png",
    "image/webp",
    "image/gif",
    "image/bmp",
    "application/octet-stream",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ClassifyQuery {
    top_k: Option<usize>,
    model: Option<String>,
}

#[derive(Debug, Serialize)]
pub(super) struct ClassifyResponse {
    model: String,
    predictions: Vec<Prediction>,
    timing_ms: Timing,
}

#[derive(Debug, Serialize)]
struct Timing {
    decode: f64,
    queue: f64,
    inference: f64,
    total: f64,
}

pub(super) async fn classify(
    State(state): State<AppState>,
    query: Result<Query<ClassifyQuery>, QueryRejection>,
    request: Request,
) -> Result<Json<ClassifyResponse>, ApiError> {
    let received = Instant::now();
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let entry = state.models()?.get(query.model.as_deref())?.clone();
    let classes = entry.classifier.labels().len();
    let top_k = query.top_k.unwrap_or(5);
    if top_k == 0 || top_k > classes {
        return Err(ApiError::bad_request(format!(
            "top_k must be between 1 and {classes}, got {top_k}"
        )));
    }
    let body = read_image(request).await?;

    let decode_started = Instant::now();
    let classifier = entry.classifier.clone();
    let image = tokio::task::spawn_blocking(move || classifier.preprocess(&body))
        .await
        .map_err(ApiError::internal)??;
    let decode = decode_started.elapsed();

    let deadline = received + state.limits.request_timeout;
    let output = entry.batcher.infer(vec![image], deadline).await?;
    let row = output
        .rows
        .first()
        .ok_or_else(|| ApiError::internal("the model returned no output"))?;
    Ok(Json(ClassifyResponse {
        model: entry.classifier.name().to_string(),
        predictions: entry.classifier.top_k(row, top_k),
        timing_ms: Timing {
            decode: ms(decode),
            queue: ms(output.queue),
            inference: ms(output.inference),
            total: ms(received.elapsed()),
        },
    }))
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// The image bytes of a request: the `image` field of a multipart form, or the raw body.
async fn read_image(request: Request) -> Result<Bytes, ApiError> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_ascii_lowercase();
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    if essence == "multipart/form-data" {
        let mut form = Multipart::from_request(request, &())
            .await
            .map_err(|e| ApiError::new(e.status(), e.body_text()))?;
        while let Some(field) = form
            .next_field()
            .await
            .map_err(|e| ApiError::new(e.status(), e.body_text()))?
        {
            if field.name() == Some("image") {
                return field
                    .bytes()
                    .await
                    .map_err(|e| ApiError::new(e.status(), e.body_text()));
            }
        }
        return Err(ApiError::bad_request(
            "the multipart form has no field named 'image'",
        ));
    }
    if !IMAGE_TYPES.contains(&essence.as_str()) {
        return Err(ApiError::new(
            axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "unsupported content type '{essence}': send the image as {} or multipart/form-data",
                IMAGE_TYPES.join(", ")
            ),
        ));
    }
    Bytes::from_request(request, &())
        .await
        .map_err(|e| ApiError::new(e.status(), e.body_text()))
}
