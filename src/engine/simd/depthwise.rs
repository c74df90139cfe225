//! The depthwise convolution kernel, generic over the vector type, on one
//! channel-last image. Channels are the vector lanes, so every stride is as
//! fast as stride 1 (no scalar path). Output pixels whose whole window is
//! inside the image run in blocks of `P` pixels with the taps unrolled (for
//! 3- and 5-wide kernels at strides 1 and 2); the border pixels, interior
//! columns left over from those blocks, and other kernel shapes run one
//! pixel at a time over their valid taps, up to eight channel vectors at
//! once (independent accumulators). Bias and the clamp are applied before
//! the one store.

use super::{Clamp, DwGeometry, PackedDepthwise, Vector};

/// Along one axis, output position `o`'s window: the input position of its
/// first tap (negative in the padding) and the taps `k0..k1` that fall
/// inside the `size` input positions.
#[inline(always)]
fn span(o: usize, stride: usize, pad: usize, size: usize, k: usize) -> (isize, usize, usize) {
    let i0 = (o * stride) as isize - pad as isize;
    let k0 = (-i0).max(0) as usize;
    let k1 = ((size as isize - i0).min(k as isize)).max(0) as usize;
    (i0, k0, k1)
}

/// The partial last channel vector (`tail` channels from `ch`) of one
/// output pixel, over its valid taps.
///
/// # Safety
/// `ch + tail == c`, `0 < tail < LANES`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn pixel_tail<V: Vector>(
    w: &PackedDepthwise,
    g: &DwGeometry,
    input: *const f32,
    out: *mut f32,
    oy: usize,
    ox: usize,
    ch: usize,
    tail: usize,
    clamp: Clamp,
) {
    unsafe {
        let taps = w.taps.as_slice().as_ptr();
        let (iy0, ky0, ky1) = span(oy, g.stride, g.pad_top, g.h, g.kh);
        let (ix0, kx0, kx1) = span(ox, g.stride, g.pad_left, g.w, g.kw);
        let mut acc = V::load(w.bias.as_slice().as_ptr().add(ch));
        for ky in ky0..ky1 {
            let iy = (iy0 + ky as isize) as usize;
            for kx in kx0..kx1 {
                let ix = (ix0 + kx as isize) as usize;
                let x = V::load_partial(input.add((iy * g.w + ix) * g.c + ch), tail);
                let t = V::load(taps.add((ky * g.kw + kx) * w.cp + ch));
                acc = V::fma(x, t, acc);
            }
        }
        let v = V::min(V::max(acc, V::splat(clamp.lo)), V::splat(clamp.hi));
        V::store_partial(out.add((oy * g.ow + ox) * g.c + ch), v, tail);
    }
}

/// One output pixel over its valid taps for `NB` whole channel vectors from
/// `ch` at once: `NB` independent accumulators, so the FMAs of one pixel
/// overlap instead of waiting on each other (a single accumulator runs at
/// the FMA latency: the border pixels, and every pixel of a 7x7 map with a
/// 5x5 kernel). Each output sums its taps in the same order as `pixel_tail`.
///
/// # Safety
/// The window rows/columns `span` gives are inside the image;
/// `ch + NB * LANES <= c`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
#[allow(clippy::needless_range_loop)]
unsafe fn pixel_vectors<V: Vector, const NB: usize>(
    w: &PackedDepthwise,
    g: &DwGeometry,
    input: *const f32,
    out: *mut f32,
    oy: usize,
    ox: usize,
    ch: usize,
    lo: V,
    hi: V,
) {
    unsafe {
        let taps = w.taps.as_slice().as_ptr();
        let (iy0, ky0, ky1) = span(oy, g.stride, g.pad_top, g.h, g.kh);
        let (ix0, kx0, kx1) = span(ox, g.stride, g.pad_left, g.w, g.kw);
        let bias = w.bias.as_slice().as_ptr().add(ch);
        let mut acc = [V::zero(); NB];
        for b in 0..NB {
            acc[b] = V::load(bias.add(b * V::LANES));
        }
        for ky in ky0..ky1 {
            let iy = (iy0 + ky as isize) as usize;
            for kx in kx0..kx1 {
                let ix = (ix0 + kx as isize) as usize;
                let ip = input.add((iy * g.w + ix) * g.c + ch);
                let tp = taps.add((ky * g.kw + kx) * w.cp + ch);
                for b in 0..NB {
                    let o = b * V::LANES;
                    acc[b] = V::fma(V::load(ip.add(o)), V::load(tp.add(o)), acc[b]);
                }
            }
        }
        let op = out.add((oy * g.ow + ox) * g.c + ch);
        for b in 0..NB {
            V::store(op.add(b * V::LANES), V::min(V::max(acc[b], lo), hi));
        }
    }
}

/// The channels `c..end` (whole vectors) of one output pixel, whatever its
/// window: eight vectors, then four, then one at a time; with `last`, also
/// the partial tail vector past them.
///
/// # Safety
/// As `pixel_vectors`, with `end <= g.c` and `end - c` a multiple of
/// `LANES`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn pixel_all<V: Vector>(
    w: &PackedDepthwise,
    g: &DwGeometry,
    input: *const f32,
    out: *mut f32,
    oy: usize,
    ox: usize,
    (mut c, end, last): (usize, usize, bool),
    clamp: Clamp,
    lo: V,
    hi: V,
) {
    unsafe {
        while c + 8 * V::LANES <= end {
            pixel_vectors::<V, 8>(w, g, input, out, oy, ox, c, lo, hi);
            c += 8 * V::LANES;
        }
        if c + 4 * V::LANES <= end {
            pixel_vectors::<V, 4>(w, g, input, out, oy, ox, c, lo, hi);
            c += 4 * V::LANES;
        }
        while c < end {
            pixel_vectors::<V, 1>(w, g, input, out, oy, ox, c, lo, hi);
            c += V::LANES;
        }
        if last && end < g.c {
            pixel_tail::<V>(w, g, input, out, oy, ox, end, g.c - end, clamp);
        }
    }
}

/// `P` output pixels from `ox` on, whose windows are inside the image
/// horizontally, over the valid rows `ky0..ky1`, for the full channel
/// vector at `ch`.
///
/// # Safety
/// `ox + P - 1` is an interior column; `ch + LANES <= c`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn interior<V: Vector, const KW: usize, const S: usize, const P: usize>(
    w: &PackedDepthwise,
    g: &DwGeometry,
    input: *const f32,
    out: *mut f32,
    oy: usize,
    ox: usize,
    ky0: usize,
    ky1: usize,
    ch: usize,
    lo: V,
    hi: V,
) {
    unsafe {
        let taps = w.taps.as_slice().as_ptr();
        let iy0 = oy * S + ky0 - g.pad_top;
        let ix0 = ox * S - g.pad_left;
        let b = V::load(w.bias.as_slice().as_ptr().add(ch));
        let mut acc = [b; P];
        for ky in ky0..ky1 {
            let row = input.add(((iy0 + ky - ky0) * g.w + ix0) * g.c + ch);
            let trow = taps.add(ky * KW * w.cp + ch);
            for kx in 0..KW {
                let t = V::load(trow.add(kx * w.cp));
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = V::fma(V::load(row.add((j * S + kx) * g.c)), t, *a);
                }
            }
        }
        let op = out.add((oy * g.ow + ox) * g.c + ch);
        for (j, a) in acc.iter().enumerate() {
            V::store(op.add(j * g.c), V::min(V::max(*a, lo), hi));
        }
    }
}

/// Input bytes up to which a map runs its channels in groups of eight
/// vectors over all its pixels (see `depthwise`): about one core's L2 here.
/// Measured per layer on full (AVX-512 and AVX2): the 28x28x240 to 7x7x1152
/// maps ran 20-35 % faster grouped, the 56x56x144 map (1.8 MB) slower.
const SMALL_MAP: usize = 1 << 20;

/// The interior columns: those whose window is inside the image.
fn interior_columns(g: &DwGeometry) -> (usize, usize) {
    let first = g.pad_left.div_ceil(g.stride).min(g.ow);
    // last ox with ox*s - pad + kw <= w
    let end = if g.w + g.pad_left >= g.kw {
        ((g.w + g.pad_left - g.kw) / g.stride + 1).min(g.ow)
    } else {
        0
    };
    (first, end.max(first))
}

/// # Safety
/// The instruction set of `V` is enabled in the caller; `g` is `w`'s
/// geometry or a band of its rows (same columns, channels, kernel, stride,
/// left padding), and `input` and `out` hold its image and output (checked
/// by [`super::depthwise`] and [`super::depthwise_band`]).
#[inline(always)]
pub(super) unsafe fn depthwise<V: Vector>(
    w: &PackedDepthwise,
    g: &DwGeometry,
    input: &[f32],
    out: &mut [f32],
    clamp: Clamp,
) {
    unsafe {
        let g = *g;
        let (ip, op) = (input.as_ptr(), out.as_mut_ptr());
        let (x0, x1) = interior_columns(&g);
        let full = g.c / V::LANES * V::LANES;
        let tail = g.c - full;
        let (lo, hi) = (V::splat(clamp.lo), V::splat(clamp.hi));
        let unrolled = matches!((g.kw, g.stride), (3, 1) | (3, 2) | (5, 1) | (5, 2));
        // One interior block of $p pixels at `ox`, the channel vectors
        // `c0..c1`, and the tail past them with `last`.
        macro_rules! block {
            ($oy:expr, $ox:expr, $ky0:expr, $ky1:expr, $p:literal, $c0:expr, $c1:expr, $last:expr) => {{
                let mut ch = $c0;
                while ch < $c1 {
                    let (oy, ox, ky0, ky1) = ($oy, $ox, $ky0, $ky1);
                    match (g.kw, g.stride) {
                        (3, 1) => {
                            interior::<V, 3, 1, $p>(w, &g, ip, op, oy, ox, ky0, ky1, ch, lo, hi)
                        }
                        (3, 2) => {
                            interior::<V, 3, 2, $p>(w, &g, ip, op, oy, ox, ky0, ky1, ch, lo, hi)
                        }
                        (5, 1) => {
                            interior::<V, 5, 1, $p>(w, &g, ip, op, oy, ox, ky0, ky1, ch, lo, hi)
                        }
                        _ => interior::<V, 5, 2, $p>(w, &g, ip, op, oy, ox, ky0, ky1, ch, lo, hi),
                    }
                    ch += V::LANES;
                }
                if $last && tail > 0 {
                    for j in 0..$p {
                        pixel_tail::<V>(w, &g, ip, op, $oy, $ox + j, full, tail, clamp);
                    }
                }
            }};
        }
        // Channels in groups: on a small map (input within `SMALL_MAP`),
        // eight vectors at a time over every pixel, so the group's taps stay
        // in L1 from pixel to pixel instead of every tap of every channel
        // passing through it at each pixel; on a larger map, all channels at
        // each pixel (its input streams through the cache once).
        let step = if g.h * g.w * g.c * 4 <= SMALL_MAP {
            8 * V::LANES
        } else {
            full.max(1)
        };
        let mut c0 = 0;
        loop {
            let c1 = (c0 + step).min(full);
            let last = c1 == full;
            for oy in 0..g.oh {
                let (_, ky0, ky1) = span(oy, g.stride, g.pad_top, g.h, g.kh);
                let mut ox = 0;
                while ox < g.ow {
                    if unrolled && ox >= x0 && ox + 8 <= x1 {
                        block!(oy, ox, ky0, ky1, 8, c0, c1, last);
                        ox += 8;
                    } else if unrolled && ox >= x0 && ox + 4 <= x1 {
                        block!(oy, ox, ky0, ky1, 4, c0, c1, last);
                        ox += 4;
                    } else {
                        // A lone pixel (border, a kernel shape without an
                        // unrolled block, or an interior column left over):
                        // its channel vectors in parallel.
                        pixel_all::<V>(w, &g, ip, op, oy, ox, (c0, c1, last), clamp, lo, hi);
                        ox += 1;
                    }
                }
            }
            if last {
                break;
            }
            c0 = c1;
        }
    }
}
