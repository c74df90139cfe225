//! Weights stored as int8 behind `DequantizeLinear` (the weight-only int8
//! variants, and the weights of the QDQ model) are dequantized once, on the
//! ONNX graph, before tract builds its plans.
//!
//! tract would fold these constant subgraphs itself, but the plans it builds
//! from them ran 7–10 % slower than the same model stored in f32 (measured
//! with `slimserve bench`). Folding first gives those variants the fp32
//! model's plan: the file stays 4× smaller and the speed is full's. The
//! arithmetic is tract's own: `(f32(q) - f32(zero_point)) * scale`.

use super::tract::f32_values;
use anyhow::{bail, Context, Result};
use std::collections::{HashMap, HashSet};
use tract_onnx::pb::{tensor_proto::DataType, ModelProto, NodeProto, TensorProto};
use tract_onnx::prelude::*;

/// Replace every `DequantizeLinear` whose inputs are all initializers by an
/// f32 initializer holding its output; drop the initializers nothing reads
/// any more. Returns how many nodes were folded.
pub fn fold_constant_dequantize(proto: &mut ModelProto) -> Result<usize> {
    let Some(graph) = proto.graph.as_mut() else {
        return Ok(0);
    };
    let resolver = tract_onnx::data_resolver::default();
    let inits: HashMap<&str, &TensorProto> = graph
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    let mut folded = Vec::new();
    let mut kept = Vec::with_capacity(graph.node.len());
    for node in &graph.node {
        let constant = node.op_type == "DequantizeLinear"
            && node
                .input
                .iter()
                .all(|i| i.is_empty() || inits.contains_key(i.as_str()));
        if !constant {
            kept.push(node.clone());
            continue;
        }
        let get = |i: usize| -> Result<Option<Tensor>> {
            match node.input.get(i).filter(|n| !n.is_empty()) {
                None => Ok(None),
                Some(n) => Ok(Some(tract_onnx::tensor::load_tensor(
                    &*resolver,
                    inits[n.as_str()],
                    None,
                )?)),
            }
        };
        let x = get(0)?.context("DequantizeLinear without input")?;
        let scale = get(1)?.context("DequantizeLinear without scale")?;
        let values = dequantize(node, &x, &scale, get(2)?.as_ref())
            .with_context(|| format!("folding DequantizeLinear {}", node.name))?;
        folded.push(TensorProto {
            name: node.output[0].clone(),
            dims: x.shape().iter().map(|&d| d as i64).collect(),
            data_type: DataType::Float as i32,
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
    }
    let count = folded.len();
    graph.node = kept;
    graph.initializer.extend(folded);
    let used: HashSet<String> = graph
        .node
        .iter()
        .flat_map(|n| n.input.iter().cloned())
        .chain(graph.output.iter().map(|o| o.name.clone()))
        .collect();
    graph.initializer.retain(|t| used.contains(&t.name));
    Ok(count)
}

/// `(x - zero_point) * scale`, per tensor or along the node's `axis`.
fn dequantize(
    node: &NodeProto,
    x: &Tensor,
    scale: &Tensor,
    zero_point: Option<&Tensor>,
) -> Result<Vec<f32>> {
    if node.attribute.iter().any(|a| a.name == "block_size") {
        bail!("blocked dequantization is not supported");
    }
    let rank = x.rank() as i64;
    let axis = node
        .attribute
        .iter()
        .find(|a| a.name == "axis")
        .map_or(1, |a| a.i);
    let axis = if axis < 0 { axis + rank } else { axis };
    let q = f32_values(x)?;
    let s = f32_values(scale)?;
    let zp = match zero_point {
        Some(z) => f32_values(z)?,
        None => vec![0.0],
    };
    let channels = if s.len() == 1 && zp.len() == 1 {
        1
    } else {
        if !(0..rank).contains(&axis) {
            bail!("axis {axis} out of range for rank {rank}");
        }
        x.shape()[axis as usize]
    };
    for (what, n) in [("scale", s.len()), ("zero point", zp.len())] {
        if n != 1 && n != channels {
            bail!("{what} has {n} values for {channels} channels");
        }
    }
    // element i lies in channel (i / inner) % channels along `axis`
    let inner: usize = if channels == 1 {
        1
    } else {
        x.shape()[axis as usize + 1..].iter().product()
    };
    Ok(q.iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = (i / inner.max(1)) % channels;
            let z = zp[if zp.len() == 1 { 0 } else { c }];
            let sc = s[if s.len() == 1 { 0 } else { c }];
            (v - z) * sc
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::pb::{AttributeProto, GraphProto, ValueInfoProto};

    fn int8(name: &str, dims: &[i64], v: &[i8]) -> TensorProto {
        TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: DataType::Int8 as i32,
            raw_data: v.iter().map(|&b| b as u8).collect(),
            ..Default::default()
        }
    }

    fn f32s(name: &str, dims: &[i64], v: &[f32]) -> TensorProto {
        TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: DataType::Float as i32,
            float_data: v.to_vec(),
            ..Default::default()
        }
    }

    fn dq(inputs: &[&str], out: &str, axis: Option<i64>) -> NodeProto {
        NodeProto {
            op_type: "DequantizeLinear".into(),
            name: out.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.into()],
            attribute: axis
                .map(|i| AttributeProto {
                    name: "axis".into(),
                    i,
                    r#type: 2,
                    ..Default::default()
                })
                .into_iter()
                .collect(),
            ..Default::default()
        }
    }

    fn model(nodes: Vec<NodeProto>, inits: Vec<TensorProto>, outputs: &[&str]) -> ModelProto {
        ModelProto {
            graph: Some(GraphProto {
                node: nodes,
                initializer: inits,
                output: outputs
                    .iter()
                    .map(|n| ValueInfoProto {
                        name: n.to_string(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn values(t: &TensorProto) -> Vec<f32> {
        t.raw_data
            .chunks(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    #[test]
    fn per_channel_along_axis_0_with_zero_points() {
        let mut m = model(
            vec![dq(&["q", "s", "z"], "w", Some(0))],
            vec![
                int8("q", &[2, 3], &[-1, 0, 1, 2, 3, 4]),
                f32s("s", &[2], &[0.5, 2.0]),
                int8("z", &[2], &[1, 0]),
            ],
            &["w"],
        );
        assert_eq!(fold_constant_dequantize(&mut m).unwrap(), 1);
        let g = m.graph.unwrap();
        assert!(g.node.is_empty());
        // the int8 inputs are gone, the f32 weights took their place
        assert_eq!(g.initializer.len(), 1);
        let w = &g.initializer[0];
        assert_eq!((w.name.as_str(), w.dims.as_slice()), ("w", &[2i64, 3][..]));
        assert_eq!(values(w), vec![-1.0, -0.5, 0.0, 4.0, 6.0, 8.0]);
    }

    #[test]
    fn per_channel_along_the_last_axis_and_per_tensor() {
        let mut m = model(
            vec![
                dq(&["q", "s"], "a", Some(-1)),
                dq(&["q", "t", ""], "b", None),
            ],
            vec![
                int8("q", &[2, 2], &[1, 2, 3, 4]),
                f32s("s", &[2], &[1.0, 10.0]),
                f32s("t", &[], &[0.25]),
            ],
            &["a", "b"],
        );
        assert_eq!(fold_constant_dequantize(&mut m).unwrap(), 2);
        let g = m.graph.unwrap();
        let by_name = |n: &str| values(g.initializer.iter().find(|t| t.name == n).unwrap());
        assert_eq!(by_name("a"), vec![1.0, 20.0, 3.0, 40.0]);
        assert_eq!(by_name("b"), vec![0.25, 0.5, 0.75, 1.0]);
    }

    #[test]
    fn activations_are_left_alone() {
        // the input of this node is computed at run time, not an initializer
        let mut m = model(
            vec![dq(&["x", "s"], "y", None)],
            vec![f32s("s", &[], &[0.5])],
            &["y"],
        );
        assert_eq!(fold_constant_dequantize(&mut m).unwrap(), 0);
        let g = m.graph.unwrap();
        assert_eq!(g.node.len(), 1);
        assert_eq!(g.initializer.len(), 1);
    }

    #[test]
    fn a_scale_that_does_not_fit_the_channels_is_an_error() {
        let mut m = model(
            vec![dq(&["q", "s"], "w", Some(0))],
            vec![
                int8("q", &[2, 2], &[1, 2, 3, 4]),
                f32s("s", &[3], &[1.0; 3]),
            ],
            &["w"],
        );
        assert!(fold_constant_dequantize(&mut m).is_err());
    }

    fn bundled(file: &str) -> ModelProto {
        let path = crate::manifest::bundled_models_dir().join(file);
        tract_onnx::onnx().proto_model_for_path(path).unwrap()
    }

    fn count(m: &ModelProto, op: &str) -> usize {
        let g = m.graph.as_ref().unwrap();
        g.node.iter().filter(|n| n.op_type == op).count()
    }

    #[test]
    fn the_weight_only_model_becomes_a_float_graph() {
        let mut m = bundled("efficientnet_lite0_int8_weights.onnx");
        let before = count(&m, "DequantizeLinear");
        assert!(before > 0);
        assert_eq!(fold_constant_dequantize(&mut m).unwrap(), before);
        assert_eq!(count(&m, "DequantizeLinear"), 0);
        let g = m.graph.unwrap();
        assert!(g
            .initializer
            .iter()
            .all(|t| t.data_type == DataType::Float as i32));
    }

    #[test]
    fn the_qdq_model_keeps_its_activation_quantization() {
        let mut m = bundled("efficientnet_lite0_int8_qdq.onnx");
        let (dq, q) = (count(&m, "DequantizeLinear"), count(&m, "QuantizeLinear"));
        let folded = fold_constant_dequantize(&mut m).unwrap();
        assert!(folded > 0);
        // every QuantizeLinear (activations) still feeds its DequantizeLinear
        assert_eq!(count(&m, "QuantizeLinear"), q);
        assert_eq!(count(&m, "DequantizeLinear"), dq - folded);
        assert!(dq - folded >= q);
    }
}
