//! Which model class each dataset class is.
//!
//! Datasets rarely spell classes the way a model's label list does, so a dataset class name is
//! matched, in order, as: a class index (`281`), a label id (`n02123045`, ImageNet's synset
//! folders), the exact label, the label ignoring case and `_`/space differences, or one of a
//! label's comma-separated names (`tabby` in `tabby, tabby cat`) when only one label has it.
//! A mapping file (`--class-map`, lines `dataset class<TAB or ,>model class`) overrides any of
//! these, its right-hand side resolved by the same rules.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};

/// The model's classes, as the mapping sees them.
#[derive(Debug, Clone, Copy)]
pub struct ModelClasses<'a> {
    /// Labels by output index.
    pub labels: &'a [String],
    /// Label ids by output index, where the label file has them.
    pub ids: &'a [Option<String>],
}

fn normalize(text: &str) -> String {
    text.trim().to_lowercase().replace(['_', '-'], " ")
}

impl ModelClasses<'_> {
    /// The output index a class name stands for.
    pub fn resolve(&self, name: &str) -> Result<usize, String> {
        let name = name.trim();
        if let Ok(index) = name.parse::<usize>() {
            return if index < self.labels.len() {
                Ok(index)
            } else {
                Err(format!(
                    "class index {index} is beyond the model's {} classes",
                    self.labels.len()
                ))
            };
        }
        if let Some(index) = self.ids.iter().position(|id| id.as_deref() == Some(name)) {
            return Ok(index);
        }
        // Each rule must name exactly one class: ImageNet has two labels "crane" (the bird and
        // the machine), and guessing would silently score half of them wrong.
        let wanted = normalize(name);
        let rules: [&dyn Fn(&str) -> bool; 3] = [
            &|label| label == name,
            &|label| normalize(label) == wanted,
            &|label| label.split(',').any(|part| normalize(part) == wanted),
        ];
        let mut matches = Vec::new();
        for rule in rules {
            matches = (0..self.labels.len())
                .filter(|&i| rule(&self.labels[i]))
                .collect();
            if !matches.is_empty() {
                break;
            }
        }
        match matches.as_slice() {
            [index] => Ok(*index),
            [] => Err(format!("no model label matches {name:?}")),
            many => Err(format!(
                "{name:?} matches several model labels ({}); say which in --class-map",
                many.iter()
                    .map(|&i| format!("{i}: {:?}", self.labels[i]))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
}

/// The model output index of each dataset class (same order as `dataset_classes`).
pub fn map_classes(
    dataset_classes: &[String],
    model: ModelClasses<'_>,
    class_map: Option<&Path>,
) -> anyhow::Result<Vec<usize>> {
    let overrides = match class_map {
        Some(path) => read_class_map(path)?,
        None => BTreeMap::new(),
    };
    let mut mapping = Vec::with_capacity(dataset_classes.len());
    let mut problems = Vec::new();
    for class in dataset_classes {
        let target = overrides.get(class).map_or(class.as_str(), String::as_str);
        match model.resolve(target) {
            Ok(index) => mapping.push(index),
            Err(problem) => problems.push(format!("  {class}: {problem}")),
        }
    }
    if !problems.is_empty() {
        let shown = problems.len().min(10);
        bail!(
            "{} of {} dataset classes have no model class:\n{}{}\nname them in a --class-map file \
             (lines `dataset class<TAB>model label, id or index`)",
            problems.len(),
            dataset_classes.len(),
            problems[..shown].join("\n"),
            if problems.len() > shown {
                format!("\n  … and {} more", problems.len() - shown)
            } else {
                String::new()
            }
        );
    }
    Ok(mapping)
}

fn read_class_map(path: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read class map {}", path.display()))?;
    let mut map = BTreeMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let separator = if line.contains('\t') { '\t' } else { ',' };
        let (from, to) = line.split_once(separator).with_context(|| {
            format!(
                "{}:{}: expected `dataset class<TAB>model class`",
                path.display(),
                number + 1
            )
        })?;
        map.insert(from.trim().to_owned(), to.trim().to_owned());
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn imagenet_like() -> (Vec<String>, Vec<Option<String>>) {
        let labels = [
            "tench, Tinca tinca",
            "tabby, tabby cat",
            "tiger cat",
            "crane",
            "crane",
        ]
        .map(str::to_owned)
        .to_vec();
        let ids = [
            "n01440764",
            "n02123045",
            "n02123159",
            "n02012849",
            "n03126707",
        ]
        .map(|s| Some(s.to_owned()))
        .to_vec();
        (labels, ids)
    }

    #[test]
    fn resolves_the_usual_spellings() {
        let (labels, ids) = imagenet_like();
        let model = ModelClasses {
            labels: &labels,
            ids: &ids,
        };
        let cases = [
            ("1", Ok(1)),
            ("n02123159", Ok(2)),
            ("tabby, tabby cat", Ok(1)),
            ("Tiger_Cat", Ok(2)),
            ("tiger-cat", Ok(2)),
            ("tabby", Ok(1)),
            ("Tinca tinca", Ok(0)),
        ];
        for (name, expected) in cases {
            assert_eq!(model.resolve(name), expected, "{name}");
        }
        let errors = [
            ("7", "beyond the model's 5 classes"),
            ("zebra", "no model label"),
            ("crane", "several model labels"),
        ];
        for (name, expected) in errors {
            let error = model.resolve(name).expect_err(name);
            assert!(error.contains(expected), "{name}: {error}");
        }
    }

    #[test]
    fn a_class_map_overrides_and_unmapped_classes_are_listed() {
        let (labels, ids) = imagenet_like();
        let model = ModelClasses {
            labels: &labels,
            ids: &ids,
        };
        let dir = tempfile::tempdir().expect("dir");
        let map = dir.path().join("map.tsv");
        std::fs::write(&map, "# dataset\tmodel\nKatze\ttabby\nKranich\tn02012849\n")
            .expect("write");
        let classes = ["Katze", "Kranich", "tench"].map(str::to_owned);
        assert_eq!(
            map_classes(&classes, model, Some(&map)).expect("maps"),
            [1, 3, 0]
        );
        let classes = ["Katze", "Hund", "Vogel"].map(str::to_owned);
        let error = map_classes(&classes, model, None)
            .expect_err("unmapped")
            .to_string();
        assert!(
            error.starts_with("3 of 3 dataset classes have no model class"),
            "{error}"
        );
        assert!(error.contains("Hund: no model label matches"), "{error}");
        assert!(error.contains("--class-map"), "{error}");
    }
}
