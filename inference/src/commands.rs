//! `inference classify` and `inference import`: the command-line uses of a model.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::config::{ClassifyArgs, DEFAULT_MODELS, ImportArgs, ModelArgs};
use crate::eval::classes::ModelClasses;
use crate::model::spec::IMAGENET_LABELS;
use crate::model::{Classifier, ModelSpec, Preprocess, find_specs, sha256_file};
use crate::verify;

/// Loads the model called `name` (or the first one) from `--model`.
pub fn load_model(args: &ModelArgs, name: Option<&str>) -> anyhow::Result<Classifier> {
    let path = model_spec_path(args, name)?;
    Classifier::load(&path, args.target()).with_context(|| format!("loading {}", path.display()))
}

/// The description of the model called `name` (or the first one) under `--model`.
///
/// `--model resnet50` (a bare name that is not a path) means the model of that name in the
/// default folder, so `inference eval --model resnet50 --dataset …` reads as it sounds.
pub fn model_spec_path(args: &ModelArgs, name: Option<&str>) -> anyhow::Result<PathBuf> {
    let bare = args
        .model
        .to_str()
        .filter(|m| !args.model.exists() && !m.contains('/') && !m.contains('.') && !m.is_empty());
    if let (Some(model_name), None) = (bare, name) {
        let in_default = ModelArgs {
            model: PathBuf::from(DEFAULT_MODELS),
            ..args.clone()
        };
        return model_spec_path(&in_default, Some(model_name));
    }
    let specs = find_specs(&args.model)?;
    let Some(name) = name else {
        return Ok(specs[0].clone());
    };
    let mut names = Vec::new();
    for path in &specs {
        let (spec, _) = ModelSpec::read(path)?;
        if spec.name == name {
            return Ok(path.clone());
        }
        names.push(spec.name);
    }
    bail!(
        "no model named '{name}' in {} (found: {})",
        args.model.display(),
        names.join(", ")
    )
}

/// Prints the top-k classes of each image.
pub fn classify(args: &ClassifyArgs) -> anyhow::Result<()> {
    let model = load_model(&args.model, args.name.as_deref())?;
    if args.top_k == 0 || args.top_k > model.labels().len() {
        bail!("--top-k must be between 1 and {}", model.labels().len());
    }
    let mut images = Vec::new();
    for path in &args.images {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        images.push(
            model
                .preprocess(&bytes)
                .with_context(|| path.display().to_string())?,
        );
    }
    let rows = model.infer(&images)?;
    let mut report = Vec::new();
    for (path, row) in args.images.iter().zip(&rows) {
        let predictions = model.top_k(row, args.top_k);
        if args.json {
            report.push(serde_json::json!({ "image": path, "predictions": predictions }));
        } else {
            println!("{}", path.display());
            for p in predictions {
                println!(
                    "  {:>6.2}%  {:>4}  {}",
                    p.score * 100.0,
                    p.class_id,
                    p.label
                );
            }
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

/// Validates an ONNX classifier by loading and running it, then writes `<name>.json` beside it.
pub fn import(args: &ImportArgs) -> anyhow::Result<()> {
    let onnx = &args.onnx;
    if !onnx.is_file() {
        bail!("{} does not exist or is not a file", onnx.display());
    }
    let dir = match onnx.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = match &args.name {
        Some(name) => name.clone(),
        None => onnx
            .file_stem()
            .and_then(|s| s.to_str())
            .context("cannot derive a model name from the file name; pass --name")?
            .to_string(),
    };
    let labels = labels_beside(&args.labels, &dir, &name)?;
    let (mean, std) = match args.normalize {
        Some(preset) => preset.mean_std(),
        None => (rgb("--mean", &args.mean)?, rgb("--std", &args.std)?),
    };
    let spec = ModelSpec {
        name: name.clone(),
        onnx: PathBuf::from(onnx.file_name().context("ONNX path has no file name")?),
        sha256: Some(sha256_file(onnx)?),
        preprocess: Preprocess {
            input_size: args.input_size,
            resize_shorter: args.resize_shorter,
            mean,
            std,
            interpolation: args.interpolation,
            resize: args.resize,
        },
        labels: labels.name.clone(),
    };
    spec.validate()?;
    // Until the import has succeeded the labels are read where they are: a failed import
    // leaves nothing behind.
    let mut reading = spec.clone();
    if let Some(source) = &labels.copy_from {
        reading.labels = source.to_string_lossy().into_owned();
    }
    let label_list = reading.load_labels(&dir)?;
    let model = Classifier::from_parts(spec.clone(), onnx, label_list, args.device)
        .with_context(|| format!("{} cannot be served", onnx.display()))?;
    if let Some(photos) = &args.verify_with {
        let ids = reading.load_label_ids(&dir)?;
        let classes = ModelClasses {
            labels: model.labels(),
            ids: &ids,
        };
        let outcomes = verify::verify(&model, classes, photos, usize::from(args.verify_top))
            .with_context(|| format!("{} was not imported", onnx.display()))?;
        for outcome in outcomes {
            println!(
                "verified {}: {}",
                outcome.photo,
                verify::describe(&outcome.top)
            );
        }
    }
    if let Some(source) = &labels.copy_from {
        std::fs::copy(source, dir.join(&labels.name))
            .with_context(|| format!("cannot copy labels from {}", source.display()))?;
    }
    let out = dir.join(format!("{name}.json"));
    std::fs::write(&out, serde_json::to_string_pretty(&spec)? + "\n")
        .with_context(|| format!("cannot write {}", out.display()))?;
    let network = model.network();
    if network.rewrites().any() {
        println!(
            "rewrote the graph for {0}×{0} inputs: {1}",
            args.input_size,
            network.rewrites()
        );
    }
    if let Some(why) = network.not_native() {
        eprintln!(
            "warning: the native CPU kernels do not cover this graph ({why}); it runs on burn's \
             operations, several times slower (docs/ADDING-A-MODEL.md lists what is covered)"
        );
    }
    println!(
        "imported '{}' ({} classes, input {}×{}, engine {}) → {}",
        model.name(),
        model.labels().len(),
        args.input_size,
        args.input_size,
        model.backend(),
        out.display()
    );
    Ok(())
}

/// Three per-channel values (R, G, B), however they were split on the command line.
fn rgb(flag: &str, values: &[f32]) -> anyhow::Result<[f32; 3]> {
    <[f32; 3]>::try_from(values).map_err(|_| {
        anyhow::anyhow!(
            "{flag} takes three values (R, G, B), e.g. {flag} 0.5,0.5,0.5; got {}",
            values.len()
        )
    })
}

/// The labels an import names: the file name they have beside the model, and the file to copy
/// there once the import has succeeded (none for the built-in ImageNet list or a file already
/// beside the model).
struct Labels {
    name: String,
    copy_from: Option<PathBuf>,
}

/// Label files must sit beside the description so the model folder is self-contained.
fn labels_beside(labels: &str, dir: &Path, name: &str) -> anyhow::Result<Labels> {
    let beside = |name: String| Labels {
        name,
        copy_from: None,
    };
    if labels == IMAGENET_LABELS {
        return Ok(beside(labels.to_string()));
    }
    let source = PathBuf::from(labels);
    let canonical_parent = |p: &Path| {
        p.canonicalize()
            .ok()
            .and_then(|c| c.parent().map(Path::to_path_buf))
    };
    if source.is_file() && canonical_parent(&source) == dir.canonicalize().ok() {
        let file_name = source.file_name().context("label path has no file name")?;
        return Ok(beside(file_name.to_string_lossy().into_owned()));
    }
    if !source.is_file() {
        bail!("labels file {} does not exist", source.display());
    }
    Ok(Labels {
        name: format!("{name}.labels.txt"),
        copy_from: Some(source),
    })
}
