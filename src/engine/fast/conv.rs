//! A dense (group 1) k x k convolution over channel-last images, as one
//! matrix product per output row: the row's input patches are gathered
//! (zeros in the padding) into a small buffer and multiplied with the
//! weights packed once at load, bias and clamp fused. Used for the stem
//! (3x3, stride 2, 3 -> 32 channels).

use super::par;
use crate::engine::simd::{self, Clamp, PackedGemm};
use std::sync::Arc;
use tract_core::internal::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConvGeometry {
    pub h: usize,
    pub w: usize,
    pub cin: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    pub oh: usize,
    pub ow: usize,
}

impl ConvGeometry {
    /// Length of one patch: the product's inner dimension.
    pub fn patch(&self) -> usize {
        self.kh * self.kw * self.cin
    }

    /// Gather the patches of output row `oy` into `buf` (`ow` rows of
    /// `patch()` values).
    fn gather(&self, image: &[f32], oy: usize, buf: &mut [f32]) {
        let k = self.patch();
        let run = self.kw * self.cin;
        for ox in 0..self.ow {
            let row = &mut buf[ox * k..(ox + 1) * k];
            let ix0 = (ox * self.stride) as isize - self.pad_left as isize;
            let inside = ix0 >= 0 && ix0 as usize + self.kw <= self.w;
            for ky in 0..self.kh {
                let dst = &mut row[ky * run..(ky + 1) * run];
                let iy = (oy * self.stride + ky) as isize - self.pad_top as isize;
                if iy < 0 || iy >= self.h as isize {
                    dst.fill(0.0);
                    continue;
                }
                let line = iy as usize * self.w;
                if inside {
                    // The kx taps of one row are contiguous channel-last.
                    let src = (line + ix0 as usize) * self.cin;
                    dst.copy_from_slice(&image[src..src + run]);
                    continue;
                }
                for kx in 0..self.kw {
                    let d = &mut dst[kx * self.cin..(kx + 1) * self.cin];
                    let ix = ix0 + kx as isize;
                    if ix < 0 || ix >= self.w as isize {
                        d.fill(0.0);
                    } else {
                        let src = (line + ix as usize) * self.cin;
                        d.copy_from_slice(&image[src..src + self.cin]);
                    }
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct DenseConv {
    pub geo: ConvGeometry,
    /// `patch() x cout`, rows ordered (ky, kx, cin).
    pub w: Arc<PackedGemm>,
    pub clamp: Clamp,
}

impl PartialEq for DenseConv {
    fn eq(&self, o: &Self) -> bool {
        self.geo == o.geo
            && Arc::ptr_eq(&self.w, &o.w)
            && self.clamp.lo.to_bits() == o.clamp.lo.to_bits()
            && self.clamp.hi.to_bits() == o.clamp.hi.to_bits()
    }
}
impl Eq for DenseConv {}

/// Reorder ONNX `O x I x KH x KW` weights into the `(ky, kx, ci) x o`
/// matrix the gathered patches multiply.
pub fn patch_major(w: &[f32], cout: usize, cin: usize, kh: usize, kw: usize) -> Vec<f32> {
    let k = kh * kw * cin;
    let mut out = vec![0f32; k * cout];
    for o in 0..cout {
        for ci in 0..cin {
            for ky in 0..kh {
                for kx in 0..kw {
                    let src = ((o * cin + ci) * kh + ky) * kw + kx;
                    out[((ky * kw + kx) * cin + ci) * cout + o] = w[src];
                }
            }
        }
    }
    out
}

impl Op for DenseConv {
    fn name(&self) -> StaticName {
        "SlimConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{:?} -> {} {} clamp {:?}",
            self.geo,
            self.w.n(),
            self.w.isa().name(),
            self.clamp
        )])
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    op_as_typed_op!();
}

impl EvalOp for DenseConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        let g = self.geo;
        ensure!(
            x.rank() == 4 && x.shape()[1..] == [g.h, g.w, g.cin],
            "input {:?} is not N x {} x {} x {}",
            x.shape(),
            g.h,
            g.w,
            g.cin
        );
        let (n, cout, k) = (x.shape()[0], self.w.n(), g.patch());
        let mut y = simd::output_tensor(&[n, g.oh, g.ow, cout], f32::NAN)?;
        let input = x.try_as_plain_ram()?.as_slice::<f32>()?;
        let mut view = y.try_as_plain_ram_mut()?;
        let out = view.as_slice_mut::<f32>()?;
        let row = g.ow * cout;
        let parts = par::parts(g.oh * g.ow * k * cout);
        for (image, o) in input
            .chunks_exact(g.h * g.w * g.cin)
            .zip(out.chunks_exact_mut(g.oh * row))
        {
            // Output rows split over the idle cores (`par`).
            par::for_rows(o, row, par::ranges(g.oh, parts, 1), |r, o| {
                let mut buf = vec![0f32; g.ow * k];
                for (oy, c) in r.zip(o.chunks_exact_mut(row)) {
                    g.gather(image, oy, &mut buf);
                    simd::gemm(&self.w, g.ow, &buf, k, c, cout, self.clamp, None);
                }
            });
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for DenseConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 1 && inputs[0].datum_type == f32::datum_type());
        let (g, s) = (&self.geo, &inputs[0].shape);
        ensure!(
            s.len() == 4 && s[1] == g.h.to_dim() && s[2] == g.w.to_dim() && s[3] == g.cin.to_dim()
        );
        Ok(tvec!(f32::fact([
            s[0].clone(),
            g.oh.to_dim(),
            g.ow.to_dim(),
            self.w.n().to_dim()
        ])))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let g = &self.geo;
        Ok(tvec!((
            Cost::FMA(f32::datum_type()),
            inputs[0].shape[0].clone() * (g.oh * g.ow * g.patch() * self.w.n())
        )))
    }

    as_op!();
}
