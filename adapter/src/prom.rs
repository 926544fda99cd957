//! Prometheus access through `prometheus-http-query`: series discovery and instant queries,
//! each bounded by a timeout and timed into the self-metrics.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_http_query::{Client, Selector, response::Data};

use crate::metrics::Metrics;
use crate::promql::{MatchOp, SeriesSelector, quote};

/// One sample of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series labels.
    pub labels: HashMap<String, String>,
    /// Unix time of the sample, in seconds.
    pub timestamp: f64,
    /// The value.
    pub value: f64,
}

/// Why a Prometheus call failed. The API turns these into 5xx `Status` answers.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PromError {
    /// No answer in time, or no connection.
    #[error("Prometheus is unreachable: {0}")]
    Unreachable(String),
    /// Prometheus answered with an error (a bad query, an overloaded server).
    #[error("Prometheus refused the query: {0}")]
    Refused(String),
    /// The answer was not an instant vector.
    #[error("Prometheus returned a {0} where an instant vector was expected")]
    NotAVector(&'static str),
}

/// A Prometheus server.
#[derive(Clone)]
pub struct Prometheus {
    client: Client,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Prometheus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prometheus")
            .field("url", &self.client.base_url().as_str())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Prometheus {
    /// A client for `url` whose calls give up after `timeout`.
    pub fn new(url: &str, timeout: Duration, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let http = prometheus_http_query::reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(3)))
            .build()?;
        let client = Client::from(http, url)
            .map_err(|e| anyhow::anyhow!("invalid --prometheus-url {url:?}: {e}"))?;
        Ok(Self {
            client,
            timeout,
            metrics,
        })
    }

    /// `/api/v1/series` for a selector, from `start` (Unix seconds) to now.
    pub async fn series(
        &self,
        selector: &SeriesSelector,
        start: i64,
    ) -> Result<Vec<HashMap<String, String>>, PromError> {
        // The crate writes values between quotes as given, so hand it escaped values.
        let escaped: Vec<(String, MatchOp, String)> = selector
            .matchers
            .iter()
            .map(|m| {
                let quoted = quote(&m.value);
                (
                    m.label.clone(),
                    m.op,
                    quoted[1..quoted.len() - 1].to_owned(),
                )
            })
            .collect();
        let mut query = Selector::new();
        if let Some(metric) = &selector.metric {
            query = query.metric(metric);
        }
        for (label, op, value) in &escaped {
            query = match op {
                MatchOp::Equal => query.eq(label, value),
                MatchOp::NotEqual => query.ne(label, value),
                MatchOp::Regex => query.regex_eq(label, value),
                MatchOp::NotRegex => query.regex_ne(label, value),
            };
        }
        let call = self
            .client
            .series([query])
            .map_err(|e| PromError::Refused(e.to_string()))?
            .start(start);
        self.timed("series", call.get()).await
    }

    /// An instant query evaluated now.
    pub async fn query(&self, promql: &str) -> Result<Vec<Sample>, PromError> {
        let timeout_ms = i64::try_from(self.timeout.as_millis()).unwrap_or(i64::MAX);
        let call = self.client.query(promql).timeout(timeout_ms).post();
        let result = self.timed("query", call).await?;
        match result.into_inner().0 {
            Data::Vector(vector) => Ok(vector
                .into_iter()
                .map(|v| {
                    let (labels, sample) = v.into_inner();
                    Sample {
                        labels,
                        timestamp: sample.timestamp(),
                        value: sample.value(),
                    }
                })
                .collect()),
            Data::Matrix(_) => Err(PromError::NotAVector("range vector")),
            Data::Scalar(_) => Err(PromError::NotAVector("scalar")),
        }
    }

    async fn timed<T>(
        &self,
        call: &str,
        request: impl Future<Output = Result<T, prometheus_http_query::Error>>,
    ) -> Result<T, PromError> {
        let started = Instant::now();
        let outcome = tokio::time::timeout(self.timeout, request).await;
        self.metrics
            .prometheus_duration
            .with_label_values(&[call])
            .observe(started.elapsed().as_secs_f64());
        let outcome = match outcome {
            Err(_) => Err(PromError::Unreachable(format!(
                "no answer within {:?}",
                self.timeout
            ))),
            Ok(Ok(value)) => Ok(value),
            Ok(Err(prometheus_http_query::Error::Prometheus(e))) => {
                Err(PromError::Refused(e.to_string()))
            }
            Ok(Err(e)) => Err(PromError::Unreachable(error_chain(&e))),
        };
        if outcome.is_err() {
            self.metrics.prometheus_errors.inc();
        }
        outcome
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
