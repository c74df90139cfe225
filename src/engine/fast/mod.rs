//! The fast path: the project's own tract ops for the convolutions, swapped
//! into the typed tract model before tract declutters, plans and runs it.
//!
//! 1. [`swap_convs`] (on the typed model, before declutter) replaces every
//!    float 2-D `Conv` with constant weights by `MoveAxis (NCHW -> NHWC)`,
//!    one of our channel-last ops, `MoveAxis` back. 1x1 convolutions become
//!    [`Pointwise`], depthwise ones [`Depthwise`], other dense ones
//!    [`DenseConv`]. A matrix product with constant weights (the
//!    classifier) becomes a [`Pointwise`] too (`matmul`). Weights are packed
//!    once, here.
//! 2. tract's declutter then cancels the `MoveAxis` pairs between our ops
//!    (it pushes them through the element-wise ops between), so activations
//!    stay channel-last from the stem to the head.
//! 3. [`fuse_epilogues`] (on the decluttered model) folds what follows each
//!    of our ops into its kernel: the `Max`/`Min` of a clip (ReLU6), and for
//!    a 1x1 convolution the residual `Add`.
//!
//! 4. [`resize::swap_resizes`] (on the decluttered model) replaces tract's
//!    `Resize` with constant scales by a resampler planned once.
//!
//! Everything else (the pooling, Q/DQ) stays tract's.
//! The kernels themselves are in `super::simd`.

pub mod conv;
pub mod depthwise;
pub mod matmul;
pub mod packs;
pub mod par;
pub mod pointwise;
pub mod qops;
pub mod quant;
pub mod resize;
pub mod split;

use crate::engine::simd::qgemm::QIsa;
use crate::engine::simd::{Clamp, DwGeometry, Isa};
use conv::{ConvGeometry, DenseConv};
use depthwise::Depthwise;
pub use packs::Packs;
use pointwise::Pointwise;
use std::sync::Arc;
use tract_core::internal::*;
use tract_core::model::Rewriter;
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::cnn::conv::{Conv, KernelFormat};
use tract_core::ops::einsum::EinSum;
use tract_core::ops::math::{Add, Max, Min};
use tract_core::ops::nn::DataFormat;

/// What the fast path put into one model.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    pub pointwise: usize,
    /// Matrix products with constant weights (the classifier).
    pub matmul: usize,
    pub depthwise: usize,
    pub dense: usize,
    pub fused_clamps: usize,
    pub fused_residuals: usize,
    /// Integer 1x1 and depthwise convolutions (a QDQ model on integer
    /// kernels).
    pub qpointwise: usize,
    pub qdepthwise: usize,
    /// Bytes of packed weights.
    pub packed_bytes: usize,
}

pub(crate) fn f32s(t: &Tensor) -> TractResult<Vec<f32>> {
    Ok(t.cast_to::<f32>()?
        .try_as_plain_ram()?
        .as_slice::<f32>()?
        .to_vec())
}

/// The op replacing one `Conv`, or `None` when the fast path does not
/// cover it (quantized, dilated, grouped but not depthwise, symbolic shapes).
fn fast_op(
    isa: Isa,
    packs: &Packs,
    model: &TypedModel,
    node: &TypedNode,
    op: &Conv,
) -> TractResult<Option<Box<dyn TypedOp>>> {
    rule_if!(op.q_params.is_none());
    rule_if!(op.pool_spec.data_format == DataFormat::NCHW);
    rule_if!(op.kernel_fmt == KernelFormat::OIHW);
    rule_if!(node.inputs.len() == 3);
    rule_if!(op.pool_spec.dilations().iter().all(|d| *d == 1));
    let fact = model.outlet_fact(node.inputs[0])?;
    rule_if!(fact.datum_type == f32::datum_type());
    rule_if_some!(shape = fact.shape.as_concrete());
    rule_if!(shape.len() == 4);
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
    let (oh, ow) = (pads[0].convoluted, pads[1].convoluted);
    let (pad_top, pad_left) = (pads[0].pad_before, pads[1].pad_before);
    let no_pad = pads.iter().all(|p| p.pad_before == 0 && p.pad_after == 0);
    let stride = strides[0];
    let kv = f32s(&kernel)?;
    let mut bv = f32s(&bias)?;
    if bv.len() == 1 {
        bv = vec![bv[0]; cout];
    }
    rule_if!(bv.len() == cout);
    if op.group == 1 && kh == 1 && kw == 1 && stride == 1 && no_pad && ks[1] == cin {
        // O x I -> I x O
        let mut wt = vec![0f32; cin * cout];
        for o in 0..cout {
            for i in 0..cin {
                wt[i * cout + o] = kv[o * cin + i];
            }
        }
        let w = packs.gemm(isa, &wt, cin, cout, &bv);
        return Ok(Some(Box::new(Pointwise {
            w,
            clamp: Clamp::NONE,
            residual: false,
        })));
    }
    if op.group == cin && cin == cout && ks[1] == 1 {
        let geo = DwGeometry {
            h,
            w,
            c: cin,
            kh,
            kw,
            stride,
            pad_top,
            pad_left,
            oh,
            ow,
        };
        rule_if_let!(Ok(w) = packs.depthwise(isa, geo, &kv, &bv));
        return Ok(Some(Box::new(Depthwise {
            w,
            clamp: Clamp::NONE,
        })));
    }
    if op.group == 1 && ks[1] == cin && pad_top < kh && pad_left < kw {
        let geo = ConvGeometry {
            h,
            w,
            cin,
            kh,
            kw,
            stride,
            pad_top,
            pad_left,
            oh,
            ow,
        };
        let wt = conv::patch_major(&kv, cout, cin, kh, kw);
        let w = packs.gemm(isa, &wt, geo.patch(), cout, &bv);
        return Ok(Some(Box::new(DenseConv {
            geo,
            w,
            clamp: Clamp::NONE,
        })));
    }
    Ok(None)
}

/// Step 1: swap every covered `Conv` of a typed (not yet decluttered)
/// model for a channel-last fast op between two `MoveAxis`. Weights are
/// packed into `packs`, or taken from it when an earlier plan packed them.
/// With `qisa`, the convolutions of a QDQ model run on integer kernels
/// (`quant`).
pub fn swap_convs(
    model: &mut TypedModel,
    isa: Isa,
    qisa: Option<QIsa>,
    packs: &Packs,
) -> TractResult<()> {
    // Biases arrive through small reshapes: fold them so they are constant.
    model.prop_consts()?;
    if qisa.is_some() {
        quant::unsign(model)?;
    }
    Rewriter::<Packs>::default()
        .with_rule_for(
            "slim-conv",
            move |packs: &Packs, model: &TypedModel, node: &TypedNode, name: &str, op: &Conv| {
                if let Some(qisa) = qisa {
                    if let Some(patch) = quant::qconv(isa, qisa, packs, model, node, op)? {
                        return Ok(Some(patch));
                    }
                }
                rule_if_some!(fast = fast_op(isa, packs, model, node, op)?);
                let mut patch = TypedModelPatch::default();
                let x = patch.tap_model(model, node.inputs[0])?;
                let x = patch.wire_node(format!("{name}.nhwc"), AxisOp::Move(1, 3), &[x])?;
                let y = patch.wire_node(name, fast, &x)?;
                let y = patch.wire_node(format!("{name}.nchw"), AxisOp::Move(3, 1), &y)?;
                patch.shunt_outside(model, node.id.into(), y[0])?;
                Ok(Some(patch))
            },
        )
        .with_rule_for(
            "slim-matmul",
            move |packs: &Packs, model: &TypedModel, node: &TypedNode, name: &str, op: &EinSum| {
                matmul::swap_matmul(isa, packs, model, node, name, op)
            },
        )
        .rewrite(packs, model)
}

/// The value of a constant whose elements are all equal.
fn uniform_value(model: &TypedModel, outlet: OutletId) -> TractResult<Option<f32>> {
    let fact = model.outlet_fact(outlet)?;
    let Some(k) = fact.konst.as_ref().or(fact.uniform.as_ref()) else {
        return Ok(None);
    };
    let v = f32s(k)?;
    Ok(match v.first() {
        Some(&first) if v.iter().all(|x| x.to_bits() == first.to_bits()) => Some(first),
        _ => None,
    })
}

/// Whether `to` can be reached from `from` along the graph's edges.
fn reaches(model: &TypedModel, from: usize, to: usize) -> bool {
    let mut stack = vec![from];
    let mut seen = std::collections::HashSet::new();
    while let Some(n) = stack.pop() {
        if n == to {
            return true;
        }
        if seen.insert(n) {
            for o in &model.node(n).outputs {
                stack.extend(o.successors.iter().map(|s| s.node));
            }
        }
    }
    false
}

/// What a fast op can absorb from its successor.
enum Absorb {
    Clamp(f32, f32),
    Residual(OutletId),
}

/// The successor of `node` that its op can absorb, if any.
fn absorbable(
    model: &TypedModel,
    node: &TypedNode,
    residual_ok: bool,
) -> TractResult<Option<(usize, Absorb)>> {
    rule_if!(!model.outputs.contains(&node.id.into()));
    rule_if_some!(succ = model.single_succ(node.id)?);
    rule_if_some!(bin = succ.op_as::<TypedBinOp>());
    rule_if!(succ.inputs.len() == 2);
    let mine = succ.inputs.iter().position(|i| i.node == node.id);
    rule_if_some!(mine = mine);
    let other = succ.inputs[1 - mine];
    rule_if!(other.node != node.id);
    let out = model.outlet_fact(node.id.into())?;
    rule_if!(model.outlet_fact(succ.id.into())?.shape == out.shape);
    if bin.0.is::<Max>() || bin.0.is::<Min>() {
        rule_if_some!(v = uniform_value(model, other)?);
        let (lo, hi) = if bin.0.is::<Max>() {
            (v, f32::INFINITY)
        } else {
            (f32::NEG_INFINITY, v)
        };
        return Ok(Some((succ.id, Absorb::Clamp(lo, hi))));
    }
    if residual_ok && bin.0.is::<Add>() {
        let of = model.outlet_fact(other)?;
        rule_if!(of.konst.is_none() && of.shape == out.shape && of.datum_type == out.datum_type);
        rule_if!(!reaches(model, node.id, other.node));
        return Ok(Some((succ.id, Absorb::Residual(other))));
    }
    Ok(None)
}

/// Step 3: fold clips and residual adds into the fast ops of a decluttered
/// model. Returns how many of each were fused.
pub fn fuse_epilogues(model: &mut TypedModel) -> TractResult<(usize, usize)> {
    let mut clamps = 0;
    let mut residuals = 0;
    loop {
        let mut patched = false;
        for n in model.eval_order()? {
            let node = model.node(n);
            let op = &node.op;
            let (residual_ok, has_residual) = match op.downcast_ref::<Pointwise>() {
                Some(p) => (!p.residual, p.residual),
                None => (false, false),
            };
            let fast = op.is::<Pointwise>() || op.is::<Depthwise>() || op.is::<DenseConv>();
            if !fast {
                continue;
            }
            let Some((succ, absorb)) = absorbable(model, node, residual_ok)? else {
                continue;
            };
            let mut inputs: Vec<OutletId> = node.inputs.clone();
            let new: Box<dyn TypedOp> = match absorb {
                // A clamp after a fused residual would apply after the add.
                Absorb::Clamp(_, _) if has_residual => continue,
                Absorb::Clamp(lo, hi) => {
                    clamps += 1;
                    if let Some(p) = op.downcast_ref::<Pointwise>() {
                        Box::new(Pointwise {
                            clamp: p.clamp.then(lo, hi),
                            ..p.clone()
                        })
                    } else if let Some(d) = op.downcast_ref::<Depthwise>() {
                        Box::new(Depthwise {
                            clamp: d.clamp.then(lo, hi),
                            ..d.clone()
                        })
                    } else {
                        let c = op.downcast_ref::<DenseConv>().context("dense conv")?;
                        Box::new(DenseConv {
                            clamp: c.clamp.then(lo, hi),
                            ..c.clone()
                        })
                    }
                }
                Absorb::Residual(other) => {
                    residuals += 1;
                    inputs.push(other);
                    let p = op.downcast_ref::<Pointwise>().context("pointwise")?;
                    Box::new(Pointwise {
                        residual: true,
                        ..p.clone()
                    })
                }
            };
            let mut patch = TypedModelPatch::default();
            let taps = patch.taps(model, &inputs)?;
            let y = patch.wire_node(&node.name, new, &taps)?;
            patch.shunt_outside(model, succ.into(), y[0])?;
            patch.apply(model)?;
            patched = true;
            break;
        }
        if !patched {
            break;
        }
        model.compact()?;
    }
    Ok((clamps, residuals))
}

/// Counts and packed bytes of the fast ops in a model. An op copied per
/// image (`split`) shares its pack and counts once.
pub fn summarize(model: &TypedModel) -> Summary {
    let mut s = Summary::default();
    let mut seen = std::collections::HashSet::new();
    for node in &model.nodes {
        let pack = node
            .op_as::<Pointwise>()
            .map(|p| Arc::as_ptr(&p.w) as usize)
            .or_else(|| {
                node.op_as::<Depthwise>()
                    .map(|d| Arc::as_ptr(&d.w) as usize)
            })
            .or_else(|| {
                node.op_as::<DenseConv>()
                    .map(|c| Arc::as_ptr(&c.w) as usize)
            })
            .or_else(|| {
                node.op_as::<qops::QPointwise>()
                    .map(|q| Arc::as_ptr(&q.w) as usize)
            })
            .or_else(|| {
                node.op_as::<qops::QDepthwise>()
                    .map(|q| Arc::as_ptr(&q.w) as usize)
            });
        if pack.is_some_and(|p| !seen.insert(p)) {
            continue;
        }
        let (clamp, bytes) = if let Some(p) = node.op_as::<Pointwise>() {
            let rank = node.inputs.first().and_then(|i| model.outlet_fact(*i).ok());
            if rank.is_some_and(|f| f.rank() == 2) {
                s.matmul += 1;
            } else {
                s.pointwise += 1;
            }
            s.fused_residuals += usize::from(p.residual);
            (p.clamp, p.w.bytes())
        } else if let Some(d) = node.op_as::<Depthwise>() {
            s.depthwise += 1;
            (d.clamp, d.w.bytes())
        } else if let Some(c) = node.op_as::<DenseConv>() {
            s.dense += 1;
            (c.clamp, c.w.bytes())
        } else if let Some(q) = node.op_as::<qops::QPointwise>() {
            s.qpointwise += 1;
            (Clamp::NONE, q.w.bytes())
        } else if let Some(q) = node.op_as::<qops::QDepthwise>() {
            s.qdepthwise += 1;
            (Clamp::NONE, q.w.bytes())
        } else {
            continue;
        };
        s.fused_clamps += usize::from(!clamp.is_none());
        s.packed_bytes += bytes;
    }
    s
}
