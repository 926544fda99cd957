//! Counting outcomes and writing the accuracy report.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

/// Running counts, fed one image at a time.
#[derive(Debug, Clone)]
pub struct Tally {
    /// Per dataset class: (top-1 correct, top-k correct, total).
    per_class: Vec<(u64, u64, u64)>,
    /// (dataset class, predicted model class) → count, wrong top-1 only.
    confusions: BTreeMap<(usize, usize), u64>,
    unreadable: Vec<(PathBuf, String)>,
}

impl Tally {
    /// Counts for a dataset with `classes` classes.
    pub fn new(classes: usize) -> Self {
        Self {
            per_class: vec![(0, 0, 0); classes],
            confusions: BTreeMap::new(),
            unreadable: Vec::new(),
        }
    }

    /// One prediction: the dataset class, the model class it maps to, and the ranked model
    /// classes predicted (best first, k of them).
    pub fn record(&mut self, class: usize, expected: usize, ranked: &[usize]) {
        let entry = &mut self.per_class[class];
        entry.2 += 1;
        if ranked.first() == Some(&expected) {
            entry.0 += 1;
        } else if let Some(&predicted) = ranked.first() {
            *self.confusions.entry((class, predicted)).or_default() += 1;
        }
        if ranked.contains(&expected) {
            entry.1 += 1;
        }
    }

    /// An image that could not be read or decoded; it does not count toward accuracy.
    pub fn unreadable(&mut self, path: PathBuf, reason: String) {
        self.unreadable.push((path, reason));
    }

    /// Images that produced a prediction.
    pub fn evaluated(&self) -> u64 {
        self.per_class.iter().map(|c| c.2).sum()
    }
}

/// A proportion with its 95 % Wilson score interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Accuracy {
    /// Correct answers.
    pub correct: u64,
    /// Answers.
    pub total: u64,
    /// `correct / total`.
    pub accuracy: f64,
    /// Lower end of the 95 % confidence interval.
    pub ci95_low: f64,
    /// Upper end of the 95 % confidence interval.
    pub ci95_high: f64,
}

impl Accuracy {
    /// Wilson's interval: well-behaved near 0 and 1 and for small samples, unlike `p ± 1.96σ`.
    pub fn new(correct: u64, total: u64) -> Self {
        if total == 0 {
            return Self {
                correct,
                total,
                accuracy: 0.0,
                ci95_low: 0.0,
                ci95_high: 0.0,
            };
        }
        let z = 1.959_963_984_540_054_f64;
        #[allow(clippy::cast_precision_loss, reason = "counts far below 2^52")]
        let (c, n) = (correct as f64, total as f64);
        let p = c / n;
        let denominator = 1.0 + z * z / n;
        let centre = (p + z * z / (2.0 * n)) / denominator;
        let half = z / denominator * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
        Self {
            correct,
            total,
            accuracy: p,
            ci95_low: (centre - half).max(0.0),
            ci95_high: (centre + half).min(1.0),
        }
    }
}

/// Accuracy on one dataset class.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassAccuracy {
    /// The dataset's class name.
    pub class: String,
    /// The model label it maps to.
    pub model_label: String,
    /// Top-1 on this class.
    pub top1: Accuracy,
}

/// A frequent mistake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Confusion {
    /// The dataset class.
    pub actual: String,
    /// The model label predicted instead.
    pub predicted: String,
    /// How often.
    pub count: u64,
}

/// An image left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unreadable {
    /// The file.
    pub file: PathBuf,
    /// Why.
    pub reason: String,
}

/// The whole report (`--json` prints it as is).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Model name.
    pub model: String,
    /// Where predictions came from: `local` or the endpoint URL.
    pub source: String,
    /// Dataset path.
    pub dataset: PathBuf,
    /// Images evaluated (readable ones).
    pub images: u64,
    /// Top-1 accuracy.
    pub top1: Accuracy,
    /// The k of top-k (5, or fewer when the model has fewer classes).
    pub k: usize,
    /// Top-k accuracy.
    pub topk: Accuracy,
    /// Per dataset class, worst first.
    pub per_class: Vec<ClassAccuracy>,
    /// Most frequent (actual, predicted) mistakes, at most 10.
    pub most_confused: Vec<Confusion>,
    /// Files that could not be read or decoded.
    pub unreadable: Vec<Unreadable>,
    /// Wall time.
    pub seconds: f64,
    /// Evaluated images per second.
    pub images_per_second: f64,
}

/// What the report needs besides the counts.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// Model name.
    pub model: &'a str,
    /// `local` or the endpoint URL.
    pub source: &'a str,
    /// Dataset path.
    pub dataset: &'a std::path::Path,
    /// Dataset class names.
    pub classes: &'a [String],
    /// Model labels.
    pub labels: &'a [String],
    /// Model class of each dataset class.
    pub mapping: &'a [usize],
    /// The k of top-k.
    pub k: usize,
    /// Wall time in seconds.
    pub seconds: f64,
}

impl Tally {
    /// The finished report.
    pub fn report(mut self, context: Context<'_>) -> Report {
        let sum = |pick: fn(&(u64, u64, u64)) -> u64| self.per_class.iter().map(pick).sum::<u64>();
        let images = self.evaluated();
        let top1 = Accuracy::new(sum(|c| c.0), images);
        let topk = Accuracy::new(sum(|c| c.1), images);
        let mut per_class: Vec<ClassAccuracy> = self
            .per_class
            .iter()
            .enumerate()
            .filter(|(_, c)| c.2 > 0)
            .map(|(i, c)| ClassAccuracy {
                class: context.classes[i].clone(),
                model_label: context.labels[context.mapping[i]].clone(),
                top1: Accuracy::new(c.0, c.2),
            })
            .collect();
        per_class.sort_by(|a, b| {
            a.top1
                .accuracy
                .total_cmp(&b.top1.accuracy)
                .then(a.class.cmp(&b.class))
        });
        let mut confusions: Vec<Confusion> = self
            .confusions
            .iter()
            .map(|(&(actual, predicted), &count)| Confusion {
                actual: context.classes[actual].clone(),
                predicted: context.labels[predicted].clone(),
                count,
            })
            .collect();
        confusions.sort_by(|a, b| b.count.cmp(&a.count).then(a.actual.cmp(&b.actual)));
        confusions.truncate(10);
        self.unreadable.sort();
        #[allow(clippy::cast_precision_loss, reason = "image counts")]
        let rate = if context.seconds > 0.0 {
            images as f64 / context.seconds
        } else {
            0.0
        };
        Report {
            model: context.model.to_owned(),
            source: context.source.to_owned(),
            dataset: context.dataset.to_owned(),
            images,
            top1,
            k: context.k,
            topk,
            per_class,
            most_confused: confusions,
            unreadable: self
                .unreadable
                .into_iter()
                .map(|(file, reason)| Unreadable { file, reason })
                .collect(),
            seconds: context.seconds,
            images_per_second: rate,
        }
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pct = |a: &Accuracy| {
            format!(
                "{:6.2}%  (95% CI {:.2}–{:.2}%)  {}/{}",
                a.accuracy * 100.0,
                a.ci95_low * 100.0,
                a.ci95_high * 100.0,
                a.correct,
                a.total
            )
        };
        writeln!(
            f,
            "model {} ({}) on {}",
            self.model,
            self.source,
            self.dataset.display()
        )?;
        writeln!(f, "top-1  {}", pct(&self.top1))?;
        writeln!(f, "top-{}  {}", self.k, pct(&self.topk))?;
        writeln!(
            f,
            "{} images in {:.1} s ({:.1} images/s)",
            self.images, self.seconds, self.images_per_second
        )?;
        writeln!(f, "\nworst classes (top-1):")?;
        for class in self.per_class.iter().take(10) {
            writeln!(
                f,
                "  {:6.2}%  {:>5}/{:<5} {} → {}",
                class.top1.accuracy * 100.0,
                class.top1.correct,
                class.top1.total,
                class.class,
                class.model_label
            )?;
        }
        if !self.most_confused.is_empty() {
            writeln!(f, "\nmost confused (actual → predicted):")?;
            for c in &self.most_confused {
                writeln!(f, "  {:>5}  {} → {}", c.count, c.actual, c.predicted)?;
            }
        }
        if !self.unreadable.is_empty() {
            writeln!(
                f,
                "\n{} unreadable images (not counted):",
                self.unreadable.len()
            )?;
            for u in &self.unreadable {
                writeln!(f, "  {}: {}", u.file.display(), u.reason)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_intervals_match_published_values() {
        // Reference values: Newcombe (1998), Table I, and the usual worked examples.
        let cases = [
            (81, 263, 0.2553, 0.3662),
            (15, 148, 0.0624, 0.1605),
            (0, 20, 0.0, 0.1611),
            (27, 30, 0.7438, 0.9654),
        ];
        for (correct, total, low, high) in cases {
            let a = Accuracy::new(correct, total);
            assert!(
                (a.ci95_low - low).abs() < 5e-4,
                "{correct}/{total}: low {}",
                a.ci95_low
            );
            assert!(
                (a.ci95_high - high).abs() < 5e-4,
                "{correct}/{total}: high {}",
                a.ci95_high
            );
        }
        assert_eq!(Accuracy::new(0, 0).accuracy, 0.0);
    }

    #[test]
    fn tallies_top1_topk_per_class_and_confusions() {
        let mut tally = Tally::new(2);
        tally.record(0, 10, &[10, 11]);
        tally.record(0, 10, &[11, 10]);
        tally.record(1, 11, &[10, 12]);
        tally.record(1, 11, &[10, 11]);
        tally.unreadable("b.jpg".into(), "truncated".into());
        let labels: Vec<String> = (0..13).map(|i| format!("L{i}")).collect();
        let classes = ["cat".to_owned(), "dog".to_owned()];
        let report = tally.report(Context {
            model: "m",
            source: "local",
            dataset: std::path::Path::new("d"),
            classes: &classes,
            labels: &labels,
            mapping: &[10, 11],
            k: 2,
            seconds: 2.0,
        });
        assert_eq!(report.images, 4);
        assert_eq!((report.top1.correct, report.topk.correct), (1, 3));
        assert_eq!(report.per_class[0].class, "dog");
        assert_eq!(report.per_class[0].top1.correct, 0);
        assert_eq!(
            report.most_confused[0],
            Confusion {
                actual: "dog".into(),
                predicted: "L10".into(),
                count: 2
            }
        );
        assert_eq!(report.unreadable.len(), 1);
        assert!((report.images_per_second - 2.0).abs() < 1e-9);
        let text = report.to_string();
        assert!(text.contains("top-1   25.00%"), "{text}");
        assert!(text.contains("2  dog → L10"), "{text}");
    }
}
