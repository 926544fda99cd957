//! The native kernels against burn's operations on the same random tensors: every window
//! shape ResNet-style graphs use, plus the awkward ones (asymmetric padding, dilation,
//! ceil-mode pooling), and the fused epilogues.

use burn::tensor::module::{avg_pool2d, conv2d, layer_norm, max_pool2d};
use burn::tensor::ops::{AvgPoolOptions, ConvOptions, MaxPoolOptions};
use burn::tensor::{Device, Tensor, TensorData};

use super::buffers;
use super::chain::{Blocks, Chain, Shortcut};
use super::kernels::{self, Algorithm, Conv, Epilogue, Map, PoolKind, Window};
use super::lanes::Widest;
use crate::model::graph::Activation;

fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn tensor(values: &[f32], dims: [usize; 4]) -> Tensor<4> {
    Tensor::from_data(TensorData::new(values.to_vec(), dims), &Device::flex())
}

/// burn's NCHW result as channels-last values.
fn nhwc(t: Tensor<4>) -> Map {
    let dims = t.dims();
    let values = t.into_data().try_to_vec::<f32>().expect("f32");
    Map::from_nchw(&values, dims)
}

fn assert_close(ours: &Map, reference: &Map, what: &str) {
    assert_eq!(
        (ours.n, ours.h, ours.w, ours.c),
        (reference.n, reference.h, reference.w, reference.c),
        "{what}: shape"
    );
    // `f32::max` would skip a NaN, so unwritten (stale NaN) outputs are caught here.
    let unwritten = ours.data.iter().filter(|v| v.is_nan()).count();
    assert_eq!(unwritten, 0, "{what}: NaN outputs");
    let worst = ours
        .data
        .iter()
        .zip(reference.data.iter())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    let scale = reference.data.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    assert!(
        worst < 2e-6 * scale * (ours.c as f32).sqrt().max(1.0),
        "{what}: max difference {worst} (largest value {scale})"
    );
}

/// A 1×1 convolution's window.
const POINTWISE: Window = Window {
    kernel: [1, 1],
    stride: [1, 1],
    padding: [(0, 0); 2],
    dilation: [1, 1],
    ceil: false,
};

struct ConvCase {
    input: [usize; 4],
    weight: [usize; 4],
    stride: [usize; 2],
    padding: [(usize, usize); 2],
    dilation: [usize; 2],
    groups: usize,
}

fn check_conv(case: &ConvCase, epilogue: Epilogue, algorithm: Algorithm, what: &str) {
    let x = random(case.input.iter().product(), 1);
    let w = random(case.weight.iter().product(), 2);
    let b = random(case.weight[0], 3);
    let options =
        ConvOptions::new_with_padding(case.stride, case.padding, case.dilation, case.groups);
    let bias = Tensor::<1>::from_data(TensorData::new(b.clone(), [b.len()]), &Device::flex());
    let mut expected = conv2d(
        tensor(&x, case.input),
        tensor(&w, case.weight),
        Some(bias),
        options,
    );
    let shortcut = random(expected.dims().iter().product(), 4);
    if epilogue.residual {
        let dims = expected.dims();
        expected = expected + tensor(&shortcut, dims);
    }
    let shortcut = Map::from_nchw(&shortcut, expected.dims());
    let mut expected = nhwc(expected);
    if let Some(activation) = epilogue.activation {
        expected
            .data
            .iter_mut()
            .for_each(|v| *v = activation.apply(*v));
    }

    let window = Window {
        kernel: [case.weight[2], case.weight[3]],
        stride: case.stride,
        padding: case.padding,
        dilation: case.dilation,
        ceil: false,
    };
    // The direct loops at the widest vectors this CPU has, and at eight lanes.
    for widest in [Widest::detect(), Widest::Eight] {
        let mut conv = Conv::new(&w, case.weight, case.groups, Some(&b), window, algorithm)
            .with_widest(widest);
        conv.epilogue = epilogue;
        stale_spares();
        let residual = epilogue.residual.then(|| shortcut.clone());
        let ours = conv
            .run(&Map::from_nchw(&x, case.input), residual)
            .expect("conv runs");
        assert_close(&ours, &expected, &format!("{what} {widest:?}"));
    }
}

/// Spare buffers full of NaN, which the next maps' buffers (input and output) are taken
/// from: a kernel that leaves any output value unwritten fails the comparison.
fn stale_spares() {
    for _ in 0..2 {
        buffers::recycle(vec![f32::NAN; 1 << 16]);
    }
}

#[test]
fn convolutions_match_burn() {
    // (name, input NCHW, weight [out, in, kh, kw], stride, padding, dilation)
    #[rustfmt::skip]
    let cases = [
        // ResNet stem: 7×7 stride 2 pad 3 on three channels.
        ("stem", [2, 3, 23, 23], [16, 3, 7, 7], [2, 2], [(3, 3), (3, 3)], [1, 1]),
        // SqueezeNet's (no padding, 96 channels), and a 5×5 stem padded unevenly.
        ("stem valid", [1, 3, 29, 31], [96, 3, 7, 7], [2, 2], [(0, 0), (0, 0)], [1, 1]),
        ("stem 5x5", [2, 3, 12, 11], [10, 3, 5, 5], [1, 2], [(2, 1), (0, 2)], [1, 1]),
        // Bottleneck 1×1 (the direct path) and 3×3.
        ("1x1", [3, 32, 9, 9], [24, 32, 1, 1], [1, 1], [(0, 0), (0, 0)], [1, 1]),
        ("3x3", [2, 16, 14, 14], [64, 16, 3, 3], [1, 1], [(1, 1), (1, 1)], [1, 1]),
        // Downsampling: 3×3 stride 2, and the 1×1 stride-2 shortcut.
        ("3x3/2", [2, 8, 15, 15], [8, 8, 3, 3], [2, 2], [(1, 1), (1, 1)], [1, 1]),
        ("1x1/2", [1, 16, 14, 14], [32, 16, 1, 1], [2, 2], [(0, 0), (0, 0)], [1, 1]),
        // Asymmetric padding, a non-square kernel, dilation.
        ("asym", [1, 5, 10, 7], [6, 5, 2, 3], [1, 2], [(0, 1), (2, 0)], [1, 1]),
        ("dilated", [1, 4, 12, 12], [5, 4, 3, 3], [1, 1], [(2, 2), (2, 2)], [2, 2]),
        // Winograd (3×3 stride 1, both algorithms run): no padding with an odd output, asymmetric padding,
        // and wide channels, so an image is cut into several blocks, the last one a row short.
        ("wino valid", [2, 6, 13, 13], [5, 6, 3, 3], [1, 1], [(0, 0), (0, 0)], [1, 1]),
        ("wino asym", [1, 6, 10, 9], [7, 6, 3, 3], [1, 1], [(0, 1), (1, 0)], [1, 1]),
        ("wino blocks", [1, 256, 15, 15], [256, 256, 3, 3], [1, 1], [(1, 1), (1, 1)], [1, 1]),
        // Small late-layer maps at batch 1 (one block shared by the threads, its product by columns).
        ("late", [1, 64, 7, 7], [96, 64, 3, 3], [1, 1], [(1, 1), (1, 1)], [1, 1]),
    ];
    for (name, input, weight, stride, padding, dilation) in cases {
        let case = ConvCase {
            input,
            weight,
            stride,
            padding,
            dilation,
            groups: 1,
        };
        for (residual, relu) in [(false, false), (false, true), (true, false), (true, true)] {
            for algorithm in [Algorithm::Patches, Algorithm::Winograd] {
                let activation = relu.then_some(Activation::Relu);
                let epilogue = Epilogue {
                    residual,
                    activation,
                };
                check_conv(
                    &case,
                    epilogue,
                    algorithm,
                    &format!("{name} {epilogue:?} {algorithm:?}"),
                );
            }
        }
    }
}

#[test]
fn grouped_and_depthwise_convolutions_with_every_activation_match_burn() {
    // (name, input NCHW, weight [out, in / groups, kh, kw], groups, stride, padding,
    // dilation). Channel counts and widths also exercise the direct kernels' remainders
    // (channel blocks of 16, then 8 or 4, then 1; output pixels in groups of 4).
    #[rustfmt::skip]
    let cases = [
        // MobileNet's depthwise 3×3, stride 1 and 2 (EfficientNet ports pad asymmetrically).
        ("dw 3x3", [2, 24, 13, 13], [24, 1, 3, 3], 24, [1, 1], [(1, 1), (1, 1)], [1, 1]),
        ("dw 3x3/2 asym", [1, 16, 14, 14], [16, 1, 3, 3], 16, [2, 2], [(0, 1), (0, 1)], [1, 1]),
        // EfficientNet's depthwise 5×5, and one on a map smaller than its window's reach.
        ("dw 5x5/2", [1, 8, 15, 15], [8, 1, 5, 5], 8, [2, 2], [(2, 2), (2, 2)], [1, 1]),
        ("dw 5x5 small", [2, 37, 3, 3], [37, 1, 5, 5], 37, [1, 1], [(2, 2), (2, 2)], [1, 1]),
        ("dw dilated", [1, 21, 9, 10], [21, 1, 3, 3], 21, [1, 1], [(2, 2), (2, 2)], [2, 2]),
        // Groups of pixels inside the input for each specialised kernel width and stride,
        // with two and more blocks of channels.
        ("dw 3x3/2 inside", [1, 33, 17, 17], [33, 1, 3, 3], 33, [2, 2], [(1, 1), (1, 1)], [1, 1]),
        ("dw 5x5 inside", [1, 40, 19, 19], [40, 1, 5, 5], 40, [1, 1], [(2, 2), (2, 2)], [1, 1]),
        ("dw 5x5/2 inside", [2, 40, 23, 23], [40, 1, 5, 5], 40, [2, 2], [(2, 2), (2, 2)], [1, 1]),
        // RegNet's group convolutions (8 channels per group there), and a channel multiplier.
        ("grouped", [2, 8, 9, 9], [12, 2, 3, 3], 4, [1, 1], [(1, 1), (1, 1)], [1, 1]),
        ("group width 8", [1, 24, 7, 7], [24, 8, 3, 3], 3, [2, 2], [(1, 1), (1, 1)], [1, 1]),
        ("multiplier", [1, 4, 7, 7], [8, 1, 3, 3], 4, [2, 2], [(1, 1), (1, 1)], [1, 1]),
        // A dense convolution over three channels (an RGB stem) is computed directly too.
        ("rgb stem", [2, 3, 17, 17], [21, 3, 3, 3], 1, [2, 2], [(1, 1), (1, 1)], [1, 1]),
        ("rgb dilated", [1, 2, 11, 11], [16, 2, 3, 3], 1, [1, 1], [(1, 0), (0, 1)], [2, 1]),
        // Output channels for two 16-lane blocks and more, over three channels and in groups.
        ("rgb stem wide", [1, 3, 9, 10], [40, 3, 3, 3], 1, [2, 2], [(1, 1), (1, 1)], [1, 1]),
        ("wide groups", [1, 4, 6, 6], [72, 2, 3, 3], 2, [1, 1], [(1, 1), (1, 1)], [1, 1]),
    ];
    let activations = [
        None,
        Some(Activation::Relu),
        Some(Activation::Clip { min: 0.0, max: 6.0 }),
        Some(Activation::HardSwish),
        Some(Activation::Silu),
        Some(Activation::Sigmoid),
        Some(Activation::Gelu),
        Some(Activation::Scale {
            factor: 0.7,
            offset: 1.0,
        }),
    ];
    for (name, input, weight, groups, stride, padding, dilation) in cases {
        let case = ConvCase {
            input,
            weight,
            stride,
            padding,
            dilation,
            groups,
        };
        for residual in [false, true] {
            for activation in activations {
                let epilogue = Epilogue {
                    residual,
                    activation,
                };
                let what = format!("{name} {epilogue:?}");
                check_conv(&case, epilogue, Algorithm::Winograd, &what);
            }
        }
    }
}

/// Times the direct loops at each vector width on MobileNet-sized maps (fastest of 200 runs):
/// `cargo test --release --workspace --lib -- --ignored --nocapture time_direct_loops`.
#[test]
#[ignore]
fn time_direct_loops_at_each_width() {
    #[rustfmt::skip]
    let cases = [
        ("depthwise 3x3 16 ch 112x112 b1", [1, 16, 112, 112], [16, 1, 3, 3], 16, 1),
        ("depthwise 3x3 72 ch 56x56 b1", [1, 72, 56, 56], [72, 1, 3, 3], 72, 1),
        ("depthwise 3x3/2 64 ch 112x112 b1", [1, 64, 112, 112], [64, 1, 3, 3], 64, 2),
        ("depthwise 3x3 72 ch 56x56 b8", [8, 72, 56, 56], [72, 1, 3, 3], 72, 1),
        ("depthwise 5x5/2 72 ch 56x56 b8", [8, 72, 56, 56], [72, 1, 5, 5], 72, 2),
        ("depthwise 3x3 240 ch 14x14 b8", [8, 240, 14, 14], [240, 1, 3, 3], 240, 1),
        ("stem 3->16 3x3/2 224x224 b1", [1, 3, 224, 224], [16, 3, 3, 3], 1, 2),
        ("stem 3->32 3x3/2 224x224 b8", [8, 3, 224, 224], [32, 3, 3, 3], 1, 2),
    ];
    for (name, input, weight, groups, stride) in cases {
        let x = Map::from_nchw(&random(input.iter().product(), 1), input);
        let w = random(weight.iter().product(), 2);
        let pad = weight[2] / 2;
        let window = Window {
            kernel: [weight[2], weight[3]],
            stride: [stride; 2],
            padding: [(pad, pad); 2],
            dilation: [1, 1],
            ceil: false,
        };
        for widest in [Widest::detect(), Widest::Eight] {
            let conv = Conv::new(&w, weight, groups, None, window, Algorithm::Winograd)
                .with_widest(widest);
            let fastest = (0..200)
                .map(|_| {
                    let start = std::time::Instant::now();
                    let out = conv.run(&x, None).expect("conv runs");
                    let took = start.elapsed();
                    buffers::recycle(out.data);
                    took
                })
                .min()
                .expect("runs");
            let widest = format!("{widest:?}");
            let lanes = widest.split('(').next().unwrap_or_default();
            println!("{name:34} {lanes:8} {:8.3} ms", fastest.as_secs_f64() * 1e3);
        }
    }
}

#[test]
fn a_batch_is_shared_by_the_threads_in_parts_of_at_most_eight_images() {
    use super::slice_images;
    assert_eq!(slice_images(1, 2), 1);
    assert_eq!(slice_images(3, 2), 2, "parts of 2 and 1");
    assert_eq!(slice_images(8, 2), 4);
    assert_eq!(
        slice_images(64, 2),
        8,
        "eight at most: more fall out of cache"
    );
    assert_eq!(slice_images(5, 1), 5, "one thread: one part");
    assert_eq!(slice_images(8, 0), 8);
}

#[test]
fn maps_join_along_the_channels_in_order() {
    let a = Map::from_nchw(&random(2 * 3 * 4 * 5, 1), [2, 3, 4, 5]);
    let b = Map::from_nchw(&random(2 * 2 * 4 * 5, 2), [2, 2, 4, 5]);
    let joined = kernels::concat(&[&a, &b]).expect("same maps");
    let expected = Tensor::cat(
        vec![
            tensor(&random(2 * 3 * 4 * 5, 1), [2, 3, 4, 5]),
            tensor(&random(2 * 2 * 4 * 5, 2), [2, 2, 4, 5]),
        ],
        1,
    );
    assert_eq!(joined, nhwc(expected));
    let small = Map::from_nchw(&[0.0; 8], [2, 1, 2, 2]);
    let err = kernels::concat(&[&a, &small]).expect_err("sizes differ");
    assert!(err.contains("cannot join"), "{err}");
}

#[test]
fn a_convolution_refuses_a_map_with_the_wrong_channels() {
    let conv = Conv::new(
        &[1.0; 8],
        [4, 2, 1, 1],
        1,
        None,
        POINTWISE,
        Algorithm::Patches,
    );
    let x = Map::from_nchw(&[0.0; 27], [1, 3, 3, 3]);
    let err = conv.run(&x, None).expect_err("3 channels into 2");
    assert!(
        err.contains("3 channels") && err.contains("expect 2"),
        "{err}"
    );
}

#[test]
fn pooling_matches_burn() {
    // Channels fewer than a vector, and two vectors and three left over.
    for dims in [[2, 6, 13, 11], [1, 19, 9, 7]] {
        pool_matches_burn(dims);
    }
}

fn pool_matches_burn(dims: [usize; 4]) {
    let x = random(dims.iter().product(), 5);
    let map = Map::from_nchw(&x, dims);
    for (kernel, stride, padding, ceil) in [
        ([3, 3], [2, 2], [(1, 1), (1, 1)], false), // ResNet's stem pool
        ([3, 3], [2, 2], [(0, 0), (0, 0)], true),
        ([2, 3], [2, 1], [(1, 0), (0, 1)], true),
        ([2, 2], [2, 2], [(0, 0), (0, 0)], false),
    ] {
        let window = Window {
            kernel,
            stride,
            padding,
            dilation: [1, 1],
            ceil,
        };
        let options = MaxPoolOptions::new(kernel)
            .with_stride(stride)
            .with_padding_pairs(padding)
            .with_ceil_mode(ceil);
        let expected = nhwc(max_pool2d(tensor(&x, dims), options));
        stale_spares();
        let ours = kernels::pool(&map, &window, PoolKind::Max).expect("max pool");
        assert_close(&ours, &expected, &format!("max {window:?}"));
        if !ceil {
            for count_padding in [false, true] {
                let options = AvgPoolOptions::new(kernel)
                    .with_stride(stride)
                    .with_padding_pairs(padding)
                    .with_count_include_pad(count_padding);
                let expected = nhwc(avg_pool2d(tensor(&x, dims), options));
                let kind = PoolKind::Average { count_padding };
                stale_spares();
                let ours = kernels::pool(&map, &window, kind).expect("avg pool");
                assert_close(&ours, &expected, &format!("avg {count_padding} {window:?}"));
            }
        }
    }
}

#[test]
fn flatten_keeps_onnx_channel_major_order() {
    let dims = [2, 3, 2, 2];
    let x: Vec<f32> = (0..24).map(|v| v as f32).collect();
    let flat = Map::from_nchw(&x, dims).flatten();
    assert_eq!((flat.n, flat.f), (2, 12));
    assert_eq!(flat.data, x, "NCHW flatten order is the original order");
}

#[test]
fn channel_norm_matches_burns_layer_norm_over_the_channels() {
    // 300 channels: more than one pixel per task, and a last task with fewer pixels.
    for dims in [[2, 5, 3, 4], [1, 300, 4, 5]] {
        let c = dims[1];
        let x = random(dims.iter().product(), 5);
        let (scale, shift) = (random(c, 6), random(c, 7));
        let vector =
            |v: &[f32]| Tensor::<1>::from_data(TensorData::new(v.to_vec(), [c]), &Device::flex());
        let channels_last = tensor(&x, dims).permute([0, 2, 3, 1]);
        let expected = layer_norm(channels_last, vector(&scale), Some(vector(&shift)), 1e-6);
        let expected = nhwc(expected.permute([0, 3, 1, 2]));
        let mut ours = Map::from_nchw(&x, dims);
        kernels::channel_norm(&mut ours, &scale, &shift, 1e-6).expect("runs");
        assert_close(&ours, &expected, &format!("channel norm {dims:?}"));
    }
    let err = kernels::channel_norm(
        &mut Map::from_nchw(&[0.0; 8], [1, 2, 2, 2]),
        &[1.0; 3],
        &[0.0; 3],
        1e-6,
    )
    .expect_err("3 values for 2 channels");
    assert!(err.contains("2 channels"), "{err}");
}

#[test]
fn per_channel_products_broadcast_over_pixels() {
    let mut maps = Map::from_nchw(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], [1, 2, 2, 2]);
    let scale = Map::from_nchw(&[10.0, 100.0], [1, 2, 1, 1]);
    kernels::combine(&mut maps, &scale, |a, b| a * b).expect("broadcast");
    assert_eq!(
        maps.flatten().data,
        [10.0, 20.0, 30.0, 40.0, 500.0, 600.0, 700.0, 800.0]
    );
    let wrong = Map::from_nchw(&[1.0; 3], [1, 3, 1, 1]);
    let err = kernels::combine(
        &mut Map::from_nchw(&[0.0; 8], [1, 2, 2, 2]),
        &wrong,
        |a, b| a + b,
    )
    .expect_err("3 channels against 2");
    assert!(err.contains("cannot combine"), "{err}");
}

fn kernel(name: &str, op: super::NativeOp, inputs: &[usize], output: usize) -> super::Kernel {
    super::Kernel {
        name: name.into(),
        op,
        inputs: inputs.to_vec(),
        output,
    }
}

fn pointwise() -> super::NativeOp {
    super::NativeOp::Conv(Box::new(Conv::new(
        &[1.0; 4],
        [2, 2, 1, 1],
        1,
        None,
        POINTWISE,
        Algorithm::Patches,
    )))
}

fn epilogues(kernels: &[super::Kernel]) -> Vec<(String, Option<Epilogue>, Vec<usize>, usize)> {
    kernels
        .iter()
        .map(|k| {
            let epilogue = match &k.op {
                super::NativeOp::Conv(conv) => Some(conv.epilogue),
                _ => None,
            };
            (k.name.clone(), epilogue, k.inputs.clone(), k.output)
        })
        .collect()
}

#[test]
fn shortcut_adds_and_relus_fold_into_the_convolution_that_runs_last() {
    use super::NativeOp::Add;
    let relu = || super::NativeOp::Activation(Activation::Relu);
    // Slot 0 is the input. A bottleneck's main branch (conv a → 1) and its projection
    // shortcut (conv b → 2, computed after a), then add → 3 and relu → 4.
    let kernels = vec![
        kernel("a", pointwise(), &[0], 1),
        kernel("b", pointwise(), &[0], 2),
        kernel("add", Add, &[1, 2], 3),
        kernel("relu", relu(), &[3], 4),
    ];
    let fused = epilogues(&super::fuse(kernels, 5, 4));
    let both = Epilogue {
        residual: true,
        activation: Some(Activation::Relu),
    };
    assert_eq!(
        fused,
        [
            ("a".into(), Some(Epilogue::default()), vec![0], 1),
            // The add goes into b (a's output is ready before b runs), not into a.
            ("b".into(), Some(both), vec![0, 1], 4),
        ]
    );
}

#[test]
fn a_convolution_whose_output_is_read_twice_is_not_fused() {
    use super::NativeOp::Add;
    let relu = || super::NativeOp::Activation(Activation::Relu);
    let kernels = vec![
        kernel("a", pointwise(), &[0], 1),
        kernel("relu", relu(), &[1], 2),
        // `1` is read by the relu and by this add: a fused relu would change what the add sees.
        kernel("add", Add, &[1, 2], 3),
    ];
    let fused = epilogues(&super::fuse(kernels, 4, 3));
    assert_eq!(fused.len(), 3, "{fused:?}");
    assert_eq!(fused[0].1, Some(Epilogue::default()));
}

fn depthwise(channels: usize, stride: usize) -> Conv {
    depthwise_of(channels, 3, stride)
}

/// A `kernel`×`kernel` depthwise convolution padded to keep the size (at stride 1), with a
/// ReLU6.
fn depthwise_of(channels: usize, kernel: usize, stride: usize) -> Conv {
    let window = Window {
        kernel: [kernel; 2],
        stride: [stride; 2],
        padding: [(kernel / 2, kernel / 2); 2],
        dilation: [1, 1],
        ceil: false,
    };
    let weight = random(channels * kernel * kernel, 7);
    let bias = random(channels, 8);
    let shape = [channels, 1, kernel, kernel];
    let mut conv = Conv::new(
        &weight,
        shape,
        channels,
        Some(&bias),
        window,
        Algorithm::Patches,
    );
    conv.epilogue.activation = Some(Activation::Clip { min: 0.0, max: 6.0 });
    conv
}

fn projection(cin: usize, cout: usize, residual: bool) -> Conv {
    let weight = random(cout * cin, 9);
    let bias = random(cout, 10);
    let shape = [cout, cin, 1, 1];
    let mut conv = Conv::new(
        &weight,
        shape,
        1,
        Some(&bias),
        POINTWISE,
        Algorithm::Patches,
    );
    conv.epilogue.residual = residual;
    conv
}

/// A 1×1 expansion with a HardSwish, as MobileNetV3's.
fn expansion(cin: usize, cout: usize) -> Conv {
    let mut conv = projection(cin, cout, false);
    conv.epilogue.activation = Some(Activation::HardSwish);
    conv
}

#[test]
fn chained_convolutions_match_them_run_apart() {
    // (input NCHW, expanded channels (0: no expansion), depthwise kernel and stride,
    // projected channels (0: no projection), shortcut, run block by block): maps large
    // enough to go block by block on two threads, whole images per run or one image cut into
    // runs (whose first blocks expand the lines above them again), widths that are no
    // multiple of the pixel groups, and maps too small to (they run apart).
    let cases = [
        ([4, 32, 48, 48], 0, (3, 1), 16, false, true),
        ([4, 40, 45, 45], 0, (3, 1), 40, true, true),
        ([4, 16, 130, 130], 0, (3, 2), 8, false, true),
        ([1, 40, 7, 7], 0, (3, 1), 40, true, false),
        ([1, 8, 57, 57], 96, (3, 1), 8, true, true),
        ([1, 8, 57, 57], 96, (5, 1), 8, true, true),
        ([3, 8, 56, 56], 24, (3, 2), 12, false, true),
        ([2, 6, 41, 41], 200, (5, 1), 0, false, true),
        ([2, 6, 41, 41], 200, (3, 2), 0, false, true),
        ([1, 8, 9, 9], 16, (3, 1), 8, true, false),
    ];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("a pool of two threads");
    for (input, mid, (kernel, stride), cout, residual, blocks) in cases {
        let what = format!("{input:?} → {mid} {kernel}x{kernel}/{stride} → {cout}");
        let depthwise = || depthwise_of(if mid > 0 { mid } else { input[1] }, kernel, stride);
        let expand = (mid > 0).then(|| expansion(input[1], mid));
        let mid = if mid > 0 { mid } else { input[1] };
        let project = (cout > 0).then(|| projection(mid, cout, residual));
        let x = Map::from_nchw(&random(input.iter().product(), 11), input);
        // Each convolution on its own.
        let expanded = expand
            .as_ref()
            .map(|e| e.run(&x, None).expect("expansion runs"));
        let middle =
            (depthwise().run(expanded.as_ref().unwrap_or(&x), None)).expect("depthwise runs");
        let shortcut = (residual && project.is_some()).then(|| {
            let dims = [middle.n, cout, middle.h, middle.w];
            Map::from_nchw(&random(dims.iter().product(), 12), dims)
        });
        let apart = match &project {
            Some(p) => p.run(&middle, shortcut.clone()).expect("projection runs"),
            None => middle.clone(),
        };
        stale_spares();
        let keeps_shape = residual && project.is_some() && (x.c, x.h) == (cout, middle.h);
        let chain = Chain::new(expand, depthwise(), project).expect("they fit");
        let plan = Blocks::new(&chain, (x.n, x.w), (middle.h, middle.w), 2);
        assert_eq!(plan.is_some(), blocks, "{what}: {plan:?}");
        let chained = pool.install(|| chain.run(&x, shortcut.map(Shortcut::Owned)));
        assert_close(
            &chained.expect("the chain runs"),
            &apart,
            &format!("chained {what}"),
        );
        // A block that keeps its shape adds its input back in, copied a block at a time.
        if keeps_shape {
            let own = pool.install(|| chain.run(&x, Some(Shortcut::Owned(x.clone()))));
            let input = pool.install(|| chain.run(&x, Some(Shortcut::Input)));
            let what = format!("{what}, the input as its shortcut");
            assert_close(&input.expect("runs"), &own.expect("runs"), &what);
        }
    }
}

#[test]
fn chains_are_only_made_of_what_fits_together() {
    // 1×1 convolutions over more than four channels (fewer are computed directly).
    let dw = || depthwise(8, 1);
    assert!(Chain::fits(
        Some(&expansion(6, 8)),
        &dw(),
        Some(&projection(8, 8, true))
    ));
    assert!(!Chain::fits(None, &dw(), None), "nothing to chain to");
    assert!(
        !Chain::fits(Some(&expansion(6, 6)), &dw(), None),
        "6 channels into 8"
    );
    assert!(
        !Chain::fits(Some(&expansion(4, 8)), &dw(), None),
        "computed directly"
    );
    assert!(
        !Chain::fits(Some(&dw()), &dw(), None),
        "a depthwise expansion"
    );
    assert!(!Chain::fits(
        None,
        &expansion(8, 8),
        Some(&projection(8, 8, false))
    ));
    let mut shortcut = dw();
    shortcut.epilogue.residual = true;
    assert!(!Chain::fits(
        None,
        &shortcut,
        Some(&projection(8, 8, false))
    ));
    assert!(
        Chain::fits(Some(&expansion(6, 8)), &shortcut, None),
        "its own shortcut, last"
    );
}

#[test]
fn a_depthwise_convolution_is_chained_to_the_1x1_convolutions_that_alone_feed_and_read_it() {
    // Eight channels: over four, a 1×1 convolution is a matrix product (fewer are computed
    // directly, and chain to nothing).
    let dw = || super::NativeOp::Conv(Box::new(depthwise(8, 1)));
    let pw = |residual| super::NativeOp::Conv(Box::new(projection(8, 8, residual)));
    // 0 → ex1 → 1 → dw1 → 2 → pw1 → 3 (+ 0 as the shortcut): one chain of three.
    // 3 → dw2 → 4, read by pw2 (→ 5) and by a relu (→ 12): not chained.
    // 5 → ex3 → 6 → dw3 → 7 → relu → 8 (squeeze-and-excitation's place) → pw3: ex3 + dw3.
    // 8 → ex4 → 9, read by dw4 and pw4: not chained.
    let kernels = vec![
        kernel("ex1", pw(false), &[0], 1),
        kernel("dw1", dw(), &[1], 2),
        kernel("pw1", pw(true), &[2, 0], 3),
        kernel("dw2", dw(), &[3], 4),
        kernel("pw2", pw(false), &[4], 5),
        kernel(
            "relu",
            super::NativeOp::Activation(Activation::Relu),
            &[4],
            12,
        ),
        kernel("ex3", pw(false), &[5], 6),
        kernel("dw3", dw(), &[6], 7),
        kernel(
            "relu3",
            super::NativeOp::Activation(Activation::Relu),
            &[7],
            8,
        ),
        kernel("ex4", pw(false), &[8], 9),
        kernel("dw4", dw(), &[9], 10),
        kernel("pw4", pw(false), &[9], 11),
    ];
    let chained = super::chain(kernels, 13, 11);
    let shapes: Vec<_> = (chained.iter())
        .map(|k| {
            (
                k.name.as_str(),
                matches!(k.op, super::NativeOp::Chain(_)),
                k.inputs.clone(),
            )
        })
        .collect();
    assert_eq!(
        shapes,
        [
            ("ex1+dw1+pw1", true, vec![0, 0]),
            ("dw2", false, vec![3]),
            ("pw2", false, vec![4]),
            ("relu", false, vec![4]),
            ("ex3+dw3", true, vec![5]),
            ("relu3", false, vec![7]),
            ("ex4", false, vec![8]),
            ("dw4", false, vec![9]),
            ("pw4", false, vec![9]),
        ]
    );
}

#[test]
fn winograd_is_chosen_for_3x3_stride_1_on_maps_of_14x14_and_up() {
    let mut window = POINTWISE;
    window.kernel = [3, 3];
    window.padding = [(1, 1); 2];
    assert_eq!(
        Algorithm::choose(&window, Some((56, 56))),
        Algorithm::Winograd
    );
    assert_eq!(
        Algorithm::choose(&window, Some((14, 14))),
        Algorithm::Winograd
    );
    assert_eq!(Algorithm::choose(&window, None), Algorithm::Winograd);
    assert_eq!(Algorithm::choose(&window, Some((7, 7))), Algorithm::Patches);
    window.stride = [2, 2];
    assert_eq!(
        Algorithm::choose(&window, Some((28, 28))),
        Algorithm::Patches
    );
    assert_eq!(
        Algorithm::choose(&POINTWISE, Some((56, 56))),
        Algorithm::Patches
    );
}

#[test]
fn a_profile_times_each_kernel_of_the_passes_run_while_it_is_on() {
    use super::{Plan, Schedule, profile};
    use std::time::Duration;
    let steps = vec![
        kernel(
            "profiled dw",
            super::NativeOp::Conv(Box::new(depthwise(8, 2))),
            &[0],
            1,
        ),
        kernel(
            "profiled relu",
            super::NativeOp::Activation(Activation::Relu),
            &[1],
            2,
        ),
    ];
    let schedule = Schedule::new(&steps, 0, 2, 3);
    let plan = Plan {
        steps,
        schedule,
        parts_per_thread: true,
    };
    let input = random(8 * 9 * 9, 13);
    let pass = || plan.forward(&input, [1, 8, 9, 9]).expect("the plan runs");
    // Other tests run plans at the same time; only this test's kernels are looked at.
    let ours = |times: Vec<profile::KernelTime>| -> Vec<_> {
        (times.into_iter())
            .filter(|t| t.name.starts_with("profiled"))
            .map(|t| (t.name, t.what, t.output, t.calls, t.total > Duration::ZERO))
            .collect()
    };
    pass();
    profile::enable(true);
    pass();
    pass();
    profile::enable(false);
    pass();
    let clip = "Clip { min: 0.0, max: 6.0 }";
    assert_eq!(
        ours(profile::take()),
        [
            (
                "profiled dw".to_string(),
                format!("conv 3x3/2 depthwise 8->8 +{clip}"),
                "[1, 8, 5, 5] (NCHW)".to_string(),
                2,
                true
            ),
            (
                "profiled relu".to_string(),
                "Relu".to_string(),
                "[1, 8, 5, 5] (NCHW)".to_string(),
                2,
                true
            ),
        ]
    );
    assert_eq!(ours(profile::take()), [], "taking the times clears them");
}

#[test]
fn threads_kept_awake_run_the_work_and_stop_with_it_even_when_it_panics() {
    use super::with_threads_awake;
    use rayon::prelude::*;
    for threads in [1, 2, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("a pool");
        let sum: u64 = pool.install(|| with_threads_awake(|| (0..10_000u64).into_par_iter().sum()));
        assert_eq!(sum, 10_000 * 9_999 / 2, "{threads} threads");
        // A panic in the pass ends it: the helpers stop and the panic reaches the caller
        // instead of the scope waiting for them forever.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.install(|| with_threads_awake(|| panic!("a kernel failed")))
        }));
        assert!(outcome.is_err(), "{threads} threads");
    }
}
