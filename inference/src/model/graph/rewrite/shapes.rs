//! Every tensor's shape for one input size, the batch kept symbolic, and the shape arithmetic
//! that exporters leave in a graph evaluated away.
//!
//! Two kinds of value are tracked while walking the nodes in order: the *shape* of each tensor
//! computed at run time (feature maps, vectors), and the *value* of each small integer tensor
//! whose content is known at load time (initializers, Constant nodes, and whatever Shape,
//! Gather, Concat… compute from them). A node whose inputs are all known values is evaluated;
//! if its result does not depend on the batch size it becomes an initializer and the node goes.
//! A Reshape target that still holds the batch size (`[N, -1]` from `x.view(x.size(0), -1)`)
//! is written with ONNX's "copy this dimension" `0` instead, which means the same for every
//! batch.

use std::collections::HashMap;

use onnx_ir::{GraphProto, NodeProto};

use super::{
    attribute, int_attribute, int_values, int64_tensor, ints_attribute, keep_nodes,
    retarget_reshape,
};

/// One dimension of a shape, or one value of shape arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dim {
    /// The batch size: unknown at load time, the same for every tensor of one run.
    Batch,
    Fixed(i64),
}

impl Dim {
    /// The value, unless it is the batch size.
    pub(super) fn fixed(self) -> Option<i64> {
        match self {
            Dim::Fixed(v) => Some(v),
            Dim::Batch => None,
        }
    }
}

/// A small integer tensor whose values are known at load time.
#[derive(Clone, Debug, PartialEq)]
struct Known {
    shape: Vec<usize>,
    values: Vec<Dim>,
}

impl Known {
    fn vector(values: Vec<Dim>) -> Self {
        Self {
            shape: vec![values.len()],
            values,
        }
    }

    fn all_fixed(&self) -> Option<Vec<i64>> {
        self.values.iter().map(|d| d.fixed()).collect()
    }
}

/// The run-time shape of every tensor the walk could follow, by name.
pub(super) type Shapes = HashMap<String, Vec<Dim>>;

/// What one walk over the graph found.
struct Walk {
    shapes: Shapes,
    known: HashMap<String, Known>,
    /// Dimensions of every initializer, weights included.
    initializer_dims: HashMap<String, Vec<usize>>,
}

/// Evaluates the shape arithmetic of `graph` for `image_size` inputs; returns how many nodes
/// were folded away and the shape of every run-time tensor.
pub(super) fn fold(graph: &mut GraphProto, image_size: usize) -> Result<(usize, Shapes), String> {
    let mut walk = Walk::new(graph, image_size)?;
    let mut folded_outputs: Vec<(String, Known)> = Vec::new();
    let mut reshape_targets: Vec<(usize, Vec<i64>)> = Vec::new();
    let mut removed = vec![false; graph.node.len()];
    for (index, node) in graph.node.iter().enumerate() {
        if let Some(values) = walk.evaluate(node) {
            let fixed =
                node.op_type != "Constant" && values.iter().all(|v| v.all_fixed().is_some());
            for (name, value) in node.output.iter().zip(values) {
                if fixed {
                    folded_outputs.push((name.clone(), value.clone()));
                }
                walk.known.insert(name.clone(), value);
            }
            removed[index] = fixed;
            continue;
        }
        if node.op_type == "Reshape"
            && let Some(target) = walk.batch_copying_target(node)
        {
            reshape_targets.push((index, target));
        }
        for (name, shape) in node.output.iter().zip(walk.infer(node)) {
            if let Some(shape) = shape {
                walk.shapes.insert(name.clone(), shape);
            }
        }
    }
    let shapes = walk.shapes;
    for (index, target) in reshape_targets {
        let node = &mut graph.node[index];
        retarget_reshape(&mut graph.initializer, node, "_shape_for_any_batch", target);
    }
    let folded = removed.iter().filter(|&&r| r).count();
    let keep: Vec<bool> = removed.iter().map(|r| !r).collect();
    keep_nodes(graph, &keep);
    for (name, value) in folded_outputs {
        let values = value.all_fixed().expect("only fixed values are folded");
        graph
            .initializer
            .push(int64_tensor(&name, &value.shape, values));
    }
    Ok((folded, shapes))
}

impl Walk {
    fn new(graph: &GraphProto, image_size: usize) -> Result<Self, String> {
        let mut known = HashMap::new();
        let mut initializer_dims = HashMap::new();
        for tensor in &graph.initializer {
            let dims: Vec<usize> = tensor.dims.iter().map(|&d| d.max(0) as usize).collect();
            if let Some(values) = int_values(tensor) {
                let values = values.into_iter().map(Dim::Fixed).collect();
                known.insert(
                    tensor.name.clone(),
                    Known {
                        shape: dims.clone(),
                        values,
                    },
                );
            }
            initializer_dims.insert(tensor.name.clone(), dims);
        }
        let mut shapes = Shapes::new();
        for input in &graph.input {
            if initializer_dims.contains_key(&input.name) {
                continue; // older exporters list the weights among the inputs
            }
            let dims = &input.type_.tensor_type().shape.dim;
            if dims.len() != 4 {
                return Err(format!(
                    "input '{}' has rank {}, expected an image batch [N, C, H, W]",
                    input.name,
                    dims.len()
                ));
            }
            let declared = |at: usize| dims[at].has_dim_value().then(|| dims[at].dim_value());
            let size = image_size as i64;
            for (axis, name) in [(2, "height"), (3, "width")] {
                if let Some(d) = declared(axis)
                    && d != size
                {
                    return Err(format!(
                        "input '{}' has a fixed {name} of {d}, but the model is fed {size}×{size} \
                         images (set the input size to {d})",
                        input.name
                    ));
                }
            }
            let channels = declared(1).ok_or_else(|| {
                format!("input '{}' does not declare its channel count", input.name)
            })?;
            shapes.insert(
                input.name.clone(),
                vec![
                    Dim::Batch,
                    Dim::Fixed(channels),
                    Dim::Fixed(size),
                    Dim::Fixed(size),
                ],
            );
        }
        Ok(Self {
            shapes,
            known,
            initializer_dims,
        })
    }

    /// Known integer value of an input of `node`.
    fn value(&self, node: &NodeProto, index: usize) -> Option<&Known> {
        node.input.get(index).and_then(|name| self.known.get(name))
    }

    /// The shape of any input: computed at run time, known, or an initializer.
    fn shape_of(&self, name: &str) -> Option<Vec<Dim>> {
        if let Some(shape) = self.shapes.get(name) {
            return Some(shape.clone());
        }
        if let Some(known) = self.known.get(name) {
            return Some(known.shape.iter().map(|&d| Dim::Fixed(d as i64)).collect());
        }
        self.initializer_dims
            .get(name)
            .map(|dims| dims.iter().map(|&d| Dim::Fixed(d as i64)).collect())
    }

    fn input_shape(&self, node: &NodeProto, index: usize) -> Option<Vec<Dim>> {
        node.input.get(index).and_then(|name| self.shape_of(name))
    }

    /// The node's outputs, when it computes known integer values from known ones.
    fn evaluate(&self, node: &NodeProto) -> Option<Vec<Known>> {
        let value = |index| self.value(node, index);
        let ints = |index| value(index).and_then(Known::all_fixed);
        let one = |known: Known| Some(vec![known]);
        match node.op_type.as_str() {
            "Constant" => {
                let tensor = attribute(node, "value")?.t.as_ref()?;
                let values = int_values(tensor)?;
                one(Known {
                    shape: tensor.dims.iter().map(|&d| d as usize).collect(),
                    values: values.into_iter().map(Dim::Fixed).collect(),
                })
            }
            "Shape" => {
                let shape = self.shapes.get(node.input.first()?)?;
                let rank = shape.len() as i64;
                // Shape clamps its bounds into [0, rank], as Slice does.
                let clamp = |v: i64| (if v < 0 { v + rank } else { v }).clamp(0, rank) as usize;
                let start = clamp(int_attribute(node, "start", 0));
                let end = clamp(int_attribute(node, "end", rank));
                one(Known::vector(shape[start..end.max(start)].to_vec()))
            }
            "Size" => {
                let shape = self.shapes.get(node.input.first()?)?;
                let size = shape.iter().try_fold(1i64, |p, d| Some(p * d.fixed()?))?;
                one(Known {
                    shape: vec![],
                    values: vec![Dim::Fixed(size)],
                })
            }
            "Identity" | "Cast" => {
                if node.op_type == "Cast" {
                    let to = int_attribute(node, "to", 0) as i32;
                    if ![super::data_type::INT64, super::data_type::INT32].contains(&to) {
                        return None;
                    }
                }
                one(value(0)?.clone())
            }
            "Gather" => {
                let data = value(0)?;
                let indices = ints(1)?;
                if data.shape.len() != 1 || int_attribute(node, "axis", 0) != 0 {
                    return None;
                }
                let values = indices
                    .iter()
                    .map(|&i| data.values.get(axis(i, data.values.len())).copied())
                    .collect::<Option<Vec<_>>>()?;
                one(Known {
                    shape: value(1)?.shape.clone(),
                    values,
                })
            }
            "Unsqueeze" | "Squeeze" => {
                let data = value(0)?;
                let axes = ints_attribute(node, "axes").or_else(|| ints(1));
                let shape = squeezed(&node.op_type, data.shape.clone(), axes.as_deref(), 1)?;
                one(Known {
                    shape,
                    values: data.values.clone(),
                })
            }
            "Concat" => {
                let parts = (0..node.input.len())
                    .map(value)
                    .collect::<Option<Vec<_>>>()?;
                if parts.iter().any(|p| p.shape.len() != 1) {
                    return None;
                }
                one(Known::vector(
                    parts.iter().flat_map(|p| p.values.clone()).collect(),
                ))
            }
            "Slice" => {
                let data = value(0)?;
                let (starts, ends, steps) = match ints_attribute(node, "starts") {
                    Some(starts) => (starts, ints_attribute(node, "ends")?, vec![1]),
                    None => (ints(1)?, ints(2)?, ints(4).unwrap_or_else(|| vec![1])),
                };
                let axes = ints_attribute(node, "axes").or_else(|| ints(3));
                // One axis, the first: how torch's exporter reverses its pads (`[::-1]` on a
                // `[-1, 2]` reshape of them).
                let first_axis = axes.is_none_or(|a| a == [0] || a == [-(data.shape.len() as i64)]);
                if !first_axis || starts.len() != 1 || data.shape.is_empty() {
                    return None;
                }
                let row: usize = data.shape[1..].iter().product();
                let rows: Vec<Dim> = (0..data.shape[0] as i64).map(Dim::Fixed).collect();
                let picked = slice(&rows, starts[0], ends[0], steps[0])?;
                let mut shape = data.shape.clone();
                shape[0] = picked.len();
                let values = picked
                    .iter()
                    .filter_map(|r| r.fixed())
                    .flat_map(|r| data.values[r as usize * row..][..row].to_vec())
                    .collect();
                one(Known { shape, values })
            }
            "ConstantOfShape" => {
                let shape: Vec<usize> = ints(0)?.iter().map(|&d| d.max(0) as usize).collect();
                let fill = match attribute(node, "value").and_then(|a| a.t.as_ref()) {
                    Some(tensor) => *int_values(tensor)?.first()?,
                    None => return None, // float zeros: a run-time tensor, not shape arithmetic
                };
                let count = shape.iter().product();
                one(Known {
                    shape,
                    values: vec![Dim::Fixed(fill); count],
                })
            }
            "Range" => {
                let (start, limit, delta) = (ints(0)?, ints(1)?, ints(2)?);
                let (start, limit, delta) = (*start.first()?, *limit.first()?, *delta.first()?);
                if delta == 0 {
                    return None;
                }
                let values = (0..)
                    .map(|i| start + i * delta)
                    .take_while(|&v| if delta > 0 { v < limit } else { v > limit })
                    .map(Dim::Fixed)
                    .collect();
                one(Known::vector(values))
            }
            "Reshape" => {
                let data = value(0)?;
                let target = ints(1)?;
                let shape = reshaped(&[Dim::Fixed(data.values.len() as i64)], &target)?;
                let shape = shape
                    .iter()
                    .map(|d| d.fixed().map(|v| v as usize))
                    .collect::<Option<Vec<_>>>()?;
                one(Known {
                    shape,
                    values: data.values.clone(),
                })
            }
            "Transpose" => {
                let data = value(0)?;
                match data.shape.as_slice() {
                    [_] => one(data.clone()),
                    &[rows, columns] => {
                        let values = (0..columns)
                            .flat_map(|c| (0..rows).map(move |r| (r, c)))
                            .map(|(r, c)| data.values[r * columns + c])
                            .collect();
                        one(Known {
                            shape: vec![columns, rows],
                            values,
                        })
                    }
                    _ => None,
                }
            }
            "Add" | "Sub" | "Mul" | "Div" => {
                let (a, b) = (value(0)?, value(1)?);
                let op = node.op_type.as_str();
                let (long, short) = if a.values.len() >= b.values.len() {
                    (a, b)
                } else {
                    (b, a)
                };
                if short.values.len() != 1 && short.values.len() != long.values.len() {
                    return None;
                }
                let values = (0..long.values.len())
                    .map(|i| {
                        let pick = |k: &Known| k.values[if k.values.len() == 1 { 0 } else { i }];
                        arithmetic(op, pick(a), pick(b))
                    })
                    .collect::<Option<Vec<_>>>()?;
                one(Known {
                    shape: long.shape.clone(),
                    values,
                })
            }
            _ => None,
        }
    }

    /// For a Reshape whose target still holds the batch size, the same target with ONNX's
    /// `0` ("keep this dimension of the input") where the input's batch dimension is.
    fn batch_copying_target(&self, node: &NodeProto) -> Option<Vec<i64>> {
        let target = self.value(node, 1)?;
        let data = self.input_shape(node, 0)?;
        if target.all_fixed().is_some() || int_attribute(node, "allowzero", 0) != 0 {
            return None;
        }
        target
            .values
            .iter()
            .enumerate()
            .map(|(at, d)| match d {
                Dim::Fixed(v) if *v != 0 => Some(*v),
                Dim::Batch if data.get(at) == Some(&Dim::Batch) => Some(0),
                _ => None,
            })
            .collect()
    }

    /// The shapes of `node`'s outputs computed at run time (`None` where unknown).
    fn infer(&self, node: &NodeProto) -> Vec<Option<Vec<Dim>>> {
        let first = self.input_shape(node, 0);
        let shape = match node.op_type.as_str() {
            "Constant" => attribute(node, "value")
                .and_then(|a| a.t.as_ref())
                .map(|t| t.dims.iter().map(|&d| Dim::Fixed(d)).collect()),
            "Conv" | "MaxPool" | "AveragePool" | "LpPool" => first.and_then(|x| {
                let channels = if node.op_type == "Conv" {
                    Dim::Fixed(*self.initializer_dims.get(node.input.get(1)?)?.first()? as i64)
                } else {
                    *x.get(1)?
                };
                let weight = node.input.get(1).and_then(|w| self.initializer_dims.get(w));
                window_output(node, &x, channels, weight)
            }),
            "GlobalAveragePool" | "GlobalMaxPool" => first.map(|mut x| {
                x.truncate(2);
                x.extend([Dim::Fixed(1), Dim::Fixed(1)]);
                x
            }),
            "ReduceMean" | "ReduceMax" | "ReduceSum" => first.and_then(|x| {
                let axes: Vec<usize> = ints_attribute(node, "axes")
                    .or_else(|| self.value(node, 1).and_then(Known::all_fixed))?
                    .iter()
                    .map(|&a| axis(a, x.len()))
                    .collect();
                let keep = int_attribute(node, "keepdims", 1) != 0;
                Some(
                    x.iter()
                        .enumerate()
                        .filter_map(|(at, &d)| match (axes.contains(&at), keep) {
                            (false, _) => Some(d),
                            (true, true) => Some(Dim::Fixed(1)),
                            (true, false) => None,
                        })
                        .collect(),
                )
            }),
            "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Max" | "Min" | "PRelu" | "Where" => node
                .input
                .iter()
                .map(|name| self.shape_of(name))
                .collect::<Option<Vec<_>>>()
                .and_then(|shapes| broadcast(&shapes)),
            "Flatten" => first.and_then(|x| {
                let at = axis(int_attribute(node, "axis", 1), x.len()).min(x.len());
                Some(vec![product(&x[..at])?, product(&x[at..])?])
            }),
            "Gemm" => first.and_then(|x| {
                let b = self.initializer_dims.get(node.input.get(1)?)?;
                let out = if int_attribute(node, "transB", 0) != 0 {
                    b.first()?
                } else {
                    b.get(1)?
                };
                Some(vec![*x.first()?, Dim::Fixed(*out as i64)])
            }),
            "MatMul" => first.and_then(|mut x| {
                let b = self.initializer_dims.get(node.input.get(1)?)?;
                *x.last_mut()? = Dim::Fixed(*b.last()? as i64);
                Some(x)
            }),
            "Reshape" => first.and_then(|x| {
                let target = self.value(node, 1)?;
                match target.all_fixed() {
                    Some(target) => reshaped(&x, &target),
                    None => self
                        .batch_copying_target(node)
                        .and_then(|t| reshaped(&x, &t)),
                }
            }),
            "Transpose" => first.and_then(|x| {
                let perm = ints_attribute(node, "perm")
                    .unwrap_or_else(|| (0..x.len() as i64).rev().collect());
                perm.iter().map(|&p| x.get(p as usize).copied()).collect()
            }),
            "Concat" => node
                .input
                .iter()
                .map(|name| self.shape_of(name))
                .collect::<Option<Vec<_>>>()
                .and_then(|shapes| {
                    let at = axis(int_attribute(node, "axis", 0), shapes.first()?.len());
                    let mut out = shapes[0].clone();
                    let total = shapes
                        .iter()
                        .try_fold(0, |sum, s| Some(sum + s.get(at)?.fixed()?));
                    *out.get_mut(at)? = Dim::Fixed(total?);
                    Some(out)
                }),
            "Pad" => first.and_then(|x| {
                let pads = ints_attribute(node, "pads")
                    .or_else(|| self.value(node, 1).and_then(Known::all_fixed))?;
                let rank = x.len();
                (pads.len() == 2 * rank).then_some(())?;
                x.iter()
                    .enumerate()
                    .map(|(at, &d)| match d {
                        Dim::Fixed(v) => Some(Dim::Fixed(v + pads[at] + pads[at + rank])),
                        Dim::Batch if pads[at] == 0 && pads[at + rank] == 0 => Some(Dim::Batch),
                        Dim::Batch => None,
                    })
                    .collect()
            }),
            "Unsqueeze" | "Squeeze" => first.and_then(|x| {
                let axes = ints_attribute(node, "axes")
                    .or_else(|| self.value(node, 1).and_then(Known::all_fixed));
                squeezed(&node.op_type, x, axes.as_deref(), Dim::Fixed(1))
            }),
            // Element-wise, normalisations and everything else that keeps its input's shape.
            "Relu"
            | "Sigmoid"
            | "Clip"
            | "HardSigmoid"
            | "HardSwish"
            | "Erf"
            | "Tanh"
            | "Sqrt"
            | "Neg"
            | "Exp"
            | "Gelu"
            | "LeakyRelu"
            | "Elu"
            | "Selu"
            | "Softplus"
            | "Mish"
            | "Softmax"
            | "LogSoftmax"
            | "BatchNormalization"
            | "LayerNormalization"
            | "InstanceNormalization"
            | "Dropout"
            | "Identity"
            | "Cast"
            | "Reciprocal"
            | "Abs" => first,
            _ => None,
        };
        let mut outputs = vec![shape];
        outputs.resize(node.output.len(), None);
        outputs
    }
}

/// An ONNX axis or index, negative ones counted from the end of `len`: its position
/// (`usize::MAX` when still negative, which every lookup then refuses).
pub(super) fn axis(value: i64, len: usize) -> usize {
    let resolved = if value < 0 { value + len as i64 } else { value };
    usize::try_from(resolved).unwrap_or(usize::MAX)
}

/// The shape after Unsqueeze (a 1 inserted at each of `axes` of the output) or Squeeze (each of
/// `axes` removed, or every 1 when there are none), for shapes of dimensions or of sizes.
fn squeezed<T: Copy + PartialEq>(
    op: &str,
    mut shape: Vec<T>,
    axes: Option<&[i64]>,
    one: T,
) -> Option<Vec<T>> {
    let unsqueeze = op == "Unsqueeze";
    let Some(axes) = axes else {
        shape.retain(|&d| d != one);
        return (!unsqueeze).then_some(shape);
    };
    let rank = if unsqueeze {
        shape.len() + axes.len()
    } else {
        shape.len()
    };
    let mut axes: Vec<usize> = axes.iter().map(|&a| axis(a, rank)).collect();
    axes.sort_unstable();
    if axes.iter().any(|&a| a >= rank) {
        return None;
    }
    if unsqueeze {
        for at in axes {
            shape.insert(at, one);
        }
    } else {
        for at in axes.into_iter().rev() {
            shape.remove(at);
        }
    }
    Some(shape)
}

/// `a op b` on shape values; the batch size survives only multiplication or division by 1.
fn arithmetic(op: &str, a: Dim, b: Dim) -> Option<Dim> {
    match (a, b) {
        (Dim::Fixed(a), Dim::Fixed(b)) => Some(Dim::Fixed(match op {
            "Add" => a + b,
            "Sub" => a - b,
            "Mul" => a * b,
            // ONNX integer division truncates toward zero, as Rust's does.
            _ => a.checked_div(b)?,
        })),
        (Dim::Batch, Dim::Fixed(1)) if op == "Mul" || op == "Div" => Some(Dim::Batch),
        (Dim::Fixed(1), Dim::Batch) if op == "Mul" => Some(Dim::Batch),
        _ => None,
    }
}

/// Python-style slicing of a 1-D value, as ONNX Slice defines it (clamped, any step).
pub(super) fn slice(values: &[Dim], start: i64, end: i64, step: i64) -> Option<Vec<Dim>> {
    let len = values.len() as i64;
    if step == 0 {
        return None;
    }
    // Kept signed: slicing clamps out-of-range bounds instead of refusing them.
    let resolve = |v: i64, low: i64, high: i64| {
        let v = if v < 0 { v + len } else { v };
        v.clamp(low, high)
    };
    let mut out = Vec::new();
    if step > 0 {
        let (mut at, end) = (resolve(start, 0, len), resolve(end, 0, len));
        while at < end {
            out.push(values[at as usize]);
            at += step;
        }
    } else {
        let (mut at, end) = (resolve(start, -1, len - 1), resolve(end, -1, len - 1));
        while at > end {
            out.push(values[at as usize]);
            at += step;
        }
    }
    Some(out)
}

/// The product of some dimensions: known unless it multiplies the batch size by more than 1.
fn product(dims: &[Dim]) -> Option<Dim> {
    dims.iter()
        .try_fold(Dim::Fixed(1), |p, &d| arithmetic("Mul", p, d))
}

/// The shape a Reshape to `target` gives `input` (ONNX rules: `0` copies, `-1` is inferred).
pub(super) fn reshaped(input: &[Dim], target: &[i64]) -> Option<Vec<Dim>> {
    let mut out: Vec<Option<Dim>> = target
        .iter()
        .enumerate()
        .map(|(at, &t)| match t {
            0 => input.get(at).copied(),
            -1 => None,
            t => Some(Dim::Fixed(t)),
        })
        .collect();
    let inferred = target.iter().filter(|&&t| t == -1).count();
    if inferred > 1 {
        return None;
    }
    if inferred == 1 {
        // Fixed parts cancel; the batch size, if the input has it, goes where -1 is unless
        // a copied 0 already took it.
        let fixed = |dims: &mut dyn Iterator<Item = Dim>| -> (i64, usize) {
            dims.fold((1, 0), |(p, b), d| match d {
                Dim::Fixed(v) => (p * v, b),
                Dim::Batch => (p, b + 1),
            })
        };
        let (total, batch_in) = fixed(&mut input.iter().copied());
        let (known, batch_out) = fixed(&mut out.iter().flatten().copied());
        if known == 0 || total % known != 0 || batch_out > batch_in {
            return None;
        }
        let rest = total / known;
        let value = match batch_in - batch_out {
            0 => Dim::Fixed(rest),
            1 if rest == 1 => Dim::Batch,
            _ => return None,
        };
        *out.iter_mut().find(|d| d.is_none())? = Some(value);
    }
    out.into_iter().collect()
}

/// NumPy-style broadcasting of several shapes.
pub(super) fn broadcast(shapes: &[Vec<Dim>]) -> Option<Vec<Dim>> {
    let rank = shapes.iter().map(Vec::len).max()?;
    (0..rank)
        .map(|axis| {
            let mut out = Dim::Fixed(1);
            for shape in shapes {
                let Some(at) = (axis + shape.len()).checked_sub(rank) else {
                    continue;
                };
                match (out, shape[at]) {
                    (_, Dim::Fixed(1)) => {}
                    (Dim::Fixed(1), d) => out = d,
                    (a, b) if a == b => {}
                    _ => return None,
                }
            }
            Some(out)
        })
        .collect()
}

/// Output shape of a convolution or pooling window over `x` (`[N, C, H, W]`).
fn window_output(
    node: &NodeProto,
    x: &[Dim],
    channels: Dim,
    weight: Option<&Vec<usize>>,
) -> Option<Vec<Dim>> {
    let [n, _, h, w] = x else { return None };
    let kernel = ints_attribute(node, "kernel_shape")
        .or_else(|| weight.map(|w| w[2..].iter().map(|&d| d as i64).collect()))?;
    let strides = ints_attribute(node, "strides").unwrap_or_else(|| vec![1, 1]);
    let dilations = ints_attribute(node, "dilations").unwrap_or_else(|| vec![1, 1]);
    let pads = ints_attribute(node, "pads").unwrap_or_else(|| vec![0; 4]);
    let ceil = int_attribute(node, "ceil_mode", 0) != 0;
    let auto_pad = attribute(node, "auto_pad")
        .map(|a| String::from_utf8_lossy(&a.s).into_owned())
        .unwrap_or_default();
    let along = |axis: usize, size: i64| -> Option<Dim> {
        let stride = *strides.get(axis)?;
        if auto_pad.starts_with("SAME") {
            return Some(Dim::Fixed((size + stride - 1) / stride));
        }
        let span = (kernel.get(axis)? - 1) * dilations.get(axis)? + 1;
        let padded = size + pads.get(axis)? + pads.get(axis + 2)?;
        let steps = padded - span;
        let out = if ceil {
            let mut out = (steps + stride - 1) / stride + 1;
            if (out - 1) * stride >= size + pads[axis] {
                out -= 1;
            }
            out
        } else {
            steps / stride + 1
        };
        (steps >= 0).then_some(Dim::Fixed(out))
    };
    Some(vec![
        *n,
        channels,
        along(0, h.fixed()?)?,
        along(1, w.fixed()?)?,
    ])
}
