//! The batching loop: take the first waiting job, gather more until the batch is full or the
//! delay has passed, drop jobs nobody waits for any more, run one forward pass, fan out.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Instant;

use super::{BatchConfig, BatchError, Job, JobOutput};
use crate::metrics::Metrics;
use crate::model::{Classifier, InputImage};

/// Runs until every [`super::BatchHandle`] is dropped.
pub(super) fn run(
    model: &Classifier,
    config: &BatchConfig,
    metrics: &Metrics,
    jobs: &Receiver<Job>,
) {
    while let Ok(first) = jobs.recv() {
        let batch = gather(first, config, jobs);
        let live = drop_abandoned(batch);
        if !live.is_empty() {
            execute(model, metrics, live);
        }
    }
    tracing::debug!(model = model.name(), "batcher stopped: no more handles");
}

/// Collects jobs after `first` until `max_batch` images or `max_delay`, whichever comes first.
fn gather(first: Job, config: &BatchConfig, jobs: &Receiver<Job>) -> Vec<Job> {
    let flush_at = Instant::now() + config.max_delay;
    let mut images = first.images.len();
    let mut batch = vec![first];
    while images < config.max_batch {
        let Some(wait) = flush_at.checked_duration_since(Instant::now()) else {
            break;
        };
        match jobs.recv_timeout(wait) {
            Ok(job) => {
                images += job.images.len();
                batch.push(job);
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
        }
    }
    batch
}

/// Answers expired jobs and forgets cancelled ones, so no compute is spent on them.
fn drop_abandoned(batch: Vec<Job>) -> Vec<Job> {
    let now = Instant::now();
    batch
        .into_iter()
        .filter_map(|job| {
            if job.reply.is_closed() {
                None
            } else if job.deadline <= now {
                let _ = job.reply.send(Err(BatchError::DeadlineExceeded));
                None
            } else {
                Some(job)
            }
        })
        .collect()
}

fn execute(model: &Classifier, metrics: &Metrics, mut batch: Vec<Job>) {
    let started = Instant::now();
    let mut images: Vec<InputImage> = Vec::new();
    let mut counts = Vec::with_capacity(batch.len());
    for job in &mut batch {
        counts.push(job.images.len());
        images.append(&mut job.images);
        metrics
            .queue_duration
            .observe(started.duration_since(job.enqueued).as_secs_f64());
    }
    let batch_size = images.len();
    metrics.batch_size.observe(batch_size as f64);
    let result = model.infer(&images);
    let inference = started.elapsed();
    match result {
        Ok(rows) => {
            let mut rows = rows.into_iter();
            for (job, count) in batch.into_iter().zip(counts) {
                let output = JobOutput {
                    rows: rows.by_ref().take(count).collect(),
                    queue: started.duration_since(job.enqueued),
                    inference,
                    batch_size,
                };
                // The receiver may have timed out meanwhile; nothing to do then.
                let _ = job.reply.send(Ok(output));
            }
        }
        Err(error) => {
            tracing::error!(model = model.name(), %error, batch_size, "forward pass failed");
            for job in batch {
                let _ = job.reply.send(Err(BatchError::Model(error.to_string())));
            }
        }
    }
}
