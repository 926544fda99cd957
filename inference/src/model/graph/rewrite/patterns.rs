//! Exporter idioms rewritten as the operators they stand for, using the shapes the walk
//! computed: each rewrite is exact for every batch size.

use std::collections::HashMap;

use onnx_ir::{GraphProto, NodeProto};

use super::shapes::{Dim, Shapes, axis};
use super::{
    Rewrites, attribute, float_values, int_attribute, int_values, ints_attribute, retarget_reshape,
    set_int, set_ints,
};

/// Runs every rewrite over `graph`.
pub(super) fn rewrite(graph: &mut GraphProto, shapes: &Shapes, rewrites: &mut Rewrites) {
    explicit_same_padding(graph, shapes);
    // The integer initializers (pads, axes), folded ones included; no rewrite below adds one
    // that another reads.
    let constants: HashMap<String, Vec<i64>> = graph
        .initializer
        .iter()
        .filter_map(|t| Some((t.name.clone(), int_values(t)?)))
        .collect();
    rewrites.pads_merged = merge_pads(graph, &constants);
    rewrites.means_pooled = pool_spatial_means(graph, shapes, &constants);
    rewrites.flattens = flatten_reshapes(graph, shapes);
}

/// `auto_pad = SAME_UPPER/SAME_LOWER` on a convolution or pooling becomes explicit padding,
/// which depends on the input size (known here) and which the engines take as it is.
fn explicit_same_padding(graph: &mut GraphProto, shapes: &Shapes) {
    let weights: HashMap<String, Vec<i64>> = graph
        .initializer
        .iter()
        .map(|t| (t.name.clone(), t.dims.clone()))
        .collect();
    for node in &mut graph.node {
        let Some(mode) = attribute(node, "auto_pad").map(|a| a.s.to_vec()) else {
            continue;
        };
        let upper = match mode.as_slice() {
            b"SAME_UPPER" => true,
            b"SAME_LOWER" => false,
            _ => continue,
        };
        let Some([_, _, Dim::Fixed(h), Dim::Fixed(w)]) = node
            .input
            .first()
            .and_then(|x| shapes.get(x))
            .map(Vec::as_slice)
        else {
            continue;
        };
        let Some(kernel) = ints_attribute(node, "kernel_shape").or_else(|| {
            // A convolution's kernel size is its weight's.
            weights
                .get(node.input.get(1)?)?
                .get(2..)
                .map(<[i64]>::to_vec)
        }) else {
            continue;
        };
        let strides = ints_attribute(node, "strides").unwrap_or_else(|| vec![1, 1]);
        let dilations = ints_attribute(node, "dilations").unwrap_or_else(|| vec![1, 1]);
        let mut pads = vec![0i64; 4];
        for (axis, size) in [*h, *w].into_iter().enumerate() {
            let out = (size + strides[axis] - 1) / strides[axis];
            let span = (kernel[axis] - 1) * dilations[axis] + 1;
            let total = ((out - 1) * strides[axis] + span - size).max(0);
            let small = total / 2;
            let (begin, end) = if upper {
                (small, total - small)
            } else {
                (total - small, small)
            };
            pads[axis] = begin;
            pads[axis + 2] = end;
        }
        node.attribute.retain(|a| a.name != "auto_pad");
        set_ints(node, "pads", pads);
    }
}

/// A constant zero Pad (TF-style "SAME" padding written out, as EfficientNet ports do) read
/// only by a convolution becomes that convolution's own padding; likewise before an average
/// pooling that counts padding. The padded copy of the feature map is never made.
fn merge_pads(graph: &mut GraphProto, constants: &HashMap<String, Vec<i64>>) -> usize {
    let readers = readers(graph);
    // The pad value: an initializer, or a Constant node (torch's TorchScript exporter).
    let zero_value = |graph: &GraphProto, name: Option<&String>| match name {
        None => true,
        Some(name) if name.is_empty() => true,
        Some(name) => graph
            .initializer
            .iter()
            .find(|t| &t.name == name)
            .or_else(|| {
                let constant = graph
                    .node
                    .iter()
                    .find(|n| n.op_type == "Constant" && n.output.first() == Some(name))?;
                attribute(constant, "value")?.t.as_ref()
            })
            .and_then(float_values)
            .is_some_and(|v| v.iter().all(|&x| x == 0.0)),
    };
    let mut merged = 0;
    for index in 0..graph.node.len() {
        let pad = &graph.node[index];
        if pad.op_type != "Pad" {
            continue;
        }
        let mode = attribute(pad, "mode").map_or(b"constant".to_vec(), |a| a.s.to_vec());
        let pads =
            ints_attribute(pad, "pads").or_else(|| constants.get(pad.input.get(1)?).cloned());
        let value_zero = attribute(pad, "value")
            .map_or_else(|| zero_value(graph, pad.input.get(2)), |a| a.f == 0.0);
        let Some(pads) = pads else { continue };
        let spatial = pads.len() == 8 && [pads[0], pads[1], pads[4], pads[5]] == [0; 4];
        if mode != b"constant" || !value_zero || !spatial || pads.iter().any(|&p| p < 0) {
            continue;
        }
        // Axes limited to the spatial ones are not expressible as Conv padding here.
        if pad.input.get(3).is_some_and(|a| !a.is_empty()) {
            continue;
        }
        let output = pad.output[0].clone();
        let Some(&[reader]) = readers.get(&output).map(Vec::as_slice) else {
            continue;
        };
        let next = &graph.node[reader];
        let takes_padding = match next.op_type.as_str() {
            "Conv" => true,
            "AveragePool" => int_attribute(next, "count_include_pad", 0) == 1,
            _ => false,
        };
        let no_auto_pad =
            attribute(next, "auto_pad").is_none_or(|a| a.s.is_empty() || a.s.as_ref() == b"NOTSET");
        if !takes_padding || !no_auto_pad || next.input[0] != output {
            continue;
        }
        let source = pad.input[0].clone();
        let next = &mut graph.node[reader];
        let mut own = ints_attribute(next, "pads").unwrap_or_else(|| vec![0; 4]);
        // ONNX pads: all begins, then all ends; spatial axes are 2 and 3 of 4.
        own[0] += pads[2];
        own[1] += pads[3];
        own[2] += pads[6];
        own[3] += pads[7];
        set_ints(next, "pads", own);
        next.input[0] = source;
        merged += 1;
    }
    merged
}

/// ReduceMean over the two spatial axes of a feature map is global average pooling (the
/// `dynamo` exporter's form of `AdaptiveAvgPool2d(1)`); without `keepdims` it is followed
/// by a flatten.
fn pool_spatial_means(
    graph: &mut GraphProto,
    shapes: &Shapes,
    constants: &HashMap<String, Vec<i64>>,
) -> usize {
    let mut pooled = 0;
    let mut nodes = Vec::with_capacity(graph.node.len());
    for mut node in std::mem::take(&mut graph.node) {
        let rank4 = node
            .input
            .first()
            .and_then(|x| shapes.get(x))
            .is_some_and(|s| s.len() == 4);
        let axes = ints_attribute(&node, "axes")
            .or_else(|| constants.get(node.input.get(1)?).cloned())
            .map(|axes| {
                let mut axes: Vec<usize> = axes.iter().map(|&a| axis(a, 4)).collect();
                axes.sort_unstable();
                axes
            });
        if node.op_type != "ReduceMean" || !rank4 || axes.as_deref() != Some(&[2, 3]) {
            nodes.push(node);
            continue;
        }
        let keep = int_attribute(&node, "keepdims", 1) != 0;
        let output = node.output[0].clone();
        node.op_type = "GlobalAveragePool".into();
        node.input.truncate(1);
        node.attribute.clear();
        if keep {
            nodes.push(node);
        } else {
            let pooled_name = format!("{output}_pooled");
            node.output[0] = pooled_name.clone();
            let mut flatten = NodeProto::new();
            flatten.op_type = "Flatten".into();
            flatten.name = format!("{}_flatten", node.name);
            flatten.input = vec![pooled_name];
            flatten.output = vec![output];
            set_int(&mut flatten, "axis", 1);
            nodes.push(node);
            nodes.push(flatten);
        }
        pooled += 1;
    }
    graph.node = nodes;
    pooled
}

/// A Reshape of a feature map `[N, C, H, W]` to `[N, C·H·W]`, whatever its target says
/// (`[-1, 512]` from the `dynamo` exporter), is written as the target `[0, -1]`: the same for
/// every batch size, and what the engines recognise as flattening.
fn flatten_reshapes(graph: &mut GraphProto, shapes: &Shapes) -> usize {
    let mut count = 0;
    for node in graph.node.iter_mut() {
        if node.op_type != "Reshape" {
            continue;
        }
        let input = node.input.first().and_then(|x| shapes.get(x));
        let output = node.output.first().and_then(|x| shapes.get(x));
        let (Some([Dim::Batch, c, h, w]), Some([Dim::Batch, f])) =
            (input.map(Vec::as_slice), output.map(Vec::as_slice))
        else {
            continue;
        };
        let features = [c, h, w].iter().map(|d| d.fixed()).product::<Option<i64>>();
        if features != f.fixed() {
            continue;
        }
        retarget_reshape(&mut graph.initializer, node, "_flatten_shape", vec![0, -1]);
        count += 1;
    }
    count
}

/// For each tensor name, the indices of the nodes that read it.
pub(super) fn readers(graph: &GraphProto) -> HashMap<String, Vec<usize>> {
    let mut readers: HashMap<String, Vec<usize>> = HashMap::new();
    for (index, node) in graph.node.iter().enumerate() {
        for input in &node.input {
            readers.entry(input.clone()).or_default().push(index);
        }
    }
    for output in &graph.output {
        readers
            .entry(output.name.clone())
            .or_default()
            .push(usize::MAX);
    }
    readers
}
