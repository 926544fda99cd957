//! The burn model computes what ONNX Runtime computes on the same ONNX file, and our
//! preprocessing matches a Pillow implementation of torchvision's transforms.

mod common;

use common::{LOGIT_BOUND, inputs, max_abs_diff, onnx_runtime_logits, std_dev, top5};
use image::ImageFormat;
use inference::model::spec::{Interpolation, Resize};
use inference::model::{Classifier, DeviceChoice, Precision, Preprocess, Target};

fn check_against_onnx_runtime(model_name: &str, device: DeviceChoice, backend: &str) {
    let dir = common::models();
    let model = Classifier::load(&dir.join(format!("{model_name}.json")), device)
        .expect("fixture model loads");
    assert_eq!(model.backend(), backend, "the engine under test");
    let batch = inputs(4, 224);
    let ours = model.infer(&batch).expect("forward pass");

    let onnx = dir.join(format!("{model_name}.onnx"));
    let reference = onnx_runtime_logits(&onnx, &batch);
    let classes = reference.len() / 4;
    assert_eq!(ours.len(), 4);
    for (i, row) in ours.iter().enumerate() {
        let expected = &reference[i * classes..(i + 1) * classes];
        assert_eq!(row.len(), classes);
        let scale = std_dev(expected).max(1.0);
        let worst = max_abs_diff(row, expected);
        println!("{model_name} image {i}: max |Δlogit| {worst:.2e}, logit std {scale:.3}");
        assert!(
            worst <= LOGIT_BOUND * scale,
            "image {i}: max |Δlogit| {worst} exceeds {LOGIT_BOUND} × {scale}"
        );
        assert_eq!(top5(row), top5(expected), "image {i}: top-5 differs");
    }
    // A single image takes a different path on the CPU (one block's product on both threads;
    // with burn's operations, convolutions split by output channels): same answer.
    let alone = model.infer(&batch[..1]).expect("batch of 1");
    let worst = max_abs_diff(&alone[0], &reference[..classes]);
    assert!(
        worst <= LOGIT_BOUND * std_dev(&reference[..classes]).max(1.0),
        "a single image differs from ONNX Runtime by {worst}"
    );
    // Guard against a vacuous comparison: the images must not all get the same answer.
    let firsts: std::collections::HashSet<_> = ours.iter().map(|r| top5(r)).collect();
    assert!(
        firsts.len() > 1,
        "all images produced the same top-5; inputs too similar"
    );
}

#[test]
fn resnet50_logits_match_onnx_runtime() {
    check_against_onnx_runtime("resnet50", DeviceChoice::Cpu, "native");
}

#[test]
fn second_model_logits_match_onnx_runtime() {
    check_against_onnx_runtime(common::DEMO, DeviceChoice::Cpu, "native");
}

/// `--device flex` (burn's own operations, the engine before the native kernels) stays exact.
#[test]
fn burn_operations_match_onnx_runtime_too() {
    check_against_onnx_runtime("resnet50", DeviceChoice::Flex, "flex");
}

/// `--precision f16` (burn's operations, weights and activations in half precision) stays
/// close: f16 keeps ~3 decimal digits, and across ResNet50's 50 layers the logits move by a
/// few percent of their spread (measured 2.9e-2 × std here; 3.4e-2 / 6.3 = 0.5e-2 × std
/// when burn 0.22 was first evaluated). Bound 5e-2 × std, and the best class must not change;
/// a wrong cast or layout would move logits by the order of their std.
#[test]
fn half_precision_stays_close_to_onnx_runtime() {
    let dir = common::models();
    let target = Target {
        device: DeviceChoice::Flex,
        precision: Precision::F16,
    };
    let model = Classifier::load(&dir.join("resnet50.json"), target).expect("loads in f16");
    assert_eq!(model.precision(), Precision::F16);
    let batch = inputs(2, 224);
    let ours = model.infer(&batch).expect("forward pass");
    let reference = onnx_runtime_logits(&dir.join("resnet50.onnx"), &batch);
    let classes = reference.len() / batch.len();
    for (i, row) in ours.iter().enumerate() {
        let expected = &reference[i * classes..(i + 1) * classes];
        let worst = max_abs_diff(row, expected);
        let scale = std_dev(expected);
        println!("f16 image {i}: max |Δlogit| {worst:.2e}, logit std {scale:.3}");
        assert!(
            worst <= 5e-2 * scale,
            "image {i}: max |Δlogit| {worst} > 5e-2 × {scale}"
        );
        assert!(
            worst > LOGIT_BOUND * scale,
            "image {i}: within f32's bound, so the f16 cast did not happen"
        );
        assert_eq!(
            top5(row)[0],
            top5(expected)[0],
            "image {i}: best class differs"
        );
    }
}

/// Same PNG through our preprocessing and through Pillow (torchvision's pipeline). PNG input
/// so both sides start from identical pixels (JPEG decoders differ by a few levels). Bound:
/// 2 grey levels (the resize filters are equivalent but round differently) divided by the
/// smallest std, i.e. 2/255/0.224 ≈ 0.035 on the normalised scale; the mean error must be far
/// smaller still.
#[test]
fn preprocessing_matches_pillow_reference() {
    // In normalised units: grey levels / 255 / the smallest std.
    let levels = |n: f32| n / 255.0 / 0.224;
    let tmp = tempfile::tempdir().expect("temp dir");
    let images = [
        (640, 480, 1),
        (333, 500, 2),
        (256, 256, 3),
        (1000, 301, 4),
        (224, 224, 5),
    ];
    let settings = [
        (
            Interpolation::Bilinear,
            Resize::ShorterThenCrop,
            "bilinear",
            "shorter-then-crop",
        ),
        (
            Interpolation::Bicubic,
            Resize::ShorterThenCrop,
            "bicubic",
            "shorter-then-crop",
        ),
        (
            Interpolation::Bilinear,
            Resize::Squash,
            "bilinear",
            "squash",
        ),
        (Interpolation::Bicubic, Resize::Squash, "bicubic", "squash"),
    ];
    for (interpolation, resize, filter, mode) in settings {
        // Bilinear agrees within 2 grey levels everywhere. Bicubic overshoots at the test
        // images' 255 → 0 wraps, where the two libraries clamp their 8-bit intermediate pass
        // differently: a few pixels there differ by up to ~20 levels, so for bicubic it is
        // the share of values off by more than 2 levels that is bounded. The mean stays below
        // 0.2 levels either way (Pillow's bilinear and bicubic differ by ~8 on average on such
        // images, so a wrong filter cannot pass).
        let bound = levels(2.0);
        let outliers_allowed = if filter == "bicubic" { 0.005 } else { 0.0 };
        let mean_bound = levels(0.2);
        let params = Preprocess {
            interpolation,
            resize,
            ..Preprocess::imagenet()
        };
        for (width, height, seed) in images {
            let png = common::encode(&common::test_image(width, height, seed), ImageFormat::Png);
            let path = tmp.path().join(format!("{width}x{height}.png"));
            std::fs::write(&path, &png).expect("write png");
            let out = tmp.path().join(format!("{width}x{height}.f32"));
            common::python(&[
                &common::reference_script(),
                "preprocess",
                path.to_str().expect("UTF-8"),
                "224",
                "256",
                out.to_str().expect("UTF-8"),
                filter,
                mode,
            ]);
            let reference = common::read_f32(&out);
            let ours = inference::model::preprocess::preprocess(&png, &params).expect("valid PNG");
            assert_eq!(ours.data.len(), reference.len());
            let diffs: Vec<f32> = (ours.data.iter().zip(&reference))
                .map(|(a, b)| (a - b).abs())
                .collect();
            let worst = diffs.iter().copied().fold(0.0f32, f32::max);
            let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
            let what = format!("{width}x{height} {filter} {mode}");
            let outliers = diffs.iter().filter(|&&d| d > bound).count() as f32 / diffs.len() as f32;
            println!(
                "{what}: max diff {worst:.4}, mean diff {mean:.5}, beyond 2 levels {outliers:.5}"
            );
            assert!(
                outliers <= outliers_allowed,
                "{what}: {outliers} of the values differ by more than {bound} (max {worst})"
            );
            assert!(mean <= mean_bound, "{what}: mean diff {mean}");
        }
    }
}

/// The model zoo's pretrained ResNet50 declares a fixed batch of 1 (`[1, 3, 224, 224]`). Our
/// operations are batch-agnostic, so such a file must still serve batches, with each row equal
/// to what the image gets alone, and equal to ONNX Runtime's answer. Ten images: more than the
/// CPU engine runs at once (it slices larger batches), so rows on both sides of a slice edge
/// are checked.
#[test]
fn fixed_batch_export_still_runs_batches() {
    let dir = tempfile::tempdir().expect("temp dir");
    let onnx = dir.path().join("fixed.onnx");
    let generator = format!("{}/scripts/make_resnet_onnx.py", env!("CARGO_MANIFEST_DIR"));
    common::python(&[
        &generator,
        "--arch",
        "resnet18",
        "--classes",
        "10",
        "--batch",
        "1",
        "--seed",
        "3",
        "--out",
        onnx.to_str().expect("UTF-8"),
    ]);
    let spec = inference::model::ModelSpec {
        name: "fixed".into(),
        onnx: "fixed.onnx".into(),
        sha256: None,
        preprocess: Preprocess::imagenet(),
        labels: "unused".into(),
    };
    let labels = common::DEMO_LABELS.iter().map(|l| l.to_string()).collect();
    let model = Classifier::from_parts(spec, &onnx, labels, DeviceChoice::Cpu).expect("loads");
    let batch = inputs(10, 224);
    let together = model.infer(&batch).expect("batch of 10");
    assert_eq!(together.len(), 10);
    for (i, image) in batch
        .iter()
        .enumerate()
        .filter(|(i, _)| [0, 7, 8, 9].contains(i))
    {
        let alone = model
            .infer(std::slice::from_ref(image))
            .expect("batch of 1");
        let worst = max_abs_diff(&alone[0], &together[i]);
        assert!(
            worst < 1e-4,
            "image {i}: batched and single results differ by {worst}"
        );
    }
    let reference = onnx_runtime_logits(&onnx, &batch[..1]);
    let worst = max_abs_diff(&reference, &together[0]);
    assert!(
        worst <= LOGIT_BOUND * std_dev(&reference).max(1.0),
        "differs from ORT by {worst}"
    );
}

/// A graph with an operation the native CPU engine lacks (here average pooling with
/// `ceil_mode`) still loads with `--device cpu`: it runs on burn's operations and computes what
/// ONNX Runtime computes.
#[test]
fn graphs_outside_the_native_engine_fall_back_to_burn() {
    let dir = tempfile::tempdir().expect("temp dir");
    let onnx = dir.path().join("grouped.onnx");
    let script = format!(
        "import numpy as np, onnx\nfrom onnx import helper, numpy_helper, TensorProto\n\
         rng = np.random.default_rng(5)\n\
         w = numpy_helper.from_array(rng.standard_normal((6, 1, 3, 3)).astype(np.float32), 'w')\n\
         fc = numpy_helper.from_array(rng.standard_normal((10, 6)).astype(np.float32), 'fc')\n\
         nodes = [helper.make_node('Conv', ['input', 'w'], ['c'], group=3, pads=[1, 1, 1, 1]),\n\
                  helper.make_node('AveragePool', ['c'], ['r'], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),\n\
                  helper.make_node('GlobalAveragePool', ['r'], ['p']),\n\
                  helper.make_node('Flatten', ['p'], ['f'], axis=1),\n\
                  helper.make_node('Gemm', ['f', 'fc'], ['logits'], transB=1)]\n\
         g = helper.make_graph(nodes, 'grouped',\n\
           [helper.make_tensor_value_info('input', TensorProto.FLOAT, ['N', 3, 32, 32])],\n\
           [helper.make_tensor_value_info('logits', TensorProto.FLOAT, ['N', 10])], [w, fc])\n\
         onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid('', 19)]), r'{}')\n",
        onnx.display()
    );
    common::python(&["-c", &script]);
    let mut spec = inference::model::ModelSpec {
        name: "grouped".into(),
        onnx: "grouped.onnx".into(),
        sha256: None,
        preprocess: Preprocess::imagenet(),
        labels: "unused".into(),
    };
    spec.preprocess.input_size = 32;
    let labels = common::DEMO_LABELS.iter().map(|l| l.to_string()).collect();
    let model = Classifier::from_parts(spec, &onnx, labels, DeviceChoice::Cpu).expect("loads");
    assert_eq!(
        model.backend(),
        "flex",
        "ceil-mode average pooling runs on burn's operations"
    );
    let batch = inputs(2, 32);
    let ours = model.infer(&batch).expect("runs");
    let reference = onnx_runtime_logits(&onnx, &batch);
    let worst = max_abs_diff(&ours.concat(), &reference);
    assert!(worst < 1e-4, "max |Δlogit| {worst}");
}

/// The interface of the pretrained file `make model` downloads (the ONNX model zoo's
/// ResNet50-v1-12: tensors `data` and `resnetv17_dense0_fwd`, opset 12, weights also listed
/// among the graph inputs), on a ResNet18-shaped graph: it imports, computes what ONNX Runtime
/// computes, and keeps the file's tensor names.
#[test]
fn a_model_with_the_zoo_files_interface_imports_and_matches_onnx_runtime() {
    let dir = tempfile::tempdir().expect("temp dir");
    let onnx = dir.path().join("zoo.onnx");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/make_resnet_onnx.py");
    let onnx_arg = onnx.to_str().expect("UTF-8");
    common::python(&[
        script,
        "--arch",
        "resnet18",
        "--classes",
        "10",
        "--zoo",
        "--out",
        onnx_arg,
    ]);
    let labels = dir.path().join("labels.txt");
    std::fs::write(&labels, common::DEMO_LABELS.join("\n")).expect("labels");
    common::import(&[onnx_arg, "--labels", labels.to_str().expect("UTF-8")]);
    let model = Classifier::load(&dir.path().join("zoo.json"), DeviceChoice::Cpu).expect("loads");
    assert_eq!(
        (model.network().input_name(), model.network().output_name()),
        ("data", "resnetv17_dense0_fwd")
    );
    let batch = inputs(2, 224);
    let ours = model.infer(&batch).expect("forward pass");
    let reference = onnx_runtime_logits(&onnx, &batch);
    for (i, row) in ours.iter().enumerate() {
        let expected = &reference[i * 10..(i + 1) * 10];
        let worst = max_abs_diff(row, expected);
        assert!(
            worst <= LOGIT_BOUND * std_dev(expected).max(1.0),
            "image {i}: max |Δlogit| {worst}"
        );
        assert_eq!(top5(row), top5(expected), "image {i}");
    }
}
