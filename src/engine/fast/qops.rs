//! The ops of a quantized (QDQ) model run on integer data: channel-last u8
//! activations from one op to the next, instead of tract's f32
//! convolutions between `QuantizeLinear` / `DequantizeLinear` pairs.
//!
//! - [`QPointwise`]: 1x1 convolution, u8 x s8 products summed in i32,
//!   requantized to the next tensor's u8 (`simd::qgemm`: AVX-512 VNNI or
//!   AVX2).
//! - [`QDepthwise`]: the f32 depthwise kernel on a few rows at a time,
//!   dequantized into a small buffer and quantized back (the same f32
//!   arithmetic as the float plan, with u8 in memory).
//! - [`Quantize`] / [`Dequantize`]: `QuantizeLinear` / `DequantizeLinear`
//!   between u8 and f32 tensors, vectorised.

use super::par;
use crate::engine::simd::qgemm::{self, PackedQGemm, QIsa, QOut, QParams};
use crate::engine::simd::{self, Clamp, PackedDepthwise};
use std::sync::Arc;
use tract_core::internal::*;

/// Bytes of f32 input rows a depthwise band works on (L2-resident).
const BAND_BYTES: usize = 256 << 10;

#[derive(Debug, Clone)]
pub struct QPointwise {
    pub w: Arc<PackedQGemm>,
}

impl PartialEq for QPointwise {
    fn eq(&self, o: &Self) -> bool {
        Arc::ptr_eq(&self.w, &o.w)
    }
}
impl Eq for QPointwise {}

impl Op for QPointwise {
    fn name(&self) -> StaticName {
        "SlimQPointwise".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{}x{} u8 x s8 {}",
            self.w.k(),
            self.w.n(),
            self.w.isa().name()
        )])
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    op_as_typed_op!();
}

impl EvalOp for QPointwise {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        let (k, n) = (self.w.k(), self.w.n());
        ensure!(
            x.datum_type() == u8::datum_type() && x.shape().last() == Some(&k),
            "input {:?} {:?} has not {k} u8 channels",
            x.datum_type(),
            x.shape()
        );
        let m = x.len() / k;
        let mut shape: TVec<usize> = x.shape().into();
        *shape.last_mut().unwrap() = n;
        let mut y = simd::output_tensor(&shape, 0xA5u8)?;
        let a = x.try_as_plain_ram()?.as_slice::<u8>()?;
        let mut view = y.try_as_plain_ram_mut()?;
        // Integer products run about four times the f32 rate with VNNI,
        // under twice without: split as much f32 work as that would be.
        let speedup = if self.w.isa() == QIsa::Vnni512 { 4 } else { 2 };
        let rows = par::ranges(m, par::parts(m * k * n / speedup), 24);
        par::for_rows(view.as_slice_mut::<u8>()?, n, rows, |r, c| {
            qgemm::qgemm(&self.w, r.len(), &a[r.start * k..], k, c, n)
        });
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for QPointwise {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 1 && inputs[0].datum_type == u8::datum_type());
        let mut shape = inputs[0].shape.to_tvec();
        ensure!(shape.last() == Some(&self.w.k().to_dim()));
        *shape.last_mut().unwrap() = self.w.n().to_dim();
        Ok(tvec!(u8::fact(shape)))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        Ok(tvec!((
            Cost::FMA(i32::datum_type()),
            inputs[0].shape.volume() * self.w.n()
        )))
    }

    as_op!();
}

#[derive(Debug, Clone)]
pub struct QDepthwise {
    /// The dequantized taps and bias (the float plan's pack).
    pub w: Arc<PackedDepthwise>,
    pub isa: QIsa,
    pub input: QParams,
    pub output: QOut,
}

impl PartialEq for QDepthwise {
    fn eq(&self, o: &Self) -> bool {
        Arc::ptr_eq(&self.w, &o.w)
            && self.isa == o.isa
            && self.input == o.input
            && self.output == o.output
    }
}
impl Eq for QDepthwise {}

impl Op for QDepthwise {
    fn name(&self) -> StaticName {
        "SlimQDepthwise".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{:?} u8 {} {}",
            self.w.geometry(),
            self.w.isa().name(),
            self.isa.name()
        )])
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    op_as_typed_op!();
}

impl EvalOp for QDepthwise {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        let g = *self.w.geometry();
        ensure!(
            x.datum_type() == u8::datum_type()
                && x.rank() == 4
                && x.shape()[1..] == [g.h, g.w, g.c],
            "input {:?} {:?} is not u8 N x {} x {} x {}",
            x.datum_type(),
            x.shape(),
            g.h,
            g.w,
            g.c
        );
        let n = x.shape()[0];
        let mut y = simd::output_tensor(&[n, g.oh, g.ow, g.c], 0xA5u8)?;
        let input = x.try_as_plain_ram()?.as_slice::<u8>()?;
        let mut view = y.try_as_plain_ram_mut()?;
        let out = view.as_slice_mut::<u8>()?;
        let (irow, orow) = (g.w * g.c, g.ow * g.c);
        let band = (BAND_BYTES / (4 * irow * g.stride).max(1)).max(1);
        let work = g.oh * orow * g.kh * g.kw;
        for (image, o) in input
            .chunks_exact(g.h * irow)
            .zip(out.chunks_exact_mut(g.oh * orow))
        {
            // Output rows split over the idle cores (`par`), each part
            // band by band with its own buffers.
            let parts = par::ranges(g.oh, par::parts(work), 1);
            par::for_rows(o, orow, parts, |rows, o| {
                let (mut fin, mut fout) = (Vec::new(), Vec::new());
                let mut oy = rows.start;
                while oy < rows.end {
                    let end = (oy + band).min(rows.end);
                    let (_, iy) = g.band(oy..end);
                    fin.resize(iy.len() * irow, 0f32);
                    fout.resize((end - oy) * orow, 0f32);
                    let src = &image[iy.start * irow..iy.end * irow];
                    qgemm::dequantize(self.isa, src, self.input, &mut fin);
                    simd::depthwise_band(&self.w, oy..end, &fin, &mut fout, Clamp::NONE);
                    let dst = &mut o[(oy - rows.start) * orow..(end - rows.start) * orow];
                    qgemm::quantize(
                        self.isa,
                        &fout,
                        self.output.inv_scale,
                        self.output.zero,
                        dst,
                    );
                    oy = end;
                }
            });
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for QDepthwise {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 1 && inputs[0].datum_type == u8::datum_type());
        let g = self.w.geometry();
        let s = &inputs[0].shape;
        ensure!(
            s.len() == 4 && s[1] == g.h.to_dim() && s[2] == g.w.to_dim() && s[3] == g.c.to_dim()
        );
        Ok(tvec!(u8::fact([
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

/// `QuantizeLinear` of an f32 tensor into u8.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantize {
    pub isa: QIsa,
    pub output: QOut,
}
impl Eq for Quantize {}

/// `DequantizeLinear` of a u8 tensor into f32.
#[derive(Debug, Clone, PartialEq)]
pub struct Dequantize {
    pub isa: QIsa,
    pub input: QParams,
}
impl Eq for Dequantize {}

impl Op for Quantize {
    fn name(&self) -> StaticName {
        "SlimQuantize".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{:?} {}", self.output, self.isa.name())])
    }

    op_as_typed_op!();
}

impl Op for Dequantize {
    fn name(&self) -> StaticName {
        "SlimDequantize".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{:?} {}", self.input, self.isa.name())])
    }

    op_as_typed_op!();
}

impl EvalOp for Quantize {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        let mut y = simd::output_tensor(x.shape(), 0xA5u8)?;
        qgemm::quantize(
            self.isa,
            x.try_as_plain_ram()?.as_slice::<f32>()?,
            self.output.inv_scale,
            self.output.zero,
            y.try_as_plain_ram_mut()?.as_slice_mut::<u8>()?,
        );
        Ok(tvec!(y.into_tvalue()))
    }
}

impl EvalOp for Dequantize {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        let mut y = simd::output_tensor(x.shape(), f32::NAN)?;
        qgemm::dequantize(
            self.isa,
            x.try_as_plain_ram()?.as_slice::<u8>()?,
            self.input,
            y.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?,
        );
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for Quantize {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 1 && inputs[0].datum_type == f32::datum_type());
        Ok(tvec!(u8::fact(inputs[0].shape.clone())))
    }

    as_op!();
}

impl TypedOp for Dequantize {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 1 && inputs[0].datum_type == u8::datum_type());
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }

    as_op!();
}
