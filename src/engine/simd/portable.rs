//! Safe plain-Rust twins of the SIMD kernels: the path for CPUs without
//! AVX2/AVX-512, and the reference the SIMD kernels are tested against. They
//! read the same packed data (a portable `PackedGemm` is one panel as wide
//! as the padded matrix).

use super::{Clamp, DwGeometry, PackedDepthwise, PackedGemm, Residual};

#[allow(clippy::too_many_arguments)]
pub(super) fn gemm(
    w: &PackedGemm,
    m: usize,
    a: &[f32],
    lda: usize,
    c: &mut [f32],
    ldc: usize,
    clamp: Clamp,
    res: Option<Residual>,
) {
    let (k, n) = (w.k, w.n);
    let bias = &w.bias.as_slice()[..n];
    // Each panel's values once per call (int8 weights dequantized).
    let values: Vec<std::borrow::Cow<[f32]>> = w.panels.iter().map(|p| w.panel_cow(p)).collect();
    let mut acc = vec![0f32; n];
    for i in 0..m {
        acc.copy_from_slice(bias);
        let row = &a[i * lda..i * lda + k];
        for (p, data) in w.panels.iter().zip(&values) {
            let width = p.nv * w.isa.lanes();
            let out = &mut acc[p.n0..p.n0 + p.cols];
            for (kk, &x) in row.iter().enumerate() {
                let wr = &data[kk * width..kk * width + p.cols];
                for (o, &wv) in out.iter_mut().zip(wr) {
                    *o += x * wv;
                }
            }
        }
        let ci = &mut c[i * ldc..i * ldc + n];
        for (j, (o, v)) in ci.iter_mut().zip(&acc).enumerate() {
            *o = clamp.apply(*v) + res.map_or(0.0, |r| r.data[i * r.stride + j]);
        }
    }
}

pub(super) fn depthwise(
    w: &PackedDepthwise,
    g: &DwGeometry,
    input: &[f32],
    out: &mut [f32],
    clamp: Clamp,
) {
    let taps = w.taps.as_slice();
    let bias = w.bias.as_slice();
    let mut acc = vec![0f32; g.c];
    for oy in 0..g.oh {
        for ox in 0..g.ow {
            acc.copy_from_slice(&bias[..g.c]);
            for ky in 0..g.kh {
                let iy = (oy * g.stride + ky) as isize - g.pad_top as isize;
                if iy < 0 || iy >= g.h as isize {
                    continue;
                }
                for kx in 0..g.kw {
                    let ix = (ox * g.stride + kx) as isize - g.pad_left as isize;
                    if ix < 0 || ix >= g.w as isize {
                        continue;
                    }
                    let px = (iy as usize * g.w + ix as usize) * g.c;
                    let t = (ky * g.kw + kx) * w.cp;
                    for (ch, a) in acc.iter_mut().enumerate() {
                        *a += input[px + ch] * taps[t + ch];
                    }
                }
            }
            let o = (oy * g.ow + ox) * g.c;
            for (dst, a) in out[o..o + g.c].iter_mut().zip(&acc) {
                *dst = clamp.apply(*a);
            }
        }
    }
}
