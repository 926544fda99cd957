//! Passes over the imported steps that make them cheaper to run, whatever runs them.

use super::schedule::readers;
use super::step::{Activation, Op, Step};

/// Folds each batch norm that directly follows the only consumer of a convolution into that
/// convolution's weights and bias: `(x * w + b) * s + t = x * (w * s) + (b * s + t)`, per output
/// channel. Exact up to f32 rounding, and it removes a full read and write of every feature map
/// per folded layer (53 of them in ResNet50) — what ONNX Runtime does at graph optimisation.
pub(super) fn fold_batch_norms(steps: Vec<Step>, slots: usize, graph_output: usize) -> Vec<Step> {
    let uses = readers(&steps, slots, graph_output);
    let mut folded: Vec<Step> = Vec::with_capacity(steps.len());
    for step in steps {
        if let (Op::Affine { scale, shift }, [input]) = (&step.op, step.inputs.as_slice())
            && uses[*input] == 1
            && let Some(previous) = folded.last_mut()
            && previous.output == *input
            && let Op::Conv { weight, bias, .. } = &mut previous.op
        {
            let channels = weight.dims()[0];
            let scale = scale.clone().reshape([channels]);
            let shift = shift.clone().reshape([channels]);
            let old_bias = bias.take().unwrap_or_else(|| shift.zeros_like());
            *weight = weight
                .clone()
                .mul(scale.clone().reshape([channels, 1, 1, 1]));
            *bias = Some(old_bias.mul(scale).add(shift));
            previous.output = step.output;
            continue;
        }
        folded.push(step);
    }
    folded
}

/// Gives every ungrouped convolution with at least `MIN_SPLIT_CHANNELS` outputs two views over
/// halves of its output channels. burn's CPU convolution spreads a batch over the cores but
/// runs a single image on one, so for a batch of one [`Step::run`] computes the halves on two
/// threads and concatenates them: 10–20 % faster at batch 1 on two cores (docs/PERFORMANCE.md).
/// Larger batches keep the whole convolution, which is faster there. The views share the
/// weights' storage, so this costs no memory.
pub(super) fn split_convolutions(steps: &mut [Step]) {
    const MIN_SPLIT_CHANNELS: usize = 64;
    for step in steps {
        let Op::Conv {
            weight,
            bias,
            options,
            halves,
        } = &mut step.op
        else {
            continue;
        };
        let [out, ..] = weight.dims();
        if options.groups != 1 || out < MIN_SPLIT_CHANNELS {
            continue;
        }
        let half = |range: std::ops::Range<usize>| {
            let part = weight.clone().slice([range.clone()]);
            (part, bias.as_ref().map(|b| b.clone().slice([range])))
        };
        *halves = Some(Box::new([half(0..out / 2), half(out / 2..out)]));
    }
}

/// `x · sigmoid(x)` as exporters write SiLU (a Sigmoid and a Mul reading both `x` and the
/// sigmoid) becomes one SiLU step, when nothing else reads the sigmoid: one pass over the map
/// instead of three, and an activation the native engine fuses into the convolution before it.
pub(super) fn join_silu(steps: Vec<Step>, slots: usize, graph_output: usize) -> Vec<Step> {
    let uses = readers(&steps, slots, graph_output);
    // For each slot written by a Sigmoid, the slot it read.
    let mut sigmoid_of: Vec<Option<usize>> = vec![None; slots];
    for step in &steps {
        if let (Op::Activation(Activation::Sigmoid), [x]) = (&step.op, step.inputs.as_slice()) {
            sigmoid_of[step.output] = Some(*x);
        }
    }
    let mut joined = vec![false; slots];
    let mut steps: Vec<Step> = steps
        .into_iter()
        .map(|mut step| {
            if let (Op::Mul, &[a, b]) = (&step.op, step.inputs.as_slice()) {
                let silu = [(a, b), (b, a)]
                    .into_iter()
                    .find(|&(x, s)| sigmoid_of[s] == Some(x) && uses[s] == 1);
                if let Some((x, s)) = silu {
                    step.op = Op::Activation(Activation::Silu);
                    step.inputs = vec![x];
                    joined[s] = true;
                }
            }
            step
        })
        .collect();
    steps.retain(|step| !joined[step.output]);
    steps
}
