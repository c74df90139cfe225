//! A variant that runs a model at a lower (or higher) resolution than the
//! crop the server preprocesses: a bilinear `Resize` is put in front of the
//! graph, on the ONNX proto, before tract or the MAC count sees it.
//!
//! This is how the ladder's resolution rungs share one file with `full`:
//! every variant still takes the same preprocessed crop (an image is decoded
//! and resized once, whichever rung answers it), and the rung's own side is
//! reached inside its plan, for a few hundredths of a millisecond. The
//! arithmetic is ONNX `Resize` (opset 11+): `linear`, `half_pixel`, no
//! antialiasing, constant scales — what `models/common.py:with_resize` builds
//! for the reference logits, and what the pruned model's graph starts with.

use anyhow::{bail, Context, Result};
use tract_onnx::pb::{
    attribute_proto::AttributeType, tensor_proto::DataType, AttributeProto, ModelProto, NodeProto,
    TensorProto,
};

/// Name of the tensor the inserted `Resize` writes (what the model's nodes
/// read instead of its input).
const RESIZED: &str = "slimserve_resized_input";

/// The scale that takes `from` pixels to `to`, as f32, such that ONNX's
/// `floor(from * scale)` gives exactly `to`: `to / from`, or the next f32
/// up where rounding left the product just below `to` (224 → 117, say).
pub fn scale(from: u32, to: u32) -> Result<f32> {
    if from == 0 || to == 0 {
        bail!("cannot resize {from} pixels to {to}");
    }
    let s = to as f32 / from as f32;
    let exact = |s: f32| (from as f32 * s).floor() == to as f32;
    match [s, s.next_up()].into_iter().find(|s| exact(*s)) {
        Some(s) => Ok(s),
        None => bail!("no f32 scale takes {from} pixels to exactly {to}"),
    }
}

/// The model's default-domain operator set version.
fn opset(proto: &ModelProto) -> i64 {
    proto
        .opset_import
        .iter()
        .filter(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .max()
        .unwrap_or(0)
}

fn string_attr(name: &str, value: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::String as i32,
        s: value.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// Make the graph's input `input` (of side `from`, in `layout` NCHW when
/// `nchw`, else NHWC) be resized to `to` × `to` before anything reads it.
/// The graph's input keeps its name and declared shape.
pub fn prepend_resize(
    proto: &mut ModelProto,
    input: &str,
    nchw: bool,
    from: u32,
    to: u32,
) -> Result<()> {
    let version = opset(proto);
    if version < 11 {
        bail!("the model's operator set is {version}; a resize rung needs 11 or later (Resize with scales)");
    }
    let s = scale(from, to)?;
    let graph = proto.graph.as_mut().context("the model has no graph")?;
    if !graph.input.iter().any(|i| i.name == input) {
        bail!("the model has no input named '{input}'");
    }
    if graph
        .node
        .iter()
        .any(|n| n.output.iter().any(|o| o == RESIZED))
    {
        bail!("the model already has a tensor named {RESIZED}");
    }
    let mut readers = 0;
    for node in &mut graph.node {
        for i in node.input.iter_mut().filter(|i| *i == input) {
            *i = RESIZED.into();
            readers += 1;
        }
    }
    if readers == 0 {
        bail!("no node of the model reads its input '{input}'");
    }
    if graph.output.iter().any(|o| o.name == input) {
        bail!("the model's input '{input}' is also an output");
    }
    let scales = if nchw {
        [1.0, 1.0, s, s]
    } else {
        [1.0, s, s, 1.0]
    };
    let scales_name = format!("{RESIZED}_scales");
    graph.initializer.push(TensorProto {
        name: scales_name.clone(),
        dims: vec![4],
        data_type: DataType::Float as i32,
        raw_data: scales.iter().flat_map(|v: &f32| v.to_le_bytes()).collect(),
        ..Default::default()
    });
    graph.node.insert(
        0,
        NodeProto {
            name: "slimserve_resize".into(),
            op_type: "Resize".into(),
            // X, roi (none), scales
            input: vec![input.into(), String::new(), scales_name],
            output: vec![RESIZED.into()],
            attribute: vec![
                string_attr("mode", "linear"),
                string_attr("coordinate_transformation_mode", "half_pixel"),
            ],
            ..Default::default()
        },
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::prelude::*;

    #[test]
    fn scales_give_exact_sides() {
        for (from, to) in [
            (224, 192),
            (224, 160),
            (224, 128),
            (224, 240),
            (224, 96),
            (224, 117),
        ] {
            let s = scale(from, to).unwrap();
            assert_eq!((from as f32 * s).floor(), to as f32, "{from}->{to}");
        }
        assert!(scale(224, 0).is_err());
        assert!(scale(0, 10).is_err());
    }

    fn bundled_full() -> ModelProto {
        let dir = crate::manifest::bundled_models_dir();
        super::super::tract::load_proto(&dir.join("efficientnet_lite0_fp32.onnx")).unwrap()
    }

    #[test]
    fn the_rung_runs_at_its_side_behind_the_same_input() {
        let mut proto = bundled_full();
        prepend_resize(&mut proto, "input", true, 224, 160).unwrap();
        let model = tract_onnx::onnx()
            .with_ignore_output_shapes(true)
            .with_ignore_value_info(true)
            .model_for_proto_model(&proto)
            .unwrap()
            .with_input_fact(0, f32::fact([1, 3, 224, 224]).into())
            .unwrap()
            .into_typed()
            .unwrap();
        // the stem conv (stride 2) now sees 160 x 160: its output is 80 x 80
        let stem = model
            .nodes()
            .iter()
            .find(|n| n.op.name().contains("Conv"))
            .unwrap();
        let fact = model.outlet_fact(stem.id.into()).unwrap();
        assert_eq!(fact.shape.as_concrete().unwrap()[2..], [80, 80]);
        let out = model.output_fact(0).unwrap();
        assert_eq!(out.shape.as_concrete().unwrap(), [1, 1000]);
    }

    #[test]
    fn bad_requests_are_errors() {
        let mut proto = bundled_full();
        assert!(prepend_resize(&mut proto, "nope", true, 224, 160).is_err());
        assert!(prepend_resize(&mut proto, "input", true, 224, 0).is_err());
        prepend_resize(&mut proto, "input", true, 224, 160).unwrap();
        assert!(
            prepend_resize(&mut proto, "input", true, 224, 128).is_err(),
            "twice"
        );
        let mut old = bundled_full();
        old.opset_import.iter_mut().for_each(|o| o.version = 9);
        assert!(prepend_resize(&mut old, "input", true, 224, 160).is_err());
    }
}
