//! Channels-last islands rewritten channels-first: ConvNeXt's blocks as the engines run them.
//!
//! torchvision's ConvNeXt (and blocks like it) permutes a feature map to `[N, H, W, C]`,
//! applies LayerNorm over the channels and two `Linear` layers (exported as MatMul + Add) with
//! a GELU between them, and permutes back. Read as written, that needs rank-4 transposes and
//! matrix products over 4-D tensors. Read channels-first, it is what the engines already run:
//! a `Linear` over the last axis of `[N, H, W, C]` is a 1×1 convolution of `[N, C, H, W]`, an
//! element-wise op stays element-wise, and a per-channel constant broadcast over the last axis
//! becomes one of shape `[C, 1, 1]`. Only the LayerNorm still needs its channels last, so it
//! keeps a Transpose on either side, which the import joins into one normalisation over the
//! channels (`passes::join_channel_norms`). Every rewrite is exact.

use std::collections::{HashMap, HashSet};

use onnx_ir::{GraphProto, NodeProto, TensorProto};

use super::shapes::{Shapes, axis};
use super::{attribute, data_type, float_values, int_attribute, ints_attribute, set_ints};

/// `[N, C, H, W]` → `[N, H, W, C]`.
const TO_CHANNELS_LAST: [i64; 4] = [0, 2, 3, 1];
/// `[N, H, W, C]` → `[N, C, H, W]`.
const TO_CHANNELS_FIRST: [i64; 4] = [0, 3, 1, 2];

/// Operators applied value by value, whose other inputs (if any) are constants.
const ELEMENT_WISE: [&str; 14] = [
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Erf",
    "Relu",
    "Sigmoid",
    "Tanh",
    "HardSigmoid",
    "HardSwish",
    "Clip",
    "Gelu",
    "Identity",
    "Dropout",
];

/// Rewrites every channels-last island of `graph` channels-first; returns how many.
pub(super) fn rewrite(graph: &mut GraphProto, shapes: &Shapes) -> usize {
    if !graph.node.iter().any(|n| is_transpose(n, TO_CHANNELS_LAST)) {
        return 0;
    }
    let constants = Constants::of(graph);
    let outputs: HashSet<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
    let readers = super::patterns::readers(graph);
    let islands: Vec<Island> = (0..graph.node.len())
        .filter_map(|entry| Island::find(graph, entry, &readers, &constants, shapes, &outputs))
        .collect();
    let count = islands.len();
    let mut plan = Plan::default();
    for island in islands {
        plan.add(graph, island, &readers, &constants, shapes);
    }
    plan.apply(graph);
    count
}

/// One island: the Transpose into channels-last, the nodes inside, the Transposes out.
struct Island {
    entry: usize,
    inside: Vec<usize>,
    exits: Vec<usize>,
}

impl Island {
    /// The island entered by node `entry`, if it is a Transpose to channels-last and every
    /// tensor computed inside is read only by nodes this module can rewrite.
    fn find(
        graph: &GraphProto,
        entry: usize,
        readers: &HashMap<String, Vec<usize>>,
        constants: &Constants,
        shapes: &Shapes,
        outputs: &HashSet<&str>,
    ) -> Option<Self> {
        let node = &graph.node[entry];
        let rank4 = shapes
            .get(node.input.first()?)
            .is_some_and(|s| s.len() == 4);
        if !is_transpose(node, TO_CHANNELS_LAST) || !rank4 {
            return None;
        }
        let mut inside_tensors: HashSet<&str> = HashSet::from([node.output[0].as_str()]);
        let mut queue = vec![node.output[0].as_str()];
        let (mut inside, mut exits) = (Vec::new(), Vec::new());
        while let Some(tensor) = queue.pop() {
            if outputs.contains(tensor) {
                return None;
            }
            for &reader in readers.get(tensor)? {
                if inside.contains(&reader) || exits.contains(&reader) {
                    continue;
                }
                let next = graph.node.get(reader)?;
                if is_transpose(next, TO_CHANNELS_FIRST) {
                    exits.push(reader);
                    continue;
                }
                let [output] = next.output.as_slice() else {
                    return None;
                };
                inside.push(reader);
                if inside_tensors.insert(output.as_str()) {
                    queue.push(output.as_str());
                }
            }
        }
        let island = Self {
            entry,
            inside,
            exits,
        };
        let fits = island
            .inside
            .iter()
            .all(|&at| Self::fits(&graph.node[at], &inside_tensors, constants, shapes));
        (fits && !island.exits.is_empty()).then_some(island)
    }

    /// Whether `node`, inside an island, can be rewritten: its inputs are computed inside or
    /// are constants of a form channels-first can take.
    fn fits(
        node: &NodeProto,
        inside: &HashSet<&str>,
        constants: &Constants,
        shapes: &Shapes,
    ) -> bool {
        let first_inside = node
            .input
            .first()
            .is_some_and(|x| inside.contains(x.as_str()));
        match node.op_type.as_str() {
            "LayerNormalization" => first_inside && axis(int_attribute(node, "axis", -1), 4) == 3,
            "MatMul" => {
                let weight = node.input.get(1).and_then(|w| constants.dims(w));
                first_inside
                    && channels_in(node, shapes).is_some_and(|channels| {
                        weight.as_deref() == Some(&[channels, channels_out(node, shapes)][..])
                    })
            }
            op if ELEMENT_WISE.contains(&op) => node.input.iter().all(|input| {
                input.is_empty()
                    || inside.contains(input.as_str())
                    || constants
                        .per_channel(input, channels_out(node, shapes))
                        .is_some()
            }),
            _ => false,
        }
    }
}

/// The channels of a node's first input inside an island (the last of `[N, H, W, C]`).
fn channels_in(node: &NodeProto, shapes: &Shapes) -> Option<i64> {
    let shape = shapes.get(node.input.first()?)?;
    (shape.len() == 4).then(|| shape[3].fixed())?
}

/// The channels of a node's output inside an island (`-1` where unknown, which no constant
/// matches).
fn channels_out(node: &NodeProto, shapes: &Shapes) -> i64 {
    node.output
        .first()
        .and_then(|y| shapes.get(y))
        .filter(|s| s.len() == 4)
        .and_then(|s| s[3].fixed())
        .unwrap_or(-1)
}

fn is_transpose(node: &NodeProto, perm: [i64; 4]) -> bool {
    node.op_type == "Transpose" && ints_attribute(node, "perm").as_deref() == Some(&perm[..])
}

/// The float constants of the graph (initializers and Constant nodes), seen through the
/// Identity nodes the TorchScript exporter puts between shared weights and their readers.
/// Values are decoded only for the few constants an island uses.
struct Constants<'g> {
    tensors: HashMap<&'g str, &'g TensorProto>,
}

impl<'g> Constants<'g> {
    fn of(graph: &'g GraphProto) -> Self {
        let mut tensors: HashMap<&str, &TensorProto> = graph
            .initializer
            .iter()
            .filter(|t| t.data_type == data_type::FLOAT)
            .map(|t| (t.name.as_str(), t))
            .collect();
        for node in &graph.node {
            let Some(output) = node.output.first() else {
                continue;
            };
            let tensor = match node.op_type.as_str() {
                "Identity" => node
                    .input
                    .first()
                    .and_then(|i| tensors.get(i.as_str()).copied()),
                "Constant" => attribute(node, "value")
                    .and_then(|a| a.t.as_ref())
                    .filter(|t| t.data_type == data_type::FLOAT),
                _ => None,
            };
            if let Some(tensor) = tensor {
                tensors.insert(output.as_str(), tensor);
            }
        }
        Self { tensors }
    }

    fn dims(&self, name: &str) -> Option<Vec<i64>> {
        self.tensors.get(name).map(|t| t.dims.clone())
    }

    fn values(&self, name: &str) -> Option<Vec<f32>> {
        float_values(self.tensors.get(name)?)
    }

    /// A constant that broadcasts over channels-last maps of `channels` channels: a single
    /// value (`Scalar`) or one per channel along the last axis (`PerChannel`).
    fn per_channel(&self, name: &str, channels: i64) -> Option<Broadcast> {
        let dims = &self.tensors.get(name)?.dims;
        if dims.len() > 4 {
            return None;
        }
        if dims.iter().product::<i64>() == 1 {
            return Some(Broadcast::Scalar);
        }
        let (last, leading) = dims.split_last()?;
        (*last == channels && leading.iter().all(|&d| d == 1)).then_some(Broadcast::PerChannel)
    }
}

enum Broadcast {
    Scalar,
    PerChannel,
}

/// The changes to the graph, gathered over all islands and then applied at once.
#[derive(Default)]
struct Plan {
    /// Nodes to drop (the Transposes, and Adds folded into a convolution's bias).
    dropped: HashSet<usize>,
    /// Node index → its replacement nodes, in order.
    replaced: HashMap<usize, Vec<NodeProto>>,
    /// Tensor names read under another name (a dropped node's output → its input).
    renamed: HashMap<String, String>,
    initializers: Vec<TensorProto>,
}

impl Plan {
    fn add(
        &mut self,
        graph: &GraphProto,
        island: Island,
        readers: &HashMap<String, Vec<usize>>,
        constants: &Constants,
        shapes: &Shapes,
    ) {
        let entry = &graph.node[island.entry];
        self.dropped.insert(island.entry);
        self.renamed
            .insert(entry.output[0].clone(), entry.input[0].clone());
        for exit in island.exits {
            self.dropped.insert(exit);
            let node = &graph.node[exit];
            self.renamed
                .insert(node.output[0].clone(), node.input[0].clone());
        }
        for &at in &island.inside {
            let node = &graph.node[at];
            match node.op_type.as_str() {
                "LayerNormalization" => {
                    self.replaced.insert(at, sandwiched(node));
                }
                "MatMul" => {
                    let bias = readers
                        .get(&node.output[0])
                        .and_then(|r| match r.as_slice() {
                            [add] => Some(*add),
                            _ => None,
                        })
                        .filter(|add| island.inside.contains(add))
                        .and_then(|add| Some((add, bias_of(&graph.node[add], node, constants)?)));
                    let mut conv = self.pointwise(node, constants);
                    if let Some((add, (bias_name, values))) = bias {
                        let name = format!("{bias_name}_conv_bias_{at}");
                        self.initializers
                            .push(float_tensor(&name, &[values.len() as i64], values));
                        conv.input.push(name);
                        conv.output = graph.node[add].output.clone();
                        self.dropped.insert(add);
                    }
                    self.replaced.insert(at, vec![conv]);
                }
                _ => {
                    if self.dropped.contains(&at) {
                        continue;
                    }
                    let mut node = node.clone();
                    let channels = channels_out(&node, shapes);
                    // Either operand may be the constant one (`bias + x`, as exported).
                    for input in &mut node.input {
                        if let Some(Broadcast::PerChannel) = constants.per_channel(input, channels)
                        {
                            let values = constants.values(input).unwrap_or_default();
                            let name = format!("{input}_channels_first_{at}");
                            self.initializers
                                .push(float_tensor(&name, &[channels, 1, 1], values));
                            *input = name;
                        }
                    }
                    self.replaced.insert(at, vec![node]);
                }
            }
        }
    }

    /// `MatMul(x, W[Cin, Cout])` as `Conv(x, Wᵀ[Cout, Cin, 1, 1])`.
    fn pointwise(&mut self, matmul: &NodeProto, constants: &Constants) -> NodeProto {
        let weight = &matmul.input[1];
        let dims = constants.dims(weight).unwrap_or_default();
        let values = constants.values(weight).unwrap_or_default();
        let (cin, cout) = (dims[0] as usize, dims[1] as usize);
        let mut transposed = vec![0.0; values.len()];
        for i in 0..cin {
            for o in 0..cout {
                transposed[o * cin + i] = values[i * cout + o];
            }
        }
        let name = format!("{weight}_conv_{}", matmul.output[0]);
        self.initializers.push(float_tensor(
            &name,
            &[cout as i64, cin as i64, 1, 1],
            transposed,
        ));
        let mut conv = NodeProto::new();
        conv.op_type = "Conv".into();
        conv.name = matmul.name.clone();
        conv.input = vec![matmul.input[0].clone(), name];
        conv.output = matmul.output.clone();
        set_ints(&mut conv, "kernel_shape", vec![1, 1]);
        conv
    }

    fn apply(self, graph: &mut GraphProto) {
        let outputs: HashSet<String> = graph.output.iter().map(|o| o.name.clone()).collect();
        let mut nodes = Vec::with_capacity(graph.node.len());
        for (at, node) in std::mem::take(&mut graph.node).into_iter().enumerate() {
            if self.dropped.contains(&at) {
                // A graph output must still be written: by an Identity of what the dropped
                // Transpose read.
                if node.output.iter().any(|o| outputs.contains(o)) {
                    let mut identity = NodeProto::new();
                    identity.op_type = "Identity".into();
                    identity.name = node.name.clone();
                    identity.input = vec![node.input[0].clone()];
                    identity.output = node.output.clone();
                    nodes.push(identity);
                }
                continue;
            }
            match self.replaced.get(&at) {
                Some(replacement) => nodes.extend(replacement.iter().cloned()),
                None => nodes.push(node),
            }
        }
        for node in &mut nodes {
            for input in &mut node.input {
                while let Some(source) = self.renamed.get(input) {
                    *input = source.clone();
                }
            }
        }
        graph.node = nodes;
        graph.initializer.extend(self.initializers);
    }
}

/// The bias `Add(MatMul, b)` adds per output channel, if `add` is one.
fn bias_of(
    add: &NodeProto,
    matmul: &NodeProto,
    constants: &Constants,
) -> Option<(String, Vec<f32>)> {
    if add.op_type != "Add" {
        return None;
    }
    let other = match add.input.as_slice() {
        [a, b] if *a == matmul.output[0] => b,
        [a, b] if *b == matmul.output[0] => a,
        _ => return None,
    };
    let cout = *constants.dims(&matmul.input[1])?.get(1)?;
    match constants.per_channel(other, cout)? {
        Broadcast::PerChannel => Some((other.clone(), constants.values(other)?)),
        Broadcast::Scalar => Some((
            other.clone(),
            vec![*constants.values(other)?.first()?; cout as usize],
        )),
    }
}

/// A LayerNormalization over the channels of a channels-first map, written as ONNX can say
/// it: Transpose to channels-last, the LayerNorm, Transpose back.
fn sandwiched(norm: &NodeProto) -> Vec<NodeProto> {
    let transpose = |input: &str, output: &str, perm: [i64; 4]| {
        let mut node = NodeProto::new();
        node.op_type = "Transpose".into();
        node.name = format!("{}_{output}", norm.name);
        node.input = vec![input.to_string()];
        node.output = vec![output.to_string()];
        set_ints(&mut node, "perm", perm.to_vec());
        node
    };
    let (input, output) = (&norm.input[0], &norm.output[0]);
    let (last_in, last_out) = (format!("{output}_in_nhwc"), format!("{output}_nhwc"));
    let mut inner = norm.clone();
    inner.input[0] = last_in.clone();
    inner.output[0] = last_out.clone();
    vec![
        transpose(input, &last_in, TO_CHANNELS_LAST),
        inner,
        transpose(&last_out, output, TO_CHANNELS_FIRST),
    ]
}

/// A `float` initializer.
fn float_tensor(name: &str, dims: &[i64], values: Vec<f32>) -> TensorProto {
    let mut tensor = TensorProto::new();
    tensor.name = name.to_string();
    tensor.data_type = data_type::FLOAT;
    tensor.dims = dims.to_vec();
    tensor.float_data = values;
    tensor
}
