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
        let (mut h, mut w) = (1 + r.below(20), 1 + r.below(20));
        // Up to 300 channels now and then: a border pixel runs eight, four
        // and single channel vectors (128 channels for eight on AVX-512).
        let most = if r.below(4) == 0 { 300 } else { 70 };
        let mut c = 1 + r.below(most);
        if r.below(16) == 0 {
            // A map over 1 MiB: all channels at each pixel, not in groups.
            (h, w, c) = (64 + r.below(20), 64 + r.below(20), 70 + r.below(30));
        }
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
    // Not int8: a weight off the grid, or a column whose steps are too fine
    // for 127 of them to reach its largest weight. A coarse grid (halves)
    // is int8.
    let mut w: Vec<f32> = (0..64).map(|i| (i % 8) as f32 * 0.25 - 1.0).collect();
    let bias = vec![0.0; 8];
    w[5] = 0.012345;
    for isa in Isa::available() {
        assert!(!PackedGemm::new(isa, &w, 8, 8, &bias).is_int8());
        let halves: Vec<f32> = (0..64).map(|i| (i % 5) as f32 * 0.5).collect();
        assert!(PackedGemm::new(isa, &halves, 8, 8, &bias).is_int8());
        let mut fine = halves.clone();
        fine[3] = 1.0 / 300.0;
        assert!(!PackedGemm::new(isa, &fine, 8, 8, &bias).is_int8());
    }
}

/// Output rows computed band by band, from only the input rows each band
/// reads, are the whole image's bit for bit.
#[test]
fn depthwise_bands_stitch_into_the_whole_image() {
    let mut r = Rng(0x5eed_0004);
    for case in 0..200 {
        let kh = [1, 3, 5][r.below(3)];
        let stride = 1 + r.below(2);
        let (h, w, c) = (1 + r.below(24), 1 + r.below(12), 1 + r.below(40));
        let (pad_top, pad_left) = (r.below(kh), r.below(kh));
        let pad_bottom = r.below(kh);
        if h + pad_top + pad_bottom < kh || w + pad_left + pad_left < kh {
            continue;
        }
        let geo = DwGeometry {
            h,
            w,
            c,
            kh,
            kw: kh,
            stride,
            pad_top,
            pad_left,
            oh: (h + pad_top + pad_bottom - kh) / stride + 1,
            ow: (w + 2 * pad_left - kh) / stride + 1,
        };
        let input = r.vec(h * w * c);
        let (taps, bias) = (r.vec(c * kh * kh), r.vec(c));
        let clamp = clamps(&mut r);
        let rows = 1 + r.below(5);
        for isa in Isa::available() {
            let packed = PackedDepthwise::new(isa, geo, &taps, &bias).unwrap();
            let mut whole = vec![f32::NAN; geo.oh * geo.ow * c];
            depthwise(&packed, &input, &mut whole, clamp);
            let row = geo.ow * c;
            let mut oy = 0;
            while oy < geo.oh {
                let end = (oy + rows).min(geo.oh);
                let (band, iy) = geo.band(oy..end);
                assert!(band.validate().is_ok(), "case {case}: {band:?}");
                let mut out = vec![f32::NAN; (end - oy) * row];
                let src = &input[iy.start * w * c..iy.end * w * c];
                depthwise_band(&packed, oy..end, src, &mut out, clamp);
                for (i, (g, e)) in out.iter().zip(&whole[oy * row..end * row]).enumerate() {
                    assert_eq!(
                        g.to_bits(),
                        e.to_bits(),
                        "{isa:?} case {case} {geo:?} rows {oy}..{end} [{i}]"
                    );
                }
                oy = end;
            }
        }
    }
}

fn i8s(r: &mut Rng, n: usize) -> Vec<i8> {
    (0..n).map(|_| (r.below(255) as i32 - 127) as i8).collect()
}

fn u8s(r: &mut Rng, n: usize) -> Vec<u8> {
    (0..n).map(|_| r.below(256) as u8).collect()
}

/// The integer product: every instruction set gives the portable twin's
/// bytes, and the portable twin is within one step of the naive f64
/// convolution of the dequantized tensors, quantized.
#[test]
fn qgemm_matches_the_dequantized_product_on_every_isa() {
    use qgemm::{qgemm, PackedQGemm, QIsa, QOut, QParams};
    let mut r = Rng(0x5eed_0005);
    let ns = [1, 5, 15, 16, 17, 24, 40, 48, 49, 96, 100, 200];
    for case in 0..300 {
        let m = 1 + r.below(50);
        let k = 1 + r.below(if case % 10 == 0 { 1200 } else { 120 });
        let n = ns[r.below(ns.len())];
        let (lda, ldc) = (k + r.below(5), n + r.below(3));
        let a = u8s(&mut r, (m - 1) * lda + k);
        let q = i8s(&mut r, k * n);
        let sw: Vec<f32> = (0..n).map(|_| 1e-3 + r.f32().abs() * 0.01).collect();
        let bias: Vec<f32> = r.vec(n);
        let input = QParams {
            scale: 0.01 + r.f32().abs() * 0.05,
            zero: r.below(256) as i32,
        };
        let output = QParams {
            scale: 0.05 + r.f32().abs() * 0.5,
            zero: r.below(256) as i32,
        };
        let mut want = None;
        for isa in QIsa::available() {
            let out = QOut {
                inv_scale: 1.0 / output.scale,
                zero: output.zero,
            };
            let packed = PackedQGemm::new(isa, &q, k, n, &sw, &bias, input, out);
            let mut c = vec![0xA5u8; (m - 1) * ldc + n];
            qgemm(&packed, m, &a, lda, &mut c, ldc);
            // Bytes between rows are left alone.
            for i in 0..m - 1 {
                assert!(c[i * ldc + n..(i + 1) * ldc].iter().all(|b| *b == 0xA5));
            }
            match &want {
                None => {
                    for i in 0..m {
                        for j in 0..n {
                            let mut s = 0f64;
                            for kk in 0..k {
                                let x = (a[i * lda + kk] as i32 - input.zero) as f64
                                    * input.scale as f64;
                                s += x * q[kk * n + j] as f64 * sw[j] as f64;
                            }
                            let y = (s + bias[j] as f64) / output.scale as f64 + output.zero as f64;
                            let e = y.round().clamp(0.0, 255.0);
                            let g = c[i * ldc + j] as f64;
                            assert!(
                                (g - e).abs() <= 1.0,
                                "case {case}: m {m} k {k} n {n} ({i},{j}): {g} vs {e}"
                            );
                        }
                    }
                    want = Some(c);
                }
                Some(w) => assert_eq!(&c, w, "{isa:?} case {case}: m {m} k {k} n {n}"),
            }
        }
    }
}

#[test]
fn quantize_and_dequantize_agree_on_every_isa() {
    use qgemm::{dequantize, quantize, QIsa, QParams};
    let mut r = Rng(0x5eed_0006);
    for case in 0..200 {
        let n = r.below(100);
        let q = QParams {
            scale: 0.001 + r.f32().abs(),
            zero: r.below(256) as i32,
        };
        let bytes = u8s(&mut r, n);
        let mut floats: Vec<f32> = (0..n).map(|_| r.f32() * 300.0 * q.scale).collect();
        if n > 3 {
            // Ties, huge values.
            floats[0] = 2.5 * q.scale;
            floats[1] = 1e30;
            floats[2] = -1e30;
        }
        let inv = 1.0 / q.scale;
        let mut want_f = vec![0f32; n];
        let mut want_q = vec![0u8; n];
        dequantize(QIsa::Portable, &bytes, q, &mut want_f);
        quantize(QIsa::Portable, &floats, inv, q.zero, &mut want_q);
        for (i, (&b, &f)) in bytes.iter().zip(&want_f).enumerate() {
            assert_eq!(f, (b as i32 - q.zero) as f32 * q.scale, "case {case} [{i}]");
        }
        for (i, (&x, &g)) in floats.iter().zip(&want_q).enumerate() {
            let e = ((x * inv).round_ties_even() as i64)
                .saturating_add(q.zero as i64)
                .clamp(0, 255);
            assert_eq!(g as i64, e, "case {case} [{i}]: {x}");
        }
        for isa in QIsa::available() {
            let mut f = vec![f32::NAN; n];
            let mut b = vec![0u8; n];
            dequantize(isa, &bytes, q, &mut f);
            quantize(isa, &floats, inv, q.zero, &mut b);
            assert_eq!(f, want_f, "{isa:?} case {case}");
            assert_eq!(b, want_q, "{isa:?} case {case}");
        }
    }
}
