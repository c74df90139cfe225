//! AVX-512 VNNI kernels of `qgemm.rs`: `vpdpbusd` multiplies 4 u8
//! activations by 4 s8 weights and adds the 4 products into each i32 lane,
//! 64 products per instruction (f32 FMA: 16).
//!
//! Micro-kernel: `MR` rows times `NV` vectors of 16 columns, the i32
//! accumulators in registers for the whole `k` loop; per group of 4 rows of
//! `k`, one 4-byte broadcast per row of `a` and one 64-byte load per vector
//! of weights. Epilogue: to f32, one FMA with the column's multiplier and
//! offset, clamp to 0..255, round half to even, narrow to bytes, one store.

use super::qgemm::{PackedQGemm, QPanel, QParams, QLANES};
use std::arch::x86_64::*;

/// Bytes of `a` rows per chunk of rows (kept in L2 while every panel
/// passes over them).
const CHUNK_BYTES: usize = 64 << 10;

#[inline(always)]
fn mask16(n: usize) -> __mmask16 {
    ((1u32 << n) - 1) as __mmask16
}

/// # Safety
/// `a` holds `MR` rows of `k4` bytes at stride `lda`; `b` a packed panel of
/// `k4 * NV * 16` bytes; `init`, `mul`, `add` `NV * 16` values; `c` `MR`
/// rows of `cols` bytes at stride `ldc`. avx512f/bw/vl/vnni are enabled in
/// the caller.
#[inline(always)]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn tile<const MR: usize, const NV: usize>(
    k4: usize,
    a: *const u8,
    lda: usize,
    b: *const i8,
    init: *const i32,
    mul: *const f32,
    add: *const f32,
    c: *mut u8,
    ldc: usize,
    cols: usize,
) {
    unsafe {
        let mut acc = [[_mm512_setzero_si512(); NV]; MR];
        for j in 0..NV {
            let v = _mm512_loadu_si512(init.add(j * QLANES).cast());
            for i in 0..MR {
                acc[i][j] = v;
            }
        }
        let mut bp = b;
        let mut g = 0;
        while g < k4 {
            let mut bv = [_mm512_setzero_si512(); NV];
            for j in 0..NV {
                bv[j] = _mm512_loadu_si512(bp.add(j * 64).cast());
            }
            for i in 0..MR {
                let av = _mm512_set1_epi32(a.add(i * lda + g).cast::<i32>().read_unaligned());
                for j in 0..NV {
                    acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], av, bv[j]);
                }
            }
            bp = bp.add(NV * 64);
            g += 4;
        }
        let (zero, top) = (_mm512_setzero_ps(), _mm512_set1_ps(255.0));
        for j in 0..NV {
            let m = _mm512_loadu_ps(mul.add(j * QLANES));
            let ad = _mm512_loadu_ps(add.add(j * QLANES));
            let lanes = cols.saturating_sub(j * QLANES).min(QLANES);
            let k = mask16(lanes);
            for i in 0..MR {
                let y = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[i][j]), m, ad);
                let y = _mm512_min_ps(_mm512_max_ps(y, zero), top);
                let q = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(y));
                _mm_mask_storeu_epi8(c.add(i * ldc + j * QLANES).cast(), k, q);
            }
        }
    }
}

/// `rows <= MR` rows through one panel: whole blocks in place, a short
/// last block through copies.
///
/// # Safety
/// As `tile`, for `rows` rows.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn block<const MR: usize, const NV: usize>(
    w: &PackedQGemm,
    p: &QPanel,
    rows: usize,
    a: *const u8,
    lda: usize,
    c: *mut u8,
    ldc: usize,
    scratch: &mut Vec<u8>,
) {
    unsafe {
        let k4 = w.kg();
        let b = w.data().as_ptr().add(p.offset);
        let init = w.init().as_ptr().add(p.n0);
        let mul = w.mul().as_ptr().add(p.n0);
        let add = w.add().as_ptr().add(p.n0);
        if rows == MR {
            tile::<MR, NV>(k4, a, lda, b, init, mul, add, c, ldc, p.cols);
            return;
        }
        let width = p.cols;
        // Not cleared: the rows past `rows` only feed discarded outputs.
        if scratch.len() < MR * k4 + MR * width {
            scratch.resize(MR * k4 + MR * width, 0);
        }
        let (sa, sc) = scratch.split_at_mut(MR * k4);
        for i in 0..rows {
            std::ptr::copy_nonoverlapping(a.add(i * lda), sa.as_mut_ptr().add(i * k4), k4);
        }
        tile::<MR, NV>(
            k4,
            sa.as_ptr(),
            k4,
            b,
            init,
            mul,
            add,
            sc.as_mut_ptr(),
            width,
            width,
        );
        for i in 0..rows {
            std::ptr::copy_nonoverlapping(sc.as_ptr().add(i * width), c.add(i * ldc), width);
        }
    }
}

/// # Safety
/// avx512f/bw/vl/vnni are available; the slices hold `m` rows at their
/// strides (checked by [`super::qgemm::qgemm`]).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) unsafe fn qgemm(
    w: &PackedQGemm,
    m: usize,
    a: &[u8],
    lda: usize,
    c: &mut [u8],
    ldc: usize,
) {
    unsafe {
        let (k, k4) = (w.k(), w.kg());
        let max_mr = w.panels().iter().map(|p| p.mr).max().unwrap_or(1);
        let chunk = (CHUNK_BYTES / k4.max(1) / 24 * 24).max(24.max(max_mr));
        let mut scratch = Vec::new();
        // Rows whose length is not a multiple of 4 are copied, zero-padded,
        // a chunk at a time: the kernel reads 4 bytes per group.
        let mut padded = Vec::new();
        let cp = c.as_mut_ptr();
        let mut m0 = 0;
        while m0 < m {
            let m1 = (m0 + chunk).min(m);
            let (ap, la) = if k == k4 {
                (a.as_ptr().add(m0 * lda), lda)
            } else {
                padded.clear();
                padded.resize((m1 - m0) * k4, 0u8);
                for i in m0..m1 {
                    padded[(i - m0) * k4..(i - m0) * k4 + k]
                        .copy_from_slice(&a[i * lda..i * lda + k]);
                }
                (padded.as_ptr(), k4)
            };
            for p in w.panels() {
                let mut i = m0;
                while i < m1 {
                    let rows = (m1 - i).min(p.mr);
                    let ai = ap.add((i - m0) * la);
                    let ci = cp.add(i * ldc + p.n0);
                    let s = &mut scratch;
                    match (p.nv, p.mr) {
                        (1, 12) => block::<12, 1>(w, p, rows, ai, la, ci, ldc, s),
                        (2, 12) => block::<12, 2>(w, p, rows, ai, la, ci, ldc, s),
                        (3, 8) => block::<8, 3>(w, p, rows, ai, la, ci, ldc, s),
                        _ => unreachable!("no micro-kernel for panel {p:?}"),
                    }
                    i += rows;
                }
            }
            m0 = m1;
        }
    }
}

/// # Safety
/// avx512f/bw/vl are available; `src` and `dst` have equal lengths.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(crate) unsafe fn dequantize(src: &[u8], q: QParams, dst: &mut [f32]) {
    unsafe {
        let (z, s) = (_mm512_set1_epi32(q.zero), _mm512_set1_ps(q.scale));
        let n = src.len();
        let mut i = 0;
        while i < n {
            let lanes = (n - i).min(16);
            let k = mask16(lanes);
            let x = _mm_maskz_loadu_epi8(k, src.as_ptr().add(i).cast());
            let x = _mm512_sub_epi32(_mm512_cvtepu8_epi32(x), z);
            let y = _mm512_mul_ps(_mm512_cvtepi32_ps(x), s);
            _mm512_mask_storeu_ps(dst.as_mut_ptr().add(i), k, y);
            i += 16;
        }
    }
}

/// # Safety
/// avx512f/bw/vl are available; `src` and `dst` have equal lengths.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(crate) unsafe fn quantize(src: &[f32], inv_scale: f32, zero: i32, dst: &mut [u8]) {
    unsafe {
        let inv = _mm512_set1_ps(inv_scale);
        let (lo, hi) = (_mm512_set1_ps(-512.0), _mm512_set1_ps(512.0));
        let z = _mm512_set1_epi32(zero);
        let (zero_i, top) = (_mm512_setzero_si512(), _mm512_set1_epi32(255));
        let n = src.len();
        let mut i = 0;
        while i < n {
            let lanes = (n - i).min(16);
            let k = mask16(lanes);
            let x = _mm512_maskz_loadu_ps(k, src.as_ptr().add(i));
            let y = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(x, inv), lo), hi);
            let r = _mm512_add_epi32(_mm512_cvtps_epi32(y), z);
            let r = _mm512_min_epi32(_mm512_max_epi32(r, zero_i), top);
            _mm_mask_storeu_epi8(dst.as_mut_ptr().add(i).cast(), k, _mm512_cvtepi32_epi8(r));
            i += 16;
        }
    }
}
