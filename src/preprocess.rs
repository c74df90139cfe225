//! Image decoding and preprocessing, identical to the models pipeline
//! (`models/common.py`): RGB, shorter side to `resize_shorter` (256 for the
//! bundled models) with Pillow-style (antialiased, convolution) bilinear,
//! centre crop, (x - mean) / std, in the variant's layout (NCHW or NHWC) and
//! channel order (RGB or BGR).
//!
//! Everything here is CPU work: callers run it off the async runtime.

use crate::error::ServeError;
use crate::manifest::{Color, Layout, Preprocess};
use fast_image_resize::{
    images::{Image, ImageRef},
    FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer,
};
use image::{ImageFormat, ImageReader, Limits};
use std::io::Cursor;

/// Limits applied to untrusted images before their pixels are decoded.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Largest accepted width × height.
    pub max_pixels: u64,
    /// Largest accepted width or height.
    pub max_side: u32,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_pixels: 40_000_000,
            max_side: 16_384,
        }
    }
}

/// A decoded RGB image, 8 bits per channel, HWC.
#[derive(Debug)]
pub struct Rgb {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

/// Decode an encoded image, checking its dimensions from the header before
/// any pixel is decoded (decompression bombs) and bounding the decoder's
/// allocations.
pub fn decode(bytes: &[u8], limits: DecodeLimits) -> Result<Rgb, ServeError> {
    if bytes.is_empty() {
        return Err(ServeError::EmptyBody);
    }
    let format = image::guess_format(bytes).map_err(|_| ServeError::UnknownImageFormat)?;
    if !matches!(
        format,
        ImageFormat::Jpeg
            | ImageFormat::Png
            | ImageFormat::WebP
            | ImageFormat::Gif
            | ImageFormat::Bmp
            | ImageFormat::Tiff
    ) {
        return Err(ServeError::UnknownImageFormat);
    }
    let reader = || ImageReader::with_format(Cursor::new(bytes), format);
    let (width, height) = reader()
        .into_dimensions()
        .map_err(|e| ServeError::BadImage(e.to_string()))?;
    let pixels = width as u64 * height as u64;
    if pixels > limits.max_pixels || width > limits.max_side || height > limits.max_side {
        return Err(ServeError::ImageTooLarge {
            width,
            height,
            pixels,
            limit: limits.max_pixels,
        });
    }
    if width == 0 || height == 0 {
        return Err(ServeError::BadImage("image has no pixels".into()));
    }
    let mut r = reader();
    let mut l = Limits::default();
    l.max_image_width = Some(limits.max_side);
    l.max_image_height = Some(limits.max_side);
    // RGBA at 16 bits per channel is the largest buffer a decoder may need.
    l.max_alloc = Some(limits.max_pixels * 8 + (64 << 20));
    r.limits(l);
    let img = r
        .decode()
        .map_err(|e| ServeError::BadImage(e.to_string()))?;
    let rgb = img.into_rgb8();
    Ok(Rgb {
        width: rgb.width(),
        height: rgb.height(),
        data: rgb.into_raw(),
    })
}

/// Size after resizing the shorter side to `shorter`, rounding the longer
/// side half up, as the pipeline does.
pub fn resized_size(w: u32, h: u32, shorter: u32) -> (u32, u32) {
    let (w64, h64, s) = (w as u64, h as u64, shorter as u64);
    if w <= h {
        (shorter, ((h64 * s + w64 / 2) / w64).max(1) as u32)
    } else {
        (((w64 * s + h64 / 2) / h64).max(1) as u32, shorter)
    }
}

/// Resize the shorter side and centre-crop: returns crop×crop×3 RGB bytes.
///
/// Only the crop is computed: the resizer gets the source region that maps
/// onto it, with the scale of the full resize, and its filter still reads
/// the pixels around that region (the convolution's support is clipped to
/// the image, not to the region), so the bytes are those of resizing the
/// whole image and then cropping, for about half the work.
pub fn resize_crop(img: &Rgb, spec: &Preprocess) -> Result<Vec<u8>, ServeError> {
    let (nw, nh) = resized_size(img.width, img.height, spec.resize_shorter);
    let c = spec.crop;
    if nw < c || nh < c {
        return Err(ServeError::Internal(format!(
            "resized image {nw}x{nh} is smaller than the {c}x{c} crop"
        )));
    }
    let (left, top) = ((nw - c) / 2, (nh - c) / 2);
    let (sx, sy) = (
        f64::from(img.width) / f64::from(nw),
        f64::from(img.height) / f64::from(nh),
    );
    // Borrow the decoded pixels: no copy of the source image per request.
    let src = ImageRef::new(img.width, img.height, &img.data, PixelType::U8x3)
        .map_err(|e| ServeError::Internal(e.to_string()))?;
    let mut dst = Image::new(c, c, PixelType::U8x3);
    let opts = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
        .crop(
            f64::from(left) * sx,
            f64::from(top) * sy,
            f64::from(c) * sx,
            f64::from(c) * sy,
        );
    Resizer::new()
        .resize(&src, &mut dst, &opts)
        .map_err(|e| ServeError::Internal(e.to_string()))?;
    Ok(dst.into_vec())
}

/// HWC RGB bytes to normalised floats in the spec's layout and channel
/// order, appended to `out`. `mean` and `std` are per channel of the
/// output (for BGR, `mean[0]` is blue's).
pub fn normalize_into(crop: &[u8], spec: &Preprocess, out: &mut Vec<f32>) {
    let plane = crop.len() / 3;
    let start = out.len();
    out.resize(start + crop.len(), 0.0);
    let dst = &mut out[start..];
    // Source channel of each output channel.
    let src: [usize; 3] = match spec.color {
        Color::RGB => [0, 1, 2],
        Color::BGR => [2, 1, 0],
    };
    match spec.layout {
        Layout::NCHW => {
            for (i, px) in crop.chunks_exact(3).enumerate() {
                for ch in 0..3 {
                    dst[ch * plane + i] = (px[src[ch]] as f32 - spec.mean[ch]) / spec.std[ch];
                }
            }
        }
        Layout::NHWC => {
            for (d, px) in dst.chunks_exact_mut(3).zip(crop.chunks_exact(3)) {
                for ch in 0..3 {
                    d[ch] = (px[src[ch]] as f32 - spec.mean[ch]) / spec.std[ch];
                }
            }
        }
    }
}

/// Decoded image to the spec's tensor (one image).
pub fn tensor(img: &Rgb, spec: &Preprocess) -> Result<Vec<f32>, ServeError> {
    let crop = resize_crop(img, spec)?;
    let mut out = Vec::with_capacity(crop.len());
    normalize_into(&crop, spec, &mut out);
    Ok(out)
}

/// The whole path: encoded bytes to one normalised 1×3×crop×crop tensor.
pub fn preprocess(
    bytes: &[u8],
    spec: &Preprocess,
    limits: DecodeLimits,
) -> Result<Vec<f32>, ServeError> {
    tensor(&decode(bytes, limits)?, spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{bundled_models_dir, Manifest};

    fn spec() -> Preprocess {
        Manifest::load(&bundled_models_dir()).unwrap().variants[0]
            .preprocess
            .clone()
    }

    fn testdata(name: &str) -> Vec<u8> {
        std::fs::read(bundled_models_dir().join("testdata").join(name)).unwrap()
    }

    #[test]
    fn resized_size_rounds_like_the_pipeline() {
        assert_eq!(resized_size(500, 375, 256), (341, 256));
        assert_eq!(resized_size(375, 500, 256), (256, 341));
        assert_eq!(resized_size(300, 300, 256), (256, 256));
        assert_eq!(resized_size(451, 300, 256), (385, 256)); // 384.85 rounds up
    }

    /// The plain way: resize the whole image, then crop.
    fn resize_then_crop(img: &Rgb, spec: &Preprocess) -> Vec<u8> {
        let (nw, nh) = resized_size(img.width, img.height, spec.resize_shorter);
        let src = ImageRef::new(img.width, img.height, &img.data, PixelType::U8x3).unwrap();
        let mut dst = Image::new(nw, nh, PixelType::U8x3);
        let opts = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
        Resizer::new().resize(&src, &mut dst, &opts).unwrap();
        let c = spec.crop as usize;
        let (left, top) = (
            ((nw - spec.crop) / 2) as usize,
            ((nh - spec.crop) / 2) as usize,
        );
        let row = nw as usize * 3;
        let buf = dst.buffer();
        (top..top + c)
            .flat_map(|y| buf[y * row + left * 3..y * row + (left + c) * 3].to_vec())
            .collect()
    }

    #[test]
    fn resizing_only_the_crop_gives_the_same_bytes() {
        let s = spec();
        for name in ["chelsea.png", "coffee.png", "rocket.jpg"] {
            let img = decode(&testdata(name), DecodeLimits::default()).unwrap();
            let fast = resize_crop(&img, &s).unwrap();
            let plain = resize_then_crop(&img, &s);
            assert_eq!(fast.len(), plain.len());
            let diff: Vec<u8> = fast
                .iter()
                .zip(&plain)
                .map(|(a, b)| a.abs_diff(*b))
                .collect();
            // Floating-point rounding of the source offsets may flip a
            // rounding now and then; nothing more.
            assert!(diff.iter().all(|d| *d <= 1), "{name}");
            let n = diff.iter().filter(|d| **d > 0).count();
            assert!(n * 1000 < fast.len(), "{name}: {n} bytes differ");
        }
        // Portrait and exactly-256 images too.
        for (w, h) in [(300, 500), (256, 256), (257, 999)] {
            let img = Rgb {
                width: w,
                height: h,
                data: (0..w * h * 3).map(|i| (i * 7 % 251) as u8).collect(),
            };
            let fast = resize_crop(&img, &s).unwrap();
            let plain = resize_then_crop(&img, &s);
            let n = fast
                .iter()
                .zip(&plain)
                .filter(|(a, b)| a.abs_diff(**b) > 1)
                .count();
            assert_eq!(n, 0, "{w}x{h}");
        }
    }

    #[test]
    fn crop_matches_the_python_pipeline_within_one_level() {
        let img = decode(&testdata("chelsea.png"), DecodeLimits::default()).unwrap();
        let ours = resize_crop(&img, &spec()).unwrap();
        let theirs = testdata("chelsea.crop224.rgb");
        assert_eq!(ours.len(), theirs.len());
        let max_diff = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        let differing = ours.iter().zip(&theirs).filter(|(a, b)| a != b).count();
        // Pillow and fast_image_resize compute the same convolution bilinear
        // in different fixed-point precision: about a fifth of the bytes
        // round the other way (measured: 30846 of 150528), never by more than
        // one level. The logit test (tests/models.rs) bounds the effect.
        assert!(max_diff <= 1, "max difference {max_diff}");
        assert!(differing * 4 < ours.len(), "{differing} bytes differ");
    }

    #[test]
    fn normalize_is_nchw_with_mean_and_std() {
        let s = spec();
        let crop: Vec<u8> = (0..s.crop * s.crop).flat_map(|_| [127u8, 255, 0]).collect();
        let mut out = Vec::new();
        normalize_into(&crop, &s, &mut out);
        let plane = (s.crop * s.crop) as usize;
        assert_eq!(out.len(), 3 * plane);
        assert_eq!(out[0], 0.0);
        assert_eq!(out[plane], 1.0);
        assert_eq!(out[2 * plane + 5], -127.0 / 128.0);
    }

    #[test]
    fn nhwc_and_bgr_reorder_the_same_values() {
        let mut s = spec();
        s.mean = [10.0, 20.0, 30.0];
        s.std = [1.0, 2.0, 4.0];
        let crop: Vec<u8> = (0..s.crop * s.crop)
            .flat_map(|i| [(i % 200) as u8, 100, 250])
            .collect();
        let plane = (s.crop * s.crop) as usize;
        let mut nchw = Vec::new();
        normalize_into(&crop, &s, &mut nchw);
        s.layout = Layout::NHWC;
        let mut nhwc = Vec::new();
        normalize_into(&crop, &s, &mut nhwc);
        for i in [0, 7, plane - 1] {
            for ch in 0..3 {
                assert_eq!(
                    nhwc[i * 3 + ch],
                    nchw[ch * plane + i],
                    "pixel {i} channel {ch}"
                );
            }
        }
        assert_eq!(nhwc[1], (100.0 - 20.0) / 2.0);
        s.color = Color::BGR;
        let mut bgr = Vec::new();
        normalize_into(&crop, &s, &mut bgr);
        // Blue first, with the first channel's mean and std.
        assert_eq!(bgr[0], (250.0 - 10.0) / 1.0);
        assert_eq!(bgr[2], (0.0 - 30.0) / 4.0);
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let png = testdata("chelsea.png");
        let lim = DecodeLimits::default();
        assert!(matches!(decode(&[], lim), Err(ServeError::EmptyBody)));
        assert!(matches!(
            decode(b"hello world, not an image", lim),
            Err(ServeError::UnknownImageFormat)
        ));
        assert!(matches!(
            decode(&png[..png.len() / 2], lim),
            Err(ServeError::BadImage(_))
        ));
        assert!(matches!(
            decode(&png[..20], lim),
            Err(ServeError::BadImage(_))
        ));
        let small = DecodeLimits {
            max_pixels: 10_000,
            max_side: 16_384,
        };
        assert!(matches!(
            decode(&png, small),
            Err(ServeError::ImageTooLarge { .. })
        ));
    }

    #[test]
    fn decompression_bomb_is_refused_before_decoding() {
        // A 60000x60000 PNG header (a few hundred bytes, gigabytes decoded).
        let bomb = crate::testutil::png_bomb(60_000, 60_000);
        let err = decode(&bomb, DecodeLimits::default()).unwrap_err();
        assert!(
            matches!(err, ServeError::ImageTooLarge { width: 60_000, .. }),
            "{err}"
        );
    }
}
