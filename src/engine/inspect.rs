//! What can be read or computed from an ONNX image classifier without a
//! manifest: its input and output names and shapes, parameter and MAC
//! counts, file size and digest. `Manifest` fills and checks its fields from
//! this; `slimserve manifest init` writes them out.

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::path::Path;
use tract_onnx::pb::tensor_shape_proto::dimension::Value as DimValue;
use tract_onnx::pb::type_proto::Value as TypeValue;
use tract_onnx::pb::{ModelProto, ValueInfoProto};
use tract_onnx::prelude::*;

/// One dimension of a graph input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Fixed(i64),
    /// A named (`N`, `batch`) or unnamed dynamic dimension.
    Symbolic(String),
}

impl Dim {
    pub fn fixed(&self) -> Option<i64> {
        match self {
            Dim::Fixed(v) => Some(*v),
            Dim::Symbolic(_) => None,
        }
    }
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(v) => write!(f, "{v}"),
            Dim::Symbolic(s) if s.is_empty() => write!(f, "?"),
            Dim::Symbolic(s) => write!(f, "{s}"),
        }
    }
}

/// Shape as text for error messages: `[N, 3, 224, 224]`.
pub fn shape_text(dims: &[Dim]) -> String {
    let parts: Vec<String> = dims.iter().map(Dim::to_string).collect();
    format!("[{}]", parts.join(", "))
}

/// A graph input or output.
#[derive(Debug, Clone)]
pub struct Tensor {
    pub name: String,
    /// ONNX element type (1 = float).
    pub elem_type: i32,
    /// `None` when the file gives no shape.
    pub shape: Option<Vec<Dim>>,
}

/// What the file says about itself.
#[derive(Debug)]
pub struct ModelInfo {
    pub file_bytes: u64,
    pub sha256: String,
    /// Graph inputs that are not initializers, in order.
    pub inputs: Vec<Tensor>,
    pub outputs: Vec<Tensor>,
    /// Weight and bias scalars (quantization scales and zero points and
    /// scalar constants excluded), as `models/common.py:count_params` counts.
    pub params: u64,
    pub proto: ModelProto,
}

/// The ONNX element type of f32.
pub const FLOAT: i32 = 1;

fn tensor(v: &ValueInfoProto) -> Tensor {
    let (elem_type, shape) = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(TypeValue::TensorType(t)) => (
            t.elem_type,
            t.shape.as_ref().map(|s| {
                s.dim
                    .iter()
                    .map(|d| match &d.value {
                        Some(DimValue::DimValue(v)) if *v > 0 => Dim::Fixed(*v),
                        Some(DimValue::DimParam(p)) => Dim::Symbolic(p.clone()),
                        _ => Dim::Symbolic(String::new()),
                    })
                    .collect()
            }),
        ),
        None => (0, None),
    };
    Tensor {
        name: v.name.clone(),
        elem_type,
        shape,
    }
}

/// Read `path`: digest, size, graph inputs and outputs, parameter count.
pub fn inspect(path: &Path) -> Result<ModelInfo> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let sha256 = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let proto = tract_onnx::onnx()
        .proto_model_for_read(&mut &bytes[..])
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("{} is not an ONNX model", path.display()))?;
    let Some(graph) = proto.graph.as_ref() else {
        bail!("{} is not an ONNX model: it has no graph", path.display());
    };
    let init: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs = graph
        .input
        .iter()
        .filter(|i| !init.contains(i.name.as_str()))
        .map(tensor)
        .collect();
    let outputs = graph.output.iter().map(tensor).collect();
    let mut quant_params = std::collections::HashSet::new();
    for n in &graph.node {
        if n.op_type == "QuantizeLinear" || n.op_type == "DequantizeLinear" {
            quant_params.extend(n.input.iter().skip(1).map(String::as_str));
        }
    }
    let params = graph
        .initializer
        .iter()
        .filter(|t| !quant_params.contains(t.name.as_str()))
        .map(|t| t.dims.iter().product::<i64>().max(0) as u64)
        .filter(|n| *n > 1)
        .sum();
    Ok(ModelInfo {
        file_bytes: bytes.len() as u64,
        sha256,
        inputs,
        outputs,
        params,
        proto,
    })
}

/// Multiply-accumulates of one image through the convolutions and matrix
/// products (tract's cost model, with the input fixed to `input_shape`,
/// batch 1): what `models/common.py:count_macs` counts for Conv/Gemm/MatMul.
pub fn macs(proto: &ModelProto, input_shape: &[usize]) -> Result<u64> {
    let model = tract_onnx::onnx()
        .with_ignore_output_shapes(true)
        .with_ignore_value_info(true)
        .model_for_proto_model(proto)?
        .with_input_fact(0, f32::fact(input_shape).into())?
        .into_typed()?;
    macs_of(&model)
}

/// `macs` of a model already typed with its input fixed (batch 1).
pub fn macs_of(model: &tract_onnx::prelude::TypedModel) -> Result<u64> {
    let mut total: u64 = 0;
    for node in model.nodes() {
        let name = node.op.name();
        if name != "Conv" && name != "EinSum" {
            continue;
        }
        let inputs = model.node_input_facts(node.id)?;
        for (cost, n) in node.op.cost(&inputs)? {
            if matches!(cost, tract_core::ops::Cost::FMA(_)) {
                total += n.to_i64().context("symbolic MAC count")?.max(0) as u64;
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::bundled_models_dir;

    #[test]
    fn reads_names_shapes_and_counts_of_the_bundled_full_model() {
        let path = bundled_models_dir().join("efficientnet_lite0_fp32.onnx");
        let info = inspect(&path).unwrap();
        assert_eq!(info.inputs.len(), 1);
        assert_eq!(info.inputs[0].name, "input");
        assert_eq!(info.inputs[0].elem_type, FLOAT);
        let shape = info.inputs[0].shape.clone().unwrap();
        assert_eq!(
            shape[1..],
            [Dim::Fixed(3), Dim::Fixed(224), Dim::Fixed(224)]
        );
        assert!(shape[0].fixed().is_none(), "{}", shape_text(&shape));
        assert_eq!(info.outputs[0].name, "logits");
        assert_eq!(
            info.file_bytes,
            std::fs::metadata(&path).unwrap().len(),
            "file size"
        );
        assert_eq!(info.sha256.len(), 64);
    }

    #[test]
    fn not_an_onnx_file_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("slimserve-inspect-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("labels.onnx");
        std::fs::write(&path, b"tabby\ntiger cat\n").unwrap();
        let err = format!("{:#}", inspect(&path).unwrap_err());
        assert!(err.contains("labels.onnx is not an ONNX model"), "{err}");
        let err = format!("{:#}", inspect(&dir.join("missing.onnx")).unwrap_err());
        assert!(err.contains("missing.onnx"), "{err}");
    }
}
