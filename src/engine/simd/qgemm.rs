//! Integer kernels for quantized (QDQ) models: a u8 x s8 matrix product
//! accumulated in i32 with a requantizing epilogue, and the quantize /
//! dequantize passes around them. Safe API here (bounds checked once per
//! call); the AVX-512 VNNI kernels are in `vnni.rs`, the AVX2 ones in
//! `qavx2.rs`, their portable twins below.
//!
//! Activations are u8 with a zero point (an int8 tensor of zero point `z`
//! is the same values plus 128, zero point `z + 128`); weights are s8 with
//! a scale per output column. One output is
//!
//! ```text
//! acc  = sum_k x[k] * q[k][n] - zx * sum_k q[k][n]             (exact, i32)
//! y    = acc * mul[n] + add[n]                                  (one f32 FMA)
//! out  = round_half_even(clamp(y, 0, 255))                      (u8)
//! ```
//!
//! with `mul = sx * sw[n] / sy` and `add = bias[n] / sy + zy`: the f32
//! convolution of the dequantized tensors followed by `QuantizeLinear`, but
//! with the sum of products exact.

use super::{AlignedVec, Isa};

/// The instruction set of the integer kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QIsa {
    Portable,
    /// AVX-512 with VNNI (`vpdpbusd`: 64 u8 x s8 products per instruction).
    Vnni512,
    /// AVX2: weights and activations widened to i16 in registers,
    /// `vpmaddwd` (16 products per instruction, summed in pairs into i32:
    /// exact, where `vpmaddubsw`'s u8 x s8 pairs saturate at i16).
    Avx2,
}

impl QIsa {
    pub fn name(self) -> &'static str {
        match self {
            QIsa::Portable => "portable",
            QIsa::Vnni512 => "avx512-vnni",
            QIsa::Avx2 => "avx2",
        }
    }

    pub fn is_supported(self) -> bool {
        match self {
            QIsa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            QIsa::Vnni512 => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "x86_64")]
            QIsa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(not(target_arch = "x86_64"))]
            QIsa::Vnni512 | QIsa::Avx2 => false,
        }
    }

    pub fn available() -> Vec<QIsa> {
        [QIsa::Portable, QIsa::Avx2, QIsa::Vnni512]
            .into_iter()
            .filter(|i| i.is_supported())
            .collect()
    }

    /// The integer kernels that go with the float kernels' instruction set:
    /// VNNI when the float kernels run AVX-512 and the CPU has it, else
    /// AVX2 when the float kernels run AVX2 or AVX-512, else none (`None`:
    /// a quantized model keeps running its float kernels, which beat
    /// portable integer code by far).
    pub fn for_float(isa: Isa) -> Option<QIsa> {
        match isa {
            Isa::Avx512 if QIsa::Vnni512.is_supported() => Some(QIsa::Vnni512),
            Isa::Avx512 | Isa::Avx2 if QIsa::Avx2.is_supported() => Some(QIsa::Avx2),
            _ => None,
        }
    }

    /// Columns per vector of the packed layout (i32 lanes of a register).
    pub(crate) fn lanes(self) -> usize {
        match self {
            QIsa::Avx2 => 8,
            QIsa::Portable | QIsa::Vnni512 => QLANES,
        }
    }
}

/// Columns per vector of the byte layout (16 i32 lanes of a zmm).
pub(crate) const QLANES: usize = 16;

/// One vertical strip of packed weights: `nv` vectors of the instruction
/// set's lanes of columns, run `mr` rows at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QPanel {
    pub n0: usize,
    pub cols: usize,
    pub nv: usize,
    pub mr: usize,
    /// Byte offset of the panel: `k4 * nv * 16`, or (AVX2) `k2 * nv * 8`.
    pub offset: usize,
}

/// Quantization of a tensor: `real = (q - zero) * scale`, `q` in u8.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QParams {
    pub scale: f32,
    pub zero: i32,
}

/// Where a quantized op writes: `QuantizeLinear` with the reciprocal of
/// its scale (as tract holds it) and its zero point (u8).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QOut {
    pub inv_scale: f32,
    pub zero: i32,
}

/// The s8 weights of a `k x n` product, packed for the integer kernels,
/// with the epilogue's per-column constants.
#[derive(Clone)]
pub struct PackedQGemm {
    isa: QIsa,
    k: usize,
    /// `k` rounded up to the instruction set's group of rows: 4 (the
    /// products go 4 at a time), AVX2 2.
    kg: usize,
    n: usize,
    panels: Vec<QPanel>,
    /// Panel by panel: groups of 4 rows (`k`), within a group the 16
    /// columns of each vector, 4 bytes (the 4 rows) per column; for AVX2
    /// pairs of rows, within a pair the 8 columns of each vector, 2 bytes
    /// per column.
    data: Vec<i8>,
    /// `-zx * sum_k q[k][n]`, padded to whole vectors.
    init: Vec<i32>,
    mul: AlignedVec,
    add: AlignedVec,
}

impl std::fmt::Debug for PackedQGemm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PackedQGemm({}x{}, {}, {} panels)",
            self.k,
            self.n,
            self.isa.name(),
            self.panels.len()
        )
    }
}

fn plan_panels(isa: QIsa, n: usize, kg: usize) -> Vec<QPanel> {
    let l = isa.lanes();
    let vectors = n.div_ceil(l);
    // (nv, mr): 24 accumulators of 32 zmm registers (12 of 16 ymm), as the
    // f32 kernels.
    let (wide, shapes): (usize, &[(usize, usize)]) = match isa {
        QIsa::Vnni512 => (3, &[(1, 12), (2, 12), (3, 8)]),
        QIsa::Avx2 => (2, &[(1, 12), (2, 6)]),
        QIsa::Portable => (3, &[]),
    };
    let mut panels = Vec::new();
    let (mut v, mut offset) = (0, 0);
    while v < vectors {
        let nv = (vectors - v).min(wide);
        let mr = shapes
            .iter()
            .find(|(s, _)| *s == nv)
            .map_or(1, |(_, mr)| *mr);
        let n0 = v * l;
        panels.push(QPanel {
            n0,
            cols: (n - n0).min(nv * l),
            nv,
            mr,
            offset,
        });
        offset += kg * nv * l;
        v += nv;
    }
    panels
}

impl PackedQGemm {
    /// Pack `q` (`k x n` row-major s8 weights) with their per-column
    /// scales `sw`, the f32 `bias`, the input's quantization and the
    /// output's (`QuantizeLinear`'s reciprocal scale and zero point).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        isa: QIsa,
        q: &[i8],
        k: usize,
        n: usize,
        sw: &[f32],
        bias: &[f32],
        input: QParams,
        output: QOut,
    ) -> PackedQGemm {
        assert_eq!(q.len(), k * n, "weights are not {k} x {n}");
        assert!(
            sw.len() == n && bias.len() == n,
            "scales or bias not {n} long"
        );
        let group = if isa == QIsa::Avx2 { 2 } else { 4 };
        let kg = k.div_ceil(group) * group;
        let panels = plan_panels(isa, n, kg);
        let total: usize = panels.iter().map(|p| kg * p.nv * isa.lanes()).sum();
        let mut data = vec![0i8; total];
        for p in &panels {
            let width = p.nv * isa.lanes();
            for kk in 0..k {
                let (g, t) = (kk / group, kk % group);
                for j in 0..p.cols {
                    data[p.offset + (g * width + j) * group + t] = q[kk * n + p.n0 + j];
                }
            }
        }
        let padded = n.div_ceil(QLANES) * QLANES;
        let mut init = vec![0i32; padded];
        let mut mul = AlignedVec::zeroed(padded);
        let mut add = AlignedVec::zeroed(padded);
        let inv = output.inv_scale;
        for j in 0..n {
            let colsum: i32 = (0..k).map(|kk| q[kk * n + j] as i32).sum();
            init[j] = -input.zero * colsum;
            mul.as_mut_slice()[j] = input.scale * sw[j] * inv;
            add.as_mut_slice()[j] = bias[j] * inv + output.zero as f32;
        }
        PackedQGemm {
            isa,
            k,
            kg,
            n,
            panels,
            data,
            init,
            mul,
            add,
        }
    }

    pub fn isa(&self) -> QIsa {
        self.isa
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn n(&self) -> usize {
        self.n
    }

    /// `k` rounded up to the instruction set's group of rows.
    pub(crate) fn kg(&self) -> usize {
        self.kg
    }

    pub(crate) fn panels(&self) -> &[QPanel] {
        &self.panels
    }

    pub(crate) fn data(&self) -> &[i8] {
        &self.data
    }

    pub(crate) fn init(&self) -> &[i32] {
        &self.init
    }

    pub(crate) fn mul(&self) -> &[f32] {
        self.mul.as_slice()
    }

    pub(crate) fn add(&self) -> &[f32] {
        self.add.as_slice()
    }

    pub fn bytes(&self) -> usize {
        self.data.len() + 4 * self.init.len() + self.mul.bytes() + self.add.bytes()
    }
}

/// `c[i * ldc + j]` = the requantized product of row `i` of `a` (`k` u8
/// at stride `lda`) and column `j` of `w`, for the `m` rows.
pub fn qgemm(w: &PackedQGemm, m: usize, a: &[u8], lda: usize, c: &mut [u8], ldc: usize) {
    if m == 0 {
        return;
    }
    assert!(lda >= w.k && ldc >= w.n, "row strides shorter than rows");
    assert!(
        a.len() >= (m - 1) * lda + w.k,
        "a holds fewer than {m} rows"
    );
    assert!(
        c.len() >= (m - 1) * ldc + w.n,
        "c holds fewer than {m} rows"
    );
    assert!(
        w.isa.is_supported(),
        "{} is not supported here",
        w.isa.name()
    );
    match w.isa {
        // SAFETY: the instruction set is supported and the slices hold the
        // rows the kernel reads and writes (both checked above).
        #[cfg(target_arch = "x86_64")]
        QIsa::Vnni512 => unsafe { super::vnni::qgemm(w, m, a, lda, c, ldc) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        QIsa::Avx2 => unsafe { super::qavx2::qgemm(w, m, a, lda, c, ldc) },
        _ => portable_qgemm(w, m, a, lda, c, ldc),
    }
}

/// The epilogue of one output: see the module's documentation.
#[inline(always)]
pub(crate) fn requantize(acc: i32, mul: f32, add: f32) -> u8 {
    let y = (acc as f32).mul_add(mul, add);
    // NaN and below zero give 0 (as `max(y, 0)` does on x86).
    let y = if y >= 0.0 { y } else { 0.0 };
    let y = if y <= 255.0 { y } else { 255.0 };
    y.round_ties_even() as u8
}

fn portable_qgemm(w: &PackedQGemm, m: usize, a: &[u8], lda: usize, c: &mut [u8], ldc: usize) {
    let (k, n) = (w.k, w.n);
    let mut acc = vec![0i32; n];
    for i in 0..m {
        acc.copy_from_slice(&w.init[..n]);
        let row = &a[i * lda..i * lda + k];
        for p in &w.panels {
            let width = p.nv * QLANES;
            let data = &w.data[p.offset..p.offset + w.kg * width];
            for (kk, &x) in row.iter().enumerate() {
                let (g, t) = (kk / 4, kk % 4);
                for j in 0..p.cols {
                    acc[p.n0 + j] += x as i32 * data[(g * width + j) * 4 + t] as i32;
                }
            }
        }
        let (mul, add) = (w.mul(), w.add());
        for (j, o) in c[i * ldc..i * ldc + n].iter_mut().enumerate() {
            *o = requantize(acc[j], mul[j], add[j]);
        }
    }
}

/// `dst = (src - zero) * scale` (`DequantizeLinear`).
pub fn dequantize(isa: QIsa, src: &[u8], q: QParams, dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "dequantize: lengths differ");
    assert!(isa.is_supported(), "{} is not supported here", isa.name());
    match isa {
        // SAFETY: supported instruction set; equal lengths (checked above).
        #[cfg(target_arch = "x86_64")]
        QIsa::Vnni512 => unsafe { super::vnni::dequantize(src, q, dst) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        QIsa::Avx2 => unsafe { super::qavx2::dequantize(src, q, dst) },
        _ => {
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = (s as i32 - q.zero) as f32 * q.scale;
            }
        }
    }
}

/// `dst = clamp(round_half_even(src * inv_scale) + zero, 0, 255)`
/// (`QuantizeLinear`, with `inv_scale` the reciprocal of its scale).
pub fn quantize(isa: QIsa, src: &[f32], inv_scale: f32, zero: i32, dst: &mut [u8]) {
    assert_eq!(src.len(), dst.len(), "quantize: lengths differ");
    assert!(isa.is_supported(), "{} is not supported here", isa.name());
    match isa {
        // SAFETY: supported instruction set; equal lengths (checked above).
        #[cfg(target_arch = "x86_64")]
        QIsa::Vnni512 => unsafe { super::vnni::quantize(src, inv_scale, zero, dst) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        QIsa::Avx2 => unsafe { super::qavx2::quantize(src, inv_scale, zero, dst) },
        _ => {
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = quantize_one(s, inv_scale, zero);
            }
        }
    }
}

/// One value of [`quantize`]. The product is first held within ±512 (the
/// same u8 result for any finite value, no integer overflow).
#[inline(always)]
pub(crate) fn quantize_one(x: f32, inv_scale: f32, zero: i32) -> u8 {
    let y = x * inv_scale;
    let y = if y >= -512.0 { y } else { -512.0 };
    let y = if y <= 512.0 { y } else { 512.0 };
    (y.round_ties_even() as i32 + zero).clamp(0, 255) as u8
}
