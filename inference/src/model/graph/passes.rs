//! Passes over the imported steps that make them cheaper to run, whatever runs them.

use super::schedule::readers;
use super::step::{Activation, Normalized, Op, Step};

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

/// A LayerNorm over the last axis between a Transpose to channels-last and one back (how
/// ConvNeXt's LayerNorm reads once `rewrite` has turned its blocks channels-first) becomes
/// one LayerNorm over the channels, when nothing else reads the transposed maps: no map is
/// ever laid out channels-last as a tensor of its own, and the native engine, whose maps are
/// channels-last in memory anyway, normalises each pixel's channels where they lie.
pub(super) fn join_channel_norms(steps: Vec<Step>, slots: usize, graph_output: usize) -> Vec<Step> {
    const TO_LAST: [usize; 4] = [0, 2, 3, 1];
    const TO_FIRST: [usize; 4] = [0, 3, 1, 2];
    let uses = readers(&steps, slots, graph_output);
    let writer = writers(&steps, slots);
    let permute_of = |slot: usize, perm: [usize; 4], steps: &[Step]| {
        let at = writer[slot]?;
        match (&steps[at].op, steps[at].inputs.as_slice()) {
            (Op::Permute(p), &[x]) if *p == perm && uses[slot] == 1 => Some((at, x)),
            _ => None,
        }
    };
    let mut dropped = vec![false; steps.len()];
    let mut joins = Vec::new();
    for (at, step) in steps.iter().enumerate() {
        let (Op::Permute(perm), &[normalized]) = (&step.op, step.inputs.as_slice()) else {
            continue;
        };
        let Some(norm_at) = writer[normalized].filter(|_| *perm == TO_FIRST) else {
            continue;
        };
        let norm = &steps[norm_at];
        let is_last_axis = matches!(
            norm.op,
            Op::LayerNorm {
                over: Normalized::LastAxis,
                ..
            }
        );
        if !is_last_axis || uses[normalized] != 1 {
            continue;
        }
        let Some((entry_at, x)) = permute_of(norm.inputs[0], TO_LAST, &steps) else {
            continue;
        };
        dropped[entry_at] = true;
        dropped[at] = true;
        joins.push((norm_at, x, step.output));
    }
    let mut steps = steps;
    for (norm_at, x, output) in joins {
        let norm = &mut steps[norm_at];
        if let Op::LayerNorm { over, .. } = &mut norm.op {
            *over = Normalized::Channels;
        }
        norm.inputs = vec![x];
        norm.output = output;
    }
    without(steps, &dropped)
}

/// GELU as exporters write it, `(x · (1 + erf(x · 1/√2))) · ½` (five steps once `import`
/// has read the constant operands as [`Activation::Scale`]), becomes one GELU step when
/// nothing else reads the intermediate maps: one pass over the map instead of five, fused
/// into the convolution before it by the native engine.
pub(super) fn join_gelu(steps: Vec<Step>, slots: usize, graph_output: usize) -> Vec<Step> {
    let uses = readers(&steps, slots, graph_output);
    let writer = writers(&steps, slots);
    // The step writing `slot` if it is `activation` of one input read nowhere else.
    let single = |slot: usize, activation: &dyn Fn(Activation) -> bool| {
        let at = writer[slot]?;
        match (&steps[at].op, steps[at].inputs.as_slice()) {
            (Op::Activation(a), &[x]) if activation(*a) && uses[slot] == 1 => Some((at, x)),
            _ => None,
        }
    };
    let scale = |factor: f32, offset: f32| {
        move |a: Activation| {
            matches!(a, Activation::Scale { factor: f, offset: o }
                if (f - factor).abs() <= 1e-6 * factor.abs() && o == offset)
        }
    };
    // `1 + erf(x / √2)` written to `slot`: the steps and `x`.
    let one_plus_erf = |slot: usize| {
        let (plus, erf_out) = single(slot, &scale(1.0, 1.0))?;
        let (erf, scaled) = single(erf_out, &|a| a == Activation::Erf)?;
        let (divide, x) = single(scaled, &scale(std::f32::consts::FRAC_1_SQRT_2, 0.0))?;
        Some(([plus, erf, divide], x))
    };
    let mut dropped = vec![false; steps.len()];
    let mut joins = Vec::new();
    for (at, step) in steps.iter().enumerate() {
        // The last step, `½ · m`, and the product `m = x · (1 + erf(x / √2))` it reads.
        let (Op::Activation(half), &[m]) = (&step.op, step.inputs.as_slice()) else {
            continue;
        };
        let Some(product_at) = writer[m].filter(|_| scale(0.5, 0.0)(*half) && uses[m] == 1) else {
            continue;
        };
        let product = &steps[product_at];
        let (Op::Mul, &[a, b]) = (&product.op, product.inputs.as_slice()) else {
            continue;
        };
        let found = [(a, b), (b, a)].into_iter().find_map(|(x, other)| {
            let (parts, erf_input) = one_plus_erf(other)?;
            (erf_input == x).then_some((parts, x))
        });
        if let Some((parts, x)) = found {
            for part in parts.into_iter().chain([product_at]) {
                dropped[part] = true;
            }
            joins.push((at, x));
        }
    }
    let mut steps = steps;
    for (at, x) in joins {
        steps[at].op = Op::Activation(Activation::Gelu);
        steps[at].inputs = vec![x];
    }
    without(steps, &dropped)
}

/// For each slot, the index of the step that writes it.
fn writers(steps: &[Step], slots: usize) -> Vec<Option<usize>> {
    let mut writer = vec![None; slots];
    for (at, step) in steps.iter().enumerate() {
        writer[step.output] = Some(at);
    }
    writer
}

/// `steps` less those whose entry in `dropped` (one per step, in order) is true.
fn without(mut steps: Vec<Step>, dropped: &[bool]) -> Vec<Step> {
    let mut kept = dropped.iter();
    steps.retain(|_| !kept.next().copied().unwrap_or(false));
    steps
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Tensor, TensorData};

    use super::*;

    fn step(op: Op, inputs: &[usize], output: usize) -> Step {
        Step {
            name: format!("s{output}"),
            op,
            inputs: inputs.to_vec(),
            output,
        }
    }

    fn scale(factor: f32, offset: f32) -> Op {
        Op::Activation(Activation::Scale { factor, offset })
    }

    /// `(x · (1 + erf(x / √2))) · ½` from slot 0 to slot 5, as TorchScript exports GELU.
    fn gelu_as_exported() -> Vec<Step> {
        vec![
            step(scale(1.0 / std::f32::consts::SQRT_2, 0.0), &[0], 1),
            step(Op::Activation(Activation::Erf), &[1], 2),
            step(scale(1.0, 1.0), &[2], 3),
            step(Op::Mul, &[0, 3], 4),
            step(scale(0.5, 0.0), &[4], 5),
        ]
    }

    fn summary(steps: &[Step]) -> Vec<(String, Vec<usize>, usize)> {
        steps
            .iter()
            .map(|s| (format!("{:?}", s.op), s.inputs.clone(), s.output))
            .collect()
    }

    #[test]
    fn gelu_written_out_becomes_one_step() {
        let joined = join_gelu(gelu_as_exported(), 6, 5);
        assert_eq!(summary(&joined), [("Activation(Gelu)".into(), vec![0], 5)]);
    }

    #[test]
    fn gelu_is_not_joined_when_a_part_is_read_elsewhere_or_differs() {
        // `1 + erf(…)` also read by a step outside the pattern.
        let mut steps = gelu_as_exported();
        steps.push(step(Op::Add, &[3, 5], 6));
        assert_eq!(join_gelu(steps, 7, 6).len(), 6);
        // x / 2 instead of x / √2.
        let mut steps = gelu_as_exported();
        steps[0] = step(scale(0.5, 0.0), &[0], 1);
        assert_eq!(join_gelu(steps, 6, 5).len(), 5);
    }

    #[test]
    fn a_last_axis_layer_norm_between_transposes_normalises_the_channels() {
        let ones = Tensor::<1>::from_data(TensorData::new(vec![1.0f32; 3], [3]), &Device::flex());
        let norm = |over| Op::LayerNorm {
            scale: ones.clone(),
            shift: None,
            epsilon: 1e-6,
            over,
        };
        let steps = vec![
            step(Op::Permute([0, 2, 3, 1]), &[0], 1),
            step(norm(Normalized::LastAxis), &[1], 2),
            step(Op::Permute([0, 3, 1, 2]), &[2], 3),
        ];
        let joined = join_channel_norms(steps, 4, 3);
        assert_eq!(joined.len(), 1);
        assert!(matches!(
            joined[0].op,
            Op::LayerNorm {
                over: Normalized::Channels,
                ..
            }
        ));
        assert_eq!(
            (joined[0].inputs.as_slice(), joined[0].output),
            (&[0][..], 3)
        );
        // The channels-last map also read elsewhere: left as it is.
        let steps = vec![
            step(Op::Permute([0, 2, 3, 1]), &[0], 1),
            step(norm(Normalized::LastAxis), &[1], 2),
            step(Op::Permute([0, 3, 1, 2]), &[2], 3),
            step(Op::Add, &[1, 1], 4),
        ];
        assert_eq!(join_channel_norms(steps, 5, 3).len(), 4);
    }
}
