//! A `Resize` with constant scales or sizes, as a separable resampler whose
//! taps are planned once at load.
//!
//! tract's own op plans every axis at every run and resamples the last axis
//! one element at a time through generic iterators: 1.9 ms for the
//! 3 x 224 x 224 -> 192 x 192 resize in front of a resolution rung, a fifth
//! of the rung's whole run. This op takes the very plans tract makes
//! (`tract_core::ops::nn::resize::Resize::plan_axis`: same taps, same
//! weights) and applies them in the same order with the same arithmetic
//! (per axis, `0 + w0 * x0 + w1 * x1 ...`, taps of weight 0 skipped), so its
//! output is tract's bit for bit.

use tract_core::internal::*;
use tract_core::ops::nn::resize::{AxisPlan, Resize};

/// The taps of one resized axis.
#[derive(Debug, Clone, PartialEq)]
pub struct AxisTaps {
    pub axis: usize,
    pub len_in: usize,
    pub window: usize,
    /// `window` input indices per output index.
    pub indices: Vec<usize>,
    pub weights: Vec<f32>,
}

impl AxisTaps {
    fn len_out(&self) -> usize {
        self.indices.len() / self.window
    }

    fn from_plan(axis: usize, len_in: usize, plan: AxisPlan) -> Option<AxisTaps> {
        if plan.extrapolated.iter().any(|e| *e) || plan.window == 0 {
            return None;
        }
        Some(AxisTaps {
            axis,
            len_in,
            window: plan.window,
            indices: plan.indices,
            weights: plan.weights,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SlimResize {
    pub input_shape: TVec<usize>,
    /// The axes that change, in the order tract resamples them.
    pub axes: Vec<AxisTaps>,
}

impl Eq for SlimResize {}

impl SlimResize {
    /// The op replacing tract's `Resize` on a concrete f32 input whose
    /// scales or sizes are constant; `None` when it does not apply.
    pub fn from_tract(
        model: &TypedModel,
        node: &TypedNode,
        op: &Resize,
    ) -> TractResult<Option<SlimResize>> {
        let input = model.outlet_fact(node.inputs[0])?;
        rule_if!(input.datum_type == f32::datum_type());
        rule_if_some!(shape = input.shape.as_concrete());
        let output = model.outlet_fact(node.id.into())?;
        rule_if_some!(out_shape = output.shape.as_concrete());
        rule_if!(out_shape.len() == shape.len());
        let konst = |ix: Option<usize>| -> TractResult<Option<Arc<Tensor>>> {
            Ok(match ix.and_then(|i| node.inputs.get(i)) {
                Some(o) => model.outlet_fact(*o)?.konst.clone(),
                None => None,
            })
        };
        // As tract's eval: the scales when given for every axis, else the
        // ratio of the sizes.
        let scales: Vec<f32> = match konst(op.optional_scales_input)? {
            Some(s) if s.len() == shape.len() => super::f32s(&s)?,
            _ => {
                rule_if!(
                    op.optional_sizes_input.is_none() || konst(op.optional_sizes_input)?.is_some()
                );
                out_shape
                    .iter()
                    .zip(shape)
                    .map(|(o, i)| *o as f32 / *i as f32)
                    .collect()
            }
        };
        let mut axes = Vec::new();
        for (axis, &scale) in scales.iter().enumerate() {
            let (len_in, len_out) = (shape[axis], out_shape[axis]);
            if len_in == len_out && scale == 1.0 {
                continue;
            }
            rule_if!(len_in > 0 && len_out > 0);
            let plan = op.plan_axis(scale, len_in, len_out);
            rule_if_some!(taps = AxisTaps::from_plan(axis, len_in, plan));
            rule_if!(taps.len_out() == len_out);
            axes.push(taps);
        }
        Ok(Some(SlimResize {
            input_shape: shape.into(),
            axes,
        }))
    }

    fn output_shape(&self) -> TVec<usize> {
        self.output_shape_for(&self.input_shape)
    }

    fn output_shape_for(&self, input: &[usize]) -> TVec<usize> {
        let mut shape: TVec<usize> = input.into();
        for a in &self.axes {
            shape[a.axis] = a.len_out();
        }
        shape
    }

    /// Whether `shape` is this resize's input, but for any number of
    /// images along axis 0 when axis 0 is not resampled (a batch plan may
    /// run it one image at a time, `super::split`).
    fn accepts(&self, shape: &[usize]) -> bool {
        let batch_free = !self.axes.iter().any(|a| a.axis == 0);
        shape.len() == self.input_shape.len()
            && (shape == &*self.input_shape || (batch_free && shape[1..] == self.input_shape[1..]))
    }
}

/// Resample `axis` of `src` (shape `shape`) into `dst`.
fn resample(src: &[f32], shape: &[usize], t: &AxisTaps, dst: &mut [f32]) {
    let inner: usize = shape[t.axis + 1..].iter().product();
    let (len_in, len_out, window) = (t.len_in, t.len_out(), t.window);
    if inner == 0 || src.is_empty() {
        return;
    }
    for (s, d) in src
        .chunks_exact(len_in * inner)
        .zip(dst.chunks_exact_mut(len_out * inner))
    {
        if inner == 1 {
            resample_row(s, t, d);
            continue;
        }
        for x in 0..len_out {
            let out = &mut d[x * inner..(x + 1) * inner];
            let rows = (0..window).map(|k| {
                let i = t.indices[x * window + k];
                (t.weights[x * window + k], &s[i * inner..(i + 1) * inner])
            });
            blend(rows, out);
        }
    }
}

/// `out = 0 + w0 * r0 + w1 * r1 ...` element by element, rows of weight 0
/// skipped (tract's order and rounding).
fn blend<'a>(rows: impl Iterator<Item = (f32, &'a [f32])>, out: &mut [f32]) {
    out.fill(0.0);
    for (w, r) in rows {
        if w != 0.0 {
            for (o, v) in out.iter_mut().zip(r) {
                *o += w * v;
            }
        }
    }
}

/// One row along the last axis: `d[x] = 0 + sum of w * s[i]` over the taps
/// of `x`.
fn resample_row(s: &[f32], t: &AxisTaps, d: &mut [f32]) {
    match t.window {
        2 => row_taps::<2>(s, t, d),
        4 => row_taps::<4>(s, t, d),
        window => {
            for ((o, idx), wts) in d
                .iter_mut()
                .zip(t.indices.chunks_exact(window))
                .zip(t.weights.chunks_exact(window))
            {
                *o = taps_sum(s, idx, wts);
            }
        }
    }
}

/// `resample_row` for a window known at compile time (unrolled).
fn row_taps<const N: usize>(s: &[f32], t: &AxisTaps, d: &mut [f32]) {
    let (idx, _) = t.indices.as_chunks::<N>();
    let (wts, _) = t.weights.as_chunks::<N>();
    for ((o, idx), wts) in d.iter_mut().zip(idx).zip(wts) {
        *o = taps_sum(s, idx, wts);
    }
}

#[inline(always)]
fn taps_sum(s: &[f32], idx: &[usize], wts: &[f32]) -> f32 {
    let mut acc = 0f32;
    for (&i, &w) in idx.iter().zip(wts) {
        if w != 0.0 {
            acc += w * s[i];
        }
    }
    acc
}

/// The last two axes resized (NCHW images): one output row at a time, the
/// row blended along the height in a buffer, then resampled along the
/// width; the same arithmetic in the same order as [`resample`] twice.
fn resample_last_two(src: &[f32], ht: &AxisTaps, wt: &AxisTaps, dst: &mut [f32]) {
    let (h, w) = (ht.len_in, wt.len_in);
    let (oh, ow) = (ht.len_out(), wt.len_out());
    let mut row = vec![0f32; w];
    for (plane, out) in src.chunks_exact(h * w).zip(dst.chunks_exact_mut(oh * ow)) {
        for (y, o) in out.chunks_exact_mut(ow).enumerate() {
            let rows = (0..ht.window).map(|k| {
                let i = ht.indices[y * ht.window + k];
                (ht.weights[y * ht.window + k], &plane[i * w..(i + 1) * w])
            });
            blend(rows, &mut row);
            resample_row(&row, wt, o);
        }
    }
}

impl Op for SlimResize {
    fn name(&self) -> StaticName {
        "SlimResize".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{:?} -> {:?}",
            self.input_shape,
            self.output_shape()
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for SlimResize {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        ensure!(
            self.accepts(x.shape()) && x.datum_type() == f32::datum_type(),
            "input {:?} is not f32 {:?}",
            x.shape(),
            self.input_shape
        );
        let input = x.try_as_plain_ram()?.as_slice::<f32>()?;
        let rank = self.input_shape.len();
        if let [ht, wt] = &self.axes[..] {
            if ht.axis + 2 == rank && wt.axis + 1 == rank {
                let shape = self.output_shape_for(x.shape());
                let mut out = Tensor::zero::<f32>(&shape)?;
                resample_last_two(
                    input,
                    ht,
                    wt,
                    out.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?,
                );
                return Ok(tvec!(out.into_tvalue()));
            }
        }
        let mut shape: TVec<usize> = x.shape().into();
        let mut data: Vec<f32> = input.to_vec();
        for t in &self.axes {
            let mut next = vec![0f32; data.len() / t.len_in * t.len_out()];
            resample(&data, &shape, t, &mut next);
            data = next;
            shape[t.axis] = t.len_out();
        }
        let out = tract_ndarray::ArrayD::from_shape_vec(&*shape, data)?.into_tensor();
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for SlimResize {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].datum_type == f32::datum_type());
        let shape = inputs[0]
            .shape
            .as_concrete()
            .context("symbolic resize input")?;
        ensure!(
            self.accepts(shape),
            "input {shape:?} is not {:?}",
            self.input_shape
        );
        Ok(tvec!(f32::fact(self.output_shape_for(shape))))
    }

    as_op!();
}

/// Replace every tract `Resize` of a decluttered model that [`SlimResize`]
/// covers. Returns how many were replaced.
pub fn swap_resizes(model: &mut TypedModel) -> TractResult<usize> {
    let mut swapped = 0;
    for n in model.eval_order()? {
        let node = model.node(n);
        let Some(op) = node.op_as::<Resize>() else {
            continue;
        };
        let Some(new) = SlimResize::from_tract(model, node, op)? else {
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

#[cfg(test)]
mod tests {
    use super::*;
    use tract_core::ops::nn::resize::{CoordTransformer, Interpolator, Nearest};

    /// A model of one tract `Resize` (constant scales) of `shape`.
    fn model(shape: &[usize], scales: &[f32], interpolator: Interpolator) -> TypedModel {
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact(shape)).unwrap();
        let s = m.add_const("scales", tensor1(scales)).unwrap();
        let op = Resize {
            coord_transformer: CoordTransformer::HalfPixel,
            interpolator,
            nearest: Nearest::Floor,
            optional_scales_input: Some(1),
            optional_sizes_input: None,
        };
        let y = m.wire_node("resize", op, &[x, s]).unwrap();
        m.select_output_outlets(&y).unwrap();
        m
    }

    fn run(m: &TypedModel, x: &Tensor) -> Tensor {
        let plan = m.clone().into_runnable().unwrap();
        plan.run(tvec!(x.clone().into_tvalue()))
            .unwrap()
            .remove(0)
            .into_tensor()
    }

    #[test]
    fn gives_tracts_resize_bit_for_bit() {
        let cases: &[(&[usize], &[f32], Interpolator)] = &[
            (
                &[1, 3, 224, 224],
                &[1.0, 1.0, 192.0 / 224.0, 192.0 / 224.0],
                Interpolator::Linear,
            ),
            (
                &[2, 3, 224, 224],
                &[1.0, 1.0, 0.5, 0.5],
                Interpolator::Linear,
            ),
            (
                &[1, 20, 17, 3],
                &[1.0, 96.0 / 20.0, 0.6, 1.0],
                Interpolator::Linear,
            ),
            (&[1, 5, 9, 11], &[1.0, 1.0, 2.0, 1.5], Interpolator::Cubic),
            (&[1, 2, 8, 8], &[1.0, 1.0, 0.75, 0.5], Interpolator::Nearest),
        ];
        let mut seed = 7u64;
        for (shape, scales, interp) in cases {
            let m = model(shape, scales, interp.clone());
            let values: Vec<f32> = (0..shape.iter().product::<usize>())
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (seed >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
                })
                .collect();
            let x = tract_ndarray::ArrayD::from_shape_vec(&**shape, values)
                .unwrap()
                .into_tensor();
            let want = run(&m, &x);
            let mut fast = m.clone();
            assert_eq!(swap_resizes(&mut fast).unwrap(), 1, "{shape:?} {scales:?}");
            assert!(fast.nodes.iter().any(|n| n.op_is::<SlimResize>()));
            let got = run(&fast, &x);
            assert_eq!(got.shape(), want.shape());
            let g = super::super::f32s(&got).unwrap();
            let w = super::super::f32s(&want).unwrap();
            for (i, (a, b)) in g.iter().zip(&w).enumerate() {
                assert!(
                    a.to_bits() == b.to_bits() || a == b,
                    "{shape:?} [{i}]: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn an_input_of_another_shape_is_an_error() {
        let mut m = model(&[1, 3, 8, 8], &[1.0, 1.0, 0.5, 0.5], Interpolator::Linear);
        swap_resizes(&mut m).unwrap();
        let node = m.nodes.iter().find(|n| n.op_is::<SlimResize>()).unwrap();
        let op = node.op_as::<SlimResize>().unwrap();
        let wrong = Tensor::zero::<f32>(&[1, 3, 8, 9]).unwrap();
        assert!(op.eval_out_of_plan(tvec!(wrong.into_tvalue())).is_err());
    }
}
