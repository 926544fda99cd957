//! `inference import --verify-with DIR`: a model shows that it was trained before it is
//! imported, by classifying photos whose classes are known.
//!
//! A downloaded file can hold anything: a model exported with seeded random weights looks, to
//! every shape and checksum check, exactly like a trained one. A few real photos settle it: a
//! trained ImageNet classifier puts a cat among its top five for a photo of a cat, a random
//! one practically never does (about 3 chances in 1000 per photo for three acceptable classes
//! of 1000). `DIR/expected.tsv` lists, one photo per line, `file<TAB>class|class|…`; a class
//! is written as `inference eval` reads one (an index, a label id such as an ImageNet synset,
//! or a label), and the photo passes when any of its classes is in the top `k`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::eval::classes::ModelClasses;
use crate::model::Classifier;

/// The file in the photo folder that says what each photo shows.
pub const EXPECTED: &str = "expected.tsv";

/// One photo and the classes any of which its top `k` must contain.
#[derive(Debug)]
struct Expectation {
    photo: PathBuf,
    classes: Vec<usize>,
}

/// How one photo was classified.
#[derive(Debug)]
pub struct Outcome {
    /// The photo's file name.
    pub photo: String,
    /// The top `k` labels with their scores, best first.
    pub top: Vec<(String, f32)>,
    /// Whether an expected class is among them.
    pub passed: bool,
}

/// Classifies every photo of `dir/expected.tsv` with `model`; fails, listing what the model
/// saw, when any photo's top `k` misses all of its classes.
pub fn verify(
    model: &Classifier,
    classes: ModelClasses<'_>,
    dir: &Path,
    k: usize,
) -> anyhow::Result<Vec<Outcome>> {
    let expectations = read(dir, classes)?;
    let k = k.clamp(1, classes.labels.len());
    let mut outcomes = Vec::with_capacity(expectations.len());
    for expectation in &expectations {
        let bytes = std::fs::read(&expectation.photo)
            .with_context(|| format!("cannot read {}", expectation.photo.display()))?;
        let image = model
            .preprocess(&bytes)
            .with_context(|| format!("cannot decode {}", expectation.photo.display()))?;
        let scores = model.infer(&[image])?;
        let top = model.top_k(&scores[0], k);
        outcomes.push(Outcome {
            photo: file_name(&expectation.photo),
            passed: top
                .iter()
                .any(|p| expectation.classes.contains(&p.class_id)),
            top: top.into_iter().map(|p| (p.label, p.score)).collect(),
        });
    }
    let failed: Vec<String> = outcomes
        .iter()
        .zip(&expectations)
        .filter(|(outcome, _)| !outcome.passed)
        .map(|(outcome, expectation)| {
            let wanted: Vec<&str> = expectation
                .classes
                .iter()
                .map(|&c| classes.labels[c].as_str())
                .collect();
            format!(
                "{}: expected one of [{}] in the top {k}, got [{}]",
                outcome.photo,
                wanted.join("; "),
                describe(&outcome.top)
            )
        })
        .collect();
    if !failed.is_empty() {
        bail!(
            "the model does not recognise the verification photos in {} — its weights are not \
             trained ones (random weights, or another model than the labels describe) or its \
             preprocessing is wrong:\n  {}",
            dir.display(),
            failed.join("\n  ")
        );
    }
    Ok(outcomes)
}

/// `label 0.87; label 0.05; …`
pub fn describe(top: &[(String, f32)]) -> String {
    top.iter()
        .map(|(label, score)| format!("{label} {score:.2}"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into(),
    )
}

/// The lines of `dir/expected.tsv`, classes resolved against the model's.
fn read(dir: &Path, classes: ModelClasses<'_>) -> anyhow::Result<Vec<Expectation>> {
    let path = dir.join(EXPECTED);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {}: a verification folder lists its photos there, one \
             `file<TAB>class|class|…` per line",
            path.display()
        )
    })?;
    let mut expectations = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = || format!("{}:{}", path.display(), number + 1);
        let Some((photo, wanted)) = line.split_once('\t') else {
            bail!("{}: expected `file<TAB>class|class|…`", at());
        };
        let classes = wanted
            .split('|')
            .map(|class| classes.resolve(class))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|why| anyhow::anyhow!("{}: {why}", at()))?;
        expectations.push(Expectation {
            photo: dir.join(photo.trim()),
            classes,
        });
    }
    if expectations.is_empty() {
        bail!("{} lists no photos", path.display());
    }
    Ok(expectations)
}
