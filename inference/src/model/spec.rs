//! The model description: everything the server needs to know about a classifier that is not
//! in its ONNX graph (name, preprocessing, labels). One JSON file per model, written by
//! `inference import`, so adding a model means dropping in its ONNX file and this description.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Name of the label set compiled into the binary (the 1000 ImageNet-1k classes).
pub const IMAGENET_LABELS: &str = "imagenet";

const IMAGENET_TSV: &str = include_str!("imagenet_classes.tsv");

/// How an image becomes the model's input tensor (torchvision's classification transforms).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    /// Side of the square crop fed to the network (224 for ResNet50).
    pub input_size: u32,
    /// The shorter image side is resized to this before the centre crop (256 for ResNet50).
    pub resize_shorter: u32,
    /// Per-channel mean (RGB), applied after scaling pixels to [0, 1].
    pub mean: [f32; 3],
    /// Per-channel standard deviation (RGB).
    pub std: [f32; 3],
    /// How pixels are resampled (absent in older descriptions: bilinear).
    #[serde(default)]
    pub interpolation: Interpolation,
    /// Whether the image is resized by its shorter side and centre-cropped, or squashed to the
    /// input size (absent in older descriptions: crop).
    #[serde(default)]
    pub resize: Resize,
}

/// The resampling filter, as torchvision's `InterpolationMode` (antialiased, as Pillow does).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Interpolation {
    /// torchvision's default, and ResNet's, VGG's, MobileNet's.
    #[default]
    Bilinear,
    /// EfficientNet's and several timm models' (Pillow's bicubic, a = −0.5).
    Bicubic,
}

/// How an image is brought to the input size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Resize {
    /// `Resize(resize_shorter)` then `CenterCrop(input_size)`: torchvision's evaluation
    /// transform.
    #[default]
    ShorterThenCrop,
    /// `Resize((input_size, input_size))`: the whole image, aspect ratio not kept (some
    /// TensorFlow-trained models).
    Squash,
}

/// Named normalisations (`inference import --normalize`), as mean and std after scaling pixels
/// to [0, 1].
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Normalization {
    /// ImageNet's channel statistics: torchvision's models.
    Imagenet,
    /// `(x − 0.5) / 0.5`, to [−1, 1]: Inception-style and many TensorFlow models.
    Inception,
    /// `(x·255 − 127.5) / 128`: TensorFlow Lite's EfficientNet-Lite and MobileNet exports.
    Tflite,
}

impl Normalization {
    /// `(mean, std)` per channel for [0, 1] pixels.
    pub fn mean_std(self) -> ([f32; 3], [f32; 3]) {
        match self {
            Self::Imagenet => ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            Self::Inception => ([0.5; 3], [0.5; 3]),
            Self::Tflite => ([127.5 / 255.0; 3], [128.0 / 255.0; 3]),
        }
    }
}

impl Preprocess {
    /// torchvision's ImageNet defaults (ResNet, VGG, DenseNet, … "V1" weights).
    pub fn imagenet() -> Self {
        Self {
            input_size: 224,
            resize_shorter: 256,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            interpolation: Interpolation::Bilinear,
            resize: Resize::ShorterThenCrop,
        }
    }

    /// Refuses values that would make every request fail or divide by zero.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.input_size == 0 || self.resize_shorter < self.input_size {
            return Err(SpecError::Invalid(format!(
                "resize_shorter ({}) must be at least input_size ({}), and input_size > 0",
                self.resize_shorter, self.input_size
            )));
        }
        if self.std.iter().any(|s| !s.is_finite() || *s <= 0.0) {
            return Err(SpecError::Invalid("std values must be positive".into()));
        }
        Ok(())
    }
}

/// Contents of `<model>.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Name used in URLs (`/v2/models/{name}`, `?model=`) and metrics.
    pub name: String,
    /// ONNX file, relative to the description file.
    pub onnx: PathBuf,
    /// Expected sha256 of the ONNX file, checked at start-up when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Preprocessing parameters.
    pub preprocess: Preprocess,
    /// `"imagenet"` for the built-in ImageNet-1k names, or a file (relative to the
    /// description) with one label per line (`id<TAB>label` lines are accepted too).
    pub labels: String,
}

/// Why a model description is unusable.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The file could not be read. (Causes are part of the message, not a `source`: an
    /// error chain printed whole would otherwise name them twice.)
    #[error("cannot read {path}: {error}")]
    Io { path: String, error: std::io::Error },
    /// The file is not a valid description.
    #[error("{path} is not a valid model description: {error}")]
    Json {
        path: String,
        error: serde_json::Error,
    },
    /// A value is out of range.
    #[error("invalid model description: {0}")]
    Invalid(String),
}

impl ModelSpec {
    /// Reads and validates a description; relative paths are resolved against its folder.
    pub fn read(path: &Path) -> Result<(Self, PathBuf), SpecError> {
        let text = std::fs::read_to_string(path).map_err(|error| SpecError::Io {
            path: path.display().to_string(),
            error,
        })?;
        let spec: Self = serde_json::from_str(&text).map_err(|error| SpecError::Json {
            path: path.display().to_string(),
            error,
        })?;
        spec.validate()?;
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        Ok((spec, dir))
    }

    /// Checks the name (it ends up in URLs) and the preprocessing values.
    pub fn validate(&self) -> Result<(), SpecError> {
        let ok_name = !self.name.is_empty()
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok_name {
            return Err(SpecError::Invalid(format!(
                "model name '{}' must be non-empty and use only letters, digits, '-', '_' or '.'",
                self.name
            )));
        }
        self.preprocess.validate()
    }

    /// Loads the label list the description names.
    pub fn load_labels(&self, dir: &Path) -> Result<Vec<String>, SpecError> {
        Ok(parse_labels(&self.label_text(dir)?))
    }

    /// The ids of the labels (`n01440764`…) where the label file has an `id<TAB>label` column,
    /// so datasets named by id (ImageNet's synset folders) map onto the model's classes.
    pub fn load_label_ids(&self, dir: &Path) -> Result<Vec<Option<String>>, SpecError> {
        Ok(parse_label_ids(&self.label_text(dir)?))
    }

    fn label_text(&self, dir: &Path) -> Result<String, SpecError> {
        if self.labels == IMAGENET_LABELS {
            return Ok(IMAGENET_TSV.to_owned());
        }
        let path = dir.join(&self.labels);
        std::fs::read_to_string(&path).map_err(|error| SpecError::Io {
            path: path.display().to_string(),
            error,
        })
    }
}

/// One label per non-empty line; with `id<TAB>label` lines the label is the second column.
pub fn parse_labels(text: &str) -> Vec<String> {
    label_lines(text)
        .map(|l| l.split_once('\t').map_or(l, |(_, label)| label).to_string())
        .collect()
}

/// The id column of `id<TAB>label` lines, `None` for lines without one.
pub fn parse_label_ids(text: &str) -> Vec<Option<String>> {
    label_lines(text)
        .map(|l| l.split_once('\t').map(|(id, _)| id.to_string()))
        .collect()
}

fn label_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().map(str::trim_end).filter(|l| !l.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imagenet_labels_are_the_standard_thousand() {
        let labels = parse_labels(IMAGENET_TSV);
        assert_eq!(labels.len(), 1000);
        assert_eq!(labels[0], "tench, Tinca tinca");
        assert_eq!(labels[281], "tabby, tabby cat");
        assert_eq!(labels[999], "toilet tissue, toilet paper, bathroom tissue");
        let ids = parse_label_ids(IMAGENET_TSV);
        assert_eq!(ids.len(), 1000);
        assert_eq!(ids[0].as_deref(), Some("n01440764"));
        assert_eq!(parse_label_ids("red\nblue\n"), [None, None]);
    }

    #[test]
    fn labels_accept_plain_and_tab_separated_lines() {
        assert_eq!(parse_labels("red\n\ngreen\r\n"), vec!["red", "green"]);
        assert_eq!(parse_labels("n1\tcat\nn2\tdog"), vec!["cat", "dog"]);
    }

    #[test]
    fn bad_names_and_preprocessing_are_refused() {
        let mut spec = ModelSpec {
            name: "resnet50".into(),
            onnx: "resnet50.onnx".into(),
            sha256: None,
            preprocess: Preprocess::imagenet(),
            labels: IMAGENET_LABELS.into(),
        };
        assert!(spec.validate().is_ok());
        spec.name = "res net/50".into();
        assert!(spec.validate().is_err());
        spec.name = "resnet50".into();
        spec.preprocess.resize_shorter = 100;
        assert!(spec.validate().is_err());
        spec.preprocess = Preprocess::imagenet();
        spec.preprocess.std[1] = 0.0;
        assert!(spec.validate().is_err());
    }

    #[test]
    fn older_descriptions_keep_bilinear_crop_and_new_ones_name_their_resampling() {
        let old = r#"{"name": "m", "onnx": "m.onnx", "labels": "imagenet",
            "preprocess": {"input_size": 224, "resize_shorter": 256,
                           "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}"#;
        let spec: ModelSpec = serde_json::from_str(old).expect("a description without them");
        assert_eq!(spec.preprocess.interpolation, Interpolation::Bilinear);
        assert_eq!(spec.preprocess.resize, Resize::ShorterThenCrop);
        let new = old.replace(
            r#""std": [0.5, 0.5, 0.5]"#,
            r#""std": [0.5, 0.5, 0.5], "interpolation": "bicubic", "resize": "squash""#,
        );
        let spec: ModelSpec = serde_json::from_str(&new).expect("with them");
        assert_eq!(spec.preprocess.interpolation, Interpolation::Bicubic);
        assert_eq!(spec.preprocess.resize, Resize::Squash);
        let (mean, std) = Normalization::Tflite.mean_std();
        // (x·255 − 127.5) / 128 for a mid-grey pixel of 200.
        let x = 200.0 / 255.0;
        assert!(((x - mean[0]) / std[0] - (200.0 - 127.5) / 128.0).abs() < 1e-6);
    }
}
