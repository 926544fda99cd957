//! The ONNX file rewritten before burn's front end reads it, so that what exporters write for a
//! fixed input size imports as the plain operators the engines run.
//!
//! `torch.onnx.export` leaves shape arithmetic in the graph (`x.view(x.size(0), -1)` becomes
//! Shape → Gather → Unsqueeze → Concat → Reshape), TF-style "SAME" padding becomes a Pad before
//! each convolution, and the `dynamo` exporter writes global pooling as ReduceMean and
//! flattening as a Reshape to `[-1, C]`. For a classifier fed images of one size, all of that is
//! constant except the batch size. This module computes every tensor's shape for that size with
//! the batch kept symbolic ([`shapes`]), evaluates the shape arithmetic, and rewrites the
//! patterns ([`patterns`]) and ConvNeXt-style channels-last blocks ([`channels_last`]) on the
//! protobuf itself, which onnx-ir re-exports for this purpose.
//! Nothing is approximated: a rewrite either is exact for every batch size or is not made.

mod channels_last;
mod patterns;
mod shapes;

#[cfg(test)]
use shapes::{Dim, broadcast, reshaped, slice};

use std::collections::{HashMap, HashSet};
use std::path::Path;

use onnx_ir::{AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto};

/// ONNX `TensorProto.DataType` values this module reads or writes.
pub(super) mod data_type {
    pub const FLOAT: i32 = 1;
    pub const INT32: i32 = 6;
    pub const INT64: i32 = 7;
}

/// What the rewrite did, for the import's report and the tests.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rewrites {
    /// Nodes of shape arithmetic evaluated away.
    pub folded: usize,
    /// Pad nodes merged into the convolution or pooling after them.
    pub pads_merged: usize,
    /// ReduceMean nodes over the spatial axes turned into global average pooling.
    pub means_pooled: usize,
    /// Reshapes recognised as flattening a feature map.
    pub flattens: usize,
    /// Channels-last blocks (ConvNeXt's) rewritten channels-first.
    pub channels_last_blocks: usize,
    /// Weights read from external data files into the model.
    pub external_inlined: usize,
}

impl std::fmt::Display for Rewrites {
    /// What changed, in words, e.g. "4 shape-arithmetic nodes folded, 16 pads merged".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = [
            (self.folded, "shape-arithmetic nodes evaluated"),
            (self.pads_merged, "Pad nodes merged into convolutions"),
            (self.means_pooled, "ReduceMean nodes read as global pooling"),
            (self.flattens, "Reshapes read as flattening"),
            (
                self.channels_last_blocks,
                "channels-last blocks rewritten channels-first",
            ),
            (
                self.external_inlined,
                "weights read from an external data file",
            ),
        ]
        .into_iter()
        .filter(|(count, _)| *count > 0)
        .map(|(count, what)| format!("{count} {what}"))
        .collect();
        if parts.is_empty() {
            f.write_str("nothing rewritten")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

impl Rewrites {
    /// Whether the file changed (and must be handed to onnx-ir as rewritten bytes).
    pub fn any(&self) -> bool {
        *self != Self::default()
    }
}

/// Rewrites `model` for input images of `image_size` × `image_size`; `dir` is where external
/// weight files are looked up. Returns what was rewritten, or why the file cannot be read.
pub(super) fn prepare(
    model: &mut ModelProto,
    dir: &Path,
    image_size: usize,
) -> Result<Rewrites, String> {
    let mut rewrites = Rewrites {
        external_inlined: inline_external_data(model, dir)?,
        ..Rewrites::default()
    };
    let graph = model.graph.mut_or_insert_default();
    let (folded, shapes) = shapes::fold(graph, image_size)?;
    rewrites.folded = folded;
    patterns::rewrite(graph, &shapes, &mut rewrites);
    rewrites.channels_last_blocks = channels_last::rewrite(graph, &shapes);
    remove_dead_nodes(graph);
    Ok(rewrites)
}

/// Reads every initializer stored in an external file (the `dynamo` exporter's default for
/// `torch.onnx.export`) into the model, so that the file can be rewritten and copied alone.
fn inline_external_data(model: &mut ModelProto, dir: &Path) -> Result<usize, String> {
    const EXTERNAL: i32 = 1;
    let mut files: HashMap<String, Vec<u8>> = HashMap::new();
    let mut inlined = 0;
    for tensor in &mut model.graph.mut_or_insert_default().initializer {
        if tensor.data_location.value() != EXTERNAL {
            continue;
        }
        let entry = |key: &str| {
            tensor
                .external_data
                .iter()
                .find(|e| e.key == key)
                .map(|e| e.value.clone())
        };
        let location = entry("location")
            .ok_or_else(|| format!("weight '{}' is external but names no file", tensor.name))?;
        let number = |key: &str| -> Result<Option<usize>, String> {
            entry(key)
                .map(|v| v.parse::<usize>())
                .transpose()
                .map_err(|e| format!("weight '{}': bad {key}: {e}", tensor.name))
        };
        let (offset, length) = (number("offset")?.unwrap_or(0), number("length")?);
        if !files.contains_key(&location) {
            let path = dir.join(&location);
            let bytes = std::fs::read(&path).map_err(|e| {
                format!(
                    "cannot read the external weights file {} ({e}); keep it beside the model",
                    path.display()
                )
            })?;
            files.insert(location.clone(), bytes);
        }
        let bytes = &files[&location];
        let end = length.map_or(bytes.len(), |l| offset + l);
        let data = bytes.get(offset..end).ok_or_else(|| {
            format!(
                "weight '{}' lies at bytes {offset}..{end} of {location}, which has {}",
                tensor.name,
                bytes.len()
            )
        })?;
        tensor.raw_data = bytes::Bytes::copy_from_slice(data);
        tensor.external_data.clear();
        tensor.data_location = protobuf::EnumOrUnknown::from_i32(0);
        inlined += 1;
    }
    Ok(inlined)
}

/// Drops nodes none of whose outputs is read by another node or is the graph output, and the
/// initializers no node reads any more (with their graph-input entries).
fn remove_dead_nodes(graph: &mut GraphProto) {
    let mut live: HashSet<String> = graph.output.iter().map(|o| o.name.clone()).collect();
    let mut keep = vec![false; graph.node.len()];
    for (index, node) in graph.node.iter().enumerate().rev() {
        if node.output.iter().any(|o| live.contains(o)) {
            keep[index] = true;
            live.extend(node.input.iter().filter(|i| !i.is_empty()).cloned());
        }
    }
    keep_nodes(graph, &keep);
    let dropped: HashSet<String> = graph
        .initializer
        .iter()
        .filter(|t| !live.contains(&t.name))
        .map(|t| t.name.clone())
        .collect();
    graph.initializer.retain(|t| !dropped.contains(&t.name));
    // Older exporters list weights among the graph inputs too: a dropped one must not be
    // left there looking like a second input.
    graph.input.retain(|i| !dropped.contains(&i.name));
}

/// Keeps the nodes whose entry in `keep` (one per node, in order) is true.
pub(super) fn keep_nodes(graph: &mut GraphProto, keep: &[bool]) {
    let mut kept = keep.iter();
    graph.node.retain(|_| kept.next().copied().unwrap_or(true));
}

/// Points a Reshape at a new `int64` target, an initializer named after its output plus
/// `suffix`, read with ONNX's default meaning of `0` ("keep this dimension of the input").
pub(super) fn retarget_reshape(
    initializers: &mut Vec<TensorProto>,
    node: &mut NodeProto,
    suffix: &str,
    target: Vec<i64>,
) {
    let name = format!("{}{suffix}", node.output[0]);
    initializers.push(int64_tensor(&name, &[target.len()], target));
    node.input[1] = name;
    set_int(node, "allowzero", 0);
}

/// An attribute of `node`, if set.
pub(super) fn attribute<'n>(node: &'n NodeProto, name: &str) -> Option<&'n AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

/// An integer attribute, or `default`.
pub(super) fn int_attribute(node: &NodeProto, name: &str, default: i64) -> i64 {
    attribute(node, name).map_or(default, |a| a.i)
}

/// An integer-list attribute, if set.
pub(super) fn ints_attribute(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attribute(node, name).map(|a| a.ints.clone())
}

/// Sets (or replaces) an integer-list attribute.
pub(super) fn set_ints(node: &mut NodeProto, name: &str, values: Vec<i64>) {
    node.attribute.retain(|a| a.name != name);
    let mut attribute = AttributeProto::new();
    attribute.name = name.to_string();
    attribute.type_ = protobuf::EnumOrUnknown::new(onnx_ir::AttributeType::INTS);
    attribute.ints = values;
    node.attribute.push(attribute);
}

/// Sets (or replaces) an integer attribute.
pub(super) fn set_int(node: &mut NodeProto, name: &str, value: i64) {
    node.attribute.retain(|a| a.name != name);
    let mut attribute = AttributeProto::new();
    attribute.name = name.to_string();
    attribute.type_ = protobuf::EnumOrUnknown::new(onnx_ir::AttributeType::INT);
    attribute.i = value;
    node.attribute.push(attribute);
}

/// An `int64` initializer.
pub(super) fn int64_tensor(name: &str, dims: &[usize], values: Vec<i64>) -> TensorProto {
    let mut tensor = TensorProto::new();
    tensor.name = name.to_string();
    tensor.data_type = data_type::INT64;
    tensor.dims = dims.iter().map(|&d| d as i64).collect();
    tensor.int64_data = values;
    tensor
}

/// The integer values of a tensor (`int64` or `int32`), if it has that type.
pub(super) fn int_values(tensor: &TensorProto) -> Option<Vec<i64>> {
    let raw = &tensor.raw_data;
    match tensor.data_type {
        data_type::INT64 if !raw.is_empty() => Some(
            raw.chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect(),
        ),
        data_type::INT64 => Some(tensor.int64_data.clone()),
        data_type::INT32 if !raw.is_empty() => Some(
            raw.chunks_exact(4)
                .map(|b| i64::from(i32::from_le_bytes(b.try_into().expect("4 bytes"))))
                .collect(),
        ),
        data_type::INT32 => Some(tensor.int32_data.iter().map(|&v| i64::from(v)).collect()),
        _ => None,
    }
}

/// The float values of a small `float` tensor (a Pad's constant value).
pub(super) fn float_values(tensor: &TensorProto) -> Option<Vec<f32>> {
    match tensor.data_type {
        data_type::FLOAT if !tensor.raw_data.is_empty() => Some(
            tensor
                .raw_data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                .collect(),
        ),
        data_type::FLOAT => Some(tensor.float_data.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
