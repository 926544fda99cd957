//! What request handlers share: the loaded models (empty until loading finishes), metrics and
//! request limits.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::api::error::ApiError;
use crate::batcher::BatchHandle;
use crate::metrics::Metrics;
use crate::model::Classifier;

/// One served model and the batcher in front of it.
#[derive(Clone, Debug)]
pub struct ModelEntry {
    /// The model itself (preprocessing, labels, graph).
    pub classifier: Arc<Classifier>,
    /// Where its inference jobs go.
    pub batcher: BatchHandle,
}

/// Every served model, by name, and the one used when a request names none.
#[derive(Debug)]
pub struct Models {
    default: String,
    by_name: BTreeMap<String, ModelEntry>,
}

impl Models {
    /// Groups loaded models; `default` must be one of them.
    pub fn new(entries: Vec<ModelEntry>, default: &str) -> Result<Self, String> {
        let mut by_name = BTreeMap::new();
        for entry in entries {
            let name = entry.classifier.name().to_string();
            if by_name.insert(name.clone(), entry).is_some() {
                return Err(format!("two model descriptions use the name '{name}'"));
            }
        }
        let default = if by_name.contains_key(default) {
            default.to_string()
        } else if by_name.len() == 1 {
            by_name.keys().next().cloned().unwrap_or_default()
        } else {
            return Err(format!(
                "--default-model '{default}' is not among the loaded models ({})",
                by_name.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        };
        Ok(Self { default, by_name })
    }

    /// The named model, or the default one.
    pub fn get(&self, name: Option<&str>) -> Result<&ModelEntry, ApiError> {
        let name = name.unwrap_or(&self.default);
        self.by_name.get(name).ok_or_else(|| {
            ApiError::unknown_model(
                name,
                &self.by_name.keys().map(String::as_str).collect::<Vec<_>>(),
            )
        })
    }

    /// All models, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &ModelEntry> {
        self.by_name.values()
    }
}

/// Limits applied to every request.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Time from arrival after which a request is answered 504.
    pub request_timeout: Duration,
}

/// Handler state; cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    models: Arc<OnceLock<Models>>,
    /// Process metrics.
    pub metrics: Arc<Metrics>,
    /// Request limits.
    pub limits: Limits,
}

impl AppState {
    /// State with no models yet: `/readyz` answers 503 until [`AppState::set_models`].
    pub fn new(metrics: Arc<Metrics>, limits: Limits) -> Self {
        Self {
            models: Arc::new(OnceLock::new()),
            metrics,
            limits,
        }
    }

    /// Publishes the loaded (and warmed-up) models; the server becomes ready.
    pub fn set_models(&self, models: Models) {
        for entry in models.iter() {
            let c = &entry.classifier;
            let device = c.device_choice();
            self.metrics
                .model_info
                .with_label_values(&[c.name(), c.backend(), &device.to_string()])
                .set(1);
        }
        if self.models.set(models).is_err() {
            tracing::warn!("models were already set; keeping the first set");
        }
    }

    /// The models, or 503 while they are loading.
    pub fn models(&self) -> Result<&Models, ApiError> {
        self.models.get().ok_or_else(ApiError::not_ready)
    }
}
