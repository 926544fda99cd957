//! Dynamic batching, split like linkerd's buffered balancer into a cloneable handle that
//! request handlers use ([`BatchHandle`]) and a worker that owns the model
//! ([`worker::run`]). Concurrent requests are grouped into one forward pass of up to
//! `max_batch` images, waiting at most `max_delay` for a batch to fill (Triton's
//! `max_queue_delay`). The worker is a dedicated OS thread, so a 100 ms forward pass never
//! blocks the async runtime that serves requests.

mod worker;

use std::sync::Arc;
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::metrics::Metrics;
use crate::model::{Classifier, InputImage};

/// Batching parameters (`--max-batch`, `--max-delay-ms`, `--queue-capacity`).
#[derive(Clone, Copy, Debug)]
pub struct BatchConfig {
    /// Most images in one forward pass.
    pub max_batch: usize,
    /// Longest a request waits for others to join its batch.
    pub max_delay: Duration,
    /// Requests waiting for the worker beyond which new ones are refused (503).
    pub queue_capacity: usize,
}

/// Why a submitted job produced no result.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The wait queue is full: the server is overloaded and the client should back off.
    #[error("the server is at capacity ({0} requests queued); retry shortly")]
    QueueFull(usize),
    /// The deadline passed before the job ran or finished.
    #[error("the request's deadline passed before the model could run it")]
    DeadlineExceeded,
    /// The worker has stopped (shutdown or a crash in the backend).
    #[error("the model worker is not running")]
    WorkerGone,
    /// The backend failed on this batch.
    #[error("inference failed: {0}")]
    Model(String),
}

/// What a job gets back: one output row per submitted image, and where the time went.
#[derive(Debug)]
pub struct JobOutput {
    /// Model outputs (logits or probabilities), one row per image in submission order.
    pub rows: Vec<Vec<f32>>,
    /// Time between submission and the start of the forward pass.
    pub queue: Duration,
    /// Duration of the forward pass this job was part of.
    pub inference: Duration,
    /// Images in that forward pass (this job's and others').
    pub batch_size: usize,
}

struct Job {
    images: Vec<InputImage>,
    enqueued: Instant,
    deadline: Instant,
    reply: oneshot::Sender<Result<JobOutput, BatchError>>,
}

/// Cloneable submission side of one model's batcher.
#[derive(Clone, Debug)]
pub struct BatchHandle {
    queue: SyncSender<Job>,
    capacity: usize,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("images", &self.images.len())
            .finish()
    }
}

impl BatchHandle {
    /// Starts the worker thread for `model` and returns the handle that feeds it. The worker
    /// exits once every handle is dropped and the queue is drained.
    pub fn spawn(model: Arc<Classifier>, config: BatchConfig, metrics: Arc<Metrics>) -> Self {
        let (queue, jobs) = sync_channel(config.queue_capacity.max(1));
        let name = format!("batcher-{}", model.name());
        std::thread::Builder::new()
            .name(name)
            .spawn(move || worker::run(&model, &config, &metrics, &jobs))
            .expect("spawning a thread only fails when the OS is out of resources");
        Self {
            queue,
            capacity: config.queue_capacity,
        }
    }

    /// Queues `images` as one job and waits for its outputs, or fails fast when the queue is
    /// full, and gives up at `deadline`.
    pub async fn infer(
        &self,
        images: Vec<InputImage>,
        deadline: Instant,
    ) -> Result<JobOutput, BatchError> {
        let (reply, result) = oneshot::channel();
        let job = Job {
            images,
            enqueued: Instant::now(),
            deadline,
            reply,
        };
        self.queue.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => BatchError::QueueFull(self.capacity),
            TrySendError::Disconnected(_) => BatchError::WorkerGone,
        })?;
        match tokio::time::timeout_at(deadline.into(), result).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(BatchError::WorkerGone),
            Err(_) => Err(BatchError::DeadlineExceeded),
        }
    }
}
