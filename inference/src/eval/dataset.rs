//! Labelled image collections: an ImageFolder tree (`ROOT/<class>/<image>`, torchvision's
//! layout, also ImageNet's validation set once sorted into synset folders) or a table of
//! `file,label` rows (CSV, or TSV when lines hold tabs).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// File extensions read as images in an ImageFolder tree (case-insensitive).
const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "gif", "bmp"];

/// A dataset: class names and the labelled files.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Where it was read from.
    pub root: PathBuf,
    /// How it is laid out.
    pub layout: Layout,
    /// Class names as the dataset spells them, sorted.
    pub classes: Vec<String>,
    /// Every labelled file.
    pub samples: Vec<Sample>,
    /// Files seen but not taken (other extensions, files outside class folders).
    pub skipped: usize,
}

/// The two supported layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// `ROOT/<class>/<image>`.
    ImageFolder,
    /// A CSV/TSV of `file,label`.
    Table,
}

/// One labelled file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// The image file.
    pub path: PathBuf,
    /// Index into [`Dataset::classes`].
    pub class: usize,
}

impl Dataset {
    /// Reads a folder tree or a table, whichever `path` is.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let dataset = if path.is_dir() {
            Self::image_folder(path)?
        } else if path.is_file() {
            Self::table(path)?
        } else {
            bail!("dataset {} does not exist", path.display());
        };
        if dataset.samples.is_empty() {
            bail!(
                "dataset {} holds no labelled images (expected {}/<class>/<image> folders or a \
                 file,label table)",
                path.display(),
                path.display()
            );
        }
        Ok(dataset)
    }

    fn image_folder(root: &Path) -> anyhow::Result<Self> {
        let mut classes = Vec::new();
        let mut skipped = 0;
        for entry in read_dir_sorted(root)? {
            if entry.is_dir() {
                classes.push(entry);
            } else {
                skipped += 1;
            }
        }
        let mut samples = Vec::new();
        let mut names = Vec::new();
        for (class, dir) in classes.iter().enumerate() {
            names.push(file_name(dir));
            let mut files = Vec::new();
            walk(dir, &mut files)?;
            for file in files {
                if has_image_extension(&file) {
                    samples.push(Sample { path: file, class });
                } else {
                    skipped += 1;
                }
            }
        }
        Ok(Self {
            root: root.to_owned(),
            layout: Layout::ImageFolder,
            classes: names,
            samples,
            skipped,
        })
    }

    fn table(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut rows = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let separator = if line.contains('\t') { '\t' } else { ',' };
            let (file, label) = line.split_once(separator).with_context(|| {
                format!("{}:{}: expected `file,label`", path.display(), number + 1)
            })?;
            let (file, label) = (unquote(file), unquote(label));
            if rows.is_empty() && is_header(file) {
                continue;
            }
            // Kaggle's ImageNet LOC_val_solution.csv: the label is the first word of a box list.
            let label = label
                .split_whitespace()
                .next()
                .with_context(|| format!("{}:{}: empty label", path.display(), number + 1))?;
            rows.push((resolve_file(base, file), label.to_owned()));
        }
        let classes: Vec<String> = rows
            .iter()
            .map(|(_, label)| label.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let samples = rows
            .into_iter()
            .map(|(path, label)| Sample {
                path,
                class: classes.binary_search(&label).unwrap_or_default(),
            })
            .collect();
        Ok(Self {
            root: path.to_owned(),
            layout: Layout::Table,
            classes,
            samples,
            skipped: 0,
        })
    }
}

fn is_header(first: &str) -> bool {
    ["file", "filename", "path", "image", "imageid", "image_id"]
        .contains(&first.to_ascii_lowercase().as_str())
}

fn unquote(field: &str) -> &str {
    let field = field.trim();
    field
        .strip_prefix('"')
        .and_then(|f| f.strip_suffix('"'))
        .unwrap_or(field)
}

/// A table's file relative to the table; ImageNet ids without an extension get `.JPEG`.
fn resolve_file(base: &Path, file: &str) -> PathBuf {
    let path = base.join(file);
    if path.extension().is_none() && !path.exists() {
        for extension in ["JPEG", "jpg", "jpeg", "png"] {
            let candidate = path.with_extension(extension);
            if candidate.exists() {
                return candidate;
            }
        }
    }
    path
}

fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Entries of `dir` without hidden ones, sorted by name.
fn read_dir_sorted(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| !file_name(p).starts_with('.'))
        .collect();
    entries.sort();
    Ok(entries)
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in read_dir_sorted(dir)? {
        if entry.is_dir() {
            walk(&entry, files)?;
        } else {
            files.push(entry);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, b"x").expect("write");
    }

    #[test]
    fn image_folders_take_class_folders_and_image_files() {
        let dir = tempfile::tempdir().expect("dir");
        let root = dir.path();
        for file in [
            "cat/a.jpg",
            "cat/b.PNG",
            "cat/sub/c.webp",
            "dog/d.jpeg",
            "dog/notes.txt",
            "readme.md",
            ".hidden/x.jpg",
        ] {
            touch(&root.join(file));
        }
        let dataset = Dataset::open(root).expect("opens");
        assert_eq!(dataset.layout, Layout::ImageFolder);
        assert_eq!(dataset.classes, ["cat", "dog"]);
        let files: Vec<(String, usize)> = dataset
            .samples
            .iter()
            .map(|s| {
                (
                    s.path
                        .strip_prefix(root)
                        .expect("inside")
                        .display()
                        .to_string(),
                    s.class,
                )
            })
            .collect();
        assert_eq!(
            files,
            [
                ("cat/a.jpg".into(), 0),
                ("cat/b.PNG".into(), 0),
                ("cat/sub/c.webp".into(), 0),
                ("dog/d.jpeg".into(), 1)
            ]
        );
        assert_eq!(dataset.skipped, 2);
    }

    #[test]
    fn tables_read_csv_tsv_headers_and_imagenet_solutions() {
        let dir = tempfile::tempdir().expect("dir");
        let root = dir.path();
        touch(&root.join("img/ILSVRC2012_val_00000001.JPEG"));
        let cases = [
            (
                "file,label\nimg/a.jpg,cat\nimg/b.jpg,\"dog\"\n",
                vec![("img/a.jpg", "cat"), ("img/b.jpg", "dog")],
            ),
            (
                "img/a.jpg\t281\n# comment\n\nimg/b.jpg\t3\n",
                vec![("img/a.jpg", "281"), ("img/b.jpg", "3")],
            ),
            (
                "ImageId,PredictionString\nimg/ILSVRC2012_val_00000001,n01751748 48 2 300 200\n",
                vec![("img/ILSVRC2012_val_00000001.JPEG", "n01751748")],
            ),
        ];
        for (text, expected) in cases {
            let table = root.join("labels.csv");
            std::fs::write(&table, text).expect("write");
            let dataset = Dataset::open(&table).expect("opens");
            assert_eq!(dataset.layout, Layout::Table);
            let rows: Vec<(String, String)> = dataset
                .samples
                .iter()
                .map(|s| {
                    (
                        s.path
                            .strip_prefix(root)
                            .expect("inside")
                            .display()
                            .to_string(),
                        dataset.classes[s.class].clone(),
                    )
                })
                .collect();
            let expected: Vec<(String, String)> = expected
                .into_iter()
                .map(|(f, l)| (f.to_owned(), l.to_owned()))
                .collect();
            assert_eq!(rows, expected, "{text}");
        }
    }

    #[test]
    fn bad_datasets_are_refused_with_a_reason() {
        let dir = tempfile::tempdir().expect("dir");
        let missing = Dataset::open(&dir.path().join("nope"))
            .expect_err("missing")
            .to_string();
        assert!(missing.contains("does not exist"), "{missing}");
        let empty = Dataset::open(dir.path()).expect_err("empty").to_string();
        assert!(empty.contains("no labelled images"), "{empty}");
        let table = dir.path().join("t.csv");
        std::fs::write(&table, "just-a-file\n").expect("write");
        let malformed = Dataset::open(&table).expect_err("malformed").to_string();
        assert!(
            malformed.contains("t.csv:1: expected `file,label`"),
            "{malformed}"
        );
    }
}
