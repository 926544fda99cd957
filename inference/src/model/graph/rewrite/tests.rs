use onnx_ir::{GraphProto, ModelProto, NodeProto, ValueInfoProto};

use super::*;

fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    let mut node = NodeProto::new();
    node.op_type = op.into();
    node.name = outputs[0].to_string();
    node.input = inputs.iter().map(|s| s.to_string()).collect();
    node.output = outputs.iter().map(|s| s.to_string()).collect();
    node
}

fn with_ints(mut node: NodeProto, name: &str, values: &[i64]) -> NodeProto {
    set_ints(&mut node, name, values.to_vec());
    node
}

fn with_int(mut node: NodeProto, name: &str, value: i64) -> NodeProto {
    set_int(&mut node, name, value);
    node
}

/// A float weight of the given dimensions (values do not matter to the rewrite).
fn weight(name: &str, dims: &[i64]) -> TensorProto {
    let mut tensor = TensorProto::new();
    tensor.name = name.into();
    tensor.data_type = data_type::FLOAT;
    tensor.dims = dims.to_vec();
    tensor.float_data = vec![0.5; dims.iter().product::<i64>() as usize];
    tensor
}

/// A model whose input is `x` `[batch, 3, 8, 8]` and whose output is `y`.
fn model(nodes: Vec<NodeProto>, initializers: Vec<TensorProto>) -> ModelProto {
    let mut input = ValueInfoProto::new();
    input.name = "x".into();
    let tensor = input.type_.mut_or_insert_default().mut_tensor_type();
    tensor.elem_type = data_type::FLOAT;
    let shape = tensor.shape.mut_or_insert_default();
    for value in [None, Some(3), Some(8), Some(8)] {
        let mut dim = onnx_ir::TensorShapeProto::new()
            .dim
            .pop()
            .unwrap_or_default();
        match value {
            Some(v) => dim.set_dim_value(v),
            None => dim.set_dim_param("batch".into()),
        }
        shape.dim.push(dim);
    }
    let mut output = ValueInfoProto::new();
    output.name = "y".into();
    let mut graph = GraphProto::new();
    graph.node = nodes;
    graph.initializer = initializers;
    graph.input = vec![input];
    graph.output = vec![output];
    let mut model = ModelProto::new();
    model.graph = protobuf::MessageField::some(graph);
    model
}

/// Every initializer also listed among the graph inputs, as ONNX files before IR 4 have them.
fn with_weights_as_inputs(mut m: ModelProto) -> ModelProto {
    let graph = m.graph.mut_or_insert_default();
    for tensor in graph.initializer.clone() {
        let mut input = ValueInfoProto::new();
        input.name = tensor.name;
        graph.input.push(input);
    }
    m
}

fn ops(model: &ModelProto) -> Vec<String> {
    model.graph.node.iter().map(|n| n.op_type.clone()).collect()
}

fn initializer(model: &ModelProto, name: &str) -> Option<Vec<i64>> {
    model
        .graph
        .initializer
        .iter()
        .find(|t| t.name == name)
        .and_then(int_values)
}

#[test]
fn view_by_batch_size_becomes_a_reshape_that_copies_the_batch() {
    // x.view(x.size(0), -1) after a 1×1 convolution, as torch's TorchScript exporter writes it.
    let mut m = model(
        vec![
            node("Conv", &["x", "w"], &["c"]),
            node("Shape", &["c"], &["s"]),
            node("Gather", &["s", "zero"], &["n"]),
            with_ints(node("Unsqueeze", &["n"], &["n1"]), "axes", &[0]),
            node("Concat", &["n1", "minus_one"], &["target"]),
            node("Reshape", &["c", "target"], &["y"]),
        ],
        vec![
            weight("w", &[4, 3, 1, 1]),
            int64_tensor("zero", &[], vec![0]),
            int64_tensor("minus_one", &[1], vec![-1]),
        ],
    );
    let rewrites = prepare(&mut m, Path::new("."), 8).expect("rewrites");
    assert_eq!(ops(&m), ["Conv", "Reshape"], "shape arithmetic gone");
    let reshape = &m.graph.node[1];
    assert_eq!(initializer(&m, &reshape.input[1]), Some(vec![0, -1]));
    assert_eq!(int_attribute(reshape, "allowzero", 1), 0);
    assert!(rewrites.any());
}

#[test]
fn fixed_shape_arithmetic_is_folded_into_an_initializer() {
    // The channel count of a feature map, computed and used as a Reshape target.
    let mut m = model(
        vec![
            node("Conv", &["x", "w"], &["c"]),
            with_int(node("Shape", &["c"], &["s"]), "start", 1),
            node("Slice", &["s", "zero", "one"], &["channels"]),
            node("Mul", &["channels", "thirty_six"], &["features"]),
            node("Concat", &["minus_one", "features"], &["target"]),
            node("Reshape", &["c", "target"], &["y"]),
        ],
        vec![
            weight("w", &[4, 3, 3, 3]),
            int64_tensor("zero", &[1], vec![0]),
            int64_tensor("one", &[1], vec![1]),
            int64_tensor("thirty_six", &[1], vec![36]),
            int64_tensor("minus_one", &[1], vec![-1]),
        ],
    );
    let rewrites = prepare(&mut m, Path::new("."), 8).expect("rewrites");
    assert_eq!(rewrites.folded, 4, "Shape, Slice, Mul, Concat");
    assert_eq!(ops(&m), ["Conv", "Reshape"]);
    // [-1, 4·6·6] over a [N, 4, 6, 6] map: flattening, written for any batch.
    assert_eq!(rewrites.flattens, 1);
    assert_eq!(
        initializer(&m, &m.graph.node[1].input[1]),
        Some(vec![0, -1])
    );
}

#[test]
fn zero_padding_before_a_convolution_becomes_its_padding() {
    let mut m = with_weights_as_inputs(model(
        vec![
            node("Pad", &["x", "pads"], &["p"]),
            with_ints(node("Conv", &["p", "w"], &["y"]), "strides", &[2, 2]),
        ],
        vec![
            int64_tensor("pads", &[8], vec![0, 0, 0, 1, 0, 0, 1, 2]),
            weight("w", &[4, 3, 3, 3]),
        ],
    ));
    let rewrites = prepare(&mut m, Path::new("."), 8).expect("rewrites");
    assert_eq!(rewrites.pads_merged, 1);
    let inputs: Vec<&str> = m.graph.input.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(inputs, ["x", "w"], "the dropped pads left the inputs too");
    assert_eq!(ops(&m), ["Conv"]);
    let conv = &m.graph.node[0];
    assert_eq!(conv.input[0], "x");
    // ONNX order: top, left, bottom, right.
    assert_eq!(ints_attribute(conv, "pads"), Some(vec![0, 1, 1, 2]));
    assert!(
        initializer(&m, "pads").is_none(),
        "unused constants dropped"
    );
}

#[test]
fn padding_that_is_not_zero_or_is_read_twice_stays() {
    let reflect = {
        let mut pad = node("Pad", &["x", "pads"], &["p"]);
        pad.attribute.push({
            let mut a = AttributeProto::new();
            a.name = "mode".into();
            a.s = bytes::Bytes::from_static(b"reflect");
            a
        });
        pad
    };
    let mut m = model(
        vec![reflect, node("Conv", &["p", "w"], &["y"])],
        vec![
            int64_tensor("pads", &[8], vec![0, 0, 1, 1, 0, 0, 1, 1]),
            weight("w", &[4, 3, 3, 3]),
        ],
    );
    prepare(&mut m, Path::new("."), 8).expect("rewrites");
    assert_eq!(ops(&m), ["Pad", "Conv"]);
    let mut m = model(
        vec![
            node("Pad", &["x", "pads"], &["p"]),
            node("Conv", &["p", "w"], &["c"]),
            node("Add", &["c", "p"], &["y"]),
        ],
        vec![
            int64_tensor("pads", &[8], vec![0, 0, 1, 1, 0, 0, 1, 1]),
            weight("w", &[3, 3, 3, 3]),
        ],
    );
    prepare(&mut m, Path::new("."), 8).expect("rewrites");
    assert_eq!(ops(&m), ["Pad", "Conv", "Add"]);
}

#[test]
fn spatial_means_become_global_pooling_and_same_padding_explicit() {
    let mut m = model(
        vec![
            {
                let mut conv = with_ints(node("Conv", &["x", "w"], &["c"]), "strides", &[2, 2]);
                conv.attribute.push({
                    let mut a = AttributeProto::new();
                    a.name = "auto_pad".into();
                    a.s = bytes::Bytes::from_static(b"SAME_UPPER");
                    a
                });
                conv
            },
            with_int(node("ReduceMean", &["c", "axes"], &["y"]), "keepdims", 0),
        ],
        vec![
            weight("w", &[4, 3, 3, 3]),
            int64_tensor("axes", &[2], vec![-1, -2]),
        ],
    );
    let rewrites = prepare(&mut m, Path::new("."), 8).expect("rewrites");
    assert_eq!(rewrites.means_pooled, 1);
    assert_eq!(ops(&m), ["Conv", "GlobalAveragePool", "Flatten"]);
    // 8 wide, stride 2, 3×3: 4 outputs need 1 pixel of padding, at the end (SAME_UPPER).
    assert_eq!(
        ints_attribute(&m.graph.node[0], "pads"),
        Some(vec![0, 0, 1, 1])
    );
    assert!(attribute(&m.graph.node[0], "auto_pad").is_none());
    assert_eq!(m.graph.node[2].output, ["y"]);
}

#[test]
fn a_graph_without_exporter_idioms_is_left_alone() {
    let mut m = model(
        vec![
            node("Conv", &["x", "w"], &["c"]),
            node("GlobalAveragePool", &["c"], &["g"]),
            node("Flatten", &["g"], &["y"]),
        ],
        vec![weight("w", &[4, 3, 3, 3])],
    );
    let before = m.clone();
    assert!(!prepare(&mut m, Path::new("."), 8).expect("rewrites").any());
    assert_eq!(m, before);
}

#[test]
fn an_input_of_another_fixed_size_is_named() {
    let mut m = model(vec![node("Relu", &["x"], &["y"])], vec![]);
    let err = prepare(&mut m, Path::new("."), 224).expect_err("8 is not 224");
    assert!(
        err.contains("fixed height of 8") && err.contains("224"),
        "{err}"
    );
}

#[test]
fn external_weights_are_read_in_and_a_missing_file_is_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let values: Vec<u8> = [1.5f32, -2.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    std::fs::write(
        dir.path().join("m.onnx.data"),
        [vec![0; 8], values].concat(),
    )
    .expect("data");
    let external = |location: &str| {
        let mut tensor = TensorProto::new();
        tensor.name = "b".into();
        tensor.data_type = data_type::FLOAT;
        tensor.dims = vec![2];
        tensor.data_location = protobuf::EnumOrUnknown::from_i32(1);
        for (key, value) in [("location", location), ("offset", "8"), ("length", "8")] {
            let mut entry = onnx_ir::ModelProto::new()
                .metadata_props
                .pop()
                .unwrap_or_default();
            entry.key = key.into();
            entry.value = value.into();
            tensor.external_data.push(entry);
        }
        tensor
    };
    let mut m = model(
        vec![node("Add", &["x", "b"], &["y"])],
        vec![external("m.onnx.data")],
    );
    let rewrites = prepare(&mut m, dir.path(), 8).expect("rewrites");
    assert_eq!(rewrites.external_inlined, 1);
    assert_eq!(float_values(&m.graph.initializer[0]), Some(vec![1.5, -2.0]));
    let mut m = model(
        vec![node("Add", &["x", "b"], &["y"])],
        vec![external("gone.data")],
    );
    let err = prepare(&mut m, dir.path(), 8).expect_err("no file");
    assert!(
        err.contains("gone.data") && err.contains("beside the model"),
        "{err}"
    );
}

#[test]
fn reshape_targets_resolve_as_onnx_defines_them() {
    let map = [Dim::Batch, Dim::Fixed(512), Dim::Fixed(1), Dim::Fixed(1)];
    assert_eq!(
        reshaped(&map, &[-1, 512]),
        Some(vec![Dim::Batch, Dim::Fixed(512)])
    );
    assert_eq!(
        reshaped(&map, &[0, -1]),
        Some(vec![Dim::Batch, Dim::Fixed(512)])
    );
    assert_eq!(
        reshaped(&map, &[-1, 256]),
        None,
        "would fold the batch into rows"
    );
    assert_eq!(reshaped(&map, &[-1, -1]), None);
    assert_eq!(
        slice(&[1, 2, 3, 4].map(Dim::Fixed), -1, i64::MIN, -1),
        Some([4, 3, 2, 1].map(Dim::Fixed).to_vec()),
        "torch's reversed pads"
    );
    assert_eq!(
        broadcast(&[
            map.to_vec(),
            vec![Dim::Fixed(512), Dim::Fixed(1), Dim::Fixed(1)]
        ]),
        Some(map.to_vec())
    );
}

#[test]
fn torchs_computed_pads_are_evaluated_and_merged() {
    // F.pad(x, [0, 1, 0, 1]) as the TorchScript exporter writes it (opset 17): the pads are
    // built from constants at run time, reversed pairwise, and cast.
    let mut zeros = node("ConstantOfShape", &["four"], &["zeros"]);
    zeros.attribute.push({
        let mut a = AttributeProto::new();
        a.name = "value".into();
        a.t = protobuf::MessageField::some(int64_tensor("", &[1], vec![0]));
        a
    });
    let mut m = model(
        vec![
            zeros,
            node("Concat", &["torch_pads", "zeros"], &["all"]),
            node("Reshape", &["all", "pairs_shape"], &["pairs"]),
            node(
                "Slice",
                &["pairs", "minus_one", "very_negative", "zero", "minus_one"],
                &["reversed"],
            ),
            with_ints(
                node("Transpose", &["reversed"], &["columns"]),
                "perm",
                &[1, 0],
            ),
            node("Reshape", &["columns", "minus_one"], &["flat"]),
            with_int(node("Cast", &["flat"], &["pads"]), "to", 7),
            node("Pad", &["x", "pads"], &["p"]),
            node("Conv", &["p", "w"], &["y"]),
        ],
        vec![
            int64_tensor("four", &[1], vec![4]),
            int64_tensor("torch_pads", &[4], vec![0, 1, 0, 1]),
            int64_tensor("pairs_shape", &[2], vec![-1, 2]),
            int64_tensor("minus_one", &[1], vec![-1]),
            int64_tensor("very_negative", &[1], vec![i64::MIN + 1]),
            int64_tensor("zero", &[1], vec![0]),
            weight("w", &[4, 3, 3, 3]),
        ],
    );
    let rewrites = prepare(&mut m, Path::new("."), 8).expect("rewrites");
    assert_eq!((rewrites.folded, rewrites.pads_merged), (7, 1));
    assert_eq!(ops(&m), ["Conv"]);
    // Right and bottom by one: ONNX [top, left, bottom, right].
    assert_eq!(
        ints_attribute(&m.graph.node[0], "pads"),
        Some(vec![0, 0, 1, 1])
    );
}

/// A float initializer holding `values`.
fn floats(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    let mut tensor = weight(name, dims);
    tensor.float_data = values.to_vec();
    tensor
}

/// ConvNeXt's block as torch exports it, shrunk: permute to channels-last, LayerNorm, a Linear
/// (MatMul + Add), arithmetic with a single value and with one value per channel, permute back.
fn channels_last_block(inside: NodeProto) -> ModelProto {
    model(
        vec![
            with_ints(node("Transpose", &["x"], &["t"]), "perm", &[0, 2, 3, 1]),
            node("LayerNormalization", &["t", "g", "b"], &["n"]),
            node("MatMul", &["n", "w"], &["mm"]),
            node("Add", &["bias", "mm"], &["lin"]),
            inside,
            node("Mul", &["half", "scale"], &["scaled"]),
            with_ints(
                node("Transpose", &["scaled"], &["y"]),
                "perm",
                &[0, 3, 1, 2],
            ),
        ],
        vec![
            floats("g", &[3], &[1.0, 1.5, 2.0]),
            floats("b", &[3], &[0.0, 0.1, 0.2]),
            // [in 3, out 2]: w[i][o] = 1 + 2i + o.
            floats("w", &[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
            floats("bias", &[2], &[10.0, 20.0]),
            floats("two", &[], &[2.0]),
            floats("scale", &[2], &[7.0, 8.0]),
        ],
    )
}

#[test]
fn a_channels_last_block_is_rewritten_channels_first() {
    let mut m = channels_last_block(node("Div", &["lin", "two"], &["half"]));
    let rewrites = prepare(&mut m, Path::new("."), 8).expect("rewrites");
    assert_eq!(rewrites.channels_last_blocks, 1);
    assert_eq!(
        ops(&m),
        [
            "Transpose",
            "LayerNormalization",
            "Transpose",
            "Conv",
            "Div",
            "Mul",
            "Identity"
        ],
        "the LayerNorm alone keeps its channels last; the graph output is still written"
    );
    let perm = |at: usize| ints_attribute(&m.graph.node[at], "perm");
    assert_eq!(
        (perm(0), perm(2)),
        (Some(vec![0, 2, 3, 1]), Some(vec![0, 3, 1, 2]))
    );
    assert_eq!(m.graph.node[0].input, ["x"]);
    let values = |name: &str| {
        let t = m
            .graph
            .initializer
            .iter()
            .find(|t| t.name == name)
            .expect(name);
        (t.dims.clone(), float_values(t).expect("floats"))
    };
    // The Linear as a 1×1 convolution: weight [out, in, 1, 1], the Add as its bias.
    let conv = &m.graph.node[3];
    assert_eq!(conv.input[0], m.graph.node[2].output[0]);
    assert_eq!(conv.output, ["lin"]);
    assert_eq!(
        values(&conv.input[1]),
        (vec![2, 3, 1, 1], vec![1.0, 3.0, 5.0, 2.0, 4.0, 6.0])
    );
    assert_eq!(values(&conv.input[2]), (vec![2], vec![10.0, 20.0]));
    // The single value stays; the per-channel one broadcasts over [N, C, H, W].
    assert_eq!(m.graph.node[4].input, ["lin", "two"]);
    assert_eq!(
        values(&m.graph.node[5].input[1]),
        (vec![2, 1, 1], vec![7.0, 8.0])
    );
    assert_eq!(m.graph.node[6].input, ["scaled"]);
}

#[test]
fn a_channels_last_block_with_an_operator_it_cannot_move_is_left_alone() {
    // Softmax over the last axis is not element-wise: channels-first it would mean another
    // axis, so nothing of the block is rewritten.
    let mut m = channels_last_block(node("Softmax", &["lin"], &["half"]));
    let before = ops(&m);
    let rewrites = prepare(&mut m, Path::new("."), 8).expect("rewrites");
    assert_eq!(rewrites.channels_last_blocks, 0);
    assert_eq!(ops(&m), before);
}
