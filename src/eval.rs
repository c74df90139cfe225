//! `slimserve eval`: top-1/top-5 of each variant over labelled images, with
//! exactly the server's preprocessing.

use crate::config::{default_workers, EvalArgs};
use crate::engine::tract::TractEngine;
use crate::engine::{top_k, Engine};
use crate::preprocess::{decode, tensor, DecodeLimits};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Labelled images: (path, class index) from `<synset>_*.JPEG` names.
pub fn labelled_images(dir: &Path, synsets: &Path) -> Result<Vec<(PathBuf, usize)>> {
    let text = std::fs::read_to_string(synsets)
        .with_context(|| format!("reading {}", synsets.display()))?;
    let ids: Vec<&str> = text
        .lines()
        .map(|l| l.split_whitespace().next().unwrap_or(""))
        .collect();
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let synset = name.split('_').next().unwrap_or("");
        if let Some(class) = ids.iter().position(|s| *s == synset) {
            out.push((path, class));
        }
    }
    out.sort();
    if out.is_empty() {
        bail!("no <synset>_*.JPEG image in {}", dir.display());
    }
    Ok(out)
}

pub fn run(args: &EvalArgs) -> Result<()> {
    let manifest = args.model.manifest()?;
    let synsets = args
        .synsets
        .clone()
        .unwrap_or_else(|| args.images.join("..").join("synsets.txt"));
    let images = labelled_images(&args.images, &synsets)?;
    let (engine, specs) =
        TractEngine::load(&manifest, &args.model.variants, &[1], args.model.kernels)?;
    let threads = default_workers();
    // hits[v] = (top1, top5)
    let hits: Vec<Vec<(bool, bool)>> = std::thread::scope(|s| {
        let hs: Vec<_> = images
            .chunks(images.len().div_ceil(threads))
            .map(|chunk| {
                let (engine, specs) = (&engine, &specs);
                s.spawn(move || -> Result<Vec<Vec<(bool, bool)>>> {
                    let mut per_image = Vec::new();
                    for (path, class) in chunk {
                        let bytes = std::fs::read(path)?;
                        let img = decode(&bytes, DecodeLimits::default())
                            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                        let mut row = Vec::new();
                        for (v, spec) in specs.iter().enumerate() {
                            let x = tensor(&img, &spec.preprocess)
                                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                            let top = top_k(&engine.infer(v, 1, x)?, 5);
                            row.push((top[0].0 == *class, top.iter().any(|t| t.0 == *class)));
                        }
                        per_image.push(row);
                    }
                    Ok(per_image)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("eval thread"))
            .collect::<Result<Vec<_>>>()
            .map(|v| v.concat())
    })?;
    println!("{} images from {}", images.len(), args.images.display());
    println!(
        "{:<8} {:>7} {:>7} {:>14}",
        "variant", "top-1", "top-5", "manifest top-1"
    );
    for (v, spec) in specs.iter().enumerate() {
        let n = hits.len() as f64;
        let t1 = hits.iter().filter(|r| r[v].0).count() as f64 / n;
        let t5 = hits.iter().filter(|r| r[v].1).count() as f64 / n;
        let given = spec
            .top1
            .map_or_else(|| "unknown".to_string(), |a| format!("{:.1}%", a * 100.0));
        println!(
            "{:<8} {:>6.1}% {:>6.1}% {:>14}",
            spec.name,
            t1 * 100.0,
            t5 * 100.0,
            given
        );
    }
    Ok(())
}
