//! `slimserve bench`: in-process engine figures per variant, and the cost of
//! preprocessing the images the server will decode.

pub mod preprocess;

use crate::config::{default_workers, BenchArgs};
use crate::engine::tract::TractEngine;
use crate::engine::{timed_runs, Engine};
use crate::manifest::Manifest;
use anyhow::Result;
use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(Debug, Serialize)]
pub struct Cell {
    pub batch: usize,
    pub workers: usize,
    pub runs: usize,
    pub median_batch_ms: f64,
    pub p99_batch_ms: f64,
    pub median_image_ms: f64,
    pub images_per_sec: f64,
}

#[derive(Debug, Serialize)]
pub struct VariantBench {
    pub name: String,
    pub top1: f64,
    pub file_bytes: u64,
    pub macs: u64,
    pub load_ms: f64,
    pub resident_bytes: u64,
    pub cells: Vec<Cell>,
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub cores: usize,
    pub target_cpu_avx2: bool,
    pub variants: Vec<VariantBench>,
    pub preprocess: Vec<preprocess::PreprocessBench>,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// `workers` threads each running batches of `batch` for `seconds`.
pub fn measure(engine: &dyn Engine, v: usize, batch: usize, workers: usize, seconds: f64) -> Cell {
    let _ = engine.infer(v, batch, vec![0.1f32; 3 * 224 * 224 * batch]);
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs_f64(seconds);
    let mut times = timed_runs(engine, v, batch, workers, false, &|n| {
        Instant::now() < until || n < 2
    });
    let wall = t0.elapsed().as_secs_f64();
    times.sort();
    let med = percentile(&times, 0.5).as_secs_f64() * 1e3;
    Cell {
        batch,
        workers,
        runs: times.len(),
        median_batch_ms: med,
        p99_batch_ms: percentile(&times, 0.99).as_secs_f64() * 1e3,
        median_image_ms: med / batch as f64,
        images_per_sec: (times.len() * batch) as f64 / wall,
    }
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let manifest = Manifest::load(&args.model.models)?;
    let mut workers = args.workers.clone();
    if workers.is_empty() {
        workers = vec![1, default_workers()];
    }
    workers.dedup();
    let names: Vec<String> = if args.model.variants.is_empty() {
        manifest.variant_names()
    } else {
        args.model.variants.clone()
    };
    let mut report = BenchReport {
        cores: default_workers(),
        target_cpu_avx2: cfg!(target_feature = "avx2"),
        variants: vec![],
        preprocess: vec![],
    };
    println!(
        "{:<8} {:>5} {:>7} {:>10} {:>10} {:>10} {:>9}",
        "variant", "batch", "workers", "ms/batch", "p99 ms", "ms/image", "images/s"
    );
    for name in names {
        // Load each variant alone so its load time and memory are its own.
        let (engine, specs) =
            TractEngine::load(&manifest, std::slice::from_ref(&name), &args.batch_sizes)?;
        let spec = &specs[0];
        let r = &engine.reports[0];
        let mut vb = VariantBench {
            name: name.clone(),
            top1: spec.top1,
            file_bytes: spec.file_bytes,
            macs: spec.macs,
            load_ms: r.load_time.as_secs_f64() * 1e3,
            resident_bytes: r.resident_bytes,
            cells: vec![],
        };
        for &b in engine.batch_sizes(0) {
            for &w in &workers {
                let c = measure(&engine, 0, b, w, args.seconds);
                println!(
                    "{:<8} {:>5} {:>7} {:>10.1} {:>10.1} {:>10.1} {:>9.1}",
                    name,
                    b,
                    w,
                    c.median_batch_ms,
                    c.p99_batch_ms,
                    c.median_image_ms,
                    c.images_per_sec
                );
                vb.cells.push(c);
            }
        }
        println!(
            "{:<8} load {:.0} ms, resident +{:.1} MiB, file {:.1} MiB",
            name,
            vb.load_ms,
            vb.resident_bytes as f64 / 1048576.0,
            vb.file_bytes as f64 / 1048576.0
        );
        report.variants.push(vb);
    }
    let images = args
        .images
        .clone()
        .unwrap_or_else(|| args.model.models.join("testdata"));
    println!(
        "\n{:<16} {:>9} {:>9} {:>10} {:>10} {:>10} {:>9}",
        "image", "size", "KiB", "decode ms", "resize ms", "norm ms", "total ms"
    );
    for p in preprocess::measure(&images, &manifest.preprocess, args.seconds.min(2.0))? {
        println!(
            "{:<16} {:>9} {:>9.0} {:>10.2} {:>10.2} {:>10.2} {:>9.2}",
            p.file,
            format!("{}x{}", p.width, p.height),
            p.bytes as f64 / 1024.0,
            p.decode_ms,
            p.resize_crop_ms,
            p.normalize_ms,
            p.total_ms
        );
        report.preprocess.push(p);
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)?)?;
    println!("wrote {}", args.json.display());
    Ok(())
}
