//! AVX2 kernels of `qgemm.rs`, for CPUs without VNNI. `vpmaddwd`
//! multiplies 16 pairs of i16 and adds each pair into an i32 lane: with the
//! u8 activations and s8 weights widened to i16, 16 exact products per
//! instruction (f32 FMA: 8). `vpmaddubsw` would take the bytes as they are
//! (32 products) but sums its pairs in saturating i16, and 255 x 127 x 2
//! does not fit: its results would differ from the f32 plan's wherever two
//! large products meet.
//!
//! Micro-kernel: `MR` rows times `NV` vectors of 8 columns, the i32
//! accumulators in registers for the whole `k` loop; per pair of rows of
//! `k`, one 4-byte broadcast (two i16) per row of `a` and one 16-byte load
//! per vector of weights, sign-extended to i16 (the weights stay bytes in
//! memory, as VNNI's). Rows of `a` are widened to i16 a chunk at a time
//! (L2-resident while every panel passes over them). Epilogue as VNNI's:
//! to f32, one FMA with the column's multiplier and offset, clamp to
//! 0..255, round half to even, narrow to bytes.

use super::qgemm::{quantize_one, PackedQGemm, QPanel, QParams};
use std::arch::x86_64::*;

/// Bytes of widened `a` rows per chunk of rows.
const CHUNK_BYTES: usize = 96 << 10;

/// i32 lanes of a ymm.
const LANES: usize = 8;

/// The 8 i32 lanes of `v` (each in 0..=255) as bytes, `lanes` of them
/// stored at `dst`.
///
/// # Safety
/// `dst` is valid for `lanes <= 8` bytes; avx2 is enabled in the caller.
#[inline(always)]
unsafe fn store_bytes(dst: *mut u8, v: __m256i, lanes: usize) {
    unsafe {
        // i32 -> u16 -> u8 within each 128-bit half, then the two halves'
        // first 4 bytes side by side.
        let w = _mm256_packus_epi32(v, v);
        let b = _mm256_packus_epi16(w, w);
        let b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 0, 0, 0, 0, 0, 0));
        let lo = _mm256_castsi256_si128(b);
        if lanes == LANES {
            _mm_storel_epi64(dst.cast(), lo);
        } else {
            let mut tmp = [0u8; 16];
            _mm_storeu_si128(tmp.as_mut_ptr().cast(), lo);
            std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, lanes);
        }
    }
}

/// # Safety
/// `a` holds `MR` rows of `k2` i16 at stride `lda`; `b` a packed panel of
/// `k2 * NV * 8` bytes; `init`, `mul`, `add` `NV * 8` values; `c` `MR` rows
/// of `cols` bytes at stride `ldc`. avx2 and fma are enabled in the caller.
#[inline(always)]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn tile<const MR: usize, const NV: usize>(
    k2: usize,
    a: *const i16,
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
        let mut acc = [[_mm256_setzero_si256(); NV]; MR];
        for j in 0..NV {
            let v = _mm256_loadu_si256(init.add(j * LANES).cast());
            for i in 0..MR {
                acc[i][j] = v;
            }
        }
        let mut bp = b;
        let mut g = 0;
        while g < k2 {
            let mut bv = [_mm256_setzero_si256(); NV];
            for j in 0..NV {
                bv[j] = _mm256_cvtepi8_epi16(_mm_loadu_si128(bp.add(j * 2 * LANES).cast()));
            }
            for i in 0..MR {
                let av = _mm256_set1_epi32(a.add(i * lda + g).cast::<i32>().read_unaligned());
                for j in 0..NV {
                    acc[i][j] = _mm256_add_epi32(acc[i][j], _mm256_madd_epi16(av, bv[j]));
                }
            }
            bp = bp.add(NV * 2 * LANES);
            g += 2;
        }
        let (zero, top) = (_mm256_setzero_ps(), _mm256_set1_ps(255.0));
        for j in 0..NV {
            let m = _mm256_loadu_ps(mul.add(j * LANES));
            let ad = _mm256_loadu_ps(add.add(j * LANES));
            let lanes = cols.saturating_sub(j * LANES).min(LANES);
            if lanes == 0 {
                continue;
            }
            for i in 0..MR {
                let y = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[i][j]), m, ad);
                let y = _mm256_min_ps(_mm256_max_ps(y, zero), top);
                store_bytes(c.add(i * ldc + j * LANES), _mm256_cvtps_epi32(y), lanes);
            }
        }
    }
}

/// `rows <= MR` rows through one panel; a short block writes through a
/// scratch copy (its missing rows of `a` are the chunk's zero padding).
///
/// # Safety
/// As `tile`, with `a` holding `MR` rows (read) of which `rows` are
/// written to `c`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn block<const MR: usize, const NV: usize>(
    w: &PackedQGemm,
    p: &QPanel,
    rows: usize,
    a: *const i16,
    lda: usize,
    c: *mut u8,
    ldc: usize,
    scratch: &mut Vec<u8>,
) {
    unsafe {
        let k2 = w.kg();
        let b = w.data().as_ptr().add(p.offset);
        let init = w.init().as_ptr().add(p.n0);
        let mul = w.mul().as_ptr().add(p.n0);
        let add = w.add().as_ptr().add(p.n0);
        if rows == MR {
            tile::<MR, NV>(k2, a, lda, b, init, mul, add, c, ldc, p.cols);
            return;
        }
        let width = p.cols;
        if scratch.len() < MR * width {
            scratch.resize(MR * width, 0);
        }
        tile::<MR, NV>(
            k2,
            a,
            lda,
            b,
            init,
            mul,
            add,
            scratch.as_mut_ptr(),
            width,
            width,
        );
        for i in 0..rows {
            std::ptr::copy_nonoverlapping(scratch.as_ptr().add(i * width), c.add(i * ldc), width);
        }
    }
}

/// # Safety
/// avx2 and fma are available; the slices hold `m` rows at their strides
/// (checked by [`super::qgemm::qgemm`]).
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn qgemm(
    w: &PackedQGemm,
    m: usize,
    a: &[u8],
    lda: usize,
    c: &mut [u8],
    ldc: usize,
) {
    unsafe {
        let (k, k2) = (w.k(), w.kg());
        let max_mr = w.panels().iter().map(|p| p.mr).max().unwrap_or(1);
        let chunk = (CHUNK_BYTES / (2 * k2).max(1) / 12 * 12).max(12);
        // The chunk's rows widened to i16, zero-padded to `k2` and by
        // `max_mr` rows (read by a short last block, never written out).
        let mut wide: Vec<i16> = Vec::new();
        let mut scratch = Vec::new();
        let cp = c.as_mut_ptr();
        let mut m0 = 0;
        while m0 < m {
            let m1 = (m0 + chunk).min(m);
            wide.clear();
            wide.resize((m1 - m0 + max_mr) * k2, 0);
            for i in m0..m1 {
                let dst = &mut wide[(i - m0) * k2..(i - m0) * k2 + k];
                for (d, &s) in dst.iter_mut().zip(&a[i * lda..i * lda + k]) {
                    *d = s as i16;
                }
            }
            for p in w.panels() {
                let mut i = m0;
                while i < m1 {
                    let rows = (m1 - i).min(p.mr);
                    let ai = wide.as_ptr().add((i - m0) * k2);
                    let ci = cp.add(i * ldc + p.n0);
                    let s = &mut scratch;
                    match (p.nv, p.mr) {
                        (1, 12) => block::<12, 1>(w, p, rows, ai, k2, ci, ldc, s),
                        (2, 6) => block::<6, 2>(w, p, rows, ai, k2, ci, ldc, s),
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
/// avx2 is available; `src` and `dst` have equal lengths.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn dequantize(src: &[u8], q: QParams, dst: &mut [f32]) {
    unsafe {
        let (z, s) = (_mm256_set1_epi32(q.zero), _mm256_set1_ps(q.scale));
        let n = src.len();
        let whole = n / LANES * LANES;
        let mut i = 0;
        while i < whole {
            let x = _mm_loadl_epi64(src.as_ptr().add(i).cast());
            let x = _mm256_sub_epi32(_mm256_cvtepu8_epi32(x), z);
            let y = _mm256_mul_ps(_mm256_cvtepi32_ps(x), s);
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), y);
            i += LANES;
        }
        for (d, &v) in dst[whole..].iter_mut().zip(&src[whole..]) {
            *d = (v as i32 - q.zero) as f32 * q.scale;
        }
    }
}

/// # Safety
/// avx2 is available; `src` and `dst` have equal lengths.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn quantize(src: &[f32], inv_scale: f32, zero: i32, dst: &mut [u8]) {
    unsafe {
        let inv = _mm256_set1_ps(inv_scale);
        let (lo, hi) = (_mm256_set1_ps(-512.0), _mm256_set1_ps(512.0));
        let z = _mm256_set1_epi32(zero);
        let (zero_i, top) = (_mm256_setzero_si256(), _mm256_set1_epi32(255));
        let n = src.len();
        let whole = n / LANES * LANES;
        let mut i = 0;
        while i < whole {
            let x = _mm256_loadu_ps(src.as_ptr().add(i));
            let y = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(x, inv), lo), hi);
            let r = _mm256_add_epi32(_mm256_cvtps_epi32(y), z);
            let r = _mm256_min_epi32(_mm256_max_epi32(r, zero_i), top);
            store_bytes(dst.as_mut_ptr().add(i), r, LANES);
            i += LANES;
        }
        for (d, &v) in dst[whole..].iter_mut().zip(&src[whole..]) {
            *d = quantize_one(v, inv_scale, zero);
        }
    }
}
