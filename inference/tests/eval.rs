//! `inference eval` on a model whose right answers are known (it names an image's dominant
//! colour) and datasets built so that their accuracy follows from the construction.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{TestServer, encode, import, python};
use image::{ImageFormat, RgbImage};
use serde_json::Value;

const COLOURS: [&str; 3] = ["red", "green", "blue"];

/// `colours.{onnx,json}` + labels, imported with the real `inference import` (the "add a model"
/// path), input 32×32.
fn colour_model(dir: &Path) -> PathBuf {
    let models = dir.join("models");
    std::fs::create_dir_all(&models).expect("mkdir");
    let onnx = models.join("colours.onnx");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/make_colour_onnx.py");
    python(&[
        script.to_str().expect("UTF-8"),
        "--out",
        onnx.to_str().expect("UTF-8"),
    ]);
    let labels = dir.join("colours.txt");
    std::fs::write(&labels, COLOURS.join("\n")).expect("labels");
    import(&[
        onnx.to_str().expect("UTF-8"),
        "--labels",
        labels.to_str().expect("UTF-8"),
        "--input-size",
        "32",
        "--resize-shorter",
        "32",
    ]);
    models
}

/// A noisy image whose dominant channel is `colour` (0 red, 1 green, 2 blue).
fn coloured(colour: usize, seed: u32) -> RgbImage {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(12_345);
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    };
    RgbImage::from_fn(48, 40, |_, _| {
        let mut pixel = [0_u8; 3];
        for (channel, value) in pixel.iter_mut().enumerate() {
            *value = if channel == colour {
                170 + (next() % 60) as u8
            } else {
                (next() % 80) as u8
            };
        }
        image::Rgb(pixel)
    })
}

/// ImageFolder: 10 red, 10 in `green/` of which 3 are red (mislabelled on purpose), 10 blue,
/// plus a corrupt JPEG in `blue/` and a stray text file. Right answer: 27/30 = 90 % top-1.
fn image_folder(root: &Path) -> Vec<(PathBuf, &'static str)> {
    let mut files = Vec::new();
    for (class, name) in COLOURS.iter().enumerate() {
        std::fs::create_dir_all(root.join(name)).expect("mkdir");
        for i in 0..10 {
            let actual = if *name == "green" && i < 3 { 0 } else { class };
            let format = if i % 2 == 0 {
                ImageFormat::Png
            } else {
                ImageFormat::Jpeg
            };
            let extension = if i % 2 == 0 { "png" } else { "jpg" };
            let path = root.join(name).join(format!("{i:02}.{extension}"));
            std::fs::write(
                &path,
                encode(&coloured(actual, (class * 100 + i) as u32), format),
            )
            .expect("write");
            files.push((path, *name));
        }
    }
    std::fs::write(
        root.join("blue/broken.jpg"),
        b"\xff\xd8\xff\xe0 not really a JPEG",
    )
    .expect("write");
    std::fs::write(root.join("README.txt"), "not part of the dataset").expect("write");
    files
}

fn eval(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_inference"))
        .arg("eval")
        .args(args)
        .output()
        .expect("run inference eval");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn eval_json(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let (ok, stdout, stderr) = eval(&all);
    assert!(ok, "inference eval {args:?} failed: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// The numbers the construction implies.
fn assert_expected(report: &Value) {
    assert_eq!(report["images"], 30, "{report}");
    assert_eq!(report["top1"]["correct"], 27);
    assert_eq!(report["top1"]["total"], 30);
    assert!((report["top1"]["accuracy"].as_f64().expect("f64") - 0.9).abs() < 1e-12);
    assert!(
        (report["top1"]["ci95_low"].as_f64().expect("f64") - 0.7438).abs() < 5e-4,
        "{report}"
    );
    assert!(
        (report["top1"]["ci95_high"].as_f64().expect("f64") - 0.9654).abs() < 5e-4,
        "{report}"
    );
    assert_eq!(report["k"], 3, "top-5 asked, the model has 3 classes");
    assert_eq!(report["topk"]["correct"], 30);
    let worst = &report["per_class"][0];
    assert_eq!(worst["model_label"], "green");
    assert_eq!(worst["top1"]["correct"], 7);
    assert_eq!(worst["top1"]["total"], 10);
    assert_eq!(report["per_class"][1]["top1"]["accuracy"], 1.0);
    assert_eq!(report["most_confused"].as_array().expect("array").len(), 1);
    assert_eq!(report["most_confused"][0]["predicted"], "red");
    assert_eq!(report["most_confused"][0]["count"], 3);
}

#[test]
fn image_folder_accuracy_is_what_the_construction_implies() {
    let dir = tempfile::tempdir().expect("dir");
    let models = colour_model(dir.path());
    let data = dir.path().join("data");
    image_folder(&data);
    let report = eval_json(&[
        "--model",
        models.to_str().expect("UTF-8"),
        "--dataset",
        data.to_str().expect("UTF-8"),
    ]);
    assert_expected(&report);
    assert_eq!(report["most_confused"][0]["actual"], "green");
    assert_eq!(report["unreadable"].as_array().expect("array").len(), 1);
    assert!(
        report["unreadable"][0]["file"]
            .as_str()
            .expect("file")
            .ends_with("blue/broken.jpg")
    );
    assert!(report["images_per_second"].as_f64().expect("rate") > 0.0);

    // `--model NAME` finds the model of that name in ./models.
    let output = Command::new(env!("CARGO_BIN_EXE_inference"))
        .current_dir(dir.path())
        .args(["eval", "--model", "colours", "--dataset", "data", "--json"])
        .output()
        .expect("run inference eval");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let by_name: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_expected(&by_name);

    // The text report says the same.
    let (ok, stdout, stderr) = eval(&[
        "--model",
        models.to_str().expect("UTF-8"),
        "--dataset",
        data.to_str().expect("UTF-8"),
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("top-1   90.00%  (95% CI 74.38–96.54%)  27/30"),
        "{stdout}"
    );
    assert!(stdout.contains("3  green → red"), "{stdout}");
    assert!(stdout.contains("1 unreadable images"), "{stdout}");
}

#[test]
fn tables_with_other_class_names_or_indices_give_the_same_numbers() {
    let dir = tempfile::tempdir().expect("dir");
    let models = colour_model(dir.path());
    let data = dir.path().join("data");
    let files = image_folder(&data);
    let relative = |p: &Path| p.strip_prefix(&data).expect("inside").display().to_string();
    // German names, mapped with a class map; a header row; the corrupt file included.
    let german = |name: &str| match name {
        "red" => "rot",
        "green" => "grün",
        _ => "blau",
    };
    let mut table = String::from("file,label\n");
    for (path, class) in &files {
        table += &format!("{},{}\n", relative(path), german(class));
    }
    table += "blue/broken.jpg,blau\n";
    std::fs::write(data.join("labels.csv"), table).expect("write");
    let map = dir.path().join("map.tsv");
    std::fs::write(&map, "rot\tred\ngrün\tgreen\nblau\t2\n").expect("write");
    let models_arg = models.to_str().expect("UTF-8");
    let csv = data.join("labels.csv");
    let report = eval_json(&[
        "--model",
        models_arg,
        "--dataset",
        csv.to_str().expect("UTF-8"),
        "--class-map",
        map.to_str().expect("UTF-8"),
    ]);
    assert_expected(&report);
    assert_eq!(report["most_confused"][0]["actual"], "grün");

    // Without the map the German names cannot be placed, and the error says how to fix it.
    let (ok, _, stderr) = eval(&[
        "--model",
        models_arg,
        "--dataset",
        csv.to_str().expect("UTF-8"),
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("3 of 3 dataset classes have no model class"),
        "{stderr}"
    );
    assert!(stderr.contains("--class-map"), "{stderr}");

    // Class indices in a TSV need no map.
    let mut tsv = String::new();
    for (path, class) in &files {
        let index = COLOURS.iter().position(|c| c == class).expect("colour");
        tsv += &format!("{}\t{index}\n", relative(path));
    }
    std::fs::write(data.join("labels.tsv"), tsv).expect("write");
    let report = eval_json(&[
        "--model",
        models_arg,
        "--dataset",
        data.join("labels.tsv").to_str().expect("UTF-8"),
    ]);
    assert_expected(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_served_model_is_evaluated_in_place_with_the_same_numbers() {
    let dir = tempfile::tempdir().expect("dir");
    let models = colour_model(dir.path());
    let data = dir.path().join("data");
    image_folder(&data);
    let server = TestServer::start_with_models(&models, &["--default-model", "colours"]).await;
    let models_arg = models.to_str().expect("UTF-8").to_owned();
    let data_arg = data.to_str().expect("UTF-8").to_owned();
    let endpoint = server.url.clone();
    let report = tokio::task::spawn_blocking(move || {
        eval_json(&[
            "--model",
            &models_arg,
            "--dataset",
            &data_arg,
            "--endpoint",
            &endpoint,
        ])
    })
    .await
    .expect("eval");
    assert_expected(&report);
    assert_eq!(report["source"], server.url);
    assert_eq!(
        report["unreadable"].as_array().expect("array").len(),
        1,
        "the server's 400 is an unreadable image"
    );
    server.stop().await;
}
