//! A matrix product with constant weights (the classifier: ONNX `Gemm` or
//! `MatMul` over `[batch, features]`) as a [`Pointwise`] op: it is a 1x1
//! convolution over a one-pixel image. Its weights go into the variant's
//! shared packs like every convolution's, where tract's own `OptMatMul`
//! packed them again in every plan (5 MB per plan for 1280 x 1000). A
//! constant bias added right after it is folded into the pack.

use super::f32s;
use super::packs::Packs;
use super::pointwise::Pointwise;
use crate::engine::simd::{Clamp, Isa};
use tract_core::internal::*;
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::einsum::EinSum;
use tract_core::ops::math::Add;

/// The constant bias of `n` values that the single successor of `node`
/// adds to its `[m, n]` output, with that successor's id.
fn bias_after(
    model: &TypedModel,
    node: &TypedNode,
    n: usize,
) -> TractResult<Option<(usize, Vec<f32>)>> {
    rule_if!(!model.outputs.contains(&node.id.into()));
    rule_if_some!(succ = model.single_succ(node.id)?);
    rule_if_some!(bin = succ.op_as::<TypedBinOp>());
    rule_if!(bin.0.is::<Add>() && succ.inputs.len() == 2);
    rule_if_some!(mine = succ.inputs.iter().position(|i| i.node == node.id));
    let other = succ.inputs[1 - mine];
    rule_if!(other.node != node.id);
    rule_if_some!(k = model.outlet_fact(other)?.konst.clone());
    rule_if!(k.datum_type() == f32::datum_type());
    rule_if!(k.len() == n && k.shape().last() == Some(&n));
    rule_if!(model.outlet_fact(succ.id.into())?.shape == model.outlet_fact(node.id.into())?.shape);
    Ok(Some((succ.id, f32s(&k)?)))
}

/// The patch replacing a float `EinSum` that multiplies `[m, k]`
/// activations by constant `[k, n]` (or transposed `[n, k]`) weights, or
/// `None` when `node` is not one.
pub fn swap_matmul(
    isa: Isa,
    packs: &Packs,
    model: &TypedModel,
    node: &TypedNode,
    name: &str,
    op: &EinSum,
) -> TractResult<Option<TypedModelPatch>> {
    rule_if!(op.q_params.is_none() && op.operating_dt == f32::datum_type());
    rule_if!(node.inputs.len() == 2);
    let x = model.outlet_fact(node.inputs[0])?;
    rule_if!(x.datum_type == f32::datum_type() && x.rank() == 2);
    rule_if_some!(wk = model.outlet_fact(node.inputs[1])?.konst.clone());
    rule_if!(wk.datum_type() == f32::datum_type() && wk.rank() == 2);
    let transposed = if op.axes == AxesMapping::for_numpy_matmul(2, false, true, false)? {
        true
    } else if op.axes == AxesMapping::for_numpy_matmul(2, false, false, false)? {
        false
    } else {
        return Ok(None);
    };
    let (k, n) = if transposed {
        (wk.shape()[1], wk.shape()[0])
    } else {
        (wk.shape()[0], wk.shape()[1])
    };
    rule_if!(x.shape[1] == k.to_dim());
    let wv = f32s(&wk)?;
    let wt = if transposed {
        let mut wt = vec![0f32; k * n];
        for o in 0..n {
            for i in 0..k {
                wt[i * n + o] = wv[o * k + i];
            }
        }
        wt
    } else {
        wv
    };
    let (replaced, bias) = match bias_after(model, node, n)? {
        Some((succ, bias)) => (succ, bias),
        None => (node.id, vec![0f32; n]),
    };
    let w = packs.gemm(isa, &wt, k, n, &bias);
    let mut patch = TypedModelPatch::default();
    let tap = patch.tap_model(model, node.inputs[0])?;
    let y = patch.wire_node(
        name,
        Pointwise {
            w,
            clamp: Clamp::NONE,
            residual: false,
        },
        &[tap],
    )?;
    patch.shunt_outside(model, replaced.into(), y[0])?;
    Ok(Some(patch))
}
