//! Preprocessing cost per image (decode, resize + crop, normalise), the CPU
//! work the server does per request beside inference.

use crate::manifest::Preprocess;
use crate::preprocess::{decode, normalize_into, resize_crop, DecodeLimits};
use anyhow::{Context, Result};
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Debug, Serialize)]
pub struct PreprocessBench {
    pub file: String,
    pub bytes: usize,
    pub width: u32,
    pub height: u32,
    pub runs: usize,
    pub decode_ms: f64,
    pub resize_crop_ms: f64,
    pub normalize_ms: f64,
    pub total_ms: f64,
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v.get(v.len() / 2).map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// Median time of each step over `seconds` of repetitions per image, one
/// thread (the images of `dir` with a known image extension, name order).
pub fn measure(dir: &Path, spec: &Preprocess, seconds: f64) -> Result<Vec<PreprocessBench>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
            matches!(
                ext.to_ascii_lowercase().as_str(),
                "png" | "jpg" | "jpeg" | "webp" | "gif" | "bmp" | "tif" | "tiff"
            )
        })
        .collect();
    files.sort();
    let limits = DecodeLimits::default();
    let mut out = Vec::new();
    for path in files {
        let bytes = std::fs::read(&path)?;
        let (mut dec, mut res, mut norm) = (vec![], vec![], vec![]);
        let (mut w, mut h) = (0, 0);
        let until = Instant::now() + Duration::from_secs_f64(seconds);
        while Instant::now() < until || dec.len() < 3 {
            let t0 = Instant::now();
            let img = decode(&bytes, limits)?;
            let t1 = Instant::now();
            let crop = resize_crop(&img, spec)?;
            let t2 = Instant::now();
            let mut tensor = Vec::with_capacity(crop.len());
            normalize_into(&crop, spec, &mut tensor);
            let t3 = Instant::now();
            (w, h) = (img.width, img.height);
            dec.push(t1 - t0);
            res.push(t2 - t1);
            norm.push(t3 - t2);
        }
        let total: Vec<Duration> = (0..dec.len()).map(|i| dec[i] + res[i] + norm[i]).collect();
        out.push(PreprocessBench {
            file: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            bytes: bytes.len(),
            width: w,
            height: h,
            runs: dec.len(),
            decode_ms: median(dec),
            resize_crop_ms: median(res),
            normalize_ms: median(norm),
            total_ms: median(total),
        });
    }
    Ok(out)
}
