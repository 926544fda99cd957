//! The model-coverage table of docs/ADDING-A-MODEL.md, tested: every network in it, as
//! `torch.onnx.export` writes it with either exporter, imports with the real import code, runs
//! on the native CPU engine, and computes what ONNX Runtime computes on the same file.
//!
//! The graphs in `tests/coverage/` are the exporters' own output (torch 2.15, torchvision 0.29)
//! with the weights stripped (`scripts/coverage_models.py skeleton`); the test gives them random
//! weights again (`… fill`), so CI needs neither torch nor pretrained weights.

mod common;

use std::path::{Path, PathBuf};

use common::{LOGIT_BOUND, inputs, max_abs_diff, onnx_runtime_logits, std_dev, top5};
use inference::model::{Classifier, DeviceChoice, ModelSpec, Preprocess};

fn skeletons() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/coverage");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/coverage exists")
        .map(|entry| entry.expect("readable").path())
        .filter(|path| path.to_string_lossy().ends_with(".onnx.gz"))
        .collect();
    files.sort();
    files
}

/// The skeleton's graph with seeded random weights, written to `dir`.
fn filled(skeleton: &Path, dir: &Path) -> PathBuf {
    let name = skeleton
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".gz"))
        .expect("name.onnx.gz");
    let out = dir.join(name);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/coverage_models.py");
    common::python(&[
        script,
        "fill",
        skeleton.to_str().expect("UTF-8"),
        out.to_str().expect("UTF-8"),
    ]);
    out
}

fn load(onnx: &Path) -> Result<Classifier, String> {
    let spec = ModelSpec {
        name: "coverage".into(),
        onnx: onnx.file_name().expect("file").into(),
        sha256: None,
        preprocess: Preprocess::imagenet(),
        labels: "imagenet".into(),
    };
    let labels = (0..1000).map(|i| format!("class {i}")).collect();
    Classifier::from_parts(spec, onnx, labels, DeviceChoice::Cpu).map_err(|e| format!("{e:#}"))
}

/// Ours against ONNX Runtime on two images and on one alone: the largest |Δlogit| relative to
/// the logits' spread, or what differs.
fn compare(model: &Classifier, onnx: &Path) -> Result<f32, String> {
    let batch = inputs(2, 224);
    let ours = model.infer(&batch).map_err(|e| e.to_string())?;
    let alone = model.infer(&batch[..1]).map_err(|e| e.to_string())?;
    let reference = onnx_runtime_logits(onnx, &batch);
    let classes = reference.len() / batch.len();
    let mut worst_ratio = 0.0f32;
    for (i, row) in ours.iter().chain(&alone).enumerate() {
        let expected = &reference[(i % 2) * classes..][..classes];
        let scale = std_dev(expected).max(1e-6);
        let worst = max_abs_diff(row, expected);
        worst_ratio = worst_ratio.max(worst / scale);
        if worst > LOGIT_BOUND * scale || worst.is_nan() {
            return Err(format!(
                "row {i}: max |Δlogit| {worst} vs logit std {scale}"
            ));
        }
        if top5(row) != top5(expected) {
            return Err(format!("row {i}: top-5 differs"));
        }
    }
    // Random weights can make one class win for every image; the logits must still depend
    // on the image, by far more than the tolerance, or the comparison would be vacuous.
    let apart = max_abs_diff(&ours[0], &ours[1]);
    let scale = std_dev(&reference[..classes]);
    if apart < 10.0 * LOGIT_BOUND * scale {
        return Err(format!(
            "two images differ by {apart} only: a vacuous comparison"
        ));
    }
    Ok(worst_ratio)
}

#[test]
fn every_network_of_the_table_imports_runs_natively_and_matches_onnx_runtime() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut failures = Vec::new();
    let skeletons = skeletons();
    assert!(skeletons.len() >= 20, "the table's graphs are all there");
    for skeleton in skeletons {
        let onnx = filled(&skeleton, dir.path());
        let name = onnx.file_stem().and_then(|n| n.to_str()).expect("name");
        let outcome = match load(&onnx) {
            Err(error) => Err(error),
            Ok(model) if model.backend() != "native" => Err(format!(
                "runs on {}, not the native engine",
                model.backend()
            )),
            Ok(model) => compare(&model, &onnx).map(|ratio| {
                println!("{name}: native, max |Δlogit| {ratio:.1e} × logit std");
            }),
        };
        if let Err(why) = outcome {
            println!("{name}: FAILED: {why}");
            failures.push(format!("{name}: {why}"));
        }
        std::fs::remove_file(&onnx).expect("remove the filled model");
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
