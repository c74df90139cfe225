//! `slimserve bench`: in-process engine figures per variant, and the cost of
//! preprocessing the images the server will decode.

pub mod preprocess;

use crate::config::{default_workers, BenchArgs};
use crate::engine::profile::{profile, NodeTime};
use crate::engine::tract::{variant_proto, Kernels, TractEngine};
use crate::engine::{timed_runs, Engine};
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
    pub top1: Option<f64>,
    pub file_bytes: u64,
    pub macs: u64,
    pub load_ms: f64,
    pub resident_bytes: u64,
    pub plans: Vec<crate::engine::tract::PlanReport>,
    pub cells: Vec<Cell>,
    /// Per-op times of the batch-1 plan, per kernel choice (`--profile-runs`).
    pub profiles: Vec<(String, Vec<NodeTime>)>,
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
    let _ = engine.infer(v, batch, vec![0.1f32; engine.input_len(v) * batch]);
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

/// Per-op-kind totals, then the slowest nodes.
fn print_profile(variant: &str, kernels: &str, times: &[NodeTime]) {
    let total: f64 = times.iter().map(|t| t.ms).sum();
    println!(
        "\n{variant} {kernels}: {total:.2} ms in {} ops (medians)",
        times.len()
    );
    let mut kinds: Vec<(String, f64, usize)> = Vec::new();
    for t in times {
        match kinds.iter_mut().find(|k| k.0 == t.op) {
            Some(k) => {
                k.1 += t.ms;
                k.2 += 1;
            }
            None => kinds.push((t.op.clone(), t.ms, 1)),
        }
    }
    kinds.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (op, ms, n) in &kinds {
        println!(
            "  {op:<28} {n:>3} x  {ms:>7.2} ms  {:>5.1} %",
            100.0 * ms / total
        );
    }
    let mut slow: Vec<&NodeTime> = times.iter().collect();
    slow.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    for t in slow.iter().take(8) {
        println!("  {:>7.3} ms  {:<24} {} {}", t.ms, t.op, t.node, t.shape);
    }
}

pub fn run(args: &BenchArgs) -> Result<()> {
    crate::engine::fast::par::set_threads(args.intra_op_threads);
    let manifest = args.model.manifest()?;
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
        let (engine, specs) = TractEngine::load(
            &manifest,
            std::slice::from_ref(&name),
            &args.batch_sizes,
            args.model.kernels,
        )?;
        let spec = &specs[0];
        let r = &engine.reports[0];
        let mut vb = VariantBench {
            name: name.clone(),
            top1: spec.top1,
            file_bytes: spec.file_bytes,
            macs: spec.macs,
            load_ms: r.load_time.as_secs_f64() * 1e3,
            resident_bytes: r.resident_bytes,
            plans: r.plans.clone(),
            cells: vec![],
            profiles: vec![],
        };
        for b in engine.batch_sizes(0) {
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
        for p in &vb.plans {
            match (p.stock_ms, p.fast_ms) {
                (Some(s), Some(f)) => println!(
                    "{:<8} batch {}: {} (at load: stock {s:.1} ms, fast {f:.1} ms)",
                    name, p.batch, p.kernels
                ),
                _ => println!("{:<8} batch {}: {}", name, p.batch, p.kernels),
            }
        }
        if args.profile_runs > 0 {
            let proto = variant_proto(&manifest.model_path(spec), spec)?;
            for kernels in [Kernels::Stock, Kernels::best()] {
                let times = profile(&proto, spec, args.profile_batch, kernels, args.profile_runs)?;
                print_profile(&name, &kernels.name(), &times);
                vb.profiles.push((kernels.name(), times));
            }
        }
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
    let first = &manifest.variants[0].preprocess;
    for p in preprocess::measure(&images, first, args.seconds.min(2.0))? {
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
