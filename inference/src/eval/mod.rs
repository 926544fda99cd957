//! `inference eval`: top-1/top-5 accuracy of a classifier on a labelled dataset, with
//! confidence intervals, per-class accuracy and the most confused pairs.
//!
//! One evaluation core ([`evaluate`]) takes predictions from either the model loaded here
//! (through the server's batcher, so the numbers are the server's) or a running server over
//! HTTP (`--endpoint`), so a deployed model can be checked in place.

pub mod classes;
pub mod dataset;
pub mod predict;
pub mod report;

use std::time::Instant;

use anyhow::{Context, bail};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};

use crate::commands::{load_model, model_spec_path};
use crate::config::EvalArgs;
use crate::model::ModelSpec;
use classes::{ModelClasses, map_classes};
use dataset::Dataset;
use predict::{PredictError, Predictor};
use report::{Report, Tally};

/// Runs `inference eval` and prints the report.
pub async fn eval(args: EvalArgs) -> anyhow::Result<()> {
    let dataset = Dataset::open(&args.dataset)?;
    let spec_path = model_spec_path(&args.model, args.name.as_deref())?;
    let (spec, dir) = ModelSpec::read(&spec_path)?;
    let labels = spec.load_labels(&dir)?;
    let ids = spec.load_label_ids(&dir)?;
    let mapping = map_classes(
        &dataset.classes,
        ModelClasses {
            labels: &labels,
            ids: &ids,
        },
        args.class_map.as_deref(),
    )?;
    let k = args.top_k.clamp(1, labels.len());
    let in_flight = args.concurrency.max(1);
    let predictor = match &args.endpoint {
        Some(endpoint) => Predictor::http(endpoint, &spec.name, labels.clone(), k)?,
        None => {
            let model_args = args.model.clone();
            let name = args.name.clone();
            let model =
                tokio::task::spawn_blocking(move || load_model(&model_args, name.as_deref()))
                    .await??;
            Predictor::local(model, usize::from(args.batch_size), in_flight)
        }
    };
    let progress = if args.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(dataset.samples.len() as u64).with_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} images, {per_sec}, eta {eta}")
                .context("progress template")?,
        )
    };
    let source = predictor.source();
    let started = Instant::now();
    let tally = evaluate(&predictor, &dataset, &mapping, k, in_flight, &progress).await?;
    progress.finish_and_clear();
    let report = tally.report(report::Context {
        model: &spec.name,
        source: &source,
        dataset: &args.dataset,
        classes: &dataset.classes,
        labels: &labels,
        mapping: &mapping,
        k,
        seconds: started.elapsed().as_secs_f64(),
    });
    print(&report, args.json)?;
    if report.images == 0 {
        bail!("no image of {} could be read", args.dataset.display());
    }
    Ok(())
}

fn print(report: &Report, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}

/// Classifies every sample (`in_flight` at a time) and counts the outcomes. Unreadable images
/// are counted and listed; a fatal predictor error stops the evaluation.
pub async fn evaluate(
    predictor: &Predictor,
    dataset: &Dataset,
    mapping: &[usize],
    k: usize,
    in_flight: usize,
    progress: &ProgressBar,
) -> anyhow::Result<Tally> {
    let mut tally = Tally::new(dataset.classes.len());
    let mut outcomes = futures::stream::iter(&dataset.samples)
        .map(|sample| async move {
            let outcome = match tokio::fs::read(&sample.path).await {
                Ok(bytes) => predictor.rank(bytes, k).await,
                Err(e) => Err(PredictError::Image(format!("cannot read: {e}"))),
            };
            (sample, outcome)
        })
        .buffer_unordered(in_flight);
    while let Some((sample, outcome)) = outcomes.next().await {
        match outcome {
            Ok(ranked) => tally.record(sample.class, mapping[sample.class], &ranked),
            Err(PredictError::Image(reason)) => tally.unreadable(sample.path.clone(), reason),
            Err(PredictError::Fatal(reason)) => bail!("evaluation stopped: {reason}"),
        }
        progress.inc(1);
    }
    Ok(tally)
}
