//! A quantized (QDQ) model on integer kernels. In the ONNX graph every
//! convolution reads `DequantizeLinear(x)` and its output goes straight to
//! `QuantizeLinear`; tract runs that in f32 with the quantize / dequantize
//! passes in between (slower than the float model). Here:
//!
//! 1. [`unsign`] (typed model, before declutter): int8 activations become
//!    u8 with the zero point moved by 128 (the same values: the integer
//!    kernels multiply u8 activations by s8 weights). A `QuantizeLinear`
//!    is only moved when every reader of it is a `DequantizeLinear`.
//! 2. [`qconv`] (in `swap_convs`): `DequantizeLinear -> Conv ->
//!    QuantizeLinear` becomes one of `qops`' integer ops between two
//!    `MoveAxis`, reading and writing u8, when the weights are exactly int8
//!    times a scale per output channel (an int8 file's, dequantized at load)
//!    and both quantizations are per tensor.
//! 3. [`swap_qdq`] (decluttered model): the quantize / dequantize passes
//!    left (around the residual adds, after the stem and the head) run
//!    vectorised.

use super::packs::Packs;
use super::qops::{Dequantize, QDepthwise, QPointwise, Quantize};
use crate::engine::simd::qgemm::{QIsa, QOut, QParams};
use crate::engine::simd::{int8_scale, DwGeometry, Isa};
use tract_core::internal::*;
use tract_core::ops::cnn::conv::{Conv, KernelFormat};
use tract_core::ops::element_wise::ElementWiseOp;
use tract_core::ops::nn::DataFormat;
use tract_core::ops::quant::{DequantizeLinearF32, QuantizeLinearI8, QuantizeLinearU8};

fn quantize_i8(node: &TypedNode) -> Option<&QuantizeLinearI8> {
    node.op_as::<ElementWiseOp>()?
        .0
        .downcast_ref::<QuantizeLinearI8>()
}

fn quantize_u8(node: &TypedNode) -> Option<&QuantizeLinearU8> {
    node.op_as::<ElementWiseOp>()?
        .0
        .downcast_ref::<QuantizeLinearU8>()
}

/// Step 1: every int8 `QuantizeLinear` read only by `DequantizeLinear`s
/// becomes a u8 one with its zero point + 128, and so do its readers.
/// Returns how many were moved.
pub fn unsign(model: &mut TypedModel) -> TractResult<usize> {
    let mut moved = 0;
    for n in model.eval_order()? {
        let node = model.node(n);
        let Some(q) = quantize_i8(node) else {
            continue;
        };
        let readers: Vec<&TypedNode> = node.outputs[0]
            .successors
            .iter()
            .map(|s| model.node(s.node))
            .collect();
        let all_dq = !readers.is_empty()
            && readers.iter().all(|r| r.op_is::<DequantizeLinearF32>())
            && !model.outputs.contains(&n.into());
        if !all_dq {
            continue;
        }
        let mut patch = TypedModelPatch::default();
        let x = patch.tap_model(model, node.inputs[0])?;
        let op = QuantizeLinearU8 {
            scale: q.scale,
            zero_point: (q.zero_point as i32 + 128) as u8,
        };
        let y = patch.wire_node(&node.name, ElementWiseOp(Box::new(op), None), &[x])?[0];
        for r in readers {
            let dq = r.op_as::<DequantizeLinearF32>().context("dequantize")?;
            let op = DequantizeLinearF32 {
                scale: dq.scale,
                zero_point: dq.zero_point + 128,
            };
            let z = patch.wire_node(&r.name, op, &[y])?[0];
            patch.shunt_outside(model, r.id.into(), z)?;
        }
        patch.apply(model)?;
        moved += 1;
    }
    if moved > 0 {
        model.compact()?;
    }
    Ok(moved)
}

/// Per output channel, `q` and `scale` with `w[o][..] = q * scale[o]`
/// exactly (`w` as `cout` rows of `per` values), or `None`.
fn int8_rows(w: &[f32], cout: usize, per: usize) -> Option<(Vec<i8>, Vec<f32>)> {
    let mut q = vec![0i8; w.len()];
    let mut scales = Vec::with_capacity(cout);
    for (o, row) in w.chunks_exact(per).take(cout).enumerate() {
        let s = int8_scale(row)?;
        for (d, &v) in q[o * per..(o + 1) * per].iter_mut().zip(row) {
            *d = (v / s).round() as i8;
        }
        scales.push(s);
    }
    Some((q, scales))
}

/// Step 2: the patch putting an integer op in place of `DequantizeLinear
/// -> conv -> QuantizeLinear` around the `Conv` `node`, or `None`.
pub fn qconv(
    isa: Isa,
    qisa: QIsa,
    packs: &Packs,
    model: &TypedModel,
    node: &TypedNode,
    op: &Conv,
) -> TractResult<Option<TypedModelPatch>> {
    rule_if!(op.q_params.is_none());
    rule_if!(op.pool_spec.data_format == DataFormat::NCHW);
    rule_if!(op.kernel_fmt == KernelFormat::OIHW);
    rule_if!(node.inputs.len() == 3);
    rule_if!(op.pool_spec.dilations().iter().all(|d| *d == 1));
    // In: DequantizeLinear of a u8 tensor, read per tensor.
    let dq_node = model.node(node.inputs[0].node);
    rule_if_some!(dq = dq_node.op_as::<DequantizeLinearF32>());
    let x = model.outlet_fact(dq_node.inputs[0])?;
    rule_if!(x.datum_type == u8::datum_type());
    rule_if_some!(shape = x.shape.as_concrete());
    rule_if!(shape.len() == 4);
    // Out: a single QuantizeLinear to u8.
    rule_if!(!model.outputs.contains(&node.id.into()));
    rule_if_some!(q_node = model.single_succ(node.id)?);
    rule_if_some!(q = quantize_u8(q_node));
    let input = QParams {
        scale: dq.scale,
        zero: dq.zero_point,
    };
    rule_if!((0..=255).contains(&input.zero));
    let output = QOut {
        inv_scale: q.scale,
        zero: q.zero_point as i32,
    };
    let strides = op.pool_spec.strides();
    rule_if!(strides.len() == 2 && strides[0] == strides[1]);
    rule_if_some!(kernel = model.outlet_fact(node.inputs[1])?.konst.clone());
    rule_if_some!(bias = model.outlet_fact(node.inputs[2])?.konst.clone());
    let (cin, h, w) = (shape[1], shape[2], shape[3]);
    let cout = op.output_channels();
    let ks = kernel.shape();
    rule_if!(ks.len() == 4 && ks[0] == cout);
    let (kh, kw) = (ks[2], ks[3]);
    let pads = op.pool_spec.computed_padding(&[h, w]);
    let no_pad = pads.iter().all(|p| p.pad_before == 0 && p.pad_after == 0);
    let stride = strides[0];
    let kv = super::f32s(&kernel)?;
    let mut bv = super::f32s(&bias)?;
    if bv.len() == 1 {
        bv = vec![bv[0]; cout];
    }
    rule_if!(bv.len() == cout);
    let new: Box<dyn TypedOp> =
        if op.group == 1 && kh == 1 && kw == 1 && stride == 1 && no_pad && ks[1] == cin {
            rule_if_some!((qw, sw) = int8_rows(&kv, cout, cin));
            // O x I -> I x O
            let mut wt = vec![0i8; cin * cout];
            for o in 0..cout {
                for i in 0..cin {
                    wt[i * cout + o] = qw[o * cin + i];
                }
            }
            let w = packs.qgemm(qisa, &wt, cin, cout, &sw, &bv, input, output);
            Box::new(QPointwise { w })
        } else if op.group == cin && cin == cout && ks[1] == 1 {
            let geo = DwGeometry {
                h,
                w,
                c: cin,
                kh,
                kw,
                stride,
                pad_top: pads[0].pad_before,
                pad_left: pads[1].pad_before,
                oh: pads[0].convoluted,
                ow: pads[1].convoluted,
            };
            rule_if_let!(Ok(w) = packs.depthwise(isa, geo, &kv, &bv));
            Box::new(QDepthwise {
                w,
                isa: qisa,
                input,
                output,
            })
        } else {
            return Ok(None);
        };
    let mut patch = TypedModelPatch::default();
    let x = patch.tap_model(model, dq_node.inputs[0])?;
    let x = patch.wire_node(format!("{}.nhwc", node.name), AxisOp::Move(1, 3), &[x])?;
    let y = patch.wire_node(&node.name, new, &x)?;
    let y = patch.wire_node(format!("{}.nchw", node.name), AxisOp::Move(3, 1), &y)?;
    patch.shunt_outside(model, q_node.id.into(), y[0])?;
    Ok(Some(patch))
}

/// Step 3: tract's `QuantizeLinear` (f32 to u8) and `DequantizeLinear` (u8
/// to f32) left in a decluttered model become [`Quantize`] and
/// [`Dequantize`]. Returns how many were swapped.
pub fn swap_qdq(model: &mut TypedModel, qisa: QIsa) -> TractResult<usize> {
    let mut swapped = 0;
    for n in model.eval_order()? {
        let node = model.node(n);
        let input = model.outlet_fact(node.inputs.first().copied().unwrap_or(n.into()))?;
        let new: Box<dyn TypedOp> = if let Some(q) = quantize_u8(node) {
            if node.inputs.len() != 1 || input.datum_type != f32::datum_type() {
                continue;
            }
            Box::new(Quantize {
                isa: qisa,
                output: QOut {
                    inv_scale: q.scale,
                    zero: q.zero_point as i32,
                },
            })
        } else if let Some(dq) = node.op_as::<DequantizeLinearF32>() {
            if node.inputs.len() != 1 || input.datum_type != u8::datum_type() {
                continue;
            }
            Box::new(Dequantize {
                isa: qisa,
                input: QParams {
                    scale: dq.scale,
                    zero: dq.zero_point,
                },
            })
        } else {
            continue;
        };
        let mut patch = TypedModelPatch::default();
        let x = patch.tap_model(model, node.inputs[0])?;
        let y = patch.wire_node(&node.name, new, &[x])?;
        patch.shunt_outside(model, n.into(), y[0])?;
        patch.apply(model)?;
        swapped += 1;
    }
    if swapped > 0 {
        model.compact()?;
    }
    Ok(swapped)
}
