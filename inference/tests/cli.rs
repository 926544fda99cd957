//! The `inference` binary as a user runs it: subcommands, error messages, SIGTERM handling.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use image::ImageFormat;

const BIN: &str = env!("CARGO_BIN_EXE_inference");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn run(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run inference")
}

#[test]
fn classify_prints_the_top_classes_of_each_image() {
    let dir = tempfile::tempdir().expect("temp dir");
    let image = dir.path().join("photo.png");
    std::fs::write(
        &image,
        common::encode(&common::test_image(320, 240, 4), ImageFormat::Png),
    )
    .expect("write image");
    let models = common::models().to_str().expect("UTF-8");
    let out = run(&[
        "classify",
        "--model",
        models,
        "--name",
        common::DEMO,
        "--top-k",
        "3",
        "--json",
        image.to_str().expect("UTF-8"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let predictions = report[0]["predictions"].as_array().expect("predictions");
    assert_eq!(predictions.len(), 3);
    for p in predictions {
        assert!(common::DEMO_LABELS.contains(&p["label"].as_str().expect("label")));
    }
}

#[test]
fn bench_profile_says_where_each_pass_spends_its_time() {
    let models = common::models().to_str().expect("UTF-8");
    let bench = |extra: &[&str]| {
        let mut args = vec!["bench", "--model", models, "--name", common::DEMO];
        args.extend(["--batch-sizes", "2", "--iterations", "3", "--warmup", "1"]);
        args.extend(extra);
        run(&args)
    };
    let out = bench(&["--profile", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let row = &report["results"][0];
    let kernels = row["kernels"].as_array().expect("kernels with --profile");
    assert!(!kernels.is_empty());
    let total: f64 = kernels.iter().map(|k| k["ms"].as_f64().expect("ms")).sum();
    // The batch of 2 runs as one part per thread, at once (1 image each on two threads or
    // more), so the kernels' time is at most the slowest pass times the parts.
    let parts = std::thread::available_parallelism().map_or(1, |n| n.get().min(2));
    let slowest = row["p99_ms"].as_f64().expect("p99");
    assert!(
        total > 0.0 && total <= slowest * parts as f64 * 1.01,
        "{total} ms of {slowest}"
    );
    let first = &kernels[0];
    assert!(
        first["what"].as_str().expect("what").starts_with("conv "),
        "{first}"
    );
    assert!(
        first["output"]
            .as_str()
            .expect("output")
            .starts_with(&format!("[{}, ", 2 / parts)),
        "{first}"
    );

    let plain = bench(&["--json"]);
    let report: serde_json::Value = serde_json::from_slice(&plain.stdout).expect("JSON report");
    assert!(report["results"][0].get("kernels").is_none(), "{report}");

    let table = bench(&["--profile"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("ms of kernel time per pass in"), "{text}");

    let out = bench(&["--profile", "--device", "flex"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("native engine"), "{stderr}");
}

#[test]
fn user_errors_are_one_clear_line() {
    let out = run(&[
        "serve",
        "--model",
        "/nonexistent/models",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("make model"), "{stderr}");

    let models = common::models().to_str().expect("UTF-8");
    let out = run(&["bench", "--model", models, "--device", "cuda"]);
    assert!(!out.status.success());
    if !cfg!(feature = "cuda") {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--features cuda"), "{stderr}");
    }

    let out = run(&["bench", "--model", models, "--precision", "f16"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--device flex"), "{stderr}");

    let out = run(&["import", "/nonexistent.onnx"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));

    let out = run(&["classify", "--model", models, "/nonexistent.jpg"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.jpg"));
}

#[test]
fn import_refuses_a_graph_it_cannot_run_and_names_the_operator() {
    let dir = tempfile::tempdir().expect("temp dir");
    let onnx = dir.path().join("odd.onnx");
    let script = format!(
        "import onnx\nfrom onnx import helper, TensorProto\n\
         g = helper.make_graph([helper.make_node('Cos', ['input'], ['output'])], 'odd',\n\
           [helper.make_tensor_value_info('input', TensorProto.FLOAT, ['N', 3, 224, 224])],\n\
           [helper.make_tensor_value_info('output', TensorProto.FLOAT, ['N', 3, 224, 224])])\n\
         onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid('', 17)]), r'{}')\n",
        onnx.display()
    );
    common::python(&["-c", &script]);
    // Labels from another folder are copied beside the model only by an import that succeeds.
    let elsewhere = tempfile::tempdir().expect("temp dir");
    let labels = elsewhere.path().join("classes.txt");
    std::fs::write(&labels, "a\nb\nc\n").expect("labels");
    let out = run(&[
        "import",
        onnx.to_str().expect("UTF-8"),
        "--labels",
        labels.to_str().expect("UTF-8"),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Cos") && stderr.contains("not supported"),
        "{stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(left, ["odd.onnx"], "a failed import writes nothing");
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_then_exits() {
    let port = free_port();
    let models = common::models().to_str().expect("UTF-8");
    let listen = format!("127.0.0.1:{port}");
    // A long batching delay keeps the request in flight while the signal arrives.
    let mut server = Server(
        Command::new(BIN)
            .args([
                "serve",
                "--listen",
                &listen,
                "--model",
                models,
                "--max-delay-ms",
                "1500",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start server"),
    );
    let url = format!("http://{listen}");
    let client = reqwest::Client::new();
    common::wait_ready(&url).await;
    let image = common::encode(&common::test_image(224, 224, 3), ImageFormat::Png);
    let request = tokio::spawn(
        client
            .post(format!("{url}/v1/classify"))
            .header("content-type", "image/png")
            .body(image)
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = server.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );

    let response = request
        .await
        .expect("task")
        .expect("the in-flight request is answered");
    assert_eq!(response.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = server.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "server did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "clean exit after draining, got {status}");
    assert!(
        client.get(format!("{url}/healthz")).send().await.is_err(),
        "no longer listening"
    );
}

/// The shipped verification photos (`inference/photos`).
fn photos() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/photos").to_string()
}

#[test]
fn import_verify_with_refuses_a_random_weight_model_and_writes_nothing() {
    // The fixture ResNet50 has seeded random weights, like `make model OFFLINE=1`'s.
    let dir = tempfile::tempdir().expect("temp dir");
    let onnx = dir.path().join("random50.onnx");
    std::fs::copy(common::models().join("resnet50.onnx"), &onnx).expect("copy");
    let out = run(&[
        "import",
        onnx.to_str().expect("UTF-8"),
        "--verify-with",
        &photos(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a random model passed: {stderr}");
    for needle in [
        "was not imported",
        "does not recognise the verification photos",
        "chelsea.jpg: expected one of [tabby, tabby cat; tiger cat; Egyptian cat] in the top 5, got [",
    ] {
        assert!(stderr.contains(needle), "{needle:?} in:\n{stderr}");
    }
    assert!(
        !dir.path().join("random50.json").exists(),
        "a model that failed verification is not imported"
    );
}

#[test]
fn import_verify_with_passes_a_model_that_recognises_the_photos() {
    // A classifier whose right answers are known by construction (dominant colour), and
    // photos of each colour: the same check, with a model that does know its classes.
    let dir = tempfile::tempdir().expect("temp dir");
    let onnx = dir.path().join("colours.onnx");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/make_colour_onnx.py");
    common::python(&[script, "--out", onnx.to_str().expect("UTF-8")]);
    let labels = dir.path().join("colours.txt");
    std::fs::write(&labels, "red\ngreen\nblue\n").expect("labels");
    let photos = dir.path().join("photos");
    std::fs::create_dir(&photos).expect("mkdir");
    for (name, pixel) in [
        ("red", [200, 40, 30]),
        ("green", [30, 190, 60]),
        ("blue", [20, 50, 210]),
    ] {
        let image = image::RgbImage::from_pixel(40, 30, image::Rgb(pixel));
        image
            .save(photos.join(format!("{name}.png")))
            .expect("save photo");
    }
    let import = |expected: &str| {
        std::fs::write(photos.join("expected.tsv"), expected).expect("expected.tsv");
        run(&[
            "import",
            onnx.to_str().expect("UTF-8"),
            "--labels",
            labels.to_str().expect("UTF-8"),
            "--input-size",
            "32",
            "--resize-shorter",
            "32",
            "--verify-with",
            photos.to_str().expect("UTF-8"),
            "--verify-top",
            "1",
        ])
    };
    let wrong = import("red.png\tblue\ngreen.png\tgreen\n");
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(!wrong.status.success(), "a wrong expectation passed");
    assert!(
        stderr.contains("red.png: expected one of [blue] in the top 1, got [red "),
        "{stderr}"
    );
    assert!(!dir.path().join("colours.json").exists());

    let right = import("# comment\nred.png\tred|0\ngreen.png\tgreen\nblue.png\t2\n");
    let stdout = String::from_utf8_lossy(&right.stdout);
    assert!(
        right.status.success(),
        "{}",
        String::from_utf8_lossy(&right.stderr)
    );
    for photo in ["red", "green", "blue"] {
        assert!(
            stdout.contains(&format!("verified {photo}.png: {photo} ")),
            "{stdout}"
        );
    }
    assert!(dir.path().join("colours.json").exists());

    let unknown = import("red.png\tpurple\n");
    assert!(
        String::from_utf8_lossy(&unknown.stderr)
            .contains("expected.tsv:1: no model label matches \"purple\""),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );
}

#[test]
fn import_says_how_many_channel_values_it_needs() {
    let onnx = common::models().join("resnet50.onnx");
    let out = run(&["import", onnx.to_str().expect("UTF-8"), "--mean", "0.5,0.5"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--mean takes three values (R, G, B), e.g. --mean 0.5,0.5,0.5; got 2"),
        "{stderr}"
    );
}

#[test]
fn import_reports_what_it_rewrote_and_which_engine_runs_the_model() {
    // torch's dynamo export of ResNet18 writes its pooling as ReduceMean and its flatten as a
    // Reshape to [-1, 512].
    let dir = tempfile::tempdir().expect("temp dir");
    let onnx = dir.path().join("resnet18.onnx");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/coverage_models.py");
    let skeleton = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/coverage/resnet18-dynamo.onnx.gz"
    );
    common::python(&[script, "fill", skeleton, onnx.to_str().expect("UTF-8")]);
    let out = run(&["import", onnx.to_str().expect("UTF-8")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    for needle in [
        "rewrote the graph for 224×224 inputs: 1 ReduceMean nodes read as global pooling, \
         1 Reshapes read as flattening",
        "engine native",
    ] {
        assert!(stdout.contains(needle), "{needle:?} in:\n{stdout}");
    }
    assert!(!String::from_utf8_lossy(&out.stderr).contains("warning"));

    // Average pooling with ceil_mode is outside the native kernels: imported, loudly.
    let onnx = dir.path().join("ceil.onnx");
    let script = format!(
        "import onnx\nfrom onnx import helper, TensorProto\n\
         nodes = [helper.make_node('AveragePool', ['input'], ['p'], kernel_shape=[3, 3], \
                  strides=[2, 2], ceil_mode=1),\n\
                  helper.make_node('GlobalAveragePool', ['p'], ['output'])]\n\
         g = helper.make_graph(nodes, 'ceil',\n\
           [helper.make_tensor_value_info('input', TensorProto.FLOAT, ['N', 3, 224, 224])],\n\
           [helper.make_tensor_value_info('output', TensorProto.FLOAT, ['N', 3, 1, 1])])\n\
         onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid('', 19)]), r'{}')\n",
        onnx.display()
    );
    common::python(&["-c", &script]);
    let labels = dir.path().join("rgb.txt");
    std::fs::write(&labels, "r\ng\nb\n").expect("labels");
    let out = run(&[
        "import",
        onnx.to_str().expect("UTF-8"),
        "--labels",
        labels.to_str().expect("UTF-8"),
    ]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("engine flex"), "{stdout}");
    assert!(
        stderr.contains("warning: the native CPU kernels do not cover this graph")
            && stderr.contains("ceil_mode"),
        "{stderr}"
    );
}

#[test]
fn a_named_normalisation_and_explicit_values_do_not_mix() {
    let out = run(&[
        "import",
        "x.onnx",
        "--normalize",
        "tflite",
        "--mean",
        "0.5,0.5,0.5",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--normalize") && stderr.contains("cannot be used with"),
        "{stderr}"
    );
}
