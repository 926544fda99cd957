//! `--watch deployment/NAME`: the Deployment's ready replicas, read once a second through the
//! Kubernetes API, so the report and plot show the HPA reacting to the load.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;

/// Replica counts by second of the run.
#[derive(Clone, Debug, Default)]
pub struct Replicas(Arc<Mutex<Vec<Option<u32>>>>);

impl Replicas {
    /// The count seen during second `second`, if any.
    pub fn at(&self, second: u64) -> Option<u32> {
        let seen = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        seen.get(second as usize).copied().flatten()
    }

    fn set(&self, second: u64, replicas: u32) {
        let mut seen = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.len() <= second as usize {
            seen.resize(second as usize + 1, None);
        }
        seen[second as usize] = Some(replicas);
    }
}

/// Checks the Deployment is readable, then polls it every second until the task is dropped.
/// `context` picks a kubeconfig context other than the current one.
pub async fn start(
    name: &str,
    namespace: &str,
    context: Option<&str>,
    started: Instant,
) -> anyhow::Result<(Replicas, tokio::task::JoinHandle<()>)> {
    let client = client(context).await?;
    let api: Api<Deployment> = Api::namespaced(client, namespace);
    api.get(name)
        .await
        .with_context(|| format!("cannot read deployment/{name} in namespace {namespace}"))?;
    let replicas = Replicas::default();
    let seen = replicas.clone();
    let name = name.to_string();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            match api.get(&name).await {
                Ok(d) => {
                    let ready = d.status.and_then(|s| s.ready_replicas).unwrap_or(0);
                    seen.set(
                        started.elapsed().as_secs(),
                        u32::try_from(ready).unwrap_or(0),
                    );
                }
                Err(error) => tracing::warn!(%error, "reading the watched deployment failed"),
            }
        }
    });
    Ok((replicas, task))
}

async fn client(context: Option<&str>) -> anyhow::Result<kube::Client> {
    let config = match context {
        None => kube::Config::infer()
            .await
            .context("--watch needs a Kubernetes config (KUBECONFIG or in-cluster)")?,
        Some(context) => kube::Config::from_kubeconfig(&kube::config::KubeConfigOptions {
            context: Some(context.to_string()),
            ..Default::default()
        })
        .await
        .with_context(|| format!("--context {context}: no such context in the kubeconfig"))?,
    };
    kube::Client::try_from(config).context("cannot build a Kubernetes client")
}
