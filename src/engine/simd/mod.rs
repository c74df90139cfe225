//! Every unsafe SIMD kernel of the engine lives under this module, behind a
//! safe API: bounds are checked here, once per call, before any raw pointer
//! is formed. Each kernel is written once, generic over [`Vector`], and
//! instantiated for AVX-512 (`avx512.rs`) and AVX2+FMA (`avx2.rs`); the
//! instruction set is detected at run time. `portable.rs` holds the safe,
//! plain-Rust twin of every kernel, used on CPUs without those features and
//! as the reference the SIMD kernels are tested against (`tests.rs`).

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod depthwise;
mod gemm;
pub mod portable;
#[cfg(target_arch = "x86_64")]
mod qavx2;
pub mod qgemm;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod vnni;

use std::sync::OnceLock;

/// Inner dimensions up to which AVX-512 products run on AVX2 (`Isa::for_gemm`).
const SHORT_K: usize = 16;

/// The instruction set a kernel runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Isa {
    Portable,
    Avx2,
    Avx512,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Whether this CPU can run kernels of this instruction set.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The instruction set a matrix product with inner dimension `k` runs
    /// on: AVX-512 hands products with `k <= SHORT_K` to the AVX2 kernel
    /// when the CPU has both. Per-op profiles of full at batch 1 on the
    /// AVX-512 machine (Zen 4, which runs 512-bit operations in two halves),
    /// three alternating runs, AVX-512 → AVX2: the 112x112 expand (k = 16,
    /// n = 96) 0.62-0.63 → 0.41-0.44 ms; the 56x56 expands (k = 24) 0.21
    /// either way; the stem (k = 27) 0.41-0.44 → 0.40-0.42; the 112x112
    /// project (k = 32, n = 16) 0.116 → 0.123-0.125. Not explained (the
    /// AVX-512 tile is 8 rows x 48 columns there, the AVX2 one 6 x 16).
    pub fn for_gemm(self, k: usize) -> Isa {
        if self == Isa::Avx512 && k <= SHORT_K && Isa::Avx2.is_supported() {
            Isa::Avx2
        } else {
            self
        }
    }

    /// Every instruction set this CPU supports, best last.
    pub fn available() -> Vec<Isa> {
        [Isa::Portable, Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|i| i.is_supported())
            .collect()
    }

    /// The best supported instruction set, or the one named by the
    /// `SLIMSERVE_SIMD` environment variable (`portable`, `avx2`, `avx512`)
    /// when this CPU supports it.
    pub fn detect() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            let best = *Isa::available().last().unwrap_or(&Isa::Portable);
            match std::env::var("SLIMSERVE_SIMD").ok().as_deref() {
                Some(name) => Isa::available()
                    .into_iter()
                    .find(|i| i.name() == name)
                    .unwrap_or(best),
                None => best,
            }
        })
    }

    /// f32 lanes of one vector (the padding unit of packed data).
    pub fn lanes(self) -> usize {
        match self {
            Isa::Portable => 8,
            Isa::Avx2 => 8,
            Isa::Avx512 => 16,
        }
    }
}

/// A tensor of `shape` for an op whose kernel writes every element before
/// anything reads it (the fast ops' outputs): its memory is not zeroed
/// first. Zeroing was a pass over every activation, ~5 % of a served
/// request's CPU (`perf`, `full` at 60 req/s). In debug builds (the tests)
/// every element starts as `poison` instead (NaN for f32), so an element a
/// kernel missed shows in the fast path's comparisons with tract's own.
pub fn output_tensor<T: tract_core::prelude::Datum + Copy>(
    shape: &[usize],
    poison: T,
) -> tract_core::prelude::TractResult<tract_core::prelude::Tensor> {
    if cfg!(debug_assertions) {
        let mut t = tract_core::prelude::Tensor::zero_dt(T::datum_type(), shape)?;
        t.fill_t(poison)?;
        return Ok(t);
    }
    // SAFETY: a plain-data tensor (f32 or u8: every bit pattern is a
    // value) that the caller's kernel overwrites element by element before
    // the tensor is returned to tract, so no element is read before it is
    // written (the debug builds' poison checks it).
    unsafe { tract_core::prelude::Tensor::uninitialized::<T>(shape) }
}

/// What the kernels apply to each output after the bias: a clamp to
/// `[lo, hi]` (ReLU6 is `[0, 6]`; no activation is `[-inf, inf]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clamp {
    pub lo: f32,
    pub hi: f32,
}

impl Clamp {
    pub const NONE: Clamp = Clamp {
        lo: f32::NEG_INFINITY,
        hi: f32::INFINITY,
    };

    pub fn is_none(&self) -> bool {
        self.lo == f32::NEG_INFINITY && self.hi == f32::INFINITY
    }

    /// The clamp of `self` followed by a clamp to `[lo, hi]`.
    pub fn then(self, lo: f32, hi: f32) -> Clamp {
        Clamp {
            lo: self.lo.max(lo).min(hi),
            hi: self.hi.min(hi).max(lo),
        }
    }

    #[inline(always)]
    pub fn apply(&self, v: f32) -> f32 {
        v.max(self.lo).min(self.hi)
    }
}

/// A 64-byte aligned, zero-padded buffer of f32 (packed weights, biases).
#[derive(Clone)]
pub struct AlignedVec {
    blocks: Vec<Block>,
    len: usize,
}

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Block([f32; 16]);

impl AlignedVec {
    pub fn zeroed(len: usize) -> AlignedVec {
        AlignedVec {
            blocks: vec![Block([0.0; 16]); len.div_ceil(16)],
            len,
        }
    }

    pub fn as_slice(&self) -> &[f32] {
        // SAFETY: `Block` is `repr(C)` over `[f32; 16]`, so the blocks are
        // `16 * blocks.len() >= len` contiguous, initialised f32.
        unsafe { std::slice::from_raw_parts(self.blocks.as_ptr().cast::<f32>(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        // SAFETY: as in `as_slice`, with unique access through `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.blocks.as_mut_ptr().cast::<f32>(), self.len) }
    }

    pub fn bytes(&self) -> usize {
        self.blocks.len() * 64
    }
}

impl std::fmt::Debug for AlignedVec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedVec({} f32)", self.len)
    }
}

/// One vertical strip of packed weights: `nv` vectors wide, run `mr` rows
/// at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Panel {
    pub n0: usize,
    /// Valid columns (the last vector may be partial).
    pub cols: usize,
    pub nv: usize,
    pub mr: usize,
    /// Offset of the panel in the packed data: `k * nv * lanes` floats.
    pub offset: usize,
}

/// The weights of a `K x N` matrix product with its bias, packed once for
/// one instruction set: panels of whole vectors, `K` rows each, so the
/// micro-kernel reads them sequentially.
#[derive(Clone)]
pub struct PackedGemm {
    isa: Isa,
    k: usize,
    n: usize,
    panels: Vec<Panel>,
    data: PackData,
    /// Bias padded to whole vectors.
    bias: AlignedVec,
}

/// The packed values, in panel order.
#[derive(Clone)]
enum PackData {
    F32(AlignedVec),
    /// Every weight is exactly `q * scale[column]` with `q` an integer in
    /// `-127..=127` (the weights of an int8-weight file, dequantized at
    /// load): a quarter of the bytes, and the kernel gets the very same f32
    /// values back, one panel at a time (`PackedGemm::panel_values`).
    I8 {
        q: Vec<i8>,
        scales: AlignedVec,
    },
}

/// `out = q * scale[column]` for the `k x width` panel `p`.
#[inline(always)]
fn dequantize_panel(q: &[i8], scales: &AlignedVec, p: &Panel, width: usize, out: &mut [f32]) {
    let s = &scales.as_slice()[p.n0..p.n0 + width];
    let q = &q[p.offset..p.offset + out.len()];
    for (o, qs) in out.chunks_exact_mut(width).zip(q.chunks_exact(width)) {
        for ((o, &qv), &sv) in o.iter_mut().zip(qs).zip(s) {
            *o = qv as f32 * sv;
        }
    }
}

/// Per-column scales under which every weight of the `k x n` row-major `w`
/// is exactly `q * scale` for an integer `q` in `-127..=127` (checked
/// value by value, so the f32 product reproduces it bit for bit), or
/// `None`.
fn int8_scales(w: &[f32], k: usize, n: usize) -> Option<Vec<f32>> {
    (0..n)
        .map(|j| int8_scale(&(0..k).map(|kk| w[kk * n + j]).collect::<Vec<_>>()))
        .collect()
}

/// A scale under which every value is exactly `q * scale` with `q` an
/// integer in `-127..=127`, or `None`. Symmetric int8 quantizers give
/// `max |v| = m * scale` for some `m <= 127` (127 unless the scale was
/// held up by a floor): each `m` is tried from 127 down, with the floats
/// two steps either side of `max / m`, since `max` is itself the rounded
/// `m * scale`. An all-zero group gives 1.
pub(crate) fn int8_scale(values: &[f32]) -> Option<f32> {
    let mut max = 0f32;
    for v in values {
        if !v.is_finite() {
            return None;
        }
        max = max.max(v.abs());
    }
    if max == 0.0 {
        return Some(1.0);
    }
    let exact = |s: f32| {
        s > 0.0
            && s.is_finite()
            && values.iter().all(|&v| {
                let q = (v / s).round();
                q.abs() <= 127.0 && q * s == v
            })
    };
    (1..=127u8).rev().find_map(|m| {
        let s0 = max / m as f32;
        let (up, down) = (s0.next_up(), s0.next_down());
        [s0, up, down, up.next_up(), down.next_down()]
            .into_iter()
            .find(|&s| exact(s))
    })
}

impl std::fmt::Debug for PackedGemm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PackedGemm({}x{}, {}, {} panels)",
            self.k,
            self.n,
            self.isa.name(),
            self.panels.len()
        )
    }
}

/// Panel widths (vectors) and row blocks for an instruction set: as many
/// panels of the widest shape as fit, then one narrower panel.
fn plan_panels(isa: Isa, n: usize, k: usize) -> Vec<Panel> {
    let l = isa.lanes();
    let vectors = n.div_ceil(l);
    let (wide, shapes): (usize, &[(usize, usize)]) = match isa {
        // (nv, mr): 24 accumulators of 32 zmm registers; the narrower
        // shapes keep the remainder panel busy.
        Isa::Avx512 => (3, &[(1, 12), (2, 12), (3, 8)]),
        // 12 accumulators of 16 ymm registers.
        Isa::Avx2 => (2, &[(1, 12), (2, 6)]),
        Isa::Portable => (vectors.max(1), &[]),
    };
    let mut panels = Vec::new();
    let mut v = 0;
    let mut offset = 0;
    while v < vectors {
        let nv = (vectors - v).min(wide);
        let mr = shapes
            .iter()
            .find(|(s, _)| *s == nv)
            .map_or(1, |(_, mr)| *mr);
        let n0 = v * l;
        panels.push(Panel {
            n0,
            cols: (n - n0).min(nv * l),
            nv,
            mr,
            offset,
        });
        offset += k * nv * l;
        v += nv;
    }
    panels
}

impl PackedGemm {
    /// Pack `w`, a `k x n` row-major matrix (`w[i * n + j]`), and its bias
    /// (`n` values) for `isa`.
    pub fn new(isa: Isa, w: &[f32], k: usize, n: usize, bias: &[f32]) -> PackedGemm {
        Self::build(isa, w, k, n, bias, true)
    }

    /// As `new`, always holding f32 (the reference the int8 packs are
    /// tested against).
    #[cfg(test)]
    fn new_f32(isa: Isa, w: &[f32], k: usize, n: usize, bias: &[f32]) -> PackedGemm {
        Self::build(isa, w, k, n, bias, false)
    }

    fn build(isa: Isa, w: &[f32], k: usize, n: usize, bias: &[f32], int8: bool) -> PackedGemm {
        assert_eq!(w.len(), k * n, "weights are not {k} x {n}");
        assert_eq!(bias.len(), n, "bias is not {n} long");
        let l = isa.lanes();
        let panels = plan_panels(isa, n, k);
        let total: usize = panels.iter().map(|p| k * p.nv * l).sum();
        let padded = n.div_ceil(l) * l;
        let data = match int8_scales(w, k, n).filter(|_| int8) {
            Some(s) => {
                let mut q = vec![0i8; total];
                for p in &panels {
                    let width = p.nv * l;
                    for kk in 0..k {
                        for j in 0..p.cols {
                            let c = p.n0 + j;
                            q[p.offset + kk * width + j] = (w[kk * n + c] / s[c]).round() as i8;
                        }
                    }
                }
                let mut scales = AlignedVec::zeroed(padded);
                scales.as_mut_slice()[..n].copy_from_slice(&s);
                PackData::I8 { q, scales }
            }
            None => {
                let mut data = AlignedVec::zeroed(total);
                let d = data.as_mut_slice();
                for p in &panels {
                    let width = p.nv * l;
                    for kk in 0..k {
                        let row = &w[kk * n + p.n0..kk * n + p.n0 + p.cols];
                        d[p.offset + kk * width..p.offset + kk * width + p.cols]
                            .copy_from_slice(row);
                    }
                }
                PackData::F32(data)
            }
        };
        let mut b = AlignedVec::zeroed(padded);
        b.as_mut_slice()[..n].copy_from_slice(bias);
        PackedGemm {
            isa,
            k,
            n,
            panels,
            data,
            bias: b,
        }
    }

    /// Whether the weights are held as int8 with a scale per column.
    pub fn is_int8(&self) -> bool {
        matches!(self.data, PackData::I8 { .. })
    }

    /// The f32 values of panel `p` (`k * nv * lanes`): in place, or
    /// dequantized into `buf`. Inlined into the kernels' drivers, so the
    /// loop is vectorised for their instruction set.
    #[inline(always)]
    fn panel_values<'a>(&'a self, p: &Panel, buf: &'a mut Vec<f32>) -> &'a [f32] {
        let width = p.nv * self.isa.lanes();
        let len = self.k * width;
        match &self.data {
            PackData::F32(d) => &d.as_slice()[p.offset..p.offset + len],
            PackData::I8 { q, scales } => {
                buf.clear();
                buf.resize(len, 0.0);
                dequantize_panel(q, scales, p, width, buf);
                buf
            }
        }
    }

    /// As `panel_values`, for the portable twin: borrowed or owned.
    fn panel_cow(&self, p: &Panel) -> std::borrow::Cow<'_, [f32]> {
        let len = self.k * p.nv * self.isa.lanes();
        match &self.data {
            PackData::F32(d) => d.as_slice()[p.offset..p.offset + len].into(),
            PackData::I8 { .. } => {
                let mut buf = Vec::new();
                self.panel_values(p, &mut buf);
                buf.into()
            }
        }
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn n(&self) -> usize {
        self.n
    }

    /// Bytes held by the packed weights and bias.
    pub fn bytes(&self) -> usize {
        let data = match &self.data {
            PackData::F32(d) => d.bytes(),
            PackData::I8 { q, scales } => q.len() + scales.bytes(),
        };
        data + self.bias.bytes()
    }
}

/// A residual added after the clamp: `res[i * stride + j]` for output row
/// `i`, column `j`.
#[derive(Debug, Clone, Copy)]
pub struct Residual<'a> {
    pub data: &'a [f32],
    pub stride: usize,
}

/// `c[i * ldc + j] = clamp(sum_k a[i * lda + k] * w[k][j] + bias[j]) (+ res)`
/// for the `m` rows of `a`.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    w: &PackedGemm,
    m: usize,
    a: &[f32],
    lda: usize,
    c: &mut [f32],
    ldc: usize,
    clamp: Clamp,
    res: Option<Residual>,
) {
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
    if let Some(r) = &res {
        assert!(
            r.stride >= w.n && r.data.len() >= (m - 1) * r.stride + w.n,
            "residual holds fewer than {m} rows"
        );
    }
    assert!(
        w.isa.is_supported(),
        "{} is not supported here",
        w.isa.name()
    );
    match w.isa {
        // SAFETY: the instruction set is supported (checked above) and every
        // slice holds the rows and columns the kernel touches (checked above).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::gemm(w, m, a, lda, c, ldc, clamp, res) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { avx512::gemm(w, m, a, lda, c, ldc, clamp, res) },
        _ => portable::gemm(w, m, a, lda, c, ldc, clamp, res),
    }
}

/// Geometry of a depthwise convolution on one channel-last image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DwGeometry {
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    pub oh: usize,
    pub ow: usize,
}

impl DwGeometry {
    /// The geometry of the output rows `rows` alone, over the input rows
    /// they read (returned): a band of a few rows keeps its input and output
    /// in cache. Its top padding is what remains of the image's.
    pub fn band(&self, rows: std::ops::Range<usize>) -> (DwGeometry, std::ops::Range<usize>) {
        let (s, pt) = (self.stride, self.pad_top);
        let (oy0, oy1) = (
            rows.start.min(self.oh),
            rows.end.min(self.oh).max(rows.start.min(self.oh)),
        );
        let first = (oy0 * s).saturating_sub(pt).min(self.h);
        let last = if oy1 > oy0 {
            ((oy1 - 1) * s + self.kh).saturating_sub(pt).min(self.h)
        } else {
            first
        };
        let band = DwGeometry {
            h: last - first,
            pad_top: (first + pt).saturating_sub(oy0 * s),
            oh: oy1 - oy0,
            ..*self
        };
        (band, first..last)
    }

    /// Checks the geometry is self-consistent: every output pixel's window
    /// starts inside the padded input.
    pub fn validate(&self) -> Result<(), String> {
        let ok = self.c > 0
            && self.kh > 0
            && self.kw > 0
            && self.stride > 0
            && self.oh > 0
            && self.ow > 0
            && self.pad_top < self.kh
            && self.pad_left < self.kw
            && (self.oh - 1) * self.stride < self.h + self.pad_top
            && (self.ow - 1) * self.stride < self.w + self.pad_left;
        if ok {
            Ok(())
        } else {
            Err(format!("inconsistent depthwise geometry {self:?}"))
        }
    }
}

/// Depthwise weights (`kh * kw` taps of `c` channels) and bias, packed with
/// channels padded to whole vectors.
#[derive(Clone)]
pub struct PackedDepthwise {
    isa: Isa,
    geo: DwGeometry,
    /// Channels rounded up to whole vectors.
    cp: usize,
    taps: AlignedVec,
    bias: AlignedVec,
}

impl std::fmt::Debug for PackedDepthwise {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedDepthwise({:?}, {})", self.geo, self.isa.name())
    }
}

impl PackedDepthwise {
    /// `w[ch][kh][kw]` (ONNX's `C x 1 x KH x KW`), `bias[ch]`.
    pub fn new(
        isa: Isa,
        geo: DwGeometry,
        w: &[f32],
        bias: &[f32],
    ) -> Result<PackedDepthwise, String> {
        geo.validate()?;
        let (c, taps) = (geo.c, geo.kh * geo.kw);
        if w.len() != c * taps || bias.len() != c {
            return Err(format!(
                "depthwise weights hold {} values and bias {}, expected {} and {c}",
                w.len(),
                bias.len(),
                c * taps
            ));
        }
        let cp = c.div_ceil(isa.lanes()) * isa.lanes();
        let mut packed = AlignedVec::zeroed(taps * cp);
        let p = packed.as_mut_slice();
        for ch in 0..c {
            for t in 0..taps {
                p[t * cp + ch] = w[ch * taps + t];
            }
        }
        let mut b = AlignedVec::zeroed(cp);
        b.as_mut_slice()[..c].copy_from_slice(bias);
        Ok(PackedDepthwise {
            isa,
            geo,
            cp,
            taps: packed,
            bias: b,
        })
    }

    pub fn geometry(&self) -> &DwGeometry {
        &self.geo
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    pub fn bytes(&self) -> usize {
        self.taps.bytes() + self.bias.bytes()
    }
}

/// One image: `out[(oy * ow + ox) * c + ch] = clamp(bias + sum of taps)`.
pub fn depthwise(w: &PackedDepthwise, input: &[f32], out: &mut [f32], clamp: Clamp) {
    let g = w.geo;
    assert_eq!(input.len(), g.h * g.w * g.c, "input is not {g:?}");
    assert_eq!(out.len(), g.oh * g.ow * g.c, "output is not {g:?}");
    run_depthwise(w, &g, input, out, clamp);
}

/// The output rows `rows` of one image (`out`: those rows) from the input
/// rows they read (`input`: rows `DwGeometry::band(rows).1` of the image).
pub fn depthwise_band(
    w: &PackedDepthwise,
    rows: std::ops::Range<usize>,
    input: &[f32],
    out: &mut [f32],
    clamp: Clamp,
) {
    let (g, iy) = w.geo.band(rows);
    assert_eq!(
        input.len(),
        iy.len() * g.w * g.c,
        "input is not the band's rows"
    );
    assert_eq!(
        out.len(),
        g.oh * g.ow * g.c,
        "output is not the band's rows"
    );
    run_depthwise(w, &g, input, out, clamp);
}

/// Dispatch on the instruction set; `input` and `out` were checked to hold
/// `g`'s image and output, and `g` is `w`'s geometry or a band of it.
fn run_depthwise(
    w: &PackedDepthwise,
    g: &DwGeometry,
    input: &[f32],
    out: &mut [f32],
    clamp: Clamp,
) {
    assert!(g.validate().is_ok(), "inconsistent geometry {g:?}");
    let wg = &w.geo;
    assert!(
        (g.w, g.c, g.kh, g.kw, g.stride, g.pad_left, g.ow)
            == (wg.w, wg.c, wg.kh, wg.kw, wg.stride, wg.pad_left, wg.ow),
        "{g:?} is not a band of {wg:?}"
    );
    assert!(
        w.isa.is_supported(),
        "{} is not supported here",
        w.isa.name()
    );
    match w.isa {
        // SAFETY: supported instruction set; the geometry is consistent and
        // matches the packed taps' channels and kernel; input and output
        // sizes match it (checked by the callers).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::depthwise(w, g, input, out, clamp) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { avx512::depthwise(w, g, input, out, clamp) },
        _ => portable::depthwise(w, g, input, out, clamp),
    }
}

/// f32 vector operations the generic kernels are written against.
///
/// # Safety
/// Implementations are only called from functions compiled with the
/// instruction set they need, on pointers valid for `LANES` floats (or `n`
/// for the partial forms).
pub(crate) unsafe trait Vector: Copy {
    const LANES: usize;
    unsafe fn zero() -> Self;
    unsafe fn splat(x: f32) -> Self;
    unsafe fn load(p: *const f32) -> Self;
    /// The first `n <= LANES` lanes, zeros after (`n == 0` touches no memory).
    unsafe fn load_partial(p: *const f32, n: usize) -> Self;
    unsafe fn store(p: *mut f32, v: Self);
    unsafe fn store_partial(p: *mut f32, v: Self, n: usize);
    /// `a * b + c`
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self;
    unsafe fn add(a: Self, b: Self) -> Self;
    unsafe fn max(a: Self, b: Self) -> Self;
    unsafe fn min(a: Self, b: Self) -> Self;
}
