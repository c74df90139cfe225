//! AVX2+FMA instantiations of the generic kernels (ymm, 8 lanes, masked
//! loads and stores for partial vectors).

use super::{
    depthwise as dw, gemm as mm, Clamp, DwGeometry, PackedDepthwise, PackedGemm, Residual, Vector,
};
use std::arch::x86_64::*;

#[derive(Clone, Copy)]
pub(crate) struct V256(__m256);

/// Lane masks for the partial forms: lanes `0..n` set.
#[inline(always)]
unsafe fn mask(n: usize) -> __m256i {
    const M: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];
    unsafe { _mm256_loadu_si256(M.as_ptr().add(8 - n).cast()) }
}

// SAFETY: only used from functions compiled with avx2 and fma (below).
unsafe impl Vector for V256 {
    const LANES: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> Self {
        unsafe { V256(_mm256_setzero_ps()) }
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        unsafe { V256(_mm256_set1_ps(x)) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        unsafe { V256(_mm256_loadu_ps(p)) }
    }
    #[inline(always)]
    unsafe fn load_partial(p: *const f32, n: usize) -> Self {
        unsafe { V256(_mm256_maskload_ps(p, mask(n))) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self) {
        unsafe { _mm256_storeu_ps(p, v.0) }
    }
    #[inline(always)]
    unsafe fn store_partial(p: *mut f32, v: Self, n: usize) {
        // `vmaskmovps` stores are microcoded on AMD (Zen 4: several cycles
        // each), and the kernels' epilogues store whole vectors through
        // this call: a plain store for those.
        unsafe {
            if n == 8 {
                _mm256_storeu_ps(p, v.0)
            } else {
                _mm256_maskstore_ps(p, mask(n), v.0)
            }
        }
    }
    #[inline(always)]
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
        unsafe { V256(_mm256_fmadd_ps(a.0, b.0, c.0)) }
    }
    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        unsafe { V256(_mm256_add_ps(a.0, b.0)) }
    }
    #[inline(always)]
    unsafe fn max(a: Self, b: Self) -> Self {
        unsafe { V256(_mm256_max_ps(a.0, b.0)) }
    }
    #[inline(always)]
    unsafe fn min(a: Self, b: Self) -> Self {
        unsafe { V256(_mm256_min_ps(a.0, b.0)) }
    }
}

/// # Safety
/// avx2 and fma are available; see [`super::gemm`].
#[target_feature(enable = "avx2,fma")]
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
    unsafe { mm::gemm::<V256>(w, m, a, lda, c, ldc, clamp, res) }
}

/// # Safety
/// avx2 and fma are available; see [`super::depthwise`].
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn depthwise(
    w: &PackedDepthwise,
    g: &DwGeometry,
    input: &[f32],
    out: &mut [f32],
    clamp: Clamp,
) {
    unsafe { dw::depthwise::<V256>(w, g, input, out, clamp) }
}
