//! AVX-512F instantiations of the generic kernels (zmm, 16 lanes, masked
//! loads and stores for partial vectors).

use super::{
    depthwise as dw, gemm as mm, Clamp, DwGeometry, PackedDepthwise, PackedGemm, Residual, Vector,
};
use std::arch::x86_64::*;

#[derive(Clone, Copy)]
pub(crate) struct V512(__m512);

#[inline(always)]
fn mask(n: usize) -> __mmask16 {
    ((1u32 << n) - 1) as __mmask16
}

// SAFETY: only used from functions compiled with avx512f (below).
unsafe impl Vector for V512 {
    const LANES: usize = 16;
    #[inline(always)]
    unsafe fn zero() -> Self {
        unsafe { V512(_mm512_setzero_ps()) }
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        unsafe { V512(_mm512_set1_ps(x)) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        unsafe { V512(_mm512_loadu_ps(p)) }
    }
    #[inline(always)]
    unsafe fn load_partial(p: *const f32, n: usize) -> Self {
        unsafe { V512(_mm512_maskz_loadu_ps(mask(n), p)) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self) {
        unsafe { _mm512_storeu_ps(p, v.0) }
    }
    #[inline(always)]
    unsafe fn store_partial(p: *mut f32, v: Self, n: usize) {
        unsafe {
            if n == 16 {
                _mm512_storeu_ps(p, v.0)
            } else {
                _mm512_mask_storeu_ps(p, mask(n), v.0)
            }
        }
    }
    #[inline(always)]
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
        unsafe { V512(_mm512_fmadd_ps(a.0, b.0, c.0)) }
    }
    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        unsafe { V512(_mm512_add_ps(a.0, b.0)) }
    }
    #[inline(always)]
    unsafe fn max(a: Self, b: Self) -> Self {
        unsafe { V512(_mm512_max_ps(a.0, b.0)) }
    }
    #[inline(always)]
    unsafe fn min(a: Self, b: Self) -> Self {
        unsafe { V512(_mm512_min_ps(a.0, b.0)) }
    }
}

/// # Safety
/// avx512f is available; see [`super::gemm`].
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm(
    w: &PackedGemm,
    m: usize,
    a: &[f32],
    lda: usize,
    c: &mut [f32],
    ldc: usize,
    clamp: Clamp,
    res: Option<Residual>,
) {
    unsafe { mm::gemm::<V512>(w, m, a, lda, c, ldc, clamp, res) }
}

/// # Safety
/// avx512f is available; see [`super::depthwise`].
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn depthwise(
    w: &PackedDepthwise,
    g: &DwGeometry,
    input: &[f32],
    out: &mut [f32],
    clamp: Clamp,
) {
    unsafe { dw::depthwise::<V512>(w, g, input, out, clamp) }
}
