//! Every kernel, on every instruction set this CPU has, against a naive
//! reference on random shapes (odd sizes, partial vectors, short row blocks,
//! strides, padding, fused clamp and residual).

use super::*;

/// xorshift64*: deterministic random numbers without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f32()).collect()
    }
}

fn clamps(r: &mut Rng) -> Clamp {
    match r.below(3) {
        0 => Clamp::NONE,
        1 => Clamp { lo: 0.0, hi: 6.0 },
        _ => Clamp { lo: -0.3, hi: 0.4 },
    }
}

fn close(got: f32, want: f64, scale: f64) -> bool {
    (got as f64 - want).abs() <= 1e-5 * (scale + 1.0)
}

#[test]
fn gemm_matches_the_naive_product_on_every_isa() {
    let mut r = Rng(0x5eed_0001);
    let ns = [1, 7, 8, 15, 16, 17, 24, 33, 40, 48, 80, 96, 112, 200];
    for case in 0..300 {
        let m = 1 + r.below(60);
        let k = 1 + r.below(if case % 10 == 0 { 700 } else { 100 });
        let n = ns[r.below(ns.len())];
        let lda = k + r.below(3);
        let ldc = n + r.below(3);
        let a = r.vec((m - 1) * lda + k);
        let w = r.vec(k * n);
        let bias = r.vec(n);
        let clamp = clamps(&mut r);
        let res_stride = n + r.below(2);
        let res = (r.below(2) == 1).then(|| r.vec((m - 1) * res_stride + n));
        for isa in Isa::available() {
            let packed = PackedGemm::new(isa, &w, k, n, &bias);
            let mut c = vec![f32::NAN; (m - 1) * ldc + n];
            let residual = res.as_deref().map(|d| Residual {
                data: d,
                stride: res_stride,
            });
            gemm(&packed, m, &a, lda, &mut c, ldc, clamp, residual);
            for i in 0..m {
                for j in 0..n {
                    let mut s = bias[j] as f64;
                    let mut scale = bias[j].abs() as f64;
                    for kk in 0..k {
                        s += a[i * lda + kk] as f64 * w[kk * n + j] as f64;
                        scale += (a[i * lda + kk] * w[kk * n + j]).abs() as f64;
                    }
                    let mut want = (s as f32).max(clamp.lo).min(clamp.hi) as f64;
                    if let Some(d) = &res {
                        want += d[i * res_stride + j] as f64;
                    }
                    let got = c[i * ldc + j];
                    assert!(
                        close(got, want, scale),
                        "{isa:?} case {case}: m {m} k {k} n {n} at ({i},{j}): {got} vs {want}"
                    );
                }
            }
        }
    }
}

#[test]
fn depthwise_matches_the_naive_convolution_on_every_isa() {
    let mut r = Rng(0x5eed_0002);
    let kernels = [1, 2, 3, 3, 5, 5, 7];
    for case in 0..300 {
        let kh = kernels[r.below(kernels.len())];
        let kw = if r.below(4) == 0 {
            kernels[r.below(kernels.len())]
        } else {
            kh
        };
        let stride = 1 + r.below(3).min(1) + usize::from(r.below(8) == 0);
        let (h, w) = (1 + r.below(20), 1 + r.below(20));
        let c = 1 + r.below(70);
        let (pad_top, pad_left) = (r.below(kh), r.below(kw));
        let (pad_bottom, pad_right) = (r.below(kh), r.below(kw));
        if h + pad_top + pad_bottom < kh || w + pad_left + pad_right < kw {
            continue;
        }
        let geo = DwGeometry {
            h,
            w,
            c,
            kh,
            kw,
            stride,
            pad_top,
            pad_left,
            oh: (h + pad_top + pad_bottom - kh) / stride + 1,
            ow: (w + pad_left + pad_right - kw) / stride + 1,
        };
        let input = r.vec(h * w * c);
        let taps = r.vec(c * kh * kw);
        let bias = r.vec(c);
        let clamp = clamps(&mut r);
        for isa in Isa::available() {
            let packed = PackedDepthwise::new(isa, geo, &taps, &bias).unwrap();
            let mut out = vec![f32::NAN; geo.oh * geo.ow * c];
            depthwise(&packed, &input, &mut out, clamp);
            for oy in 0..geo.oh {
                for ox in 0..geo.ow {
                    for ch in 0..c {
                        let mut s = bias[ch] as f64;
                        let mut scale = bias[ch].abs() as f64;
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * stride + ky) as isize - pad_top as isize;
                                let ix = (ox * stride + kx) as isize - pad_left as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                let x = input[(iy as usize * w + ix as usize) * c + ch];
                                let t = taps[(ch * kh + ky) * kw + kx];
                                s += x as f64 * t as f64;
                                scale += (x * t).abs() as f64;
                            }
                        }
                        let want = (s as f32).max(clamp.lo).min(clamp.hi) as f64;
                        let got = out[(oy * geo.ow + ox) * c + ch];
                        assert!(
                            close(got, want, scale),
                            "{isa:?} case {case}: {geo:?} at ({oy},{ox},{ch}): {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn clamps_compose() {
    let relu6 = Clamp::NONE.then(0.0, 6.0);
    assert_eq!(relu6, Clamp { lo: 0.0, hi: 6.0 });
    assert_eq!(relu6.then(1.0, 10.0), Clamp { lo: 1.0, hi: 6.0 });
    assert!(Clamp::NONE.is_none() && !relu6.is_none());
    assert_eq!(relu6.apply(7.5), 6.0);
    assert_eq!(relu6.apply(-1.0), 0.0);
}

#[test]
fn bad_depthwise_geometry_is_an_error_not_a_panic() {
    let geo = DwGeometry {
        h: 4,
        w: 4,
        c: 3,
        kh: 3,
        kw: 3,
        stride: 1,
        pad_top: 0,
        pad_left: 0,
        oh: 9,
        ow: 2,
    };
    assert!(PackedDepthwise::new(Isa::Portable, geo, &[0.0; 27], &[0.0; 3]).is_err());
}

/// Weights that are exactly int8 times a scale per column (an int8-weight
/// file, dequantized at load) are held as int8 and give the f32 pack's
/// results bit for bit; weights that are not stay f32.
#[test]
fn int8_exact_weights_are_held_as_int8_with_the_f32_packs_results() {
    let mut r = Rng(0x5eed_0003);
    let ns = [1, 7, 8, 17, 24, 33, 48, 80, 200];
    for case in 0..150 {
        let m = 1 + r.below(40);
        let k = 1 + r.below(if case % 10 == 0 { 600 } else { 90 });
        let n = ns[r.below(ns.len())];
        let (lda, ldc) = (k + r.below(3), n + r.below(3));
        let a = r.vec((m - 1) * lda + k);
        let bias = r.vec(n);
        let clamp = clamps(&mut r);
        let scales: Vec<f32> = (0..n).map(|_| 1e-3 + r.f32().abs() * 0.1).collect();
        let mut w = vec![0f32; k * n];
        for j in 0..n {
            // An all-zero column now and then; else one weight at +-127.
            if r.below(20) == 0 {
                continue;
            }
            let top = r.below(k);
            for kk in 0..k {
                let q = if kk == top {
                    if r.below(2) == 0 {
                        127
                    } else {
                        -127
                    }
                } else {
                    r.below(255) as i32 - 127
                };
                w[kk * n + j] = q as f32 * scales[j];
            }
        }
        for isa in Isa::available() {
            let int8 = PackedGemm::new(isa, &w, k, n, &bias);
            let f32s = PackedGemm::new_f32(isa, &w, k, n, &bias);
            assert!(int8.is_int8() && !f32s.is_int8(), "case {case}: {isa:?}");
            if k >= 32 {
                assert!(
                    int8.bytes() < f32s.bytes() / 2,
                    "case {case}: {} vs {} bytes",
                    int8.bytes(),
                    f32s.bytes()
                );
            }
            let run = |p: &PackedGemm| {
                let mut c = vec![f32::NAN; (m - 1) * ldc + n];
                gemm(p, m, &a, lda, &mut c, ldc, clamp, None);
                c
            };
            let (got, want) = (run(&int8), run(&f32s));
            for i in 0..m {
                for j in 0..n {
                    let (g, e) = (got[i * ldc + j], want[i * ldc + j]);
                    assert_eq!(
                        g.to_bits(),
                        e.to_bits(),
                        "{isa:?} case {case}: m {m} k {k} n {n} at ({i},{j}): {g} vs {e}"
                    );
                }
            }
        }
    }
    // Not int8: a weight off the grid, or a column whose steps are not a
    // 127th of its largest weight.
    let mut w: Vec<f32> = (0..64).map(|i| (i % 8) as f32 * 0.25 - 1.0).collect();
    let bias = vec![0.0; 8];
    w[5] = 0.012345;
    for isa in Isa::available() {
        assert!(!PackedGemm::new(isa, &w, 8, 8, &bias).is_int8());
        let halves: Vec<f32> = (0..64).map(|i| (i % 5) as f32 * 0.5).collect();
        assert!(!PackedGemm::new(isa, &halves, 8, 8, &bias).is_int8());
    }
}
