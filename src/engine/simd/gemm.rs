//! The matrix-product micro-kernel and its driver, generic over the vector
//! type: `MR` rows of `a` times one packed panel of `NV` vectors, the
//! accumulators held in registers for the whole `k` loop, bias, clamp and
//! residual applied before the one store.
//!
//! Blocking: rows are taken in chunks whose `a` rows fit in about 128 KiB
//! (L2-resident while every panel passes over them); a panel (`k x NV`
//! vectors) is reused by every row block of the chunk (int8 weights are
//! dequantized into one panel's buffer at that point). Activations are read
//! in place (row stride `lda`), never packed.

use super::{Clamp, PackedGemm, Panel, Residual, Vector};

/// Bytes of `a` rows per chunk.
const CHUNK_BYTES: usize = 128 << 10;

/// # Safety
/// `a` holds `MR` rows of `k` floats at stride `lda`, `b` a packed panel of
/// `k * NV * LANES` floats, `bias` `NV * LANES` floats, `c` (and `res` when
/// not null) `MR` rows of `cols` floats at stride `ldc` (`ldr`). The
/// instruction set of `V` is enabled in the caller.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
// Index loops over constant ranges: fully unrolled, so the accumulators
// are promoted to registers (iterator forms left them on the stack).
#[allow(clippy::needless_range_loop)]
unsafe fn tile<V: Vector, const MR: usize, const NV: usize, const RES: bool>(
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    bias: *const f32,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    clamp: Clamp,
    res: *const f32,
    ldr: usize,
) {
    unsafe {
        let mut acc = [[V::zero(); NV]; MR];
        for j in 0..NV {
            let bj = V::load(bias.add(j * V::LANES));
            for i in 0..MR {
                acc[i][j] = bj;
            }
        }
        let mut bp = b;
        let mut ap = a;
        for _ in 0..k {
            let mut bv = [V::zero(); NV];
            for j in 0..NV {
                bv[j] = V::load(bp.add(j * V::LANES));
            }
            for i in 0..MR {
                let av = V::splat(*ap.add(i * lda));
                for j in 0..NV {
                    acc[i][j] = V::fma(av, bv[j], acc[i][j]);
                }
            }
            bp = bp.add(NV * V::LANES);
            ap = ap.add(1);
        }
        // Branch-free epilogue (every access to `acc` at a constant index,
        // so it stays in registers): partial stores with a lane count that
        // is `LANES` for whole vectors and 0 past the valid columns.
        let (lo, hi) = (V::splat(clamp.lo), V::splat(clamp.hi));
        let mut lanes = [0usize; NV];
        for j in 0..NV {
            lanes[j] = cols.saturating_sub(j * V::LANES).min(V::LANES);
        }
        for i in 0..MR {
            for j in 0..NV {
                let mut v = V::min(V::max(acc[i][j], lo), hi);
                if RES {
                    v = V::add(
                        v,
                        V::load_partial(res.add(i * ldr + j * V::LANES), lanes[j]),
                    );
                }
                V::store_partial(c.add(i * ldc + j * V::LANES), v, lanes[j]);
            }
        }
    }
}

/// Run `rows <= MR` rows through one panel: whole blocks in place, a short
/// last block through zero-padded copies.
///
/// # Safety
/// As `tile`, for `rows` rows.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn block<V: Vector, const MR: usize, const NV: usize>(
    w: &PackedGemm,
    p: &Panel,
    b: *const f32,
    rows: usize,
    a: *const f32,
    lda: usize,
    c: *mut f32,
    ldc: usize,
    clamp: Clamp,
    res: *const f32,
    ldr: usize,
    scratch: &mut Vec<f32>,
) {
    unsafe {
        let bias = w.bias.as_slice().as_ptr().add(p.n0);
        // A macro, not a closure: closures do not inherit the caller's
        // target features, so the kernel would not be inlined into them.
        macro_rules! run {
            ($r:expr; $a:expr, $lda:expr, $c:expr, $ldc:expr, $res:expr, $ldr:expr) => {
                if $res.is_null() {
                    tile::<V, $r, NV, false>(
                        w.k, $a, $lda, b, bias, $c, $ldc, p.cols, clamp, $res, $ldr,
                    )
                } else {
                    tile::<V, $r, NV, true>(
                        w.k, $a, $lda, b, bias, $c, $ldc, p.cols, clamp, $res, $ldr,
                    )
                }
            };
        }
        if rows == MR {
            run!(MR; a, lda, c, ldc, res, ldr);
            return;
        }
        if rows <= 2 {
            // One or two rows (the classifier at batch 1, the last row of a
            // 7x7 map): one-row tiles in place. Their few accumulators wait
            // on the FMA latency, but an MR-row tile on padded copies would
            // do MR times the work.
            for r in 0..rows {
                let rr = if res.is_null() { res } else { res.add(r * ldr) };
                run!(1; a.add(r * lda), lda, c.add(r * ldc), ldc, rr, ldr);
            }
            return;
        }
        // Short block: copy the rows (and residual rows) into MR-row buffers.
        let k = w.k;
        let width = p.cols;
        // Not cleared: the rows past `rows` only feed outputs that are
        // discarded (zeroing it was a pass over `MR * k` floats per panel:
        // for the classifier at batch 1, ~2 MB per image).
        let need = MR * k + 2 * MR * width;
        if scratch.len() < need {
            scratch.resize(need, 0.0);
        }
        let (sa, rest) = scratch.split_at_mut(MR * k);
        let (sc, sr) = rest.split_at_mut(MR * width);
        for i in 0..rows {
            std::ptr::copy_nonoverlapping(a.add(i * lda), sa.as_mut_ptr().add(i * k), k);
            if !res.is_null() {
                std::ptr::copy_nonoverlapping(
                    res.add(i * ldr),
                    sr.as_mut_ptr().add(i * width),
                    width,
                );
            }
        }
        let sres = if res.is_null() {
            std::ptr::null()
        } else {
            sr.as_ptr()
        };
        run!(MR; sa.as_ptr(), k, sc.as_mut_ptr(), width, sres, width);
        for i in 0..rows {
            std::ptr::copy_nonoverlapping(sc.as_ptr().add(i * width), c.add(i * ldc), width);
        }
    }
}

/// The whole product; see [`super::gemm`].
///
/// # Safety
/// The instruction set of `V` is enabled in the caller; slices were checked
/// by [`super::gemm`] to hold `m` rows at their strides.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm<V: Vector>(
    w: &PackedGemm,
    m: usize,
    a: &[f32],
    lda: usize,
    c: &mut [f32],
    ldc: usize,
    clamp: Clamp,
    res: Option<Residual>,
) {
    unsafe {
        let (res, ldr) = match res {
            Some(r) => (r.data.as_ptr(), r.stride),
            None => (std::ptr::null(), 0),
        };
        let max_mr = w.panels.iter().map(|p| p.mr).max().unwrap_or(1);
        let chunk = (CHUNK_BYTES / (4 * w.k.max(1)) / 24 * 24).max(24.max(max_mr));
        let mut scratch = Vec::new();
        let mut values = Vec::new();
        let (ap, cp) = (a.as_ptr(), c.as_mut_ptr());
        let mut m0 = 0;
        while m0 < m {
            let m1 = (m0 + chunk).min(m);
            for p in &w.panels {
                // int8 weights: the panel dequantized once per chunk of rows.
                let b = w.panel_values(p, &mut values).as_ptr();
                let mut i = m0;
                while i < m1 {
                    let rows = (m1 - i).min(p.mr);
                    let (ai, ci) = (ap.add(i * lda), cp.add(i * ldc + p.n0));
                    let ri = if res.is_null() {
                        res
                    } else {
                        res.add(i * ldr + p.n0)
                    };
                    let s = &mut scratch;
                    match (p.nv, p.mr) {
                        (1, 12) => {
                            block::<V, 12, 1>(w, p, b, rows, ai, lda, ci, ldc, clamp, ri, ldr, s)
                        }
                        (2, 12) => {
                            block::<V, 12, 2>(w, p, b, rows, ai, lda, ci, ldc, clamp, ri, ldr, s)
                        }
                        (3, 8) => {
                            block::<V, 8, 3>(w, p, b, rows, ai, lda, ci, ldc, clamp, ri, ldr, s)
                        }
                        (2, 6) => {
                            block::<V, 6, 2>(w, p, b, rows, ai, lda, ci, ldc, clamp, ri, ldr, s)
                        }
                        _ => unreachable!("no micro-kernel for panel {p:?}"),
                    }
                    i += rows;
                }
            }
            m0 = m1;
        }
    }
}
