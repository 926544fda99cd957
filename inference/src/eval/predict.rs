//! Where predictions come from: the model loaded here, fed through the server's own batcher,
//! or a running server (inference or dispatcher) over its HTTP API.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::batcher::{BatchConfig, BatchHandle};
use crate::metrics::Metrics;
use crate::model::Classifier;

/// Why one image got no prediction.
#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    /// This image cannot be classified (unreadable, not an image); counted and listed.
    #[error("{0}")]
    Image(String),
    /// Nothing can be classified (endpoint down, wrong model); the evaluation stops.
    #[error("{0}")]
    Fatal(String),
}

/// A source of ranked predictions.
#[derive(Debug)]
pub enum Predictor {
    /// The model in this process, behind the same batcher the server uses.
    Local {
        /// The model (for preprocessing and ranking).
        model: Arc<Classifier>,
        /// Its batcher.
        batcher: BatchHandle,
    },
    /// A running server's `/v1/classify`.
    Http {
        /// Client with keep-alive.
        client: reqwest::Client,
        /// `{endpoint}/v1/classify?top_k=…&model=…`.
        url: String,
        /// The labels the report uses, checked against each answer.
        labels: Vec<String>,
    },
}

/// Deadline for one image in local mode: generous, the queue is bounded by the caller.
const LOCAL_DEADLINE: Duration = Duration::from_secs(600);

impl Predictor {
    /// The local model with a batcher of `max_batch` images and room for `in_flight` waiting.
    pub fn local(model: Classifier, max_batch: usize, in_flight: usize) -> Self {
        let model = Arc::new(model);
        let batcher = BatchHandle::spawn(
            model.clone(),
            BatchConfig {
                max_batch,
                max_delay: Duration::from_millis(20),
                queue_capacity: in_flight.max(1),
            },
            Arc::new(Metrics::new()),
        );
        Self::Local { model, batcher }
    }

    /// A server at `endpoint` serving `model` (whose labels are `labels`).
    pub fn http(
        endpoint: &str,
        model: &str,
        labels: Vec<String>,
        k: usize,
    ) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .context("building the HTTP client")?;
        let base = endpoint.trim_end_matches('/');
        Ok(Self::Http {
            client,
            url: format!("{base}/v1/classify?top_k={k}&model={model}"),
            labels,
        })
    }

    /// `local` or the endpoint, for the report.
    pub fn source(&self) -> String {
        match self {
            Self::Local { model, .. } => format!("local, {}", model.backend()),
            Self::Http { url, .. } => url.split("/v1/").next().unwrap_or_default().to_owned(),
        }
    }

    /// The `k` best model classes for one encoded image, best first.
    pub async fn rank(&self, bytes: Vec<u8>, k: usize) -> Result<Vec<usize>, PredictError> {
        match self {
            Self::Local { model, batcher } => {
                let preprocessing = model.clone();
                let image = tokio::task::spawn_blocking(move || preprocessing.preprocess(&bytes))
                    .await
                    .map_err(|e| PredictError::Fatal(e.to_string()))?
                    .map_err(|e| PredictError::Image(e.to_string()))?;
                let output = batcher
                    .infer(vec![image], Instant::now() + LOCAL_DEADLINE)
                    .await
                    .map_err(|e| PredictError::Fatal(e.to_string()))?;
                let row = output
                    .rows
                    .first()
                    .ok_or_else(|| PredictError::Fatal("no output row".into()))?;
                Ok(model
                    .top_k(row, k)
                    .into_iter()
                    .map(|p| p.class_id)
                    .collect())
            }
            Self::Http {
                client,
                url,
                labels,
            } => classify_over_http(client, url, labels, bytes).await,
        }
    }
}

async fn classify_over_http(
    client: &reqwest::Client,
    url: &str,
    labels: &[String],
    bytes: Vec<u8>,
) -> Result<Vec<usize>, PredictError> {
    let mut delay = Duration::from_millis(100);
    for _ in 0..8 {
        let response = client
            .post(url)
            .header("content-type", "application/octet-stream")
            .body(bytes.clone())
            .send()
            .await
            .map_err(|e| PredictError::Fatal(format!("{url}: {e}")))?;
        let status = response.status();
        let body: serde_json::Value = response
            .json()
            .await
            .map_err(|e| PredictError::Fatal(format!("{url}: answer is not JSON: {e}")))?;
        if status == 429 || status == 503 {
            // Overloaded: back off and try again, as a well-behaved client does.
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
            continue;
        }
        if status == 400 || status == 413 || status == 415 {
            return Err(PredictError::Image(
                body["error"].as_str().unwrap_or("refused").to_owned(),
            ));
        }
        if !status.is_success() {
            return Err(PredictError::Fatal(format!("{url}: {status}: {body}")));
        }
        let predictions = body["predictions"].as_array().ok_or_else(|| {
            PredictError::Fatal(format!("{url}: answer has no predictions: {body}"))
        })?;
        return predictions
            .iter()
            .map(|p| {
                let id = p["class_id"]
                    .as_u64()
                    .and_then(|id| usize::try_from(id).ok());
                match (id, p["label"].as_str()) {
                    (Some(id), Some(label)) if labels.get(id).is_some_and(|l| l == label) => Ok(id),
                    _ => Err(PredictError::Fatal(format!(
                        "the served model's classes differ from the local description (got {p}); \
                         pass the --model folder the server was started with"
                    ))),
                }
            })
            .collect();
    }
    Err(PredictError::Fatal(format!(
        "{url}: still overloaded after 8 attempts"
    )))
}
