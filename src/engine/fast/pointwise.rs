//! 1x1 convolution over channel-last activations: one matrix product with
//! the weights packed once at load, bias, clamp (ReLU6) and the residual add
//! fused into the kernel's epilogue.

use super::par;
use crate::engine::simd::{self, Clamp, PackedGemm, Residual};
use std::sync::Arc;
use tract_core::internal::*;

#[derive(Debug, Clone)]
pub struct Pointwise {
    pub w: Arc<PackedGemm>,
    pub clamp: Clamp,
    /// A second input, of the output's shape, added after the clamp.
    pub residual: bool,
}

impl PartialEq for Pointwise {
    fn eq(&self, o: &Self) -> bool {
        Arc::ptr_eq(&self.w, &o.w)
            && self.clamp.lo.to_bits() == o.clamp.lo.to_bits()
            && self.clamp.hi.to_bits() == o.clamp.hi.to_bits()
            && self.residual == o.residual
    }
}
impl Eq for Pointwise {}

impl Op for Pointwise {
    fn name(&self) -> StaticName {
        "SlimPointwise".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{}x{} {} clamp {:?} residual {}",
            self.w.k(),
            self.w.n(),
            self.w.isa().name(),
            self.clamp,
            self.residual
        )])
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    op_as_typed_op!();
}

impl EvalOp for Pointwise {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        let (k, n) = (self.w.k(), self.w.n());
        let shape = x.shape();
        ensure!(
            shape.last() == Some(&k),
            "input {shape:?} has not {k} channels"
        );
        let m = x.len() / k;
        let mut out_shape: TVec<usize> = shape.into();
        *out_shape.last_mut().unwrap() = n;
        let mut y = simd::output_tensor(&out_shape, f32::NAN)?;
        let a = x.try_as_plain_ram()?.as_slice::<f32>()?;
        let res = if self.residual {
            let r = &inputs[1];
            ensure!(
                r.shape() == &*out_shape,
                "residual {:?} is not {out_shape:?}",
                r.shape()
            );
            Some(r.try_as_plain_ram()?.as_slice::<f32>()?)
        } else {
            None
        };
        let mut c = y.try_as_plain_ram_mut()?;
        // Rows split over the idle cores (`par`); each row's arithmetic is
        // the same whichever part runs it.
        let rows = par::ranges(m, par::parts(m * k * n), 24);
        par::for_rows(c.as_slice_mut::<f32>()?, n, rows, |r, c| {
            simd::gemm(
                &self.w,
                r.len(),
                &a[r.start * k..],
                k,
                c,
                n,
                self.clamp,
                res.map(|data| Residual {
                    data: &data[r.start * n..],
                    stride: n,
                }),
            )
        });
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for Pointwise {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 1 + usize::from(self.residual));
        let x = inputs[0];
        ensure!(x.datum_type == f32::datum_type());
        let mut shape = x.shape.to_tvec();
        ensure!(shape.last() == Some(&self.w.k().to_dim()));
        *shape.last_mut().unwrap() = self.w.n().to_dim();
        if self.residual {
            ensure!(inputs[1].shape.to_tvec() == shape, "residual shape");
        }
        Ok(tvec!(f32::fact(shape)))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        Ok(tvec!((
            Cost::FMA(f32::datum_type()),
            inputs[0].shape.volume() * self.w.n()
        )))
    }

    as_op!();
}
