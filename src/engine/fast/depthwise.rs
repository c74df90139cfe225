//! Depthwise convolution over channel-last images (`N x H x W x C`), with
//! the taps packed once at load and bias and clamp fused.

use super::par;
use crate::engine::simd::{self, Clamp, PackedDepthwise};
use std::sync::Arc;
use tract_core::internal::*;

#[derive(Debug, Clone)]
pub struct Depthwise {
    pub w: Arc<PackedDepthwise>,
    pub clamp: Clamp,
}

impl PartialEq for Depthwise {
    fn eq(&self, o: &Self) -> bool {
        Arc::ptr_eq(&self.w, &o.w)
            && self.clamp.lo.to_bits() == o.clamp.lo.to_bits()
            && self.clamp.hi.to_bits() == o.clamp.hi.to_bits()
    }
}
impl Eq for Depthwise {}

impl Depthwise {
    fn out_shape(&self, n: usize) -> [usize; 4] {
        let g = self.w.geometry();
        [n, g.oh, g.ow, g.c]
    }
}

impl Op for Depthwise {
    fn name(&self) -> StaticName {
        "SlimDepthwise".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{:?} {} clamp {:?}",
            self.w.geometry(),
            self.w.isa().name(),
            self.clamp
        )])
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    op_as_typed_op!();
}

impl EvalOp for Depthwise {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        let g = *self.w.geometry();
        ensure!(
            x.rank() == 4 && x.shape()[1..] == [g.h, g.w, g.c],
            "input {:?} is not N x {} x {} x {}",
            x.shape(),
            g.h,
            g.w,
            g.c
        );
        let n = x.shape()[0];
        let mut y = simd::output_tensor(&self.out_shape(n), f32::NAN)?;
        let input = x.try_as_plain_ram()?.as_slice::<f32>()?;
        let mut view = y.try_as_plain_ram_mut()?;
        let out = view.as_slice_mut::<f32>()?;
        let (isz, osz) = (g.h * g.w * g.c, g.oh * g.ow * g.c);
        let (irow, orow) = (g.w * g.c, g.ow * g.c);
        let parts = par::parts(osz * g.kh * g.kw);
        for (i, o) in input.chunks_exact(isz).zip(out.chunks_exact_mut(osz)) {
            if parts == 1 {
                simd::depthwise(&self.w, i, o, self.clamp);
                continue;
            }
            // Output rows split over the idle cores (`par`): each part
            // reads only its input rows, with the same arithmetic.
            par::for_rows(o, orow, par::ranges(g.oh, parts, 1), |r, o| {
                let (_, iy) = g.band(r.clone());
                let src = &i[iy.start * irow..iy.end * irow];
                simd::depthwise_band(&self.w, r, src, o, self.clamp);
            });
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for Depthwise {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 1 && inputs[0].datum_type == f32::datum_type());
        let g = self.w.geometry();
        let s = &inputs[0].shape;
        ensure!(
            s.len() == 4 && s[1] == g.h.to_dim() && s[2] == g.w.to_dim() && s[3] == g.c.to_dim()
        );
        Ok(tvec!(f32::fact([
            s[0].clone(),
            g.oh.to_dim(),
            g.ow.to_dim(),
            g.c.to_dim()
        ])))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let g = self.w.geometry();
        Ok(tvec!((
            Cost::FMA(f32::datum_type()),
            inputs[0].shape[0].clone() * (g.oh * g.ow * g.c * g.kh * g.kw)
        )))
    }

    as_op!();
}
